#!/usr/bin/env python3
"""Oracle fixtures for webmoe's tests, made with Hugging Face transformers.

For each supported family this builds a tiny random MoE causal LM from a config
(no download), saves it with `save_pretrained` (config.json + model.safetensors,
the layout real checkpoints have) plus a small byte-level BPE tokenizer.json, and
records what transformers computes:

  tests/fixtures/models/<family>/           the model directory
  tests/fixtures/models/<family>/expected.json
      prompt_text, prompt_ids, greedy_ids (16 greedy tokens, no EOS stop),
      last_logits (all logits of the last prompt position), min_greedy_margin
  tests/fixtures/moe/<family>.safetensors   layer 0's sparse MoE block:
      hidden [T, d] (its input), router_logits [T, E], topk_ids [T, k] (int32),
      topk_weights [T, k], output [T, d]; metadata: family, layer, model dir

Random weights are drawn larger than HF's init (normal * 0.1 to 0.3) so routing
and logits are far from uniform. A seed is kept only when every greedy step's
top-1 logit beats the runner-up by at least MIN_MARGIN: near-ties would make a
token comparison a coin toss, not a test. Mixtral and gpt-oss are saved in bf16,
the others in f32; expected values are computed from the saved (rounded) weights.

gpt-oss (GptOssForCausalLM), families `gpt_oss` (bf16) and `gpt_oss_mxfp4` (experts MXFP4,
the rest bf16), 3 layers, d 64, 4 heads / 2 kv heads, head_dim 16, 8 experts; gpt_oss: top-2,
intermediate 32; gpt_oss_mxfp4: top-3, intermediate 64 (two MXFP4 blocks per row in both
projections). What they exercise, as transformers 5.24's modeling_gpt_oss.py computes it:
  - layer_types sliding/full/sliding, sliding_window 6 < the 16-token prompt: a sliding layer's
    query i sees keys j with i - 6 < j <= i (6 keys, itself included); full layers are causal.
  - sinks [heads]: one learned logit per head joins each query row's softmax (after the scaled
    q.k scores and the mask) and is dropped afterwards, so the row's weights sum to below 1.
  - attention_bias: q/k/v projections with biases (added before RoPE), o_proj with a bias.
  - YaRN (rope_parameters: factor 4, original_max_position_embeddings 64, beta_fast 32,
    beta_slow 1, truncate false, rope_theta 150000; max_position_embeddings 256): inv_freq blends
    extrapolated and 1/factor-interpolated frequencies over an unrounded ramp, and cos/sin are
    multiplied by 0.1 * ln(factor) + 1; rotation by halves (rotate_half layout).
  - router: logits = x @ router.weight.T + router.bias; top-k of the logits; softmax over the k
    (no softmax over all experts, no renormalization).
  - experts (checkpoint layout, not nn.Linear's): gate_up_proj [E, d, 2f] and down_proj [E, f, d]
    multiply from the right (x @ W); gate_up_proj's output columns interleave gate (even) and up
    (odd); gate_up_proj_bias [E, 2f] is added before the split, down_proj_bias [E, d] before the
    routing weight: gate = min(gate, 7), up = clamp(up, -7, 7),
    y = ((up + 1) * gate * sigmoid(1.702 * gate)) @ down_proj + down_proj_bias (swiglu_limit 7.0,
    swiglu_alpha 1.702). Weights are drawn larger for these families (GPT_OSS_STD) so that some
    pre-activations hit the clamp: expected.json's swiglu_clamped_fraction gives the share of
    clamped gate and up values over all layers' routed (token, expert) pairs on the prompt.
  - MXFP4 (gpt_oss_mxfp4): each expert weight W [E, in, out] is stored as
    <name>_blocks uint8 [E, out, in/32, 16] and <name>_scales uint8 [E, out, in/32] (gate_up_proj:
    out = 2f rows, still interleaved gate/up, in = d; down_proj: out = d, in = f); element 2i of a
    32-block is byte i's low nibble, 2i+1 its high nibble; a nibble is e2m1 (bit 3 the sign, then
    0, 0.5, 1, 1.5, 2, 3, 4, 6); value = e2m1 * 2^(scale - 127). config.json carries
    gpt-oss-20b's quantization_config. The random bf16 weights are quantized here
    (mxfp4_quantize: block exponent ceil(log2(amax / 6)), so nothing saturates; nearest e2m1,
    ties to the even code) and the expected values come from transformers loading the directory
    back (Mxfp4Config(dequantize=True), its convert_moe_packed_tensors), checked tensor by tensor
    against our own decoding and the in-memory model.
  expected.json also has sliding_window; the moe capture is as for the others (topk_ids in the
  order of descending router logit, topk_weights the softmax over those k logits).

DeepSeek-V2 and DeepSeek-V3 (DeepseekV2ForCausalLM / DeepseekV3ForCausalLM), families
`deepseek_v2` (f32) and `deepseek_v3` (bf16, but each e_score_correction_bias kept f32 as
transformers' _keep_in_fp32_modules_strict wants it), 3 layers, d 64, 4 heads (num_key_value_heads
= heads, as MLA needs), multi-head latent attention (MLA) with kv_lora_rank 32,
qk_nope_head_dim 16, qk_rope_head_dim 8 (config.head_dim = 8), v_head_dim 12 (V2) / 20 (V3);
first_k_dense_replace 1: layer 0 is a dense SwiGLU MLP (intermediate_size 96), layers 1-2 MoE with
shared experts. V2: no q compression (q_proj), 8 experts in 4 groups, top-3,
group_limited_greedy (keep 2 groups), softmax scores, routed_scaling_factor 2.0, 2 shared experts
(one SwiGLU of 2 * 32), YaRN mscale 1.0 / mscale_all_dim 0.707 (so both the cos/sin attention factor
and the softmax scale differ from 1). V3: q_lora_rank 24 (q_a_proj, q_a_layernorm, q_b_proj),
16 experts in 4 groups, top-4, noaux_tc (sigmoid scores plus a random e_score_correction_bias
choose, the unbiased scores weigh, normalized, times routed_scaling_factor 2.5), 1 shared expert
(SwiGLU of 24), YaRN mscale 1.0 / mscale_all_dim 1.0. The exact semantics, as confirmed in
transformers 5.24's modeling_deepseek_v2.py / modeling_deepseek_v3.py / modeling_rope_utils.py,
are listed in DEEPSEEK_NOTES and copied into expected.json ("notes"), together with the MLA dims
("mla"), the softmax scale, the YaRN attention factor and inv_freq, and routing statistics
(how many of the prompt's tokens the group limit / the correction bias changed the choice of).
Routed experts are saved per expert (mlp.experts.N.{gate,up,down}_proj.weight, transformers'
qwen2_moe conversion); the saved directory is loaded back by transformers and checked tensor by
tensor (buffers included), and the expected values come from the loaded-back model, whose every
layer's attention, dense MLP and MoE block are checked against replicas written from the notes
(deepseek_attention, deepseek_rope, deepseek_route, deepseek_experts). Their MoE
capture is layer 1's (the first sparse layer; metadata "layer": "1"): output is the whole
block's (routed + shared experts; routed_output and shared_output are there too), topk_ids are
in descending order of the choosing score (V2: the masked softmax, V3: the masked biased sigmoid),
topk_weights aligned with them and already multiplied by routed_scaling_factor (transformers uses
topk(sorted=False); the replica's choice and weights are checked against transformers' router as
sets, and the block output against the block's).

GLM-4-MoE and ERNIE-4.5-MoE (Glm4MoeForCausalLM / Ernie4_5_MoeForCausalLM), families `glm4_moe`
(bf16, but mlp.gate.weight and e_score_correction_bias kept f32, as transformers'
_keep_in_fp32_modules_strict wants them) and `ernie4_5_moe` (f32), d 64, 4 heads / 2 kv heads.
glm4_moe (GLM-4.5 / GLM-4.5-Air): 3 layers, head_dim 24 (!= 64 / 4), q/k/v biases, per-head q/k
RMSNorm before RoPE (use_qk_norm), partial rotary (partial_rotary_factor 0.5: the first 12 dims of
each head rotate by halves, rope_theta 1e6), first_k_dense_replace 1 (layer 0 dense, intermediate
96), 16 experts in 4 groups (topk_group 2), top-4, sigmoid scores + a random
e_score_correction_bias choose, the unbiased scores weigh, normalized, times routed_scaling_factor
2.5, 1 shared expert (SwiGLU of 32), no MTP layer. ernie4_5_moe (ERNIE-4.5-21B-A3B): 4 layers, MoE
on layers moe_layer_start_index 1 .. moe_layer_end_index 2 (interval 1; layers 0 and 3 dense,
intermediate 96), 12 experts, top-3, softmax probabilities + a random moe_statics
e_score_correction_bias choose, the unbiased probabilities weigh, divided by max(sum, moe_norm_min),
2 shared experts (one SwiGLU of 48), interleaved RoPE over the whole head (rope_theta 5e5), tied
embeddings (drawn with std 0.3: a larger tied embedding makes greedy decoding repeat its input),
use_bias false (as the real checkpoint). For both, a seed must also give 12 distinct greedy tokens.
The semantics, as confirmed in transformers 5.24's modeling_glm4_moe.py / modeling_ernie4_5_moe.py,
are listed in GE_NOTES and copied into expected.json ("notes"), with head_dim, the RoPE inv_freq /
rotary_dim / style, the dense and MoE layers and routing statistics; every layer's attention,
dense MLP and MoE block of the loaded-back model is checked against replicas written from the notes
(ge_attention, ge_route, ge_experts, ge_mlp), and model.safetensors tensor by tensor (experts per
expert, router and bias dtypes, no lm_head when tied). The MoE capture is the first sparse layer's
(metadata "layer": "1"), laid out as DeepSeek's (topk_ids in descending order of the choosing
score; GLM's weights include routed_scaling_factor).

Run from the repository root (CPU only, about a minute), optionally naming the families:
    pip install torch transformers safetensors tokenizers
    python3 scripts/gen_fixtures.py [family ...]
Made with transformers 5.23.0 (gpt-oss, DeepSeek, GLM-4-MoE, ERNIE-4.5-MoE: 5.24.0) and torch (CPU) as printed at the end.
"""

import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT_MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
OUT_MOE = os.path.join(ROOT, "tests", "fixtures", "moe")
VOCAB = 384
PROMPT = "The quick brown fox jumps over the lazy dog. Experts route"
GREEDY_STEPS = 16
MIN_MARGIN = 0.05

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Mixture of experts models route each token to a few experts.",
    "A router scores every expert and keeps the best ones for each token.",
    "WebGPU runs compute shaders in the browser; Vulkan runs them natively.",
    "Experts route tokens, tokens choose experts, and the layer adds their outputs.",
] * 20

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


# gpt-oss: sliding/full layers with a window shorter than the prompt (16 tokens), YaRN with
# gpt-oss's beta_fast/beta_slow/truncate, attention biases, sinks, biased router and experts.
GPT_OSS = dict(
    **{**COMMON, "num_hidden_layers": 3}, head_dim=16, num_local_experts=8,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"], sliding_window=6,
    attention_bias=True, swiglu_alpha=1.702, swiglu_limit=7.0,
    rope_parameters=dict(
        rope_type="yarn", rope_theta=150000.0, factor=4.0, original_max_position_embeddings=64,
        beta_fast=32.0, beta_slow=1.0, truncate=False,
    ),
)

# DeepSeek-V2/V3: MLA (latent KV, decoupled RoPE dims), layer 0 dense, group-limited routing,
# shared experts, YaRN with mscale / mscale_all_dim. Heads = kv heads (MLA expands the latent to
# every head; transformers' repeat_kv would break with fewer).
DEEPSEEK = dict(
    **{**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 4}, intermediate_size=96,
    first_k_dense_replace=1, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
    n_group=4, topk_group=2, hidden_act="silu", attention_bias=False,
)


# GLM-4-MoE (GLM-4.5 / GLM-4.5-Air's architecture): head_dim 24 != hidden / heads, partial rotary
# (half of each head), q/k RMSNorm per head, q/k/v biases, layer 0 dense, a shared expert, sigmoid
# routing with a correction bias and a group limit, routed_scaling_factor != 1. No MTP layer.
GLM4_MOE = dict(
    **{**COMMON, "num_hidden_layers": 3, "rms_norm_eps": 1e-5}, head_dim=24, use_qk_norm=True,
    attention_bias=True, intermediate_size=96, moe_intermediate_size=32, n_routed_experts=16,
    num_experts_per_tok=4, n_shared_experts=1, n_group=4, topk_group=2, first_k_dense_replace=1,
    norm_topk_prob=True, routed_scaling_factor=2.5, num_mtp_layers=0, hidden_act="silu",
    rope_parameters=dict(rope_type="default", rope_theta=1000000.0, partial_rotary_factor=0.5),
)

# ERNIE-4.5-MoE (ERNIE-4.5-21B-A3B's architecture): tied embeddings, no biases (use_bias false, as
# the real checkpoints), 4 layers of which moe_layer_start_index 1 .. moe_layer_end_index 2 are MoE
# (layers 0 and 3 dense), 2 shared experts, softmax routing with a correction bias choosing,
# interleaved (GLM-style) RoPE over the whole head.
ERNIE4_5_MOE = dict(
    **{**COMMON, "num_hidden_layers": 4, "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
    intermediate_size=96, moe_intermediate_size=24, moe_num_experts=12, moe_k=3,
    moe_num_shared_experts=2, moe_layer_start_index=1, moe_layer_interval=1, moe_layer_end_index=2,
    use_bias=False, hidden_act="silu", rope_parameters=dict(rope_type="default", rope_theta=500000.0),
)


def deepseek_yarn(mscale, mscale_all_dim):
    return dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64,
        beta_fast=32.0, beta_slow=1.0, mscale=mscale, mscale_all_dim=mscale_all_dim,
    )


def configs():
    """One config per family, each with its distinguishing features on."""
    return {
        "mixtral": transformers.MixtralConfig(
            **COMMON, intermediate_size=48, num_local_experts=8, num_experts_per_tok=2
        ),
        "qwen2_moe": transformers.Qwen2MoeConfig(
            **COMMON, intermediate_size=96, moe_intermediate_size=32,
            shared_expert_intermediate_size=80, num_experts=8, num_experts_per_tok=3,
            norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1],
        ),
        "qwen3_moe": transformers.Qwen3MoeConfig(
            **{**COMMON, "num_hidden_layers": 3}, intermediate_size=96, moe_intermediate_size=40,
            num_experts=10, num_experts_per_tok=4, norm_topk_prob=True, head_dim=24,
        ),
        "olmoe": transformers.OlmoeConfig(
            **COMMON, intermediate_size=40, num_experts=12, num_experts_per_tok=4,
            norm_topk_prob=False, clip_qkv=2.5,
        ),
        "granitemoe": transformers.GraniteMoeConfig(
            **{**COMMON, "tie_word_embeddings": True}, intermediate_size=48,
            num_local_experts=8, num_experts_per_tok=2, embedding_multiplier=1.5,
            residual_multiplier=0.8, attention_multiplier=0.25, logits_scaling=1.5,
        ),
        "gpt_oss": transformers.GptOssConfig(**GPT_OSS, intermediate_size=32, num_experts_per_tok=2),
        "gpt_oss_mxfp4": transformers.GptOssConfig(**GPT_OSS, intermediate_size=64, num_experts_per_tok=3),
        "deepseek_v2": transformers.DeepseekV2Config(
            **DEEPSEEK, q_lora_rank=None, v_head_dim=12, n_routed_experts=8, n_shared_experts=2,
            moe_intermediate_size=32, num_experts_per_tok=3, topk_method="group_limited_greedy",
            routed_scaling_factor=2.0, norm_topk_prob=False,
            rope_parameters=deepseek_yarn(mscale=1.0, mscale_all_dim=0.707),
        ),
        "deepseek_v3": transformers.DeepseekV3Config(
            **DEEPSEEK, q_lora_rank=24, v_head_dim=20, n_routed_experts=16, n_shared_experts=1,
            moe_intermediate_size=24, num_experts_per_tok=4, routed_scaling_factor=2.5,
            norm_topk_prob=True, rope_interleave=True, num_mtp_layers=0,
            rope_parameters=deepseek_yarn(mscale=1.0, mscale_all_dim=1.0),
        ),
        "glm4_moe": transformers.Glm4MoeConfig(**GLM4_MOE),
        "ernie4_5_moe": transformers.Ernie4_5_MoeConfig(**ERNIE4_5_MOE),
    }


SAVE_DTYPE = {
    "mixtral": torch.bfloat16, "gpt_oss": torch.bfloat16, "gpt_oss_mxfp4": torch.bfloat16,
    "deepseek_v3": torch.bfloat16, "glm4_moe": torch.bfloat16,
}
# Buffers and parameters (by name suffix) kept f32 in a bf16 checkpoint, as transformers keeps them
# (_keep_in_fp32_modules_strict): neither rounded to bf16 nor saved as bf16.
KEEP_F32 = {
    "deepseek_v3": ("e_score_correction_bias",),
    "glm4_moe": ("mlp.gate.e_score_correction_bias", "mlp.gate.weight"),
}
# Families whose experts are stored as MXFP4 blocks/scales (the rest of the model bf16).
MXFP4 = {"gpt_oss_mxfp4"}
# Per-family standard deviations overriding randomize()'s defaults (by parameter-name suffix).
# gpt-oss: gate_up pre-activations reach the SwiGLU clamp (7.0) for a few percent of values,
# sinks take a visible share of attention, biases shift routing and outputs.
GPT_OSS_STD = {
    "self_attn.sinks": 1.5,
    "mlp.router.bias": 0.5,
    "experts.gate_up_proj": 0.4,
    "experts.gate_up_proj_bias": 0.5,
    "experts.down_proj": 0.15,
    "experts.down_proj_bias": 0.3,
}
# ERNIE's correction bias is a (frozen) parameter added to softmax probabilities (about 1/12 each
# here): small, so that it changes some tokens' choice without dominating the scores.
# Its tied embedding is drawn smaller (std 0.3) than randomize()'s 1.0: with a tied lm_head a large
# embedding makes every greedy step repeat its input token (see granitemoe's fixture).
ERNIE_STD = {"moe_statics.e_score_correction_bias": 0.04, "embed_tokens.weight": 0.3}
RANDOM_STD = {"gpt_oss": GPT_OSS_STD, "gpt_oss_mxfp4": GPT_OSS_STD, "ernie4_5_moe": ERNIE_STD}


def train_tokenizer(path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(path)
    return tok


def randomize(model, seed, stds=None):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = next((v for k, v in (stds or {}).items() if name.endswith(k)), None)
            if std is not None:
                p.copy_(std * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def moe_block(layer):
    return getattr(layer, "block_sparse_moe", None) or layer.mlp


def router_of(block):
    """The routing module (GraniteMoE calls it `router`, the others `gate`)."""
    router = getattr(block, "router", None) or block.gate
    weight = router.weight if hasattr(router, "weight") else router.layer.weight
    return router, weight


def greedy(model, ids):
    """GREEDY_STEPS greedy tokens (no EOS stop) and the smallest top-1 margin."""
    seq = list(ids)
    margins = []
    for _ in range(GREEDY_STEPS):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1]
        top = torch.topk(logits, 2)
        margins.append(float(top.values[0] - top.values[1]))
        seq.append(int(top.indices[0]))
    return seq[len(ids):], min(margins)


def capture_moe(model, family, cfg, ids):
    """Layer 0's MoE block: input, router logits, routing, output."""
    block = moe_block(model.model.layers[0])
    seen = {}

    def hook(_module, args, output):
        seen["x"] = args[0].detach().reshape(-1, cfg.hidden_size).clone()
        out = output[0] if isinstance(output, tuple) else output
        seen["y"] = out.detach().reshape(-1, cfg.hidden_size).clone()

    handle = block.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.tensor([ids]))
    handle.remove()
    x = seen["x"]
    router, weight = router_of(block)
    logits = x @ weight.T
    k = cfg.num_experts_per_tok
    if family.startswith("gpt_oss"):
        # gpt-oss: biased linear router, top-k of the logits, softmax over the k chosen.
        logits = logits + router.bias
        top, idx = torch.topk(logits, k, dim=-1)
        weights = torch.softmax(top, dim=-1)
        want = gpt_oss_experts(block.experts, x, idx, weights)[0]
        assert torch.allclose(want, seen["y"], rtol=1e-5, atol=1e-4), f"{family}: experts replica disagrees"
    else:
        probs = torch.softmax(logits.float(), dim=-1)
        weights, idx = torch.topk(probs, k, dim=-1)
    if family in ("mixtral", "granitemoe") or getattr(cfg, "norm_topk_prob", False):
        weights = weights / weights.sum(dim=-1, keepdim=True)
    routed = router(x)
    if isinstance(routed, tuple) and len(routed) == 3:
        hf_logits, hf_weights, hf_idx = routed
        assert torch.equal(hf_idx, idx), f"{family}: routing replica disagrees with HF"
        assert torch.allclose(hf_weights, weights, atol=1e-6), f"{family}: weights replica disagrees"
        assert torch.allclose(hf_logits, logits, atol=1e-5)
    return {
        "hidden": x.contiguous(),
        "router_logits": logits.contiguous(),
        "topk_ids": idx.to(torch.int32).contiguous(),
        "topk_weights": weights.contiguous(),
        "output": seen["y"].contiguous(),
    }


def gpt_oss_experts(experts, x, idx, weights):
    """GptOssExperts by hand: interleaved gate/up columns, clamped SwiGLU, biases, routing weights.

    Returns the block output [T, d] and, over the routed (token, expert) pairs, how many gate
    pre-activations were clamped (> limit), how many up ones (|up| > limit), and how many of each."""
    out = torch.zeros_like(x)
    gate_hits = up_hits = count = 0
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            gate_up = x[t] @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]
            gate, up = gate_up[0::2], gate_up[1::2]
            gate_hits += int((gate > experts.limit).sum())
            up_hits += int((up.abs() > experts.limit).sum())
            count += gate.numel()
            gate = gate.clamp(max=experts.limit)
            up = up.clamp(min=-experts.limit, max=experts.limit)
            act = (up + 1) * gate * torch.sigmoid(experts.alpha * gate)
            out[t] += weights[t, j] * (act @ experts.down_proj[e] + experts.down_proj_bias[e])
    return out, gate_hits, up_hits, count


def gpt_oss_clamp_stats(model, ids):
    """Over every layer's routed pairs on the prompt: the fractions of clamped gate and up values."""
    stats = [0, 0, 0]

    def hook(module, args, _output):
        x = args[0].detach().reshape(-1, module.router.hidden_dim)
        _, weights, idx = module.router(x)
        _, gate_hits, up_hits, count = gpt_oss_experts(module.experts, x, idx, weights)
        for i, v in enumerate((gate_hits, up_hits, count)):
            stats[i] += v

    handles = [layer.mlp.register_forward_hook(hook) for layer in model.model.layers]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in handles:
        h.remove()
    gate_hits, up_hits, count = stats
    return gate_hits / count, up_hits / count


# MXFP4 (OCP microscaling FP4) as transformers reads it (integrations/mxfp4.py,
# convert_moe_packed_tensors): a weight W of shape [E, in, out] (GptOssExperts' layout) is stored
# transposed, [E, out, in], cut into blocks of 32 along `in`:
#   <name>_blocks uint8 [E, out, in/32, 16]: byte i of a block holds element 2i in its low nibble
#       and element 2i+1 in its high nibble; a nibble is e2m1 (sign bit 3, then FP4_VALUES[0..7] =
#       0, 0.5, 1, 1.5, 2, 3, 4, 6)
#   <name>_scales uint8 [E, out, in/32]: e8m0, element = FP4 value * 2^(scale - 127)
FP4_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


def mxfp4_quantize(w):
    """[E, in, out] float -> (blocks, scales) as above.

    Rounding: the block exponent is the smallest that fits the block's largest magnitude,
    e = ceil(log2(amax / 6)) (so nothing saturates; the same rule as the OpenAI/triton kernels'
    round-up scale), then each w / 2^e goes to the nearest e2m1 value, ties to the even code."""
    wt = w.detach().double().transpose(1, 2).contiguous()  # [E, out, in]
    n_e, n_out, n_in = wt.shape
    assert n_in % 32 == 0, f"MXFP4 needs the input dim ({n_in}) to be a multiple of 32"
    blk = wt.reshape(n_e, n_out, n_in // 32, 32)
    amax = blk.abs().amax(dim=-1).clamp(min=2.0**-126)
    mant, expo = torch.frexp(amax / 6.0)  # amax / 6 = mant * 2^expo, mant in [0.5, 1)
    e = torch.where(mant == 0.5, expo - 1, expo).clamp(-127, 127)
    scaled = blk / torch.ldexp(torch.ones_like(amax), e)[..., None]
    assert scaled.abs().max() <= 6.0
    dist = (scaled.abs()[..., None] - FP4_MAGNITUDES).abs()
    best = dist == dist.amin(dim=-1, keepdim=True)
    odd = torch.arange(8) % 2 == 1
    code = torch.where(best, odd.to(torch.int64), 100).argmin(dim=-1)  # ties: the even code
    code = code | torch.where(scaled < 0, 8, 0)  # sign bit (no negative zero: -0 -> 0)
    code = torch.where(code == 8, 0, code).to(torch.uint8)
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)
    scales = (e + 127).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


def mxfp4_dequantize(blocks, scales):
    """(blocks, scales) -> [E, in, out] float32, written from the layout above (not HF's code)."""
    lut = torch.cat([FP4_MAGNITUDES, -FP4_MAGNITUDES]).float()
    lo, hi = lut[(blocks & 0x0F).long()], lut[(blocks >> 4).long()]
    vals = torch.stack([lo, hi], dim=-1).flatten(-2)  # element 2i low nibble, 2i+1 high
    vals = vals * torch.exp2(scales.float() - 127.0)[..., None]
    n_e, n_out = blocks.shape[:2]
    return vals.reshape(n_e, n_out, -1).transpose(1, 2).contiguous()


def mxfp4_roundtrip(model):
    """Replaces every expert weight with its MXFP4 value; returns the packed tensors by name."""
    packed = {}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for proj in ("gate_up_proj", "down_proj"):
                p = getattr(layer.mlp.experts, proj)
                blocks, scales = mxfp4_quantize(p)
                p.copy_(mxfp4_dequantize(blocks, scales))
                name = f"model.layers.{i}.mlp.experts.{proj}"
                packed[f"{name}_blocks"], packed[f"{name}_scales"] = blocks, scales
    return packed


def write_mxfp4_checkpoint(out, packed):
    """Swaps save_pretrained's bf16 expert weights for MXFP4 blocks/scales and marks config.json
    with gpt-oss-20b's quantization_config."""
    path = os.path.join(out, "model.safetensors")
    tensors = load_file(path)
    for name in list(tensors):
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            del tensors[name]
    tensors.update(packed)
    save_file(tensors, path, metadata={"format": "pt"})
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = {
        "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head",
        ],
        "quant_method": "mxfp4",
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def reload_checked(family, out, model, packed):
    """The saved directory loaded back by transformers (f32; MXFP4 experts dequantized by its
    Mxfp4 integration), checked parameter by parameter against the model the fixture was made from
    and, for MXFP4, against our own decoding of the blocks."""
    kwargs = {}
    if packed:
        kwargs["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, output_loading_info=True, **kwargs
    )
    loaded.eval()
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    want = dict(model.named_parameters())
    got = dict(loaded.named_parameters())
    assert got.keys() == want.keys(), f"{family}: parameters differ after reload"
    for name, p in got.items():
        assert p.dtype == torch.float32, f"{family}: {name} is {p.dtype}"
        assert torch.equal(p, want[name].float()), f"{family}: {name} differs after reload"
    for name in packed:
        if name.endswith("_blocks"):
            base = name[: -len("_blocks")]
            ours = mxfp4_dequantize(packed[name], packed[f"{base}_scales"])
            assert torch.equal(got[base], ours), f"{family}: HF's MXFP4 decoding of {base} differs"
    return loaded


# DeepSeek-V2 / V3, as transformers 5.24 computes them (modeling_deepseek_v2.py,
# modeling_deepseek_v3.py, modeling_rope_utils.py _compute_yarn_parameters). Each statement is
# checked by a replica below (attention, RoPE/YaRN, routing, experts, checkpoint layout).
DEEPSEEK_NOTES_COMMON = [
    "config.head_dim is qk_rope_head_dim (DeepseekV2Config/V3Config.__post_init__ sets it); "
    "qk_head_dim = qk_nope_head_dim + qk_rope_head_dim; num_key_value_heads = num_attention_heads.",
    "RMSNorm: weight * x * rsqrt(mean(x^2) + eps), computed in f32; input_layernorm, "
    "post_attention_layernorm and model.norm use config.rms_norm_eps, q_a_layernorm and "
    "kv_a_layernorm are built without eps, i.e. always 1e-6.",
    "MLA kv: c = x @ kv_a_proj_with_mqa.weight.T, shape [T, kv_lora_rank + qk_rope_head_dim]; "
    "c[:, :kv_lora_rank] is the latent (compressed kv FIRST), c[:, kv_lora_rank:] is k_rope (LAST). "
    "The latent goes through kv_a_layernorm, k_rope does not (no norm); k_rope is a single head "
    "shared by (broadcast to) every attention head.",
    "MLA kv_b_proj.weight [H * (qk_nope_head_dim + v_head_dim), kv_lora_rank]: "
    "kv = norm(latent) @ kv_b_proj.weight.T viewed as [T, H, qk_nope_head_dim + v_head_dim]: "
    "per head h, rows h*(nope+v) .. h*(nope+v)+nope-1 are that head's k_nope, the next v_head_dim "
    "rows its value (head-major, k_nope then v within each head; not all k then all v).",
    "MLA keys/queries: per head, q = [q_nope (qk_nope_head_dim) | q_rope (qk_rope_head_dim)] "
    "(the q projection's output viewed [T, H, qk_head_dim], nope first); key = [k_nope_h | "
    "rope(k_rope)]; score = q . key * softmax_scale, causal mask, softmax in f32, "
    "out_h = probs @ v_h; o_proj input is [T, H * v_head_dim], head-major.",
    "RoPE on the rope dims only, INTERLEAVED pairs: dims (2i, 2i+1) of q_rope / k_rope rotate by "
    "angle pos * inv_freq[i]: (a, b) -> (a cos - b sin, b cos + a sin), with cos and sin both "
    "multiplied by the YaRN attention_factor (so q_rope and k_rope each get the factor once, "
    "their dot product attention_factor^2). Positions are 0-based token positions.",
    "YaRN inv_freq (rope dim = qk_rope_head_dim): pos_freqs = theta^(2i/dim); "
    "low = max(floor(dim*ln(orig/(beta_fast*2pi))/(2 ln theta)), 0), "
    "high = min(ceil(dim*ln(orig/(beta_slow*2pi))/(2 ln theta)), dim-1) (truncate defaults to "
    "true: floor/ceil), ramp_i = clamp((i - low)/(high - low), 0, 1) for i < dim/2 (high += 0.001 "
    "if equal), inv_freq = (1/(factor*pos_freqs)) * ramp + (1/pos_freqs) * (1 - ramp).",
    "YaRN attention_factor (multiplies cos and sin) = get_mscale(factor, mscale) / "
    "get_mscale(factor, mscale_all_dim) when mscale and mscale_all_dim are both set and non-zero, "
    "else get_mscale(factor) (an explicit attention_factor in rope_parameters wins); "
    "get_mscale(s, m) = 0.1 * m * ln(s) + 1 (1 if s <= 1).",
    "softmax_scale = qk_head_dim^-0.5 * get_mscale(factor, mscale_all_dim)^2 whenever rope_type is "
    "not default and mscale_all_dim is non-zero (mscale plays no part here; uses rope_parameters "
    "factor, regardless of sequence length).",
    "Layers 0 .. first_k_dense_replace-1 are dense: down(silu(gate_proj x) * up_proj x) with "
    "intermediate_size; every later layer is MoE (transformers has no moe_layer_freq).",
    "MoE block output = routed + shared: sum_j w_j * down_e(silu(gate_e x) * up_e x) over the "
    "chosen experts, plus shared_experts(x) = one SwiGLU MLP of moe_intermediate_size * "
    "n_shared_experts, unweighted (no shared-expert gate).",
    "Experts in transformers are fused (gate_up_proj [E, 2f, d], gate the first f rows, "
    "down_proj [E, d, f]) but the checkpoint stores them per expert: "
    "mlp.experts.N.gate_proj.weight [f, d], up_proj.weight [f, d], down_proj.weight [d, f] "
    "(the qwen2_moe weight conversion, applied in reverse by save_pretrained).",
]
DEEPSEEK_NOTES = {
    "deepseek_v2": DEEPSEEK_NOTES_COMMON + [
        "q without q_lora_rank: q = x @ q_proj.weight.T, [T, H * qk_head_dim].",
        "RoPE (V2): apply_rotary_emb views q_rope/k_rope as complex pairs (2i, 2i+1) "
        "(view_as_complex) and multiplies by attention_factor * e^(i pos inv_freq), "
        "output kept in the interleaved layout.",
        "Routing (V2): logits = x @ gate.weight.T in f32; scores = softmax over all experts; "
        "group_limited_greedy: experts split into n_group consecutive groups, group score = the "
        "group's max score, the topk_group best groups kept, the other experts' scores set to "
        "0.0, top-k of the masked scores; weights = those softmax probabilities (no "
        "renormalization: transformers' V2 router ignores norm_topk_prob) * "
        "routed_scaling_factor. topk_method greedy: plain top-k of the softmax, same scaling.",
    ],
    "deepseek_v3": DEEPSEEK_NOTES_COMMON + [
        "q with q_lora_rank: q = q_b_proj(q_a_layernorm(q_a_proj(x))) (q_a_proj "
        "[q_lora_rank, d], RMSNorm over q_lora_rank, q_b_proj [H * qk_head_dim, q_lora_rank]).",
        "RoPE (V3, rope_interleave true): apply_rotary_pos_emb_interleave rotates the pairs "
        "(2i, 2i+1) like V2 but writes [rotated evens | rotated odds] (de-interleaved) for both "
        "q_rope and k_rope; the dot products, hence everything downstream, equal V2's "
        "interleaved rotation. With rope_interleave false it would be rotate_half (halves).",
        "Routing (V3, noaux_tc; transformers' V3 router has no topk_method switch): logits = "
        "x @ gate.weight.T in f32; scores = sigmoid(logits); choice = scores + "
        "e_score_correction_bias; group score = sum of the 2 largest choice values in each of "
        "n_group consecutive groups; the topk_group best groups kept, the other experts' choice "
        "set to -inf; top-k experts by choice; weights = the UNBIASED sigmoid scores of those "
        "experts, divided by (their sum + 1e-20) when norm_topk_prob, then always * "
        "routed_scaling_factor.",
        "e_score_correction_bias is a persistent f32 buffer: mlp.gate.e_score_correction_bias "
        "[n_routed_experts] in the checkpoint (kept f32 here while the rest is bf16).",
    ],
}


def cast(model, family, dtype):
    """model.to(dtype), except the family's KEEP_F32 buffers and parameters, which stay f32 (not
    rounded)."""
    suffixes = KEEP_F32.get(family, ())
    keep = {n: b.detach().float().clone() for n, b in model.named_buffers() if n.endswith(suffixes)}
    keep_params = {n: (p.detach().float().clone(), p.requires_grad)
                   for n, p in model.named_parameters() if n.endswith(suffixes)}
    model = model.to(dtype)
    for name, value in keep.items():
        module, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module), attr, value)
    for name, (value, grad) in keep_params.items():
        module, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module), attr, torch.nn.Parameter(value, requires_grad=grad))
    return model


# DeepSeek-V3's e_score_correction_bias (a buffer, not reached by randomize()): large enough to
# change some tokens' choice against the sigmoid scores' spread, not to dominate it.
DEEPSEEK_BUFFER_STD = {"e_score_correction_bias": 0.15}


def randomize_buffers(model, seed, stds):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in model.named_buffers():
            std = next((v for k, v in stds.items() if name.endswith(k)), None)
            if std is not None:
                b.copy_(std * torch.randn(b.shape, generator=g))
                assert b.abs().min() > 0, name


def deepseek_get_mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def deepseek_rope(cfg):
    """(inv_freq, attention_factor, softmax_scale) from the config, written from the formulas in
    DEEPSEEK_NOTES (checked against transformers' rotary_emb and attention modules)."""
    rp = cfg.rope_parameters
    dim, base, factor = cfg.qk_rope_head_dim, rp["rope_theta"], rp["factor"]
    orig = rp["original_max_position_embeddings"]

    def corr(rot):
        return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr(rp.get("beta_fast") or 32)), 0)
    high = min(math.ceil(corr(rp.get("beta_slow") or 1)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * ramp + (1.0 / pos_freqs) * (1 - ramp)
    mscale, mscale_all_dim = rp.get("mscale"), rp.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        attention_factor = deepseek_get_mscale(factor, mscale) / deepseek_get_mscale(factor, mscale_all_dim)
    else:
        attention_factor = deepseek_get_mscale(factor)
    qk_head_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    scale = qk_head_dim ** -0.5
    if mscale_all_dim:
        scale = scale * deepseek_get_mscale(factor, mscale_all_dim) ** 2
    return inv_freq, attention_factor, scale


def deepseek_rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def deepseek_attention(attn, cfg, x):
    """MLA by hand for one sequence x [T, d] at positions 0..T-1 (see DEEPSEEK_NOTES)."""
    t_len, heads = x.shape[0], cfg.num_attention_heads
    nope, rope, vd, r = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    if cfg.q_lora_rank is None:
        q = x @ attn.q_proj.weight.T
    else:
        q = deepseek_rms(x @ attn.q_a_proj.weight.T, attn.q_a_layernorm.weight, 1e-6) @ attn.q_b_proj.weight.T
    q = q.view(t_len, heads, nope + rope)
    q_nope, q_rope = q[..., :nope], q[..., nope:]
    c = x @ attn.kv_a_proj_with_mqa.weight.T
    latent, k_rope = deepseek_rms(c[:, :r], attn.kv_a_layernorm.weight, 1e-6), c[:, r:]
    kv = (latent @ attn.kv_b_proj.weight.T).view(t_len, heads, nope + vd)
    k_nope, v = kv[..., :nope], kv[..., nope:]
    inv_freq, factor, scale = deepseek_rope(cfg)
    ang = torch.arange(t_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = ang.cos() * factor, ang.sin() * factor

    def rotate(z, cos, sin):  # interleaved pairs (2i, 2i+1)
        a, b = z[..., 0::2], z[..., 1::2]
        out = torch.empty_like(z)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
        return out

    q_rope = rotate(q_rope, cos[:, None, :], sin[:, None, :])
    k_rope = rotate(k_rope, cos, sin)
    scores = torch.einsum("ihd,jhd->hij", q_nope, k_nope) + torch.einsum("ihd,jd->hij", q_rope, k_rope)
    scores = scores * scale
    causal = torch.ones(t_len, t_len, dtype=torch.bool).tril()
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    out = torch.einsum("hij,jhd->ihd", probs, v).reshape(t_len, heads * vd)
    return out @ attn.o_proj.weight.T


def deepseek_route(gate, cfg, family, x, groups=True, bias=True):
    """DeepSeek routing by hand: (router_logits, topk_ids, topk_weights), the ids in descending
    order of the choosing score. groups=False / bias=False switch the group limit / V3's
    correction bias off (only for the statistics of what they change)."""
    logits = x.float() @ gate.weight.float().T
    tokens, n_e, k = x.shape[0], cfg.n_routed_experts, cfg.num_experts_per_tok
    per = n_e // cfg.n_group
    if family == "deepseek_v2":
        scores = torch.softmax(logits, dim=-1)
        choice, fill = scores, 0.0
        group = choice.view(tokens, cfg.n_group, per).amax(dim=-1)
        groups = groups and cfg.topk_method == "group_limited_greedy"
    else:
        scores = torch.sigmoid(logits)
        choice = scores + gate.e_score_correction_bias if bias else scores
        fill = float("-inf")
        group = choice.view(tokens, cfg.n_group, per).topk(2, dim=-1).values.sum(dim=-1)
    if groups:
        kept = torch.topk(group, cfg.topk_group, dim=-1).indices
        mask = torch.zeros_like(group, dtype=torch.bool).scatter(1, kept, True).repeat_interleave(per, dim=1)
        choice = choice.masked_fill(~mask, fill)
    idx = torch.topk(choice, k, dim=-1, sorted=True).indices
    weights = scores.gather(1, idx)
    if family == "deepseek_v3" and cfg.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return logits, idx, weights * cfg.routed_scaling_factor


def deepseek_experts(block, x, idx, weights):
    """(routed, shared) outputs of a DeepSeek MoE block by hand."""
    experts, f = block.experts, block.experts.intermediate_dim
    routed = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            gate_up = experts.gate_up_proj[e] @ x[t]
            act = torch.nn.functional.silu(gate_up[:f]) * gate_up[f:]
            routed[t] += weights[t, j] * (experts.down_proj[e] @ act)
    sh = block.shared_experts
    return routed, deepseek_mlp(sh, x)


def deepseek_mlp(mlp, x):
    """down(silu(gate x) * up x): dense layers and shared experts."""
    act = torch.nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    return act @ mlp.down_proj.weight.T


def deepseek_sorted(idx, weights):
    order = idx.argsort(dim=-1)
    return idx.gather(1, order), weights.gather(1, order)


def deepseek_capture_layers(model, ids):
    """Every layer's attention input/output and MLP input/output on the prompt."""
    seen = {}

    def attn_hook(i):
        def hook(_m, _args, kwargs, output):
            seen[("attn_in", i)] = kwargs["hidden_states"].detach()[0].clone()
            seen[("attn_out", i)] = output[0].detach()[0].clone()
        return hook

    def mlp_hook(i):
        def hook(_m, args, output):
            seen[("mlp_in", i)] = args[0].detach()[0].clone()
            seen[("mlp_out", i)] = output.detach()[0].clone()
        return hook

    handles = []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.self_attn.register_forward_hook(attn_hook(i), with_kwargs=True))
        handles.append(layer.mlp.register_forward_hook(mlp_hook(i)))
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in handles:
        h.remove()
    return seen


def deepseek_check(model, family, cfg, ids):
    """Checks every layer's attention and MoE block against the replicas above; returns the
    routing statistics over the sparse layers (tokens whose choice the group limit, and for V3
    the correction bias, changed)."""
    seen = deepseek_capture_layers(model, ids)
    rotary = model.model.rotary_emb
    inv_freq, factor, scale = deepseek_rope(cfg)
    assert torch.allclose(rotary.inv_freq, inv_freq, rtol=1e-6), (rotary.inv_freq, inv_freq)
    assert abs(rotary.attention_scaling - factor) < 1e-12, (rotary.attention_scaling, factor)
    stats = {"tokens": 0, "group_limit_changed": 0}
    if family == "deepseek_v3":
        stats["bias_changed"] = 0
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            assert abs(attn.scaling - scale) < 1e-12, (attn.scaling, scale)
            want = deepseek_attention(attn, cfg, seen[("attn_in", i)])
            assert torch.allclose(want, seen[("attn_out", i)], rtol=1e-4, atol=1e-4), \
                f"{family}: layer {i} attention replica disagrees"
            x, y = seen[("mlp_in", i)], seen[("mlp_out", i)]
            if i < cfg.first_k_dense_replace:
                want = deepseek_mlp(layer.mlp, x)
                assert torch.allclose(want, y, rtol=1e-5, atol=1e-4), f"{family}: layer {i} dense MLP"
                continue
            block = layer.mlp
            logits, idx, weights = deepseek_route(block.gate, cfg, family, x)
            hf_logits, hf_weights, hf_idx = block.gate(x)
            assert torch.allclose(hf_logits, logits, atol=1e-5)
            a_idx, a_w = deepseek_sorted(idx, weights)
            b_idx, b_w = deepseek_sorted(hf_idx, hf_weights)
            assert torch.equal(a_idx, b_idx), f"{family}: layer {i} routing replica disagrees with HF"
            assert torch.allclose(a_w, b_w, atol=1e-6), f"{family}: layer {i} weights replica disagrees"
            routed, shared = deepseek_experts(block, x, idx, weights)
            assert torch.allclose(routed + shared, y, rtol=1e-5, atol=1e-4), \
                f"{family}: layer {i} block replica disagrees"
            plain = deepseek_route(block.gate, cfg, family, x, groups=False)[1]
            stats["tokens"] += x.shape[0]
            stats["group_limit_changed"] += int((plain.sort(-1).values != idx.sort(-1).values).any(-1).sum())
            if family == "deepseek_v3":
                unbiased = deepseek_route(block.gate, cfg, family, x, bias=False)[1]
                stats["bias_changed"] += int((unbiased.sort(-1).values != idx.sort(-1).values).any(-1).sum())
    return stats


def deepseek_check_checkpoint(family, out, model, cfg):
    """model.safetensors holds the experts per expert (gate_proj = gate_up_proj's first f rows),
    the correction bias f32, and nothing else unexpected."""
    tensors = load_file(os.path.join(out, "model.safetensors"))
    f = cfg.moe_intermediate_size
    for i, layer in enumerate(model.model.layers):
        if i < cfg.first_k_dense_replace:
            continue
        pre = f"model.layers.{i}.mlp."
        for e in range(cfg.n_routed_experts):
            gate_up = layer.mlp.experts.gate_up_proj[e]
            for name, want in (("gate_proj", gate_up[:f]), ("up_proj", gate_up[f:]),
                               ("down_proj", layer.mlp.experts.down_proj[e])):
                got = tensors[f"{pre}experts.{e}.{name}.weight"]
                assert got.shape == want.shape and torch.equal(got.float(), want), (family, i, e, name)
        if family == "deepseek_v3":
            bias = tensors[f"{pre}gate.e_score_correction_bias"]
            assert bias.dtype == torch.float32 and torch.equal(bias, layer.mlp.gate.e_score_correction_bias)
    assert not any("experts.gate_up_proj" in n or n.endswith("experts.down_proj") for n in tensors)


def deepseek_check_buffers(family, loaded, model):
    want = {n: b for n, b in model.named_buffers() if "rotary_emb" not in n}
    got = {n: b for n, b in loaded.named_buffers() if "rotary_emb" not in n}
    assert got.keys() == want.keys(), f"{family}: buffers differ after reload"
    for name, b in got.items():
        assert torch.equal(b.float(), want[name].float()), f"{family}: buffer {name} differs after reload"


def deepseek_expected(model, family, cfg, ids):
    """expected.json's DeepSeek extras (see the module docstring)."""
    inv_freq, factor, scale = deepseek_rope(cfg)
    stats = deepseek_check(model, family, cfg, ids)
    return {
        "mla": {
            "num_heads": cfg.num_attention_heads, "q_lora_rank": cfg.q_lora_rank,
            "kv_lora_rank": cfg.kv_lora_rank, "qk_nope_head_dim": cfg.qk_nope_head_dim,
            "qk_rope_head_dim": cfg.qk_rope_head_dim,
            "qk_head_dim": cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, "v_head_dim": cfg.v_head_dim,
        },
        "rope": {
            "inv_freq": [float(v) for v in inv_freq], "attention_factor": factor, "softmax_scale": scale,
        },
        "dense_layers": list(range(cfg.first_k_dense_replace)),
        "moe_layer": cfg.first_k_dense_replace,
        "routing_stats": stats,
        "save_dtype": {"deepseek_v2": "f32", "deepseek_v3": "bf16, e_score_correction_bias f32"}[family],
        "notes": DEEPSEEK_NOTES[family],
    }


def capture_deepseek_moe(model, family, cfg, ids):
    """The first sparse layer's MoE block (layer first_k_dense_replace): input, router logits,
    routing (ids in descending order of the choosing score, weights including
    routed_scaling_factor), the block output (routed + shared experts) and its two parts."""
    layer = cfg.first_k_dense_replace
    seen = deepseek_capture_layers(model, ids)
    x, y = seen[("mlp_in", layer)], seen[("mlp_out", layer)]
    block = model.model.layers[layer].mlp
    with torch.no_grad():
        logits, idx, weights = deepseek_route(block.gate, cfg, family, x)
        routed, shared = deepseek_experts(block, x, idx, weights)
        _, hf_weights, hf_idx = block.gate(x)
    a_idx, a_w = deepseek_sorted(idx, weights)
    b_idx, b_w = deepseek_sorted(hf_idx, hf_weights)
    assert torch.equal(a_idx, b_idx) and torch.allclose(a_w, b_w, atol=1e-6), f"{family}: routing"
    assert torch.allclose(routed + shared, y, rtol=1e-5, atol=1e-4), f"{family}: block output"
    return {
        "hidden": x.contiguous(),
        "router_logits": logits.contiguous(),
        "topk_ids": idx.to(torch.int32).contiguous(),
        "topk_weights": weights.contiguous(),
        "output": y.contiguous(),
        "routed_output": routed.contiguous(),
        "shared_output": shared.contiguous(),
    }


# GLM-4-MoE and ERNIE-4.5-MoE, as transformers 5.24 computes them (modeling_glm4_moe.py,
# modeling_ernie4_5_moe.py, both generated from their modular_*.py). Each statement is checked by a
# replica below (attention with RoPE, routing, experts, dense MLPs, checkpoint layout).
GE_NOTES_COMMON = [
    "RMSNorm: weight * (x * rsqrt(mean(x^2) + eps)), computed in f32, eps = config.rms_norm_eps "
    "for every norm (input_layernorm, post_attention_layernorm, model.norm, and GLM's q_norm / "
    "k_norm). Pre-norm residual blocks: h += attn(input_layernorm(h)); h += mlp(post_attention_"
    "layernorm(h)); logits = lm_head(norm(h)). No embedding, residual or logits scaling.",
    "Attention: GQA, query head h reads kv head h // (num_attention_heads / num_key_value_heads) "
    "(repeat_kv: each kv head serves consecutive query heads); q/k/v projections viewed "
    "[T, heads, head_dim] head-major; scores = q.k * head_dim^-0.5 (the full head_dim), causal "
    "mask, softmax in f32; o_proj input [T, heads * head_dim], head-major.",
    "Routed experts in transformers are fused (gate_up_proj [E, 2f, d], gate the first f rows; "
    "down_proj [E, d, f]); the checkpoint stores them per expert: mlp.experts.N.gate_proj.weight "
    "[f, d], up_proj.weight [f, d], down_proj.weight [d, f] (the qwen2_moe weight conversion, "
    "applied in reverse by save_pretrained). Expert e: y = down_e(silu(gate_e x) * up_e x); block "
    "output = sum_j w_j * y_{e_j} + shared_experts(x).",
    "Shared experts: a single SwiGLU MLP (mlp.shared_experts.{gate,up,down}_proj) of width "
    "moe_intermediate_size * number of shared experts, added unweighted (no shared-expert gate, "
    "no sigmoid).",
    "The router weight (mlp.gate.weight [E, d]) and the correction bias are f32 in transformers "
    "even in a bf16 model (_keep_in_fp32_modules_strict = [gate.weight, e_score_correction_bias]): "
    "router logits = x.float() @ gate.weight.float().T, all routing in f32.",
]
GE_NOTES = {
    "glm4_moe": GE_NOTES_COMMON + [
        "head_dim comes from config.head_dim (24 here, != hidden_size / num_attention_heads = 16; "
        "GLM-4.5(-Air) have head_dim 128 with 96 heads, 96 * 128 != hidden_size). q_proj [H * "
        "head_dim, d], k_proj / v_proj [KV * head_dim, d], all three with biases when "
        "attention_bias (true here and in GLM-4.5); o_proj [d, H * head_dim] never has a bias.",
        "use_qk_norm (true here, as GLM-4.5; GLM-4.5-Air has false): q_norm / k_norm are RMSNorms "
        "with weight [head_dim], applied PER HEAD over the whole head_dim (rotary and pass-through "
        "dims alike), after the projection bias and BEFORE RoPE. v is not normed.",
        "RoPE (partial): rotary_dim = int(head_dim * partial_rotary_factor) (12 here; GLM-4.5: 64 of "
        "128); inv_freq[i] = rope_theta^(-2i / rotary_dim), i < rotary_dim / 2 (the exponent's "
        "denominator is rotary_dim, not head_dim). The FIRST rotary_dim dims of each q and k head "
        "rotate, the remaining head_dim - rotary_dim pass unchanged. Rotation by HALVES "
        "(rotate_half, NeoX style) within those rotary_dim dims: dims i and i + rotary_dim/2 form "
        "a pair, (a, b) -> (a cos - b sin, b cos + a sin) with angle pos * inv_freq[i]; "
        "attention_scaling 1; positions 0-based. rope_theta and partial_rotary_factor live in "
        "config.json's rope_parameters (rope_type default).",
        "Layers 0 .. first_k_dense_replace - 1 are dense: down(silu(gate_proj x) * up_proj x) of "
        "intermediate_size, no biases; every later layer is MoE (no interval).",
        "Routing (noaux_tc, as DeepSeek-V3): scores = sigmoid(logits); choice = scores + "
        "e_score_correction_bias; group score = sum of the 2 largest choice values in each of "
        "n_group consecutive groups of E / n_group experts; the topk_group best groups kept, the "
        "other experts' choice set to -inf (always run; trivial when n_group = 1 as in GLM-4.5); "
        "top-k experts by choice (transformers: topk sorted=False); weights = the UNBIASED sigmoid "
        "scores of those experts, divided by (their sum + 1e-20) when norm_topk_prob, then always "
        "* routed_scaling_factor.",
        "e_score_correction_bias is a persistent f32 buffer: mlp.gate.e_score_correction_bias [E] "
        "in the checkpoint (f32 here while the rest is bf16, and mlp.gate.weight f32 too).",
        "num_nextn_predict_layers (num_mtp_layers) is 0 here; the real checkpoints have 1 MTP "
        "layer stored as model.layers.<num_hidden_layers>.* (46 for Air, 92 for GLM-4.5) that "
        "transformers ignores on load (_keys_to_ignore_on_load_unexpected) and never runs.",
    ],
    "ernie4_5_moe": GE_NOTES_COMMON + [
        "head_dim = hidden_size / num_attention_heads (the config has no head_dim; transformers "
        "reads getattr(config, 'head_dim', hidden / heads)). q/k/v/o projections, the dense and "
        "shared MLPs and lm_head have biases only when use_bias (false here and in "
        "ERNIE-4.5-21B-A3B). No q/k norm.",
        "RoPE over the whole head_dim, INTERLEAVED pairs: dims (2i, 2i+1) rotate by angle pos * "
        "inv_freq[i], inv_freq[i] = rope_theta^(-2i / head_dim): (a, b) -> (a cos - b sin, "
        "b cos + a sin) (transformers builds cos/sin by halves and repeat_interleaves the first "
        "half; rotate_half takes (-x[1::2], x[0::2]) interleaved). Computed in f32 (q and k "
        "upcast, cast back afterwards). rope_theta 500000 (the class default, written into "
        "rope_parameters).",
        "Layer i is MoE iff (i + 1) % moe_layer_interval == 0 and moe_layer_start_index <= i <= "
        "moe_layer_end_index (-1 means num_hidden_layers - 1; __post_init__ resolves it, so "
        "config.json holds the resolved value); every other layer is a dense SwiGLU MLP of "
        "intermediate_size. Here start 1, end 2, interval 1: layers 0 and 3 dense, 1 and 2 MoE.",
        "Routing: probs = softmax(logits) over all experts (f32); choice = probs + "
        "moe_statics.e_score_correction_bias (shape [1, E], squeezed); top-k experts by choice "
        "(topk sorted: descending choice); weights = the UNBIASED softmax probabilities of those "
        "experts divided by max(their sum, moe_norm_min) (clamp(min=1e-12); always renormalized, "
        "there is no norm_topk_prob switch); no routed scaling factor, no group limit.",
        "The correction bias is a frozen f32 nn.Parameter of shape [1, E]; the checkpoint names it "
        "model.layers.N.mlp.moe_statics.e_score_correction_bias (transformers renames it to "
        "mlp.gate.moe_statics.e_score_correction_bias on load and back on save).",
        "tie_word_embeddings true (as ERNIE-4.5-21B-A3B): lm_head.weight IS "
        "model.embed_tokens.weight, and model.safetensors has no lm_head.weight.",
    ],
}
# GLM's correction bias is a buffer (randomize() does not reach it); ERNIE's is a parameter
# (ERNIE_STD above).
GLM_BUFFER_STD = {"e_score_correction_bias": 0.15}


def ge_sparse(cfg, family, i):
    """Whether layer i is MoE (see GE_NOTES)."""
    if family == "glm4_moe":
        return i >= cfg.first_k_dense_replace
    return ((i + 1) % cfg.moe_layer_interval == 0
            and cfg.moe_layer_start_index <= i <= cfg.moe_layer_end_index)


def ge_head_dim(cfg):
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def ge_rope(cfg, family):
    """(inv_freq, rotary_dim) written from GE_NOTES."""
    head_dim = ge_head_dim(cfg)
    rot = int(head_dim * cfg.rope_parameters.get("partial_rotary_factor", 1.0)) \
        if family == "glm4_moe" else head_dim
    theta = cfg.rope_parameters["rope_theta"]
    inv_freq = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    return inv_freq, rot


def ge_linear(lin, x):
    y = x @ lin.weight.T
    return y if lin.bias is None else y + lin.bias


def ge_attention(attn, cfg, family, x):
    """The attention sublayer by hand for one sequence x [T, d] at positions 0..T-1."""
    t_len, heads, kv_heads = x.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads
    hd = ge_head_dim(cfg)
    q = ge_linear(attn.q_proj, x).view(t_len, heads, hd)
    k = ge_linear(attn.k_proj, x).view(t_len, kv_heads, hd)
    v = ge_linear(attn.v_proj, x).view(t_len, kv_heads, hd)
    if family == "glm4_moe" and cfg.use_qk_norm:
        q = deepseek_rms(q, attn.q_norm.weight, cfg.rms_norm_eps)
        k = deepseek_rms(k, attn.k_norm.weight, cfg.rms_norm_eps)
    inv_freq, rot = ge_rope(cfg, family)
    ang = torch.arange(t_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]

    def rotate(z):
        out = z.clone()
        if family == "glm4_moe":  # halves of the first rot dims
            a, b = z[..., : rot // 2], z[..., rot // 2: rot]
            out[..., : rot // 2], out[..., rot // 2: rot] = a * cos - b * sin, b * cos + a * sin
        else:  # interleaved pairs over the whole head
            a, b = z[..., 0::2], z[..., 1::2]
            out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
        return out

    q, k = rotate(q), rotate(k)
    rep = heads // kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("ihd,jhd->hij", q, k) * hd ** -0.5
    causal = torch.ones(t_len, t_len, dtype=torch.bool).tril()
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    out = torch.einsum("hij,jhd->ihd", probs, v).reshape(t_len, heads * hd)
    return ge_linear(attn.o_proj, out)


def ge_mlp(mlp, x):
    """down(silu(gate x) * up x) with the biases the module has: dense layers, shared experts."""
    act = torch.nn.functional.silu(ge_linear(mlp.gate_proj, x)) * ge_linear(mlp.up_proj, x)
    return ge_linear(mlp.down_proj, act)


def ge_route(gate, cfg, family, x, groups=True, bias=True):
    """(router_logits, topk_ids, topk_weights) by hand, the ids in descending order of the choosing
    score; groups=False / bias=False switch GLM's group limit / the correction bias off (only for
    the statistics of what they change)."""
    logits = x.float() @ gate.weight.float().T
    tokens, k = x.shape[0], cfg.num_experts_per_tok
    if family == "glm4_moe":
        n_e = cfg.n_routed_experts
        scores = torch.sigmoid(logits)
        choice = scores + gate.e_score_correction_bias if bias else scores
        if groups:
            per = n_e // cfg.n_group
            group = choice.view(tokens, cfg.n_group, per).topk(2, dim=-1).values.sum(dim=-1)
            kept = torch.topk(group, cfg.topk_group, dim=-1).indices
            mask = torch.zeros_like(group, dtype=torch.bool).scatter(1, kept, True)
            choice = choice.masked_fill(~mask.repeat_interleave(per, dim=1), float("-inf"))
        idx = torch.topk(choice, k, dim=-1, sorted=True).indices
        weights = scores.gather(1, idx)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return logits, idx, weights * cfg.routed_scaling_factor
    probs = torch.softmax(logits, dim=-1)
    choice = probs + gate.moe_statics.e_score_correction_bias[0] if bias else probs
    idx = torch.topk(choice, k, dim=-1, sorted=True).indices
    weights = probs.gather(1, idx)
    return logits, idx, weights / weights.sum(dim=-1, keepdim=True).clamp(min=cfg.moe_norm_min)


def ge_experts(block, x, idx, weights):
    """(routed, shared) outputs of the MoE block by hand (experts without biases)."""
    experts, f = block.experts, block.experts.intermediate_dim
    routed = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            gate_up = experts.gate_up_proj[e] @ x[t]
            act = torch.nn.functional.silu(gate_up[:f]) * gate_up[f:]
            routed[t] += weights[t, j] * (experts.down_proj[e] @ act)
    return routed, ge_mlp(block.shared_experts, x)


def ge_check_router(block, cfg, family, x, layer):
    """Our routing against transformers' router: equal ids (as sets for GLM, whose topk is
    unsorted; in order for ERNIE) and weights."""
    logits, idx, weights = ge_route(block.gate, cfg, family, x)
    hf_logits, hf_weights, hf_idx = block.gate(x)
    assert torch.allclose(hf_logits, logits, atol=1e-5), f"{family}: layer {layer} router logits"
    if family == "glm4_moe":
        a_idx, a_w = deepseek_sorted(idx, weights)
        b_idx, b_w = deepseek_sorted(hf_idx, hf_weights)
    else:
        a_idx, a_w, b_idx, b_w = idx, weights, hf_idx, hf_weights
    assert torch.equal(a_idx, b_idx), f"{family}: layer {layer} routing replica disagrees with HF"
    assert torch.allclose(a_w, b_w, atol=1e-6), f"{family}: layer {layer} weights replica disagrees"
    return logits, idx, weights


def ge_check(model, family, cfg, ids):
    """Checks every layer's attention, dense MLP and MoE block against the replicas above; returns
    the routing statistics over the sparse layers (tokens whose choice the correction bias, and
    for GLM the group limit, changed)."""
    seen = deepseek_capture_layers(model, ids)
    inv_freq, rot = ge_rope(cfg, family)
    rotary = model.model.rotary_emb
    assert torch.allclose(rotary.inv_freq, inv_freq, rtol=1e-6), (rotary.inv_freq, inv_freq)
    assert rotary.attention_scaling == 1.0
    stats = {"tokens": 0, "bias_changed": 0}
    if family == "glm4_moe":
        stats["group_limit_changed"] = 0
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            assert attn.head_dim == ge_head_dim(cfg) and abs(attn.scaling - ge_head_dim(cfg) ** -0.5) < 1e-12
            want = ge_attention(attn, cfg, family, seen[("attn_in", i)])
            assert torch.allclose(want, seen[("attn_out", i)], rtol=1e-4, atol=1e-4), \
                f"{family}: layer {i} attention replica disagrees"
            x, y = seen[("mlp_in", i)], seen[("mlp_out", i)]
            sparse = ge_sparse(cfg, family, i)
            assert sparse == hasattr(layer.mlp, "experts"), f"{family}: layer {i} kind"
            if not sparse:
                assert layer.mlp.gate_proj.weight.shape[0] == cfg.intermediate_size
                assert torch.allclose(ge_mlp(layer.mlp, x), y, rtol=1e-5, atol=1e-4), \
                    f"{family}: layer {i} dense MLP"
                continue
            block = layer.mlp
            _, idx, weights = ge_check_router(block, cfg, family, x, i)
            routed, shared = ge_experts(block, x, idx, weights)
            assert torch.allclose(routed + shared, y, rtol=1e-5, atol=1e-4), \
                f"{family}: layer {i} block replica disagrees"
            stats["tokens"] += x.shape[0]
            unbiased = ge_route(block.gate, cfg, family, x, bias=False)[1]
            stats["bias_changed"] += int((unbiased.sort(-1).values != idx.sort(-1).values).any(-1).sum())
            if family == "glm4_moe":
                plain = ge_route(block.gate, cfg, family, x, groups=False)[1]
                stats["group_limit_changed"] += int(
                    (plain.sort(-1).values != idx.sort(-1).values).any(-1).sum())
    return stats


def ge_bias_name(family):
    return {"glm4_moe": "gate.e_score_correction_bias",
            "ernie4_5_moe": "moe_statics.e_score_correction_bias"}[family]


def ge_check_checkpoint(family, out, model, cfg):
    """model.safetensors holds the experts per expert, the router weight and correction bias f32
    (GLM: bf16 elsewhere), no lm_head when tied, and nothing else unexpected."""
    tensors = load_file(os.path.join(out, "model.safetensors"))
    f = cfg.moe_intermediate_size
    names = set()
    for i, layer in enumerate(model.model.layers):
        pre = f"model.layers.{i}.mlp."
        if not ge_sparse(cfg, family, i):
            names |= {f"{pre}{n}_proj.weight" for n in ("gate", "up", "down")}
            continue
        for e in range(layer.mlp.experts.num_experts):
            gate_up = layer.mlp.experts.gate_up_proj[e]
            for name, want in (("gate_proj", gate_up[:f]), ("up_proj", gate_up[f:]),
                               ("down_proj", layer.mlp.experts.down_proj[e])):
                got = tensors[f"{pre}experts.{e}.{name}.weight"]
                names.add(f"{pre}experts.{e}.{name}.weight")
                assert got.shape == want.shape and torch.equal(got.float(), want), (family, i, e, name)
        names |= {f"{pre}shared_experts.{n}_proj.weight" for n in ("gate", "up", "down")}
        bias = tensors[pre + ge_bias_name(family)]
        gate = tensors[f"{pre}gate.weight"]
        names |= {pre + ge_bias_name(family), f"{pre}gate.weight"}
        want_bias = layer.mlp.gate.e_score_correction_bias if family == "glm4_moe" \
            else layer.mlp.gate.moe_statics.e_score_correction_bias
        assert bias.dtype == torch.float32 and torch.equal(bias, want_bias), (family, i, "bias")
        assert gate.dtype == torch.float32 and torch.equal(gate, layer.mlp.gate.weight), (family, i, "gate")
    for n, t in tensors.items():
        if "self_attn" in n or "layernorm" in n or n in ("model.norm.weight", "model.embed_tokens.weight",
                                                        "lm_head.weight"):
            names.add(n)
        want_dtype = torch.float32 if (n.endswith(("gate.weight", "e_score_correction_bias"))
                                       or SAVE_DTYPE.get(family) is None) else SAVE_DTYPE[family]
        assert t.dtype == want_dtype, (family, n, t.dtype)
    assert set(tensors) == names, set(tensors) ^ names
    assert ("lm_head.weight" in tensors) == (not cfg.tie_word_embeddings)


def ge_expected(model, family, cfg, ids):
    """expected.json's GLM / ERNIE extras."""
    inv_freq, rot = ge_rope(cfg, family)
    stats = ge_check(model, family, cfg, ids)
    n = cfg.num_hidden_layers
    sparse = [i for i in range(n) if ge_sparse(cfg, family, i)]
    return {
        "head_dim": ge_head_dim(cfg),
        "rope": {
            "theta": cfg.rope_parameters["rope_theta"], "rotary_dim": rot,
            "style": {"glm4_moe": "halves (rotate_half) over the first rotary_dim dims of each head",
                      "ernie4_5_moe": "interleaved pairs (2i, 2i+1) over the whole head"}[family],
            "inv_freq": [float(v) for v in inv_freq],
        },
        "dense_layers": [i for i in range(n) if i not in sparse],
        "moe_layers": sparse,
        "moe_layer": sparse[0],
        "routing_stats": stats,
        "save_dtype": {"glm4_moe": "bf16, mlp.gate.weight and e_score_correction_bias f32",
                       "ernie4_5_moe": "f32"}[family],
        "notes": GE_NOTES[family],
    }


def capture_ge_moe(model, family, cfg, ids):
    """The first sparse layer's MoE block: input, router logits, routing (ids in descending order
    of the choosing score, weights as applied, GLM's including routed_scaling_factor), the block
    output (routed + shared experts) and its two parts."""
    layer = next(i for i in range(cfg.num_hidden_layers) if ge_sparse(cfg, family, i))
    seen = deepseek_capture_layers(model, ids)
    x, y = seen[("mlp_in", layer)], seen[("mlp_out", layer)]
    block = model.model.layers[layer].mlp
    with torch.no_grad():
        logits, idx, weights = ge_check_router(block, cfg, family, x, layer)
        routed, shared = ge_experts(block, x, idx, weights)
    assert torch.allclose(routed + shared, y, rtol=1e-5, atol=1e-4), f"{family}: block output"
    return layer, {
        "hidden": x.contiguous(),
        "router_logits": logits.contiguous(),
        "topk_ids": idx.to(torch.int32).contiguous(),
        "topk_weights": weights.contiguous(),
        "output": y.contiguous(),
        "routed_output": routed.contiguous(),
        "shared_output": shared.contiguous(),
    }


# Families whose seed must also give this many distinct greedy tokens (not a repetition loop).
MIN_DISTINCT = {"glm4_moe": 12, "ernie4_5_moe": 12}


def build(family, cfg, tokenizer):
    prompt_ids = tokenizer.encode(PROMPT).ids
    for seed in range(100):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        randomize(model, 1000 + seed, RANDOM_STD.get(family))
        if family.startswith("deepseek"):
            randomize_buffers(model, 2000 + seed, DEEPSEEK_BUFFER_STD)
        if family == "glm4_moe":
            randomize_buffers(model, 2000 + seed, GLM_BUFFER_STD)
        if family == "ernie4_5_moe":
            for layer in model.model.layers:
                if hasattr(layer.mlp, "gate"):
                    assert layer.mlp.gate.moe_statics.e_score_correction_bias.abs().min() > 0
        if family in SAVE_DTYPE:  # round the weights the way the checkpoint stores them
            model = cast(model, family, SAVE_DTYPE[family]).to(torch.float32)
        if family in MXFP4:
            model.mxfp4_packed = mxfp4_roundtrip(model)
        ids, margin = greedy(model, prompt_ids)
        if margin >= MIN_MARGIN and len(set(ids)) >= MIN_DISTINCT.get(family, 0):
            return model, seed, prompt_ids, ids, margin
    raise SystemExit(f"{family}: no seed with a greedy margin of {MIN_MARGIN}"
                     f" and {MIN_DISTINCT.get(family, 0)} distinct greedy tokens")


def main():
    only = sys.argv[1:] or None
    os.makedirs(OUT_MODELS, exist_ok=True)
    os.makedirs(OUT_MOE, exist_ok=True)
    for family, cfg in configs().items():
        if only and family not in only:
            continue
        out = os.path.join(OUT_MODELS, family)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        tokenizer = train_tokenizer(os.path.join(out, "tokenizer.json"))
        model, seed, prompt_ids, greedy_ids, margin = build(family, cfg, tokenizer)
        save = cast(model, family, SAVE_DTYPE.get(family, torch.float32))
        save.save_pretrained(out)
        model = save.to(torch.float32)
        if family.startswith(("gpt_oss", "deepseek")) or family in GE_NOTES:
            packed = getattr(model, "mxfp4_packed", {})
            if packed:
                write_mxfp4_checkpoint(out, packed)
            if family.startswith("deepseek"):
                deepseek_check_checkpoint(family, out, model, cfg)
            if family in GE_NOTES:
                ge_check_checkpoint(family, out, model, cfg)
            loaded = reload_checked(family, out, model, packed)
            if family.startswith("deepseek") or family in GE_NOTES:
                deepseek_check_buffers(family, loaded, model)
            model = loaded
            again, margin = greedy(model, prompt_ids)
            assert again == greedy_ids, f"{family}: the reloaded model generates differently"
        with torch.no_grad():
            last = model(torch.tensor([prompt_ids])).logits[0, -1]
        expected = {
            "family": family,
            "prompt_text": PROMPT,
            "prompt_ids": prompt_ids,
            "greedy_ids": greedy_ids,
            "last_logits": [float(v) for v in last],
            "min_greedy_margin": margin,
            "seed": seed,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }
        if family.startswith("gpt_oss"):
            gate_frac, up_frac = gpt_oss_clamp_stats(model, prompt_ids)
            expected["sliding_window"] = cfg.sliding_window
            expected["swiglu_clamped_fraction"] = {"gate": gate_frac, "up": up_frac}
            print(f"{family}: SwiGLU clamp hits on the prompt's routed pairs: "
                  f"gate {100 * gate_frac:.1f}%, up {100 * up_frac:.1f}%")
        moe_layer = 0
        if family.startswith("deepseek"):
            expected.update(deepseek_expected(model, family, cfg, prompt_ids))
            moe_layer = cfg.first_k_dense_replace
            print(f"{family}: routing on the prompt, sparse layers: {expected['routing_stats']}")
        if family in GE_NOTES:
            expected.update(ge_expected(model, family, cfg, prompt_ids))
            moe_layer = expected["moe_layer"]
            print(f"{family}: routing on the prompt, sparse layers: {expected['routing_stats']}")
        with open(os.path.join(out, "expected.json"), "w") as f:
            json.dump(expected, f)
        if family.startswith("deepseek"):
            moe = capture_deepseek_moe(model, family, cfg, prompt_ids)
        elif family in GE_NOTES:
            layer, moe = capture_ge_moe(model, family, cfg, prompt_ids)
            assert layer == moe_layer
        else:
            moe = capture_moe(model, family, cfg, prompt_ids)
        save_file(moe, os.path.join(OUT_MOE, f"{family}.safetensors"), metadata={
            "family": family, "layer": str(moe_layer), "model_dir": f"tests/fixtures/models/{family}",
            "transformers": transformers.__version__,
        })
        size = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
        print(f"{family}: seed {seed}, greedy margin {margin:.3f}, {size / 1e6:.2f} MB, "
              f"prompt {len(prompt_ids)} tokens, greedy {greedy_ids}")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
