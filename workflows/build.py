"""Render the workflows of `workflows/source.py` into ComfyUI's UI and API formats.

    python -m workflows.build            # (re)write example_workflows/<name>.json (UI format),
                                         # workflows/api/<name>.json (API format), docs/workflows.md
    python -m workflows.build --check    # exit 1 if a committed file differs from the sources
    python -m workflows.build --images out/workflows/screenshots
                                         # the browser test's screenshots -> docs/img/workflow_*.png
                                         # and example_workflows/<name>.jpg (template thumbnails)
    python -m workflows.build --object-info saved.json   # definitions from a saved GET /object_info

Run from the repository root with the test venv (.venv/bin/python). The node definitions come
from a real ComfyUI imported in-process with this pack registered (tests/host.py: `$COMFYUI_PATH`
or the tree scripts/setup_host.sh made), exactly what its server reports at /object_info.
Rendering itself (`render`) is host-free: give it the object_info dict.

The UI files live only in example_workflows/ (the folder ComfyUI's template browser reads); a
second copy in workflows/ would be listed twice, because ComfyUI 0.3.75 also scans a pack's
workflows/ folder for templates (app/custom_node_manager.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import source
from .graph import Graph, Node, Ref
from .objectinfo import CONTROL_VALUES, DefinitionError, NodeDef, check_value, node_defs, types_match

REPO = Path(__file__).resolve().parents[1]
UI_DIR = REPO / "example_workflows"
API_DIR = REPO / "workflows" / "api"
IMG_DIR = REPO / "docs" / "img"
DOCS = REPO / "docs" / "workflows.md"

UUID_NAMESPACE = uuid.UUID("5d0f6c57-3f2a-4c5e-9a53-7a1e0c2b9d11")
PACK_PREFIX = "IPAK_"
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
NODE_TITLE_HEIGHT = 30
GROUP_HEADER = 34
GROUP_PAD = 10


# --- node definitions -------------------------------------------------------------------


def host_object_info(types: Iterable[str] | None = None) -> dict:
    """/object_info of a real ComfyUI imported in-process with this pack registered (the same
    function the server runs per node: V3 nodes through GET_NODE_INFO_V1)."""
    tests = REPO / "tests"
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    import host  # tests/host.py

    host.import_comfy()
    host.import_pack()
    host.load_extra_nodes()
    import nodes

    wanted = set(types) if types is not None else set(nodes.NODE_CLASS_MAPPINGS)
    return {t: node_info(t) for t in nodes.NODE_CLASS_MAPPINGS if t in wanted}


def node_info(node_class: str) -> dict:
    """server.PromptServer's node_info() (ComfyUI 0.3.75 server.py:636-669), for one class."""
    import nodes

    obj_class = nodes.NODE_CLASS_MAPPINGS[node_class]
    try:
        from comfy_api.internal import _ComfyNodeInternal
    except ImportError:  # host older than the V3 API
        _ComfyNodeInternal = ()
    if _ComfyNodeInternal and issubclass(obj_class, _ComfyNodeInternal):
        return obj_class.GET_NODE_INFO_V1()
    info: dict[str, Any] = {}
    info["input"] = obj_class.INPUT_TYPES()
    info["input_order"] = {key: list(value.keys()) for (key, value) in obj_class.INPUT_TYPES().items()}
    info["output"] = obj_class.RETURN_TYPES
    info["output_is_list"] = getattr(obj_class, "OUTPUT_IS_LIST", [False] * len(obj_class.RETURN_TYPES))
    info["output_name"] = getattr(obj_class, "RETURN_NAMES", info["output"])
    info["name"] = node_class
    info["display_name"] = nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_class, node_class)
    info["description"] = getattr(obj_class, "DESCRIPTION", "")
    info["python_module"] = getattr(obj_class, "RELATIVE_PYTHON_MODULE", "nodes")
    info["category"] = getattr(obj_class, "CATEGORY", "sd")
    info["output_node"] = getattr(obj_class, "OUTPUT_NODE", False) is True
    return info


def used_types(graphs: Iterable[Graph] | None = None) -> set[str]:
    graphs = source.all_graphs() if graphs is None else graphs
    return {n.type for g in graphs for n in g.nodes if not n.virtual}


# --- checks -----------------------------------------------------------------------------


def check_graph(g: Graph, defs: dict[str, NodeDef]) -> None:
    """Every node type registered, every input known and valid, every link type-correct,
    every required socket connected. Raises DefinitionError naming the first problem."""
    for n in g.nodes:
        if n.virtual:
            continue
        where = f"{g.name}: node {n.id} ({n.type})"
        d = defs.get(n.type)
        if d is None:
            raise DefinitionError(f"{where}: node type not registered by the host")
        for name, value in n.inputs.items():
            try:
                i = d.input(name)
            except DefinitionError as e:
                raise DefinitionError(f"{where}: {e}") from None
            if isinstance(value, Ref):
                src = defs.get(value.node.type)
                if src is None:
                    raise DefinitionError(f"{where}: links from unregistered {value.node.type}")
                out = src.outputs[src.output_index(value.slot)]
                if not types_match(out.type, i.type):
                    raise DefinitionError(
                        f"{where}: input {name} ({i.type}) linked to {value.node.type}.{out.name} ({out.type})"
                    )
            else:
                if not i.is_widget:
                    raise DefinitionError(f"{where}: socket input {name} ({i.type}) needs a link, got {value!r}")
                try:
                    check_value(n.type, i, value)
                except DefinitionError as e:
                    raise DefinitionError(f"{where}: {e}") from None
        for i in d.sockets():
            if not i.optional and i.name not in n.inputs:
                raise DefinitionError(f"{where}: required input {i.name} ({i.type}) is not connected")
        if n.control_after_generate is not None:
            if n.control_after_generate not in CONTROL_VALUES:
                raise DefinitionError(f"{where}: control_after_generate {n.control_after_generate!r}")
            if not any(w.kind == "control" for w in d.widgets()):
                raise DefinitionError(f"{where}: has no seed widget for control_after_generate")
    if not any(defs[n.type].output_node for n in g.nodes if not n.virtual):
        raise DefinitionError(f"{g.name}: no output node (SaveImage, PreviewImage, ...)")


# --- rendering --------------------------------------------------------------------------


def widget_values(n: Node, d: NodeDef) -> list:
    out = []
    for w in d.widgets():
        if w.kind == "value":
            out.append(n.values().get(w.name, w.input.default()))
        elif w.kind == "control":
            out.append(n.control_after_generate or "randomize")
        else:  # the upload button's value
            out.append("image")
    return out


def estimated_size(n: Node, d: NodeDef | None) -> list[float]:
    """Roughly the frontend's computeSize (it takes the larger of this and its own on load)."""
    if n.size is not None:
        return [n.size[0], n.size[1]]
    if d is None:
        return [400.0, 200.0]
    widgets = d.widgets()
    multiline = sum(1 for i in d.widget_inputs() if i.type == "STRING" and i.options.get("multiline"))
    rows = max(len(d.sockets()), len(d.outputs))
    height = rows * 20 + len(widgets) * 24 + 14 + multiline * 54
    width = 400.0 if multiline else 315.0
    return [width, float(max(height, 46))]


def execution_order(g: Graph) -> dict[int, int]:
    """Topological order (ties by id), what litegraph stores as each node's `order`."""
    deps = {n.id: {v.node.id for v in n.links().values()} for n in g.nodes}
    done: list[int] = []
    left = sorted(deps)
    while left:
        ready = [i for i in left if deps[i] <= set(done)]
        if not ready:
            raise DefinitionError(f"{g.name}: the graph has a cycle")
        done.append(ready[0])
        left.remove(ready[0])
    return {node_id: k for k, node_id in enumerate(done)}


def render(g: Graph, object_info: dict, pack_version: str) -> tuple[dict, dict]:
    """(UI workflow, API prompt) of a graph."""
    defs = node_defs({t: object_info[t] for t in used_types([g]) if t in object_info})
    check_graph(g, defs)
    order = execution_order(g)

    links: list[list] = []
    in_link: dict[tuple[int, str], int] = {}
    out_links: dict[tuple[int, int], list[int]] = {}
    for n in g.nodes:  # link ids in node order, then the target's slot order
        if n.virtual:
            continue
        d = defs[n.type]
        for name, _type, _opt, _w in d.slots():
            ref = n.inputs.get(name)
            if not isinstance(ref, Ref):
                continue
            src = defs[ref.node.type]
            slot = src.output_index(ref.slot)
            link_id = len(links) + 1
            links.append([link_id, ref.node.id, slot, n.id, d.slot_index(name), src.outputs[slot].type])
            in_link[(n.id, name)] = link_id
            out_links.setdefault((ref.node.id, slot), []).append(link_id)

    ui_nodes = []
    api: dict[str, dict] = {}
    for n in g.nodes:
        d = defs.get(n.type)
        size = estimated_size(n, d)
        node: dict[str, Any] = {
            "id": n.id,
            "type": n.type,
            "pos": [n.pos[0], n.pos[1]],
            "size": size,
            "flags": {},
            "order": order[n.id],
            "mode": 0,
        }
        if n.virtual:
            node["inputs"] = []
            node["outputs"] = []
            if n.title:
                node["title"] = n.title
            node["properties"] = {}
            node["widgets_values"] = [n.inputs.get("text", "")]
        else:
            inputs = []
            for name, type_, optional, is_widget in d.slots():
                slot: dict[str, Any] = {
                    "localized_name": "choose file to upload" if name == "upload" else name,
                    "name": name,
                }
                if optional:
                    slot["shape"] = 7
                slot["type"] = type_
                if is_widget:
                    slot["widget"] = {"name": name}
                slot["link"] = in_link.get((n.id, name))
                inputs.append(slot)
            outputs = []
            for k, o in enumerate(d.outputs):
                slot = {"localized_name": o.name, "name": o.name, "type": o.type}
                if o.is_list:
                    slot["shape"] = 6
                slot["links"] = out_links.get((n.id, k))
                outputs.append(slot)
            node["inputs"] = inputs
            node["outputs"] = outputs
            if n.title and n.title != d.display_name:
                node["title"] = n.title
            props: dict[str, Any] = {}
            if n.type.startswith(PACK_PREFIX):
                props.update({"cnr_id": source.PACK_CNR_ID, "ver": pack_version})
            else:
                props.update({"cnr_id": "comfy-core", "ver": source.COMFY_CORE_VERSION})
            props["Node name for S&R"] = n.type
            if n.models:
                props["models"] = [m.as_json() for m in n.models]
            node["properties"] = props
            node["widgets_values"] = widget_values(n, d)

            api_inputs: dict[str, Any] = {}
            for w in d.widgets():
                if w.kind == "value":
                    value = n.values().get(w.name, w.input.default())
                    api_inputs[w.name] = {"__value__": value} if isinstance(value, list) else value
            for name, *_ in d.slots():
                ref = n.inputs.get(name)
                if isinstance(ref, Ref):
                    api_inputs[name] = [str(ref.node.id), defs[ref.node.type].output_index(ref.slot)]
            api[str(n.id)] = {
                "inputs": api_inputs,
                "class_type": n.type,
                "_meta": {"title": n.title or d.display_name},
            }
        if n.color:
            node["color"] = n.color
        if n.bgcolor:
            node["bgcolor"] = n.bgcolor
        ui_nodes.append(node)

    sizes = {n["id"]: n["size"] for n in ui_nodes}
    groups = []
    for k, grp in enumerate(g.groups, start=1):
        xs0 = [m.pos[0] for m in grp.nodes]
        ys0 = [m.pos[1] - NODE_TITLE_HEIGHT for m in grp.nodes]
        xs1 = [m.pos[0] + sizes[m.id][0] for m in grp.nodes]
        ys1 = [m.pos[1] + sizes[m.id][1] for m in grp.nodes]
        x, y = min(xs0) - GROUP_PAD, min(ys0) - GROUP_HEADER - GROUP_PAD
        groups.append({
            "id": k,
            "title": grp.title,
            "bounding": [x, y, max(xs1) + GROUP_PAD - x, max(ys1) + GROUP_PAD - y],
            "color": grp.color,
            "font_size": 24,
            "flags": {},
        })

    ui: dict[str, Any] = {
        "id": str(uuid.uuid5(UUID_NAMESPACE, g.name)),
        "revision": 0,
        "last_node_id": max(n.id for n in g.nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {
            "frontendVersion": source.FRONTEND_VERSION,
            "ipadapter_kit": {"title": g.title, "description": g.description},
        },
        "version": 0.4,
    }
    if g.models:
        ui["models"] = [m.as_json() for m in g.models]
    return ui, api


def dumps(obj: Any) -> str:
    """JSON with 2-space indents; lists of scalars (links, pos, widgets_values) on one line."""

    def fmt(o: Any, level: int) -> str:
        pad, inner = "  " * level, "  " * (level + 1)
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {fmt(v, level + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list):
            if all(not isinstance(v, (dict, list)) for v in o):
                return json.dumps(o, ensure_ascii=False)
            return "[\n" + ",\n".join(inner + fmt(v, level + 1) for v in o) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False)

    text = fmt(obj, 0) + "\n"
    if json.loads(text) != obj:  # pragma: no cover - the formatter must not change the data
        raise AssertionError("JSON formatter changed the data")
    return text


def pack_version() -> str:
    """`[project] version` of pyproject.toml (what the Registry publishes as `ver`)."""
    import re

    text = (REPO / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    m = re.search(r'^version\s*=\s*"([^"]+)"', project, re.M)
    if m is None:
        raise DefinitionError("no [project] version in pyproject.toml")
    return m.group(1)


def docs_markdown(graphs: list[Graph]) -> str:
    """docs/workflows.md: a picture, one line and the model files of every workflow."""
    lines = [
        "# Example workflows",
        "",
        "<!-- Generated by `python -m workflows.build` from workflows/source.py: edit that, not this file. -->",
        "",
        f"{len(graphs)} workflows come with the pack. In ComfyUI open **Templates** and pick the `ipadapter_kit` "
        "category, or drag a file from [`example_workflows/`](../example_workflows) onto the canvas. The same graphs "
        "in API format, for `POST /prompt`, are in [`workflows/api/`](../workflows/api) (for example "
        "`scripts/demo.sh --workflow workflows/api/sdxl_basic.json`). Both formats are generated from one source, "
        "[`workflows/source.py`](../workflows/source.py), with `python -m workflows.build`.",
        "",
        "Each workflow names the published model files and carries their download links: ComfyUI's *Missing "
        "Models* dialog offers every file that is not installed (`.bin` files it only lists; copy the URL). "
        "The IP-Adapter files can have any name: the pack recognises them by their content.",
        "",
        "Tests: every workflow loads in the real ComfyUI frontend with no missing nodes and converts to its API "
        "file exactly (`tests/browser`); the SD1.5 and SDXL ones run through a real ComfyUI server on synthetic "
        "weights at 64x64 (`tests/e2e`); the pictures below are the browser test's screenshots.",
        "",
    ]
    for g in graphs:
        hints = {(m.directory, m.name): m for m in g.models}
        for n in g.nodes:
            hints.update({(m.directory, m.name): m for m in n.models})
        files = ", ".join(f"[`{m.name}`]({m.url}) ({m.directory})" for m in hints.values())
        if g.e2e == "run":
            tested = "runs end to end in the test suite (synthetic SD1.5 weights, 64x64, 2 steps)."
        else:
            tested = g.e2e + "."
        lines += [
            f"## {g.title}",
            "",
            f"![{g.name} in ComfyUI](img/workflow_{g.name}.png)",
            "",
            f"`{g.name}`: {g.description}",
            "",
            f"- Models: {files}",
            f"- Tested: {tested}",
            "",
        ]
    return "\n".join(lines)


README = REPO / "README.md"
README_START, README_END = "<!-- workflows:start -->", "<!-- workflows:end -->"


def readme_block(graphs: list[Graph]) -> str:
    """The README's workflow gallery: a picture and one line per workflow."""
    lines = [README_START, ""]
    for g in graphs:
        lines += [f"**{g.title}** (`{g.name}`): {g.description}", "",
                  f"![{g.name} in ComfyUI](docs/img/workflow_{g.name}.png)", ""]
    lines.append(README_END)
    return "\n".join(lines)


def readme_text(graphs: list[Graph]) -> str | None:
    """README.md with its gallery regenerated (None when it has no gallery markers)."""
    if not README.is_file():
        return None
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return None
    return text[:start] + readme_block(graphs) + text[end + len(README_END):]


def rendered_files(object_info: dict | None = None) -> dict[Path, str]:
    """Every generated file (path -> text) for the current sources."""
    graphs = source.all_graphs()
    if object_info is None:
        object_info = host_object_info(used_types(graphs))
    version = pack_version()
    files: dict[Path, str] = {}
    for g in graphs:
        ui, api = render(g, object_info, version)
        files[UI_DIR / f"{g.name}.json"] = dumps(ui)
        files[API_DIR / f"{g.name}.json"] = dumps(api)
    files[DOCS] = docs_markdown(graphs)
    readme = readme_text(graphs)
    if readme is not None:
        files[README] = readme
    return files


def stale_files(files: dict[Path, str]) -> list[str]:
    """Generated files that differ from (or are missing on) disk, and strays in the folders."""
    bad = [str(p.relative_to(REPO)) for p, text in files.items() if not p.is_file() or p.read_text() != text]
    for folder in (UI_DIR, API_DIR):
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if p not in files:
                bad.append(f"{p.relative_to(REPO)} (not generated by workflows/source.py)")
    return bad


def write_images(shots: Path, max_width: int = 1600, thumb: tuple[int, int] = (480, 360)) -> list[Path]:
    """Browser-test screenshots (DIR/<name>.png and DIR/results.json, which says where the graph
    is on each) -> docs/img/workflow_<name>.png (the graph cut out, at most `max_width` px wide,
    palette PNG) and example_workflows/<name>.jpg (the template browser's thumbnail)."""
    from PIL import Image

    rects = {}
    results = shots / "results.json"
    if results.is_file():
        rects = {r["name"]: r.get("graphRect") for r in json.loads(results.read_text())["results"]}
    written = []
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    for g in source.all_graphs():
        src = shots / f"{g.name}.png"
        if not src.is_file():
            continue
        img = Image.open(src).convert("RGB")
        r = rects.get(g.name)
        if r:
            m = 16
            box = (max(0, int(r["x"]) - m), max(0, int(r["y"]) - m),
                   min(img.width, int(r["x"] + r["width"]) + m), min(img.height, int(r["y"] + r["height"]) + m))
            img = img.crop(box)
        if img.width > max_width:
            img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
        out = IMG_DIR / f"workflow_{g.name}.png"
        img.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
        written.append(out)
        scale = min(thumb[0] / img.width, thumb[1] / img.height)
        small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
        card = Image.new("RGB", thumb, img.getpixel((2, 2)))
        card.paste(small, ((thumb[0] - small.width) // 2, (thumb[1] - small.height) // 2))
        jpg = UI_DIR / f"{g.name}.jpg"
        card.save(jpg, quality=85, optimize=True)
        written.append(jpg)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workflows.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if a file is stale")
    ap.add_argument("--images", metavar="DIR", help="turn the browser test's screenshots in DIR into docs images")
    ap.add_argument("--object-info", metavar="FILE",
                    help="node definitions from a saved GET /object_info answer instead of an in-process host")
    args = ap.parse_args(argv)
    if args.images:
        for p in write_images(Path(args.images)):
            print(p.relative_to(REPO))  # noqa: T201
        return 0
    object_info = json.loads(Path(args.object_info).read_text()) if args.object_info else None
    files = rendered_files(object_info)
    if args.check:
        bad = stale_files(files)
        for b in bad:
            print(f"stale: {b}")  # noqa: T201
        if bad:
            print("run: python -m workflows.build")  # noqa: T201
        return 1 if bad else 0
    for p, text in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.is_file() or p.read_text() != text:
            p.write_text(text)
            print(f"wrote {p.relative_to(REPO)}")  # noqa: T201
    for b in stale_files(files):
        print(f"warning: {b}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
