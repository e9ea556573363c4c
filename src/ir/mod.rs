//! The qfuse IR: an arena of nodes and SSA values with typed ids, a closed [`Op`] enum, explicit
//! quantize/dequantize carrying a [`QuantSpec`], symbolic shapes, and a text format that
//! round-trips (`parse(print(g)) == g`). Weights stay outside: a `weight` node names a tensor of
//! the model's weight store. See `docs/ir.md`.
#![deny(missing_docs)]

mod attrs;
pub mod builder;
mod decoder_types;
mod dtype;
pub mod glu_types;
mod graph;
mod id;
pub mod infer;
mod op;
pub mod order;
pub mod parse;
pub mod print;
pub mod prologue;
mod quant;
pub mod split_types;
mod types;
pub mod verify;

pub use builder::Builder;
pub use decoder_types::{kv_state_heads, KV_TOKEN_AXIS};
pub use dtype::DType;
pub use graph::{Graph, Node, StateSlot, ValueInfo};
pub use id::{IdVec, NodeId, SymId, ValueId};
pub use op::{
    epilogue_operands, Attention, AttentionFp8, AttnRope, BinaryOp, CausalAttention, EmbedLayerNorm, EpilogueOp, EpilogueStep, GluMatMul,
    KvCodes, NormKind, Op, OutputQuant, QMatMul, ReduceOp, Rope, RopeLlama3, RopePairs, RoundTripNorm, Segment, SplitMatMul, UnaryOp,
    KV_NVFP4_BLOCK,
};
pub use parse::{parse, ParseError};
pub use print::print;
pub use quant::{Granularity, QuantSpec, ScaleSource, ZeroPoint};
pub use types::{normalize_axis, shape_text, Dim, Shape, Symbol, TensorType};
pub use verify::{verify, VerifyErrors};
