"""The published IP-Adapter files: their descriptions and exact tensor layouts.

`state_layout(spec)` is the inverse of `detect.describe`: the key -> shape table a file of
that description holds. Tests check it against the published key tables; the synthetic
writers and the "closest known layout" hints use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import layouts
from .spec import (
    CLIP_ENCODERS,
    FACEID_PLUS_NOTE,
    AdapterSpec,
    BaseModel,
    EncoderOutput,
    ImageEncoder,
    ProjectionKind,
    ResamplerSpec,
    lora_note,
)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class PublishedAdapter:
    file_name: str
    repo: str
    spec: AdapterSpec
    published_bytes: int | None = None  # exact size of the published .safetensors, when known
    metadata_bytes: int = 0  # extra __metadata__ in that file (ostris)


def _widths(base: BaseModel) -> tuple[int, ...]:
    table = layouts.sd15_layers() if base is BaseModel.SD15 else layouts.sdxl_layers()
    return tuple(layer.hidden for layer in table)


def _cross(base: BaseModel) -> int:
    return layouts.SD15_CROSS_DIM if base is BaseModel.SD15 else layouts.SDXL_CROSS_DIM


def linear_spec(base: BaseModel, encoder: ImageEncoder) -> AdapterSpec:
    return AdapterSpec(
        base, ProjectionKind.LINEAR, 4, _cross(base), _widths(base), encoder,
        EncoderOutput.IMAGE_EMBEDS, CLIP_ENCODERS[encoder].projection_dim,
    )


def resampler_spec(base: BaseModel, encoder: ImageEncoder, dim: int, heads: int) -> AdapterSpec:
    hidden = CLIP_ENCODERS[encoder].hidden_size
    res = ResamplerSpec(dim=dim, depth=4, heads=heads, dim_head=64, queries=16, in_dim=hidden, out_dim=_cross(base))
    return AdapterSpec(
        base, ProjectionKind.RESAMPLER, 16, _cross(base), _widths(base), encoder,
        EncoderOutput.PENULTIMATE, hidden, resampler=res,
    )


def full_face_spec() -> AdapterSpec:
    enc = CLIP_ENCODERS[ImageEncoder.VIT_H]
    return AdapterSpec(
        BaseModel.SD15, ProjectionKind.FULL_FACE_MLP, enc.tokens, 768, _widths(BaseModel.SD15),
        ImageEncoder.VIT_H, EncoderOutput.PENULTIMATE, enc.hidden_size,
    )


def faceid_spec(base: BaseModel, tokens: int, lora_rank: int) -> AdapterSpec:
    kind = ProjectionKind.FACEID_MLP if lora_rank else ProjectionKind.PORTRAIT
    notes = (lora_note(lora_rank),) if lora_rank else ()
    return AdapterSpec(
        base, kind, tokens, _cross(base), _widths(base), ImageEncoder.INSIGHTFACE,
        EncoderOutput.FACE, 512, lora_rank=lora_rank, notes=notes,
    )


def faceid_plus_spec(base: BaseModel) -> AdapterSpec:
    cross = _cross(base)
    res = ResamplerSpec(dim=cross, depth=4, heads=cross // 64, dim_head=64, queries=0, in_dim=1280, out_dim=cross)
    return AdapterSpec(
        base, ProjectionKind.FACEID_PLUS, 4, cross, _widths(base), ImageEncoder.INSIGHTFACE_VIT_H,
        EncoderOutput.FACE, 512, clip_output=EncoderOutput.PENULTIMATE, clip_dim=1280,
        resampler=res, lora_rank=128,
        notes=(FACEID_PLUS_NOTE, lora_note(128)),
    )


def portrait_unnorm_spec() -> AdapterSpec:
    res = ResamplerSpec(dim=1280, depth=4, heads=20, dim_head=64, queries=16, in_dim=512, out_dim=2048)
    return AdapterSpec(
        BaseModel.SDXL, ProjectionKind.PORTRAIT_UNNORM, 16, 2048, _widths(BaseModel.SDXL),
        ImageEncoder.INSIGHTFACE, EncoderOutput.FACE, 512, resampler=res,
    )


SD15, SDXL = BaseModel.SD15, BaseModel.SDXL
H, G, L336 = ImageEncoder.VIT_H, ImageEncoder.VIT_BIGG, ImageEncoder.VIT_L_336
_H94, _FACEID = "h94/IP-Adapter", "h94/IP-Adapter-FaceID"

PUBLISHED: tuple[PublishedAdapter, ...] = (
    PublishedAdapter("ip-adapter_sd15.safetensors", _H94, linear_spec(SD15, H), 44_642_768),
    PublishedAdapter("ip-adapter_sd15_light.safetensors", _H94, linear_spec(SD15, H), 44_642_768),
    PublishedAdapter("ip-adapter_sd15_light_v11.bin", _H94, linear_spec(SD15, H)),
    PublishedAdapter("ip-adapter_sd15_vit-G.safetensors", _H94, linear_spec(SD15, G), 46_215_640),
    PublishedAdapter("ip-adapter-plus_sd15.safetensors", _H94, resampler_spec(SD15, H, 768, 12), 98_183_288),
    PublishedAdapter("ip-adapter-plus-face_sd15.safetensors", _H94, resampler_spec(SD15, H, 768, 12), 98_183_288),
    PublishedAdapter("ip-adapter-full-face_sd15.safetensors", _H94, full_face_spec(), 43_592_352),
    PublishedAdapter("ip_plus_composition_sd15.safetensors", "ostris/ip-composition-adapter",
                     resampler_spec(SD15, H, 768, 12), 98_183_728, metadata_bytes=440),
    PublishedAdapter("ip-adapter_sdxl.safetensors", _H94, linear_spec(SDXL, G), 702_585_376),
    PublishedAdapter("ip-adapter_sdxl_vit-h.safetensors", _H94, linear_spec(SDXL, H), 698_391_064),
    PublishedAdapter("ip-adapter-plus_sdxl_vit-h.safetensors", _H94, resampler_spec(SDXL, H, 1280, 20), 847_517_512),
    PublishedAdapter("ip-adapter-plus-face_sdxl_vit-h.safetensors", _H94, resampler_spec(SDXL, H, 1280, 20), 847_517_512),
    PublishedAdapter("ip_plus_composition_sdxl.safetensors", "ostris/ip-composition-adapter",
                     resampler_spec(SDXL, H, 1280, 20), 847_517_960, metadata_bytes=448),
    PublishedAdapter("ip-adapter-faceid_sd15.bin", _FACEID, faceid_spec(SD15, 4, 128)),
    PublishedAdapter("ip-adapter-faceid-plus_sd15.bin", _FACEID, faceid_plus_spec(SD15)),
    PublishedAdapter("ip-adapter-faceid-plusv2_sd15.bin", _FACEID, faceid_plus_spec(SD15)),
    PublishedAdapter("ip-adapter-faceid_sdxl.bin", _FACEID, faceid_spec(SDXL, 4, 128)),
    PublishedAdapter("ip-adapter-faceid-plusv2_sdxl.bin", _FACEID, faceid_plus_spec(SDXL)),
    PublishedAdapter("ip-adapter-faceid-portrait_sd15.bin", _FACEID, faceid_spec(SD15, 16, 0)),
    PublishedAdapter("ip-adapter-faceid-portrait-v11_sd15.bin", _FACEID, faceid_spec(SD15, 16, 0)),
    PublishedAdapter("ip-adapter-faceid-portrait_sdxl.bin", _FACEID, faceid_spec(SDXL, 16, 0)),
    PublishedAdapter("ip-adapter-faceid-portrait_sdxl_unnorm.bin", _FACEID, portrait_unnorm_spec()),
    PublishedAdapter("ip_adapter_plus_general.bin", "Kwai-Kolors/Kolors-IP-Adapter-Plus",
                     AdapterSpec(
                         BaseModel.KOLORS, ProjectionKind.RESAMPLER, 16, 2048, _widths(SDXL), L336,
                         EncoderOutput.PENULTIMATE, 1024,
                         resampler=ResamplerSpec(dim=2048, depth=4, heads=12, dim_head=64, queries=16,
                                                 in_dim=1024, out_dim=2048),
                     )),
)


def published(file_name: str) -> PublishedAdapter:
    for entry in PUBLISHED:
        if entry.file_name == file_name:
            return entry
    raise KeyError(file_name)


# --- layouts -----------------------------------------------------------------------


def _resampler_layout(res: ResamplerSpec, prefix: str) -> dict[str, Shape]:
    inner = res.heads * res.dim_head
    out: dict[str, Shape] = {}
    if res.queries:
        out[prefix + "latents"] = (1, res.queries, res.dim)
    out[prefix + "proj_in.weight"] = (res.dim, res.in_dim)
    out[prefix + "proj_in.bias"] = (res.dim,)
    out[prefix + "proj_out.weight"] = (res.out_dim, res.dim)
    out[prefix + "proj_out.bias"] = (res.out_dim,)
    out[prefix + "norm_out.weight"] = (res.out_dim,)
    out[prefix + "norm_out.bias"] = (res.out_dim,)
    for i in range(res.depth):
        p = f"{prefix}layers.{i}."
        for norm in ("norm1", "norm2"):
            out[f"{p}0.{norm}.weight"] = (res.dim,)
            out[f"{p}0.{norm}.bias"] = (res.dim,)
        out[f"{p}0.to_q.weight"] = (inner, res.dim)
        out[f"{p}0.to_kv.weight"] = (2 * inner, res.dim)
        out[f"{p}0.to_out.weight"] = (res.dim, inner)
        out[f"{p}1.0.weight"] = (res.dim,)
        out[f"{p}1.0.bias"] = (res.dim,)
        out[f"{p}1.1.weight"] = (res.dim * res.ff_mult, res.dim)
        out[f"{p}1.3.weight"] = (res.dim, res.dim * res.ff_mult)
    return out


def image_proj_layout(spec: AdapterSpec) -> dict[str, Shape]:
    d = spec.cross_attention_dim
    kind = spec.kind
    if kind is ProjectionKind.LINEAR:
        return {"proj.weight": (d * spec.tokens, spec.feature_dim), "proj.bias": (d * spec.tokens,),
                "norm.weight": (d,), "norm.bias": (d,)}
    if kind is ProjectionKind.FULL_FACE_MLP:
        f = spec.feature_dim
        return {"proj.0.weight": (f, f), "proj.0.bias": (f,), "proj.2.weight": (d, f), "proj.2.bias": (d,),
                "proj.3.weight": (d,), "proj.3.bias": (d,)}
    if kind in (ProjectionKind.FACEID_MLP, ProjectionKind.PORTRAIT, ProjectionKind.FACEID_PLUS):
        out = {"proj.0.weight": (1024, spec.feature_dim), "proj.0.bias": (1024,),
               "proj.2.weight": (d * spec.tokens, 1024), "proj.2.bias": (d * spec.tokens,),
               "norm.weight": (d,), "norm.bias": (d,)}
        if kind is ProjectionKind.FACEID_PLUS:
            assert spec.resampler is not None
            out.update(_resampler_layout(spec.resampler, "perceiver_resampler."))
        return out
    assert spec.resampler is not None
    return _resampler_layout(spec.resampler, "")


def ip_adapter_layout(spec: AdapterSpec) -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    d = spec.cross_attention_dim
    for i, width in enumerate(spec.layer_widths):
        if spec.lora_rank:
            r = spec.lora_rank
            for j, ctx in ((2 * i, width), (2 * i + 1, d)):
                out[f"{j}.to_q_lora.down.weight"] = (r, width)
                out[f"{j}.to_q_lora.up.weight"] = (width, r)
                out[f"{j}.to_k_lora.down.weight"] = (r, ctx)
                out[f"{j}.to_k_lora.up.weight"] = (width, r)
                out[f"{j}.to_v_lora.down.weight"] = (r, ctx)
                out[f"{j}.to_v_lora.up.weight"] = (width, r)
                out[f"{j}.to_out_lora.down.weight"] = (r, width)
                out[f"{j}.to_out_lora.up.weight"] = (width, r)
        out[f"{2 * i + 1}.to_k_ip.weight"] = (width, d)
        out[f"{2 * i + 1}.to_v_ip.weight"] = (width, d)
    return out


def state_layout(spec: AdapterSpec) -> dict[str, Shape]:
    """Flat key -> shape table, with `image_proj.` / `ip_adapter.` prefixes."""
    out = {f"image_proj.{k}": v for k, v in image_proj_layout(spec).items()}
    out.update({f"ip_adapter.{k}": v for k, v in ip_adapter_layout(spec).items()})
    return out


def closest_published(shapes: dict[str, Shape], limit: int = 3) -> list[tuple[str, float]]:
    """Published files whose layout shares the most (key, shape) pairs with `shapes`."""
    have = set(shapes.items())
    scored = []
    seen_layouts = set()
    for entry in PUBLISHED:
        layout = frozenset(state_layout(entry.spec).items())
        if layout in seen_layouts:
            continue
        seen_layouts.add(layout)
        score = len(have & layout) / max(1, len(have | layout))
        scored.append((entry.file_name, score))
    scored.sort(key=lambda s: -s[1])
    return scored[:limit]
