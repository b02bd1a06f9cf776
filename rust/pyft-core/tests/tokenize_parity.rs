//! `pyft_core::data::tokenize::Tokenizer` gives the `tokenizers` crate's ids exactly.
//!
//! Fixtures come from `tools/compat/make_tokenizer_fixtures.py` (small tokenizers trained with the HF
//! `tokenizers` package, plus the package's own ids for the edge cases). For the fast path the offsets must also equal HF's, and be consistent on
//! their own (monotone, inside the text, covering it).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::LazyLock;

use proptest::prelude::*;
use pyft_core::data::tokenize::{Backend, Tokenizer};
use serde_json::{json, Value};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizers")
}

/// Fixture name -> the backend it must get.
const FIXTURES: [(&str, Backend); 7] = [
    ("gpt2", Backend::FastBpe),
    ("llama3", Backend::FastBpe),
    ("qwen2", Backend::FastBpe),
    ("o200k", Backend::FastBpe),
    ("spm_bpe", Backend::FastBpe),
    ("spm_llama", Backend::FastBpe),
    ("wordpiece", Backend::Hf),
];

/// Our tokenizer and HF's, loaded from the same JSON.
struct Pair {
    name: String,
    ours: Tokenizer,
    hf: tokenizers::Tokenizer,
    /// Whether the post-processor trims offsets (then trimmed spaces are not covered).
    trims: bool,
    /// Whether the normalizer includes NFC (then text that NFC changes is encoded by HF).
    nfc: bool,
    /// Chars whose byte-level token is missing (text with one is encoded by HF).
    missing: Vec<char>,
}

impl Pair {
    fn from_json(name: &str, json: &str) -> Pair {
        let value: Value = serde_json::from_str(json).unwrap();
        let post = value["post_processor"].to_string();
        Pair {
            name: name.to_owned(),
            ours: Tokenizer::from_json(json).unwrap(),
            hf: tokenizers::Tokenizer::from_str(json).unwrap(),
            trims: post.contains("\"trim_offsets\":true"),
            nfc: value["normalizer"].to_string().contains("\"NFC\""),
            missing: vec![],
        }
    }

    fn fixture(name: &str) -> Pair {
        Pair::from_json(name, &std::fs::read_to_string(data_dir().join(format!("{name}.json"))).unwrap())
    }

    /// Assert parity on `text`, with and without special tokens.
    fn check(&self, text: &str) {
        for add_special in [false, true] {
            let ours = self.ours.encode(text, add_special).unwrap();
            let hf = self.hf.encode(text, add_special).unwrap();
            assert_eq!(ours.ids, hf.get_ids(), "{}: ids differ on {text:?} (add_special={add_special})", self.name);
            assert_eq!(ours.offsets.len(), ours.ids.len());
            // (Text that NFC changes is HF's even for a fast tokenizer: its offsets need not cover the input.)
            let per_text_fallback =
                self.nfc && !unicode_normalization::is_nfc(text) || text.contains(&self.missing[..]);
            if self.ours.backend() == Backend::FastBpe && !per_text_fallback {
                let hf_offsets: Vec<(u32, u32)> = hf.get_offsets().iter().map(|&(a, b)| (a as u32, b as u32)).collect();
                assert_eq!(ours.offsets, hf_offsets, "{}: offsets differ on {text:?}", self.name);
                self.check_consistent(text, &ours.ids, &ours.offsets);
            }
        }
    }

    /// Offsets are inside the text and (without trimming) monotone, on char boundaries and covering it.
    fn check_consistent(&self, text: &str, ids: &[u32], offsets: &[(u32, u32)]) {
        let mut covered = vec![false; text.len()];
        let mut last_start = 0;
        for (&id, &(a, b)) in ids.iter().zip(offsets) {
            let (a, b) = (a as usize, b as usize);
            assert!(a <= b && b <= text.len(), "{}: offsets ({a}, {b}) outside {text:?}", self.name);
            // HF's trimming shifts by whitespace *chars* counted as bytes, which can split a character.
            if !self.trims {
                assert!(text.is_char_boundary(a) && text.is_char_boundary(b), "{}: {text:?} {offsets:?}", self.name);
            }
            if (a, b) == (0, 0) && self.ours.is_special(id) {
                continue; // added by the post-processor
            }
            // HF's trimming can move a start past the next token's (a lone prefix space becomes empty).
            assert!(self.trims || a >= last_start, "{}: offsets not monotone on {text:?}: {offsets:?}", self.name);
            last_start = a;
            covered[a..b].iter_mut().for_each(|c| *c = true);
        }
        if !self.trims {
            assert!(covered.iter().all(|&c| c), "{}: offsets do not cover {text:?}: {offsets:?}", self.name);
        }
    }
}

static PAIRS: LazyLock<Vec<Pair>> = LazyLock::new(|| FIXTURES.iter().map(|(name, _)| Pair::fixture(name)).collect());

fn edge_cases() -> Vec<String> {
    let text = std::fs::read_to_string(data_dir().join("edge_cases.json")).unwrap();
    let mut cases: Vec<String> = serde_json::from_str(&text).unwrap();
    cases.extend(
        [
            "Hello world",
            "  many spaces before words   and   digits   123   and   punctuation   !!!  ",
            "It'S we'LL THEY'RE i'Ve y'all 'S'S's",
            "<|im_start|><|im_end|><|endoftext|><|begin_of_text|><|eot_id|>",
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
            "a<|im_start|>b<|im_end|>c",
            "<|im_start|> <|im_end|>  <|im_start|>\n",
            "<think><think>x</think>",
            "<tool_call><tool_call>",
            "\u{feff}\u{200d}\u{2060}",
            "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ",
            "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
            "é\u{301}",
            "\u{e9}\u{301}\u{302}x",
            "Ω Ω Å Å",
            "한\u{11a8}",
            "м and мир 999 ¼ x²y 12½3456 ½6789 ٣٤٥",
            "price: 12,345.67 (555) 123-4567 ext. 89...!? «quoted» ¿qué?",
            "Hello <s>world a<s>b  </s>  x a b ab a  b during <s><s> <s>",
        ]
        .map(String::from),
    );
    // Every Unicode general category, a few code points each.
    let samples = [
        'A',
        'z',
        'ǅ',
        'ʰ',
        'ª',
        '\u{300}',
        '\u{903}',
        '\u{20dd}',
        '5',
        'Ⅻ',
        '¼',
        '_',
        '-',
        '(',
        ')',
        '«',
        '»',
        '!',
        '+',
        '$',
        '^',
        '©',
        ' ',
        '\u{2028}',
        '\u{2029}',
        '\u{0}',
        '\u{ad}',
        '\u{e000}',
        '\u{378}',
        '\u{1d7d8}',
        '\u{10400}',
    ];
    for window in samples.windows(3) {
        cases.push(window.iter().collect());
        cases.push(window.iter().flat_map(|c| [*c, ' ']).collect());
    }
    cases.push(samples.iter().collect());
    cases
}

#[test]
fn fixtures_get_the_expected_backend() {
    for (pair, (name, backend)) in PAIRS.iter().zip(FIXTURES) {
        assert_eq!(pair.ours.backend(), backend, "{name}: {:?}", pair.ours.fallback_reason());
        assert_eq!(pair.ours.fallback_reason().is_none(), backend == Backend::FastBpe);
    }
}

#[test]
fn parity_on_edge_cases() {
    let cases = edge_cases();
    for pair in PAIRS.iter() {
        for text in &cases {
            pair.check(text);
        }
    }
}

/// Ids recorded from the `tokenizers` Python package by the fixture script.
#[test]
fn parity_with_the_python_package() {
    let text = std::fs::read_to_string(data_dir().join("expected_ids.json")).unwrap();
    let expected: Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(data_dir().join("edge_cases.json")).unwrap()).unwrap();
    for pair in PAIRS.iter() {
        for (key, add_special) in [("with_special_tokens", true), ("without_special_tokens", false)] {
            let lists = expected[&pair.name][key].as_array().unwrap();
            assert_eq!(lists.len(), cases.len());
            for (case, ids) in cases.iter().zip(lists) {
                let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
                assert_eq!(pair.ours.encode(case, add_special).unwrap().ids, ids, "{}: {case:?}", pair.name);
            }
        }
    }
}

#[test]
fn parity_on_chat_sample() {
    let sample = std::fs::read_to_string(data_dir().join("chat_sample.txt")).unwrap();
    for pair in PAIRS.iter() {
        for conversation in sample.split("\n\n\n") {
            pair.check(conversation);
        }
        for line in sample.lines().take(400) {
            pair.check(line);
        }
    }
}

#[test]
fn parity_on_long_inputs() {
    let sample = std::fs::read_to_string(data_dir().join("chat_sample.txt")).unwrap();
    let cut = sample.char_indices().map(|(i, _)| i).find(|&i| i >= 40_000).unwrap();
    let long_words = ["x".repeat(5000), "ab".repeat(3000), "😀".repeat(700), format!("{}y", " ".repeat(3000))];
    for pair in PAIRS.iter() {
        pair.check(&sample[..cut]);
        for text in &long_words {
            pair.check(text);
        }
    }
}

#[test]
fn accessors_match_hf() {
    for pair in PAIRS.iter() {
        let hf = &pair.hf;
        assert_eq!(pair.ours.vocab_size(), hf.get_vocab_size(true), "{}", pair.name);
        for id in 0..pair.ours.vocab_size() as u32 + 2 {
            assert_eq!(pair.ours.id_to_token(id), hf.id_to_token(id).as_deref(), "{} id {id}", pair.name);
        }
        for (token, id) in hf.get_vocab(true) {
            assert_eq!(pair.ours.token_to_id(&token), Some(id), "{}", pair.name);
        }
        for (id, token) in hf.get_added_tokens_decoder() {
            assert_eq!(pair.ours.is_special(id), token.special, "{} {}", pair.name, token.content);
        }
        let text = "Hello <|im_start|>wörld 😀 123";
        let ids = pair.ours.encode(text, true).unwrap().ids;
        for skip in [false, true] {
            assert_eq!(pair.ours.decode(&ids, skip).unwrap(), hf.decode(&ids, skip).unwrap(), "{}", pair.name);
        }
    }
}

#[test]
fn nfc_normalizer_falls_back_per_text() {
    let qwen = PAIRS.iter().find(|p| p.name == "qwen2").unwrap();
    // Decomposed input: NFC would change it, so HF encodes it; ids must still match.
    for text in ["cafe\u{301}", "<|im_start|>e\u{301}<|im_end|>", "\u{212b}", "a\u{327}\u{301}"] {
        qwen.check(text);
    }
    assert_eq!(qwen.ours.backend(), Backend::FastBpe);
}

#[test]
fn parallel_encoding_is_deterministic() {
    let pair = PAIRS.iter().find(|p| p.name == "llama3").unwrap();
    let sample = std::fs::read_to_string(data_dir().join("chat_sample.txt")).unwrap();
    let convs: Vec<&str> = sample.split("\n\n\n").collect();
    let serial: Vec<Vec<u32>> = convs.iter().map(|c| pair.ours.encode(c, true).unwrap().ids).collect();
    let parallel: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = convs
            .chunks(convs.len().div_ceil(4))
            .map(|chunk| s.spawn(|| chunk.iter().map(|c| pair.ours.encode(c, true).unwrap().ids).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(serial, parallel);
}

/// A fixture's JSON, edited.
fn variant(name: &str, edit: impl FnOnce(&mut Value)) -> Pair {
    let mut value: Value =
        serde_json::from_str(&std::fs::read_to_string(data_dir().join(format!("{name}.json"))).unwrap()).unwrap();
    edit(&mut value);
    Pair::from_json(name, &value.to_string())
}

/// Variants that stay on the fast path, each checked for parity on the edge cases.
#[test]
fn fast_variants_keep_parity() {
    let gpt2_split = json!({"type": "Split", "behavior": "Isolated", "invert": false,
        "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"}});
    let variants: Vec<(&str, Pair)> = vec![
        (
            "gpt2 without prefix space or trimming",
            variant("gpt2", |v| {
                v["pre_tokenizer"]["add_prefix_space"] = json!(false);
                v["post_processor"]["trim_offsets"] = json!(false);
            }),
        ),
        (
            "gpt2 with roberta processing",
            variant("gpt2", |v| {
                v["post_processor"] = json!({"type": "RobertaProcessing", "sep": ["<|endoftext|>", 0],
                "cls": ["<|endoftext|>", 0], "trim_offsets": true, "add_prefix_space": true});
            }),
        ),
        (
            "gpt2 with bert processing and a normalized added token",
            variant("gpt2", |v| {
                v["post_processor"] =
                    json!({"type": "BertProcessing", "sep": ["<|endoftext|>", 0], "cls": ["<|endoftext|>", 0]});
                v["added_tokens"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"id": 2500, "content": "ing", "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": true, "special": false}));
            }),
        ),
        (
            "gpt2 starcoder-style with individual digits",
            variant("gpt2", |v| {
                let byte_level = v["pre_tokenizer"].clone();
                v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level]});
            }),
        ),
        (
            "gpt2 with falcon's pre-tokenizer (punctuation, then digits and a split on the byte-level string)",
            variant("gpt2", |v| {
                v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Punctuation", "behavior": "Contiguous"},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
                    {"type": "Digits", "individual_digits": false},
                    {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated",
                     "invert": false}]});
            }),
        ),
        (
            "gpt2 with isolated punctuation and a prefix space",
            variant("gpt2", |v| {
                let byte_level = v["pre_tokenizer"].clone();
                v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                {"type": "Punctuation", "behavior": "Isolated"}, byte_level]});
            }),
        ),
        (
            "gpt2 with contiguous digits",
            variant("gpt2", |v| {
                let byte_level = v["pre_tokenizer"].clone();
                v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": false}, byte_level]});
            }),
        ),
        (
            "qwen2 with the qwen3.5 regex",
            variant("qwen2", |v| {
                v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = json!(
                "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
            );
            }),
        ),
        ("llama3 without ignore_merges", variant("llama3", |v| v["model"]["ignore_merges"] = json!(false))),
        (
            "llama3 with a gpt2 split and a prefix space per piece",
            variant("llama3", |v| {
                v["pre_tokenizer"]["pretokenizers"][0] = gpt2_split.clone();
                v["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = json!(true);
            }),
        ),
        (
            "llama3 with two splits and the byte-level regex",
            variant("llama3", |v| {
                let split =
                    json!({"type": "Split", "behavior": "Isolated", "invert": false, "pattern": {"String": "e"}});
                v["pre_tokenizer"]["pretokenizers"].as_array_mut().unwrap().insert(0, split);
                v["pre_tokenizer"]["pretokenizers"][2]["use_regex"] = json!(true);
            }),
        ),
        (
            "qwen2 with legacy merges",
            variant("qwen2", |v| {
                let merges: Vec<Value> = v["model"]["merges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| json!(format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap())))
                    .collect();
                v["model"]["merges"] = json!(merges);
            }),
        ),
        (
            "qwen2 with a one-element normalizer sequence",
            variant("qwen2", |v| {
                v["normalizer"] = json!({"type": "Sequence", "normalizers": [{"type": "NFC"}]});
            }),
        ),
    ];
    let cases = edge_cases();
    for (what, pair) in variants.iter().chain(&spm_variants()) {
        assert_eq!(pair.ours.backend(), Backend::FastBpe, "{what}: {:?}", pair.ours.fallback_reason());
        for text in &cases {
            pair.check(text);
        }
    }
}

/// A byte-level vocabulary without some byte tokens (StarCoder and Falcon lack a few) stays fast; a text
/// holding such a byte goes to HF, which drops the byte (or emits the unknown token).
#[test]
fn missing_byte_tokens_fall_back_per_text() {
    let drop_char = |v: &mut Value, c: &str| {
        v["model"]["vocab"].as_object_mut().unwrap().remove(c);
        let merges: Vec<Value> = v["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| !m[0].as_str().unwrap().contains(c) && !m[1].as_str().unwrap().contains(c))
            .cloned()
            .collect();
        v["model"]["merges"] = json!(merges);
    };
    // "!" (0x21) and "\u{3}" (written as the byte-level char U+0103).
    let no_bang = Pair { missing: vec!['!', '\u{3}'], ..variant("gpt2", |v| {
        drop_char(v, "!");
        drop_char(v, "\u{103}");
    }) };
    let with_unk = Pair { missing: vec!['!'], ..variant("llama3", |v| {
        drop_char(v, "!");
        v["model"]["unk_token"] = json!("<|end_of_text|>");
    }) };
    for pair in [no_bang, with_unk] {
        assert_eq!(pair.ours.backend(), Backend::FastBpe, "{:?}", pair.ours.fallback_reason());
        for text in edge_cases().iter().map(String::as_str).chain(["Hi!", "a\u{3}b c", "!!! x", "ok"]) {
            pair.check(text);
        }
    }
}

/// Make `<s>`, `</s>` and `<|user|>` `normalized = true` and add `a b` and `ing` (as older Llama 2
/// conversions have their specials).
fn normalized_added_tokens(v: &mut Value) {
    for token in v["added_tokens"].as_array_mut().unwrap() {
        if ["<s>", "</s>", "<|user|>"].contains(&token["content"].as_str().unwrap()) {
            token["normalized"] = json!(true);
        }
    }
    for (id, content) in [(1900, "a b"), (1901, "ing")] {
        v["added_tokens"].as_array_mut().unwrap().push(json!({"id": id, "content": content, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": true, "special": false}));
    }
}

/// SentencePiece-style variants that stay on the fast path (every shape a real file has).
fn spm_variants() -> Vec<(&'static str, Pair)> {
    let metaspace = |scheme: &str, split: bool| {
        json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": scheme, "split": split})
    };
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let with_pre = |pre: Value| {
        move |v: &mut Value| {
            v["normalizer"] = Value::Null;
            v["pre_tokenizer"] = pre;
        }
    };
    vec![
        (
            "spm_llama, newer conversion: Metaspace first, no split",
            variant("spm_llama", with_pre(metaspace("first", false))),
        ),
        ("spm_llama with Metaspace always", variant("spm_llama", with_pre(metaspace("always", false)))),
        ("spm_llama with Metaspace never", variant("spm_llama", with_pre(metaspace("never", false)))),
        ("spm_llama with Metaspace always, split", variant("spm_llama", with_pre(metaspace("always", true)))),
        (
            "spm_llama with an old Metaspace (add_prefix_space)",
            variant(
                "spm_llama",
                with_pre(json!({"type": "Metaspace", "replacement": "\u{2581}", "add_prefix_space": true})),
            ),
        ),
        ("spm_llama gemma-style: Replace only", variant("spm_llama", |v| v["normalizer"] = replace.clone())),
        (
            "spm_llama with Replace before Prepend",
            variant("spm_llama", |v| {
                v["normalizer"] = json!({"type": "Sequence", "normalizers": [replace.clone(),
                    {"type": "Prepend", "prepend": "\u{2581}"}]});
            }),
        ),
        (
            "spm_llama with a merge across words (no cutting)",
            variant("spm_llama", |v| {
                let n = v["model"]["vocab"].as_object().unwrap().len() + 100;
                v["model"]["vocab"]["e\u{2581}"] = json!(n);
                v["model"]["merges"].as_array_mut().unwrap().insert(0, json!(["e", "\u{2581}"]));
            }),
        ),
        (
            "spm_llama without byte fallback (unknown chars fused)",
            variant("spm_llama", |v| v["model"]["byte_fallback"] = json!(false)),
        ),
        (
            "spm_llama without fuse_unk",
            variant("spm_llama", |v| {
                v["model"]["byte_fallback"] = json!(false);
                v["model"]["fuse_unk"] = json!(false);
            }),
        ),
        (
            "spm_llama with normalized added tokens (matched as \"\u{2581}<s>\" on the normalized text)",
            variant("spm_llama", normalized_added_tokens),
        ),
        (
            "spm_llama gemma-style with normalized added tokens",
            variant("spm_llama", |v| {
                normalized_added_tokens(v);
                v["normalizer"] = replace.clone();
            }),
        ),
        ("spm_bpe with NFC", variant("spm_bpe", |v| v["normalizer"] = json!({"type": "NFC"}))),
        (
            "spm_bpe with a normalized added token",
            variant("spm_bpe", |v| {
                v["added_tokens"].as_array_mut().unwrap().push(json!({"id": 1500, "content": "ing",
                    "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": false}));
            }),
        ),
        (
            "spm_bpe with empty prefix and suffix (as transformers 5 saves)",
            variant("spm_bpe", |v| {
                v["model"]["continuing_subword_prefix"] = json!("");
                v["model"]["end_of_word_suffix"] = json!("");
            }),
        ),
    ]
}

/// The `spm_llama` fixture cuts its pieces into words (no merge crosses a `▁` after another char): HF's
/// exact tokens on texts that stress the cuts.
#[test]
fn spm_cuts_keep_parity() {
    let pair = PAIRS.iter().find(|p| p.name == "spm_llama").unwrap();
    let texts = [
        "Hello world",
        " Hello",
        "  Hello  ",
        "\u{2581}Hello \u{2581}world\u{2581}",
        "a\u{2581}\u{2581} \u{2581}b",
        "    return x\n        return y",
        "x\n\n  \n",
        "😀 😀😀  😀",
        "<s> hi</s> x",
        "<|user|>\nHi there<|end|>\n<|assistant|>\n  Sure.<|end|>",
        "<tool> call <tool>",
        "\u{3000}全角 スペース",
        "é\u{301} e\u{301}",
    ];
    for text in texts {
        pair.check(text);
    }
    let long: String = (0..400).map(|i| format!("word{} ", i % 37)).collect();
    pair.check(&long);
    pair.check(&long.replace(' ', "  "));
}

/// An edit of a fixture's JSON.
type Edit = Box<dyn FnOnce(&mut Value)>;

/// Variants that must fall back to HF, with the reason naming the culprit; ids still match.
#[test]
fn unsupported_variants_fall_back() {
    let cases: Vec<(&str, &str, Edit)> = vec![
        ("llama3", "lstrip", Box::new(|v| v["added_tokens"][5]["lstrip"] = json!(true))),
        ("llama3", "single_word", Box::new(|v| v["added_tokens"][6]["single_word"] = json!(true))),
        (
            "llama3",
            "truncation",
            Box::new(|v| {
                v["truncation"] =
                    json!({"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0});
            }),
        ),
        (
            "llama3",
            "padding",
            Box::new(|v| {
                v["padding"] = json!({"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null,
                "pad_id": 0, "pad_type_id": 0, "pad_token": "<|begin_of_text|>"});
            }),
        ),
        ("qwen2", "NFKC", Box::new(|v| v["normalizer"] = json!({"type": "NFKC"}))),
        ("qwen2", "Removed", Box::new(|v| v["pre_tokenizer"]["pretokenizers"][0]["behavior"] = json!("Removed"))),
        ("qwen2", "invert", Box::new(|v| v["pre_tokenizer"]["pretokenizers"][0]["invert"] = json!(true))),
        ("gpt2", "end_of_word_suffix", Box::new(|v| v["model"]["end_of_word_suffix"] = json!("</w>"))),
        ("gpt2", "pre_tokenizer", Box::new(|v| v["pre_tokenizer"] = json!({"type": "Whitespace"}))),
        (
            "spm_llama",
            "NFKC",
            Box::new(|v| v["normalizer"]["normalizers"].as_array_mut().unwrap().insert(0, json!({"type": "NFKC"}))),
        ),
        (
            "spm_llama",
            "vanish",
            Box::new(|v| {
                v["model"]["byte_fallback"] = json!(false);
                v["model"]["unk_token"] = Value::Null;
            }),
        ),
        ("spm_bpe", "ignore_merges", Box::new(|v| v["model"]["ignore_merges"] = json!(true))),
        (
            "spm_bpe",
            "Metaspace and other steps",
            Box::new(|v| {
                let pre = v["pre_tokenizer"].clone();
                let digits = json!({"type": "Digits", "individual_digits": true});
                v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [pre, digits]});
            }),
        ),
        (
            "spm_bpe",
            "Replace",
            Box::new(|v| v["normalizer"] = json!({"type": "Replace", "pattern": {"String": "a"}, "content": "b"})),
        ),
        (
            "gpt2",
            "post_processor",
            Box::new(|v| {
                v["post_processor"] = json!({"type": "Sequence", "processors": [
                {"type": "BertProcessing", "sep": ["<|endoftext|>", 0], "cls": ["<|endoftext|>", 0]},
                {"type": "BertProcessing", "sep": ["<|endoftext|>", 0], "cls": ["<|endoftext|>", 0]}]});
            }),
        ),
    ];
    let texts = ["<|im_start|>user\nHi  there, it's 2024!<|im_end|>", "  x  ", "Ünïcödé 😀", ""];
    for (fixture, culprit, edit) in cases {
        let pair = variant(fixture, edit);
        assert_eq!(pair.ours.backend(), Backend::Hf, "{fixture} {culprit}");
        let reason = pair.ours.fallback_reason().unwrap();
        assert!(reason.contains(culprit), "{fixture}: reason {reason:?} does not name {culprit}");
        for text in texts {
            pair.check(text);
        }
    }
    let dropout = variant("gpt2", |v| v["model"]["dropout"] = json!(0.1));
    assert_eq!(dropout.ours.backend(), Backend::Hf);
    assert!(dropout.ours.fallback_reason().unwrap().contains("dropout"));
}

fn mixed_text() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        6 => prop::sample::select(vec![
            " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", "'s", "'S", "'ll", "'LL", "'re", "'Ve", "'d", "'m", "'t", "'",
            "the", "The", "THE", "model", " data", "tokenizer", "ing", "é", "ü", "ß", "ſ", "日本", "語", "한국", "😀", "👩‍💻",
            "مرحبا", "Ω", "\u{301}", "\u{a0}", "\u{3000}", "\u{85}", "\u{2028}", "1", "12", "123", "1234", "٣", "½",
            ".", ",", "!", "?", "...", "(", ")", "{", "}", "\"", "-", "_", "/", "\\", "#", "$", "%", "=", "==",
            "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<think>", "</tool_call>", "<|", "|>", "<",
            "▁", "▁▁", "<s>", "</s>", "<unk>", "<|user|>", "<tool>", "    ", "\t\t", "return",
            "\u{0}", "\u{7f}", "\u{feff}", "\u{200b}", "\u{10ffff}",
        ]).prop_map(String::from),
        2 => "[a-zA-Z]{1,12}",
        1 => "[0-9]{1,8}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(atom, 0..48).prop_map(|atoms| atoms.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn parity_on_random_text(text in mixed_text()) {
        for pair in PAIRS.iter() {
            pair.check(&text);
        }
    }
}
