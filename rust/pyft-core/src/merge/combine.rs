//! Combining several adapters' delta weights `ΔW_i = s_i · B_i A_i` of one module.
//!
//! The methods follow `peft.utils.merge_utils` (PEFT 0.21) on dense f32 deltas:
//! - `linear`: `Σ w_i ΔW_i` (task arithmetic);
//! - `ties`: keep the `density` fraction of each `ΔW_i` with the largest `|value|` (`k =
//!   ⌊density · numel⌋` per tensor, no pruning at density 1), elect a sign per element from the sum
//!   of the pruned, *unweighted* deltas (`≥ 0` → `+`, PEFT's `majority_sign_method="total"`), then
//!   average the weighted values that agree with it (`Σ / max(count, 1)`);
//! - `dare_linear` / `dare_ties`: drop each element with probability `1 - density` and rescale the
//!   kept ones by `1 / density`, then `linear` / the TIES sign election and disjoint mean.
//!
//! DARE's drops come from a counter-based generator (SplitMix64 of `seed`, the tensor name, the
//! adapter index and the element index), so the result does not depend on threads or chunking.
//! `svd` is in [`super::svd`].

use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 16;

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The stream key of one (seed, tensor, adapter): FNV-1a of the name, mixed with the rest.
pub(crate) fn stream_key(seed: u64, tensor: &str, adapter: usize) -> u64 {
    let name = tensor.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3));
    mix(mix(seed ^ name).wrapping_add(adapter as u64).wrapping_mul(GAMMA))
}

/// Uniform in `[0, 1)` for element `i` of the stream `key` (SplitMix64 state `key + (i + 1)·γ`).
fn uniform(key: u64, i: usize) -> f64 {
    (mix(key.wrapping_add((i as u64).wrapping_add(1).wrapping_mul(GAMMA))) >> 11) as f64 / (1u64 << 53) as f64
}

fn par_chunks(v: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if crate::parallel::enabled() && v.len() > CHUNK {
        crate::parallel::install(|| v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, x)| f(c * CHUNK, x)));
    } else {
        v.chunks_mut(CHUNK).enumerate().for_each(|(c, x)| f(c * CHUNK, x));
    }
}

/// DARE: keep each element with probability `density` (drawn from `key`), rescaled by `1/density`;
/// zero the rest. Density `≥ 1` keeps the tensor as is (as PEFT).
pub(crate) fn random_prune(v: &mut [f32], density: f64, key: u64) {
    if density >= 1.0 {
        return;
    }
    let d = density as f32;
    par_chunks(v, |start, x| {
        for (j, e) in x.iter_mut().enumerate() {
            *e = if uniform(key, start + j) < density { *e / d } else { *e * 0.0 };
        }
    });
}

/// TIES trimming: keep the `⌊density · numel⌋` elements of largest magnitude, zero the rest
/// (among equal magnitudes at the threshold, the first in index order). Density `≥ 1` keeps all.
pub(crate) fn magnitude_prune(v: &mut [f32], density: f64) {
    if density >= 1.0 {
        return;
    }
    let n = v.len();
    let k = (density * n as f64) as usize;
    if k == 0 {
        v.iter_mut().for_each(|e| *e *= 0.0);
        return;
    }
    // |x| as bits orders like |x| for non-NaN floats.
    let mut keys: Vec<u32> = v.iter().map(|x| x.to_bits() & 0x7FFF_FFFF).collect();
    let (_, &mut threshold, _) = keys.select_nth_unstable(n - k);
    drop(keys);
    let above = v.iter().filter(|x| x.to_bits() & 0x7FFF_FFFF > threshold).count();
    let mut equal_left = k - above;
    for e in v.iter_mut() {
        let b = e.to_bits() & 0x7FFF_FFFF;
        if b > threshold {
            continue;
        }
        if b == threshold && equal_left > 0 {
            equal_left -= 1;
        } else {
            *e *= 0.0;
        }
    }
}

/// `out = Σ_i w_i · deltas_i` (each product rounded, summed in adapter order).
pub(crate) fn weighted_sum(deltas: &[Vec<f32>], weights: &[f32], out: &mut [f32]) {
    par_chunks(out, |start, x| {
        for (j, o) in x.iter_mut().enumerate() {
            let mut acc = deltas[0][start + j] * weights[0];
            for (d, w) in deltas.iter().zip(weights).skip(1) {
                acc += d[start + j] * w;
            }
            *o = acc;
        }
    });
}

/// TIES sign election and disjoint mean: the sign of `Σ_i deltas_i` (unweighted; `≥ 0` is `+`)
/// per element, then the mean of `w_i · deltas_i` over the adapters whose value has that sign.
pub(crate) fn disjoint_mean(deltas: &[Vec<f32>], weights: &[f32], out: &mut [f32]) {
    par_chunks(out, |start, x| {
        for (j, o) in x.iter_mut().enumerate() {
            let i = start + j;
            let mut total = deltas[0][i];
            for d in &deltas[1..] {
                total += d[i];
            }
            let positive = total >= 0.0;
            let (mut sum, mut count) = (0f32, 0f32);
            for (d, w) in deltas.iter().zip(weights) {
                let v = d[i];
                if (v > 0.0 && positive) || (v < 0.0 && !positive) {
                    sum += v * w;
                    count += 1.0;
                }
            }
            *o = sum / count.max(1.0);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magnitude_prune_keeps_the_top_k() {
        let mut v = vec![0.1, -0.5, 0.3, -0.2, 0.4, 0.0, -0.05, 0.6, 0.2, 0.01];
        magnitude_prune(&mut v, 0.3);
        assert_eq!(v, vec![0.0, -0.5, 0.0, 0.0, 0.4, 0.0, 0.0, 0.6, 0.0, 0.0]);
        assert!(v[1] == -0.5 && v[7] == 0.6 && v[4] == 0.4);
    }

    #[test]
    fn dare_is_reproducible_and_keeps_about_density() {
        let base: Vec<f32> = (0..100_000).map(|i| 1.0 + i as f32).collect();
        let (mut a, mut b, mut c) = (base.clone(), base.clone(), base.clone());
        random_prune(&mut a, 0.25, stream_key(1, "w", 0));
        random_prune(&mut b, 0.25, stream_key(1, "w", 0));
        random_prune(&mut c, 0.25, stream_key(2, "w", 0));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let kept = a.iter().filter(|x| **x != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.25).abs() < 0.01, "{kept}");
        assert!(a.iter().zip(&base).all(|(x, y)| *x == 0.0 || *x == y / 0.25));
    }

    #[test]
    fn ties_elects_the_sign_of_the_sum() {
        let deltas = vec![vec![1.0, -1.0, 0.0], vec![-3.0, 2.0, 0.0]];
        let mut out = vec![0.0; 3];
        disjoint_mean(&deltas, &[1.0, 0.5], &mut out);
        assert_eq!(out, vec![-1.5, 1.0, 0.0]);
    }
}
