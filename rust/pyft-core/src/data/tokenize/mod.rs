//! Tokenization with HF `tokenizers`' exact ids and offsets, faster for BPE.
//!
//! A [`Tokenizer`] loads a `tokenizer.json` twice: into the `tokenizers` crate (always, for decoding
//! and as the fallback) and, when the file is a BPE that the fast path reproduces exactly, into a
//! hand-optimized encoder. Which one encodes is decided at load time ([`Tokenizer::backend`],
//! [`Tokenizer::fallback_reason`]); the per-text exceptions are input that an NFC normalizer would
//! change and, for a byte-level vocabulary missing some byte tokens (StarCoder, Falcon), input holding
//! such a byte: HF encodes those.
//!
//! Fast path (`Backend::FastBpe`), for model `BPE` without dropout and with no subword prefix or suffix
//! (`null` or `""`), no truncation or padding, added tokens without `single_word` / `lstrip` /
//! `rstrip`, and post-processor none, `TemplateProcessing`, `ByteLevel`, `BertProcessing`,
//! `RobertaProcessing` or a `Sequence` of them:
//! - byte-level BPE (GPT-2, Llama 3, Qwen2 / Qwen3.5, DeepSeek, StarCoder, Falcon, ...): normalizer none
//!   or NFC; pre-tokenizer one `ByteLevel` (any `add_prefix_space` / `use_regex`) with isolating
//!   `Split`s, `Digits` and `Punctuation` before it and `Split`s / `Digits` after it (the GPT-2,
//!   Llama-3 / cl100k, Qwen2 and Qwen3.5 regexes are hand-scanned, other regexes run on Oniguruma as in
//!   HF); `ignore_merges` supported -- `byte_level.rs`, `bpe.rs`;
//! - SentencePiece-style BPE (Llama 2, Mistral v0.1, Phi-3, Gemma, ...): `byte_fallback` / `fuse_unk` /
//!   `unk_token` (but not unknown chars vanishing: no unknown token and an incomplete byte fallback);
//!   either the `Metaspace` pre-tokenizer (any `prepend_scheme`, `split`) with normalizer none or NFC,
//!   or the normalizer `Replace(" " -> "▁")` with an optional `Prepend("▁")` and no pre-tokenizer
//!   (then no `normalized = true` added tokens); no `ignore_merges` -- `metaspace.rs`, `spm.rs`.
//!
//! Everything else (`Backend::Hf`): Unigram, WordPiece, other normalizers or pre-tokenizers, ...

mod added;
mod bpe;
mod byte_level;
mod cache;
mod fast;
mod metaspace;
mod post;
mod pretok;
mod spm;
mod unicode;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::Value;

use crate::error::{Error, Result};
use fast::FastEncoder;

/// Which implementation encodes with a [`Tokenizer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// pyft's byte-level BPE encoder.
    FastBpe,
    /// The `tokenizers` crate.
    Hf,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::FastBpe => "fast-bpe",
            Backend::Hf => "hf",
        })
    }
}

/// The tokens of one text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids, `len = n_tokens`.
    pub ids: Vec<u32>,
    /// Per token, the byte range `[start, end)` of the text it came from, `len = n_tokens`. A
    /// byte-level token that covers part of a multi-byte character gets the whole character's range (as
    /// in HF); tokens added by the post-processor get `(0, 0)`.
    pub offsets: Vec<(u32, u32)>,
}

/// A `tokenizer.json` ready to encode. `Send + Sync`: share one (e.g. behind an `Arc` or a reference)
/// across rayon threads; the fast path's word caches are per thread.
pub struct Tokenizer {
    /// Where the tokenizer came from, for messages: a path, or `tokenizer json`.
    name: String,
    hf: tokenizers::Tokenizer,
    fast: Option<FastEncoder>,
    /// Why `fast` is `None`.
    fallback_reason: Option<String>,
    /// Token string of each id (a map: ids can be sparse).
    tokens: FxHashMap<u32, String>,
    /// Ids of the added tokens with `special = true`.
    special: FxHashSet<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("name", &self.name)
            .field("backend", &self.backend())
            .field("fallback_reason", &self.fallback_reason)
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Load a `tokenizer.json` file.
    ///
    /// Errors: [`Error::Io`] if the file cannot be read, [`Error::Tokenizer`] (naming the file) if the
    /// `tokenizers` crate rejects it.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let json = crate::io::file::read_to_string(path)?;
        Self::load(&json, path.display().to_string())
    }

    /// Load a tokenizer from the text of a `tokenizer.json`.
    ///
    /// Errors: [`Error::Tokenizer`] if the `tokenizers` crate rejects it.
    pub fn from_json(json: &str) -> Result<Tokenizer> {
        Self::load(json, "tokenizer json".to_owned())
    }

    /// Loads, with a panic in the `tokenizers` crate reported as a malformed file.
    fn load(json: &str, name: String) -> Result<Tokenizer> {
        let root: Value = serde_json::from_str(json).map_err(|e| Error::Tokenizer(format!("{name}: {e}")))?;
        check_subword_prefix(&root).map_err(|e| Error::Tokenizer(format!("{name}: {e}")))?;
        let malformed = |panic: &str| {
            Error::Tokenizer(format!("{name}: malformed tokenizer.json (the tokenizers library failed: {panic})"))
        };
        crate::guard::catch(malformed, || Self::build(json, &root, name.clone()))
    }

    fn build(json: &str, root: &Value, name: String) -> Result<Tokenizer> {
        let hf = tokenizers::Tokenizer::from_str(json).map_err(|e| Error::Tokenizer(format!("{name}: {e}")))?;

        let mut added: Vec<(u32, tokenizers::AddedToken)> = hf.get_added_tokens_decoder().into_iter().collect();
        added.sort_by_key(|(id, _)| *id);
        let ids: FxHashSet<u32> = hf.get_vocab(true).into_values().chain(added.iter().map(|(id, _)| *id)).collect();
        let tokens: FxHashMap<u32, String> = ids.into_iter().filter_map(|id| Some((id, hf.id_to_token(id)?))).collect();
        let special = added.iter().filter(|(_, token)| token.special).map(|(id, _)| *id).collect();

        let (fast, fallback_reason) = match FastEncoder::from_json(root, &added, &tokens) {
            Ok(fast) => (Some(fast), None),
            Err(reason) => (None, Some(reason)),
        };
        Ok(Tokenizer { name, hf, fast, fallback_reason, tokens, special })
    }

    /// Encode `text`. `add_special_tokens` runs the post-processor's templates (BOS/EOS, ...) as HF does.
    ///
    /// Errors: [`Error::Tokenizer`] if the text is 4 GiB or more (offsets are `u32`) or the
    /// `tokenizers` crate fails (fallback path only) or panics (e.g. a `tokenizer.json` regex that
    /// backtracks past Oniguruma's retry limit on this text).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoding> {
        if u32::try_from(text.len()).is_err() {
            return Err(Error::Tokenizer(format!(
                "{}: text of {} bytes is over the 4 GiB limit",
                self.name,
                text.len()
            )));
        }
        crate::guard::catch(|panic| self.failed("encode", panic), || self.encode_unguarded(text, add_special_tokens))
    }

    fn encode_unguarded(&self, text: &str, add_special_tokens: bool) -> Result<Encoding> {
        if let Some(encoding) = self.fast.as_ref().and_then(|f| f.encode(text, add_special_tokens)) {
            return Ok(encoding);
        }
        let enc = self
            .hf
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("{}: encode: {e}", self.name)))?;
        // A malformed tokenizer.json (e.g. an `end_of_word_suffix` the normalizer's alignments do not
        // cover) makes the library report offsets beyond the text; the masks built from them would be wrong.
        if let Some(&(a, b)) = enc.get_offsets().iter().find(|&&(a, b)| a > b || b > text.len()) {
            return Err(Error::Tokenizer(format!(
                "{}: encode: the tokenizers library reported the span {a}..{b} for a {}-byte text; this \
                 tokenizer.json is inconsistent",
                self.name,
                text.len()
            )));
        }
        Ok(Encoding {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().iter().map(|&(a, b)| (a as u32, b as u32)).collect(),
        })
    }

    /// The error for a panic in the `tokenizers` crate (or the regex engine under it) during `what`.
    fn failed(&self, what: &str, panic: &str) -> Error {
        Error::Tokenizer(format!("{}: {what}: the tokenizers library failed on this tokenizer: {panic}", self.name))
    }

    /// The id of `token` (added tokens first, then the model's vocabulary).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.hf.token_to_id(token)
    }

    /// The token string of `id`, as HF's `id_to_token` gives it.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(&id).map(String::as_str)
    }

    /// Vocabulary size including added tokens (HF `get_vocab_size(true)`).
    pub fn vocab_size(&self) -> usize {
        self.hf.get_vocab_size(true)
    }

    /// Whether `id` is an added token with `special = true`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// Which implementation encodes.
    pub fn backend(&self) -> Backend {
        if self.fast.is_some() {
            Backend::FastBpe
        } else {
            Backend::Hf
        }
    }

    /// Why the fast path is off (`None` when [`Tokenizer::backend`] is [`Backend::FastBpe`]), e.g.
    /// `model type "WordPiece"` or `added token "<mask>" with lstrip`.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Decode `ids` to text with the `tokenizers` crate's decoder.
    ///
    /// Errors: [`Error::Tokenizer`] if the decoder fails.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        crate::guard::catch(
            |panic| self.failed("decode", panic),
            || {
                self.hf
                    .decode(ids, skip_special_tokens)
                    .map_err(|e| Error::Tokenizer(format!("{}: decode: {e}", self.name)))
            },
        )
    }
}

/// Refuses a BPE model whose `continuing_subword_prefix` does not end on a character boundary of
/// every merge's second token. The `tokenizers` crate cuts that many bytes off the token and
/// treats the rest as UTF-8 without checking (`BpeBuilder::build`, `from_utf8_unchecked`): a
/// shorter token, or a cut inside a multi-byte character, would be a panic or invalid UTF-8 in a
/// `str` (undefined behaviour) there.
fn check_subword_prefix(root: &Value) -> std::result::Result<(), String> {
    let model = &root["model"];
    if model["type"].as_str().is_some_and(|t| t != "BPE") {
        return Ok(());
    }
    let Some(prefix) = model["continuing_subword_prefix"].as_str().filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let Some(merges) = model["merges"].as_array() else { return Ok(()) };
    for (i, merge) in merges.iter().enumerate() {
        // A merge is `"a b"` or `["a", "b"]`; other shapes are left to the crate to refuse.
        let second = match merge {
            Value::String(s) if s.starts_with("#version") => continue, // skipped by the crate too
            Value::String(s) => {
                let parts: Vec<&str> = s.split(' ').collect();
                if parts.len() != 2 {
                    continue;
                }
                parts[1]
            }
            Value::Array(pair) if pair.len() == 2 => match pair[1].as_str() {
                Some(s) => s,
                None => continue,
            },
            _ => continue,
        };
        if !second.is_char_boundary(prefix.len()) {
            return Err(format!(
                "model.merges[{i}]: cutting the {}-byte continuing_subword_prefix {prefix:?} off the second \
                 token {second:?} does not leave whole characters (the token is shorter, or a character \
                 straddles the cut)",
                prefix.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn tokenizer_is_send_and_sync() {
        assert_send_sync::<Tokenizer>();
    }

    #[test]
    fn backend_display() {
        assert_eq!(Backend::FastBpe.to_string(), "fast-bpe");
        assert_eq!(Backend::Hf.to_string(), "hf");
    }

    fn corpus(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/tokenizer").join(name)
    }

    #[test]
    fn a_subword_prefix_that_cuts_a_merge_token_is_refused() {
        // The prefix `<unk>` (5 bytes) is longer than the merge's second token `b`: the crate
        // underflowed (a panic in debug builds, a wrapped length in release ones).
        let path = corpus("subword-prefix-overflow.json");
        let err = Tokenizer::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("subword-prefix-overflow.json") && err.contains("model.merges[0]"), "{err}");
        // A cut inside a multi-byte character: invalid UTF-8 handed on as `str` by the crate.
        let json = r###"{"model": {"type": "BPE", "continuing_subword_prefix": "x", "vocab": {"a": 0, "éb": 1},
                      "merges": [["a", "éb"]]}}"###;
        let err = Tokenizer::from_json(json).unwrap_err().to_string();
        assert!(err.contains("model.merges[0]") && err.contains("\"éb\""), "{err}");
        // A prefix every merge's second token can lose is fine (`##b` -> `b`).
        let json = r###"{"model": {"type": "BPE", "continuing_subword_prefix": "##", "vocab": {"a": 0, "##b": 1, "ab": 2},
                      "merges": ["a ##b"]}}"###;
        Tokenizer::from_json(json).unwrap();
    }

    #[test]
    fn panics_in_the_tokenizers_crate_are_tokenizer_errors() {
        // A regex that backtracks past Oniguruma's retry limit panics inside `encode`.
        let path = corpus("split-backtracking-regex.json");
        let tokenizer = Tokenizer::from_file(&path).unwrap();
        let text = "a".repeat(40) + "!";
        let err = tokenizer.encode(&text, false).unwrap_err();
        assert!(matches!(&err, Error::Tokenizer(m) if m.contains("split-backtracking-regex.json: encode")), "{err}");
        // An empty `Prepend` normalizer panics in the crate.
        let path = corpus("prepend-empty.json");
        let err = Tokenizer::from_file(&path).and_then(|t| t.encode("hello world", false)).unwrap_err();
        assert!(matches!(&err, Error::Tokenizer(m) if m.contains("prepend-empty.json")), "{err}");
    }

    #[test]
    fn errors_name_the_culprit() {
        let err = Tokenizer::from_json("{").unwrap_err().to_string();
        assert!(err.starts_with("tokenizer: tokenizer json:"), "{err}");
        let err = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");
    }
}
