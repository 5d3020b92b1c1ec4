"""FaceID specifics that need no host: presets found by content, the LoRA inside FaceID
files mapped onto UNet weights, the v1/v2 choice, which embedding each variant takes.

The LoRA of a FaceID `.bin` is stored per diffusers attention processor j = 0 .. 2N-1
(`{j}.to_{q,k,v,out}_lora.{down,up}.weight`): even j is attn1 (self-attention) and odd j
attn2 (cross-attention) of cross-attention layer j // 2, layers in checkpoint order.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .errors import UnknownLayoutError
from .spec import AdapterSpec, BaseModel, ProjectionKind

# The reference default of the v2 shortcut scale (tencent's s_scale, diffusers' shortcut_scale).
DEFAULT_V2_SCALE = 1.0
# The incumbent's default strength for the FaceID LoRA.
DEFAULT_LORA_STRENGTH = 0.6

_LORA_KEY = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
PROJECTIONS = ("q", "k", "v", "out")


def uses_raw_embedding(spec: AdapterSpec) -> bool:
    """portrait-unnorm takes insightface's raw `embedding`; every other FaceID the unit-length one."""
    return spec.kind is ProjectionKind.PORTRAIT_UNNORM


def is_faceid(spec: AdapterSpec) -> bool:
    return spec.needs_face


def expects_lora(spec: AdapterSpec) -> bool:
    """FaceID and FaceID-Plus were trained with a UNet LoRA; portrait variants were not."""
    return spec.kind in (ProjectionKind.FACEID_MLP, ProjectionKind.FACEID_PLUS)


# --- LoRA ------------------------------------------------------------------------------


def comfy_lora_targets(module_paths: Sequence[str]) -> dict[str, str]:
    """Processor-key stem -> ComfyUI UNet weight key, for a UNet whose cross-attention layers
    (checkpoint order) live at `module_paths` ("input_blocks.1.1.transformer_blocks.0", ...).

    The stems ("{j}.to_q") are what ComfyUI's LoRA loader expects before "_lora.down.weight",
    so `comfy.lora.load_lora(file_lora, comfy_lora_targets(paths))` reads the file's tensors
    as they are."""
    out = {}
    for i, path in enumerate(module_paths):
        for j, attn in ((2 * i, "attn1"), (2 * i + 1, "attn2")):
            for p in PROJECTIONS:
                leaf = "to_out.0" if p == "out" else f"to_{p}"
                out[f"{j}.to_{p}"] = f"diffusion_model.{path}.{attn}.{leaf}.weight"
    return out


def check_lora(lora: dict[str, torch.Tensor], spec: AdapterSpec, source: str = "<adapter>") -> int:
    """Refuse an incomplete or misshapen in-file LoRA; returns the number of target weights."""
    n = spec.layers
    want = {f"{j}.to_{p}_lora.{d}.weight" for j in range(2 * n) for p in PROJECTIONS for d in ("down", "up")}
    have = {k for k in lora if _LORA_KEY.match(k)}
    missing = sorted(want - have)
    extra = sorted(have - want)
    if missing or extra:
        raise UnknownLayoutError(
            f"'{source}': the FaceID LoRA should hold {len(want)} tensors for {n} layers; "
            f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected {extra[:3]}. "
            "The file may be incomplete; download it again."
        )
    for i, width in enumerate(spec.layer_widths):
        for j, ctx in ((2 * i, width), (2 * i + 1, spec.cross_attention_dim)):
            for p in PROJECTIONS:
                down = lora[f"{j}.to_{p}_lora.down.weight"]
                up = lora[f"{j}.to_{p}_lora.up.weight"]
                d_in = ctx if p in ("k", "v") else width
                if down.ndim != 2 or up.ndim != 2 or down.shape[1] != d_in or up.shape[0] != width or up.shape[1] != down.shape[0]:
                    raise UnknownLayoutError(
                        f"'{source}': LoRA '{j}.to_{p}' has down {list(down.shape)} and up {list(up.shape)}; "
                        f"expected down [rank, {d_in}] and up [{width}, rank]."
                    )
    return len(want) // 2


def lora_delta(lora: dict[str, torch.Tensor], stem: str) -> torch.Tensor:
    """up @ down of one processor weight (float32), e.g. stem '3.to_k'."""
    down = lora[f"{stem}_lora.down.weight"].float()
    up = lora[f"{stem}_lora.up.weight"].float()
    return up @ down


# --- v1 / v2 -----------------------------------------------------------------------------


class FaceIDVersion(str, enum.Enum):
    AUTO = "auto"
    V2 = "v2 (shortcut)"
    V1 = "v1 (no shortcut)"


def v2_from_name(name: str) -> bool | None:
    """FaceID-Plus v1 and v2 files hold identical layouts: only a name can tell them apart.
    True/False when the name says so, None when it does not."""
    n = re.sub(r"[\s.\-_]+", "", os.path.basename(name).lower())
    if "plusv2" in n or "faceidv2" in n:
        return True
    if "faceidplus" in n:
        return False
    return None


# --- presets -------------------------------------------------------------------------------


class FaceIDPreset(str, enum.Enum):
    FACEID = "FACEID"
    PLUS_V2 = "FACEID PLUS V2"
    PLUS_V1 = "FACEID PLUS (v1, SD1.5)"
    PORTRAIT = "PORTRAIT"
    PORTRAIT_UNNORM = "PORTRAIT UNNORM (SDXL)"


@dataclass(frozen=True)
class _FaceRule:
    kind: ProjectionKind
    bases: tuple[BaseModel, ...]
    prefer: tuple[str, ...] = ()  # name fragments ranking a file first (tie-break among identical layouts)
    demote: tuple[str, ...] = ()  # name fragments ranking a file last (still usable: same tensors)
    suggest: dict | None = None
    faceid_v2: bool | None = None


_SD15, _SDXL = BaseModel.SD15, BaseModel.SDXL
FACEID_RULES: dict[FaceIDPreset, _FaceRule] = {
    FaceIDPreset.FACEID: _FaceRule(
        ProjectionKind.FACEID_MLP, (_SD15, _SDXL),
        suggest={_SD15: "ip-adapter-faceid_sd15.bin", _SDXL: "ip-adapter-faceid_sdxl.bin"},
    ),
    FaceIDPreset.PLUS_V2: _FaceRule(
        ProjectionKind.FACEID_PLUS, (_SD15, _SDXL), prefer=("plusv2", "plus_v2", "v2"),
        suggest={_SD15: "ip-adapter-faceid-plusv2_sd15.bin", _SDXL: "ip-adapter-faceid-plusv2_sdxl.bin"},
        faceid_v2=True,
    ),
    FaceIDPreset.PLUS_V1: _FaceRule(
        ProjectionKind.FACEID_PLUS, (_SD15,), demote=("v2",),
        suggest={_SD15: "ip-adapter-faceid-plus_sd15.bin"}, faceid_v2=False,
    ),
    FaceIDPreset.PORTRAIT: _FaceRule(
        ProjectionKind.PORTRAIT, (_SD15, _SDXL), prefer=("v11",),
        suggest={_SD15: "ip-adapter-faceid-portrait-v11_sd15.bin", _SDXL: "ip-adapter-faceid-portrait_sdxl.bin"},
    ),
    FaceIDPreset.PORTRAIT_UNNORM: _FaceRule(
        ProjectionKind.PORTRAIT_UNNORM, (_SDXL,),
        suggest={_SDXL: "ip-adapter-faceid-portrait_sdxl_unnorm.bin"},
    ),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s.\-]+", "_", os.path.basename(name).lower())


def rank_faceid(preset: FaceIDPreset, base: BaseModel, candidates: Iterable[tuple[str, AdapterSpec]]) -> list[str]:
    """Installed files whose tensors make them `preset` adapters for `base`, best first.

    Content decides; names only order files with identical layouts (FaceID-Plus v1/v2)."""
    rule = FACEID_RULES[preset]
    scored = []
    for name, spec in candidates:
        if spec.base is not base or spec.kind is not rule.kind:
            continue
        n = _norm(name)
        score = 0
        for i, frag in enumerate(rule.prefer):
            if _norm(frag) in n:
                score = len(rule.prefer) - i
                break
        if any(_norm(frag) in n for frag in rule.demote):
            score = -1
        scored.append((-score, n, name))
    scored.sort()
    return [name for _, _, name in scored]


def faceid_supported(preset: FaceIDPreset, base: BaseModel) -> bool:
    return base in FACEID_RULES[preset].bases


def faceid_suggested_file(preset: FaceIDPreset, base: BaseModel) -> str | None:
    return (FACEID_RULES[preset].suggest or {}).get(base)


def companion_lora_names(adapter_name: str) -> list[str]:
    """Names the published separate LoRA of an adapter file has ('<stem>_lora.safetensors')."""
    stem = os.path.basename(adapter_name)
    for ext in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return [f"{stem}_lora.safetensors", f"{stem}-lora.safetensors"]
