#!/usr/bin/env bash
# The demo: builds/refreshes the host (scripts/setup_host.sh), then runs the basic workflow
# through a real ComfyUI server with this pack installed and writes the image + a report to
# out/demo/. Uses real model files when found (--models DIR, $IPA_MODELS_DIR, $COMFYUI_PATH/models),
# else synthetic random weights (noise images; it says so). Arguments go to scripts/demo.py
# (--help lists them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

"$ROOT/scripts/setup_host.sh"

exec "$VENV/bin/python" "$ROOT/scripts/demo.py" "$@"
