#!/usr/bin/env bash
# Builds the browser demo into web/dist: the crate compiled to wasm32, wasm-bindgen's
# ES module (--target web), the page, and a copy of the embedded model. Serve web/dist
# with any static server, e.g. `python3 -m http.server -d web/dist 8080`.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version | cut -d' ' -f2)" != "$version" ]; then
  echo "== installing wasm-bindgen-cli $version (matches the crate's wasm-bindgen)"
  cargo install wasm-bindgen-cli --version "$version"
fi

echo "== building the wasm module"
cargo build --lib --release --target wasm32-unknown-unknown
rm -rf web/dist
mkdir -p web/dist/models
wasm-bindgen --target web --no-typescript --out-dir web/dist/pkg target/wasm32-unknown-unknown/release/webmoe.wasm
cp web/index.html web/bench.html web/app.js web/webmoe.js web/dist/
cp -r models/tiny-moe web/dist/models/
echo "== web/dist is ready ($(du -sh web/dist | cut -f1))"
