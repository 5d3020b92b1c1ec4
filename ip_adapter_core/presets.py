"""Unified-loader presets, resolved by file content.

A preset names what the user wants (e.g. PLUS); the candidates are the installed files
whose tensors say they are that kind of adapter for the model's base. Variants with
identical tensors (base vs light, plus vs plus-face vs composition) can only be told apart
by name, so the name is used as a tie-break among content-matching files, never alone.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .spec import CLIP_ENCODERS, AdapterSpec, BaseModel, ImageEncoder, ProjectionKind


class Preset(str, enum.Enum):
    LIGHT = "light - SD1.5 only (low strength)"
    STANDARD = "standard (medium strength)"
    VIT_G = "vit-g (medium strength)"
    PLUS = "plus (high strength)"
    PLUS_FACE = "plus face (portraits)"
    FULL_FACE = "full face - SD1.5 only (portraits stronger)"
    COMPOSITION = "composition (ostris)"
    KOLORS = "kolors plus"
    # Flux / SD3.5 (DiT) adapters: resolved by ip_adapter_core.dit.presets
    FLUX_XLABS_V2 = "flux xlabs v2 (CLIP-L, 16 tokens)"
    FLUX_XLABS_V1 = "flux xlabs v1 (CLIP-L, 4 tokens)"
    FLUX_INSTANTX = "flux instantx (SigLIP, 128 tokens)"
    SD35_INSTANTX = "sd3.5 large instantx (SigLIP)"


@dataclass(frozen=True)
class _Rule:
    kind: ProjectionKind
    encoder: ImageEncoder | None  # None: whichever the base's published file uses
    prefer: tuple[str, ...] = ()  # name fragments that rank a file higher (tie-break)
    avoid: tuple[str, ...] = ()  # name fragments that disqualify (identical layouts)
    bases: tuple[BaseModel, ...] = (BaseModel.SD15, BaseModel.SDXL)
    suggest: dict | None = None


_H, _G = ImageEncoder.VIT_H, ImageEncoder.VIT_BIGG
_RULES: dict[Preset, _Rule] = {
    Preset.LIGHT: _Rule(ProjectionKind.LINEAR, _H, prefer=("light_v11", "light-v11", "light"), bases=(BaseModel.SD15,),
                        suggest={BaseModel.SD15: "ip-adapter_sd15_light_v11.bin"}),
    Preset.STANDARD: _Rule(ProjectionKind.LINEAR, _H, avoid=("light",),
                           suggest={BaseModel.SD15: "ip-adapter_sd15.safetensors",
                                    BaseModel.SDXL: "ip-adapter_sdxl_vit-h.safetensors"}),
    Preset.VIT_G: _Rule(ProjectionKind.LINEAR, _G,
                        suggest={BaseModel.SD15: "ip-adapter_sd15_vit-G.safetensors",
                                 BaseModel.SDXL: "ip-adapter_sdxl.safetensors"}),
    Preset.PLUS: _Rule(ProjectionKind.RESAMPLER, _H, avoid=("face", "composition"),
                       suggest={BaseModel.SD15: "ip-adapter-plus_sd15.safetensors",
                                BaseModel.SDXL: "ip-adapter-plus_sdxl_vit-h.safetensors"}),
    Preset.PLUS_FACE: _Rule(ProjectionKind.RESAMPLER, _H, prefer=("face",), avoid=("composition",),
                            suggest={BaseModel.SD15: "ip-adapter-plus-face_sd15.safetensors",
                                     BaseModel.SDXL: "ip-adapter-plus-face_sdxl_vit-h.safetensors"}),
    Preset.FULL_FACE: _Rule(ProjectionKind.FULL_FACE_MLP, _H, bases=(BaseModel.SD15,),
                            suggest={BaseModel.SD15: "ip-adapter-full-face_sd15.safetensors"}),
    Preset.COMPOSITION: _Rule(ProjectionKind.RESAMPLER, _H, prefer=("composition",), avoid=("face",),
                              suggest={BaseModel.SD15: "ip_plus_composition_sd15.safetensors",
                                       BaseModel.SDXL: "ip_plus_composition_sdxl.safetensors"}),
    Preset.KOLORS: _Rule(ProjectionKind.RESAMPLER, ImageEncoder.VIT_L_336, bases=(BaseModel.KOLORS,),
                         suggest={BaseModel.KOLORS: "ip_adapter_plus_general.bin"}),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s.\-]+", "_", name.lower())


def rank(preset: Preset, base: BaseModel, candidates: Iterable[tuple[str, AdapterSpec]]) -> list[str]:
    """Names of the files that fit `preset` for a model of `base`, best first."""
    rule = _RULES.get(preset)
    if rule is None:  # a Flux / SD3.5 preset: see ip_adapter_core.dit.presets
        return []
    scored = []
    for name, spec in candidates:
        if spec.base is not base or spec.kind is not rule.kind:
            continue
        if rule.encoder is not None and spec.encoder is not rule.encoder:
            continue
        n = _norm(os.path.basename(name))
        if any(_norm(a) in n for a in rule.avoid) and not any(_norm(p) in n for p in rule.prefer):
            continue
        if rule.prefer and not any(_norm(p) in n for p in rule.prefer):
            if rule.kind is ProjectionKind.RESAMPLER or preset is Preset.LIGHT:
                continue  # identical layouts: without the name we cannot know the training
        score = next((len(rule.prefer) - i for i, p in enumerate(rule.prefer) if _norm(p) in n), 0)
        scored.append((-score, name))
    scored.sort()
    return [name for _, name in scored]


def supported(preset: Preset, base: BaseModel) -> bool:
    rule = _RULES.get(preset)
    return rule is not None and base in rule.bases


def suggested_file(preset: Preset, base: BaseModel) -> str | None:
    rule = _RULES.get(preset)
    return (rule.suggest or {}).get(base) if rule is not None else None


def clip_encoder_of(layout: dict[str, torch.Tensor]) -> ImageEncoder | None:
    """Which published CLIP image encoder a clip_vision file is, from its tensor shapes."""
    keys = layout
    prefix = next((p for p in ("vision_model.", "visual.") if any(k.startswith(p) for k in keys)), None)
    if prefix is None:
        return None
    if prefix == "vision_model.":
        layers = {int(m.group(1)) for k in keys if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
        cls = keys.get("vision_model.embeddings.class_embedding")
        pos = keys.get("vision_model.embeddings.position_embedding.weight")
        proj = keys.get("visual_projection.weight")
    else:
        layers = {int(m.group(1)) for k in keys if (m := re.match(r"visual\.transformer\.resblocks\.(\d+)\.", k))}
        cls = keys.get("visual.class_embedding")
        pos = keys.get("visual.positional_embedding")
        p = keys.get("visual.proj")
        proj = p.T if p is not None else None
    if cls is None or pos is None or proj is None:
        return None
    hidden, tokens, projection = int(cls.shape[-1]), int(pos.shape[0]), int(proj.shape[0])
    for info in CLIP_ENCODERS.values():
        if (info.hidden_size, info.tokens, info.projection_dim, info.layers) == (hidden, tokens, projection, len(layers)):
            return info.encoder
    return None
