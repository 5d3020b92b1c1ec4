"""The fused kernel's direct-launch keys are sound: two calls that get the same key in the
same plan are specialised identically by Triton's own argument binder (the code that picks
the compiled kernel), so the kernel a direct launch reuses is the one Triton would pick.

The binder is built for a CUDA target without a GPU; nothing is compiled or launched: the
launch is recorded instead.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import pytest
import torch

from ip_adapter_core import fused

triton = pytest.importorskip("triton")
DEVICE_RESIDENT = fused._device_resident


@pytest.fixture(scope="module")
def binder():
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        kernel = fused._decoupled_kernel
        return create_function_from_signature(kernel.signature, kernel.params, make_backend(GPUTarget("cuda", 90, 32)))
    except Exception as exc:  # internal API: a Triton that moved it cannot run this check
        pytest.skip(f"Triton's binder is not reachable in this version: {exc}")


@pytest.fixture
def launches(monkeypatch):
    recorded = []

    def record(grid, args, key, cache, direct_args=None, **options):
        recorded.append((grid, args, key, id(cache), options, direct_args))

    monkeypatch.setattr(fused, "_launch", lambda: record)
    monkeypatch.setattr(fused, "_device_resident", lambda *tensors: True)  # CPU tensors stand in for CUDA ones
    return recorded


def segments(c, batch, lengths=(4,), masked=False, per_row=False, dtype=torch.float16):
    g = torch.Generator().manual_seed(c + len(lengths))
    rows = batch if per_row else 1
    total = sum(lengths)
    return fused.Segments(
        torch.randn(rows, total, c, generator=g).to(dtype), torch.randn(rows, total, c, generator=g).to(dtype),
        torch.tensor([sum(lengths[:i]) for i in range(len(lengths))], dtype=torch.int32),
        torch.tensor(lengths, dtype=torch.int32), torch.ones(len(lengths), batch),
        torch.full((len(lengths),), 10.0), torch.full((len(lengths),), 0.5),
        torch.rand(len(lengths), batch, 64, generator=g).to(dtype) if masked else None,
        has_schedule=True,
    )


def unaligned(shape, dtype):
    """A tensor whose data starts one element past a 16-byte boundary."""
    n = 1
    for s in shape:
        n *= s
    return torch.randn(n + 1).to(dtype)[1:].view(shape)


def calls(launches):
    plans = [segments(320, 2, dtype=dtype) for dtype in (torch.float16, torch.bfloat16)]
    plans.append(segments(320, 2, lengths=(16, 4), masked=True, per_row=True))
    sig = torch.tensor([3.0, 1.0])
    for seg in plans:
        for _ in range(2):  # every case twice: the second call of a case hits its key
            dtype = seg.k.dtype
            q = torch.randn(2, 64, 320).to(dtype)
            wide = torch.randn(2, 77, 640).to(dtype)
            texts = [
                torch.randn(2, 77, 320).to(dtype), torch.randn(1, 77, 320).to(dtype),  # broadcast text
                torch.randn(2, 154, 320).to(dtype), torch.randn(2, 1, 320).to(dtype),  # long / one token
                wide[..., :320],  # a strided view
                unaligned((2, 77, 320), dtype),
            ]
            for k in texts:
                fused.decoupled_attention_fused(q, k, k, 8, seg)
                fused.decoupled_attention_fused(q, k, k, 8, seg, sigmas=sig)
            fused.decoupled_attention_fused(unaligned((2, 64, 320), dtype), texts[0], texts[0], 8, seg)
            fused.decoupled_attention_fused(q, None, None, 8, seg, base=torch.randn(2, 64, 320).to(dtype))
            fused.decoupled_attention_fused(q, None, None, 8, seg, base=unaligned((2, 64, 320), dtype))
            q40 = torch.randn(2, 16, 640).to(dtype)  # another layer shape on the same plan
            fused.decoupled_attention_fused(q40, torch.randn(2, 77, 640).to(dtype), torch.randn(2, 77, 640).to(dtype), 10, seg)
    return launches


def test_equal_keys_mean_equal_triton_specialisations(binder, launches):
    groups = defaultdict(set)
    no_key = 0
    for grid, args, key, cache, options, _ in calls(launches):
        _, specialization, _ = binder(*args, **options, debug=False)
        if key is None:
            no_key += 1
            continue
        groups[(cache, key)].add((grid, tuple(specialization)))
    assert no_key > 0  # unaligned per-call pointers always go through Triton
    assert len(groups) >= 20
    for found in groups.values():
        assert len(found) == 1, found


def test_keys_repeat_for_repeated_calls(launches):
    recorded = calls(launches)
    keys = [(cache, key) for _, _, key, cache, _, _ in recorded if key is not None]
    assert len(set(keys)) == len(keys) // 2  # every keyed case came twice and kept its key


def test_direct_arguments_are_the_arguments_with_device_pointers(launches):
    for _, args, _, _, _, direct in calls(launches):
        assert direct == tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)


def test_tensors_off_the_device_never_get_a_key(launches, monkeypatch):
    monkeypatch.setattr(fused, "_device_resident", DEVICE_RESIDENT)  # the real check: these are CPU tensors
    recorded = calls(launches)
    assert recorded and all(key is None for _, _, key, _, _, _ in recorded)


class OnGpu1(torch.Tensor):
    """A CPU tensor that says it lives on cuda:1 (no GPU needed)."""

    @property
    def is_cuda(self):
        return True

    def get_device(self):
        return 1


def test_a_model_on_another_gpu_launches_with_its_device_current(monkeypatch):
    """Triton launches on the current device (its kernels are loaded per device), so a query on
    cuda:1 while cuda:0 is current must make cuda:1 current for the launch and restore cuda:0."""
    current = [0]
    launched_on = []

    @contextlib.contextmanager
    def device(index):
        before, current[0] = current[0], index
        try:
            yield
        finally:
            current[0] = before

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(fused, "_launch", lambda: lambda *a, **k: launched_on.append(current[0]))
    seg = segments(320, 2)
    text = torch.randn(2, 77, 320).half()
    fused.decoupled_attention_fused(torch.randn(2, 64, 320).half().as_subclass(OnGpu1), text, text, 8, seg)
    assert launched_on == [1] and current == [0]
    fused.decoupled_attention_fused(torch.randn(2, 64, 320).half(), text, text, 8, seg)  # CPU: no switch
    assert launched_on == [1, 0]
