#!/usr/bin/env python3
"""Independent float64 numpy reference of Llama-family decoders (model_type llama, mistral, qwen2).

Pinned dependencies: scripts/requirements-decoder.txt (numpy; gguf only for `load_gguf`).

It follows transformers' modeling_{llama,mistral,qwen2}.py semantics, everything in float64: token embedding;
per layer x += o_proj(attention(rope(q), rope(k), v)) on RMSNorm(x) and x += down(silu(gate(h)) * up(h)) on
RMSNorm(x); final RMSNorm; lm_head (or the tied embedding). RMSNorm is w * x / sqrt(mean(x^2) + eps). RoPE is
HF's rotate-half form (pairs i, i + d/2) with inv_freq = rope_theta^(-2i/d), rescaled by rope_scaling type llama3
exactly as transformers' `_compute_llama3_parameters`. Attention is causal, grouped-query (KV head h // (heads /
kv_heads)), scaled by 1/sqrt(head_dim). qwen2 adds q/k/v biases (llama: when attention_bias is true). Weights are
read from safetensors by hand (F32, F16, BF16), single-file or sharded through model.safetensors.index.json.

`load_gguf` reads an unquantized GGUF written like convert_hf_to_gguf.py (arch llama or qwen2) *without*
undoing the Q/K row permutation: for arch llama it runs RoPE on adjacent pairs (2i, 2i+1), as llama.cpp does, so
agreement with the HF folder proves the permutation and the GGUF metadata right.

Differences from transformers run in its own dtype: transformers computes RoPE tables in float32 and matmuls in
the checkpoint dtype; this reference does everything in float64 from the exactly-widened stored weights.

CLI: llama_reference.py MODEL_DIR_OR_GGUF ID [ID ...] [--greedy N]
prints the argmax and top-5 of the last position, and with --greedy N the N greedy continuation ids.
"""

import json
import math
import os
import struct
import sys

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SAFETENSORS_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": (None, 2)}
MAX_SAFETENSORS_HEADER = 100 << 20


class Config:
    """The hyper-parameters the forward needs, validated."""

    def __init__(self, *, model_type, vocab_size, hidden, layers, heads, kv_heads, head_dim, intermediate,
                 rms_eps, rope_theta, rope_scaling, tied, qkv_bias, rope_pairs, source):
        self.model_type = model_type
        self.vocab_size = vocab_size
        self.hidden = hidden
        self.layers = layers
        self.heads = heads
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.intermediate = intermediate
        self.rms_eps = rms_eps
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.tied = tied
        self.qkv_bias = qkv_bias
        self.rope_pairs = rope_pairs  # "half" (HF rotate-half) or "adjacent" (llama.cpp on permuted Q/K)
        if heads % kv_heads != 0:
            raise ValueError(f"{source}: {heads} attention heads are not a multiple of {kv_heads} KV heads")
        if head_dim % 2 != 0:
            raise ValueError(f"{source}: head_dim {head_dim} is odd")


def config_from_hf(path):
    """Config from an HF folder's config.json; ValueError naming the file and field on bad or unsupported input."""
    file = os.path.join(path, "config.json")
    with open(file, encoding="utf-8") as f:
        raw = json.load(f)

    def field(name, default=None):
        value = raw.get(name, default)
        if value is None:
            raise ValueError(f"{file}: missing field {name}")
        return value

    model_type = field("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{file}: model_type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    if model_type == "mistral" and raw.get("sliding_window") is not None:
        raise ValueError(f"{file}: sliding_window {raw['sliding_window']} is not supported by this reference")
    if model_type == "qwen2" and raw.get("use_sliding_window"):
        raise ValueError(f"{file}: use_sliding_window true is not supported by this reference")
    heads = int(field("num_attention_heads"))
    hidden = int(field("hidden_size"))
    head_dim = raw.get("head_dim") or hidden // heads
    return Config(
        model_type=model_type, vocab_size=int(field("vocab_size")), hidden=hidden,
        layers=int(field("num_hidden_layers")), heads=heads,
        kv_heads=int(raw.get("num_key_value_heads") or heads), head_dim=int(head_dim),
        intermediate=int(field("intermediate_size")), rms_eps=float(field("rms_norm_eps")),
        rope_theta=float(raw.get("rope_theta", 10000.0)), rope_scaling=rope_scaling_from_hf(file, raw),
        tied=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)), rope_pairs="half", source=file)


def rope_scaling_from_hf(file, raw):
    """None for plain RoPE, else the validated llama3 rope_scaling dict."""
    scaling = raw.get("rope_scaling")
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ValueError(f"{file}: rope_scaling.rope_type {kind!r} is not supported (default, llama3)")
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if not isinstance(scaling.get(key), (int, float)):
            raise ValueError(f"{file}: rope_scaling.{key} is missing or not a number")
    return dict(scaling)


def rope_inv_freq(config):
    """inv_freq[d/2] as transformers computes it (default or llama3 scaling), in float64."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled)


def apply_rope(x, positions, inv_freq, pairs):
    """Rotates x[heads, T, d] at `positions`; `pairs` is "half" (i, i+d/2) or "adjacent" (2i, 2i+1)."""
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]  # [T, d/2]
    cos, sin = np.cos(angles), np.sin(angles)
    if pairs == "half":
        half = x.shape[-1] // 2
        first, second = x[..., :half], x[..., half:]
        return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = odd * cos + even * sin
    return out


def rms_norm(x, weight, eps):
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def silu(x):
    return x / (1.0 + np.exp(-x))


class KvCache:
    """Per-layer K and V, each [kv_heads, positions, head_dim], after RoPE."""

    def __init__(self, layers):
        self.keys = [None] * layers
        self.values = [None] * layers
        self.length = 0

    def extend(self, layer, k, v):
        if self.keys[layer] is not None:
            k = np.concatenate([self.keys[layer], k], axis=1)
            v = np.concatenate([self.values[layer], v], axis=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class Model:
    """A config and float64 weights under HF names (model.layers.N.self_attn.q_proj.weight, ...)."""

    def __init__(self, config, weights, source):
        self.config = config
        self.weights = weights
        self.source = source
        self.inv_freq = rope_inv_freq(config)
        check_weights(self)

    def w(self, name):
        return self.weights[name]

    def lm_head(self):
        return self.w("model.embed_tokens.weight" if self.config.tied else "lm_head.weight")

    def forward(self, ids, cache=None):
        """Logits [len(ids), vocab] for `ids` appended after the cache's positions (cache updated in place)."""
        cfg = self.config
        cache = cache if cache is not None else KvCache(cfg.layers)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or ids.max() >= cfg.vocab_size:
            raise ValueError(f"{self.source}: token ids must be a non-empty list in [0, {cfg.vocab_size})")
        positions = np.arange(cache.length, cache.length + ids.size)
        x = self.w("model.embed_tokens.weight")[ids]
        for layer in range(cfg.layers):
            prefix = f"model.layers.{layer}."
            h = rms_norm(x, self.w(prefix + "input_layernorm.weight"), cfg.rms_eps)
            x = x + self.attention(prefix, layer, h, positions, cache)
            h = rms_norm(x, self.w(prefix + "post_attention_layernorm.weight"), cfg.rms_eps)
            x = x + self.mlp(prefix, h)
        cache.length += ids.size
        x = rms_norm(x, self.w("model.norm.weight"), cfg.rms_eps)
        return x @ self.lm_head().T

    def projection(self, prefix, name, h, heads):
        """h @ W.T (+ bias) reshaped to [heads, T, head_dim]."""
        out = h @ self.w(f"{prefix}self_attn.{name}.weight").T
        if self.config.qkv_bias:
            out = out + self.w(f"{prefix}self_attn.{name}.bias")
        return out.reshape(h.shape[0], heads, self.config.head_dim).transpose(1, 0, 2)

    def attention(self, prefix, layer, h, positions, cache):
        cfg = self.config
        q = self.projection(prefix, "q_proj", h, cfg.heads)
        k = self.projection(prefix, "k_proj", h, cfg.kv_heads)
        v = self.projection(prefix, "v_proj", h, cfg.kv_heads)
        q = apply_rope(q, positions, self.inv_freq, cfg.rope_pairs)
        k = apply_rope(k, positions, self.inv_freq, cfg.rope_pairs)
        keys, values = cache.extend(layer, k, v)
        group = cfg.heads // cfg.kv_heads
        keys, values = np.repeat(keys, group, axis=0), np.repeat(values, group, axis=0)
        scores = q @ keys.transpose(0, 2, 1) / math.sqrt(cfg.head_dim)  # [heads, T, S]
        key_positions = np.arange(keys.shape[1])
        scores = np.where(key_positions[None, None, :] <= positions[None, :, None], scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        out = (probs @ values).transpose(1, 0, 2).reshape(h.shape[0], cfg.heads * cfg.head_dim)
        return out @ self.w(prefix + "self_attn.o_proj.weight").T

    def mlp(self, prefix, h):
        gate = h @ self.w(prefix + "mlp.gate_proj.weight").T
        up = h @ self.w(prefix + "mlp.up_proj.weight").T
        return (silu(gate) * up) @ self.w(prefix + "mlp.down_proj.weight").T

    def greedy(self, ids, steps):
        """`steps` greedy token ids after `ids`, one decode step at a time over the KV cache."""
        cache = KvCache(self.config.layers)
        logits = self.forward(ids, cache)
        out = []
        for _ in range(steps):
            out.append(int(np.argmax(logits[-1])))
            logits = self.forward([out[-1]], cache)
        return out


def expected_shapes(config):
    """{HF tensor name: shape} of every tensor the forward reads."""
    c = config
    q_rows, kv_rows = c.heads * c.head_dim, c.kv_heads * c.head_dim
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.hidden), "model.norm.weight": (c.hidden,)}
    if not c.tied:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden)
    for layer in range(c.layers):
        p = f"model.layers.{layer}."
        shapes.update({
            p + "input_layernorm.weight": (c.hidden,), p + "post_attention_layernorm.weight": (c.hidden,),
            p + "self_attn.q_proj.weight": (q_rows, c.hidden), p + "self_attn.k_proj.weight": (kv_rows, c.hidden),
            p + "self_attn.v_proj.weight": (kv_rows, c.hidden), p + "self_attn.o_proj.weight": (c.hidden, q_rows),
            p + "mlp.gate_proj.weight": (c.intermediate, c.hidden), p + "mlp.up_proj.weight": (c.intermediate, c.hidden),
            p + "mlp.down_proj.weight": (c.hidden, c.intermediate),
        })
        if c.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q_rows,), p + "self_attn.k_proj.bias": (kv_rows,),
                           p + "self_attn.v_proj.bias": (kv_rows,)})
    return shapes


def check_weights(model):
    for name, shape in expected_shapes(model.config).items():
        tensor = model.weights.get(name)
        if tensor is None:
            raise ValueError(f"{model.source}: missing tensor {name}")
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{model.source}: tensor {name} has shape {list(tensor.shape)}, expected {list(shape)}")


# --- safetensors -----------------------------------------------------------------------------------------------


def read_safetensors(file):
    """{name: float64 array} of one .safetensors file (F32, F16, BF16); ValueError naming file and tensor."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{file}: shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise ValueError(f"{file}: header length {header_len} exceeds the file")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as error:
            raise ValueError(f"{file}: the header is not JSON ({error})") from None
        data = f.read()
    if not isinstance(header, dict):
        raise ValueError(f"{file}: the header is not a JSON object")
    header.pop("__metadata__", None)
    return {name: decode_tensor(file, name, info, data) for name, info in header.items()}


def decode_tensor(file, name, info, data):
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"{file}: tensor {name} has no valid shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets):
        raise ValueError(f"{file}: tensor {name} has no valid data_offsets")
    begin, end = offsets
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"{file}: tensor {name} has dtype {dtype!r}; supported: {', '.join(SAFETENSORS_DTYPES)}")
    numpy_dtype, width = SAFETENSORS_DTYPES[dtype]
    count = math.prod(shape)
    if not 0 <= begin <= end <= len(data) or end - begin != count * width:
        raise ValueError(f"{file}: tensor {name} data_offsets [{begin}, {end}] do not fit shape {shape} {dtype}")
    raw = data[begin:end]
    if dtype == "BF16":
        values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(raw, dtype=numpy_dtype)
    return values.astype(np.float64).reshape(shape)


def read_hf_weights(path):
    """All tensors of an HF folder: model.safetensors or the shards listed by model.safetensors.index.json."""
    index = os.path.join(path, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_safetensors(os.path.join(path, "model.safetensors"))
    with open(index, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: missing field weight_map")
    weights = {}
    for shard in sorted(set(weight_map.values())):
        for name, tensor in read_safetensors(os.path.join(path, shard)).items():
            if weight_map.get(name) != shard:
                raise ValueError(f"{index}: tensor {name} found in {shard} but mapped to {weight_map.get(name)}")
            weights[name] = tensor
    missing = sorted(set(weight_map) - set(weights))
    if missing:
        raise ValueError(f"{index}: tensor {missing[0]} is mapped to {weight_map[missing[0]]} but absent there")
    return weights


def load_hf_folder(path):
    """The Model of an HF folder (config.json + safetensors)."""
    return Model(config_from_hf(path), read_hf_weights(path), path)


# --- GGUF (unquantized, as convert_hf_to_gguf.py writes llama and qwen2) -------------------------------------------

GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
GGUF_BLOCK_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GGUF_ROPE_PAIRS = {"llama": "adjacent", "qwen2": "half"}


def hf_name_of_gguf(file, name):
    if name in GGUF_TO_HF:
        return GGUF_TO_HF[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in GGUF_BLOCK_TO_HF:
        return f"model.layers.{parts[1]}.{GGUF_BLOCK_TO_HF[parts[2]]}"
    raise ValueError(f"{file}: tensor {name} is not part of a llama/qwen2 model")


def load_gguf(file, reader=None):
    """The Model of a GGUF file, Q/K rows left in GGUF order (see the module doc). `reader`: the file already
    open in a gguf.GGUFReader, to save parsing it again."""
    import gguf  # only this loader needs gguf-py

    reader = reader if reader is not None else gguf.GGUFReader(file)

    def key(name, default=None):
        field = reader.fields.get(name)
        if field is None:
            if default is None:
                raise ValueError(f"{file}: missing key {name}")
            return default
        return field.contents()

    arch = key("general.architecture")
    if arch not in GGUF_ROPE_PAIRS:
        raise ValueError(f"{file}: general.architecture {arch!r} is not llama or qwen2")
    weights = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            raise ValueError(f"{file}: tensor rope_freqs.weight (scaled RoPE) is not supported by this reference")
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64)
        weights[hf_name_of_gguf(file, tensor.name)] = values.reshape(tuple(reversed(tensor.shape.tolist())))
    hidden, heads = int(key(f"{arch}.embedding_length")), int(key(f"{arch}.attention.head_count"))
    config = Config(
        model_type=arch, vocab_size=weights["model.embed_tokens.weight"].shape[0], hidden=hidden,
        layers=int(key(f"{arch}.block_count")), heads=heads,
        kv_heads=int(key(f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(key(f"{arch}.attention.key_length", hidden // heads)),
        intermediate=int(key(f"{arch}.feed_forward_length")),
        rms_eps=float(key(f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(key(f"{arch}.rope.freq_base", 10000.0)), rope_scaling=None,
        tied="lm_head.weight" not in weights, qkv_bias="model.layers.0.self_attn.q_proj.bias" in weights,
        rope_pairs=GGUF_ROPE_PAIRS[arch], source=file)
    rope_dims = int(key(f"{arch}.rope.dimension_count", config.head_dim))
    if rope_dims != config.head_dim:
        raise ValueError(f"{file}: {arch}.rope.dimension_count {rope_dims} != head dim {config.head_dim} "
                         "(partial RoPE is not supported by this reference)")
    return Model(config, weights, file)


def load_model(path):
    """An HF folder or a .gguf file."""
    return load_gguf(path) if path.endswith(".gguf") else load_hf_folder(path)


def main(argv):
    args = argv[1:]
    steps = 0
    if "--greedy" in args[:-1]:
        at = args.index("--greedy")
        steps = int(args[at + 1])
        del args[at:at + 2]
    if len(args) < 2 or args[0].startswith("-"):
        print(f"usage: {argv[0]} MODEL_DIR_OR_GGUF ID [ID ...] [--greedy N]", file=sys.stderr)
        return 2
    model = load_model(args[0])
    ids = [int(a) for a in args[1:]]
    last = model.forward(ids)[-1]
    top = np.argsort(-last)[:5]
    print(json.dumps({"argmax": int(top[0]), "top5": [[int(i), float(last[i])] for i in top]}))
    if steps:
        print(json.dumps({"greedy": model.greedy(ids, steps)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
