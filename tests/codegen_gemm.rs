//! FP8 GEMM code generation: specs → CUDA C (snapshot of one) → `sm_90a` CUBIN through NVRTC,
//! and invalid specs rejected with errors. No GPU needed; NVRTC is (these tests fail, never
//! skip, without it: the project's test command runs `scripts/cache.sh nvrtc` first).

use qfuse::codegen::gemm::{self, Alpha, GemmError, GemmSpec, Mainloop};
use qfuse::codegen::nvrtc;

/// Specs that cover both mainloops, both tile depths, bias, constant alpha and the MiniLM shapes.
fn specs() -> Vec<GemmSpec> {
    let wgmma_fast = GemmSpec { fast_accum: true, ..GemmSpec::wgmma_for_shape(4096, 4096) };
    vec![
        GemmSpec::for_shape(4096, 4096),
        GemmSpec { bias: true, alpha: Alpha::Constant(0.0123), ..GemmSpec::for_shape(1536, 384) },
        GemmSpec { tile_k: 64, stages: 6, ..GemmSpec::for_shape(384, 1536) },
        GemmSpec::wgmma_for_shape(4096, 4096),
        GemmSpec::wgmma_for_shape(1536, 384),
        GemmSpec { bias: true, ..GemmSpec::wgmma_for_shape(384, 384) },
        GemmSpec { tile_m: 64, warps_m: 4, stages: 4, mainloop: Mainloop::WgmmaWaitGroup, ..GemmSpec::wgmma_for_shape(384, 1536) },
        wgmma_fast,
    ]
}

#[test]
fn specs_compile_to_sm90a_cubin() {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    for spec in specs() {
        let k = gemm::render(&spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        assert!(k.name.starts_with("qgemm_fp8_") && k.name.len() == "qgemm_fp8_".len() + 8, "{}", k.name);
        assert_eq!(k.block, [spec.threads(), 1, 1]);
        assert!(k.smem_bytes <= gemm::MAX_SMEM_BYTES);
        let cubin = nvrtc::compile_cubin(&k.name, &k.source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{spec:?}:\n{e}"));
        assert!(cubin.starts_with(b"\x7fELF"), "{}: not an ELF", k.name);
        assert!(cubin.windows(k.name.len()).any(|w| w == k.name.as_bytes()), "{}: kernel symbol missing", k.name);
    }
}

#[test]
fn rendering_is_deterministic_and_names_differ() {
    let specs = specs();
    let names: Vec<String> = specs.iter().map(|s| gemm::render(s).expect("renders").name).collect();
    let again: Vec<String> = specs.iter().map(|s| gemm::render(s).expect("renders").name).collect();
    assert_eq!(names, again);
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
}

#[test]
fn generated_source_snapshot() {
    let spec = GemmSpec { bias: true, alpha: Alpha::Constant(0.0123), ..GemmSpec::wgmma_for_shape(1536, 384) };
    let k = gemm::render(&spec).expect("renders");
    assert!(!k.source.contains("{{"), "unsubstituted placeholder");
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("codegen_gemm__qgemm_fp8_wgmma_1536x384_bias", k.source));
}

fn invalid(spec: GemmSpec, needle: &str) {
    match gemm::render(&spec) {
        Err(GemmError::Invalid { reason, .. }) => {
            assert!(reason.contains(needle), "{spec:?}: `{reason}` lacks `{needle}`")
        }
        other => panic!("{spec:?}: expected Invalid containing `{needle}`, got {other:?}"),
    }
}

#[test]
fn invalid_specs_are_errors() {
    let base = GemmSpec::for_shape(4096, 4096);
    let wg = GemmSpec::wgmma_for_shape(4096, 4096);
    invalid(GemmSpec { n: 4000, ..base }, "does not divide n");
    invalid(GemmSpec { k: 4000, ..base }, "does not divide k");
    invalid(GemmSpec { tile_k: 96, ..base }, "must be 64 or 128");
    invalid(GemmSpec { stages: 8, ..base }, "exceed");
    invalid(GemmSpec { stages: 1, ..base }, "at least 2");
    invalid(GemmSpec { warps_m: 0, ..base }, "positive");
    invalid(GemmSpec { warps_m: 1, warps_n: 1, ..base }, "128 f32 accumulators");
    invalid(GemmSpec { tile_m: 120, ..base }, "multiple of 16x16");
    invalid(GemmSpec { alpha: Alpha::Constant(f32::NAN), ..base }, "not finite");
    invalid(GemmSpec { fast_accum: true, ..base }, "wgmma only");
    invalid(GemmSpec { stages: 6, ..wg }, "exceed");
    invalid(GemmSpec { warps_m: 4, tile_n: 128, ..wg }, "whole warpgroups");
    invalid(GemmSpec { ctas_per_sm: 2, ..wg }, "do not fit a budget");
    invalid(GemmSpec { stages: 4, ..GemmSpec::wgmma_for_shape(1536, 384) }, "per SM");
    invalid(GemmSpec { tile_k: 64, ..wg }, "tile_k = 128");
    invalid(GemmSpec { stages: 2, ..wg }, "at least 3 stages");
    invalid(GemmSpec { tile_n: 192, stages: 4, fast_accum: true, ..GemmSpec::wgmma_for_shape(384, 4096) }, "64, 128 or 256");
    let e = GemmSpec::for_shape(4096, 4096).check_m(u64::from(u32::MAX)).expect_err("M too large");
    assert!(e.to_string().contains("too large"), "{e}");
    GemmSpec::for_shape(4096, 4096).check_m(0).expect("M = 0 is valid (no launch)");
}
