//! PEFT LoRA adapter → GGUF LoRA adapter for llama.cpp (`--lora`) and Ollama (`ADAPTER`).
//!
//! Format (`shared/specs/gguf.md` §5): KVs `general.architecture` (the base's), `general.type =
//! adapter`, `adapter.type = lora`, `adapter.lora.alpha` (FLOAT32); per adapted linear
//! `<gguf name>.weight.lora_a` = A (`[r, in]`, ne `[in, r]`) and `.lora_b` = B (`[out, r]`, ne
//! `[r, out]`), F32/F16/BF16. llama.cpp scales every pair by `alpha / r` with one alpha for the
//! file and `r` read per tensor, so:
//! - rsLoRA (`alpha / √r`) is written as `alpha·√r` (llama.cpp's converter ignores `use_rslora`);
//! - a per-module scale that differs from `alpha_file / r_module` (rank/alpha patterns) is baked
//!   into that module's B;
//! - Llama's Q/K rows are permuted in B only (its rows are the output features);
//! - an embedding LoRA (`lora_embedding_A [r, vocab]`, `_B [dim, r]`) is written with A transposed
//!   (llama.cpp's `token_embd` convention: `lora_a` ne `[r, vocab]`, `lora_b` ne `[r, dim]`).
//!
//! DoRA, `modules_to_save` and `lora_bias` have no GGUF LoRA equivalent, nor do IA3 and OFT
//! adapters: they are refused with advice to merge instead. Prompt/prefix tuning and bottleneck
//! adapters are refused as unmergeable ([`crate::merge::adapter::classify`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::gguf::arch::{map_tensor, permute_groups, permute_qk_rows, Arch, HParams, Role};
use crate::gguf::export::ExportReport;
use crate::gguf::ggml_type::GgmlType;
use crate::gguf::quant::quantize_rows;
use crate::gguf::value::GgufValue;
use crate::gguf::writer::{GgufWriter, TensorPlan};
use crate::io::paths::check_output_disjoint;
use crate::io::staging::check_target;
use crate::merge::adapter::Kind;
use crate::merge::lora::LoraAdapter;
use crate::tensor::to_f32;

/// Options of [`export_lora_gguf`].
#[derive(Debug, Clone)]
pub struct LoraExportOptions {
    /// The PEFT adapter directory.
    pub adapter: PathBuf,
    /// The base model directory the adapter was trained on (config.json + safetensors).
    pub base: PathBuf,
    /// Output `.gguf` path.
    pub out: PathBuf,
    /// F32 (llama.cpp's default), F16 or BF16.
    pub dtype: GgmlType,
    /// `general.name`.
    pub name: String,
    /// Replace an existing output file.
    pub overwrite: bool,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), message: message.into() }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = crate::io::file::read_to_string(path)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(path, format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad(path, "not a JSON object"));
    }
    Ok(value)
}

/// The file-wide `adapter.lora.alpha`: `lora_alpha`, times `√r` for rsLoRA.
pub fn gguf_alpha(adapter_config: &Value) -> Result<f32> {
    let alpha = adapter_config["lora_alpha"].as_f64().ok_or_else(|| Error::Option("adapter_config.json has no numeric `lora_alpha`".into()))?;
    let r = adapter_config["r"].as_f64().ok_or_else(|| Error::Option("adapter_config.json has no numeric `r`".into()))?;
    let rslora = adapter_config["use_rslora"].as_bool().unwrap_or(false);
    Ok(if rslora { (alpha * r.sqrt()) as f32 } else { alpha as f32 })
}

struct Pair {
    gguf: String,
    a: Vec<f32>,
    a_shape: [usize; 2],
    b: Vec<f32>,
    b_shape: [usize; 2],
}

/// Write a GGUF LoRA adapter for `opts.adapter` over `opts.base`.
pub fn export_lora_gguf(opts: &LoraExportOptions) -> Result<ExportReport> {
    if !matches!(opts.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(Error::Option(format!(
            "GGUF LoRA tensors must be F32, F16 or BF16, not {} (quantized LoRA tensors lose most of their effect)",
            opts.dtype.name())));
    }
    check_output_disjoint(&opts.out, &[&opts.adapter, &opts.base])?;
    check_target(&opts.out, opts.overwrite, false)?;
    let config = read_json(&opts.base.join("config.json"))?;
    let arch = Arch::from_config(&config)?;
    let hp = HParams::from_config(&config)?;
    let cfg_path = opts.adapter.join("adapter_config.json");
    let adapter_config = read_json(&cfg_path)?;
    match crate::merge::adapter::classify(&adapter_config, &cfg_path)? {
        Kind::Lora => {}
        kind => {
            let t = kind.peft_type();
            return Err(bad(&cfg_path, format!(
                "an {t} adapter has no GGUF LoRA form (llama.cpp and Ollama load LoRA adapters only), but it merges: \
                 export the base with the adapter merged in (pyft-export BASE --adapter {} --to gguf, or \
                 --to ollama --merge), or pyft-merge it and export the merged model", opts.adapter.display())));
        }
    }
    let adapter = LoraAdapter::open(&opts.adapter)?;
    if adapter.dora {
        return Err(bad(&cfg_path, "DoRA adapters have no GGUF LoRA form (llama.cpp applies plain B·A): \
                                   merge the adapter into the base and export the merged model instead"));
    }
    if let Some(name) = adapter.saved.keys().next() {
        return Err(bad(&cfg_path, format!(
            "the adapter carries a full copy of `{name}` (modules_to_save), which a GGUF LoRA cannot hold: \
             merge the adapter into the base and export the merged model instead")));
    }
    if adapter_config["lora_bias"].as_bool() == Some(true) || adapter_config["bias"].as_str().is_some_and(|b| b != "none") {
        return Err(bad(&cfg_path, "adapters with trained biases have no GGUF LoRA form: merge instead"));
    }
    let alpha = gguf_alpha(&adapter_config)?;
    if alpha == 0.0 {
        return Err(bad(&cfg_path, "lora_alpha is 0: llama.cpp would read that as scale 1"));
    }

    // Base tensor shapes, to check the adapter belongs to this base (an NF4 base's weights have
    // their recorded shapes).
    let base = crate::merge::source::MergedModel::open(&opts.base, &[], crate::merge::source::Combine::Linear)?;
    let base_shape = |name: &str| base.tensors().iter().find(|t| t.name == name).map(|t| t.shape.clone());

    let mut pairs = Vec::new();
    for (module, m) in &adapter.modules {
        let weight = format!("{module}.weight");
        let Some((gguf, role)) = map_tensor(arch, &weight)? else {
            return Err(bad(&cfg_path, format!("adapted module `{module}` has no GGUF counterpart")));
        };
        if role.is_stacked_experts() {
            return Err(bad(&cfg_path, format!(
                "the adapter targets the expert `{module}`: llama.cpp holds experts stacked in one tensor per \
                 layer, which pyft's GGUF LoRA does not write; merge the adapter into the base and export the \
                 merged model instead")));
        }
        if role == Role::Output && hp.tied {
            return Err(bad(&cfg_path, "the adapter targets lm_head, but the base ties it to the embeddings: \
                                       llama.cpp cannot apply it; merge instead"));
        }
        let shape = base_shape(&weight).ok_or_else(|| bad(&cfg_path, format!("the base model has no `{weight}`")))?;
        let (r, inp) = (m.a.shape[0], m.a.shape[1]);
        let out = m.b.shape[0];
        // An embedding's table is [num_embeddings, dim] = [inp, out]; a linear weight is [out, inp].
        let expected = if m.embedding { [inp, out] } else { [out, inp] };
        if m.b.shape[1] != r || shape != expected {
            return Err(bad(&cfg_path, format!(
                "`{module}`: adapter needs base shape {expected:?} but the base has {shape:?}: \
                 the adapter was trained on a different base model")));
        }
        let mut a = to_f32(adapter.file.bytes(&m.a), m.a.dtype);
        let mut b = to_f32(adapter.file.bytes(&m.b), m.b.dtype);
        // llama.cpp applies alpha / r: bake any difference from PEFT's per-module scale into B.
        let factor = m.scaling * r as f32 / alpha;
        if (factor - 1.0).abs() > 1e-7 {
            b.iter_mut().for_each(|x| *x *= factor);
        }
        if arch.permutes_qk() {
            if let Some(groups) = permute_groups(role, &hp) {
                b = permute_qk_rows(&b, out, groups)?;
            }
        }
        let mut a_shape = [r, inp];
        if m.embedding {
            // llama.cpp's token_embd convention: lora_a holds Aᵀ ([num_embeddings, r]).
            a = (0..inp).flat_map(|j| (0..r).map(move |i| (i, j))).map(|(i, j)| a[i * inp + j]).collect();
            a_shape = [inp, r];
        }
        pairs.push(Pair { gguf, a, a_shape, b, b_shape: [out, r] });
    }
    if pairs.is_empty() {
        return Err(bad(&cfg_path, "the adapter has no LoRA tensors"));
    }
    pairs.sort_by(|x, y| crate::gguf::export::loader_order(&x.gguf, &y.gguf));

    let kvs: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), GgufValue::String(arch.name().into())),
        ("general.type".into(), GgufValue::String("adapter".into())),
        ("adapter.type".into(), GgufValue::String("lora".into())),
        ("general.name".into(), GgufValue::String(opts.name.clone())),
        ("adapter.lora.alpha".into(), GgufValue::F32(alpha)),
        ("general.quantization_version".into(), GgufValue::U32(2)),
    ];
    let mut plan = Vec::new();
    for p in &pairs {
        plan.push(TensorPlan::from_torch_shape(format!("{}.lora_a", p.gguf), &p.a_shape, opts.dtype));
        plan.push(TensorPlan::from_torch_shape(format!("{}.lora_b", p.gguf), &p.b_shape, opts.dtype));
    }
    let mut writer = GgufWriter::create(&opts.out, &kvs, plan, opts.overwrite)?;
    let mut types = BTreeMap::new();
    for p in &pairs {
        for (suffix, data, shape) in [("lora_a", &p.a, p.a_shape), ("lora_b", &p.b, p.b_shape)] {
            let mut bytes = vec![0u8; opts.dtype.row_bytes(shape[1]).unwrap_or(0) * shape[0]];
            quantize_rows(opts.dtype, data, shape[1], &mut bytes)?;
            writer.write_tensor(&format!("{}.{suffix}", p.gguf), &bytes)?;
            *types.entry(opts.dtype.name().to_string()).or_insert(0) += 1;
        }
    }
    let path = writer.finish()?;
    let bytes = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
    Ok(ExportReport { path: path.display().to_string(), arch: arch.name().into(), qtype: opts.dtype.name().to_lowercase(),
                      file_type: 0, tensors: pairs.len() * 2, types, bytes, dequantized_nf4: 0 })
}
