//! Binding of `pyft_core::gguf` export: HF model (+ adapters) → GGUF, PEFT adapter → GGUF LoRA.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyft_core::gguf::export::{default_name, export_gguf as export_gguf_file, ExportOptions};
use pyft_core::gguf::lora::{export_lora_gguf, LoraExportOptions};
use pyft_core::gguf::mix::QType;
use pyft_core::gguf::vocab::{tokenizer_metadata, VocabOptions};
use pyft_core::gguf::{GgmlType, GgufValue};
use pyft_core::merge::source::{AdapterInput, Combine, MergedModel};

use crate::error::to_pyerr;

/// Export an HF model directory (optionally merging adapters on the fly) to one GGUF file.
///
/// Args:
///     model (str): HF model directory. out (str): the `.gguf` file.
///     qtype (str): f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m or q6_k.
///     adapters (list[tuple[str, float]]): adapter directories and weights.
///     method (str), density (float | None), seed (int), svd_rank (int | None): multi-adapter merge.
///     name (str | None): `general.name`. pre (str | None): forced `tokenizer.ggml.pre`.
///     chat_template (str | None): overrides `tokenizer.chat_template`.
///     eot_token_id (int | None): `tokenizer.ggml.eot_token_id` when the template ends turns with a
///         token other than eos. overwrite (bool): replace `out`.
/// Returns:
///     str: JSON report (path, arch, qtype, file_type, tensors, types, bytes, dequantized_nf4, warnings,
///     pre).
#[pyfunction]
#[pyo3(signature = (model, out, *, qtype="f16", adapters=Vec::new(), method="linear", density=None, seed=0,
                    svd_rank=None, name=None, pre=None, chat_template=None, eot_token_id=None, overwrite=false))]
#[allow(clippy::too_many_arguments)]
pub fn export_gguf(py: Python<'_>, model: PathBuf, out: PathBuf, qtype: &str, adapters: Vec<(PathBuf, f32)>,
                   method: &str, density: Option<f32>, seed: u64, svd_rank: Option<usize>, name: Option<String>,
                   pre: Option<String>, chat_template: Option<String>, eot_token_id: Option<u32>, overwrite: bool)
                   -> PyResult<String> {
    let run = || -> pyft_core::Result<String> {
        let qtype = QType::from_name(qtype)?;
        let combine = Combine::from_name(method, density, seed, svd_rank)?;
        let inputs: Vec<AdapterInput> = adapters.into_iter().map(|(dir, weight)| AdapterInput { dir, weight }).collect();
        let source = MergedModel::open(&model, &inputs, combine)?;
        let arch = pyft_core::gguf::arch::Arch::from_config(source.config())?;
        // Qwen3 takes the Qwen2 tokenizer path in llama.cpp's converter; OLMo 2 its GPT-2 BPE one (TextModel.set_vocab).
        let vocab_arch = match arch {
            // GraniteModel and SmolLM3Model take LlamaModel.set_vocab.
            pyft_core::gguf::arch::Arch::Llama | pyft_core::gguf::arch::Arch::Granite
            | pyft_core::gguf::arch::Arch::SmolLM3 => "llama",
            pyft_core::gguf::arch::Arch::Gemma2 => "gemma2",
            pyft_core::gguf::arch::Arch::Gemma3 => "gemma3",
            pyft_core::gguf::arch::Arch::Phi3 => "phi3",
            _ => "qwen2",
        };
        let vocab = tokenizer_metadata(&model, vocab_arch, &VocabOptions { pre_override: pre, base_dir: None })?;
        let mut kvs = vocab.kvs;
        if let Some(t) = chat_template {
            set_kv(&mut kvs, "tokenizer.chat_template", GgufValue::String(t));
        }
        if let Some(eot) = eot_token_id {
            let eos = kvs.iter().find(|(k, _)| k == "tokenizer.ggml.eos_token_id").and_then(|(_, v)| v.as_u64());
            if eos != Some(eot.into()) && !kvs.iter().any(|(k, _)| k == "tokenizer.ggml.eot_token_id") {
                kvs.push(("tokenizer.ggml.eot_token_id".into(), GgufValue::U32(eot)));
            }
        }
        let opts = ExportOptions { out, qtype, name: name.unwrap_or_else(|| default_name(&model)), overwrite };
        let report = export_gguf_file(&source, kvs, &opts)?;
        let mut json = serde_json::to_value(&report).unwrap_or_default();
        json["warnings"] = serde_json::json!(vocab.warnings);
        json["pre"] = serde_json::json!(vocab.pre);
        Ok(json.to_string())
    };
    py.detach(run).map_err(|e| to_pyerr(py, e))
}

fn set_kv(kvs: &mut Vec<(String, GgufValue)>, key: &str, value: GgufValue) {
    match kvs.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value,
        None => kvs.push((key.to_string(), value)),
    }
}

/// Export a PEFT LoRA adapter as a GGUF LoRA adapter (llama.cpp `--lora`, Ollama `ADAPTER`).
///
/// Args:
///     adapter (str): adapter directory. base (str): its base model directory. out (str): `.gguf` file.
///     dtype (str): f32, f16 or bf16. name (str | None): `general.name`. overwrite (bool): replace `out`.
/// Returns:
///     str: JSON report.
#[pyfunction]
#[pyo3(signature = (adapter, base, out, *, dtype="f32", name=None, overwrite=false))]
pub fn export_gguf_lora(py: Python<'_>, adapter: PathBuf, base: PathBuf, out: PathBuf, dtype: &str,
                        name: Option<String>, overwrite: bool) -> PyResult<String> {
    let run = || -> pyft_core::Result<String> {
        let dtype = GgmlType::from_name(dtype)?;
        let name = name.unwrap_or_else(|| default_name(&adapter));
        let opts = LoraExportOptions { adapter, base, out, dtype, name, overwrite };
        let report = export_lora_gguf(&opts)?;
        Ok(serde_json::to_string(&report).unwrap_or_default())
    };
    py.detach(run).map_err(|e| to_pyerr(py, e))
}

/// The GGUF support table, from the export's own architecture and tensor-name tables.
///
/// Returns:
///     str: JSON `{"architectures": [{"hf_architecture", "gguf_architecture", "moe", "lora_modules",
///     "merge_only"}, ...], "refused": [{"hf_architecture", "reason"}, ...]}`. `lora_modules` are PEFT
///     module paths (relative to `model.layers.N.`, or `embed_tokens` / `lm_head`) a GGUF LoRA carries;
///     `merge_only` are those (routed experts, index `*`) whose LoRA must be merged before export.
#[pyfunction]
pub fn gguf_support(py: Python<'_>) -> PyResult<String> {
    let table = pyft_core::gguf::support::support_table().map_err(|e| to_pyerr(py, e))?;
    let rows: Vec<serde_json::Value> = table.into_iter().map(|r| serde_json::json!({
        "hf_architecture": r.hf_architecture, "gguf_architecture": r.gguf_architecture, "moe": r.moe,
        "lora_modules": r.lora_modules, "merge_only": r.merge_only,
    })).collect();
    let refused: Vec<serde_json::Value> = pyft_core::gguf::support::refused_architectures().iter()
        .map(|(name, why)| serde_json::json!({"hf_architecture": name, "reason": why})).collect();
    Ok(serde_json::json!({"architectures": rows, "refused": refused}).to_string())
}
