"""The fused CUDA kernel, run on CPU by Triton's interpreter, against the plain path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
triton = pytest.importorskip("triton")


def test_patch_math_suite_passes_through_the_fused_kernel():
    """Every patch-math test (layouts, precise/composition routes, masks, unfold, AnimateDiff
    windows, scaling modes, foreign patches, schedules) again, with the kernel doing the work."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join(HERE, "test_patch_math.py")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


KERNEL_CASES = r"""
import os, sys, torch
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
from ip_adapter_core import fused
from ip_adapter_core.attention import attention

def check(B, N, L, H, D, dtype, lengths, per_row, with_mask, base_mode, atol):
    g = torch.Generator().manual_seed(B * 131 + D)
    C = H * D
    r = lambda *s: torch.randn(*s, generator=g)
    q, k, v = r(B, N, C).to(dtype), r(B, L, C).to(dtype), r(B, L, C).to(dtype)
    kb = B if per_row else 1
    ki, vi = r(kb, sum(lengths), C).to(dtype), r(kb, sum(lengths), C).to(dtype)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    scale = r(len(lengths), B)
    mask = torch.rand(len(lengths), B, N, generator=g).to(dtype) if with_mask else None
    seg = fused.Segments(ki, vi, torch.tensor(starts, dtype=torch.int32), torch.tensor(lengths, dtype=torch.int32),
                         scale, torch.full((len(lengths),), float("inf")), torch.full((len(lengths),), float("-inf")), mask)
    base = r(B, N, C).to(dtype) if base_mode else None
    out = fused.decoupled_attention_fused(q, None if base_mode else k, None if base_mode else v, H, seg, None, base)
    f = lambda t: t.float()
    ref = f(base) if base_mode else attention(f(q), f(k), f(v), H)
    for s, (st, ln) in enumerate(zip(starts, lengths)):
        ip = attention(f(q), f(ki[:, st:st + ln]), f(vi[:, st:st + ln]), H)
        if with_mask:
            ip = ip * f(mask[s])[..., None]
        ref = ref + ip * scale[s].view(B, 1, 1)
    err = (out.float() - ref).abs().max().item()
    assert err <= atol, (B, N, L, H, D, dtype, lengths, err)
    return err

errs = [
    check(2, 64, 77, 8, 40, torch.float32, [4], False, False, False, 1e-5),   # SD1.5 320-wide layer
    check(1, 50, 77, 8, 80, torch.float32, [16, 4], True, True, False, 1e-5),  # two adapters, per-row K/V, masks
    check(2, 33, 154, 8, 160, torch.float32, [257], False, False, False, 1e-5),  # full face, 1280-wide, long prompt
    check(2, 40, 77, 10, 64, torch.float32, [16], False, True, True, 1e-5),   # SDXL head dim, text from a foreign patch
    check(2, 64, 77, 8, 40, torch.float16, [4, 16], False, False, False, 3e-3),  # fp16 inputs, fp32 accumulation
]
print("max errors", errs)
"""


def test_kernel_matches_plain_attention_over_shapes_and_dtypes():
    repo = os.path.dirname(os.path.dirname(HERE))
    proc = subprocess.run([sys.executable, "-c", KERNEL_CASES, repo], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "max errors" in proc.stdout
