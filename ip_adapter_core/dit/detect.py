"""Deciding what a DiT IP-Adapter file is, from keys and shapes only (meta tensors work)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import NotAnAdapterError, UnknownLayoutError
from . import layouts
from .spec import DIT_ENCODERS, DitAdapterSpec, DitEncoder, TimeResamplerSpec

_BLOCK_KEY = re.compile(r"^(\d+)\.(.+)$")
_RESAMPLER_LAYER = re.compile(r"^layers\.(\d+)\.0\.to_q\.weight$")


def is_dit_state(state: Mapping) -> bool:
    """True when the tensors name a DiT adapter's parts (cheap; no shape checks)."""
    proj, kv, naming = layouts.to_canonical(state)
    if naming == "xlabs":
        return True
    if not proj or not kv:
        return False
    if "latents" in proj and "time_embedding.linear_1.weight" in proj:
        return True
    return any(k.startswith("0.to_k_ip.") for k in kv)  # UNet adapters number their layers 1, 3, 5, ...


def describe_dit(state: Mapping, source: str = "<memory>") -> DitAdapterSpec:
    """Describe a Flux / SD3.5 IP-Adapter from its tensors (flat, nested or XLabs-named).

    Raises NotAnAdapterError when nothing DiT-like is in the file, UnknownLayoutError when
    it looks like a DiT adapter but the tensors do not fit together."""
    proj, kv, naming = layouts.to_canonical(state)
    if not proj or not kv:
        raise NotAnAdapterError(
            f"'{source}' holds no Flux/SD3.5 IP-Adapter tensors (expected XLabs 'ip_adapter_proj_model.*' + "
            "'double_blocks.<i>.processor.*', or InstantX 'image_proj.*' + 'ip_adapter.<j>.to_k_ip.weight')."
        )
    blocks = _block_ids(kv, source)
    family = _family(proj)
    if family is None:
        found = ", ".join(sorted(proj)[:5])
        raise UnknownLayoutError(
            f"'{source}': the image projection holds {found}; known DiT projections: XLabs linear "
            "('proj.weight' + 'norm.*'), InstantX-Flux MLP ('proj.0/2.*' + 'norm.*'), InstantX-SD3.5 "
            "TimeResampler ('latents', 'time_embedding.*', 'layers.*')."
        )
    try:
        spec = family(proj, kv, blocks, source)
        _check_layout(spec, proj, kv, source)  # exactly the variant's key table, nothing more or less
    except (IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError) as exc:  # wrong rank or type
        raise UnknownLayoutError(
            f"'{source}': a tensor has an unexpected shape or type ({exc}); the file is damaged."
        ) from exc
    return spec


def _family(proj: Mapping):
    if "latents" in proj and "time_embedding.linear_1.weight" in proj:
        return _sd35
    if "proj.0.weight" in proj and "proj.2.weight" in proj:
        return _instantx_flux
    if "proj.weight" in proj:
        return _xlabs
    return None


def _block_ids(kv: Mapping, source: str) -> int:
    ids = set()
    for key in kv:
        m = _BLOCK_KEY.match(str(key))
        if not m:
            raise UnknownLayoutError(f"'{source}': unexpected K/V entry '{key}' (expected '<block>.<layer>.<param>').")
        ids.add(int(m.group(1)))
    n = max(ids) + 1
    if sorted(ids) != list(range(n)):
        missing = sorted(set(range(n)) - ids)[:6]
        raise UnknownLayoutError(
            f"'{source}': K/V weights for blocks {missing} are missing (the file has {len(ids)} of blocks "
            f"0..{n - 1}). The file may be incomplete; download it again."
        )
    return n


def _need(d: Mapping, key: str, source: str, what: str):
    if key not in d:
        raise UnknownLayoutError(f"'{source}': the {what} has no '{key}'; the file may be incomplete.")
    return d[key]


def _kv_shape(kv: Mapping, source: str) -> tuple[int, int]:
    k = _need(kv, "0.to_k_ip.weight", source, "K/V layers")
    if len(k.shape) != 2:
        raise UnknownLayoutError(f"'{source}': '0.to_k_ip.weight' has shape {list(k.shape)}; expected [hidden, token_dim].")
    return int(k.shape[0]), int(k.shape[1])


def _token_layout(proj: Mapping, kv: Mapping, out_key: str, source: str, what: str) -> tuple[int, int, int]:
    """(tokens, token width, block width) of a projection `out_key` -> LayerNorm(d), checked against the K/V."""
    d = int(_need(proj, "norm.weight", source, what).shape[0])
    rows = int(_need(proj, out_key, source, what).shape[0])
    if rows % d:
        raise UnknownLayoutError(f"'{source}': {out_key} has {rows} rows, not a multiple of the {d}-d token width.")
    hidden, token_dim = _kv_shape(kv, source)
    _same_width(d, token_dim, source)
    return rows // d, d, hidden


def _xlabs(proj: Mapping, kv: Mapping, blocks: int, source: str) -> DitAdapterSpec:
    what = "XLabs projection"
    w = _need(proj, "proj.weight", source, what)
    tokens, d, hidden = _token_layout(proj, kv, "proj.weight", source, what)
    if "0.to_k_ip.bias" not in kv:
        raise UnknownLayoutError(
            f"'{source}': a linear DiT projection with K/V layers without biases; XLabs adapters have "
            "biases on every K/V layer. This looks like a UNet IP-Adapter renumbered, or a damaged file."
        )
    return layouts.xlabs_spec(tokens, int(w.shape[1]), d, hidden, blocks)


def _instantx_flux(proj: Mapping, kv: Mapping, blocks: int, source: str) -> DitAdapterSpec:
    what = "InstantX-Flux projection"
    w1 = _need(proj, "proj.0.weight", source, what)
    tokens, d, hidden = _token_layout(proj, kv, "proj.2.weight", source, what)
    return layouts.instantx_flux_spec(tokens, int(w1.shape[1]), int(w1.shape[0]), d, hidden, blocks)


def _sd35(proj: Mapping, kv: Mapping, blocks: int, source: str) -> DitAdapterSpec:
    what = "InstantX-SD3.5 TimeResampler"
    proj_in = _need(proj, "proj_in.weight", source, what)
    proj_out = _need(proj, "proj_out.weight", source, what)
    latents = proj["latents"]
    t1 = proj["time_embedding.linear_1.weight"]
    depth = sum(1 for k in proj if _RESAMPLER_LAYER.match(k))
    if depth == 0:
        raise UnknownLayoutError(f"'{source}': the {what} has no attention layers.")
    to_q = _need(proj, "layers.0.0.to_q.weight", source, what)
    ff = _need(proj, "layers.0.1.1.weight", source, what)
    dim = int(proj_in.shape[0])
    inner = int(to_q.shape[0])
    if inner % 64:
        raise UnknownLayoutError(f"'{source}': resampler attention width {inner} is not a multiple of 64 (heads of 64).")
    res = TimeResamplerSpec(
        dim=dim, depth=depth, heads=inner // 64, dim_head=64, queries=int(latents.shape[1]),
        in_dim=int(proj_in.shape[1]), out_dim=int(proj_out.shape[0]), ff_mult=int(ff.shape[0]) // dim,
        timestep_dim=int(t1.shape[1]),
    )
    hidden, token_dim = _kv_shape(kv, source)
    _same_width(res.out_dim, token_dim, source)
    head_dim = int(_need(kv, "0.norm_q.weight", source, "joint-block IP layers").shape[0])
    if hidden % head_dim:
        raise UnknownLayoutError(f"'{source}': K/V width {hidden} is not a multiple of the {head_dim}-d heads.")
    return layouts.sd35_spec(res, hidden, blocks, head_dim)


def _same_width(proj_width: int, kv_width: int, source: str) -> None:
    if proj_width != kv_width:
        raise UnknownLayoutError(
            f"'{source}': the projection makes {proj_width}-d image tokens but the K/V layers take "
            f"{kv_width}-d tokens; the two halves of this file do not belong together."
        )


def _check_layout(spec: DitAdapterSpec, proj: Mapping, kv: Mapping, source: str) -> None:
    want = {f"image_proj.{k}": v for k, v in layouts.image_proj_layout(spec).items()}
    want.update({f"ip_adapter.{k}": v for k, v in layouts.blocks_layout(spec).items()})
    have = {f"image_proj.{k}": tuple(t.shape) for k, t in proj.items()}
    have.update({f"ip_adapter.{k}": tuple(t.shape) for k, t in kv.items()})
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
        if wrong:
            parts.append(", ".join(f"{k} is {list(have[k])} (expected {list(want[k])})" for k in wrong[:3]))
        raise UnknownLayoutError(f"'{source}' looks like a {spec.title} but: {'; '.join(parts)}.")


# --- image encoders -------------------------------------------------------------------------


def encoder_of(layout: Mapping) -> DitEncoder | None:
    """Which DiT image encoder a clip_vision file holds (HF 'vision_model.' names), by shapes."""
    pos = layout.get("vision_model.embeddings.position_embedding.weight")
    ln = layout.get("vision_model.post_layernorm.weight")
    if pos is None or ln is None:
        return None
    layers = {int(m.group(1)) for k in layout if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", str(k)))}
    hidden, positions = int(ln.shape[0]), int(pos.shape[0])
    has_cls = "vision_model.embeddings.class_embedding" in layout
    proj = layout.get("visual_projection.weight")
    for info in DIT_ENCODERS.values():
        if (info.hidden_size, info.layers, info.tokens, info.class_token) != (hidden, len(layers), positions, has_cls):
            continue
        if info.projection_dim is not None and (proj is None or int(proj.shape[0]) != info.projection_dim):
            continue
        return info.encoder
    return None


SIGLIP_HEAD_PREFIXES = ("vision_model.head.", "head.")


def siglip_head_prefix(layout: Mapping) -> str | None:
    """Where a SigLIP file keeps its attention-pooling head, or None if it has none."""
    for prefix in SIGLIP_HEAD_PREFIXES:
        if f"{prefix}probe" in layout and f"{prefix}attention.in_proj_weight" in layout:
            return prefix
    return None


def check_file_complete(path) -> None:
    """Raise UnreadableCheckpointError if a .safetensors file is shorter than its header says
    (headers are read without the data; torch zip files fail to open when truncated)."""
    import json
    import os
    import struct

    from ..errors import UnreadableCheckpointError

    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return
        (n,) = struct.unpack("<Q", head)
        if head[:1] == b"P" or n <= 0 or n >= (1 << 30) or 8 + n > size:
            return
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise UnreadableCheckpointError(
            f"'{os.path.basename(path)}' is truncated: {size} bytes on disk, {8 + n + end} expected. Download it again."
        )
