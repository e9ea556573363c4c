#!/usr/bin/env python3
"""PyTorch peers for the end-to-end MiniLM benchmark, timed like `qfuse bench`.

The model is the same folder qfuse compiles (config.json + safetensors), loaded with transformers'
BertModel in f16 on the GPU, followed by the sentence-transformers head (masked mean pooling and L2
normalisation), so both sides compute `sentence_embedding` from token ids. Inputs: random token ids
with every position valid (batch x seq). Timing: warm-up, then the median of N runs, each between
two CUDA events; the host enqueues ahead (no synchronisation inside the timed region).

Peers: eager f16; torch.compile (default mode, inductor); torch.compile mode="reduce-overhead"
(inductor + CUDA graphs, the closest to qfuse's graph replay).

Prints one JSON line per peer: {"peer": ..., "median_ms": ..., "min_ms": ..., "batch": ..., "seq": ...}.

usage: minilm_peer_bench.py MODEL_DIR --batch 32 --seq 128 [--iters 50] [--warmup 10]
"""
import argparse
import json
import statistics
import sys
import time

import torch


def embed_fn(model):
    def f(ids, mask, types):
        h = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return f


def time_fn(f, args, warmup, iters):
    with torch.inference_mode():
        for _ in range(warmup):
            f(*args)
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            f(*args)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
    return statistics.median(times), min(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--peers", default="eager,compile,compile-cudagraphs")
    a = p.parse_args()
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel.from_pretrained(a.model_dir, dtype=torch.float16, add_pooling_layer=False).cuda().eval()
    vocab = model.config.vocab_size
    ids = torch.randint(1000, vocab, (a.batch, a.seq), device="cuda")
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    base = embed_fn(model)
    variants = {
        "eager": lambda: base,
        "compile": lambda: torch.compile(base),
        "compile-cudagraphs": lambda: torch.compile(base, mode="reduce-overhead"),
    }
    for name in a.peers.split(","):
        t0 = time.time()
        try:
            f = variants[name]()
            med, best = time_fn(f, (ids, mask, types), a.warmup, a.iters)
        except Exception as e:  # a failing peer must not hide the others
            print(json.dumps({"peer": name, "error": repr(e)[:300]}), flush=True)
            continue
        print(json.dumps({"peer": name, "median_ms": med, "min_ms": best, "batch": a.batch, "seq": a.seq,
                          "setup_s": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
