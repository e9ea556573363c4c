//! Code generation: from scheduled IR to CUDA C, compiled to `sm_90a` CUBIN with NVRTC.
//!
//! [`nvrtc`] finds a CUDA 13 NVRTC (system toolkit or the project cache filled by
//! `scripts/cache.sh nvrtc`) without any environment variable, and turns CUDA C into CUBIN.

pub mod gemm;
pub mod nvrtc;
pub mod template;
