#!/usr/bin/env python3
"""Writes a shallow random-weight Hugging Face Llama folder with Llama-3-8B's widths, on any machine
(numpy only, no torch), for compile-time and peak-memory measurements where the weights' values do not matter:

    llama8b_width_folder.py OUT_DIR TOKENIZER_DIR [--layers N]

Hidden 4096, 32 heads, 8 KV heads, FFN 14336, vocab 128256, untied lm_head, N layers (default 2); weights
are normal(0, 0.02) drawn with a fixed seed, stored as bf16 (round to nearest even) in one safetensors file
per layer plus one for the embeddings, norm and lm_head. The tokenizer files are copied from TOKENIZER_DIR
(SmolLM2's vocabulary, fewer tokens than the embedding's rows). See docs/decoders.md, "Compile at scale".
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

HIDDEN, HEADS, KV_HEADS, FFN, VOCAB = 4096, 32, 8, 14336, 128256
HEAD_DIM = HIDDEN // HEADS


def bf16(rng, shape, std=0.02):
    """Random normal bf16 bits (uint16) of `shape`, drawn in row chunks to bound memory."""
    out = np.empty(shape, dtype=np.uint16)
    flat = out.reshape(shape[0], -1)
    step = max(1, (1 << 24) // flat.shape[1])
    for start in range(0, flat.shape[0], step):
        x = rng.standard_normal((min(step, flat.shape[0] - start), flat.shape[1]), dtype=np.float32) * std
        bits = x.view(np.uint32)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        flat[start:start + x.shape[0]] = (bits >> 16).astype(np.uint16)
    return out


def write_safetensors(path, tensors):
    """tensors: list of (name, uint16 array of bf16 bits)."""
    header, offset = {}, 0
    for name, arr in tensors:
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, arr in tensors:
            f.write(arr.tobytes())


ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("tokenizer_dir")
ap.add_argument("--layers", type=int, default=2)
opts = ap.parse_args()
os.makedirs(opts.out, exist_ok=True)
rng = np.random.default_rng(20261207)
weight_map = {}
ones = np.full((HIDDEN,), 0x3F80, dtype=np.uint16)  # bf16 1.0
files = [("model-head.safetensors", [("model.embed_tokens.weight", (VOCAB, HIDDEN)), ("lm_head.weight", (VOCAB, HIDDEN))])]
for i in range(opts.layers):
    p = f"model.layers.{i}."
    files.append((f"model-layer{i:02}.safetensors", [
        (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
        (p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
        (p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
        (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
        (p + "mlp.gate_proj.weight", (FFN, HIDDEN)),
        (p + "mlp.up_proj.weight", (FFN, HIDDEN)),
        (p + "mlp.down_proj.weight", (HIDDEN, FFN)),
        (p + "input_layernorm.weight", None),
        (p + "post_attention_layernorm.weight", None),
    ]))
files[0][1].append(("model.norm.weight", None))
total = 0
for fname, specs in files:
    tensors = [(name, ones if shape is None else bf16(rng, shape)) for name, shape in specs]
    write_safetensors(os.path.join(opts.out, fname), tensors)
    for name, arr in tensors:
        weight_map[name] = fname
        total += arr.nbytes
with open(os.path.join(opts.out, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
config = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "mlp_bias": False,
    "bos_token_id": 1, "eos_token_id": 2, "head_dim": HEAD_DIM, "hidden_act": "silu", "hidden_size": HIDDEN,
    "initializer_range": 0.02, "intermediate_size": FFN, "max_position_embeddings": 8192,
    "num_attention_heads": HEADS, "num_hidden_layers": opts.layers, "num_key_value_heads": KV_HEADS,
    "rms_norm_eps": 1e-5, "rope_scaling": None, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": VOCAB,
}
with open(os.path.join(opts.out, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
    src = os.path.join(opts.tokenizer_dir, name)
    if os.path.exists(src):
        shutil.copy(src, os.path.join(opts.out, name))
print(f"llama3-8b widths, {opts.layers} layers: {total / 1e9:.2f} GB bf16 written to {opts.out}")
