#!/usr/bin/env python3
"""Copies a Hugging Face model folder with its safetensors weights converted from F32 to F16
(halving the bytes), for carrying the model to the GPU machine. Other files and folders are copied as is.

usage: f16_model.py SRC_DIR DST_DIR
"""
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np


def convert(src: Path, dst: Path) -> None:
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out_header, chunks, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            out_header[name] = info
            continue
        begin, end = info["data_offsets"]
        buf = data[begin:end]
        dtype = info["dtype"]
        if dtype == "F32":
            buf = np.frombuffer(buf, dtype="<f4").astype("<f2").tobytes()
            dtype = "F16"
        out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(buf)]}
        chunks.append(buf)
        offset += len(buf)
    hdr = json.dumps(out_header).encode()
    hdr += b" " * (-len(hdr) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)))
        f.write(hdr)
        for c in chunks:
            f.write(c)


def main():
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.suffix == ".safetensors":
            convert(p, dst / p.name)
        elif p.is_file():
            shutil.copy2(p, dst / p.name)
        elif p.is_dir():
            shutil.copytree(p, dst / p.name, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
