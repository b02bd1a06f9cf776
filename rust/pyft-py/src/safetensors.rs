//! Binding of `pyft_core::io::safetensors` for the Python readers that fill torch tensors
//! themselves (`pyft.io.shards`, behind `pyft quantize` and the NF4 loader): the validated layout
//! of a file, so Python never trusts a header it parsed on its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyft_core::io::safetensors::SafetensorsFile;

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
