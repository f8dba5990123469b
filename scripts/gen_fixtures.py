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

Run from the repository root (CPU only, about a minute), optionally naming the families:
    pip install torch transformers safetensors tokenizers
    python3 scripts/gen_fixtures.py [family ...]
Made with transformers 5.23.0 (gpt-oss: 5.24.0) and torch (CPU) as printed at the end.
"""

import json
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
    }


SAVE_DTYPE = {"mixtral": torch.bfloat16, "gpt_oss": torch.bfloat16, "gpt_oss_mxfp4": torch.bfloat16}
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
RANDOM_STD = {"gpt_oss": GPT_OSS_STD, "gpt_oss_mxfp4": GPT_OSS_STD}


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


def build(family, cfg, tokenizer):
    prompt_ids = tokenizer.encode(PROMPT).ids
    for seed in range(100):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        randomize(model, 1000 + seed, RANDOM_STD.get(family))
        if family in SAVE_DTYPE:  # round the weights the way the checkpoint stores them
            model = model.to(SAVE_DTYPE[family]).to(torch.float32)
        if family in MXFP4:
            model.mxfp4_packed = mxfp4_roundtrip(model)
        ids, margin = greedy(model, prompt_ids)
        if margin >= MIN_MARGIN:
            return model, seed, prompt_ids, ids, margin
    raise SystemExit(f"{family}: no seed with a greedy margin of {MIN_MARGIN}")


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
        save = model.to(SAVE_DTYPE.get(family, torch.float32))
        save.save_pretrained(out)
        model = save.to(torch.float32)
        if family.startswith("gpt_oss"):
            packed = getattr(model, "mxfp4_packed", {})
            if packed:
                write_mxfp4_checkpoint(out, packed)
            model = reload_checked(family, out, model, packed)
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
        with open(os.path.join(out, "expected.json"), "w") as f:
            json.dump(expected, f)
        moe = capture_moe(model, family, cfg, prompt_ids)
        save_file(moe, os.path.join(OUT_MOE, f"{family}.safetensors"), metadata={
            "family": family, "layer": "0", "model_dir": f"tests/fixtures/models/{family}",
            "transformers": transformers.__version__,
        })
        size = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
        print(f"{family}: seed {seed}, greedy margin {margin:.3f}, {size / 1e6:.2f} MB, "
              f"prompt {len(prompt_ids)} tokens, greedy {greedy_ids}")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
