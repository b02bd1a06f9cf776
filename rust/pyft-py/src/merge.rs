//! Binding of `pyft_core::merge`: stream an adapter into a base model.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyft_core::merge::{merge_model, MergeOptions};
use pyft_core::tensor::DType;

use crate::error::to_pyerr;

/// Merge a PEFT LoRA adapter into a base model directory, tensor by tensor.
///
/// Args:
///     base (str): base model directory. adapter (str): adapter directory. out (str): output directory.
///     dtype (str | None): fp32/fp16/bf16, or None to keep each tensor's dtype.
///     max_shard_bytes (int): largest shard file. overwrite (bool): replace `out`.
/// Returns:
///     str: a JSON report (tensors, merged_modules, replaced, shards, total_bytes).
#[pyfunction]
#[pyo3(signature = (base, adapter, out, *, dtype=None, max_shard_bytes=5_000_000_000, overwrite=false))]
pub fn merge(py: Python<'_>, base: PathBuf, adapter: PathBuf, out: PathBuf, dtype: Option<&str>,
             max_shard_bytes: usize, overwrite: bool) -> PyResult<String> {
    let dtype = dtype.map(DType::from_name).transpose().map_err(|e| to_pyerr(py, e))?;
    let opts = MergeOptions { base, adapter, out, dtype, max_shard_bytes, overwrite };
    let report = py.detach(|| merge_model(&opts)).map_err(|e| to_pyerr(py, e))?;
    Ok(serde_json::to_string(&report).unwrap_or_default())
}
