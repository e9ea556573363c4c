#!/usr/bin/env python3
"""Writes a random-weight Hugging Face Llama folder of a real model's shape, on the GPU machine (which has
torch and transformers), for speed measurements where the weights' values do not matter:

    llama_shape_folder.py OUT_DIR TOKENIZER_DIR [--shape llama3-8b|smollm2]

Weights are drawn by transformers' own initialisation (normal, std = initializer_range) on the GPU in
bf16 and saved as sharded bf16 safetensors. The tokenizer files (tokenizer.json, tokenizer_config.json)
are copied from TOKENIZER_DIR (SmolLM2's vocabulary: 49152 tokens, fewer than the embedding's rows; the
benchmarks draw ids below the tokenizer's vocabulary and never decode text).
"""
import argparse
import os
import shutil
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    # SmolLM2-135M: 30 layers, hidden 576, 9 heads, 3 KV heads, FFN 1536, vocab 49152, tied embeddings.
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    # Llama-3-8B: 32 layers, hidden 4096, 32 heads, 8 KV heads, FFN 14336, vocab 128256, untied lm_head.
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("tokenizer_dir")
ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
opts = ap.parse_args()

started = time.time()
torch.manual_seed(0)
cfg = LlamaConfig(**SHAPES[opts.shape], torch_dtype="bfloat16")
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg)
model.save_pretrained(opts.out, safe_serialization=True, max_shard_size="5GB")
for name in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(os.path.join(opts.tokenizer_dir, name), os.path.join(opts.out, name))
params = sum(p.numel() for p in model.parameters())
print(f"{opts.shape}: {params / 1e9:.2f} B parameters, bf16, written to {opts.out} in {time.time() - started:.0f} s")
