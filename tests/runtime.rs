//! The runtime's logic without a GPU: input binding and shape inference, launch resolution
//! (grids, `Dim` arguments, i32 overflow, pointers), host tensors and their decoders, the
//! no-driver path of `Engine::load`, and the thread-safety contract of `Engine` and `Context`.
//!
//! Runs in both builds: `cargo test --test runtime` and
//! `cargo test --no-default-features --test runtime` (runtime only).

use half::{bf16, f16};

use qfuse::plan::{
    arch_compatible, ArgRef, BufferMeta, DimExpr, Guard, KernelMeta, LaunchGuard, LaunchMeta, ParamMeta, ParamType, PlanMeta, Scalar,
    TensorSig, WeightMeta,
};
use qfuse::runtime::bind::{
    bind_inputs, buffer_extent, check_kernel, dim_arg, resolve_launch, resolve_schedule, sig_extent, Addresses, KernelArg,
};
use qfuse::runtime::tensor::{dense_bytes, dtype_bits, e2m1_to_f32, e4m3_to_f32, e5m2_to_f32, e8m0_to_f32};
use qfuse::runtime::{device_arch, Context, Engine, HostTensor, RuntimeError};

// ---- fixtures ------------------------------------------------------------------------------------

fn sym(s: &str) -> DimExpr {
    DimExpr::sym(s)
}

fn sig(name: &str, dtype: &str, shape: Vec<DimExpr>, buffer: u32) -> TensorSig {
    TensorSig { name: name.into(), dtype: dtype.into(), shape, buffer }
}

fn buffer(name: &str, dtype: &str, shape: Vec<DimExpr>, bytes: u64, offset: u64) -> BufferMeta {
    BufferMeta { name: name.into(), dtype: dtype.into(), shape, bytes, offset }
}

fn param(name: &str, ty: ParamType) -> ParamMeta {
    ParamMeta { name: name.into(), ty }
}

/// A BERT-like signature: ids and mask `[B, S]` (i64), output `[B, 384]` (f32); B ≤ 8, S ≤ 128.
fn bert_meta() -> PlanMeta {
    let mut m = PlanMeta::new("toy", "sm_90a", (13, 0));
    m.symbols = vec![("B".into(), 8), ("S".into(), 128)];
    m.inputs = vec![sig("input_ids", "i64", vec![sym("B"), sym("S")], 0), sig("attention_mask", "i64", vec![sym("B"), sym("S")], 1)];
    m.outputs = vec![sig("embedding", "f32", vec![sym("B"), 384.into()], 2)];
    m.buffers = vec![
        buffer("%0", "i64", vec![sym("B"), sym("S")], 8 * 128 * 8, 0),
        buffer("%1", "i64", vec![sym("B"), sym("S")], 8 * 128 * 8, 8192),
        buffer("%2", "f32", vec![sym("B"), 384.into()], 8 * 384 * 4, 16384),
    ];
    m.peak_activation_bytes = 16384 + 8 * 384 * 4;
    m
}

fn ids(b: u64, s: u64) -> HostTensor {
    HostTensor::from_i64(vec![b, s], &vec![7; (b * s) as usize])
}

fn unwrap_err<T: std::fmt::Debug>(r: Result<T, RuntimeError>) -> RuntimeError {
    r.expect_err("expected an error")
}

// ---- binding -------------------------------------------------------------------------------------

#[test]
fn binds_by_name_in_any_order_and_infers_symbols() {
    let meta = bert_meta();
    let b = bind_inputs(&meta, &[("attention_mask", ids(2, 5)), ("input_ids", ids(2, 5))]).unwrap();
    assert_eq!(b.symbols, vec![("B".to_string(), 2), ("S".to_string(), 5)]);
    assert_eq!(b.order, vec![1, 0]);
    assert_eq!(b.key(), vec![2, 5]);
    // Extremes of the supported range.
    bind_inputs(&meta, &[("input_ids", ids(8, 128)), ("attention_mask", ids(8, 128))]).unwrap();
    bind_inputs(&meta, &[("input_ids", ids(1, 1)), ("attention_mask", ids(1, 1))]).unwrap();
}

#[test]
fn unknown_missing_and_duplicate_inputs_are_named() {
    let meta = bert_meta();
    let e = unwrap_err(bind_inputs(&meta, &[("input_ids", ids(1, 4)), ("token_type_ids", ids(1, 4))]));
    let msg = e.to_string();
    assert!(matches!(&e, RuntimeError::Input { input, .. } if input == "token_type_ids"), "{msg}");
    assert!(msg.contains("unknown input") && msg.contains("`input_ids`") && msg.contains("`attention_mask`"), "{msg}");

    let e = unwrap_err(bind_inputs(&meta, &[("input_ids", ids(1, 4))]));
    assert!(matches!(&e, RuntimeError::Input { input, .. } if input == "attention_mask"), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");

    let e = unwrap_err(bind_inputs(&meta, &[]));
    assert!(e.to_string().contains("input_ids") && e.to_string().contains("attention_mask"), "{e}");

    let e = unwrap_err(bind_inputs(&meta, &[("input_ids", ids(1, 4)), ("input_ids", ids(1, 4)), ("attention_mask", ids(1, 4))]));
    assert!(e.to_string().contains("more than once"), "{e}");
}

#[test]
fn dtype_rank_and_data_are_checked() {
    let meta = bert_meta();
    let wrong = HostTensor::from_i32(vec![1, 4], &[1, 2, 3, 4]);
    let e = unwrap_err(bind_inputs(&meta, &[("input_ids", wrong), ("attention_mask", ids(1, 4))]));
    assert_eq!(e.to_string(), "input `input_ids`: dtype is i32, the plan expects i64");

    let e = unwrap_err(bind_inputs(&meta, &[("input_ids", HostTensor::from_i64(vec![4], &[1; 4])), ("attention_mask", ids(1, 4))]));
    assert!(e.to_string().contains("rank 1") && e.to_string().contains("rank 2 ([B, S])"), "{e}");

    let short = HostTensor::from_i64(vec![1, 4], &[1; 3]);
    let e = unwrap_err(bind_inputs(&meta, &[("input_ids", ids(1, 4)), ("attention_mask", short)]));
    assert!(matches!(&e, RuntimeError::Input { input, .. } if input == "attention_mask"), "{e}");
    assert!(e.to_string().contains("24 bytes of data") && e.to_string().contains("need 32"), "{e}");
}

#[test]
fn symbol_range_and_consistency_are_checked() {
    let meta = bert_meta();
    let e = unwrap_err(bind_inputs(&meta, &[("input_ids", ids(1, 129)), ("attention_mask", ids(1, 129))]));
    assert_eq!(e.to_string(), "input `input_ids`: axis 1 (S) is 129, the plan supports S from 1 to 128");

    let e = unwrap_err(bind_inputs(&meta, &[("input_ids", ids(0, 4)), ("attention_mask", ids(0, 4))]));
    assert!(e.to_string().contains("axis 0 (B) is 0"), "{e}");

    let e = unwrap_err(bind_inputs(&meta, &[("input_ids", ids(2, 5)), ("attention_mask", ids(2, 6))]));
    assert!(matches!(&e, RuntimeError::Symbol { symbol, .. } if symbol == "S"), "{e}");
    assert_eq!(e.to_string(), "shape symbol `S`: input `input_ids` axis 1 gives 5, but input `attention_mask` axis 1 gives 6");
}

#[test]
fn fixed_and_compound_dims_are_checked() {
    let mut meta = bert_meta();
    meta.inputs.push(sig("pixels", "f16", vec![sym("B"), 384.into()], 2));
    meta.inputs.push(sig("pairs", "f32", vec![sym("S").mul(2.into())], 2));
    let pixels = |n: u64| HostTensor::from_f16(vec![2, n], &vec![f16::ONE; 2 * n as usize]);
    let pairs = |n: u64| HostTensor::from_f32(vec![n], &vec![0.5; n as usize]);
    let base = || vec![("input_ids", ids(2, 5)), ("attention_mask", ids(2, 5))];

    let mut ok = base();
    ok.extend([("pixels", pixels(384)), ("pairs", pairs(10))]);
    bind_inputs(&meta, &ok).unwrap();

    let mut bad = base();
    bad.extend([("pixels", pixels(383)), ("pairs", pairs(10))]);
    let e = unwrap_err(bind_inputs(&meta, &bad));
    assert_eq!(e.to_string(), "input `pixels`: axis 1 is 383, the plan expects 384");

    let mut bad = base();
    bad.extend([("pixels", pixels(384)), ("pairs", pairs(11))]);
    let e = unwrap_err(bind_inputs(&meta, &bad));
    assert_eq!(e.to_string(), "input `pairs`: axis 0 is 11, the plan expects `S*2` = 10 (B=2, S=5)");
}

#[test]
fn a_symbol_no_input_determines_is_an_error() {
    let mut meta = bert_meta();
    meta.symbols.push(("T".into(), 16));
    let e = unwrap_err(bind_inputs(&meta, &[("input_ids", ids(1, 4)), ("attention_mask", ids(1, 4))]));
    assert!(matches!(&e, RuntimeError::Symbol { symbol, .. } if symbol == "T"), "{e}");
    assert!(e.to_string().contains("cannot be inferred"), "{e}");
}

#[test]
fn outputs_and_buffers_are_sized_at_run_time() {
    let meta = bert_meta();
    let symbols = vec![("B".to_string(), 3), ("S".to_string(), 7)];
    let ext = sig_extent(&meta, &meta.outputs[0], &symbols).unwrap();
    assert_eq!((ext.shape, ext.offset, ext.bytes), (vec![3, 384], 16384, 3 * 384 * 4));
    let b = &meta.buffers[1];
    let ext = buffer_extent(&meta, 1, &b.dtype, &b.shape, &symbols).unwrap();
    assert_eq!((ext.shape, ext.bytes), (vec![3, 7], 3 * 7 * 8));
    // A value larger than its buffer (a plan bug, or symbols beyond their maxima) is refused.
    let too_big = vec![("B".to_string(), 9), ("S".to_string(), 7)];
    let msg = sig_extent(&meta, &meta.outputs[0], &too_big).unwrap_err();
    assert!(msg.contains("needs 13824 bytes") && msg.contains("holds 12288"), "{msg}");
    assert!(buffer_extent(&meta, 7, "f32", &[], &symbols).unwrap_err().contains("buffer 7 out of 3"));
}

// ---- launches ------------------------------------------------------------------------------------

fn kernel(name: &str, grid: [DimExpr; 3], params: Vec<ParamMeta>) -> KernelMeta {
    KernelMeta {
        name: name.into(),
        template: "t".into(),
        source: String::new(),
        section: 0,
        grid,
        block: [128, 1, 1],
        shared_mem_bytes: 64 * 1024,
        params,
    }
}

/// `bert_meta` plus one weight and three launches: a GEMM-like one with every argument kind, one
/// whose grid is empty, and one whose `int` size overflows at large B·S.
fn launch_meta() -> PlanMeta {
    let mut m = bert_meta();
    m.weights = vec![WeightMeta { name: "w".into(), dtype: "f8e4m3".into(), shape: vec![384, 384], section: 1 }];
    let rows = sym("B").mul(sym("S"));
    m.kernels = vec![
        kernel(
            "k_main",
            [rows.clone().ceil_div(128), 3.into(), 1.into()],
            vec![
                param("x", ParamType::Ptr),
                param("w", ParamType::Ptr),
                param("y", ParamType::Ptr),
                param("m", ParamType::I32),
                param("numel", ParamType::I64),
                param("alpha", ParamType::F32),
                param("k", ParamType::I32),
                param("big", ParamType::I64),
            ],
        ),
        kernel("k_empty", [1.into(), sym("S").min(0.into()), 1.into()], vec![]),
        kernel("k_overflow", [1.into(), 1.into(), 1.into()], vec![param("n", ParamType::I32)]),
    ];
    m.schedule = vec![
        LaunchMeta {
            kernel: 0,
            args: vec![
                ArgRef::Buffer(0),
                ArgRef::Weight(0),
                ArgRef::Buffer(2),
                ArgRef::Scalar(Scalar::Dim(rows.clone())),
                ArgRef::Scalar(Scalar::Dim(rows.clone().mul(384.into()))),
                ArgRef::Scalar(Scalar::F32(0.125)),
                ArgRef::Scalar(Scalar::I32(-3)),
                ArgRef::Scalar(Scalar::I64(1 << 40)),
            ],
            label: "encoder.layer.0.query (%18)".into(),
            writes: vec![2],
        },
        LaunchMeta { kernel: 1, args: vec![], label: "empty".into(), writes: vec![] },
        LaunchMeta {
            kernel: 2,
            args: vec![ArgRef::Scalar(Scalar::Dim(rows.mul(DimExpr::Const(1 << 28))))],
            label: "encoder.layer.5.huge (%99)".into(),
            writes: vec![],
        },
    ];
    m
}

#[test]
fn a_launch_resolves_to_grid_pointers_and_scalars() {
    let meta = launch_meta();
    let weights = [0x7000_0000_0000u64];
    let addrs = Addresses { weights: &weights, arena: 0x1000_0000, kv_pools: &[], page_table: 0, split_scratch: 0 };
    let symbols = vec![("B".to_string(), 2), ("S".to_string(), 100)];
    let l = resolve_launch(&meta, 0, &symbols, &addrs).unwrap().expect("runs");
    assert_eq!(l.grid, [2, 3, 1]); // ceil(200 / 128)
    assert_eq!(l.block, [128, 1, 1]);
    assert_eq!(l.shared_mem_bytes, 64 * 1024);
    assert_eq!(
        l.args,
        vec![
            KernelArg::Ptr(0x1000_0000),
            KernelArg::Ptr(0x7000_0000_0000),
            KernelArg::Ptr(0x1000_0000 + 16384),
            KernelArg::I32(200),
            KernelArg::I64(200 * 384),
            KernelArg::F32(0.125),
            KernelArg::I32(-3),
            KernelArg::I64(1 << 40),
        ]
    );
    // The parameter array points at the values themselves.
    // SAFETY: each pointer points into `l.args`, alive here, at a value of the matching type.
    unsafe {
        assert_eq!(*(l.args[0].as_param_ptr() as *const u64), 0x1000_0000);
        assert_eq!(*(l.args[3].as_param_ptr() as *const i32), 200);
        assert_eq!(*(l.args[5].as_param_ptr() as *const f32), 0.125);
    }
}

/// The split-KV scratch (format 2.1) binds to the generator's buffer, and is an error naming the
/// launch without one (a decoder plan run without its KV cache).
#[test]
fn the_split_scratch_binds_to_the_generators_buffer() {
    let mut meta = launch_meta();
    meta.schedule[0].args[0] = ArgRef::SplitScratch;
    let symbols = vec![("B".to_string(), 2), ("S".to_string(), 100)];
    let with = Addresses { weights: &[1], arena: 256, kv_pools: &[], page_table: 0, split_scratch: 0x5000_0000 };
    let l = resolve_launch(&meta, 0, &symbols, &with).unwrap().expect("runs");
    assert_eq!(l.args[0], KernelArg::Ptr(0x5000_0000));
    let without = Addresses { split_scratch: 0, ..with };
    let e = unwrap_err(resolve_launch(&meta, 0, &symbols, &without));
    assert!(matches!(&e, RuntimeError::Launch { index: 0, .. }), "{e}");
    assert!(e.to_string().contains("no split-KV scratch"), "{e}");
    // Format 2.2's zeroed scratch binds to the same buffer.
    meta.schedule[0].args[0] = ArgRef::SplitScratchZeroed;
    let l = resolve_launch(&meta, 0, &symbols, &with).unwrap().expect("runs");
    assert_eq!(l.args[0], KernelArg::Ptr(0x5000_0000));
}

/// Format 2.2: a launch of a kernel the plan marks for programmatic dependent launch resolves
/// with `pdl` set; any other with it clear (the context launches those in plain stream order).
#[test]
fn pdl_kernels_resolve_as_programmatic_launches() {
    let mut meta = launch_meta();
    let symbols = vec![("B".to_string(), 2), ("S".to_string(), 100)];
    let addrs = Addresses { weights: &[1], arena: 256, kv_pools: &[], page_table: 0, split_scratch: 0 };
    assert!(!resolve_launch(&meta, 0, &symbols, &addrs).unwrap().expect("runs").pdl, "no kernel marked");
    meta.pdl_kernels = vec![meta.schedule[0].kernel];
    assert!(resolve_launch(&meta, 0, &symbols, &addrs).unwrap().expect("runs").pdl);
}

#[test]
fn a_zero_grid_skips_the_launch() {
    let meta = launch_meta();
    let addrs = Addresses { weights: &[1], arena: 256, kv_pools: &[], page_table: 0, split_scratch: 0 };
    let symbols = vec![("B".to_string(), 1), ("S".to_string(), 4)];
    assert_eq!(resolve_launch(&meta, 1, &symbols, &addrs).unwrap(), None);
    let all = resolve_schedule(&meta, &symbols, &addrs).unwrap();
    assert_eq!(all.iter().map(|l| l.index).collect::<Vec<_>>(), vec![0, 2]);
}

/// A GEMV guarded by `B·S ≤ 16` and a GEMM guarded by `B·S > 16` (what a weight-only qmatmul
/// lowers to): exactly one of them runs for each shape, and a guard over an unknown symbol is an
/// error naming the launch.
#[test]
fn guards_select_one_launch_per_shape() {
    let mut meta = launch_meta();
    let rows = sym("B").mul(sym("S"));
    meta.schedule.truncate(1);
    meta.schedule.push(meta.schedule[0].clone());
    meta.launch_guards = vec![
        LaunchGuard { launch: 0, when: Guard::RowsAtMost { rows: rows.clone(), max: 16 } },
        LaunchGuard { launch: 1, when: Guard::RowsAbove { rows, min: 16 } },
    ];
    let addrs = Addresses { weights: &[1], arena: 256, kv_pools: &[], page_table: 0, split_scratch: 0 };
    let runs = |b: u64, s: u64| {
        let symbols = vec![("B".to_string(), b), ("S".to_string(), s)];
        resolve_schedule(&meta, &symbols, &addrs).unwrap().iter().map(|l| l.index).collect::<Vec<_>>()
    };
    assert_eq!((runs(1, 1), runs(2, 8), runs(1, 17), runs(64, 512)), (vec![0], vec![0], vec![1], vec![1]));
    meta.launch_guards[1].when = Guard::RowsAbove { rows: sym("T"), min: 16 };
    let e = unwrap_err(resolve_launch(&meta, 1, &[("B".into(), 1), ("S".into(), 1)], &addrs));
    assert!(matches!(&e, RuntimeError::Launch { index: 1, .. }), "{e}");
    assert!(e.to_string().contains("guard `T > 16`"), "{e}");
}

#[test]
fn dim_arguments_that_overflow_int_are_errors_naming_the_launch() {
    let meta = launch_meta();
    let addrs = Addresses { weights: &[1], arena: 256, kv_pools: &[], page_table: 0, split_scratch: 0 };
    // B·S·2^28 = 2^31 at B=1, S=8: one past i32::MAX.
    let symbols = vec![("B".to_string(), 1), ("S".to_string(), 8)];
    let e = unwrap_err(resolve_launch(&meta, 2, &symbols, &addrs));
    assert!(
        matches!(&e, RuntimeError::Launch { index: 2, label, kernel, .. } if label == "encoder.layer.5.huge (%99)" && kernel == "k_overflow")
    );
    assert_eq!(
        e.to_string(),
        "launch 2 `encoder.layer.5.huge (%99)` (kernel `k_overflow`): argument `n`: `B*S*268435456` = 2147483648 does not fit \
         its parameter type int (B=1, S=8)"
    );
    let symbols = vec![("B".to_string(), 1), ("S".to_string(), 7)];
    assert!(resolve_launch(&meta, 2, &symbols, &addrs).unwrap().is_some());
    assert!(resolve_schedule(&meta, &[("B".into(), 8), ("S".into(), 128)], &addrs).is_err());

    assert_eq!(dim_arg(i32::MAX as u64, ParamType::I32), Some(KernelArg::I32(i32::MAX)));
    assert_eq!(dim_arg(i32::MAX as u64 + 1, ParamType::I32), None);
    assert_eq!(dim_arg(i64::MAX as u64 + 1, ParamType::I64), None);
    assert_eq!(dim_arg(5, ParamType::F32), None);
}

#[test]
fn bad_grids_and_arguments_are_errors_not_panics() {
    let mut meta = launch_meta();
    let addrs = Addresses { weights: &[1], arena: 256, kv_pools: &[], page_table: 0, split_scratch: 0 };
    let symbols = vec![("B".to_string(), 1), ("S".to_string(), 8)];
    // Grid y beyond 65535.
    meta.kernels[1].grid[1] = DimExpr::Const(70000);
    let e = unwrap_err(resolve_launch(&meta, 1, &symbols, &addrs));
    assert!(e.to_string().contains("grid y = `70000` = 70000 exceeds the limit 65535"), "{e}");
    // A grid over an unknown symbol.
    meta.kernels[1].grid[1] = sym("T");
    assert!(unwrap_err(resolve_launch(&meta, 1, &symbols, &addrs)).to_string().contains("symbol `T`"));
    // Out-of-range references and mismatched types (the loader rejects these; still no panic).
    meta.schedule[0].args[1] = ArgRef::Weight(5);
    assert!(unwrap_err(resolve_launch(&meta, 0, &symbols, &addrs)).to_string().contains("weight 5 out of 1"));
    meta.schedule[0].args[1] = ArgRef::Scalar(Scalar::F32(1.0));
    assert!(unwrap_err(resolve_launch(&meta, 0, &symbols, &addrs)).to_string().contains("does not fit parameter type pointer"));
    meta.schedule[0].args.pop();
    assert!(unwrap_err(resolve_launch(&meta, 0, &symbols, &addrs)).to_string().contains("7 arguments for 8 parameters"));
    assert!(matches!(unwrap_err(resolve_launch(&meta, 9, &symbols, &addrs)), RuntimeError::Usage(_)));
}

#[test]
fn kernel_blocks_are_checked() {
    let mut k = kernel("k", [1.into(), 1.into(), 1.into()], vec![]);
    check_kernel(&k).unwrap();
    k.block = [1024, 2, 1];
    assert!(check_kernel(&k).unwrap_err().contains("1024 threads"));
    k.block = [32, 0, 1];
    assert!(check_kernel(&k).unwrap_err().contains("zero extent"));
}

// ---- host tensors --------------------------------------------------------------------------------

#[test]
fn host_tensors_round_trip() {
    let t = HostTensor::from_i64(vec![2, 2], &[-1, 0, 1 << 40, i64::MIN]);
    assert_eq!(t.data.len(), 32);
    assert_eq!(t.to_i64_vec().unwrap(), vec![-1, 0, 1 << 40, i64::MIN]);
    let v = [0.0f32, -1.5, f32::INFINITY, 1e-40];
    assert_eq!(HostTensor::from_f32(vec![4], &v).to_f32_vec().unwrap(), v);
    let t = HostTensor::from_f32_as("f16", vec![3], &[1.0, 65504.0, 1e6]).unwrap();
    assert_eq!(t.to_f32_vec().unwrap(), vec![1.0, 65504.0, f32::INFINITY]);
    let t = HostTensor::from_f32_as("bf16", vec![2], &[1.1, -2.0]).unwrap();
    assert_eq!(t.to_f32_vec().unwrap(), vec![1.1015625, -2.0]);
    assert!(HostTensor::from_f32_as("f8e4m3", vec![1], &[1.0]).is_none());
    assert_eq!(HostTensor::from_i32(vec![2], &[-7, 9]).to_i64_vec().unwrap(), vec![-7, 9]);
    assert_eq!(HostTensor::zeros("f16", vec![3, 5]).data.len(), 30);
    assert!(HostTensor::from_f32(vec![1], &[1.0]).to_i64_vec().is_err());
    // A scalar has one element.
    assert_eq!(HostTensor::from_f32(vec![], &[2.5]).to_f32_vec().unwrap(), vec![2.5]);
}

#[test]
fn malformed_host_tensors_are_errors() {
    let t = HostTensor::from_f32(vec![2, 3], &[1.0; 5]);
    assert_eq!(t.check().unwrap_err(), "20 bytes of data, but [2, 3] f32 elements of 32 bits need 24");
    assert!(t.to_f32_vec().is_err());
    let t = HostTensor::from_bytes("f7e0", vec![1], vec![0]);
    assert_eq!(t.check().unwrap_err(), "unknown dtype `f7e0`");
    let t = HostTensor::from_bytes("u8", vec![u64::MAX, 2], vec![]);
    assert!(t.check().unwrap_err().contains("more elements"));
}

#[test]
fn f16_and_bf16_decode_known_bit_patterns() {
    let bits = |b: &[u16]| b.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let t = HostTensor::from_bytes("f16", vec![7], bits(&[0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x8000, 0x3555]));
    let v = t.to_f32_vec().unwrap();
    assert_eq!(&v[..5], &[1.0, -2.0, 65504.0, 2f32.powi(-24), f32::INFINITY]);
    assert!(v[5] == 0.0 && v[5].is_sign_negative());
    assert_eq!(v[6], 0.333_251_95);
    let t = HostTensor::from_bytes("f16", vec![1], bits(&[0x7E00]));
    assert!(t.to_f32_vec().unwrap()[0].is_nan());

    let t = HostTensor::from_bytes("bf16", vec![5], bits(&[0x3F80, 0x4049, 0xFF80, 0x0001, 0x7F7F]));
    let v = t.to_f32_vec().unwrap();
    assert_eq!(v, vec![1.0, 3.140625, f32::NEG_INFINITY, 2f32.powi(-133), f32::from_bits(0x7F7F_0000)]);
    assert_eq!(HostTensor::from_f16(vec![1], &[f16::from_f32(0.5)]).data, vec![0x00, 0x38]);
    assert_eq!(HostTensor::from_bf16(vec![1], &[bf16::from_f32(1.0)]).data, vec![0x80, 0x3F]);
}

#[test]
fn fp8_decodes_known_bit_patterns() {
    // E4M3FN: bias 7, no infinity, NaN only at S.1111.111.
    let cases: [(u8, f32); 10] = [
        (0x00, 0.0),
        (0x01, 2f32.powi(-9)),
        (0x07, 7.0 * 2f32.powi(-9)),
        (0x08, 2f32.powi(-6)),
        (0x38, 1.0),
        (0x3C, 1.5),
        (0x7E, 448.0),
        (0xFE, -448.0),
        (0xC0, -2.0),
        (0x77, 240.0),
    ];
    for (code, want) in cases {
        assert_eq!(e4m3_to_f32(code), want, "e4m3 {code:#04x}");
    }
    assert!(e4m3_to_f32(0x80).is_sign_negative() && e4m3_to_f32(0x80) == 0.0);
    assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0xFF).is_nan());
    assert!(e4m3_to_f32(0x78).is_finite(), "0x78 is 256, not infinity");

    // E5M2: bias 15, IEEE infinities and NaNs.
    let cases: [(u8, f32); 7] = [
        (0x3C, 1.0),
        (0x7B, 57344.0),
        (0x7C, f32::INFINITY),
        (0xFC, f32::NEG_INFINITY),
        (0x01, 2f32.powi(-16)),
        (0x04, 2f32.powi(-14)),
        (0xC1, -2.5),
    ];
    for (code, want) in cases {
        assert_eq!(e5m2_to_f32(code), want, "e5m2 {code:#04x}");
    }
    assert!(e5m2_to_f32(0x7D).is_nan() && e5m2_to_f32(0xFF).is_nan());

    // Through HostTensor too.
    let t = HostTensor::from_bytes("f8e4m3", vec![2, 2], vec![0x38, 0x7E, 0xFE, 0x01]);
    assert_eq!(t.to_f32_vec().unwrap(), vec![1.0, 448.0, -448.0, 2f32.powi(-9)]);
    let t = HostTensor::from_bytes("f8e5m2", vec![2], vec![0x3C, 0x7C]);
    assert_eq!(t.to_f32_vec().unwrap(), vec![1.0, f32::INFINITY]);
}

#[test]
fn fp8_decoders_agree_with_float8_on_every_code() {
    for code in 0..=255u8 {
        let (got, want) = (e4m3_to_f32(code), float8::F8E4M3::from_bits(code).to_f32());
        assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "e4m3 {code:#04x}: {got} vs {want}");
        let (got, want) = (e5m2_to_f32(code), float8::F8E5M2::from_bits(code).to_f32());
        assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "e5m2 {code:#04x}: {got} vs {want}");
    }
}

#[test]
fn narrow_formats_decode() {
    // Two 4-bit elements per byte, low nibble first.
    let t = HostTensor::from_bytes("f4e2m1", vec![3], vec![0x72, 0x0F]);
    assert_eq!(t.to_f32_vec().unwrap(), vec![1.0, 6.0, -6.0]);
    assert_eq!((0..16).map(e2m1_to_f32).collect::<Vec<_>>()[..8], [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
    let t = HostTensor::from_bytes("i4", vec![4], vec![0x8F, 0x17]);
    assert_eq!(t.to_i64_vec().unwrap(), vec![-1, -8, 7, 1]);
    let t = HostTensor::from_bytes("u4", vec![2], vec![0x8F]);
    assert_eq!(t.to_i64_vec().unwrap(), vec![15, 8]);
    let t = HostTensor::from_bytes("i8", vec![3], vec![0x80, 0x7F, 0xFF]);
    assert_eq!(t.to_f32_vec().unwrap(), vec![-128.0, 127.0, -1.0]);
    let t = HostTensor::from_bytes("u8", vec![1], vec![0xFF]);
    assert_eq!(t.to_i64_vec().unwrap(), vec![255]);
    assert_eq!(e8m0_to_f32(127), 1.0);
    assert_eq!(e8m0_to_f32(130), 8.0);
    assert_eq!(e8m0_to_f32(0), 2f32.powi(-127));
    assert!(e8m0_to_f32(0xFF).is_nan());
    assert_eq!((dtype_bits("f4e2m1"), dense_bytes("f4e2m1", 3), dense_bytes("i64", 2)), (Some(4), Some(2), Some(16)));
    assert_eq!(dtype_bits("f7"), None);
}

// ---- engine --------------------------------------------------------------------------------------

#[test]
fn engine_is_send_and_sync_and_context_is_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Engine>();
    send::<Context<'static>>();
    // One generator per thread over a shared engine (decoder plans).
    send::<qfuse::runtime::Generator<'static>>();
    send_sync::<qfuse::runtime::scheduler::Scheduler>();
    send_sync::<RuntimeError>();
    send_sync::<HostTensor>();
}

#[test]
fn device_arch_names_match_plan_arches() {
    assert_eq!(device_arch(9, 0), "sm_90a");
    assert_eq!(device_arch(8, 9), "sm_89");
    assert_eq!(device_arch(8, 0), "sm_80");
    assert_eq!(device_arch(10, 0), "sm_100a");
    assert!(arch_compatible("sm_90a", &device_arch(9, 0)));
    assert!(arch_compatible("sm_90", &device_arch(9, 0)));
    assert!(!arch_compatible("sm_90a", &device_arch(8, 9)));
    assert!(!arch_compatible("sm_90a", &device_arch(10, 0)));
}

fn driver_present() -> bool {
    // SAFETY: only loads the driver library, as the runtime's own probe does.
    ["libcuda.so.1", "libcuda.so"].iter().any(|n| unsafe { libloading::Library::new(n) }.is_ok())
}

#[test]
fn loading_without_a_driver_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.plan");
    let result = std::panic::catch_unwind(|| Engine::load(&path).map(|_| ()));
    let result = result.expect("Engine::load must not panic");
    let e = result.expect_err("there is no plan file");
    if driver_present() {
        // With a driver: the missing file (or a missing device) is reported, whichever comes first.
        assert!(matches!(e, RuntimeError::Plan(_) | RuntimeError::NoDevice { .. } | RuntimeError::Driver { .. }), "{e}");
    } else {
        assert!(matches!(e, RuntimeError::NoDriver { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with("no NVIDIA driver: libcuda.so.1: "), "{msg}");
        assert!(msg.contains("needs an NVIDIA GPU"), "{msg}");
        // Twice: the probe leaves nothing behind that a second call trips over.
        assert!(matches!(Engine::load_on(&path, 3), Err(RuntimeError::NoDriver { .. })));
    }
}

// ---- on a GPU ------------------------------------------------------------------------------------
//
// `toy.plan`: two inputs `x` (f32 [B, S, 32]) and `ids` (i64 [B, S]), weights `w` and `bias` (f32
// [32], plus `w_tied` sharing `w`'s section), three launches in two CUBIN sections:
//   0 `toy_scale_add`  y = x·w·alpha + bias + ids          (every argument kind: ptrs, int Dim, float)
//   1 `toy_never`      grid y = min(S, 0): always skipped    (traps if it ever runs)
//   2 `toy_row_sum`    sums = Σ_j y[., j], 100 KiB of dynamic shared memory, `long long` Dim rows
// and outputs `y` and `sums`. B ≤ 4, S ≤ 64.
//
// On a machine with NVRTC and a GPU: `cargo test --test runtime -- --ignored --nocapture`.
// With NVRTC only, write the plan: `QFUSE_TOY_PLAN=toy.plan cargo test --test runtime
// build_toy_plan -- --ignored`; then on the GPU machine, runtime-only:
// `QFUSE_TOY_PLAN=toy.plan cargo test --no-default-features --test runtime gpu_ -- --ignored --nocapture`.

const TOY_ALPHA: f32 = 0.5;
#[cfg(feature = "compiler")]
const TOY_SMEM: u32 = 100 * 1024;

#[cfg(feature = "compiler")]
const TOY_SRC_A: &str = r#"
extern "C" __global__ void toy_scale_add(const float* x, const float* w, const float* bias, const long long* ids, float* y,
                                         int n, float alpha) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = x[i] * w[i % 32] * alpha + bias[i % 32] + (float)ids[i / 32];
    }
}
extern "C" __global__ void toy_never() { __trap(); }
"#;

#[cfg(feature = "compiler")]
const TOY_SRC_B: &str = r#"
extern "C" __global__ void toy_row_sum(const float* y, float* out, long long rows) {
    extern __shared__ float scratch[];
    const int far = (100 * 1024) / 4 - 32;  // the far end of the 100 KiB: needs the raised limit
    long long r = blockIdx.x;
    int j = threadIdx.x;
    if (r >= rows) return;
    scratch[far + j] = y[r * 32 + j];
    __syncthreads();
    if (j == 0) {
        float s = 0.0f;
        for (int k = 0; k < 32; ++k) s += scratch[far + k];
        out[r] = s;
    }
}
"#;

fn toy_weights() -> (Vec<f32>, Vec<f32>) {
    ((0..32).map(|j| 0.25 * j as f32 - 3.0).collect(), (0..32).map(|j| 0.125 * j as f32).collect())
}

/// Writes the toy plan to `path`, compiling its kernels for sm_90a with NVRTC.
#[cfg(feature = "compiler")]
fn write_toy_plan(path: &std::path::Path) {
    use qfuse::codegen::nvrtc;
    use qfuse::plan::{PlanBuilder, SectionKind};

    let install = nvrtc::locate().expect("NVRTC (run scripts/cache.sh nvrtc)");
    let cubin_a = nvrtc::compile_cubin("toy_a", TOY_SRC_A, "sm_90a", &[]).expect("compiles");
    let cubin_b = nvrtc::compile_cubin("toy_b", TOY_SRC_B, "sm_90a", &[]).expect("compiles");
    let (w, bias) = toy_weights();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();

    let mut m = PlanMeta::new("toy", "sm_90a", install.version);
    m.symbols = vec![("B".into(), 4), ("S".into(), 64)];
    let bs = || vec![sym("B"), sym("S")];
    let bs32 = || vec![sym("B"), sym("S"), 32.into()];
    m.inputs = vec![sig("x", "f32", bs32(), 0), sig("ids", "i64", bs(), 1)];
    m.outputs = vec![sig("y", "f32", bs32(), 2), sig("sums", "f32", bs(), 3)];
    m.buffers = vec![
        buffer("%x", "f32", bs32(), 32768, 0),
        buffer("%ids", "i64", bs(), 2048, 32768),
        buffer("%y", "f32", bs32(), 32768, 34816),
        buffer("%sums", "f32", bs(), 1024, 67584),
    ];
    m.peak_activation_bytes = 68608;
    let mut b = PlanBuilder::new(m);
    let sec_a = b.add_section(SectionKind::Cubin, "cubin.toy_a", cubin_a);
    let sec_b = b.add_section(SectionKind::Cubin, "cubin.toy_b", cubin_b);
    let sec_w = b.add_section(SectionKind::Weights, "w", bytes(&w));
    let sec_bias = b.add_section(SectionKind::Weights, "bias", bytes(&bias));
    let m = b.meta_mut();
    m.weights = vec![
        WeightMeta { name: "w".into(), dtype: "f32".into(), shape: vec![32], section: sec_w },
        WeightMeta { name: "bias".into(), dtype: "f32".into(), shape: vec![32], section: sec_bias },
        WeightMeta { name: "w_tied".into(), dtype: "f32".into(), shape: vec![32], section: sec_w },
    ];
    let rows = sym("B").mul(sym("S"));
    let k = |name: &str, section, grid, block, smem, params| KernelMeta {
        name: name.into(),
        template: "toy".into(),
        source: String::new(),
        section,
        grid,
        block,
        shared_mem_bytes: smem,
        params,
    };
    m.kernels = vec![
        k(
            "toy_scale_add",
            sec_a,
            [rows.clone().mul(32.into()).ceil_div(128), 1.into(), 1.into()],
            [128, 1, 1],
            0,
            vec![
                param("x", ParamType::Ptr),
                param("w", ParamType::Ptr),
                param("bias", ParamType::Ptr),
                param("ids", ParamType::Ptr),
                param("y", ParamType::Ptr),
                param("n", ParamType::I32),
                param("alpha", ParamType::F32),
            ],
        ),
        k("toy_never", sec_a, [1.into(), sym("S").min(0.into()), 1.into()], [32, 1, 1], 0, vec![]),
        k(
            "toy_row_sum",
            sec_b,
            [rows.clone(), 1.into(), 1.into()],
            [32, 1, 1],
            TOY_SMEM,
            vec![param("y", ParamType::Ptr), param("out", ParamType::Ptr), param("rows", ParamType::I64)],
        ),
    ];
    m.schedule = vec![
        LaunchMeta {
            kernel: 0,
            args: vec![
                ArgRef::Buffer(0),
                ArgRef::Weight(0),
                ArgRef::Weight(1),
                ArgRef::Buffer(1),
                ArgRef::Buffer(2),
                ArgRef::Scalar(Scalar::Dim(rows.clone().mul(32.into()))),
                ArgRef::Scalar(Scalar::F32(TOY_ALPHA)),
            ],
            label: "scale_add (%y)".into(),
            writes: vec![2],
        },
        LaunchMeta { kernel: 1, args: vec![], label: "never (%none)".into(), writes: vec![] },
        LaunchMeta {
            kernel: 2,
            args: vec![ArgRef::Buffer(2), ArgRef::Buffer(3), ArgRef::Scalar(Scalar::Dim(rows))],
            label: "row_sum (%sums)".into(),
            writes: vec![3],
        },
    ];
    b.write(path).expect("writes the plan");
}

#[cfg(feature = "compiler")]
#[test]
#[ignore = "needs NVRTC; writes the toy plan to $QFUSE_TOY_PLAN for gpu_end_to_end"]
fn build_toy_plan() {
    let path = std::env::var_os("QFUSE_TOY_PLAN").expect("set QFUSE_TOY_PLAN to the plan to write");
    write_toy_plan(std::path::Path::new(&path));
    let plan = qfuse::plan::Plan::load(&path, Some("sm_90")).expect("loads");
    assert_eq!(plan.meta().schedule.len(), 3);
}

/// Inputs for (B, S), deterministic per seed.
fn toy_inputs(b: u64, s: u64, seed: u64) -> Vec<(&'static str, HostTensor)> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let x: Vec<f32> = (0..b * s * 32).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
    let ids: Vec<i64> = (0..b * s).map(|_| i64::from(next() % 30522)).collect();
    vec![("x", HostTensor::from_f32(vec![b, s, 32], &x)), ("ids", HostTensor::from_i64(vec![b, s], &ids))]
}

/// Checks `outputs` against the CPU for `inputs`.
fn check_toy(inputs: &[(&str, HostTensor)], outputs: &[(String, HostTensor)]) {
    let (w, bias) = toy_weights();
    let x = inputs[0].1.to_f32_vec().unwrap();
    let ids = inputs[1].1.to_i64_vec().unwrap();
    let (b, s) = (inputs[1].1.shape[0], inputs[1].1.shape[1]);
    assert_eq!(outputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["y", "sums"]);
    let (y, sums) = (&outputs[0].1, &outputs[1].1);
    assert_eq!((y.dtype.as_str(), y.shape.clone()), ("f32", vec![b, s, 32]));
    assert_eq!((sums.dtype.as_str(), sums.shape.clone()), ("f32", vec![b, s]));
    let (y, sums) = (y.to_f32_vec().unwrap(), sums.to_f32_vec().unwrap());
    let close = |got: f32, want: f32| (got - want).abs() <= 1e-5 * want.abs().max(1.0);
    for i in 0..x.len() {
        let want = x[i] * w[i % 32] * TOY_ALPHA + bias[i % 32] + ids[i / 32] as f32;
        assert!(close(y[i], want), "y[{i}] = {} want {want} (B={b}, S={s})", y[i]);
    }
    for r in 0..sums.len() {
        let want: f32 = y[r * 32..r * 32 + 32].iter().sum();
        assert!(close(sums[r], want), "sums[{r}] = {} want {want}", sums[r]);
    }
}

fn toy_plan_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("QFUSE_TOY_PLAN") {
        return p.into();
    }
    #[cfg(feature = "compiler")]
    {
        let dir = std::env::temp_dir().join(format!("qfuse-runtime-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("toy.plan");
        write_toy_plan(&path);
        path
    }
    #[cfg(not(feature = "compiler"))]
    panic!("set QFUSE_TOY_PLAN to a plan written by `build_toy_plan` (this build has no NVRTC)")
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and the toy plan"]
fn gpu_end_to_end() {
    let path = toy_plan_path();
    let t0 = std::time::Instant::now();
    let engine = Engine::load(&path).expect("loads");
    println!("loaded {engine:?} in {:?}", t0.elapsed());
    assert_eq!(engine.weight_bytes(), 256 + 128, "w and bias once each, 256-aligned; w_tied shares w");
    assert!(matches!(Engine::load_on(&path, 99), Err(RuntimeError::NoDevice { ordinal: 99, .. })));

    let mut ctx = engine.context().expect("context");
    // Graphs: one per (B, S); replays give the same results.
    for (round, (b, s)) in [(2, 5), (2, 5), (1, 64), (4, 64), (2, 5), (1, 1)].into_iter().enumerate() {
        let inputs = toy_inputs(b, s, round as u64);
        let outputs = ctx.run(&inputs).expect("runs");
        check_toy(&inputs, &outputs);
    }
    assert_eq!(ctx.cached_graphs(), 4);

    // Bad inputs are errors, and the context stays usable.
    let mut bad = toy_inputs(2, 5, 9);
    bad[1].1 = HostTensor::from_i64(vec![2, 6], &[0; 12]);
    let e = ctx.run(&bad).expect_err("inconsistent S");
    println!("bad input: {e}");
    assert!(matches!(e, RuntimeError::Symbol { .. }));
    let inputs = toy_inputs(3, 17, 42);
    check_toy(&inputs, &ctx.run(&inputs).unwrap());

    // Profiled: one timing per launch that runs (launch 1 is skipped).
    let (outputs, timings) = ctx.run_profiled(&inputs).expect("profiles");
    check_toy(&inputs, &outputs);
    println!("timings: {timings:?}");
    assert_eq!(timings.iter().map(|t| t.launch).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(timings[1].kernel, "toy_row_sum");
    assert!(timings.iter().all(|t| t.micros > 0.0 && t.micros < 10_000.0));

    // Checked: the written buffers of each launch, with run-time shapes.
    type Seen = (usize, String, Vec<(u32, HostTensor)>);
    let mut seen: Vec<Seen> = Vec::new();
    let outputs = ctx
        .run_checked(&inputs, &mut |i, l, w| {
            seen.push((i, l.label.clone(), w.to_vec()));
            Vec::new()
        })
        .expect("checked");
    check_toy(&inputs, &outputs);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(seen[0].2, vec![(2, outputs[0].1.clone())]);
    assert_eq!(seen[1].2, vec![(3, outputs[1].1.clone())]);

    // Bench: graph replays.
    let stats = ctx.bench(&inputs, 10, 200).expect("bench");
    println!("bench (graph): {stats:?}");
    assert_eq!(stats.iters, 200);
    assert!(stats.min_ms > 0.0 && stats.min_ms <= stats.median_ms && stats.median_ms < 100.0);
    assert!(matches!(ctx.bench(&inputs, 0, 0), Err(RuntimeError::Usage(_))));

    // Without graphs, and with a cache of one.
    ctx.set_graph_cache_capacity(0);
    assert_eq!(ctx.cached_graphs(), 0);
    check_toy(&inputs, &ctx.run(&inputs).unwrap());
    println!("bench (direct): {:?}", ctx.bench(&inputs, 10, 200).unwrap());
    ctx.set_graph_cache_capacity(1);
    for (round, (b, s)) in [(1, 3), (2, 3), (1, 3), (4, 64)].into_iter().enumerate() {
        let inputs = toy_inputs(b, s, 100 + round as u64);
        check_toy(&inputs, &ctx.run(&inputs).unwrap());
        assert_eq!(ctx.cached_graphs(), 1);
    }
    drop(ctx);

    // One engine, several threads, a context each.
    let engine = std::sync::Arc::new(engine);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let engine = engine.clone();
            scope.spawn(move || {
                let mut ctx = engine.context().expect("context");
                for round in 0..25u64 {
                    let (b, s) = (1 + (t + round) % 4, 1 + (7 * t + 3 * round) % 64);
                    let inputs = toy_inputs(b, s, 1000 * t + round);
                    check_toy(&inputs, &ctx.run(&inputs).expect("runs"));
                }
            });
        }
    });
    println!("gpu_end_to_end passed in {:?}", t0.elapsed());
}
