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
token comparison a coin toss, not a test. One family (Mixtral) is saved in bf16,
the others in f32; expected values are computed from the saved (rounded) weights.

Run from the repository root (CPU only, about a minute):
    pip install torch transformers safetensors tokenizers
    python3 scripts/gen_fixtures.py
Made with transformers 5.23.0 and torch (CPU) as printed at the end.
"""

import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
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
    }


SAVE_DTYPE = {"mixtral": torch.bfloat16}


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


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
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


def build(family, cfg, tokenizer):
    prompt_ids = tokenizer.encode(PROMPT).ids
    for seed in range(100):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        randomize(model, 1000 + seed)
        if family in SAVE_DTYPE:  # round the weights the way the checkpoint stores them
            model = model.to(SAVE_DTYPE[family]).to(torch.float32)
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
