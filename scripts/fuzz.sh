#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers (cargo-fuzz on the nightly toolchain; not part of CI).
#   scripts/fuzz.sh [target|all] [seconds]     default: all, 1800 s per target
# Targets: the [[bin]]s of fuzz/Cargo.toml (plan, ir_text, safetensors, config, tokenizer, ...),
# each calling its entry point in `qfuse::harness`. Each run starts from the committed seeds
# (fuzz/seeds/<target>/) plus the corpus earlier runs grew (fuzz/corpus/<target>/, ignored by git).
# JOBS (default 1) parallel fuzzing jobs per target; a crash stops that target, its input is in
# fuzz/artifacts/<target>/. After fixing it, keep the input in tests/fixtures/fuzz/<target>/:
# `cargo test --test hostile_input` replays every kept input.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
which="${1:-all}" seconds="${2:-1800}" jobs="${JOBS:-1}"
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^qfuse-fuzz$')
build=()
[[ "$which" == all ]] || { targets="$which"; build=("$which"); }
cargo +nightly fuzz build -s none --debug-assertions "${build[@]}" 2>&1 | tail -3
parallel=()
(( jobs > 1 )) && parallel=(-jobs="$jobs" -workers="$jobs")
rc=0
for t in $targets; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== $t: $seconds s, $jobs job(s)"
    start=$(date +%s)
    if ! cargo +nightly fuzz run -s none --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" "${parallel[@]}" -max_len=1048576 -rss_limit_mb=4096 -timeout=30 \
        >"/tmp/fuzz-$t.log" 2>&1; then
        echo "$t: CRASH after $(( $(date +%s) - start )) s (log /tmp/fuzz-$t.log):"
        grep -E "^(==|SUMMARY|thread|panicked)|Test unit written" "/tmp/fuzz-$t.log" | head -8
        rc=1
        continue
    fi
    echo "$t: no crash in $(( $(date +%s) - start )) s; $(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "/tmp/fuzz-$t.log" | tail -1)"
done
exit $rc
