#!/usr/bin/env python3
"""Oracle fixtures for RoPE scaling: tiny random Qwen3-MoE models whose
`rope_parameters` ask for linear, llama3 and YaRN scaling (original context 64, a
48-token prompt, so scaled frequencies matter), saved with `save_pretrained` into
tests/fixtures/models/rope_<type>/ with what transformers computes (expected.json:
prompt_ids, last_logits, greedy_ids; 16 greedy steps, kept only with clear margins).

Dynamic NTK (max_position_embeddings 32) depends on how the sequence is run: with a
KV cache each forward scales by its own length and cached keys keep theirs. Its
greedy ids come from `generate` with the cache, for the 48-token prompt and for a
24-token one whose generation crosses position 32 (`crossing`). transformers keeps
the scaled frequencies between calls (they only grow until a forward is shorter
than max_position_embeddings), so the calls run in an order where that state is what
a fresh model would have: the uncached logits first, then the long generation, then
the short one (which resets it).

    pip install torch transformers
    python3 scripts/gen_rope_fixtures.py
"""
import json
import sys
import pathlib

import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "models"
VARIANTS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
}


def cached_greedy(model, prompt, steps):
    """Greedy ids from generate with the KV cache, and the smallest top-2 margin."""
    out = model.generate(prompt, max_new_tokens=steps, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    margins = [float(l[0].topk(2).values[0] - l[0].topk(2).values[1]) for l in out.logits]
    return out.sequences[0, prompt.shape[1]:].tolist(), min(margins)


def uncached_greedy(model, prompt, steps):
    ids, margins = prompt, []
    for _ in range(steps):
        top = model(ids).logits[0, -1].topk(2)
        margins.append(float(top.values[0] - top.values[1]))
        ids = torch.cat([ids, top.indices[:1].view(1, 1)], dim=1)
    return ids[0, prompt.shape[1]:].tolist(), min(margins)


def main(only=None):
    for name, params in VARIANTS.items():
        if only and name not in only:
            continue
        for seed in range(1, 50):
            torch.manual_seed(seed)
            config = transformers.Qwen3MoeConfig(
                vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=32, intermediate_size=64,
                max_position_embeddings=32 if name == "dynamic" else 256,
                norm_topk_prob=True, tie_word_embeddings=False,
                rope_parameters=dict(params, rope_theta=10000.0))
            model = transformers.Qwen3MoeForCausalLM(config).eval()
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() > 1:
                        p.normal_(0, 0.2)
            prompt = torch.randint(0, 128, (1, 48), generator=torch.Generator().manual_seed(seed))
            extra = {}
            with torch.no_grad():
                logits = model(prompt).logits[0, -1]
                if name == "dynamic":
                    greedy, margin = cached_greedy(model, prompt, 16)
                    short = prompt[:, :24]
                    crossing, crossing_margin = cached_greedy(model, short, 16)
                    margin = min(margin, crossing_margin)
                    extra = {"crossing": {"prompt_ids": short[0].tolist(), "greedy_ids": crossing}}
                else:
                    greedy, margin = uncached_greedy(model, prompt, 16)
            if margin < 0.05:
                continue
            out = OUT / f"rope_{name}"
            model.save_pretrained(out)
            (out / "expected.json").write_text(json.dumps({
                "rope_parameters": params, "seed": seed, "prompt_ids": prompt[0].tolist(),
                "greedy_ids": greedy, "last_logits": logits.tolist(),
                "min_greedy_margin": margin, "transformers": transformers.__version__, **extra}))
            print(name, "seed", seed, "margin", round(margin, 3))
            break


if __name__ == "__main__":
    main(sys.argv[1:])
