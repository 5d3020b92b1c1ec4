"""A real ComfyUI server for the end-to-end tests (code shared with the demo: scripts/comfy_server.py).

srv = start_server(base_dir, models_dir)      # waits for GET /object_info
pid = srv.post_prompt(api)                    # PromptRejected (node_errors spelled out) on HTTP 400
entry = srv.wait_for(pid, timeout=300)        # ExecutionFailed with ComfyUI's error message
png = srv.fetch_image(srv.output_images(entry)[0])
srv.object_info()["IPAK_Apply"]
srv.stop()                                    # SIGINT to its process group, SIGKILL fallback
"""

from __future__ import annotations

import sys
from pathlib import Path

_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(_SCRIPTS) not in sys.path:
    sys.path.insert(0, str(_SCRIPTS))

from comfy_server import (  # noqa: E402
    PACK_NAME,
    ComfyServer,
    ExecutionFailed,
    PromptRejected,
    ServerError,
    comfy_version,
    format_execution_error,
    format_rejection,
    free_port,
)

__all__ = [
    "PACK_NAME",
    "ComfyServer",
    "ExecutionFailed",
    "PromptRejected",
    "ServerError",
    "comfy_version",
    "format_execution_error",
    "format_rejection",
    "free_port",
    "pack_import_failures",
    "start_server",
]


def start_server(base_dir, models_dir=None, timeout: float = 180.0, **kwargs) -> ComfyServer:
    """Start ComfyUI (venv python, `--cpu`, pack linked into BASE/custom_nodes); one retry on
    a fresh port covers the small race between picking a free port and binding it."""
    try:
        return ComfyServer(base_dir, models_dir, **kwargs).start(timeout)
    except ServerError as first:
        if "address already in use" not in str(first).lower():
            raise
        return ComfyServer(base_dir, models_dir, **kwargs).start(timeout)


def pack_import_failures(log_text: str) -> list[str]:
    """Log lines where ComfyUI reports that our pack failed to import."""
    bad = []
    for line in log_text.splitlines():
        if PACK_NAME not in line:
            continue
        if "Cannot import" in line or "IMPORT FAILED" in line or "Error while calling comfy_entrypoint" in line:
            bad.append(line)
    return bad
