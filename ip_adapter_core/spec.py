"""Typed description of an IP-Adapter checkpoint, decided from its tensors alone."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field


class BaseModel(str, enum.Enum):
    SD15 = "sd15"
    SDXL = "sdxl"
    KOLORS = "kolors"

    @property
    def label(self) -> str:
        return {"sd15": "SD1.5", "sdxl": "SDXL", "kolors": "Kolors"}[self.value]


class ProjectionKind(str, enum.Enum):
    LINEAR = "linear"  # ImageProjModel: image_embeds -> 4 tokens
    FULL_FACE_MLP = "full-face-mlp"  # MLP over every CLIP token (257)
    RESAMPLER = "resampler"  # Perceiver resampler with learned queries (Plus)
    FACEID_MLP = "faceid-mlp"  # insightface id -> 4 tokens (+ LoRA in the file)
    FACEID_PLUS = "faceid-plus"  # id MLP tokens refined by a perceiver over CLIP features
    PORTRAIT = "faceid-portrait"  # id MLP -> 16 tokens per face, no LoRA
    PORTRAIT_UNNORM = "faceid-portrait-unnorm"  # resampler over the raw (unnormalised) id


class ImageEncoder(str, enum.Enum):
    VIT_H = "clip-vit-h-14"
    VIT_BIGG = "clip-vit-bigg-14"
    VIT_L_336 = "clip-vit-l-14-336"
    INSIGHTFACE = "insightface"
    INSIGHTFACE_VIT_H = "insightface+clip-vit-h-14"


class EncoderOutput(str, enum.Enum):
    IMAGE_EMBEDS = "image_embeds"
    PENULTIMATE = "penultimate_hidden_states"
    FACE = "face_embedding"


@dataclass(frozen=True)
class ClipEncoderInfo:
    """A published CLIP image encoder: what ComfyUI's `models/clip_vision` should hold."""

    encoder: ImageEncoder
    file_name: str
    hidden_size: int
    projection_dim: int
    image_size: int
    layers: int

    @property
    def tokens(self) -> int:
        return (self.image_size // 14) ** 2 + 1


CLIP_ENCODERS: dict[ImageEncoder, ClipEncoderInfo] = {
    ImageEncoder.VIT_H: ClipEncoderInfo(
        ImageEncoder.VIT_H, "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", 1280, 1024, 224, 32
    ),
    ImageEncoder.VIT_BIGG: ClipEncoderInfo(
        ImageEncoder.VIT_BIGG, "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", 1664, 1280, 224, 48
    ),
    ImageEncoder.VIT_L_336: ClipEncoderInfo(
        ImageEncoder.VIT_L_336, "clip-vit-large-patch14-336.bin", 1024, 768, 336, 24
    ),
}

FACE_EMBEDDING_DIM = 512

FACEID_PLUS_NOTE = (
    "FaceID-Plus v1 and v2 files hold identical tensors; v2 adds the shortcut "
    "(tokens + s * perceiver). Choose it with the 'faceid_v2' option."
)


def lora_note(rank: int) -> str:
    return (
        f"Carries rank-{rank} LoRA weights for the UNet's attention; apply them with the FaceID "
        "nodes' lora_strength (or load the published *_lora.safetensors)."
    )


def clip_encoder_for_width(width: int, output: EncoderOutput) -> ClipEncoderInfo | None:
    """The published CLIP encoder whose `output` has this width, if any."""
    for info in CLIP_ENCODERS.values():
        have = info.projection_dim if output is EncoderOutput.IMAGE_EMBEDS else info.hidden_size
        if have == width:
            return info
    return None


@dataclass(frozen=True)
class ResamplerSpec:
    dim: int
    depth: int
    heads: int
    dim_head: int
    queries: int  # 0 for the FaceID-Plus perceiver, whose queries are the id tokens
    in_dim: int
    out_dim: int
    ff_mult: int = 4


@dataclass(frozen=True)
class AdapterSpec:
    """Everything the rest of the pack needs to know about one adapter file."""

    base: BaseModel
    kind: ProjectionKind
    tokens: int  # image tokens per reference image (per face for portrait)
    cross_attention_dim: int  # width of the image tokens, = the UNet's context width
    layer_widths: tuple[int, ...]  # attn2 inner width of every layer, checkpoint order
    encoder: ImageEncoder
    encoder_output: EncoderOutput  # what the projection consumes first
    feature_dim: int  # width of that input (CLIP embeds/hidden, or 512 for faces)
    clip_output: EncoderOutput | None = None  # FaceID-Plus: CLIP features of the face crop
    clip_dim: int | None = None
    resampler: ResamplerSpec | None = None
    lora_rank: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def layers(self) -> int:
        return len(self.layer_widths)

    @property
    def lora(self) -> bool:
        return self.lora_rank > 0

    @property
    def clip_encoder(self) -> ClipEncoderInfo | None:
        if self.encoder is ImageEncoder.INSIGHTFACE_VIT_H:
            return CLIP_ENCODERS[ImageEncoder.VIT_H]
        return CLIP_ENCODERS.get(self.encoder)

    @property
    def needs_clip(self) -> bool:
        return self.clip_encoder is not None

    @property
    def needs_face(self) -> bool:
        return self.encoder in (ImageEncoder.INSIGHTFACE, ImageEncoder.INSIGHTFACE_VIT_H)

    @property
    def title(self) -> str:
        names = {
            ProjectionKind.LINEAR: "IP-Adapter (4 tokens)",
            ProjectionKind.FULL_FACE_MLP: "IP-Adapter Full Face",
            ProjectionKind.RESAMPLER: "IP-Adapter Plus",
            ProjectionKind.FACEID_MLP: "IP-Adapter FaceID",
            ProjectionKind.FACEID_PLUS: "IP-Adapter FaceID-Plus",
            ProjectionKind.PORTRAIT: "IP-Adapter FaceID Portrait",
            ProjectionKind.PORTRAIT_UNNORM: "IP-Adapter FaceID Portrait (unnormalised)",
        }
        return f"{names[self.kind]} for {self.base.label}"

    def to_json(self) -> dict:
        data = {
            "base": self.base.value,
            "kind": self.kind.value,
            "title": self.title,
            "tokens": self.tokens,
            "cross_attention_layers": self.layers,
            "cross_attention_dim": self.cross_attention_dim,
            "image_encoder": self.encoder.value,
            "encoder_output": self.encoder_output.value,
            "feature_dim": self.feature_dim,
            "lora": self.lora,
            "lora_rank": self.lora_rank,
            "notes": list(self.notes),
        }
        if self.clip_output is not None:
            data["clip_output"] = self.clip_output.value
            data["clip_dim"] = self.clip_dim
        clip = self.clip_encoder
        if clip is not None:
            data["clip_vision_file"] = clip.file_name
            data["clip_image_size"] = clip.image_size
        if self.resampler is not None:
            data["resampler"] = dataclasses.asdict(self.resampler)
        return data
