"""Per-step cost of IP-Adapter on real-shaped SD1.5 / SDXL UNets (ComfyUI's own classes).

    python bench/bench.py --device cuda --arch sd15 --res 512 --batch 1 4 --kind linear plus
    python bench/bench.py --device cpu            # small UNet, small latent: a CPU proxy only

Configurations, interleaved in every repeat so drift hits all of them alike:
  none        the model without adapter
  floor       a minimal patch: image K/V precomputed, two attention calls per layer
  ours        this pack through its nodes' code path (fused kernel on CUDA)
  ours-plain  the same with the fused kernel disabled (IPA_FUSED=0)
  ours-triton the fused kernel launched through Triton's own launcher every call (no direct launch)
Reports ms/step (median, min), overhead vs none, peak memory, CUDA kernels per UNet
evaluation (torch.profiler) and the time spent in the apply node. Writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")


def bootstrap(device: str, *flags: str) -> None:
    """Import ComfyUI as a library (with these command-line flags) and this repository as the
    package `ipadapter_kit`."""
    root = Path(os.environ.get("COMFYUI_PATH") or (REPO / ".cache" / "comfyui_path").read_text().strip())
    if not root.is_absolute():
        root = (REPO / root).resolve()
    sys.path.insert(0, str(root))
    argv = sys.argv
    sys.argv = [argv[0]] + (["--cpu"] if device == "cpu" else []) + list(flags)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401

    sys.argv = argv
    link_dir = REPO / ".cache" / "pkgroot"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "ipadapter_kit"
    if link.is_symlink() and os.readlink(link) != str(REPO):
        link.unlink()
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(link_dir))


SD15 = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False, "use_checkpoint": False,
}
SDXL = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
    "num_head_channels": 64, "num_classes": "sequential", "adm_in_channels": 2816, "use_spatial_transformer": True,
    "legacy": False, "use_temporal_attention": False, "use_temporal_resblock": False, "use_checkpoint": False,
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def build_unet(arch: str, device: str, dtype: torch.dtype, small: bool):
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = dict(SD15 if arch == "sd15" else SDXL, dtype=dtype)
    if small:
        cfg["model_channels"] = 64
        if arch == "sdxl":
            cfg["num_head_channels"] = 32
    if arch == "sd15":
        config = comfy.supported_models.SD15(cfg)
        config.set_inference_dtype(dtype, None)
        model = comfy.model_base.BaseModel(config, device=device)
    else:
        config = comfy.supported_models.SDXL(cfg)
        config.set_inference_dtype(dtype, None)
        model = comfy.model_base.SDXL(config, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=torch.float32).to(p.dtype) * (0.5 / fan_in**0.5))
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device(device), offload_device=mm.unet_offload_device())


def build_adapter(model, kind: str, seed: int):
    """An adapter of the published layout for this UNet (random values), as the nodes load it."""
    import comfy.model_patcher

    from ipadapter_kit.ip_adapter_core import catalog
    from ipadapter_kit.ip_adapter_core.adapter import IPAdapterModel
    from ipadapter_kit.ip_adapter_core.checkpoint import split_adapter_state
    from ipadapter_kit.ip_adapter_core.spec import BaseModel, ImageEncoder
    from ipadapter_kit.nodes import host
    from ipadapter_kit.nodes.adapter_store import IPAdapterHandle, LoadedAdapter

    layers = host.cross_attention_layers(model)
    base = BaseModel.SD15 if layers[0].context_dim == 768 else BaseModel.SDXL
    if kind == "linear":
        spec = catalog.linear_spec(base, ImageEncoder.VIT_H)
    else:
        spec = catalog.resampler_spec(base, ImageEncoder.VIT_H, 768 if base is BaseModel.SD15 else 1280, 12 if base is BaseModel.SD15 else 20)
    import dataclasses

    spec = dataclasses.replace(spec, layer_widths=tuple(layer.width for layer in layers))
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in catalog.state_layout(spec).items():
        if len(shape) == 1:
            state[key] = (torch.ones(shape) if key.endswith("weight") else torch.zeros(shape))
        else:
            state[key] = torch.randn(shape, generator=g) * (1.0 / shape[-1] ** 0.5)
    weights = split_adapter_state(state, f"bench-{kind}")
    device = host.compute_device()
    adapter = IPAdapterModel.from_weights(weights, spec, dtype=host.adapter_dtype(device)).eval()
    patcher = comfy.model_patcher.ModelPatcher(adapter, load_device=device, offload_device=host.offload_device())
    nbytes = sum(p.numel() * p.element_size() for p in adapter.parameters())
    return IPAdapterHandle(LoadedAdapter(path=f"bench-{kind}.safetensors", spec=spec, patcher=patcher)), nbytes


def random_embeds(spec, seed: int):
    from ipadapter_kit.nodes.encoding import ImageEmbeds

    g = torch.Generator().manual_seed(seed)
    if spec.encoder_output.value == "image_embeds":
        shape = (1, spec.feature_dim)
    else:
        shape = (1, 257, spec.feature_dim)
    return ImageEmbeds(spec.encoder_output, torch.randn(shape, generator=g)), ImageEmbeds(spec.encoder_output, torch.zeros(shape))


class FloorPatch:
    """The simplest correct patch: precomputed K/V, text attention + one image attention call
    (and one add) per adapter."""

    def __init__(self, kvs, weight):
        self.kvs, self.weight = kvs, weight  # [(k, v)] per adapter
        self.placed = {}

    def __call__(self, q, k, v, extra):
        from comfy.ldm.modules.attention import optimized_attention

        key = (q.device, q.dtype)
        if key not in self.placed:
            self.placed[key] = [(ki.to(q.device, q.dtype), vi.to(q.device, q.dtype)) for ki, vi in self.kvs]
        heads = extra["n_heads"]
        out = optimized_attention(q, k, v, heads)
        for ki, vi in self.placed[key]:
            out = out + optimized_attention(q, ki.expand(q.shape[0], -1, -1), vi.expand(q.shape[0], -1, -1), heads) * self.weight
        return out

    def __deepcopy__(self, memo):
        return self


def floor_model(model, handles_and_conds):
    """A clone with one FloorPatch per cross-attention layer for [(handle, cond embeds)]."""
    from ipadapter_kit.nodes import host

    layers = host.cross_attention_layers(model)
    per_layer = [[] for _ in layers]
    with torch.no_grad():
        for handle, cond in handles_and_conds:
            tokens = handle.adapter.model.project(cond.features.to(host.compute_device()))
            for j, kv in enumerate(handle.adapter.model.layer_kv(tokens)):
                per_layer[j].append((kv.k.float(), kv.v.float()))
    clone = model.clone()
    for layer, kvs in zip(layers, per_layer):
        clone.set_model_attn2_replace(FloorPatch(kvs, 1.0), *layer.key)
    return clone


def cpu_two_adapters(res: int):
    """The CPU benchmarks' setup: a small SD1.5 UNet and two random adapters of the published
    4-token layout. Returns (model, ours, floor): `ours(n, masked=False, end_at=1.0)` is the
    model with the first n adapters applied through the nodes' code path (a left-half mask when
    masked), `floor(n)` the same adapters as FloorPatches."""
    from ipadapter_kit.nodes.apply_core import ApplySettings, apply_embeds

    model = build_unet("sd15", "cpu", torch.float32, small=True)
    handles = [build_adapter(model, "linear", seed=i)[0] for i in range(2)]
    embeds = [random_embeds(handle.spec, 3 + i) for i, handle in enumerate(handles)]
    mask = torch.zeros(1, res, res)
    mask[:, :, : res // 2] = 1.0

    def ours(n: int, masked: bool = False, end_at: float = 1.0):
        m = model
        for handle, (cond, uncond) in list(zip(handles, embeds))[:n]:
            m = apply_embeds(m, handle, cond, uncond, ApplySettings(weight=0.8, attn_mask=mask if masked else None, end_at=end_at))
        return m

    def floor(n: int):
        return floor_model(model, [(handle, cond) for handle, (cond, _) in zip(handles, embeds)][:n])

    return model, ours, floor


def conditioning(arch: str, batch: int, res: int, device: str):
    g = torch.Generator().manual_seed(1)
    ctx = 768 if arch == "sd15" else 2048

    def one():
        extra = {}
        if arch == "sdxl":
            extra = {"pooled_output": torch.randn(batch, 1280, generator=g) * 0.1, "width": res, "height": res,
                     "crop_w": 0, "crop_h": 0, "target_width": res, "target_height": res}
        return [[torch.randn(batch, 77, ctx, generator=g) * 0.1, extra]]

    return one(), one()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def sample(model, arch, batch, res, steps, device, seed=0):
    import comfy.sample

    pos, neg = conditioning(arch, batch, res, device)
    latent = torch.zeros(batch, 4, res // 8, res // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, 7.0, "euler", "normal", pos, neg, latent, seed=seed, disable_pbar=True)


def timed(model, case, device):
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    sync(device)
    t0 = time.perf_counter()
    sample(model, case["arch"], case["batch"], case["res"], case["steps"], device)
    sync(device)
    ms = (time.perf_counter() - t0) * 1000 / case["steps"]
    peak = (torch.cuda.max_memory_allocated() - before) if device == "cuda" else 0
    return ms, peak


def kernels_per_eval(model, case, device):
    """CUDA kernel launches per UNet evaluation in a steady-state step: kernels of a 2-step
    run minus those of a 1-step run (both pay the same one-time set-up), per evaluation."""
    if device != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    evals = []
    counted = model.clone()
    counted.set_model_unet_function_wrapper(lambda f, a: evals.append(1) or f(a["input"], a["timestep"], **a["c"]))

    def count(steps):
        evals.clear()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            sample(counted, case["arch"], case["batch"], case["res"], steps, device)
            sync(device)
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA), len(evals)

    count(1)  # warm
    k1, e1 = count(1)
    k2, e2 = count(2)
    return (k2 - k1) / max(1, e2 - e1)


def patch_call_us(model, case, device, classes):
    """Mean host-side (CPU) time of one attn2 patch call, without synchronising."""
    spent = []
    saved = {cls: cls.__call__ for cls in classes}

    def wrap(orig):
        def timed_call(self, *a):
            t0 = time.perf_counter()
            out = orig(self, *a)
            spent.append(time.perf_counter() - t0)
            return out
        return timed_call

    for cls in classes:
        cls.__call__ = wrap(saved[cls])
    try:
        sample(model, case["arch"], case["batch"], case["res"], 2, device)
        spent.clear()
        sample(model, case["arch"], case["batch"], case["res"], 3, device)
    finally:
        for cls, orig in saved.items():
            cls.__call__ = orig
    return 1e6 * statistics.mean(spent) if spent else None


def run_case(case, args):
    from ipadapter_kit.nodes.apply_core import ApplySettings, apply_embeds

    device = args.device
    dtype = DTYPES[args.dtype]
    model = build_unet(case["arch"], device, dtype, args.small)
    import comfy.model_management as mm

    mm.load_models_gpu([model])
    results = {"case": case, "configs": {}}
    handles = [build_adapter(model, case["kind"], seed=i) for i in range(case["adapters"])]
    mask = None
    if case["mask"]:
        mask = torch.zeros(1, case["res"], case["res"])
        mask[:, :, : case["res"] // 2] = 1.0
    settings = ApplySettings(weight=0.8, attn_mask=mask, end_at=0.8 if case["schedule"] else 1.0)
    patched = model
    apply_ms, apply_mem = [], []
    for handle, nbytes in handles:
        cond, uncond = random_embeds(handle.spec, 3)
        sync(device)
        mem0 = torch.cuda.memory_allocated() if device == "cuda" else 0
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        patched = apply_embeds(patched, handle, cond, uncond, settings)
        sync(device)
        apply_ms.append((time.perf_counter() - t0) * 1000)
        if device == "cuda":
            apply_mem.append({"adapter_weights_mb": nbytes / 2**20,
                              "peak_extra_mb": (torch.cuda.max_memory_allocated() - mem0) / 2**20,
                              "resident_extra_mb": (torch.cuda.memory_allocated() - mem0) / 2**20})
    again = time.perf_counter()
    cond, uncond = random_embeds(handles[0][0].spec, 4)
    apply_embeds(model, handles[0][0], cond, uncond, settings)
    sync(device)
    results["apply_ms"] = apply_ms
    results["apply_again_ms"] = (time.perf_counter() - again) * 1000
    results["apply_memory"] = apply_mem
    floor = floor_model(model, [(handles[0][0], random_embeds(handles[0][0].spec, 3)[0])])
    configs = {"none": model, "floor": floor, "ours": patched}
    if device == "cuda":
        configs["ours-plain"] = patched
        configs["ours-triton"] = patched
    times = {name: [] for name in configs}
    peaks = {name: 0 for name in configs}
    from ipadapter_kit.ip_adapter_core import fused

    launcher = fused._launch() if fused.triton is not None else None
    direct = {"ok": launcher is not None and launcher.enabled}

    def use(name):
        os.environ["IPA_FUSED"] = "0" if name == "ours-plain" else "1"
        if launcher is not None:
            launcher.enabled = direct["ok"] and name != "ours-triton"

    for name, m in configs.items():  # warm-up: compile kernels, autotune, place K/V
        use(name)
        timed(m, dict(case, steps=2), device)
        if name == "ours" and launcher is not None:
            direct["ok"] = launcher.enabled  # still on after its one-time check?
    results["direct_launch"] = direct["ok"]
    names = list(configs)
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]  # rotate: no config always first
        for name in order:
            use(name)
            ms, peak = timed(configs[name], case, device)
            times[name].append(ms)
            peaks[name] = max(peaks[name], peak)
    launches, call_us = {}, {}
    from ipadapter_kit.nodes.patch import Attn2Patch

    for name, m in configs.items():
        use(name)
        launches[name] = kernels_per_eval(m, case, device)
        call_us[name] = None if name == "none" else patch_call_us(m, case, device, [Attn2Patch, FloorPatch])
    use("ours")
    base = statistics.median(times["none"])
    for name in configs:
        med = statistics.median(times[name])
        results["configs"][name] = {
            "ms_step_median": med,
            "ms_step_min": min(times[name]),
            "overhead_pct": 100 * (med - base) / base,
            "peak_mb": peaks[name] / 2**20,
            "peak_delta_mb": (peaks[name] - peaks["none"]) / 2**20,
            "kernels_per_eval": launches[name],
            "extra_kernels_per_eval": None if launches[name] is None else launches[name] - launches["none"],
            "patch_call_cpu_us": call_us[name],
        }
    results["patched_layers"] = len(__import__("ipadapter_kit.nodes.host", fromlist=["x"]).cross_attention_layers(model))
    del configs, patched, floor, model
    mm.unload_all_models()
    mm.soft_empty_cache()
    return results


def table(all_results) -> str:
    rows = ["| arch | res | batch | kind | adapters | mask/sched | config | ms/step (median) | min | overhead (median / min) | peak Δ MB | kernels/eval (Δ) | CPU µs/patch call | layers |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in all_results:
        c = r["case"]
        for name, v in r["configs"].items():
            k = "-" if v["kernels_per_eval"] is None else f"{v['kernels_per_eval']:.0f} ({v['extra_kernels_per_eval']:+.0f})"
            us = "-" if v.get("patch_call_cpu_us") is None else f"{v['patch_call_cpu_us']:.0f}"
            over_min = 100 * (v["ms_step_min"] - r["configs"]["none"]["ms_step_min"]) / r["configs"]["none"]["ms_step_min"]
            rows.append(
                f"| {c['arch']} | {c['res']} | {c['batch']} | {c['kind']} | {c['adapters']} | "
                f"{'mask' if c['mask'] else '-'}/{'0-0.8' if c['schedule'] else '-'} | {name} | {v['ms_step_median']:.2f} | "
                f"{v['ms_step_min']:.2f} | {v['overhead_pct']:+.1f}% / {over_min:+.1f}% | {v['peak_delta_mb']:.1f} | {k} | {us} | {r['patched_layers']} |"
            )
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", nargs="+", default=None, choices=["sd15", "sdxl"])
    ap.add_argument("--res", type=int, default=None, help="image size in pixels (default 512 SD1.5 / 1024 SDXL on CUDA, 128 on CPU)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--kind", nargs="+", default=["linear"], choices=["linear", "plus"])
    ap.add_argument("--adapters", type=int, default=1)
    ap.add_argument("--mask", action="store_true")
    ap.add_argument("--schedule", action="store_true", help="end_at 0.8 (on-device start/end gate)")
    ap.add_argument("--dtype", default=None, choices=list(DTYPES))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="narrow UNet (default on CPU)")
    ap.add_argument("--extra", action="append", default=[], help="extra case as arch:res:batch:kind:adapters[:mask][:sched]")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cpu = args.device == "cpu"
    args.small = args.small or cpu
    args.dtype = args.dtype or ("fp32" if cpu else "fp16")
    steps = args.steps or (3 if cpu else 20)
    bootstrap(args.device)
    logging.basicConfig(level=logging.WARNING)
    cases = []
    for arch in args.arch or (["sd15"] if cpu else ["sd15", "sdxl"]):
        res = args.res or (128 if cpu else (512 if arch == "sd15" else 1024))
        for batch in args.batch:
            for kind in args.kind:
                cases.append(dict(arch=arch, res=res, batch=batch, kind=kind, adapters=args.adapters, mask=args.mask,
                                  schedule=args.schedule, steps=steps))
    for spec in args.extra:
        parts = spec.split(":")
        cases.append(dict(arch=parts[0], res=int(parts[1]), batch=int(parts[2]), kind=parts[3], adapters=int(parts[4]),
                          mask="mask" in parts[5:], schedule="sched" in parts[5:], steps=steps))
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if not cpu else platform.processor() or "cpu",
           "dtype": args.dtype, "python": platform.python_version(), "small_unet": args.small}
    try:
        import comfyui_version

        env["comfyui"] = comfyui_version.__version__
    except ImportError:
        pass
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    if cpu:
        print("NOTE: CPU figures are only a proxy (small UNet, small latent); GPU numbers decide the targets.")
    results = []
    for case in cases:
        t0 = time.time()
        try:
            r = run_case(case, args)
        except Exception:  # keep going: one failing case must not lose the others' numbers
            import traceback

            traceback.print_exc()
            print(f"case failed: {case}", flush=True)
            continue
        r["wall_s"] = time.time() - t0
        results.append(r)
        print(table([r]).split("\n", 2)[-1], flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"env": env, "results": results}, indent=1))
    print()
    print(f"{env}")
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
