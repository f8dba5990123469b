#!/usr/bin/env python3
"""Trains webmoe's embedded default model: a small Mixtral-style MoE causal LM.

Corpus: the books that ship in HTML with the Rust toolchain (rustup's
share/doc/rust/html): The Rust Programming Language, the Reference, the Rustonomicon,
the Cargo, rustc, Edition, Embedded and Style books, and Rust by Example; all
licensed MIT OR Apache-2.0.
Prose only: paragraphs, list items and headings; code blocks are dropped. Every
20th paragraph (5%) is held out.

Model: MixtralForCausalLM, 4 layers, hidden 256, 4 heads (2 KV heads), 8 experts,
top-2, expert ffn 384, vocab 2048 (byte-level BPE trained with `tokenizers` on the
training split), context 256. Trained on CPU with AdamW for a fixed time budget,
then saved in bf16 with save_pretrained. All evaluation numbers are computed from
the saved (bf16-rounded) weights in f32, which is what webmoe loads.

    pip install torch==2.15.0 transformers==5.23.0 tokenizers safetensors
    python3 scripts/train_tiny.py [--minutes 40] [--out models/tiny-moe]

Writes config.json, model.safetensors, tokenizer.json, heldout.txt (an excerpt of
the held-out split), expected.json (perplexity and greedy continuation from
transformers) and README.md (the model card).
"""

import argparse
import glob
import html.parser
import json
import math
import os
import random
import time

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 2048
SEQ = 256
BATCH = 24
PROMPT = "The Rust programming language"
HELDOUT_EXCERPT_TOKENS = 2048  # what the engine test evaluates (CI runs on a CPU driver)
WINDOW = 256


class Prose(html.parser.HTMLParser):
    """Collects the text of <p>, <li> and <h1>-<h3> inside <main>, skipping <pre>."""

    KEEP = {"p", "li", "h1", "h2", "h3"}

    def __init__(self):
        super().__init__()
        self.paragraphs, self.stack, self.buf, self.in_main, self.in_pre = [], [], [], False, 0

    def handle_starttag(self, tag, attrs):
        if tag == "main":
            self.in_main = True
        if tag == "pre":
            self.in_pre += 1
        if tag in self.KEEP and self.in_main:
            self.stack.append(tag)
            self.buf = []

    def handle_endtag(self, tag):
        if tag == "pre":
            self.in_pre -= 1
        if tag == "main":
            self.in_main = False
        if self.stack and tag == self.stack[-1]:
            self.stack.pop()
            text = " ".join("".join(self.buf).split())
            if len(text) > 20:
                self.paragraphs.append(text)
            self.buf = []

    def handle_data(self, data):
        if self.stack and not self.in_pre:
            self.buf.append(data)


BOOKS = ["book", "reference", "nomicon", "cargo", "rustc", "edition-guide", "embedded-book",
         "style-guide", "rust-by-example"]


def corpus():
    roots = sorted(glob.glob(os.path.expanduser("~/.rustup/toolchains/*/share/doc/rust/html")))
    if not roots:
        raise SystemExit("Rust's HTML docs were not found under ~/.rustup/toolchains/*/share/doc/rust/html")
    pages = []
    for name in BOOKS:
        # The 2018-edition copy of the Book and print.html repeat other pages.
        pages += sorted(p for p in glob.glob(os.path.join(roots[0], name, "**", "*.html"), recursive=True)
                        if "2018-edition" not in p and not p.endswith("print.html") and "/first-edition/" not in p
                        and "/second-edition/" not in p)
    paragraphs = []
    for page in pages:
        parser = Prose()
        with open(page, encoding="utf-8") as f:
            parser.feed(f.read())
        paragraphs.extend(parser.paragraphs)
    train = [p for i, p in enumerate(paragraphs) if i % 20 != 19]
    held = [p for i, p in enumerate(paragraphs) if i % 20 == 19]
    return roots[0], len(pages), train, held


def make_tokenizer(train, path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(train, trainer)
    tok.save(path)
    return tok


def windows_nll(model, ids, window):
    """Mean NLL over non-overlapping windows; each window predicts its tokens 1..n."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window]
            if len(chunk) < 2:
                break
            logits = model(torch.tensor([chunk])).logits[0].float()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            target = torch.tensor(chunk[1:])
            total += float(-logp[torch.arange(len(chunk) - 1), target].sum())
            count += len(chunk) - 1
    return total / count, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--out", default="models/tiny-moe")
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(os.cpu_count() or 2)
    os.makedirs(args.out, exist_ok=True)

    book, pages, train, held = corpus()
    tok = make_tokenizer(train, os.path.join(args.out, "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    train_ids = []
    for p in train:
        train_ids += tok.encode(p).ids + [eot]
    held_ids = []
    for p in held:
        held_ids += tok.encode(p).ids + [eot]
    print(f"corpus: {pages} pages under {book}; train {len(train_ids)} tokens, held-out {len(held_ids)} tokens")

    config = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=SEQ, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=eot, pad_token_id=None, router_aux_loss_coef=0.01,
        output_router_logits=True,
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.05)
    data = torch.tensor(train_ids)
    budget = args.minutes * 60
    start = time.time()
    step, tokens = 0, 0
    model.train()
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        lr = 2e-3 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,))
        batch = torch.stack([data[s:s + SEQ] for s in starts])
        out = model(batch, labels=batch)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += BATCH * SEQ
        if step % 50 == 0:
            print(f"step {step} loss {out.loss.item():.3f} lr {lr:.2e} {tokens / (time.time() - start):.0f} tok/s", flush=True)
    minutes = (time.time() - start) / 60

    model.config.output_router_logits = False
    model = model.to(torch.bfloat16)
    model.save_pretrained(args.out)
    model = model.to(torch.float32).eval()

    held_nll, held_count = windows_nll(model, held_ids, WINDOW)
    excerpt = held_ids[:HELDOUT_EXCERPT_TOKENS]
    excerpt_text = tok.decode(excerpt, skip_special_tokens=False)
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(excerpt_text)
    # The engine tokenizes heldout.txt itself: evaluate exactly those ids.
    excerpt_ids = tok.encode(excerpt_text).ids
    ex_nll, ex_count = windows_nll(model, excerpt_ids, WINDOW)
    prompt_ids = tok.encode(PROMPT).ids
    with torch.no_grad():
        gen = model.generate(torch.tensor([prompt_ids]), max_new_tokens=32, do_sample=False,
                             eos_token_id=None, pad_token_id=eot)
    continuation = gen[0, len(prompt_ids):].tolist()
    expected = {
        "prompt_text": PROMPT, "prompt_ids": prompt_ids, "greedy_ids": continuation,
        "greedy_text": tok.decode(continuation),
        "heldout_file": "heldout.txt", "heldout_window": WINDOW,
        "heldout_excerpt_tokens": len(excerpt_ids), "heldout_excerpt_predicted": ex_count,
        "heldout_excerpt_perplexity": math.exp(ex_nll),
        "heldout_perplexity": math.exp(held_nll), "heldout_tokens": len(held_ids),
        "train_tokens_seen": tokens, "train_minutes": minutes, "steps": step,
        "parameters": n_params, "transformers": transformers.__version__, "torch": torch.__version__,
    }
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    card = f"""# tiny-moe: webmoe's embedded default model

A {n_params / 1e6:.1f}M-parameter Mixtral-style Mixture-of-Experts causal LM (4 layers,
hidden 256, 4 heads / 2 KV heads, 8 experts, top-2, expert ffn 384, tied embeddings,
context {SEQ}, byte-level BPE vocabulary of {VOCAB}), trained from scratch by webmoe's
`scripts/train_tiny.py` so that the engine has a real model to run with no download.
It writes English-like sentences about Rust; it knows little else.

- Corpus: the books shipped in HTML with the Rust toolchain ({", ".join(BOOKS)}: {pages}
  pages under rustup's `share/doc/rust/html`), prose only (code blocks dropped):
  {len(train_ids) + len(held_ids)} tokens. Licence of the text: MIT OR Apache-2.0 (the
  licence of these books). Every 20th paragraph (5%) held out: {len(held_ids)} tokens.
- Training: {step} steps of {BATCH}x{SEQ} tokens ({tokens / 1e6:.1f}M tokens), AdamW,
  lr 2e-3 with warm-up and cosine decay, {minutes:.0f} minutes on {os.cpu_count()} CPU cores,
  transformers {transformers.__version__}, torch {torch.__version__}.
- Command: `python3 scripts/train_tiny.py --minutes {args.minutes:g}`
- Stored in bf16 (`model.safetensors`); evaluation below uses those weights in f32.
- Held-out perplexity (transformers, windows of {WINDOW} tokens): **{math.exp(held_nll):.2f}**
  over the whole held-out split; {math.exp(ex_nll):.3f} over `heldout.txt` (its first
  {HELDOUT_EXCERPT_TOKENS} tokens), which webmoe's tests recompute with the engine.
- Greedy continuation of "{PROMPT}": "{tok.decode(continuation)}"
"""
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(card)
    print(card)


if __name__ == "__main__":
    main()
