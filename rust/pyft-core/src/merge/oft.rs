//! OFT adapters in PEFT's current format (`peft_type: OFT`, PEFT ≥ 0.14 parameterisation as in
//! PEFT 0.21), and their merge.
//!
//! An adapted linear module `<module>` has `base_model.model.<module>.oft_R.weight` (an embedding:
//! `.oft_embedding_R.weight`), `[b, n]` with `n = s(s-1)/2` for block size `s`: row `i` holds the
//! strictly upper triangle (row-major, `torch.triu_indices(s, s, 1)` order) of a block `A_i`, and
//! `Q_i = A_i - A_iᵀ` is skew-symmetric. Per module (PEFT's `OFTLayer.update_layer`), with
//! `in` the rotated dimension (a linear layer's `in_features`, an embedding's `embedding_dim`):
//! - exactly one of `r` (blocks) and `oft_block_size` (`s`) is non-zero; when it does not divide
//!   `in` it is moved to the nearest divisor (ties to the smaller), then the other is `in / it`;
//! - `b = r`, or `b = 1` with `block_share` (one block used `in / s` times).
//!
//! Each block's rotation `R_i` comes from `Q_i` by the Cayley transform, in one of PEFT's two forms:
//! - exact (`use_cayley_neumann: false`): `R = (I - Q)(I + Q)⁻¹` (`torch.linalg.solve(I + Q, I - Q,
//!   left=False)`), solved here by Gaussian elimination with partial pivoting;
//! - Cayley–Neumann series (`use_cayley_neumann: true`, `num_cayley_neumann_terms = t`): for
//!   `t ≥ 4`, `R = I + 2Q + 2Q² + … + 2Q^(t-2) + Q^(t-1)`; `t = 3` gives `I + 2Q + 2Q² + Q³`, `t = 2`
//!   `I + 2Q`, `t ≤ 1` `I` (PEFT's loop, term for term).
//!
//! With `coft`, each row of the stored vector is first projected as PEFT's `_project_batch` does:
//! with `ε' = ε / √b` and `‖Q_i‖` the Frobenius norm, a row with `‖Q_i‖ > ε'` is rescaled to
//! `ε'·v/‖Q_i‖` (in f32, in PEFT's operation order).
//!
//! The merged weight is PEFT's `merge_and_unload`: a linear layer's `W' = (R Wᵀ)ᵀ = W Rᵀ`, an
//! embedding's `E' = E R`, with `R = diag(R_1, …)` block-diagonal, so each row of the weight maps
//! independently, block by block: `w'[j] = Σ_k w[k]·M[k][j]` (`M = Rᵀ` or `R`). The rotations are
//! computed in f64 and rounded to f32; rows are rotated in f32 with fused multiply-adds in `k`
//! order (as the BLAS kernel behind `torch.mm`), then rounded once to the output dtype by the caller.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::safetensors::TensorInfo;
use crate::merge::adapter::{check_unsupported, split_tensors, PeftTensors};
use crate::tensor::to_f32;

/// Tensor suffixes: a linear module's rotation, an embedding's.
pub const SUFFIXES: [&str; 2] = [".oft_R.weight", ".oft_embedding_R.weight"];

/// The OFT settings of an adapter config that the merge uses.
#[derive(Debug, Clone, PartialEq)]
pub struct OftConfig {
    /// `r`: blocks per module (0 when `oft_block_size` is given).
    pub r: usize,
    /// `oft_block_size` (0 when `r` is given).
    pub block_size: usize,
    /// `block_share`: one block shared by all of a module's blocks.
    pub block_share: bool,
    /// `coft`: constrained OFT (rotation strength bounded by `eps`).
    pub coft: bool,
    /// `eps` of COFT.
    pub eps: f64,
    /// `use_cayley_neumann`: the truncated series instead of the exact inverse.
    pub neumann: bool,
    /// `num_cayley_neumann_terms`.
    pub terms: usize,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), message: message.into() }
}

fn uint(cfg: &Value, path: &Path, key: &str, default: Option<usize>) -> Result<usize> {
    match cfg.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| bad(path, format!("field `{key}` is missing"))),
        Some(v) => v.as_u64().map(|x| x as usize)
            .ok_or_else(|| bad(path, format!("field `{key}` must be a non-negative integer, got {v}"))),
    }
}

fn flag(cfg: &Value, path: &Path, key: &str, default: bool) -> Result<bool> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| bad(path, format!("field `{key}` must be true or false, got {v}"))),
    }
}

impl OftConfig {
    /// Read the OFT fields of `cfg` (the config at `path`), with PEFT 0.21's defaults and checks.
    pub fn from_config(cfg: &Value, path: &Path) -> Result<OftConfig> {
        if cfg.get("oft_block_size").is_none() {
            return Err(bad(path, "field `oft_block_size` is missing: an OFT adapter from PEFT < 0.14, whose \
                                  parameterisation PEFT 0.21 no longer loads either; retrain it with a current PEFT"));
        }
        let r = uint(cfg, path, "r", Some(0))?;
        let block_size = uint(cfg, path, "oft_block_size", None)?;
        if (r == 0) == (block_size == 0) {
            return Err(bad(path, format!(
                "fields `r` ({r}) and `oft_block_size` ({block_size}): exactly one must be non-zero (PEFT's rule)")));
        }
        let eps = match cfg.get("eps") {
            None | Some(Value::Null) => 6e-5,
            Some(v) => v.as_f64().ok_or_else(|| bad(path, format!("field `eps` must be a number, got {v}")))?,
        };
        Ok(OftConfig {
            r,
            block_size,
            block_share: flag(cfg, path, "block_share", false)?,
            coft: flag(cfg, path, "coft", false)?,
            eps,
            neumann: flag(cfg, path, "use_cayley_neumann", true)?,
            terms: uint(cfg, path, "num_cayley_neumann_terms", Some(5))?,
        })
    }

    /// `(blocks, block size)` of a module rotating `in_features` values (PEFT's `update_layer`).
    pub fn blocks(&self, in_features: usize) -> (usize, usize) {
        if in_features == 0 {
            return (0, 0);
        }
        if self.r == 0 {
            let mut s = self.block_size;
            if !in_features.is_multiple_of(s) || s > in_features {
                s = adjust(in_features, s);
            }
            (in_features / s, s)
        } else {
            let mut r = self.r;
            if !in_features.is_multiple_of(r) || r > in_features {
                r = adjust(in_features, r);
            }
            (r, in_features / r)
        }
    }
}

/// PEFT's `adjust_oft_parameters`: the divisor of `n` nearest to `p` (the smaller one on a tie);
/// `n` itself when `p ≥ n`.
pub fn adjust(n: usize, p: usize) -> usize {
    if p >= n {
        return n;
    }
    let mut higher = p;
    while higher <= n && !n.is_multiple_of(higher) {
        higher += 1;
    }
    let mut lower = p;
    while lower > 1 && !n.is_multiple_of(lower) {
        lower -= 1;
    }
    if p - lower <= higher - p { lower } else { higher }
}

/// The rotation tensor of one adapted module.
#[derive(Debug, Clone)]
pub struct OftModule {
    /// `oft_R.weight` / `oft_embedding_R.weight`, `[b, s(s-1)/2]`.
    pub weight: TensorInfo,
    /// Whether the module is an embedding (`E R` rather than `W Rᵀ`).
    pub embedding: bool,
}

/// A PEFT OFT adapter directory, opened for merging.
#[derive(Debug)]
pub struct OftAdapter {
    /// The file, `modules_to_save` copies and saved embedding base weights.
    pub tensors: PeftTensors,
    /// Adapted modules by module path.
    pub modules: BTreeMap<String, OftModule>,
    /// The settings.
    pub config: OftConfig,
}

impl OftAdapter {
    /// Open the OFT adapter in `dir` whose `adapter_config.json` (`cfg_path`) holds `cfg`.
    pub fn from_config(dir: &Path, cfg_path: &Path, cfg: &Value) -> Result<OftAdapter> {
        check_unsupported(cfg, cfg_path)?;
        let config = OftConfig::from_config(cfg, cfg_path)?;
        let tensors = split_tensors(dir, &SUFFIXES, "oft_")?;
        let modules = tensors.modules.iter()
            .map(|(m, (i, t))| (m.clone(), OftModule { weight: t.clone(), embedding: *i == 1 }))
            .collect();
        Ok(OftAdapter { tensors, modules, config })
    }

    /// Check that `module`'s rotation fits its base weight of `weight_shape` (`[out, in]`, or an
    /// embedding's `[num_embeddings, dim]`).
    pub fn check(&self, module: &str, weight_shape: &[usize]) -> Result<()> {
        let m = &self.modules[module];
        let &[_, inp] = weight_shape else {
            return Err(bad(&self.tensors.dir, format!(
                "adapted module `{module}` has a weight of shape {weight_shape:?}: OFT merges into linear and \
                 embedding layers only")));
        };
        let (r, s) = self.config.blocks(inp);
        let expected = [if self.config.block_share { 1 } else { r }, s * s.saturating_sub(1) / 2];
        if m.weight.shape != expected {
            return Err(bad(&self.tensors.dir, format!(
                "`{}` has shape {:?} but the base weight `{module}.weight` {weight_shape:?} needs {expected:?} \
                 ({r} blocks of size {s} with r = {}, oft_block_size = {}, block_share = {}): the adapter was \
                 trained on a different base model", m.weight.name, m.weight.shape, self.config.r,
                self.config.block_size, self.config.block_share)));
        }
        Ok(())
    }

    /// The rotation of `module` whose base weight rotates `in_features` values per row.
    pub fn rotation(&self, module: &str, in_features: usize) -> Result<Rotation> {
        let m = &self.modules[module];
        let (r, s) = self.config.blocks(in_features);
        let mut v = to_f32(self.tensors.file.bytes(&m.weight), m.weight.dtype);
        let rows = m.weight.shape[0];
        if self.config.coft {
            coft_project(&mut v, rows, self.config.eps);
        }
        let n = s * s.saturating_sub(1) / 2;
        let mut mats = Vec::with_capacity(rows * s * s);
        for (i, row) in v.chunks_exact(n.max(1)).take(rows).enumerate() {
            let q = skew(if n == 0 { &[] } else { row }, s);
            let rot = if self.config.neumann {
                cayley_neumann(&q, s, self.config.terms)
            } else {
                cayley_exact(&q, s).ok_or_else(|| bad(&self.tensors.dir, format!(
                    "`{}`: block {i}: I + Q is singular (the weights are not finite)", m.weight.name)))?
            };
            // M[k][j] with w'[j] = Σ_k w[k] M[k][j]: Rᵀ for a linear layer, R for an embedding.
            for k in 0..s {
                for j in 0..s {
                    mats.push(if m.embedding { rot[k * s + j] } else { rot[j * s + k] } as f32);
                }
            }
        }
        if n == 0 && rows > 0 {
            mats.resize(rows * s * s, 1.0); // 1×1 blocks: the identity
        }
        Ok(Rotation { size: s, blocks: r, matrices: mats })
    }
}

/// COFT's projection of each row of `v` (`[rows, n]`, f32) in PEFT's operations: `ε' = (1/√rows)·ε`
/// in f32; a row whose skew matrix has Frobenius norm `> ε'` becomes `(v / norm)·ε'`.
pub fn coft_project(v: &mut [f32], rows: usize, eps: f64) {
    if rows == 0 || v.is_empty() {
        return;
    }
    let eps = (1.0 / (rows as f32).sqrt()) * eps as f32;
    let n = v.len() / rows;
    for row in v.chunks_exact_mut(n) {
        // Each stored value appears twice in the skew matrix (once negated); the diagonal is zero.
        let norm = (2.0 * row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()).sqrt() as f32;
        if norm > eps {
            row.iter_mut().for_each(|x| *x = (*x / norm) * eps + 0.0);
        }
    }
}

/// The skew-symmetric `s × s` matrix (row-major, f64) whose strict upper triangle, row by row, is `v`.
pub fn skew(v: &[f32], s: usize) -> Vec<f64> {
    let mut q = vec![0f64; s * s];
    let mut it = v.iter();
    for i in 0..s {
        for j in i + 1..s {
            let x = f64::from(*it.next().unwrap_or(&0.0));
            q[i * s + j] = x;
            q[j * s + i] = -x;
        }
    }
    q
}

fn matmul(a: &[f64], b: &[f64], s: usize) -> Vec<f64> {
    let mut c = vec![0f64; s * s];
    for i in 0..s {
        for k in 0..s {
            let aik = a[i * s + k];
            for j in 0..s {
                c[i * s + j] += aik * b[k * s + j];
            }
        }
    }
    c
}

fn identity(s: usize) -> Vec<f64> {
    let mut m = vec![0f64; s * s];
    (0..s).for_each(|i| m[i * s + i] = 1.0);
    m
}

/// PEFT's Cayley–Neumann series of `q` (`s × s`) with `terms` terms (see the module docs).
pub fn cayley_neumann(q: &[f64], s: usize, terms: usize) -> Vec<f64> {
    let mut r = identity(s);
    let add = |r: &mut Vec<f64>, m: &[f64], alpha: f64| r.iter_mut().zip(m).for_each(|(x, y)| *x += alpha * y);
    if terms > 1 {
        add(&mut r, q, 2.0);
        if terms > 2 {
            let mut power = matmul(q, q, s);
            add(&mut r, &power, 2.0);
            for _ in 3..terms - 1 {
                power = matmul(&power, q, s);
                add(&mut r, &power, 2.0);
            }
            power = matmul(&power, q, s);
            add(&mut r, &power, 1.0);
        }
    }
    r
}

/// The exact Cayley transform `X = (I - Q)(I + Q)⁻¹`, the solution of `X (I + Q) = I - Q`
/// (`s × s`, row-major); `None` when `I + Q` is singular (never for a finite skew-symmetric `Q`).
pub fn cayley_exact(q: &[f64], s: usize) -> Option<Vec<f64>> {
    // X (I + Q) = (I - Q)  ⇔  (I + Q)ᵀ Xᵀ = (I - Q)ᵀ  ⇔  (I - Q) Xᵀ = (I + Q)  (Qᵀ = -Q).
    let mut a: Vec<f64> = identity(s).iter().zip(q).map(|(i, x)| i - x).collect();
    let mut b: Vec<f64> = identity(s).iter().zip(q).map(|(i, x)| i + x).collect();
    for col in 0..s {
        let pivot = (col..s).max_by(|&x, &y| a[x * s + col].abs().total_cmp(&a[y * s + col].abs()))?;
        let p = a[pivot * s + col].abs();
        if p == 0.0 || p.is_nan() {
            return None;
        }
        if pivot != col {
            for j in 0..s {
                a.swap(col * s + j, pivot * s + j);
                b.swap(col * s + j, pivot * s + j);
            }
        }
        let d = a[col * s + col];
        for row in 0..s {
            if row == col {
                continue;
            }
            let f = a[row * s + col] / d;
            if f == 0.0 {
                continue;
            }
            for j in 0..s {
                a[row * s + j] -= f * a[col * s + j];
                b[row * s + j] -= f * b[col * s + j];
            }
        }
    }
    // Now diag(a) Xᵀ = b.
    let mut x = vec![0f64; s * s];
    for i in 0..s {
        for j in 0..s {
            x[j * s + i] = b[i * s + j] / a[i * s + i];
        }
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// A module's block-diagonal rotation, ready to apply to rows of its weight.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// Block size `s`.
    pub size: usize,
    /// Blocks per row (`in / s`).
    pub blocks: usize,
    /// One `s × s` matrix `M` per stored block (one when blocks are shared), row-major, with
    /// `w'[j] = Σ_k w[k]·M[k][j]` within a block.
    pub matrices: Vec<f32>,
}

impl Rotation {
    /// Rotate each row of `values` (`[n, blocks · size]`, f32) in place; rows run in parallel on
    /// large weights.
    pub fn apply(&self, values: &mut [f32]) {
        let width = self.size * self.blocks;
        if width == 0 || self.matrices.is_empty() {
            return;
        }
        if crate::parallel::enabled() && values.len() > 1 << 16 {
            let per_task = ((1 << 14) / width).max(1) * width;
            crate::parallel::install(|| values.par_chunks_mut(per_task).for_each(|v| self.apply_rows(v)));
        } else {
            self.apply_rows(values);
        }
    }

    /// [`apply`](Self::apply) on one thread.
    pub fn apply_rows(&self, values: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("fma") && is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports the features the function is compiled for (checked above).
                unsafe { self.apply_rows_fma(values) };
                return;
            }
        }
        self.apply_rows_portable(values);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma,avx2")]
    unsafe fn apply_rows_fma(&self, values: &mut [f32]) {
        self.apply_rows_portable(values);
    }

    #[inline(always)]
    fn apply_rows_portable(&self, values: &mut [f32]) {
        let s = self.size;
        let width = s * self.blocks;
        let stored = self.matrices.len() / (s * s);
        let mut acc = vec![0f32; s];
        for row in values.chunks_exact_mut(width) {
            for (b, block) in row.chunks_exact_mut(s).enumerate() {
                let m = &self.matrices[(b % stored) * s * s..(b % stored + 1) * s * s];
                acc.iter_mut().for_each(|a| *a = 0.0);
                for (k, &x) in block.iter().enumerate() {
                    for (a, &mk) in acc.iter_mut().zip(&m[k * s..(k + 1) * s]) {
                        *a = x.mul_add(mk, *a);
                    }
                }
                block.copy_from_slice(&acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    fn transpose(m: &[f64], s: usize) -> Vec<f64> {
        (0..s * s).map(|i| m[(i % s) * s + i / s]).collect()
    }

    #[test]
    fn peft_block_rules() {
        assert_eq!(adjust(176, 32), 22); // 176 = 16·11: divisors 22 and 44 around 32, 22 is nearer
        assert_eq!(adjust(176, 36), 44);
        assert_eq!(adjust(64, 100), 64);
        assert_eq!(adjust(12, 5), 4); // 4 and 6 are equally near: the smaller
        let cfg = |r, s| OftConfig { r, block_size: s, block_share: false, coft: false, eps: 6e-5, neumann: true,
                                     terms: 5 };
        assert_eq!(cfg(0, 8).blocks(176), (22, 8));
        assert_eq!(cfg(0, 32).blocks(176), (8, 22));
        assert_eq!(cfg(4, 0).blocks(64), (4, 16));
        assert_eq!(cfg(5, 0).blocks(64), (4, 16));
        assert_eq!(cfg(0, 128).blocks(64), (1, 64));
    }

    #[test]
    fn config_checks() {
        let p = Path::new("c.json");
        let c = OftConfig::from_config(&json!({"r": 0, "oft_block_size": 8}), p).unwrap();
        assert!(c.neumann && c.terms == 5 && !c.coft && !c.block_share && c.eps == 6e-5);
        for bad in [json!({"r": 4, "oft_block_size": 8}), json!({"r": 0, "oft_block_size": 0}), json!({"r": 4}),
                    json!({"r": -1, "oft_block_size": 8}), json!({"oft_block_size": 8, "coft": "yes"})] {
            assert!(OftConfig::from_config(&bad, p).is_err(), "{bad}");
        }
        let e = OftConfig::from_config(&json!({"r": 4}), p).unwrap_err().to_string();
        assert!(e.contains("PEFT < 0.14"), "{e}");
    }

    #[test]
    fn skew_layout_is_triu_row_major() {
        let q = skew(&[1.0, 2.0, 3.0], 3);
        assert_eq!(q, vec![0.0, 1.0, 2.0, -1.0, 0.0, 3.0, -2.0, -3.0, 0.0]);
    }

    #[test]
    fn exact_cayley_is_orthogonal_and_solves_the_system() {
        let s = 5;
        let v: Vec<f32> = (0..10).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.13).collect();
        let q = skew(&v, s);
        let x = cayley_exact(&q, s).unwrap();
        let xxt = matmul(&x, &transpose(&x, s), s);
        assert!(close(&xxt, &identity(s), 1e-12));
        // X (I + Q) = I - Q
        let ipq: Vec<f64> = identity(s).iter().zip(&q).map(|(i, y)| i + y).collect();
        let imq: Vec<f64> = identity(s).iter().zip(&q).map(|(i, y)| i - y).collect();
        assert!(close(&matmul(&x, &ipq, s), &imq, 1e-12));
    }

    #[test]
    fn neumann_terms_follow_peft_loop() {
        let s = 3;
        let q = skew(&[0.1, -0.2, 0.05], s);
        let q2 = matmul(&q, &q, s);
        let q3 = matmul(&q2, &q, s);
        let q4 = matmul(&q3, &q, s);
        let comb = |terms: &[(f64, &Vec<f64>)]| {
            let mut r = identity(s);
            for (a, m) in terms {
                r.iter_mut().zip(m.iter()).for_each(|(x, y)| *x += a * y);
            }
            r
        };
        assert_eq!(cayley_neumann(&q, s, 1), identity(s));
        assert!(close(&cayley_neumann(&q, s, 2), &comb(&[(2.0, &q)]), 1e-15));
        assert!(close(&cayley_neumann(&q, s, 3), &comb(&[(2.0, &q), (2.0, &q2), (1.0, &q3)]), 1e-15));
        assert!(close(&cayley_neumann(&q, s, 4), &comb(&[(2.0, &q), (2.0, &q2), (1.0, &q3)]), 1e-15));
        assert!(close(&cayley_neumann(&q, s, 5), &comb(&[(2.0, &q), (2.0, &q2), (2.0, &q3), (1.0, &q4)]), 1e-15));
        // Many terms converge to (I + Q)(I - Q)⁻¹, the transpose of the exact form.
        let exact = cayley_exact(&q, s).unwrap();
        assert!(close(&cayley_neumann(&q, s, 60), &transpose(&exact, s), 1e-12));
    }

    #[test]
    fn coft_projection() {
        let mut v = vec![3.0f32, 4.0, 0.0, 0.0, 1e-6, 0.0]; // two rows of 3
        coft_project(&mut v, 2, 1.0);
        // ε' = 1/√2; row 0: norm √2·5 > ε' → v·ε'/norm = v/10; row 1 stays.
        let eps = (1.0 / 2f32.sqrt()) * 1.0;
        let norm = (2.0f64 * 25.0).sqrt() as f32;
        assert_eq!(v[..3], [(3.0 / norm) * eps, (4.0 / norm) * eps, 0.0]);
        assert!((v[0] - 0.3).abs() < 1e-6);
        assert_eq!(v[3..], [0.0, 1e-6, 0.0]);
    }

    #[test]
    fn rotation_rows_are_block_products() {
        // Two blocks of size 2, M = [[a, b], [c, d]] per block: w' = [w0 a + w1 c, w0 b + w1 d].
        let rot = Rotation { size: 2, blocks: 2, matrices: vec![1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 1.0, 0.0] };
        let mut w = vec![1.0, 1.0, 5.0, 7.0, 2.0, 0.0, 0.0, 1.0];
        rot.apply(&mut w);
        assert_eq!(w, vec![4.0, 6.0, 7.0, 5.0, 2.0, 4.0, 1.0, 0.0]);
        let shared = Rotation { size: 2, blocks: 2, matrices: vec![0.0, 1.0, 1.0, 0.0] };
        let mut w = vec![1.0, 2.0, 3.0, 4.0];
        shared.apply(&mut w);
        assert_eq!(w, vec![2.0, 1.0, 4.0, 3.0]);
    }
}
