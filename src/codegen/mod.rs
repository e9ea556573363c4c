//! Code generation: from fused IR to CUDA C, compiled to CUBIN with NVRTC.
//!
//! - [`kernel`]: the contract of per-op lowering ([`kernel::Lowered`], [`kernel::Launch`]).
//! - [`expr`]: the expression IR that element-wise code and GEMM epilogues are printed from.
//! - [`template`]: `templates/*.cu` files specialised by `{{name}}` parameters.
//! - [`gemm`]: the FP8 GEMM template's typed spec.
//! - [`sample`]: the on-GPU sampler the decoder runtime launches after a step.
//! - [`nvrtc`] finds a CUDA 13 NVRTC (system toolkit or the project cache filled by
//!   `scripts/cache.sh nvrtc`) without any environment variable, and turns CUDA C into CUBIN.

pub mod cache;
pub mod expr;
pub mod gemm;
pub mod glu;
pub mod kernel;
pub mod lower;
pub mod memory;
pub mod nvrtc;
pub mod ops;
pub mod sample;
pub mod segments;
pub mod template;

use template::Template;

/// The preamble every kernel source starts with: typedefs, PTX wrappers.
pub const COMMON: Template = Template { name: "common.cuh", text: include_str!("../../templates/common.cuh") };
/// Element-wise math and conversions (after [`COMMON`]).
pub const MATH: Template = Template { name: "math.cuh", text: include_str!("../../templates/math.cuh") };

/// `common.cuh` followed by `math.cuh`: what a template's `{{prelude}}` parameter receives.
pub fn prelude() -> String {
    format!("{}\n{}", COMMON.text, MATH.text)
}
