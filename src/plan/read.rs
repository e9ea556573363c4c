//! Loading a plan: map the file, validate it header first, decode the metadata and section table,
//! and hand out section bytes straight from the mapping after checking their crc once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::Mmap;

use super::header::{PlanHeader, FORMAT_VERSION};
use super::meta::{self, PlanMeta, SectionEntry};
use super::PlanError;

/// A loaded, validated plan backed by a read-only memory mapping of the file.
///
/// Header, metadata and section table are fully validated by [`Plan::load`]. Section checksums
/// are verified lazily, on the first [`Plan::section_bytes`] of each section (weights can be
/// gigabytes; a process that only inspects the metadata should not page them all in), or
/// eagerly with [`Plan::verify_sections`].
#[derive(Debug)]
pub struct Plan {
    path: PathBuf,
    map: Mmap,
    header: PlanHeader,
    meta: PlanMeta,
    sections: Vec<SectionEntry>,
    /// Per section: `Some(true)` once its crc matched, `Some(false)` once it did not.
    checked: Vec<OnceLock<bool>>,
}

impl Plan {
    /// Maps and validates the plan at `path`. With `expected_arch` (the device's, e.g. `sm_90`),
    /// a plan built for another arch is rejected before its metadata is even decoded.
    ///
    /// Validation order: magic, size, header crc, format version, file length, arch, metadata
    /// and table extents, metadata crc, section table crc, decoding, section bounds, references.
    pub fn load(path: impl AsRef<Path>, expected_arch: Option<&str>) -> Result<Plan, PlanError> {
        let path = path.as_ref();
        let map = map_file(path)?;
        let file: &[u8] = &map;
        let header = PlanHeader::parse(path, file, expected_arch)?;
        header.check_extents(path)?;
        let meta_bytes = checked_region(path, file, &header.meta, "metadata")?;
        let table_bytes = checked_region(path, file, &header.sections, "section table")?;
        let bad_meta = |message: String| PlanError::Meta { path: path.into(), message };
        let sections: Vec<SectionEntry> =
            meta::decode(table_bytes, header.format, FORMAT_VERSION).map_err(|e| bad_meta(format!("section table: {e}")))?;
        let meta: PlanMeta =
            meta::decode_meta(meta_bytes, header.format, FORMAT_VERSION).map_err(|e| bad_meta(format!("metadata: {e}")))?;
        check_sections(path, &header, &sections)?;
        check_meta_matches_header(&meta, &header).map_err(bad_meta)?;
        meta.check_refs(&sections).map_err(bad_meta)?;
        let checked = sections.iter().map(|_| OnceLock::new()).collect();
        Ok(Plan { path: path.into(), map, header, meta, sections, checked })
    }

    /// The file this plan was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &PlanHeader {
        &self.header
    }

    /// The decoded metadata.
    pub fn meta(&self) -> &PlanMeta {
        &self.meta
    }

    /// The section table, in index order.
    pub fn sections(&self) -> &[SectionEntry] {
        &self.sections
    }

    /// The bytes of section `index`, borrowed from the mapping (no copy). Its crc is verified on
    /// the first call (and the verdict remembered), so corrupt bytes are never returned.
    pub fn section_bytes(&self, index: usize) -> Result<&[u8], PlanError> {
        let (Some(entry), Some(checked)) = (self.sections.get(index), self.checked.get(index)) else {
            let message = format!("no such section; the plan has {}", self.sections.len());
            return Err(PlanError::Section { path: self.path.clone(), index, message });
        };
        // Bounds were checked by `load`; `get` keeps even a broken invariant from panicking.
        let bytes = usize::try_from(entry.offset)
            .ok()
            .zip(usize::try_from(entry.len).ok())
            .and_then(|(start, len)| self.map.get(start..start.checked_add(len)?));
        let Some(bytes) = bytes else {
            let message = "extent lies outside the file".to_string();
            return Err(PlanError::Section { path: self.path.clone(), index, message });
        };
        if !*checked.get_or_init(|| crc32fast::hash(bytes) == entry.crc32) {
            let what = format!("section {index} `{}` checksum", entry.name);
            return Err(PlanError::Corrupt { path: self.path.clone(), what });
        }
        Ok(bytes)
    }

    /// Verifies every section's crc now (e.g. for `qfuse inspect`, or before a long run).
    pub fn verify_sections(&self) -> Result<(), PlanError> {
        (0..self.sections.len()).try_for_each(|i| self.section_bytes(i).map(|_| ()))
    }
}

/// Whether a plan compiled for `plan` runs on a device of arch `device`: the same `sm_XY`, where
/// an arch-specific (`sm_90a`) or family (`sm_100f`) suffix on either side is ignored. A CUBIN
/// only runs on its own major, and qfuse does not rely on minor-version forward compatibility.
pub fn arch_compatible(plan: &str, device: &str) -> bool {
    fn base(arch: &str) -> &str {
        arch.strip_suffix(['a', 'f']).unwrap_or(arch)
    }
    plan == device || base(plan) == base(device)
}

/// Opens and maps `path` read-only.
fn map_file(path: &Path) -> Result<Mmap, PlanError> {
    let io = |source| PlanError::Io { path: path.into(), source };
    let file = File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    let len = metadata.len();
    if !metadata.is_file() {
        return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    if len == 0 {
        // An empty mapping is not portable; an empty file is foreign anyway.
        return Err(PlanError::Foreign { path: path.into(), found_magic: "nothing (the file is empty)".into() });
    }
    // SAFETY: `Mmap` is only unsound if the file is modified or truncated while mapped. qfuse never
    // writes a plan in place: `PlanBuilder::write` writes a new file and renames it over the old
    // one, so an existing mapping keeps the old inode's bytes. The mapping is read-only and every
    // offset into it is bounds-checked against its length. A third party truncating the file
    // under a running process is outside what a plan reader can defend against (SIGBUS).
    unsafe { Mmap::map(&file) }.map_err(io)
}

/// The bytes of a validated extent, after checking their crc.
fn checked_region<'a>(path: &Path, file: &'a [u8], ext: &super::PlanExtent, what: &str) -> Result<&'a [u8], PlanError> {
    let bytes = usize::try_from(ext.offset)
        .ok()
        .zip(usize::try_from(ext.len).ok())
        .and_then(|(start, len)| file.get(start..start.checked_add(len)?))
        .ok_or_else(|| PlanError::Corrupt { path: path.into(), what: format!("header: {what} extent outside the file") })?;
    let actual = crc32fast::hash(bytes);
    if actual != ext.crc32 {
        let what = format!("{what} checksum: stored {:#010x}, computed {actual:#010x}", ext.crc32);
        return Err(PlanError::Corrupt { path: path.into(), what });
    }
    Ok(bytes)
}

/// Every section lies after the metadata and table, inside the file, aligned, in order and
/// without overlap.
fn check_sections(path: &Path, header: &PlanHeader, sections: &[SectionEntry]) -> Result<(), PlanError> {
    let mut prev_end = header.meta.end().unwrap_or(u64::MAX).max(header.sections.end().unwrap_or(u64::MAX));
    for (index, s) in sections.iter().enumerate() {
        let fail = |message: String| Err(PlanError::Section { path: path.into(), index, message });
        if !s.align.is_power_of_two() || s.offset % s.align != 0 {
            return fail(format!("offset {} is not aligned to {}", s.offset, s.align));
        }
        if s.offset < prev_end {
            return fail(format!("offset {} overlaps the bytes before it (which end at {prev_end})", s.offset));
        }
        match s.offset.checked_add(s.len) {
            Some(end) if end <= header.file_len => prev_end = end,
            _ => return fail(format!("offset {} length {} runs past the {}-byte file", s.offset, s.len, header.file_len)),
        }
    }
    Ok(())
}

fn check_meta_matches_header(meta: &PlanMeta, header: &PlanHeader) -> Result<(), String> {
    let nvrtc = (u32::from(header.nvrtc_version.0), u32::from(header.nvrtc_version.1));
    if meta.arch != header.arch || meta.qfuse_version != header.qfuse_version || meta.nvrtc_version != nvrtc {
        return Err(format!(
            "metadata says qfuse {} / {} / NVRTC {:?}, header says qfuse {} / {} / NVRTC {:?}",
            meta.qfuse_version, meta.arch, meta.nvrtc_version, header.qfuse_version, header.arch, nvrtc
        ));
    }
    Ok(())
}
