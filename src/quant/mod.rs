//! Quantization: calibration statistics and amax selection ([`calib`]).
pub mod calib;
