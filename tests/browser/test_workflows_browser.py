"""Every UI workflow, dropped on the real ComfyUI frontend in headless Chromium (conftest.py):

- no missing node types (what the frontend checks: LiteGraph.registered_node_types, i.e. the
  server's /object_info plus frontend-only nodes), every node and link of the file present;
- the frontend's own re-serialisation keeps every node as the file has it (so the file is what
  "Save" writes), and nothing was resized or moved;
- the frontend's own API conversion (app.graphToPrompt) equals the API twin in workflows/api/;
- no toast (schema or link validation), and the only dialog is "Missing Models" listing the
  download hints with valid folders (the server has no model files);
- a screenshot (out/workflows/screenshots/<name>.png; docs images: python -m workflows.build --images DIR).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from workflows import build, source  # noqa: E402
from workflows.graph import VIRTUAL_TYPES  # noqa: E402

NAMES = [g.name for g in source.all_graphs()]
VOLATILE = {"order", "size"}  # recomputed by the frontend on load (size checked separately)


def ui_file(name: str) -> dict:
    return json.loads((build.UI_DIR / f"{name}.json").read_text())


def api_file(name: str) -> dict:
    return json.loads((build.API_DIR / f"{name}.json").read_text())


@pytest.fixture
def result(browser_run, request):
    return browser_run["by_name"][request.param]


def test_frontend_version(browser_run):
    env = browser_run["env"]
    assert env["frontendVersion"], env
    assert env["registeredTypes"] > 100


@pytest.mark.parametrize("result", NAMES, indirect=True)
def test_loads_with_every_node_and_link(result):
    ui = ui_file(result["name"])
    assert result["loaded"], f"the graph did not appear after the drop:\n{result}"
    assert result["missingTypes"] == []
    assert not [n for n in result["nodes"] if n["hasErrors"]]
    assert sorted((n["id"], n["type"]) for n in result["nodes"]) == sorted((n["id"], n["type"]) for n in ui["nodes"])
    assert sorted(result["links"]) == sorted(ui["links"])
    real = [n for n in result["nodes"] if n["type"] not in VIRTUAL_TYPES]
    assert all(n["comfyClass"] == n["type"] for n in real), "a node was not built from its server definition"


@pytest.mark.parametrize("result", NAMES, indirect=True)
def test_frontend_serialises_the_file_unchanged(result):
    ui = ui_file(result["name"])
    saved = {n["id"]: n for n in result["serialized"]["nodes"]}
    for n in ui["nodes"]:
        s = saved[n["id"]]
        diff = {k: (n.get(k), s.get(k)) for k in set(n) | set(s) if k not in VOLATILE and n.get(k) != s.get(k)}
        assert not diff, f"node {n['id']} ({n['type']}) after load + serialize: {diff}"
        assert s["size"] == pytest.approx(n["size"]), f"node {n['id']} ({n['type']}) was resized: {s['size']}"
    assert result["serialized"]["links"] == ui["links"]
    assert [g["title"] for g in result["serialized"]["groups"]] == [g["title"] for g in ui["groups"]]


@pytest.mark.parametrize("result", NAMES, indirect=True)
def test_graph_to_prompt_equals_the_api_twin(result):
    assert result["prompt"] == api_file(result["name"])


@pytest.mark.parametrize("result", NAMES, indirect=True)
def test_only_the_missing_models_dialog(result):
    ui = ui_file(result["name"])
    assert result["toasts"] == [], "the frontend complained about the workflow"
    hints = {(h["directory"], h["name"]) for h in ui.get("models", [])}
    hints |= {(h["directory"], h["name"]) for n in ui["nodes"] for h in n["properties"].get("models", [])}
    assert len(result["dialogs"]) == 1, result["dialogs"]
    text = result["dialogs"][0]["text"]
    assert "Missing Models" in text and "Invalid directory" not in text, text
    for directory, name in hints:
        assert f"{directory} / {name}" in text, f"{directory} / {name} not offered for download"


@pytest.mark.parametrize("result", NAMES, indirect=True)
def test_screenshot_saved(result):
    from PIL import Image

    shot = Path(result["screenshot"])
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size[0] >= 1024
