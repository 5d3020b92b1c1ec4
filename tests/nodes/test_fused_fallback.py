"""When the fused kernel cannot run on this GPU (a Triton or a GPU it does not compile for),
its first failure switches the pack to the two-call path for good, with one warning, and the
call that failed still returns the right result. A kernel that has run before is not
second-guessed: its errors propagate. ROCm never gets the kernel (never validated there)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

import tiny  # noqa: F401  (sets up the host and the pack)
from ipadapter_kit.ip_adapter_core import fused
from ipadapter_kit.nodes import host, patch

HEADS, C, N, L, T = 4, 32, 64, 77, 4


def _patch():
    g = torch.Generator().manual_seed(5)
    kv = lambda: (torch.randn(1, T, C, generator=g), torch.randn(1, T, C, generator=g))  # noqa: E731
    prompt = patch.PreparedPrompt(cond=[kv()], uncond=[kv()])
    layer = host.HostLayer(index=0, key=("input", 1, 0), transformer_index=0, width=C, context_dim=768, heads=HEADS)
    return patch.Attn2Patch(layer, (patch.LayerEntry(prompt, 0, 0.7),))


def _call(p, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(2, N, C, generator=g), torch.randn(2, L, C, generator=g), torch.randn(2, L, C, generator=g)
    extra = {"n_heads": HEADS, "dim_head": C // HEADS, "cond_or_uncond": [0, 1], "sigmas": torch.tensor([1.0]),
             "original_shape": [2, 4, 8, 8]}
    return p(q, k, v, extra)


@pytest.fixture
def kernel(monkeypatch):
    """The fused path switched on for CPU tensors, its kernel replaced by a controllable one."""
    state = SimpleNamespace(calls=0, fail=True)

    def launch(q, k, v, heads, segments, sigmas=None, base=None):
        state.calls += 1
        if state.fail:
            raise RuntimeError("PTX .version 8.7 does not support .target sm_61")
        return torch.zeros_like(q)

    monkeypatch.setattr(fused, "_disabled_because", None)
    monkeypatch.setattr(fused, "available", lambda q: fused.enabled())
    monkeypatch.setattr(fused, "decoupled_attention_fused", launch)
    return state


def test_first_failure_falls_back_for_good_with_one_warning(kernel, caplog, monkeypatch):
    with caplog.at_level(logging.WARNING, logger="ipadapter_kit"):
        out = _call(_patch())
        again = _call(_patch(), seed=1)
    assert kernel.calls == 1  # tried once, never again
    assert not fused.enabled()
    assert caplog.text.count("fused kernel unavailable") == 1 and "sm_61" in caplog.text
    monkeypatch.setattr(fused, "available", lambda q: False)  # the two-call path, fresh patches
    torch.testing.assert_close(out, _call(_patch()), atol=0, rtol=0)
    torch.testing.assert_close(again, _call(_patch(), seed=1), atol=0, rtol=0)


def test_a_kernel_that_ran_before_is_not_replaced_when_it_fails(kernel):
    kernel.fail = False
    p = _patch()
    _call(p)  # runs: the plan is proven
    kernel.fail = True
    with pytest.raises(RuntimeError, match="sm_61"):
        _call(p)
    assert fused.enabled()


def test_rocm_never_gets_the_fused_kernel(monkeypatch):
    monkeypatch.setattr(fused, "NVIDIA", False)
    monkeypatch.setattr(fused, "INTERPRET", False)
    q = SimpleNamespace(is_cuda=True, dtype=torch.float16)  # a HIP tensor reports is_cuda too
    assert not fused.available(q)
    monkeypatch.setattr(fused, "NVIDIA", True)
    assert fused.available(q) == (fused.triton is not None and fused.enabled())
