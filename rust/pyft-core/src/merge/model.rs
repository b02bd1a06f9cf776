//! `pyft-merge`: stream a base model's safetensors, fold the adapters in, write shards.
//!
//! One tensor at a time: read (memory-mapped) → f32 → add the adapter delta (or take the
//! `modules_to_save` copy) → round once to the output dtype → append to the current shard. Peak
//! memory is about one tensor in f32, not the model. The output directory is staged and renamed
//! into place; `config.json` is copied with only `torch_dtype` (and `tie_word_embeddings` when an
//! untied output layer is written) changed; tokenizer and generation files are copied verbatim,
//! then the caller's extra files written over them. The tensors come from [`MergedModel`].

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::data::shards::StagingDir;
use crate::error::{Error, Result};
use crate::io::safetensors::{PlannedTensor, StreamWriter};
use crate::merge::source::{AdapterInput, Combine, MergedModel};
use crate::tensor::{from_f32, to_f32, DType};

/// Files copied verbatim from the base model directory when present.
pub const COPIED_FILES: &[&str] = &[
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "chat_template.jinja", "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
];

/// Options of [`merge_model`].
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// The base model directory (config.json + safetensors).
    pub base: PathBuf,
    /// PEFT LoRA adapter directories and their weights (one adapter with weight 1.0 for a plain merge).
    pub adapters: Vec<AdapterInput>,
    /// How several adapters combine.
    pub method: Combine,
    /// The output directory.
    pub out: PathBuf,
    /// Output dtype; `None` keeps each tensor's own.
    pub dtype: Option<DType>,
    /// Largest shard in bytes (a tensor larger than this gets a shard of its own).
    pub max_shard_bytes: usize,
    /// Replace an existing output directory.
    pub overwrite: bool,
    /// Extra files `(name, bytes)` written into the output directory, replacing a copied file of
    /// the same name (e.g. `generation_config.json`, `tokenizer_config.json`, `chat_template.jinja`).
    pub extra_files: Vec<(String, Vec<u8>)>,
}

/// What a merge did (returned to Python as JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeReport {
    /// Tensors written.
    pub tensors: usize,
    /// Weights that received an adapter delta.
    pub merged_modules: usize,
    /// Tensors replaced by a `modules_to_save` copy.
    pub replaced: usize,
    /// Shard files written.
    pub shards: Vec<String>,
    /// Total tensor bytes written.
    pub total_bytes: usize,
}

/// An extra file name must be a plain file name and must not shadow the weights.
fn check_extra_name(name: &str) -> Result<()> {
    let plain = !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.');
    if !plain || name.ends_with(".safetensors") || name == "model.safetensors.index.json" {
        return Err(Error::Option(format!("extra file `{name}` must be a plain file name other than the weights")));
    }
    Ok(())
}

/// Merge `opts.adapters` into `opts.base`, writing `opts.out`.
pub fn merge_model(opts: &MergeOptions) -> Result<MergeReport> {
    for (name, _) in &opts.extra_files {
        check_extra_name(name)?;
    }
    let model = MergedModel::open(&opts.base, &opts.adapters, opts.method)?;
    let plan: Vec<PlannedTensor> = model.tensors().iter()
        .map(|t| PlannedTensor { name: t.name.clone(), dtype: opts.dtype.unwrap_or(t.dtype), shape: t.shape.clone() })
        .collect();

    // Shards.
    let mut shard_of = Vec::with_capacity(plan.len());
    let (mut shard, mut used) = (0usize, 0usize);
    for p in &plan {
        if used > 0 && used + p.nbytes() > opts.max_shard_bytes {
            shard += 1;
            used = 0;
        }
        used += p.nbytes();
        shard_of.push(shard);
    }
    let n_shards = shard + 1;
    let shard_name = |i: usize| {
        if n_shards == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n_shards:05}.safetensors", i + 1) }
    };

    let staging = StagingDir::new(&opts.out, opts.overwrite)?;
    let mut report = MergeReport { tensors: plan.len(), merged_modules: 0, replaced: 0, shards: Vec::new(), total_bytes: 0 };
    let mut weight_map = serde_json::Map::new();
    let mut total_params = 0usize;
    for s in 0..n_shards {
        let name = shard_name(s);
        let members: Vec<usize> = (0..plan.len()).filter(|&i| shard_of[i] == s).collect();
        let mut writer = StreamWriter::create(&staging.path().join(&name), members.iter().map(|&i| plan[i].clone()).collect())?;
        for &i in &members {
            let p = &plan[i];
            report.replaced += usize::from(model.is_replaced(i));
            report.merged_modules += usize::from(model.has_delta(i));
            if model.has_delta(i) || model.stored(i).1 != model.tensors()[i].dtype {
                writer.write(&p.name, &from_f32(&model.read_f32(i)?, p.dtype))?;
            } else {
                let (bytes, dtype) = model.stored(i);
                copy_converted(&mut writer, &p.name, bytes, dtype, p.dtype)?;
            }
            model.release(i);
            weight_map.insert(p.name.clone(), json!(name));
            report.total_bytes += p.nbytes();
            total_params += p.shape.iter().product::<usize>();
        }
        writer.finish()?;
        report.shards.push(name);
    }
    if n_shards > 1 {
        let index = json!({"metadata": {"total_parameters": total_params, "total_size": report.total_bytes},
                           "weight_map": weight_map});
        write_json(&staging.path().join("model.safetensors.index.json"), &index)?;
    }
    let mut config = model.config().clone();
    if let Some(d) = opts.dtype {
        config["torch_dtype"] = json!(d.torch_name());
        if config.get("dtype").is_some() {
            config["dtype"] = json!(d.torch_name());
        }
    }
    write_json(&staging.path().join("config.json"), &config)?;
    for name in COPIED_FILES {
        let src = opts.base.join(name);
        if src.is_file() {
            std::fs::copy(&src, staging.path().join(name)).map_err(|e| Error::io(&src, e))?;
        }
    }
    for (name, bytes) in &opts.extra_files {
        let dst = staging.path().join(name);
        std::fs::write(&dst, bytes).map_err(|e| Error::io(&dst, e))?;
    }
    staging.commit()?;
    Ok(report)
}

/// Write `bytes` (of `from`) as `to`, a few MiB at a time, so large untouched tensors (embeddings)
/// never exist in f32 as a whole.
fn copy_converted(writer: &mut StreamWriter, name: &str, bytes: &[u8], from: DType, to: DType) -> Result<()> {
    const CHUNK_ELEMS: usize = 1 << 20;
    writer.begin(name, bytes.len() / from.size() * to.size())?;
    for chunk in bytes.chunks(CHUNK_ELEMS * from.size()) {
        if from == to {
            writer.append(chunk)?;
        } else {
            writer.append(&from_f32(&to_f32(chunk, from), to))?;
        }
    }
    writer.end()
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Option(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
