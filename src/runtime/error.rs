//! [`RuntimeError`]: everything that can go wrong loading or running a plan, each naming what it
//! is about (the plan file, an input, a kernel, a launch).

use std::path::PathBuf;

use crate::plan::PlanError;

/// Why a plan could not be loaded or run. The runtime never panics on a bad plan or bad inputs;
/// it returns one of these.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The CUDA driver library (`libcuda.so.1`) could not be loaded: no NVIDIA driver here.
    #[error(
        "no NVIDIA driver: {detail}; the qfuse runtime needs an NVIDIA GPU with its driver \
         (libcuda.so.1 on the library path)"
    )]
    NoDriver {
        /// What the loader said.
        detail: String,
    },
    /// The driver loaded but has no device with this ordinal.
    #[error("no CUDA device {ordinal}: the driver sees {count} device(s)")]
    NoDevice {
        /// The requested device ordinal.
        ordinal: usize,
        /// How many devices the driver reports.
        count: usize,
    },
    /// A CUDA driver call failed.
    #[error("CUDA error while {what}: {error}")]
    Driver {
        /// What the runtime was doing, naming the plan, kernel or launch.
        what: String,
        /// The driver's error name and description.
        error: String,
    },
    /// The plan file could not be loaded (its message names the file).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A kernel of the plan cannot be loaded or launched as described.
    #[error("plan {}: kernel `{kernel}`: {message}", .path.display())]
    Kernel {
        /// The plan file.
        path: PathBuf,
        /// The kernel's entry point name.
        kernel: String,
        /// What is wrong.
        message: String,
    },
    /// A weight of the plan cannot be uploaded as described.
    #[error("plan {}: weight `{weight}`: {message}", .path.display())]
    Weight {
        /// The plan file.
        path: PathBuf,
        /// The weight's name.
        weight: String,
        /// What is wrong.
        message: String,
    },
    /// An input given to a run is unknown, missing, or of the wrong dtype or shape.
    #[error("input `{input}`: {message}")]
    Input {
        /// The input's name (as given, or as the plan names it).
        input: String,
        /// What is wrong, with the expected and actual values.
        message: String,
    },
    /// A shape symbol got inconsistent or out-of-range values, or none at all.
    #[error("shape symbol `{symbol}`: {message}")]
    Symbol {
        /// The symbol, e.g. `S`.
        symbol: String,
        /// What is wrong, naming the inputs and axes involved.
        message: String,
    },
    /// A launch's grid or arguments cannot be evaluated for these symbol values, or it failed.
    #[error("launch {index} `{label}` (kernel `{kernel}`): {message}")]
    Launch {
        /// Index in the plan's schedule.
        index: usize,
        /// The launch's label (what it computes).
        label: String,
        /// The kernel's entry point name.
        kernel: String,
        /// What is wrong.
        message: String,
    },
    /// An output or activation buffer cannot be sized or read back.
    #[error("{what} `{name}`: {message}")]
    Buffer {
        /// `output` or `buffer`.
        what: &'static str,
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Capturing or instantiating the CUDA graph of a run failed.
    #[error("CUDA graph capture for {symbols} failed: {message}")]
    Capture {
        /// The symbol values, e.g. `B=1, S=128`.
        symbols: String,
        /// What failed.
        message: String,
    },
    /// The call itself is invalid (e.g. zero benchmark iterations).
    #[error("{0}")]
    Usage(String),
}

impl RuntimeError {
    /// A failed driver call while doing `what`.
    pub(crate) fn driver(what: impl Into<String>, error: cudarc::driver::DriverError) -> Self {
        RuntimeError::Driver { what: what.into(), error: driver_message(error) }
    }
}

/// `CUDA_ERROR_X (description)` for a driver error.
pub(crate) fn driver_message(error: cudarc::driver::DriverError) -> String {
    match error.error_string() {
        Ok(s) => format!("{:?} ({})", error.0, s.to_string_lossy()),
        Err(_) => format!("{:?}", error.0),
    }
}
