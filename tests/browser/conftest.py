"""Browser tests: the real ComfyUI frontend (comfyui-frontend-package, served by a real server
with this pack) in headless Debian Chromium, driven by playwright-core from Node.js.

scripts/setup_browser.sh installs what is missing (apt-get chromium, npm playwright-core into
.cache/browser); if that is impossible here the tests skip and say why. The server runs without
model files (the frontend then lists the workflows' model download hints as missing, which the
tests check). Every test here is marked `browser` (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for p in (REPO / "scripts", REPO):
    if str(p) not in sys.path:
        sys.path.append(str(p))

SETUP = REPO / "scripts" / "setup_browser.sh"
DRIVER = Path(__file__).with_name("driver.mjs")
VIEWPORT = {"width": 1920, "height": 1080}


def cache_dir() -> Path:
    return Path(os.environ.get("IPA_CACHE") or REPO / ".cache")


def screenshots_dir() -> Path:
    """Where the screenshots go (`python -m workflows.build --images DIR` turns them into docs)."""
    return Path(os.environ.get("IPA_SCREENSHOTS") or REPO / "out" / "workflows" / "screenshots")


@pytest.fixture(scope="session")
def browser_tools() -> dict:
    """Chromium and playwright-core, installed by scripts/setup_browser.sh if missing."""
    try:
        run = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"browser dependencies could not be installed: {e}")
    if run.returncode != 0:
        pytest.skip(f"browser dependencies could not be installed (scripts/setup_browser.sh): {run.stderr.strip()}")
    chromium = os.environ.get("IPA_CHROMIUM") or "/usr/bin/chromium"
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node (Node.js) on PATH")
    return {"node": node, "chromium": chromium, "node_modules": str(cache_dir() / "browser" / "node_modules")}


@pytest.fixture(scope="module")
def frontend_server(tmp_path_factory, browser_tools):
    """A real ComfyUI server with this pack and no model files; the workflows' reference
    pictures are in its input folder (so LoadImage previews show in the screenshots)."""
    from comfy_server import ComfyServer, ServerError

    from workflows import images, source

    base = tmp_path_factory.mktemp("comfy-frontend")
    images.write(sorted({i for g in source.all_graphs() for i in g.images}), base / "input")
    srv = ComfyServer(base, None)
    try:
        srv.start(timeout=240)
    except ServerError as first:
        if "address already in use" not in str(first).lower():
            raise
        srv = ComfyServer(base, None).start(timeout=240)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser_run(browser_tools, frontend_server, tmp_path_factory) -> dict:
    """Every UI workflow dropped on the page once; the driver's results by workflow name."""
    from workflows import build, source

    out = screenshots_dir()
    out.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("browser")
    config = {
        "url": frontend_server.url,
        "nodeModules": browser_tools["node_modules"],
        "chromium": browser_tools["chromium"],
        "userDataDir": str(work / "user-data"),  # a new, empty profile
        "outDir": str(out),
        "viewport": VIEWPORT,
        "workflows": [{"name": g.name, "file": str(build.UI_DIR / f"{g.name}.json")} for g in source.all_graphs()],
    }
    (work / "config.json").write_text(json.dumps(config))
    run = subprocess.run([browser_tools["node"], str(DRIVER), str(work / "config.json")], capture_output=True,
                         text=True, timeout=900, cwd=REPO)
    results_file = out / "results.json"
    if run.returncode != 0 or not results_file.is_file():
        pytest.fail(f"browser driver failed (exit {run.returncode}):\n{run.stderr[-6000:]}\n"
                    f"server log:{frontend_server.log_tail(40)}")
    data = json.loads(results_file.read_text())
    data["by_name"] = {r["name"]: r for r in data["results"]}
    data["driver_log"] = run.stderr
    return data
