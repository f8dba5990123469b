#!/usr/bin/env python3
"""A K-quant GGUF fixture made by llama.cpp's own quantizer: a random-weights
Qwen3-MoE (2 layers, hidden 256, 4 experts of 256, rows in whole 256-element
superblocks) written as a Hugging Face checkpoint, converted by scripts/hf_to_gguf.py
(f32) and quantized by `llama-quantize ... Q5_K_M` (Q5_K and Q6_K tensors). The test
compares webmoe on it with the CPU reference decoder on the dequantized weights.

    pip install gguf numpy
    python3 scripts/gen_kquant_fixture.py --quantize /path/to/llama-quantize
"""
import argparse
import json
import pathlib
import shutil
import struct
import subprocess
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantize", required=True, help="llama-quantize of a llama.cpp build")
    a = ap.parse_args()
    rng = np.random.default_rng(5)
    d, ffn, experts, layers, vocab, heads, kv, hd = 256, 256, 4, 2, 384, 2, 1, 128
    tmp = pathlib.Path(tempfile.mkdtemp())
    config = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": d,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
              "head_dim": hd, "num_experts": experts, "num_experts_per_tok": 2,
              "moe_intermediate_size": ffn, "intermediate_size": 512, "vocab_size": vocab,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "norm_topk_prob": True, "tie_word_embeddings": False, "decoder_sparse_step": 1,
              "mlp_only_layers": [], "bos_token_id": None, "eos_token_id": None, "dtype": "float32"}
    (tmp / "config.json").write_text(json.dumps(config))
    shutil.copy(ROOT / "tests/fixtures/models/qwen3_moe/tokenizer.json", tmp / "tokenizer.json")
    t = {"model.embed_tokens.weight": rng.normal(0, 1, (vocab, d)),
         "lm_head.weight": rng.normal(0, 0.05, (vocab, d)),
         "model.norm.weight": 1 + rng.normal(0, 0.05, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.05, d)
        t[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.05, d)
        t[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.05, (heads * hd, d))
        t[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.05, (kv * hd, d))
        t[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.05, (kv * hd, d))
        t[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.05, (d, heads * hd))
        t[p + "self_attn.q_norm.weight"] = 1 + rng.normal(0, 0.05, hd)
        t[p + "self_attn.k_norm.weight"] = 1 + rng.normal(0, 0.05, hd)
        t[p + "mlp.gate.weight"] = rng.normal(0, 0.5, (experts, d))
        for e in range(experts):
            t[p + f"mlp.experts.{e}.gate_proj.weight"] = rng.normal(0, 0.05, (ffn, d))
            t[p + f"mlp.experts.{e}.up_proj.weight"] = rng.normal(0, 0.05, (ffn, d))
            t[p + f"mlp.experts.{e}.down_proj.weight"] = rng.normal(0, 0.05, (d, ffn))
    header, offset, blobs = {}, 0, []
    for name, x in t.items():
        b = np.ascontiguousarray(x, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(x.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    (tmp / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    f32 = tmp / "f32.gguf"
    subprocess.run(["python3", str(ROOT / "scripts/hf_to_gguf.py"), str(tmp), str(f32)], check=True)
    out = ROOT / "tests/fixtures/gguf/qwen3_moe-random-q5_k_m.gguf"
    subprocess.run([a.quantize, str(f32), str(out), "Q5_K_M"], check=True, capture_output=True)
    print("wrote", out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
