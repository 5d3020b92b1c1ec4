"""The attn2 replace patch: the hot path.

Per apply, image K/V of every layer are projected once (`PreparedPrompt`). Per sampling
step a layer only runs the image attention and one fused add; everything else (K/V for a
batch layout, masks at a token grid, the start/end gate for a step) is computed once and
cached. Nothing here reads a GPU value back to the CPU.

Patch objects are immutable and shared between model clones (`__deepcopy__` returns self):
applying another adapter to a clone installs new patch objects on that clone only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..ip_adapter_core import fused
from ..ip_adapter_core.attention import attention as image_attention
from ..ip_adapter_core.embeds import EmbedsScaling, scale_kv
from ..ip_adapter_core.masks import aspect_mismatch, resize_to_tokens, token_grid
from ..ip_adapter_core.weights import Route
from . import host

log = logging.getLogger("ipadapter_kit")

COND, UNCOND = 0, 1


class DeviceCache:
    """Derived tensors keyed by (device, dtype, ...); dropped when the model offloads."""

    def __init__(self):
        self._data: dict = {}

    def get(self, key, make):
        value = self._data.get(key)
        if value is None:
            value = make()
            self._data[key] = value
        return value

    def drop_except(self, device: torch.device) -> None:
        self._data = {k: v for k, v in self._data.items() if same_device(k[0], device)}


def same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 are the same device (ComfyUI passes either)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


@dataclass(eq=False)
class PreparedPrompt:
    """One apply's image K/V for every layer: [n, tokens, width] on the storage device.

    n is 1 unless `unfold` (one reference per latent frame). `alt` holds the composition
    image's K/V when a weight type routes some layers to it."""

    cond: list[tuple[torch.Tensor, torch.Tensor]]
    uncond: list[tuple[torch.Tensor, torch.Tensor]]
    alt: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    alt_uncond: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # negative sized like alt (concat)
    unfold: bool = False
    sigma_start: float | None = None  # None: active over the whole schedule
    sigma_end: float | None = None
    mask: torch.Tensor | None = None  # [M, H, W] on the storage device
    frame_weights: torch.Tensor | None = None  # [frames], unfold only
    cond_index: tuple[int, ...] | None = None  # unfold: frame -> row of cond K/V (None: identity)
    uncond_index: tuple[int, ...] | None = None
    alt_index: tuple[int, ...] | None = None
    cache: DeviceCache = field(default_factory=DeviceCache)
    _gate_for: object = None
    _gate: torch.Tensor | None = None
    _gated: dict = field(default_factory=dict)
    _warned_aspect: bool = False
    _aspect_checked: set = field(default_factory=set)

    def __deepcopy__(self, memo):
        return self

    def source(self, layer: int, route: Route, kind: int):
        """(k, v, frame index) a chunk of `kind` attends to on this layer, or None for no
        contribution. The frame index maps a latent frame to its row of k/v (unfold keeps
        one row per distinct reference, not one per frame)."""
        if route is Route.NEGATIVE:
            return (*self.cond[layer], self.cond_index) if kind == UNCOND else None
        if kind == UNCOND:
            if route is Route.COMPOSITION and self.alt_uncond is not None:
                return (*self.alt_uncond[layer], self.uncond_index)
            return (*self.uncond[layer], self.uncond_index)
        if route is Route.COMPOSITION and self.alt is not None:
            return (*self.alt[layer], self.alt_index)
        return (*self.cond[layer], self.cond_index)

    def gate(self, extra_options: dict, dtype: torch.dtype) -> torch.Tensor | None:
        """1 while the current sigma is inside [sigma_end, sigma_start], else 0. On-device:
        computed once per model call and shared by every layer."""
        if self.sigma_start is None:
            return None
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return None
        if self._gate_for is not sigmas:
            s = sigmas.reshape(-1)[:1]
            active = (s <= self.sigma_start) & (s >= self.sigma_end)
            self._gate = active.to(dtype).view(1, 1, 1)
            self._gate_for = sigmas
        return self._gate

    def gated(self, factor, gate: torch.Tensor) -> torch.Tensor:
        """factor * gate, computed once per model call for each distinct factor."""
        key = factor if isinstance(factor, float) else id(factor)
        hit = self._gated.get(key)
        if hit is None or hit[0] is not gate:
            hit = (gate, gate * factor)
            self._gated[key] = hit
        return hit[1]

    def mask_rows(self, grid: tuple[int, int], rows: Sequence[int], device, dtype) -> torch.Tensor:
        """Mask at `grid`, one row per batch row ([1, N, 1] when a single mask)."""
        resized = self.cache.get((device, dtype, "mask", grid), lambda: resize_to_tokens(self.mask, grid).to(device, dtype))
        if resized.shape[0] == 1:
            return resized
        idx = torch.tensor([min(r, resized.shape[0] - 1) for r in rows], device="cpu")
        return resized.index_select(0, idx.to(device, non_blocking=True))

    def to(self, device: torch.device) -> None:
        self.cache.drop_except(device)
        self._gate_for, self._gate = None, None
        self._gated = {}


def window_frames(extra_options: dict) -> tuple[int, ...] | None:
    """The latent frames of the current context window (AnimateDiff's or ComfyUI's own over
    the batch), or None outside windows."""
    ad = extra_options.get("ad_params")
    if ad and ad.get("sub_idxs") is not None:
        return tuple(int(i) for i in ad["sub_idxs"])
    window = extra_options.get("context_window")
    if window is not None and getattr(window, "dim", None) == 0 and getattr(window, "index_list", None) is not None:
        return tuple(int(i) for i in window.index_list)
    return None


@dataclass(frozen=True)
class CallContext:
    layout: tuple
    batch: int
    per_chunk: int
    frames: tuple
    device: torch.device
    dtype: torch.dtype


@dataclass(eq=False)
class LayerEntry:
    """One applied adapter on one layer."""

    prompt: PreparedPrompt
    layer: int
    weight: float
    route: Route = Route.NORMAL
    scaling: EmbedsScaling = EmbedsScaling.V_ONLY

    def __deepcopy__(self, memo):
        return self

    def _frame_rows(self, per_chunk: int, extra_options: dict) -> list[int]:
        window = window_frames(extra_options)
        return list(window[:per_chunk]) if window is not None else list(range(per_chunk))

    def _batched(self, layout: tuple, batch: int, frames: tuple, device, dtype):
        """K/V stacked for this batch layout, and the per-row output scale."""
        p = self.prompt
        per_chunk = batch // len(layout)
        rows = []  # (source, image index, weight) per batch row; source None = no contribution
        for kind in layout:
            src = p.source(self.layer, self.route, kind)
            for row in range(per_chunk):
                frame = frames[row] if row < len(frames) else row
                w = self.weight
                if p.frame_weights is not None:
                    w = w * float(p.frame_weights[min(frame, p.frame_weights.shape[0] - 1)])
                i = 0
                if src is not None and p.unfold:
                    index = src[2]
                    i = min(frame, (len(index) if index is not None else src[0].shape[0]) - 1)
                    if index is not None:
                        i = index[i]
                rows.append((src, i, w))
        ks, vs, scales = [], [], []
        for src, i, w in rows:
            k, v = src[:2] if src is not None else p.cond[self.layer]
            k_i, v_i, out_scale = scale_kv(k[i : i + 1], v[i : i + 1], w, self.scaling)
            ks.append(k_i), vs.append(v_i), scales.append(out_scale if src is not None else 0.0)
        if len({(id(src[0]) if src else None, i, w) for src, i, w in rows}) == 1:
            # Every row attends to the same tokens (the usual case): let attention broadcast.
            return ks[0].to(device, dtype), vs[0].to(device, dtype), scales[0]
        k_all = torch.cat(ks).to(device, dtype)
        v_all = torch.cat(vs).to(device, dtype)
        return k_all, v_all, torch.tensor(scales, dtype=dtype).view(-1, 1, 1).to(device)

    def context(self, q: torch.Tensor, extra_options: dict) -> "CallContext":
        layout = host.chunk_kinds(extra_options, COND, UNCOND)  # by role: DualCFG puts the negative first
        batch = q.shape[0]
        per_chunk = max(1, batch // len(layout))
        p = self.prompt
        needs_frames = p.unfold or p.mask is not None or p.frame_weights is not None
        frames = tuple(self._frame_rows(per_chunk, extra_options)) if needs_frames else ()
        return CallContext(layout, batch, per_chunk, frames, q.device, q.dtype)

    def terms(self, ctx: "CallContext"):
        """(k, v, row scale) for this call's batch layout; cached."""
        key = (ctx.device, ctx.dtype, self.layer, self.route, self.weight, self.scaling, ctx.layout, ctx.batch, ctx.frames)
        return self.prompt.cache.get(key, lambda: self._batched(ctx.layout, ctx.batch, ctx.frames, ctx.device, ctx.dtype))

    def mask(self, ctx: "CallContext", n_tokens: int, extra_options: dict) -> torch.Tensor | None:
        """Mask rows [B or 1, N, 1] at this layer's token grid, or None; cached per grid."""
        p = self.prompt
        if p.mask is None:
            return None
        grid = self._grid(n_tokens, extra_options)
        rows = [ctx.frames[r % ctx.per_chunk] if ctx.frames else 0 for r in range(ctx.batch)]
        key = (ctx.device, ctx.dtype, "mask", ctx.layout, ctx.batch, ctx.frames, grid)
        return p.cache.get(key, lambda: p.mask_rows(grid, rows, ctx.device, ctx.dtype))

    def branch(self, q: torch.Tensor, extra_options: dict) -> "Branch | None":
        """What this entry adds to calls shaped like this one, or None when nothing."""
        ctx = self.context(q, extra_options)
        k, v, scale = self.terms(ctx)
        if isinstance(scale, float) and scale == 0.0:
            return None
        mask = self.mask(ctx, q.shape[1], extra_options)
        return Branch(k, v, scale, mask, self.prompt if self.prompt.sigma_start is not None else None)

    def _grid(self, n_tokens: int, extra_options: dict) -> tuple[int, int]:
        shape = extra_options.get("activations_shape")
        original = extra_options.get("original_shape")
        latent_hw = (int(original[-2]), int(original[-1])) if original is not None else None
        if shape is not None and len(shape) == 4 and shape[-1] * shape[-2] == n_tokens:
            grid = int(shape[-2]), int(shape[-1])
        else:
            grid = token_grid(n_tokens, latent_hw or (n_tokens, 1))
        p = self.prompt
        seen = latent_hw or grid
        if seen not in p._aspect_checked:  # once per latent size (hosts with and without activations_shape)
            p._aspect_checked.add(seen)
            if not p._warned_aspect and aspect_mismatch(tuple(p.mask.shape[-2:]), seen):
                p._warned_aspect = True
                log.warning(
                    "IPAdapter attn_mask is %dx%d but the latent is %dx%d: the mask is stretched to the "
                    "latent's aspect ratio.", p.mask.shape[-1], p.mask.shape[-2], seen[1], seen[0]
                )
        return grid


@dataclass(frozen=True, eq=False)
class Branch:
    """One entry's image branch for one call shape: K/V, the per-row scale, the mask rows, and
    the prompt whose start/end gates it (None: always on)."""

    k: torch.Tensor
    v: torch.Tensor
    scale: float | torch.Tensor
    mask: torch.Tensor | None
    scheduled: PreparedPrompt | None

    @cached_property
    def factor(self) -> float | torch.Tensor:
        """What the plain path multiplies the image attention by (computed on its first use)."""
        return self.scale if self.mask is None else self.mask * self.scale

    def add_to(self, out: torch.Tensor, q: torch.Tensor, heads: int, extra_options: dict) -> torch.Tensor:
        """Plain path: out + factor * Attn(q, K_img, V_img)."""
        factor = self.factor
        if self.scheduled is not None:
            gate = self.scheduled.gate(extra_options, q.dtype)
            if gate is not None:
                factor = self.scheduled.gated(factor, gate)
        ip = image_attention(q, self.k, self.v, heads)
        if isinstance(factor, float):
            return torch.add(out, ip, alpha=factor)
        return torch.addcmul(out, ip, factor)


class Attn2Patch:
    """Replace patch for one attn2 key: text attention plus every adapter's image branch.

    A patch another pack installed on the same key is kept as `inner` and computes the
    text part, so the two compose instead of overwriting each other."""

    def __init__(self, layer: host.HostLayer, entries: tuple[LayerEntry, ...], inner=None):
        self.layer = layer
        self.entries = entries
        self.inner = inner
        self._fast: dict = {}  # call key (_call_key) -> fused plan
        self._plain: dict = {}  # call key -> branches for the two-call path
        p = [e.prompt for e in entries]
        self._needs_frames = any(x.unfold or x.mask is not None or x.frame_weights is not None for x in p)
        self._has_mask = any(x.mask is not None for x in p)

    def extended(self, entry: LayerEntry) -> "Attn2Patch":
        return Attn2Patch(self.layer, self.entries + (entry,), self.inner)

    # Under torch.compile (ComfyUI's TorchCompileModel) the patch runs as is, between compiled
    # parts: Dynamo cannot trace its caches and direct kernel launches. ~0.5 µs per call eagerly.
    @torch.compiler.disable
    def __call__(self, q, k, v, extra_options):
        key = self._call_key(q, extra_options)
        if fused.available(q) and q.shape[-1] // extra_options["n_heads"] <= fused.MAX_HEAD_DIM:
            out = self._fused(key, q, k, v, extra_options)
            if out is not None:
                return out
        branches = self._plain.get(key)
        if branches is None:
            branches = self._plain[key] = self._branches(q, extra_options)
        if self.inner is not None:
            out = self.inner(q, k, v, extra_options)
        else:
            out = host.text_attention(q, k, v, extra_options)
        heads = extra_options["n_heads"]
        for branch in branches:
            out = branch.add_to(out, q, heads, extra_options)
        return out

    def _call_key(self, q, extra_options) -> tuple:
        """Everything the branches depend on besides q's values: shape, device, batch layout,
        context window frames and (with masks) the latent size."""
        layout = extra_options.get("cond_or_uncond")
        frames = window_frames(extra_options) if self._needs_frames else None
        latent = tuple(extra_options.get("original_shape") or ())[-2:] if self._has_mask else None
        return (q.shape, q.dtype, q.device, tuple(layout) if layout else (), extra_options.get(host.CHUNK_ROLES), frames, latent)

    def _branches(self, q, extra_options) -> tuple[Branch, ...]:
        found = (entry.branch(q, extra_options) for entry in self.entries)
        return tuple(b for b in found if b is not None)

    def _fused(self, key, q, k, v, extra_options):
        """Text attention and every image branch in one kernel (CUDA); None when the kernel
        failed on its first run here (the caller then takes the two-call path)."""
        plan = self._fast.get(key, _MISSING)
        if plan is _MISSING:
            plan = self._fast[key] = self._plan(self._branches(q, extra_options), q)
        base = self.inner(q, k, v, extra_options) if self.inner is not None else None
        if plan is None:
            return base if base is not None else host.text_attention(q, k, v, extra_options)
        sigmas = extra_options.get("sigmas") if plan.has_schedule else None
        try:
            out = fused.decoupled_attention_fused(q, k, v, extra_options["n_heads"], plan, sigmas, base)
        except Exception as exc:  # noqa: BLE001 - a kernel that never ran here (a GPU or Triton it cannot compile for)
            if plan.proven:
                raise
            fused.disable(f"{type(exc).__name__}: {exc}")  # fall back once, for good
            return None
        plan.proven = True
        return out

    @staticmethod
    def _plan(branches: tuple[Branch, ...], q: torch.Tensor) -> "fused.Segments | None":
        """The branches packed for the fused kernel, or None when there are none."""
        if not branches:
            return None
        batch, dev, dtype = q.shape[0], q.device, q.dtype
        ks, vs, scales, his, los, rows = [], [], [], [], [], []
        for b in branches:
            scale = b.scale
            row_scale = torch.full((batch,), scale, dtype=torch.float32, device=dev) if isinstance(scale, float) else scale.reshape(-1).float()
            ks.append(b.k), vs.append(b.v), scales.append(row_scale)
            p = b.scheduled
            his.append(float("inf") if p is None else p.sigma_start)
            los.append(float("-inf") if p is None else p.sigma_end)
            rows.append(b.mask)
        if any(t.shape[0] != 1 for t in ks):
            ks = [t.expand(batch, -1, -1) for t in ks]
            vs = [t.expand(batch, -1, -1) for t in vs]
        lengths = [t.shape[1] for t in ks]
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        mask = None
        if any(m is not None for m in rows):
            n = next(m for m in rows if m is not None).shape[1]
            mask = torch.stack(
                [torch.ones(batch, n, device=dev, dtype=dtype) if m is None else m[..., 0].expand(batch, n) for m in rows]
            ).contiguous()
        return fused.Segments(
            k=torch.cat(ks, dim=1).contiguous(),
            v=torch.cat(vs, dim=1).contiguous(),
            start=torch.tensor(starts, dtype=torch.int32, device=dev),
            length=torch.tensor(lengths, dtype=torch.int32, device=dev),
            scale=torch.stack(scales).contiguous(),
            sigma_hi=torch.tensor(his, dtype=torch.float32, device=dev),
            sigma_lo=torch.tensor(los, dtype=torch.float32, device=dev),
            mask=mask,
            has_schedule=any(hi != float("inf") or lo != float("-inf") for hi, lo in zip(his, los)),
        )

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.device):
            self._fast = {k: v for k, v in self._fast.items() if same_device(k[2], device_or_dtype)}
            self._plain = {k: v for k, v in self._plain.items() if same_device(k[2], device_or_dtype)}
            for entry in self.entries:
                entry.prompt.to(device_or_dtype)
        if self.inner is not None and hasattr(self.inner, "to"):
            self.inner = self.inner.to(device_or_dtype)
        return self

    def models(self):
        if self.inner is not None and hasattr(self.inner, "models"):
            return self.inner.models()
        return []


_MISSING = object()


def install(model, layers: Sequence[host.HostLayer], entries_by_layer: dict[int, LayerEntry]) -> None:
    """Add one adapter's entries to `model` (a clone): one patch object per attn2 key."""
    options = model.model_options.setdefault("transformer_options", {})
    existing = options.get("patches_replace", {}).get("attn2", {})
    for layer in layers:
        entry = entries_by_layer.get(layer.index)
        if entry is None:
            continue
        key = layer.key
        current = existing.get(key)
        if current is None:
            current = existing.get(key[:2])
        if isinstance(current, Attn2Patch):
            patch = current.extended(entry)
        else:
            patch = Attn2Patch(layer, (entry,), inner=current)
        model.set_model_attn2_replace(patch, key[0], key[1], key[2])
