//! NVRTC end to end: FP8 CUDA C → `sm_90a` CUBIN, compile errors, virtual-arch rejection.
//!
//! No GPU needed, but NVRTC is: these tests fail (never skip) when it cannot be found. The
//! project's test command runs `scripts/cache.sh nvrtc` first.

use qfuse::codegen::nvrtc::{self, NvrtcError};

const FP8_KERNEL: &str = r#"#include <cuda_fp8.h>

extern "C" __global__ void to_e4m3(const float* x, __nv_fp8_e4m3* y, float inv_scale, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        __nv_fp8_e4m3 q;
        q.__x = __nv_cvt_float_to_fp8(x[i] * inv_scale, __NV_SATFINITE, __NV_E4M3);
        y[i] = q;
    }
}
"#;

fn require_nvrtc() -> nvrtc::NvrtcInstall {
    match nvrtc::locate() {
        Ok(install) => install,
        Err(e) => panic!("NVRTC is required for this test (run `scripts/cache.sh nvrtc`): {e}"),
    }
}

#[test]
fn fp8_kernel_compiles_to_sm90a_cubin() {
    let install = require_nvrtc();
    assert_eq!(install.version.0, 13, "{install:?}");
    assert!(install.include_dir.join("cuda_fp8.h").is_file(), "{install:?}");

    let cubin = nvrtc::compile_cubin("to_e4m3", FP8_KERNEL, "sm_90a", &[]).expect("compiles");
    assert!(cubin.starts_with(b"\x7fELF"), "not an ELF: {:02x?}", &cubin[..cubin.len().min(16)]);
    assert!(cubin.len() > 1000, "suspiciously small CUBIN: {} bytes", cubin.len());
    assert!(cubin.windows(b"to_e4m3".len()).any(|w| w == b"to_e4m3"), "kernel symbol missing");
}

#[test]
fn syntax_error_reports_kernel_line_and_log() {
    require_nvrtc();
    let source = "extern \"C\" __global__ void broken(float* y) {\n    float x = 1.0f +;\n    y[0] = x;\n}\n";
    let err = nvrtc::compile_cubin("broken_kernel", source, "sm_90a", &[]).expect_err("must not compile");
    let NvrtcError::Compile { kernel, options, log, .. } = &err else {
        panic!("expected NvrtcError::Compile, got {err:?}");
    };
    assert_eq!(kernel, "broken_kernel");
    assert!(options.iter().any(|o| o == "--gpu-architecture=sm_90a"), "{options:?}");
    assert!(log.contains("broken_kernel.cu(2): error"), "log: {log}");
    let shown = err.to_string();
    assert!(shown.contains("broken_kernel"), "{shown}");
    assert!(shown.contains("2 |     float x = 1.0f +;"), "{shown}");
    assert!(shown.contains(log.trim_end()), "{shown}");
}

#[test]
fn virtual_arch_is_rejected() {
    require_nvrtc();
    let err = nvrtc::compile_cubin("to_e4m3", FP8_KERNEL, "compute_90a", &[]).expect_err("PTX-only arch");
    assert!(matches!(err, NvrtcError::Invalid { what: "arch", .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.contains("compute_90a") && shown.contains("sm_90a"), "{shown}");
}

#[test]
fn compiles_from_several_threads() {
    require_nvrtc();
    let cubins: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    let name = format!("to_e4m3_{t}");
                    let src = FP8_KERNEL.replace("to_e4m3", &name);
                    nvrtc::compile_cubin(&name, &src, "sm_90a", &["--no-cache".to_owned()])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread").expect("compiles")).collect()
    });
    assert!(cubins.iter().all(|c| c.starts_with(b"\x7fELF")));
}

#[test]
fn supports_hopper() {
    require_nvrtc();
    let archs = nvrtc::supported_archs().expect("archs");
    assert!(archs.contains(&90), "{archs:?}");
}
