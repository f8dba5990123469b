#!/usr/bin/env bash
# webmoe and llama.cpp (Vulkan backend) side by side: the same device, the same GGUF
# weights, prefill and decode tokens/s from `llama-bench` and `webmoe bench --model`,
# written as one markdown table (and the raw JSON of both) under $OUT.
#
#   scripts/peer-bench.sh [--model DIR_OR_GGUF] [--type f32|f16|bf16|q8_0|q4_0]
#                         [--prompt 128] [--decode 32] [--repeats 3] [--build-only]
#
# llama.cpp comes from the llama-cpp-python sdist on PyPI, which vendors its source
# (ggml 0.25.3 in 0.3.36); it is built once with -DGGML_VULKAN=ON under $WORK. A model
# directory (default: the embedded models/tiny-moe) is converted to GGUF with
# scripts/hf_to_gguf.py, which writes llama.cpp's layout (checked against llama.cpp's
# converter in tests/gguf.rs). On a machine whose only Vulkan device is a CPU one
# (lavapipe), llama.cpp ignores it unless GGML_VK_VISIBLE_DEVICES names it: the script
# sets it then, and passes -fa 0 (lavapipe crashes in llama.cpp's flash attention).
#
# Needs (Debian): cmake glslc libvulkan-dev spirv-headers mesa-vulkan-drivers
# vulkan-tools (installed when missing and run as root); numpy and gguf for
# hf_to_gguf.py (a venv under $WORK when python3 lacks them).
# Prebuilt binaries (scripts/device-check.sh on a machine with no compilers): set
# LLAMA_BENCH and WEBMOE to them; then nothing is installed or built.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${PEER_BENCH_DIR:-$ROOT/target/peer-bench}
OUT=${OUT:-$WORK/out}
LLAMA_CPP_PYTHON=${LLAMA_CPP_PYTHON:-0.3.36}
MODEL=$ROOT/models/tiny-moe
TYPE=f32
PROMPT=128
DECODE=32
REPEATS=3
BUILD_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL=$2; shift 2 ;;
        --type) TYPE=$2; shift 2 ;;
        --prompt) PROMPT=$2; shift 2 ;;
        --decode) DECODE=$2; shift 2 ;;
        --repeats) REPEATS=$2; shift 2 ;;
        --build-only) BUILD_ONLY=1; shift ;;
        *) echo "peer-bench: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$WORK" "$OUT"

need_apt=()
[ -n "${LLAMA_BENCH:-}" ] && [ -n "${WEBMOE:-}" ] || for pkg in cmake glslc libvulkan-dev spirv-headers mesa-vulkan-drivers vulkan-tools; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "peer-bench: install ${need_apt[*]} first" >&2
        exit 1
    fi
fi

# llama.cpp, built once.
SRC=$WORK/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp
BENCH_BIN=${LLAMA_BENCH:-$SRC/build/bin/llama-bench}
if [ ! -x "$BENCH_BIN" ]; then
    if [ ! -d "$SRC" ]; then
        python3 -m pip download --quiet --no-deps --no-binary :all: \
            "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$WORK"
        tar -xzf "$WORK/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$WORK"
    fi
    # Debian 12's Vulkan headers (1.3.239) lack VK_EXT_layer_settings, which llama.cpp
    # uses only to set validation-layer options: compile that block out when absent.
    python3 "$ROOT/scripts/llama_cpp/guard_layer_settings.py" "$SRC/ggml/src/ggml-vulkan/ggml-vulkan.cpp"
    cmake -S "$SRC" -B "$SRC/build" -DGGML_VULKAN=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >"$WORK/cmake.log" 2>&1
    cmake --build "$SRC/build" -j"$(nproc)" --target llama-bench >"$WORK/build.log" 2>&1 ||
        { tail -40 "$WORK/build.log" >&2; exit 1; }
fi
[ "$BUILD_ONLY" = 1 ] && { echo "llama-bench: $BENCH_BIN"; exit 0; }

# The weights both sides read (hf_to_gguf.py needs numpy and gguf: a venv under $WORK
# when python3 lacks them).
PYTHON=python3
if ! python3 -c "import numpy, gguf" 2>/dev/null; then
    [ -x "$WORK/venv/bin/python" ] || { python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install --quiet numpy gguf; }
    PYTHON=$WORK/venv/bin/python
fi
if [ -d "$MODEL" ]; then
    GGUF=$WORK/$(basename "$MODEL")-$TYPE.gguf
    [ -f "$GGUF" ] || "$PYTHON" "$ROOT/scripts/hf_to_gguf.py" "$MODEL" "$GGUF" --type "$TYPE" >&2
else
    GGUF=$MODEL
fi

# llama.cpp skips CPU Vulkan devices unless told: name device 0 when no other exists.
FA=()
if ! vulkaninfo --summary 2>/dev/null | grep -q "deviceType *= PHYSICAL_DEVICE_TYPE_\(DISCRETE\|INTEGRATED\|VIRTUAL\)_GPU" &&
    ! nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    export GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
    FA=(-fa 0)
fi
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}

if [ -z "${WEBMOE:-}" ]; then
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin webmoe
    WEBMOE=${CARGO_TARGET_DIR:-$ROOT/target}/release/webmoe
fi

# llama-bench: one warm-up run (first Vulkan use compiles its pipelines), then timed.
"$BENCH_BIN" -m "$GGUF" -p "$PROMPT" -n 0 -r 1 "${FA[@]}" -o json >/dev/null 2>&1 || true
"$BENCH_BIN" -m "$GGUF" -p "$PROMPT" -n "$DECODE" -r "$REPEATS" "${FA[@]}" -o json \
    >"$OUT/llama-bench.json" 2>"$OUT/llama-bench.log"
"$WEBMOE" bench --model "$GGUF" --shapes none --prompt-tokens "$PROMPT" --decode-tokens "$DECODE" \
    --repeats "$REPEATS" --json "$OUT/webmoe-bench.json" >"$OUT/webmoe-bench.md" 2>"$OUT/webmoe-bench.log"

python3 "$ROOT/scripts/peer_table.py" "$OUT/llama-bench.json" "$OUT/webmoe-bench.json" \
    --model "$GGUF" --prompt "$PROMPT" --decode "$DECODE" | tee "$OUT/peer-bench.md"
