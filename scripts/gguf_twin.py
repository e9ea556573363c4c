#!/usr/bin/env python3
"""GGUF twins of synthetic HF Llama-family checkpoints, written with gguf-py as convert_hf_to_gguf.py would.

Pinned dependencies: scripts/requirements-decoder.txt (gguf, numpy).

`write_gguf_twin` takes HF-named float32 weights (values already exact in the checkpoint dtype) and the HF
config dict; arch `llama` (model_type llama and mistral) gets llama.cpp's Q/K row permutation
(`permute_for_llama_rope`), arch `qwen2` keeps HF order (NeoX RoPE). 2-D tensors are stored in `tensor_dtype`
(F32 or F16), 1-D tensors (norms, biases) always in F32, as convert_hf_to_gguf.py does. The tokenizer.ggml.* and
tokenizer.chat_template keys are copied verbatim from a source GGUF (read once into `GgufTokenizerKeys`). `check_gguf_twin` reads the file back,
dequantizes, undoes the permutation and demands bit-equality with the HF weights.
"""

import gguf
import numpy as np

from llama_reference import GGUF_BLOCK_TO_HF, GGUF_TO_HF

# The inverse of the reference's GGUF → HF tensor-name maps (one table, kept in llama_reference.py).
HF_TO_GGUF = {hf: gg for gg, hf in GGUF_TO_HF.items()}
HF_LAYER_TO_GGUF = {hf: gg for gg, hf in GGUF_BLOCK_TO_HF.items()}
GGUF_ARCH_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
FILE_TYPE = {np.float32: gguf.LlamaFileType.ALL_F32, np.float16: gguf.LlamaFileType.MOSTLY_F16}


def gguf_name(hf_name):
    """The GGUF tensor name of an HF tensor name (KeyError if it has none)."""
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{HF_LAYER_TO_GGUF[rest]}"


def permute_for_llama_rope(rows, heads):
    """HF rotate-half row order -> llama.cpp interleaved order, per head (rows[heads * d, ...])."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def unpermute_llama_rope(rows, heads):
    """Inverse of `permute_for_llama_rope`."""
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def rope_heads(hf_name, config):
    """Heads to permute over for q_proj / k_proj tensors of a llama-arch model, else None."""
    if hf_name.endswith("self_attn.q_proj.weight") or hf_name.endswith("self_attn.q_proj.bias"):
        return config["num_attention_heads"]
    if hf_name.endswith("self_attn.k_proj.weight") or hf_name.endswith("self_attn.k_proj.bias"):
        return config["num_key_value_heads"]
    return None


def add_hparams(writer, arch, config, name, file_type):
    """The general.* and {arch}.* keys convert_hf_to_gguf.py writes for these configs."""
    writer.add_type("model")
    writer.add_name(name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if config.get("head_dim") is not None:
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    writer.add_file_type(file_type)
    if arch == "llama":
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(config.get("head_dim") or
                                        config["hidden_size"] // config["num_attention_heads"])


def copy_tokenizer_keys(writer, tokenizer_keys):
    """Every tokenizer.* key of a `GgufTokenizerKeys`, same value types."""
    for key, (value, types) in tokenizer_keys.typed.items():
        sub_type = types[1] if types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, types[0], sub_type)


def write_gguf_twin(path, weights, config, tensor_dtype, tokenizer_keys, name):
    """Writes `weights` (HF names, float32) as an unquantized GGUF at `path`."""
    arch = GGUF_ARCH_OF_MODEL_TYPE[config["model_type"]]
    writer = gguf.GGUFWriter(path, arch)
    add_hparams(writer, arch, config, name, FILE_TYPE[tensor_dtype])
    copy_tokenizer_keys(writer, tokenizer_keys)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for hf_name, tensor in weights.items():
        heads = rope_heads(hf_name, config) if arch == "llama" else None
        if heads is not None:
            tensor = permute_for_llama_rope(tensor, heads)
        stored = tensor.astype(tensor_dtype if tensor.ndim == 2 else np.float32)
        writer.add_tensor(gguf_name(hf_name), np.ascontiguousarray(stored))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def check_gguf_twin(path, reader, weights, config):
    """Problems (strings) found comparing the GGUF at `path` (open in `reader`) with the HF weights; empty when it
    matches exactly."""
    arch = GGUF_ARCH_OF_MODEL_TYPE[config["model_type"]]
    problems = []
    if reader.fields["general.architecture"].contents() != arch:
        problems.append(f"{path}: general.architecture is not {arch}")
    stored = {t.name: t for t in reader.tensors}
    expected = {gguf_name(n): n for n in weights}
    for missing in sorted(set(expected) - set(stored)):
        problems.append(f"{path}: tensor {missing} missing")
    for extra in sorted(set(stored) - set(expected)):
        problems.append(f"{path}: unexpected tensor {extra}")
    for gname, hf_name in expected.items():
        if gname not in stored:
            continue
        tensor = stored[gname]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        heads = rope_heads(hf_name, config) if arch == "llama" else None
        if heads is not None:
            values = unpermute_llama_rope(values, heads)
        if values.shape != weights[hf_name].shape or not np.array_equal(values, weights[hf_name]):
            problems.append(f"{path}: tensor {gname} differs from {hf_name}")
    return problems
