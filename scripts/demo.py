"""Run the basic workflow through a real ComfyUI server with this pack installed.

    scripts/demo.sh                         # real models if found, else synthetic ones
    scripts/demo.sh --models ~/ComfyUI/models
    scripts/demo.sh --workflow workflows/api/sd15_basic.json --size 512 --steps 20

Model files: the workflow's model names are looked up in `--models DIR`, `$IPA_MODELS_DIR`,
then `$COMFYUI_PATH/models`. If any is missing, full-size synthetic files (seeded random weights,
generated once into .cache/models) are used instead and the run is shrunk to 64x64, 2 steps:
the picture is then noise, which shows the plumbing works, not what the adapters do.

Writes the output image(s), `report.json`, `report.md` and the server log to `out/demo/`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from comfy_server import (  # noqa: E402
    ComfyServer,
    ServerError,
    comfy_root,
    comfy_version,
)

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf")
# Model-file inputs of core nodes -> the synthetic file that stands in for any name.
SYNTHETIC_STAND_INS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
}
LATENT_NODES = ("EmptyLatentImage",)
SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")

log = logging.getLogger("demo")


def say(msg: str = "") -> None:
    print(msg, flush=True)  # noqa: T201  (a command-line script talking to its user)


def model_references(prompt: dict) -> list[tuple[str, str, str, str]]:
    """(node id, class_type, input name, file name) for every input that names a model file."""
    refs = []
    for node_id, node in prompt.items():
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS):
                refs.append((node_id, node.get("class_type", "?"), name, value))
    return refs


def find_file(root: Path, name: str) -> Path | None:
    """`name` (may hold a subfolder) anywhere under `root`, following symlinks."""
    direct = [p for p in root.glob(f"*/{name}") if p.is_file()]
    if direct:
        return direct[0]
    base = os.path.basename(name)
    for dirpath, _, files in os.walk(root, followlinks=True):
        if base in files and (Path(dirpath) / base).as_posix().endswith(name):
            return Path(dirpath) / base
    return None


def real_models_dir(prompt: dict, explicit: str | None) -> tuple[Path | None, list[str], list[Path]]:
    """The first configured models dir holding every file the prompt names, the names missing
    from the best candidate, and the candidates looked at."""
    candidates = []
    for c in (explicit, os.environ.get("IPA_MODELS_DIR")):
        if c:
            candidates.append(Path(c).expanduser().resolve())
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser().resolve() / "models")
    names = sorted({ref[3] for ref in model_references(prompt)})
    # The pack's loaders (e.g. the unified loader's presets) pick adapter and encoder files by
    # content, so a workflow using them needs those folders populated even if it names no file.
    implicit = (
        ["ipadapter/*", "clip_vision/*"]
        if any(n.get("class_type", "").startswith("IPAK_") for n in prompt.values())
        else []
    )
    best_missing = names + implicit
    for cand in candidates:
        if not cand.is_dir():
            continue
        missing = [n for n in names if find_file(cand, n) is None]
        missing += [f for f in implicit if not any(p.is_file() for p in cand.glob(f))]
        if not missing and (names or implicit):
            return cand, [], candidates
        if len(missing) < len(best_missing):
            best_missing = missing
    return None, best_missing, candidates


def synthetic_models(prompt: dict) -> tuple[Path, list[str]]:
    """Generate (once) the synthetic tree and point the prompt's model names at its files.
    Returns the tree and a description of every substitution made."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "fixtures")]
    import host_models

    adapters = list(host_models.DEFAULT_ADAPTERS)
    for _, cls, name, value in model_references(prompt):
        if value not in adapters and ("ipadapter" in name.lower() or "ip-adapter" in value or "ip_plus" in value):
            adapters.append(value)
    try:
        tree = host_models.synthetic_models_dir(adapters=adapters)
    except Exception as e:  # an adapter name the synthetic writer does not know
        log.warning("could not generate every adapter the workflow names (%s); using the defaults", e)
        tree = host_models.synthetic_models_dir()
    notes = []
    for node_id, cls, name, value in model_references(prompt):
        if find_file(tree, value) is not None:
            continue
        folder = SYNTHETIC_STAND_INS.get((cls, name))
        stand_in = next(iter(sorted((tree / folder).iterdir())), None) if folder else None
        if stand_in is None:
            notes.append(f"node {node_id} ({cls}).{name} = {value}: no synthetic stand-in, left as is")
            continue
        prompt[node_id]["inputs"][name] = stand_in.name
        notes.append(f"node {node_id} ({cls}).{name}: {value} -> synthetic {stand_in.name}")
    return tree, notes


def shrink(prompt: dict, size: int | None, steps: int | None) -> list[str]:
    notes = []
    for node_id, node in prompt.items():
        inputs = node.get("inputs", {})
        if size and node.get("class_type") in LATENT_NODES:
            for key in ("width", "height"):
                if key in inputs and not isinstance(inputs[key], list):
                    notes.append(f"node {node_id} ({node['class_type']}).{key}: {inputs[key]} -> {size}")
                    inputs[key] = size
        if (
            steps
            and node.get("class_type") in SAMPLER_NODES
            and "steps" in inputs
            and not isinstance(inputs["steps"], list)
        ):
            notes.append(f"node {node_id} ({node['class_type']}).steps: {inputs['steps']} -> {steps}")
            inputs["steps"] = steps
            if "end_at_step" in inputs and not isinstance(inputs["end_at_step"], list):
                inputs["end_at_step"] = min(inputs["end_at_step"], steps)
    return notes


def _workflow_pictures():
    """workflows/images.py (host-free), loaded by path: the repo root must not go on sys.path,
    where its `nodes/` package would shadow ComfyUI's `nodes` module."""
    import importlib.util

    path = REPO / "workflows" / "images.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("ipak_workflow_images", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken helper must not stop the demo
        log.warning("workflows/images.py did not load (%s); using a generic test picture", e)
        return None
    return module


def provide_input_images(prompt: dict, input_dir: Path) -> list[str]:
    """Put the images LoadImage nodes name into the server's input folder: a file shipped
    under workflows/, else the workflow's own drawing (workflows/images.py), else a test picture."""
    notes = []
    pictures = None
    for node_id, node in prompt.items():
        if node.get("class_type") != "LoadImage":
            continue
        name = node.get("inputs", {}).get("image")
        if not isinstance(name, str):
            continue
        target = input_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shipped = next((p for p in (REPO / "workflows").rglob(os.path.basename(name)) if p.is_file()), None)
        if shipped is not None:
            shutil.copyfile(shipped, target)
            notes.append(f"node {node_id} (LoadImage): {name} from {shipped.relative_to(REPO)}")
            continue
        pictures = pictures or _workflow_pictures()
        try:
            pictures.draw(name).save(target)
            notes.append(f"node {node_id} (LoadImage): {name} drawn by workflows/images.py")
        except Exception:
            test_picture(target)
            notes.append(f"node {node_id} (LoadImage): {name} not shipped, generated a test picture")
    return notes


def test_picture(path: Path, size: int = 512) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size))
    px = img.load()
    for y in range(size):
        for x in range(size):
            px[x, y] = (x * 255 // size, y * 255 // size, 160)
    draw = ImageDraw.Draw(img)
    draw.ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(240, 200, 40))
    draw.rectangle((size // 8, 5 * size // 8, 3 * size // 8, 7 * size // 8), fill=(30, 60, 200))
    img.save(path)


def pack_version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "unknown"


def write_report(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    t = report["timings_s"]
    lines = [
        "# IPAdapter Kit demo run",
        "",
        f"- Result: **{report['result']}**",
        f"- Image(s): {', '.join(report['images']) or '(none)'}",
        f"- Weights: **{report['models']['kind']}**"
        + (" (random: the image is noise)" if report["models"]["kind"] == "synthetic" else ""),
        f"- Models dir: `{report['models']['dir']}`",
        f"- Workflow: `{report['workflow']}`",
        f"- Host: ComfyUI {report['host']['comfyui_version']} (`{report['host']['comfyui_path']}`), "
        f"Python {report['host'].get('python_version', '?')}, PyTorch {report['host'].get('pytorch_version', '?')}, "
        f"device {report['host'].get('device', '?')}",
        f"- Pack: ipadapter-kit {report['pack_version']}",
        f"- Timings: models {t.get('models', 0):.1f} s, server start {t.get('server_start', 0):.1f} s, "
        f"prompt {t.get('prompt', 0):.1f} s, total {t.get('total', 0):.1f} s",
    ]
    if report.get("changes"):
        lines += ["", "Changes made to the workflow for this run:", ""] + [f"- {c}" for c in report["changes"]]
    if report.get("error"):
        lines += ["", "Error:", "", "```", report["error"], "```"]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--workflow", default=str(REPO / "workflows" / "api" / "sd15_basic.json"), help="API-format workflow JSON"
    )
    ap.add_argument(
        "--models", help="a ComfyUI models/ folder with real files (else $IPA_MODELS_DIR, $COMFYUI_PATH/models)"
    )
    ap.add_argument("--synthetic", action="store_true", help="use synthetic weights even if real files are found")
    ap.add_argument("--size", type=int, help="latent width/height in pixels (synthetic default 64)")
    ap.add_argument("--steps", type=int, help="sampler steps (synthetic default 2)")
    ap.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: --cpu)")
    ap.add_argument("--out", default=str(REPO / "out" / "demo"), help="output folder (default out/demo)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the prompt")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")

    t_start = time.monotonic()
    timings: dict[str, float] = {}
    workflow = Path(args.workflow).resolve()
    prompt = json.loads(workflow.read_text())
    if "nodes" in prompt and "links" in prompt:
        say(f"{workflow} is a UI-format workflow; the demo needs the API format (Save (API) in ComfyUI).")
        return 2
    original = copy.deepcopy(prompt)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file() and old.suffix in (".png", ".webp", ".jpg", ".json", ".md", ".log"):
            old.unlink()

    cache = Path(os.environ.get("IPA_CACHE") or REPO / ".cache")
    comfy = comfy_root(cache)
    changes: list[str] = []
    t0 = time.monotonic()
    models_dir, missing, looked = (None, [], []) if args.synthetic else real_models_dir(prompt, args.models)
    if models_dir is not None:
        kind = "real"
        say(f"Using REAL model files from {models_dir}")
    else:
        kind = "synthetic"
        why = (
            "--synthetic given"
            if args.synthetic
            else (f"missing {', '.join(missing)} in {', '.join(map(str, looked)) or 'no configured models folder'}")
        )
        say("=" * 78)
        say("No real model files: using SYNTHETIC weights (seeded random numbers).")
        say(f"  ({why})")
        say("  Random weights make NOISE images. This run shows the pipeline works end to end;")
        say("  for a real picture put the files in a models folder and pass --models DIR.")
        say("  (first run generates ~4 GB of synthetic files into .cache/models, about a minute)")
        say("=" * 78)
        models_dir, notes = synthetic_models(prompt)
        changes += notes
    timings["models"] = time.monotonic() - t0
    size = args.size or (64 if kind == "synthetic" else None)
    steps = args.steps or (2 if kind == "synthetic" else None)
    changes += shrink(prompt, size, steps)

    base = cache / "demo-server"
    shutil.rmtree(base, ignore_errors=True)
    server = ComfyServer(base, models_dir, comfy_dir=comfy, cpu=not args.gpu)
    changes += provide_input_images(prompt, base / "input")
    report: dict = {
        "result": "failed",
        "workflow": str(workflow.relative_to(REPO) if workflow.is_relative_to(REPO) else workflow),
        "models": {"kind": kind, "dir": str(models_dir), "files": [r[3] for r in model_references(prompt)]},
        "host": {"comfyui_version": comfy_version(comfy), "comfyui_path": str(comfy)},
        "pack_version": pack_version(),
        "changes": changes,
        "images": [],
        "timings_s": timings,
    }
    images: list[str] = []
    try:
        say(f"Starting ComfyUI {comfy_version(comfy)} from {comfy} ...")
        t0 = time.monotonic()
        server.start()
        timings["server_start"] = time.monotonic() - t0
        stats = server.get_json("/system_stats")
        system = stats.get("system", {})
        report["host"].update(
            python_version=system.get("python_version", "?").split()[0],
            pytorch_version=system.get("pytorch_version", "?"),
            device=", ".join(d.get("type", "?") for d in stats.get("devices", [])) or "?",
        )
        say(f"Server up in {timings['server_start']:.1f} s; running {report['workflow']} ...")
        t0 = time.monotonic()
        entry = server.run(prompt, timeout=args.timeout)
        timings["prompt"] = time.monotonic() - t0
        for img in server.output_images(entry):
            if img.get("type") != "output":
                continue
            dest = out / os.path.basename(img["filename"])
            dest.write_bytes(server.fetch_image(img))
            images.append(str(dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest))
        report["result"] = "ok" if images else "no image output"
    except (ServerError, OSError) as e:
        report["error"] = str(e)
        say(f"FAILED: {e}")
    except KeyboardInterrupt:
        report["error"] = "interrupted"
        say("interrupted")
    finally:
        server.stop()
        if server.log_path.exists():
            shutil.copyfile(server.log_path, out / "server.log")
        timings["total"] = time.monotonic() - t_start
        report["images"] = images
        report["workflow_changed"] = prompt != original
        write_report(out, report)

    say("")
    for img in images:
        say(f"Image:   {img}")
    say(f"Report:  {(out / 'report.md').relative_to(REPO) if out.is_relative_to(REPO) else out / 'report.md'}")
    if kind == "synthetic":
        say("Weights: SYNTHETIC weights (random): the image is noise, by design.")
    else:
        say(f"Weights: real model files from {models_dir}")
    start_s, prompt_s = timings.get("server_start", 0), timings.get("prompt", 0)
    say(f"Time:    {timings['total']:.1f} s total (server start {start_s:.1f} s, prompt {prompt_s:.1f} s)")
    return 0 if images else 1


if __name__ == "__main__":
    sys.exit(main())
