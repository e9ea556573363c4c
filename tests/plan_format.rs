//! The `.plan` container: round trip, and a clear error (never a panic, never a huge
//! allocation) for every kind of bad file. Offsets below are the ones documented in
//! `docs/plan-format.md`; the tests patch raw bytes to check that the layout is what it says.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use qfuse::plan::{
    ArgRef, BufferMeta, DecoderMeta, DimExpr, FormatVersion, Guard, KernelMeta, KvCacheMeta, KvSlotMeta, LaunchGuard, LaunchMeta,
    ParamMeta, ParamType, Plan, PlanBuilder, PlanError, PlanMeta, Scalar, SectionKind, TensorSig, WeightMeta, FORMAT_VERSION, HEADER_SIZE,
    QFUSE_VERSION, SECTION_ALIGN,
};

// Documented header offsets.
const OFF_MAJOR: usize = 8;
const OFF_MINOR: usize = 10;
const OFF_HEADER_SIZE: usize = 12;
const OFF_ARCH: usize = 40;
const OFF_META_OFFSET: usize = 56;
const OFF_META_LEN: usize = 64;
const OFF_META_CRC: usize = 72;
const OFF_TABLE_CRC: usize = 76;
const OFF_TABLE_OFFSET: usize = 80;
const OFF_TABLE_LEN: usize = 88;
const OFF_FILE_LEN: usize = 96;
const OFF_HEADER_CRC: usize = 124;

/// Records the largest single allocation made by the current thread, to prove that hostile
/// lengths are never allocated.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: forwards every call to `System` unchanged; `note` neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn largest_allocation_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

fn sample_meta() -> PlanMeta {
    let mut meta = PlanMeta::new("tiny-bert", "sm_90a", (13, 0));
    meta.recipe = r#"{"default":"w8a8"}"#.into();
    meta.calibration = r#"{"x":{"absmax":3.5}}"#.into();
    meta.fusion_report = r#"{"fused":2}"#.into();
    meta.ir_text = "%0 = input \"ids\" : i64[B,384]\n".into();
    let b = || DimExpr::sym("B");
    meta.inputs = vec![TensorSig { name: "ids".into(), dtype: "i64".into(), shape: vec![b(), 384.into()], buffer: 0 }];
    meta.outputs = vec![TensorSig { name: "out".into(), dtype: "f16".into(), shape: vec![b(), 768.into()], buffer: 1 }];
    meta.symbols = vec![("B".into(), 64)];
    meta.kernels = vec![KernelMeta {
        name: "qgemm_w8a16_1a2b3c4d".into(),
        template: "qgemm_w8a16".into(),
        source: "extern \"C\" __global__ void qgemm_w8a16_1a2b3c4d() {}\n".into(),
        section: 0,
        grid: [b().mul(384.into()).ceil_div(128), 6.into(), 1.into()],
        block: [128, 1, 1],
        shared_mem_bytes: 49152,
        params: [
            ("x", ParamType::Ptr),
            ("w", ParamType::Ptr),
            ("m", ParamType::I32),
            ("alpha", ParamType::F32),
            ("k", ParamType::I64),
            ("y", ParamType::Ptr),
        ]
        .map(|(name, ty)| ParamMeta { name: name.into(), ty })
        .into(),
    }];
    meta.buffers = vec![
        BufferMeta { name: "%0".into(), dtype: "i64".into(), shape: vec![b(), 384.into()], bytes: 64 * 384 * 8, offset: 0 },
        BufferMeta { name: "%7".into(), dtype: "f16".into(), shape: vec![b(), 768.into()], bytes: 64 * 768 * 2, offset: 64 * 384 * 8 },
    ];
    meta.peak_activation_bytes = 64 * 384 * 8 + 64 * 768 * 2;
    meta.weights = vec![
        WeightMeta { name: "q.weight".into(), dtype: "i8".into(), shape: vec![768, 768], section: 1 },
        WeightMeta { name: "q.scale".into(), dtype: "f16".into(), shape: vec![768], section: 2 },
    ];
    meta.schedule = vec![LaunchMeta {
        kernel: 0,
        args: vec![
            ArgRef::Buffer(0),
            ArgRef::Weight(0),
            ArgRef::Scalar(Scalar::Dim(b())),
            ArgRef::Scalar(Scalar::F32(0.125)),
            ArgRef::Scalar(Scalar::I64(-3)),
            ArgRef::Buffer(1),
        ],
        label: "q (%7)".into(),
        writes: vec![1],
    }];
    meta
}

/// Section contents of the sample plan: a CUBIN, a weight of odd length, a small weight.
fn sample_sections() -> Vec<(SectionKind, &'static str, Vec<u8>)> {
    let cubin: Vec<u8> = b"\x7fELF".iter().copied().chain((0..1000u32).map(|i| i as u8)).collect();
    let weight: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let scale: Vec<u8> = vec![0x3c; 1536];
    vec![
        (SectionKind::Cubin, "cubin.qgemm_w8a16_1a2b3c4d", cubin),
        (SectionKind::Weights, "q.weight", weight),
        (SectionKind::Weights, "q.scale", scale),
    ]
}

fn sample_builder() -> PlanBuilder<'static> {
    let mut b = PlanBuilder::new(sample_meta());
    for (i, (kind, name, bytes)) in sample_sections().into_iter().enumerate() {
        assert_eq!(b.add_section(kind, name, bytes), i as u32);
    }
    b
}

fn write_sample(dir: &Path) -> PathBuf {
    let path = dir.join("model.plan");
    sample_builder().write(&path).unwrap();
    path
}

fn sample_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::read(write_sample(dir.path())).unwrap()
}

fn load_bytes(bytes: &[u8], arch: Option<&str>) -> Result<Plan, PlanError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.plan");
    std::fs::write(&path, bytes).unwrap();
    Plan::load(&path, arch)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
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

fn fix_header_crc(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[..OFF_HEADER_CRC]);
    put_u32(b, OFF_HEADER_CRC, crc);
}

/// Recomputes the metadata and table crcs (where their extents are in range), then the header's.
fn fix_all_crcs(b: &mut [u8]) {
    for (off, len, crc_at) in [(OFF_META_OFFSET, OFF_META_LEN, OFF_META_CRC), (OFF_TABLE_OFFSET, OFF_TABLE_LEN, OFF_TABLE_CRC)] {
        let (start, len) = (u64_at(b, off), u64_at(b, len));
        if let Some(end) = start.checked_add(len).filter(|&e| e <= b.len() as u64) {
            let crc = crc32fast::hash(&b[start as usize..end as usize]);
            put_u32(b, crc_at, crc);
        }
    }
    fix_header_crc(b);
}

fn meta_range(b: &[u8]) -> std::ops::Range<usize> {
    let start = u64_at(b, OFF_META_OFFSET) as usize;
    start..start + u64_at(b, OFF_META_LEN) as usize
}

fn table_range(b: &[u8]) -> std::ops::Range<usize> {
    let start = u64_at(b, OFF_TABLE_OFFSET) as usize;
    start..start + u64_at(b, OFF_TABLE_LEN) as usize
}

#[track_caller]
fn assert_corrupt(result: Result<Plan, PlanError>, prefix: &str) {
    match result {
        Err(PlanError::Corrupt { what, .. }) => assert!(what.starts_with(prefix), "Corrupt {{ what: {what:?} }}, want {prefix}…"),
        other => panic!("expected Corrupt({prefix}…), got {other:?}"),
    }
}

#[track_caller]
fn assert_truncated(result: Result<Plan, PlanError>, want_expected: u64, want_found: u64) {
    match result {
        Err(PlanError::Truncated { expected, found, .. }) => assert_eq!((expected, found), (want_expected, want_found)),
        other => panic!("expected Truncated, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Round trip and layout

#[test]
fn round_trip_keeps_meta_and_sections() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_sample(dir.path());
    let plan = Plan::load(&path, Some("sm_90a")).unwrap();
    assert_eq!(plan.meta(), &sample_meta());
    assert_eq!(plan.path(), path);
    let h = plan.header();
    assert_eq!(h.format, FORMAT_VERSION);
    assert_eq!(FORMAT_VERSION, FormatVersion { major: 2, minor: 3 });
    assert_eq!((h.header_size as usize, h.flags), (HEADER_SIZE, 0));
    assert_eq!((h.arch.as_str(), h.qfuse_version.as_str(), h.nvrtc_version), ("sm_90a", QFUSE_VERSION, (13, 0)));
    assert_eq!(h.file_len, std::fs::metadata(&path).unwrap().len());
    let want = sample_sections();
    assert_eq!(plan.sections().len(), want.len());
    for (i, (entry, (kind, name, bytes))) in plan.sections().iter().zip(&want).enumerate() {
        assert_eq!((entry.kind, entry.name.as_str(), entry.len), (*kind, *name, bytes.len() as u64));
        assert_eq!(entry.offset % SECTION_ALIGN, 0, "section {i} not 4096-aligned");
        assert_eq!(entry.align, 4096);
        assert_eq!(plan.section_bytes(i).unwrap(), &bytes[..]);
        assert_eq!(plan.section_bytes(i).unwrap().as_ptr() as usize % 4096, 0, "mapping is page-aligned");
    }
    plan.verify_sections().unwrap();
    assert!(matches!(plan.section_bytes(3), Err(PlanError::Section { index: 3, .. })));
}

#[test]
fn header_matches_documented_layout() {
    let b = sample_bytes();
    assert_eq!(&b[..8], b"QFUSEPLN");
    assert_eq!((b[OFF_MAJOR], b[OFF_MAJOR + 1], b[OFF_MINOR], b[OFF_MINOR + 1]), (2, 0, 3, 0));
    assert_eq!(u32::from_le_bytes(b[OFF_HEADER_SIZE..OFF_HEADER_SIZE + 4].try_into().unwrap()), 128);
    assert_eq!(&b[OFF_ARCH..OFF_ARCH + 7], b"sm_90a\0");
    assert_eq!(&b[24..24 + QFUSE_VERSION.len()], QFUSE_VERSION.as_bytes());
    assert_eq!((b[20], b[21], b[22], b[23]), (13, 0, 0, 0));
    assert_eq!(u64_at(&b, OFF_META_OFFSET), 128);
    assert_eq!(u64_at(&b, OFF_TABLE_OFFSET), 128 + u64_at(&b, OFF_META_LEN));
    assert_eq!(u64_at(&b, OFF_FILE_LEN), b.len() as u64);
    assert!(b[104..124].iter().all(|&x| x == 0), "reserved bytes are zero");
    let crc = u32::from_le_bytes(b[OFF_HEADER_CRC..].get(..4).unwrap().try_into().unwrap());
    assert_eq!(crc, crc32fast::hash(&b[..OFF_HEADER_CRC]));
    let meta_crc = u32::from_le_bytes(b[OFF_META_CRC..OFF_META_CRC + 4].try_into().unwrap());
    assert_eq!(meta_crc, crc32fast::hash(&b[meta_range(&b)]));
}

#[test]
fn plan_without_sections_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.plan");
    let meta = PlanMeta::new("nothing", "sm_120a", (13, 2));
    PlanBuilder::new(meta.clone()).write(&path).unwrap();
    let plan = Plan::load(&path, None).unwrap();
    assert_eq!(plan.meta(), &meta);
    assert!(plan.sections().is_empty());
    assert!(std::fs::metadata(&path).unwrap().len() < 4096, "no padding without sections");
}

#[test]
fn empty_and_borrowed_sections_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.plan");
    let big = vec![9u8; 3 * 4096 + 1];
    let mut b = PlanBuilder::new(PlanMeta::new("m", "sm_90a", (13, 0)));
    b.add_section(SectionKind::Other, "empty", Vec::new());
    b.add_section(SectionKind::Other, "borrowed", &big[..]);
    b.add_section(SectionKind::Other, "empty2", Vec::new());
    b.write(&path).unwrap();
    let plan = Plan::load(&path, None).unwrap();
    assert_eq!(plan.section_bytes(0).unwrap(), &[] as &[u8]);
    assert_eq!(plan.section_bytes(1).unwrap(), &big[..]);
    assert_eq!(plan.section_bytes(2).unwrap(), &[] as &[u8]);
    assert!(plan.sections().iter().all(|s| s.offset % 4096 == 0));
}

#[test]
fn builder_rejects_bad_input_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.plan");
    let mut long_arch = sample_builder();
    long_arch.meta_mut().arch = "sm_90a_with_a_very_long_suffix".into();
    assert!(matches!(long_arch.write(&path), Err(PlanError::Meta { .. })));
    let mut dangling = sample_builder();
    dangling.meta_mut().kernels[0].section = 7;
    let err = dangling.write(&path).unwrap_err();
    assert!(err.to_string().contains("section 7"), "{err}");
    let mut wrong_kind = sample_builder();
    wrong_kind.meta_mut().weights[0].section = 0;
    assert!(matches!(wrong_kind.write(&path), Err(PlanError::Meta { .. })));
    let mut bad_launch = sample_builder();
    bad_launch.meta_mut().schedule[0].args.push(ArgRef::Buffer(5));
    assert!(matches!(bad_launch.write(&path), Err(PlanError::Meta { .. })));
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Truncated

#[test]
fn truncated_inside_header() {
    let b = sample_bytes();
    for cut in [1, 7, 8, 64, 127] {
        assert_truncated(load_bytes(&b[..cut], None), 128, cut as u64);
    }
}

#[test]
fn truncated_inside_meta_table_and_sections() {
    let b = sample_bytes();
    let full = b.len() as u64;
    let meta = meta_range(&b);
    let table = table_range(&b);
    let last = 3 * 4096 + 700; // inside the second weight section
    for cut in [128, meta.start + 5, table.start + 1, 4096, 4096 + 10, last, b.len() - 1] {
        assert_truncated(load_bytes(&b[..cut], None), full, cut as u64);
    }
}

#[test]
fn trailing_bytes_are_corrupt() {
    let mut b = sample_bytes();
    b.extend_from_slice(b"junk");
    assert_corrupt(load_bytes(&b, None), "4 trailing bytes");
}

// ---------------------------------------------------------------------------------------------
// Corrupted

#[test]
fn flipped_header_bytes_fail_the_header_checksum() {
    let b = sample_bytes();
    for at in [9, 20, OFF_ARCH + 3, OFF_META_LEN, OFF_FILE_LEN + 1, 110, OFF_HEADER_CRC + 2] {
        let mut bad = b.clone();
        bad[at] ^= 0x01;
        assert_corrupt(load_bytes(&bad, None), "header checksum");
    }
}

#[test]
fn flipped_meta_byte_fails_the_metadata_checksum() {
    let mut b = sample_bytes();
    let at = meta_range(&b).start + 20;
    b[at] ^= 0x40;
    assert_corrupt(load_bytes(&b, None), "metadata checksum");
}

#[test]
fn flipped_table_byte_fails_the_table_checksum() {
    let mut b = sample_bytes();
    let at = table_range(&b).start + 2;
    b[at] ^= 0x40;
    assert_corrupt(load_bytes(&b, None), "section table checksum");
}

#[test]
fn flipped_section_byte_fails_on_first_use_of_that_section() {
    let mut b = sample_bytes();
    b[2 * 4096 + 100] ^= 0xff; // section 1, q.weight
    let plan = load_bytes(&b, None).unwrap();
    assert!(plan.section_bytes(0).is_ok());
    for _ in 0..2 {
        match plan.section_bytes(1) {
            Err(PlanError::Corrupt { what, .. }) => {
                assert!(what.starts_with("section 1 `q.weight` checksum"), "{what}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert!(plan.section_bytes(2).is_ok());
    assert!(matches!(plan.verify_sections(), Err(PlanError::Corrupt { .. })));
}

// ---------------------------------------------------------------------------------------------
// Foreign

#[test]
fn foreign_files_are_rejected_by_magic() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("model.safetensors");
    let data = vec![0u8; 16];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data).unwrap();
    safetensors::serialize_to_file([("w", view)], None, &st).unwrap();

    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..10_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let rand_path = dir.path().join("random.bin");
    std::fs::write(&rand_path, &random).unwrap();
    let empty = dir.path().join("empty.plan");
    std::fs::write(&empty, b"").unwrap();
    let short = dir.path().join("hello.plan");
    std::fs::write(&short, b"hello").unwrap();

    for path in [&st, &rand_path, &empty, &short] {
        match Plan::load(path, Some("sm_90a")) {
            Err(e @ PlanError::Foreign { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&path.display().to_string()) && msg.contains("not a qfuse plan"), "{msg}");
            }
            other => panic!("{}: expected Foreign, got {other:?}", path.display()),
        }
    }
    let empty_msg = Plan::load(&empty, None).unwrap_err().to_string();
    assert!(empty_msg.contains("empty"), "{empty_msg}");
}

#[test]
fn missing_file_and_directory_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Plan::load(dir.path().join("nope.plan"), None), Err(PlanError::Io { .. })));
    assert!(matches!(Plan::load(dir.path(), None), Err(PlanError::Io { .. })));
}

// ---------------------------------------------------------------------------------------------
// Versions and arch

#[test]
fn newer_major_is_rejected_before_anything_else() {
    let mut b = sample_bytes();
    put_u16(&mut b, OFF_MAJOR, 3);
    put_u16(&mut b, OFF_MINOR, 3);
    put_u64(&mut b, OFF_META_LEN, u64::MAX); // a newer layout may mean anything
    fix_header_crc(&mut b);
    match load_bytes(&b, Some("sm_90a")) {
        Err(e @ PlanError::NewerFormat { .. }) => {
            let PlanError::NewerFormat { found, supported, .. } = &e else { unreachable!() };
            assert_eq!((found.to_string(), supported.to_string()), ("3.3".into(), "2.3".into()));
            assert!(e.to_string().contains(&format!("recompile the plan with qfuse {QFUSE_VERSION}")), "{e}");
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
}

#[test]
fn major_zero_is_older_than_supported() {
    let mut b = sample_bytes();
    put_u16(&mut b, OFF_MAJOR, 0);
    fix_header_crc(&mut b);
    assert!(matches!(load_bytes(&b, None), Err(PlanError::OlderFormat { .. })));
}

/// Format 1.1's launch guards round-trip, are shown by their `Display`, and are checked against
/// the schedule and the symbols (the writer refuses what a reader would reject).
#[test]
fn launch_guards_round_trip_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guarded.plan");
    let mut meta = sample_meta();
    let rows = meta.symbols.first().map(|(s, _)| DimExpr::sym(s.clone())).expect("a symbol");
    meta.launch_guards = vec![LaunchGuard { launch: 0, when: Guard::RowsAtMost { rows: rows.clone(), max: 16 } }];
    let write = |m: PlanMeta| {
        let mut b = PlanBuilder::new(m);
        for (kind, name, bytes) in sample_sections() {
            b.add_section(kind, name, bytes);
        }
        b.write(&path).map_err(|e| e.to_string())
    };
    write(meta.clone()).unwrap();
    let plan = Plan::load(&path, None).unwrap();
    assert_eq!(plan.meta(), &meta);
    assert_eq!(plan.meta().guard_of(0).map(|g| g.to_string()).as_deref(), Some("B <= 16"));
    for (bad, needle) in [
        (LaunchGuard { launch: 1, when: Guard::RowsAbove { rows: rows.clone(), min: 16 } }, "launch 1 out of 1"),
        (LaunchGuard { launch: 0, when: Guard::RowsAbove { rows: DimExpr::sym("T"), min: 16 } }, "unknown symbol `T`"),
    ] {
        let mut m = sample_meta();
        m.launch_guards = vec![bad];
        let e = write(m).unwrap_err();
        assert!(e.contains(needle), "{e}");
    }
}

/// The sample plan as a decoder: one f16 KV slot, `out` as the logits, and (with `split`) a
/// second launch whose first argument is the split-KV scratch.
fn decoder_sample_meta(split_scratch_bytes: u64, split: bool) -> PlanMeta {
    let mut meta = sample_meta();
    let slot =
        KvSlotMeta { input: "past.k.0".into(), update: "present.k.0".into(), dtype: "f16".into(), kv_heads: 2, head_dim: 64, scale: 1.0 };
    meta.decoder = Some(DecoderMeta {
        kv: KvCacheMeta { page_size: 16, max_pages: 4, slots: vec![slot] },
        logits: "out".into(),
        vocab: 768,
        max_seq: 64,
        max_batch: 4,
        max_step_tokens: 16,
        split_scratch_bytes,
        ..DecoderMeta::default()
    });
    if split {
        let mut launch = meta.schedule[0].clone();
        launch.args[0] = ArgRef::SplitScratch;
        meta.schedule.push(launch);
    }
    meta
}

fn write_meta(dir: &Path, meta: PlanMeta) -> Result<PathBuf, String> {
    let path = dir.join("decoder.plan");
    let mut b = PlanBuilder::new(meta);
    for (kind, name, bytes) in sample_sections() {
        b.add_section(kind, name, bytes);
    }
    b.write(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Format 2.1's split-KV scratch: a 2.0 decoder plan (metadata ending before
/// `split_scratch_bytes`) and a 2.0 encoder plan still load, with no scratch; a plan that uses
/// the scratch must declare its size, on write and on load.
#[test]
fn format_2_0_plans_load_without_a_split_scratch() {
    let dir = tempfile::tempdir().unwrap();
    // A decoder plan as 2.0 wrote it: minor 0, metadata three bytes shorter (the 0 that 2.1
    // appends, the empty PDL kernel list of 2.2 and the empty launch sums of 2.3).
    let meta = decoder_sample_meta(0, false);
    let mut b = std::fs::read(write_meta(dir.path(), meta.clone()).unwrap()).unwrap();
    let range = meta_range(&b);
    assert_eq!(b[range.end - 3..range.end], [0, 0, 0], "split_scratch_bytes = 0, no PDL kernels and no launch sums end the metadata");
    put_u16(&mut b, OFF_MINOR, 0);
    put_u64(&mut b, OFF_META_LEN, range.len() as u64 - 3);
    fix_all_crcs(&mut b);
    let plan = load_bytes(&b, None).unwrap();
    assert_eq!(plan.header().format, FormatVersion { major: 2, minor: 0 });
    assert_eq!(plan.meta(), &meta);
    assert_eq!(plan.meta().decoder.as_ref().unwrap().split_scratch_bytes, 0);
    // An encoder plan of 2.0 (and 2.1) is a 2.3 one without the PDL kernel list's and the
    // launch sums' bytes; one of 2.2 without the launch sums' byte.
    for minor in [0, 1, 2] {
        let mut b = sample_bytes();
        let range = meta_range(&b);
        put_u16(&mut b, OFF_MINOR, minor);
        put_u64(&mut b, OFF_META_LEN, range.len() as u64 - if minor < 2 { 2 } else { 1 });
        fix_all_crcs(&mut b);
        assert_eq!(load_bytes(&b, None).unwrap().meta(), &sample_meta(), "encoder plan of 2.{minor}");
    }

    // A split plan round-trips with its scratch size.
    let split = decoder_sample_meta(38016, true);
    let path = write_meta(dir.path(), split.clone()).unwrap();
    assert_eq!(Plan::load(&path, None).unwrap().meta(), &split);
    // Using the scratch without declaring it: refused on write, and on load (a scratch size of 1,
    // one varint byte at the metadata's end, patched to 0), naming the field.
    let e = write_meta(dir.path(), decoder_sample_meta(0, true)).unwrap_err();
    assert!(e.contains("split_scratch_bytes is 0") && e.contains("launch 1"), "{e}");
    let mut b = std::fs::read(write_meta(dir.path(), decoder_sample_meta(1, true)).unwrap()).unwrap();
    let last = meta_range(&b).end - 3;
    assert_eq!(b[last], 1);
    b[last] = 0;
    fix_all_crcs(&mut b);
    match load_bytes(&b, None) {
        Err(e @ PlanError::Meta { .. }) => assert!(e.to_string().contains("split_scratch_bytes is 0"), "{e}"),
        other => panic!("expected a metadata error, got {other:?}"),
    }
    // Without decoder metadata there is no scratch to use.
    let mut encoder = decoder_sample_meta(64, true);
    encoder.decoder = None;
    let e = write_meta(dir.path(), encoder).unwrap_err();
    assert!(e.contains("split-KV scratch, but the plan has no KV cache"), "{e}");
}

/// Format 2.2: the kernels marked for programmatic dependent launch round-trip and are checked
/// on load (in range, increasing); a 2.1 plan (metadata without the list) loads with none; the
/// zeroed split scratch (`SplitScratchZeroed`) needs a declared scratch like `SplitScratch`.
#[test]
fn format_2_2_pdl_kernels_and_the_zeroed_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = decoder_sample_meta(64, true);
    meta.pdl_kernels = (0..meta.kernels.len() as u32).collect();
    meta.schedule[1].args[0] = ArgRef::SplitScratchZeroed;
    let path = write_meta(dir.path(), meta.clone()).unwrap();
    let plan = Plan::load(&path, None).unwrap();
    assert_eq!(plan.meta(), &meta);
    assert!(plan.meta().pdl_kernel(0));
    // As 2.1 wrote it: no PDL list (and no SplitScratchZeroed, which 2.1 cannot encode).
    meta.pdl_kernels.clear();
    meta.schedule[1].args[0] = ArgRef::SplitScratch;
    let mut b = std::fs::read(write_meta(dir.path(), meta.clone()).unwrap()).unwrap();
    let range = meta_range(&b);
    assert_eq!(b[range.end - 2..range.end], [0, 0], "the empty PDL kernel list and launch sums end the metadata");
    put_u16(&mut b, OFF_MINOR, 1);
    put_u64(&mut b, OFF_META_LEN, range.len() as u64 - 2);
    fix_all_crcs(&mut b);
    let plan = load_bytes(&b, None).unwrap();
    assert_eq!((plan.header().format, plan.meta()), (FormatVersion { major: 2, minor: 1 }, &meta));
    assert!(plan.meta().pdl_kernels.is_empty());
    // Refused: a kernel out of range, an unordered list, the zeroed scratch without a size.
    let mut bad = meta.clone();
    bad.pdl_kernels = vec![bad.kernels.len() as u32];
    assert!(write_meta(dir.path(), bad).unwrap_err().contains("PDL kernel 0"));
    let mut bad = meta.clone();
    bad.kernels.push(bad.kernels[0].clone());
    bad.pdl_kernels = vec![1, 0];
    assert!(write_meta(dir.path(), bad).unwrap_err().contains("strictly increasing"));
    let mut bad = decoder_sample_meta(0, true);
    bad.schedule[1].args[0] = ArgRef::SplitScratchZeroed;
    assert!(write_meta(dir.path(), bad).unwrap_err().contains("split_scratch_bytes is 0"));
}

#[test]
fn newer_minor_is_accepted() {
    let mut b = sample_bytes();
    put_u16(&mut b, OFF_MINOR, 7);
    b[110] = 0xaa; // a field appended in the reserved bytes by that minor
    fix_header_crc(&mut b);
    let plan = load_bytes(&b, Some("sm_90a")).unwrap();
    assert_eq!(plan.header().format, FormatVersion { major: 2, minor: 7 });
    assert_eq!(plan.meta(), &sample_meta());
}

#[test]
fn wrong_arch_is_rejected_with_a_recompile_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_sample(dir.path());
    match Plan::load(&path, Some("sm_80")) {
        Err(e @ PlanError::WrongArch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("compiled for sm_90a but the device is sm_80"), "{msg}");
            assert!(msg.contains(&format!("recompile the plan with qfuse {QFUSE_VERSION} for sm_80")), "{msg}");
        }
        other => panic!("expected WrongArch, got {other:?}"),
    }
    for ok in ["sm_90", "sm_90a"] {
        Plan::load(&path, Some(ok)).unwrap();
    }
    assert!(matches!(Plan::load(&path, Some("sm_100a")), Err(PlanError::WrongArch { .. })));
    assert!(matches!(Plan::load(&path, Some("sm_9")), Err(PlanError::WrongArch { .. })));
}

#[test]
fn arch_is_checked_before_the_metadata() {
    let mut b = sample_bytes();
    let at = meta_range(&b).start + 3;
    b[at] ^= 1;
    assert!(matches!(load_bytes(&b, Some("sm_89")), Err(PlanError::WrongArch { .. })));
    assert_corrupt(load_bytes(&b, Some("sm_90")), "metadata checksum");
}

// ---------------------------------------------------------------------------------------------
// Hostile lengths

#[test]
fn hostile_header_lengths_are_errors_without_allocation() {
    let b = sample_bytes();
    let cases: [(usize, u64); 6] = [
        (OFF_META_LEN, u64::MAX),
        (OFF_META_LEN, 1 << 60),
        (OFF_META_OFFSET, u64::MAX - 10),
        (OFF_TABLE_LEN, u64::MAX),
        (OFF_TABLE_OFFSET, 1 << 62),
        (OFF_META_OFFSET, 0), // overlaps the header
    ];
    for (at, value) in cases {
        let mut bad = b.clone();
        put_u64(&mut bad, at, value);
        fix_header_crc(&mut bad);
        let (result, largest) = largest_allocation_during(|| load_bytes(&bad, None));
        assert_corrupt(result, "header:");
        assert!(largest < 1 << 20, "allocated {largest} bytes for field {at} = {value}");
    }
}

#[test]
fn hostile_file_and_header_size_are_errors() {
    let b = sample_bytes();
    let mut huge_len = b.clone();
    put_u64(&mut huge_len, OFF_FILE_LEN, u64::MAX);
    fix_header_crc(&mut huge_len);
    assert_truncated(load_bytes(&huge_len, None), u64::MAX, b.len() as u64);
    let mut huge_header = b.clone();
    put_u32(&mut huge_header, OFF_HEADER_SIZE, u32::MAX);
    assert_corrupt(load_bytes(&huge_header, None), "header checksum");
}

#[test]
fn hostile_length_inside_the_metadata_is_an_error_without_allocation() {
    let mut b = sample_bytes();
    let start = meta_range(&b).start;
    // The first field (qfuse version) gets a varint length prefix of 2^62.
    b[start..start + 9].copy_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    fix_all_crcs(&mut b);
    let (result, largest) = largest_allocation_during(|| load_bytes(&b, None));
    assert!(matches!(result, Err(PlanError::Meta { .. })), "{result:?}");
    assert!(largest < 1 << 20, "allocated {largest} bytes");
}

#[test]
fn misaligned_section_in_a_valid_table_is_a_section_error() {
    let mut b = sample_bytes();
    let table = table_range(&b);
    // Section 0's offset, 4096, is the varint [0x80, 0x20]; make it 4097.
    let pos = b[table.clone()].windows(2).position(|w| w == [0x80, 0x20]).unwrap() + table.start;
    b[pos] = 0x81;
    fix_all_crcs(&mut b);
    match load_bytes(&b, None) {
        Err(PlanError::Section { index: 0, message, .. }) => assert!(message.contains("aligned"), "{message}"),
        other => panic!("expected Section error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Atomic write

#[test]
fn overwriting_a_plan_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.plan");
    let old = sample_builder();
    let mut new = sample_builder();
    new.meta_mut().model_name = "new-model".into();
    old.write(&path).unwrap();

    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut loads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || loads == 0 {
                let plan = Plan::load(&path, Some("sm_90a")).expect("a reader never sees a partial plan");
                assert!(["tiny-bert", "new-model"].contains(&plan.meta().model_name.as_str()));
                plan.verify_sections().unwrap();
                loads += 1;
            }
        });
        for i in 0..40 {
            if i % 2 == 0 { &new } else { &old }.write(&path).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
    });
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["model.plan"], "no stray temporary files");
}

#[test]
fn a_mapped_plan_survives_being_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_sample(dir.path());
    let plan = Plan::load(&path, None).unwrap();
    let mut other = PlanBuilder::new(PlanMeta::new("other", "sm_80", (13, 0)));
    other.add_section(SectionKind::Other, "x", vec![1u8; 100]);
    other.write(&path).unwrap();
    plan.verify_sections().unwrap();
    assert_eq!(plan.section_bytes(1).unwrap(), &sample_sections()[1].2[..]);
}

#[test]
fn a_failed_write_keeps_the_old_plan_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.plan");
    std::fs::create_dir(&target).unwrap(); // rename over a directory fails
    std::fs::write(target.join("keep"), b"x").unwrap();
    match sample_builder().write(&target) {
        Err(e @ PlanError::Io { .. }) => assert!(e.to_string().contains("model.plan"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["model.plan"]);
    assert!(target.join("keep").exists());
    let missing_dir = dir.path().join("no/such/dir/model.plan");
    assert!(matches!(sample_builder().write(&missing_dir), Err(PlanError::Io { .. })));
}

// ---------------------------------------------------------------------------------------------
// Fuzzing the loader

/// Loads `bytes` and touches every section; any error is fine, a panic is not.
fn load_everything(bytes: &[u8]) {
    if let Ok(plan) = load_bytes(bytes, Some("sm_90")) {
        let _ = plan.verify_sections();
        for i in 0..plan.sections().len() + 1 {
            let _ = plan.section_bytes(i);
        }
    }
}

fn small_plan_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.plan");
    let mut meta = sample_meta();
    meta.weights.truncate(1);
    let mut b = PlanBuilder::new(meta);
    b.add_section(SectionKind::Cubin, "c", vec![1u8; 64]);
    b.add_section(SectionKind::Weights, "w", vec![2u8; 64]);
    b.write(&path).unwrap();
    std::fs::read(path).unwrap()
}

fn mutations() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_mutations_never_panic(muts in mutations(), cut in any::<Option<usize>>()) {
        let mut b = small_plan_bytes();
        for (at, x) in muts {
            let n = b.len();
            b[at % n] ^= x.max(1);
        }
        if let Some(cut) = cut {
            b.truncate(cut % (b.len() + 1));
        }
        load_everything(&b);
    }

    /// Mutations that also repair every checksum, so they reach the decoders and bounds checks.
    #[test]
    fn mutations_behind_valid_checksums_never_panic(muts in mutations(), in_header in any::<bool>()) {
        let mut b = small_plan_bytes();
        let meta_and_table = meta_range(&b).start..table_range(&b).end;
        for (at, x) in muts {
            let at = if in_header {
                at % OFF_HEADER_CRC
            } else {
                meta_and_table.start + at % meta_and_table.len()
            };
            b[at] ^= x.max(1);
        }
        fix_all_crcs(&mut b);
        let (_, largest) = largest_allocation_during(|| load_everything(&b));
        prop_assert!(largest < 1 << 20, "allocated {} bytes", largest);
    }
}
