//! Byte-level BPE on raw bytes: the model half of the fast path.
//!
//! Vocabulary entries are stored as the raw bytes they stand for (the GPT-2 byte-to-char alphabet is
//! undone at load time), so a word is merged straight from the UTF-8 of the text. Merging follows HF's
//! `Word::merge_all` without dropout: repeatedly apply the lowest-rank merge among adjacent pairs,
//! leftmost first among equal ranks. (HF's heap orders by `(rank, position)` and discards stale entries,
//! which picks exactly that pair every step.)

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;
use serde_json::Value;

/// Words up to this many bytes are merged with the quadratic array scan; longer ones use a heap.
const SCAN_MAX: usize = 48;

/// The GPT-2 byte-level alphabet: the char that stands for each byte in vocab strings.
pub(crate) fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut out = ['\0'; 256];
    let mut n = 0;
    for b in 0..256u32 {
        let cp = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        out[b as usize] = char::from_u32(cp).expect("alphabet code points are below 0x200");
    }
    out
}

/// Undo the byte-level alphabet: the raw bytes of a vocab string, or `None` if it has a char outside
/// the alphabet (such a token can never come out of byte-level BPE).
pub(crate) fn raw_bytes(token: &str, char_to_byte: &FxHashMap<char, u8>) -> Option<Vec<u8>> {
    token.chars().map(|c| char_to_byte.get(&c).copied()).collect()
}

/// A merge's priority (lower merges first) and the id it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Merge {
    rank: u32,
    new_id: u32,
}

/// Byte-level BPE model (no dropout, no unknown token, no subword prefix or suffix).
#[derive(Debug)]
pub(crate) struct BpeModel {
    /// Id of the one-byte token for each byte.
    byte_ids: [u32; 256],
    /// `(left << 32) | right` to merge.
    merges: FxHashMap<u64, Merge>,
    /// With `ignore_merges`: the whole vocabulary by raw bytes, since a word found there is one token.
    whole_words: Option<FxHashMap<Box<[u8]>, u32>>,
}

impl BpeModel {
    /// Build from the `model` object of a `tokenizer.json`. `Err` names what keeps the fast path off.
    pub(crate) fn from_json(model: &Value) -> Result<BpeModel, String> {
        if model.get("type").and_then(Value::as_str) != Some("BPE") {
            return Err(format!("model type {}", model.get("type").unwrap_or(&Value::Null)));
        }
        match model.get("dropout") {
            None | Some(Value::Null) => {}
            Some(p) if p.as_f64() == Some(0.0) => {}
            Some(p) => return Err(format!("bpe dropout {p}")),
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let Some(v) = model.get(key).filter(|v| !v.is_null()) {
                return Err(format!("bpe {key} {v}"));
            }
        }
        let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);

        let chars = byte_chars();
        let char_to_byte: FxHashMap<char, u8> = chars.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let vocab = model.get("vocab").and_then(Value::as_object).ok_or("bpe vocab is not an object")?;
        let id_of = |token: &str| vocab.get(token).and_then(Value::as_u64).map(|id| id as u32);

        let mut byte_ids = [0u32; 256];
        for (b, c) in chars.iter().enumerate() {
            byte_ids[b] = id_of(c.encode_utf8(&mut [0; 4]))
                .ok_or_else(|| format!("bpe vocab lacks the byte-level token for byte 0x{b:02x}"))?;
        }

        let merge_list = model.get("merges").and_then(Value::as_array).ok_or("bpe merges are not a list")?;
        let mut merges = FxHashMap::default();
        merges.reserve(merge_list.len());
        let mut rank = 0u32;
        for entry in merge_list {
            let (left, right) = match entry {
                Value::String(line) if line.starts_with("#version") => continue,
                Value::String(line) => match line.split(' ').collect::<Vec<_>>()[..] {
                    [a, b] => (a, b),
                    _ => return Err(format!("bpe merge {line:?}")),
                },
                Value::Array(pair) => match &pair[..] {
                    [Value::String(a), Value::String(b)] => (a.as_str(), b.as_str()),
                    _ => return Err(format!("bpe merge {entry}")),
                },
                _ => return Err(format!("bpe merge {entry}")),
            };
            let this_rank = rank;
            rank += 1;
            let (Some(a), Some(b)) = (id_of(left), id_of(right)) else {
                return Err(format!("bpe merge {left:?} {right:?} out of vocabulary"));
            };
            let new_id = id_of(&format!("{left}{right}"))
                .ok_or_else(|| format!("bpe merge result {left}{right:?} out of vocabulary"))?;
            // A later duplicate overrides an earlier one, as in HF's map.
            merges.insert(pair_key(a, b), Merge { rank: this_rank, new_id });
        }

        let whole_words = ignore_merges.then(|| {
            vocab
                .iter()
                .filter_map(|(token, id)| {
                    Some((raw_bytes(token, &char_to_byte)?.into_boxed_slice(), id.as_u64()? as u32))
                })
                .collect()
        });
        Ok(BpeModel { byte_ids, merges, whole_words })
    }

    /// Tokenize one word (raw bytes, non-empty), appending each token's id to `ids` and its byte
    /// length to `lens`. `scratch` is reused across calls.
    pub(crate) fn tokenize_word(&self, word: &[u8], ids: &mut Vec<u32>, lens: &mut Vec<u32>, scratch: &mut Scratch) {
        debug_assert!(!word.is_empty());
        if word.len() == 1 {
            ids.push(self.byte_ids[word[0] as usize]);
            lens.push(1);
            return;
        }
        if let Some(id) = self.whole_words.as_ref().and_then(|w| w.get(word)) {
            ids.push(*id);
            lens.push(word.len() as u32);
            return;
        }
        if word.len() <= SCAN_MAX {
            self.merge_scan(word, ids, lens, scratch);
        } else {
            self.merge_heap(word, ids, lens, scratch);
        }
    }

    #[inline]
    fn merge_of(&self, left: u32, right: u32) -> Option<Merge> {
        self.merges.get(&pair_key(left, right)).copied()
    }

    /// Quadratic merge for short words: symbols in arrays, the best pair found by a linear scan.
    fn merge_scan(&self, word: &[u8], ids: &mut Vec<u32>, lens: &mut Vec<u32>, scratch: &mut Scratch) {
        const NONE: Merge = Merge { rank: u32::MAX, new_id: 0 };
        let sym = &mut scratch.ids;
        let len = &mut scratch.lens;
        let pairs = &mut scratch.pairs;
        sym.clear();
        len.clear();
        pairs.clear();
        sym.extend(word.iter().map(|&b| self.byte_ids[b as usize]));
        len.resize(word.len(), 1);
        pairs.extend(sym.windows(2).map(|w| self.merge_of(w[0], w[1]).unwrap_or(NONE)));
        loop {
            // Leftmost lowest rank.
            let mut best = usize::MAX;
            let mut best_rank = u32::MAX;
            for (k, m) in pairs.iter().enumerate() {
                if m.rank < best_rank {
                    best_rank = m.rank;
                    best = k;
                }
            }
            if best == usize::MAX {
                break;
            }
            let k = best;
            sym[k] = pairs[k].new_id;
            len[k] += len[k + 1];
            sym.remove(k + 1);
            len.remove(k + 1);
            if k + 1 < pairs.len() {
                pairs.remove(k + 1);
                pairs[k] = self.merge_of(sym[k], sym[k + 1]).unwrap_or(NONE);
            } else {
                pairs.pop();
            }
            if k > 0 {
                pairs[k - 1] = self.merge_of(sym[k - 1], sym[k]).unwrap_or(NONE);
            }
        }
        ids.extend_from_slice(sym);
        lens.extend_from_slice(len);
    }

    /// `O(n log n)` merge for long words: a linked list of symbols and a heap of candidate merges.
    fn merge_heap(&self, word: &[u8], ids: &mut Vec<u32>, lens: &mut Vec<u32>, scratch: &mut Scratch) {
        const END: u32 = u32::MAX;
        let n = word.len();
        let sym = &mut scratch.ids;
        let len = &mut scratch.lens;
        let next = &mut scratch.next;
        let prev = &mut scratch.prev;
        sym.clear();
        len.clear();
        next.clear();
        prev.clear();
        sym.extend(word.iter().map(|&b| self.byte_ids[b as usize]));
        len.resize(n, 1);
        next.extend((1..=n as u32).map(|i| if i as usize == n { END } else { i }));
        prev.extend((0..n as u32).map(|i| if i == 0 { END } else { i - 1 }));
        // Min-heap on (rank, position, new id).
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32)>> = BinaryHeap::with_capacity(n);
        for p in 0..n - 1 {
            if let Some(m) = self.merge_of(sym[p], sym[p + 1]) {
                heap.push(Reverse((m.rank, p as u32, m.new_id)));
            }
        }
        while let Some(Reverse((rank, p, new_id))) = heap.pop() {
            let p = p as usize;
            if len[p] == 0 || next[p] == END {
                continue;
            }
            let q = next[p] as usize;
            // Stale unless the pair at `p` is still the one this entry was made for.
            if self.merge_of(sym[p], sym[q]) != Some(Merge { rank, new_id }) {
                continue;
            }
            sym[p] = new_id;
            len[p] += len[q];
            len[q] = 0;
            next[p] = next[q];
            if next[p] != END {
                prev[next[p] as usize] = p as u32;
            }
            if prev[p] != END {
                let l = prev[p] as usize;
                if let Some(m) = self.merge_of(sym[l], sym[p]) {
                    heap.push(Reverse((m.rank, l as u32, m.new_id)));
                }
            }
            if next[p] != END {
                if let Some(m) = self.merge_of(sym[p], sym[next[p] as usize]) {
                    heap.push(Reverse((m.rank, p as u32, m.new_id)));
                }
            }
        }
        let mut p = 0usize;
        loop {
            ids.push(sym[p]);
            lens.push(len[p]);
            if next[p] == END {
                break;
            }
            p = next[p] as usize;
        }
    }
}

#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// Reusable buffers for [`BpeModel::tokenize_word`].
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    ids: Vec<u32>,
    lens: Vec<u32>,
    pairs: Vec<Merge>,
    next: Vec<u32>,
    prev: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn alphabet_matches_gpt2() {
        let chars = byte_chars();
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[b'a' as usize], 'a');
        assert_eq!(chars[0xA0], 'ł');
        assert_eq!(chars[0xAD], 'Ń');
        let mut sorted = chars.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }

    /// A model over bytes `a`, `b`, `c` (plus the rest of the alphabet) with the given merges.
    fn model(merges: &[(&str, &str)], ignore_merges: bool) -> BpeModel {
        let mut vocab = serde_json::Map::new();
        for c in byte_chars() {
            let n = vocab.len();
            vocab.insert(c.to_string(), json!(n));
        }
        for (a, b) in merges {
            let n = vocab.len();
            vocab.entry(format!("{a}{b}")).or_insert(json!(n));
        }
        let merges: Vec<_> = merges.iter().map(|(a, b)| json!([a, b])).collect();
        BpeModel::from_json(&json!({"type": "BPE", "vocab": vocab, "merges": merges, "ignore_merges": ignore_merges}))
            .unwrap()
    }

    fn run(m: &BpeModel, word: &[u8], heap: bool) -> (Vec<u32>, Vec<u32>) {
        let (mut ids, mut lens, mut s) = (vec![], vec![], Scratch::default());
        if heap {
            m.merge_heap(word, &mut ids, &mut lens, &mut s);
        } else {
            m.merge_scan(word, &mut ids, &mut lens, &mut s);
        }
        (ids, lens)
    }

    #[test]
    fn lowest_rank_then_leftmost() {
        let m = model(&[("a", "a"), ("b", "c"), ("aa", "a")], false);
        for heap in [false, true] {
            // "aaa": (a,a) leftmost, then (aa,a).
            let (ids, lens) = run(&m, b"aaa", heap);
            assert_eq!((ids.len(), lens), (1, vec![3]));
            // "aaaa": (a,a) twice, then no (aa,aa) merge.
            assert_eq!(run(&m, b"aaaa", heap).1, [2, 2]);
            assert_eq!(run(&m, b"abca", heap).1, [1, 2, 1]);
        }
    }

    #[test]
    fn ignore_merges_emits_whole_vocab_words() {
        // "abc" is in the vocab only through (a, bc), but "ab" merges first, so plain BPE gives ab + c.
        let m = model(&[("a", "b"), ("b", "c"), ("a", "bc")], true);
        let (mut ids, mut lens, mut s) = (vec![], vec![], Scratch::default());
        m.tokenize_word(b"abc", &mut ids, &mut lens, &mut s);
        assert_eq!(lens, [3]);
        let plain = model(&[("a", "b"), ("b", "c"), ("a", "bc")], false);
        assert_eq!(run(&plain, b"abc", false).1, [2, 1]);
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        let err = BpeModel::from_json(&json!({"type": "BPE", "vocab": {}, "merges": [], "dropout": 0.1})).unwrap_err();
        assert!(err.contains("dropout"), "{err}");
        let err = BpeModel::from_json(&json!({"type": "BPE", "vocab": {"a": 0}, "merges": []})).unwrap_err();
        assert!(err.contains("byte 0x00"), "{err}");
        let err = BpeModel::from_json(&json!({"type": "WordPiece"})).unwrap_err();
        assert!(err.contains("model type"), "{err}");
    }

    proptest! {
        #[test]
        fn scan_and_heap_agree(word in prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 2..80)) {
            let m = model(&[("a", "b"), ("b", "a"), ("a", "a"), ("ab", "a"), ("c", "c"), ("ab", "ab"), ("cc", "a"), ("b", "cc")], false);
            prop_assert_eq!(run(&m, &word, false), run(&m, &word, true));
        }
    }
}
