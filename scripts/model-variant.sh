#!/usr/bin/env bash
# Usage: scripts/model-variant.sh SRC DST HEADS
# A view of the model folder SRC at DST whose config.json splits the hidden width into HEADS
# attention heads (same weights, linked, not copied): all-MiniLM-L6-v2 has 12 heads of 32, so 6
# gives heads of 64. It is a different (untrained) model, used to run the head-size-64 attention
# kernels on real weights and activations; only the config changes.
set -euo pipefail
src=$1 dst=$2 heads=$3
rm -rf "$dst"
mkdir -p "$dst"
for f in "$src"/*; do
    [[ $(basename "$f") == config.json ]] || ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$dst/"
done
python3 - "$src/config.json" "$dst/config.json" "$heads" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["num_attention_heads"] = int(sys.argv[3])
json.dump(cfg, open(sys.argv[2], "w"), indent=2)
PY
