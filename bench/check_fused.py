"""The fused decoupled-attention kernel on a real GPU: error against the plain two-call
path, and per-layer timings (text-only SDPA, text + image SDPA + add, fused).

    python bench/check_fused.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ip_adapter_core import fused  # noqa: E402
from ip_adapter_core.attention import attention  # noqa: E402

# (name, batch, query tokens, heads, head dim): the layer shapes that dominate the cost
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


def bench(fn, iters=50):
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows, errors = [], []
    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for name, b, n, h, d in SHAPES:
            c = h * d
            r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
            q, k, v = r(b, n, c).to(dtype), r(b, 77, c).to(dtype), r(b, 77, c).to(dtype)
            for tokens in ((4,), (16,), (16, 4)):
                ki, vi = r(1, sum(tokens), c).to(dtype), r(1, sum(tokens), c).to(dtype)
                starts = [sum(tokens[:i]) for i in range(len(tokens))]
                scale = torch.full((len(tokens), b), 0.8, device="cuda")
                seg = fused.Segments(ki, vi, torch.tensor(starts, dtype=torch.int32, device="cuda"),
                                     torch.tensor(tokens, dtype=torch.int32, device="cuda"), scale,
                                     torch.full((len(tokens),), float("inf"), device="cuda"),
                                     torch.full((len(tokens),), float("-inf"), device="cuda"), None)
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
    print("max abs error vs fp32 plain path:")
    for e in errors:
        print(f"  {e['shape']:16s} {e['dtype']:15s} tokens {str(e['tokens']):8s} {e['max_abs_err']:.2e}")
    print("\nper-layer time (fp16, microseconds):")
    print("| layer | image tokens | text only (SDPA) | text + image (two SDPA + add) | fused |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['shape']} | {'+'.join(map(str, row['tokens']))} | {row['text_only_us']:.1f} | {row['two_call_us']:.1f} | {row['fused_us']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"errors": errors, "timings": rows, "device": torch.cuda.get_device_name(),
                                         "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
