#!/usr/bin/env python3
"""The transformers reference for the quantized GGUF fixtures: each fixture model run
in transformers with its weights replaced by what the GGUF file holds, dequantized
(quantized and dequantized with the `gguf` package under scripts/hf_to_gguf.py's
policy: projections in the file's type where rows are whole blocks, lm_head q8_0,
embeddings, norms and routers f32). Block quantization works row by row, so llama.cpp's
q/k row permutation in llama-style files does not change the values. Writes
tests/fixtures/gguf/expected.json: per file, the prompt ids and 16 greedy tokens.

    pip install torch transformers gguf numpy
    python3 scripts/gen_gguf_expected.py
"""
import json
import pathlib

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CASES = [("olmoe", "q8_0"), ("qwen2_moe", "q4_0"), ("granitemoe", "mxfp4")]
TYPES = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "mxfp4": T.MXFP4}


def kind(name):
    """What the converter stores a Hugging Face tensor as."""
    if name in ("model.embed_tokens.weight",) or "norm" in name or name.endswith("bias"):
        return "f32"
    if name == "lm_head.weight":
        return "output"
    if name.endswith("mlp.gate.weight") or "router" in name or name.endswith("block_sparse_moe.gate.weight"):
        return "f32"
    if name.endswith("shared_expert_gate.weight"):
        return "f32"
    return "proj"


def round_trip(x, qtype):
    if x.shape[-1] % 32 != 0:
        return x
    q = quants.quantize(x, qtype)
    return quants.dequantize(q, qtype).reshape(x.shape).astype(np.float32)


def main():
    out = {}
    for family, typ in CASES:
        model_dir = FIXTURES / "models" / family
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        with torch.no_grad():
            for name, p in model.named_parameters():
                k = kind(name)
                if k == "f32":
                    continue
                qtype = T.Q8_0 if k == "output" else TYPES[typ]
                x = p.detach().float().numpy()
                p.copy_(torch.from_numpy(round_trip(x, qtype)))
        expected = json.loads((model_dir / "expected.json").read_text())
        prompt = torch.tensor([expected["prompt_ids"]])
        gen = model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
        out[f"{family}-{typ}.gguf"] = {
            "prompt_ids": expected["prompt_ids"],
            "greedy_ids": gen[0, prompt.shape[1]:].tolist(),
        }
        print(family, typ, out[f"{family}-{typ}.gguf"]["greedy_ids"])
    (FIXTURES / "gguf" / "expected.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
