#!/usr/bin/env python3
"""Converts a Hugging Face MoE checkpoint (the families webmoe runs) into a GGUF file
the way llama.cpp's convert_hf_to_gguf.py lays them out: llama.cpp tensor names
(token_embd, blk.N.attn_q, blk.N.ffn_gate_exps stacked [E, ffn, d], ...), its
metadata keys, q/k rows permuted for llama-style models (Mixtral -> `llama`,
GraniteMoE), and the tokenizer as `tokenizer.ggml.*` (byte-level BPE, "gpt2").

gpt-oss (`gpt-oss`, llama.cpp's GptOssModel): gate_up_proj [E, d, 2f] with gate/up
interleaved along 2f is split into ffn_gate_exps (even columns) and ffn_up_exps (odd),
each transposed to [E, f, d]; down_proj [E, f, d] -> ffn_down_exps [E, d, f]; their
biases split the same way (ffn_{gate,up,down}_exps.bias [E, f|d]); router -> ffn_gate_inp
(+ .bias), sinks -> attn_sinks.weight, o_proj bias -> attn_output.bias,
post_attention_layernorm -> post_attention_norm. MXFP4 experts (`*_blocks`/`*_scales`)
stay MXFP4 whatever --type is: their bits are repacked into ggml's block_mxfp4 (scale
byte, then 16 bytes holding element j low / j+16 high), so the values are bit-exact.
Metadata adds sliding_window, expert_feed_forward_length and the YaRN rope.scaling.*
keys. llama.cpp's own converter writes experts from an MXFP4 checkpoint the same way
and, by default (--outtype auto), the other matrices as bf16: --type bf16 here.

DeepSeek-V2 / V3 (`deepseek2`, llama.cpp's DeepseekV2Model, which takes both): MLA written
as MQA over the latent (head_count_kv 1, key_length kv_lora_rank + qk_rope_head_dim,
value_length kv_lora_rank, key_length_mla / value_length_mla the per-head qk / v dims,
rope.dimension_count qk_rope_head_dim; no q/k permutation: deepseek2 ropes interleaved
pairs as the checkpoints do). q_proj -> attn_q, or q_a_proj / q_a_layernorm / q_b_proj ->
attn_q_a / attn_q_a_norm / attn_q_b; kv_a_proj_with_mqa -> attn_kv_a_mqa, kv_a_layernorm
-> attn_kv_a_norm; kv_b_proj [H * (nope + v), kv_lora] is split per head into attn_k_b
[H, kv_lora, nope] (k rows transposed) and attn_v_b [H, v, kv_lora] (no attn_kv_b);
the first first_k_dense_replace layers dense ffn_{gate,up,down}, the rest ffn_gate_inp,
exp_probs_b.bias (e_score_correction_bias), stacked ffn_*_exps and ffn_*_shexp (all
n_shared_experts as one MLP). Metadata adds leading_dense_block_count, q_lora_rank (when
set), kv_lora_rank, expert_shared_count, expert_weights_scale (routed_scaling_factor),
expert_weights_norm (only when true), expert_group_count / expert_group_used_count
(n_group / topk_group) and rope.scaling.yarn_log_multiplier = 0.1 * mscale_all_dim. One
key llama.cpp's converter would not write for a transformers 5 V3 config (which has no
scoring_func): expert_gating_func 2 (sigmoid), without which llama.cpp gates with a softmax.
Warnings name where llama.cpp runs the file otherwise than transformers runs the checkpoint.

GLM-4.5 MoE (`glm4moe`, llama.cpp's Glm4MoeModel): attn_q/k/v (+ .bias), attn_q_norm /
attn_k_norm, attn_output, post_attention_layernorm -> post_attention_norm; no q/k permutation
(glm4moe ropes NEOX halves over the first rope.dimension_count = head_dim *
partial_rotary_factor (0.5 by default) dims, as transformers does); the first
first_k_dense_replace layers dense ffn_{gate,up,down}, the rest ffn_gate_inp,
exp_probs_b.bias (e_score_correction_bias), stacked ffn_*_exps and ffn_*_shexp (all
n_shared_experts as one MLP). Metadata adds expert_feed_forward_length,
expert_shared_count, leading_dense_block_count, expert_gating_func 2 (sigmoid, always),
expert_weights_scale (routed_scaling_factor), expert_weights_norm (norm_topk_prob),
expert_group_count / expert_group_used_count (n_group / topk_group) and
nextn_predict_layers. NextN/MTP layers (model.layers.{num_hidden_layers}...) are left out,
as llama.cpp's --no-mtp does (then without nextn_predict_layers); with none, the file is
what llama.cpp's converter writes by default.

ERNIE-4.5 MoE (`ernie4_5-moe`, llama.cpp's Ernie4_5MoeModel): attn_q/k/v/output, ffn_norm;
no q/k permutation (ernie4_5-moe ropes interleaved pairs, as transformers does); a layer
with mlp.gate is sparse (ffn_gate_inp, exp_probs_b.bias from moe_statics.e_score_correction_bias
kept [1, E] as the checkpoint and llama.cpp's converter have it, stacked ffn_*_exps,
ffn_*_shexp), any other dense ffn_{gate,up,down}; tied embeddings (no output.weight).
Metadata: expert_count (moe_num_experts), expert_used_count (moe_k),
interleave_moe_layer_step (moe_layer_interval), leading_dense_block_count
(moe_layer_start_index), expert_feed_forward_length, expert_shared_count and, as llama.cpp's
converter computes it, expert_shared_feed_forward_length = intermediate_size //
num_key_value_heads. llama.cpp takes every layer from moe_layer_start_index on as sparse
(moe_layer_end_index is not in the file): a warning says when the checkpoint disagrees.

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
from gguf import GGUFWriter, Keys, RopeScalingType, quants

ARCH = {"mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "olmoe": "olmoe",
        "granitemoe": "granitemoe", "gpt_oss": "gpt-oss", "deepseek_v2": "deepseek2", "deepseek_v3": "deepseek2",
        "glm4_moe": "glm4moe", "ernie4_5_moe": "ernie4_5-moe"}
# llama.cpp's ExpertGatingFuncType
GATING = {"softmax": 1, "sigmoid": 2, "sqrtsoftplus": 4}


def load_tensors(d):
    """Every float tensor as f32 (bf16 widened exactly; numpy has no bf16); U8 (MXFP4
    blocks and scales) as it is."""
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
            dt = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "U8": np.uint8}[info["dtype"]]
            x = np.frombuffer(data, dtype=dt).reshape(info["shape"])
            if info["dtype"] == "U8":
                out[name] = x.copy()
                continue
            if info["dtype"] == "BF16":
                x = (x.astype(np.uint32) << 16).view(np.float32)
            out[name] = x.astype(np.float32)
    return out


def permute(w, n_head):
    """llama.cpp's q/k row permutation (rotate-half layout -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def mxfp4_repack(blocks, scales):
    """Hugging Face MXFP4 -> ggml block_mxfp4 bytes, moving bits only.

    blocks uint8 [E, rows, nb, 16]: byte i of a block holds element 2i (low nibble) and
    2i+1 (high); scales uint8 [E, rows, nb] (e8m0). ggml's block: the scale byte, then 16
    bytes where byte j holds element j (low) and j+16 (high). The 4-bit codes are the same
    e2m1 codes on both sides (ggml doubles its value table and halves the scale).
    Returns uint8 [E, rows, nb * 17] (GGUFWriter reads the element shape [E, rows, nb * 32])."""
    lo, hi = blocks & 0x0F, blocks >> 4
    vals = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)
    qs = vals[..., :16] | (vals[..., 16:] << 4)
    raw = np.concatenate([scales[..., None], qs], axis=-1).astype(np.uint8)
    return raw.reshape(*blocks.shape[:2], -1)


def deepseek_checks(c, rope):
    """Refuses what llama.cpp's deepseek2 cannot say; warns where llama.cpp reads the file
    otherwise than transformers runs the checkpoint (the file is written as llama.cpp's
    converter writes it all the same)."""
    import math
    import sys

    def warn(msg):
        print(f"warning: {msg}", file=sys.stderr)

    if c["model_type"] == "deepseek_v3" and c.get("rope_interleave") is False:
        raise SystemExit("deepseek_v3 with rope_interleave false: llama.cpp's deepseek2 ropes interleaved "
                         "pairs and its converter does not permute the rope rows")
    factor = rope.get("factor") or 1.0
    if rope.get("rope_type", rope.get("type")) == "yarn" and factor > 1.0:
        def g(m):
            return 0.1 * m * math.log(factor) + 1.0
        mscale, msad = rope.get("mscale"), rope.get("mscale_all_dim")
        # transformers: cos/sin * g(mscale) / g(mscale_all_dim), softmax scale * g(mscale_all_dim)^2;
        # llama.cpp (llama-context.cpp, models/deepseek2.cpp), which only gets
        # yarn_log_multiplier = 0.1 * mscale_all_dim: mscale taken as mscale_all_dim
        # (1 when that is 1), so cos/sin * 1 and softmax scale * g(mscale_all_dim)^2; without
        # the key, cos/sin * g(1) and softmax scale * g(1)^2
        hf = (g(mscale) / g(msad) if mscale and msad else g(1.0), g(msad) ** 2 if msad else 1.0)
        lc = (1.0, g(msad) ** 2) if msad else (g(1.0), g(1.0) ** 2)
        if any(abs(x - y) > 1e-9 for x, y in zip(hf, lc)):
            warn(f"YaRN mscale {mscale} / mscale_all_dim {msad}: transformers multiplies cos/sin by "
                 f"{hf[0]:.6f} and the softmax scale by {hf[1]:.6f}, llama.cpp by {lc[0]:.6f} and {lc[1]:.6f}")
    if c["model_type"] == "deepseek_v2":
        if (c.get("n_group") or 1) > 1:
            if c.get("topk_method") == "group_limited_greedy":
                warn("group_limited_greedy: transformers scores a group by its best expert, llama.cpp "
                     "(build_moe_ffn) by the sum of its best two")
            else:
                warn(f"topk_method {c.get('topk_method')} with n_group {c['n_group']}: llama.cpp limits "
                     "the choice to expert groups, transformers does not")
        if c.get("norm_topk_prob"):
            warn("norm_topk_prob: llama.cpp renormalizes the chosen weights, transformers' V2 does not")
    if c.get("q_lora_rank") is None and c["num_hidden_layers"] not in (26, 27, 48):
        warn("no q_lora_rank: llama.cpp's deepseek2 loader requires attention.q_lora_rank unless it "
             "takes the model for a lite one (26 or 27 layers, or 48 with a 128256 vocabulary); its "
             "converter writes none, so llama.cpp refuses this file (webmoe reads attn_q instead)")


def add_deepseek_metadata(w, c, rope, mt):
    """DeepseekV2Model.set_gguf_parameters (V2 and V3 alike), after TextModel's keys."""
    if c.get("n_group") is not None:
        w.add_expert_group_count(c["n_group"])
    if c.get("topk_group") is not None:
        w.add_expert_group_used_count(c["topk_group"])
    score = c.get("scoring_func")
    if score is None and mt == "deepseek_v3":
        # transformers' V3 always gates with a sigmoid and its configs no longer carry
        # scoring_func (DeepSeek-V3's own config.json says "sigmoid"); without the key
        # llama.cpp gates deepseek2 with a softmax, so write it (llama.cpp's converter
        # would not, for this config)
        score = "sigmoid"
    if score is not None:
        w.add_uint32(Keys.LLM.EXPERT_GATING_FUNC.format(arch=w.arch), GATING[score])
    w.add_leading_dense_block_count(c.get("first_k_dense_replace") or 0)
    if c.get("q_lora_rank") is not None:
        w.add_q_lora_rank(c["q_lora_rank"])
    w.add_kv_lora_rank(c["kv_lora_rank"])
    w.add_key_length_mla(c["qk_nope_head_dim"] + c["qk_rope_head_dim"])
    w.add_value_length_mla(c["v_head_dim"])
    w.add_expert_shared_count(c.get("n_shared_experts", 0))
    if c.get("routed_scaling_factor") is not None:
        w.add_expert_weights_scale(c["routed_scaling_factor"])
    if rope.get("mscale_all_dim") is not None:
        # llama.cpp's converter writes 0.1 * mscale_all_dim and its loader divides by 0.1
        w.add_rope_scaling_yarn_log_mul(0.1 * rope["mscale_all_dim"])


def add_deepseek_layer(add, t, c, p, b, i):
    """One DeepSeek-V2/V3 layer as DeepseekV2Model.modify_tensors writes it."""
    a = p + "self_attn."  # attn_norm and ffn_norm: main()'s loop
    if c.get("q_lora_rank") is None:
        add(b + "attn_q.weight", t[a + "q_proj.weight"], "proj")
    else:
        add(b + "attn_q_a.weight", t[a + "q_a_proj.weight"], "proj")
        add(b + "attn_q_a_norm.weight", t[a + "q_a_layernorm.weight"], "small")
        add(b + "attn_q_b.weight", t[a + "q_b_proj.weight"], "proj")
    add(b + "attn_kv_a_mqa.weight", t[a + "kv_a_proj_with_mqa.weight"], "proj")
    add(b + "attn_kv_a_norm.weight", t[a + "kv_a_layernorm.weight"], "small")
    # kv_b_proj [H * (nope + v), kv_lora] -> per head [nope + v, kv_lora]; the k rows
    # transposed to attn_k_b [H, kv_lora, nope], the v rows kept as attn_v_b [H, v, kv_lora];
    # no attn_kv_b
    heads, nope, v = c["num_attention_heads"], c["qk_nope_head_dim"], c["v_head_dim"]
    kvb = t[a + "kv_b_proj.weight"]
    assert kvb.shape[0] == heads * (nope + v), kvb.shape
    kvb = kvb.reshape(heads, nope + v, kvb.shape[-1])
    add(b + "attn_k_b.weight", np.ascontiguousarray(kvb[:, :nope].transpose(0, 2, 1)), "proj")
    add(b + "attn_v_b.weight", np.ascontiguousarray(kvb[:, nope:]), "proj")
    add(b + "attn_output.weight", t[a + "o_proj.weight"], "proj")
    m = p + "mlp."
    if i < (c.get("first_k_dense_replace") or 0):
        for gg in ["gate", "up", "down"]:
            add(b + f"ffn_{gg}.weight", t[m + f"{gg}_proj.weight"], "proj")
        return
    add(b + "ffn_gate_inp.weight", t[m + "gate.weight"], "small")
    if m + "gate.e_score_correction_bias" in t:
        add(b + "exp_probs_b.bias", t[m + "gate.e_score_correction_bias"], "small")
    for gg in ["gate", "up", "down"]:
        add(b + f"ffn_{gg}_exps.weight",
            np.stack([t[m + f"experts.{e}.{gg}_proj.weight"] for e in range(c["n_routed_experts"])]), "proj")
    for gg in ["gate", "up", "down"]:
        add(b + f"ffn_{gg}_shexp.weight", t[m + f"shared_experts.{gg}_proj.weight"], "proj")


def warn(msg):
    import sys
    print(f"warning: {msg}", file=sys.stderr)


def add_glm_ernie_metadata(w, c, t, mt):
    """Glm4MoeModel / Ernie4_5MoeModel.set_gguf_parameters, after TextModel's keys."""
    if mt == "glm4_moe":
        if c.get("n_shared_experts") is not None:
            w.add_expert_shared_count(c["n_shared_experts"])
        if c.get("first_k_dense_replace") is not None:
            w.add_leading_dense_block_count(c["first_k_dense_replace"])
        w.add_uint32(Keys.LLM.EXPERT_GATING_FUNC.format(arch=w.arch), GATING["sigmoid"])
        if c.get("routed_scaling_factor") is not None:
            w.add_expert_weights_scale(c["routed_scaling_factor"])
        if c.get("n_group") is not None:
            w.add_expert_group_count(c["n_group"])
        if c.get("topk_group") is not None:
            w.add_expert_group_used_count(c["topk_group"])
        nextn = c.get("num_nextn_predict_layers") or 0
        if nextn:
            warn(f"{nextn} NextN/MTP layer(s) left out (llama.cpp's --no-mtp)")
        else:
            w.add_nextn_predict_layers(0)
        return
    layers = c["num_hidden_layers"]
    start, step = c["moe_layer_start_index"], c["moe_layer_interval"]
    w.add_interleave_moe_layer_step(step)
    w.add_leading_dense_block_count(start)
    shared = c.get("moe_num_shared_experts")
    if shared is not None:
        w.add_expert_shared_count(shared)
        if shared > 0:
            sff = c["intermediate_size"] // c["num_key_value_heads"]
            w.add_expert_shared_feed_forward_length(sff)
            if sff != c["moe_intermediate_size"] * shared:
                warn(f"expert_shared_feed_forward_length {sff} (intermediate_size // num_key_value_heads, as "
                     f"llama.cpp's converter writes it) != the shared experts' {c['moe_intermediate_size'] * shared}: "
                     "llama.cpp refuses the file")
    sparse = [i for i in range(layers) if f"model.layers.{i}.mlp.gate.weight" in t]
    lcpp_graph = [i for i in range(layers) if i >= start and (i + 1) % step == 0]
    lcpp_load = list(range(start, layers))
    if sparse != lcpp_load or sparse != lcpp_graph:
        warn(f"sparse layers {sparse} (moe_layer_start/end_index {start}/{c.get('moe_layer_end_index')}, interval "
             f"{step}): llama.cpp's ernie4_5-moe loads expert tensors for layers {lcpp_load} and routes layers "
             f"{lcpp_graph}, so it refuses this file")


def add_glm_ernie_layer(add, t, c, p, b, mt):
    """The feed-forward part of one GLM-4.5 MoE / ERNIE-4.5 MoE layer (attention: main()'s loop)."""
    m = p + "mlp."
    if m + "gate.weight" not in t:
        for gg in ["gate", "up", "down"]:
            add(b + f"ffn_{gg}.weight", t[m + f"{gg}_proj.weight"], "proj")
        return
    experts = c["n_routed_experts"] if mt == "glm4_moe" else c["moe_num_experts"]
    add(b + "ffn_gate_inp.weight", t[m + "gate.weight"], "small")
    bias = m + ("gate.e_score_correction_bias" if mt == "glm4_moe" else "moe_statics.e_score_correction_bias")
    if bias in t:
        add(b + "exp_probs_b.bias", t[bias], "small")
    for gg in ["gate", "up", "down"]:
        add(b + f"ffn_{gg}_exps.weight",
            np.stack([t[m + f"experts.{e}.{gg}_proj.weight"] for e in range(experts)]), "proj")
    if m + "shared_experts.gate_proj.weight" in t:
        for gg in ["gate", "up", "down"]:
            add(b + f"ffn_{gg}_shexp.weight", t[m + f"shared_experts.{gg}_proj.weight"], "proj")


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
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    experts = c.get("num_experts") or c.get("num_local_experts")
    key_len = val_len = hd
    # llama.cpp's Glm4MoeModel (and transformers' Glm4MoeConfig) default to half the head
    partial = rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.5 if mt == "glm4_moe" else 1.0))
    rope_dim = int(hd * partial)
    if mt == "glm4_moe":
        experts = c["n_routed_experts"]
    elif mt == "ernie4_5_moe":
        experts = c["moe_num_experts"]
        if c.get("use_bias"):
            raise SystemExit("ernie4_5_moe with use_bias: llama.cpp's ernie4_5-moe has no MLP biases")
    deepseek = mt in ("deepseek_v2", "deepseek_v3")
    if deepseek:
        deepseek_checks(c, rope)
        # llama.cpp stores MLA as MQA over the latent: one kv head whose key is
        # [latent (kv_lora_rank) | k_rope] and whose value is the latent
        kv = 1
        key_len = c["kv_lora_rank"] + c["qk_rope_head_dim"]
        val_len = c["kv_lora_rank"]
        rope_dim = c["qk_rope_head_dim"]
        experts = c["n_routed_experts"]
    w.add_name(a.model_dir.name)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(key_len)
    w.add_value_length(val_len)
    w.add_rope_freq_base(rope.get("rope_theta", c.get("rope_theta", 10000.0)))
    w.add_rope_dimension_count(rope_dim)
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_vocab_size(c["vocab_size"])
    w.add_expert_count(experts)
    w.add_expert_used_count(c["moe_k"] if mt == "ernie4_5_moe" else c["num_experts_per_tok"])
    if "moe_intermediate_size" in c:
        w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    # RoPE scaling as llama.cpp's TextModel writes it (llama3 needs rope_freqs; not here)
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type == "linear" and rope.get("factor") is not None:
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif rope_type == "yarn" and rope.get("factor") is not None:
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope.get("original_max_position_embeddings",
                                                 c.get("original_max_position_embeddings")))
        if rope.get("extrapolation_factor") is not None:
            w.add_rope_scaling_yarn_ext_factor(rope["extrapolation_factor"])
        attn_factor = rope.get("attention_factor", rope.get("attn_factor"))
        if attn_factor is not None:
            w.add_rope_scaling_yarn_attn_factor(attn_factor)
        if rope.get("beta_fast") is not None:
            w.add_rope_scaling_yarn_beta_fast(rope["beta_fast"])
        if rope.get("beta_slow") is not None:
            w.add_rope_scaling_yarn_beta_slow(rope["beta_slow"])
    if mt == "gpt_oss":
        # llama.cpp hard-codes gpt-oss's clamped SwiGLU (alpha 1.702, limit 7.0): a file
        # cannot say otherwise, so refuse a checkpoint that does.
        for key, want in [("swiglu_alpha", 1.702), ("swiglu_limit", 7.0)]:
            if abs(c.get(key, want) - want) > 1e-6:
                raise SystemExit(f"gpt-oss {key} {c[key]} != {want}: llama.cpp's gpt-oss has it fixed")
        w.add_sliding_window(c["sliding_window"])
        w.add_expert_feed_forward_length(c["intermediate_size"])
        # llama.cpp: layer il slides iff il % 2 == 0 unless sliding_window_pattern (one bool
        # per layer) says otherwise; its converter writes none, so write it only when needed.
        swa = [t == "sliding_attention" for t in c.get("layer_types") or []]
        if swa and swa != [i % 2 == 0 for i in range(layers)]:
            w.add_array(f"{arch}.attention.sliding_window_pattern", swa)
    if c.get("shared_expert_intermediate_size"):
        w.add_expert_shared_feed_forward_length(c["shared_expert_intermediate_size"])
    if "norm_topk_prob" in c and (c["norm_topk_prob"] or not deepseek):  # DeepseekV2Model: only when true
        w.add_expert_weights_norm(bool(c["norm_topk_prob"]))
    if deepseek:
        add_deepseek_metadata(w, c, rope, mt)
    if mt in ("glm4_moe", "ernie4_5_moe"):
        add_glm_ernie_metadata(w, c, t, mt)
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
        post = "post_attention_norm" if mt in ("gpt_oss", "glm4_moe") else "ffn_norm"
        add(b + f"{post}.weight", t[p + "post_attention_layernorm.weight"], "small")
        if deepseek:
            add_deepseek_layer(add, t, c, p, b, i)
            continue
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
        if p + "self_attn.o_proj.bias" in t:
            add(b + "attn_output.bias", t[p + "self_attn.o_proj.bias"], "small")
        if p + "self_attn.sinks" in t:
            add(b + "attn_sinks.weight", t[p + "self_attn.sinks"], "small")
        for x in "qk":
            if p + f"self_attn.{x}_norm.weight" in t:
                add(b + f"attn_{x}_norm.weight", t[p + f"self_attn.{x}_norm.weight"], "small")
        if mt in ("glm4_moe", "ernie4_5_moe"):
            add_glm_ernie_layer(add, t, c, p, b, mt)
        elif mt == "mixtral":
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
        elif mt == "gpt_oss":
            m = p + "mlp."
            add(b + "ffn_gate_inp.weight", t[m + "router.weight"], "small")
            add(b + "ffn_gate_inp.bias", t[m + "router.bias"], "small")
            x = m + "experts."
            if x + "gate_up_proj_blocks" in t:  # MXFP4: rows are outputs, gate/up interleaved
                gu, gus = t[x + "gate_up_proj_blocks"], t[x + "gate_up_proj_scales"]
                for name, blocks, scales in [
                    ("ffn_gate_exps", gu[:, 0::2], gus[:, 0::2]),
                    ("ffn_up_exps", gu[:, 1::2], gus[:, 1::2]),
                    ("ffn_down_exps", t[x + "down_proj_blocks"], t[x + "down_proj_scales"]),
                ]:
                    w.add_tensor(b + f"{name}.weight", mxfp4_repack(blocks, scales), raw_dtype=T.MXFP4)
            else:  # [E, in, out] -> [E, out, in]
                gu = t[x + "gate_up_proj"].transpose(0, 2, 1)
                add(b + "ffn_gate_exps.weight", np.ascontiguousarray(gu[:, 0::2]), "proj")
                add(b + "ffn_up_exps.weight", np.ascontiguousarray(gu[:, 1::2]), "proj")
                add(b + "ffn_down_exps.weight", np.ascontiguousarray(t[x + "down_proj"].transpose(0, 2, 1)), "proj")
            gub = t[x + "gate_up_proj_bias"]
            add(b + "ffn_gate_exps.bias", gub[:, 0::2], "small")
            add(b + "ffn_up_exps.bias", gub[:, 1::2], "small")
            add(b + "ffn_down_exps.bias", t[x + "down_proj_bias"], "small")
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
