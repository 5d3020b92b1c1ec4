"""DirectLauncher: Triton's launch once per argument signature, the compiled kernel's own
launcher afterwards, checked once and switched off when it disagrees.

A fake kernel with Triton's two call conventions stands in for a GPU: `kernel[grid](*args,
**options)` (binds, compiles, launches; returns the compiled kernel) and
`compiled[grid](*args)` (launches). Both write `out = a * scale` so results can be compared.
Whether the fused kernel's keys are sound is tested against Triton's own binder in
test_fused_launch_keys.py.
"""

from __future__ import annotations

import logging

import pytest
import torch

from ip_adapter_core import launch
from ip_adapter_core.launch import DirectLauncher

OUT = 1
POINTERS = {}  # data_ptr -> tensor, for runners given pointers


class FakeCompiled:
    def __init__(self, kernel, signature, wrong=False, broken=False):
        self.kernel, self.signature, self.wrong, self.broken = kernel, signature, wrong, broken

    def __getitem__(self, grid):
        assert len(grid) == 3

        def runner(a, out, scale, flag):
            if self.broken:
                raise TypeError("runner() takes 5 positional arguments but 6 were given")
            self.kernel.calls.append(("direct", self.signature))
            self.kernel.direct_inputs.append((type(a), type(out)))
            a, out = (POINTERS.get(x, x) for x in (a, out))  # a device pointer stands for its tensor
            out.copy_(a * (scale + (1 if self.wrong else 0)))

        return runner


class FakeKernel:
    """Triton's JITFunction, as far as the launcher sees it."""

    def __init__(self, **compiled_kw):
        self.calls = []
        self.direct_inputs = []
        self.compiled_kw = compiled_kw

    def __getitem__(self, grid):
        def run(a, out, scale, flag, num_warps=4):
            signature = (a.dtype, a.data_ptr() % 16 == 0, scale, type(flag), num_warps)
            self.calls.append(("triton", signature))
            out.copy_(a * scale)
            return FakeCompiled(self, signature, **self.compiled_kw)

        return run


def args(a, scale=2, flag=True):
    return (a, torch.empty_like(a), scale, flag)


def kinds(kernel):
    return [kind for kind, _ in kernel.calls]


def call(launcher, cache, a, key="k", grid=(4, 2), **kw):
    launch_args = args(a, **kw)
    launcher(grid, launch_args, key, cache, num_warps=4)
    torch.testing.assert_close(launch_args[OUT], a * launch_args[2], rtol=0, atol=0, equal_nan=True)  # every path
    return launch_args


@pytest.fixture(autouse=True)
def direct_on(monkeypatch):
    monkeypatch.delenv("IPA_DIRECT_LAUNCH", raising=False)


def test_first_call_through_triton_then_checked_then_direct():
    kernel, cache = FakeKernel(), {}
    launcher = DirectLauncher(kernel, OUT, "3.6.0")
    a = torch.randn(64)
    call(launcher, cache, a)
    assert kinds(kernel) == ["triton", "direct"]  # Triton's launch, then the one-time check
    assert launcher.verified
    for _ in range(3):
        call(launcher, cache, a)
    assert kinds(kernel) == ["triton", "direct", "direct", "direct", "direct"]


def test_each_key_and_each_cache_goes_through_triton_once_and_only_the_first_is_checked():
    kernel, cache, other = FakeKernel(), {}, {}
    launcher = DirectLauncher(kernel, OUT, "3.8.0")
    a = torch.randn(64)
    call(launcher, cache, a, key="k")
    kernel.calls.clear()
    call(launcher, cache, a.half(), key="half")
    call(launcher, other, a, key="k")  # the same key in another plan's cache
    assert kinds(kernel) == ["triton", "triton"]
    call(launcher, cache, a.half(), key="half")
    call(launcher, other, a, key="k")
    assert kinds(kernel) == ["triton", "triton", "direct", "direct"]


def test_no_key_always_goes_through_triton():
    kernel, cache = FakeKernel(), {}
    launcher = DirectLauncher(kernel, OUT, "3.6.0")
    for _ in range(3):
        call(launcher, cache, torch.randn(8), key=None)
    assert kinds(kernel) == ["triton"] * 3 and not cache


@pytest.mark.parametrize("fault", ["wrong", "broken"])
def test_a_direct_launch_that_disagrees_switches_direct_launches_off(fault, caplog):
    kernel, cache = FakeKernel(**{fault: True}), {}
    launcher = DirectLauncher(kernel, OUT, "3.6.0")
    a = torch.randn(64)
    with caplog.at_level(logging.WARNING, logger="ipadapter_kit"):
        call(launcher, cache, a)  # Triton's result stands
    assert not launcher.enabled and "Triton's own launcher" in caplog.text
    kernel.calls.clear()
    for _ in range(3):
        call(launcher, cache, a)
    assert kinds(kernel) == ["triton"] * 3


def test_check_treats_nan_as_equal_to_nan():
    launcher = DirectLauncher(FakeKernel(), OUT, "3.6.0")
    call(launcher, {}, torch.tensor([1.0, float("nan"), 3.0]))
    assert launcher.enabled and launcher.verified


@pytest.mark.parametrize(("version", "env", "direct"), [
    ("3.2.0", None, False),  # CompiledKernel[grid] took only the non-constexpr arguments
    ("3.3.1", None, True),
    ("3.6.0", "0", False),  # IPA_DIRECT_LAUNCH=0 switches it off
    ("3.10.0+git1234", None, True),
    ("", None, False),
])
def test_triton_versions_and_switch(version, env, direct, monkeypatch):
    if env is not None:
        monkeypatch.setenv("IPA_DIRECT_LAUNCH", env)
    kernel, cache = FakeKernel(), {}
    launcher = DirectLauncher(kernel, OUT, version)
    for _ in range(2):
        call(launcher, cache, torch.randn(8))
    assert kinds(kernel) == (["triton", "direct", "direct"] if direct else ["triton", "triton"])


def test_a_kernel_that_returns_no_compiled_kernel_keeps_using_triton():
    class Interpreted(FakeKernel):  # Triton's interpreter returns nothing from a launch
        def __getitem__(self, grid):
            run = super().__getitem__(grid)
            return lambda *a, **kw: run(*a, **kw) and None

    kernel = Interpreted()
    launcher = DirectLauncher(kernel, OUT, "3.6.0")
    for _ in range(3):
        call(launcher, {}, torch.randn(8))
    assert kinds(kernel) == ["triton"] * 3 and launcher.enabled


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(launch, "MAX_ENTRIES", 4)
    launcher, cache = DirectLauncher(FakeKernel(), OUT, "3.6.0"), {}
    for i in range(10):
        call(launcher, cache, torch.randn(8), key=i)
    assert len(cache) <= 4


def test_direct_args_go_to_the_runner_and_the_check_writes_through_a_pointer(monkeypatch):
    kernel, cache = FakeKernel(), {}
    launcher = DirectLauncher(kernel, OUT, "3.6.0")
    original = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t: remember(original(t)))  # the check's probe
    a = remember(torch.randn(16))
    for _ in range(3):
        out = remember(original(a))
        launcher((1,), (a, out, 2, True), "k", cache, (a.data_ptr(), out.data_ptr(), 2, True), num_warps=4)
        assert torch.equal(out, a * 2)
    assert kinds(kernel) == ["triton", "direct", "direct", "direct"] and launcher.verified
    assert kernel.direct_inputs == [(int, int)] * 3


def remember(t):
    POINTERS[t.data_ptr()] = t
    return t
