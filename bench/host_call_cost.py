"""Host-side (CPU) time of one cross-attention layer call, with and without the adapter.

    python bench/host_call_cost.py [--rounds 30] [--json out.json]

On a GPU the adapter's cost per step is mostly what its patch adds to the host's time per
layer call (the GPU work is 10-15 us per layer; see RESULTS.md), because ComfyUI's SD1.5 and
SDXL UNets are bound by launch time. That host time is measurable on any CPU: this script
samples a small SD1.5 UNet at a tiny latent (so the attention math is a few microseconds),
records every attn2 call of one step, and replays those exact calls, configurations
interleaved in every round. Reported per layer call (median over rounds):
  text        ComfyUI's own text attention, called through a patch that adds nothing
  floor       the simplest correct patch (two attention calls + add)
  plain x1/x2/x2+mask+sched   this pack's two-call path (CPU, and CUDA without Triton)
  fused host x1 / x2+mask+sched   this pack's fused path with the kernel launch replaced by a
              no-op: our own Python around the launch (the launch itself needs a GPU)
CPU microseconds are a proxy for a GPU host's: the ratios matter, not the absolute values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (same folder)


class TextOnly:
    """A patch that computes exactly what the unpatched layer would: the baseline call."""

    def __call__(self, q, k, v, extra):
        from ipadapter_kit.nodes import host

        return host.text_attention(q, k, v, extra)

    def __deepcopy__(self, memo):
        return self


def text_only_model(model):
    from ipadapter_kit.nodes import host

    clone = model.clone()
    for layer in host.cross_attention_layers(model):
        clone.set_model_attn2_replace(TextOnly(), *layer.key)
    return clone


def record_calls(model, res: int):
    """(patch, q, k, v, extra_options) of every attn2 call in the last of two sampling steps."""
    from ipadapter_kit.nodes import host

    calls = []
    patches = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    classes = {type(p) for p in patches.values()}
    saved = {cls: cls.__call__ for cls in classes}

    def wrap(orig):
        def recording(self, q, k, v, extra):
            calls.append((self, q, k, v, dict(extra)))
            return orig(self, q, k, v, extra)
        return recording

    for cls in classes:
        cls.__call__ = wrap(saved[cls])
    try:
        bench.sample(model, "sd15", 1, res, 2, "cpu")
    finally:
        for cls, orig in saved.items():
            cls.__call__ = orig
    per_step = len(host.cross_attention_layers(model))
    return calls[-per_step:]


def replay_us(calls, repeats: int) -> float:
    """Mean microseconds per layer call over `repeats` passes through one step's calls."""
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(repeats):
            for patch, q, k, v, extra in calls:
                patch(q, k, v, extra)
        return 1e6 * (time.perf_counter() - t0) / (repeats * len(calls))


class NoLaunch:
    """Stands in for the Triton kernel: `kernel[grid](...)` and `compiled[grid](...)` do nothing."""

    def __getitem__(self, grid):
        return self

    def __call__(self, *args, **kwargs):
        return self


def triton_launch_python_us(fused, loops: int = 20000):
    """Python time of one launch of the fused kernel, (Triton's JITFunction.run, the direct
    launcher) with the C launcher replaced by a no-op: the part the direct launch removes.
    Triton's runtime is pointed at a stand-in CUDA driver; nothing is compiled."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import compute_cache_key

    class StandInDriver:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    class StandInCompiled:
        function, packed_metadata = 0, (4, 1, 1, 0)

        def launch_metadata(self, grid, stream, *args):
            return None

        def run(self, *args):
            pass

        __getitem__ = triton.compiler.CompiledKernel.__getitem__
        _init_handles = lambda self: None  # noqa: E731

    captured = {}

    class Capture:
        def __getitem__(self, grid):
            return lambda *args, **options: captured.update(grid=grid, args=args, options=options)

    B, N, C, H = 2, 4096, 640, 10  # an SDXL 1024 layer
    segments = fused.Segments(torch.randn(1, 4, C), torch.randn(1, 4, C), torch.tensor([0], dtype=torch.int32),
                              torch.tensor([4], dtype=torch.int32), torch.ones(1, B), torch.full((1,), float("inf")),
                              torch.full((1,), float("-inf")), None)
    kernel = fused._decoupled_kernel
    try:
        fused._decoupled_kernel = Capture()
        fused._launch().enabled = False
        fused.decoupled_attention_fused(torch.randn(B, N, C), torch.randn(B, 77, C), torch.randn(B, 77, C), H, segments)
    finally:
        fused._decoupled_kernel = kernel
    grid, args, options = captured["grid"], captured["args"], captured["options"]
    previous = driver._active  # not `driver.active`: without a GPU that raises
    driver.set_active(StandInDriver())
    try:
        caches, key_cache, _, _, binder = kernel.device_caches[0]
        _, specialization, opts = binder(*args, **options, debug=False,
                                         instrumentation_mode=triton.knobs.compilation.instrumentation_mode)
        caches[compute_cache_key(key_cache, specialization, opts)] = StandInCompiled()
        runner = StandInCompiled()[(grid + (1,))[:3]]
        results = {}
        for name, fn in (("triton", lambda: kernel[grid](*args, **options)), ("direct", lambda: runner(*args))):
            fn()
            t0 = time.perf_counter()
            for _ in range(loops):
                fn()
            results[name] = 1e6 * (time.perf_counter() - t0) / loops
        return results
    finally:
        driver._active = previous
        kernel.device_caches.clear()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=20, help="passes over one step's calls per round")
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bench.bootstrap("cpu", "--use-pytorch-cross-attention")  # SDPA, as ComfyUI uses on a GPU
    from ipadapter_kit.ip_adapter_core import fused

    model, ours, floor = bench.cpu_two_adapters(args.res)
    models = {
        "text": text_only_model(model), "floor x1": floor(1), "floor x2": floor(2), "plain x1": ours(1),
        "plain x2": ours(2), "plain x2+mask+sched": ours(2, masked=True, end_at=0.8),
    }
    calls = {name: record_calls(m, args.res) for name, m in models.items()}

    # The fused path's host side: our code around a launch that does nothing.
    fused_calls = {"fused host x1": calls["plain x1"], "fused host x2+mask+sched": calls["plain x2+mask+sched"]}
    real_available, real_kernel = fused.available, fused._decoupled_kernel

    def fused_on():
        fused.available = lambda q: True
        fused._decoupled_kernel = stub
        fused._launch().verified = True  # the stand-in's output is not comparable

    stub = NoLaunch()

    def fused_off():
        fused.available, fused._decoupled_kernel = real_available, real_kernel

    names = list(calls) + list(fused_calls)
    per_round = {name: [] for name in names}
    try:
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                if name in fused_calls:
                    fused_on()
                    per_round[name].append(replay_us(fused_calls[name], args.repeats))
                    fused_off()
                else:
                    per_round[name].append(replay_us(calls[name], args.repeats))
    finally:
        fused_off()
    try:
        launch_us = triton_launch_python_us(fused)
    except Exception as exc:  # Triton internals differ: report without it
        launch_us = {"error": f"{type(exc).__name__}: {exc}"}
    base = per_round["text"]
    rows = {}
    for name in names:
        extra = [a - b for a, b in zip(per_round[name], base)]
        rows[name] = {"us_per_call_median": statistics.median(per_round[name]), "extra_us_median": statistics.median(extra)}
    print(f"Host time per attn2 call: small SD1.5 UNet, {args.res}x{args.res}, cond+uncond batch, "  # noqa: T201
          f"{len(calls['text'])} layer calls per step, {args.rounds} rounds x {args.repeats} passes, torch {torch.__version__}, 1 thread")
    print("| config | us per call (median) | extra us per call vs text (paired median) |")  # noqa: T201
    print("|---|---|---|")  # noqa: T201
    for name, row in rows.items():
        print(f"| {name} | {row['us_per_call_median']:.1f} | {row['extra_us_median']:+.1f} |")  # noqa: T201
    if "error" in launch_us:
        print(f"Triton launch timing skipped: {launch_us['error']}")  # noqa: T201
    else:
        print(f"Python time of one fused-kernel launch, C launcher excluded: Triton's JITFunction.run "  # noqa: T201
              f"{launch_us['triton']:.1f} us, direct {launch_us['direct']:.1f} us")
    if args.json:
        args.json.write_text(json.dumps({"res": args.res, "rounds": args.rounds, "repeats": args.repeats, "rows": rows,
                                         "launch_python_us": launch_us}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
