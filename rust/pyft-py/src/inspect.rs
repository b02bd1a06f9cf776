//! Binding of `pyft_core::gguf::reader` for `pyft inspect`: GGUF metadata as JSON.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyft_core::gguf::GgufFile;

use crate::error::to_pyerr;

/// Read and validate a GGUF v3 file's header: metadata and tensor infos, no tensor data.
///
/// Args:
///     path (str): the `.gguf` file.
///     max_array (int): arrays longer than this keep only their first `max_array` elements
///         in `value` (their `length` is always given). Default: 16.
/// Returns:
///     str: JSON `{"version", "alignment", "data_offset", "kv": [{"key", "type", "value"}, ...],
///     "tensors": [{"name", "type", "shape", "ne", "offset", "nbytes"}, ...]}`; KV `type` is the
///     GGUF type name (`UINT32`, `STRING`, `ARRAY` with `element_type` and `length`), tensor
///     `shape` is PyTorch order and `ne` ggml order.
/// Raises:
///     DataError: the file is not a valid GGUF v3 file (the message names the file and the defect).
///     OSError: the file cannot be read.
#[pyfunction]
#[pyo3(signature = (path, max_array=16))]
pub fn gguf_read_metadata(py: Python<'_>, path: PathBuf, max_array: usize) -> PyResult<String> {
    let json = py
        .detach(|| GgufFile::open(&path).map(|f| f.header.to_json(max_array).to_string()))
        .map_err(|e| to_pyerr(py, e))?;
    Ok(json)
}
