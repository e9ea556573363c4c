"""Peers of `qfuse bench` for decoders, on the same GPU: HF transformers LlamaForCausalLM, greedy
decode with a static cache, eager and under torch.compile(mode="reduce-overhead"); and the device's
copy bandwidth (a 1 GiB device-to-device copy), the ceiling of a weight-streaming decode step.

    decoder_peer_bench.py [--model DIR] [--prompt-len N] [--gen N] [--batch 1,8]

Without --model: SmolLM2-135M's shape with random f16 weights (speed does not depend on them);
with it: that folder's weights in their own dtype (e.g. scripts/llama_shape_folder.py's bf16
Llama-3-8B shape)."""
import argparse
import time
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model")
ap.add_argument("--prompt-len", type=int, default=128)
ap.add_argument("--gen", type=int, default=64)
ap.add_argument("--batch", default="1,8")
ap.add_argument("--modes", default="eager,compile")
opts = ap.parse_args()

torch.manual_seed(0)
dev = "cuda"
x = torch.empty(1 << 29, dtype=torch.float16, device=dev)
y = torch.empty_like(x)
for _ in range(3):
    y.copy_(x)
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(20):
    y.copy_(x)
torch.cuda.synchronize()
bw = 2 * x.numel() * 2 * 20 / (time.perf_counter() - t) / 1e9
print(f"copy bandwidth: {bw:.0f} GB/s (read + write of 1 GiB)")
del x, y
if opts.model:
    model = LlamaForCausalLM.from_pretrained(opts.model, torch_dtype="auto").to(dev).eval()
else:
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, max_position_embeddings=2048, rope_theta=100000.0, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).to(dev, torch.float16).eval()
vocab = model.config.vocab_size
weights = sum(p.numel() * p.element_size() for p in model.parameters())


def decode_rate(batch, mode):
    ids = torch.randint(0, vocab, (batch, opts.prompt_len), device=dev)
    n = opts.gen
    # With a static cache, transformers compiles the decode step itself (CompileConfig defaults:
    # torch.compile fullgraph, mode="reduce-overhead"); `disable_compile` gives the eager peer.
    kw = dict(do_sample=False, cache_implementation="static", pad_token_id=0, disable_compile=(mode == "eager"))
    for _ in range(3):
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    step = ((t2 - t1) - (t1 - t0)) / (n - 1)
    return (t1 - t0) * 1e3, step * 1e3, batch / step


with torch.no_grad():
    for mode in opts.modes.split(","):
        for batch in [int(b) for b in opts.batch.split(",")]:
            try:
                ttft, ms, rate = decode_rate(batch, mode)
                print(f"HF {'eager' if mode == 'eager' else 'torch.compile reduce-overhead'} static cache, batch {batch}, prompt {opts.prompt_len}: first token {ttft:.2f} ms, {ms:.3f} ms per step, {rate:.0f} tokens/s, weights at {weights / ms / 1e6:.0f} GB/s")
            except Exception as e:  # a peer that fails is reported, not fatal
                print(f"HF {mode} batch {batch}: failed: {type(e).__name__}: {str(e)[:200]}")
