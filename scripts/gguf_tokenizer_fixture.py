#!/usr/bin/env python3
"""Writes tests/fixtures/smollm2_tokens.json, smollm2_chat.json and smollm2_layout.json.

An independent reference for qfuse's GGUF tokenizer (src/import/gguf/tokenizer.rs) and chat
templates (src/import/chat.rs): the vocabulary, merges and token types are read from the GGUF with
gguf-py, a tokenizer is built with HF `tokenizers` as docs/decoders.md describes (BPE over vocab
and merges, the pre-tokenizer llama.cpp uses for each `tokenizer.ggml.pre`, ByteLevel decoder,
control tokens special), and every test string is encoded with each supported pre-tokenizer. The
chat template is rendered with Jinja2 the way `transformers` renders it (sandboxed,
trim_blocks, lstrip_blocks). The layout fixture lists what gguf-py reads from the container (version,
alignment, every key with its type, every tensor with dims, type and offset, and the first values
of the F32 tensors) for tests/gguf_reader.rs.

Usage: .cache/pyenv/bin/python scripts/gguf_tokenizer_fixture.py [GGUF]
(`bash scripts/cache.sh pyenv decoder` installs the environment and the model.)
"""
import json
import sys
from pathlib import Path

import gguf
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GGUF = ROOT / ".cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.cpp (src/llama-vocab.cpp) splits before BPE, per tokenizer.ggml.pre.
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level(use_regex):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=use_regex)


def split(regex):
    return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)


PRE = {
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level(True)]),
    "gpt2": lambda: byte_level(True),
    "llama-bpe": lambda: pre_tokenizers.Sequence([split(LLAMA3), byte_level(False)]),
    "qwen2": lambda: pre_tokenizers.Sequence([split(QWEN2), byte_level(False)]),
}

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It's a test: we'll see what they've done, isn't it? I'd say you're right.",
    "def add(a, b):\n    return a + b\n",
    "fn main() {\n\tlet x = vec![1, 2, 3];\n\tprintln!(\"{:?}\", x);\n}",
    "if (x >= 10 && y != 0) { z = x / y; } // comment",
    "1234567",
    "pi is 3.14159 and e is 2.71828",
    "Call 555-0123 or +1 (800) 123-4567 before 2026-12-31.",
    "1,000,000 dollars = 10^6 USD",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧‍👦.",
    "日本語のテキストを分割します。",
    "中文分词测试：你好，世界！",
    "한국어 문장입니다.",
    "Café, naïve, façade, jalapeño, Ångström, Straße.",
    "Привет, мир! Как дела?",
    "Ελληνικά γράμματα",
    "مرحبا بالعالم",
    " leading space",
    "trailing space ",
    "multiple   spaces    here",
    "   ",
    "line one\nline two\n\nline four",
    "\n\n\n",
    "tabs\tand\t\ttabs",
    "mixed \t\n whitespace \r\n end",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after eos",
    "not special: <|im_start without end",
    "URL: https://example.com/path?query=1&b=2#frag",
    "email@example.org, @handle, #hashtag",
    "UPPERCASE and MiXeD CaSe WORDS",
    "a",
    "",
    "The year 2024 had 366 days; 12 months × 30.5 ≈ 366.",
    "''''\"\"\"```",
    "JSON: {\"key\": [1, 2.5, null, true]}",
]


def read_vocab(path):
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()
    return {
        "tokens": field("tokenizer.ggml.tokens"),
        "types": field("tokenizer.ggml.token_type"),
        "merges": field("tokenizer.ggml.merges"),
        "pre": field("tokenizer.ggml.pre"),
        "bos": field("tokenizer.ggml.bos_token_id"),
        "eos": field("tokenizer.ggml.eos_token_id"),
        "template": field("tokenizer.chat_template"),
    }


def build(vocab, pre):
    table = {tok: i for i, tok in enumerate(vocab["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in vocab["merges"]]
    tok = Tokenizer(models.BPE(table, merges, ignore_merges=(pre == "llama-bpe")))
    tok.pre_tokenizer = PRE[pre]()
    tok.decoder = decoders.ByteLevel()
    typed = lambda ty: [t for t, k in zip(vocab["tokens"], vocab["types"]) if k == ty]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in typed(3)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in typed(4)])
    return tok


def token_cases(vocab):
    tokenizers = {pre: build(vocab, pre) for pre in PRE}
    cases = []
    for text in TEXTS:
        ids = {pre: tok.encode(text).ids for pre, tok in tokenizers.items()}
        decoded = tokenizers[vocab["pre"]].decode(ids[vocab["pre"]], skip_special_tokens=False)
        cases.append({"text": text, "ids": ids, "decoded": decoded})
    return cases


def chat_cases(vocab):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(vocab["template"])
    bos, eos = vocab["tokens"][vocab["bos"]], vocab["tokens"][vocab["eos"]]
    conversations = [
        ([("system", "You are a terse assistant."), ("user", "What is the capital of France?")], True),
        ([("user", "Write a haiku about GPUs.")], True),
        ([("user", "hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")], False),
    ]
    cases = []
    for turns, add_generation_prompt in conversations:
        messages = [{"role": r, "content": c} for r, c in turns]
        rendered = template.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)
        cases.append({"messages": messages, "add_generation_prompt": add_generation_prompt, "rendered": rendered})
    return {"bos_token": bos, "eos_token": eos, "cases": cases}


def layout(path):
    reader = gguf.GGUFReader(path)
    keys = []
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        types = [gguf.GGUFValueType(t).name for t in field.types]
        keys.append({"key": name, "type": types, "count": len(field.data)})
    tensors = []
    for t in reader.tensors:
        entry = {"name": t.name, "dims": [int(d) for d in t.shape], "type": t.tensor_type.name,
                 "offset": int(t.data_offset - reader.data_offset), "bytes": int(t.n_bytes)}
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            entry["first"] = [float(x) for x in t.data.reshape(-1)[:4]]
        tensors.append(entry)
    version = int(reader.fields["GGUF.version"].contents())
    return {"version": version, "alignment": int(reader.alignment), "data_start": int(reader.data_offset),
            "file_bytes": path.stat().st_size, "keys": keys, "tensors": tensors}


def write(path, data):
    # One line per list entry keeps the files diffable without a line per token id.
    body = {k: v for k, v in data.items() if not isinstance(v, list) or not v or not isinstance(v[0], dict)}
    lists = {k: v for k, v in data.items() if k not in body}
    text = json.dumps(body, ensure_ascii=False, indent=1)[:-2]
    for name, entries in lists.items():
        rows = ",\n  ".join(json.dumps(e, ensure_ascii=False) for e in entries)
        text += f',\n "{name}": [\n  {rows}\n ]'
    path.write_text(text + "\n}\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")


def main():
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_GGUF
    vocab = read_vocab(model)
    source = {"model": model.name, "gguf": gguf.__name__ + "-py", "pre": vocab["pre"]}
    write(ROOT / "tests/fixtures/smollm2_tokens.json", {**source, "pre_tokenizers": list(PRE), "cases": token_cases(vocab)})
    write(ROOT / "tests/fixtures/smollm2_chat.json", {**source, **chat_cases(vocab)})
    write(ROOT / "tests/fixtures/smollm2_layout.json", {**source, **layout(model)})


if __name__ == "__main__":
    main()
