//! SentencePiece-style BPE (Llama 2, Mistral v0.1, Phi-3, Gemma): the model half of that fast path.
//!
//! Vocabulary strings are plain Unicode, with a metaspace char (`▁`) where the text had a space
//! ([`super::metaspace`] decides where). HF's `BPE::merge_word` starts a word from its chars: each char
//! becomes its vocabulary id; a char without one becomes, with `byte_fallback`, the `<0xXX>` tokens of
//! its UTF-8 bytes (if all of them exist), otherwise the unknown token (consecutive ones fused into
//! one with `fuse_unk`), or nothing at all without an unknown token. Then the merge loop over ids is
//! the byte-level one ([`Merges`]).
//!
//! Lengths here are in bytes of the *original* text, not of HF's normalized text: a space (1 byte)
//! read as `▁` keeps length 1, and a prepended `▁` has length 0. The caller maps them to offsets.

use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::Value;

use super::bpe::{check_options, Merges, Scratch};

/// No token: a marker in the id tables.
const NONE: u32 = u32::MAX;

/// A SentencePiece-style BPE model that the fast path reproduces exactly.
#[derive(Debug)]
pub(crate) struct SpmModel {
    /// The metaspace char (`▁`); spaces are read as it.
    meta: char,
    /// Its id.
    meta_id: u32,
    /// Id of each ASCII char's one-char token, [`NONE`] if absent.
    ascii: [u32; 128],
    /// Ids of the other one-char tokens.
    chars: FxHashMap<char, u32>,
    /// With `byte_fallback`: the id of `<0xXX>` for each byte, [`NONE`] if absent; all [`NONE`] without.
    byte_ids: [u32; 256],
    /// The unknown token's id, if the model has one.
    unk: Option<u32>,
    /// `fuse_unk`: consecutive unknown chars become one unknown token.
    fuse_unk: bool,
    merges: Merges,
    /// Whether no merge can ever join a symbol that ends in a char other than `meta` to one that starts
    /// with `meta` (see [`SpmModel::meta_boundaries_hold`]).
    meta_boundaries_hold: bool,
}

impl SpmModel {
    /// Build from the `model` object of a `tokenizer.json`, with `meta` as the metaspace char. `Err`
    /// names what keeps the fast path off.
    pub(crate) fn from_json(model: &Value, meta: char) -> Result<SpmModel, String> {
        check_options(model)?;
        if model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false) {
            // HF would look the whole text piece up in the vocabulary; the fast path cuts pieces.
            return Err("bpe ignore_merges with a metaspace (SentencePiece-style) vocabulary".into());
        }
        let vocab = model.get("vocab").and_then(Value::as_object).ok_or("bpe vocab is not an object")?;
        let id_of = |token: &str| vocab.get(token).and_then(Value::as_u64).map(|id| id as u32);

        let meta_id = id_of(meta.encode_utf8(&mut [0; 4]))
            .ok_or_else(|| format!("bpe vocab lacks the metaspace token {meta:?}"))?;
        let mut ascii = [NONE; 128];
        let mut chars = FxHashMap::default();
        for (token, id) in vocab {
            let mut it = token.chars();
            if let (Some(c), None, Some(id)) = (it.next(), it.next(), id.as_u64()) {
                if c.is_ascii() {
                    ascii[c as usize] = id as u32;
                } else {
                    chars.insert(c, id as u32);
                }
            }
        }
        let mut byte_ids = [NONE; 256];
        if model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false) {
            for (b, slot) in byte_ids.iter_mut().enumerate() {
                *slot = id_of(&format!("<0x{b:02X}>")).unwrap_or(NONE);
            }
        }
        let unk = match model.get("unk_token") {
            None | Some(Value::Null) => None,
            Some(Value::String(token)) => {
                Some(id_of(token).ok_or_else(|| format!("bpe unk_token {token:?} is not in the vocabulary"))?)
            }
            Some(other) => return Err(format!("bpe unk_token {other}")),
        };
        if unk.is_none() && byte_ids.contains(&NONE) {
            // HF drops such a char and counts offsets as if it were not there: every later offset
            // of the word shifts.
            return Err("bpe without unk_token or a complete byte fallback (unknown chars vanish)".into());
        }
        let fuse_unk = model.get("fuse_unk").and_then(Value::as_bool).unwrap_or(false);
        let merges = Merges::from_json(model, id_of)?;

        let mut spm = SpmModel {
            meta,
            meta_id,
            ascii,
            chars,
            byte_ids,
            unk,
            fuse_unk,
            merges,
            meta_boundaries_hold: false,
        };
        spm.meta_boundaries_hold = spm.check_meta_boundaries(vocab);
        Ok(spm)
    }

    /// Whether a word may be cut before any `meta` char that follows a char other than `meta`
    /// (spaces count as `meta`) without changing its tokens. Checked once, at load time.
    ///
    /// Why it is exact: the merge loop only ever joins two adjacent symbols `a b` that form a pair
    /// of the merge table, and the joined symbol's string is `str(a) + str(b)` (HF builds each merge
    /// result as the concatenation, and ids name strings one-to-one, checked here). So a symbol's
    /// string is the concatenation of the strings of the initial symbols it covers. At a cut before
    /// a `meta` char at position `i` whose predecessor is not `meta`, the symbol starting at `i`
    /// starts with the `meta` token itself (it is in the vocabulary), and the symbol ending at
    /// `i - 1` ends with the string of that predecessor's initial symbol: the char itself, a
    /// `<0xXX>` byte token (ends in `>`), or the unknown token (checked below not to end in `meta`).
    /// Every char yields at least one symbol (checked at load time), so nothing vanishes between them. A
    /// merge across the cut would therefore need a pair `(a, b)` with `str(b)` starting with `meta`
    /// and `str(a)` not ending with `meta`; if the table has none, no merge ever crosses such a cut,
    /// and since the loop always takes the lowest-ranked leftmost pair, each side then goes through
    /// exactly the merges it would go through alone.
    fn check_meta_boundaries(&self, vocab: &serde_json::Map<String, Value>) -> bool {
        let mut strings: FxHashMap<u32, &str> = FxHashMap::default();
        let mut ids = FxHashSet::default();
        for (token, id) in vocab {
            let Some(id) = id.as_u64() else { return false };
            if !ids.insert(id as u32) {
                return false; // two strings share an id
            }
            strings.insert(id as u32, token);
        }
        let string = |id: u32| strings.get(&id).copied().unwrap_or("");
        let unk_ok = self.unk.is_none_or(|id| !string(id).ends_with(self.meta));
        unk_ok
            && !self.merges.pairs().any(|(a, b)| string(b).starts_with(self.meta) && !string(a).ends_with(self.meta))
    }

    /// See [`SpmModel::check_meta_boundaries`].
    pub(crate) fn meta_boundaries_hold(&self) -> bool {
        self.meta_boundaries_hold
    }

    /// The metaspace char.
    pub(crate) fn meta(&self) -> char {
        self.meta
    }

    /// Tokenize one word: `word` (original text: spaces are read as `meta`), after a `meta` of length
    /// 0 if `prefixed`. Appends token ids to `ids` and their lengths in original bytes to `lens`.
    pub(crate) fn tokenize(
        &self,
        word: &str,
        prefixed: bool,
        ids: &mut Vec<u32>,
        lens: &mut Vec<u32>,
        scratch: &mut Scratch,
    ) {
        let (sym, len) = scratch.symbols();
        if prefixed {
            sym.push(self.meta_id);
            len.push(0);
        }
        // A pending unknown token and its length. HF adds it only when the next known char (or the
        // end) comes: `<0xXX>` tokens of a later char go in before it, and so do they here.
        let mut unk: Option<(u32, u32)> = None;
        for c in word.chars() {
            let n = c.len_utf8() as u32;
            let id = if c == ' ' || c == self.meta {
                self.meta_id
            } else if c.is_ascii() {
                self.ascii[c as usize]
            } else {
                self.chars.get(&c).copied().unwrap_or(NONE)
            };
            if id != NONE {
                if let Some((u, l)) = unk.take() {
                    sym.push(u);
                    len.push(l);
                }
                sym.push(id);
                len.push(n);
                continue;
            }
            let mut utf8 = [0u8; 4];
            let bytes = c.encode_utf8(&mut utf8).as_bytes();
            if bytes.iter().all(|&b| self.byte_ids[b as usize] != NONE) {
                sym.extend(bytes.iter().map(|&b| self.byte_ids[b as usize]));
                len.extend(std::iter::repeat_n(1, bytes.len()));
                continue;
            }
            if let Some(unk_id) = self.unk {
                unk = match unk {
                    Some((u, l)) if self.fuse_unk => Some((u, l + n)),
                    Some((u, l)) => {
                        sym.push(u);
                        len.push(l);
                        Some((unk_id, n))
                    }
                    None => Some((unk_id, n)),
                };
            }
        }
        if let Some((u, l)) = unk {
            sym.push(u);
            len.push(l);
        }
        if !sym.is_empty() {
            self.merges.merge_into(scratch, ids, lens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A model over `▁ a b c` and the 256 byte tokens, with merges `▁ a`, `b c`, `▁a bc`.
    fn model(extra: serde_json::Value) -> SpmModel {
        let mut vocab = serde_json::Map::new();
        vocab.insert("<unk>".into(), json!(0));
        for b in 0..256 {
            vocab.insert(format!("<0x{b:02X}>"), json!(vocab.len()));
        }
        for t in ["▁", "a", "b", "c", "▁a", "bc", "▁abc"] {
            vocab.insert(t.into(), json!(vocab.len()));
        }
        let mut m = json!({"type": "BPE", "vocab": vocab, "merges": ["▁ a", "b c", "▁a bc"],
            "byte_fallback": true, "fuse_unk": true, "unk_token": "<unk>"});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        SpmModel::from_json(&m, '▁').unwrap()
    }

    fn run(m: &SpmModel, word: &str, prefixed: bool) -> (Vec<u32>, Vec<u32>) {
        let (mut ids, mut lens) = (vec![], vec![]);
        m.tokenize(word, prefixed, &mut ids, &mut lens, &mut Scratch::default());
        (ids, lens)
    }

    #[test]
    fn spaces_prefix_and_byte_fallback() {
        let m = model(json!({}));
        // "▁abc" merges fully; the prefix has length 0.
        assert_eq!(run(&m, "abc", true), (vec![263], vec![3]));
        assert_eq!(run(&m, " abc", false), (vec![263], vec![4]));
        // "é" is not in the vocabulary: its two UTF-8 bytes.
        assert_eq!(run(&m, "é", false), (vec![1 + 0xC3, 1 + 0xA9], vec![1, 1]));
        assert!(m.meta_boundaries_hold());
    }

    #[test]
    fn unknown_chars_fuse_and_come_after_byte_fallback() {
        // Without byte tokens for 0xC3, "é" is unknown; "€" still falls back to bytes.
        let m = model(json!({}));
        let mut no_c3 = model(json!({}));
        no_c3.byte_ids[0xC3] = NONE;
        assert_eq!(run(&no_c3, "ééa", false).0, [0, 258]);
        assert_eq!(run(&no_c3, "ééa", false).1, [4, 1]);
        // HF adds the pending unknown token after the byte tokens of the next char.
        let (ids, _) = run(&no_c3, "é€", false);
        assert_eq!(ids, [1 + 0xE2, 1 + 0x82, 1 + 0xAC, 0]);
        no_c3.fuse_unk = false;
        assert_eq!(run(&no_c3, "éé", false).0, [0, 0]);
        assert_eq!(run(&m, "ééa", false).0.len(), 5);
    }

    #[test]
    fn refuses_models_where_unknown_chars_vanish() {
        let m = json!({"type": "BPE", "vocab": {"▁": 0}, "merges": [], "byte_fallback": false, "unk_token": null});
        assert!(SpmModel::from_json(&m, '▁').unwrap_err().contains("vanish"));
    }

    #[test]
    fn a_merge_across_a_cut_is_detected() {
        let mut vocab = serde_json::Map::new();
        for t in ["▁", "a", "a▁", "<unk>"] {
            vocab.insert(t.into(), json!(vocab.len()));
        }
        let m = json!({"type": "BPE", "vocab": vocab, "merges": ["a ▁"], "unk_token": "<unk>"});
        assert!(!SpmModel::from_json(&m, '▁').unwrap().meta_boundaries_hold());
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        let base = json!({"type": "BPE", "vocab": {"a": 0}, "merges": []});
        assert!(SpmModel::from_json(&base, '▁').unwrap_err().contains("metaspace token"));
        let m = json!({"type": "BPE", "vocab": {"▁": 0}, "merges": [], "unk_token": "<unk>"});
        assert!(SpmModel::from_json(&m, '▁').unwrap_err().contains("unk_token"));
        let m = json!({"type": "BPE", "vocab": {"▁": 0}, "merges": [], "ignore_merges": true});
        assert!(SpmModel::from_json(&m, '▁').unwrap_err().contains("ignore_merges"));
    }
}
