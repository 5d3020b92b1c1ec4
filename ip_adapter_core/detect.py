"""The one function that decides what an adapter file is, from keys and shapes only."""

from __future__ import annotations

import re

import torch

from . import layouts
from .checkpoint import AdapterWeights
from .errors import NotAnAdapterError, UnknownLayoutError
from .spec import (
    CLIP_ENCODERS,
    FACE_EMBEDDING_DIM,
    FACEID_PLUS_NOTE,
    AdapterSpec,
    BaseModel,
    EncoderOutput,
    ImageEncoder,
    ProjectionKind,
    ResamplerSpec,
    clip_encoder_for_width,
    lora_note,
)

_KV_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")
_LORA_KEY = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
_RESAMPLER_LAYER = re.compile(r"^layers\.(\d+)\.0\.to_q\.weight$")

def describe(weights: AdapterWeights) -> AdapterSpec:
    """Describe an adapter from its tensors. Raises UnknownLayoutError with the closest
    published layouts when the tensors fit no known variant."""
    try:
        try:
            spec = _describe(weights)
        except (IndexError, ValueError, TypeError) as exc:  # a tensor with the wrong number of dims
            raise UnknownLayoutError(f"'{weights.source}': a tensor has an unexpected shape ({exc}).") from exc
        _check_complete(weights, spec)
        return spec
    except UnknownLayoutError as exc:
        from .catalog import closest_published

        shapes = {f"image_proj.{k}": tuple(t.shape) for k, t in weights.image_proj.items()}
        shapes.update({f"ip_adapter.{k}": tuple(t.shape) for k, t in weights.ip_adapter.items()})
        near = ", ".join(f"{name} ({score:.0%} of tensors match)" for name, score in closest_published(shapes))
        raise UnknownLayoutError(f"{exc} Closest published layouts: {near}.") from exc


def _describe(weights: AdapterWeights) -> AdapterSpec:
    widths, cross = _kv_layers(weights)
    base_topology = _topology(widths, cross, weights.source)
    lora_rank = _lora_rank(weights.ip_adapter)
    proj = weights.image_proj

    found = _projection(proj, cross, lora_rank, weights.source)
    kind, tokens, encoder, output, feature_dim = found["kind"], found["tokens"], found["encoder"], found["output"], found["feature_dim"]

    base = base_topology
    if base is BaseModel.SDXL and encoder is ImageEncoder.VIT_L_336:
        base = BaseModel.KOLORS
    notes = []
    if kind is ProjectionKind.FACEID_PLUS:
        notes.append(FACEID_PLUS_NOTE)
    if lora_rank:
        notes.append(lora_note(lora_rank))
    return AdapterSpec(
        base=base,
        kind=kind,
        tokens=tokens,
        cross_attention_dim=cross,
        layer_widths=tuple(widths),
        encoder=encoder,
        encoder_output=output,
        feature_dim=feature_dim,
        clip_output=found.get("clip_output"),
        clip_dim=found.get("clip_dim"),
        resampler=found.get("resampler"),
        lora_rank=lora_rank,
        notes=tuple(notes),
    )


def _check_complete(weights: AdapterWeights, spec: AdapterSpec) -> None:
    """Every tensor the described variant has, with its shape, and nothing else."""
    from .catalog import image_proj_layout, ip_adapter_layout

    problems = []
    for part, have, want in (
        ("image_proj", weights.image_proj, image_proj_layout(spec)),
        ("ip_adapter", weights.ip_adapter, ip_adapter_layout(spec)),
    ):
        missing = [k for k in want if k not in have]
        extra = [k for k in have if k not in want]
        wrong = [f"{k} {list(have[k].shape)} (expected {list(want[k])})" for k in want if k in have and tuple(have[k].shape) != want[k]]
        for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
            if items:
                problems.append(f"{part} {label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
    if problems:
        raise UnknownLayoutError(
            f"'{weights.source}' looks like a {spec.title} but does not match its layout: " + "; ".join(problems) + "."
        )


def _kv_layers(weights: AdapterWeights) -> tuple[list[int], int]:
    k_shapes: dict[int, torch.Size] = {}
    v_shapes: dict[int, torch.Size] = {}
    for key, tensor in weights.ip_adapter.items():
        m = _KV_KEY.match(key)
        if m:
            (k_shapes if m.group(2) == "k" else v_shapes)[int(m.group(1))] = tensor.shape
    if not k_shapes:
        raise NotAnAdapterError(
            f"'{weights.source}' has no '<n>.to_k_ip.weight' tensors, so it holds no IP-Adapter "
            "key/value layers. Check that this is an IP-Adapter file."
        )
    ids = sorted(k_shapes)
    expected = [2 * i + 1 for i in range(len(ids))]
    if ids != expected or sorted(v_shapes) != expected:
        raise UnknownLayoutError(
            f"'{weights.source}': K/V layers are numbered {_short(ids)} (to_v: {_short(sorted(v_shapes))}); "
            f"published adapters number them 1, 3, 5, ... {expected[-1]} with a to_k_ip and a "
            "to_v_ip for each. The file may be incomplete; download it again."
        )
    widths, crosses = [], set()
    for i in ids:
        ks, vs = k_shapes[i], v_shapes[i]
        if len(ks) != 2 or ks != vs:
            raise UnknownLayoutError(
                f"'{weights.source}': layer {i} has to_k_ip {list(ks)} and to_v_ip {list(vs)}; "
                "both should be [width, cross_attention_dim]."
            )
        widths.append(int(ks[0]))
        crosses.add(int(ks[1]))
    if len(crosses) != 1:
        raise UnknownLayoutError(f"'{weights.source}': K/V layers take inputs of several widths {sorted(crosses)}.")
    return widths, crosses.pop()


def _short(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:6])) + (" ..." if len(ids) > 6 else "")


def _topology(widths: list[int], cross: int, source: str) -> BaseModel:
    sd15 = [layer.hidden for layer in layouts.sd15_layers()]
    sdxl = [layer.hidden for layer in layouts.sdxl_layers()]
    if widths == sd15 and cross == layouts.SD15_CROSS_DIM:
        return BaseModel.SD15
    if widths == sdxl and cross == layouts.SDXL_CROSS_DIM:
        return BaseModel.SDXL
    raise UnknownLayoutError(
        f"'{source}': {len(widths)} cross-attention layers of widths {sorted(set(widths))} taking "
        f"{cross}-d tokens. Known UNet layouts: SD1.5 (16 layers, 320/640/1280, 768-d) and "
        "SDXL/Kolors (70 layers, 640/1280, 2048-d). Closest: "
        + ("SD1.5" if abs(len(widths) - 16) < abs(len(widths) - 70) else "SDXL")
        + ". The file may be damaged or for an architecture this pack does not support."
    )


def _lora_rank(kv: dict[str, torch.Tensor]) -> int:
    ranks = {int(t.shape[0]) for k, t in kv.items() if (m := _LORA_KEY.match(k)) and m.group(3) == "down"}
    return max(ranks) if ranks else 0


def _need(proj: dict, key: str, source: str, kind: str) -> torch.Tensor:
    if key not in proj:
        raise UnknownLayoutError(f"'{source}': image_proj looks like a {kind} but has no '{key}'.")
    return proj[key]


def _resampler_spec(proj: dict, prefix: str, source: str, kind: str) -> ResamplerSpec:
    get = lambda k: _need(proj, prefix + k, source, kind)  # noqa: E731
    depth = sum(1 for k in proj if k.startswith(prefix) and _RESAMPLER_LAYER.match(k[len(prefix):]))
    if depth == 0:
        raise UnknownLayoutError(f"'{source}': the {kind} has no attention layers.")
    proj_in, proj_out = get("proj_in.weight"), get("proj_out.weight")
    to_q, ff_in = get("layers.0.0.to_q.weight"), get("layers.0.1.1.weight")
    dim = int(proj_in.shape[0])
    dim_head = 64
    inner = int(to_q.shape[0])
    latents = proj.get(prefix + "latents")
    return ResamplerSpec(
        dim=dim,
        depth=depth,
        heads=inner // dim_head,
        dim_head=dim_head,
        queries=int(latents.shape[1]) if latents is not None else 0,
        in_dim=int(proj_in.shape[1]),
        out_dim=int(proj_out.shape[0]),
        ff_mult=int(ff_in.shape[0]) // dim,
    )


def _clip(width: int, output: EncoderOutput, source: str, kind: str) -> ImageEncoder:
    info = clip_encoder_for_width(width, output)
    if info is None:
        known = ", ".join(
            f"{e.value} ({i.projection_dim if output is EncoderOutput.IMAGE_EMBEDS else i.hidden_size})"
            for e, i in CLIP_ENCODERS.items()
        )
        raise UnknownLayoutError(
            f"'{source}': the {kind} takes {width}-d CLIP {output.value}, which no published image "
            f"encoder produces (known: {known})."
        )
    return info.encoder


def _projection(proj: dict, cross: int, lora_rank: int, source: str) -> dict:
    if "perceiver_resampler.proj_in.weight" in proj:
        kind = "FaceID-Plus projection"
        mlp_in = _need(proj, "proj.0.weight", source, kind)
        mlp_out = _need(proj, "proj.2.weight", source, kind)
        norm = _need(proj, "norm.weight", source, kind)
        res = _resampler_spec(proj, "perceiver_resampler.", source, kind)
        _check_out(int(norm.shape[0]), cross, source, kind)
        _check_out(res.out_dim, cross, source, kind)
        _clip(res.in_dim, EncoderOutput.PENULTIMATE, source, kind)
        return dict(
            kind=ProjectionKind.FACEID_PLUS,
            tokens=int(mlp_out.shape[0]) // int(norm.shape[0]),
            encoder=ImageEncoder.INSIGHTFACE_VIT_H,
            output=EncoderOutput.FACE,
            feature_dim=int(mlp_in.shape[1]),
            clip_output=EncoderOutput.PENULTIMATE,
            clip_dim=res.in_dim,
            resampler=res,
        )
    if "latents" in proj:
        kind = "Resampler (Plus) projection"
        res = _resampler_spec(proj, "", source, kind)
        _check_out(res.out_dim, cross, source, kind)
        if res.in_dim == FACE_EMBEDDING_DIM:
            return dict(
                kind=ProjectionKind.PORTRAIT_UNNORM,
                tokens=res.queries,
                encoder=ImageEncoder.INSIGHTFACE,
                output=EncoderOutput.FACE,
                feature_dim=res.in_dim,
                resampler=res,
            )
        encoder = _clip(res.in_dim, EncoderOutput.PENULTIMATE, source, kind)
        return dict(
            kind=ProjectionKind.RESAMPLER,
            tokens=res.queries,
            encoder=encoder,
            output=EncoderOutput.PENULTIMATE,
            feature_dim=res.in_dim,
            resampler=res,
        )
    if "proj.3.weight" in proj:
        kind = "full-face MLP projection"
        first = _need(proj, "proj.0.weight", source, kind)
        _check_out(int(proj["proj.3.weight"].shape[0]), cross, source, kind)
        encoder = _clip(int(first.shape[1]), EncoderOutput.PENULTIMATE, source, kind)
        return dict(
            kind=ProjectionKind.FULL_FACE_MLP,
            tokens=CLIP_ENCODERS[encoder].tokens,
            encoder=encoder,
            output=EncoderOutput.PENULTIMATE,
            feature_dim=int(first.shape[1]),
        )
    if "proj.weight" in proj:
        kind = "linear (4-token) projection"
        weight = proj["proj.weight"]
        norm = _need(proj, "norm.weight", source, kind)
        _check_out(int(norm.shape[0]), cross, source, kind)
        encoder = _clip(int(weight.shape[1]), EncoderOutput.IMAGE_EMBEDS, source, kind)
        return dict(
            kind=ProjectionKind.LINEAR,
            tokens=int(weight.shape[0]) // int(norm.shape[0]),
            encoder=encoder,
            output=EncoderOutput.IMAGE_EMBEDS,
            feature_dim=int(weight.shape[1]),
        )
    if "proj.0.weight" in proj and "proj.2.weight" in proj:
        kind = "FaceID MLP projection"
        first = proj["proj.0.weight"]
        norm = _need(proj, "norm.weight", source, kind)
        _check_out(int(norm.shape[0]), cross, source, kind)
        tokens = int(proj["proj.2.weight"].shape[0]) // int(norm.shape[0])
        if int(first.shape[1]) != FACE_EMBEDDING_DIM:
            raise UnknownLayoutError(
                f"'{source}': the {kind} takes {first.shape[1]}-d inputs; insightface embeddings "
                f"are {FACE_EMBEDDING_DIM}-d."
            )
        portrait = tokens > 4 and not lora_rank
        return dict(
            kind=ProjectionKind.PORTRAIT if portrait else ProjectionKind.FACEID_MLP,
            tokens=tokens,
            encoder=ImageEncoder.INSIGHTFACE,
            output=EncoderOutput.FACE,
            feature_dim=FACE_EMBEDDING_DIM,
        )
    found = ", ".join(sorted(proj)[:6]) or "nothing"
    raise UnknownLayoutError(
        f"'{source}': image_proj holds {found}{' ...' if len(proj) > 6 else ''}. Known projections: "
        "linear ('proj.weight' + 'norm.*'), full-face MLP ('proj.0/2/3.*'), Resampler ('latents', "
        "'proj_in.*', 'layers.*'), FaceID MLP ('proj.0/2.*' + 'norm.*'), FaceID-Plus "
        "('perceiver_resampler.*')."
    )


def _check_out(width: int, cross: int, source: str, kind: str) -> None:
    if width != cross:
        raise UnknownLayoutError(
            f"'{source}': the {kind} makes {width}-d image tokens but the K/V layers take "
            f"{cross}-d tokens; the two halves of this file do not belong together."
        )
