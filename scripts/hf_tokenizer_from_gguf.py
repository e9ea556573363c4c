#!/usr/bin/env python3
"""Rebuild a Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) from a GGUF's tokenizer.ggml.* keys.

Pinned dependencies: scripts/requirements-decoder.txt (gguf, tokenizers).

Contract: only `tokenizer.ggml.model = gpt2` with `tokenizer.ggml.pre = smollm` is supported (the SmolLM2 default
decoder, docs/decoders.md); anything else raises ValueError naming the file and the key. The result has the same
structure as SmolLM2's own tokenizer.json: byte-level BPE from the GGUF vocabulary and merges, pre-tokenizer
`Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)])`, ByteLevel
post-processor and decoder, and every control token (token_type 3) registered as a special token.

Usage as a script: hf_tokenizer_from_gguf.py MODEL.gguf OUT_DIR  (writes tokenizer.json and tokenizer_config.json)
"""

import json
import os
import sys

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

SUPPORTED_PRE = ("smollm",)
CONTROL_TOKEN_TYPE = 3


class GgufTokenizerKeys:
    """The tokenizer.ggml.* values of one GGUF file, read with gguf-py."""

    def __init__(self, path):
        self.path = path
        reader = gguf.GGUFReader(path)
        # {key: (value, [GGUFValueType, element type if an array])}, decoded once: gguf-py's field parsing is slow.
        self.typed = {k: (f.contents(), list(f.types)) for k, f in reader.fields.items() if k.startswith("tokenizer.")}
        model = self.value("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"{path}: tokenizer.ggml.model is {model!r}; only 'gpt2' (byte-level BPE) is supported")
        pre = self.value("tokenizer.ggml.pre")
        if pre not in SUPPORTED_PRE:
            raise ValueError(f"{path}: tokenizer.ggml.pre is {pre!r}; supported: {', '.join(SUPPORTED_PRE)}")
        self.tokens = list(self.value("tokenizer.ggml.tokens"))
        self.token_types = list(self.value("tokenizer.ggml.token_type"))
        self.merges = list(self.value("tokenizer.ggml.merges"))
        if len(self.token_types) != len(self.tokens):
            raise ValueError(f"{path}: tokenizer.ggml.token_type has {len(self.token_types)} entries "
                             f"for {len(self.tokens)} tokens")

    def value(self, key, default=None):
        """The decoded value of `key`; `default` if absent and a default is given, else ValueError."""
        if key not in self.typed:
            if default is not None:
                return default
            raise ValueError(f"{self.path}: missing key {key}")
        return self.typed[key][0]

    def token(self, key):
        """The token string whose id is stored under `key` (e.g. tokenizer.ggml.bos_token_id)."""
        index = int(self.value(key))
        if not 0 <= index < len(self.tokens):
            raise ValueError(f"{self.path}: {key} = {index} is outside the vocabulary of {len(self.tokens)}")
        return self.tokens[index]

    def special_tokens(self):
        """(id, text) of every control token, in id order."""
        return [(i, t) for i, t in enumerate(self.tokens) if self.token_types[i] == CONTROL_TOKEN_TYPE]


def build_tokenizer(keys):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's byte-level BPE vocabulary."""
    vocab = {token: index for index, token in enumerate(keys.tokens)}
    merges = []
    for line, merge in enumerate(keys.merges):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{keys.path}: tokenizer.ggml.merges[{line}] = {merge!r} is not two tokens")
        merges.append((parts[0], parts[1]))
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(text, special=True, normalized=False)
                                  for _, text in keys.special_tokens()])
    return tokenizer


def tokenizer_config(keys, model_max_length):
    """tokenizer_config.json as transformers writes it for a GPT-2-style tokenizer with a chat template."""
    added = {
        str(index): {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
        for index, text in keys.special_tokens()
    }
    bos, eos = keys.token("tokenizer.ggml.bos_token_id"), keys.token("tokenizer.ggml.eos_token_id")
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [bos, eos],
        "bos_token": bos,
        "chat_template": keys.value("tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "model_max_length": model_max_length,
        "pad_token": keys.token("tokenizer.ggml.padding_token_id"),
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": keys.token("tokenizer.ggml.unknown_token_id"),
        "vocab_size": len(keys.tokens),
    }


def write_tokenizer_files(keys, out_dir, model_max_length):
    """Writes tokenizer.json and tokenizer_config.json into `out_dir`; returns the Tokenizer."""
    tokenizer = build_tokenizer(keys)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(keys, model_max_length), f, indent=2, ensure_ascii=False)
        f.write("\n")
    return tokenizer


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} MODEL.gguf OUT_DIR", file=sys.stderr)
        return 2
    os.makedirs(argv[2], exist_ok=True)
    write_tokenizer_files(GgufTokenizerKeys(argv[1]), argv[2], model_max_length=8192)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
