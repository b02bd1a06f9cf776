//! The serialized quant state of one NF4 weight, as bitsandbytes' `QuantState.as_dict(packed=True)`
//! writes it and transformers loads it (spec `nf4.md` §4.1).
//!
//! Tensors per quantized weight `<m>.weight`: the packed bytes under the weight's own name, then
//! `<m>.weight.absmax` (f32 scales, or u8 codes with double quantization), `.quant_map` (the 16
//! NF4 values), with double quantization `.nested_absmax` and `.nested_quant_map` (CODE8), and
//! `.quant_state.bitsandbytes__nf4`: a UTF-8 JSON blob exactly as Python's `json.dumps` writes it.

use serde_json::Value;

use crate::data::template::pyrepr::float_repr;
use crate::error::{Error, Result};
use crate::nf4::double_quant::NESTED_BLOCKSIZE;
use crate::nf4::quantize::Nf4Layout;
use crate::tensor::DType;

/// Suffix (after `<weight name>.`) of the JSON blob tensor.
pub const BLOB_SUFFIX: &str = "quant_state.bitsandbytes__nf4";

/// Suffixes of the quant-state tensors, in the order bitsandbytes writes them.
pub const STATE_SUFFIXES: [&str; 5] = ["absmax", "quant_map", "nested_absmax", "nested_quant_map", BLOB_SUFFIX];

/// What the JSON blob records about one NF4 weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Meta {
    /// Elements per block.
    pub blocksize: usize,
    /// The original weight's dtype (what dequantization casts back to).
    pub dtype: DType,
    /// The original weight's shape.
    pub shape: Vec<usize>,
    /// The subtracted mean of the block scales when they are double-quantized.
    pub nested_offset: Option<f32>,
}

impl Nf4Meta {
    /// The layout (element count and block size).
    pub fn layout(&self) -> Result<Nf4Layout> {
        Nf4Layout::new(self.shape.iter().product(), self.blocksize)
    }

    /// The blob bytes: `json.dumps` of bitsandbytes' dict, keys in its order, default separators,
    /// the offset widened to f64 and printed as Python's `repr`.
    pub fn to_json(&self) -> String {
        let shape: Vec<String> = self.shape.iter().map(usize::to_string).collect();
        let mut s = format!(
            "{{\"quant_type\": \"nf4\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
            self.blocksize,
            self.dtype.torch_name(),
            shape.join(", ")
        );
        if let Some(offset) = self.nested_offset {
            s.push_str(&format!(
                ", \"nested_blocksize\": {NESTED_BLOCKSIZE}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
                float_repr(f64::from(offset))
            ));
        }
        s.push('}');
        s
    }

    /// Parse a blob; `what` names the tensor in errors.
    pub fn parse(blob: &[u8], what: &str) -> Result<Nf4Meta> {
        let bad = |why: String| Error::Option(format!("{what}: {why}"));
        let v: Value = serde_json::from_slice(blob).map_err(|e| bad(format!("not a JSON quant state ({e})")))?;
        let quant_type = v.get("quant_type").and_then(Value::as_str).unwrap_or("");
        if quant_type != "nf4" {
            return Err(bad(format!("quant_type `{quant_type}` is not supported (pyft reads nf4)")));
        }
        let blocksize = v.get("blocksize").and_then(Value::as_u64).ok_or_else(|| bad("no integer `blocksize`".into()))?;
        let dtype = v.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("no `dtype`".into()))?;
        let dtype = DType::from_name(dtype).map_err(|e| bad(e.to_string()))?;
        let shape = v
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| bad("no integer list `shape`".into()))?;
        let nested_offset = match v.get("nested_offset") {
            None | Some(Value::Null) => None,
            Some(o) => Some(o.as_f64().ok_or_else(|| bad("`nested_offset` is not a number".into()))? as f32),
        };
        if nested_offset.is_some() {
            let nb = v.get("nested_blocksize").and_then(Value::as_u64);
            if nb != Some(NESTED_BLOCKSIZE as u64) {
                return Err(bad(format!("nested_blocksize {nb:?} is not supported (expected 256)")));
            }
        }
        let meta = Nf4Meta { blocksize: blocksize as usize, dtype, shape, nested_offset };
        meta.layout().map_err(|e| bad(e.to_string()))?;
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_matches_bitsandbytes() {
        // spec nf4.md §5 B and §4.1.
        let meta = Nf4Meta { blocksize: 64, dtype: DType::BF16, shape: vec![8], nested_offset: Some(f32::from_bits(0x3c8e_0000)) };
        let want = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [8], \
                    \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.017333984375}";
        assert_eq!(meta.to_json(), want);
        assert_eq!(Nf4Meta::parse(want.as_bytes(), "w").unwrap(), meta);
        let plain = Nf4Meta { blocksize: 64, dtype: DType::F32, shape: vec![4096, 4096], nested_offset: None };
        assert_eq!(plain.to_json(), "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [4096, 4096]}");
        let tiny = Nf4Meta { nested_offset: Some(5.2e-5), ..plain };
        assert!(tiny.to_json().ends_with("\"nested_offset\": 5.199999941396527e-05}"));
    }

    #[test]
    fn bad_blobs_are_named() {
        for blob in ["{", "{\"quant_type\": \"fp4\"}", "{\"quant_type\": \"nf4\", \"blocksize\": 48, \"dtype\": \"float32\", \"shape\": [4]}"] {
            let e = Nf4Meta::parse(blob.as_bytes(), "model.layers.0.q_proj.weight").unwrap_err().to_string();
            assert!(e.contains("model.layers.0.q_proj.weight"), "{e}");
        }
    }
}
