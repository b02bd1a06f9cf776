//! Binding of `pyft_core::merge`: stream adapters into a base model.

use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyft_core::merge::{merge_model, AdapterInput, Combine, MergeOptions};
use pyft_core::tensor::DType;
use pyft_core::Error;

use crate::error::to_pyerr;

/// Merge PEFT adapters (LoRA family; or one IA3 or OFT adapter) into a base model directory, tensor
/// by tensor; prompt/prefix tuning and bottleneck adapters are refused. A bitsandbytes NF4 base
/// is dequantized (as `dequantize_4bit`) and written 16-bit, never re-quantized.
///
/// Args:
///     base (str): base model directory. adapters (list[str]): adapter directories (may be empty).
///     out (str): output directory.
///     weights (list[float] | None): one weight per adapter (default 1.0 each).
///     method (str): linear, ties, dare_linear, dare_ties or svd. density (float | None): kept fraction
///     (ties/dare only). seed (int): DARE seed. svd_rank (int | None): svd output rank.
///     dtype (str | None): fp32/fp16/bf16, or None to keep each tensor's dtype.
///     max_shard_bytes (int): largest shard file. overwrite (bool): replace `out`.
///     extra_files (dict[str, bytes] | None): files written into `out`, replacing copied ones.
/// Returns:
///     str: a JSON report (tensors, merged_modules, replaced, shards, total_bytes, dequantized_nf4,
///     nf4_written_as).
#[pyfunction]
#[pyo3(signature = (base, adapters, out, *, weights=None, method="linear", density=None, seed=0, svd_rank=None,
                    dtype=None, max_shard_bytes=5_000_000_000, overwrite=false, extra_files=None))]
#[allow(clippy::too_many_arguments)]
pub fn merge(py: Python<'_>, base: PathBuf, adapters: Vec<PathBuf>, out: PathBuf, weights: Option<Vec<f32>>,
             method: &str, density: Option<f32>, seed: u64, svd_rank: Option<usize>, dtype: Option<&str>,
             max_shard_bytes: usize, overwrite: bool, extra_files: Option<HashMap<String, Vec<u8>>>)
             -> PyResult<String> {
    let dtype = dtype.map(DType::from_name).transpose().map_err(|e| to_pyerr(py, e))?;
    let method = Combine::from_name(method, density, seed, svd_rank).map_err(|e| to_pyerr(py, e))?;
    let weights = weights.unwrap_or_else(|| vec![1.0; adapters.len()]);
    if weights.len() != adapters.len() {
        let e = Error::Option(format!("{} weights for {} adapters", weights.len(), adapters.len()));
        return Err(to_pyerr(py, e));
    }
    let adapters = adapters.into_iter().zip(weights).map(|(dir, weight)| AdapterInput { dir, weight }).collect();
    let mut extra_files: Vec<(String, Vec<u8>)> = extra_files.unwrap_or_default().into_iter().collect();
    extra_files.sort();
    let opts = MergeOptions { base, adapters, method, out, dtype, max_shard_bytes, overwrite, extra_files };
    let report = py.detach(|| merge_model(&opts)).map_err(|e| to_pyerr(py, e))?;
    Ok(serde_json::to_string(&report).unwrap_or_default())
}
