//! A bitsandbytes 4-bit checkpoint read back as 16-bit weights, for merging and export.
//!
//! [`check_config`] tells an NF4 base from a dense one by `config.json`'s `quantization_config`
//! and refuses every other quantization by name (FP4, 8-bit, other methods). [`find_weights`]
//! gathers, across all shards, each quantized weight's packed bytes and quant state (spec `nf4.md`
//! §4.1; `bnb_4bit_quant_storage` other than uint8 only reinterprets the same bytes, §2.2) and
//! checks every piece against the JSON blob before anything is read. [`Nf4Weight::dequantize_into`]
//! then gives any range of elements exactly as `bitsandbytes.functional.dequantize_4bit` returns
//! them (§3.3: f32 `NF4[code] · absmax`, double-quantized scales rebuilt with two roundings, one
//! rounding to the recorded dtype), so a consumer streams rows and never holds the model.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::safetensors::SafetensorsFile;
use crate::nf4::dequant::{dequantize_into, rebuild_absmax};
use crate::nf4::double_quant::NESTED_BLOCKSIZE;
use crate::nf4::state::{Nf4Meta, BLOB_SUFFIX};
use crate::tensor::{round_to_dtype, to_f32, DType};

/// The quant-state blob prefix every bitsandbytes 4-bit type shares (`…__nf4`, `…__fp4`).
const ANY_BLOB: &str = "quant_state.bitsandbytes__";

fn file_err(path: &Path, message: String) -> Error {
    Error::File { path: path.to_path_buf(), message }
}

/// Whether `config` (read from `path`) describes a bitsandbytes NF4 checkpoint: `Ok(false)` without
/// a `quantization_config`, `Ok(true)` for 4-bit bitsandbytes with `bnb_4bit_quant_type` `nf4` (or
/// unset: the quant-state blobs then decide), an error naming the setting for anything else.
pub fn check_config(config: &Value, path: &Path) -> Result<bool> {
    let qc = match config.get("quantization_config") {
        None | Some(Value::Null) => return Ok(false),
        Some(qc) => qc,
    };
    let flag = |key: &str| qc.get(key).and_then(Value::as_bool) == Some(true);
    let is_bnb = qc.get("load_in_4bit").is_some() || qc.get("load_in_8bit").is_some();
    let method = qc.get("quant_method").and_then(Value::as_str).unwrap_or(if is_bnb { "bitsandbytes" } else { "" });
    if method != "bitsandbytes" {
        return Err(file_err(path, format!(
            "`quantization_config.quant_method` is `{method}`: pyft merges and exports float (F32/F16/BF16) \
             bases and bitsandbytes NF4 bases only")));
    }
    if flag("load_in_8bit") || flag("_load_in_8bit") {
        return Err(file_err(path, "`quantization_config.load_in_8bit` is true: 8-bit bitsandbytes (LLM.int8) \
                                   bases are not supported; pyft dequantizes NF4 4-bit bases only".into()));
    }
    if !(flag("load_in_4bit") || flag("_load_in_4bit")) {
        return Err(file_err(path, "`quantization_config` sets neither `load_in_4bit` nor `load_in_8bit`: \
                                   not a bitsandbytes checkpoint pyft can read".into()));
    }
    match qc.get("bnb_4bit_quant_type").and_then(Value::as_str) {
        None | Some("nf4") => Ok(true),
        Some(other) => Err(file_err(path, format!(
            "`quantization_config.bnb_4bit_quant_type` is `{other}`: pyft dequantizes NF4 only, not {other}"))),
    }
}

/// One tensor of a checkpoint, whatever its type: where its bytes are.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    file: usize,
    name: String,
    /// The safetensors type name (`U8`, `F32`, `BF16`, …).
    dtype: String,
    shape: Vec<usize>,
    range: (usize, usize),
}

impl Part {
    fn bytes<'a>(&self, files: &'a [SafetensorsFile]) -> &'a [u8] {
        files[self.file].range_bytes(self.range)
    }

    /// An error naming this tensor and its file.
    fn err(&self, files: &[SafetensorsFile], message: String) -> Error {
        file_err(files[self.file].path(), format!("`{}`: {message}", self.name))
    }

    /// Check the type and shape, naming what the quant state of `weight` needs.
    fn expect(&self, files: &[SafetensorsFile], dtype: &str, shape: &[usize], weight: &str) -> Result<()> {
        if self.dtype != dtype || self.shape != shape {
            return Err(self.err(files, format!(
                "is {} {:?}, but the quant state of `{weight}` needs {dtype} {shape:?}", self.dtype, self.shape)));
        }
        Ok(())
    }
}

/// One NF4-quantized weight of a checkpoint: its recorded dtype and shape and where its packed
/// codes and (double-quantized) block scales are, checked against each other.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Weight {
    /// The weight's name (`model.layers.0.self_attn.q_proj.weight`), also the packed tensor's.
    pub name: String,
    /// What the JSON blob records: original dtype and shape, block size, nested offset.
    pub meta: Nf4Meta,
    packed: Part,
    absmax: Part,
    /// `(nested_absmax, nested_quant_map)` with double quantization.
    nested: Option<(Part, Part)>,
    /// Every tensor of the quant state (for page release).
    state: Vec<Part>,
}

impl Nf4Weight {
    /// The f32 block scales (`ceil(n / blocksize)`), rebuilt from their double quantization as
    /// `fp32(fp32(CODE8[q8] · nested_absmax) + offset)` when it is used.
    pub fn scales(&self, files: &[SafetensorsFile]) -> Result<Vec<f32>> {
        let absmax = self.absmax.bytes(files);
        match (&self.nested, self.meta.nested_offset) {
            (Some((nested_absmax, code)), Some(offset)) => {
                let nested = to_f32(nested_absmax.bytes(files), DType::F32);
                let code = to_f32(code.bytes(files), DType::F32);
                rebuild_absmax(absmax, &nested, &code, offset).map_err(|e| self.absmax.err(files, e.to_string()))
            }
            _ => Ok(to_f32(absmax, DType::F32)),
        }
    }

    /// Elements `first .. first + out.len()` of the weight (row-major in its recorded shape) as
    /// `dequantize_4bit` returns them, widened to f32: `NF4[code] · scales[block]` in f32, rounded
    /// once to the recorded dtype. `scales` comes from [`scales`](Self::scales).
    pub fn dequantize_into(&self, files: &[SafetensorsFile], scales: &[f32], first: usize, out: &mut [f32])
                           -> Result<()> {
        let layout = self.meta.layout()?;
        dequantize_into(self.packed.bytes(files), scales, layout, first, out)
            .map_err(|e| self.packed.err(files, e.to_string()))?;
        round_to_dtype(out, self.meta.dtype);
        Ok(())
    }

    /// Let the kernel drop the cached pages of the packed codes and the state.
    pub fn release(&self, files: &[SafetensorsFile]) {
        for p in std::iter::once(&self.packed).chain(&self.state) {
            files[p.file].release_range(p.range);
        }
    }
}

/// Every NF4 weight of a checkpoint's `files` (in any shard), and the names of all the tensors
/// they consist of (packed weights and quant state) so the caller can hide them.
///
/// Errors (each naming the tensor and its file): an FP4 or unknown quant-state blob, a blob that
/// is not NF4 JSON, a missing or mis-shaped piece (packed bytes, `absmax`, `quant_map`,
/// `nested_absmax`, `nested_quant_map`), state without a blob, state for double quantization in a
/// blob that records none.
pub fn find_weights(files: &[SafetensorsFile]) -> Result<(Vec<Nf4Weight>, HashSet<String>)> {
    let mut parts: HashMap<String, Part> = HashMap::new();
    for (fi, f) in files.iter().enumerate() {
        let floats = f.tensors.iter().map(|t| (&t.name, t.dtype.safetensors_name().to_string(), &t.shape, t.range));
        let others = f.others.iter().map(|t| (&t.name, t.dtype.clone(), &t.shape, t.range));
        for (name, dtype, shape, range) in floats.chain(others) {
            parts.insert(name.clone(), Part { file: fi, name: name.clone(), dtype, shape: shape.clone(), range });
        }
    }
    let mut blobs: Vec<&Part> = Vec::new();
    for p in parts.values() {
        if let Some(kind) = p.name.split_once(ANY_BLOB).map(|(_, kind)| kind) {
            if kind != "nf4" {
                return Err(p.err(files, format!("a bitsandbytes `{kind}` quant state: pyft dequantizes NF4 only")));
            }
            blobs.push(p);
        }
    }
    blobs.sort_by_key(|a| (a.file, a.range));
    let mut weights = Vec::new();
    let mut consumed = HashSet::new();
    for blob in blobs {
        let weight = blob.name.strip_suffix(&format!(".{BLOB_SUFFIX}")).unwrap_or(&blob.name).to_string();
        if blob.dtype != "U8" || blob.shape.len() != 1 {
            return Err(blob.err(files, format!("is {} {:?}, expected a U8 vector of JSON", blob.dtype, blob.shape)));
        }
        let meta = Nf4Meta::parse(blob.bytes(files), &blob.name).map_err(|e| match e {
            Error::Option(m) => file_err(files[blob.file].path(), m),
            e => e,
        })?;
        let layout = meta.layout().map_err(|e| blob.err(files, e.to_string()))?;
        let get = |suffix: &str| -> Result<Part> {
            let name = if suffix.is_empty() { weight.clone() } else { format!("{weight}.{suffix}") };
            parts.get(&name).cloned().ok_or_else(|| blob.err(files, format!(
                "the quant state of `{weight}` lacks tensor `{name}` (checked in every shard)")))
        };
        let packed = get("")?;
        let itemsize = match packed.dtype.as_str() {
            "U8" | "I8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "F32" | "I32" | "U32" => 4,
            "F64" | "I64" | "U64" => 8,
            _ => 0,
        };
        // The packed codes: `[(n + 1) / 2, 1]` bytes, or the same bytes viewed as the storage type.
        let bytes = packed.range.1 - packed.range.0;
        let column = matches!(packed.shape.as_slice(), [_, 1] | [_]);
        if itemsize == 0 || bytes != layout.packed_len() || !column {
            return Err(packed.err(files, format!(
                "packed NF4 data is {} {:?} ({bytes} bytes), but its quant state records shape {:?}, which \
                 needs {} bytes as a [k, 1] column", packed.dtype, packed.shape, meta.shape, layout.packed_len())));
        }
        let nb = layout.blocks();
        let absmax = get("absmax")?;
        let quant_map = get("quant_map")?;
        quant_map.expect(files, "F32", &[16], &weight)?;
        let nested = match meta.nested_offset {
            Some(_) => {
                absmax.expect(files, "U8", &[nb], &weight)?;
                let nested_absmax = get("nested_absmax")?;
                nested_absmax.expect(files, "F32", &[nb.div_ceil(NESTED_BLOCKSIZE)], &weight)?;
                let code = get("nested_quant_map")?;
                code.expect(files, "F32", &[256], &weight)?;
                Some((nested_absmax, code))
            }
            None => {
                absmax.expect(files, "F32", &[nb], &weight)?;
                if let Some(p) = ["nested_absmax", "nested_quant_map"].iter().find_map(|s| parts.get(&format!("{weight}.{s}"))) {
                    return Err(p.err(files, format!(
                        "double-quantization state, but the quant state of `{weight}` records no nested_offset")));
                }
                None
            }
        };
        let mut state = vec![(*blob).clone(), absmax.clone(), quant_map];
        if let Some((a, c)) = &nested {
            state.extend([a.clone(), c.clone()]);
        }
        consumed.insert(packed.name.clone());
        consumed.extend(state.iter().map(|p| p.name.clone()));
        weights.push(Nf4Weight { name: weight, meta, packed, absmax, nested, state });
    }
    // State left over: a weight whose blob is missing.
    let mut orphans: Vec<&Part> = parts.values().filter(|p| !consumed.contains(&p.name)).filter(|p| {
        ["absmax", "quant_map", "nested_absmax", "nested_quant_map"].iter().any(|s| {
            p.name.strip_suffix(&format!(".{s}")).is_some_and(|w| parts.contains_key(w))
        })
    }).collect();
    orphans.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(p) = orphans.first() {
        let weight = p.name.rsplit_once('.').map_or("", |(w, _)| w);
        return Err(p.err(files, format!(
            "quant state of `{weight}`, but `{weight}.{BLOB_SUFFIX}` (its JSON blob) is missing")));
    }
    Ok((weights, consumed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configs_are_told_apart_by_their_settings() {
        let p = Path::new("config.json");
        let nf4 = json!({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true,
                                                 "bnb_4bit_quant_type": "nf4"}});
        assert!(check_config(&nf4, p).unwrap());
        assert!(!check_config(&json!({"dtype": "bfloat16"}), p).unwrap());
        for (qc, needle) in [
            (json!({"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "fp4"}),
             "`quantization_config.bnb_4bit_quant_type` is `fp4`"),
            (json!({"quant_method": "bitsandbytes", "load_in_8bit": true, "load_in_4bit": false}),
             "`quantization_config.load_in_8bit` is true"),
            (json!({"quant_method": "gptq", "bits": 4}), "`quantization_config.quant_method` is `gptq`"),
            (json!({"quant_method": "bitsandbytes"}), "neither `load_in_4bit`"),
        ] {
            let e = check_config(&json!({"quantization_config": qc}), p).unwrap_err().to_string();
            assert!(e.starts_with("config.json: ") && e.contains(needle), "{e}");
        }
    }
}
