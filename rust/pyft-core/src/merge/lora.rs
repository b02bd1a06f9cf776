//! LoRA-family adapters in PEFT's on-disk format, and the per-tensor merge math.
//!
//! Merge of a linear weight `W [out, in]` (f32):
//! - LoRA / rsLoRA: `W' = W + s · (B @ A)`, `s = alpha / r` (or `alpha / sqrt(r)`), with `r`
//!   and `alpha` per module after `rank_pattern` / `alpha_pattern`;
//! - DoRA: `W' = (m / ‖W + s·BA‖_row) ⊙ (W + s·BA)`, `m [out]` the learned magnitude.
//!
//! An `nn.Embedding` target (`lora_embedding_A [r, num_embeddings]`, `lora_embedding_B [dim, r]`)
//! merges `(B @ A)ᵀ · s` into the `[num_embeddings, dim]` table; [`ModuleAdapter::factors`] returns
//! it as the linear pair `(Aᵀ, Bᵀ)` so one kernel serves both.
//!
//! Everything is computed in f32; the caller rounds once to the output dtype.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::safetensors::{SafetensorsFile, TensorInfo};
use crate::merge::adapter::PREFIX;
use crate::tensor::{decode_into, encode_into, to_f32, DType};

/// The adapter tensors of one adapted linear or embedding module.
#[derive(Debug, Clone)]
pub struct ModuleAdapter {
    /// `lora_A.weight`, `[r, in]` (embedding: `lora_embedding_A`, `[r, num_embeddings]`).
    pub a: TensorInfo,
    /// `lora_B.weight`, `[out, r]` (embedding: `lora_embedding_B`, `[dim, r]`).
    pub b: TensorInfo,
    /// Whether the module is an `nn.Embedding` (delta `(B @ A)ᵀ`).
    pub embedding: bool,
    /// DoRA magnitude, `[out]`.
    pub magnitude: Option<TensorInfo>,
    /// The scale applied to `B @ A`.
    pub scaling: f32,
}

/// A PEFT LoRA adapter directory, opened for merging.
#[derive(Debug)]
pub struct LoraAdapter {
    /// `adapter_model.safetensors`, memory-mapped.
    pub file: SafetensorsFile,
    /// Adapted modules by module path (`model.layers.0.self_attn.q_proj`).
    pub modules: BTreeMap<String, ModuleAdapter>,
    /// Whole tensors of `modules_to_save`, by base tensor name (`lm_head.weight`).
    pub saved: BTreeMap<String, TensorInfo>,
    /// Copies of the base weights of adapted embeddings (`X.base_layer.weight`, saved by PEFT with
    /// embedding LoRA), by base tensor name (`X.weight`).
    pub base_copies: BTreeMap<String, TensorInfo>,
    /// The largest rank of any module (`r` and the `rank_pattern` values), PEFT's default SVD rank.
    pub max_rank: usize,
    /// Whether the adapter is DoRA.
    pub dora: bool,
    /// The adapter directory.
    pub dir: PathBuf,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), message: message.into() }
}

/// The first `pattern` key matching `module` as PEFT's `rank_pattern` does: `(.*\.)?(key)$`.
fn pattern_value(patterns: Option<&serde_json::Map<String, Value>>, module: &str) -> Result<Option<f64>> {
    let Some(patterns) = patterns else { return Ok(None) };
    for (key, value) in patterns {
        let re = regex::Regex::new(&format!(r"^(.*\.)?({key})$"))
            .map_err(|e| Error::Option(format!("pattern `{key}` is not a valid regex: {e}")))?;
        if re.is_match(module) {
            return Ok(value.as_f64());
        }
    }
    Ok(None)
}

impl LoraAdapter {
    /// Open `dir` (`adapter_config.json` + `adapter_model.safetensors`) and index its tensors.
    pub fn open(dir: &Path) -> Result<LoraAdapter> {
        let (cfg_path, cfg) = crate::merge::adapter::read_config(dir)?;
        let kind = crate::merge::adapter::classify(&cfg, &cfg_path)?;
        if kind != crate::merge::adapter::Kind::Lora {
            return Err(bad(&cfg_path, format!("field `peft_type` is \"{}\" where a LORA adapter is needed",
                                              kind.peft_type())));
        }
        for (key, ok) in [("fan_in_fan_out", Value::Bool(false)), ("lora_bias", Value::Bool(false)),
                          ("bias", Value::String("none".into()))] {
            if let Some(v) = cfg.get(key) {
                if !v.is_null() && *v != ok {
                    return Err(bad(&cfg_path, format!("field `{key}` = {v} is not supported")));
                }
            }
        }
        let r = cfg["r"].as_f64().ok_or_else(|| bad(&cfg_path, "field `r` is missing or not a number"))?;
        let alpha = cfg["lora_alpha"].as_f64().ok_or_else(|| bad(&cfg_path, "field `lora_alpha` is missing"))?;
        let rslora = cfg["use_rslora"].as_bool().unwrap_or(false);
        let dora = cfg["use_dora"].as_bool().unwrap_or(false);
        let weights = dir.join("adapter_model.safetensors");
        let file = SafetensorsFile::open(&weights)?;
        let mut parts: BTreeMap<String, [Option<TensorInfo>; 5]> = BTreeMap::new();
        let mut saved = BTreeMap::new();
        let mut base_copies = BTreeMap::new();
        for t in &file.tensors {
            let name = t.name.replace(".default.", ".");
            let Some(rest) = name.strip_prefix(PREFIX) else {
                return Err(bad(&weights, format!("tensor `{}` lacks the `{PREFIX}` prefix", t.name)));
            };
            // Slots: 0 A, 1 B, 2 DoRA magnitude, 3 embedding A, 4 embedding B.
            let slot = [".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector", ".lora_embedding_A",
                        ".lora_embedding_B", ".lora_magnitude_vector.weight"]
                .iter()
                .enumerate()
                .find_map(|(i, suffix)| rest.strip_suffix(suffix).map(|m| (m, if i == 5 { 2 } else { i })));
            match slot {
                Some((module, i)) => parts.entry(module.to_string()).or_default()[i] = Some(t.clone()),
                None if rest.contains("lora_") => {
                    return Err(bad(&weights, format!("tensor `{}` is not supported for merging", t.name)))
                }
                None => match rest.strip_suffix(".base_layer.weight") {
                    Some(module) => {
                        base_copies.insert(format!("{module}.weight"), t.clone());
                    }
                    None => {
                        saved.insert(rest.to_string(), t.clone());
                    }
                },
            }
        }
        let mut modules = BTreeMap::new();
        for (module, [a, b, m, ea, eb]) in parts {
            let embedding = ea.is_some() || eb.is_some();
            if embedding && (a.is_some() || b.is_some() || m.is_some()) {
                return Err(bad(&weights, format!("module `{module}` mixes linear and embedding LoRA tensors")));
            }
            let (a, b) = if embedding { (ea, eb) } else { (a, b) };
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(&weights, format!("module `{module}` lacks lora_A or lora_B")));
            };
            let rank = pattern_value(cfg["rank_pattern"].as_object(), &module)?.unwrap_or(r);
            let alpha_m = pattern_value(cfg["alpha_pattern"].as_object(), &module)?.unwrap_or(alpha);
            if a.shape.len() != 2 || b.shape.len() != 2 || a.shape[0] != b.shape[1] || a.shape[0] as f64 != rank {
                return Err(bad(&weights, format!(
                    "module `{module}`: lora_A {:?} and lora_B {:?} do not form a rank-{rank} pair", a.shape, b.shape
                )));
            }
            if dora != m.is_some() {
                return Err(bad(&weights, format!("module `{module}`: DoRA magnitude {} but use_dora is {dora}",
                                                 if m.is_some() { "present" } else { "missing" })));
            }
            let scaling = if rslora { alpha_m / rank.sqrt() } else { alpha_m / rank } as f32;
            modules.insert(module, ModuleAdapter { a, b, embedding, magnitude: m, scaling });
        }
        let max_rank = cfg["rank_pattern"].as_object().into_iter().flatten()
            .filter_map(|(_, v)| v.as_f64())
            .fold(r, f64::max) as usize;
        Ok(LoraAdapter { file, modules, saved, base_copies, max_rank, dora, dir: dir.to_path_buf() })
    }
}

impl ModuleAdapter {
    /// The shape `[out, in]` of the base weight this module adapts.
    pub fn weight_shape(&self) -> [usize; 2] {
        if self.embedding { [self.a.shape[1], self.b.shape[0]] } else { [self.b.shape[0], self.a.shape[1]] }
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.a.shape[0]
    }

    /// The factors `(B [out, r], A [r, in])` in f32 with `delta = s · B @ A` in the base weight's
    /// orientation: `(lora_B, lora_A)` for a linear module, `(Aᵀ, Bᵀ)` for an embedding.
    pub fn factors(&self, file: &SafetensorsFile) -> (Vec<f32>, Vec<f32>) {
        let a = to_f32(file.bytes(&self.a), self.a.dtype);
        let b = to_f32(file.bytes(&self.b), self.b.dtype);
        if self.embedding {
            (transpose(&a, self.a.shape[0], self.a.shape[1]), transpose(&b, self.b.shape[0], self.b.shape[1]))
        } else {
            (b, a)
        }
    }
}

/// The transpose of a row-major `[rows, cols]` matrix.
pub(crate) fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = m[i * cols + j];
        }
    }
    t
}

/// Merge one module's adapter into `weight` (`[out, in]`, f32, row-major), in place.
pub fn merge_into(weight: &mut [f32], out: usize, inp: usize, adapter: &ModuleAdapter, file: &SafetensorsFile) {
    let (b, a) = adapter.factors(file); // [out, r], [r, in]
    let m = adapter.magnitude.as_ref().map(|t| to_f32(file.bytes(t), t.dtype));
    add_product(weight, out, inp, &b, &a, adapter.rank(), adapter.scaling, m.as_deref());
}

/// `weight += s · (B @ A)` (`B [out, r]`, `A [r, in]`), each output row optionally rescaled to
/// `m[o] / ‖row‖` (DoRA). Rows run in parallel on large weights.
#[allow(clippy::too_many_arguments)]
pub fn add_product(weight: &mut [f32], out: usize, inp: usize, b: &[f32], a: &[f32], r: usize, s: f32,
                          m: Option<&[f32]>) {
    let merge_row = |(o, row): (usize, &mut [f32])| {
        add_scaled_delta(row, inp, &b[o * r..(o + 1) * r], a, s);
        if let Some(m) = m {
            let norm = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() as f32;
            let factor = m[o] / norm;
            for w in row.iter_mut() {
                *w *= factor;
            }
        }
    };
    if crate::parallel::enabled() && out * inp > 1 << 16 {
        crate::parallel::install(|| weight.par_chunks_mut(inp).enumerate().for_each(merge_row));
    } else {
        weight.chunks_mut(inp).enumerate().for_each(merge_row);
    }
}

/// `rows[o, i] += s · δ[o, i]` for the rows `[n, inp]` of a weight, with
/// `δ[o, i] = Σ_k b_rows[o, k] · a[k, i]` (`b_rows` `[n, r]`, `a` `[r, inp]`), each step of the sum
/// a fused multiply-add (one rounding) in `k` order starting from 0 — the order and rounding of
/// the BLAS kernels behind `torch.matmul`, so merged weights match PEFT's bit for bit in float32 —
/// and the scaling a plain multiply, then a plain add (as PEFT's `W + s·(B@A)`).
pub(crate) fn add_scaled_delta(rows: &mut [f32], inp: usize, b_rows: &[f32], a: &[f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if fma_available() {
            // SAFETY: the CPU supports the features the function is compiled for (checked above).
            unsafe { add_scaled_delta_fma(rows, inp, b_rows, a, s) };
            return;
        }
    }
    add_scaled_delta_portable(rows, inp, b_rows, a, s);
}

/// A block of rows of a weight as merged output: decode `src` (`[n, inp]` of `from`), add
/// `s · (b_rows @ a)` as [`add_scaled_delta`] when `delta` is `Some((b_rows, a, s))`, and encode
/// the result as `to` into `dst`, rounding once. `scratch` holds the f32 rows in between.
pub fn merge_rows(src: &[u8], from: DType, dst: &mut [u8], to: DType, inp: usize,
                         delta: Option<(&[f32], &[f32], f32)>, scratch: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    {
        if fma_available() {
            // SAFETY: the CPU supports the features the function is compiled for (checked above).
            unsafe { merge_rows_fma(src, from, dst, to, inp, delta, scratch) };
            return;
        }
    }
    merge_rows_portable(src, from, dst, to, inp, delta, scratch);
}

/// [`merge_rows`] for rows already in f32 (`values`, `[n, inp]`, e.g. dequantized NF4): add the
/// delta in place, then encode as `to` into `dst`, rounding once.
pub fn merge_f32_rows(values: &mut [f32], dst: &mut [u8], to: DType, inp: usize,
                      delta: Option<(&[f32], &[f32], f32)>) {
    if let Some((b_rows, a, s)) = delta {
        add_scaled_delta(values, inp, b_rows, a, s);
    }
    encode_into(values, to, dst);
}

#[cfg(target_arch = "x86_64")]
fn fma_available() -> bool {
    is_x86_feature_detected!("fma") && is_x86_feature_detected!("avx2")
}

// With FMA enabled at compile time `mul_add` is one vfmadd instruction and the loops vectorise
// over AVX registers (the conversions too: they are inlined here).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
unsafe fn add_scaled_delta_fma(rows: &mut [f32], inp: usize, b_rows: &[f32], a: &[f32], s: f32) {
    add_scaled_delta_portable(rows, inp, b_rows, a, s);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
unsafe fn merge_rows_fma(src: &[u8], from: DType, dst: &mut [u8], to: DType, inp: usize,
                         delta: Option<(&[f32], &[f32], f32)>, scratch: &mut Vec<f32>) {
    merge_rows_portable(src, from, dst, to, inp, delta, scratch);
}

#[inline(always)]
fn merge_rows_portable(src: &[u8], from: DType, dst: &mut [u8], to: DType, inp: usize,
                       delta: Option<(&[f32], &[f32], f32)>, scratch: &mut Vec<f32>) {
    scratch.resize(src.len() / from.size(), 0.0);
    decode_into(src, from, scratch);
    if let Some((b_rows, a, s)) = delta {
        add_scaled_delta_portable(scratch, inp, b_rows, a, s);
    }
    encode_into(scratch, to, dst);
}

/// Columns per block: a block's partial sums stay in registers (8 AVX vectors) across all `r`
/// steps, and the block of `a` (`r · BLOCK` floats) stays in L1 across the rows.
const BLOCK: usize = 64;

#[inline(always)]
fn add_scaled_delta_portable(rows: &mut [f32], inp: usize, b_rows: &[f32], a: &[f32], s: f32) {
    let n = rows.len().checked_div(inp).unwrap_or(0);
    if n == 0 {
        return;
    }
    let r = b_rows.len() / n;
    if r == 0 {
        rows.iter_mut().for_each(|w| *w += 0.0 * s); // an empty sum is 0 (and turns -0 into +0)
        return;
    }
    let full = inp / BLOCK * BLOCK;
    for j in (0..full).step_by(BLOCK) {
        for (row, b_row) in rows.chunks_exact_mut(inp).zip(b_rows.chunks_exact(r)) {
            let mut acc = [0f32; BLOCK];
            for (k, &bk) in b_row.iter().enumerate() {
                let ak: &[f32; BLOCK] = a[k * inp + j..k * inp + j + BLOCK].try_into().expect("block of A");
                for (d, &x) in acc.iter_mut().zip(ak) {
                    *d = bk.mul_add(x, *d);
                }
            }
            for (w, d) in row[j..j + BLOCK].iter_mut().zip(&acc) {
                *w += d * s;
            }
        }
    }
    for (row, b_row) in rows.chunks_exact_mut(inp).zip(b_rows.chunks_exact(r)) {
        for (i, w) in row.iter_mut().enumerate().skip(full) {
            let d = b_row.iter().enumerate().fold(0f32, |d, (k, &bk)| bk.mul_add(a[k * inp + i], d));
            *w += d * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::{PlannedTensor, StreamWriter};
    use crate::tensor::from_f32;

    #[test]
    fn lora_and_dora_rows() {
        let dir = std::env::temp_dir().join(format!("pyft-lora-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"),
                       r#"{"peft_type":"LORA","r":1,"lora_alpha":2,"use_dora":true}"#).unwrap();
        let plan = vec![
            PlannedTensor { name: "base_model.model.l.lora_A.weight".into(), dtype: DType::F32, shape: vec![1, 2] },
            PlannedTensor { name: "base_model.model.l.lora_B.weight".into(), dtype: DType::F32, shape: vec![2, 1] },
            PlannedTensor { name: "base_model.model.l.lora_magnitude_vector".into(), dtype: DType::F32, shape: vec![2] },
        ];
        let mut w = StreamWriter::create(&dir.join("adapter_model.safetensors"), plan).unwrap();
        w.write("base_model.model.l.lora_A.weight", &from_f32(&[1.0, 0.0], DType::F32)).unwrap();
        w.write("base_model.model.l.lora_B.weight", &from_f32(&[0.5, 0.0], DType::F32)).unwrap();
        w.write("base_model.model.l.lora_magnitude_vector", &from_f32(&[4.0, 3.0], DType::F32)).unwrap();
        w.finish().unwrap();
        let ad = LoraAdapter::open(&dir).unwrap();
        let m = &ad.modules["l"];
        assert_eq!(m.scaling, 2.0);
        // W = [[1, 0], [0, 2]]; delta = 2 * [[0.5, 0], [0, 0]] -> W + delta = [[2, 0], [0, 2]];
        // DoRA rows rescaled to norms 4 and 3.
        let mut weight = vec![1.0, 0.0, 0.0, 2.0];
        merge_into(&mut weight, 2, 2, m, &ad.file);
        assert_eq!(weight, vec![4.0, 0.0, 0.0, 3.0]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn blocked_delta_matches_the_plain_fma_loop() {
        // Widths below, at and across a block boundary; every element must be bit-identical to
        // the unblocked reference (delta summed in k order with fused multiply-adds, then scaled).
        let mut x = 0x2545_F491u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 - 0.5) * 0.1
        };
        for (inp, r, n) in [(5, 3, 1), (64, 16, 2), (200, 7, 3), (2048, 16, 8)] {
            let a: Vec<f32> = (0..r * inp).map(|_| next()).collect();
            let b: Vec<f32> = (0..n * r).map(|_| next()).collect();
            let base: Vec<f32> = (0..n * inp).map(|_| next()).collect();
            let mut expected = base.clone();
            for (o, row) in expected.chunks_mut(inp).enumerate() {
                let mut delta = vec![0f32; inp];
                for (k, &bk) in b[o * r..(o + 1) * r].iter().enumerate() {
                    for (d, &ak) in delta.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                        *d = bk.mul_add(ak, *d);
                    }
                }
                row.iter_mut().zip(&delta).for_each(|(w, d)| *w += d * 1.7);
            }
            let mut row = base.clone();
            add_scaled_delta(&mut row, inp, &b, &a, 1.7);
            let bytes = from_f32(&base, DType::BF16);
            let mut merged = vec![0u8; bytes.len()];
            merge_rows(&bytes, DType::BF16, &mut merged, DType::BF16, inp, Some((&b, &a, 1.7)), &mut Vec::new());
            let mut via_f32 = crate::tensor::to_f32(&bytes, DType::BF16);
            add_product(&mut via_f32, n, inp, &b, &a, r, 1.7, None);
            assert_eq!(merged, from_f32(&via_f32, DType::BF16), "inp {inp}");
            assert!(row.iter().zip(&expected).all(|(x, y)| x.to_bits() == y.to_bits()), "inp {inp}");
        }
    }
}
