//! Streaming GGUF v3 writer.
//!
//! Layout (little-endian, `shared/specs/gguf.md` §1.5): magic `GGUF`, `u32` version 3, `i64`
//! tensor count, `i64` KV count, the KVs, the tensor-info records (name, `u32` n_dims, `i64` ne
//! innermost first, `i32` ggml type, `u64` offset), zero padding to 32 bytes, then each tensor's
//! bytes zero-padded to 32. Offsets are the running padded sum, so the header is written first and
//! tensors are streamed one at a time in plan order: memory stays at one tensor.
//!
//! The file is written under a unique staging name created exclusively beside `path`
//! ([`crate::io::staging::StagingFile`]) and renamed into place by [`GgufWriter::finish`]; a writer
//! dropped before `finish` removes the staged file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::ggml_type::GgmlType;
use crate::gguf::value::{GgufArray, GgufValue};
use crate::io::safetensors::preallocate;
use crate::io::staging::StagingFile;

/// GGUF magic bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The GGUF version written.
pub const VERSION: u32 = 3;
/// Tensor data alignment (no `general.alignment` key is written, so llama.cpp uses 32).
pub const ALIGNMENT: usize = 32;
/// Appends of at least this many bytes bypass the write buffer.
const LARGE_WRITE: usize = 1 << 20;
/// Longest tensor name llama.cpp accepts (`GGML_MAX_NAME` = 64 including the NUL).
pub const MAX_NAME_BYTES: usize = 63;

/// One tensor of the file, declared before any data is written.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    /// GGUF tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml `ne`: dimensions innermost first (a PyTorch `[out, in]` weight is `[in, out]`).
    pub ne: Vec<u64>,
    /// Element type of the stored bytes.
    pub ggml_type: GgmlType,
}

impl TensorPlan {
    /// A plan from a PyTorch-order shape (reversed into `ne`).
    pub fn from_torch_shape(name: impl Into<String>, shape: &[usize], ggml_type: GgmlType) -> TensorPlan {
        TensorPlan { name: name.into(), ne: shape.iter().rev().map(|&d| d as u64).collect(), ggml_type }
    }

    /// Bytes of the tensor data (without padding), or an error when `ne[0]` is not a multiple of
    /// the type's block size.
    pub fn nbytes(&self) -> Result<usize> {
        let row = *self.ne.first().unwrap_or(&1) as usize;
        let rows: u64 = self.ne.iter().skip(1).product();
        let row_bytes = self.ggml_type.row_bytes(row).ok_or_else(|| {
            Error::Shape(format!("tensor `{}`: row length {row} is not a multiple of {}'s block size {}",
                                  self.name, self.ggml_type.name(), self.ggml_type.block_size()))
        })?;
        Ok(row_bytes * rows as usize)
    }
}

/// `x` rounded up to a multiple of [`ALIGNMENT`].
pub fn pad(x: usize) -> usize {
    x.div_ceil(ALIGNMENT) * ALIGNMENT
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => buf.push(*x),
        GgufValue::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => buf.push(u8::from(*x)),
        GgufValue::String(s) => put_str(buf, s),
        GgufValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array(a) => {
            buf.extend_from_slice(&a.element_type_id().to_le_bytes());
            buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
            match a {
                GgufArray::U8(v) => buf.extend_from_slice(v),
                GgufArray::I8(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
                GgufArray::U16(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
                GgufArray::I16(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
                GgufArray::U64(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
                GgufArray::I64(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
                GgufArray::F64(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
                GgufArray::I32(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
                GgufArray::U32(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
                GgufArray::F32(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
                GgufArray::Bool(v) => v.iter().for_each(|&x| buf.push(u8::from(x))),
                GgufArray::String(v) => v.iter().for_each(|s| put_str(buf, s)),
            }
        }
    }
}

/// Serialize everything before the tensor data: header, KVs, tensor infos and the padding up to
/// the data section. Checks llama.cpp's rules (unique non-empty keys, no empty arrays, unique
/// names shorter than 64 bytes, 1-4 dims, block-aligned rows).
pub fn encode_header(kvs: &[(String, GgufValue)], tensors: &[TensorPlan]) -> Result<Vec<u8>> {
    let mut keys = std::collections::HashSet::new();
    for (k, v) in kvs {
        if k.is_empty() || !keys.insert(k.as_str()) {
            return Err(Error::Internal(format!("GGUF key `{k}` is empty or duplicated")));
        }
        if let GgufValue::Array(a) = v {
            if a.is_empty() {
                return Err(Error::Internal(format!("GGUF key `{k}`: empty arrays are not written (omit the key)")));
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if t.name.is_empty() || t.name.len() > MAX_NAME_BYTES || !names.insert(t.name.as_str()) {
            return Err(Error::Internal(format!(
                "tensor name `{}` is empty, longer than {MAX_NAME_BYTES} bytes or duplicated", t.name)));
        }
        if t.ne.is_empty() || t.ne.len() > 4 {
            return Err(Error::Shape(format!("tensor `{}` has {} dimensions (GGUF allows 1-4)", t.name, t.ne.len())));
        }
    }
    let mut buf = Vec::with_capacity(1 << 16);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&(tensors.len() as i64).to_le_bytes());
    buf.extend_from_slice(&(kvs.len() as i64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut buf, k);
        buf.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(&mut buf, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut buf, &t.name);
        buf.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
        for &d in &t.ne {
            buf.extend_from_slice(&(d as i64).to_le_bytes());
        }
        buf.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        buf.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += pad(t.nbytes()?);
    }
    buf.resize(pad(buf.len()), 0);
    Ok(buf)
}

/// A GGUF file being written: header first, then tensors in plan order.
pub struct GgufWriter {
    out: Option<BufWriter<File>>,
    staging: Option<StagingFile>,
    /// The final path, named in write errors (the staging name would only puzzle a user).
    target: PathBuf,
    plan: Vec<TensorPlan>,
    sizes: Vec<usize>,
    next: usize,
    /// Bytes of the current tensor still expected by `append`.
    pending: usize,
}

impl GgufWriter {
    /// Create `path` (staged under a unique new name, see [`StagingFile`]; an existing `path` is
    /// replaced at [`GgufWriter::finish`] only with `overwrite`) and write the header, KVs and tensor infos.
    pub fn create(path: &Path, kvs: &[(String, GgufValue)], plan: Vec<TensorPlan>, overwrite: bool)
                  -> Result<GgufWriter> {
        let header = encode_header(kvs, &plan)?;
        let sizes = plan.iter().map(TensorPlan::nbytes).collect::<Result<Vec<_>>>()?;
        let (staging, file) = StagingFile::create(path, overwrite)?;
        let total = header.len() + sizes.iter().map(|&n| pad(n)).sum::<usize>();
        preallocate(&file, total);
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header).map_err(|e| Error::io(path, e))?;
        Ok(GgufWriter { out: Some(out), staging: Some(staging), target: path.to_path_buf(), plan, sizes, next: 0, pending: 0 })
    }

    /// The plan the header declared.
    pub fn plan(&self) -> &[TensorPlan] {
        &self.plan
    }

    /// Write the whole data of the next tensor, which must be named `name`.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.begin(name)?;
        self.append(bytes)?;
        self.end()
    }

    /// Start the next tensor (`name` must be the next one in the plan); feed it with `append`.
    pub fn begin(&mut self, name: &str) -> Result<()> {
        let Some(t) = self.plan.get(self.next) else {
            return Err(Error::Internal(format!("tensor `{name}` written after all planned tensors")));
        };
        if t.name != name || self.pending != 0 {
            return Err(Error::Internal(format!("tensor `{name}` written out of order (expected `{}`)", t.name)));
        }
        self.pending = self.sizes[self.next];
        Ok(())
    }

    /// Append bytes to the current tensor.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.pending {
            let name = self.plan.get(self.next).map(|t| t.name.as_str()).unwrap_or("?");
            return Err(Error::Internal(format!("tensor `{name}`: more bytes than its shape and type allow")));
        }
        self.pending -= bytes.len();
        let out = self.out.as_mut().expect("writer is open until finish");
        if bytes.len() >= LARGE_WRITE {
            // Large pieces go straight to the file: no copy through the buffer.
            out.flush().map_err(|e| Error::io(&self.target, e))?;
            return out.get_mut().write_all(bytes).map_err(|e| Error::io(&self.target, e));
        }
        out.write_all(bytes).map_err(|e| Error::io(&self.target, e))
    }

    /// Finish the current tensor: check its size and write the padding.
    pub fn end(&mut self) -> Result<()> {
        let size = self.sizes[self.next];
        if self.pending != 0 {
            return Err(Error::Internal(format!("tensor `{}`: {} bytes missing", self.plan[self.next].name, self.pending)));
        }
        let out = self.out.as_mut().expect("writer is open until finish");
        out.write_all(&[0u8; ALIGNMENT][..pad(size) - size]).map_err(|e| Error::io(&self.target, e))?;
        self.next += 1;
        Ok(())
    }

    /// Check that every planned tensor was written, flush and rename into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.next != self.plan.len() {
            return Err(Error::Internal(format!("GGUF file incomplete: {} of {} tensors written",
                                             self.next, self.plan.len())));
        }
        let out = self.out.take().expect("writer is open until finish");
        let file = out.into_inner().map_err(|e| Error::io(&self.target, e.into_error()))?;
        drop(file);
        self.staging.take().expect("staged until finish").commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvs() -> Vec<(String, GgufValue)> {
        vec![("general.architecture".into(), GgufValue::String("llama".into())),
             ("llama.block_count".into(), GgufValue::U32(2)),
             ("tokenizer.ggml.tokens".into(), GgufValue::Array(GgufArray::String(vec!["a".into(), "b".into()])))]
    }

    #[test]
    fn header_bytes_follow_the_spec() {
        let plan = vec![TensorPlan::from_torch_shape("w", &[2, 32], GgmlType::F32)];
        let h = encode_header(&kvs(), &plan).unwrap();
        assert_eq!(&h[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 3);
        assert_eq!(i64::from_le_bytes(h[8..16].try_into().unwrap()), 1);
        assert_eq!(i64::from_le_bytes(h[16..24].try_into().unwrap()), 3);
        // First key: u64 length 20 + "general.architecture" + i32 type 8 + u64 5 + "llama".
        assert_eq!(u64::from_le_bytes(h[24..32].try_into().unwrap()), 20);
        assert_eq!(&h[32..52], b"general.architecture");
        assert_eq!(u32::from_le_bytes(h[52..56].try_into().unwrap()), 8);
        assert_eq!(h.len() % ALIGNMENT, 0);
    }

    #[test]
    fn offsets_are_the_running_padded_sum() {
        // 3 x f32 = 12 bytes -> padded to 32; the second tensor starts at 32.
        let plan = vec![TensorPlan::from_torch_shape("a", &[3], GgmlType::F32),
                        TensorPlan::from_torch_shape("b", &[1, 32], GgmlType::Q8_0)];
        let h = encode_header(&[], &plan).unwrap();
        // The last 8 bytes of b's record (before padding) hold its offset.
        let rec_end = 24 + (8 + 1 + 4 + 8 + 4 + 8) + (8 + 1 + 4 + 16 + 4 + 8);
        assert_eq!(u64::from_le_bytes(h[rec_end - 8..rec_end].try_into().unwrap()), 32);
    }

    #[test]
    fn rejects_what_llama_cpp_rejects() {
        let long = "x".repeat(64);
        assert!(encode_header(&[], &[TensorPlan::from_torch_shape(long, &[4], GgmlType::F32)]).is_err());
        let dup = vec![TensorPlan::from_torch_shape("a", &[4], GgmlType::F32); 2];
        assert!(encode_header(&[], &dup).is_err());
        assert!(encode_header(&[], &[TensorPlan::from_torch_shape("q", &[2, 48], GgmlType::Q8_0)]).is_err());
        let empty = vec![("k".to_string(), GgufValue::Array(GgufArray::I32(vec![])))];
        assert!(encode_header(&empty, &[]).is_err());
        let dupk = vec![("k".to_string(), GgufValue::U32(1)), ("k".to_string(), GgufValue::U32(2))];
        assert!(encode_header(&dupk, &[]).is_err());
    }

    #[test]
    fn streams_tensors_and_renames_on_finish() {
        let dir = std::env::temp_dir().join(format!("pyft-gguf-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let plan = vec![TensorPlan::from_torch_shape("a", &[3], GgmlType::F32)];
        let mut w = GgufWriter::create(&path, &kvs(), plan.clone(), false).unwrap();
        assert!(w.write_tensor("b", &[0; 12]).is_err());
        w.write_tensor("a", &[1; 12]).unwrap();
        assert!(!path.exists());
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header = encode_header(&kvs(), &plan).unwrap();
        assert_eq!(bytes.len(), header.len() + 32);
        assert_eq!(&bytes[header.len()..header.len() + 12], &[1; 12]);
        // An unfinished writer leaves nothing behind.
        let path2 = dir.join("u.gguf");
        {
            let _w = GgufWriter::create(&path2, &[], plan, false).unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["t.gguf"], "an unfinished writer leaves nothing behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
