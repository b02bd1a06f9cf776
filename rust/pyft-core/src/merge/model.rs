//! `pyft-merge`: stream a base model's safetensors, fold the adapters in, write shards.
//!
//! Two threads overlap the work: this one computes a block of rows at a time (base rows decoded
//! to f32, the adapter delta added, rounded once to the output dtype, rows in parallel on the
//! crate's pool) while a writer thread appends the previous block to the current shard. Reads rely
//! on the kernel's sequential read-ahead of the mapping (an explicit `MADV_WILLNEED` of the next
//! tensor was measured to slow cold reads down). Tensors left untouched in their stored dtype are
//! copied file to file by the kernel. Blocks cycle through a few fixed buffers, so peak memory is
//! a few MiB plus the tensor being read, not the model; tensors that need the whole weight at
//! once (DoRA, multi-adapter combinations) go through f32 one tensor at a time. The output directory is staged and renamed
//! into place; `config.json` is copied with only `torch_dtype` (and `tie_word_embeddings` when an
//! untied output layer is written; an NF4 base also loses its `quantization_config`) changed; tokenizer and generation files are copied verbatim,
//! then the caller's extra files written over them. The tensors come from [`MergedModel`].

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

use serde_json::{json, Value};

use crate::io::paths::check_output_disjoint;
use crate::io::staging::{check_target, StagingDir};
use crate::error::{Error, Result};
use crate::io::safetensors::{PlannedTensor, StreamWriter};
use crate::merge::source::{set_config_dtype, AdapterInput, Combine, MergedModel};
use crate::tensor::{from_f32, DType};

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
    /// PEFT adapter directories (LoRA; or one IA3/OFT adapter) and their weights (one adapter with
    /// weight 1.0 for a plain merge).
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
    /// Weights dequantized from an NF4 base (0 for a float base).
    pub dequantized_nf4: usize,
    /// The dtypes those weights were written as (empty for a float base).
    pub nf4_written_as: Vec<String>,
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
    let inputs: Vec<&Path> = std::iter::once(opts.base.as_path()).chain(opts.adapters.iter().map(|a| a.dir.as_path())).collect();
    check_output_disjoint(&opts.out, &inputs)?;
    check_target(&opts.out, opts.overwrite, true)?;
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
    let mut report = MergeReport { tensors: plan.len(), merged_modules: 0, replaced: 0, shards: Vec::new(), total_bytes: 0,
                                   dequantized_nf4: model.dequantized_nf4(), nf4_written_as: Vec::new() };
    let mut weight_map = serde_json::Map::new();
    let mut total_params = 0usize;
    for (i, p) in plan.iter().enumerate() {
        report.replaced += usize::from(model.is_replaced(i));
        report.merged_modules += usize::from(model.is_merged_weight(i));
        weight_map.insert(p.name.clone(), json!(shard_name(shard_of[i])));
        report.total_bytes += p.nbytes();
        let name = p.dtype.torch_name().to_string();
        if model.is_nf4(i) && !report.nf4_written_as.contains(&name) {
            report.nf4_written_as.push(name);
        }
        total_params += p.shape.iter().product::<usize>();
    }
    report.shards = (0..n_shards).map(shard_name).collect();
    std::thread::scope(|scope| {
        let (jobs, queued) = sync_channel(BUFFERS);
        let (spare_tx, spare) = channel();
        for _ in 0..BUFFERS {
            let _ = spare_tx.send(Vec::new());
        }
        let writer = scope.spawn(move || write_jobs(queued, spare_tx));
        let produced = (|| {
            let mut out = Producer { jobs, spare };
            for s in 0..n_shards {
                let members: Vec<usize> = (0..plan.len()).filter(|&i| shard_of[i] == s).collect();
                let path = staging.path().join(shard_name(s));
                out.send(Job::Shard(StreamWriter::create(&path, members.iter().map(|&i| plan[i].clone()).collect())?))?;
                for &i in &members {
                    produce_tensor(&model, i, &plan[i], &mut out)?;
                    model.release(i);
                }
                out.send(Job::Close)?;
            }
            Ok(())
        })();
        // The writer's own error explains a producer that stopped because the writer went away.
        writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        produced
    })?;
    if n_shards > 1 {
        let index = json!({"metadata": {"total_parameters": total_params, "total_size": report.total_bytes},
                           "weight_map": weight_map});
        write_json(&staging.path().join("model.safetensors.index.json"), &index)?;
    }
    let mut config = model.config().clone();
    if let Some(d) = opts.dtype {
        set_config_dtype(&mut config, d);
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

/// Output bytes per block handed to the writer thread.
const BLOCK_BYTES: usize = 8 << 20;
/// Block buffers in circulation: one being filled, one queued, one being written.
const BUFFERS: usize = 3;

/// Work for the writer thread, in file order.
enum Job {
    /// Start writing a shard (its header is already written).
    Shard(StreamWriter),
    /// Start the next tensor of `n` bytes.
    Begin(String, usize),
    /// The first `n` bytes of a pooled buffer, which goes back to the producer once written.
    Block(Vec<u8>, usize),
    /// A buffer written once and dropped.
    Owned(Vec<u8>),
    /// `len` bytes of a file from `offset`, copied file to file.
    Copy(PathBuf, u64, usize),
    /// The current tensor is complete.
    End,
    /// The current shard is complete.
    Close,
}

/// The writer thread: run `jobs` until the producer hangs up, returning block buffers to `spare`.
fn write_jobs(jobs: Receiver<Job>, spare: Sender<Vec<u8>>) -> Result<()> {
    fn no_shard() -> Error {
        Error::Internal("merge writer: no open shard".into())
    }
    fn open(shard: &mut Option<StreamWriter>) -> Result<&mut StreamWriter> {
        shard.as_mut().ok_or_else(no_shard)
    }
    let mut shard: Option<StreamWriter> = None;
    for job in jobs {
        match job {
            Job::Shard(w) => shard = Some(w),
            Job::Begin(name, n) => open(&mut shard)?.begin(&name, n)?,
            Job::Block(buf, n) => {
                open(&mut shard)?.append(&buf[..n])?;
                let _ = spare.send(buf);
            }
            Job::Owned(buf) => open(&mut shard)?.append(&buf)?,
            Job::Copy(path, offset, len) => open(&mut shard)?.append_file_range(&path, offset, len)?,
            Job::End => open(&mut shard)?.end()?,
            Job::Close => shard.take().ok_or_else(no_shard)?.finish()?,
        }
    }
    Ok(())
}

/// The computing side of the pipeline: sends jobs, takes back spare block buffers.
struct Producer {
    jobs: SyncSender<Job>,
    spare: Receiver<Vec<u8>>,
}

impl Producer {
    /// Queue a job; fails only when the writer thread has stopped (its error is reported instead).
    fn send(&mut self, job: Job) -> Result<()> {
        self.jobs.send(job).map_err(|_| Error::Internal("merge writer stopped".into()))
    }

    /// A block buffer of at least `n` bytes (the writer hands them back once written).
    fn buffer(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut buf = self.spare.recv().map_err(|_| Error::Internal("merge writer stopped".into()))?;
        if buf.len() < n {
            buf.resize(n, 0);
        }
        Ok(buf)
    }
}

/// Queue tensor `i` of `model` as `p.dtype`: a file-to-file copy when it is untouched in that
/// dtype, blocks of rows when it can be produced row by row, else the whole tensor through f32.
fn produce_tensor(model: &MergedModel, i: usize, p: &PlannedTensor, out: &mut Producer) -> Result<()> {
    out.send(Job::Begin(p.name.clone(), p.nbytes()))?;
    if let Some((path, offset, len)) = model.file_range(i, p.dtype) {
        out.send(Job::Copy(path.to_path_buf(), offset, len))?;
    } else if let Some(rows) = model.rows(i)? {
        let row_bytes = rows.width() * p.dtype.size();
        let per_block = (BLOCK_BYTES / row_bytes.max(1)).max(1);
        let mut first = 0;
        while first < rows.rows() && row_bytes > 0 {
            let n = per_block.min(rows.rows() - first);
            let mut buf = out.buffer(n * row_bytes)?;
            rows.fill(first, &mut buf[..n * row_bytes], p.dtype)?;
            out.send(Job::Block(buf, n * row_bytes))?;
            first += n;
        }
    } else {
        out.send(Job::Owned(from_f32(&model.read_f32(i)?, p.dtype)))?;
    }
    out.send(Job::End)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
