#!/usr/bin/env bash
# BERT-large on the GPU machine (issue 11's end-to-end shape), after scripts/build-gpu-bundle.sh
# here and with gpu-bundle carried: writes a random-weight BertModel (hidden 1024, 24 layers, 16
# heads, f16) with transformers, the bundle's MiniLM tokenizer files beside it; compiles fp16 and
# fp8 plans with qfuse (cold: an empty cache folder, NVRTC and calibration of that machine; then
# warm: again, with the CUBIN and calibration caches it filled) and reports kernels and compile seconds; then times
# batch 32 and batch 1 x 128 tokens beside PyTorch eager, torch.compile and reduce-overhead on the
# same folder. Timings are reported, never asserted. Usage: bash scripts/bert-large-bench.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for f in gpu-bundle/qfuse.gz; do [[ -f "$f" ]] && gunzip -f "$f"; done
chmod +x gpu-bundle/qfuse
q=gpu-bundle/qfuse
dir=/tmp/bert-large
recipes="${RECIPES:-fp16 fp8}"
python3 - "$dir" gpu-bundle/model <<'PY'
import shutil, sys, torch, transformers
out, minilm = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
cfg = transformers.BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                              vocab_size=30522, max_position_embeddings=512)
model = transformers.BertModel(cfg, add_pooling_layer=False).half()
model.save_pretrained(out, safe_serialization=True)
for f in ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
    try:
        shutil.copy(f"{minilm}/{f}", out)
    except FileNotFoundError:
        pass
print("wrote", out)
PY
: >/tmp/bert-large-bench.jsonl
for r in $recipes; do
    # Cold: an empty cache folder (no CUBIN, no calibration statistics), which the compile fills;
    # warm: the same compile again, reading both back.
    fresh=/tmp/bert-large-cache-$r && rm -rf "$fresh"
    times=()
    for pass in cold warm; do
        start=$(date +%s.%N)
        QFUSE_CACHE_DIR=$fresh "$q" --quiet compile "$dir" --recipe "$r" -o "/tmp/bert-large-$r.plan" >"/tmp/bert-large-compile-$r-$pass.log" 2>&1 \
            || { echo "compile $r ($pass) FAILED"; tail -20 "/tmp/bert-large-compile-$r-$pass.log"; continue 2; }
        end=$(date +%s.%N)
        times+=("$pass $(python3 -c "print(f'{$end-$start:.1f}')") s")
    done
    echo "$r: $(grep -E '^plan:' "/tmp/bert-large-compile-$r-cold.log") — compile ${times[0]}, ${times[1]} ($(nproc) CPUs)"
    for b in 32 1; do
        "$q" bench "/tmp/bert-large-$r.plan" --batch "$b" --seq 128 --json >>/tmp/bert-large-bench.jsonl 2>/dev/null || echo "bench $r b$b failed"
    done
done
for b in 32 1; do
    timeout 200 python3 scripts/minilm_peer_bench.py "$dir" --batch "$b" --seq 128 >>/tmp/bert-large-bench.jsonl 2>/tmp/bert-large-peer.log \
        || { echo "peer b$b failed"; tail -5 /tmp/bert-large-peer.log; }
done
python3 - <<'PY'
import json
rows = [json.loads(l) for l in open("/tmp/bert-large-bench.jsonl") if l.strip()]
for r in rows:
    name = r.get("plan", r.get("peer", "?"))
    print(f"{name:40s} batch {r.get('batch', '?'):>3} median {r.get('median_ms', float('nan')):8.3f} ms")
PY
