//! Fuzzing the `tokenizer.json` loader (`pyft_core::data::tokenize::Tokenizer`) and what it
//! then does with text. See `fuzz_support` for the harness.
//!
//! Inputs are the tokenizers of `tests/data/tokenizers/` (BPE byte-level, SentencePiece-style BPE
//! with byte fallback, WordPiece) with fields set to hostile values: vocabulary ids that are
//! negative, huge or shared, merges of unknown tokens, added tokens beyond the vocabulary, a
//! model type that does not match its fields, regexes that do not compile or backtrack, a
//! post-processor naming tokens that do not exist; plus random values anywhere and byte-level
//! damage. Each loaded tokenizer encodes and decodes a few texts.
//!
//! Contract: loading, encoding and decoding return `Ok` or a tokenizer error; every encoding has
//! one offset per id, each inside the text.

mod fuzz_support;

use std::path::Path;
use std::sync::OnceLock;

use fuzz_support::{mutate_bytes, Campaign, Outcome, Rng};
use pyft_core::data::tokenize::Tokenizer;
use pyft_core::error::Error;
use serde_json::{json, Value};

fn seeds() -> &'static [Value] {
    static S: OnceLock<Vec<Value>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tokenizers");
        ["gpt2.json", "spm_llama.json", "wordpiece.json", "qwen2.json"].iter().map(|f| {
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{f}")).expect("tokenizer")).expect("json")
        }).collect()
    })
}

fn hostile_value(rng: &mut Rng) -> Value {
    rng.pick(&[Value::Null, json!(-1), json!(u32::MAX), json!(1u64 << 40), json!(""), json!("<unk>"), json!([]),
               json!({}), json!(true), json!(1.5), json!("(a+)+$"), json!("x".repeat(10_000))])
        .clone()
}

/// A path to a random node of `v` (object keys and array indices), at most `depth` deep.
fn random_node<'a>(rng: &mut Rng, v: &'a mut Value, depth: usize) -> &'a mut Value {
    if depth == 0 || rng.chance(0.25) {
        return v;
    }
    let has_children = match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    };
    if !has_children {
        return v;
    }
    match v {
        Value::Object(m) => {
            let i = rng.below(m.len());
            let child = m.values_mut().nth(i).expect("index in range");
            random_node(rng, child, depth - 1)
        }
        Value::Array(a) => {
            let i = rng.below(a.len());
            random_node(rng, &mut a[i], depth - 1)
        }
        _ => unreachable!("checked above"),
    }
}

/// Set `t[key]` if `t` is an object (earlier changes may have replaced it).
fn set(t: &mut Value, key: &str, v: Value) {
    if let Some(m) = t.as_object_mut() {
        m.insert(key.to_owned(), v);
    }
}

/// One targeted change to a `tokenizer.json`.
fn mutate(rng: &mut Rng, t: &mut Value) {
    if !t.is_object() || !t["model"].is_object() {
        let v = hostile_value(rng);
        *random_node(rng, t, 5) = v;
        return;
    }
    match rng.below(12) {
        0 => {
            // A vocabulary id: negative, huge, or another token's.
            if let Some(vocab) = t["model"]["vocab"].as_object_mut().filter(|v| !v.is_empty()) {
                let i = rng.below(vocab.len());
                let v = vocab.values_mut().nth(i).expect("index in range");
                let ids = [json!(-1), json!(u32::MAX), json!(1u64 << 33), json!(0), json!(3), json!("7"), Value::Null];
                *v = rng.pick(&ids).clone();
            }
        }
        1 => {
            if let Some(merges) = t["model"]["merges"].as_array_mut() {
                let merge = [json!("zzz qqq"), json!("a"), json!("a b c"), json!(["a"]), json!(7), json!(["Ġ", "zzz"])];
                merges.push(rng.pick(&merge).clone());
            }
        }
        2 => {
            if let Some(added) = t["added_tokens"].as_array_mut() {
                added.push(json!({"id": rng.pick(&[json!(u32::MAX), json!(0), json!(1u64 << 40), json!(-3)]),
                                  "content": rng.pick(&["", "<|x|>", "a", " ", "\u{FDD0}"]), "single_word": false,
                                  "lstrip": rng.chance(0.5), "rstrip": false, "normalized": rng.chance(0.5),
                                  "special": rng.chance(0.5)}));
            }
        }
        3 => set(&mut t["model"], "type", json!(rng.pick(&["BPE", "WordPiece", "WordLevel", "Unigram", "X", ""]))),
        4 => {
            let key = *rng.pick(&["unk_token", "byte_fallback", "continuing_subword_prefix", "max_input_chars_per_word",
                                  "dropout", "fuse_unk", "ignore_merges", "end_of_word_suffix"]);
            let v = hostile_value(rng);
            set(&mut t["model"], key, v);
        }
        5 => {
            set(t, "pre_tokenizer", json!({"type": "Split", "pattern": {"Regex": rng.pick(&["(a+)+$", "(", "a{1000000}",
                "(?i)\\p{L}+", "", "(?<=a)b", "\\X*"])}, "behavior": rng.pick(&["Isolated", "Removed", "X"]),
                "invert": false}));
        }
        6 => {
            set(t, "normalizer", json!({"type": rng.pick(&["Replace", "Prepend", "Sequence", "NFKC", "Strip", "X"]),
                                     "pattern": {"String": " "}, "content": "▁".repeat(rng.range(0, 3)),
                                     "prepend": "x".repeat(rng.range(0, 3)), "normalizers": [], "strip_left": true,
                                     "strip_right": true}));
        }
        7 => {
            set(t, "post_processor", json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<missing>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<missing>": {"id": "<missing>", "ids": [u32::MAX], "tokens": ["<missing>"]}}}));
        }
        8 => {
            let kind = rng.pick(&["ByteLevel", "WordPiece", "Metaspace", "ByteFallback", "Sequence", "X"]);
            set(t, "decoder", json!({"type": kind,
                                  "decoders": [], "prefix": "##", "replacement": "▁", "prepend_scheme": "always"}));
        }
        9 => {
            // Remove the tokens the merges and byte fallback refer to.
            if let Some(vocab) = t["model"]["vocab"].as_object_mut() {
                let keys: Vec<String> = vocab.keys().take(rng.range(1, 300)).cloned().collect();
                for k in keys {
                    vocab.shift_remove(&k);
                }
            }
        }
        _ => {
            let v = hostile_value(rng);
            *random_node(rng, t, 5) = v;
        }
    }
}

fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut t = rng.pick(seeds()).clone();
    for _ in 0..rng.range(1, 3) {
        mutate(rng, &mut t);
    }
    let mut bytes = serde_json::to_vec(&t).expect("serializable");
    if rng.chance(0.1) {
        mutate_bytes(rng, &mut bytes, 1);
    }
    bytes
}

const TEXTS: &[&str] = &["", "hello world", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!", "é\u{1F600}漢字 \u{0} \t\n",
                         "<|endoftext|><s></s>[CLS]", "\u{FFFD}\u{10FFFF}", " a  b   c", "<unk>"];

/// Loading, encoding and decoding. The tokenizers crate panics on some files (a regex backtracking
/// past Oniguruma's retry limit, an empty `Prepend` normalizer, a `continuing_subword_prefix`
/// longer than a merge's token: `split-backtracking-regex.json`, `prepend-empty.json`,
/// `subword-prefix-overflow.json`); `Tokenizer` turns those into tokenizer errors, so a panic here
/// is a failure like any other.
fn check(path: &Path, bytes: &[u8]) -> Result<Outcome, String> {
    let tokenizer = match Tokenizer::from_file(path) {
        Ok(t) => t,
        Err(Error::Tokenizer(message)) => return Ok(Outcome::Refused(message)),
        Err(Error::Io { .. }) if std::str::from_utf8(bytes).is_err() => return Ok(Outcome::Refused("not UTF-8".into())),
        Err(e) => return Err(format!("load failed with a non-tokenizer error: {e}")),
    };
    let mut outcome = Outcome::Accepted;
    let long = "word ".repeat(2000);
    for text in TEXTS.iter().copied().chain([long.as_str()]) {
        for special in [false, true] {
            match tokenizer.encode(text, special) {
                Ok(enc) => {
                    if enc.ids.len() != enc.offsets.len() {
                        return Err(format!("{} ids but {} offsets for {text:?}", enc.ids.len(), enc.offsets.len()));
                    }
                    if let Some(&(a, b)) = enc.offsets.iter().find(|&&(a, b)| a > b || b as usize > text.len()) {
                        return Err(format!("offset ({a}, {b}) outside the {}-byte text {text:?}", text.len()));
                    }
                    match tokenizer.decode(&enc.ids, special) {
                        Ok(_) | Err(Error::Tokenizer(_)) => {}
                        Err(e) => return Err(format!("decode failed with a non-tokenizer error: {e}")),
                    }
                }
                Err(Error::Tokenizer(message)) => outcome = Outcome::Refused(message),
                Err(e) => return Err(format!("encode failed with a non-tokenizer error: {e}")),
            }
        }
    }
    let _ = tokenizer.decode(&[0, 1, u32::MAX, 1 << 20], false);
    let _ = (tokenizer.id_to_token(u32::MAX), tokenizer.token_to_id(""), tokenizer.vocab_size());
    Ok(outcome)
}

#[test]
fn fuzz_tokenizer() {
    Campaign::new("tokenizer", "json", 120).fuzz(check, generate);
}
