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
two-call path in `attention.py` runs. With TRITON_INTERPRET=1 the kernel runs on CPU
tensors, which is how the tests compare it with the plain path.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - triton missing or broken
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_HEAD_DIM = 256


def enabled() -> bool:
    return triton is not None and os.environ.get("IPA_FUSED", "1") != "0"


def available(q: torch.Tensor) -> bool:
    """Whether the fused kernel can run for this query tensor."""
    if not enabled():
        return False
    if not (q.is_cuda or INTERPRET):
        return False
    return q.dtype in (torch.float16, torch.bfloat16, torch.float32)


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
        Q, KT, VT, BASE, KI, VI, OUT,
        SEG_START, SEG_LEN, SCALE, SIG_HI, SIG_LO, SIGMA, MASK,
        stride_qb, stride_qn, stride_ktb, stride_ktl, stride_vtb, stride_vtl,
        stride_bb, stride_bn, stride_kib, stride_kit, stride_vib, stride_vit, stride_ob, stride_on,
        stride_ss, stride_sb, stride_ms, stride_mb, stride_mn,
        N, L, n_seg, sm_scale,
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


def _pow2(x: int, floor: int = 16) -> int:
    return max(floor, 1 << (max(1, x) - 1).bit_length())


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
    b, n, c = q.shape
    d = c // heads
    if d > MAX_HEAD_DIM or c != heads * d:
        raise ValueError(f"head dim {d} not supported by the fused kernel")
    has_text = base is None
    out = torch.empty_like(q)
    if q.stride(-1) != 1:
        q = q.contiguous()
    kt = k if has_text else q
    vt = v if has_text else q
    if has_text and (kt.stride(-1) != 1 or vt.stride(-1) != 1):
        kt, vt = kt.contiguous(), vt.contiguous()
    bs = base if base is not None else q
    ki, vi = segments.k, segments.v
    kib = 0 if ki.shape[0] == 1 else ki.stride(0)
    vib = 0 if vi.shape[0] == 1 else vi.stride(0)
    ktb = 0 if (has_text and kt.shape[0] == 1) else kt.stride(0)
    vtb = 0 if (has_text and vt.shape[0] == 1) else vt.stride(0)
    mask = segments.mask
    has_mask = mask is not None
    m = mask if has_mask else segments.scale
    ms = (m.stride(0), m.stride(1), m.stride(2)) if has_mask else (0, 0, 0)
    has_sigma = sigmas is not None
    sig = sigmas.reshape(-1)[:1] if has_sigma else segments.scale
    block_d = _pow2(d)
    wide = block_d * q.element_size()  # bytes per key row: bounds the shared memory of a K/V tile
    block_m = 64 if wide <= 256 else 32
    block_n = 64 if wide <= 256 else (32 if wide <= 512 else 16)
    grid = (triton.cdiv(n, block_m), b * heads)
    _decoupled_kernel[grid](
        q, kt, vt, bs, ki, vi, out,
        segments.start, segments.length, segments.scale, segments.sigma_hi, segments.sigma_lo, sig, m,
        q.stride(0), q.stride(1), ktb, kt.stride(1), vtb, vt.stride(1),
        bs.stride(0), bs.stride(1), kib, ki.stride(1), vib, vi.stride(1), out.stride(0), out.stride(1),
        segments.scale.stride(0), segments.scale.stride(1), ms[0], ms[1], ms[2],
        n, kt.shape[1] if has_text else 0, segments.count, 1.0 / math.sqrt(d),
        H=heads, D=d, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_T=16,
        HAS_TEXT=has_text, HAS_MASK=has_mask, HAS_SIGMA=has_sigma,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4 if block_d <= 64 else 8,
        num_stages=2,
    )
    return out
