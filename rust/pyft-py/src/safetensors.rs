//! Binding of `pyft_core::io::safetensors` for pyft's Python readers (`pyft.io.safetensors`, used
//! by `pyft inspect`, the vLLM adapter check, token shards and `pyft.io.shards`): the validated
//! layout of a file and the shard list of a model directory, so Python never trusts a header or an
//! index it parsed on its own, and every bad file raises the same `DataError`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyft_core::io::safetensors::{model_files, SafetensorsFile};

use crate::error::to_pyerr;

/// One tensor: name, safetensors dtype, shape, and its absolute byte range `[start, end)` in the file.
type TensorLayout = (String, String, Vec<usize>, usize, usize);

/// Validate a safetensors file and give its layout, without reading tensor data.
///
/// The checks are those of merge and export (the `safetensors` crate's): header length within the
/// file and at most 100 MB, UTF-8 JSON, known dtypes, non-negative shapes whose sizes match
/// `data_offsets`, tensors that tile the data section with no gap, overlap or trailing bytes.
///
/// Args:
///     path (str): the `.safetensors` file.
/// Returns:
///     tuple[dict[str, str], list[tuple[str, str, list[int], int, int]]]: the `__metadata__` map,
///     and in data order each tensor's name, dtype (`F32`, `BF16`, `U8`, `I64`, ...), shape and
///     absolute byte range `[start, end)` in the file.
/// Raises:
///     DataError: not a valid safetensors file (the message names the file and the defect).
///     OSError: the file cannot be read.
#[pyfunction]
pub fn safetensors_layout(py: Python<'_>, path: PathBuf) -> PyResult<(BTreeMap<String, String>, Vec<TensorLayout>)> {
    let file = py.detach(|| SafetensorsFile::open_any(&path)).map_err(|e| to_pyerr(py, e))?;
    let base = file.data_start();
    let typed = file.tensors.iter().map(|t| (&t.name, t.dtype.safetensors_name(), &t.shape, t.range));
    let others = file.others.iter().map(|t| (&t.name, t.dtype.as_str(), &t.shape, t.range));
    let mut layout: Vec<TensorLayout> = typed
        .chain(others)
        .map(|(name, dtype, shape, (start, end))| (name.clone(), dtype.to_string(), shape.clone(), base + start, base + end))
        .collect();
    layout.sort_by_key(|t| t.3);
    Ok((file.metadata.clone(), layout))
}

/// The safetensors files of a model directory, as merge and export read them.
///
/// With `model.safetensors.index.json`: the distinct files of its `weight_map`, sorted, each a
/// plain relative name inside `model_dir` (no `..`, no absolute path) that exists. Without an
/// index: `model.safetensors`.
///
/// Args:
///     model_dir (str): the model directory.
/// Returns:
///     list[str]: the shard paths (`model_dir` joined with each name).
/// Raises:
///     DataError: a malformed index, a shard outside `model_dir` or missing, or neither
///         `model.safetensors` nor an index (the message names the index or the directory).
///     OSError: the index cannot be read.
#[pyfunction]
pub fn safetensors_model_files(py: Python<'_>, model_dir: PathBuf) -> PyResult<Vec<PathBuf>> {
    py.detach(|| model_files(&model_dir)).map_err(|e| to_pyerr(py, e))
}
