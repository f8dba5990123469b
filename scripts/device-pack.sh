#!/usr/bin/env bash
# Packs what scripts/device-check.sh needs on a lent GPU machine (the `device` tool:
# x86-64, no Rust toolchain, no network; the repository travels, 64 MiB in all with
# what is carried, and the tracked tree is ~56 MB of it):
#
#   .device/pack.tar.xz  webmoe (release with fat LTO, stripped, built without the
#                        embedded model: models/tiny-moe travels with the
#                        repository; its own target dir, target/device), llama.cpp's
#                        llama-bench and llama-quantize (Vulkan) with their shared
#                        libraries, and the `gguf` wheel for scripts/hf_to_gguf.py
#   .gl/*.deb            the Vulkan/GL loaders (the device README's recipe)
#
# Both folders are ignored through .git/info/exclude. Then, with the device tool:
#   run(command="bash scripts/device-check.sh", carry=[".gl", ".device"], timeout_s=600)
#
# llama.cpp is built by scripts/peer-bench.sh --build-only (about a quarter of an hour
# on 2 cores the first time); webmoe by cargo (about 5 minutes on 2 cores with LTO).
# The pack is ~9.5 MB, and the 64 MiB the tool carries hold little more: so LTO and
# panic=abort (webmoe catches no panics natively) for a smaller binary, and only the
# libraries a recent distribution may lack (the machine's Python has libssl 3).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WORK=${PEER_BENCH_DIR:-$ROOT/target/peer-bench}
LLAMA_CPP_PYTHON=${LLAMA_CPP_PYTHON:-0.3.36}
GGUF_VERSION=${GGUF_VERSION:-0.19.0}
LIMIT=$((64 * 1024 * 1024))

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for ignored in /.gl/ /.device/; do
    grep -qx "$ignored" "$exclude" 2>/dev/null || echo "$ignored" >>"$exclude"
done

# The loaders (as the device README says: amd64 packages, unpacked there with dpkg -x).
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    mkdir -p .gl /tmp/amd64/partial
    apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${apt_opts[@]}" update -qq
    (cd .gl && apt-get "${apt_opts[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib" "$STAGE/wheels"

# webmoe.
DEVICE_TARGET=$ROOT/target/device
CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort \
    cargo build --release --quiet --no-default-features --bin webmoe --target-dir "$DEVICE_TARGET"
cp "$DEVICE_TARGET/release/webmoe" "$STAGE/bin/webmoe"
strip "$STAGE/bin/webmoe"

# llama.cpp: llama-bench (built by peer-bench.sh) and llama-quantize.
bash "$ROOT/scripts/peer-bench.sh" --build-only >/dev/null
LLAMA=$WORK/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/build
cmake --build "$LLAMA" -j"$(nproc)" --target llama-quantize >"$WORK/build-quantize.log" 2>&1 ||
    { tail -40 "$WORK/build-quantize.log" >&2; exit 1; }
for tool in llama-bench llama-quantize; do
    cp "$LLAMA/bin/$tool" "$STAGE/bin/"
done
# Their libraries (llama.cpp's own and the non-glibc system ones, which a newer
# distribution may lack), resolved through ldd, under the names they are linked by.
for tool in llama-bench llama-quantize; do
    ldd "$LLAMA/bin/$tool" | awk '$3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
    case "$name" in
        # glibc, the C++ and OpenMP runtimes, OpenSSL (newer there) and the Vulkan
        # loader (from .gl) stay out.
        libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libvulkan.so* | \
            libstdc++.so* | libgcc_s.so* | libgomp.so* | libssl.so* | libcrypto.so*) ;;
        *) cp -L "$path" "$STAGE/lib/$name" ;;
    esac
done
strip --strip-unneeded "$STAGE"/lib/*.so* 2>/dev/null || true

# gguf (pure Python) for hf_to_gguf.py; numpy, PyYAML and tqdm are on the machine.
python3 -m pip download --quiet --no-deps --only-binary=:all: "gguf==$GGUF_VERSION" -d "$STAGE/wheels"

mkdir -p .device
git rev-parse HEAD >"$STAGE/commit"
tar -C "$STAGE" -cf - . | xz -T0 -9e >.device/pack.tar.xz

# (Files deleted from the working tree do not travel: stat skips them.)
tracked=$({ git ls-files -z | xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}')
untracked=$({ git ls-files -z --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true; } |
    awk '{s += $1} END {print s + 0}')
carried=$(du -cb .gl .device | tail -1 | cut -f1)
total=$((tracked + untracked + carried))
echo "packed $(du -h .device/pack.tar.xz | cut -f1) at $(git rev-parse --short HEAD);" \
    "the tree that travels: $((total / 1024 / 1024)) MiB of $((LIMIT / 1024 / 1024))"
if [ "$total" -gt "$LIMIT" ]; then
    echo "device-pack: over the device tool's 64 MiB: leave untracked files out" >&2
    exit 1
fi
