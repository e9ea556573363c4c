//! The thin production runtime: loads a `.plan` onto a GPU and runs it.
//!
//! ```no_run
//! use qfuse::runtime::{Engine, HostTensor};
//!
//! let engine = Engine::load("minilm-fp8.plan".as_ref())?;      // device 0
//! let mut ctx = engine.context()?;                            // one per thread
//! let ids = HostTensor::from_i64(vec![1, 8], &[101, 1037, 2158, 2003, 5983, 2833, 1012, 102]);
//! let mask = HostTensor::from_i64(vec![1, 8], &[1; 8]);
//! let outputs = ctx.run(&[("input_ids", ids), ("attention_mask", mask)])?;
//! for (name, t) in &outputs {
//!     println!("{name}: {} {:?} {:?}", t.dtype, t.shape, &t.to_f32_vec().unwrap()[..4]);
//! }
//! # Ok::<(), qfuse::runtime::RuntimeError>(())
//! ```
//!
//! - [`Engine`] (`Send + Sync`, one per plan per device): the plan's CUBINs loaded, its kernels
//!   resolved, its weights uploaded once, its metadata.
//! - [`Context`] (`Send`, one per thread): a CUDA stream, one activation arena holding every buffer
//!   of the plan at its offset, and a cache of CUDA graphs keyed by the shape symbols' values.
//!   [`Context::run`] binds the inputs by name ([`bind::bind_inputs`] infers the symbols from
//!   their shapes), copies them into their buffers, replays (or first captures) the graph for
//!   these symbol values, and copies the outputs back. [`Context::run_profiled`] times every
//!   launch, [`Context::run_checked`] hands every launch's results to a callback, and
//!   [`Context::bench`] times graph replays.
//!
//! The pure logic (binding, sizing, grid and argument evaluation) lives in [`bind`] and is tested
//! without a GPU. The runtime depends only on the plan reader and the CUDA driver (loaded at run
//! time: on a machine without one, [`Engine::load`] returns [`RuntimeError::NoDriver`]), so it
//! builds without the compiler: `cargo build --no-default-features --lib`.

pub mod bind;
mod context;
mod cuda;
mod engine;
mod error;
mod generator;
mod kv;
pub mod scheduler;
pub mod tensor;

pub use context::{BenchStats, Context, GraphMarginal, KernelTiming, Outputs, StepMarginals, StepOutput, DEFAULT_GRAPH_CACHE};
pub use engine::{device_arch, local_arch, Engine, DEVICE_ALIGN};
pub use error::RuntimeError;
pub use generator::Generator;
pub use tensor::HostTensor;
