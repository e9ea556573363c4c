#!/usr/bin/env bash
# The whole test suite: installs what the tests need into .cache/ (the model, NVRTC from PyPI
# when no CUDA toolkit exists), then runs every test. Snapshots are checked, never rewritten:
# run `cargo insta review` to accept changes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cache.sh"
qfuse_ensure_model
qfuse_ensure_decoder   # SmolLM2 GGUF: tests/gguf_*.rs skip (with a notice) only without it
qfuse_ensure_synthetic # small Llama/Mistral/Qwen2 folders + GGUF twins + numpy reference (tests/decoder_*.rs)
qfuse_ensure_nvrtc
cd "$QFUSE_ROOT"
export INSTA_UPDATE="${INSTA_UPDATE:-no}"
cargo test --locked --all-targets
cargo test --locked --doc
# The runtime alone (no importer, passes, interpreter, NVRTC, tokenizer): it must build and pass.
cargo test --locked --no-default-features --test runtime
