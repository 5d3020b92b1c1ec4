"""The example workflows through a real ComfyUI server.

Every API workflow (workflows/api/<name>.json) uses only node types the server registers. The
SD1.5 / SDXL ones run on the synthetic full-size SD1.5 files at 64x64 and 2 steps (the SDXL
ones with the SD1.5 checkpoint and adapters standing in, see workflows/source.py) and must save
an image; the Flux / SD3.5 ones are validated here (registered types and link types against the
server's definitions; tests/nodes/test_workflow_files.py: ComfyUI's own validator) and run end to
end on synthetic stand-in models with stubbed text encoders in test_dit_workflows_e2e.py. The
server also serves the UI files to the template browser.
"""

from __future__ import annotations

import copy
import io
import json
import sys
import time
import urllib.request

import pytest
from PIL import Image

import host

if str(host.REPO) not in sys.path:
    sys.path.append(str(host.REPO))

from workflows import build, images, source  # noqa: E402
from workflows.objectinfo import node_defs  # noqa: E402

GRAPHS = source.all_graphs()
RUNNABLE = [g for g in GRAPHS if g.e2e == "run" or g.e2e == source.SDXL_E2E_NOTE]
VALIDATED_ONLY = [g for g in GRAPHS if g not in RUNNABLE]
SIZE, STEPS = 64, 2
LATENTS = ("EmptyLatentImage", "EmptySD3LatentImage")
SAMPLERS = ("KSampler", "KSamplerAdvanced")


def api_file(name: str) -> dict:
    return json.loads((build.API_DIR / f"{name}.json").read_text())


def small_run(g) -> dict:
    """The API workflow with synthetic stand-ins for the models and a tiny, short run: every
    latent 64x64, 2 steps, and the cross-fade schedule shortened (each frame costs two CLIP
    vision encodes)."""
    prompt = copy.deepcopy(api_file(g.name))
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if isinstance(value, str) and value in g.e2e_substitutions:
                inputs[key] = g.e2e_substitutions[value]
        if node["class_type"] in LATENTS:
            inputs.update(width=SIZE, height=SIZE)
        if node["class_type"] in SAMPLERS:
            inputs["steps"] = STEPS
        if node["class_type"] == "IPAK_Weights":
            inputs.update(frames=1, add_starting_frames=0, add_ending_frames=0)
    return prompt


@pytest.fixture(scope="module")
def server_defs(comfy_server):
    return comfy_server.object_info()


@pytest.fixture(scope="module")
def input_images(comfy_server):
    return images.write(sorted({i for g in GRAPHS for i in g.images}), comfy_server.base / "input")


def test_server_definitions_equal_the_generators(pack, server_defs):
    """The files were laid out from in-process definitions: the server must report the same
    widgets, input slots and outputs for every node type they use."""
    used = build.used_types()
    live = node_defs({t: server_defs[t] for t in used if t in server_defs})
    assert set(live) == used, f"not registered by the server: {sorted(used - set(live))}"
    local = node_defs(build.host_object_info(used))
    for t in sorted(used):
        a, b = live[t], local[t]
        assert [(w.name, w.kind) for w in a.widgets()] == [(w.name, w.kind) for w in b.widgets()], t
        assert a.slots() == b.slots(), t
        assert a.outputs == b.outputs and a.display_name == b.display_name, t


@pytest.mark.parametrize("g", VALIDATED_ONLY, ids=lambda g: g.name)
def test_validated_only_workflow_fits_the_server(server_defs, g):
    build.check_graph(g, node_defs({t: server_defs[t] for t in build.used_types([g]) if t in server_defs}))
    missing = {e["class_type"] for e in api_file(g.name).values()} - set(server_defs)
    assert not missing


@pytest.mark.slow
@pytest.mark.parametrize("g", RUNNABLE, ids=lambda g: g.name)
def test_workflow_runs_and_saves_an_image(comfy_server, server_defs, input_images, g):
    prompt = small_run(g)
    assert {e["class_type"] for e in prompt.values()} <= set(server_defs)
    t0 = time.monotonic()
    entry = comfy_server.run(prompt, timeout=900)
    seconds = time.monotonic() - t0
    saved = [img for img in comfy_server.output_images(entry) if img.get("type") == "output"]
    assert saved, f"{g.name}: no image saved"
    batch = 1
    if g.by_type("IPAK_Weights"):
        batch = len(saved)
        assert batch > 1, "the cross-fade must produce one image per frame"
    for img in saved[:batch]:
        pic = Image.open(io.BytesIO(comfy_server.fetch_image(img)))
        assert pic.size == (SIZE, SIZE)
        assert img["subfolder"] == "ipadapter_kit"
    print(f"{g.name}: {seconds:.1f} s, {len(saved)} image(s)")  # noqa: T201  (shown with -s / in the log)


def test_template_browser_lists_and_serves_the_examples(comfy_server):
    """ComfyUI's custom-node template routes: each example listed once under the pack's folder
    name, the JSON served byte-identical, a thumbnail beside it."""
    listing = comfy_server.get_json("/api/workflow_templates")
    names = listing.get(e2e_pack_name())
    assert names is not None, listing
    assert sorted(names) == sorted(g.name for g in GRAPHS), "each example must be listed once"
    for g in GRAPHS:
        url = f"{comfy_server.url}/api/workflow_templates/{e2e_pack_name()}/{g.name}.json"
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.read() == (build.UI_DIR / f"{g.name}.json").read_bytes()
        with urllib.request.urlopen(url[: -len(".json")] + ".jpg", timeout=30) as resp:
            assert resp.read(3) == b"\xff\xd8\xff"


def e2e_pack_name() -> str:
    return sys.modules["e2e_server"].PACK_NAME
