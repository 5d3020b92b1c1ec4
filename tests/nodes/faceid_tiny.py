"""Small FaceID adapters for the tiny SD1.5/SDXL-layout UNets of tiny.py.

The projections keep the published shapes where they are cheap (FaceID MLP 512 -> 1024 ->
tokens x cross) and shrink the perceivers (depth 1, 2 heads, CLIP input = the tiny encoder's
64-d hidden states); the K/V layers and the LoRA follow the tiny UNet's layer widths.
"""

from __future__ import annotations

import tiny  # noqa: F401  (host first)
from ipadapter_kit.ip_adapter_core.spec import (
    AdapterSpec,
    BaseModel,
    EncoderOutput,
    ImageEncoder,
    ProjectionKind,
    ResamplerSpec,
)
from ipadapter_kit.nodes import host

LORA_RANK = 4
TINY_CLIP_HIDDEN = 64

KINDS = {
    "faceid": ProjectionKind.FACEID_MLP,
    "plus": ProjectionKind.FACEID_PLUS,
    "portrait": ProjectionKind.PORTRAIT,
    "unnorm": ProjectionKind.PORTRAIT_UNNORM,
}


def faceid_spec(model_patcher, kind: ProjectionKind, lora_rank: int | None = None, clip_hidden: int = TINY_CLIP_HIDDEN) -> AdapterSpec:
    layers = host.cross_attention_layers(model_patcher)
    widths = tuple(layer.width for layer in layers)
    cross = layers[0].context_dim
    base = BaseModel.SD15 if cross == 768 else BaseModel.SDXL
    face = dict(encoder=ImageEncoder.INSIGHTFACE, encoder_output=EncoderOutput.FACE, feature_dim=512)
    if kind is ProjectionKind.FACEID_MLP:
        return AdapterSpec(base, kind, 4, cross, widths, lora_rank=LORA_RANK if lora_rank is None else lora_rank, **face)
    if kind is ProjectionKind.PORTRAIT:
        return AdapterSpec(base, kind, 16, cross, widths, lora_rank=0, **face)
    if kind is ProjectionKind.PORTRAIT_UNNORM:
        res = ResamplerSpec(dim=64, depth=1, heads=1, dim_head=64, queries=16, in_dim=512, out_dim=cross, ff_mult=2)
        return AdapterSpec(base, kind, 16, cross, widths, resampler=res, lora_rank=0, **face)
    if kind is ProjectionKind.FACEID_PLUS:
        res = ResamplerSpec(dim=cross, depth=1, heads=2, dim_head=64, queries=0, in_dim=clip_hidden, out_dim=cross, ff_mult=1)
        return AdapterSpec(
            base, kind, 4, cross, widths, ImageEncoder.INSIGHTFACE_VIT_H, EncoderOutput.FACE, 512,
            clip_output=EncoderOutput.PENULTIMATE, clip_dim=clip_hidden, resampler=res,
            lora_rank=LORA_RANK if lora_rank is None else lora_rank,
        )
    raise ValueError(kind)


def faceid_adapter(model_patcher, kind: ProjectionKind, seed: int = 0, name: str | None = None, **kw):
    spec = faceid_spec(model_patcher, kind, **kw)
    return tiny.tiny_adapter(spec, seed, name=name or f"tiny-{kind.value}.bin")

