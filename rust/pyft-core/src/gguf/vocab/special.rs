//! Special token ids, add_bos/add_eos/add_sep, merges and the chat template, derived the way
//! gguf-py's `SpecialVocab` (`gguf/vocab.py`) does it, quirks included: the crude
//! `TemplateProcessing` parse, `tokenizer_config.json` strings resolved through `tokenizer.json`'s
//! `added_tokens`, and `config.json` ids used only when still unset and an integer.

use std::path::Path;

use serde_json::{Map, Value};

use super::{read_json, KvList};
use crate::error::{Error, Result};
use crate::gguf::{GgufArray, GgufValue};

/// The default special token kinds of `SpecialVocab`.
pub(super) const DEFAULT_TYPES: &[&str] = &["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

/// What `SpecialVocab` loaded; [`SpecialVocab::add_to`] writes it like `add_to_gguf`.
#[derive(Debug, Default)]
pub(super) struct SpecialVocab {
    load_merges: bool,
    n_vocab: Option<usize>,
    types: Vec<String>,
    /// `model.merges` of tokenizer.json (or merges.txt), as `"left right"` strings.
    pub merges: Vec<String>,
    /// Special ids in insertion order (the order the keys are written).
    pub ids: Vec<(String, u32)>,
    /// `add_{typ}_token` flags in insertion order.
    pub add: Vec<(String, bool)>,
    /// `None`: no template; `Some(Value::String | Value::Array)` as gguf-py keeps it.
    chat_template: Option<Value>,
    lowercase: Option<bool>,
    strip_accents: Option<bool>,
    /// Messages gguf-py logs as warnings.
    pub warnings: Vec<String>,
}

/// Python truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// `value == "text"` in Python (a dict or None never equals a string).
fn is_str(v: &Value, text: &str) -> bool {
    matches!(v, Value::String(s) if s == text)
}

/// `item.get('SpecialToken', {}).get('id')` when it is a non-empty string.
fn special_token_id(item: Option<&Value>) -> Option<String> {
    let id = item?.get("SpecialToken")?.get("id")?.as_str()?;
    (!id.is_empty()).then(|| id.to_string())
}

fn sequence_id(item: Option<&Value>) -> Option<&str> {
    item?.get("Sequence")?.get("id")?.as_str()
}

impl SpecialVocab {
    /// `SpecialVocab(dir, load_merges, special_token_types, n_vocab)`.
    pub(super) fn load(dir: &Path, load_merges: bool, types: &[&str], n_vocab: Option<usize>) -> Result<SpecialVocab> {
        let mut sv = SpecialVocab {
            load_merges,
            n_vocab,
            types: types.iter().map(|t| t.to_string()).collect(),
            ..SpecialVocab::default()
        };
        sv.load_tokenizer_json(dir)?;
        sv.load_config_json(dir)?;
        if load_merges && sv.merges.is_empty() {
            sv.load_merges_txt(dir)?;
        }
        Ok(sv)
    }

    /// `_set_special_token`: keeps the first id set per type, ignores non-integers and ids
    /// outside `n_vocab`. gguf-py raises on a negative id; pyft skips it with a warning.
    pub(super) fn set_special(&mut self, typ: &str, tid: Option<&Value>, source: &str) {
        let Some(n) = tid.and_then(Value::as_i64) else { return };
        if tid.is_some_and(|v| v.is_f64()) {
            return;
        }
        if n < 0 || n > i64::from(u32::MAX) {
            self.warnings.push(format!("{source}: invalid id {n} for special token type `{typ}`, ignored"));
            return;
        }
        if self.n_vocab.is_none_or(|nv| (n as usize) < nv) {
            if !self.ids.iter().any(|(t, _)| t == typ) {
                self.ids.push((typ.to_string(), n as u32));
            }
            return;
        }
        self.warnings.push(format!(
            "special token type `{typ}`, id {n} out of range, must be under {} - skipping",
            self.n_vocab.unwrap_or_default()
        ));
    }

    fn set_add(&mut self, typ: &str, value: bool) {
        match self.add.iter_mut().find(|(t, _)| t == typ) {
            Some(slot) => slot.1 = value,
            None => self.add.push((typ.to_string(), value)),
        }
    }

    fn setdefault_add(&mut self, typ: &str, value: bool) {
        if !self.add.iter().any(|(t, _)| t == typ) {
            self.add.push((typ.to_string(), value));
        }
    }

    fn load_merges_txt(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("merges.txt");
        if !path.exists() {
            return Ok(());
        }
        let text = crate::io::file::read_to_string(&path)?;
        let mut lines = text.lines().enumerate().peekable();
        if lines.peek().is_some_and(|(_, l)| l.trim().starts_with('#')) {
            lines.next();
        }
        let mut merges = Vec::new();
        for (i, line) in lines {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() != 2 {
                self.warnings.push(format!("merges.txt: line {}: entry malformed, ignoring", i + 1));
                continue;
            }
            merges.push(format!("{} {}", parts[0], parts[1]));
        }
        self.merges = merges;
        Ok(())
    }

    fn parse_normalizer(&mut self, normalizer: &Value) {
        match normalizer.get("type").and_then(Value::as_str) {
            Some("Lowercase") => self.lowercase = Some(true),
            Some("StripAccents") => self.strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = normalizer.get("lowercase").and_then(Value::as_bool) {
                    self.lowercase = Some(v);
                }
                if let Some(v) = normalizer.get("strip_accents").and_then(Value::as_bool) {
                    self.strip_accents = Some(v);
                }
            }
            Some("Sequence") => {
                for n in normalizer.get("normalizers").and_then(Value::as_array).into_iter().flatten() {
                    self.parse_normalizer(n);
                }
            }
            _ => {}
        }
    }

    fn load_tokenizer_json(&mut self, dir: &Path) -> Result<()> {
        let tokenizer_file = dir.join("tokenizer.json");
        let tokenizer = read_json(&tokenizer_file)?;
        let mut added_tokens: Vec<Value> = Vec::new();
        if let Some(tok) = &tokenizer {
            if self.load_merges {
                if let Some(merges) = tok.get("model").and_then(|m| m.get("merges")) {
                    self.merges = merges_from_json(merges).map_err(|message| Error::File {
                        path: tokenizer_file.clone(),
                        message: format!("field `model.merges`: {message}"),
                    })?;
                }
            }
            if let Some(n) = tok.get("normalizer").filter(|n| truthy(n)) {
                self.parse_normalizer(n);
            }
            if let Some(a) = tok.get("added_tokens").and_then(Value::as_array) {
                added_tokens = a.clone();
            }
        }
        let config_file = dir.join("tokenizer_config.json");
        let mut tc: Option<Map<String, Value>> = match read_json(&config_file)? {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                return Err(Error::File { path: config_file, message: "not a JSON object".into() });
            }
        };
        if let Some(tok) = tokenizer.as_ref().filter(|t| truthy(t)) {
            self.parse_post_processor(tok, &mut tc);
        }
        let Some(tc) = tc.filter(|m| !m.is_empty()) else { return Ok(()) };
        self.load_chat_template(dir, &tc, &config_file)?;
        for typ in self.types.clone() {
            if let Some(add) = tc.get(&format!("add_{typ}_token")).and_then(Value::as_bool) {
                match self.add.iter().find(|(t, _)| *t == typ) {
                    None => self.add.push((typ.clone(), add)),
                    Some((_, v)) if *v != add => self.warnings.push(format!(
                        "mismatch between tokenizer_config add_{typ}_token({add}) and tokenizer post_processor<{typ}>({v}) - opting for the latter"
                    )),
                    Some(_) => {}
                }
            }
            let content = match tc.get(&format!("{typ}_token")) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => match o.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    _ => continue,
                },
                _ => continue,
            };
            let id = added_tokens
                .iter()
                .find(|a| a.get("content").is_some_and(|c| is_str(c, &content)))
                .and_then(|a| a.get("id"))
                .cloned();
            self.set_special(&typ, id.as_ref(), "tokenizer.json");
        }
        Ok(())
    }

    /// The add_bos/add_eos/add_sep guesses from `post_processor`, which may also rewrite the
    /// bos/eos/cls/sep/eot/eom entries of `tokenizer_config` (kept in `tc`).
    fn parse_post_processor(&mut self, tok: &Value, tc: &mut Option<Map<String, Value>>) {
        let tc_get = |tc: &Option<Map<String, Value>>, k: &str| {
            tc.as_ref().and_then(|m| m.get(k)).cloned().unwrap_or(Value::Null)
        };
        let tc_truthy = |tc: &Option<Map<String, Value>>| tc.as_ref().is_some_and(|m| !m.is_empty());
        let mut special_bos = tc_get(tc, "bos_token");
        let mut special_cls = tc_get(tc, "cls_token");
        let mut special_eos = tc_get(tc, "eos_token");
        let mut special_sep = tc_get(tc, "sep_token");
        if !truthy(&special_bos) && truthy(&special_cls) && tc_truthy(tc) {
            special_bos = special_cls.clone();
            tc.as_mut().map(|m| m.insert("bos_token".into(), special_bos.clone()));
        }
        if !truthy(&special_eos) && truthy(&special_sep) && tc_truthy(tc) {
            special_eos = special_sep.clone();
            tc.as_mut().map(|m| m.insert("eos_token".into(), special_eos.clone()));
        }
        let Some(pp) = tok.get("post_processor").filter(|p| truthy(p)) else { return };
        let processors: Vec<Value> = match pp.get("processors") {
            Some(Value::Array(a)) => a.clone(),
            _ => vec![pp.clone()],
        };
        for processor in &processors {
            match processor.get("type").and_then(Value::as_str) {
                Some("ByteLevel") => {
                    self.setdefault_add("bos", false);
                    self.setdefault_add("eos", false);
                }
                Some("RobertaProcessing") => {
                    self.set_add("bos", true);
                    self.set_add("eos", true);
                    self.set_add("sep", true);
                    if !truthy(&special_cls) && tc_truthy(tc) {
                        special_cls = processor.get("cls").and_then(|c| c.get(0)).cloned().unwrap_or(special_bos.clone());
                        tc.as_mut().map(|m| m.insert("cls_token".into(), special_cls.clone()));
                    }
                    if !truthy(&special_sep) && tc_truthy(tc) {
                        special_sep = processor.get("sep").and_then(|c| c.get(0)).cloned().unwrap_or(special_eos.clone());
                        tc.as_mut().map(|m| m.insert("sep_token".into(), special_sep.clone()));
                    }
                }
                Some("TemplateProcessing") => {
                    let empty = Vec::new();
                    let single = processor.get("single").and_then(Value::as_array).unwrap_or(&empty);
                    let pair = processor.get("pair").and_then(Value::as_array).unwrap_or(&empty);
                    let mut special_first = None;
                    let mut special_last = None;
                    if single.len() > 1 {
                        special_first = special_token_id(single.first());
                        if let Some(first) = &special_first {
                            if !tc_truthy(tc) {
                                special_bos = Value::String(first.clone());
                            } else if !is_str(&special_bos, first) && !is_str(&special_cls, first) {
                                if !truthy(&special_bos) {
                                    special_bos = Value::String(first.clone());
                                    tc.as_mut().map(|m| m.insert("bos_token".into(), special_bos.clone()));
                                }
                                if !truthy(&special_cls) {
                                    special_cls = Value::String(first.clone());
                                    tc.as_mut().map(|m| m.insert("cls_token".into(), special_cls.clone()));
                                }
                            }
                            let known = is_str(&special_bos, first) || is_str(&special_cls, first);
                            self.set_add("bos", known);
                            if !known {
                                self.warnings.push(format!(
                                    "unknown leading special token {first:?} in TemplateProcessing<single>"
                                ));
                            }
                        }
                        special_last = special_token_id(single.last());
                        if let Some(last) = &special_last {
                            if !tc_truthy(tc) {
                                special_eos = Value::String(last.clone());
                            } else if !is_str(&special_eos, last) {
                                let m = tc.as_mut().expect("tokenizer_config is non-empty here");
                                if !self.types.iter().any(|t| t == "eot") {
                                    self.types.push("eot".into());
                                    m.insert("eot_token".into(), special_eos.clone());
                                } else if !self.types.iter().any(|t| t == "eom") {
                                    self.types.push("eom".into());
                                    m.insert("eom_token".into(), special_eos.clone());
                                } else {
                                    self.warnings.push(format!(
                                        "overriding EOS token {special_eos} with {last:?} without EOT/EOM fallback"
                                    ));
                                }
                                special_eos = Value::String(last.clone());
                                m.insert("eos_token".into(), special_eos.clone());
                            }
                            self.set_add("eos", is_str(&special_eos, last));
                        }
                    }
                    if !pair.is_empty() {
                        let start = usize::from(
                            special_first.as_ref().is_some_and(|f| special_token_id(pair.first()).as_ref() == Some(f)),
                        );
                        let stop_trim = usize::from(
                            special_last.as_ref().is_some_and(|l| special_token_id(pair.last()).as_ref() == Some(l)),
                        );
                        if (special_first.is_some() && start == 0) || (special_last.is_some() && stop_trim == 0) {
                            self.warnings.push(
                                "TemplateProcessing<single> leading/trailing special tokens do not match TemplateProcessing<pair>".into(),
                            );
                        }
                        let end = pair.len().saturating_sub(stop_trim);
                        let inner = if start < end { &pair[start..end] } else { &[][..] };
                        if !inner.is_empty() {
                            let a = sequence_id(inner.first());
                            let b = sequence_id(inner.last());
                            if a != Some("A") || b != Some("B") {
                                self.warnings.push(format!("unknown sequence {a:?}...{b:?} in TemplateProcessing<pair>"));
                            }
                            if a == Some("A") && b == Some("B") && inner.len() > 2 {
                                let middle = &inner[1..inner.len() - 1];
                                let is_sep_or_eos = |e: &str| is_str(&special_sep, e) || is_str(&special_eos, e);
                                let mut add_sep = false;
                                if let Some(entry) = special_token_id(middle.first()) {
                                    if is_sep_or_eos(&entry) && special_last.is_none() {
                                        add_sep = true;
                                    }
                                }
                                if middle.len() == 2 {
                                    if let Some(entry) = special_token_id(middle.get(1)) {
                                        if is_sep_or_eos(&entry) {
                                            add_sep = true;
                                        }
                                    }
                                }
                                self.set_add("sep", add_sep);
                                if add_sep && !truthy(&special_sep) && tc_truthy(tc) {
                                    tc.as_mut().map(|m| m.insert("sep_token".into(), special_eos.clone()));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn load_chat_template(&mut self, dir: &Path, tc: &Map<String, Value>, config_file: &Path) -> Result<()> {
        let jinja = dir.join("chat_template.jinja");
        let json = dir.join("chat_template.json");
        let mut alt = Value::Null;
        if jinja.exists() {
            let text = crate::io::file::read_to_string(&jinja)?;
            alt = Value::String(text);
            let extra_dir = dir.join("additional_chat_templates");
            let mut extra: Vec<_> = std::fs::read_dir(&extra_dir)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            extra.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "jinja") && p.is_file());
            // gguf-py takes the directory's listing order; sorted here so the output is reproducible.
            extra.sort();
            if !extra.is_empty() {
                let mut list = vec![serde_json::json!({"name": "default", "template": alt})];
                for p in extra {
                    let text = crate::io::file::read_to_string(&p)?;
                    let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    list.push(serde_json::json!({"name": name, "template": text}));
                }
                alt = Value::Array(list);
            }
        } else if let Some(v) = read_json(&json)? {
            alt = v.get("chat_template").cloned().unwrap_or(Value::Null);
        }
        let template = tc.get("chat_template").cloned().unwrap_or(alt);
        match template {
            Value::Null => self.chat_template = None,
            Value::String(_) | Value::Array(_) => self.chat_template = Some(template),
            _ => self.warnings.push(format!(
                "bad type for chat_template field in {} - ignoring",
                config_file.display()
            )),
        }
        Ok(())
    }

    fn load_config_json(&mut self, dir: &Path) -> Result<()> {
        let Some(config) = read_json(&dir.join("config.json"))? else { return Ok(()) };
        for typ in self.types.clone() {
            let key = format!("{typ}_token_id");
            let mut id = config.get(&key).filter(|v| !v.is_null());
            if id.is_none() {
                id = config.get("text_config").and_then(|t| t.get(&key));
            }
            let id = id.cloned();
            self.set_special(&typ, id.as_ref(), "config.json");
        }
        Ok(())
    }

    /// `add_to_gguf`: write merges, ids, add flags, chat template and normalizer flags into `kv`
    /// (a key written twice keeps its first position, as in `GGUFWriter`).
    pub(super) fn add_to(&self, kv: &mut KvList, warnings: &mut Vec<String>) {
        warnings.extend(self.warnings.iter().cloned());
        if !self.merges.is_empty() {
            kv.set("tokenizer.ggml.merges", GgufValue::Array(GgufArray::String(self.merges.clone())));
        } else if self.load_merges {
            warnings.push("adding merges requested but no merges found, output may be non-functional".into());
        }
        for (typ, id) in &self.ids {
            let key = match typ.as_str() {
                "bos" => "bos_token_id",
                "eos" => "eos_token_id",
                "unk" => "unknown_token_id",
                "sep" => "seperator_token_id",
                "pad" => "padding_token_id",
                "mask" => "mask_token_id",
                "eot" => "eot_token_id",
                "eom" => "eom_token_id",
                _ => continue, // gguf-py has no handler (cls, prefix, suffix, middle): skipped
            };
            kv.set(&format!("tokenizer.ggml.{key}"), GgufValue::U32(*id));
        }
        for (typ, value) in &self.add {
            if matches!(typ.as_str(), "bos" | "eos" | "sep") {
                kv.set(&format!("tokenizer.ggml.add_{typ}_token"), GgufValue::Bool(*value));
            }
        }
        match &self.chat_template {
            None => kv.remove("tokenizer.chat_template"),
            Some(Value::String(t)) => kv.set("tokenizer.chat_template", GgufValue::String(t.clone())),
            Some(Value::Array(list)) => add_named_templates(kv, list),
            Some(_) => {}
        }
        if let Some(v) = self.lowercase {
            kv.set("tokenizer.ggml.normalizer.lowercase", GgufValue::Bool(v));
        }
        if let Some(v) = self.strip_accents {
            kv.set("tokenizer.ggml.normalizer.strip_accents", GgufValue::Bool(v));
        }
    }
}

/// `GGUFWriter.add_chat_template` for a list of `{name, template}`: named templates as
/// `tokenizer.chat_template.<name>` + `tokenizer.chat_templates`, `default` as the main one.
fn add_named_templates(kv: &mut KvList, list: &[Value]) {
    let mut default = None;
    let mut names: Vec<String> = Vec::new();
    for choice in list {
        let name: String = choice
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let Some(template) = choice.get("template").and_then(Value::as_str) else { continue };
        if name.is_empty() {
            continue;
        }
        if name == "default" {
            default = Some(template.to_string());
        } else {
            if !names.contains(&name) {
                names.push(name.clone());
            }
            kv.set(&format!("tokenizer.chat_template.{name}"), GgufValue::String(template.to_string()));
        }
    }
    if !names.is_empty() {
        // gguf-py collects the names in a set (arbitrary order); pyft keeps first-seen order.
        kv.set("tokenizer.chat_templates", GgufValue::Array(GgufArray::String(names)));
    }
    if let Some(t) = default {
        kv.set("tokenizer.chat_template", GgufValue::String(t));
    }
}

/// `model.merges` of a tokenizer.json: `["a b", ...]` or (transformers ≥ 4.45) `[["a", "b"], ...]`,
/// where a literal space inside a part is written as U+0120 `Ġ` (space + 256), as gguf-py does.
pub(super) fn merges_from_json(merges: &Value) -> std::result::Result<Vec<String>, String> {
    let Some(list) = merges.as_array() else {
        return Err("not a list".into());
    };
    let Some(first) = list.first() else { return Ok(Vec::new()) };
    if first.is_string() {
        return list
            .iter()
            .enumerate()
            .map(|(i, m)| m.as_str().map(str::to_string).ok_or_else(|| format!("entry {i} is not a string")))
            .collect();
    }
    if first.as_array().is_some_and(|p| p.len() == 2 && p[0].is_string()) {
        return list
            .iter()
            .enumerate()
            .map(|(i, pair)| {
                let parts = pair
                    .as_array()
                    .filter(|p| p.len() == 2)
                    .and_then(|p| p.iter().map(Value::as_str).collect::<Option<Vec<&str>>>())
                    .ok_or_else(|| format!("entry {i} is not a pair of strings"))?;
                let enc: Vec<String> = parts.iter().map(|s| s.replace(' ', "\u{120}")).collect();
                Ok(enc.join(" "))
            })
            .collect();
    }
    Err("unknown tokenizer merges format".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_both_formats() {
        assert_eq!(merges_from_json(&json!(["h e", "Ġ t"])).unwrap(), vec!["h e", "Ġ t"]);
        assert_eq!(
            merges_from_json(&json!([["h", "e"], [" ", "t"], ["a b", "c"]])).unwrap(),
            vec!["h e", "Ġ t", "aĠb c"]
        );
        assert_eq!(merges_from_json(&json!([])).unwrap(), Vec::<String>::new());
        assert!(merges_from_json(&json!([1, 2])).unwrap_err().contains("unknown"));
        assert!(merges_from_json(&json!([["a", "b"], ["c"]])).unwrap_err().contains("entry 1"));
        assert!(merges_from_json(&json!(["a b", 3])).unwrap_err().contains("entry 1"));
        assert!(merges_from_json(&json!({"a": 1})).unwrap_err().contains("not a list"));
    }

    #[test]
    fn truthiness_matches_python() {
        assert!(!truthy(&json!(null)) && !truthy(&json!("")) && !truthy(&json!({})) && !truthy(&json!(0)));
        assert!(truthy(&json!("x")) && truthy(&json!({"content": "x"})) && truthy(&json!(1)));
    }
}
