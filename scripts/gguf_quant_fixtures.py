#!/usr/bin/env python3
# Writes the fixtures of tests/gguf_quants.rs with gguf-py (0.19, in .cache/pyenv):
#
#   tests/fixtures/gguf_quants/cases.json       one entry per case: name, ggml type (id and name),
#                                               value count, and two files:
#   tests/fixtures/gguf_quants/NAME.blocks      the raw block bytes (as stored in a GGUF)
#   tests/fixtures/gguf_quants/NAME.f32         gguf.quants.dequantize of those bytes, LE f32
#   tests/fixtures/gguf_quants/smollm2_tensors.json
#                                               every tensor of the default SmolLM2 GGUF: name, type,
#                                               value count, absolute byte offset and length in the
#                                               file, sha256 of the dequantized LE f32 values
#
# Blocks come from gguf.quants.quantize where gguf-py has a quantizer (BF16, Q4_0, Q4_1, Q8_0) and
# are random bytes with finite f16 scales otherwise (gguf-py 0.19 has no Q4_K/Q5_K/Q6_K quantizer;
# any bytes are a valid k-quant block). A few real blocks are sliced from the SmolLM2 GGUF.
#
# Usage: .cache/pyenv/bin/python scripts/gguf_quant_fixtures.py [model.gguf]
#   default model: .cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#   (without the model the real-block cases and smollm2_tensors.json are left as they are)

import hashlib
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests/fixtures/gguf_quants")
MODEL = os.path.join(ROOT, ".cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")

# Byte offsets of each k-quant block's f16 scales (kept finite when blocks are random bytes).
F16_SCALE_OFFSETS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q8_0: [0], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def f16_bits(values):
    return np.asarray(values, dtype=np.float16).view(np.uint16)


def set_scales(blocks, qtype, values):
    """Writes the f16 `values` (one per block, broadcast) into every scale field of `blocks`."""
    bits = np.broadcast_to(f16_bits(values), (blocks.shape[0],)).astype("<u2").view(np.uint8).reshape(-1, 2)
    for at in F16_SCALE_OFFSETS[qtype]:
        blocks[:, at:at + 2] = bits
    return blocks


def random_blocks(rng, qtype, n_blocks, scale_exponents=(-12, 2)):
    """Random block bytes whose f16 scales are finite (random sign, mantissa and exponent)."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for at in F16_SCALE_OFFSETS[qtype]:
        lo, hi = scale_exponents
        scales = rng.uniform(-1, 1, n_blocks) * np.exp2(rng.uniform(lo, hi, n_blocks))
        blocks[:, at:at + 2] = f16_bits(scales).astype("<u2").view(np.uint8).reshape(-1, 2)
    return blocks


def special_values(rng, width):
    """Rows that stress a quantizer: outliers, zeros, negative-only, tiny (subnormal f16 scales)."""
    rows = [
        rng.normal(0, 0.02, width) * np.where(rng.random(width) < 0.05, 50, 1),  # outliers
        np.zeros(width),
        -np.abs(rng.normal(0, 1, width)) - 0.5,  # negative only
        rng.normal(0, 1e-6, width),  # scales below f16's smallest normal
        np.concatenate([np.full(width // 2, 3.0), np.full(width - width // 2, -7.25)]),  # constant
    ]
    return np.stack(rows).astype(np.float32)


def quantized_cases(rng):
    cases = []
    for qtype, width in [(T.BF16, 96), (T.Q4_0, 96), (T.Q4_1, 96), (T.Q8_0, 96)]:
        key = qtype.name.lower()
        cases.append((f"{key}_normal_3x{width}", qtype, quantize(rng.normal(0, 1, (3, width)).astype(np.float32), qtype)))
        cases.append((f"{key}_special_5x{width}", qtype, quantize(special_values(rng, width), qtype)))
    return cases


def random_block_cases(rng):
    cases = []
    for qtype in [T.Q4_0, T.Q4_1, T.Q8_0]:
        cases.append((f"{qtype.name.lower()}_random_bytes", qtype, random_blocks(rng, qtype, 12)))
    for qtype in [T.Q4_K, T.Q5_K, T.Q6_K]:
        key = qtype.name.lower()
        cases.append((f"{key}_random_3x512", qtype, random_blocks(rng, qtype, 6)))
        cases.append((f"{key}_random_1x256", qtype, random_blocks(rng, qtype, 1)))
        tiny = set_scales(random_blocks(rng, qtype, 2), qtype, [2.0**-20, -(2.0**-24)])  # f16 subnormals
        extreme = random_blocks(rng, qtype, 2)
        extreme[:, :] = np.where(np.arange(extreme.shape[1]) % 2 == 0, 0xFF, 0x00)  # max nibbles/scales
        extreme = set_scales(extreme, qtype, [65504.0, -1.5])
        zero = set_scales(np.zeros((1, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8), qtype, [0.0])
        cases.append((f"{key}_crafted", qtype, np.concatenate([tiny, extreme, zero])))
    return cases


def float_cases(rng):
    specials = np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, 65504.0, -65504.0, 6.1e-5, 5.96e-8, -5.96e-8, 1e-30, 3.4e38])
    f32 = np.concatenate([specials, rng.normal(0, 1, 83), np.array([1e-40, -1e-42])]).astype(np.float32)
    f16_bits_all = np.concatenate([
        np.arange(0, 0x400, 7, dtype=np.uint16),  # subnormals
        np.arange(0x8000, 0x8400, 11, dtype=np.uint16),  # negative subnormals
        np.array([0x7C00, 0xFC00, 0x7BFF, 0xFBFF, 0x3C00, 0x0400, 0x8400], dtype=np.uint16),  # inf, max, 1, min normal
        rng.integers(0, 0x7C00, 256, dtype=np.uint16) | (rng.integers(0, 2, 256, dtype=np.uint16) << 15),
    ])
    bf16_bits = rng.integers(0, 1 << 16, 300, dtype=np.uint16)  # any pattern, NaNs included
    return [
        ("f32_mixed", T.F32, f32.view(np.uint8)),
        ("f16_patterns", T.F16, f16_bits_all.astype("<u2").view(np.uint8)),
        ("bf16_patterns", T.BF16, bf16_bits.astype("<u2").view(np.uint8)),
    ]


def real_cases(reader):
    """One row of a Q4_1 linear, of the Q8_0 embedding and one F32 norm, bytes as in the file."""
    by_name = {t.name: t for t in reader.tensors}
    picks = [("smollm2_q4_1_ffn_down_row7", "blk.3.ffn_down.weight", 7),
             ("smollm2_q8_0_token_embd_row1000", "token_embd.weight", 1000),
             ("smollm2_f32_attn_norm", "blk.0.attn_norm.weight", None)]
    cases = []
    for case, name, row in picks:
        t = by_name[name]
        data = t.data if row is None else t.data[row]
        cases.append((case, t.tensor_type, np.ascontiguousarray(data).view(np.uint8).reshape(-1)))
    return cases


def dequantized_le(raw, qtype):
    """gguf.quants.dequantize of raw block bytes, flattened, as little-endian f32 bytes."""
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    if qtype in (T.F32, T.F16):
        raw = raw.view(np.float32 if qtype == T.F32 else np.float16)
    return np.ascontiguousarray(dequantize(raw, qtype), dtype="<f4").reshape(-1)


def write_case(name, qtype, raw):
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    values = dequantized_le(raw, qtype)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    assert raw.size * block_size == values.size * type_size, name
    raw.tofile(os.path.join(OUT, f"{name}.blocks"))
    values.tofile(os.path.join(OUT, f"{name}.f32"))
    return {"name": name, "type": qtype.name, "type_id": int(qtype), "n": int(values.size)}


def tensor_checksums(reader, path):
    entries = []
    for t in reader.tensors:
        values = dequantized_le(t.data, t.tensor_type)
        assert values.size == t.n_elements, t.name
        entries.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "type_id": int(t.tensor_type),
            "n": int(t.n_elements),
            "offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
            "sha256": hashlib.sha256(values.tobytes()).hexdigest(),
        })
    return {"file": os.path.basename(path), "file_size": os.path.getsize(path), "tensors": entries}


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else MODEL
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261206)
    cases = float_cases(rng) + quantized_cases(rng) + random_block_cases(rng)
    reader = GGUFReader(model) if os.path.exists(model) else None
    if reader is not None:
        cases += real_cases(reader)
    else:
        print(f"{model} not found: real-block cases and smollm2_tensors.json not written")
    manifest = [write_case(*case) for case in cases]
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"generator": "scripts/gguf_quant_fixtures.py (gguf-py 0.19.0)", "cases": manifest}, f, indent=1)
    if reader is not None:
        with open(os.path.join(OUT, "smollm2_tensors.json"), "w") as f:
            json.dump(tensor_checksums(reader, model), f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, p)) for p in os.listdir(OUT))
    print(f"{len(manifest)} cases, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
