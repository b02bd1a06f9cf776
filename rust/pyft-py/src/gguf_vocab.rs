//! Binding of `pyft_core::gguf::vocab`: the `tokenizer.*` GGUF metadata of a model directory.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyft_core::gguf::vocab::{tokenizer_metadata, VocabOptions};
use pyft_core::gguf::reader::{gguf_type_name, value_json};
use pyft_core::gguf::GgufValue;
use serde_json::{json, Value};

use crate::error::to_pyerr;

/// The `tokenizer.*` GGUF metadata llama.cpp's converter would write for a model directory.
///
/// Args:
///     model_dir (str): HF model directory (config.json + tokenizer files).
///     arch (str): ``llama`` or ``qwen2``.
///     pre (str | None): ``tokenizer.ggml.pre`` for a tokenizer llama.cpp's hash table does not know.
///     base_dir (str | None): base model directory whose tokenizer's pre-tokenizer may be reused.
/// Returns:
///     tuple[str, list[str]]: JSON ``{"kvs": [{"key", "type", "subtype", "value"}], "pre",
///     "end_of_turn_ids"}`` (types are gguf-py ``GGUFValueType`` names), and the warnings.
#[pyfunction]
#[pyo3(signature = (model_dir, arch, pre=None, base_dir=None))]
pub fn gguf_tokenizer_metadata(py: Python<'_>, model_dir: PathBuf, arch: &str, pre: Option<String>,
                               base_dir: Option<PathBuf>) -> PyResult<(String, Vec<String>)> {
    let opts = VocabOptions { pre_override: pre, base_dir };
    let meta = py.detach(|| tokenizer_metadata(&model_dir, arch, &opts)).map_err(|e| to_pyerr(py, e))?;
    let kvs: Vec<Value> = meta
        .kvs
        .iter()
        .map(|(k, v)| {
            let sub = match v {
                GgufValue::Array(a) => gguf_type_name(a.element_type_id()),
                _ => None,
            };
            json!({"key": k, "type": gguf_type_name(v.type_id()), "subtype": sub, "value": value_json(v)})
        })
        .collect();
    let out = json!({"kvs": kvs, "pre": meta.pre, "end_of_turn_ids": meta.end_of_turn_ids});
    Ok((out.to_string(), meta.warnings))
}
