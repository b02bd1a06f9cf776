//! GGUF tokenizer metadata (`tokenizer.*` keys) as llama.cpp's `convert_hf_to_gguf.py` writes
//! it for `LlamaForCausalLM` and `Qwen2ForCausalLM` (spec `shared/specs/gguf.md` §3).
//!
//! Paths, as in the converter (`conversion/llama.py` `set_vocab`, `conversion/qwen.py`):
//! * `tokenizer.model` present → SentencePiece (`_set_vocab_sentencepiece`): model `llama`,
//!   pre `default`, pieces + scores + types padded to `config.vocab_size` with `[PAD{i}]`.
//! * Llama only: an SPM-style `tokenizer.json` (BPE + byte_fallback + Sequence decoder) →
//!   `_set_vocab_llama_hf`.
//! * otherwise byte-level BPE (`_set_vocab_gpt2`): model `gpt2`, tokens incl. added tokens,
//!   merges, and `tokenizer.ggml.pre` per pyft's policy ([`pre`]), which never writes a name
//!   llama.cpp refuses.
//!
//! Special ids, add_bos/add_eos/add_sep and the chat template come from [`special`]
//! (gguf-py's `SpecialVocab`).

mod bpe;
mod pre;
mod special;
mod spm;
mod tables;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::gguf::{GgufArray, GgufValue};
use special::{SpecialVocab, DEFAULT_TYPES};

/// `TokenType` NORMAL (gguf-py `constants.py`).
pub const TOKEN_NORMAL: i32 = 1;
/// `TokenType` UNKNOWN.
pub const TOKEN_UNKNOWN: i32 = 2;
/// `TokenType` CONTROL.
pub const TOKEN_CONTROL: i32 = 3;
/// `TokenType` USER_DEFINED.
pub const TOKEN_USER_DEFINED: i32 = 4;
/// `TokenType` UNUSED.
pub const TOKEN_UNUSED: i32 = 5;
/// `TokenType` BYTE.
pub const TOKEN_BYTE: i32 = 6;

/// Choices for [`tokenizer_metadata`].
#[derive(Debug, Clone, Default)]
pub struct VocabOptions {
    /// `tokenizer.ggml.pre` to write when the tokenizer's chkhsh is not in llama.cpp's table
    /// (validated against the names llama.cpp loads).
    pub pre_override: Option<String>,
    /// The base model's directory: when the fine-tune's tokenizer is unknown to the table but the
    /// base's is, and both pre-tokenize the same way, the base's name is reused.
    pub base_dir: Option<PathBuf>,
}

/// The `tokenizer.*` metadata of one model.
#[derive(Debug, Clone)]
pub struct VocabMetadata {
    /// Exactly the `tokenizer.*` keys the converter writes, in its order, with its GGUF types.
    pub kvs: Vec<(String, GgufValue)>,
    /// `tokenizer.ggml.pre` as written (`None`: omitted, llama.cpp then warns and uses its default).
    pub pre: Option<String>,
    /// Things the user should know: pre-tokenizer guessed or omitted, ids out of range, ...
    pub warnings: Vec<String>,
    /// Ids llama.cpp will treat as end of generation: eos (its default when unset), eot, eom and
    /// tokens whose text it recognizes (`<|eot_id|>`, `<|im_end|>`, `<|endoftext|>`, ...). Sorted.
    pub end_of_turn_ids: Vec<u32>,
}

impl VocabMetadata {
    /// The value of `key`, if written.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kvs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Build the `tokenizer.*` metadata for the HF model in `model_dir` (config.json + tokenizer
/// files) as llama.cpp's converter does for `arch` (`"llama"` or `"qwen2"`).
///
/// Errors name the file and field at fault (unreadable or malformed tokenizer.json,
/// tokenizer.model, tokenizer_config.json, config.json; no tokenizer at all; a vocab_size
/// smaller than the tokenizer; duplicate token strings, which llama.cpp would abort on) or the
/// option (`arch`, an unknown `pre_override`).
pub fn tokenizer_metadata(model_dir: &Path, arch: &str, opts: &VocabOptions) -> Result<VocabMetadata> {
    if !["llama", "qwen2", "gemma2", "gemma3", "phi3"].contains(&arch) {
        return Err(Error::Option(format!(
            "arch `{arch}`: tokenizer metadata supports `llama`, `qwen2`, `gemma2`, `gemma3` and `phi3`")));
    }
    if let Some(name) = &opts.pre_override {
        pre::validate_override(name)?;
    }
    let config_path = model_dir.join("config.json");
    let config = read_json(&config_path)?.ok_or_else(|| Error::File {
        path: config_path.clone(),
        message: "not found (the model directory needs its config.json)".into(),
    })?;
    if !config.is_object() {
        return Err(Error::File { path: config_path, message: "not a JSON object".into() });
    }
    let tc_path = model_dir.join("tokenizer_config.json");
    let tokenizer_config = read_json(&tc_path)?;
    if tokenizer_config.as_ref().is_some_and(|t| !t.is_object()) {
        return Err(Error::File { path: tc_path, message: "not a JSON object".into() });
    }

    let mut kv = KvList::default();
    let mut warnings = Vec::new();
    if arch == "llama" {
        match tokenizer_config.as_ref().and_then(|t| t.get("add_prefix_space")) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => kv.set("tokenizer.ggml.add_space_prefix", GgufValue::Bool(*b)),
            Some(other) => warnings.push(format!(
                "{}: field `add_prefix_space` is {other}, not a bool; ignored",
                tc_path.display()
            )),
        }
    }

    let spm_path = model_dir.join("tokenizer.model");
    let tj_path = model_dir.join("tokenizer.json");
    let pre;
    let source_file;
    if arch == "gemma2" && !spm_path.exists() {
        // Gemma2Model.set_vocab reads tokenizer.model only.
        return Err(Error::File { path: spm_path, message: "not found: Gemma 2 GGUF export (as llama.cpp's \
                                 converter) needs the SentencePiece tokenizer.model".into() });
    }
    // Phi3MiniModel.set_vocab: a GPT2Tokenizer (Phi-4) takes the BPE path whatever else is there;
    // otherwise tokenizer.model is required.
    let phi3_bpe = arch == "phi3"
        && tokenizer_config.as_ref().and_then(|t| t.get("tokenizer_class")).and_then(Value::as_str) == Some("GPT2Tokenizer");
    if arch == "phi3" && !phi3_bpe && !spm_path.exists() {
        return Err(Error::File { path: spm_path, message: "not found: Phi-3 GGUF export (as llama.cpp's converter) \
                                 needs the SentencePiece tokenizer.model unless tokenizer_class is GPT2Tokenizer".into() });
    }
    if spm_path.exists() && !phi3_bpe {
        if opts.pre_override.as_deref().is_some_and(|p| p != "default") {
            warnings.push("pre-tokenizer override ignored: SentencePiece models always use `default`".into());
        }
        let (tokens, scores, types) = sentencepiece_vocab(model_dir, &spm_path, &config, tokenizer_config.as_ref(), &mut warnings)?;
        pre = Some("default".to_string());
        source_file = spm_path;
        write_spm(&mut kv, tokens, scores, types, model_dir, &mut warnings)?;
        if arch.starts_with("gemma") {
            kv.set("tokenizer.ggml.add_space_prefix", GgufValue::Bool(false));
        }
    } else {
        let tokenizer_json = read_json(&tj_path)?.ok_or_else(|| Error::File {
            path: model_dir.to_path_buf(),
            message: "no tokenizer.model or tokenizer.json".into(),
        })?;
        if !tokenizer_json.is_object() {
            return Err(Error::File { path: tj_path, message: "not a JSON object".into() });
        }
        source_file = tj_path.clone();
        if arch == "llama" && bpe::is_llama_hf(&tokenizer_json) {
            let (mut tokens, mut scores, mut types) = bpe::llama_hf_tokens(model_dir, &tokenizer_json, tokenizer_config.as_ref())?;
            if let Some(n) = config_int(&config, "vocab_size").filter(|n| *n > tokens.len()) {
                // The converter does not pad here (its file would not load: llama.cpp wants one
                // token per embedding row); pyft pads like the SentencePiece path.
                warnings.push(format!("padding the vocabulary from {} to config.json vocab_size {n}", tokens.len()));
                for i in tokens.len()..n {
                    tokens.push(pad_name(i as u32));
                    scores.push(-1000.0);
                    types.push(TOKEN_UNUSED);
                }
            }
            pre = Some("default".to_string());
            write_spm(&mut kv, tokens, scores, types, model_dir, &mut warnings)?;
        } else {
            let (tokens, types) = bpe::gpt2_tokens(model_dir, &tokenizer_json, tokenizer_config.as_ref(), &config)?;
            pre = pre::choose_pre(model_dir, &tokenizer_json, opts.pre_override.as_deref(), opts.base_dir.as_deref(), &mut warnings)?;
            kv.set("tokenizer.ggml.model", GgufValue::String("gpt2".into()));
            if let Some(p) = &pre {
                kv.set("tokenizer.ggml.pre", GgufValue::String(p.clone()));
            }
            kv.set("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::String(tokens)));
            kv.set("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(types)));
            SpecialVocab::load(model_dir, true, DEFAULT_TYPES, None)?.add_to(&mut kv, &mut warnings);
        }
    }

    if arch == "llama" {
        llama_vocab_size_quirks(&mut kv, model_dir, &config, &mut warnings)?;
    }
    ensure_unique(&mut kv, &source_file, &mut warnings)?;
    let end_of_turn_ids = end_of_generation_ids(&kv);
    Ok(VocabMetadata { kvs: kv.0, pre, warnings, end_of_turn_ids })
}

/// The SentencePiece-style keys (`_set_vocab_sentencepiece`, `_set_vocab_llama_hf`).
fn write_spm(kv: &mut KvList, tokens: Vec<String>, scores: Vec<f32>, types: Vec<i32>, dir: &Path,
             warnings: &mut Vec<String>) -> Result<()> {
    let n = tokens.len();
    kv.set("tokenizer.ggml.model", GgufValue::String("llama".into()));
    kv.set("tokenizer.ggml.pre", GgufValue::String("default".into()));
    kv.set("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::String(tokens)));
    kv.set("tokenizer.ggml.scores", GgufValue::Array(GgufArray::F32(scores)));
    kv.set("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(types)));
    SpecialVocab::load(dir, false, DEFAULT_TYPES, Some(n))?.add_to(kv, warnings);
    Ok(())
}

/// `_create_vocab_sentencepiece`: pieces, then `added_tokens.json`, then tokenizer_config.json
/// `added_tokens_decoder`, over `[PAD{i}]` placeholders (score -10000, UNUSED) up to
/// `config.vocab_size`.
fn sentencepiece_vocab(
    dir: &Path,
    spm_path: &Path,
    config: &Value,
    tokenizer_config: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<String>, Vec<f32>, Vec<i32>)> {
    let pieces = spm::read_model(spm_path)?;
    let vocab_size = ["vocab_size_per_layer_input", "vocab_size"]
        .iter()
        .find(|k| config.get(**k).is_some())
        .and_then(|k| config_int(config, k))
        .filter(|n| *n > 0)
        .unwrap_or(pieces.len());
    let mut tokens: Vec<String> = (0..vocab_size as u32).map(pad_name).collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![TOKEN_UNUSED; vocab_size];
    for (id, p) in pieces.iter().enumerate() {
        if id >= vocab_size {
            warnings.push(format!("ignore tokens from {id}: id is out of range, max={}", vocab_size - 1));
            break;
        }
        // The converter checks IsUnknown/IsControl/IsUnused/IsByte only: USER_DEFINED pieces
        // are written as NORMAL.
        types[id] = match p.kind {
            spm::PIECE_UNKNOWN => TOKEN_UNKNOWN,
            spm::PIECE_CONTROL => TOKEN_CONTROL,
            spm::PIECE_UNUSED => TOKEN_UNUSED,
            spm::PIECE_BYTE => TOKEN_BYTE,
            _ => TOKEN_NORMAL,
        };
        tokens[id] = p.piece.clone();
        scores[id] = p.score;
    }
    let added_path = dir.join("added_tokens.json");
    if let Some(added) = read_json(&added_path)? {
        let map = added.as_object().ok_or_else(|| Error::File {
            path: added_path.clone(),
            message: "not a JSON object of token → id".into(),
        })?;
        for (key, id) in map {
            let id = id.as_u64().ok_or_else(|| Error::File {
                path: added_path.clone(),
                message: format!("field `{key}`: id is not a non-negative integer"),
            })? as usize;
            if id >= vocab_size {
                warnings.push(format!("ignore token {id}: id is out of range, max={}", vocab_size - 1));
                continue;
            }
            tokens[id] = key.clone();
            scores[id] = -1000.0;
            types[id] = TOKEN_USER_DEFINED;
        }
    }
    if let Some(decoder) = tokenizer_config.and_then(|t| t.get("added_tokens_decoder")) {
        let tc_path = dir.join("tokenizer_config.json");
        let decoder = decoder.as_object().ok_or_else(|| Error::File {
            path: tc_path.clone(),
            message: "field `added_tokens_decoder` is not an object".into(),
        })?;
        for (key, data) in decoder {
            let field_err = |m: &str| Error::File {
                path: tc_path.clone(),
                message: format!("field `added_tokens_decoder.{key}`: {m}"),
            };
            let id: usize = key.trim().parse().map_err(|_| field_err("key is not a token id"))?;
            let mut token = data
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| field_err("missing string `content`"))?
                .to_string();
            if id >= vocab_size {
                warnings.push(format!("ignore token {id}: id is out of range, max={}", vocab_size - 1));
                continue;
            }
            if types[id] != TOKEN_UNUSED && tokens[id] != token {
                warnings.push(format!("replacing token {id}: {:?} -> {token:?}", tokens[id]));
            }
            let special = data.get("special").is_some_and(|s| !matches!(s, Value::Null | Value::Bool(false)));
            if special || does_token_look_special(&token) {
                types[id] = TOKEN_CONTROL;
            } else {
                token = token.replace('\u{2581}', " ");
                types[id] = TOKEN_USER_DEFINED;
            }
            scores[id] = -1000.0;
            tokens[id] = token;
        }
    }
    Ok((tokens, scores, types))
}

/// LlamaModel.set_vocab's tail: CodeLlama (vocab_size 32016) gets an eot id (32010 unless the
/// tokenizer names one); granite small (49152) gets add_bos_token = false.
fn llama_vocab_size_quirks(kv: &mut KvList, dir: &Path, config: &Value, warnings: &mut Vec<String>) -> Result<()> {
    let vocab_size = config.get("vocab_size").and_then(Value::as_i64).unwrap_or(32000);
    if vocab_size == 32016 {
        let mut sv = SpecialVocab::load(dir, false, &["prefix", "suffix", "middle", "eot"], None)?;
        for (typ, id) in [("prefix", 32007), ("suffix", 32008), ("middle", 32009), ("eot", 32010)] {
            sv.set_special(typ, Some(&Value::from(id)), "convert_hf_to_gguf.py");
        }
        sv.add_to(kv, warnings);
    }
    if vocab_size == 49152 {
        kv.set("tokenizer.ggml.add_bos_token", GgufValue::Bool(false));
    }
    Ok(())
}

/// llama.cpp aborts (GGML_ASSERT) on a vocabulary with two equal token strings. A `[PAD{i}]`
/// placeholder that a real token already spells is renamed (`[PAD{i}]_`, ...); any other
/// duplicate is an error.
fn ensure_unique(kv: &mut KvList, source: &Path, warnings: &mut Vec<String>) -> Result<()> {
    let types: Vec<i32> = match kv.get("tokenizer.ggml.token_type") {
        Some(GgufValue::Array(GgufArray::I32(t))) => t.clone(),
        _ => Vec::new(),
    };
    let Some(GgufValue::Array(GgufArray::String(tokens))) = kv.0.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens").map(|(_, v)| v) else {
        return Ok(());
    };
    let is_pad = |i: usize, t: &str| types.get(i) == Some(&TOKEN_UNUSED) && t == pad_name(i as u32);
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if !is_pad(i, t) {
            if let Some(first) = seen.insert(t.clone(), i) {
                return Err(Error::File {
                    path: source.to_path_buf(),
                    message: format!("token {t:?} appears at ids {first} and {i}; llama.cpp refuses duplicate token strings"),
                });
            }
        }
    }
    for (i, token) in tokens.iter_mut().enumerate() {
        if !is_pad(i, token) {
            continue;
        }
        let mut name = token.clone();
        if seen.contains_key(&name) {
            while seen.contains_key(&name) {
                name.push('_');
            }
            warnings.push(format!("padding token for id {i} renamed to {name:?}: {token:?} is a real token"));
        }
        seen.insert(name.clone(), i);
        *token = name;
    }
    Ok(())
}

/// Token texts llama.cpp marks end-of-generation (`llama_vocab::impl::load`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>", "[e~[",
];

fn end_of_generation_ids(kv: &KvList) -> Vec<u32> {
    let tokens: &[String] = match kv.get("tokenizer.ggml.tokens") {
        Some(GgufValue::Array(GgufArray::String(t))) => t,
        _ => &[],
    };
    let n = tokens.len() as u64;
    let id = |key: &str| kv.get(key).and_then(GgufValue::as_u64).filter(|i| *i < n);
    let mut out: Vec<u32> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| EOG_TEXTS.contains(&t.as_str()))
        .map(|(i, _)| i as u32)
        .collect();
    let spm = kv.get("tokenizer.ggml.model").and_then(GgufValue::as_str) == Some("llama");
    let eos = match kv.get("tokenizer.ggml.eos_token_id") {
        Some(_) => id("tokenizer.ggml.eos_token_id"),
        // llama.cpp's defaults when the key is absent: SPM 2, gpt2 11.
        None => Some(if spm { 2 } else { 11 }).filter(|i| *i < n),
    };
    out.extend(eos.into_iter().chain(id("tokenizer.ggml.eot_token_id")).chain(id("tokenizer.ggml.eom_token_id")).map(|i| i as u32));
    out.sort_unstable();
    out.dedup();
    out
}

/// `does_token_look_special`: `<|…|>`, `<｜…｜>`, `<unused…>` and a few known texts.
pub(crate) fn does_token_look_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// The placeholder for id `i`, unique as long as no real token is spelled `[PAD{i}]`.
pub(crate) fn pad_name(i: u32) -> String {
    format!("[PAD{i}]")
}

/// An integer field of config.json (`None` when absent, null or not an integer).
pub(crate) fn config_int(config: &Value, key: &str) -> Option<usize> {
    config.get(key).and_then(Value::as_u64).and_then(|n| usize::try_from(n).ok())
}

/// Parse the JSON file at `path`; `Ok(None)` when there is none (one that is there but not a
/// regular file, such as a FIFO, is an error rather than absent).
pub(crate) fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::io::file::read_to_string(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })
}

/// Load a tokenizer.json with the `tokenizers` crate (the converter's `AutoTokenizer`).
pub(crate) fn load_hf_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("cannot load the tokenizer: {e}"),
    })
}

/// Ordered GGUF key/values with `GGUFWriter`'s semantics: writing a key again replaces the
/// value in place, removing drops it.
#[derive(Debug, Default)]
pub(crate) struct KvList(Vec<(String, GgufValue)>);

impl KvList {
    fn set(&mut self, key: &str, value: GgufValue) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    fn get(&self, key: &str) -> Option<&GgufValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests;
