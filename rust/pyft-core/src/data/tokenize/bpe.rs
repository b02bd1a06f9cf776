//! BPE models of the fast path: the merge loop shared by both, and the byte-level model.
//!
//! [`Merges`] is HF's `Word::merge_all` without dropout: repeatedly apply the lowest-rank merge among
//! adjacent symbols, leftmost first among equal ranks. (HF's heap orders by `(rank, position)` and
//! discards stale entries, which picks exactly that pair every step.) It works on symbol ids, so it
//! serves both the byte-level model here and the SentencePiece-style model in [`super::spm`].
//!
//! In [`BpeModel`] (byte-level) vocabulary entries are stored as the raw bytes they stand for (the
//! GPT-2 byte-to-char alphabet is undone at load time), so a word is merged straight from the UTF-8 of
//! the text.

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

/// Check the `model` options both fast models share: type `BPE`, no dropout, and no subword prefix
/// or suffix (`null` or `""`: HF pastes an empty one on and changes nothing, and transformers 5
/// writes `""` when it saves a tokenizer). `Err` names what keeps the fast path off.
pub(crate) fn check_options(model: &Value) -> Result<(), String> {
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(format!("model type {}", model.get("type").unwrap_or(&Value::Null)));
    }
    match model.get("dropout") {
        None | Some(Value::Null) => {}
        Some(p) if p.as_f64() == Some(0.0) => {}
        Some(p) => return Err(format!("bpe dropout {p}")),
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        match model.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(v) => return Err(format!("bpe {key} {v}")),
        }
    }
    Ok(())
}

/// The merge table: `(left id, right id)` -> rank and result, plus the loop that applies it.
#[derive(Debug)]
pub(crate) struct Merges {
    /// `(left << 32) | right` to merge.
    map: FxHashMap<u64, Merge>,
}

impl Merges {
    /// Read the `merges` list of a BPE model (`"a b"` strings or `["a", "b"]` pairs); `id_of` looks a
    /// token string up in the model's vocabulary.
    pub(crate) fn from_json(model: &Value, id_of: impl Fn(&str) -> Option<u32>) -> Result<Merges, String> {
        let merge_list = model.get("merges").and_then(Value::as_array).ok_or("bpe merges are not a list")?;
        let mut map = FxHashMap::default();
        map.reserve(merge_list.len());
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
            map.insert(pair_key(a, b), Merge { rank: this_rank, new_id });
        }
        Ok(Merges { map })
    }

    /// Every `(left id, right id)` pair that merges.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.map.keys().map(|&k| ((k >> 32) as u32, k as u32))
    }

    #[inline]
    fn get(&self, left: u32, right: u32) -> Option<Merge> {
        self.map.get(&pair_key(left, right)).copied()
    }

    /// Merge the symbols the caller put in `scratch` (see [`Scratch::symbols`]: ids and lengths, at
    /// least one) and append the resulting tokens' ids to `ids` and lengths to `lens`. A merged
    /// token's length is the sum of its parts'.
    pub(crate) fn merge_into(&self, scratch: &mut Scratch, ids: &mut Vec<u32>, lens: &mut Vec<u32>) {
        debug_assert!(!scratch.ids.is_empty() && scratch.ids.len() == scratch.lens.len());
        if scratch.ids.len() <= SCAN_MAX {
            self.merge_scan(scratch, ids, lens);
        } else {
            self.merge_heap(scratch, ids, lens);
        }
    }

    /// Quadratic merge for short words: symbols in arrays, the best pair found by a linear scan.
    fn merge_scan(&self, scratch: &mut Scratch, ids: &mut Vec<u32>, lens: &mut Vec<u32>) {
        const NONE: Merge = Merge { rank: u32::MAX, new_id: 0 };
        let sym = &mut scratch.ids;
        let len = &mut scratch.lens;
        let pairs = &mut scratch.pairs;
        pairs.clear();
        pairs.extend(sym.windows(2).map(|w| self.get(w[0], w[1]).unwrap_or(NONE)));
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
                pairs[k] = self.get(sym[k], sym[k + 1]).unwrap_or(NONE);
            } else {
                pairs.pop();
            }
            if k > 0 {
                pairs[k - 1] = self.get(sym[k - 1], sym[k]).unwrap_or(NONE);
            }
        }
        ids.extend_from_slice(sym);
        lens.extend_from_slice(len);
    }

    /// `O(n log n)` merge for long words: a linked list of symbols and a heap of candidate merges.
    fn merge_heap(&self, scratch: &mut Scratch, ids: &mut Vec<u32>, lens: &mut Vec<u32>) {
        const END: u32 = u32::MAX;
        let sym = &mut scratch.ids;
        let len = &mut scratch.lens;
        let n = sym.len();
        let next = &mut scratch.next;
        let prev = &mut scratch.prev;
        next.clear();
        prev.clear();
        next.extend((1..=n as u32).map(|i| if i as usize == n { END } else { i }));
        prev.extend((0..n as u32).map(|i| if i == 0 { END } else { i - 1 }));
        // Min-heap on (rank, position, new id).
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32)>> = BinaryHeap::with_capacity(n);
        for p in 0..n - 1 {
            if let Some(m) = self.get(sym[p], sym[p + 1]) {
                heap.push(Reverse((m.rank, p as u32, m.new_id)));
            }
        }
        // A merged-away symbol is marked by `removed`; its length may legitimately be 0 (a
        // SentencePiece prefix), so the length cannot mark it.
        let removed = &mut scratch.removed;
        removed.clear();
        removed.resize(n, false);
        while let Some(Reverse((rank, p, new_id))) = heap.pop() {
            let p = p as usize;
            if removed[p] || next[p] == END {
                continue;
            }
            let q = next[p] as usize;
            // Stale unless the pair at `p` is still the one this entry was made for.
            if self.get(sym[p], sym[q]) != Some(Merge { rank, new_id }) {
                continue;
            }
            sym[p] = new_id;
            len[p] += len[q];
            removed[q] = true;
            next[p] = next[q];
            if next[p] != END {
                prev[next[p] as usize] = p as u32;
            }
            if prev[p] != END {
                let l = prev[p] as usize;
                if let Some(m) = self.get(sym[l], sym[p]) {
                    heap.push(Reverse((m.rank, l as u32, m.new_id)));
                }
            }
            if next[p] != END {
                if let Some(m) = self.get(sym[p], sym[next[p] as usize]) {
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

/// Byte-level BPE model (no dropout, no subword prefix or suffix).
#[derive(Debug)]
pub(crate) struct BpeModel {
    /// Id of the one-byte token for each byte (0 for a byte in `missing`).
    byte_ids: [u32; 256],
    /// Bytes that UTF-8 text can hold but the vocabulary has no token for (StarCoder lacks 0xF1,
    /// Falcon a few control chars). HF drops such a byte and shifts the offsets after it (or emits the
    /// unknown token), so a text containing one goes to HF; `None` if there are none.
    missing: Option<Box<[bool; 256]>>,
    merges: Merges,
    /// With `ignore_merges`: the whole vocabulary by raw bytes, since a word found there is one token.
    whole_words: Option<FxHashMap<Box<[u8]>, u32>>,
}

impl BpeModel {
    /// Build from the `model` object of a `tokenizer.json`. `Err` names what keeps the fast path off.
    pub(crate) fn from_json(model: &Value) -> Result<BpeModel, String> {
        check_options(model)?;
        let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);

        let chars = byte_chars();
        let char_to_byte: FxHashMap<char, u8> = chars.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let vocab = model.get("vocab").and_then(Value::as_object).ok_or("bpe vocab is not an object")?;
        let id_of = |token: &str| vocab.get(token).and_then(Value::as_u64).map(|id| id as u32);

        let mut byte_ids = [0u32; 256];
        let mut missing = Box::new([false; 256]);
        for (b, c) in chars.iter().enumerate() {
            match id_of(c.encode_utf8(&mut [0; 4])) {
                Some(id) => byte_ids[b] = id,
                // 0xC0, 0xC1 and 0xF5..=0xFF never occur in UTF-8.
                None => missing[b] = !matches!(b, 0xC0 | 0xC1 | 0xF5..=0xFF),
            }
        }
        let missing = missing.contains(&true).then_some(missing);
        let merges = Merges::from_json(model, id_of)?;

        let whole_words = ignore_merges.then(|| {
            vocab
                .iter()
                .filter_map(|(token, id)| {
                    Some((raw_bytes(token, &char_to_byte)?.into_boxed_slice(), id.as_u64()? as u32))
                })
                .collect()
        });
        Ok(BpeModel { byte_ids, missing, whole_words, merges })
    }

    /// Whether every byte of `text` has a token (else HF must encode it: see `missing`).
    #[inline]
    pub(crate) fn covers(&self, text: &str) -> bool {
        self.missing.as_ref().is_none_or(|missing| !text.bytes().any(|b| missing[b as usize]))
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
        let (sym, len) = scratch.symbols();
        sym.extend(word.iter().map(|&b| self.byte_ids[b as usize]));
        len.resize(word.len(), 1);
        self.merges.merge_into(scratch, ids, lens);
    }
}

#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// Reusable buffers for [`Merges::merge_into`].
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    ids: Vec<u32>,
    lens: Vec<u32>,
    pairs: Vec<Merge>,
    next: Vec<u32>,
    prev: Vec<u32>,
    removed: Vec<bool>,
}

impl Scratch {
    /// The (cleared) initial symbols of the next merge: ids and lengths, to be filled in parallel.
    pub(crate) fn symbols(&mut self) -> (&mut Vec<u32>, &mut Vec<u32>) {
        self.ids.clear();
        self.lens.clear();
        (&mut self.ids, &mut self.lens)
    }
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
        let (sym, len) = s.symbols();
        sym.extend(word.iter().map(|&b| m.byte_ids[b as usize]));
        len.resize(word.len(), 1);
        if heap {
            m.merges.merge_heap(&mut s, &mut ids, &mut lens);
        } else {
            m.merges.merge_scan(&mut s, &mut ids, &mut lens);
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
        let err = BpeModel::from_json(&json!({"type": "WordPiece"})).unwrap_err();
        assert!(err.contains("model type"), "{err}");
        let err = check_options(&json!({"type": "BPE", "continuing_subword_prefix": "##"})).unwrap_err();
        assert!(err.contains("continuing_subword_prefix"), "{err}");
        let err = check_options(&json!({"type": "BPE", "end_of_word_suffix": "</w>"})).unwrap_err();
        assert!(err.contains("end_of_word_suffix"), "{err}");
    }

    #[test]
    fn missing_byte_tokens_send_texts_to_hf() {
        let full = model(&[], false);
        assert!(full.missing.is_none() && full.covers("any ü text"));
        let mut vocab = serde_json::Map::new();
        for (b, c) in byte_chars().into_iter().enumerate() {
            // No token for '!' (possible in text) nor 0xFF (never in UTF-8).
            if b != 0x21 && b != 0xFF {
                vocab.insert(c.to_string(), json!(vocab.len()));
            }
        }
        let m = BpeModel::from_json(&json!({"type": "BPE", "vocab": vocab, "merges": []})).unwrap();
        assert!(m.covers("hello ÿ"));
        assert!(!m.covers("hello!"));
    }

    #[test]
    fn empty_prefix_and_suffix_mean_none() {
        // What transformers 5 writes when it saves a tokenizer.
        let options = json!({"type": "BPE", "continuing_subword_prefix": "", "end_of_word_suffix": ""});
        assert_eq!(check_options(&options), Ok(()));
        assert_eq!(check_options(&json!({"type": "BPE", "continuing_subword_prefix": null})), Ok(()));
    }

    #[test]
    fn zero_length_symbols_merge() {
        // A SentencePiece prefix symbol has length 0; the heap must not take it for a merged-away one.
        let m = model(&[("a", "b"), ("ab", "c")], false);
        for heap in [false, true] {
            let (mut ids, mut lens, mut s) = (vec![], vec![], Scratch::default());
            let (sym, len) = s.symbols();
            sym.extend([m.byte_ids[b'a' as usize], m.byte_ids[b'b' as usize], m.byte_ids[b'c' as usize]]);
            len.extend([0, 1, 1]);
            if heap {
                m.merges.merge_heap(&mut s, &mut ids, &mut lens);
            } else {
                m.merges.merge_scan(&mut s, &mut ids, &mut lens);
            }
            assert_eq!(lens, [2], "heap={heap}");
        }
    }

    proptest! {
        #[test]
        fn scan_and_heap_agree(word in prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 2..80)) {
            let m = model(&[("a", "b"), ("b", "a"), ("a", "a"), ("ab", "a"), ("c", "c"), ("ab", "ab"), ("cc", "a"), ("b", "cc")], false);
            prop_assert_eq!(run(&m, &word, false), run(&m, &word, true));
        }
    }
}
