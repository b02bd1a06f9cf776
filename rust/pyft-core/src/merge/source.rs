//! A base model with adapters folded in, read tensor by tensor: the source behind `pyft-merge`
//! (safetensors shards) and the GGUF exporter.
//!
//! [`MergedModel::open`] maps the base files and adapters and validates everything up front
//! (shapes, missing tensors, adapted modules without a base weight, combination rules), so a
//! consumer fails before writing anything. Afterwards each tensor is either untouched
//! ([`MergedModel::raw`], zero-copy from the mmap) or computed on demand in f32
//! ([`MergedModel::read_f32`]); nothing is cached, so memory stays at about the tensors in flight.
//! The type is `Sync`: several threads may read different tensors at once. A tensor that is
//! untouched, or gets one plain LoRA delta, can also be produced a block of rows at a time
//! straight into the output dtype ([`MergedModel::rows`]), with no f32 copy of the whole tensor.
//!
//! A bitsandbytes NF4 base (`quantization_config` in `config.json`) is read through
//! [`crate::nf4::checkpoint`]: each quantized weight is one tensor of its recorded 16-bit dtype and
//! shape whose values are bitsandbytes' dequantization, computed a block of rows at a time; the
//! quant-state tensors are hidden and `quantization_config` is dropped from the config. Adapters
//! merge onto the dequantized values. Nothing is ever quantized back to 4 bits.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::io::safetensors::{model_files, SafetensorsFile, TensorInfo};
use crate::merge::combine::{disjoint_mean, magnitude_prune, random_prune, stream_key, weighted_sum};
use crate::merge::adapter::{Adapter, PeftTensors};
use crate::merge::ia3::{scale_columns, scale_rows, Ia3Adapter};
use crate::merge::lora::{add_product, merge_f32_rows, merge_into, merge_rows, LoraAdapter};
use crate::merge::oft::{OftAdapter, Rotation};
use crate::merge::svd::truncate_product;
use crate::nf4::checkpoint::{check_config, find_weights, Nf4Weight};
use crate::tensor::{decode_into, encode_into, from_f32, to_f32, DType};

/// One adapter to merge and its weight in the combination.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInput {
    /// A PEFT adapter directory (LoRA, IA3 or OFT).
    pub dir: PathBuf,
    /// Its weight `w_i` (1.0 for a plain merge).
    pub weight: f32,
}

/// How the delta weights `ΔW_i = s_i · B_i A_i` of several adapters combine (see [`super::combine`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Combine {
    /// `Σ w_i ΔW_i`.
    Linear,
    /// TIES: magnitude-prune each delta to `density`, elect signs, disjoint weighted mean.
    Ties {
        /// Fraction of each delta kept, in `(0, 1]`.
        density: f32,
    },
    /// DARE: random drop to `density` with `1/density` rescaling, then `Σ w_i ΔW_i`.
    DareLinear {
        /// Fraction of each delta kept, in `(0, 1]`.
        density: f32,
        /// Seed of the drops.
        seed: u64,
    },
    /// DARE drop, then the TIES sign election and disjoint mean.
    DareTies {
        /// Fraction of each delta kept, in `(0, 1]`.
        density: f32,
        /// Seed of the drops.
        seed: u64,
    },
    /// `Σ w_i ΔW_i` truncated to `rank` by SVD (default: the largest adapter rank, as PEFT).
    Svd {
        /// Rank of the result.
        rank: Option<usize>,
    },
}

impl Combine {
    /// Build from a method name (`linear`, `ties`, `dare_linear`, `dare_ties`, `svd`) and its
    /// options; `density` is required by (and only allowed with) TIES/DARE, `svd_rank` only with SVD.
    pub fn from_name(method: &str, density: Option<f32>, seed: u64, svd_rank: Option<usize>) -> Result<Combine> {
        let needs_density = matches!(method, "ties" | "dare_linear" | "dare_ties");
        let density = match (needs_density, density) {
            (true, None) => return Err(Error::Option(format!("method `{method}` needs a density in (0, 1]"))),
            (false, Some(_)) => return Err(Error::Option(format!("density is not used by method `{method}`"))),
            (_, d) => d.unwrap_or(1.0),
        };
        if svd_rank.is_some() && method != "svd" {
            return Err(Error::Option(format!("svd_rank is not used by method `{method}`")));
        }
        let c = match method {
            "linear" => Combine::Linear,
            "ties" => Combine::Ties { density },
            "dare_linear" => Combine::DareLinear { density, seed },
            "dare_ties" => Combine::DareTies { density, seed },
            "svd" => Combine::Svd { rank: svd_rank },
            other => return Err(Error::Option(format!(
                "unknown merge method `{other}` (expected linear, ties, dare_linear, dare_ties or svd)"))),
        };
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<()> {
        match *self {
            Combine::Ties { density } | Combine::DareLinear { density, .. } | Combine::DareTies { density, .. }
                if !(density > 0.0 && density <= 1.0) =>
            {
                Err(Error::Option(format!("density {density} is not in (0, 1]")))
            }
            Combine::Svd { rank: Some(0) } => Err(Error::Option("svd_rank must be at least 1".into())),
            _ => Ok(()),
        }
    }

    /// The density as PEFT's Python float: the shortest decimal of the f32, read as f64 (so
    /// `⌊0.7 · 10⌋` is 7 as in Python, not 6).
    fn density(&self) -> f64 {
        match *self {
            Combine::Ties { density } | Combine::DareLinear { density, .. } | Combine::DareTies { density, .. } => {
                density.to_string().parse().unwrap_or(f64::from(density))
            }
            _ => 1.0,
        }
    }
}

/// One tensor of the merged model.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTensor {
    /// HF tensor name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Shape in torch order (`[out, in]` for a linear weight).
    pub shape: Vec<usize>,
    /// The dtype the base model stores it in.
    pub dtype: DType,
}

/// Where a tensor's starting values live.
#[derive(Debug)]
enum Data {
    Base(usize, TensorInfo),
    Adapter(usize, TensorInfo),
    /// An NF4 weight of the base (index into `MergedModel::nf4`), dequantized when read.
    Nf4(usize),
}

#[derive(Debug)]
struct Entry {
    data: Data,
    /// `(adapter index, module path)` of every adapter with a delta for this tensor.
    deltas: Vec<(usize, String)>,
    /// What the one IA3/OFT adapter does to this tensor.
    op: Option<Op>,
}

/// The change an IA3 or OFT adapter makes to one tensor (see [`super::ia3`], [`super::oft`]).
#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// IA3 on a linear weight: scale its input columns (`feedforward`) or output rows.
    Ia3 { module: String, feedforward: bool },
    /// IA3 on the bias of an output-scaled module: scale each element.
    Ia3Bias { module: String },
    /// OFT on a linear or embedding weight: rotate each row.
    Oft { module: String },
}

/// An adapter that multiplies weights (IA3, OFT): merged alone, not combined with others.
#[derive(Debug)]
enum Single {
    Ia3(Ia3Adapter),
    Oft(OftAdapter),
}

impl Single {
    fn tensors(&self) -> &PeftTensors {
        match self {
            Single::Ia3(a) => &a.tensors,
            Single::Oft(a) => &a.tensors,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Single::Ia3(_) => "IA3",
            Single::Oft(_) => "OFT",
        }
    }
}

/// The parts of an adapter file that replace base tensors, for the checks common to all kinds.
struct Copies<'a> {
    dir: &'a Path,
    file: &'a SafetensorsFile,
    saved: &'a std::collections::BTreeMap<String, TensorInfo>,
    base_copies: &'a std::collections::BTreeMap<String, TensorInfo>,
}

/// A base model plus adapters, combined lazily per tensor. See the module docs.
#[derive(Debug)]
pub struct MergedModel {
    base: PathBuf,
    config: Value,
    files: Vec<SafetensorsFile>,
    nf4: Vec<Nf4Weight>,
    /// The LoRA adapters (empty when `single` holds an IA3/OFT adapter).
    adapters: Vec<LoraAdapter>,
    /// The one IA3/OFT adapter, merged alone; `Data::Adapter(0, _)` then points into its file.
    single: Option<Single>,
    weights: Vec<f32>,
    method: Combine,
    tensors: Vec<SourceTensor>,
    entries: Vec<Entry>,
}

fn file_err(path: &Path, message: String) -> Error {
    Error::File { path: path.to_path_buf(), message }
}

fn mismatch(dir: &Path, name: &str, adapter_shape: &[usize], base_shape: &[usize]) -> Error {
    file_err(dir, format!("`{name}`: the adapter needs shape {adapter_shape:?} but the base model has \
                                    {base_shape:?}: the adapter was trained on a different base model"))
}

/// Record `dtype` as the model's dtype in a `config.json`: `torch_dtype`, and `dtype` too when the
/// config has it (transformers ≥ 5 writes `dtype`, 4.x `torch_dtype`; both read either).
pub(crate) fn set_config_dtype(config: &mut Value, dtype: DType) {
    config["torch_dtype"] = json!(dtype.torch_name());
    if config.get("dtype").is_some() {
        config["dtype"] = json!(dtype.torch_name());
    }
}

impl MergedModel {
    /// The directories this model is read from: the base, then each adapter.
    pub fn input_dirs(&self) -> Vec<&Path> {
        std::iter::once(self.base.as_path())
            .chain(self.adapters.iter().map(|a| a.dir.as_path()))
            .chain(self.single.iter().map(|s| s.tensors().dir.as_path()))
            .collect()
    }

    /// The file of adapter `ai` (the IA3/OFT adapter when there is one).
    fn adapter_file(&self, ai: usize) -> &SafetensorsFile {
        match &self.single {
            Some(s) => &s.tensors().file,
            None => &self.adapters[ai].file,
        }
    }

    /// Open `base` (config.json + safetensors) and `adapters` (may be empty), combined by `method`,
    /// and validate that everything fits. No tensor data is read except PEFT's copies of embedding
    /// base weights, compared with the base.
    pub fn open(base: &Path, adapters: &[AdapterInput], method: Combine) -> Result<MergedModel> {
        method.check()?;
        if let Some(a) = adapters.iter().find(|a| !a.weight.is_finite()) {
            return Err(Error::Option(format!("weight {} of adapter {} is not finite", a.weight, a.dir.display())));
        }
        let cfg_path = base.join("config.json");
        let cfg_text = crate::io::file::read_to_string(&cfg_path)?;
        let mut config: Value = serde_json::from_str(&cfg_text)
            .map_err(|e| file_err(&cfg_path, format!("malformed JSON: {e}")))?;
        if !config.is_object() {
            return Err(file_err(&cfg_path, "not a JSON object (a model config is {\"model_type\": ...})".into()));
        }
        let nf4_base = check_config(&config, &cfg_path)?;
        let files: Vec<SafetensorsFile> =
            model_files(base)?.iter().map(|p| SafetensorsFile::open_any(p)).collect::<Result<_>>()?;
        let (nf4, hidden) = if nf4_base { find_weights(&files)? } else { (Vec::new(), HashSet::new()) };
        if nf4_base {
            // The output is dense: it must not claim to be quantized.
            if let Some(c) = config.as_object_mut() {
                c.remove("quantization_config");
            }
            let dtypes: HashSet<DType> = nf4.iter().map(|w| w.meta.dtype).collect();
            if let (1, Some(&d)) = (dtypes.len(), dtypes.iter().next()) {
                set_config_dtype(&mut config, d);
            }
        }
        let all: Vec<Adapter> = adapters.iter().map(|a| Adapter::open(&a.dir)).collect::<Result<_>>()?;
        let single_plain = all.len() == 1 && method == Combine::Linear && adapters[0].weight == 1.0;
        let mut opened: Vec<LoraAdapter> = Vec::with_capacity(all.len());
        let mut single = None;
        for a in all {
            let dir = a.dir().to_path_buf();
            let other = match a {
                Adapter::Lora(l) => {
                    opened.push(l);
                    continue;
                }
                Adapter::Ia3(x) => Single::Ia3(x),
                Adapter::Oft(x) => Single::Oft(x),
            };
            if !single_plain {
                return Err(file_err(&dir, format!(
                    "{} adapters merge alone (one adapter, weight 1, method linear): they multiply the weights \
                     rather than add a delta, so there is nothing to weight or combine with other adapters; \
                     merge it by itself first, then merge other adapters into the result", other.kind())));
            }
            single = Some(other);
        }
        if let Some(d) = opened.iter().find(|a| a.dora) {
            if !single_plain {
                return Err(file_err(&d.dir, "DoRA adapters cannot be combined or weighted (their magnitude \
                                             renormalises the whole weight); merge a DoRA adapter alone".into()));
            }
        }
        let with_saved: Vec<&LoraAdapter> = opened.iter().filter(|a| !a.saved.is_empty()).collect();
        if with_saved.len() > 1 {
            return Err(file_err(&with_saved[1].dir, format!(
                "both this adapter and {} replace whole modules (modules_to_save); only one adapter may",
                with_saved[0].dir.display())));
        }

        let mut tensors = Vec::new();
        let mut entries = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let nf4_index: HashMap<&str, usize> = nf4.iter().enumerate().map(|(k, w)| (w.name.as_str(), k)).collect();
        for (fi, f) in files.iter().enumerate() {
            if let Some(t) = f.others.iter().find(|t| !hidden.contains(&t.name)) {
                let hint = if !nf4_base && t.name.contains(".quant_state.bitsandbytes__") {
                    " (a bitsandbytes 4-bit quant state, but config.json has no `quantization_config`)"
                } else {
                    ""
                };
                return Err(file_err(f.path(), format!("tensor `{}` has dtype {}; expected F32, F16 or BF16{hint}",
                                                      t.name, t.dtype)));
            }
            // In data order; an NF4 weight's packed codes stand for the weight, its state is hidden.
            let mut order: Vec<(usize, &str, Option<&TensorInfo>)> =
                f.tensors.iter().map(|t| (t.range.0, t.name.as_str(), Some(t)))
                    .chain(f.others.iter().map(|t| (t.range.0, t.name.as_str(), None))).collect();
            order.sort_by_key(|&(start, ..)| start);
            for (_, name, t) in order {
                let (shape, dtype, data) = match (nf4_index.get(name), t) {
                    (Some(&k), _) => (nf4[k].meta.shape.clone(), nf4[k].meta.dtype, Data::Nf4(k)),
                    (None, Some(t)) if !hidden.contains(name) => (t.shape.clone(), t.dtype, Data::Base(fi, t.clone())),
                    _ => continue, // quant state
                };
                index.insert(name.to_string(), tensors.len());
                tensors.push(SourceTensor { name: name.to_string(), shape, dtype });
                entries.push(Entry { data, deltas: Vec::new(), op: None });
            }
        }
        let copies: Vec<Copies> = match &single {
            Some(s) => {
                let t = s.tensors();
                vec![Copies { dir: &t.dir, file: &t.file, saved: &t.saved, base_copies: &t.base_copies }]
            }
            None => opened.iter()
                .map(|a| Copies { dir: &a.dir, file: &a.file, saved: &a.saved, base_copies: &a.base_copies })
                .collect(),
        };
        for (ai, ad) in copies.iter().enumerate() {
            for (name, t) in ad.saved {
                match index.get(name) {
                    Some(&i) => {
                        if t.shape != tensors[i].shape {
                            return Err(mismatch(ad.dir, name, &t.shape, &tensors[i].shape));
                        }
                        entries[i].data = Data::Adapter(ai, t.clone());
                    }
                    // A trained copy of a tied output layer becomes a tensor of its own.
                    None if name == "lm_head.weight" && config["tie_word_embeddings"].as_bool() == Some(true) => {
                        config["tie_word_embeddings"] = json!(false);
                        let dtype = tensors.first().map(|t| t.dtype).unwrap_or(DType::F32);
                        tensors.push(SourceTensor { name: name.clone(), shape: t.shape.clone(), dtype });
                        entries.push(Entry { data: Data::Adapter(ai, t.clone()), deltas: Vec::new(), op: None });
                        index.insert(name.clone(), tensors.len() - 1);
                    }
                    None => {
                        return Err(file_err(ad.dir, format!("saved tensor `{name}` has no counterpart in the base model")))
                    }
                }
            }
        }
        // PEFT saves the base weight of an adapted embedding next to its LoRA; it is the base unless
        // the vocabulary was resized or trained, in which case it replaces the base (as PEFT loads it).
        for (ai, ad) in copies.iter().enumerate() {
            for (name, t) in ad.base_copies {
                let Some(&i) = index.get(name) else {
                    return Err(file_err(ad.dir, format!("saved base weight `{name}` has no counterpart in the base model")));
                };
                if t.shape != tensors[i].shape {
                    return Err(mismatch(ad.dir, name, &t.shape, &tensors[i].shape));
                }
                let dequantized;
                let (x, x_dtype) = match &entries[i].data {
                    Data::Base(fi, bt) => (files[*fi].bytes(bt), bt.dtype),
                    Data::Nf4(k) => {
                        dequantized = from_f32(&nf4_values(&nf4[*k], &files)?, tensors[i].dtype);
                        (&dequantized[..], tensors[i].dtype)
                    }
                    Data::Adapter(..) => return Err(file_err(ad.dir, format!("`{name}` is replaced by two adapters"))),
                };
                let y = ad.file.bytes(t);
                // Compared in the base's dtype: PEFT loads the copy into the base's parameter.
                let same = if x_dtype == t.dtype { x == y } else { from_f32(&to_f32(y, t.dtype), x_dtype) == x };
                if !same {
                    if copies.iter().enumerate().any(|(aj, o)| aj != ai && (!o.saved.is_empty() || !o.base_copies.is_empty())) {
                        return Err(file_err(ad.dir, format!(
                            "`{name}`: this adapter carries a changed base weight and another adapter replaces \
                             weights too; only one adapter may")));
                    }
                    entries[i].data = Data::Adapter(ai, t.clone());
                }
            }
        }
        for (ai, ad) in opened.iter().enumerate() {
            for (module, m) in &ad.modules {
                let name = format!("{module}.weight");
                let Some(&i) = index.get(&name) else {
                    return Err(file_err(&ad.dir, format!("adapted module `{module}` has no weight `{name}` in the base model")));
                };
                let expected = m.weight_shape();
                if tensors[i].shape != expected {
                    return Err(mismatch(&ad.dir, &name, &expected, &tensors[i].shape));
                }
                entries[i].deltas.push((ai, module.clone()));
            }
        }
        if let Some(s) = &single {
            let dir = &s.tensors().dir;
            let modules: Vec<&String> = match s {
                Single::Ia3(a) => a.modules.keys().collect(),
                Single::Oft(a) => a.modules.keys().collect(),
            };
            for module in modules {
                let name = format!("{module}.weight");
                let Some(&i) = index.get(&name) else {
                    return Err(file_err(dir, format!("adapted module `{module}` has no weight `{name}` in the base model")));
                };
                let shape = tensors[i].shape.clone();
                let op = match s {
                    Single::Ia3(a) => {
                        let feedforward = a.resolve(module, &shape)?;
                        let bias = format!("{module}.bias");
                        if let (false, Some(&b)) = (feedforward, index.get(&bias)) {
                            if tensors[b].shape != shape[..1] {
                                return Err(mismatch(dir, &bias, &shape[..1], &tensors[b].shape));
                            }
                            entries[b].op = Some(Op::Ia3Bias { module: module.clone() });
                        }
                        Op::Ia3 { module: module.clone(), feedforward }
                    }
                    Single::Oft(a) => {
                        a.check(module, &shape)?;
                        Op::Oft { module: module.clone() }
                    }
                };
                entries[i].op = Some(op);
            }
        }
        Ok(MergedModel { base: base.to_path_buf(), config, files, nf4, adapters: opened, single,
                         weights: adapters.iter().map(|a| a.weight).collect(), method, tensors, entries })
    }

    /// The base `config.json` (`tie_word_embeddings` set to false when an adapter's `lm_head`
    /// copy unties the output layer).
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// The tensors, in the base files' order (then an untied `lm_head.weight`).
    pub fn tensors(&self) -> &[SourceTensor] {
        &self.tensors
    }

    /// Whether tensor `i` differs from the base: it gets a delta or a replacement.
    pub fn is_modified(&self, i: usize) -> bool {
        self.has_delta(i) || self.is_replaced(i)
    }

    /// Whether tensor `i` gets an adapter delta (LoRA) or transform (IA3 scaling, OFT rotation).
    pub fn has_delta(&self, i: usize) -> bool {
        !self.entries[i].deltas.is_empty() || self.entries[i].op.is_some()
    }

    /// Whether tensor `i` is the weight of an adapted module (not a bias an IA3 adapter scales).
    pub fn is_merged_weight(&self, i: usize) -> bool {
        self.has_delta(i) && !matches!(self.entries[i].op, Some(Op::Ia3Bias { .. }))
    }

    /// Whether tensor `i` starts from an adapter's copy (`modules_to_save`, a changed embedding base).
    pub fn is_replaced(&self, i: usize) -> bool {
        matches!(self.entries[i].data, Data::Adapter(..))
    }

    /// Whether tensor `i` is an NF4 weight of the base, dequantized when read.
    pub fn is_nf4(&self, i: usize) -> bool {
        matches!(self.entries[i].data, Data::Nf4(..))
    }

    /// How many of the tensors are dequantized from NF4 (0 for a float base).
    pub fn dequantized_nf4(&self) -> usize {
        self.entries.iter().filter(|e| matches!(e.data, Data::Nf4(..))).count()
    }

    /// The stored bytes of tensor `i` and their dtype when it is unmodified (zero-copy); `None`
    /// for a modified or NF4 tensor.
    pub fn raw(&self, i: usize) -> Option<(&[u8], DType)> {
        if self.is_modified(i) { None } else { self.stored(i) }
    }

    /// The bytes tensor `i` starts from (the base's, or an adapter's copy) and their dtype; `None`
    /// for an NF4 weight, which has no stored bytes of its dtype.
    pub fn stored(&self, i: usize) -> Option<(&[u8], DType)> {
        match &self.entries[i].data {
            Data::Base(fi, t) => Some((self.files[*fi].bytes(t), t.dtype)),
            Data::Adapter(ai, t) => Some((self.adapter_file(*ai).bytes(t), t.dtype)),
            Data::Nf4(_) => None,
        }
    }

    /// Let the kernel drop the cached pages of tensor `i` (call after using it).
    pub fn release(&self, i: usize) {
        match &self.entries[i].data {
            Data::Base(fi, t) => self.files[*fi].release(t),
            Data::Adapter(ai, t) => self.adapter_file(*ai).release(t),
            Data::Nf4(k) => self.nf4[*k].release(&self.files),
        }
    }

    /// The file and byte range of tensor `i` when it is unmodified and stored as `dtype`, so it
    /// can be copied file to file.
    pub fn file_range(&self, i: usize, dtype: DType) -> Option<(&Path, u64, usize)> {
        if self.has_delta(i) || self.tensors[i].dtype != dtype {
            return None;
        }
        let (file, t) = match &self.entries[i].data {
            Data::Base(fi, t) => (&self.files[*fi], t),
            Data::Adapter(ai, t) => (self.adapter_file(*ai), t),
            Data::Nf4(_) => return None,
        };
        let (offset, len) = file.file_range(t);
        (t.dtype == dtype).then_some((file.path(), offset, len))
    }

    /// Tensor `i` as rows to produce a block at a time (see [`TensorRows`]), when it is untouched
    /// or gets one plain LoRA delta (no DoRA, no combination, no dtype change of an adapter's copy);
    /// `None` otherwise: use [`read_f32`](Self::read_f32).
    pub fn rows(&self, i: usize) -> Result<Option<TensorRows<'_>>> {
        let source = match &self.entries[i].data {
            Data::Nf4(k) => {
                let weight = &self.nf4[*k];
                RowSource::Nf4 { weight, files: &self.files, scales: weight.scales(&self.files)? }
            }
            _ => match self.stored(i) {
                Some((bytes, dtype)) if dtype == self.tensors[i].dtype => RowSource::Stored { bytes, dtype },
                _ => return Ok(None),
            },
        };
        let shape = &self.tensors[i].shape;
        let rows = shape.first().copied().unwrap_or(1);
        let width = shape.iter().product::<usize>().checked_div(rows).unwrap_or(0);
        let op = match (self.entries[i].deltas.as_slice(), &self.entries[i].op) {
            ([], None) => None,
            ([], Some(op)) => Some(self.row_op(i, op)?),
            ([(ai, m)], _) if self.adapters.len() == 1 && self.method == Combine::Linear && self.weights[0] == 1.0 => {
                let module = &self.adapters[*ai].modules[m];
                if module.magnitude.is_some() {
                    return Ok(None);
                }
                let (b, a) = module.factors(&self.adapters[*ai].file);
                Some(RowOp::Lora(RowLora { b, a, rank: module.rank(), scaling: module.scaling }))
            }
            _ => return Ok(None),
        };
        Ok(Some(TensorRows { source, rows, width, op }))
    }

    /// The per-row form of an IA3/OFT change to tensor `i`.
    fn row_op(&self, i: usize, op: &Op) -> Result<RowOp> {
        let internal = || Error::Internal(format!("tensor `{}`: adapter kind changed", self.tensors[i].name));
        let ia3_factors = |a: &Ia3Adapter, module: &str| {
            let l = &a.modules[module].l;
            to_f32(a.tensors.file.bytes(l), l.dtype)
        };
        Ok(match (op, &self.single) {
            (Op::Ia3 { module, feedforward: true }, Some(Single::Ia3(a))) => RowOp::ScaleColumns(ia3_factors(a, module)),
            (Op::Ia3 { module, feedforward: false } | Op::Ia3Bias { module }, Some(Single::Ia3(a))) => {
                RowOp::ScaleRows(ia3_factors(a, module))
            }
            (Op::Oft { module }, Some(Single::Oft(a))) => {
                let inp = self.tensors[i].shape.get(1).copied().ok_or_else(internal)?;
                RowOp::Rotate(a.rotation(module, inp)?)
            }
            _ => return Err(internal()),
        })
    }

    /// The merged values of tensor `i` in f32, row-major in its torch shape. An adapter's copy
    /// stored in another dtype than the base's is first rounded to the base's dtype, as PEFT
    /// loads it into the base parameter; an NF4 weight is dequantized as bitsandbytes does.
    pub fn read_f32(&self, i: usize) -> Result<Vec<f32>> {
        let mut v = match self.stored(i) {
            Some((bytes, dtype)) => {
                let v = to_f32(bytes, dtype);
                if dtype == self.tensors[i].dtype { v } else { to_f32(&from_f32(&v, self.tensors[i].dtype), self.tensors[i].dtype) }
            }
            None => match &self.entries[i].data {
                Data::Nf4(k) => nf4_values(&self.nf4[*k], &self.files)?,
                _ => unreachable!("only NF4 weights have no stored bytes"),
            },
        };
        if let Some(op) = &self.entries[i].op {
            let width = self.tensors[i].shape.get(1).copied().unwrap_or(1);
            self.row_op(i, op)?.apply(&mut v, width, 0, true);
            return Ok(v);
        }
        let deltas = &self.entries[i].deltas;
        if deltas.is_empty() {
            return Ok(v);
        }
        let (out, inp) = (self.tensors[i].shape[0], self.tensors[i].shape[1]);
        let module = |&(ai, ref m): &(usize, String)| (ai, &self.adapters[ai].modules[m]);
        if self.adapters.len() == 1 && self.method == Combine::Linear && self.weights[0] == 1.0 {
            // The plain merge (also DoRA): W + s·BA, bit-compatible with PEFT's merge_and_unload.
            let (ai, m) = module(&deltas[0]);
            merge_into(&mut v, out, inp, m, &self.adapters[ai].file);
            return Ok(v);
        }
        if let Combine::Svd { rank } = self.method {
            // Σ w_i s_i B_i A_i = [w_1 s_1 B_1 | …] · [A_1; …], truncated from its factors.
            let total: usize = deltas.iter().map(|d| module(d).1.rank()).sum();
            let (mut b_cat, mut a_cat) = (vec![0f64; out * total], Vec::with_capacity(total * inp));
            let mut col = 0;
            for d in deltas {
                let (ai, m) = module(d);
                let (b, a) = m.factors(&self.adapters[ai].file);
                let (r, s) = (m.rank(), f64::from(self.weights[ai]) * f64::from(m.scaling));
                for o in 0..out {
                    for k in 0..r {
                        b_cat[o * total + col + k] = f64::from(b[o * r + k]) * s;
                    }
                }
                a_cat.extend(a.iter().map(|&x| f64::from(x)));
                col += r;
            }
            let rank = rank.unwrap_or_else(|| self.adapters.iter().map(|a| a.max_rank).max().unwrap_or(1));
            let (b, a, r) = truncate_product(&b_cat, &a_cat, out, total, inp, rank);
            add_product(&mut v, out, inp, &b, &a, r, 1.0, None);
            return Ok(v);
        }
        // Dense deltas s_i·(B_i @ A_i), pruned per method, then combined. Adapters without this
        // module contribute zeros, which change none of the methods' results: they are skipped.
        let density = self.method.density();
        let mut dense = Vec::with_capacity(deltas.len());
        let mut weights = Vec::with_capacity(deltas.len());
        for d in deltas {
            let (ai, m) = module(d);
            let (b, a) = m.factors(&self.adapters[ai].file);
            let mut delta = vec![0f32; out * inp];
            add_product(&mut delta, out, inp, &b, &a, m.rank(), m.scaling, None);
            match self.method {
                Combine::Ties { .. } => magnitude_prune(&mut delta, density),
                Combine::DareLinear { seed, .. } | Combine::DareTies { seed, .. } => {
                    random_prune(&mut delta, density, stream_key(seed, &self.tensors[i].name, ai))
                }
                _ => {}
            }
            dense.push(delta);
            weights.push(self.weights[ai]);
        }
        let mut combined = vec![0f32; out * inp];
        match self.method {
            Combine::Ties { .. } | Combine::DareTies { .. } => disjoint_mean(&dense, &weights, &mut combined),
            _ => weighted_sum(&dense, &weights, &mut combined),
        }
        drop(dense);
        v.iter_mut().zip(&combined).for_each(|(w, d)| *w += d);
        Ok(v)
    }
}

/// All values of an NF4 weight, dequantized.
fn nf4_values(weight: &Nf4Weight, files: &[SafetensorsFile]) -> Result<Vec<f32>> {
    let mut v = vec![0f32; weight.meta.shape.iter().product()];
    weight.dequantize_into(files, &weight.scales(files)?, 0, &mut v)?;
    Ok(v)
}

/// Where the rows of a [`TensorRows`] come from.
#[derive(Debug)]
enum RowSource<'a> {
    /// Stored bytes of the tensor's dtype.
    Stored { bytes: &'a [u8], dtype: DType },
    /// An NF4 weight and its f32 block scales.
    Nf4 { weight: &'a Nf4Weight, files: &'a [SafetensorsFile], scales: Vec<f32> },
}

/// The factors of the one plain LoRA delta of a [`TensorRows`].
#[derive(Debug)]
struct RowLora {
    b: Vec<f32>,
    a: Vec<f32>,
    rank: usize,
    scaling: f32,
}

/// What happens to each row of a [`TensorRows`].
#[derive(Debug)]
enum RowOp {
    /// `+ s·(B@A)` (one plain LoRA).
    Lora(RowLora),
    /// IA3 output scaling: row `o` times `factors[o]` (a weight, or a bias with rows of one).
    ScaleRows(Vec<f32>),
    /// IA3 input scaling: column `j` times `factors[j]`.
    ScaleColumns(Vec<f32>),
    /// OFT: each row rotated block by block.
    Rotate(Rotation),
}

impl RowOp {
    /// Apply an IA3/OFT change to rows `first..` of a tensor, `values` (`[n, width]`, f32); an OFT
    /// rotation of a whole tensor (`whole`) runs rows in parallel.
    fn apply(&self, values: &mut [f32], width: usize, first: usize, whole: bool) {
        match self {
            RowOp::Lora(_) => {}
            RowOp::ScaleRows(f) => scale_rows(values, width, &f[first.min(f.len())..]),
            RowOp::ScaleColumns(f) => scale_columns(values, f),
            RowOp::Rotate(r) if whole => r.apply(values),
            RowOp::Rotate(r) => r.apply_rows(values),
        }
    }
}

/// A tensor of a [`MergedModel`] produced a block of rows at a time in any output dtype: each row
/// is decoded (or dequantized) to f32, gets `s·(B@A)` added (or its IA3 scaling, OFT rotation)
/// exactly as [`MergedModel::read_f32`] does, and is rounded once, so the bytes equal
/// `from_f32(read_f32(i), dtype)`.
#[derive(Debug)]
pub struct TensorRows<'a> {
    source: RowSource<'a>,
    rows: usize,
    width: usize,
    op: Option<RowOp>,
}

impl TensorRows<'_> {
    /// Number of rows (the first dimension; 1 for a scalar).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Elements per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Write rows `first..first + n` as `dtype` into `out` (`n · width · dtype.size()` bytes), rows
    /// in parallel.
    pub fn fill(&self, first: usize, out: &mut [u8], dtype: DType) -> Result<()> {
        use rayon::prelude::*;
        const ROWS_PER_TASK: usize = 8;
        let width = self.width;
        let out_row = width * dtype.size();
        if out_row == 0 {
            return Ok(());
        }
        let task = |(t, out): (usize, &mut [u8]), scratch: &mut Vec<f32>| -> Result<()> {
            let o = first + t * ROWS_PER_TASK;
            let n = out.len() / out_row;
            let delta = match &self.op {
                Some(RowOp::Lora(l)) => Some((&l.b[o * l.rank..(o + n) * l.rank], &l.a[..], l.scaling)),
                _ => None,
            };
            let other = self.op.as_ref().filter(|op| !matches!(op, RowOp::Lora(_)));
            match (&self.source, other) {
                (RowSource::Stored { bytes, dtype: from }, None) => {
                    let src = &bytes[o * width * from.size()..(o + n) * width * from.size()];
                    merge_rows(src, *from, out, dtype, width, delta, scratch);
                }
                (RowSource::Stored { bytes, dtype: from }, Some(op)) => {
                    let src = &bytes[o * width * from.size()..(o + n) * width * from.size()];
                    scratch.resize(n * width, 0.0);
                    decode_into(src, *from, scratch);
                    op.apply(scratch, width, o, false);
                    encode_into(scratch, dtype, out);
                }
                (RowSource::Nf4 { weight, files, scales }, other) => {
                    scratch.resize(n * width, 0.0);
                    weight.dequantize_into(files, scales, o * width, scratch)?;
                    if let Some(op) = other {
                        op.apply(scratch, width, o, false);
                    }
                    merge_f32_rows(scratch, out, dtype, width, delta);
                }
            }
            Ok(())
        };
        if crate::parallel::enabled() && out.len() > 1 << 16 {
            crate::parallel::install(|| {
                out.par_chunks_mut(out_row * ROWS_PER_TASK).enumerate().try_for_each_init(Vec::new, |s, x| task(x, s))
            })
        } else {
            let mut scratch = Vec::new();
            out.chunks_mut(out_row * ROWS_PER_TASK).enumerate().try_for_each(|x| task(x, &mut scratch))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_options_are_checked() {
        assert_eq!(Combine::from_name("ties", Some(0.5), 0, None).unwrap(), Combine::Ties { density: 0.5 });
        assert_eq!(Combine::from_name("svd", None, 0, Some(8)).unwrap(), Combine::Svd { rank: Some(8) });
        for (m, d, r) in [("ties", None, None), ("ties", Some(0.0), None), ("dare_ties", Some(1.5), None),
                          ("linear", Some(0.5), None), ("linear", None, Some(4)), ("svd", None, Some(0)),
                          ("cat", None, None)] {
            assert!(matches!(Combine::from_name(m, d, 0, r), Err(Error::Option(_))), "{m} {d:?} {r:?}");
        }
        assert_eq!(Combine::Ties { density: 0.7 }.density(), 0.7);
    }

    #[test]
    fn configs_that_are_not_json_objects_are_named() {
        let dir = std::env::temp_dir().join(format!("pyft-merge-array-config-{}", std::process::id()));
        let (base, adapter) = (dir.join("base"), dir.join("adapter"));
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&adapter).unwrap();
        std::fs::write(base.join("config.json"), "[1, 2]").unwrap();
        let e = MergedModel::open(&base, &[], Combine::Linear).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("not a JSON object"), "{e}");
        std::fs::write(adapter.join("adapter_config.json"), "[]").unwrap();
        let e = LoraAdapter::open(&adapter).unwrap_err().to_string();
        assert!(e.contains("adapter_config.json") && e.contains("not a JSON object"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn merged_model_is_sync() {
        fn sync<T: Sync + Send>() {}
        sync::<MergedModel>();
    }
}
