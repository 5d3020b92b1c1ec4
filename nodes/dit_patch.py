"""DiT replace patches (`patches_replace["dit"]`): the hot path of the Flux / SD3.5 adapters.

One `DitBlockPatch` per ("double_block" | "single_block", i) key holds a tuple of entries,
one per applied adapter. Patches are immutable and shared between model clones
(`__deepcopy__` returns self); applying another adapter to a clone installs new patch objects
on that clone only. A patch another pack installed on the same key is kept as `inner` and is
given our image-prompt block as its `original_block`, so both run.

Flux adapters' K/V do not depend on the timestep: they are projected once per apply and
cached per (device, dtype, batch layout). The SD3.5 resampler depends on it: its tokens are
computed once per model call (first patched block, keyed on the `sigmas` tensor the sampler
puts in transformer_options; no GPU value is read back), the timestep-independent input
projection once per apply and device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..ip_adapter_core.dit import attention as dit_math
from ..ip_adapter_core.dit.spec import DitKind
from ..ip_adapter_core.errors import InvalidInputError
from . import dit_host, host

log = logging.getLogger("ipadapter_kit")

COND, UNCOND = 0, 1
FLUX_DOUBLE, FLUX_SINGLE, MMDIT_JOINT = "flux-double", "flux-single", "mmdit-joint"


class _Cache:
    """Derived tensors keyed by (device, dtype, ...); dropped for other devices on `.to()`."""

    def __init__(self):
        self.data: dict = {}

    def get(self, key, make):
        value = self.data.get(key)
        if value is None:
            value = make()
            self.data[key] = value
        return value

    def keep(self, device: torch.device) -> None:
        self.data = {k: v for k, v in self.data.items() if k[0] == device}


def _layout(to: dict) -> tuple[int, ...]:
    """COND or UNCOND for every batch chunk: cond_or_uncond, by role where the pack tracks
    guider roles (DualCFG puts the negative first)."""
    kinds = getattr(host, "chunk_kinds", None)
    if kinds is not None:
        return tuple(kinds(to, COND, UNCOND))
    return tuple(to.get("cond_or_uncond") or (COND,))


@dataclass(eq=False)
class _Prepared:
    """What one apply shares between its blocks: strength and the start/end gate."""

    weight: float
    sigma_start: float | None = None  # None: active over the whole schedule
    sigma_end: float | None = None
    cache: _Cache = field(default_factory=_Cache)
    _gate_for: object = None
    _factor: object = None

    def __deepcopy__(self, memo):
        return self

    def factor(self, to: dict, dtype: torch.dtype):
        """weight, or weight * (sigma in [end, start]) as an on-device [1, 1, 1] tensor,
        computed once per model call."""
        if self.sigma_start is None:
            return self.weight
        sigmas = to.get("sigmas")
        if sigmas is None:
            return self.weight
        if self._gate_for is not sigmas or self._factor.dtype != dtype:
            s = sigmas.reshape(-1)[:1]
            active = (s <= self.sigma_start) & (s >= self.sigma_end)
            self._factor = (active.to(dtype) * self.weight).view(1, 1, 1)
            self._gate_for = sigmas
        return self._factor

    def to(self, device: torch.device) -> None:
        self.cache.keep(device)
        self._gate_for = self._factor = None


def _rows(layout: tuple[int, ...], batch: int, kinds: list[int]) -> list[int]:
    per_chunk = max(1, batch // len(layout))
    return [kinds.index(kind) for kind in layout for _ in range(per_chunk)]


def _scaled(ip: torch.Tensor, factor) -> torch.Tensor:
    """ip * weight (a float, or the on-device gated [1, 1, 1] factor)."""
    return ip * factor


@dataclass(eq=False)
class FluxPrepared(_Prepared):
    """K/V of every adapter block for the positive and the negative image prompt:
    [1, tokens, hidden] fp32 on the storage device."""

    kind: DitKind = DitKind.XLABS
    cond: list = field(default_factory=list)
    uncond: list = field(default_factory=list)

    def kv(self, j: int, layout: tuple[int, ...], batch: int, heads: int, device, dtype):
        key = (device, dtype, j, layout, batch, heads)
        return self.cache.get(key, lambda: self._kv(j, layout, batch, heads, device, dtype))

    def _kv(self, j, layout, batch, heads, device, dtype):
        kinds = sorted(set(layout))
        src = {COND: self.cond[j], UNCOND: self.uncond[j]}
        ks = [src[kind][0] for kind in kinds]
        vs = [src[kind][1] for kind in kinds]
        if len(kinds) == 1:
            k, v = ks[0], vs[0]
        else:
            idx = torch.tensor(_rows(layout, batch, kinds))
            k, v = torch.cat(ks).index_select(0, idx), torch.cat(vs).index_select(0, idx)
        k = dit_math.split_heads(k.to(device, dtype), heads)
        v = dit_math.split_heads(v.to(device, dtype), heads)
        return k, v


@dataclass(eq=False)
class FluxEntry:
    """One applied Flux adapter on one block: the scaled image-prompt attention term."""

    prepared: FluxPrepared
    j: int  # adapter block index (InstantX: 0-18 double, 19-56 single)

    @property
    def before_proj(self) -> bool:
        return self.prepared.kind is DitKind.INSTANTX_FLUX

    def __deepcopy__(self, memo):
        return self

    def term(self, q: torch.Tensor, to: dict) -> torch.Tensor:
        p = self.prepared
        k, v = p.kv(self.j, _layout(to), q.shape[0], q.shape[1], q.device, q.dtype)
        return _scaled(dit_math.ip_attention(q, k, v), p.factor(to, q.dtype))

    def models(self) -> list:
        return []


@dataclass(eq=False)
class _Step:
    sigmas: object
    tokens: torch.Tensor  # [kinds * images, queries, token_dim] on the adapter's device
    temb: torch.Tensor  # [kinds * images, dim]
    kinds: list
    images: int
    rows: torch.Tensor | None  # batch row -> kind position, None when one kind only


@dataclass(eq=False)
class SD35Prepared(_Prepared):
    """Features of the positive / negative images ([n, L, F], storage device), the managed
    adapter (its resampler and K/V layers run every step) and the sigma -> timestep factor."""

    adapter: object = None  # adapter_store.LoadedAdapter
    cond: torch.Tensor | None = None
    uncond: torch.Tensor | None = None
    multiplier: float = 1000.0
    _steps: dict = field(default_factory=dict)

    @property
    def model(self):
        return self.adapter.model

    def _x_in(self, kind: int, device, dtype) -> torch.Tensor:
        """proj_in(features): independent of the timestep, computed once per device."""
        feats = self.cond if kind == COND else self.uncond
        return self.cache.get(
            (device, dtype, "x_in", kind),
            lambda: self.model.image_proj.project_in(feats.to(device, dtype)),
        )

    def step(self, to: dict, batch: int) -> _Step:
        sigmas = to.get("sigmas")
        if sigmas is None:
            raise InvalidInputError(
                "The SD3.5 IP-Adapter needs the sampler's current sigma (transformer_options['sigmas']), "
                "which this caller did not provide; run the model through a ComfyUI sampler."
            )
        layout = _layout(to)
        key = (layout, batch)
        hit = self._steps.get(key)
        if hit is not None and hit.sigmas is sigmas:
            return hit
        model = self.model
        device, dtype = model.placement()
        kinds = sorted(set(layout))
        x_in = torch.cat([self._x_in(kind, device, dtype) for kind in kinds])
        resampler = model.image_proj
        t = sigmas.reshape(-1)[:1].to(device, torch.float32) * self.multiplier
        temb = resampler.embed_time(t).expand(x_in.shape[0], -1)
        tokens = resampler.resample(x_in, temb)
        rows = None
        if len(kinds) > 1:
            rows = self.cache.get(
                (device, "rows", layout, batch), lambda: torch.tensor(_rows(layout, batch, kinds), device=device)
            )
        step = _Step(sigmas, tokens, temb, kinds, int(self.cond.shape[0]), rows)
        self._steps[key] = step
        return step

    def to(self, device: torch.device) -> None:
        super().to(device)
        self._steps = {}


@dataclass(eq=False)
class SD35Entry:
    prepared: SD35Prepared
    j: int

    def __deepcopy__(self, memo):
        return self

    def term(self, q_raw: torch.Tensor, k_raw: torch.Tensor, v: torch.Tensor, to: dict) -> torch.Tensor:
        p = self.prepared
        b, heads, _, _ = q_raw.shape
        step = p.step(to, b)
        k_ip, v_ip = p.model.sd35_block_kv(self.j, step.tokens, step.temb)  # [kinds*images, Q, hidden]
        n_kinds = len(step.kinds)
        k_ip = k_ip.reshape(n_kinds, -1, k_ip.shape[-1])  # images of a kind: tokens concatenated
        v_ip = v_ip.reshape(n_kinds, -1, v_ip.shape[-1])
        if step.rows is not None:
            k_ip, v_ip = k_ip.index_select(0, step.rows), v_ip.index_select(0, step.rows)
        device, dtype = q_raw.device, q_raw.dtype
        k_ip = dit_math.split_heads(k_ip.to(device, dtype), heads)
        v_ip = dit_math.split_heads(v_ip.to(device, dtype), heads)
        block = p.model.ip_adapter[self.j]
        ip = dit_math.sd35_ip_attention(
            q_raw, k_raw, v, k_ip, v_ip, block.norm_q.weight.to(device), block.norm_k.weight.to(device)
        )
        return _scaled(ip, p.factor(to, dtype))

    def models(self) -> list:
        return [self.prepared.adapter.patcher]


class DitBlockPatch:
    """Replace patch of one DiT block: the block plus every applied adapter's image prompt."""

    def __init__(self, kind: str, index: int, block: torch.nn.Module, entries: tuple, inner=None):
        self.kind = kind
        self.index = index
        self.block = block
        self.entries = entries
        self.inner = inner

    def extended(self, entry) -> "DitBlockPatch":
        return DitBlockPatch(self.kind, self.index, self.block, self.entries + (entry,), self.inner)

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]

        def run(a: dict) -> dict:
            return self._run(a, original, dit_host.transformer_options(a, extra))

        if self.inner is not None:
            return self.inner(args, {**extra, "original_block": run})
        return run(args)

    def _run(self, a: dict, original, to: dict) -> dict:
        entries = self.entries
        if self.kind == FLUX_DOUBLE:
            pre = [e for e in entries if e.before_proj]
            post = [e for e in entries if not e.before_proj]

            def add_post(q):
                out = post[0].term(q, to)
                for e in post[1:]:
                    out = out + e.term(q, to)
                return out

            if pre:
                return dit_host.flux_double_forward(
                    self.block, a, add_attn=lambda q, attn: _add_all(attn, pre, q, to),
                    add_out=add_post if post else None,
                )
            q = dit_host.flux_double_query(self.block, a)  # before the block adds to a["img"] in place
            out = original(a)
            out["img"] = out["img"] + add_post(q)
            return out
        if self.kind == FLUX_SINGLE:
            return dit_host.flux_single_forward(self.block, a, lambda q, attn: _add_all(attn, entries, q, to))

        def add_sd35(q_raw, k_raw, v, x_attn):
            for e in entries:
                x_attn = x_attn + e.term(q_raw, k_raw, v, to)
            return x_attn

        return dit_host.mmdit_joint_forward(self.block, a, add_sd35)

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.device):
            for entry in self.entries:
                entry.prepared.to(device_or_dtype)
        if self.inner is not None and hasattr(self.inner, "to"):
            self.inner = self.inner.to(device_or_dtype)
        return self

    def models(self) -> list:
        out = []
        for entry in self.entries:
            for m in entry.models():
                if all(m is not o for o in out):
                    out.append(m)
        if self.inner is not None and hasattr(self.inner, "models"):
            out += self.inner.models()
        return out


def _add_all(attn: torch.Tensor, entries, q: torch.Tensor, to: dict) -> torch.Tensor:
    for e in entries:
        attn = attn + e.term(q, to)
    return attn


def install(model, entries: dict[tuple[str, int], tuple[str, torch.nn.Module, object]]) -> None:
    """Add one adapter's entries to `model` (a clone): {(block name, i): (patch kind, block, entry)}."""
    options = model.model_options.setdefault("transformer_options", {})
    existing = options.get("patches_replace", {}).get("dit", {})
    for (name, i), (kind, block, entry) in entries.items():
        current = existing.get((name, i))
        if isinstance(current, DitBlockPatch) and current.kind == kind and current.block is block:
            patch = current.extended(entry)
        else:
            patch = DitBlockPatch(kind, i, block, (entry,), inner=current)
        model.set_model_patch_replace(patch, "dit", name, i)
