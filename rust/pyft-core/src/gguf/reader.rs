//! A validated, memory-mapped GGUF v3 reader.
//!
//! Parses the header, every metadata KV (typed, in file order), every tensor-info record and
//! the data-section start, checking what llama.cpp's `gguf_init_from_reader` checks and more,
//! so a hostile or truncated file gives an [`Error::File`] naming the file and the problem,
//! never a panic or a huge allocation:
//! - magic `GGUF`, version 3 (big-endian and other versions are named as such);
//! - tensor and KV counts bounded by the bytes left in the file; string lengths and array
//!   sizes bounded the same way, so nothing is allocated that the file cannot back;
//! - known value types, no nested arrays, UTF-8 strings, non-empty unique keys;
//! - `general.alignment`, when present, a UINT32 power of two (else 32);
//! - tensor names non-empty, < 64 bytes and unique; 1..=4 dims, each `ne >= 0`, element count
//!   and byte size without overflow; a ggml type pyft knows; `ne[0]` a multiple of the block size;
//! - offsets exactly the running padded sum (`off_{i+1} = off_i + pad(nbytes_i)`), every
//!   tensor's bytes inside the file.
//!
//! Layout reference: `shared/specs/gguf.md` §1.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufArray, GgufValue};

/// The only GGUF version read.
pub const GGUF_VERSION: u32 = 3;
/// Alignment of the data section and of every tensor blob when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_NAME`: tensor names must be shorter (the C struct keeps a NUL).
pub const MAX_TENSOR_NAME: usize = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

const MAGIC: &[u8; 4] = b"GGUF";
/// Smallest tensor-info record: u64 name length + 1 name byte + u32 n_dims + one i64 ne +
/// i32 type + u64 offset.
const MIN_TENSOR_INFO: usize = 8 + 1 + 4 + 8 + 4 + 8;
/// Smallest KV pair: u64 key length + 1 key byte + i32 type + a 1-byte value.
const MIN_KV: usize = 8 + 1 + 4 + 1;

/// The GGUF name of a metadata value type id (`UINT32`, `STRING`, `ARRAY`), as gguf-py spells
/// it, or `None` for an unknown id.
pub fn gguf_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "UINT8",
        1 => "INT8",
        2 => "UINT16",
        3 => "INT16",
        4 => "UINT32",
        5 => "INT32",
        6 => "FLOAT32",
        7 => "BOOL",
        8 => "STRING",
        9 => "ARRAY",
        10 => "UINT64",
        11 => "INT64",
        12 => "FLOAT64",
        _ => return None,
    })
}

/// One tensor-info record.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// Tensor name (GGUF naming, e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// ggml `ne`: dimensions innermost first (`ne[0]` is the row length), as stored.
    pub ne: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the tensor's bytes from the start of the data section.
    pub offset: u64,
    /// Size of the tensor's bytes (without the alignment padding that follows them).
    pub nbytes: u64,
}

impl GgufTensorInfo {
    /// The shape in PyTorch/numpy order (outermost first): `ne` reversed.
    pub fn shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }

    /// Number of elements (validated not to overflow when the file was opened).
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// The parsed header of a GGUF file: everything but the tensor bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    /// Format version (always [`GGUF_VERSION`]).
    pub version: u32,
    /// Metadata in file order.
    pub kv: Vec<(String, GgufValue)>,
    /// Tensor-info records in file order (= data order).
    pub tensors: Vec<GgufTensorInfo>,
    /// Alignment of the data section and the tensor blobs.
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Parse and validate a whole GGUF file held in `buf`; `path` only names it in errors.
    pub fn parse(path: &Path, buf: &[u8]) -> Result<GgufHeader> {
        Parser { path, buf, pos: 0 }.header()
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A JSON summary for inspection tools:
    /// `{"version", "alignment", "data_offset", "kv": [{"key", "type", "value"}],
    /// "tensors": [{"name", "type", "shape", "ne", "offset", "nbytes"}]}`.
    ///
    /// `type` of a KV is the GGUF type name (`UINT32`, `STRING`, `ARRAY`); arrays also carry
    /// `element_type` and `length`, and `value` holds only their first `max_array` elements.
    /// Non-finite floats become the strings `"nan"`, `"inf"`, `"-inf"` (JSON has no such numbers).
    /// A tensor's `shape` is PyTorch order, `ne` ggml order, `offset` relative to `data_offset`.
    pub fn to_json(&self, max_array: usize) -> Value {
        let kv: Vec<Value> = self.kv.iter().map(|(k, v)| {
            let mut entry = json!({"key": k, "type": gguf_type_name(v.type_id()).unwrap_or("?")});
            match v {
                GgufValue::Array(a) => {
                    entry["element_type"] = json!(gguf_type_name(a.element_type_id()).unwrap_or("?"));
                    entry["length"] = json!(a.len());
                    entry["value"] = array_json(a, max_array);
                }
                v => entry["value"] = value_json(v),
            }
            entry
        }).collect();
        let tensors: Vec<Value> = self.tensors.iter().map(|t| json!({
            "name": t.name, "type": t.ggml_type.name(), "shape": t.shape(), "ne": t.ne,
            "offset": t.offset, "nbytes": t.nbytes,
        })).collect();
        json!({"version": self.version, "alignment": self.alignment, "data_offset": self.data_offset,
               "kv": kv, "tensors": tensors})
    }
}

fn float_json(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else if x.is_nan() {
        json!("nan")
    } else {
        json!(if x > 0.0 { "inf" } else { "-inf" })
    }
}

/// A metadata value as JSON (whole arrays; non-finite floats as the strings `nan`, `inf`, `-inf`).
pub fn value_json(v: &GgufValue) -> Value {
    match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F32(x) => float_json(f64::from(*x)),
        GgufValue::F64(x) => float_json(*x),
        GgufValue::Bool(x) => json!(x),
        GgufValue::String(x) => json!(x),
        GgufValue::Array(a) => array_json(a, usize::MAX),
    }
}

fn array_json(a: &GgufArray, max: usize) -> Value {
    fn head<T: Clone + Into<Value>>(v: &[T], max: usize) -> Value {
        Value::Array(v.iter().take(max).cloned().map(Into::into).collect())
    }
    match a {
        GgufArray::U8(v) => head(v, max),
        GgufArray::I8(v) => head(v, max),
        GgufArray::U16(v) => head(v, max),
        GgufArray::I16(v) => head(v, max),
        GgufArray::U32(v) => head(v, max),
        GgufArray::I32(v) => head(v, max),
        GgufArray::U64(v) => head(v, max),
        GgufArray::I64(v) => head(v, max),
        GgufArray::Bool(v) => head(v, max),
        GgufArray::String(v) => head(v, max),
        GgufArray::F32(v) => Value::Array(v.iter().take(max).map(|&x| float_json(f64::from(x))).collect()),
        GgufArray::F64(v) => Value::Array(v.iter().take(max).map(|&x| float_json(x)).collect()),
    }
}

/// A validated, memory-mapped GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// The parsed header (the accessors below read from it).
    pub header: GgufHeader,
}

impl GgufFile {
    /// Map and validate `path`.
    ///
    /// Errors: [`Error::Io`] when the file cannot be opened or mapped, [`Error::File`] naming the
    /// file and the defect when it is not a valid GGUF v3 file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = crate::io::file::open_regular(path)?;
        // SAFETY: the map is read-only; pyft never writes to its inputs while reading them.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = GgufHeader::parse(path, &mmap)?;
        Ok(GgufFile { path: path.to_path_buf(), mmap, header })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Format version.
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Metadata in file order.
    pub fn kv(&self) -> &[(String, GgufValue)] {
        &self.header.kv
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.header.get(key)
    }

    /// Tensor-info records in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.header.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.header.tensor(name)
    }

    /// Alignment of the data section and the tensor blobs.
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// The raw bytes of a tensor (`info.nbytes` of them).
    ///
    /// Panics if `info` does not come from this file and lies outside it; infos from
    /// [`tensors`](Self::tensors) were checked to lie inside the file when it was opened.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        let start = (self.header.data_offset + info.offset) as usize;
        &self.mmap[start..start + info.nbytes as usize]
    }
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), message: message.into() }
}

/// `x` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
fn pad(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// A bounds-checked little-endian cursor over the file bytes.
struct Parser<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, message: impl Into<String>) -> Error {
        bad(self.path, format!("not a valid GGUF file: {}", message.into()))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!("truncated: {} needs {n} bytes at offset {} but the file has {} bytes",
                                        what(), self.pos, self.buf.len())));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &dyn Fn() -> String) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// A u64-length-prefixed UTF-8 string; the length is checked against the bytes left first.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("the length of {}", what()))?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!("{} has length {len} but only {} bytes are left in the file",
                                        what(), self.remaining())));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.err(format!("{} is not valid UTF-8: {e}", what())))
    }

    /// A count (`i64` on disk) that must be >= 0 and fit records of at least `min_size` bytes
    /// into the bytes left.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let n = self.i64(&|| what.to_string())?;
        if n < 0 {
            return Err(self.err(format!("{what} is negative ({n})")));
        }
        let max = self.remaining() / min_size;
        if n as u64 > max as u64 {
            return Err(self.err(format!("{what} is {n} but the {} bytes left hold at most {max}", self.remaining())));
        }
        Ok(n as usize)
    }

    fn header(mut self) -> Result<GgufHeader> {
        let magic = self.array::<4>(&|| "the magic".into())?;
        if &magic != MAGIC {
            return Err(bad(self.path, format!("not a GGUF file: starts with {magic:02x?}, expected \"GGUF\"")));
        }
        let version = self.u32(&|| "the version".into())?;
        if version != GGUF_VERSION {
            let message = if version & 0xffff == 0 && version != 0 {
                format!("big-endian GGUF (version field {version:#010x}); only little-endian GGUF v3 is supported")
            } else {
                format!("GGUF version {version} is not supported (only version 3)")
            };
            return Err(bad(self.path, message));
        }
        // Records are at least MIN_* bytes, so the counts can be bounded before reading them.
        let n_tensors = self.count("the tensor count", MIN_TENSOR_INFO)?;
        let n_kv = self.count("the KV count", MIN_KV)?;

        let mut kv: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv.min(1024));
        let mut keys = HashSet::with_capacity(n_kv.min(1024));
        for i in 0..n_kv {
            let key = self.string(&|| format!("the key of KV #{i}"))?;
            if key.is_empty() {
                return Err(self.err(format!("KV #{i} has an empty key")));
            }
            if !keys.insert(key.clone()) {
                return Err(self.err(format!("duplicate key `{key}`")));
            }
            let value = self.value(&key)?;
            kv.push((key, value));
        }

        let alignment = match kv.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, GgufValue::U32(a))) => {
                return Err(self.err(format!("`general.alignment` is {a}, not a power of two")))
            }
            Some((_, v)) => {
                return Err(self.err(format!("`general.alignment` has type {}, expected UINT32",
                                            gguf_type_name(v.type_id()).unwrap_or("?"))))
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors.min(4096));
        let mut names = HashSet::with_capacity(n_tensors.min(4096));
        let mut expected_offset = 0u64;
        for i in 0..n_tensors {
            let t = self.tensor_info(i)?;
            if !names.insert(t.name.clone()) {
                return Err(self.err(format!("duplicate tensor name `{}`", t.name)));
            }
            if t.offset != expected_offset {
                return Err(self.err(format!("tensor `{}` has offset {}, expected {expected_offset} (offsets must be \
                                             the running sum of the {alignment}-byte-padded tensor sizes)",
                                            t.name, t.offset)));
            }
            expected_offset = t.offset.checked_add(t.nbytes).and_then(|end| pad(end, alignment))
                .ok_or_else(|| self.err(format!("tensor `{}`: data section size overflows", t.name)))?;
            tensors.push(t);
        }

        let data_offset = pad(self.pos as u64, alignment).ok_or_else(|| self.err("data offset overflows"))?;
        let file_len = self.buf.len() as u64;
        for t in &tensors {
            let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.nbytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(self.err(format!("truncated: tensor `{}` ({} bytes at data offset {}) ends past the \
                                                 end of the file ({file_len} bytes, data section at {data_offset})",
                                                t.name, t.nbytes, t.offset)))
                }
            }
        }
        Ok(GgufHeader { version, kv, tensors, alignment, data_offset })
    }

    fn value_type(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        let id = self.u32(what)?;
        if gguf_type_name(id).is_none() {
            return Err(self.err(format!("{} is unknown value type {id}", what())));
        }
        Ok(id)
    }

    fn value(&mut self, key: &str) -> Result<GgufValue> {
        let ty = self.value_type(&|| format!("the type of `{key}`"))?;
        if ty != 9 {
            return self.scalar(ty, &|| format!("the value of `{key}`"));
        }
        let elem = self.value_type(&|| format!("the element type of array `{key}`"))?;
        if elem == 9 {
            return Err(self.err(format!("`{key}` is a nested array (not supported by llama.cpp)")));
        }
        let n = self.u64(&|| format!("the length of array `{key}`"))?;
        let min_size: u64 = match elem {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            _ => 8, // 64-bit scalars; a string is at least its u64 length
        };
        if n.checked_mul(min_size).is_none_or(|b| b > self.remaining() as u64) {
            return Err(self.err(format!("array `{key}` has {n} elements but only {} bytes are left in the file",
                                        self.remaining())));
        }
        let n = n as usize;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const W: usize = std::mem::size_of::<$t>();
                let bytes = self.take(n * W, &|| format!("array `{key}`"))?;
                GgufArray::$variant(bytes.chunks_exact(W).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect())
            }};
        }
        let array = match elem {
            0 => fixed!(U8, u8),
            1 => fixed!(I8, i8),
            2 => fixed!(U16, u16),
            3 => fixed!(I16, i16),
            4 => fixed!(U32, u32),
            5 => fixed!(I32, i32),
            6 => fixed!(F32, f32),
            7 => {
                let bytes = self.take(n, &|| format!("array `{key}`"))?;
                if let Some(j) = bytes.iter().position(|&b| b > 1) {
                    return Err(self.err(format!("array `{key}`: element {j} is not a BOOL (byte {})", bytes[j])));
                }
                GgufArray::Bool(bytes.iter().map(|&b| b != 0).collect())
            }
            8 => {
                let mut v = Vec::with_capacity(n);
                for j in 0..n {
                    v.push(self.string(&|| format!("element {j} of array `{key}`"))?);
                }
                GgufArray::String(v)
            }
            10 => fixed!(U64, u64),
            11 => fixed!(I64, i64),
            12 => fixed!(F64, f64),
            _ => unreachable!("element type {elem} checked above"),
        };
        Ok(GgufValue::Array(array))
    }

    fn scalar(&mut self, ty: u32, what: &dyn Fn() -> String) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("{} is not a BOOL (byte {b})", what()))),
            },
            8 => GgufValue::String(self.string(what)?),
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(self.i64(what)?),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            _ => unreachable!("scalar type {ty} checked by the caller"),
        })
    }

    fn tensor_info(&mut self, i: usize) -> Result<GgufTensorInfo> {
        let name = self.string(&|| format!("the name of tensor #{i}"))?;
        if name.is_empty() {
            return Err(self.err(format!("tensor #{i} has an empty name")));
        }
        if name.len() >= MAX_TENSOR_NAME {
            return Err(self.err(format!("tensor name `{name}` is {} bytes long (llama.cpp allows at most {})",
                                        name.len(), MAX_TENSOR_NAME - 1)));
        }
        let n_dims = self.u32(&|| format!("the n_dims of tensor `{name}`"))?;
        if !(1..=MAX_DIMS as u32).contains(&n_dims) {
            return Err(self.err(format!("tensor `{name}` has {n_dims} dimensions (expected 1 to {MAX_DIMS})")));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let v = self.i64(&|| format!("ne[{d}] of tensor `{name}`"))?;
            if v < 0 {
                return Err(self.err(format!("tensor `{name}` has negative ne[{d}] = {v}")));
            }
            ne.push(v as u64);
        }
        let n_elements = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&p| p <= i64::MAX as u64));
        let Some(n_elements) = n_elements else {
            return Err(self.err(format!("tensor `{name}` has too many elements (ne = {ne:?})")));
        };
        let type_id = self.u32(&|| format!("the type of tensor `{name}`"))?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(self.err(format!("tensor `{name}` has ggml type id {type_id}, which pyft does not know \
                                         (known: {})", known_types())));
        };
        let block = ggml_type.block_size() as u64;
        if !ne[0].is_multiple_of(block) {
            return Err(self.err(format!("tensor `{name}`: ne[0] = {} is not a multiple of the {} block size {block}",
                                        ne[0], ggml_type.name())));
        }
        let nbytes = (n_elements / block).checked_mul(ggml_type.type_size() as u64);
        let Some(nbytes) = nbytes.filter(|&b| b <= i64::MAX as u64) else {
            return Err(self.err(format!("tensor `{name}`: byte size overflows (ne = {ne:?})")));
        };
        let offset = self.u64(&|| format!("the offset of tensor `{name}`"))?;
        Ok(GgufTensorInfo { name, ne, ggml_type, offset, nbytes })
    }
}

fn known_types() -> String {
    GgmlType::ALL.iter().map(|t| format!("{}={}", t.name(), t.id())).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds GGUF bytes by hand (independent of the writer).
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn i64(self, v: i64) -> Self {
            self.u64(v as u64)
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn str(self, s: &str) -> Self {
            self.u64(s.len() as u64).raw(s.as_bytes())
        }
        fn header(self, n_tensors: i64, n_kv: i64) -> Self {
            self.raw(b"GGUF").u32(3).i64(n_tensors).i64(n_kv)
        }
        fn tensor(self, name: &str, ne: &[i64], ty: u32, offset: u64) -> Self {
            let mut b = self.str(name).u32(ne.len() as u32);
            for &d in ne {
                b = b.i64(d);
            }
            b.u32(ty).u64(offset)
        }
        fn pad(mut self, align: usize) -> Self {
            while !self.0.len().is_multiple_of(align) {
                self.0.push(0);
            }
            self
        }
    }

    fn parse(b: &[u8]) -> Result<GgufHeader> {
        GgufHeader::parse(Path::new("x.gguf"), b)
    }

    fn err(b: Bytes) -> String {
        let e = parse(&b.0).unwrap_err().to_string();
        assert!(e.starts_with("x.gguf: "), "{e}");
        e
    }

    /// A valid file: every scalar type, three arrays, two tensors (F32 [2,3] and Q8_0 [32]).
    fn valid() -> Vec<u8> {
        let b = Bytes::default()
            .header(2, 16)
            .str("general.architecture").u32(8).str("llama")
            .str("u8").u32(0).raw(&[7])
            .str("i8").u32(1).raw(&[0xff])
            .str("u16").u32(2).raw(&513u16.to_le_bytes())
            .str("i16").u32(3).raw(&(-2i16).to_le_bytes())
            .str("u32").u32(4).u32(4096)
            .str("i32").u32(5).u32((-5i32) as u32)
            .str("f32").u32(6).raw(&1e-5f32.to_le_bytes())
            .str("bool").u32(7).raw(&[1])
            .str("u64").u32(10).u64(u64::MAX)
            .str("i64").u32(11).i64(-7)
            .str("f64").u32(12).raw(&0.25f64.to_le_bytes())
            .str("tokens").u32(9).u32(8).u64(2).str("a").str("héllo")
            .str("scores").u32(9).u32(6).u64(2).raw(&1.5f32.to_le_bytes()).raw(&(-2f32).to_le_bytes())
            .str("flags").u32(9).u32(7).u64(3).raw(&[0, 1, 0])
            .str("wide").u32(9).u32(11).u64(1).i64(-3)
            .tensor("a.weight", &[3, 2], 0, 0)
            .tensor("b.weight", &[32], 8, 32)
            .pad(32);
        let data = [vec![1u8; 24], vec![0; 8], vec![2u8; 34], vec![0; 30]].concat();
        [b.0, data].concat()
    }

    #[test]
    fn parses_a_valid_file() {
        let buf = valid();
        let h = parse(&buf).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.alignment, 32);
        assert_eq!(h.data_offset % 32, 0);
        let keys: Vec<&str> = h.kv.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys[..3], ["general.architecture", "u8", "i8"]);
        assert_eq!(h.get("general.architecture"), Some(&GgufValue::String("llama".into())));
        assert_eq!(h.get("i8"), Some(&GgufValue::I8(-1)));
        assert_eq!(h.get("u16"), Some(&GgufValue::U16(513)));
        assert_eq!(h.get("i16"), Some(&GgufValue::I16(-2)));
        assert_eq!(h.get("u32"), Some(&GgufValue::U32(4096)));
        assert_eq!(h.get("i32"), Some(&GgufValue::I32(-5)));
        assert_eq!(h.get("f32"), Some(&GgufValue::F32(1e-5)));
        assert_eq!(h.get("bool"), Some(&GgufValue::Bool(true)));
        assert_eq!(h.get("u64"), Some(&GgufValue::U64(u64::MAX)));
        assert_eq!(h.get("i64"), Some(&GgufValue::I64(-7)));
        assert_eq!(h.get("f64"), Some(&GgufValue::F64(0.25)));
        assert_eq!(h.get("tokens"), Some(&GgufValue::Array(GgufArray::String(vec!["a".into(), "héllo".into()]))));
        assert_eq!(h.get("scores"), Some(&GgufValue::Array(GgufArray::F32(vec![1.5, -2.0]))));
        assert_eq!(h.get("flags"), Some(&GgufValue::Array(GgufArray::Bool(vec![false, true, false]))));
        assert_eq!(h.get("wide"), Some(&GgufValue::Array(GgufArray::I64(vec![-3]))));
        assert_eq!(h.get("missing"), None);
        let a = h.tensor("a.weight").unwrap();
        assert_eq!((a.ne.clone(), a.shape(), a.ggml_type, a.offset, a.nbytes),
                   (vec![3, 2], vec![2, 3], GgmlType::F32, 0, 24));
        let b = &h.tensors[1];
        assert_eq!((b.ggml_type, b.offset, b.nbytes, b.n_elements()), (GgmlType::Q8_0, 32, 34, 32));
    }

    #[test]
    fn json_summary_truncates_arrays() {
        let j = parse(&valid()).unwrap().to_json(1);
        assert_eq!(j["version"], 3);
        assert_eq!(j["kv"][0], json!({"key": "general.architecture", "type": "STRING", "value": "llama"}));
        assert_eq!(j["kv"][9], json!({"key": "u64", "type": "UINT64", "value": u64::MAX}));
        assert_eq!(j["kv"][12], json!({"key": "tokens", "type": "ARRAY", "element_type": "STRING", "length": 2,
                                       "value": ["a"]}));
        assert_eq!(j["tensors"][0], json!({"name": "a.weight", "type": "F32", "shape": [2, 3], "ne": [3, 2],
                                           "offset": 0, "nbytes": 24}));
        assert_eq!(float_json(f64::NEG_INFINITY), json!("-inf"));
    }

    #[test]
    fn opens_a_file_and_reads_tensor_bytes() {
        let dir = std::env::temp_dir().join(format!("pyft-gguf-reader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ok.gguf");
        std::fs::write(&p, valid()).unwrap();
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.tensors().len(), 2);
        assert_eq!(f.tensor_bytes(&f.tensors()[0]), &[1u8; 24][..]);
        assert_eq!(f.tensor_bytes(f.tensor("b.weight").unwrap()), &[2u8; 34][..]);
        assert_eq!(f.get("u32").and_then(GgufValue::as_u64), Some(4096));
        let empty = dir.join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        let e = GgufFile::open(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.gguf") && e.contains("truncated"), "{e}");
        let e = GgufFile::open(&dir).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(matches!(GgufFile::open(dir.join("missing.gguf")), Err(Error::Io { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn custom_alignment_is_honoured_and_checked() {
        let build = |ty: u32, align: &[u8]| {
            let b = Bytes::default().header(2, 1).str("general.alignment").u32(ty).raw(align)
                .tensor("a", &[1], 0, 0).tensor("b", &[1], 0, 64).pad(64);
            [b.0, vec![0; 68]].concat()
        };
        let h = parse(&build(4, &64u32.to_le_bytes())).unwrap();
        assert_eq!((h.alignment, h.data_offset % 64, h.tensors[1].offset), (64, 0, 64));
        let e = parse(&build(4, &48u32.to_le_bytes())).unwrap_err().to_string();
        assert!(e.contains("`general.alignment` is 48, not a power of two"), "{e}");
        let e = parse(&build(4, &0u32.to_le_bytes())).unwrap_err().to_string();
        assert!(e.contains("not a power of two"), "{e}");
        let e = parse(&build(10, &64u64.to_le_bytes())).unwrap_err().to_string();
        assert!(e.contains("`general.alignment` has type UINT64, expected UINT32"), "{e}");
    }

    #[test]
    fn corruptions_are_named() {
        let t = |b: Bytes| b.tensor("t", &[4], 0, 0).pad(32).raw(&[0; 16]);
        let cases: Vec<(Bytes, &str)> = vec![
            (Bytes::default().raw(b"GGUG").u32(3), "not a GGUF file"),
            (Bytes::default().raw(b"GGUF").u32(3u32.swap_bytes()), "big-endian"),
            (Bytes::default().raw(b"GGUF").u32(2), "version 2 is not supported"),
            (Bytes::default().raw(b"GGUF").u32(3).i64(-1).i64(0), "tensor count is negative"),
            (Bytes::default().raw(b"GGUF").u32(3).i64(1 << 40).i64(0), "tensor count is 1099511627776"),
            (Bytes::default().raw(b"GGUF").u32(3).i64(0).i64(i64::MAX), "KV count is"),
            (Bytes::default().header(0, 1).u64(u64::MAX).raw(&[0; 16]), "has length 18446744073709551615"),
            (Bytes::default().header(0, 1).str("").u32(4).u32(1), "empty key"),
            (Bytes::default().header(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(1), "duplicate key `k`"),
            (Bytes::default().header(0, 1).str("k").u32(13).u32(1), "the type of `k` is unknown value type 13"),
            (Bytes::default().header(0, 1).str("k").u32(9).u32(9).u64(1).u32(4).u64(0), "`k` is a nested array"),
            (Bytes::default().header(0, 1).str("k").u32(9).u32(42).u64(0), "unknown value type 42"),
            (Bytes::default().header(0, 1).str("k").u32(9).u32(4).u64(u64::MAX / 2).u32(1), "array `k` has"),
            (Bytes::default().header(0, 1).str("k").u32(9).u32(8).u64(1 << 40).u64(0), "array `k` has 1099511627776"),
            (Bytes::default().header(0, 1).str("k").u32(9).u32(8).u64(2).str("a").u64(9).raw(b"b"),
             "element 1 of array `k` has length 9"),
            (Bytes::default().header(0, 1).str("k").u32(8).u64(2).raw(&[0xff, 0xfe]), "not valid UTF-8"),
            (Bytes::default().header(0, 1).str("k").u32(7).raw(&[2]), "not a BOOL"),
            (Bytes::default().header(0, 1).str("k").u32(4).raw(&[1, 2]), "truncated: the value of `k` needs 4 bytes"),
            (t(Bytes::default().header(1, 0)).raw(b""), ""), // valid baseline, filtered below
            (Bytes::default().header(1, 0).tensor("", &[4], 0, 0).pad(32).raw(&[0; 16]), "tensor #0 has an empty name"),
            (Bytes::default().header(1, 0).tensor(&"n".repeat(64), &[4], 0, 0).pad(32).raw(&[0; 16]),
             "is 64 bytes long"),
            (Bytes::default().header(1, 0).tensor("t", &[], 0, 0).pad(32), "tensor `t` has 0 dimensions"),
            (Bytes::default().header(1, 0).tensor("t", &[1, 1, 1, 1, 1], 0, 0).pad(32), "has 5 dimensions"),
            (Bytes::default().header(1, 0).tensor("t", &[4, -1], 0, 0).pad(32), "negative ne[1] = -1"),
            (Bytes::default().header(1, 0).tensor("t", &[1 << 32, 1 << 32], 0, 0).pad(32), "too many elements"),
            (Bytes::default().header(1, 0).tensor("t", &[1 << 62], 0, 0).pad(32), "byte size overflows"),
            (Bytes::default().header(1, 0).tensor("t", &[32], 11, 0).pad(32), "ggml type id 11"),
            (Bytes::default().header(1, 0).tensor("t", &[48], 12, 0).pad(32),
             "ne[0] = 48 is not a multiple of the Q4_K block size 256"),
            (Bytes::default().header(1, 0).tensor("t", &[4], 0, 32).pad(32).raw(&[0; 64]), "has offset 32, expected 0"),
            (Bytes::default().header(2, 0).tensor("t", &[4], 0, 0).tensor("u", &[4], 0, 16).pad(32).raw(&[0; 64]),
             "tensor `u` has offset 16, expected 32"),
            (Bytes::default().header(2, 0).tensor("t", &[4], 0, 0).tensor("t", &[4], 0, 32).pad(32).raw(&[0; 64]),
             "duplicate tensor name `t`"),
            (Bytes::default().header(1, 0).tensor("t", &[4], 0, 0).pad(32).raw(&[0; 15]), "tensor `t` (16 bytes"),
            (Bytes::default().header(1, 0).tensor("t", &[4], 0, 0), "ends past the end of the file"),
        ];
        for (b, expected) in cases {
            if expected.is_empty() {
                parse(&b.0).unwrap();
                continue;
            }
            let e = err(b);
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
        }
    }

    #[test]
    fn every_truncation_of_a_valid_file_is_an_error() {
        let buf = valid();
        // The last tensor's blob is followed by padding the reader does not require.
        let needed = buf.len() - 30;
        for n in 0..needed {
            let e = parse(&buf[..n]).unwrap_err().to_string();
            assert!(e.starts_with("x.gguf: "), "{e}");
        }
        parse(&buf[..needed]).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Truncations and bit flips of a valid file parse or fail cleanly, never panic, and an
        /// accepted file keeps every tensor inside the buffer.
        #[test]
        fn hostile_bytes_never_panic(cut in 0usize..400,
                                     flips in proptest::collection::vec((0usize..400, 0u8..8), 0..6)) {
            let mut buf = valid();
            for (at, bit) in flips {
                let n = buf.len();
                buf[at % n] ^= 1 << bit;
            }
            buf.truncate(cut.min(buf.len()));
            if let Ok(h) = parse(&buf) {
                for t in &h.tensors {
                    prop_assert!(h.data_offset + t.offset + t.nbytes <= buf.len() as u64);
                }
            }
        }

        /// Random bytes after a valid magic and version never panic.
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let buf = [b"GGUF".to_vec(), 3u32.to_le_bytes().to_vec(), body].concat();
            let _ = parse(&buf);
        }
    }
}
