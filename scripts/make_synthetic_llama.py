#!/usr/bin/env python3
"""Writes small synthetic Hugging Face Llama-family checkpoints, their GGUF twins and reference logits.

Pinned dependencies: scripts/requirements-decoder.txt (gguf, numpy, tokenizers). Run through
`bash scripts/cache.sh synthetic` (into .cache/synthetic) or directly:

    make_synthetic_llama.py OUT_DIR [--tokenizer-gguf SMOLLM2.gguf]

Seeded and deterministic; rerunning rewrites the same files. Every model has hidden 64, 2 layers, 4 heads of
16, intermediate 128, the real SmolLM2 vocabulary (49152 tokens, tokenizer rebuilt from the SmolLM2 GGUF) and
max_position_embeddings 512. OUT_DIR receives, per entry of MODELS, an HF folder NAME/ (config.json,
safetensors, tokenizer.json, tokenizer_config.json, generation_config.json, expected.json) and, where the entry
has one, its GGUF twin NAME.gguf. See docs/decoders.md, "Synthetic checkpoints".

Self-checks (exit 1 and FAIL lines on failure): the HF folder read back by llama_reference equals the generated
weights; each GGUF twin, dequantized and un-permuted, equals the HF weights bit for bit and its float64 forward
(llama.cpp's RoPE on the permuted rows) gives the HF logits; greedy decoding over the KV cache equals greedy
decoding by recomputation.
"""

import base64
import json
import os
import shutil
import sys

import gguf
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_twin  # noqa: E402
import llama_reference  # noqa: E402
from hf_tokenizer_from_gguf import GgufTokenizerKeys, write_tokenizer_files  # noqa: E402

SEED = 20261206
HIDDEN, LAYERS, HEADS, HEAD_DIM, INTERMEDIATE, MAX_POSITIONS = 64, 2, 4, 16, 128, 512
TRANSFORMERS_VERSION = "4.55.4"
LLAMA3_SCALING = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 64, "rope_type": "llama3"}

# name, model_type, dtype, kv_heads, tied, rope_theta, rms_norm_eps, rope_scaling, shards, writes a GGUF twin
MODELS = [
    dict(name="llama-f32", model_type="llama", dtype="F32", kv_heads=2, tied=False, rope_theta=10000.0,
         rms_norm_eps=1e-5, rope_scaling=None, shards=1, gguf=True),
    dict(name="llama3-bf16-sharded", model_type="llama", dtype="BF16", kv_heads=2, tied=True, rope_theta=500000.0,
         rms_norm_eps=1e-5, rope_scaling=LLAMA3_SCALING, shards=2, gguf=False),
    dict(name="mistral-f16", model_type="mistral", dtype="F16", kv_heads=1, tied=False, rope_theta=1000000.0,
         rms_norm_eps=1e-5, rope_scaling=None, shards=1, gguf=True),
    dict(name="qwen2-f32", model_type="qwen2", dtype="F32", kv_heads=2, tied=True, rope_theta=1000000.0,
         rms_norm_eps=1e-6, rope_scaling=None, shards=1, gguf=True),
]
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
PROMPTS = [
    ("one token", "Hello"),
    ("sentence", "The quick brown fox jumps over the lazy dog near the river."),
    ("chat", "<|im_start|>user\nWhat is 12345 + 678? Write it in Python: print(12345 + 678)<|im_end|>\n"
             "<|im_start|>assistant\n"),
]
PER_POSITION_PROMPT, GREEDY_PROMPT, GREEDY_STEPS = "sentence", "sentence", 8
GGUF_LOGITS_TOLERANCE = 1e-9  # relative to max |logit|: only float64 summation order differs


# --- weights -----------------------------------------------------------------------------------------------------


def round_to_dtype(values, dtype):
    """float32 values rounded to `dtype` (F32, F16, BF16 round-to-nearest-even), still as float32."""
    values = values.astype(np.float32)
    if dtype == "F16":
        return values.astype(np.float16).astype(np.float32)
    if dtype == "BF16":
        bits = values.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return rounded.astype(np.uint32).view(np.float32)
    return values


def random_weights(spec, config, rng):
    """{HF name: float32} in the checkpoint dtype; linear and embedding ~ N(0, 1/fan_in) (std 1/sqrt(fan_in), so
    tied logits stay O(1)), norms ~ 1 + N(0, 0.1^2), qwen2 biases ~ N(0, 0.5^2)."""
    kv_rows = config["num_key_value_heads"] * HEAD_DIM
    vocab = config["vocab_size"]

    def linear(rows, cols):
        return rng.standard_normal((rows, cols)) / np.sqrt(cols)

    def norm():
        return 1.0 + 0.1 * rng.standard_normal(HIDDEN)

    weights = {"model.embed_tokens.weight": linear(vocab, HIDDEN)}  # also the lm_head when tied
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        weights[p + "input_layernorm.weight"] = norm()
        for proj, rows in (("q_proj", HEADS * HEAD_DIM), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            weights[f"{p}self_attn.{proj}.weight"] = linear(rows, HIDDEN)
            if spec["model_type"] == "qwen2":
                weights[f"{p}self_attn.{proj}.bias"] = 0.5 * rng.standard_normal(rows)
        weights[p + "self_attn.o_proj.weight"] = linear(HIDDEN, HEADS * HEAD_DIM)
        weights[p + "post_attention_layernorm.weight"] = norm()
        weights[p + "mlp.gate_proj.weight"] = linear(INTERMEDIATE, HIDDEN)
        weights[p + "mlp.up_proj.weight"] = linear(INTERMEDIATE, HIDDEN)
        weights[p + "mlp.down_proj.weight"] = linear(HIDDEN, INTERMEDIATE)
    weights["model.norm.weight"] = norm()
    if not spec["tied"]:
        weights["lm_head.weight"] = linear(vocab, HIDDEN)
    return {name: round_to_dtype(values, spec["dtype"]) for name, values in weights.items()}


# --- HF folder ---------------------------------------------------------------------------------------------------


def hf_config(spec, keys):
    """config.json as transformers writes it for the spec's model_type."""
    kind = spec["model_type"]
    config = {
        "architectures": [ARCHITECTURES[kind]],
        "attention_dropout": 0.0,
        "bos_token_id": int(keys.value("tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(keys.value("tokenizer.ggml.eos_token_id")),
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": kind,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": spec["kv_heads"],
        "rms_norm_eps": spec["rms_norm_eps"],
        "rope_scaling": spec["rope_scaling"],
        "rope_theta": spec["rope_theta"],
        "tie_word_embeddings": spec["tied"],
        "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[spec["dtype"]],
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": len(keys.tokens),
    }
    if kind in ("llama", "mistral"):
        config["head_dim"] = HEAD_DIM
    if kind == "llama":
        config.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    if kind == "mistral":
        config["sliding_window"] = None
        del config["rope_scaling"]
    if kind == "qwen2":
        config.update({"layer_types": ["full_attention"] * LAYERS, "max_window_layers": LAYERS,
                       "sliding_window": None, "use_sliding_window": False})
    return dict(sorted(config.items()))


def tensor_bytes(values, dtype):
    """Little-endian bytes of float32 `values` (already exact in `dtype`) stored as `dtype`."""
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F16":
        return values.astype("<f2").tobytes()
    return (values.view(np.uint32) >> 16).astype("<u2").tobytes()


def write_safetensors(file, tensors, dtype):
    """One .safetensors file of {name: float32} in `dtype`: u64 LE header length, JSON header, data."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        blob = tensor_bytes(tensors[name], dtype)
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(file, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    return offset


def shard_names(names, shards):
    """Consecutive groups of tensor names in model order (embedding first), one per shard."""
    ordered = sorted(names, key=lambda n: (n != "model.embed_tokens.weight", n.startswith("lm_head"), n))
    size = -(-len(ordered) // shards)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def write_weights(folder, weights, spec):
    if spec["shards"] == 1:
        write_safetensors(os.path.join(folder, "model.safetensors"), weights, spec["dtype"])
        return
    groups = shard_names(weights, spec["shards"])
    weight_map, total = {}, 0
    for index, group in enumerate(groups, start=1):
        file = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
        total += write_safetensors(os.path.join(folder, file), {n: weights[n] for n in group}, spec["dtype"])
        weight_map.update({name: file for name in group})
    write_json(os.path.join(folder, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_hf_folder(folder, spec, config, weights, keys):
    """The complete HF folder; returns the tokenizer."""
    os.makedirs(folder)
    write_json(os.path.join(folder, "config.json"), config)
    write_json(os.path.join(folder, "generation_config.json"), {
        "_from_model_config": True, "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
        "transformers_version": TRANSFORMERS_VERSION})
    write_weights(folder, weights, spec)
    return write_tokenizer_files(keys, folder, MAX_POSITIONS)


# --- expected logits ---------------------------------------------------------------------------------------------


def f32_base64(values):
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def expected_outputs(model, tokenizer, name):
    """expected.json: per prompt the ids and last-position logits, per-position argmax and a greedy run."""
    sequences, problems = [], []
    for label, text in PROMPTS:
        ids = tokenizer.encode(text).ids
        logits = model.forward(ids)
        entry = {"label": label, "text": text, "ids": ids, "last_argmax": int(np.argmax(logits[-1])),
                 "last_logits_f32le_base64": f32_base64(logits[-1])}
        if label == PER_POSITION_PROMPT:
            entry["argmax_per_position"] = [int(i) for i in np.argmax(logits, axis=-1)]
        sequences.append(entry)
        if np.std(logits[-1]) < 0.1:
            problems.append(f"{name}: last logits of {label!r} are degenerate (std {np.std(logits[-1]):.3g})")
    prompt = tokenizer.encode(dict(PROMPTS)[GREEDY_PROMPT]).ids
    greedy = model.greedy(prompt, GREEDY_STEPS)
    if greedy != greedy_by_recomputation(model, prompt, GREEDY_STEPS):
        problems.append(f"{name}: greedy decoding over the KV cache differs from recomputation")
    return {
        "model": name,
        "reference": "scripts/llama_reference.py (float64 numpy, transformers semantics)",
        "vocab_size": model.config.vocab_size,
        "logits_encoding": "base64 of little-endian float32, one value per vocabulary id",
        "sequences": sequences,
        "greedy": {"label": GREEDY_PROMPT, "prompt_ids": prompt, "new_ids": greedy,
                   "new_text": tokenizer.decode(greedy, skip_special_tokens=False)},
    }, problems


def greedy_by_recomputation(model, ids, steps):
    ids = list(ids)
    for _ in range(steps):
        ids.append(int(np.argmax(model.forward(ids)[-1])))
    return ids[-steps:]


def gguf_logit_problems(path, reader, hf_model, tokenizer):
    """The GGUF forward (permuted Q/K, llama.cpp RoPE pairs) must give the HF logits."""
    gguf_model = llama_reference.load_gguf(path, reader)
    problems = []
    for label, text in PROMPTS:
        ids = tokenizer.encode(text).ids
        want, got = hf_model.forward(ids), gguf_model.forward(ids)
        error = np.max(np.abs(want - got)) / np.max(np.abs(want))
        if not error <= GGUF_LOGITS_TOLERANCE:
            problems.append(f"{path}: logits of {label!r} differ from the HF folder's (relative {error:.3g})")
    return problems


# --- driver ------------------------------------------------------------------------------------------------------


def build_model(out_dir, spec, keys, rng):
    """Writes one HF folder (+ GGUF twin); returns the self-check problems."""
    name = spec["name"]
    folder, gguf_path = os.path.join(out_dir, name), os.path.join(out_dir, name + ".gguf")
    for stale in (folder, gguf_path):
        if os.path.isdir(stale):
            shutil.rmtree(stale)
        elif os.path.exists(stale):
            os.remove(stale)
    config = hf_config(spec, keys)
    weights = random_weights(spec, config, rng)
    tokenizer = write_hf_folder(folder, spec, config, weights, keys)
    model = llama_reference.load_hf_folder(folder)
    problems = [f"{folder}: tensor {n} read back differs" for n in weights
                if not np.array_equal(model.weights[n], weights[n])]
    expected, expected_problems = expected_outputs(model, tokenizer, name)
    write_json(os.path.join(folder, "expected.json"), expected)
    problems += expected_problems
    if spec["gguf"]:
        tensor_dtype = np.float16 if spec["dtype"] == "F16" else np.float32
        gguf_twin.write_gguf_twin(gguf_path, weights, config, tensor_dtype, keys, f"qfuse synthetic {name}")
        reader = gguf.GGUFReader(gguf_path)
        problems += gguf_twin.check_gguf_twin(gguf_path, reader, weights, config)
        problems += gguf_logit_problems(gguf_path, reader, model, tokenizer)
    return problems


def default_tokenizer_gguf():
    cache = os.environ.get("QFUSE_CACHE_DIR") or os.path.join(os.path.dirname(__file__), "..", ".cache")
    return os.path.join(cache, "models", "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")


def main(argv):
    args = argv[1:]
    tokenizer_gguf = default_tokenizer_gguf()
    if "--tokenizer-gguf" in args[:-1]:
        at = args.index("--tokenizer-gguf")
        tokenizer_gguf = args[at + 1]
        del args[at:at + 2]
    if len(args) != 1 or args[0].startswith("-"):
        print(f"usage: {argv[0]} OUT_DIR [--tokenizer-gguf SMOLLM2.gguf]", file=sys.stderr)
        return 2
    out_dir = args[0]
    os.makedirs(out_dir, exist_ok=True)
    keys = GgufTokenizerKeys(tokenizer_gguf)
    failed = False
    for spec in MODELS:
        rng = np.random.default_rng([SEED, MODELS.index(spec)])
        problems = build_model(out_dir, spec, keys, rng)
        for problem in problems:
            print(f"FAIL {problem}")
        print(f"{'FAIL' if problems else 'PASS'} {spec['name']}")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
