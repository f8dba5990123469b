#!/usr/bin/env bash
# Runs every test of webmoe. On a fresh Debian 12 machine with no GPU it first
# installs what is missing: Mesa's CPU Vulkan driver (lavapipe), which the GPU
# tests run on.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  echo "== installing a Vulkan driver (mesa-vulkan-drivers: lavapipe)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi

# Prefer the Vulkan adapter over GL's llvmpipe; silence Mesa's XDG warning.
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/webmoe-xdg-$(id -u)}"
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"

echo "== native tests (cargo test)"
cargo test --all-targets
