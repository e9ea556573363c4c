//! Writing a plan: lay out header, metadata and section table in memory, then stream them and the
//! 4096-aligned sections into the file, atomically (a multi-gigabyte plan is never copied whole).

use std::borrow::Cow;
use std::path::Path;

use super::header::{PlanExtent, PlanHeader, FORMAT_VERSION, HEADER_SIZE};
use super::meta::{self, PlanMeta, SectionEntry, SectionKind, SECTION_ALIGN};
use super::PlanError;

/// Assembles a plan: metadata plus raw sections (CUBINs, weights).
///
/// ```no_run
/// # use qfuse::plan::{PlanBuilder, PlanMeta, SectionKind};
/// let mut b = PlanBuilder::new(PlanMeta::new("bert-base", "sm_90a", (13, 0)));
/// let cubin = b.add_section(SectionKind::Cubin, "cubin.gemm", vec![0x7f, b'E', b'L', b'F']);
/// b.write("model.plan".as_ref())?;
/// # Ok::<(), qfuse::plan::PlanError>(())
/// ```
///
/// The whole file is assembled in memory before the write (sections may borrow, e.g. from a
/// mapped safetensors file, so each byte is copied once).
#[derive(Debug, Clone)]
pub struct PlanBuilder<'a> {
    meta: PlanMeta,
    sections: Vec<(SectionKind, String, Cow<'a, [u8]>)>,
}

impl<'a> PlanBuilder<'a> {
    /// A builder for `meta`, with no sections yet.
    pub fn new(meta: PlanMeta) -> Self {
        Self { meta, sections: Vec::new() }
    }

    /// Adds a section and returns its index (what [`KernelMeta::section`](super::KernelMeta)
    /// and [`WeightMeta::section`](super::WeightMeta) refer to).
    pub fn add_section(&mut self, kind: SectionKind, name: impl Into<String>, bytes: impl Into<Cow<'a, [u8]>>) -> u32 {
        self.sections.push((kind, name.into(), bytes.into()));
        u32::try_from(self.sections.len() - 1).expect("fewer than 2^32 sections")
    }

    /// The metadata, to fill in section indices after [`Self::add_section`].
    pub fn meta_mut(&mut self) -> &mut PlanMeta {
        &mut self.meta
    }

    /// The metadata.
    pub fn meta(&self) -> &PlanMeta {
        &self.meta
    }

    /// Encodes the plan and writes it to `path` atomically: a reader sees the old file or the
    /// new one, never a partial one, and no temporary file is left behind.
    pub fn write(&self, path: &Path) -> Result<(), PlanError> {
        let (head, table) = self.head().map_err(|message| PlanError::Meta { path: path.into(), message })?;
        crate::util::write_atomic_with(path, |out| {
            out.write_all(&head)?;
            let mut at = head.len() as u64;
            for (entry, (_, _, bytes)) in table.iter().zip(&self.sections) {
                out.write_all(&vec![0; (entry.offset - at) as usize])?;
                out.write_all(bytes)?;
                at = entry.offset + entry.len;
            }
            Ok(())
        })
        .map_err(|source| PlanError::Io { path: path.into(), source })
    }

    /// The file's bytes before its first section (header, metadata, section table) and the
    /// table, whose entries place each section; the file ends with the last section.
    fn head(&self) -> Result<(Vec<u8>, Vec<SectionEntry>), String> {
        let meta_bytes = meta::encode(&self.meta)?;
        let table_start = HEADER_SIZE as u64 + meta_bytes.len() as u64;
        let (table, table_bytes) = self.layout(table_start)?;
        self.meta.check_refs(&table)?;
        let data_end = table.last().map(|s| s.offset + s.len);
        let file_len = data_end.unwrap_or(table_start + table_bytes.len() as u64);
        let header = PlanHeader {
            format: FORMAT_VERSION,
            header_size: HEADER_SIZE as u32,
            flags: 0,
            nvrtc_version: nvrtc_u16(self.meta.nvrtc_version)?,
            qfuse_version: self.meta.qfuse_version.clone(),
            arch: self.meta.arch.clone(),
            meta: extent(HEADER_SIZE as u64, &meta_bytes),
            sections: extent(table_start, &table_bytes),
            file_len,
        };
        let mut head = Vec::with_capacity(HEADER_SIZE + meta_bytes.len() + table_bytes.len());
        head.extend_from_slice(&header.to_bytes()?);
        head.extend_from_slice(&meta_bytes);
        head.extend_from_slice(&table_bytes);
        Ok((head, table))
    }

    /// Places the sections after a table that starts at `table_start`. The table holds the
    /// offsets and its varint encoding grows with them, so iterate until the first section
    /// offset leaves room for the table; offsets only grow, so this terminates (in 1–2 rounds).
    fn layout(&self, table_start: u64) -> Result<(Vec<SectionEntry>, Vec<u8>), String> {
        let mut data_start = align_up(table_start);
        loop {
            let mut offset = data_start;
            let mut table = Vec::with_capacity(self.sections.len());
            for (kind, name, bytes) in &self.sections {
                let len = bytes.len() as u64;
                let crc32 = crc32fast::hash(bytes);
                table.push(SectionEntry { kind: *kind, name: name.clone(), offset, len, crc32, align: SECTION_ALIGN });
                offset = align_up(offset + len);
            }
            let table_bytes = meta::encode(&table)?;
            let needed = align_up(table_start + table_bytes.len() as u64);
            if needed <= data_start {
                return Ok((table, table_bytes));
            }
            data_start = needed;
        }
    }
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(SECTION_ALIGN) * SECTION_ALIGN
}

fn extent(offset: u64, bytes: &[u8]) -> PlanExtent {
    PlanExtent { offset, len: bytes.len() as u64, crc32: crc32fast::hash(bytes) }
}

fn nvrtc_u16((major, minor): (u32, u32)) -> Result<(u16, u16), String> {
    match (u16::try_from(major), u16::try_from(minor)) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(format!("NVRTC version {major}.{minor} does not fit the header's u16 fields")),
    }
}
