"""One-kernel decoupled attention for CUDA (Triton).

    out[b, n] = Attn(q, k_txt, v_txt)[b, n]
              + sum_s  gate_s * scale[s, b] * mask[s, b, n] * Attn(q, K_s, V_s)[b, n]

Each segment s (one adapter branch: its image tokens) gets its own softmax, exactly like
the reference; the text part can instead be read from `base` (another pack computed it).
One program handles a block of queries of one (batch, head): it reads q once, runs an
online softmax over the text keys and then over every segment's keys, and writes the
result straight into ComfyUI's [B, N, heads*dim_head] layout. The start/end gate is
evaluated inside the kernel from the sigma tensor, so a scheduled adapter costs no extra
launch and no host sync.

`decoupled_attention_fused` is used only where `available(q)` says so; elsewhere the plain
two-call path in `attention.py` runs. The kernel's arguments come in two parts: the layer's
tensors (per call) and the segments' (per plan, built once); launches go through
`launch.DirectLauncher`, which uses Triton's launcher once per plan and argument key and the
compiled kernel's own launcher after that. With TRITON_INTERPRET=1 the kernel runs on CPU
tensors, which is how the tests compare it with the plain path.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import torch

from .launch import DirectLauncher

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - triton missing or broken
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_HEAD_DIM = 256
NVIDIA = torch.version.cuda is not None and getattr(torch.version, "hip", None) is None  # ROCm: never run on one
_disabled_because: str | None = None

log = logging.getLogger("ipadapter_kit")


def enabled() -> bool:
    return triton is not None and _disabled_because is None and os.environ.get("IPA_FUSED", "1") != "0"


def available(q: torch.Tensor) -> bool:
    """Whether the fused kernel can run for this query tensor."""
    if not enabled():
        return False
    if not ((q.is_cuda and NVIDIA) or INTERPRET):
        return False
    return q.dtype in (torch.float16, torch.bfloat16, torch.float32)


def disable(why: str) -> None:
    """Use the two-call path from now on (the kernel failed where it had never run)."""
    global _disabled_because
    if _disabled_because is None:
        _disabled_because = why
        log.warning("IPAdapter fused kernel unavailable on this GPU (%s); using the two-call attention path.", why)


@dataclass
class Segments:
    """Image branches of one layer for one batch layout, packed for the kernel."""

    k: torch.Tensor  # [1 or B, T_total, C]
    v: torch.Tensor
    start: torch.Tensor  # int32 [S]
    length: torch.Tensor  # int32 [S]
    scale: torch.Tensor  # float32 [S, B]
    sigma_hi: torch.Tensor  # float32 [S]: active while sigma_lo <= sigma <= sigma_hi
    sigma_lo: torch.Tensor
    mask: torch.Tensor | None  # [S, B, N] or None
    has_schedule: bool = False  # any segment with a finite sigma range
    proven: bool = field(default=False, repr=False, compare=False)  # launched without error at least once
    launches: dict = field(default_factory=dict, repr=False, compare=False)  # per layer shape: _PlanLaunch
    runners: dict = field(default_factory=dict, repr=False, compare=False)  # direct launchers (launch.py)

    @property
    def count(self) -> int:
        return int(self.start.shape[0])


if triton is not None:

    @triton.jit
    def _segment_pass(q, KI, VI, b, h, start, length, offs_d, dmask, sm_scale,
                      stride_kib, stride_kit, stride_vib, stride_vit,
                      D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                      PRECISION: tl.constexpr):
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for t0 in range(0, length, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            tmask = offs_t < length
            kv_mask = tmask[:, None] & dmask[None, :]
            k = tl.load(KI + b * stride_kib + (start + offs_t)[:, None] * stride_kit + h * D + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale
            s = tl.where(tmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(VI + b * stride_vib + (start + offs_t)[:, None] * stride_vit + h * D + offs_d[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        return acc / l_i[:, None]

    @triton.jit
    def _decoupled_kernel(
        # per call: the layer's tensors and their strides
        Q, KT, VT, BASE, OUT, SIGMA,
        stride_qb, stride_qn, stride_ktb, stride_ktl, stride_vtb, stride_vtl,
        stride_bb, stride_bn, stride_ob, stride_on, N, L,
        # per plan: the image segments (fixed while the plan lives)
        KI, VI, SEG_START, SEG_LEN, SCALE, SIG_HI, SIG_LO, MASK,
        stride_kib, stride_kit, stride_vib, stride_vit, stride_ss, stride_sb, stride_ms, stride_mb, stride_mn,
        n_seg, sm_scale,
        H: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
        HAS_TEXT: tl.constexpr, HAS_MASK: tl.constexpr, HAS_SIGMA: tl.constexpr, PRECISION: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mmask = offs_m < N
        dmask = offs_d < D
        qmask = mmask[:, None] & dmask[None, :]
        q = tl.load(Q + b * stride_qb + offs_m[:, None] * stride_qn + h * D + offs_d[None, :], mask=qmask, other=0.0)

        if HAS_TEXT:  # the text keys are one more segment: [0, L) of KT/VT
            out = _segment_pass(q, KT, VT, b, h, 0, L, offs_d, dmask, sm_scale,
                                stride_ktb, stride_ktl, stride_vtb, stride_vtl, D, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
        else:
            out = tl.load(BASE + b * stride_bb + offs_m[:, None] * stride_bn + h * D + offs_d[None, :], mask=qmask, other=0.0).to(tl.float32)

        sigma = 0.0
        if HAS_SIGMA:
            sigma = tl.load(SIGMA).to(tl.float32)
        for s_idx in range(0, n_seg):
            scale = tl.load(SCALE + s_idx * stride_ss + b * stride_sb)
            if HAS_SIGMA:
                hi = tl.load(SIG_HI + s_idx)
                lo = tl.load(SIG_LO + s_idx)
                scale = tl.where((sigma <= hi) & (sigma >= lo), scale, 0.0)
            if scale != 0.0:
                start = tl.load(SEG_START + s_idx)
                length = tl.load(SEG_LEN + s_idx)
                ip = _segment_pass(q, KI, VI, b, h, start, length, offs_d, dmask, sm_scale,
                                   stride_kib, stride_kit, stride_vib, stride_vit, D, BLOCK_M, BLOCK_T, BLOCK_D, PRECISION)
                if HAS_MASK:
                    row = tl.load(MASK + s_idx * stride_ms + b * stride_mb + offs_m * stride_mn, mask=mmask, other=0.0).to(tl.float32)
                    ip = ip * row[:, None]
                out = out + ip * scale
        tl.store(OUT + b * stride_ob + offs_m[:, None] * stride_on + h * D + offs_d[None, :], out.to(OUT.dtype.element_ty), mask=qmask)


_LAUNCHER: DirectLauncher | None = None
OUT_ARG = 4  # position of OUT in _decoupled_kernel's signature


def _launch() -> DirectLauncher:
    global _LAUNCHER
    if _LAUNCHER is None or _LAUNCHER.kernel is not _decoupled_kernel:
        _LAUNCHER = DirectLauncher(_decoupled_kernel, OUT_ARG, "0" if INTERPRET else triton.__version__)
    return _LAUNCHER


def _pow2(x: int, floor: int = 16) -> int:
    return max(floor, 1 << (max(1, x) - 1).bit_length())


@dataclass(frozen=True)
class _PlanLaunch:
    """What a plan contributes to every launch: its arguments (and the same with device
    pointers for tensors), the grid and the options."""

    args: tuple
    direct_args: tuple
    grid: tuple
    num_warps: int


def _device_resident(q, kt, vt, bs, sig) -> bool:
    return q.is_cuda and kt.is_cuda and vt.is_cuda and bs.is_cuda and sig.is_cuda


def _plan_launch(segments: Segments, q: torch.Tensor, heads: int, has_text: bool, has_sigma: bool) -> _PlanLaunch:
    b, n, c = q.shape
    d = c // heads
    ki, vi, mask = segments.k, segments.v, segments.mask
    m = mask if mask is not None else segments.scale
    ms = (m.stride(0), m.stride(1), m.stride(2)) if mask is not None else (0, 0, 0)
    block_d = _pow2(d)
    wide = block_d * q.element_size()  # bytes per key row: bounds the shared memory of a K/V tile
    block_m = 64 if wide <= 256 else 32
    block_n = 64 if wide <= 256 else (32 if wide <= 512 else 16)
    args = (
        ki, vi, segments.start, segments.length, segments.scale, segments.sigma_hi, segments.sigma_lo, m,
        0 if ki.shape[0] == 1 else ki.stride(0), ki.stride(1), 0 if vi.shape[0] == 1 else vi.stride(0), vi.stride(1),
        segments.scale.stride(0), segments.scale.stride(1), *ms,
        segments.count, 1.0 / math.sqrt(d),
        # constexprs: H, D, BLOCK_D, BLOCK_M, BLOCK_N, BLOCK_T, HAS_TEXT, HAS_MASK, HAS_SIGMA, PRECISION
        heads, d, block_d, block_m, block_n, 16, has_text, mask is not None, has_sigma,
        "ieee" if q.dtype == torch.float32 else "tf32",
    )
    direct = tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)  # the plan keeps them alive
    return _PlanLaunch(args, direct, (triton.cdiv(n, block_m), b * heads), 4 if block_d <= 64 else 8)


def decoupled_attention_fused(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    heads: int,
    segments: Segments,
    sigmas: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Text attention (or `base`) plus every segment, in one kernel launch."""
    if q.is_cuda and q.get_device() != torch.cuda.current_device():
        # Triton launches on (and compiles and caches kernels for) the current device, where torch
        # ops follow their tensors: a model on another GPU (multi-GPU setups) makes its own current.
        with torch.cuda.device(q.get_device()):
            return decoupled_attention_fused(q, k, v, heads, segments, sigmas, base)
    b, n, c = q.shape
    d = c // heads
    if d > MAX_HEAD_DIM or c != heads * d:
        raise ValueError(f"head dim {d} not supported by the fused kernel")
    has_text = base is None
    has_sigma = sigmas is not None
    qs = q.stride()
    if qs[2] != 1:
        q = q.contiguous()
        qs = q.stride()
    out = torch.empty_like(q)
    if has_text:
        kt, vt = k, v
        ks, vs = kt.stride(), vt.stride()
        if ks[2] != 1 or vs[2] != 1:
            kt, vt = kt.contiguous(), vt.contiguous()
            ks, vs = kt.stride(), vt.stride()
        text = (0 if kt.shape[0] == 1 else ks[0], ks[1], 0 if vt.shape[0] == 1 else vs[0], vs[1])
        length = kt.shape[1]
    else:
        kt = vt = q
        text = (qs[0], qs[1], qs[0], qs[1])
        length = 0
    bs = base if base is not None else q
    bss = base.stride() if base is not None else qs
    sig = sigmas if has_sigma else segments.scale  # the kernel reads its first element
    plan_key = (q.shape, q.dtype, heads, has_text, has_sigma)
    plan = segments.launches.get(plan_key)
    if plan is None:
        plan = segments.launches[plan_key] = _plan_launch(segments, q, heads, has_text, has_sigma)
    outs = out.stride()
    ints = (qs[0], qs[1], *text, bss[0], bss[1], outs[0], outs[1], n, length)
    # The plan fixes everything else Triton specialises on; with every per-call pointer
    # 16-byte aligned (the allocator's norm) the ints and dtypes are the rest of the key.
    ptrs = (q.data_ptr(), kt.data_ptr(), vt.data_ptr(), bs.data_ptr(), out.data_ptr(), sig.data_ptr())
    aligned = (ptrs[0] | ptrs[1] | ptrs[2] | ptrs[3] | ptrs[4] | ptrs[5]) % 16 == 0
    key = None
    if aligned and _device_resident(q, kt, vt, bs, sig):
        key = (plan_key, ints, kt.dtype, vt.dtype, bs.dtype, sig.dtype)
    _launch()(plan.grid, (q, kt, vt, bs, out, sig, *ints, *plan.args), key, segments.runners,
              (*ptrs, *ints, *plan.direct_args), num_warps=plan.num_warps, num_stages=2)
    return out
