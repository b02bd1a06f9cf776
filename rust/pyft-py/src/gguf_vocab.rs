//! Binding of `pyft_core::gguf::vocab`: the `tokenizer.*` GGUF metadata of a model directory.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyft_core::gguf::vocab::{tokenizer_metadata, VocabOptions};
use pyft_core::gguf::{GgufArray, GgufValue};
use serde_json::{json, Value};

use crate::error::to_pyerr;

/// gguf-py's `GGUFValueType` name of a value, and of an array's elements.
fn type_names(v: &GgufValue) -> (&'static str, Option<&'static str>) {
    let scalar = match v {
        GgufValue::U8(_) => "UINT8",
        GgufValue::I8(_) => "INT8",
        GgufValue::U16(_) => "UINT16",
        GgufValue::I16(_) => "INT16",
        GgufValue::U32(_) => "UINT32",
        GgufValue::I32(_) => "INT32",
        GgufValue::F32(_) => "FLOAT32",
        GgufValue::Bool(_) => "BOOL",
        GgufValue::String(_) => "STRING",
        GgufValue::U64(_) => "UINT64",
        GgufValue::I64(_) => "INT64",
        GgufValue::F64(_) => "FLOAT64",
        GgufValue::Array(a) => {
            let sub = match a {
                GgufArray::U8(_) => "UINT8",
                GgufArray::I8(_) => "INT8",
                GgufArray::U16(_) => "UINT16",
                GgufArray::I16(_) => "INT16",
                GgufArray::U64(_) => "UINT64",
                GgufArray::I64(_) => "INT64",
                GgufArray::F64(_) => "FLOAT64",
                GgufArray::I32(_) => "INT32",
                GgufArray::U32(_) => "UINT32",
                GgufArray::F32(_) => "FLOAT32",
                GgufArray::String(_) => "STRING",
                GgufArray::Bool(_) => "BOOL",
            };
            return ("ARRAY", Some(sub));
        }
    };
    (scalar, None)
}

fn value_json(v: &GgufValue) -> Value {
    match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::F32(x) => json!(f64::from(*x)),
        GgufValue::Bool(x) => json!(x),
        GgufValue::String(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F64(x) => json!(x),
        GgufValue::Array(GgufArray::U8(a)) => json!(a),
        GgufValue::Array(GgufArray::I8(a)) => json!(a),
        GgufValue::Array(GgufArray::U16(a)) => json!(a),
        GgufValue::Array(GgufArray::I16(a)) => json!(a),
        GgufValue::Array(GgufArray::U64(a)) => json!(a),
        GgufValue::Array(GgufArray::I64(a)) => json!(a),
        GgufValue::Array(GgufArray::F64(a)) => json!(a),
        GgufValue::Array(GgufArray::I32(a)) => json!(a),
        GgufValue::Array(GgufArray::U32(a)) => json!(a),
        GgufValue::Array(GgufArray::F32(a)) => json!(a.iter().map(|x| f64::from(*x)).collect::<Vec<_>>()),
        GgufValue::Array(GgufArray::String(a)) => json!(a),
        GgufValue::Array(GgufArray::Bool(a)) => json!(a),
    }
}

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
            let (ty, sub) = type_names(v);
            json!({"key": k, "type": ty, "subtype": sub, "value": value_json(v)})
        })
        .collect();
    let out = json!({"kvs": kvs, "pre": meta.pre, "end_of_turn_ids": meta.end_of_turn_ids});
    Ok((out.to_string(), meta.warnings))
}
