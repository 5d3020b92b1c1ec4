"""The fused decoupled-attention kernel on a real GPU: error against the plain two-call
path, per-layer timings (text-only SDPA, text + image SDPA + add, fused), and the direct
launch (launch.py) against Triton's own launcher: bit-equal outputs, host time per call.

    python bench/check_fused.py [--json PATH]
    TRITON_INTERPRET=1 python bench/check_fused.py --smoke   # the script itself, on CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ip_adapter_core import fused  # noqa: E402
from ip_adapter_core.attention import attention  # noqa: E402

DEVICE = "cuda"
# (name, batch, query tokens, heads, head dim): the layer shapes that dominate the cost
SMOKE_SHAPES = [("tiny 64", 2, 32, 2, 32), ("tiny 80", 1, 16, 2, 40)]
SHAPES = [
    ("sd15-512 320", 2, 4096, 8, 40),
    ("sd15-512 640", 2, 1024, 8, 80),
    ("sd15-512 1280", 2, 256, 8, 160),
    ("sd15-512x4 320", 8, 4096, 8, 40),
    ("sdxl-1024 640", 2, 4096, 10, 64),
    ("sdxl-1024 1280", 2, 1024, 20, 64),
]


def sdpa_text(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    out = F.scaled_dot_product_attention(
        q.view(b, n, heads, d).transpose(1, 2), k.view(b, -1, heads, d).transpose(1, 2), v.view(b, -1, heads, d).transpose(1, 2)
    )
    return out.transpose(1, 2).reshape(b, n, c)


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def bench(fn, iters=50):
    if DEVICE != "cuda":
        fn()
        return float("nan")  # smoke run: no timings
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / iters  # microseconds


def segments_for(tokens, b, c, dtype, g):
    r = lambda *s: torch.randn(*s, generator=g, device=DEVICE)  # noqa: E731
    ki, vi = r(1, sum(tokens), c).to(dtype), r(1, sum(tokens), c).to(dtype)
    starts = [sum(tokens[:i]) for i in range(len(tokens))]
    return fused.Segments(ki, vi, torch.tensor(starts, dtype=torch.int32, device=DEVICE),
                          torch.tensor(tokens, dtype=torch.int32, device=DEVICE), torch.full((len(tokens), b), 0.8, device=DEVICE),
                          torch.full((len(tokens),), float("inf"), device=DEVICE),
                          torch.full((len(tokens),), float("-inf"), device=DEVICE), None)


def launch_check(g, shapes):
    """Direct launch vs Triton's launcher: equal outputs on every shape, host time per call."""
    launcher = fused._launch()
    report = {"triton_direct_supported": launcher.enabled, "shapes_equal": {}}
    direct = launcher.enabled
    for name, b, n, h, d in shapes:
        c = h * d
        q, k, v = (torch.randn(b, t, c, generator=g, device=DEVICE).half() for t in (n, 77, 77))
        seg = segments_for((16, 4), b, c, torch.float16, g)
        launcher.enabled = direct
        outs = [fused.decoupled_attention_fused(q, k, v, h, seg) for _ in range(3)]  # Triton, then direct
        launcher.enabled = False
        ref = fused.decoupled_attention_fused(q, k, v, h, seg)
        report["shapes_equal"][name] = all(torch.equal(o, ref) for o in outs)
    report["verified"] = launcher.verified
    report["direct_after_check"] = direct and launcher.verified
    q, k, v = (torch.randn(1, t, 320, generator=g, device=DEVICE).half() for t in (64, 77, 77))  # tiny: host-bound
    seg = segments_for((4,), 1, 320, torch.float16, g)
    calls = 500 if DEVICE == "cuda" else 2
    for mode in ("triton", "direct"):
        launcher.enabled = direct if mode == "direct" else False
        for _ in range(min(20, calls)):
            fused.decoupled_attention_fused(q, k, v, 8, seg)
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fused.decoupled_attention_fused(q, k, v, 8, seg)
        report[f"host_us_per_call_{mode}"] = 1e6 * (time.perf_counter() - t0) / calls
        sync()
    launcher.enabled = direct
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, no timings (run with TRITON_INTERPRET=1)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = "cpu" if args.smoke else "cuda"
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    rows, errors = [], []
    g = torch.Generator(device=DEVICE).manual_seed(0)
    dtypes = (torch.float16, torch.float32) if args.smoke else (torch.float16, torch.bfloat16, torch.float32)  # the interpreter mis-handles bf16
    for dtype in dtypes:
        for name, b, n, h, d in shapes:
            c = h * d
            r = lambda *s: torch.randn(*s, generator=g, device=DEVICE)  # noqa: E731
            q, k, v = r(b, n, c).to(dtype), r(b, 77, c).to(dtype), r(b, 77, c).to(dtype)
            for tokens in ((4,), (16,), (16, 4)):
                seg = segments_for(tokens, b, c, dtype, g)
                ki, vi = seg.k, seg.v
                starts = [sum(tokens[:i]) for i in range(len(tokens))]
                out = fused.decoupled_attention_fused(q, k, v, h, seg)
                ref = attention(q.float(), k.float(), v.float(), h)
                for st, ln in zip(starts, tokens):
                    ref = ref + 0.8 * attention(q.float(), ki[:, st:st + ln].float(), vi[:, st:st + ln].float(), h)
                err = (out.float() - ref).abs().max().item()
                errors.append({"shape": name, "dtype": str(dtype), "tokens": tokens, "max_abs_err": err})
                if dtype is not torch.float16:
                    continue

                def two_call():
                    o = sdpa_text(q, k, v, h)
                    for st, ln in zip(starts, tokens):
                        o = o + 0.8 * sdpa_text(q, ki[:, st:st + ln].expand(b, -1, -1), vi[:, st:st + ln].expand(b, -1, -1), h)
                    return o

                rows.append({
                    "shape": name, "tokens": tokens,
                    "text_only_us": bench(lambda: sdpa_text(q, k, v, h)),
                    "two_call_us": bench(two_call),
                    "fused_us": bench(lambda: fused.decoupled_attention_fused(q, k, v, h, seg)),
                })
    launch = launch_check(g, shapes)
    print("direct launch:", json.dumps(launch))
    print("max abs error vs fp32 plain path:")
    for e in errors:
        print(f"  {e['shape']:16s} {e['dtype']:15s} tokens {str(e['tokens']):8s} {e['max_abs_err']:.2e}")
    print("\nper-layer time (fp16, microseconds):")
    print("| layer | image tokens | text only (SDPA) | text + image (two SDPA + add) | fused |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['shape']} | {'+'.join(map(str, row['tokens']))} | {row['text_only_us']:.1f} | {row['two_call_us']:.1f} | {row['fused_us']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"errors": errors, "timings": rows, "launch": launch,
                                         "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke)",
                                         "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
