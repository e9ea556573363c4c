//! Shared test helpers: the cached default model and a tiny synthetic BERT checkpoint.
#![allow(dead_code)]

pub mod cli;
pub mod glu;
pub mod kernels;
pub mod skinny;
pub mod split;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The default model, installed by `scripts/test.sh` (scripts/cache.sh model).
pub fn minilm_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").exists(), "{} is missing: run `bash scripts/test.sh` (it installs the model)", dir.display());
    dir
}

/// Whether the body of the kernel entry point in the CUDA source `text` starts with
/// `qf_pdl_enter();` (`griddepcontrol.wait`, then `launch_dependents`; templates/common.cuh), after
/// at most L2 prefetches of plan constants (`qf_prefetch_l2`, which bring nothing into the thread),
/// so that nothing before it reads or writes memory: what launching it with programmatic stream
/// serialization requires. The one exception is a region marked `// qfuse pre-wait begin` …
/// `// qfuse pre-wait end` opening the body, for reads of what launches before the previous
/// one wrote (paged_attention.cu "Staging"): it may hold no store, atomic or append.
pub fn enters_pdl_first(text: &str) -> bool {
    let Some(entry) = text.find("extern \"C\" __global__") else { return false };
    let Some(open) = text[entry..].find(") {\n") else { return false };
    let body = &text[entry + open + 4..];
    // A declared pre-wait region (paged_attention.cu "Staging") may come first: reads and
    // cp.async copies into shared memory, no store, atomic or append.
    let body = match (body.trim_start().strip_prefix("// qfuse pre-wait begin"), body.find("// qfuse pre-wait end")) {
        (Some(_), Some(end)) => {
            let region = &body[..end];
            if ["] =", "atomic", "qf_append", "store(", "__st"].iter().any(|w| region.contains(w)) {
                return false;
            }
            &body[end..]
        }
        _ => body,
    };
    // Then only comments and L2 prefetches of constants (common.cuh `qf_prefetch_l2`).
    let mut lines = body.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//"));
    lines.find(|l| !l.starts_with("qf_prefetch_l2(")).is_some_and(|l| l.starts_with("qf_pdl_enter();"))
}

/// Deterministic pseudo-random values in [-scale, scale).
pub fn lcg_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Tensor name → shape of a tiny BERT: hidden 8, 2 heads, 1 layer, MLP 16, vocab 12, 16 positions.
pub fn tiny_bert_shapes() -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![12, 8]),
        ("embeddings.position_embeddings.weight".into(), vec![16, 8]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, 8]),
        ("embeddings.LayerNorm.weight".into(), vec![8]),
        ("embeddings.LayerNorm.bias".into(), vec![8]),
    ];
    let p = "encoder.layer.0";
    for (m, n, k) in [
        ("attention.self.query", 8, 8),
        ("attention.self.key", 8, 8),
        ("attention.self.value", 8, 8),
        ("attention.output.dense", 8, 8),
        ("intermediate.dense", 16, 8),
        ("output.dense", 8, 16),
    ] {
        v.push((format!("{p}.{m}.weight"), vec![n, k]));
        v.push((format!("{p}.{m}.bias"), vec![n]));
    }
    for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
        v.push((format!("{p}.{ln}.weight"), vec![8]));
        v.push((format!("{p}.{ln}.bias"), vec![8]));
    }
    v
}

pub const TINY_CONFIG: &str = r#"{"model_type": "bert", "vocab_size": 12, "hidden_size": 8, "num_hidden_layers": 1,
 "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16, "type_vocab_size": 2,
 "layer_norm_eps": 1e-12, "hidden_act": "gelu"}"#;

/// Serialises f32 tensors to safetensors bytes.
pub fn safetensors_bytes(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(n, s, d)| (n.clone(), s.clone(), d.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: HashMap<String, safetensors::tensor::TensorView> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(&views, None).unwrap()
}

/// The tiny BERT's tensors with deterministic values.
pub fn tiny_bert_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    tiny_bert_shapes()
        .into_iter()
        .enumerate()
        .map(|(i, (n, s))| {
            let numel = s.iter().product();
            let vals = if n.contains("LayerNorm.weight") { vec![1.0; numel] } else { lcg_values(numel, i as u64, 0.5) };
            (n, s, vals)
        })
        .collect()
}

/// Writes a complete tiny BERT folder (config.json + model.safetensors) into a fresh temp dir.
pub fn tiny_bert_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), TINY_CONFIG).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), safetensors_bytes(&tiny_bert_tensors())).unwrap();
    dir
}

/// A synthetic Llama-family checkpoint written by `scripts/cache.sh synthetic` (which
/// `scripts/test.sh` runs), or `None` with a printed notice when it is absent.
pub fn synthetic(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/synthetic").join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} is missing (run `bash scripts/cache.sh synthetic`)", p.display());
        None
    }
}

/// The default decoder's GGUF, installed by `scripts/test.sh` (scripts/cache.sh decoder).
pub fn smollm2_gguf() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run `bash scripts/test.sh` (it installs the model)", p.display());
    p
}

/// Little-endian f32 values from base64 text.
pub fn f32_base64(text: &str) -> Vec<f32> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).expect("valid base64");
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// IR text of one `rope` over `x : dtype[B, S, width]` (4 heads, θ = 500000, `pairs` half or
/// adjacent, `extra` e.g. `, llama3(...)`), B ≤ 4, S ≤ 8: the graph the rope codegen and GPU
/// tests share.
pub fn rope_graph_text(dtype: &str, pairs: &str, extra: &str, width: u64) -> String {
    format!(
        r#"graph "r" {{
  sym B max=4
  sym S max=8
  %0 = input "x" : {dtype}[B,S,{width}]
  %1 = input "cache_len" : i64[B]
  %2 = rope %0, %1 {{heads=4, theta=500000, pairs={pairs}{extra}}} : {dtype}[B,S,{width}]
  return "y" = %2
}}"#
    )
}

/// The decoder the GPU generation tests compile: `$QFUSE_PDL_MODEL` (a GGUF or a Llama-family
/// folder such as the random-weight SmolLM2-shaped one of scripts/gpu-decoder-shapes.sh), else the
/// default GGUF of `.cache/models`.
pub fn gpu_test_decoder() -> PathBuf {
    std::env::var_os("QFUSE_PDL_MODEL").map_or_else(smollm2_gguf, PathBuf::from)
}

/// `model` compiled for sm_90a with `recipe` (its default KV cache), at most `max_batch`
/// sequences of 256 tokens, 32-token steps and pages, written to `dir/<recipe>.plan`.
pub fn compile_decoder_plan(model: &Path, recipe: &str, max_batch: u64, dir: &Path) -> PathBuf {
    use qfuse::compile::{compile_decoder, CompileOptions, DecoderPlanOptions};
    let mut opts = CompileOptions::for_recipe(recipe).unwrap();
    opts.arch = Some("sm_90a".into());
    opts.calib = qfuse::quant::CalibOptions::decoder_default();
    let d = DecoderPlanOptions { kv_cache: None, max_seq: Some(256), max_batch, max_step: 32, page_size: 32 };
    let path = dir.join(format!("{recipe}.plan"));
    compile_decoder(model, &opts, &d).expect("compile").save(&path).unwrap();
    path
}

/// Deterministic xorshift values in [-scale, scale) (the decoder tests' inputs).
pub fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
