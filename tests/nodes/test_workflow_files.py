"""The example workflows (example_workflows/*.json UI, workflows/api/*.json API) against the real
node definitions, in-process.

- both files of every workflow are exactly what workflows/source.py gives with the node
  definitions this ComfyUI reports (so they cannot drift apart: `python -m workflows.build`);
- our own object_info-driven UI -> API converter turns each UI file into its API twin;
- ComfyUI's own prompt validator accepts every API file (model files present as placeholders,
  reference pictures in the input folder): every class_type registered, every input valid;
- the UI files are well-formed litegraph 0.4 graphs with Registry ids, download hints, groups,
  a note and no overlapping nodes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import host

if str(host.REPO) not in sys.path:
    sys.path.append(str(host.REPO))

from workflows import build, convert, images, source  # noqa: E402
from workflows.graph import VIRTUAL_TYPES  # noqa: E402

GRAPHS = source.all_graphs()
NAMES = [g.name for g in GRAPHS]
BY_NAME = {g.name: g for g in GRAPHS}


def ui_file(name: str) -> dict:
    return json.loads((build.UI_DIR / f"{name}.json").read_text())


def api_file(name: str) -> dict:
    return json.loads((build.API_DIR / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def object_info(pack):
    host.load_extra_nodes()
    return build.host_object_info()


def test_committed_files_are_what_the_sources_give(object_info):
    stale = build.stale_files(build.rendered_files(object_info))
    assert not stale, (
        "example_workflows/ or workflows/api/ differ from workflows/source.py rendered with this host's node "
        f"definitions: {stale}\nregenerate with: python -m workflows.build"
    )


@pytest.mark.parametrize("name", NAMES)
def test_ui_converts_to_its_api_twin(object_info, name):
    ui = ui_file(name)
    assert convert.missing_node_types(ui, object_info) == []
    assert convert.ui_to_api(ui, object_info) == api_file(name)


def test_converter_follows_reroutes_bypass_and_mute(object_info):
    """The converter's link handling on a hand-edited copy of sd15_basic."""
    ui = ui_file("sd15_basic")
    nodes = {n["type"]: n for n in ui["nodes"]}
    apply, ks = nodes["IPAK_Apply"], nodes["KSampler"]
    # Bypass the Apply node: KSampler.model then comes from the Unified Loader's MODEL output.
    apply["mode"] = 4
    api = convert.ui_to_api(ui, object_info)
    assert str(apply["id"]) not in api
    assert api[str(ks["id"])]["inputs"]["model"] == [str(nodes["IPAK_UnifiedLoader"]["id"]), 0]
    # Mute it instead: the input disappears (the frontend would not send it either).
    apply["mode"] = 2
    assert "model" not in convert.ui_to_api(ui, object_info)[str(ks["id"])]["inputs"]
    # A Reroute between the loader and the sampler is transparent.
    apply["mode"] = 0
    link = next(lk for lk in ui["links"] if lk[3] == ks["id"] and lk[4] == 0)
    rid, new_link = 999, 999
    ui["nodes"].append({"id": rid, "type": "Reroute", "pos": [0, 0], "size": [75, 26], "flags": {}, "order": 0,
                        "mode": 0, "inputs": [{"name": "", "type": "*", "link": link[0]}],
                        "outputs": [{"name": "", "type": "MODEL", "links": [new_link]}], "properties": {}})
    ui["links"].append([new_link, rid, 0, ks["id"], 0, "MODEL"])
    link[3], link[4] = rid, 0
    ks["inputs"][0]["link"] = new_link
    assert convert.ui_to_api(ui, object_info)[str(ks["id"])]["inputs"]["model"] == [str(apply["id"]), 0]


def test_converter_rejects_widget_count_mismatch(object_info):
    ui = ui_file("sd15_basic")
    ks = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    ks["widgets_values"] = ks["widgets_values"][:-1]
    with pytest.raises(convert.ConversionError, match="widget values"):
        convert.ui_to_api(ui, object_info)


def _placeholder_models(root: Path) -> list[str]:
    """Empty files named like every model the workflows use, in the folder their hints name."""
    folders = set()
    for g in GRAPHS:
        for hint in [*g.models, *(m for n in g.nodes for m in n.models)]:
            path = root / hint.directory / hint.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            folders.add(hint.directory)
    return sorted(folders)


@pytest.fixture(scope="module")
def placeholder_models(pack, tmp_path_factory):
    import folder_paths

    root = tmp_path_factory.mktemp("placeholder-models")
    folders = _placeholder_models(root)
    images.write(sorted({i for g in GRAPHS for i in g.images}), folder_paths.get_input_directory())
    with host.models_dir(root, folders):
        yield root


@pytest.mark.parametrize("name", NAMES)
def test_comfyui_validator_accepts_the_api_file(placeholder_models, name):
    """ComfyUI's own validate_prompt (no execution): node types, input names, types, ranges and
    combo values; model files exist only as empty placeholders here."""
    outputs, node_errors = host.validate(api_file(name))
    assert outputs and not node_errors


def _rects(ui: dict) -> dict[int, tuple[float, float, float, float]]:
    """Node rectangles including the 30 px title bar above `pos`."""
    return {n["id"]: (n["pos"][0], n["pos"][1] - build.NODE_TITLE_HEIGHT, n["pos"][0] + n["size"][0],
                      n["pos"][1] + n["size"][1]) for n in ui["nodes"]}


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("name", NAMES)
def test_ui_file_structure(object_info, name):
    ui = ui_file(name)
    version = build.pack_version()
    assert ui["version"] == 0.4
    assert set(ui) >= {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"}
    ids = [n["id"] for n in ui["nodes"]]
    assert len(set(ids)) == len(ids) and ui["last_node_id"] == max(ids)
    assert ui["last_link_id"] == max(lk[0] for lk in ui["links"])
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, origin, oslot, target, tslot, type_ in ui["links"]:
        assert nodes[target]["inputs"][tslot]["link"] == link_id
        assert link_id in nodes[origin]["outputs"][oslot]["links"]
        assert nodes[origin]["outputs"][oslot]["type"] == type_
    for n in ui["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "properties", "widgets_values"} <= set(n)
        if n["type"] in VIRTUAL_TYPES:
            continue
        props = n["properties"]
        assert props["Node name for S&R"] == n["type"]
        if n["type"].startswith("IPAK_"):
            assert (props["cnr_id"], props["ver"]) == (source.PACK_CNR_ID, version)
        else:
            assert (props["cnr_id"], props["ver"]) == ("comfy-core", source.COMFY_CORE_VERSION)
    # A note for the reader, groups around every non-note node, nothing on top of anything.
    assert any(n["type"] == "Note" for n in ui["nodes"])
    rects = _rects(ui)
    grouped = set()
    for grp in ui["groups"]:
        x, y, w, h = grp["bounding"]
        inside = [i for i, r in rects.items() if r[0] >= x and r[1] >= y and r[2] <= x + w and r[3] <= y + h]
        grouped |= set(inside)
    assert grouped >= {n["id"] for n in ui["nodes"] if n["type"] != "Note"}
    pairs = [(a, b) for a in rects for b in rects if a < b and _overlap(rects[a], rects[b])]
    assert not pairs, f"overlapping nodes: {pairs}"
    boxes = [g["bounding"] for g in ui["groups"]]
    group_pairs = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                   if _overlap(*[(b[0], b[1], b[0] + b[2], b[1] + b[3]) for b in (boxes[i], boxes[j])])]
    assert not group_pairs, f"overlapping groups: {group_pairs}"


@pytest.mark.parametrize("name", NAMES)
def test_model_download_hints(pack, name):
    """Every model file the workflow names has a Hugging Face URL and a known model folder; the
    hints ComfyUI reads from a node are those its widgets name (workflow-level otherwise)."""
    import folder_paths

    ui, g = ui_file(name), BY_NAME[name]
    hints = list(ui.get("models", []))
    for n in ui["nodes"]:
        node_hints = n["properties"].get("models", [])
        assert all(h["name"] in n["widgets_values"] for h in node_hints), n["type"]
        hints += node_hints
    for h in hints:
        assert h["url"].startswith("https://huggingface.co/") and "/resolve/" in h["url"], h
        assert h["directory"] in folder_paths.folder_names_and_paths, h
    files = {v for entry in api_file(name).values() for v in entry["inputs"].values()
             if isinstance(v, str) and v.lower().endswith(build.MODEL_EXTENSIONS)}
    assert files <= {h["name"] for h in hints}
    if g.by_type("IPAK_UnifiedLoader"):  # files it picks by content: listed for the whole workflow
        assert {h["directory"] for h in ui["models"]} == {"ipadapter", "clip_vision"}


@pytest.mark.parametrize("name", NAMES)
def test_pictures_exist(name):
    """docs/workflows.md shows a screenshot of every workflow; the template browser a thumbnail
    (`python -m workflows.build --images out/workflows/screenshots` after the browser tests)."""
    from PIL import Image

    png = build.IMG_DIR / f"workflow_{name}.png"
    jpg = build.UI_DIR / f"{name}.jpg"
    for path, fmt in ((png, "PNG"), (jpg, "JPEG")):
        assert path.is_file(), f"{path.relative_to(build.REPO)} missing"
        assert path.stat().st_size < 250_000, f"{path} is large"
        with Image.open(path) as img:
            assert img.format == fmt
    assert f"(img/workflow_{name}.png)" in build.DOCS.read_text()
