"""Suite-wide pytest set-up: import paths, layer markers, the in-process host fixtures.

Layers (markers are declared in pyproject.toml):
  tests/core   host-free unit tests of ip_adapter_core (fast; no marker)
  tests/nodes  node tests in-process through ComfyUI's executor  -> marked `host`
  tests/e2e    runs through a real ComfyUI server                 -> marked `e2e`
`pytest -m "not e2e"` skips the server; `-m "not e2e and not host"` runs the core alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
for p in (TESTS, TESTS / "fixtures"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import host  # noqa: E402  (tests/host.py)

_LAYER_MARKERS = {"e2e": "e2e", "nodes": "host", "browser": "browser"}


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        try:
            rel = Path(item.path).resolve().relative_to(TESTS)
        except ValueError:
            continue
        marker = _LAYER_MARKERS.get(rel.parts[0]) if len(rel.parts) > 1 else None
        if marker and marker not in item.keywords:
            item.add_marker(getattr(pytest.mark, marker))
        # The repo root has an __init__.py (ComfyUI imports it from custom_nodes/), so pytest
        # sees it as a Package and would import it before the first test just to look for
        # setup_module; that import needs the host. The pack is imported as `ipadapter_kit`
        # by tests/host.py where needed, so the root Package's setup is made a no-op.
        for node in item.listchain():
            if isinstance(node, pytest.Package) and Path(node.path).resolve() == REPO:
                node.setup = lambda: None  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def comfy() -> host.ComfyHost:
    """ComfyUI imported in-process (CPU); `.run_prompt(api)` executes a prompt through its
    validator and executor, `.models_dir(path)` points the model folders at a tree."""
    return host.ComfyHost.get()


@pytest.fixture(scope="session")
def pack(comfy):
    """This repository imported as `ipadapter_kit`, its nodes registered with the host."""
    return host.import_pack()


@pytest.fixture(scope="session")
def synthetic_models() -> Path:
    """`models/` tree of full-size synthetic files (SD1.5 checkpoint, canny ControlNet, ViT-H
    CLIP vision, sd15 adapters); generated once into the cache (~1 min), then instant.
    ComfyUI is imported in-process only when a file has to be generated."""
    import host_models

    return host_models.synthetic_models_dir()
