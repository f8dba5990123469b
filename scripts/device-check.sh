#!/usr/bin/env bash
# The checks and benchmarks for a lent GPU machine (the `device` tool), in one run from
# the pack scripts/device-pack.sh makes:
#
#   run(command="bash scripts/device-check.sh", carry=[".gl", ".device"], timeout_s=600)
#
# Phases, most important first, each skipped when it would not end before the
# deadline (DEVICE_DEADLINE_S seconds after the start, default 540):
#   1. adapter: `webmoe info` (the NVIDIA Vulkan driver, its features and limits)
#   2. self-test: every GPU op against its CPU reference, both kernel targets
#   3. embedded model: greedy tokens and held-out perplexity against transformers'
#      (models/tiny-moe/expected.json)
#   4. kernels: `webmoe bench` (MoE layers at real shapes and T = 1..512 in f16 and
#      Q4_K, attention), then the decode rows again with WEBMOE_SUBGROUPS=0 (the
#      shared-memory reductions the browser takes)
#   5. whole models: `webmoe bench --shapes none --profile` (embedded and a 2-layer
#      Qwen3-30B-A3B-shaped model at full size)
#   6. llama.cpp side by side (scripts/peer-bench.sh on the same Vulkan device): a
#      random-weights checkpoint of real shapes (PEER_SHAPES, default
#      "qwen3-2l-152k olmoe", scripts/real_shapes.py) converted to GGUF in f16 and
#      quantized to Q4_K_M by llama-quantize; both engines read the same files
#
# Results under $OUT (the device tool brings back at most 8 files): log.txt (all
# output), self-test.json, kernels.md, kernels.json, models.md, peer.md. Locally
# (no device tool) OUT defaults to target/device-out; DEVICE_QUICK=1 runs the
# scaled-down benches (--quick) and PEER_SHAPES=embedded the embedded model only, for
# trying the script on a CPU adapter (with PYTHON naming a python that has numpy).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/target/device-out}
DEADLINE=${DEVICE_DEADLINE_S:-540}
PEER_SHAPES=${PEER_SHAPES:-qwen3-2l-152k olmoe}
QUICK=()
[ "${DEVICE_QUICK:-0}" = 1 ] && QUICK=(--quick)
mkdir -p "$OUT"
LOG=$OUT/log.txt
START=$(date +%s)
exec > >(tee -a "$LOG") 2>&1
TEE=$!

elapsed() { echo $(($(date +%s) - START)); }
# bounded CMD...: CMD, killed at the deadline (the tool kills the whole run at 600 s,
# and what a phase was writing would be lost with every later phase).
bounded() { timeout "$((DEADLINE - $(elapsed) > 1 ? DEADLINE - $(elapsed) : 1))" "$@"; }
# phase NAME SECONDS: true when NAME is expected to end (in about SECONDS) before the deadline.
phase() {
    local left=$((DEADLINE - $(elapsed)))
    if [ "$left" -lt "$2" ]; then
        echo "== $1: skipped ($left s left, needs about $2)"
        skipped=$((skipped + 1))
        return 1
    fi
    echo "== $1 (at $(elapsed) s)"
}

# The loaders where the machine has none, and the NVIDIA driver's ICD (the device
# README's recipe).
if ! ldconfig -p | grep libvulkan.so.1 >/dev/null && ls .gl/*.deb >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$nvidia_icd" ] && export VK_DRIVER_FILES=${VK_DRIVER_FILES:-$nvidia_icd}
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-$(id -u)}
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"

# The pack.
# Extracted afresh each run: a machine kept warm between runs may hold an older one.
PACK=${DEVICE_PACK_DIR:-/tmp/webmoe-pack}
rm -rf "$PACK" && mkdir -p "$PACK"
python3 -c 'import lzma, sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
    .device/pack.tar.xz "$PACK" || { echo "no pack: run scripts/device-pack.sh here first"; exit 1; }
echo "pack built at $(cat "$PACK/commit"); this tree at $(git rev-parse HEAD 2>/dev/null || echo '?')"
WEBMOE=$PACK/bin/webmoe
# llama.cpp's tools with their libraries (the rest of the system keeps its own), bounded.
llama() { bounded env LD_LIBRARY_PATH="$PACK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }
mkdir -p "$PACK/site"
python3 -c "import gguf" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile \
    --target "$PACK/site" "$PACK"/wheels/*.whl
export PYTHONPATH=$PACK/site${PYTHONPATH:+:$PYTHONPATH}
# numpy for the converters (the machine's python3 has it; locally: PYTHON=target/peer-bench/venv/bin/python).
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
failed=0
skipped=0

if phase adapter 10; then
    bounded "$WEBMOE" info || failed=1
fi

if phase self-test 60; then
    bounded "$WEBMOE" self-test --json "$OUT/self-test.json" || failed=1
fi

if phase "embedded model" 60; then
    bounded python3 - "$WEBMOE" <<'EOF' || failed=1
import json, subprocess, sys
webmoe = sys.argv[1]
exp = json.load(open("models/tiny-moe/expected.json"))
run = subprocess.run([webmoe, "run", "--prompt", exp["prompt_text"], "--max-tokens", "32",
                      "--temperature", "0"], capture_output=True, text=True)
want = exp["prompt_text"] + exp["greedy_text"]
print(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "")
# transformers' 32 tokens went on past the end-of-text token, where `run` stops.
got = run.stdout.strip()
ok = run.returncode == 0 and want.startswith(got) and len(got) > len(exp["prompt_text"]) + 40
print(f"greedy continuation {'matches' if ok else 'DIFFERS from'} transformers: {run.stdout.strip()!r}")
ppl = subprocess.run([webmoe, "perplexity", "--file", "models/tiny-moe/heldout.txt",
                      "--window", str(exp["heldout_window"])], capture_output=True, text=True)
print(ppl.stdout.strip())
got = [float(w) for w in ppl.stdout.replace(",", " ").split() if w.replace(".", "", 1).isdigit()]
want_ppl = exp["heldout_excerpt_perplexity"]
close = ppl.returncode == 0 and any(abs(g - want_ppl) / want_ppl < 5e-3 for g in got)
print(f"held-out perplexity {'matches' if close else 'DIFFERS from'} transformers' {want_ppl:.4f}")
sys.exit(0 if ok and close else 1)
EOF
fi

if phase kernels 120; then
    bounded "$WEBMOE" bench "${QUICK[@]}" --no-models --formats f16,q4_k --json "$OUT/kernels.json" \
        >"$OUT/kernels.md" || failed=1
    cat "$OUT/kernels.md"
fi
if phase "kernels, decode rows with shared-memory reductions" 60; then
    {
        echo
        echo "## WEBMOE_SUBGROUPS=0 (decode rows)"
        WEBMOE_SUBGROUPS=0 bounded "$WEBMOE" bench "${QUICK[@]}" --no-models --tokens 1,4 --formats f16,q4_k
    } | tee -a "$OUT/kernels.md" || failed=1
fi

if phase "whole models" 90; then
    bounded "$WEBMOE" bench "${QUICK[@]}" --shapes none --profile >"$OUT/models.md" || failed=1
    cat "$OUT/models.md"
fi

# llama.cpp beside webmoe on random-weights checkpoints of real shapes.
peer() { # NAME MODEL_DIR
    local name=$1 dir=$2 f16=/tmp/peer/$1-f16.gguf q4=/tmp/peer/$1-q4_k_m.gguf
    if [ ! -f "$f16" ]; then
        bounded "$PYTHON" scripts/hf_to_gguf.py "$dir" "$f16" --type f16 >/dev/null || { rm -f "$f16"; return 1; }
    fi
    [ -f "$q4" ] || llama "$PACK/bin/llama-quantize" "$f16" "$q4" Q4_K_M >/tmp/peer/quantize.log 2>&1 ||
        { tail -5 /tmp/peer/quantize.log; rm -f "$q4"; return 1; }
    for gguf in "$f16" "$q4"; do
        echo "### $name, $(basename "$gguf")" >>"$OUT/peer.md"
        LLAMA_BENCH="$PACK/bin/llama-bench" WEBMOE="$WEBMOE" OUT=/tmp/peer/out \
            LD_LIBRARY_PATH=$PACK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
            bounded bash scripts/peer-bench.sh --model "$gguf" --prompt "${PEER_PROMPT:-512}" \
            --decode "${PEER_DECODE:-128}" --repeats 3 >>"$OUT/peer.md" 2>/tmp/peer/peer.log ||
            { tail -20 /tmp/peer/peer.log /tmp/peer/out/*.log; return 1; }
        echo >>"$OUT/peer.md"
    done
}
mkdir -p /tmp/peer
for shape in $PEER_SHAPES; do
    case "$shape" in
        embedded) need=60 ;;
        olmoe) need=300 ;;
        *) need=150 ;;
    esac
    phase "llama.cpp beside webmoe: $shape" "$need" || continue
    if [ "$shape" = embedded ]; then
        dir=models/tiny-moe
    else
        dir=/tmp/peer/$shape
        bounded "$PYTHON" scripts/real_shapes.py write "$shape" "$dir" >/dev/null || { failed=1; continue; }
        cp models/tiny-moe/tokenizer.json "$dir/"
    fi
    peer "$shape" "$dir" || failed=1
    rm -f /tmp/peer/"$shape"-*.gguf
    [ "$shape" = embedded ] || rm -rf "$dir"
    cat "$OUT/peer.md"
done

echo "== done at $(elapsed) s; $([ $failed = 0 ] && echo 'all checks run passed' || echo 'SOMETHING FAILED (see above)');" \
    "$skipped phases skipped for time"
# Let tee write the last lines to log.txt before the run ends.
exec >&- 2>&-
wait "$TEE"
exit $failed
