//! HF model (optionally with adapters merged on the fly) → one GGUF file for llama.cpp/Ollama.
//!
//! Tensors stream from a [`TensorSource`] one at a time: read (merged) in f32 → Llama Q/K row
//! permutation → quantize to the type [`crate::gguf::mix::tensor_type`] picks → write. A producer
//! thread encodes the next tensor (itself parallel over rows) while the caller's thread writes the
//! previous one, so memory stays at about two tensors and disk and CPU overlap.
//!
//! Tensor order follows llama.cpp's loader (`weight_name_comparer`): non-block tensors by name,
//! then blocks by layer number and name. It is also the order in which `llama-quantize` counts
//! layers for its mixes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::gguf::arch::{expert_count, expert_index, hparam_kvs, llama3_rope_factors, map_tensor, permute_groups,
                        permute_qk_rows, phi3_rope_factors, Arch, HParams, Role};
use crate::gguf::ggml_type::GgmlType;
use crate::gguf::mix::{eight_expert_type, tensor_type, QType};
use crate::gguf::quant::{quantize_row, quantize_rows};
use crate::gguf::value::GgufValue;
use crate::gguf::writer::{GgufWriter, TensorPlan};
use crate::io::paths::check_output_disjoint;
use crate::io::safetensors::{populate_pages, release_pages};
use crate::io::staging::check_target;
use crate::tensor::{decode_into, round_to_dtype, DType};

/// Values per chunk when an untouched tensor is streamed (16 MiB of f32).
const CHUNK_VALUES: usize = 4 << 20;

/// A model's tensors in HF naming and PyTorch shapes, as the exporter reads them.
pub trait TensorSource: Sync {
    /// The model's `config.json`.
    fn config(&self) -> &Value;
    /// Number of tensors.
    fn len(&self) -> usize;
    /// Whether there are no tensors.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// HF name of tensor `i` (`model.layers.0.self_attn.q_proj.weight`).
    fn name(&self, i: usize) -> &str;
    /// PyTorch shape of tensor `i`.
    fn shape(&self, i: usize) -> &[usize];
    /// The values of tensor `i` in f32, row-major (with any adapter merged in).
    fn read_f32(&self, i: usize) -> Result<Vec<f32>>;
    /// The stored bytes of tensor `i` when no adapter changes it (read in row chunks, so large
    /// untouched tensors such as the embedding never exist in f32 as a whole).
    fn raw(&self, i: usize) -> Option<(&[u8], DType)>;
    /// Tensor `i` is done: its pages may be dropped.
    fn release(&self, i: usize);
    /// How many tensors are dequantized from a 4-bit NF4 base (reported, never written as NF4).
    fn dequantized_nf4(&self) -> usize {
        0
    }
    /// The files and directories the tensors are read from (the output must stay clear of them).
    fn inputs(&self) -> Vec<&Path> {
        Vec::new()
    }
}

impl TensorSource for crate::merge::source::MergedModel {
    fn inputs(&self) -> Vec<&Path> {
        self.input_dirs()
    }
    fn config(&self) -> &Value {
        crate::merge::source::MergedModel::config(self)
    }
    fn len(&self) -> usize {
        self.tensors().len()
    }
    fn name(&self, i: usize) -> &str {
        &self.tensors()[i].name
    }
    fn shape(&self, i: usize) -> &[usize] {
        &self.tensors()[i].shape
    }
    fn read_f32(&self, i: usize) -> Result<Vec<f32>> {
        crate::merge::source::MergedModel::read_f32(self, i)
    }
    fn raw(&self, i: usize) -> Option<(&[u8], DType)> {
        crate::merge::source::MergedModel::raw(self, i)
    }
    fn release(&self, i: usize) {
        crate::merge::source::MergedModel::release(self, i)
    }
    fn dequantized_nf4(&self) -> usize {
        crate::merge::source::MergedModel::dequantized_nf4(self)
    }
}

/// Options of [`export_gguf`].
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Output `.gguf` path (staged under a unique name beside it, then renamed).
    pub out: PathBuf,
    /// Requested type or mix.
    pub qtype: QType,
    /// `general.name`.
    pub name: String,
    /// Replace an existing output file.
    pub overwrite: bool,
}

/// What an export wrote (returned to Python as JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    /// The file written.
    pub path: String,
    /// `general.architecture`.
    pub arch: String,
    /// The requested type (`q4_k_m`).
    pub qtype: String,
    /// `general.file_type`.
    pub file_type: u32,
    /// Tensors written.
    pub tensors: usize,
    /// Tensor count per ggml type name.
    pub types: BTreeMap<String, usize>,
    /// File size in bytes.
    pub bytes: u64,
    /// Tensors read from an NF4 base (dequantized, then written in their planned type).
    pub dequantized_nf4: usize,
}

/// One planned output tensor and where its data comes from.
struct Item {
    plan: TensorPlan,
    /// Source tensor, or `None` for generated tensors (`rope_freqs`).
    source: Option<usize>,
    generated: Option<Vec<f32>>,
    /// `(rows, groups)` when Q/K rows are permuted.
    permute: Option<(usize, usize)>,
    /// Gemma's RMS norms: write `1 + w`, rounded as the converter adds it (see [`encode`]).
    add_one: bool,
    /// For a stacked expert tensor (`ffn_*_exps`), the source tensor of each expert in order
    /// (`source` is `None`): encoded one expert after the other, so only one expert's rows are in
    /// memory at a time. Rows are quantized independently, so this equals quantizing the stack.
    experts: Vec<usize>,
}

/// llama.cpp's tensor order: non-block tensors first (by name), then by layer number, then name.
pub fn loader_order(a: &str, b: &str) -> std::cmp::Ordering {
    let layer = |n: &str| -> i64 {
        n.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|l| l.parse().ok()).unwrap_or(-1)
    };
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

fn is_llama_70b(arch: Arch, hp: &HParams) -> bool {
    // llama.cpp's model type detection for its attn_v bump (LLM_TYPE_70B).
    match arch {
        Arch::Llama => hp.n_layer == 80 && hp.n_head != hp.n_head_kv,
        Arch::Qwen2 => hp.n_layer == 80,
        // llama.cpp sizes Mixtral as `llama` (8x7B has 32 layers); Qwen MoE sizes are never 70B.
        Arch::Qwen3 | Arch::Gemma2 | Arch::Gemma3 | Arch::Granite | Arch::Olmo2 | Arch::SmolLM3 | Arch::Phi3
        | Arch::Qwen2Moe | Arch::Qwen3Moe => false,
    }
}

/// Plan the tensors: map names, check shapes against `config.json`, pick types.
fn plan_tensors(source: &dyn TensorSource, arch: Arch, hp: &HParams, qtype: QType) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut has_output = false;
    let mut mapped = Vec::new();
    // Per-expert tensors, grouped by the stacked GGUF tensor they become: (expert, source index).
    let mut stacks: BTreeMap<String, (Role, Vec<(usize, usize)>)> = BTreeMap::new();
    for i in 0..source.len() {
        let hf = source.name(i);
        if let Some((name, role)) = map_tensor(arch, hf)? {
            has_output |= role == Role::Output;
            if role.is_stacked_experts() {
                let e = expert_index(hf).ok_or_else(|| Error::Option(format!("tensor `{hf}` has no expert index")))?;
                stacks.entry(name).or_insert((role, Vec::new())).1.push((e, i));
            } else {
                mapped.push((i, name, role));
            }
        }
    }
    let n_expert = expert_count(source.config()).unwrap_or(0);
    let head_dim = source.config().get("head_dim").and_then(Value::as_u64).map_or(hp.n_embd / hp.n_head.max(1), |d| d as usize);
    for (i, name, role) in mapped {
        let shape = source.shape(i);
        let bad = |what: &str| Error::Shape(format!(
            "tensor `{}` has shape {shape:?}, which does not match config.json ({what})", source.name(i)));
        match role {
            Role::TokenEmbd | Role::Output if shape != [hp.vocab_size, hp.n_embd] => {
                return Err(bad(&format!("vocab_size {} x hidden_size {}", hp.vocab_size, hp.n_embd)));
            }
            Role::AttnQ(_) if name.ends_with(".weight") && shape != [hp.n_head * head_dim, hp.n_embd] => {
                return Err(bad("num_attention_heads x head_dim, hidden_size"));
            }
            Role::AttnK(_) | Role::AttnV(_) if shape != [hp.n_head_kv * head_dim, hp.n_embd] => {
                return Err(bad("num_key_value_heads x head_dim, hidden_size"));
            }
            _ => {}
        }
        if shape.is_empty() || shape.len() > 2 {
            return Err(bad("expected a vector or a matrix"));
        }
        let ncols = *shape.last().unwrap_or(&1);
        let ggml_type = tensor_type(qtype, role, ncols, hp, has_output, is_llama_70b(arch, hp));
        let ggml_type = eight_expert_type(qtype, role, ncols, n_expert, ggml_type);
        let permute = match (arch.permutes_qk(), permute_groups(role, hp)) {
            (true, Some(groups)) => Some((shape[0], groups)),
            // Biases of Q/K are `Role::Vector`: detect them by name.
            _ if arch.permutes_qk() && (name.contains(".attn_q.bias") || name.contains(".attn_k.bias")) => {
                Some((shape[0], if name.contains(".attn_q.") { hp.n_head } else { hp.n_head_kv }))
            }
            _ => None,
        };
        let add_one = arch.shifts_norms() && source.name(i).ends_with("norm.weight");
        items.push(Item { plan: TensorPlan::from_torch_shape(name, shape, ggml_type), source: Some(i), generated: None,
                          permute, add_one, experts: Vec::new() });
    }
    for (name, (role, mut parts)) in stacks {
        parts.sort_unstable();
        let (first_expert, first) = parts[0];
        let shape = source.shape(first).to_vec();
        let complete = parts.len() as u64 == n_expert && parts.iter().enumerate().all(|(k, &(e, _))| e == k);
        if !complete {
            return Err(Error::Option(format!(
                "`{name}` stacks the experts {:?} of `{}`, but config.json says {n_expert} experts (0..{n_expert})",
                parts.iter().map(|p| p.0).collect::<Vec<_>>(), source.name(first))));
        }
        if let Some(&(_, odd)) = parts.iter().find(|&&(_, i)| source.shape(i) != shape.as_slice()) {
            return Err(Error::Shape(format!("expert tensor `{}` has shape {:?}, expert {first_expert} has {shape:?}",
                                            source.name(odd), source.shape(odd))));
        }
        if shape.len() != 2 {
            return Err(Error::Shape(format!("expert tensor `{}` has shape {shape:?}: expected a matrix",
                                            source.name(first))));
        }
        let ncols = shape[1];
        let ggml_type = tensor_type(qtype, role, ncols, hp, has_output, is_llama_70b(arch, hp));
        let stacked = [parts.len(), shape[0], shape[1]];
        items.push(Item { plan: TensorPlan::from_torch_shape(name, &stacked, ggml_type), source: None, generated: None,
                          permute: None, add_one: false,
                          experts: parts.into_iter().map(|(_, i)| i).collect() });
    }
    if let Some(factors) = llama3_rope_factors(source.config()) {
        let plan = TensorPlan::from_torch_shape("rope_freqs.weight", &[factors.len()], GgmlType::F32);
        items.push(Item { plan, source: None, generated: Some(factors), permute: None, add_one: false,
                          experts: Vec::new() });
    }
    if arch == Arch::Phi3 {
        if let Some((_, long, short)) = phi3_rope_factors(source.config())? {
            for (name, factors) in [("rope_factors_long.weight", long), ("rope_factors_short.weight", short)] {
                let plan = TensorPlan::from_torch_shape(name, &[factors.len()], GgmlType::F32);
                items.push(Item { plan, source: None, generated: Some(factors), permute: None, add_one: false,
                                  experts: Vec::new() });
            }
        }
    }
    // Every tensor llama.cpp requires must be there.
    let names: std::collections::HashSet<&str> = items.iter().map(|it| it.plan.name.as_str()).collect();
    let mut required = vec!["token_embd.weight".to_string(), "output_norm.weight".to_string()];
    // A MoE replaces the architecture's dense FFN tensors by the experts (and the shared expert).
    let experts: &[&str] = if n_expert == 0 {
        &[]
    } else if source.config().get("shared_expert_intermediate_size").and_then(Value::as_u64).is_some_and(|n| n > 0) {
        &["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_inp_shexp", "ffn_gate_shexp",
          "ffn_up_shexp", "ffn_down_shexp"]
    } else {
        &["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
    };
    for b in 0..hp.n_layer {
        let block = arch.required_block_tensors().iter()
            .filter(|t| n_expert == 0 || !matches!(**t, "ffn_gate" | "ffn_up" | "ffn_down"));
        for t in block.chain(experts) {
            required.push(format!("blk.{b}.{t}.weight"));
        }
    }
    if let Some(missing) = required.iter().find(|r| !names.contains(r.as_str())) {
        return Err(Error::Option(format!("the model has no tensor for GGUF `{missing}` (config.json says {} layers)",
                                         hp.n_layer)));
    }
    if qtype.is_llama_quantize() {
        // llama-quantize writes each tensor with `ggml_n_dims` dimensions, dropping trailing ones
        // (Qwen2-MoE's `ffn_gate_inp_shexp`, [1, n_embd] in HF, becomes a vector).
        for it in &mut items {
            while it.plan.ne.len() > 1 && it.plan.ne.last() == Some(&1) {
                it.plan.ne.pop();
            }
        }
    }
    items.sort_by(|a, b| loader_order(&a.plan.name, &b.plan.name));
    Ok(items)
}

/// Encode whole rows stored as `dtype` bytes into `t`: the stored bytes themselves when the types
/// agree, else decoded and quantized in row blocks of about 64K values per task, so the f32
/// intermediate stays in cache and never exists for the whole chunk.
fn encode_stored_rows(stored: &[u8], dtype: DType, ncols: usize, t: GgmlType) -> Result<Vec<u8>> {
    let same = matches!((dtype, t), (DType::F32, GgmlType::F32) | (DType::F16, GgmlType::F16) | (DType::BF16, GgmlType::BF16));
    if same {
        return Ok(stored.to_vec());
    }
    let row_bytes = t.row_bytes(ncols).ok_or_else(|| Error::Shape(format!(
        "row length {ncols} is not a multiple of {}'s block size", t.name())))?;
    let rows = stored.len() / (ncols * dtype.size());
    let mut out = vec![0u8; rows * row_bytes];
    let rows_per_task = (65536 / ncols.max(1)).max(1);
    let tasks: Vec<(&mut [u8], &[u8])> =
        out.chunks_mut(rows_per_task * row_bytes).zip(stored.chunks(rows_per_task * ncols * dtype.size())).collect();
    let work = |(dst, src): (&mut [u8], &[u8])| -> Result<()> {
        let mut values = vec![0f32; src.len() / dtype.size()];
        decode_into(src, dtype, &mut values);
        for (row_out, row_in) in dst.chunks_mut(row_bytes).zip(values.chunks(ncols)) {
            quantize_row(t, row_in, row_out)?;
        }
        Ok(())
    };
    if tasks.len() > 1 && crate::parallel::enabled() {
        use rayon::prelude::*;
        crate::parallel::install(|| tasks.into_par_iter().try_for_each(work))?;
    } else {
        tasks.into_iter().try_for_each(work)?;
    }
    Ok(out)
}

/// Encode one tensor in its planned ggml type, handing the bytes to `emit` in one or more pieces
/// (whole rows each). Untouched stored tensors are converted in row chunks; merged, permuted or
/// generated ones whole.
fn encode(source: &dyn TensorSource, item: &Item, emit: &mut dyn FnMut(Vec<u8>) -> bool) -> Result<()> {
    let ncols = item.plan.ne[0] as usize;
    let quantize = |values: &[f32]| -> Result<Vec<u8>> {
        let rows = values.len() / ncols.max(1);
        let row_bytes = item.plan.ggml_type.row_bytes(ncols).unwrap_or(0);
        let mut bytes = vec![0u8; rows * row_bytes];
        quantize_rows(item.plan.ggml_type, values, ncols, &mut bytes)?;
        Ok(bytes)
    };
    if !item.experts.is_empty() {
        for &i in &item.experts {
            let part = Item { plan: item.plan.clone(), source: Some(i), generated: None, permute: None, add_one: false,
                              experts: Vec::new() };
            let mut live = true;
            encode(source, &part, &mut |bytes| {
                live = emit(bytes);
                live
            })?;
            if !live {
                return Ok(());
            }
        }
        return Ok(());
    }
    if let (Some(i), None, None, false) = (item.source, &item.generated, item.permute, item.add_one) {
        if let Some((stored, dtype)) = source.raw(i) {
            let rows_per_chunk = (CHUNK_VALUES / ncols.max(1)).max(1);
            for chunk in stored.chunks(rows_per_chunk * ncols * dtype.size()) {
                populate_pages(chunk);
                let bytes = encode_stored_rows(chunk, dtype, ncols, item.plan.ggml_type)?;
                release_pages(chunk);
                if !emit(bytes) {
                    return Ok(());
                }
            }
            source.release(i);
            return Ok(());
        }
    }
    let mut values = match (&item.generated, item.source) {
        (Some(v), _) => v.clone(),
        (None, Some(i)) => {
            let mut v = source.read_f32(i)?;
            if item.add_one {
                v.iter_mut().for_each(|x| *x += 1.0);
                // The converter widens BF16 to F32 before adding, but adds to F16 in F16 (torch
                // rounds the exact sum once).
                if let Some((_, DType::F16)) = source.raw(i) {
                    round_to_dtype(&mut v, DType::F16);
                }
            }
            source.release(i);
            v
        }
        (None, None) => unreachable!("planned tensors have a source"),
    };
    if let Some((rows, groups)) = item.permute {
        values = permute_qk_rows(&values, rows, groups)?;
    }
    emit(quantize(&values)?);
    Ok(())
}

/// Write `source` as a GGUF model file. `tokenizer_kvs` are the `tokenizer.*` keys (see
/// [`crate::gguf::vocab`]), appended after the model keys as llama.cpp's converter does.
pub fn export_gguf(source: &dyn TensorSource, tokenizer_kvs: Vec<(String, GgufValue)>, opts: &ExportOptions)
                   -> Result<ExportReport> {
    check_output_disjoint(&opts.out, &source.inputs())?;
    check_target(&opts.out, opts.overwrite, false)?;
    let config = source.config();
    let arch = Arch::from_config(config)?;
    let hp = HParams::from_config(config)?;
    let items = plan_tensors(source, arch, &hp, opts.qtype)?;

    let mut kvs: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), GgufValue::String(arch.name().into())),
        ("general.type".into(), GgufValue::String("model".into())),
        ("general.name".into(), GgufValue::String(opts.name.clone())),
    ];
    kvs.extend(hparam_kvs(arch, config, opts.qtype.file_type())?);
    kvs.push(("general.quantization_version".into(), GgufValue::U32(2)));
    kvs.extend(tokenizer_kvs);

    let plan: Vec<TensorPlan> = items.iter().map(|it| it.plan.clone()).collect();
    let mut types = BTreeMap::new();
    for p in &plan {
        *types.entry(p.ggml_type.name().to_string()).or_insert(0) += 1;
    }
    let mut writer = GgufWriter::create(&opts.out, &kvs, plan, opts.overwrite)?;
    // Encode the next piece while the previous one is written; at most two pieces wait.
    enum Piece {
        Data(usize, Vec<u8>),
        Done(usize),
    }
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = sync_channel::<Result<Piece>>(2);
        let items = &items;
        scope.spawn(move || {
            for (n, item) in items.iter().enumerate() {
                let mut emit = |bytes: Vec<u8>| tx.send(Ok(Piece::Data(n, bytes))).is_ok();
                let done = encode(source, item, &mut emit).map(|()| Piece::Done(n));
                let failed = done.is_err();
                if tx.send(done).is_err() || failed {
                    return;
                }
            }
        });
        let mut current: Option<usize> = None;
        for piece in rx.iter() {
            match piece? {
                Piece::Data(n, bytes) => {
                    if current != Some(n) {
                        writer.begin(&items[n].plan.name)?;
                        current = Some(n);
                    }
                    writer.append(&bytes)?;
                }
                Piece::Done(n) => {
                    if current != Some(n) {
                        writer.begin(&items[n].plan.name)?;
                    }
                    writer.end()?;
                    current = None;
                }
            }
        }
        Ok(())
    })?;
    let path = writer.finish()?;
    let bytes = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
    Ok(ExportReport { path: path.display().to_string(), arch: arch.name().into(), qtype: opts.qtype.name().into(),
                      file_type: opts.qtype.file_type(), tensors: items.len(), types, bytes,
                      dequantized_nf4: source.dequantized_nf4() })
}

/// `general.name` for a model directory: its folder name.
pub fn default_name(model_dir: &Path) -> String {
    model_dir.canonicalize().ok().as_deref().unwrap_or(model_dir).file_name()
        .map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_order_sorts_layers_numerically() {
        let mut names = vec!["blk.10.attn_q.weight", "output.weight", "blk.2.attn_k.weight", "blk.2.attn_v.weight",
                             "token_embd.weight", "blk.1.ffn_up.weight", "output_norm.weight"];
        names.sort_by(|a, b| loader_order(a, b));
        assert_eq!(names, vec!["output.weight", "output_norm.weight", "token_embd.weight", "blk.1.ffn_up.weight",
                               "blk.2.attn_k.weight", "blk.2.attn_v.weight", "blk.10.attn_q.weight"]);
    }
}
