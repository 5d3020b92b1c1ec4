#!/usr/bin/env bash
# Browser dependencies of the `browser` tests (tests/browser): Debian's Chromium and the npm
# package playwright-core (driven from Node.js; it never downloads a browser of its own).
# Idempotent: a second run only checks what is there (< 1 s).
#
#   IPA_CACHE=/path      where node_modules goes (default <repo>/.cache; never committed)
#   IPA_CHROMIUM=/path   use this Chromium binary instead of Debian's /usr/bin/chromium
#
# Prints nothing on success but one line per thing it installed; exits non-zero with a reason
# if something cannot be installed (the browser tests then skip, saying why).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${IPA_CACHE:-$ROOT/.cache}"
PLAYWRIGHT_VERSION="1.64.1"
NODE_DIR="$CACHE/browser"
CHROMIUM="${IPA_CHROMIUM:-/usr/bin/chromium}"

log() { printf '[setup_browser] %s\n' "$*" >&2; }

# 1. Chromium (Debian package `chromium`).
if ! "$CHROMIUM" --version >/dev/null 2>&1; then
  if [[ -n "${IPA_CHROMIUM:-}" ]]; then
    log "IPA_CHROMIUM=$CHROMIUM does not run"; exit 3
  fi
  command -v apt-get >/dev/null || { log "no Chromium at $CHROMIUM and no apt-get to install it"; exit 3; }
  SUDO=()
  if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null || { log "installing chromium needs root (apt-get)"; exit 3; }
    SUDO=(sudo -n)
  fi
  log "installing Debian chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq >/dev/null || { log "apt-get update failed"; exit 3; }
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null \
    || { log "apt-get install chromium failed"; exit 3; }
  "$CHROMIUM" --version >/dev/null 2>&1 || { log "chromium installed but $CHROMIUM does not run"; exit 3; }
fi

# 2. playwright-core (npm), into the cache folder.
command -v node >/dev/null || { log "no node on PATH (Node.js >= 18 is needed to drive the browser)"; exit 3; }
have="$(node -e "try{console.log(require('$NODE_DIR/node_modules/playwright-core/package.json').version)}catch(e){}" 2>/dev/null || true)"
if [[ "$have" != "$PLAYWRIGHT_VERSION" ]]; then
  command -v npm >/dev/null || { log "no npm on PATH to install playwright-core"; exit 3; }
  log "installing playwright-core@$PLAYWRIGHT_VERSION into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  [[ -f "$NODE_DIR/package.json" ]] || echo '{"name":"ipadapter-kit-browser-tests","private":true}' > "$NODE_DIR/package.json"
  # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core downloads nothing itself; set anyway.
  (cd "$NODE_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund \
      "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null) || { log "npm install playwright-core failed"; exit 3; }
fi
exit 0
