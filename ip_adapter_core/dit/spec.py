"""Typed description of a DiT (Flux / SD3.5) IP-Adapter file, decided from its tensors alone.

The UNet adapters' `AdapterSpec` describes cross-attention layers; DiT adapters add K/V to
joint-attention blocks instead, so they get their own description. Both serialise to the
same JSON keys where the meaning is the same (base, kind, tokens, image_encoder, ...).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from ..errors import IncompatibleModelError


class NotAUNetAdapterError(IncompatibleModelError, AttributeError):
    """A Flux/SD3.5 adapter reached code written for SD1.5/SDXL adapters (an AttributeError too,
    so `hasattr` stays False)."""


class DitBase(str, enum.Enum):
    FLUX = "flux"
    SD35 = "sd3.5"

    @property
    def label(self) -> str:
        return {"flux": "Flux.1", "sd3.5": "SD3.5 Large"}[self.value]


class DitKind(str, enum.Enum):
    XLABS = "xlabs-flux"  # CLIP-L image_embeds -> 4/16 tokens; K/V on the 19 double blocks
    INSTANTX_FLUX = "instantx-flux"  # SigLIP pooled -> 128 tokens; K/V on every double and single block
    INSTANTX_SD35 = "instantx-sd3.5"  # SigLIP hidden states -> timestep resampler; AdaLN K/V per joint block


class DitEncoder(str, enum.Enum):
    CLIP_L = "clip-vit-l-14"
    SIGLIP = "siglip-so400m-14-384"


class DitEncoderOutput(str, enum.Enum):
    IMAGE_EMBEDS = "image_embeds"  # CLIP visual projection of the class token
    POOLED = "pooler_output"  # SigLIP attention-pooling ("MAP") head output
    PENULTIMATE = "penultimate_hidden_states"  # hidden states of the second-to-last layer


@dataclass(frozen=True)
class DitEncoderInfo:
    """A published image encoder: what ComfyUI's models/clip_vision should hold."""

    encoder: DitEncoder
    file_name: str
    repo: str
    hidden_size: int
    layers: int
    heads: int
    image_size: int
    patch_size: int
    projection_dim: int | None  # CLIP image_embeds width; SigLIP has no projection
    class_token: bool

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + (1 if self.class_token else 0)


DIT_ENCODERS: dict[DitEncoder, DitEncoderInfo] = {
    DitEncoder.CLIP_L: DitEncoderInfo(
        DitEncoder.CLIP_L, "clip_vision_l.safetensors", "openai/clip-vit-large-patch14",
        hidden_size=1024, layers=24, heads=16, image_size=224, patch_size=14, projection_dim=768, class_token=True,
    ),
    DitEncoder.SIGLIP: DitEncoderInfo(
        DitEncoder.SIGLIP, "sigclip_vision_patch14_384.safetensors", "google/siglip-so400m-patch14-384",
        hidden_size=1152, layers=27, heads=16, image_size=384, patch_size=14, projection_dim=None, class_token=False,
    ),
}


@dataclass(frozen=True)
class TimeResamplerSpec:
    """InstantX SD3.5 TimeResampler (diffusers' IPAdapterTimeImageProjection)."""

    dim: int  # 1280
    depth: int  # 4
    heads: int  # 20
    dim_head: int  # 64
    queries: int  # 64 image tokens
    in_dim: int  # 1152 (SigLIP hidden)
    out_dim: int  # 2432 (SD3.5 Large hidden)
    ff_mult: int  # 4
    timestep_dim: int  # 320 sinusoidal timestep features


@dataclass(frozen=True)
class DitAdapterSpec:
    """Everything the rest of the pack needs to know about one DiT adapter file."""

    kind: DitKind
    base: DitBase
    tokens: int  # image tokens per reference image
    token_dim: int  # width of the image tokens (the K/V projections' input)
    hidden_size: int  # K/V output width = the transformer's attention width
    blocks: int  # blocks with K/V weights, in file order
    double_blocks: int | None  # of those, Flux double / SD3 joint blocks (the rest: single); None = the model decides
    encoder: DitEncoder
    encoder_output: DitEncoderOutput
    feature_dim: int  # width of the encoder output the projection consumes
    kv_bias: bool  # XLabs K/V projections have biases, InstantX ones have none
    head_dim: int | None = None  # SD3.5: from the RMSNorm gains; Flux: decided by the model
    resampler: TimeResamplerSpec | None = None
    projection_hidden: int | None = None  # InstantX-Flux MLP width (2304)
    notes: tuple[str, ...] = field(default_factory=tuple)

    is_dit = True  # class attribute: lets host code tell the two spec types apart cheaply

    def __getattr__(self, name: str):
        # Only reached for attributes DiT specs lack, i.e. from SD1.5/SDXL code paths.
        if name.startswith("_"):
            raise AttributeError(name)
        raise NotAUNetAdapterError(
            f"'{self.title}' is an IP-Adapter for {self.base.label}; this node works with SD1.5/SDXL adapters "
            f"(it asked for '{name}'). Apply it with 'IPAdapter Apply (Flux / SD3.5)'."
        )

    @property
    def single_blocks(self) -> int | None:
        return None if self.double_blocks is None else self.blocks - self.double_blocks

    @property
    def lora(self) -> bool:
        return False

    @property
    def lora_rank(self) -> int:
        return 0

    @property
    def encoder_info(self) -> DitEncoderInfo:
        return DIT_ENCODERS[self.encoder]

    @property
    def timestep_dependent(self) -> bool:
        return self.resampler is not None

    @property
    def title(self) -> str:
        names = {
            DitKind.XLABS: f"XLabs Flux IP-Adapter {'v2' if self.tokens == 16 else 'v1' if self.tokens == 4 else ''}".strip(),
            DitKind.INSTANTX_FLUX: "InstantX FLUX.1-dev IP-Adapter",
            DitKind.INSTANTX_SD35: "InstantX SD3.5-Large IP-Adapter",
        }
        return f"{names[self.kind]} ({self.tokens} tokens)"

    def to_json(self) -> dict:
        info = self.encoder_info
        data = {
            "base": self.base.value,
            "kind": self.kind.value,
            "title": self.title,
            "tokens": self.tokens,
            "token_dim": self.token_dim,
            "hidden_size": self.hidden_size,
            "blocks": self.blocks,
            "double_blocks": self.double_blocks,
            "single_blocks": self.single_blocks,
            "image_encoder": self.encoder.value,
            "encoder_output": self.encoder_output.value,
            "feature_dim": self.feature_dim,
            "timestep_dependent": self.timestep_dependent,
            "lora": False,
            "lora_rank": 0,
            "clip_vision_file": info.file_name,
            "clip_image_size": info.image_size,
            "notes": list(self.notes),
        }
        if self.head_dim is not None:
            data["head_dim"] = self.head_dim
        if self.resampler is not None:
            data["resampler"] = dataclasses.asdict(self.resampler)
        return data


V_NORM_NOTE = (
    "InstantX's official attention_processor.py RMS-normalises K only (its V-norm line is commented out); "
    "the Shakker-Labs ComfyUI pack also normalises V. The default follows the official processor; "
    "'instantx_v_norm' switches to the Shakker behaviour."
)
NEGATIVE_NOTE_XLABS = "Negative image prompt: the CLIP embedding of a black image, as diffusers and x-flux use."
NEGATIVE_NOTE_SD35 = "Negative image prompt: zero SigLIP features, as the InstantX and diffusers pipelines use."
NEGATIVE_NOTE_INSTANTX = (
    "Negative image prompt: the published pipeline's choice is not documented; zeros (as DiffSynth-Studio) "
    "unless a negative image is connected. It only matters with real CFG (cfg > 1)."
)


def format_dit_spec(spec: DitAdapterSpec, name: str = "") -> str:
    """Human-readable description (the Info node and `python -m ip_adapter_core.inspect`)."""
    info = spec.encoder_info
    lines = [f"{name}: {spec.title}" if name else spec.title]
    lines.append(f"  base model:        {spec.base.label}")
    lines.append(f"  projection:        {spec.kind.value}, {spec.tokens} tokens per image ({spec.token_dim}-d)")
    if spec.double_blocks is None:
        where = f"{spec.blocks} blocks (double + single, split decided by the model)"
    elif spec.kind is DitKind.INSTANTX_FLUX:
        where = f"{spec.double_blocks} double + {spec.single_blocks} single blocks"
    elif spec.kind is DitKind.INSTANTX_SD35:
        where = f"{spec.blocks} joint blocks"
    else:
        where = f"{spec.blocks} double blocks"
    lines.append(f"  K/V layers:        {where}, width {spec.hidden_size}")
    lines.append(f"  image encoder:     {info.file_name} ({spec.encoder.value}, {spec.encoder_output.value})")
    if spec.resampler is not None:
        r = spec.resampler
        lines.append(f"  resampler:         dim {r.dim}, {r.heads} heads, depth {r.depth}, input {r.in_dim}, per timestep")
    lines.append("  LoRA:              none")
    lines.extend(f"  note: {note}" for note in spec.notes)
    return "\n".join(lines)
