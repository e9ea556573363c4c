//! qfuse: a graph compiler that makes transformer models fast on NVIDIA GPUs through quantization.
//!
//! Pipeline: [`import`] a Hugging Face folder into the [`ir`], run it on the CPU with the exact
//! reference [`interp`]reter (the oracle of every test), and compile it with NVRTC ([`codegen`]).

pub mod ir;
pub mod numerics;
pub mod codegen;
pub mod import;
pub mod interp;
