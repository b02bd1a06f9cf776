//! Deterministic shuffling, train/validation splits and sampling from a seed.

/// SplitMix64: a small, well-mixed, reproducible generator (same seed, same sequence on every
/// platform and version).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// `0..n` in a seeded random order (Fisher–Yates).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// Split `0..n` into (train, validation) index lists, each in ascending order. The validation
/// side gets `round(n × ratio)` items (at least 1 when `ratio > 0` and `n ≥ 2`), chosen by a
/// seeded shuffle.
pub fn split_indices(n: usize, ratio: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut n_val = (n as f64 * ratio).round() as usize;
    if ratio > 0.0 && n >= 2 {
        n_val = n_val.clamp(1, n - 1);
    } else {
        n_val = n_val.min(n);
    }
    let order = shuffled(n, seed);
    let mut val: Vec<usize> = order[..n_val].to_vec();
    let mut train: Vec<usize> = order[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

/// `k` distinct indices from `0..n` (all of them if `k ≥ n`), in ascending order.
pub fn sample_without_replacement(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut picked: Vec<usize> = shuffled(n, seed).into_iter().take(k).collect();
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let (t1, v1) = split_indices(100, 0.1, 7);
        let (t2, v2) = split_indices(100, 0.1, 7);
        assert_eq!((t1.clone(), v1.clone()), (t2, v2));
        assert_eq!(v1.len(), 10);
        let mut all: Vec<usize> = t1.iter().chain(&v1).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_ne!(split_indices(100, 0.1, 8).1, v1);
        assert_eq!(split_indices(5, 0.01, 1).1.len(), 1);
        assert_eq!(split_indices(5, 0.0, 1).1.len(), 0);
    }

    #[test]
    fn sample_caps_at_population() {
        assert_eq!(sample_without_replacement(3, 10, 1), vec![0, 1, 2]);
        let s = sample_without_replacement(1000, 10, 3);
        assert_eq!(s.len(), 10);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }
}
