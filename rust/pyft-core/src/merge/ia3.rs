//! (IA)³ adapters in PEFT's format (`peft_type: IA3`), and their merge.
//!
//! Each adapted linear module `<module>` has one learned vector `base_model.model.<module>.ia3_l`:
//! - a feedforward module (`feedforward_modules`, matched as PEFT does: a string is a regular
//!   expression the whole module name must match, a list matches names that *end with* an entry,
//!   with no dot required) scales the layer's input: `ia3_l` is `[1, in]` and merging multiplies
//!   every column `i` of `W [out, in]` by `l[i]`; the bias is left alone;
//! - any other target scales the output: `ia3_l` is `[out, 1]`, merging multiplies row `o` of `W`
//!   and the bias element `o` by `l[o]`.
//!
//! As PEFT's `merge_and_unload` (`torch.mul(W, l).to(W.dtype)` with `l` in float32), each product is
//! computed in f32 and rounded once to the output dtype by the caller.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::safetensors::TensorInfo;
use crate::merge::adapter::{check_unsupported, split_tensors, PeftTensors};

/// The tensor suffix of an (IA)³ vector.
pub const SUFFIX: &str = ".ia3_l";

/// The (IA)³ vector of one adapted module.
#[derive(Debug, Clone)]
pub struct Ia3Module {
    /// `ia3_l`: `[1, in]` (feedforward) or `[out, 1]`.
    pub l: TensorInfo,
    /// Whether the module is a feedforward module per `feedforward_modules`; `None` when the config
    /// does not say (the vector's shape decides then).
    pub feedforward: Option<bool>,
}

/// A PEFT IA3 adapter directory, opened for merging.
#[derive(Debug)]
pub struct Ia3Adapter {
    /// The file, `modules_to_save` copies and saved embedding base weights.
    pub tensors: PeftTensors,
    /// Adapted modules by module path.
    pub modules: BTreeMap<String, Ia3Module>,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), message: message.into() }
}

/// `feedforward_modules` of an IA3 config, as PEFT matches it.
#[derive(Debug, Clone)]
pub enum Feedforward {
    /// Absent or null: decided per module by the vector's shape.
    Unknown,
    /// A regular expression the whole module name must match.
    Regex(regex::Regex),
    /// Names a module name must end with (PEFT's `key.endswith(target)`).
    Suffixes(Vec<String>),
}

impl Feedforward {
    /// Read `feedforward_modules` from `cfg` (the config at `path`).
    pub fn from_config(cfg: &Value, path: &Path) -> Result<Feedforward> {
        match &cfg["feedforward_modules"] {
            Value::Null => Ok(Feedforward::Unknown),
            Value::String(s) => regex::Regex::new(&format!("^(?:{s})$")).map(Feedforward::Regex).map_err(|e| {
                bad(path, format!("field `feedforward_modules` is not a valid regular expression: {e}"))
            }),
            Value::Array(items) => items.iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Feedforward::Suffixes)
                .ok_or_else(|| bad(path, "field `feedforward_modules` must be a string or an array of strings")),
            other => Err(bad(path, format!(
                "field `feedforward_modules` must be a string or an array of strings, got {other}"))),
        }
    }

    /// Whether `module` is a feedforward module; `None` when the config does not say.
    pub fn matches(&self, module: &str) -> Option<bool> {
        match self {
            Feedforward::Unknown => None,
            Feedforward::Regex(re) => Some(re.is_match(module)),
            Feedforward::Suffixes(s) => Some(s.iter().any(|t| module.ends_with(t.as_str()))),
        }
    }
}

impl Ia3Adapter {
    /// Open the IA3 adapter in `dir` whose `adapter_config.json` (`cfg_path`) holds `cfg`.
    pub fn from_config(dir: &Path, cfg_path: &Path, cfg: &Value) -> Result<Ia3Adapter> {
        check_unsupported(cfg, cfg_path)?;
        let feedforward = Feedforward::from_config(cfg, cfg_path)?;
        let tensors = split_tensors(dir, &[SUFFIX], "ia3_")?;
        let modules = tensors.modules.iter()
            .map(|(m, (_, t))| (m.clone(), Ia3Module { l: t.clone(), feedforward: feedforward.matches(m) }))
            .collect();
        Ok(Ia3Adapter { tensors, modules })
    }

    /// Whether `module` (whose base weight has `weight_shape`) scales its input (`true`) or its
    /// output (`false`), checking that its vector has the shape that needs.
    pub fn resolve(&self, module: &str, weight_shape: &[usize]) -> Result<bool> {
        let m = &self.modules[module];
        let &[out, inp] = weight_shape else {
            return Err(bad(&self.tensors.dir, format!(
                "adapted module `{module}` has a weight of shape {weight_shape:?}: IA3 merges into linear layers only")));
        };
        let fits = |ff: bool| m.l.shape == expected_shape(out, inp, ff);
        match m.feedforward {
            Some(ff) if fits(ff) => Ok(ff),
            None if fits(true) || fits(false) => Ok(fits(true)),
            ff => {
                let wanted = match ff {
                    Some(ff) => format!("{} (it is {}a feedforward module)", shape_text(expected_shape(out, inp, ff)),
                                        if ff { "" } else { "not " }),
                    None => format!("{} or {}", shape_text(expected_shape(out, inp, true)),
                                    shape_text(expected_shape(out, inp, false))),
                };
                Err(bad(&self.tensors.dir, format!(
                    "`{}` has shape {:?} but the base weight `{module}.weight` {weight_shape:?} needs {wanted}: the \
                     adapter was trained on a different base model, or `feedforward_modules` does not match it",
                    m.l.name, m.l.shape)))
            }
        }
    }
}

fn shape_text(s: [usize; 2]) -> String {
    format!("[{}, {}]", s[0], s[1])
}

/// The shape of `ia3_l` for a weight `[out, in]`: `[1, in]` for a feedforward module, else `[out, 1]`.
pub fn expected_shape(out: usize, inp: usize, feedforward: bool) -> [usize; 2] {
    if feedforward { [1, inp] } else { [out, 1] }
}

/// Multiply each row `o` of `values` (`[n, width]`, row-major) by `factors[o]` (an output-scaling
/// merge of a weight, or of a bias with `width` 1).
pub fn scale_rows(values: &mut [f32], width: usize, factors: &[f32]) {
    if width == 0 {
        return;
    }
    for (row, &f) in values.chunks_exact_mut(width).zip(factors) {
        row.iter_mut().for_each(|w| *w *= f);
    }
}

/// Multiply column `i` of every row of `values` (`[n, factors.len()]`) by `factors[i]` (a
/// feedforward merge).
pub fn scale_columns(values: &mut [f32], factors: &[f32]) {
    if factors.is_empty() {
        return;
    }
    for row in values.chunks_exact_mut(factors.len()) {
        row.iter_mut().zip(factors).for_each(|(w, &f)| *w *= f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::{PlannedTensor, StreamWriter};
    use crate::tensor::{from_f32, DType};
    use serde_json::json;

    #[test]
    fn peft_feedforward_matching() {
        let p = Path::new("c.json");
        let list = Feedforward::from_config(&json!({"feedforward_modules": ["down_proj"]}), p).unwrap();
        assert_eq!(list.matches("model.layers.0.mlp.down_proj"), Some(true));
        assert_eq!(list.matches("model.layers.0.mlp.xdown_proj"), Some(true)); // endswith, no dot (as PEFT)
        assert_eq!(list.matches("model.layers.0.self_attn.k_proj"), Some(false));
        let re = Feedforward::from_config(&json!({"feedforward_modules": ".*mlp\\.(down|up)_proj"}), p).unwrap();
        assert_eq!(re.matches("model.layers.3.mlp.up_proj"), Some(true));
        assert_eq!(re.matches("model.layers.3.mlp.up_proj.x"), Some(false)); // the whole name must match
        assert_eq!(Feedforward::from_config(&json!({}), p).unwrap().matches("x"), None);
        assert!(Feedforward::from_config(&json!({"feedforward_modules": [1]}), p).is_err());
        assert!(Feedforward::from_config(&json!({"feedforward_modules": "("}), p).is_err());
    }

    #[test]
    fn row_and_column_scaling() {
        let mut w = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
        scale_rows(&mut w, 3, &[2.0, -1.0]);
        assert_eq!(w, vec![2.0, 4.0, 6.0, -4.0, -5.0, -6.0]);
        scale_columns(&mut w, &[1.0, 0.5, 0.0]);
        assert_eq!(w, vec![2.0, 2.0, 0.0, -4.0, -2.5, -0.0]);
        let mut bias = vec![1.0, 1.0];
        scale_rows(&mut bias, 1, &[3.0, 4.0]);
        assert_eq!(bias, vec![3.0, 4.0]);
    }

    #[test]
    fn open_and_resolve() {
        let dir = std::env::temp_dir().join(format!("pyft-ia3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = json!({"peft_type": "IA3", "feedforward_modules": ["down_proj"]});
        std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
        let names = ["base_model.model.l.mlp.down_proj.ia3_l", "base_model.model.l.attn.k_proj.ia3_l",
                     "base_model.model.lm_head.weight"];
        let shapes = [vec![1, 3], vec![2, 1], vec![4, 2]];
        let plan = names.iter().zip(&shapes)
            .map(|(n, s)| PlannedTensor { name: n.to_string(), dtype: DType::F32, shape: s.clone() }).collect();
        let mut w = StreamWriter::create(&dir.join("adapter_model.safetensors"), plan).unwrap();
        for (n, s) in names.iter().zip(&shapes) {
            w.write(n, &from_f32(&vec![1.0; s.iter().product()], DType::F32)).unwrap();
        }
        w.finish().unwrap();
        let ad = Ia3Adapter::from_config(&dir, &dir.join("adapter_config.json"), &cfg).unwrap();
        assert_eq!(ad.modules.len(), 2);
        assert!(ad.tensors.saved.contains_key("lm_head.weight"));
        assert!(ad.resolve("l.mlp.down_proj", &[2, 3]).unwrap());
        assert!(!ad.resolve("l.attn.k_proj", &[2, 3]).unwrap());
        let e = ad.resolve("l.mlp.down_proj", &[3, 4]).unwrap_err().to_string();
        assert!(e.contains("`base_model.model.l.mlp.down_proj.ia3_l` has shape [1, 3]") && e.contains("needs [1, 4]"),
                "{e}");
        assert!(ad.resolve("l.attn.k_proj", &[2, 3, 1]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
