#!/usr/bin/env python3
# Pinned dependencies (see scripts/requirements-golden.txt):
#   numpy==2.4.6
#   tokenizers==0.23.3
# Python 3.11. No torch / transformers / safetensors: the safetensors file is
# parsed by hand (8-byte LE header length, JSON header, raw little-endian data).
#
# Setup:
#   python3 -m venv .cache/pyenv
#   .cache/pyenv/bin/pip install -r scripts/requirements-golden.txt
# Usage:
#   .cache/pyenv/bin/python scripts/golden_minilm.py [model_dir] [out.json]
#   defaults: .cache/models/all-MiniLM-L6-v2  tests/fixtures/minilm_golden.json
#
# Independent float64 numpy reference of all-MiniLM-L6-v2 (BERT, 6 layers,
# hidden 384, 12 heads, intermediate 1536, LayerNorm eps 1e-12, exact erf GeLU,
# absolute positions, token_type ids all zero) followed by sentence-transformers
# mean pooling over the attention mask and L2 normalisation.
#
# Tokenizer note: tokenizer.json itself enables truncation
# ({"max_length": 128, "strategy": "LongestFirst", "stride": 0}) AND padding
# ({"strategy": {"Fixed": 128}, "pad_id": 0, "pad_token": "[PAD]", ...}).
# Padding is switched off here (no_padding) so the per-sentence ids are
# unpadded; truncation is (re)set explicitly to 128.
# NB: sentence_bert_config.json says max_seq_length 256, so sentence-transformers
# itself would NOT truncate a 129..256-token input; this fixture follows
# tokenizer.json (128). The long sentence here is 182 tokens untruncated.

import json
import math
import os
import struct
import sys
import time

import numpy as np
from tokenizers import Tokenizer

MAX_TOKENS = 128
NUM_LAYERS = 6
HIDDEN = 384
NUM_HEADS = 12
HEAD_DIM = HIDDEN // NUM_HEADS  # 32
LN_EPS = 1e-12

SENTENCES = [
    # --- ordinary English, incl. paraphrase pairs ---
    "Hi.",
    "The cat sits on the mat.",
    "A cat is sitting on a mat.",
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply after the interest rate announcement.",
    "Share prices dropped steeply when the central bank raised rates.",
    "How do I reset my password?",
    "What is the procedure for changing my login password?",
    "The quick brown fox jumps over the lazy dog.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "I love eating pizza with my friends on Friday nights.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "She forgot her umbrella, so she got soaked walking home in the rain.",
    # Published sentence-transformers examples (sbert.net docs) -- see PUBLISHED below.
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "The new movie is awesome",
    "The new movie is so great",
    "THE MEETING HAS BEEN MOVED TO tHuRsDaY afternoon, PlEaSe ConFiRm.",
    "Wait... what?! No way -- that's (really) \"impossible\"; isn't it?!?",
    "The package weighs 3.5 kg and measures 40 cm x 25 cm x 10 cm; it cost $19.99 (about 17,50 EUR) on 2023-04-01.",
    "buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo",
    # Long: well over 128 word pieces, so truncation is exercised.
    "In the early years of the twentieth century, the small coastal town was "
    "known mostly for its fishing fleet, its crooked lighthouse, and the "
    "annual festival that drew visitors from the surrounding villages; but "
    "when the railway finally arrived, bringing merchants, tourists, "
    "engineers and a steady stream of newspapers from the capital, the "
    "character of the place changed almost overnight, as warehouses replaced "
    "the old net sheds, hotels rose along the promenade, and the harbour, "
    "once crowded with wooden boats, filled with steamers whose smoke hung "
    "over the rooftops on still winter mornings, while the older residents "
    "complained bitterly that nobody had asked them whether they wanted any "
    "of it, and the younger ones left for the city in search of work, "
    "adventure, education, and the kind of anonymity that a town where "
    "everyone knows your grandmother can never offer, no matter how many "
    "hotels and theatres and cafes it builds along its windy seafront.",
    # --- non-ordinary ---
    "We met at a café in Zürich; it was naïve of me to order the crème brûlée.",
    "東京は日本の首都です。我爱北京天安门。",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "Great job on the release! 🎉🚀",
    "See https://example.com/docs/v2/index.html?lang=en&page=3#section-4 for details.",
    "fn main() { let x: Vec<u32> = vec![1, 2, 3]; println!(\"{:?}\", x.iter().sum::<u32>()); }",
    "   .",
]

# Cosine similarities published in the sentence-transformers documentation for
# all-MiniLM-L6-v2 (4 decimals). Checked as an external sanity anchor.
PUBLISHED = [
    ("The weather is lovely today.", "It's so sunny outside!", 0.6660),
    ("The weather is lovely today.", "He drove to the stadium.", 0.1046),
    ("It's so sunny outside!", "He drove to the stadium.", 0.1411),
    ("The new movie is awesome", "The new movie is so great", 0.8939),
]


# ---------------------------------------------------------------------------
# safetensors (by hand)
# ---------------------------------------------------------------------------
_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dt = np.dtype(_DTYPES[info["dtype"]])
        arr = np.frombuffer(data, dtype=dt, count=(end - start) // dt.itemsize, offset=base + start)
        arr = arr.reshape(info["shape"])
        if info["dtype"] in ("F32", "F16", "F64"):
            arr = arr.astype(np.float64)
        out[name] = arr
    return out


# ---------------------------------------------------------------------------
# math helpers (float64)
# ---------------------------------------------------------------------------
_erf_ufunc = np.frompyfunc(math.erf, 1, 1)  # libm erf, correct to ~1 ulp


def erf(x):
    return _erf_ufunc(x).astype(np.float64)


def gelu(x):
    # exact (erf) GeLU, as in HF "gelu"
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x, w, b, eps=LN_EPS):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)  # biased variance
    return (x - mu) / np.sqrt(var + eps) * w + b


def linear(x, w, b):
    # torch Linear: weight is [out, in]. Flatten leading dims to hit one 2-D GEMM.
    return (x.reshape(-1, x.shape[-1]) @ w.T + b).reshape(*x.shape[:-1], w.shape[0])


def softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------
def bert_forward(W, input_ids, attention_mask):
    """input_ids, attention_mask: int arrays [B, T]. Returns last hidden [B, T, H]."""
    B, T = input_ids.shape
    token_type_ids = np.zeros_like(input_ids)
    pos = np.arange(T)
    h = (
        W["embeddings.word_embeddings.weight"][input_ids]
        + W["embeddings.position_embeddings.weight"][pos][None, :, :]
        + W["embeddings.token_type_embeddings.weight"][token_type_ids]
    )
    h = layer_norm(h, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])

    # additive mask [B, 1, 1, T]: 0 where attended, most-negative float where padding
    neg = np.finfo(np.float64).min
    add_mask = (1.0 - attention_mask.astype(np.float64))[:, None, None, :] * neg
    scale = 1.0 / math.sqrt(HEAD_DIM)

    def heads(x):  # [B, T, H] -> [B, nh, T, hd]
        return np.ascontiguousarray(x.reshape(B, T, NUM_HEADS, HEAD_DIM).transpose(0, 2, 1, 3))

    for i in range(NUM_LAYERS):
        p = f"encoder.layer.{i}."
        q = heads(linear(h, W[p + "attention.self.query.weight"], W[p + "attention.self.query.bias"]))
        k = heads(linear(h, W[p + "attention.self.key.weight"], W[p + "attention.self.key.bias"]))
        v = heads(linear(h, W[p + "attention.self.value.weight"], W[p + "attention.self.value.bias"]))
        scores = (q @ np.ascontiguousarray(k.transpose(0, 1, 3, 2))) * scale + add_mask  # [B, nh, T, T]
        probs = softmax(scores, axis=-1)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, HIDDEN)
        attn = linear(ctx, W[p + "attention.output.dense.weight"], W[p + "attention.output.dense.bias"])
        h = layer_norm(attn + h, W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"])
        inter = gelu(linear(h, W[p + "intermediate.dense.weight"], W[p + "intermediate.dense.bias"]))
        out = linear(inter, W[p + "output.dense.weight"], W[p + "output.dense.bias"])
        h = layer_norm(out + h, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"])
    return h


def embed(W, input_ids, attention_mask):
    h = bert_forward(W, input_ids, attention_mask)
    m = attention_mask.astype(np.float64)[:, :, None]
    summed = (h * m).sum(axis=1)
    counts = np.maximum(m.sum(axis=1), 1e-9)
    pooled = summed / counts
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norm, 1e-12)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".cache/models/all-MiniLM-L6-v2")
    out_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "tests/fixtures/minilm_golden.json")
    t0 = time.time()

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    print(f"tokenizer.json truncation: {tok.truncation}")
    print(f"tokenizer.json padding:    {tok.padding}")
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)

    encs = [tok.encode(s) for s in SENTENCES]
    ids_list = [list(e.ids) for e in encs]
    for s, e, ids in zip(SENTENCES, encs, ids_list):
        assert ids[0] == 101 and ids[-1] == 102, (s, ids)
        assert len(ids) <= MAX_TOKENS
        assert all(m == 1 for m in e.attention_mask)
        assert all(t == 0 for t in e.type_ids)
    n_trunc = sum(1 for e in encs if e.overflowing)
    assert n_trunc >= 1, "expected at least one truncated sentence"
    assert len(SENTENCES) >= 20

    W = load_safetensors(os.path.join(model_dir, "model.safetensors"))

    # one padded batch (pad id 0, mask 0 on padding)
    B = len(ids_list)
    T = max(len(x) for x in ids_list)
    input_ids = np.zeros((B, T), dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    for i, ids in enumerate(ids_list):
        input_ids[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
    emb = embed(W, input_ids, mask)

    # each sentence alone (no padding)
    single = np.stack(
        [embed(W, np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=np.int64))[0] for ids in ids_list]
    )
    max_diff = float(np.abs(emb - single).max())
    print(f"max |padded batch - single| = {max_diff:.3e}")
    assert max_diff < 1e-10, max_diff
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-12)

    sim = emb @ emb.T
    for a, b, want in PUBLISHED:
        got = float(sim[SENTENCES.index(a), SENTENCES.index(b)])
        print(f"published check: {got:.4f} (docs {want:.4f})  {a!r} ~ {b!r}")
        assert abs(got - want) <= 1.5e-4, (a, b, got, want)
    doc = {
        "model": "all-MiniLM-L6-v2",
        "source": "scripts/golden_minilm.py",
        "precision": "float64",
        "max_tokens": MAX_TOKENS,
        "sentences": [
            {
                "text": s,
                "input_ids": ids,
                "embedding": [float(np.float32(v)) for v in emb[i]],
            }
            for i, (s, ids) in enumerate(zip(SENTENCES, ids_list))
        ],
        "similarity": [[round(float(v), 6) for v in row] for row in sim],
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")

    for i, (s, ids) in enumerate(zip(SENTENCES, ids_list)):
        print(f"{i:2d} len={len(ids):3d}{' (truncated)' if encs[i].overflowing else ''}  {s[:60]!r}")
    print(f"wrote {out_path} ({B} sentences, batch padded to {T}) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
