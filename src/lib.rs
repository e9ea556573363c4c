//! qfuse: a graph compiler that makes transformer models fast on NVIDIA GPUs through quantization.
//!
//! Pipeline: [`import`] a Hugging Face folder into the [`ir`]; a [`quant`] recipe and calibration
//! place quantize/dequantize nodes; [`passes`] fold and fuse them; the reference [`interp`]reter
//! runs any stage on the CPU (the oracle of every test); [`codegen`] compiles kernels with NVRTC.

pub mod codegen;
pub mod import;
pub mod interp;
pub mod ir;
pub mod numerics;
pub mod passes;
pub mod plan;
pub mod quant;
pub mod util;
