#!/usr/bin/env bash
# The test command: builds/refreshes the host (scripts/setup_host.sh), then runs every test layer
# (tests/core, tests/nodes in-process, tests/e2e through a real ComfyUI server) with pytest.
# Extra arguments go to pytest, e.g.:
#   scripts/test.sh -m "not e2e"          # skip the real-server tests
#   scripts/test.sh tests/core -q         # host-free unit tests only
#   IPA_TEST_TIMEOUT=0 scripts/test.sh    # no per-test timeout (default 900 s)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"

"$ROOT/scripts/setup_host.sh"

cd "$ROOT"
timeout_args=()
if [[ "${IPA_TEST_TIMEOUT:-900}" != "0" ]]; then
  timeout_args=(--timeout="${IPA_TEST_TIMEOUT:-900}")
fi
for arg in "$@"; do
  if [[ "$arg" == --timeout* ]]; then timeout_args=(); fi
done
exec "$VENV/bin/python" -m pytest "${timeout_args[@]}" "$@"
