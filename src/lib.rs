//! qfuse: a graph compiler that makes transformer models fast on NVIDIA GPUs through quantization.
//!
//! Pipeline: [`import`] a Hugging Face folder into the [`ir`]; a [`quant`] recipe and calibration
//! place quantize/dequantize nodes; [`passes`] fold and fuse them; the reference [`interp`]reter
//! runs any stage on the CPU (the oracle of every test); [`codegen`] lowers the fused graph to
//! CUDA kernels from `templates/` and compiles them with NVRTC; [`compile`](mod@compile) assembles
//! a [`plan`] file; the [`runtime`] runs it on the GPU and [`check`] compares it with the
//! interpreter. With `--no-default-features` only [`plan`] and [`runtime`] are built.

#[cfg(feature = "compiler")]
pub mod check;
#[cfg(feature = "compiler")]
pub mod codegen;
#[cfg(feature = "compiler")]
pub mod compile;
#[cfg(feature = "compiler")]
pub mod generate;
#[cfg(feature = "compiler")]
pub mod harness;
#[cfg(feature = "compiler")]
pub mod import;
#[cfg(feature = "compiler")]
pub mod interp;
#[cfg(feature = "compiler")]
pub mod ir;
#[cfg(feature = "compiler")]
pub mod numerics;
#[cfg(feature = "compiler")]
pub mod passes;
pub mod plan;
#[cfg(feature = "compiler")]
pub mod progress;
#[cfg(feature = "compiler")]
pub mod quant;
pub mod runtime;

/// `qfuse::compile(model_dir, &CompileOptions::for_recipe("fp8")?)?.save(path)`: see [`compile`](mod@compile).
#[cfg(feature = "compiler")]
pub use compile::{compile, CompileOptions, CompiledPlan};

pub mod util;
