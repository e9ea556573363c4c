//! The `.plan` file: everything the runtime needs to run a compiled model, in one file.
//!
//! Layout (byte-exact reference in `docs/plan-format.md`):
//!
//! ```text
//! [0, 128)             fixed header, hand-written little-endian (header.rs)
//! [128, 128+M)         metadata: PlanMeta, postcard (meta.rs)
//! [128+M, 128+M+T)     section table: Vec<SectionEntry>, postcard
//! zero padding to 4096
//! section 0, 1, ...    raw bytes (CUBINs, weights), each at a 4096-byte boundary
//! ```
//!
//! [`PlanBuilder`] writes a plan atomically (temporary file + fsync + rename); [`Plan::load`]
//! memory-maps one and validates it header first, in a fixed order, before anything else touches
//! it: magic, size, header checksum, format version, file length, target arch, extents, metadata
//! checksum, section table. Each section's checksum is verified the first time its bytes are asked
//! for ([`Plan::section_bytes`]) or all at once by [`Plan::verify_sections`]. No input, however
//! hostile, makes the loader panic or allocate more than the file holds.
//!
//! The serializer (postcard) is an implementation detail of this module: no type outside
//! `src/plan` encodes or decodes plan bytes, so the encoding can change with a format version.

mod decoder;
mod dim;
mod header;
mod meta;
mod read;
mod write;

use std::path::PathBuf;

pub use decoder::{DecoderMeta, GenerationDefaults, KvCacheMeta, KvSlotMeta, SpecialTokens};
pub use dim::{DimExpr, MAX_DIM_DEPTH};
pub use header::{FormatVersion, PlanExtent, PlanHeader, FORMAT_VERSION, HEADER_SIZE, MAGIC};
pub use meta::{
    ArgRef, BufferMeta, Guard, KernelMeta, LaunchGuard, LaunchMeta, LaunchSums, ParamMeta, ParamType, PlanMeta, Scalar, SectionEntry,
    SectionKind, Sums, TensorCoreModel, TensorSig, WeightMeta, SECTION_ALIGN,
};
pub use read::{arch_compatible, Plan};
pub use write::PlanBuilder;

/// The qfuse version that writes and reads plans, as recorded in every header.
pub const QFUSE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a plan could not be written or loaded. Every message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file could not be opened, mapped, written or renamed.
    #[error("I/O error on plan {}: {source}", .path.display())]
    Io {
        /// The plan file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is shorter than its header says (or than a header): an interrupted copy.
    #[error(
        "plan {} is truncated: expected {expected} bytes, found {found}; copy it again or \
         recompile it with qfuse {QFUSE_VERSION}",
        .path.display()
    )]
    Truncated {
        /// The plan file.
        path: PathBuf,
        /// Bytes the header (or the fixed header size) requires.
        expected: u64,
        /// Bytes actually present.
        found: u64,
    },
    /// The file does not start with the magic `QFUSEPLN`: it is not a plan at all.
    #[error(
        "{} is not a qfuse plan: it starts with {found_magic} where a plan starts with \"QFUSEPLN\"; \
         pass the .plan file written by `qfuse compile`",
        .path.display()
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its first (up to 8) bytes, escaped and quoted, or a note that it is empty.
        found_magic: String,
    },
    /// A checksum or an internal extent does not match: the bytes changed after writing.
    #[error(
        "plan {} is corrupt ({what}); copy it again or recompile it with qfuse {QFUSE_VERSION}",
        .path.display()
    )]
    Corrupt {
        /// The plan file.
        path: PathBuf,
        /// What failed: starts with `header`, `metadata`, `section table` or `section N`.
        what: String,
    },
    /// The plan's format major version is newer than this reader understands.
    #[error(
        "plan {} has format version {found}, newer than format {supported} read by qfuse \
         {QFUSE_VERSION}; load it with a newer qfuse runtime or recompile the plan with qfuse \
         {QFUSE_VERSION}",
        .path.display()
    )]
    NewerFormat {
        /// The plan file.
        path: PathBuf,
        /// The version in the file.
        found: FormatVersion,
        /// The newest version this reader supports.
        supported: FormatVersion,
    },
    /// The plan's format major version is older than any this reader still supports.
    #[error(
        "plan {} has format version {found}, older than the oldest format ({supported}) read by \
         qfuse {QFUSE_VERSION}; recompile the plan with qfuse {QFUSE_VERSION}",
        .path.display()
    )]
    OlderFormat {
        /// The plan file.
        path: PathBuf,
        /// The version in the file.
        found: FormatVersion,
        /// The oldest version this reader supports.
        supported: FormatVersion,
    },
    /// The plan's CUBINs were built for another GPU architecture than the device's.
    #[error(
        "plan {} was compiled for {plan} but the device is {device}; recompile the plan with \
         qfuse {QFUSE_VERSION} for {device}",
        .path.display()
    )]
    WrongArch {
        /// The plan file.
        path: PathBuf,
        /// The arch in the plan header, e.g. `sm_90a`.
        plan: String,
        /// The arch the caller expected (the device's).
        device: String,
    },
    /// The metadata or section table passed its checksum but does not decode or is inconsistent
    /// (a writer bug, or a plan written by an incompatible qfuse); also a builder given bad input.
    #[error(
        "plan {} has unusable metadata: {message}; recompile it with qfuse {QFUSE_VERSION}",
        .path.display()
    )]
    Meta {
        /// The plan file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A section entry is out of range, misaligned or overlapping, or no such section exists.
    #[error(
        "plan {}: section {index}: {message}; recompile it with qfuse {QFUSE_VERSION}",
        .path.display()
    )]
    Section {
        /// The plan file.
        path: PathBuf,
        /// The section's index in the section table.
        index: usize,
        /// What is wrong.
        message: String,
    },
}
