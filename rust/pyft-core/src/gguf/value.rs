//! GGUF metadata values with their exact on-disk types.
//!
//! llama.cpp checks the type of every hyper-parameter it reads ("key has wrong type"), so each
//! value carries its GGUF type explicitly: `U32(4096)` is written as UINT32, never as INT32.

/// A typed GGUF metadata value (`gguf_type` ids in brackets).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// UINT8 (0).
    U8(u8),
    /// INT8 (1).
    I8(i8),
    /// UINT16 (2).
    U16(u16),
    /// INT16 (3).
    I16(i16),
    /// UINT32 (4).
    U32(u32),
    /// INT32 (5).
    I32(i32),
    /// FLOAT32 (6).
    F32(f32),
    /// BOOL (7), one byte 0/1.
    Bool(bool),
    /// STRING (8): u64 length + UTF-8 bytes, no NUL.
    String(String),
    /// ARRAY (9) of one element type; never empty when written.
    Array(GgufArray),
    /// UINT64 (10).
    U64(u64),
    /// INT64 (11).
    I64(i64),
    /// FLOAT64 (12).
    F64(f64),
}

/// A homogeneous GGUF array (nested arrays are not allowed by llama.cpp).
///
/// pyft writes only the U8/I32/U32/F32/STRING/BOOL element types; the others exist so the
/// reader can represent every array llama.cpp accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    /// ARRAY[UINT8].
    U8(Vec<u8>),
    /// ARRAY[INT8].
    I8(Vec<i8>),
    /// ARRAY[UINT16].
    U16(Vec<u16>),
    /// ARRAY[INT16].
    I16(Vec<i16>),
    /// ARRAY[UINT64].
    U64(Vec<u64>),
    /// ARRAY[INT64].
    I64(Vec<i64>),
    /// ARRAY[FLOAT64].
    F64(Vec<f64>),
    /// ARRAY[INT32] (e.g. `tokenizer.ggml.token_type`).
    I32(Vec<i32>),
    /// ARRAY[UINT32].
    U32(Vec<u32>),
    /// ARRAY[FLOAT32] (e.g. `tokenizer.ggml.scores`).
    F32(Vec<f32>),
    /// ARRAY[STRING] (e.g. `tokenizer.ggml.tokens`, `tokenizer.ggml.merges`).
    String(Vec<String>),
    /// ARRAY[BOOL].
    Bool(Vec<bool>),
}

impl GgufValue {
    /// The `gguf_type` id written before the value.
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    /// The string, for `String` values.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as u64 for any non-negative integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Short type name for summaries (`u32`, `str`, `[str; 32000]`).
    pub fn type_name(&self) -> String {
        match self {
            GgufValue::U8(_) => "u8".into(),
            GgufValue::I8(_) => "i8".into(),
            GgufValue::U16(_) => "u16".into(),
            GgufValue::I16(_) => "i16".into(),
            GgufValue::U32(_) => "u32".into(),
            GgufValue::I32(_) => "i32".into(),
            GgufValue::F32(_) => "f32".into(),
            GgufValue::Bool(_) => "bool".into(),
            GgufValue::String(_) => "str".into(),
            GgufValue::U64(_) => "u64".into(),
            GgufValue::I64(_) => "i64".into(),
            GgufValue::F64(_) => "f64".into(),
            GgufValue::Array(a) => format!("[{}; {}]", a.element_type_name(), a.len()),
        }
    }
}

impl GgufArray {
    /// The element `gguf_type` id.
    pub fn element_type_id(&self) -> u32 {
        match self {
            GgufArray::U8(_) => 0,
            GgufArray::I8(_) => 1,
            GgufArray::U16(_) => 2,
            GgufArray::I16(_) => 3,
            GgufArray::U64(_) => 10,
            GgufArray::I64(_) => 11,
            GgufArray::F64(_) => 12,
            GgufArray::U32(_) => 4,
            GgufArray::I32(_) => 5,
            GgufArray::F32(_) => 6,
            GgufArray::Bool(_) => 7,
            GgufArray::String(_) => 8,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn element_type_name(&self) -> &'static str {
        match self {
            GgufArray::U8(_) => "u8",
            GgufArray::I8(_) => "i8",
            GgufArray::U16(_) => "u16",
            GgufArray::I16(_) => "i16",
            GgufArray::U64(_) => "u64",
            GgufArray::I64(_) => "i64",
            GgufArray::F64(_) => "f64",
            GgufArray::I32(_) => "i32",
            GgufArray::U32(_) => "u32",
            GgufArray::F32(_) => "f32",
            GgufArray::String(_) => "str",
            GgufArray::Bool(_) => "bool",
        }
    }
}
