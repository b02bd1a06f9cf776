//! Vocabularies from an HF `tokenizer.json`: the byte-level BPE path (`get_vocab_base` +
//! `_set_vocab_gpt2`) and the SentencePiece-style BPE path (`LlamaHfVocab`, `_set_vocab_llama_hf`).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::{
    config_int, does_token_look_special, load_hf_tokenizer, pad_name, read_json, TOKEN_BYTE, TOKEN_CONTROL,
    TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED,
};
use crate::error::{Error, Result};

/// One added token (tokenizer.json `added_tokens`, or tokenizer_config.json `added_tokens_decoder`).
#[derive(Debug, Clone)]
struct Added {
    id: u32,
    content: String,
    special: bool,
    normalized: bool,
}

/// The parts of a tokenizer.json the vocabulary needs.
pub(super) struct HfVocab {
    /// `model.vocab` entries (token → id), file order.
    model: Vec<(String, u32)>,
    added: Vec<Added>,
    /// id → token as `get_vocab()` reversed (added tokens override model entries).
    reverse: HashMap<u32, String>,
    /// token → id as `get_vocab()`.
    forward: HashMap<String, u32>,
}

fn bad(path: &Path, message: String) -> Error {
    Error::File { path: path.to_path_buf(), message }
}

impl HfVocab {
    /// Read `model.vocab` and the added tokens of `tokenizer_json` (from `path`), plus any
    /// `added_tokens_decoder` entry of `tokenizer_config` that tokenizer.json lacks
    /// (transformers adds those on load).
    pub(super) fn new(path: &Path, tokenizer_json: &Value, tokenizer_config: Option<&Value>) -> Result<HfVocab> {
        let vocab = tokenizer_json.get("model").and_then(|m| m.get("vocab")).ok_or_else(|| {
            bad(path, "field `model.vocab` is missing".into())
        })?;
        let vocab = vocab.as_object().ok_or_else(|| {
            bad(path, "field `model.vocab` is not a token → id object (only BPE/WordPiece vocabularies are supported)".into())
        })?;
        let mut model = Vec::with_capacity(vocab.len());
        for (tok, id) in vocab {
            let id = id.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| {
                bad(path, format!("field `model.vocab`: id of token {tok:?} is not a u32"))
            })?;
            model.push((tok.clone(), id));
        }
        let mut added = Vec::new();
        if let Some(list) = tokenizer_json.get("added_tokens") {
            let list = list.as_array().ok_or_else(|| bad(path, "field `added_tokens` is not a list".into()))?;
            for (i, a) in list.iter().enumerate() {
                let id = a.get("id").and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
                let content = a.get("content").and_then(Value::as_str);
                let (Some(id), Some(content)) = (id, content) else {
                    return Err(bad(path, format!("field `added_tokens[{i}]`: needs an integer `id` and a string `content`")));
                };
                let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
                let normalized = a.get("normalized").and_then(Value::as_bool).unwrap_or(!special);
                added.push(Added { id, content: content.to_string(), special, normalized });
            }
        }
        if let Some(decoder) = tokenizer_config.and_then(|c| c.get("added_tokens_decoder")).and_then(Value::as_object) {
            for (key, data) in decoder {
                let Ok(id) = key.parse::<u32>() else { continue };
                let Some(content) = data.get("content").and_then(Value::as_str) else { continue };
                if added.iter().any(|a| a.id == id) {
                    continue;
                }
                let special = data.get("special").and_then(Value::as_bool).unwrap_or(false);
                let normalized = data.get("normalized").and_then(Value::as_bool).unwrap_or(!special);
                added.push(Added { id, content: content.to_string(), special, normalized });
            }
        }
        let mut forward: HashMap<String, u32> = model.iter().cloned().collect();
        let mut reverse: HashMap<u32, String> = model.iter().map(|(t, i)| (*i, t.clone())).collect();
        for a in &added {
            if let Some(old) = forward.insert(a.content.clone(), a.id) {
                if old != a.id && reverse.get(&old) == Some(&a.content) {
                    reverse.remove(&old);
                }
            }
            reverse.insert(a.id, a.content.clone());
        }
        Ok(HfVocab { model, added, reverse, forward })
    }

    fn added_by_content(&self, content: &str) -> Option<&Added> {
        self.added.iter().rev().find(|a| a.content == content)
    }
}

/// `get_vocab_base`: tokens and token types for ids `0..vocab_size` (config.json `vocab_size`,
/// else the tokenizer's size); missing ids become unique `[PAD{i}]` (UNUSED), added tokens
/// CONTROL when special or special-looking, else USER_DEFINED with `▁` → space.
pub(super) fn gpt2_tokens(
    dir: &Path,
    tokenizer_json: &Value,
    tokenizer_config: Option<&Value>,
    config: &Value,
) -> Result<(Vec<String>, Vec<i32>)> {
    let path = dir.join("tokenizer.json");
    let v = HfVocab::new(&path, tokenizer_json, tokenizer_config)?;
    let vocab_size = match config_int(config, "vocab_size") {
        Some(n) => n,
        None => v.forward.len(),
    };
    if let Some(max) = v.reverse.keys().max() {
        if *max as usize >= vocab_size {
            return Err(Error::File {
                path: dir.join("config.json"),
                message: format!("field `vocab_size` ({vocab_size}) must exceed the largest token id of tokenizer.json ({max})"),
            });
        }
    }
    let needs_roundtrip = v.added.iter().any(|a| !a.normalized);
    let hf = if needs_roundtrip { Some(load_hf_tokenizer(&path)?) } else { None };
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size as u32 {
        let Some(token) = v.reverse.get(&i) else {
            tokens.push(pad_name(i));
            types.push(TOKEN_UNUSED);
            continue;
        };
        let mut token = token.clone();
        if let Some(added) = v.added_by_content(&token) {
            let decl = v.added.iter().rev().find(|a| a.id == i).unwrap_or(added);
            if !decl.normalized {
                // llama.cpp expects CONTROL/USER_DEFINED tokens pre-normalized: the converter
                // replaces the text by decode(encode(text)).
                if let Some(hf) = &hf {
                    if let Ok(enc) = hf.encode(token.as_str(), false) {
                        if let Ok(text) = hf.decode(enc.get_ids(), false) {
                            token = text;
                        }
                    }
                }
            }
            if decl.special || does_token_look_special(&token) {
                types.push(TOKEN_CONTROL);
            } else {
                token = token.replace('\u{2581}', " ");
                types.push(TOKEN_USER_DEFINED);
            }
        } else {
            types.push(TOKEN_NORMAL);
        }
        tokens.push(token);
    }
    Ok((tokens, types))
}

/// Whether Llama's converter takes the `LlamaHfVocab` path for this tokenizer.json: a BPE
/// model with `byte_fallback` and a `Sequence` decoder (SentencePiece converted to HF), and not
/// the Llama-3 shape (`ignore_merges` without `byte_fallback`).
pub(super) fn is_llama_hf(tokenizer_json: &Value) -> bool {
    let Some(model) = tokenizer_json.get("model") else { return false };
    let truthy = |k: &str, default: bool| match model.get(k) {
        None => default,
        Some(Value::Bool(b)) => *b,
        Some(Value::Null) => false,
        Some(_) => true,
    };
    let is_bpe = model.get("type").and_then(Value::as_str) == Some("BPE");
    if is_bpe && truthy("ignore_merges", false) && !truthy("byte_fallback", true) {
        return false;
    }
    let decoder_sequence = tokenizer_json.get("decoder").and_then(|d| d.get("type")).and_then(Value::as_str) == Some("Sequence");
    is_bpe && truthy("byte_fallback", false) && decoder_sequence
}

/// Special token strings as transformers' `all_special_tokens`: the `{bos,eos,unk,sep,pad,cls,
/// mask}_token` attributes and the additional/extra special tokens of tokenizer_config.json
/// (or special_tokens_map.json).
fn special_token_strings(dir: &Path, tokenizer_config: Option<&Value>) -> Result<Vec<String>> {
    let map = read_json(&dir.join("special_tokens_map.json"))?;
    let mut out = Vec::new();
    let content = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    for src in [tokenizer_config, map.as_ref()].into_iter().flatten() {
        for key in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] {
            if let Some(s) = src.get(key).and_then(content) {
                out.push(s);
            }
        }
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            match src.get(key) {
                Some(Value::Array(list)) => out.extend(list.iter().filter_map(content)),
                Some(Value::Object(o)) => out.extend(o.values().filter_map(content)),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// `LlamaHfVocab.all_tokens()`: base tokens (BYTE for `<0xXX>`, CONTROL for special ids,
/// else NORMAL) then added tokens above the base size sorted by id (CONTROL when special,
/// else USER_DEFINED); every score is -1000.
pub(super) fn llama_hf_tokens(
    dir: &Path,
    tokenizer_json: &Value,
    tokenizer_config: Option<&Value>,
) -> Result<(Vec<String>, Vec<f32>, Vec<i32>)> {
    let path = dir.join("tokenizer.json");
    let v = HfVocab::new(&path, tokenizer_json, tokenizer_config)?;
    let base = v.model.len();
    let specials = special_token_strings(dir, tokenizer_config)?;
    let special_ids: Vec<u32> = specials.iter().filter_map(|s| v.forward.get(s).copied()).collect();
    let mut added: Vec<(&String, u32)> = v.forward.iter().filter(|(t, _)| v.added_by_content(t).is_some()).map(|(t, i)| (t, *i)).collect();
    added.sort_by_key(|(_, i)| *i);
    added.retain(|(_, i)| *i as usize >= base);
    let added_ids: Vec<u32> = added.iter().map(|(_, i)| *i).collect();
    let mut tokens = Vec::new();
    let mut types = Vec::new();
    for id in 0..base as u32 {
        if added_ids.contains(&id) {
            continue;
        }
        let tok = v.reverse.get(&id).ok_or_else(|| {
            bad(&path, format!("field `model.vocab`: no token has id {id} (ids must be 0..{base})"))
        })?;
        let is_byte = tok.len() == 6 && tok.starts_with("<0x") && tok.ends_with('>') && tok[3..5].chars().all(|c| c.is_ascii_hexdigit());
        types.push(if is_byte {
            TOKEN_BYTE
        } else if special_ids.contains(&id) {
            TOKEN_CONTROL
        } else {
            TOKEN_NORMAL
        });
        tokens.push(tok.clone());
    }
    for (text, _) in added {
        types.push(if specials.contains(text) { TOKEN_CONTROL } else { TOKEN_USER_DEFINED });
        tokens.push(text.clone());
    }
    let scores = vec![-1000.0; tokens.len()];
    Ok((tokens, scores, types))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn llama_hf_detection() {
        let spm_like = json!({"model": {"type": "BPE", "byte_fallback": true}, "decoder": {"type": "Sequence"}});
        assert!(is_llama_hf(&spm_like));
        let llama3 = json!({"model": {"type": "BPE", "ignore_merges": true, "byte_fallback": false}, "decoder": {"type": "ByteLevel"}});
        assert!(!is_llama_hf(&llama3));
        let gpt2 = json!({"model": {"type": "BPE"}, "decoder": null});
        assert!(!is_llama_hf(&gpt2));
    }
}
