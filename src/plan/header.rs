//! The fixed 128-byte plan header: written and read by hand, little-endian, never through serde,
//! so it stays readable by any future qfuse (and by a 20-line C reader) whatever the metadata
//! encoding becomes.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0   | 8  | magic `QFUSEPLN` |
//! | 8   | 2  | format major (u16) |
//! | 10  | 2  | format minor (u16) |
//! | 12  | 4  | header size in bytes (u32; 128 in format 1.0) |
//! | 16  | 4  | flags (u32; 0, no flag defined) |
//! | 20  | 2  | NVRTC major (u16) |
//! | 22  | 2  | NVRTC minor (u16) |
//! | 24  | 16 | qfuse version, UTF-8, NUL-padded |
//! | 40  | 16 | target arch (`sm_90a`), UTF-8, NUL-padded |
//! | 56  | 8  | metadata offset (u64) |
//! | 64  | 8  | metadata length (u64) |
//! | 72  | 4  | metadata crc32 (u32) |
//! | 76  | 4  | section table crc32 (u32) |
//! | 80  | 8  | section table offset (u64) |
//! | 88  | 8  | section table length (u64) |
//! | 96  | 8  | file length (u64) |
//! | 104 | 20 | reserved, zero |
//! | 124 | 4  | crc32 of bytes `[0, header_size - 4)` (u32) |
//!
//! Invariant across every format version, so that any reader can classify any plan: the magic
//! at 0, major/minor at 8/10, header size at 12, and the header crc in the header's last 4 bytes.

use std::fmt;
use std::path::Path;

use super::PlanError;

/// The 8 bytes every plan starts with.
pub const MAGIC: [u8; 8] = *b"QFUSEPLN";
/// Size of the header written by this qfuse (format 1.0).
pub const HEADER_SIZE: usize = 128;
/// The format this qfuse writes, and the newest it reads.
pub const FORMAT_VERSION: FormatVersion = FormatVersion { major: 2, minor: 3 };
/// The oldest format major this qfuse still reads (keep a reader for N-1 when N ships).
const OLDEST_MAJOR: u16 = 1;
/// Largest header size any minor may grow to: the header must end before the first section.
const MAX_HEADER_SIZE: u32 = 4096;
/// Width of the fixed string fields (qfuse version, arch).
const FIXED_STR: usize = 16;

const OFF_MAJOR: usize = 8;
const OFF_MINOR: usize = 10;
const OFF_HEADER_SIZE: usize = 12;
const OFF_FLAGS: usize = 16;
const OFF_NVRTC: usize = 20;
const OFF_QFUSE_VERSION: usize = 24;
const OFF_ARCH: usize = 40;
const OFF_META: usize = 56;
const OFF_META_CRC: usize = 72;
const OFF_TABLE_CRC: usize = 76;
const OFF_TABLE: usize = 80;
const OFF_FILE_LEN: usize = 96;

/// A plan format version: a new major is incompatible, a new minor only appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FormatVersion {
    /// Incompatible changes bump this; readers reject a major they do not know.
    pub major: u16,
    /// Appended fields bump this; readers ignore what they do not know.
    pub minor: u16,
}

impl fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Where a region lies in the file, and the crc32 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanExtent {
    /// Byte offset from the start of the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// crc32 (IEEE) of the bytes.
    pub crc32: u32,
}

impl PlanExtent {
    /// The end offset, or `None` if it overflows.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }
}

/// The decoded, validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanHeader {
    /// Format version of the file.
    pub format: FormatVersion,
    /// Header size in bytes (128 for format 1.0; a later minor may grow it).
    pub header_size: u32,
    /// Flags; none defined, written as 0, unknown bits ignored.
    pub flags: u32,
    /// NVRTC `(major, minor)` that compiled the CUBINs.
    pub nvrtc_version: (u16, u16),
    /// qfuse version that wrote the plan.
    pub qfuse_version: String,
    /// Target GPU arch of the CUBINs, e.g. `sm_90a`.
    pub arch: String,
    /// The postcard-encoded [`PlanMeta`](super::PlanMeta).
    pub meta: PlanExtent,
    /// The postcard-encoded section table.
    pub sections: PlanExtent,
    /// Total file length in bytes.
    pub file_len: u64,
}

impl PlanHeader {
    /// Encodes the header (format 1.0 layout) with its crc; fails if a string does not fit.
    pub(crate) fn to_bytes(&self) -> Result<[u8; HEADER_SIZE], String> {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(&MAGIC);
        put_u16(&mut b, OFF_MAJOR, self.format.major);
        put_u16(&mut b, OFF_MINOR, self.format.minor);
        put_u32(&mut b, OFF_HEADER_SIZE, HEADER_SIZE as u32);
        put_u32(&mut b, OFF_FLAGS, self.flags);
        put_u16(&mut b, OFF_NVRTC, self.nvrtc_version.0);
        put_u16(&mut b, OFF_NVRTC + 2, self.nvrtc_version.1);
        put_str(&mut b, OFF_QFUSE_VERSION, "qfuse version", &self.qfuse_version)?;
        put_str(&mut b, OFF_ARCH, "arch", &self.arch)?;
        put_u64(&mut b, OFF_META, self.meta.offset);
        put_u64(&mut b, OFF_META + 8, self.meta.len);
        put_u32(&mut b, OFF_META_CRC, self.meta.crc32);
        put_u32(&mut b, OFF_TABLE_CRC, self.sections.crc32);
        put_u64(&mut b, OFF_TABLE, self.sections.offset);
        put_u64(&mut b, OFF_TABLE + 8, self.sections.len);
        put_u64(&mut b, OFF_FILE_LEN, self.file_len);
        let crc = crc32fast::hash(&b[..HEADER_SIZE - 4]);
        put_u32(&mut b, HEADER_SIZE - 4, crc);
        Ok(b)
    }

    /// Validates the header of `file` in the documented order (magic, size, header crc, format
    /// version, file length, arch) and decodes it. Extents are checked by [`Self::check_extents`].
    pub(crate) fn parse(path: &Path, file: &[u8], expected_arch: Option<&str>) -> Result<Self, PlanError> {
        check_magic(path, file)?;
        let header_size = check_header_crc(path, file)?;
        let format = FormatVersion { major: get_u16(file, OFF_MAJOR), minor: get_u16(file, OFF_MINOR) };
        check_format(path, format)?;
        let header = Self::decode_fields(path, file, format, header_size)?;
        let found = file.len() as u64;
        if found < header.file_len {
            return Err(PlanError::Truncated { path: path.into(), expected: header.file_len, found });
        }
        if found > header.file_len {
            let what = format!("{} trailing bytes after the {}-byte plan", found - header.file_len, header.file_len);
            return Err(corrupt(path, what));
        }
        if let Some(device) = expected_arch {
            if !super::arch_compatible(&header.arch, device) {
                return Err(PlanError::WrongArch { path: path.into(), plan: header.arch, device: device.into() });
            }
        }
        Ok(header)
    }

    fn decode_fields(path: &Path, b: &[u8], format: FormatVersion, header_size: u32) -> Result<Self, PlanError> {
        Ok(Self {
            format,
            header_size,
            flags: get_u32(b, OFF_FLAGS),
            nvrtc_version: (get_u16(b, OFF_NVRTC), get_u16(b, OFF_NVRTC + 2)),
            qfuse_version: get_str(path, b, OFF_QFUSE_VERSION, "qfuse version")?,
            arch: get_str(path, b, OFF_ARCH, "arch")?,
            meta: PlanExtent { offset: get_u64(b, OFF_META), len: get_u64(b, OFF_META + 8), crc32: get_u32(b, OFF_META_CRC) },
            sections: PlanExtent { offset: get_u64(b, OFF_TABLE), len: get_u64(b, OFF_TABLE + 8), crc32: get_u32(b, OFF_TABLE_CRC) },
            file_len: get_u64(b, OFF_FILE_LEN),
        })
    }

    /// Checks that the metadata and the section table lie between the header and the end of the
    /// file, without overflow, before anything is read from them.
    pub(crate) fn check_extents(&self, path: &Path) -> Result<(), PlanError> {
        for (name, ext) in [("metadata", &self.meta), ("section table", &self.sections)] {
            let inside = ext.end().is_some_and(|end| ext.offset >= u64::from(self.header_size) && end <= self.file_len);
            if !inside {
                let what = format!(
                    "header: {name} extent offset {} length {} lies outside bytes {}..{} of the file",
                    ext.offset, ext.len, self.header_size, self.file_len
                );
                return Err(corrupt(path, what));
            }
        }
        Ok(())
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> PlanError {
    PlanError::Corrupt { path: path.into(), what: what.into() }
}

/// Empty files and files whose first bytes differ from the magic are foreign; a file that starts
/// like a plan but is shorter than a header is truncated.
fn check_magic(path: &Path, file: &[u8]) -> Result<(), PlanError> {
    let prefix = &file[..file.len().min(MAGIC.len())];
    if file.is_empty() || prefix != &MAGIC[..prefix.len()] {
        let found_magic =
            if file.is_empty() { "nothing (the file is empty)".to_string() } else { format!("\"{}\"", prefix.escape_ascii()) };
        return Err(PlanError::Foreign { path: path.into(), found_magic });
    }
    if file.len() < HEADER_SIZE {
        return Err(PlanError::Truncated { path: path.into(), expected: HEADER_SIZE as u64, found: file.len() as u64 });
    }
    Ok(())
}

/// Reads the header size, bounds it, and checks the crc in the header's last 4 bytes.
fn check_header_crc(path: &Path, file: &[u8]) -> Result<u32, PlanError> {
    let header_size = get_u32(file, OFF_HEADER_SIZE);
    if (header_size as usize) < HEADER_SIZE || header_size > MAX_HEADER_SIZE || header_size % 4 != 0 {
        return Err(corrupt(path, format!("header checksum (header size field {header_size} is invalid)")));
    }
    if u64::from(header_size) > file.len() as u64 {
        return Err(PlanError::Truncated { path: path.into(), expected: header_size.into(), found: file.len() as u64 });
    }
    let crc_at = header_size as usize - 4;
    let stored = get_u32(file, crc_at);
    let actual = crc32fast::hash(file.get(..crc_at).unwrap_or_default());
    if stored != actual {
        return Err(corrupt(path, format!("header checksum: stored {stored:#010x}, computed {actual:#010x}")));
    }
    Ok(header_size)
}

fn check_format(path: &Path, found: FormatVersion) -> Result<(), PlanError> {
    if found.major > FORMAT_VERSION.major {
        return Err(PlanError::NewerFormat { path: path.into(), found, supported: FORMAT_VERSION });
    }
    if found.major < OLDEST_MAJOR {
        let supported = FormatVersion { major: OLDEST_MAJOR, minor: 0 };
        return Err(PlanError::OlderFormat { path: path.into(), found, supported });
    }
    Ok(())
}

fn get_bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    // Callers pass offsets inside the first HEADER_SIZE bytes, already checked present; a short
    // slice yields zeros rather than a panic.
    b.get(at..at + N).and_then(|s| s.try_into().ok()).unwrap_or([0; N])
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(get_bytes(b, at))
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(get_bytes(b, at))
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(get_bytes(b, at))
}

fn get_str(path: &Path, b: &[u8], at: usize, field: &str) -> Result<String, PlanError> {
    let raw: [u8; FIXED_STR] = get_bytes(b, at);
    let end = raw.iter().position(|&c| c == 0).unwrap_or(FIXED_STR);
    std::str::from_utf8(&raw[..end]).map(str::to_owned).map_err(|_| corrupt(path, format!("header: {field} field is not UTF-8")))
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut [u8], at: usize, field: &str, s: &str) -> Result<(), String> {
    if s.len() > FIXED_STR || s.contains('\0') {
        return Err(format!("{field} {s:?} does not fit the header's {FIXED_STR}-byte field"));
    }
    b[at..at + s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}
