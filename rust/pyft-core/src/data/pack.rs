//! Sequence packing: Best-Fit-Decreasing of whole documents into rows of a fixed capacity.
//!
//! Documents are never split or reordered internally; each row lists the documents it holds
//! in placement order. Attention isolation and loss masking across document boundaries are
//! the collator's job (position ids restart per document, the first label of every document
//! is masked at preparation time).

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// The result of packing: rows of document indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    /// For each row, the indices (into the `lengths` slice given to [`pack_bfd`]) of its documents.
    pub rows: Vec<Vec<u32>>,
    /// Row capacity in tokens.
    pub capacity: u32,
    /// Total tokens placed.
    pub tokens: u64,
}

impl Packing {
    /// Fraction of row slots filled with tokens: `tokens / (rows × capacity)` (1.0 is perfect).
    pub fn efficiency(&self) -> f64 {
        if self.rows.is_empty() {
            return 1.0;
        }
        self.tokens as f64 / (self.rows.len() as f64 * self.capacity as f64)
    }
}

/// Pack documents of the given lengths (tokens) into rows of `capacity` tokens with
/// Best-Fit-Decreasing: documents in decreasing length order (ties: input order), each into the
/// open row with the least room that still fits it, else into a new row. O(n log n).
///
/// Errors if a document is longer than `capacity` (apply the length policy first) or if
/// `capacity` is zero.
pub fn pack_bfd(lengths: &[u32], capacity: u32) -> Result<Packing> {
    if capacity == 0 {
        return Err(Error::Option("packing capacity (max_len) must be positive".into()));
    }
    if let Some((i, &len)) = lengths.iter().enumerate().find(|(_, &l)| l > capacity) {
        return Err(Error::Option(format!("document {i} has {len} tokens, more than the row capacity {capacity}")));
    }
    let mut order: Vec<u32> = (0..lengths.len() as u32).collect();
    order.sort_by(|&a, &b| lengths[b as usize].cmp(&lengths[a as usize]).then(a.cmp(&b)));
    let mut rows: Vec<Vec<u32>> = Vec::new();
    // Open rows keyed by (room left, row index): the first key with room >= len is the best fit.
    let mut open: BTreeSet<(u32, u32)> = BTreeSet::new();
    let mut tokens = 0u64;
    for doc in order {
        let len = lengths[doc as usize];
        tokens += u64::from(len);
        let fit = open.range((len, 0)..).next().copied();
        let (room, row) = match fit {
            Some(key) => {
                open.remove(&key);
                key
            }
            None => {
                rows.push(Vec::new());
                (capacity, rows.len() as u32 - 1)
            }
        };
        rows[row as usize].push(doc);
        let left = room - len;
        if left > 0 {
            open.insert((left, row));
        }
    }
    Ok(Packing { rows, capacity, tokens })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn best_fit_fills_tightest_row() {
        // 7 opens row0 (room 3), 5 opens row1 (room 5), 3 fits row0 exactly, 4 goes to row1.
        let p = pack_bfd(&[3, 7, 5, 4], 10).unwrap();
        assert_eq!(p.rows, vec![vec![1, 0], vec![2, 3]]);
        assert!((p.efficiency() - 0.95).abs() < 1e-12);
    }

    #[test]
    fn rejects_overlong_and_zero_capacity() {
        assert!(pack_bfd(&[11], 10).unwrap_err().to_string().contains("document 0 has 11 tokens"));
        assert!(pack_bfd(&[1], 0).is_err());
        assert!(pack_bfd(&[], 4).unwrap().rows.is_empty());
    }

    proptest! {
        #[test]
        fn every_doc_placed_once_and_rows_fit(lengths in prop::collection::vec(1u32..=64, 0..300), cap in 64u32..=256) {
            let p = pack_bfd(&lengths, cap).unwrap();
            let mut seen = vec![0u32; lengths.len()];
            for row in &p.rows {
                prop_assert!(!row.is_empty());
                let used: u32 = row.iter().map(|&d| lengths[d as usize]).sum();
                prop_assert!(used <= cap);
                for &d in row { seen[d as usize] += 1; }
            }
            prop_assert!(seen.iter().all(|&c| c == 1));
            prop_assert_eq!(p.tokens, lengths.iter().map(|&l| u64::from(l)).sum::<u64>());
            // BFD never needs more rows than twice the lower bound (in fact ≤ 11/9 OPT + 1).
            let lower = p.tokens.div_ceil(u64::from(cap));
            prop_assert!((p.rows.len() as u64) <= 2 * lower + 1);
        }
    }
}
