#!/usr/bin/env bash
# Builds everything the GPU machine needs into gpu-bundle/ (git-ignored), for `run` with
# carry ["gpu-bundle"] and the command `scripts/gpu-check.sh`:
#   qfuse             release binary, stripped (runs plans, compiles them, runs the interpreter)
#   qfuse-gemm-bench  the FP8 GEMM benchmark binary, with kernels/ rendered and compiled here
#   model/            the default model with its weights converted to f16 (half the bytes; the
#                     tree that travels is limited to 64 MiB)
#   cache/kernels/    CUBINs of the MiniLM plans, compiled here with NVRTC (so the GPU machine
#                     needs no NVRTC of the same version: every kernel is a cache hit); left out,
#                     with the GEMM bench's kernels, when the bundle and the tracked tree would
#                     pass 60 MiB (the GPU machine's NVRTC then compiles them)
# Installs what it needs itself (scripts/cache.sh): NVRTC, the model, and the pinned Python env
# .cache/pyenv (scripts/requirements-decoder.txt, with numpy for scripts/f16_model.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cache.sh"
qfuse_ensure_nvrtc
qfuse_ensure_model
qfuse_ensure_pyenv
cd "$QFUSE_ROOT"
cargo build --release --locked --bins
if [[ "${1:-}" == decoder ]]; then
    # `build-gpu-bundle.sh decoder`: what scripts/gpu-decoder.sh needs — the binary, and the
    # default decoder's GGUF in three pieces (gguf-a, -b, -c: one call carries at most 64 MiB with
    # the working tree, so calls one and two carry gguf-a and gguf-b, and the third, at once
    # after them while the machine is warm, gpu-bundle and gguf-c and runs the script).
    qfuse_ensure_decoder
    rm -rf gpu-bundle gguf-a gguf-b gguf-c && mkdir -p gpu-bundle gguf-a gguf-b gguf-c
    cp target/release/qfuse gpu-bundle/ && strip gpu-bundle/qfuse 2>/dev/null || true
    # The GPU kernel tests (ignored without a GPU), run there with --ignored by gpu-decoder.sh:
    # the decoder's kernels, the skinny and segmented GEMMs, and the row / element-wise kernels.
    for t in decoder_kernels_gpu skinny_gpu codegen_ops check_decoder_gpu; do
        bin=$(cargo test --release --locked --no-run --test "$t" 2>&1 | sed -n 's/.*(\(target\/release\/deps\/[^)]*\)).*/\1/p' | tail -1)
        cp "$bin" "gpu-bundle/$t" && strip "gpu-bundle/$t" 2>/dev/null || true
        gzip -9f "gpu-bundle/$t"
    done
    gzip -9f gpu-bundle/qfuse
    split -b 33m "$QFUSE_DECODER_GGUF" gguf-a/part.
    mv gguf-a/part.ab gguf-b/ && mv gguf-a/part.ac gguf-c/
    sha256sum "$QFUSE_DECODER_GGUF" | cut -d' ' -f1 >gguf-c/sha256
    du -sh gpu-bundle gguf-a gguf-b gguf-c
    exit 0
fi
if [[ "${1:-}" == shapes ]]; then
    # `build-gpu-bundle.sh shapes`: what scripts/gpu-decoder-shapes.sh and scripts/gpu-llama8b.sh need
    # (one call each, carry gpu-bundle; no checkpoint travels: the models are random-weight HF folders
    # of real shapes written there by transformers): the binary, the decoder and skinny-GEMM GPU test
    # binaries, the GEMM bench with its kernels, and a tokenizer (the synthetic checkpoints' copy of
    # SmolLM2's).
    qfuse_ensure_synthetic
    rm -rf gpu-bundle && mkdir -p gpu-bundle/tok
    cp target/release/qfuse target/release/qfuse-gemm-bench gpu-bundle/
    for t in decoder_kernels_gpu generate_gpu skinny_gpu; do
        bin=$(cargo test --release --locked --no-run --test "$t" 2>&1 | sed -n 's/.*(\(target\/release\/deps\/[^)]*\)).*/\1/p' | tail -1)
        cp "$bin" "gpu-bundle/$t"
    done
    strip gpu-bundle/qfuse gpu-bundle/qfuse-gemm-bench gpu-bundle/decoder_kernels_gpu gpu-bundle/generate_gpu gpu-bundle/skinny_gpu 2>/dev/null || true
    gpu-bundle/qfuse-gemm-bench build gpu-bundle/kernels 2>/dev/null
    cp "$QFUSE_SYNTHETIC_DIR/llama-f32/tokenizer.json" "$QFUSE_SYNTHETIC_DIR/llama-f32/tokenizer_config.json" gpu-bundle/tok/
    (cd gpu-bundle && tar czf kernels.tgz kernels && rm -rf kernels && gzip -9f qfuse qfuse-gemm-bench decoder_kernels_gpu generate_gpu skinny_gpu)
    du -sh gpu-bundle gpu-bundle/*
    exit 0
fi
rm -rf gpu-bundle
mkdir -p gpu-bundle/cache
cp target/release/qfuse target/release/qfuse-gemm-bench gpu-bundle/
strip gpu-bundle/qfuse gpu-bundle/qfuse-gemm-bench 2>/dev/null || true
gpu-bundle/qfuse-gemm-bench build gpu-bundle/kernels 2>/dev/null
# The skinny GEMMs' GPU test against the interpreter (tests/skinny_gpu.rs, ignored without a GPU),
# run by scripts/gpu-gemm-bench.sh when GEMM_KINDS names `skinny`.
test_bin=$(cargo test --release --locked --no-run --test skinny_gpu 2>&1 | sed -n 's/.*(\(target\/release\/deps\/[^)]*\)).*/\1/p' | tail -1)
cp "$test_bin" gpu-bundle/skinny_gpu && strip gpu-bundle/skinny_gpu 2>/dev/null || true
"$QFUSE_CACHE_DIR/pyenv/bin/python3" scripts/f16_model.py "$QFUSE_MODEL_DIR" gpu-bundle/model
# Every recipe gpu-check.sh compiles (plans that do not lower yet report why and are skipped).
# The 6- and 3-head views of the model (head sizes 64 and 128; scripts/model-variant.sh) exercise
# the D = 64 and D = 128 attention kernels.
bash scripts/model-variant.sh gpu-bundle/model gpu-bundle/model-h6 6
bash scripts/model-variant.sh gpu-bundle/model gpu-bundle/model-h3 3
for r in fp16 fp8 fp8-dynamic int8-sq w8a16 w4a16-rtn w4a16-awq w4a16-gptq nvfp4 fp8-block "fp8 --fp8-accum exact" \
    "fp8 --fp8-attention" "h6:fp8 --fp8-attention" "h3:fp8 --fp8-attention"; do
    model=gpu-bundle/model
    [[ $r == h?:* ]] && { model=gpu-bundle/model-${r%%:*}; r=${r#h?:}; }
    args="--recipe $r"
    # shellcheck disable=SC2086
    QFUSE_CACHE_DIR="$QFUSE_ROOT/gpu-bundle/cache" gpu-bundle/qfuse --quiet compile $model $args \
        -o gpu-bundle/tmp.plan 2>&1 | tail -2 || true
    rm -f gpu-bundle/tmp.plan
done
rm -rf gpu-bundle/model-h6 gpu-bundle/model-h3  # links only; gpu-check.sh makes them again
# Compressed for the trip (scripts/gpu-check.sh unpacks): the tree that travels is limited to 64 MiB.
(cd gpu-bundle && tar czf kernels.tgz kernels && rm -rf kernels && tar czf cache.tgz cache && rm -rf cache \
    && gzip -9f qfuse qfuse-gemm-bench skinny_gpu)
# A call carries at most 64 MiB with the tracked tree: past 60 MiB, leave the CUBIN caches behind
# (the GPU machine's NVRTC compiles what is missing: scripts/gpu-check.sh and gpu-gemm-bench.sh).
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
bundle=$(du -sb gpu-bundle | cut -f1)
if (( tree + bundle > 60 * 1024 * 1024 )); then
    rm -f gpu-bundle/cache.tgz gpu-bundle/kernels.tgz
    echo "bundle + tree over 60 MiB: CUBIN caches left out (compiled on the GPU machine)"
fi
du -sh gpu-bundle gpu-bundle/*
