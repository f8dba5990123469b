#!/usr/bin/env python3
"""One markdown table from a llama-bench JSON (`-o json`) and a `webmoe bench --json`
report of the same model on the same device: prefill and decode tokens/s of each and
webmoe / llama.cpp. Used by scripts/peer-bench.sh.

    peer_table.py LLAMA_BENCH.json WEBMOE_BENCH.json --model FILE --prompt N --decode N
"""
import argparse
import datetime
import json
import pathlib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("llama_bench", type=pathlib.Path)
    ap.add_argument("webmoe_bench", type=pathlib.Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", type=int, required=True)
    ap.add_argument("--decode", type=int, required=True)
    args = ap.parse_args()

    llama = json.loads(args.llama_bench.read_text())
    prefill = next(r for r in llama if r["n_prompt"] > 0 and r["n_gen"] == 0)
    decode = next(r for r in llama if r["n_gen"] > 0 and r["n_prompt"] == 0)
    webmoe = json.loads(args.webmoe_bench.read_text())
    row = webmoe["models"][0]

    def cell(r):
        return f"{r['avg_ts']:.1f} ± {r['stddev_ts']:.1f}"

    lines = [
        f"Peer benchmark, {datetime.date.today()}: `{pathlib.Path(args.model).name}` "
        f"({prefill.get('model_type', '?')}, {prefill.get('model_size', 0) / 1e6:.1f} MB)",
        "",
        f"- webmoe {webmoe['webmoe_version']}: {webmoe['adapter']} ({webmoe['backend']}, "
        f"{webmoe['device_type']}, driver {webmoe['driver']} {webmoe['driver_info']})",
        f"- llama.cpp {prefill.get('build_commit', '?')} (build {prefill.get('build_number', '?')}): "
        f"backends {prefill.get('backends', '?')}, {prefill.get('gpu_info', '?')}, "
        f"flash attention {'on' if prefill.get('flash_attn') else 'off'}, "
        f"{prefill.get('n_threads', '?')} threads",
        "",
        "| | llama.cpp (Vulkan) | webmoe | webmoe / llama.cpp |",
        "|---|---:|---:|---:|",
        f"| prefill {args.prompt} tokens, tokens/s | {cell(prefill)} | {row['prefill_tokens_per_s']:.1f} "
        f"| {row['prefill_tokens_per_s'] / prefill['avg_ts']:.2f}x |",
        f"| decode {args.decode} tokens, tokens/s | {cell(decode)} | {row['decode_tokens_per_s']:.1f} "
        f"| {row['decode_tokens_per_s'] / decode['avg_ts']:.2f}x |",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
