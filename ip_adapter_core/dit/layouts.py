"""Key tables of the DiT IP-Adapters: the published names and the pack's canonical names.

Canonical names are InstantX's (and diffusers'): `image_proj.<module>` for the projection and
`ip_adapter.<j>.<module>` for block j's K/V layers, j in the order of diffusers'
`attn_processors` (Flux: the double blocks, then the single blocks; SD3: the joint blocks).
XLabs files use other names; `to_canonical` maps every known naming onto the canonical one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .spec import (
    NEGATIVE_NOTE_INSTANTX,
    NEGATIVE_NOTE_SD35,
    NEGATIVE_NOTE_XLABS,
    V_NORM_NOTE,
    DitAdapterSpec,
    DitBase,
    DitEncoder,
    DitEncoderOutput,
    DitKind,
    TimeResamplerSpec,
)

Shape = tuple[int, ...]

# The base models (from the reference: BFL Flux.1-dev, Stability SD3.5 Large).
FLUX_HIDDEN, FLUX_HEADS, FLUX_HEAD_DIM = 3072, 24, 128
FLUX_DOUBLE, FLUX_SINGLE, FLUX_CONTEXT = 19, 38, 4096
SD35_HIDDEN, SD35_HEADS, SD35_HEAD_DIM, SD35_BLOCKS = 2432, 38, 64, 38

XLABS_PROJ = "ip_adapter_proj_model."
XLABS_KV = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")
CANON_KV = re.compile(r"^(\d+)\.to_([kv])_ip\.(weight|bias)$")
# diffusers' names for the SD3.5 resampler layers -> InstantX's (inverse of diffusers'
# loaders/transformer_sd3.py conversion), for files saved from a diffusers pipeline.
_DIFFUSERS_RESAMPLER = (
    (re.compile(r"^layers\.(\d+)\.ln0\."), r"layers.\1.0.norm1."),
    (re.compile(r"^layers\.(\d+)\.ln1\."), r"layers.\1.0.norm2."),
    (re.compile(r"^layers\.(\d+)\.attn\.to_q\."), r"layers.\1.0.to_q."),
    (re.compile(r"^layers\.(\d+)\.attn\.to_kv\."), r"layers.\1.0.to_kv."),
    (re.compile(r"^layers\.(\d+)\.attn\.to_out\.0\."), r"layers.\1.0.to_out."),
    (re.compile(r"^layers\.(\d+)\.adaln_norm\."), r"layers.\1.1.0."),
    (re.compile(r"^layers\.(\d+)\.ff\.net\.0\.proj\."), r"layers.\1.1.1."),
    (re.compile(r"^layers\.(\d+)\.ff\.net\.2\."), r"layers.\1.1.3."),
    (re.compile(r"^layers\.(\d+)\.adaln_proj\."), r"layers.\1.2.1."),
)


# --- specs --------------------------------------------------------------------------------


def xlabs_spec(tokens: int, feature_dim: int = 768, token_dim: int = FLUX_CONTEXT, hidden: int = FLUX_HIDDEN,
               blocks: int = FLUX_DOUBLE) -> DitAdapterSpec:
    return DitAdapterSpec(
        kind=DitKind.XLABS, base=DitBase.FLUX, tokens=tokens, token_dim=token_dim, hidden_size=hidden,
        blocks=blocks, double_blocks=blocks, encoder=DitEncoder.CLIP_L, encoder_output=DitEncoderOutput.IMAGE_EMBEDS,
        feature_dim=feature_dim, kv_bias=True, notes=(NEGATIVE_NOTE_XLABS,),
    )


def instantx_flux_spec(tokens: int = 128, feature_dim: int = 1152, mlp: int = 2304, token_dim: int = 4096,
                       hidden: int = FLUX_HIDDEN, blocks: int = FLUX_DOUBLE + FLUX_SINGLE) -> DitAdapterSpec:
    """The file does not say where the double blocks end: 57 blocks are Flux.1's 19 + 38;
    for any other count (None) the model decides."""
    return DitAdapterSpec(
        kind=DitKind.INSTANTX_FLUX, base=DitBase.FLUX, tokens=tokens, token_dim=token_dim, hidden_size=hidden,
        blocks=blocks, double_blocks=FLUX_DOUBLE if blocks == FLUX_DOUBLE + FLUX_SINGLE else None,
        encoder=DitEncoder.SIGLIP, encoder_output=DitEncoderOutput.POOLED, feature_dim=feature_dim,
        kv_bias=False, projection_hidden=mlp, notes=(V_NORM_NOTE, NEGATIVE_NOTE_INSTANTX),
    )


def sd35_spec(resampler: TimeResamplerSpec | None = None, hidden: int = SD35_HIDDEN, blocks: int = SD35_BLOCKS,
              head_dim: int = SD35_HEAD_DIM) -> DitAdapterSpec:
    res = resampler or TimeResamplerSpec(dim=1280, depth=4, heads=20, dim_head=64, queries=64, in_dim=1152,
                                         out_dim=hidden, ff_mult=4, timestep_dim=320)
    return DitAdapterSpec(
        kind=DitKind.INSTANTX_SD35, base=DitBase.SD35, tokens=res.queries, token_dim=res.out_dim, hidden_size=hidden,
        blocks=blocks, double_blocks=blocks, encoder=DitEncoder.SIGLIP, encoder_output=DitEncoderOutput.PENULTIMATE,
        feature_dim=res.in_dim, kv_bias=False, head_dim=head_dim, resampler=res, notes=(NEGATIVE_NOTE_SD35,),
    )


# --- layouts ------------------------------------------------------------------------------


def _resampler_layout(r: TimeResamplerSpec) -> dict[str, Shape]:
    inner = r.heads * r.dim_head
    out: dict[str, Shape] = {
        "latents": (1, r.queries, r.dim),
        "proj_in.weight": (r.dim, r.in_dim),
        "proj_in.bias": (r.dim,),
        "proj_out.weight": (r.out_dim, r.dim),
        "proj_out.bias": (r.out_dim,),
        "norm_out.weight": (r.out_dim,),
        "norm_out.bias": (r.out_dim,),
        "time_embedding.linear_1.weight": (r.dim, r.timestep_dim),
        "time_embedding.linear_1.bias": (r.dim,),
        "time_embedding.linear_2.weight": (r.dim, r.dim),
        "time_embedding.linear_2.bias": (r.dim,),
    }
    for i in range(r.depth):
        p = f"layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            out[f"{p}{norm}.weight"] = (r.dim,)
            out[f"{p}{norm}.bias"] = (r.dim,)
        out[f"{p}0.to_q.weight"] = (inner, r.dim)
        out[f"{p}0.to_kv.weight"] = (2 * inner, r.dim)
        out[f"{p}0.to_out.weight"] = (r.dim, inner)
        out[f"{p}1.1.weight"] = (r.dim * r.ff_mult, r.dim)
        out[f"{p}1.3.weight"] = (r.dim, r.dim * r.ff_mult)
        out[f"{p}2.1.weight"] = (4 * r.dim, r.dim)
        out[f"{p}2.1.bias"] = (4 * r.dim,)
    return out


def image_proj_layout(spec: DitAdapterSpec) -> dict[str, Shape]:
    """Canonical `image_proj` keys (without the prefix) -> shapes."""
    d = spec.token_dim
    if spec.kind is DitKind.XLABS:
        return {"proj.weight": (spec.tokens * d, spec.feature_dim), "proj.bias": (spec.tokens * d,),
                "norm.weight": (d,), "norm.bias": (d,)}
    if spec.kind is DitKind.INSTANTX_FLUX:
        h = spec.projection_hidden or 2304
        return {"proj.0.weight": (h, spec.feature_dim), "proj.0.bias": (h,),
                "proj.2.weight": (spec.tokens * d, h), "proj.2.bias": (spec.tokens * d,),
                "norm.weight": (d,), "norm.bias": (d,)}
    assert spec.resampler is not None
    return _resampler_layout(spec.resampler)


def blocks_layout(spec: DitAdapterSpec) -> dict[str, Shape]:
    """Canonical `ip_adapter` keys (without the prefix) -> shapes."""
    out: dict[str, Shape] = {}
    h, d = spec.hidden_size, spec.token_dim
    for j in range(spec.blocks):
        if spec.kind is DitKind.INSTANTX_SD35:
            r = spec.resampler
            assert r is not None and spec.head_dim is not None
            out[f"{j}.norm_ip.linear.weight"] = (2 * d, r.dim)
            out[f"{j}.norm_ip.linear.bias"] = (2 * d,)
        out[f"{j}.to_k_ip.weight"] = (h, d)
        if spec.kv_bias:
            out[f"{j}.to_k_ip.bias"] = (h,)
        out[f"{j}.to_v_ip.weight"] = (h, d)
        if spec.kv_bias:
            out[f"{j}.to_v_ip.bias"] = (h,)
        if spec.kind is DitKind.INSTANTX_SD35:
            for norm in ("norm_q", "norm_k", "norm_ip_k"):
                out[f"{j}.{norm}.weight"] = (spec.head_dim,)
    return out


def canonical_layout(spec: DitAdapterSpec) -> dict[str, Shape]:
    out = {f"image_proj.{k}": v for k, v in image_proj_layout(spec).items()}
    out.update({f"ip_adapter.{k}": v for k, v in blocks_layout(spec).items()})
    return out


def published_layout(spec: DitAdapterSpec) -> dict[str, Shape]:
    """Flat key -> shape table in the names the published file uses (InstantX .bin files
    are nested `{"image_proj": ..., "ip_adapter": ...}`; flattened, their keys carry those
    prefixes)."""
    if spec.kind is not DitKind.XLABS:
        return canonical_layout(spec)
    out = {XLABS_PROJ + k: v for k, v in image_proj_layout(spec).items()}
    for key, shape in blocks_layout(spec).items():
        j, name, end = key.split(".")
        kv = name[len("to_")]
        out[f"double_blocks.{j}.processor.ip_adapter_double_stream_{kv}_proj.{end}"] = shape
    return out


def parameter_count(spec: DitAdapterSpec) -> int:
    total = 0
    for shape in canonical_layout(spec).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


# --- naming ---------------------------------------------------------------------------------


def to_canonical(state: Mapping) -> tuple[dict, dict, str]:
    """(image_proj, ip_adapter, naming) with canonical keys from any known naming.

    naming: "xlabs" (XLabs names), "nested" ({"image_proj", "ip_adapter"} dicts),
    "flat" (prefixed keys), "" (nothing DiT-like found: both dicts empty)."""
    if "image_proj" in state and "ip_adapter" in state and isinstance(state["image_proj"], Mapping):
        proj, kv = dict(state["image_proj"]), dict(state["ip_adapter"])
        return _resampler_names(proj), kv, "nested"
    proj: dict = {}
    kv: dict = {}
    naming = ""
    for key, value in state.items():
        key = str(key)
        if key.startswith(XLABS_PROJ):
            proj[key[len(XLABS_PROJ):]] = value
            naming = "xlabs"
            continue
        m = XLABS_KV.match(key)
        if m:
            kv[f"{m.group(1)}.to_{m.group(2)}_ip.{m.group(3)}"] = value
            naming = "xlabs"
            continue
        for prefix, target in (("image_proj.", proj), ("ip_adapter.", kv)):
            if key.startswith(prefix):
                target[key[len(prefix):]] = value
                naming = naming or "flat"
                break
    return _resampler_names(proj), kv, naming


def _resampler_names(proj: dict) -> dict:
    if not any(k.startswith("layers.") and (".ln0." in k or ".attn." in k or ".adaln_" in k) for k in proj):
        return proj
    out = {}
    for key, value in proj.items():
        for pattern, repl in _DIFFUSERS_RESAMPLER:
            new, n = pattern.subn(repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out
