"""Launching a Triton kernel without Triton's per-call argument binding.

`kernel[grid](*args)` binds the arguments, derives every argument's specialisation (type,
16-byte alignment, int equal to 1 or a multiple of 16), builds a cache key and looks the
compiled kernel up, on every call. ComfyUI's SD1.5/SDXL UNets are bound by host time per
launch (bench/RESULTS.md), so for a kernel called once per cross-attention layer that binding
is a large part of what the adapter adds to a step.

`DirectLauncher` goes through Triton once per key and then keeps the compiled kernel's own
launcher (`CompiledKernel[grid](*args)`: every argument in signature order, constexprs
included, from Triton 3.3 on). The caller chooses the key and the cache it lives in, and
promises that equal keys in one cache mean arguments Triton specialises identically (same
types, dtypes, pointer alignment, and ints equal to 1 or multiples of 16 in the same places);
a call without a key always goes through Triton.

A direct launch may take `direct_args`: the same arguments with every tensor replaced by its
`data_ptr()`. Triton's launcher passes an int through as the device pointer, where for a tensor
it calls `data_ptr()` and asks the CUDA driver whether the pointer is a device pointer (one
driver call per pointer argument, per launch); the caller that passes ints vouches for that.

The first direct launch in a process is checked against Triton's own launch of the same
arguments (bit-equal output, one sync, once). If it differs or raises, direct launches are
switched off for the process with one warning, and every call goes through Triton as before.
"""

from __future__ import annotations

import logging
import os
import re

import torch

log = logging.getLogger("ipadapter_kit")

MIN_TRITON = (3, 3)  # CompiledKernel[grid] takes every argument (constexprs included) from 3.3 on
MAX_ENTRIES = 1024  # per cache


def version_supported(version: str) -> bool:
    found = re.match(r"(\d+)\.(\d+)", version or "")
    return found is not None and (int(found[1]), int(found[2])) >= MIN_TRITON


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


class DirectLauncher:
    """`launcher(grid, args, key, cache, direct_args, **options)` does what
    `kernel[grid](*args, **options)` does; `out_arg` is the position of an output the kernel
    only writes."""

    _NO_DIRECT = object()

    def __init__(self, kernel, out_arg: int, triton_version: str):
        self.kernel = kernel
        self.out_arg = out_arg
        self.enabled = version_supported(triton_version) and os.environ.get("IPA_DIRECT_LAUNCH", "1") != "0"
        self.verified = False

    def __call__(self, grid: tuple, args: tuple, key, cache: dict, direct_args: tuple | None = None, **options) -> None:
        if not self.enabled or key is None:
            self.kernel[grid](*args, **options)
            return
        runner = cache.get(key)
        if runner is not None and runner is not self._NO_DIRECT:
            runner(*(args if direct_args is None else direct_args))
            return
        compiled = self.kernel[grid](*args, **options)
        if runner is None:
            self._adopt(cache, key, compiled, grid, args, direct_args)

    def _adopt(self, cache: dict, key, compiled, grid, args, direct_args) -> None:
        if len(cache) >= MAX_ENTRIES:
            cache.clear()
        if compiled is None or not hasattr(compiled, "__getitem__"):
            cache[key] = self._NO_DIRECT
            return
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return  # no check possible while a CUDA graph is captured; try again later
        try:
            runner = compiled[(tuple(grid) + (1, 1))[:3]]
            if not self.verified:
                self._check(runner, args, direct_args)
        except Exception as exc:  # noqa: BLE001 - any failure means: use Triton's launch
            self._disable(f"{type(exc).__name__}: {exc}")
            return
        cache[key] = runner

    def _check(self, runner, args, direct_args) -> None:
        out = args[self.out_arg]
        probe = torch.empty_like(out)
        given, at = (args, probe) if direct_args is None else (direct_args, probe.data_ptr())
        runner(*given[: self.out_arg], at, *given[self.out_arg + 1 :])
        if not _same(probe, out):
            raise RuntimeError("the direct launch wrote a different result than Triton's launch")
        self.verified = True

    def _disable(self, why: str) -> None:
        self.enabled = False
        log.warning("IPAdapter fused kernel: launching through Triton's own launcher from now on (%s).", why)
