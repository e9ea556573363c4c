//! GGUF metadata values: the thirteen value types, arrays stored compactly (one `Vec` of the
//! element type, strings in one buffer), and their parser.

use super::cursor::{capacity_for, Cursor};
use std::fmt;

/// Deepest nesting of arrays the reader accepts (an array of arrays of arrays). llama.cpp reads
/// no nested arrays at all; gguf-py reads them; real files have none.
pub const MAX_ARRAY_DEPTH: usize = 3;

/// A metadata value (`gguf_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(MetaArray),
}

/// An array value: one vector of its element type.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Str(StrList),
    /// Nested arrays, each with its own element type.
    Array(Vec<MetaArray>),
}

/// A list of strings in one buffer (a 49,152-token vocabulary is two allocations, not 49,152).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StrList {
    text: String,
    ends: Vec<usize>,
}

impl StrList {
    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`-th string.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }

    /// The strings in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i).expect("index below len"))
    }

    /// Appends a string.
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }
}

impl<'a> FromIterator<&'a str> for StrList {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut list = StrList::default();
        iter.into_iter().for_each(|s| list.push(s));
        list
    }
}

/// The stored value type ids (`gguf_type`) in id order.
const TYPE_NAMES: [&str; 13] = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"];

/// Smallest encoding of one value of type `id` (an empty string or array for those types).
fn min_size(id: u32) -> usize {
    match id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        _ => 12, // array: u32 element type + u64 count
    }
}

fn check_type(id: u32) -> Result<(), String> {
    if (id as usize) < TYPE_NAMES.len() {
        Ok(())
    } else {
        Err(format!("unknown value type {id} (known: 0..=12)"))
    }
}

impl MetaValue {
    /// The type's name as errors print it (`u32`, `string`, `array of i32`).
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::Array(a) => format!("array of {}", a.element_type_name()),
            other => TYPE_NAMES[other.type_id() as usize].into(),
        }
    }

    fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::Str(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    /// The value of any integer type, widened (`None` for floats, bools, strings, arrays).
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type's name (`i32`, `string`, `array`).
    pub fn element_type_name(&self) -> &'static str {
        let id = match self {
            MetaArray::U8(_) => 0,
            MetaArray::I8(_) => 1,
            MetaArray::U16(_) => 2,
            MetaArray::I16(_) => 3,
            MetaArray::U32(_) => 4,
            MetaArray::I32(_) => 5,
            MetaArray::F32(_) => 6,
            MetaArray::Bool(_) => 7,
            MetaArray::Str(_) => 8,
            MetaArray::Array(_) => 9,
            MetaArray::U64(_) => 10,
            MetaArray::I64(_) => 11,
            MetaArray::F64(_) => 12,
        };
        TYPE_NAMES[id]
    }

    /// The elements of an integer array converted to `T`: `None` for a non-integer array,
    /// `Some(Err(i))` when element `i` does not fit `T`.
    pub fn integers<T: TryFrom<i128>>(&self) -> Option<Result<Vec<T>, usize>> {
        fn conv<T: TryFrom<i128>, S: Copy + Into<i128>>(v: &[S]) -> Result<Vec<T>, usize> {
            v.iter().enumerate().map(|(i, &x)| T::try_from(x.into()).map_err(|_| i)).collect()
        }
        Some(match self {
            MetaArray::U8(v) => conv(v),
            MetaArray::I8(v) => conv(v),
            MetaArray::U16(v) => conv(v),
            MetaArray::I16(v) => conv(v),
            MetaArray::U32(v) => conv(v),
            MetaArray::I32(v) => conv(v),
            MetaArray::U64(v) => conv(v),
            MetaArray::I64(v) => conv(v),
            _ => return None,
        })
    }
}

impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::Str(s) => write!(f, "{s:?}"),
            MetaValue::Array(a) => write!(f, "[{} × {}]", a.len(), a.element_type_name()),
            MetaValue::Bool(b) => write!(f, "{b}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            other => write!(f, "{}", other.as_integer().expect("remaining variants are integers")),
        }
    }
}

/// Reads one value of stored type `id`. `depth` counts the arrays already entered.
pub(super) fn read_value(cur: &mut Cursor<'_>, id: u32, depth: usize) -> Result<MetaValue, String> {
    check_type(id)?;
    Ok(match id {
        0 => MetaValue::U8(cur.u8("u8 value")?),
        1 => MetaValue::I8(cur.u8("i8 value")? as i8),
        2 => MetaValue::U16(cur.u16("u16 value")?),
        3 => MetaValue::I16(cur.u16("i16 value")? as i16),
        4 => MetaValue::U32(cur.u32("u32 value")?),
        5 => MetaValue::I32(cur.u32("i32 value")? as i32),
        6 => MetaValue::F32(cur.f32("f32 value")?),
        7 => MetaValue::Bool(read_bool(cur)?),
        8 => MetaValue::Str(cur.string("string value")?.to_owned()),
        9 => MetaValue::Array(read_array(cur, depth + 1)?),
        10 => MetaValue::U64(cur.u64("u64 value")?),
        11 => MetaValue::I64(cur.u64("i64 value")? as i64),
        _ => MetaValue::F64(cur.f64("f64 value")?),
    })
}

fn read_bool(cur: &mut Cursor<'_>) -> Result<bool, String> {
    match cur.u8("bool value")? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(format!("bool value at offset {} is {b}, not 0 or 1", cur.pos() - 1)),
    }
}

/// Reads an array header (element type, count) and its elements; `depth` is this array's depth.
fn read_array(cur: &mut Cursor<'_>, depth: usize) -> Result<MetaArray, String> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
    }
    let elem = cur.u32("array element type")?;
    check_type(elem)?;
    let count = cur.u64("array length")?;
    let fits = (cur.remaining() / min_size(elem)) as u64;
    if count > fits {
        return Err(format!(
            "array of {count} {} elements cannot fit in the {} bytes left (offset {})",
            TYPE_NAMES[elem as usize],
            cur.remaining(),
            cur.pos()
        ));
    }
    read_elements(cur, elem, count, depth)
}

fn read_elements(cur: &mut Cursor<'_>, elem: u32, count: u64, depth: usize) -> Result<MetaArray, String> {
    fn many<T>(
        cur: &mut Cursor<'_>,
        count: u64,
        size: usize,
        mut one: impl FnMut(&mut Cursor<'_>) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut out = Vec::with_capacity(capacity_for::<T>(count, cur.remaining(), size));
        for _ in 0..count {
            out.push(one(cur)?);
        }
        Ok(out)
    }
    Ok(match elem {
        0 => MetaArray::U8(many(cur, count, 1, |c| c.u8("u8 element"))?),
        1 => MetaArray::I8(many(cur, count, 1, |c| c.u8("i8 element").map(|v| v as i8))?),
        2 => MetaArray::U16(many(cur, count, 2, |c| c.u16("u16 element"))?),
        3 => MetaArray::I16(many(cur, count, 2, |c| c.u16("i16 element").map(|v| v as i16))?),
        4 => MetaArray::U32(many(cur, count, 4, |c| c.u32("u32 element"))?),
        5 => MetaArray::I32(many(cur, count, 4, |c| c.u32("i32 element").map(|v| v as i32))?),
        6 => MetaArray::F32(many(cur, count, 4, |c| c.f32("f32 element"))?),
        7 => MetaArray::Bool(many(cur, count, 1, read_bool)?),
        8 => MetaArray::Str(read_strings(cur, count)?),
        9 => MetaArray::Array(many(cur, count, 12, |c| read_array(c, depth + 1))?),
        10 => MetaArray::U64(many(cur, count, 8, |c| c.u64("u64 element"))?),
        11 => MetaArray::I64(many(cur, count, 8, |c| c.u64("i64 element").map(|v| v as i64))?),
        _ => MetaArray::F64(many(cur, count, 8, |c| c.f64("f64 element"))?),
    })
}

fn read_strings(cur: &mut Cursor<'_>, count: u64) -> Result<StrList, String> {
    let mut list = StrList { text: String::new(), ends: Vec::with_capacity(capacity_for::<usize>(count, cur.remaining(), 8)) };
    for i in 0..count {
        let s = cur.string("string element").map_err(|m| format!("element {i}: {m}"))?;
        list.push(s);
    }
    Ok(list)
}
