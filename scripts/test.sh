#!/usr/bin/env bash
# Runs every test of webmoe: the native suite on the machine's Vulkan driver, then
# the browser suite (the demo page in headless Chromium over WebGPU). On a fresh
# Debian 12 machine with no GPU it first installs what is missing: Mesa's CPU Vulkan
# driver (lavapipe), the wasm32 target, wasm-bindgen-cli at the crate's version,
# Debian's chromium, node and npm where missing, and npm's playwright-core; and PyPI's
# `openai` for the server tests.
# WEBMOE_SKIP_BROWSER=1 skips the browser suite (and its installs).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  echo "== installing a Vulkan driver (mesa-vulkan-drivers: lavapipe)"
  apt_install mesa-vulkan-drivers
fi

# Prefer the Vulkan adapter over GL's llvmpipe; silence Mesa's XDG warning.
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/webmoe-xdg-$(id -u)}"
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"

echo "== native tests (cargo test)"
cargo test --all-targets
# The CLI without its embedded model (scripts/device-pack.sh builds it so): compiles.
cargo check --quiet --no-default-features --bin webmoe
# The server and browser tests run the CLI `cargo test` built for the integration tests
# (the test profile: optimized, dependencies at opt-level 2; on lavapipe as fast as a
# release build, whose compile would add about 6 minutes on a 2-core machine).
export WEBMOE_BIN="${WEBMOE_BIN:-$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/webmoe}"

echo "== server tests (webmoe serve against the openai package and curl)"
command -v curl >/dev/null || apt_install curl
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet openai \
  || python3 -m pip install --quiet --break-system-packages openai
python3 tests/server/test_openai_api.py

if [ "${WEBMOE_SKIP_BROWSER:-}" = 1 ]; then
  echo "== browser tests skipped (WEBMOE_SKIP_BROWSER=1)"
  exit 0
fi
command -v chromium >/dev/null || { echo "== installing chromium"; apt_install chromium; }
command -v npm >/dev/null || { echo "== installing node and npm"; apt_install nodejs npm; }
bash scripts/build-web.sh
( cd web && npm install --no-audit --no-fund --silent )
echo "== browser tests (node --test, playwright-core + chromium, SwiftShader WebGPU)"
( cd web && node --test tests/ )
