//! Which kind of adapter a directory holds, and whether it can be merged at all.
//!
//! `adapter_config.json`'s `peft_type` picks the reader: `LORA` ([`super::lora`]), `IA3`
//! ([`super::ia3`]) and `OFT` ([`super::oft`]) change existing weights and fold into them. The
//! methods that add activations or tokens instead — prompt tuning, P-tuning, prefix tuning (and
//! P-tuning v2), bottleneck adapters (pyft's `PYFT_BOTTLENECK`, AdapterHub's layout) — have no
//! weight to fold: they are refused by [`classify`] with what works instead. Every other PEFT type
//! is refused as not supported.
//!
//! [`split_tensors`] sorts the tensors of a PEFT adapter file (IA3, OFT) into per-module adapter
//! tensors, whole-module copies (`modules_to_save`) and saved base weights of adapted embeddings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::safetensors::{SafetensorsFile, TensorInfo};
use crate::merge::ia3::Ia3Adapter;
use crate::merge::lora::LoraAdapter;
use crate::merge::oft::OftAdapter;

/// The prefix of every tensor name in a PEFT adapter file of a transformers model.
pub(crate) const PREFIX: &str = "base_model.model.";

/// The kinds of adapter that merge into the base weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// LoRA, rsLoRA, DoRA (`W + s·BA`).
    Lora,
    /// (IA)³ (`W ⊙ l`, learned scaling of inputs or outputs).
    Ia3,
    /// OFT (`W Rᵀ`, block-diagonal orthogonal `R` by the Cayley transform).
    Oft,
}

impl Kind {
    /// `peft_type` as PEFT writes it.
    pub fn peft_type(self) -> &'static str {
        match self {
            Kind::Lora => "LORA",
            Kind::Ia3 => "IA3",
            Kind::Oft => "OFT",
        }
    }
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), message: message.into() }
}

/// `dir/adapter_config.json`, read and checked to be a JSON object.
pub fn read_config(dir: &Path) -> Result<(PathBuf, Value)> {
    let path = dir.join("adapter_config.json");
    let text = crate::io::file::read_to_string(&path)?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| bad(&path, format!("malformed JSON: {e}")))?;
    if !cfg.is_object() {
        return Err(bad(&path, "not a JSON object (an adapter config is {\"peft_type\": ...})"));
    }
    Ok((path, cfg))
}

/// What a method that cannot be merged adds to the model, by `peft_type`; `None` for the others.
pub fn unmergeable_reason(peft_type: &str) -> Option<&'static str> {
    Some(match peft_type {
        "PROMPT_TUNING" | "MULTITASK_PROMPT_TUNING" | "CPT" => {
            "prompt tuning prepends learned virtual-token embeddings to the input"
        }
        "P_TUNING" => "P-tuning prepends virtual-token embeddings (made by its prompt encoder) to the input",
        "PREFIX_TUNING" => {
            "prefix tuning (and P-tuning v2) adds learned key/value vectors in front of every attention layer's keys \
             and values"
        }
        "ADAPTION_PROMPT" => "adaption prompts add learned, gated prompt tokens to the top attention layers",
        "PYFT_BOTTLENECK" => {
            "bottleneck adapters add new down-projection/non-linearity/up-projection modules to every layer"
        }
        _ => return None,
    })
}

/// The refusal of an adapter that cannot be merged: why, and what serves it instead.
pub fn unmergeable_message(peft_type: &str, reason: &str) -> String {
    format!(
        "a {peft_type} adapter cannot be merged or exported as merged weights: {reason}, which no change of the \
         base model's weights reproduces (there is no weight to fold it into). Serve the base model with the \
         adapter in transformers/PEFT (PeftModel.from_pretrained(base, adapter), or pyft generate/eval with the \
         adapter); vLLM and llama.cpp/Ollama do not load {peft_type} adapters. Mergeable adapters: LORA, IA3, OFT"
    )
}

/// Whether a config without `peft_type` is an AdapterHub (`adapters` library) adapter config.
fn is_adapterhub(cfg: &Value) -> bool {
    cfg.get("config").is_some_and(Value::is_object)
        || cfg["version"].as_str().is_some_and(|v| v.starts_with("adapters.") || v.starts_with("adapter-transformers"))
}

/// The kind of the adapter whose `adapter_config.json` (`path`) holds `cfg`, or the reason it does
/// not merge: the non-mergeable methods (with what to do instead), other PEFT types, no `peft_type`.
pub fn classify(cfg: &Value, path: &Path) -> Result<Kind> {
    let Some(peft_type) = cfg.get("peft_type").filter(|v| !v.is_null()) else {
        if is_adapterhub(cfg) {
            let reason = unmergeable_reason("PYFT_BOTTLENECK").unwrap_or_default();
            return Err(bad(path, unmergeable_message("bottleneck (AdapterHub)", reason)));
        }
        return Err(bad(path, "field `peft_type` is missing: not a PEFT adapter config (expected LORA, IA3 or OFT)"));
    };
    let Some(peft_type) = peft_type.as_str() else {
        return Err(bad(path, format!("field `peft_type` must be a string, got {peft_type}")));
    };
    match peft_type {
        "LORA" => Ok(Kind::Lora),
        "IA3" => Ok(Kind::Ia3),
        "OFT" => Ok(Kind::Oft),
        other => match unmergeable_reason(other) {
            Some(reason) => Err(bad(path, unmergeable_message(other, reason))),
            None => Err(bad(path, format!(
                "field `peft_type` is \"{other}\": pyft merges LORA, IA3 and OFT adapters only"))),
        },
    }
}

/// An adapter directory opened for merging.
#[derive(Debug)]
pub enum Adapter {
    /// A LoRA-family adapter.
    Lora(LoraAdapter),
    /// An (IA)³ adapter.
    Ia3(Ia3Adapter),
    /// An OFT adapter.
    Oft(OftAdapter),
}

impl Adapter {
    /// Open `dir` with the reader its `peft_type` names (see [`classify`]).
    pub fn open(dir: &Path) -> Result<Adapter> {
        let (path, cfg) = read_config(dir)?;
        Ok(match classify(&cfg, &path)? {
            Kind::Lora => Adapter::Lora(LoraAdapter::open(dir)?),
            Kind::Ia3 => Adapter::Ia3(Ia3Adapter::from_config(dir, &path, &cfg)?),
            Kind::Oft => Adapter::Oft(OftAdapter::from_config(dir, &path, &cfg)?),
        })
    }

    /// The adapter's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Adapter::Lora(_) => Kind::Lora,
            Adapter::Ia3(_) => Kind::Ia3,
            Adapter::Oft(_) => Kind::Oft,
        }
    }

    /// The adapter directory.
    pub fn dir(&self) -> &Path {
        match self {
            Adapter::Lora(a) => &a.dir,
            Adapter::Ia3(a) => &a.tensors.dir,
            Adapter::Oft(a) => &a.tensors.dir,
        }
    }
}

/// The tensors of an IA3/OFT adapter file, sorted.
#[derive(Debug)]
pub struct PeftTensors {
    /// `adapter_model.safetensors`, memory-mapped.
    pub file: SafetensorsFile,
    /// Per adapted module (`model.layers.0.mlp.down_proj`): the index of the suffix it was found
    /// with and the tensor.
    pub modules: BTreeMap<String, (usize, TensorInfo)>,
    /// Whole tensors of `modules_to_save`, by base tensor name (`lm_head.weight`).
    pub saved: BTreeMap<String, TensorInfo>,
    /// Copies of the base weights of adapted embeddings (`X.base_layer.weight`), by base tensor name.
    pub base_copies: BTreeMap<String, TensorInfo>,
    /// The adapter directory.
    pub dir: PathBuf,
}

/// Open `dir/adapter_model.safetensors` and sort its tensors: a name `base_model.model.<module><suffix>`
/// for one of `suffixes` is that module's adapter tensor; `<module>.base_layer.weight` a saved base
/// weight; any other name containing `marker` (`ia3_`, `oft_`) is refused as unsupported; the rest
/// are `modules_to_save` copies. PEFT's adapter-name infix (`.default`) is dropped.
pub fn split_tensors(dir: &Path, suffixes: &[&str], marker: &str) -> Result<PeftTensors> {
    let weights = dir.join("adapter_model.safetensors");
    let file = SafetensorsFile::open(&weights)?;
    let mut modules = BTreeMap::new();
    let mut saved = BTreeMap::new();
    let mut base_copies = BTreeMap::new();
    for t in &file.tensors {
        let name = t.name.replace(".default.", ".");
        let name = name.strip_suffix(".default").unwrap_or(&name);
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return Err(bad(&weights, format!("tensor `{}` lacks the `{PREFIX}` prefix", t.name)));
        };
        let found = suffixes.iter().enumerate().find_map(|(i, s)| rest.strip_suffix(s).map(|m| (i, m)));
        if let Some((i, module)) = found {
            if modules.insert(module.to_string(), (i, t.clone())).is_some() {
                return Err(bad(&weights, format!("module `{module}` has more than one adapter tensor")));
            }
        } else if rest.contains(marker) {
            return Err(bad(&weights, format!("tensor `{}` is not supported for merging", t.name)));
        } else if let Some(module) = rest.strip_suffix(".base_layer.weight") {
            base_copies.insert(format!("{module}.weight"), t.clone());
        } else {
            saved.insert(rest.to_string(), t.clone());
        }
    }
    Ok(PeftTensors { file, modules, saved, base_copies, dir: dir.to_path_buf() })
}

/// Refuse the config fields an IA3/OFT merge does not implement: `fan_in_fan_out` (GPT-2's
/// `Conv1D` weights), trained biases (OFT's `bias`), replicated layers.
pub(crate) fn check_unsupported(cfg: &Value, path: &Path) -> Result<()> {
    if cfg["fan_in_fan_out"].as_bool() == Some(true) {
        return Err(bad(path, "field `fan_in_fan_out` = true (GPT-2 style Conv1D weights) is not supported"));
    }
    if let Some(b) = cfg.get("bias").filter(|b| !b.is_null() && b.as_str() != Some("none")) {
        return Err(bad(path, format!("field `bias` = {b} (trained base biases) is not supported")));
    }
    if cfg.get("layer_replication").is_some_and(|v| !v.is_null()) {
        return Err(bad(path, "field `layer_replication` is set: adapters on replicated layers cannot be merged \
                              (PEFT refuses it too)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_and_refusals() {
        let p = Path::new("a/adapter_config.json");
        assert_eq!(classify(&json!({"peft_type": "LORA"}), p).unwrap(), Kind::Lora);
        assert_eq!(classify(&json!({"peft_type": "IA3"}), p).unwrap(), Kind::Ia3);
        assert_eq!(classify(&json!({"peft_type": "OFT"}), p).unwrap(), Kind::Oft);
        for (t, needle) in [("PROMPT_TUNING", "virtual-token"), ("P_TUNING", "prompt encoder"),
                            ("PREFIX_TUNING", "key/value"), ("PYFT_BOTTLENECK", "up-projection")] {
            let e = classify(&json!({"peft_type": t}), p).unwrap_err().to_string();
            assert!(e.starts_with("a/adapter_config.json: a ") && e.contains(t) && e.contains(needle), "{e}");
            assert!(e.contains("no weight to fold") && e.contains("transformers/PEFT")
                    && e.contains("vLLM and llama.cpp/Ollama do not load"), "{e}");
        }
        let e = classify(&json!({"config": {"architecture": "houlsby"}, "version": "adapters.1.2.0"}), p)
            .unwrap_err().to_string();
        assert!(e.contains("bottleneck (AdapterHub)") && e.contains("no weight to fold"), "{e}");
        let e = classify(&json!({"peft_type": "LOHA"}), p).unwrap_err().to_string();
        assert!(e.contains("\"LOHA\": pyft merges LORA, IA3 and OFT adapters only"), "{e}");
        let e = classify(&json!({"r": 8}), p).unwrap_err().to_string();
        assert!(e.contains("`peft_type` is missing"), "{e}");
        let e = classify(&json!({"peft_type": 3}), p).unwrap_err().to_string();
        assert!(e.contains("must be a string"), "{e}");
    }

    #[test]
    fn unsupported_fields() {
        let p = Path::new("c.json");
        assert!(check_unsupported(&json!({"fan_in_fan_out": false, "bias": "none"}), p).is_ok());
        for cfg in [json!({"fan_in_fan_out": true}), json!({"bias": "all"}), json!({"layer_replication": [[0, 1]]})] {
            assert!(check_unsupported(&cfg, p).is_err(), "{cfg}");
        }
    }
}
