#!/usr/bin/env python3
"""Random-weight checkpoints with real MoE shapes, and a load/memory measurement.

    python3 scripts/real_shapes.py write SHAPE OUTDIR [--seed N] [--dry-run] [--force]
    python3 scripts/real_shapes.py measure MODEL_DIR [--bin target/release/webmoe]
                                           [--tokens 8] [--out results.json]

`write` makes a Hugging Face checkpoint directory: config.json, bf16 shards
model-0000i-of-0000N.safetensors (at most 4 GiB each) and
model.safetensors.index.json (--max-shard-gib changes the limit). Weights are random (seeded): normal(0, 0.02) for
matrices (router included), 1 + normal(0, 0.01) for norms. Tensors are generated
and written in pieces of 16M elements, so memory stays at ~100 MB whatever the
size. SHAPE is one of:
    qwen3-2l-64k   Qwen3-30B-A3B layer shapes, 2 layers, vocab 65536  (3.03 GB, 1 shard)
    qwen3-2l-152k  the same with vocab 151936                         (3.74 GB, 1 shard)
    olmoe          the full OLMoE-1B-7B-0924                          (13.84 GB, 4 shards)
If OUTDIR/config.json exists and every shard has its planned size, nothing is
written (--force rewrites). config.json is written last, so an interrupted run is
redone. --dry-run prints the plan (tensor count, bytes, shards) only.

`measure` runs `BIN run --model MODEL_DIR --prompt-ids "1 2 3 4 5 6 7 8"
--max-tokens N --greedy` (environment inherited, e.g. WGPU_BACKEND=vulkan),
samples /proc/PID/status (RssAnon, VmRSS) every 20 ms, parses the engine's
`loaded X GB in Y s (Z GB/s)` and `prefill: ... tokens/s; decode: ... tokens/s`
lines when present, checks peak RssAnon <= 1.25 * checkpoint + 300 MiB, prints a
markdown table row and writes the details as JSON. The page cache is not dropped:
the JSON records the shards' age and (via fincore, if installed) how much of them
was cached before the run, since a warm cache makes loading much faster.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

PIECE = 16 << 20  # elements generated at a time

QWEN3 = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
    "hidden_size": 2048, "num_hidden_layers": 2, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
    "moe_intermediate_size": 768, "intermediate_size": 6144, "norm_topk_prob": True,
    "vocab_size": 65536, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "tie_word_embeddings": False, "decoder_sparse_step": 1,
    "mlp_only_layers": [], "attention_bias": False, "hidden_act": "silu",
    "use_sliding_window": False, "sliding_window": None,
    "bos_token_id": None, "eos_token_id": 2,
}
OLMOE = {
    "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
    "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16,
    "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
    "intermediate_size": 1024, "vocab_size": 50304, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "norm_topk_prob": False, "clip_qkv": None,
    "tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu",
    "bos_token_id": None, "eos_token_id": 50279, "pad_token_id": 1,
}
SHAPES = {"qwen3-2l-64k": QWEN3, "qwen3-2l-152k": dict(QWEN3, vocab_size=151936), "olmoe": OLMOE}


def tensors(c):
    """[(name, shape)] in checkpoint order, for a config dict."""
    d, v, hd = c["hidden_size"], c["vocab_size"], c.get("head_dim", 128)
    nq, nkv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    ffn = c.get("moe_intermediate_size", c["intermediate_size"])
    qk_norm = hd if c["model_type"] == "qwen3_moe" else None  # OLMoE: over the projection
    out = [("model.embed_tokens.weight", [v, d])]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", [d]), (p + "post_attention_layernorm.weight", [d]),
                (p + "self_attn.q_proj.weight", [nq, d]), (p + "self_attn.k_proj.weight", [nkv, d]),
                (p + "self_attn.v_proj.weight", [nkv, d]), (p + "self_attn.o_proj.weight", [d, nq]),
                (p + "self_attn.q_norm.weight", [qk_norm or nq]),
                (p + "self_attn.k_norm.weight", [qk_norm or nkv]),
                (p + "mlp.gate.weight", [c["num_experts"], d])]
        for e in range(c["num_experts"]):
            q = f"{p}mlp.experts.{e}."
            out += [(q + "gate_proj.weight", [ffn, d]), (q + "up_proj.weight", [ffn, d]),
                    (q + "down_proj.weight", [d, ffn])]
    return out + [("model.norm.weight", [d]), ("lm_head.weight", [v, d])]


def nbytes(shape):
    return 2 * int(np.prod(shape))


def plan_shards(ts, limit):
    """Greedy split into shards of at most `limit` data bytes."""
    shards, cur, size = [], [], 0
    for name, shape in ts:
        if cur and size + nbytes(shape) > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += nbytes(shape)
    return shards + [cur]


def header_bytes(shard):
    hdr, off = {}, 0
    for name, shape in shard:
        hdr[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + nbytes(shape)]}
        off += nbytes(shape)
    hdr["__metadata__"] = {"format": "pt"}
    raw = json.dumps(hdr, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def to_bf16(x):
    """float32 -> bf16 bits (uint16), round to nearest even (no NaNs here)."""
    u = x.view(np.uint32)
    r = u >> 16  # in place from here on: one temporary
    r &= 1
    r += 0x7FFF
    r += u
    r >>= 16
    return r.astype("<u2")


def write_tensor(f, rng, name, shape):
    n, is_norm = int(np.prod(shape)), name.endswith("norm.weight")
    for start in range(0, n, PIECE):
        x = rng.standard_normal(min(PIECE, n - start), dtype=np.float32)
        x *= np.float32(0.01 if is_norm else 0.02)
        if is_norm:
            x += np.float32(1.0)
        f.write(to_bf16(x))


def cmd_write(a):
    config = dict(SHAPES[a.shape], dtype="bfloat16", torch_dtype="bfloat16")
    ts = tensors(config)
    shards = plan_shards(ts, int(a.max_shard_gib * 2**30))
    n = len(shards)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    sizes = [len(header_bytes(s)) + sum(nbytes(sh) for _, sh in s) for s in shards]
    total = sum(sizes)
    print(f"{a.shape}: {len(ts)} tensors, {total} bytes ({total / 1e9:.2f} GB) in {n} shard(s)")
    if a.dry_run:
        return
    paths = [os.path.join(a.outdir, nm) for nm in names]
    if not a.force and os.path.exists(os.path.join(a.outdir, "config.json")) and all(
            os.path.exists(p) and os.path.getsize(p) == s for p, s in zip(paths, sizes)):
        print(f"{a.outdir} already holds this checkpoint; nothing written (--force rewrites)")
        return
    os.makedirs(a.outdir, exist_ok=True)
    if os.path.exists(os.path.join(a.outdir, "config.json")):
        os.remove(os.path.join(a.outdir, "config.json"))  # marks the directory incomplete
    rng, t0, done = np.random.default_rng(a.seed), time.time(), 0
    for shard, path, size in zip(shards, paths, sizes):
        with open(path, "wb") as f:
            f.write(header_bytes(shard))
            for name, shape in shard:
                write_tensor(f, rng, name, shape)
        assert os.path.getsize(path) == size, path
        done += size
        print(f"  {os.path.basename(path)}: {size / 1e9:.2f} GB, {done / 1e9 / (time.time() - t0):.2f} GB/s")
    index = {"metadata": {"total_size": sum(nbytes(sh) for _, sh in ts)},
             "weight_map": {name: nm for s, nm in zip(shards, names) for name, _ in s}}
    with open(os.path.join(a.outdir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(a.outdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    dt = time.time() - t0
    print(f"wrote {total} bytes ({total / 1e9:.2f} GB) to {a.outdir} in {dt:.1f} s ({total / 1e9 / dt:.2f} GB/s)")


def proc_status(pid):
    """{'RssAnon': bytes, 'VmRSS': bytes} or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    return {k: int(m.group(1)) * 1024 for k in ("RssAnon", "VmRSS")
            if (m := re.search(rf"^{k}:\s+(\d+) kB", text, re.M))}


def cached_bytes(paths):
    """Page-cache residency of the files (util-linux fincore), or None."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *paths],
                             capture_output=True, text=True, check=True).stdout
        return sum(int(x) for x in out.split())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None


def cmd_measure(a):
    shards = sorted(os.path.join(a.model_dir, f) for f in os.listdir(a.model_dir) if f.endswith(".safetensors"))
    ckpt = sum(os.path.getsize(p) for p in shards)
    age = time.time() - max(os.path.getmtime(p) for p in shards)
    cached = cached_bytes(shards)
    cmd = [a.bin, "run", "--model", a.model_dir, "--prompt-ids", "1 2 3 4 5 6 7 8",
           "--max-tokens", str(a.tokens), "--greedy"]
    peak = {"RssAnon": 0, "VmRSS": 0}
    t0 = time.time()
    with open(os.devnull, "w") as devnull, open(a.out + ".stderr", "w+") as err:
        proc = subprocess.Popen(cmd, stdout=devnull, stderr=err)
        while proc.poll() is None:
            for k, v in (proc_status(proc.pid) or {}).items():
                peak[k] = max(peak[k], v)
            time.sleep(0.02)
        wall = time.time() - t0
        err.seek(0)
        stderr = err.read().splitlines()
    os.remove(a.out + ".stderr")
    text = "\n".join(stderr)
    num = r"([0-9.]+)"
    load = re.search(rf"loaded {num} GB in {num} s \({num} GB/s\)", text)
    speed = re.search(rf"prefill: (\d+) tokens, {num} tokens/s; decode: (\d+) tokens, {num} tokens/s \((.*)\)", text)
    bound = 1.25 * ckpt + (300 << 20)
    r = {
        "model_dir": a.model_dir, "command": cmd, "exit_code": proc.returncode, "wall_s": round(wall, 2),
        "checkpoint_bytes": ckpt, "peak_rss_anon_bytes": peak["RssAnon"], "peak_vm_rss_bytes": peak["VmRSS"],
        "ratio": peak["RssAnon"] / ckpt, "bound_bytes": int(bound), "bound_ok": peak["RssAnon"] <= bound,
        "shards_age_s": round(age), "cached_before_bytes": cached,
        "load_gb": float(load[1]) if load else None, "load_s": float(load[2]) if load else None,
        "load_gb_per_s": float(load[3]) if load else None,
        "prefill_tokens": int(speed[1]) if speed else None,
        "prefill_tokens_per_s": float(speed[2]) if speed else None,
        "decode_tokens": int(speed[3]) if speed else None,
        "decode_tokens_per_s": float(speed[4]) if speed else None,
        "adapter": speed[5] if speed else None, "stderr": stderr,
    }
    with open(a.out, "w") as f:
        json.dump(r, f, indent=2)
    print("\n".join(f"  stderr: {line}" for line in stderr), file=sys.stderr)
    cache_note = "unknown" if cached is None else f"{100 * min(cached, ckpt) / ckpt:.0f}%"
    print(f"exit {proc.returncode}, wall {wall:.1f} s, peak VmRSS {peak['VmRSS'] / 2**30:.2f} GiB, "
          f"shards written {age / 60:.0f} min ago, {cache_note} in page cache before; details in {a.out}",
          file=sys.stderr)
    f = lambda v, fmt: "-" if v is None else format(v, fmt)
    bound_cell = f"exit {proc.returncode}" if proc.returncode else ("yes" if r["bound_ok"] else "NO")
    print(f"| {os.path.basename(os.path.normpath(a.model_dir))} | {ckpt / 1e9:.2f} | {f(r['load_s'], '.1f')} "
          f"| {f(r['load_gb_per_s'], '.2f')} | {peak['RssAnon'] / 2**30:.2f} | {r['ratio']:.2f} "
          f"| {bound_cell} | {f(r['prefill_tokens_per_s'], '.1f')} "
          f"| {f(r['decode_tokens_per_s'], '.1f')} |")
    return 0 if proc.returncode == 0 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write a random-weight checkpoint")
    w.add_argument("shape", choices=sorted(SHAPES))
    w.add_argument("outdir")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--max-shard-gib", type=float, default=4.0)
    w.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    w.add_argument("--force", action="store_true", help="rewrite even if the checkpoint is complete")
    m = sub.add_parser("measure", help="run the engine on a checkpoint and sample its memory")
    m.add_argument("model_dir")
    m.add_argument("--bin", default="target/release/webmoe")
    m.add_argument("--tokens", type=int, default=8)
    m.add_argument("--out", default="results.json")
    a = p.parse_args()
    sys.exit(cmd_write(a) if a.cmd == "write" else cmd_measure(a))


if __name__ == "__main__":
    main()
