"""Extra time per sampling step on CPU: no adapter, one adapter, two adapters (and the floor).

    python bench/cpu_step_cost.py [--rounds 40] [--res 128] [--json out.json]

A CPU proxy only (small SD1.5 UNet from ComfyUI's classes, random weights). Shared 2-core
machines drift by tens of percent within a minute, so each UNet evaluation is timed inside
sampling (a unet wrapper), the configurations alternate in every round (rotating order), and
the reported extra cost is the median over rounds of (config - none) *in the same round*:
drift cancels in the difference.
  none      the model
  floor     the simplest correct patch (K/V precomputed, two attention calls + add per layer)
  floor x2  the same for two adapters
  one       this pack, one adapter
  two       this pack, two adapters on the same model
  two+mask  this pack, two adapters, each with an attention mask
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


def with_eval_timer(model, sink: list):
    clone = model.clone()

    def wrapper(apply, args):
        t0 = time.perf_counter()
        out = apply(args["input"], args["timestep"], **args["c"])
        sink.append(time.perf_counter() - t0)
        return out

    clone.set_model_unet_function_wrapper(wrapper)
    return clone


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=4, help="sampling steps per config per round")
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    bench.bootstrap("cpu")
    model, ours, floor = bench.cpu_two_adapters(args.res)
    configs = {
        "none": model, "floor": floor(1), "floor x2": floor(2),
        "one": ours(1), "two": ours(2), "two+mask": ours(2, masked=True),
    }
    sinks = {name: [] for name in configs}
    timed = {name: with_eval_timer(m, sinks[name]) for name, m in configs.items()}
    case = dict(arch="sd15", batch=1, res=args.res)
    for name, m in timed.items():  # warm-up
        bench.sample(m, "sd15", 1, args.res, 2, "cpu")
    names = list(timed)
    per_round = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sinks[name].clear()
            bench.sample(timed[name], case["arch"], case["batch"], case["res"], args.steps, "cpu")
            per_round[name].append(1000 * statistics.median(sinks[name]))
    base = per_round["none"]
    rows = {}
    for name in names:
        diffs = [a - b for a, b in zip(per_round[name], base)]
        rows[name] = {
            "ms_per_eval_median": statistics.median(per_round[name]),
            "extra_ms_median": statistics.median(diffs),
            "extra_ms_iqr": statistics.quantiles(diffs, n=4)[2] - statistics.quantiles(diffs, n=4)[0] if len(diffs) > 3 else None,
        }
    base_ms = rows["none"]["ms_per_eval_median"]
    print(f"CPU proxy: small SD1.5 UNet, {args.res}x{args.res}, batch 1 (cond+uncond in one evaluation), "  # noqa: T201
          f"{args.rounds} rounds x {args.steps} steps, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| config | ms per step (median) | extra ms per step (paired median) | extra % | IQR of extra ms |")  # noqa: T201
    print("|---|---|---|---|---|")  # noqa: T201
    for name, row in rows.items():
        iqr = "-" if row["extra_ms_iqr"] is None else f"{row['extra_ms_iqr']:.2f}"
        print(f"| {name} | {row['ms_per_eval_median']:.2f} | {row['extra_ms_median']:+.2f} | "  # noqa: T201
              f"{100 * row['extra_ms_median'] / base_ms:+.1f} % | {iqr} |")
    one, floor = rows["one"]["extra_ms_median"], rows["floor"]["extra_ms_median"]
    two, floor2 = rows["two"]["extra_ms_median"], rows["floor x2"]["extra_ms_median"]
    if floor > 0 and floor2 > 0:
        print(f"ours / floor: one adapter {one / floor:.2f}x, two adapters {two / floor2:.2f}x (target <= 1.5x)")  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps({"res": args.res, "rounds": args.rounds, "steps": args.steps, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
