//! Safetensors files: validated memory-mapped reading of single files and sharded model
//! directories, and a writer that streams tensor data after a precomputed header.
//!
//! Reading validates what a hostile file could get wrong (header length beyond the file, bad
//! JSON, offsets past the end, overlapping or non-contiguous tensors, sizes that disagree with
//! shapes) through the `safetensors` crate, and names the file in every error.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::tensor::DType;

/// One tensor of a file: name, type, shape and where its bytes are.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range inside the file's data section.
    pub range: (usize, usize),
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A tensor of a type pyft does not compute with (`U8`, `I64`, 8-bit floats, …), kept by
/// [`SafetensorsFile::open_any`] for a reader that knows what it holds: the packed weights and
/// quant state of a 4-bit checkpoint are `U8`.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherTensor {
    /// Tensor name.
    pub name: String,
    /// The safetensors type name (`U8`, `I64`, …).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range inside the file's data section.
    pub range: (usize, usize),
}

/// A validated, memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    /// Tensors in data order.
    pub tensors: Vec<TensorInfo>,
    /// Tensors of other types, in data order (only from [`open_any`](Self::open_any)).
    pub others: Vec<OtherTensor>,
    /// The `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), message: message.into() }
}

/// `; tensor `NAME` ...`: the tensor at fault, for the `safetensors` crate's errors that name none
/// (a shape it cannot read, an unknown dtype, a size that disagrees with the shape, data offsets
/// past the end of the file); empty otherwise. Only called for errors raised after the crate has
/// checked the header's length, so the parse here is bounded.
fn culprit(err: &::safetensors::SafeTensorError, buf: &[u8]) -> String {
    use ::safetensors::SafeTensorError as E;
    if !matches!(err, E::InvalidHeaderDeserialization(_) | E::TensorInvalidInfo | E::MisalignedSlice
                      | E::ValidationOverflow | E::MetadataIncompleteBuffer) {
        return String::new();
    }
    let Some((n, header)) = buf
        .get(..8)
        .and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok())
        .and_then(|n| Some((n, serde_json::from_slice::<serde_json::Map<String, Value>>(buf.get(8..n.checked_add(8)?)?).ok()?)))
    else {
        return String::new();
    };
    let mut entries = header.iter().filter(|(name, _)| name.as_str() != "__metadata__");
    if matches!(err, E::MetadataIncompleteBuffer) {
        let data_len = buf.len() - 8 - n; // the crate checked that the header fits in the file
        let last = entries.filter_map(|(name, info)| Some((name, info["data_offsets"].get(1)?.as_u64()?)))
            .max_by_key(|&(_, end)| end);
        return match last {
            Some((name, end)) if end > data_len as u64 => {
                format!("; tensor `{name}` ends at byte {end} of the {data_len}-byte data section")
            }
            Some((_, end)) => format!("; the tensors cover {end} of the {data_len} data bytes"),
            None => String::new(),
        };
    }
    entries.find_map(|(name, info)| tensor_problem(name, info)).map(|p| format!("; tensor `{p}")).unwrap_or_default()
}

/// What is wrong with one header entry (`NAME` ...), if [`culprit`] can tell.
fn tensor_problem(name: &str, info: &Value) -> Option<String> {
    let shape = info.get("shape")?;
    let Some(dims) = shape.as_array().and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>()) else {
        return Some(format!("{name}` has shape {shape}; dimensions are non-negative integers"));
    };
    let dtype_value = info.get("dtype")?;
    let Ok(dtype) = serde_json::from_value::<::safetensors::Dtype>(dtype_value.clone()) else {
        return Some(format!("{name}` has unknown dtype {dtype_value}"));
    };
    let offsets = info.get("data_offsets")?.as_array()?;
    let (start, end) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
    let bits = dims.iter().try_fold(dtype.bitsize() as u128, |acc, &d| acc.checked_mul(u128::from(d)));
    match bits {
        None => Some(format!("{name}` has shape {dims:?}, too large")),
        Some(b) if b % 8 != 0 => Some(format!("{name}`: {dtype}{dims:?} is {b} bits, not whole bytes")),
        Some(_) if end < start => Some(format!("{name}` has data_offsets [{start}, {end}], which end before they start")),
        Some(b) if b / 8 != u128::from(end - start) => Some(format!(
            "{name}`: {dtype}{dims:?} needs {} bytes but data_offsets [{start}, {end}] hold {}", b / 8, end - start)),
        Some(_) => None,
    }
}

impl SafetensorsFile {
    /// Map and validate `path`; a tensor of a type other than F32, F16 or BF16 is an error.
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        Self::open_inner(path, false)
    }

    /// [`open`](Self::open), but tensors of other types are listed in `others` instead of failing.
    pub fn open_any(path: &Path) -> Result<SafetensorsFile> {
        Self::open_inner(path, true)
    }

    fn open_inner(path: &Path, any_type: bool) -> Result<SafetensorsFile> {
        let file = crate::io::file::open_regular(path)?;
        // SAFETY: the map is read-only; pyft never writes to its inputs while reading them.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        #[cfg(unix)]
        let _ = mmap.advise(memmap2::Advice::Sequential); // read-ahead: tensors are consumed in order
        let (header_len, meta) = ::safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| bad(path, format!("not a valid safetensors file: {e}{}", culprit(&e, &mmap))))?;
        let data_start = 8 + header_len;
        let (mut tensors, mut others) = (Vec::new(), Vec::new());
        for (name, info) in meta.tensors() {
            let type_name = format!("{:?}", info.dtype);
            match DType::from_safetensors(&type_name, &name) {
                Ok(dtype) => tensors.push(TensorInfo { name, dtype, shape: info.shape.clone(), range: info.data_offsets }),
                Err(_) if any_type => others.push(OtherTensor { name, dtype: type_name, shape: info.shape.clone(),
                                                               range: info.data_offsets }),
                Err(e) => return Err(bad(path, e.to_string())),
            }
        }
        // Data order; ties (zero-size tensors share an offset) broken by range end, then name, so
        // the order does not depend on the header map's iteration order.
        tensors.sort_by(|a, b| (a.range, &a.name).cmp(&(b.range, &b.name)));
        others.sort_by(|a, b| (a.range, &a.name).cmp(&(b.range, &b.name)));
        let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(SafetensorsFile { path: path.to_path_buf(), mmap, data_start, tensors, others, metadata })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The absolute byte offset of the data section in the file (where `range` offsets count from).
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        self.range_bytes(t.range)
    }

    /// The bytes of a data-section range (`TensorInfo::range`, `OtherTensor::range`).
    pub fn range_bytes(&self, range: (usize, usize)) -> &[u8] {
        &self.mmap[self.data_start + range.0..self.data_start + range.1]
    }

    /// Let the kernel drop the cached pages of a tensor already consumed, so reading a whole model
    /// keeps the resident set at about one tensor (the pages are re-read from disk if touched again).
    pub fn release(&self, t: &TensorInfo) {
        release_pages(self.bytes(t));
    }

    /// [`release`](Self::release) for a data-section range.
    pub fn release_range(&self, range: (usize, usize)) {
        release_pages(self.range_bytes(range));
    }

    /// The absolute byte offset and length of a tensor's data in the file.
    pub fn file_range(&self, t: &TensorInfo) -> (u64, usize) {
        ((self.data_start + t.range.0) as u64, t.range.1 - t.range.0)
    }

    /// Look a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// The safetensors files of a model directory (`model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`), in a stable order.
pub fn model_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        // Bytes, not text: an index that is not UTF-8 is malformed JSON (a `DataError` naming it).
        let bytes = crate::io::file::read(&index)?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(&index, format!("malformed JSON: {e}")))?;
        let map = v["weight_map"].as_object().ok_or_else(|| bad(&index, "no `weight_map`"))?;
        let mut files = Vec::with_capacity(map.len());
        for (tensor, file) in map {
            // A shard is a file of the model directory: a name that leaves it (`../x`, `/etc/x`)
            // would make a hostile index read files from elsewhere.
            match file.as_str() {
                // `./a` and `a` are one shard.
                Some(f) if is_plain_relative(f) => {
                    files.push(Path::new(f).components().filter(|c| c != &Component::CurDir).collect::<PathBuf>())
                }
                Some(f) => return Err(bad(&index, format!("`weight_map` entry `{tensor}` names `{f}`, which is not a \
                                                           file inside {}", dir.display()))),
                None => return Err(bad(&index, format!("`weight_map` entry `{tensor}` is not a file name"))),
            }
        }
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.exists()) {
            return Err(bad(&index, format!("lists {} which does not exist", missing.display())));
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(bad(dir, "no model.safetensors or model.safetensors.index.json"))
}

/// Whether `name` is a non-empty relative path that stays inside its directory (no `..`, no
/// root, no NUL).
fn is_plain_relative(name: &str) -> bool {
    let path = Path::new(name);
    !name.contains('\0')
        && path.components().any(|c| matches!(c, Component::Normal(_)))
        && path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// A planned output tensor: name, type and shape (its bytes come later, in plan order).
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    /// Size of the tensor's data in bytes.
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Writes one safetensors file whose header is fixed up front, then receives each tensor's bytes
/// in order, so a whole model is written while holding one tensor in memory.
pub struct StreamWriter {
    path: PathBuf,
    out: BufWriter<File>,
    plan: Vec<PlannedTensor>,
    next: usize,
    pending: Option<usize>,
}

impl StreamWriter {
    /// Create `path` with the header for `plan` (metadata `{"format": "pt"}`).
    pub fn create(path: &Path, plan: Vec<PlannedTensor>) -> Result<StreamWriter> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0usize;
        for t in &plan {
            let end = offset + t.nbytes();
            header.insert(t.name.clone(), json!({"dtype": t.dtype.safetensors_name(), "shape": t.shape,
                                                 "data_offsets": [offset, end]}));
            offset = end;
        }
        let mut text = serde_json::to_string(&Value::Object(header)).map_err(|e| bad(path, e.to_string()))?;
        while text.len() % 8 != 0 {
            text.push(' ');
        }
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        preallocate(&file, 8 + text.len() + offset);
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&(text.len() as u64).to_le_bytes()).map_err(|e| Error::io(path, e))?;
        out.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))?;
        Ok(StreamWriter { path: path.to_path_buf(), out, plan, next: 0, pending: None })
    }

    /// Append the next planned tensor's bytes (must match its planned size).
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.begin(name, bytes.len())?;
        self.append(bytes)?;
        self.end()
    }

    /// Start the next planned tensor, announcing its total size; then [`append`](Self::append)
    /// its bytes in pieces and [`end`](Self::end) it.
    pub fn begin(&mut self, name: &str, nbytes: usize) -> Result<()> {
        let t = self.plan.get(self.next).ok_or_else(|| bad(&self.path, format!("unplanned tensor `{name}`")))?;
        if t.name != name || t.nbytes() != nbytes || self.pending.is_some() {
            return Err(bad(&self.path, format!("tensor `{name}` ({nbytes} bytes) does not match the plan (`{}`, {} bytes)",
                                               t.name, t.nbytes())));
        }
        self.pending = Some(nbytes);
        Ok(())
    }

    /// Append bytes of the tensor begun with [`begin`](Self::begin).
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        match self.pending.as_mut() {
            Some(left) if *left >= bytes.len() => *left -= bytes.len(),
            _ => return Err(bad(&self.path, "more bytes than the tensor holds")),
        }
        self.out.write_all(bytes).map_err(|e| Error::io(&self.path, e))
    }

    /// Append `len` bytes of the tensor begun with [`begin`](Self::begin) from file `src` at
    /// `offset`, copied file to file by the kernel where it can (`copy_file_range` on Linux), so
    /// the bytes never pass through this process.
    pub fn append_file_range(&mut self, src: &Path, offset: u64, len: usize) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        match self.pending.as_mut() {
            Some(left) if *left >= len => *left -= len,
            _ => return Err(bad(&self.path, "more bytes than the tensor holds")),
        }
        let mut file = crate::io::file::open_regular(src)?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(src, e))?;
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        let copied = std::io::copy(&mut file.take(len as u64), self.out.get_mut()).map_err(|e| Error::io(&self.path, e))?;
        if copied != len as u64 {
            return Err(bad(src, format!("ended {} bytes early", len as u64 - copied)));
        }
        Ok(())
    }

    /// Finish the current tensor (all its bytes must have been appended).
    pub fn end(&mut self) -> Result<()> {
        if self.pending.take() != Some(0) {
            return Err(bad(&self.path, "tensor ended before all its bytes were written"));
        }
        self.next += 1;
        Ok(())
    }

    /// Flush and close; every planned tensor must have been written.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.plan.len() {
            return Err(bad(&self.path, format!("only {} of {} tensors written", self.next, self.plan.len())));
        }
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        Ok(())
    }
}

/// Reserve the file's final size up front where the filesystem can (Linux `fallocate`): appending
/// into allocated extents costs the kernel much less than allocating block by block (measured on
/// ext4: about a third less system time writing a 1.7 GB model). Only an optimisation; errors
/// (filesystems without it) are ignored.
pub(crate) fn preallocate(file: &File, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if let Ok(len) = libc::off_t::try_from(len) {
            // SAFETY: a plain syscall on a valid, open file descriptor; no memory is passed.
            let _ = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, len);
}

/// Let the kernel drop the cached pages fully inside `bytes`, a consumed slice of a read-only,
/// file-backed mapping: reading a whole model then keeps the resident set at about one tensor or
/// chunk (the pages are faulted back in from the file if touched again).
pub(crate) fn release_pages(bytes: &[u8]) {
    #[cfg(unix)]
    advise(bytes, true, libc::MADV_DONTNEED);
}

/// Fault in the pages of `bytes` (part of a read-only file mapping) with one `madvise` instead of
/// one page fault per page. A hint only: failures (older kernels) are ignored.
pub(crate) fn populate_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    advise(bytes, false, libc::MADV_POPULATE_READ);
}

/// `madvise` over the pages of `bytes`: only the pages fully inside it when `inner`, else every
/// page it touches.
#[cfg(unix)]
fn advise(bytes: &[u8], inner: bool, advice: libc::c_int) {
    let page = 4096usize;
    let (first, last) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
    let start = if inner { first.div_ceil(page) * page } else { first / page * page };
    let end = if inner { last / page * page } else { last };
    if end > start {
        // SAFETY: `bytes` lies in a live read-only, file-backed private mapping; DONTNEED only drops
        // clean cached pages (faulted back in unchanged from the file), POPULATE_READ only reads.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, advice);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pyft-st-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    }

    #[test]
    fn stream_write_then_read_back() {
        let d = tmp("rw");
        let p = d.join("a.safetensors");
        let plan = vec![
            PlannedTensor { name: "b".into(), dtype: DType::F32, shape: vec![2] },
            PlannedTensor { name: "a".into(), dtype: DType::BF16, shape: vec![1, 3] },
        ];
        let mut w = StreamWriter::create(&p, plan).unwrap();
        assert!(w.write("a", &[0; 6]).is_err());
        w.write("b", &crate::tensor::from_f32(&[1.0, 2.0], DType::F32)).unwrap();
        w.write("a", &[0; 6]).unwrap();
        w.finish().unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        assert_eq!(f.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["b", "a"]);
        assert_eq!(crate::tensor::to_f32(f.bytes(&f.tensors[0]), DType::F32), vec![1.0, 2.0]);
        assert_eq!(f.metadata.get("format").map(String::as_str), Some("pt"));
        std::fs::remove_dir_all(d).unwrap();
    }

    fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
        [(header.len() as u64).to_le_bytes().to_vec(), header.as_bytes().to_vec(), data.to_vec()].concat()
    }

    #[test]
    fn tensors_sharing_an_offset_keep_one_order() {
        // Zero-size tensors start where the next tensor starts; the header map's iteration order
        // used to decide between them, so two opens of one file could list them differently.
        let d = tmp("ties");
        let p = d.join("ties.safetensors");
        let names = ["e", "c", "a", "d", "b"];
        let entries: Vec<String> = names.iter().map(|n| format!(r#""{n}":{{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}"#))
            .collect();
        let header = format!(r#"{{"z":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}},{},"y":{{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}}}"#,
                             entries.join(","));
        std::fs::write(&p, raw_file(&header, &[0; 8])).unwrap();
        for _ in 0..8 {
            let f = SafetensorsFile::open(&p).unwrap();
            let order: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(order, ["z", "a", "b", "c", "d", "e", "y"]);
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn index_shards_stay_inside_the_model_directory() {
        let d = tmp("index");
        let model = d.join("model");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(d.join("outside.safetensors"), b"").unwrap();
        std::fs::write(model.join("a.safetensors"), b"").unwrap();
        let index = model.join("model.safetensors.index.json");
        for (shard, expected) in [(r#""../outside.safetensors""#, "names `../outside.safetensors`, which is not a file inside"),
                                  (r#""/etc/hostname""#, "names `/etc/hostname`"),
                                  (r#""x/../../outside.safetensors""#, "which is not a file inside"),
                                  ("3", "`weight_map` entry `t` is not a file name")] {
            std::fs::write(&index, format!(r#"{{"weight_map":{{"t":{shard}}}}}"#)).unwrap();
            let err = model_files(&model).unwrap_err().to_string();
            assert!(err.contains("model.safetensors.index.json") && err.contains(expected), "{err}");
        }
        std::fs::write(&index, r#"{"weight_map":{"t":"a.safetensors","u":"./a.safetensors"}}"#).unwrap();
        assert_eq!(model_files(&model).unwrap(), vec![model.join("a.safetensors")]); // `./a` is `a`
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn header_errors_name_the_tensor() {
        let d = tmp("culprit");
        let p = d.join("c.safetensors");
        let ok = r#""a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        for (entry, data, expected) in [
            (r#""b":{"dtype":"F32","shape":[-1],"data_offsets":[4,8]}"#, 8, "tensor `b` has shape [-1]"),
            (r#""b":{"dtype":"F32","shape":[3],"data_offsets":[4,8]}"#, 8,
             "tensor `b`: F32[3] needs 12 bytes but data_offsets [4, 8] hold 4"),
            (r#""b":{"dtype":"F17","shape":[1],"data_offsets":[4,8]}"#, 8, "tensor `b` has unknown dtype \"F17\""),
            (r#""b":{"dtype":"F4","shape":[3],"data_offsets":[4,6]}"#, 6, "tensor `b`: F4[3] is 12 bits"),
            (r#""b":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}"#, 8, "tensor `b` ends at byte 20 of the 8-byte"),
            (r#""b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}"#, 12, "the tensors cover 8 of the 12 data bytes"),
        ] {
            std::fs::write(&p, raw_file(&format!("{{{ok},{entry}}}"), &vec![0; data])).unwrap();
            let err = SafetensorsFile::open(&p).unwrap_err().to_string();
            assert!(err.contains("c.safetensors: not a valid safetensors file") && err.contains(expected), "{err}");
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn hostile_headers_are_rejected() {
        let d = tmp("bad");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("huge-header", [u64::MAX.to_le_bytes().to_vec(), b"{}".to_vec()].concat()),
            ("past-end", {
                let h = br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
                [(h.len() as u64).to_le_bytes().to_vec(), h.to_vec(), vec![0; 8]].concat()
            }),
            ("overlap", {
                let h = br#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
                [(h.len() as u64).to_le_bytes().to_vec(), h.to_vec(), vec![0; 12]].concat()
            }),
            ("truncated", vec![1, 2, 3]),
        ];
        for (name, bytes) in cases {
            let p = d.join(format!("{name}.safetensors"));
            std::fs::write(&p, bytes).unwrap();
            let err = SafetensorsFile::open(&p).unwrap_err().to_string();
            assert!(err.contains(&format!("{name}.safetensors")) && err.contains("not a valid safetensors file"), "{err}");
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}
