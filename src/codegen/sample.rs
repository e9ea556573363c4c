//! The on-GPU sampler: not an IR op; the decoder runtime launches it after the plan's schedule,
//! on the logits of each sequence's last position. `templates/sample.cu` (its header is the
//! design) implements [`crate::generate::sample::choose`] exactly, with row `b`'s counter =
//! `counter + b`: `choose(row_b, &Sampling { temperature, top_k, top_p, seed }, counter + b)`.
//!
//! Signature, in order: `(logits, out, long long rows, long long row_stride, float temperature,
//! int top_k, float top_p, long long seed, long long counter)`: `logits` holds `rows` rows of
//! `vocab` entries of the logits dtype, row `b` starting at element `b · row_stride`; `out` is
//! i32 `[rows]` (the chosen ids, −1 for an all-NaN row); `seed` and `counter` are u64 bit
//! patterns passed as `long long`. Launch: grid `(rows, 1, 1)` (the kernel's grid is the symbol
//! `B`: bind it to `rows`), block 1024, no dynamic shared memory.

use crate::codegen::kernel::{finish_kernel, params, KernelDef, LowerError};
use crate::codegen::ops::decoder::with_prelude;
use crate::codegen::template::Template;
use crate::ir::DType;
use crate::plan::{DimExpr, ParamType};

const SAMPLE: Template = Template { name: "sample.cu", text: include_str!("../../templates/sample.cu") };

/// Threads of a sampling CTA (one CTA per row).
pub const THREADS: u32 = 1024;

/// The grid symbol the runtime binds to the number of rows.
pub const ROWS_SYMBOL: &str = "B";

/// The sampling kernel for rows of `vocab` logits of dtype `logits` (f32, f16 or bf16), for
/// `sm_<sm>` (70 or newer: `__shfl_xor_sync`).
pub fn sample_kernel(vocab: u64, logits: DType, sm: u32) -> Result<KernelDef, LowerError> {
    let err = |reason: String| LowerError { node: "sampler".into(), reason };
    let t = match logits {
        DType::F32 => "qf_f32",
        DType::F16 => "qf_f16",
        DType::BF16 => "qf_bf16",
        other => return Err(err(format!("logits of dtype {other} cannot be sampled (f32, f16 or bf16)"))),
    };
    if vocab == 0 || vocab > u64::from(i32::MAX as u32) {
        return Err(err(format!("vocabulary of {vocab} entries: must be between 1 and 2^31 − 1 (ids are i32)")));
    }
    if sm < 70 {
        return Err(err(format!("the sampler needs sm_70 or newer, target is sm_{sm}")));
    }
    let values = with_prelude(vec![("t", t.to_string()), ("vocab", vocab.to_string())]);
    let source = SAMPLE.render(&values).map_err(|e| err(format!("internal: {e}")))?;
    let list = [
        ("logits", ParamType::Ptr),
        ("out", ParamType::Ptr),
        ("rows", ParamType::I64),
        ("row_stride", ParamType::I64),
        ("temperature", ParamType::F32),
        ("top_k", ParamType::I32),
        ("top_p", ParamType::F32),
        ("seed", ParamType::I64),
        ("counter", ParamType::I64),
    ];
    let grid = [DimExpr::sym(ROWS_SYMBOL), 1.into(), 1.into()];
    Ok(finish_kernel("sample", source, grid, [THREADS, 1, 1], 0, params(&list)))
}
