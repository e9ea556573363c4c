#!/usr/bin/env bash
# Builds what the GPU machine needs for the FP8 GEMM benchmark into gpu-bundle/ (git-ignored):
# the release qfuse-gemm-bench binary (needs only libcuda there) and kernels/ (one sm_90a CUBIN
# and .cu per kernel, manifest.json with specs and launch shapes), rendered and compiled here
# with NVRTC. Then, on the device: `run` with carry ["gpu-bundle"], command
# `scripts/gpu-gemm-bench.sh`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cache.sh"
qfuse_ensure_nvrtc
cd "$QFUSE_ROOT"
cargo build --release --locked --bin qfuse-gemm-bench
rm -rf gpu-bundle
mkdir -p gpu-bundle
cp target/release/qfuse-gemm-bench gpu-bundle/
strip gpu-bundle/qfuse-gemm-bench 2>/dev/null || true
gpu-bundle/qfuse-gemm-bench build gpu-bundle/kernels 2>/dev/null
du -sh gpu-bundle
