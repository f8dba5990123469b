#!/usr/bin/env python3
"""The transformers reference for the quantized GGUF fixtures: each fixture model run
in transformers with its weights replaced by what the GGUF file holds, dequantized
(quantized and dequantized with the `gguf` package under scripts/hf_to_gguf.py's
policy: projections in the file's type where rows are whole blocks, lm_head q8_0,
embeddings, norms and routers f32). Block quantization works row by row, so llama.cpp's
q/k row permutation in llama-style files does not change the values. The gpt-oss files
(written by scripts/hf_to_gguf.py first) are read back instead: every tensor dequantized
with the `gguf` package, gate/up re-interleaved and transposed back to Hugging Face's
layout, checked equal to what transformers loads from the source directory (MXFP4
dequantized by its Mxfp4 integration), and loaded into the model. Writes
tests/fixtures/gguf/expected.json: per file, the prompt ids and 16 greedy tokens.

    pip install torch transformers gguf numpy
    python3 scripts/gen_gguf_expected.py
"""
import json
import pathlib

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, quants
from transformers import AutoModelForCausalLM, Mxfp4Config

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CASES = [("olmoe", "q8_0"), ("qwen2_moe", "q4_0"), ("granitemoe", "mxfp4")]
TYPES = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "mxfp4": T.MXFP4}
# (file, source directory): read back from the GGUF file itself
GGUF_CASES = [("gpt_oss_mxfp4.gguf", "gpt_oss_mxfp4"), ("gpt_oss-f32.gguf", "gpt_oss")]


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


def gguf_tensors(path):
    """name -> f32 array in our [outer..inner] order (ggml's ne reversed), dequantized."""
    out = {}
    for t in GGUFReader(path).tensors:
        shape = [int(n) for n in reversed(t.shape)]
        x = np.asarray(t.data)
        if t.tensor_type not in (T.F32,):
            x = quants.dequantize(x, t.tensor_type)
        out[t.name] = x.reshape(shape).astype(np.float32)
    return out


def interleave(gate, up, axis):
    """gate/up halves back into gpt-oss's interleaved gate_up (gate even, up odd)."""
    shape = list(gate.shape)
    shape[axis] *= 2
    out = np.empty(shape, dtype=np.float32)
    idx = [slice(None)] * len(shape)
    idx[axis] = slice(0, None, 2)
    out[tuple(idx)] = gate
    idx[axis] = slice(1, None, 2)
    out[tuple(idx)] = up
    return out


def gpt_oss_from_gguf(g, layers):
    """The GGUF tensors as transformers' GptOssForCausalLM parameters."""
    hf = {
        "model.embed_tokens.weight": g["token_embd.weight"],
        "model.norm.weight": g["output_norm.weight"],
        "lm_head.weight": g["output.weight"],
    }
    for i in range(layers):
        b, p = f"blk.{i}.", f"model.layers.{i}."
        hf[p + "input_layernorm.weight"] = g[b + "attn_norm.weight"]
        hf[p + "post_attention_layernorm.weight"] = g[b + "post_attention_norm.weight"]
        for ours, theirs in [("q", "q"), ("k", "k"), ("v", "v"), ("output", "o")]:
            hf[p + f"self_attn.{theirs}_proj.weight"] = g[b + f"attn_{ours}.weight"]
            hf[p + f"self_attn.{theirs}_proj.bias"] = g[b + f"attn_{ours}.bias"]
        hf[p + "self_attn.sinks"] = g[b + "attn_sinks.weight"]
        hf[p + "mlp.router.weight"] = g[b + "ffn_gate_inp.weight"]
        hf[p + "mlp.router.bias"] = g[b + "ffn_gate_inp.bias"]
        e = p + "mlp.experts."
        # [E, f, d] -> [E, d, f], gate/up interleaved along f
        hf[e + "gate_up_proj"] = interleave(
            g[b + "ffn_gate_exps.weight"].transpose(0, 2, 1), g[b + "ffn_up_exps.weight"].transpose(0, 2, 1), 2)
        hf[e + "gate_up_proj_bias"] = interleave(g[b + "ffn_gate_exps.bias"], g[b + "ffn_up_exps.bias"], 1)
        hf[e + "down_proj"] = g[b + "ffn_down_exps.weight"].transpose(0, 2, 1)
        hf[e + "down_proj_bias"] = g[b + "ffn_down_exps.bias"]
    return hf


def greedy(model, prompt_ids):
    prompt = torch.tensor([prompt_ids])
    gen = model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
    return gen[0, prompt.shape[1]:].tolist()


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
    for file, family in GGUF_CASES:
        model_dir = FIXTURES / "models" / family
        config = json.loads((model_dir / "config.json").read_text())
        kwargs = {"quantization_config": Mxfp4Config(dequantize=True)} if "quantization_config" in config else {}
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
        hf = gpt_oss_from_gguf(gguf_tensors(FIXTURES / "gguf" / file), config["num_hidden_layers"])
        params = dict(model.named_parameters())
        assert params.keys() == hf.keys(), sorted(set(params) ^ set(hf))
        same = True
        with torch.no_grad():
            for name, p in params.items():
                x = torch.from_numpy(np.ascontiguousarray(hf[name]))
                assert x.shape == p.shape, (file, name, x.shape, p.shape)
                same &= torch.equal(x, p.detach())
                p.copy_(x)
        expected = json.loads((model_dir / "expected.json").read_text())
        out[file] = {"prompt_ids": expected["prompt_ids"], "greedy_ids": greedy(model, expected["prompt_ids"])}
        # exactly the source's values, so transformers' tokens for the source apply
        assert not same or out[file]["greedy_ids"] == expected["greedy_ids"], file
        print(file, "weights equal to the source:", same, out[file]["greedy_ids"])
    (FIXTURES / "gguf" / "expected.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
