#!/usr/bin/env python3
"""Converts a Hugging Face MoE checkpoint (the families webmoe runs) into a GGUF file
the way llama.cpp's convert_hf_to_gguf.py lays them out: llama.cpp tensor names
(token_embd, blk.N.attn_q, blk.N.ffn_gate_exps stacked [E, ffn, d], ...), its
metadata keys, q/k rows permuted for llama-style models (Mixtral -> `llama`,
GraniteMoE), and the tokenizer as `tokenizer.ggml.*` (byte-level BPE, "gpt2").

    pip install gguf numpy
    python3 scripts/hf_to_gguf.py MODEL_DIR OUT.gguf [--type f32|f16|bf16|q8_0|q4_0|mxfp4]

--type stores the projections (attention, dense MLPs, experts) in that type — rows
that are not whole 32-element blocks stay f32 — with webmoe's quantize-at-load policy
for the rest: output (lm_head) q8_0 for block types, token_embd f32, norms and
routers f32. The same weights as `webmoe run --model MODEL_DIR --quantize TYPE`
(or --dtype f16), bit for bit. Used to make the committed GGUF test fixtures.
"""
import argparse
import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants

ARCH = {"mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "olmoe": "olmoe",
        "granitemoe": "granitemoe"}


def load_tensors(d):
    """Every tensor as f32 (bf16 widened exactly; numpy has no bf16)."""
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            data = raw[8 + n + b:8 + n + e]
            dt = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[info["dtype"]]
            x = np.frombuffer(data, dtype=dt).reshape(info["shape"])
            if info["dtype"] == "BF16":
                x = (x.astype(np.uint32) << 16).view(np.float32)
            out[name] = x.astype(np.float32)
    return out


def permute(w, n_head):
    """llama.cpp's q/k row permutation (rotate-half layout -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--type", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q4_0", "mxfp4"])
    ap.add_argument("--split-max-tensors", type=int, default=0, help="split into files of at most N tensors")
    a = ap.parse_args()
    c = json.loads((a.model_dir / "config.json").read_text())
    mt = c["model_type"]
    arch = ARCH[mt]
    t = load_tensors(a.model_dir)
    w = GGUFWriter(a.out, arch, split_max_tensors=a.split_max_tensors)
    d, layers, heads = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    hd = c.get("head_dim") or d // heads
    rope = c.get("rope_parameters") or {}
    experts = c.get("num_experts") or c.get("num_local_experts")
    w.add_name(a.model_dir.name)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(rope.get("rope_theta", c.get("rope_theta", 10000.0)))
    w.add_rope_dimension_count(int(hd * rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))))
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_vocab_size(c["vocab_size"])
    w.add_expert_count(experts)
    w.add_expert_used_count(c["num_experts_per_tok"])
    if "moe_intermediate_size" in c:
        w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    if c.get("shared_expert_intermediate_size"):
        w.add_expert_shared_feed_forward_length(c["shared_expert_intermediate_size"])
    if "norm_topk_prob" in c:
        w.add_expert_weights_norm(bool(c["norm_topk_prob"]))
    if c.get("clip_qkv"):
        w.add_clamp_kqv(c["clip_qkv"])
    if mt == "granitemoe":
        w.add_embedding_scale(c["embedding_multiplier"])
        w.add_residual_scale(c["residual_multiplier"])
        w.add_attention_scale(c["attention_multiplier"])
        w.add_logit_scale(c["logits_scaling"])

    tok = json.loads((a.model_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [None] * max(c["vocab_size"], len(vocab))
    types = [1] * len(tokens)
    for s, i in vocab.items():
        tokens[i] = s
    for added in tok.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = 3 if added.get("special") else 4
    for i, s in enumerate(tokens):
        if s is None:  # vocabulary rows without a token
            tokens[i], types[i] = f"[PAD{i}]", 5
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if c.get("bos_token_id") is not None:
        w.add_bos_token_id(c["bos_token_id"])
    if isinstance(c.get("eos_token_id"), int):
        w.add_eos_token_id(c["eos_token_id"])
    w.add_add_bos_token(False)

    block = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "mxfp4": T.MXFP4}.get(a.type)

    def add(name, x, kind):
        """kind: proj (a.type), output, embed, small (f32)."""
        if kind == "small":
            w.add_tensor(name, x.astype(np.float32))
            return
        if kind == "embed":
            typ = a.type if a.type in ("f16", "bf16") else "f32"
        elif kind == "output" and block is not None:
            typ = "q8_0"
        else:
            typ = a.type
        if typ in ("q8_0", "q4_0", "mxfp4") and x.shape[-1] % 32 == 0:
            qt = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "mxfp4": T.MXFP4}[typ]
            w.add_tensor(name, quants.quantize(x, qt), raw_dtype=qt)
        elif typ == "f16":
            w.add_tensor(name, x.astype(np.float16))
        elif typ == "bf16":
            # round to nearest even, as webmoe's --dtype bf16 (the half crate) does
            u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
            bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
            w.add_tensor(name, bits, raw_shape=x.shape, raw_dtype=T.BF16)
        else:
            w.add_tensor(name, x.astype(np.float32))

    llama_style = arch in ("llama", "granitemoe")
    add("token_embd.weight", t["model.embed_tokens.weight"], "embed")
    for i in range(layers):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        add(b + "attn_norm.weight", t[p + "input_layernorm.weight"], "small")
        add(b + "ffn_norm.weight", t[p + "post_attention_layernorm.weight"], "small")
        q, k = t[p + "self_attn.q_proj.weight"], t[p + "self_attn.k_proj.weight"]
        if llama_style:
            q, k = permute(q, heads), permute(k, kv)
        add(b + "attn_q.weight", q, "proj")
        add(b + "attn_k.weight", k, "proj")
        add(b + "attn_v.weight", t[p + "self_attn.v_proj.weight"], "proj")
        add(b + "attn_output.weight", t[p + "self_attn.o_proj.weight"], "proj")
        for x in "qkv":
            if p + f"self_attn.{x}_proj.bias" in t:
                add(b + f"attn_{x}.bias", t[p + f"self_attn.{x}_proj.bias"], "small")
        for x in "qk":
            if p + f"self_attn.{x}_norm.weight" in t:
                add(b + f"attn_{x}_norm.weight", t[p + f"self_attn.{x}_norm.weight"], "small")
        if mt == "mixtral":
            m = p + "block_sparse_moe."
            add(b + "ffn_gate_inp.weight", t[m + "gate.weight"], "small")
            for gg, hf in [("gate", "w1"), ("up", "w3"), ("down", "w2")]:
                add(b + f"ffn_{gg}_exps.weight", np.stack([t[m + f"experts.{e}.{hf}.weight"] for e in range(experts)]), "proj")
        elif mt == "granitemoe":
            m = p + "block_sparse_moe."
            add(b + "ffn_gate_inp.weight", t[m + "router.layer.weight"], "small")
            inp = t[m + "input_linear.weight"]
            f = inp.shape[1] // 2
            add(b + "ffn_gate_exps.weight", inp[:, :f], "proj")
            add(b + "ffn_up_exps.weight", inp[:, f:], "proj")
            add(b + "ffn_down_exps.weight", t[m + "output_linear.weight"], "proj")
        elif p + "mlp.gate.weight" in t:
            m = p + "mlp."
            add(b + "ffn_gate_inp.weight", t[m + "gate.weight"], "small")
            for gg in ["gate", "up", "down"]:
                add(b + f"ffn_{gg}_exps.weight", np.stack([t[m + f"experts.{e}.{gg}_proj.weight"] for e in range(experts)]), "proj")
            if m + "shared_expert.gate_proj.weight" in t:
                for gg in ["gate", "up", "down"]:
                    add(b + f"ffn_{gg}_shexp.weight", t[m + f"shared_expert.{gg}_proj.weight"], "proj")
                add(b + "ffn_gate_inp_shexp.weight", t[m + "shared_expert_gate.weight"].reshape(-1), "small")
        else:
            for gg in ["gate", "up", "down"]:
                add(b + f"ffn_{gg}.weight", t[p + f"mlp.{gg}_proj.weight"], "proj")
    add("output_norm.weight", t["model.norm.weight"], "small")
    if "lm_head.weight" in t and not c.get("tie_word_embeddings"):
        add("output.weight", t["lm_head.weight"], "output")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out} ({a.type})")


if __name__ == "__main__":
    main()
