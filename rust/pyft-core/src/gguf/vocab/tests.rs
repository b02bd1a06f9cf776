//! Whole-directory tests on hand-built tokenizers (the compat tests against llama.cpp's converter
//! are in `tests/test_gguf_vocab.py`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

use super::spm::tests::model_bytes;
use super::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!("pyft-vocab-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(&self, name: &str, data: impl AsRef<[u8]>) {
        std::fs::write(self.0.join(name), data).unwrap();
    }

    fn json(&self, name: &str, v: &Value) {
        self.write(name, serde_json::to_vec_pretty(v).unwrap());
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn strings(m: &VocabMetadata, key: &str) -> Vec<String> {
    match m.get(key) {
        Some(GgufValue::Array(GgufArray::String(v))) => v.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn ints(m: &VocabMetadata, key: &str) -> Vec<i32> {
    match m.get(key) {
        Some(GgufValue::Array(GgufArray::I32(v))) => v.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn keys(m: &VocabMetadata) -> Vec<&str> {
    m.kvs.iter().map(|(k, _)| k.as_str()).collect()
}

/// GPT-2's byte → printable-character map.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xa1..=0xac).chain(0xae..=0xff).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        out[*b as usize] = char::from_u32(c).unwrap();
    }
    out
}

/// A byte-level BPE tokenizer.json: specials at 0..3, the 256 byte tokens, then `extra` merged
/// tokens; `skip` leaves one id unused.
fn bpe_json(extra: &[(&str, &str)], skip: Option<u32>) -> Value {
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut vocab = serde_json::Map::new();
    let mut next = 0u32;
    let take = |next: &mut u32| {
        if Some(*next) == skip {
            *next += 1;
        }
        *next += 1;
        *next - 1
    };
    for s in specials {
        vocab.insert(s.into(), json!(take(&mut next)));
    }
    for c in byte_chars() {
        vocab.insert(c.to_string(), json!(take(&mut next)));
    }
    let mut merges = Vec::new();
    for (a, b) in extra {
        vocab.insert(format!("{a}{b}"), json!(take(&mut next)));
        merges.push(json!([a, b]));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": true}))
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}

fn chatml_dir(vocab_size: usize, skip: Option<u32>) -> TempDir {
    let d = TempDir::new();
    d.json("tokenizer.json", &bpe_json(&[("h", "e"), ("Ġ", "t"), ("l", "o"), ("he", "lo")], skip));
    d.json("tokenizer_config.json", &json!({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": null,
                                             "chat_template": "{{ messages }}"}));
    d.json("config.json", &json!({"vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": [2, 0]}));
    d
}

#[test]
fn bpe_directory_like_the_converter() {
    let d = chatml_dir(270, None);
    let m = tokenizer_metadata(&d.0, "qwen2", &VocabOptions::default()).unwrap();
    assert_eq!(
        keys(&m),
        [
            "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
            "tokenizer.chat_template",
        ]
    );
    assert_eq!(m.pre.as_deref(), Some("gpt-2"));
    assert!(m.warnings.iter().any(|w| w.contains("guessed `gpt-2`")), "{:?}", m.warnings);
    let tokens = strings(&m, "tokenizer.ggml.tokens");
    let types = ints(&m, "tokenizer.ggml.token_type");
    assert_eq!(tokens.len(), 270);
    assert_eq!(&tokens[..3], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
    assert_eq!(&types[..4], [TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_NORMAL]);
    assert_eq!(tokens[262], "helo");
    assert_eq!(&tokens[263..], (263..270).map(|i| format!("[PAD{i}]")).collect::<Vec<_>>());
    assert!(types[263..].iter().all(|t| *t == TOKEN_UNUSED));
    assert_eq!(strings(&m, "tokenizer.ggml.merges"), ["h e", "Ġ t", "l o", "he lo"]);
    // eos/pad from tokenizer_config, bos from config.json (an int); config's eos list is ignored.
    assert_eq!(m.get("tokenizer.ggml.eos_token_id"), Some(&GgufValue::U32(2)));
    assert_eq!(m.get("tokenizer.ggml.padding_token_id"), Some(&GgufValue::U32(0)));
    assert_eq!(m.get("tokenizer.ggml.bos_token_id"), Some(&GgufValue::U32(0)));
    assert_eq!(m.get("tokenizer.ggml.add_bos_token"), Some(&GgufValue::Bool(false)));
    assert_eq!(m.get("tokenizer.chat_template"), Some(&GgufValue::String("{{ messages }}".into())));
    assert_eq!(m.end_of_turn_ids, [0, 2]);
}

#[test]
fn bpe_padding_holes_and_collisions_stay_unique() {
    // Id 100 is unused inside the vocabulary; a real token spells "[PAD300]", the name id 300's
    // placeholder would get.
    let d = chatml_dir(302, Some(100));
    let mut tj = bpe_json(&[("h", "e")], Some(100));
    tj["model"]["vocab"]["[PAD300]"] = json!(301);
    d.json("tokenizer.json", &tj);
    let m = tokenizer_metadata(&d.0, "llama", &VocabOptions { pre_override: Some("qwen2".into()), base_dir: None }).unwrap();
    let tokens = strings(&m, "tokenizer.ggml.tokens");
    assert_eq!(tokens[100], "[PAD100]");
    assert_eq!(tokens[301], "[PAD300]");
    assert_eq!(tokens[300], "[PAD300]_");
    let unique: std::collections::HashSet<_> = tokens.iter().collect();
    assert_eq!(unique.len(), tokens.len());
    assert_eq!(m.pre.as_deref(), Some("qwen2"));
    assert!(m.warnings.iter().any(|w| w.contains("renamed")));
}

#[test]
fn bpe_pre_policy() {
    let d = chatml_dir(262, None);
    let err = tokenizer_metadata(&d.0, "qwen2", &VocabOptions { pre_override: Some("my-pre".into()), base_dir: None })
        .unwrap_err()
        .to_string();
    assert!(err.contains("my-pre") && err.contains("llama-bpe"), "{err}");
    // Unknown regex → omitted, loudly.
    let mut tj = bpe_json(&[], None);
    tj["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]});
    d.json("tokenizer.json", &tj);
    let m = tokenizer_metadata(&d.0, "qwen2", &VocabOptions::default()).unwrap();
    assert_eq!(m.pre, None);
    assert!(!keys(&m).contains(&"tokenizer.ggml.pre"));
    assert!(m.warnings.iter().any(|w| w.contains("NOT RECOGNIZED")));
    // A base model with an unknown tokenizer too: still omitted, both reasons reported.
    let base = chatml_dir(262, None);
    base.json("tokenizer.json", &tj);
    let opts = VocabOptions { pre_override: None, base_dir: Some(base.0.clone()) };
    let m = tokenizer_metadata(&d.0, "qwen2", &opts).unwrap();
    assert_eq!(m.pre, None);
    assert!(m.warnings.iter().any(|w| w.contains("base model")));
}

#[test]
fn sentencepiece_directory_like_the_converter() {
    let d = TempDir::new();
    d.write(
        "tokenizer.model",
        model_bytes(&[("<unk>", 0.0, spm::PIECE_UNKNOWN), ("<s>", 0.0, spm::PIECE_CONTROL), ("</s>", 0.0, spm::PIECE_CONTROL),
                      ("<0x0A>", 0.0, spm::PIECE_BYTE), ("▁the", -1.25, 1), ("<x>", 0.0, spm::PIECE_USER_DEFINED),
                      ("▁a", -2.5, 1)]),
    );
    d.json("config.json", &json!({"vocab_size": 10, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 12}));
    d.json("tokenizer_config.json", &json!({
        "add_prefix_space": false, "add_bos_token": true, "add_eos_token": false,
        "added_tokens_decoder": {"7": {"content": "<|im_end|>", "special": false}, "8": {"content": "▁tool", "special": false},
                                 "99": {"content": "<far>", "special": true}},
        "chat_template": "T"}));
    let m = tokenizer_metadata(&d.0, "llama", &VocabOptions::default()).unwrap();
    assert_eq!(
        keys(&m),
        [
            "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
            "tokenizer.chat_template",
        ]
    );
    assert_eq!(m.pre.as_deref(), Some("default"));
    assert_eq!(
        strings(&m, "tokenizer.ggml.tokens"),
        ["<unk>", "<s>", "</s>", "<0x0A>", "▁the", "<x>", "▁a", "<|im_end|>", " tool", "[PAD9]"]
    );
    assert_eq!(ints(&m, "tokenizer.ggml.token_type"), [2, 3, 3, 6, 1, 1, 1, 3, 4, 5]);
    assert_eq!(
        m.get("tokenizer.ggml.scores"),
        Some(&GgufValue::Array(GgufArray::F32(vec![0.0, 0.0, 0.0, 0.0, -1.25, 0.0, -2.5, -1000.0, -1000.0, -10000.0])))
    );
    // pad id 12 is out of range for 10 tokens: skipped with a warning.
    assert!(m.get("tokenizer.ggml.padding_token_id").is_none());
    assert!(m.warnings.iter().any(|w| w.contains("out of range")));
    assert_eq!(m.end_of_turn_ids, [2, 7]);
}

#[test]
fn malformed_files_name_the_file() {
    let d = TempDir::new();
    d.json("config.json", &json!({"vocab_size": 10}));
    d.write("tokenizer.model", b"\x0a\xff\xff\xff\x0fjunk");
    let err = tokenizer_metadata(&d.0, "llama", &VocabOptions::default()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.model") && err.contains("pieces[0]"), "{err}");

    std::fs::remove_file(d.0.join("tokenizer.model")).unwrap();
    d.write("tokenizer.json", b"{\"model\": ");
    let err = tokenizer_metadata(&d.0, "qwen2", &VocabOptions::default()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("not valid JSON"), "{err}");

    d.json("tokenizer.json", &json!({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}));
    let err = tokenizer_metadata(&d.0, "qwen2", &VocabOptions::default()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("model.vocab"), "{err}");

    let mut tj = bpe_json(&[], None);
    tj["model"]["merges"] = json!([1, 2]);
    d.json("tokenizer.json", &tj);
    d.json("config.json", &json!({"vocab_size": 300}));
    let err = tokenizer_metadata(&d.0, "qwen2", &VocabOptions::default()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("cannot load"), "{err}");

    d.json("tokenizer.json", &bpe_json(&[], None));
    d.json("config.json", &json!({"vocab_size": 100}));
    let err = tokenizer_metadata(&d.0, "qwen2", &VocabOptions::default()).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("vocab_size"), "{err}");

    std::fs::remove_file(d.0.join("tokenizer.json")).unwrap();
    let err = tokenizer_metadata(&d.0, "qwen2", &VocabOptions::default()).unwrap_err().to_string();
    assert!(err.contains("no tokenizer.model or tokenizer.json"), "{err}");
    assert!(tokenizer_metadata(&d.0, "gpt2", &VocabOptions::default()).is_err());

    d.write("tokenizer.model", model_bytes(&[("<unk>", 0.0, spm::PIECE_UNKNOWN)]));
    d.json("tokenizer_config.json", &json!({"added_tokens_decoder": {"x": {"content": "a"}}}));
    let err = tokenizer_metadata(&d.0, "llama", &VocabOptions::default()).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json") && err.contains("added_tokens_decoder.x"), "{err}");
}

#[test]
fn duplicate_tokens_are_refused() {
    let d = TempDir::new();
    d.write("tokenizer.model", model_bytes(&[("<unk>", 0.0, spm::PIECE_UNKNOWN), ("a", 0.0, 1), ("b", 0.0, 1)]));
    d.json("config.json", &json!({}));
    d.write("added_tokens.json", b"{\"a\": 2}");
    let err = tokenizer_metadata(&d.0, "llama", &VocabOptions::default()).unwrap_err().to_string();
    assert!(err.contains("\"a\"") && err.contains("ids 1 and 2"), "{err}");
}

#[test]
fn token_look_special() {
    assert!(does_token_look_special("<|im_end|>") && does_token_look_special("<unused12>"));
    assert!(does_token_look_special("<｜begin▁of▁sentence｜>") && does_token_look_special("<pad>"));
    assert!(!does_token_look_special("<s>") && !does_token_look_special("<|x"));
}
