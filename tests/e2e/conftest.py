"""Session-wide real ComfyUI server for tests/e2e (every test here is marked `e2e`).

The server gets its own base directory (custom_nodes/ with this pack linked, output/, db) and
sees the synthetic models tree through an extra_model_paths.yaml. When a test fails, the
server log written during that test is attached to the report.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# tests/e2e/server.py is loaded as `e2e_server`: the name `server` belongs to ComfyUI's own
# server.py, which the in-process host (tests/host.py) imports in this same process.
if "e2e_server" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("e2e_server", Path(__file__).with_name("server.py"))
    e2e_server = importlib.util.module_from_spec(_spec)
    sys.modules["e2e_server"] = e2e_server
    _spec.loader.exec_module(e2e_server)
e2e_server = sys.modules["e2e_server"]


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, synthetic_models):
    base = tmp_path_factory.mktemp("comfy-base")
    srv = e2e_server.start_server(base, synthetic_models)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _server_log_mark(request):
    """Remember where the log was when the test started (for the failure report)."""
    if "comfy_server" in request.fixturenames:
        request.node._comfy_log_start = len(request.getfixturevalue("comfy_server").log_text())
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    srv = getattr(item, "funcargs", {}).get("comfy_server")
    if srv is None:
        return
    text = srv.log_text()[getattr(item, "_comfy_log_start", 0) :]
    lines = text.splitlines()[-200:]
    report.sections.append((f"ComfyUI server log during this test ({srv.log_path})", "\n".join(lines) or "(empty)"))
