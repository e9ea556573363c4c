#!/usr/bin/env python3
# Independent float64 numpy reference of SmolLM2-135M-Instruct, read from its GGUF with gguf-py.
# Dependencies: scripts/requirements-decoder.txt (gguf 0.19.0, numpy 2.3.5, tokenizers 0.22.1),
# installed by `bash scripts/cache.sh pyenv` into .cache/pyenv.
#
# Usage:
#   .cache/pyenv/bin/python scripts/golden_smollm2.py [model.gguf] [out.json]
#   defaults: .cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#             tests/fixtures/smollm2_golden.json
#
# Model (llama architecture, hyper-parameters read from the GGUF's llama.* keys): token embedding
# gather; per layer x += Wo·attn(RoPE(Wq·n), RoPE(Wk·n), Wv·n) with n = RMSNorm(x)·attn_norm, then
# x += Wdown·(silu(Wgate·m) * (Wup·m)) with m = RMSNorm(x)·ffn_norm; final RMSNorm·output_norm;
# tied lm_head (logits = h · token_embdᵀ, the GGUF has no output.weight). RMSNorm: x/sqrt(mean(x²)+eps).
# Attention: 9 query heads, 3 KV heads (query head h reads KV head h // 3), head dim 64, causal,
# softmax scale 1/sqrt(64). RoPE: llama.cpp's converter permuted the Q/K rows, so with GGUF weights
# it rotates ADJACENT pairs (2i, 2i+1) of each head by pos·θ^(−2i/64), θ = rope.freq_base.
# Weights: gguf.quants.dequantize (f32, exactly llama.cpp's dequantization), then float64; every
# activation is float64.
#
# Tokenizer: HF `tokenizers` BPE from tokenizer.ggml.tokens/merges, pre-tokenizer
# Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]),
# ByteLevel decoder, the first 17 tokens special (as SmolLM2's own tokenizer.json); no BOS added
# (tokenizer.ggml.add_bos_token = false).
#
# Output JSON: per prompt the text, its token ids, the last prompt position's logits (base64 of
# little-endian f32, rounded from float64), and the greedy continuation of exactly 32 tokens (ids,
# text, and per step the gap between the best and second-best logit, so a consumer can tell
# near-ties). Generation does not stop at <|im_end|>. Decoding reuses a float64 K/V cache.

import base64
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the fixture machine's cores are shared

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "tests/fixtures/smollm2_golden.json")
NEW_TOKENS = 32
N_SPECIAL = 17

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who every morning",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "<|im_start|>user\nWhat is the boiling point of water in Celsius?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWrite a haiku about autumn leaves.<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 5, 8, 13, 21, 34,",
    "Question: What is 127 + 385?\nAnswer:",
    "La capitale de l'Allemagne est Berlin. Der schnelle braune Fuchs springt über den faulen Hund. 東京は",
]


class Gguf:
    """Metadata values and float64 tensors ([rows, cols] = [out, in]) of a GGUF file."""

    def __init__(self, path):
        self.reader = GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}

    def value(self, key):
        return self.reader.fields[key].contents()

    def tensor(self, name):
        t = self.tensors[name]
        return dequantize(t.data, t.tensor_type).astype(np.float64)


class Config:
    def __init__(self, gguf):
        assert gguf.value("general.architecture") == "llama"
        self.n_layers = int(gguf.value("llama.block_count"))
        self.hidden = int(gguf.value("llama.embedding_length"))
        self.n_heads = int(gguf.value("llama.attention.head_count"))
        self.n_kv_heads = int(gguf.value("llama.attention.head_count_kv"))
        self.head_dim = self.hidden // self.n_heads
        self.eps = float(gguf.value("llama.attention.layer_norm_rms_epsilon"))
        self.theta = float(gguf.value("llama.rope.freq_base"))
        assert int(gguf.value("llama.rope.dimension_count")) == self.head_dim


def build_tokenizer(gguf):
    assert gguf.value("tokenizer.ggml.model") == "gpt2" and gguf.value("tokenizer.ggml.pre") == "smollm"
    tokens = gguf.value("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in gguf.value("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens[:N_SPECIAL]])
    return tok


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x):
    return x / (1.0 + np.exp(-x))


def rope_adjacent(x, positions, theta):
    """Rotates pairs (2i, 2i+1) of every head of x [seq, heads, dim] by pos·θ^(−2i/dim)."""
    dim = x.shape[-1]
    freqs = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = positions[:, None].astype(np.float64) * freqs[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


class Layer:
    def __init__(self, gguf, i):
        w = lambda part: gguf.tensor(f"blk.{i}.{part}.weight")  # noqa: E731
        self.attn_norm, self.ffn_norm = w("attn_norm"), w("ffn_norm")
        self.wq, self.wk, self.wv, self.wo = w("attn_q"), w("attn_k"), w("attn_v"), w("attn_output")
        self.gate, self.up, self.down = w("ffn_gate"), w("ffn_up"), w("ffn_down")


class Model:
    def __init__(self, gguf):
        self.cfg = Config(gguf)
        self.embd = gguf.tensor("token_embd.weight")  # [vocab, hidden], also the tied lm_head
        self.output_norm = gguf.tensor("output_norm.weight")
        assert "output.weight" not in gguf.tensors
        self.layers = [Layer(gguf, i) for i in range(self.cfg.n_layers)]

    def attention(self, layer, n, positions, cache):
        """Causal GQA over the cached keys/values plus those of `n` [seq, hidden]; extends `cache`."""
        c = self.cfg
        seq = n.shape[0]
        q = rope_adjacent((n @ layer.wq.T).reshape(seq, c.n_heads, c.head_dim), positions, c.theta)
        k = rope_adjacent((n @ layer.wk.T).reshape(seq, c.n_kv_heads, c.head_dim), positions, c.theta)
        v = (n @ layer.wv.T).reshape(seq, c.n_kv_heads, c.head_dim)
        cache["k"] = k if cache.get("k") is None else np.concatenate([cache["k"], k])
        cache["v"] = v if cache.get("v") is None else np.concatenate([cache["v"], v])
        keys, values = cache["k"], cache["v"]
        group = c.n_heads // c.n_kv_heads
        kv_positions = np.arange(keys.shape[0])
        mask = kv_positions[None, :] > positions[:, None]  # [seq, total]
        out = np.empty((seq, c.n_heads, c.head_dim))
        for h in range(c.n_heads):
            scores = q[:, h, :] @ keys[:, h // group, :].T / np.sqrt(c.head_dim)
            scores = np.where(mask, -np.inf, scores)
            p = np.exp(scores - scores.max(axis=-1, keepdims=True))
            out[:, h, :] = (p / p.sum(axis=-1, keepdims=True)) @ values[:, h // group, :]
        return out.reshape(seq, c.hidden) @ layer.wo.T

    def forward(self, ids, positions, caches):
        """Logits [seq, vocab] of `ids` at `positions`, extending the per-layer K/V `caches`."""
        c = self.cfg
        x = self.embd[np.asarray(ids)]
        for layer, cache in zip(self.layers, caches):
            x = x + self.attention(layer, rms_norm(x, layer.attn_norm, c.eps), positions, cache)
            m = rms_norm(x, layer.ffn_norm, c.eps)
            x = x + (silu(m @ layer.gate.T) * (m @ layer.up.T)) @ layer.down.T
        return rms_norm(x, self.output_norm, c.eps) @ self.embd.T

    def generate(self, ids):
        """(last prompt logits, greedy ids, best-minus-second logit gaps) for NEW_TOKENS steps."""
        caches = [{} for _ in self.layers]
        logits = self.forward(ids, np.arange(len(ids)), caches)[-1]
        prompt_logits, out, gaps = logits, [], []
        for step in range(NEW_TOKENS):
            top2 = np.argsort(logits)[-2:]
            out.append(int(top2[1]))
            gaps.append(float(logits[top2[1]] - logits[top2[0]]))
            if step + 1 < NEW_TOKENS:
                logits = self.forward([out[-1]], np.array([len(ids) + step]), caches)[-1]
        return prompt_logits, out, gaps


def f32_base64(values):
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def main():
    model_path = sys.argv[1] if len(sys.argv) > 1 else MODEL
    out_path = sys.argv[2] if len(sys.argv) > 2 else OUT
    start = time.time()
    gguf = Gguf(model_path)
    tokenizer = build_tokenizer(gguf)
    model = Model(gguf)
    print(f"loaded in {time.time() - start:.1f} s")
    prompts = []
    for text in PROMPTS:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        logits, greedy, gaps = model.generate(ids)
        continuation = tokenizer.decode(greedy, skip_special_tokens=False)
        print(f"{len(ids):3d} tokens {text!r:.60} -> {continuation!r:.80} (min gap {min(gaps):.3g})")
        prompts.append({
            "text": text,
            "input_ids": ids,
            "last_logits_f32_b64": f32_base64(logits),
            "greedy_ids": greedy,
            "greedy_text": continuation,
            "greedy_logit_gaps": gaps,
        })
    first = prompts[0]
    assert tokenizer.decode(first["greedy_ids"][:1]) == " Paris", first["greedy_text"]
    golden = {
        "generator": "scripts/golden_smollm2.py (float64 numpy, gguf-py 0.19.0 dequantization)",
        "model": os.path.basename(model_path),
        "model_size": os.path.getsize(model_path),
        "vocab_size": int(model.embd.shape[0]),
        "new_tokens": NEW_TOKENS,
        "prompts": prompts,
    }
    with open(out_path, "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
    print(f"{len(prompts)} prompts -> {out_path} ({os.path.getsize(out_path)} bytes) in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
