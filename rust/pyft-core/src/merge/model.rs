//! `pyft-merge`: stream a base model's safetensors, fold the adapter in, write shards.
//!
//! One tensor at a time: read (memory-mapped) → f32 → add the adapter delta (or take the
//! `modules_to_save` copy) → round once to the output dtype → append to the current shard. Peak
//! memory is about one tensor in f32, not the model. The output directory is staged and renamed
//! into place; `config.json` is copied with only `torch_dtype` (and `tie_word_embeddings` when an
//! untied output layer is written) changed; tokenizer and generation files are copied verbatim.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::data::shards::StagingDir;
use crate::error::{Error, Result};
use crate::io::safetensors::{model_files, PlannedTensor, SafetensorsFile, StreamWriter, TensorInfo};
use crate::merge::lora::{merge_into, LoraAdapter};
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
    /// A PEFT LoRA adapter directory.
    pub adapter: PathBuf,
    /// The output directory.
    pub out: PathBuf,
    /// Output dtype; `None` keeps each tensor's own.
    pub dtype: Option<DType>,
    /// Largest shard in bytes (a tensor larger than this gets a shard of its own).
    pub max_shard_bytes: usize,
    /// Replace an existing output directory.
    pub overwrite: bool,
}

/// What a merge did (returned to Python as JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeReport {
    /// Tensors written.
    pub tensors: usize,
    /// Linear weights that received an adapter delta.
    pub merged_modules: usize,
    /// Tensors replaced by a `modules_to_save` copy.
    pub replaced: usize,
    /// Shard files written.
    pub shards: Vec<String>,
    /// Total tensor bytes written.
    pub total_bytes: usize,
}

enum Source {
    Base(usize, TensorInfo),
    Saved(TensorInfo),
}

/// Merge `opts.adapter` into `opts.base`, writing `opts.out`.
pub fn merge_model(opts: &MergeOptions) -> Result<MergeReport> {
    let cfg_path = opts.base.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let mut config: Value = serde_json::from_str(&cfg_text)
        .map_err(|e| Error::File { path: cfg_path.clone(), message: format!("malformed JSON: {e}") })?;
    let files: Vec<SafetensorsFile> = model_files(&opts.base)?.iter().map(|p| SafetensorsFile::open(p)).collect::<Result<_>>()?;
    let adapter = LoraAdapter::open(&opts.adapter)?;

    // Plan every output tensor and where its data comes from.
    let mut plan: Vec<(PlannedTensor, Source)> = Vec::new();
    let mut seen = BTreeSet::new();
    for (fi, f) in files.iter().enumerate() {
        for t in &f.tensors {
            let out_dtype = opts.dtype.unwrap_or(t.dtype);
            let src = match adapter.saved.get(&t.name) {
                Some(saved) => {
                    if saved.shape != t.shape {
                        return Err(mismatch(&adapter, &t.name, &saved.shape, &t.shape));
                    }
                    Source::Saved(saved.clone())
                }
                None => Source::Base(fi, t.clone()),
            };
            seen.insert(t.name.clone());
            plan.push((PlannedTensor { name: t.name.clone(), dtype: out_dtype, shape: t.shape.clone() }, src));
        }
    }
    // A trained copy of a tied output layer becomes a tensor of its own.
    let mut untie = false;
    for (name, t) in &adapter.saved {
        if !seen.contains(name) {
            if name == "lm_head.weight" && config["tie_word_embeddings"].as_bool() == Some(true) {
                untie = true;
                let dtype = opts.dtype.unwrap_or(plan.first().map(|p| p.0.dtype).unwrap_or(DType::F32));
                plan.push((PlannedTensor { name: name.clone(), dtype, shape: t.shape.clone() }, Source::Saved(t.clone())));
            } else {
                return Err(Error::File { path: adapter.dir.clone(),
                    message: format!("saved tensor `{name}` has no counterpart in the base model") });
            }
        }
    }
    for (module, m) in &adapter.modules {
        let name = format!("{module}.weight");
        let Some((p, _)) = plan.iter().find(|(p, _)| p.name == name) else {
            return Err(Error::File { path: adapter.dir.clone(),
                message: format!("adapted module `{module}` has no weight `{name}` in the base model") });
        };
        let expected = vec![m.b.shape[0], m.a.shape[1]];
        if p.shape != expected {
            return Err(mismatch(&adapter, &name, &expected, &p.shape));
        }
    }

    // Shards.
    let mut shard_of = Vec::with_capacity(plan.len());
    let (mut shard, mut used) = (0usize, 0usize);
    for (p, _) in &plan {
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
        let mut writer = StreamWriter::create(&staging.path().join(&name), members.iter().map(|&i| plan[i].0.clone()).collect())?;
        for &i in &members {
            let (p, src) = &plan[i];
            let module = p.name.strip_suffix(".weight").and_then(|m| adapter.modules.get(m));
            match (src, module) {
                (Source::Base(fi, t), Some(module)) => {
                    let mut v = to_f32(files[*fi].bytes(t), t.dtype);
                    merge_into(&mut v, p.shape[0], p.shape[1], module, &adapter.file);
                    report.merged_modules += 1;
                    writer.write(&p.name, &from_f32(&v, p.dtype))?;
                    files[*fi].release(t);
                }
                (Source::Base(fi, t), None) => {
                    copy_converted(&mut writer, &p.name, files[*fi].bytes(t), t.dtype, p.dtype)?;
                    files[*fi].release(t);
                }
                (Source::Saved(t), _) => {
                    report.replaced += 1;
                    copy_converted(&mut writer, &p.name, adapter.file.bytes(t), t.dtype, p.dtype)?;
                }
            }
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
    if let Some(d) = opts.dtype {
        config["torch_dtype"] = json!(d.torch_name());
        if config.get("dtype").is_some() {
            config["dtype"] = json!(d.torch_name());
        }
    }
    if untie {
        config["tie_word_embeddings"] = json!(false);
    }
    write_json(&staging.path().join("config.json"), &config)?;
    for name in COPIED_FILES {
        let src = opts.base.join(name);
        if src.is_file() {
            std::fs::copy(&src, staging.path().join(name)).map_err(|e| Error::io(&src, e))?;
        }
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

fn mismatch(adapter: &LoraAdapter, name: &str, adapter_shape: &[usize], base_shape: &[usize]) -> Error {
    Error::File {
        path: adapter.dir.clone(),
        message: format!("`{name}`: the adapter needs shape {adapter_shape:?} but the base model has {base_shape:?}: \
                          the adapter was trained on a different base model"),
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Option(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
