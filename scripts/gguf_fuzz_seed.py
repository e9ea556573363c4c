#!/usr/bin/env python3
"""Writes the seed corpus of the `gguf` fuzz target (fuzz/corpus/gguf/) with gguf-py.

Two small files with the structure of a real model: `tensors.gguf` (scalar keys of several types,
a string array, a nested array, three tensors: F32, F16 and Q8_0) and `tokenizer.gguf` (the same
plus a byte-level BPE vocabulary of 256 byte tokens, two control tokens, a few merges, a chat
template), so that mutations reach the tensor checks and the tokenizer builder.

Usage: .cache/pyenv/bin/python scripts/gguf_fuzz_seed.py
"""
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz/corpus/gguf"


def byte_tokens():
    """GPT-2's byte-to-unicode table: printable bytes map to themselves, others above U+0100."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def add_common(w):
    w.add_string("general.name", "fuzz seed")
    w.add_uint32("llama.block_count", 1)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("general.flag", True)
    w.add_int64("general.big", -(2**40))
    w.add_array("general.languages", ["en", "fr"])
    w.add_key_value("general.nested", [[1, 2], [3]], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.ARRAY)
    rng = np.random.default_rng(0)
    w.add_tensor("norm.weight", rng.standard_normal((3, 4)).astype(np.float32))
    w.add_tensor("bias", rng.standard_normal(8).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("proj.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def add_tokenizer(w):
    tokens = ["<|im_start|>", "<|im_end|>"] + byte_tokens() + ["Ġt", "Ġth", "he"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    w.add_token_merges(["Ġ t", "Ġt h", "h e"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")


def write(name, *adders):
    path = OUT / name
    w = gguf.GGUFWriter(path, "llama")
    for add in adders:
        add(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    write("tensors.gguf", add_common)
    write("tokenizer.gguf", add_common, add_tokenizer)


if __name__ == "__main__":
    main()
