#!/usr/bin/env python3
"""Load test of `webmoe serve`: N concurrent streaming clients x M tokens each.

Starts `webmoe serve` (or uses --url), measures one stream alone (the baseline), then
N clients at once, each streaming M tokens (greedy, ignore_eos) for a bounded time,
and reports aggregate tokens/s against one stream (the batching gain), p50/p99 time
to first token, and whether every response arrived complete (M tokens, finish
"length") and uncorrupted (the same text as the same prompt alone: greedy tokens do
not depend on the batch). Prints a markdown table for BENCHMARKS.md.

  python3 scripts/load_test.py [--clients 32] [--tokens 64] [--seconds 600] [--bin target/release/webmoe]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

PROMPTS = ["The compiler", "A trait", "Lifetimes are", "The borrow checker", "Unsafe code", "Cargo builds",
           "A closure", "Iterators", "Macros", "Pattern matching", "Generics", "Error handling"]


def start_server(binary, sequences, extra):
    proc = subprocess.Popen([binary, "serve", "--port", "0", "--max-sequences", str(sequences), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        sys.stderr.write(line)
        m = re.search(r"on (http://[\d.]+:\d+/v1)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit("the server did not start")


def stream_once(client, prompt, tokens):
    """(text, completion tokens, finish reason, seconds to first token, total seconds)."""
    start = time.perf_counter()
    first = None
    pieces, finish, usage = [], None, None
    stream = client.completions.create(model=client.model_name, prompt=prompt, max_tokens=tokens, temperature=0,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if first is None:
                first = time.perf_counter() - start
            pieces.append(c.text)
            finish = c.finish_reason or finish
    return "".join(pieces), usage.completion_tokens if usage else 0, finish, first, time.perf_counter() - start


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=600, help="bound on the concurrent phase")
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "webmoe"))
    ap.add_argument("--url", help="use a running server instead of starting one")
    ap.add_argument("--server-args", default="", help="extra arguments for webmoe serve")
    args = ap.parse_args()

    proc = None
    url = args.url
    if not url:
        proc, url = start_server(args.bin, args.clients, args.server_args.split())
    client = openai.OpenAI(base_url=url, api_key=os.environ.get("WEBMOE_API_KEY", "none"), max_retries=0, timeout=args.seconds)
    client.model_name = client.models.list().data[0].id
    try:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.clients)]
        # Baseline: each distinct prompt alone (its text is what the batch must reproduce).
        alone = {}
        for p in dict.fromkeys(prompts):
            alone[p] = stream_once(client, p, args.tokens)
        single_rate = statistics.median(r[1] / r[4] for r in alone.values())
        single_ttft = statistics.median(r[3] for r in alone.values())

        deadline = time.perf_counter() + args.seconds
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            futures = [pool.submit(stream_once, client, p, args.tokens) for p in prompts]
            results = []
            for f in futures:
                results.append(f.result(timeout=max(1.0, deadline - time.perf_counter())))
        wall = time.perf_counter() - start
        complete = sum(1 for r in results if r[1] == args.tokens and r[2] == "length")
        intact = sum(1 for p, r in zip(prompts, results) if r[0] == alone[p][0])
        total = sum(r[1] for r in results)
        ttft = [r[3] for r in results]
        rate = total / wall
        print(f"| clients x tokens | one stream | {args.clients} concurrent (aggregate) | gain | TTFT p50 / p99 (one stream: {single_ttft:.2f} s) | complete | same text as alone |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        print(f"| {args.clients} x {args.tokens} | {single_rate:.1f} tokens/s | {rate:.1f} tokens/s ({total} tokens in {wall:.1f} s) "
              f"| {rate / single_rate:.2f}x | {percentile(ttft, 50):.2f} s / {percentile(ttft, 99):.2f} s "
              f"| {complete}/{len(results)} | {intact}/{len(results)} |")
        if complete != len(results) or intact != len(results):
            raise SystemExit("some responses were incomplete or differed from the same prompt alone")
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
