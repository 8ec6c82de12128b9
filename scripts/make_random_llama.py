#!/usr/bin/env python3
"""Writes a Llama-shaped GGUF with random Q4_0 weights, for speed measurements only (issue: CPU
speed on a ~1B model; no such model is installable here). The tokenizer and its metadata are
copied from a real GGUF (default: SmolLM2's), so every tool can load and run the file.

    .venv/bin/python scripts/make_random_llama.py models/random-llama-1b-q4_0.gguf

Shape (default, ~1.07 B parameters): 16 layers, n_embd 2048, 32 heads (8 KV heads, head size 64),
n_ff 8192, vocabulary of the source tokenizer, untied output. Weights: Q4_0 blocks with random
nibbles and small random fp16 scales (so activations stay finite); norms are 1.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import gguf

ROOT = Path(__file__).resolve().parents[1]


def q4_0(rng, rows, cols, scale):
    nb = cols // 32
    blocks = rng.integers(0, 256, size=(rows, nb, 18), dtype=np.uint8)
    d = (rng.uniform(0.5, 1.5, size=(rows, nb)) * scale).astype(np.float16)
    blocks[:, :, 0:2] = d.view(np.uint8).reshape(rows, nb, 2)
    return blocks.reshape(rows, nb * 18)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokenizer-from", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--embd", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ff", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    src = gguf.GGUFReader(a.tokenizer_from)
    rng = np.random.default_rng(a.seed)
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name("random-llama")
    w.add_block_count(a.layers)
    w.add_context_length(4096)
    w.add_embedding_length(a.embd)
    w.add_feed_forward_length(a.ff)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(2)  # LLAMA_FTYPE_MOSTLY_Q4_0
    n_vocab = 0
    for name, field in src.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vt = field.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_array(name, field.contents())
            if name == "tokenizer.ggml.tokens":
                n_vocab = len(field.contents())
        else:
            w.add_key_value(name, field.contents(), vt)
    head = a.embd // a.heads
    kv = head * a.kv_heads
    s = 0.5 / np.sqrt(a.embd) / 8  # d * nibble (-8..7) ~ N(0, 1/embd)-ish
    f32 = lambda n: np.ones(n, dtype=np.float32)
    Q = gguf.GGMLQuantizationType.Q4_0

    def add_q(name, rows, cols, scale):
        w.add_tensor(name, q4_0(rng, rows, cols, scale), raw_dtype=Q)

    add_q("token_embd.weight", n_vocab, a.embd, 0.05)
    for i in range(a.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", f32(a.embd))
        add_q(p + "attn_q.weight", a.embd, a.embd, s)
        add_q(p + "attn_k.weight", kv, a.embd, s)
        add_q(p + "attn_v.weight", kv, a.embd, s)
        add_q(p + "attn_output.weight", a.embd, a.embd, s)
        w.add_tensor(p + "ffn_norm.weight", f32(a.embd))
        add_q(p + "ffn_gate.weight", a.ff, a.embd, s)
        add_q(p + "ffn_up.weight", a.ff, a.embd, s)
        add_q(p + "ffn_down.weight", a.embd, a.ff, 0.5 / np.sqrt(a.ff) / 8)
    w.add_tensor("output_norm.weight", f32(a.embd))
    add_q("output.weight", n_vocab, a.embd, s)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
