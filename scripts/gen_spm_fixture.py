#!/usr/bin/env python3
"""A small SentencePiece-style (llama.cpp `llama`) vocabulary GGUF and llama.cpp's own
tokenization of test texts with it, for webmoe's GGUF tokenizer test. The vocabulary is
made here from the embedded model's byte-level BPE (no third-party vocabulary): <unk>,
<s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then the BPE's word pieces with "Ġ"
as "▁", scored by their rank. llama.cpp (a build of the llama-cpp-python sdist's
vendored source, `scripts/llama_cpp/tokenize.cpp`) tokenizes the texts; webmoe must
give the same ids.

    pip install gguf numpy
    python3 scripts/gen_spm_fixture.py --tokenize /path/to/llama-tokenize-ids
"""
import argparse
import json
import pathlib
import subprocess

from gguf import GGUFWriter

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"
TEXTS = [
    "Hello world",
    " Hello world",
    "The Rust programming language is fast.",
    "  two  spaces and\ttabs\nnew lines",
    "unicode: Äpfel, naïve café, 日本語 and 🦀",
    "numbers 12345 and symbols #$%^&*()",
    "",
    "a",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenize", required=True, help="llama-tokenize-ids built from scripts/llama_cpp/tokenize.cpp")
    a = ap.parse_args()
    bpe = json.loads((ROOT / "models" / "tiny-moe" / "tokenizer.json").read_text())["model"]["vocab"]
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)
    tokens.append("▁")
    scores.append(0.0)
    types.append(1)
    seen = set(tokens)
    for piece, rank in sorted(bpe.items(), key=lambda kv: kv[1]):
        piece = piece.replace("Ġ", "▁")
        if not all(c == "▁" or (c.isascii() and (c.isalnum() or c in ".,'")) for c in piece) or piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        scores.append(-float(rank))
        types.append(1)
    path = OUT / "spm-vocab.gguf"
    w = GGUFWriter(path, "llama")
    w.add_name("webmoe-spm-test-vocab")
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # (set LD_LIBRARY_PATH to the build's bin/ when libllama is not installed)
    out = subprocess.run([a.tokenize, str(path)], input="\n__text__\n".join(TEXTS).encode(),
                         capture_output=True, check=True).stdout.decode().splitlines()
    cases = [{"text": t, "ids": [int(x) for x in line.split()]} for t, line in zip(TEXTS, out)]
    (OUT / "spm-vocab.json").write_text(json.dumps({"vocab_size": len(tokens), "cases": cases}, indent=1, ensure_ascii=False))
    print(len(tokens), "tokens;", [len(c["ids"]) for c in cases])


if __name__ == "__main__":
    main()
