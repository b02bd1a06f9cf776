//! Column mapping (`--columns`): the user's key names to pyft's, applied to every record before
//! its format is detected.
//!
//! Mirrors LLaMA-Factory's `dataset_info.json`, whose `columns` name record fields and whose
//! `tags` name the keys and role values inside messages (`role_tag`, `content_tag`, `user_tag`,
//! `assistant_tag`, `system_tag`, `observation_tag`). Here both are one list of `pyft=yours`
//! pairs; the targets are pyft's own field names:
//!
//! - record fields: `instruction`, `input`, `output`, `system`, `history`, `messages`,
//!   `conversations`, `tools`, `text`, `prompt`, `chosen`, `rejected`, `completion`, `label`;
//! - keys inside messages: `role` (or `role_tag`), `content` (or `content_tag`);
//! - role values inside messages: `user` (or `user_tag`), `assistant` (or `assistant_tag`),
//!   `system_tag`, `tool` (or `observation_tag`). (`system` alone is the record field.)
//!
//! Nothing is aliased silently: a key is renamed only when the mapping names it, so KTO rows
//! written as `response` / `is_good` need `--columns completion=response,label=is_good`. Errors
//! about a mapped field name it as the file spells it and say which mapping led there.

use serde_json::{Map, Value};

use crate::data::formats::Format;
use crate::error::{Error, Result};

/// Record fields a mapping may target.
pub const RECORD_FIELDS: [&str; 14] = [
    "instruction", "input", "output", "system", "history", "messages", "conversations", "tools", "text", "prompt",
    "chosen", "rejected", "completion", "label",
];

/// Record fields that hold message lists, whose items the key and role mappings apply to.
const MESSAGE_FIELDS: [&str; 6] = ["messages", "conversations", "prompt", "chosen", "rejected", "completion"];

/// Message key targets: (accepted spellings, pyft's key).
const KEY_TAGS: [(&[&str], &str); 2] = [(&["role", "role_tag"], "role"), (&["content", "content_tag"], "content")];

/// Role value targets: (accepted spellings, pyft's role).
const ROLE_TAGS: [(&[&str], &str); 4] = [
    (&["user", "user_tag"], "user"),
    (&["assistant", "assistant_tag"], "assistant"),
    (&["system_tag"], "system"),
    (&["tool", "observation_tag"], "tool"),
];

/// A parsed `--columns` mapping. Empty by default (records are read as written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnMap {
    /// Record fields: (pyft's name, the file's name), in the order given.
    fields: Vec<(String, String)>,
    /// Keys inside messages: (pyft's key, the file's key).
    keys: Vec<(&'static str, String)>,
    /// Role values inside messages: (pyft's role, the file's value).
    roles: Vec<(&'static str, String)>,
}

impl ColumnMap {
    /// Parse `target=source` items; each item may itself be a comma-separated list
    /// (`instruction=question,output=answer`).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<ColumnMap> {
        let mut map = ColumnMap::default();
        let mut targets: Vec<String> = Vec::new();
        for pair in items.iter().flat_map(|s| s.as_ref().split(',')).map(str::trim).filter(|s| !s.is_empty()) {
            let bad = |why: &str| Error::Option(format!("--columns `{pair}`: {why}"));
            let (target, source) = pair.split_once('=').ok_or_else(|| bad("expected PYFT_NAME=YOUR_NAME"))?;
            let (target, source) = (target.trim(), source.trim());
            if source.is_empty() {
                return Err(bad("the name in your data is empty"));
            }
            let canonical = if RECORD_FIELDS.contains(&target) {
                map.fields.push((target.to_string(), source.to_string()));
                target.to_string()
            } else if let Some((_, key)) = KEY_TAGS.iter().find(|(names, _)| names.contains(&target)) {
                map.keys.push((key, source.to_string()));
                format!("{key} key")
            } else if let Some((_, role)) = ROLE_TAGS.iter().find(|(names, _)| names.contains(&target)) {
                map.roles.push((role, source.to_string()));
                format!("{role} role")
            } else {
                return Err(bad(&format!(
                    "unknown name `{target}` (expected a record field: {}; a message key: role, content; or a \
                     role value: user, assistant, system_tag, tool)",
                    RECORD_FIELDS.join(", ")
                )));
            };
            if targets.contains(&canonical) {
                return Err(bad(&format!("`{target}` is mapped twice")));
            }
            targets.push(canonical);
        }
        for (i, (_, s)) in map.fields.iter().enumerate() {
            if map.fields[..i].iter().any(|(_, t)| t == s) {
                return Err(Error::Option(format!("--columns: `{s}` is mapped to two fields")));
            }
        }
        Ok(map)
    }

    /// The one format the mapped record fields belong to, if they name one (`instruction=question`
    /// implies alpaca): a record whose mapped key is missing is then reported as missing that key
    /// rather than as a record of unknown format.
    pub fn implied_format(&self) -> Option<Format> {
        let mut implied = None;
        for (t, _) in &self.fields {
            let f = match t.as_str() {
                "instruction" | "input" | "output" | "history" => Format::Alpaca,
                "messages" => Format::Messages,
                "conversations" => Format::Sharegpt,
                "text" => Format::Text,
                "chosen" | "rejected" => Format::Preference,
                "completion" | "label" => Format::Kto,
                _ => continue,
            };
            if implied.is_some_and(|i| i != f) {
                return None;
            }
            implied = Some(f);
        }
        implied
    }

    /// Whether the mapping changes nothing.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.keys.is_empty() && self.roles.is_empty()
    }

    /// The mapping as written to `meta.json`: `{pyft_name: your_name}` (role values as
    /// `user_tag`, ... as in LLaMA-Factory's `tags`).
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        for (t, s) in &self.fields {
            out.insert(t.clone(), Value::String(s.clone()));
        }
        for (t, s) in &self.keys {
            out.insert((*t).to_string(), Value::String(s.clone()));
        }
        for (t, s) in &self.roles {
            let name = if *t == "tool" { "observation_tag".to_string() } else { format!("{t}_tag") };
            out.insert(name, Value::String(s.clone()));
        }
        Value::Object(out)
    }

    /// `record` with the mapping applied, or `None` when it changes nothing (not an object, or no
    /// mapped name present). Errors name a field that is both mapped to and present under its own
    /// name (e.g. `answer` mapped to `output` in a record that also has an `output`): silently
    /// dropping either would train on the wrong text.
    pub fn apply(&self, record: &Value) -> std::result::Result<Option<Value>, (Option<String>, String)> {
        let Some(obj) = record.as_object() else { return Ok(None) };
        if self.is_empty() {
            return Ok(None);
        }
        let mut out = obj.clone();
        // Take every mapped value out first, so that mappings may swap names.
        let taken: Vec<(&String, &String, Value)> =
            self.fields.iter().filter_map(|(t, s)| out.remove(s).map(|v| (t, s, v))).collect();
        let mut changed = !taken.is_empty();
        for (target, source, v) in taken {
            if out.contains_key(target) {
                return Err((Some(target.clone()), format!("present, and `{source}` is also mapped to it by --columns")));
            }
            out.insert(target.clone(), v);
        }
        if !self.keys.is_empty() || !self.roles.is_empty() {
            for field in MESSAGE_FIELDS {
                let Some(Value::Array(items)) = out.get_mut(field) else { continue };
                for (i, item) in items.iter_mut().enumerate() {
                    let Some(m) = item.as_object_mut() else { continue };
                    changed |= self.map_message(m).map_err(|(key, msg)| {
                        (Some(format!("{}[{i}].{key}", self.source_of(field))), msg)
                    })?;
                }
            }
        }
        Ok(changed.then_some(Value::Object(out)))
    }

    /// Rename the keys and role values of one message; `Ok(true)` when anything changed.
    fn map_message(&self, m: &mut Map<String, Value>) -> std::result::Result<bool, (String, String)> {
        let mut changed = false;
        for (target, source) in &self.keys {
            if let Some(v) = m.remove(source) {
                if m.contains_key(*target) {
                    return Err(((*target).to_string(), format!("present, and `{source}` is also mapped to it by --columns")));
                }
                m.insert((*target).to_string(), v);
                changed = true;
            }
        }
        if !self.roles.is_empty() {
            // The role key after renaming: `role`, or ShareGPT's `from` when the message has no `role`.
            let key = if m.contains_key("role") { "role" } else { "from" };
            if let Some(Value::String(value)) = m.get(key) {
                if let Some((role, _)) = self.roles.iter().find(|(_, s)| s == value) {
                    m.insert(key.to_string(), Value::String((*role).to_string()));
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// The file's name for pyft's record field `target` (itself when unmapped).
    fn source_of<'a>(&'a self, target: &'a str) -> &'a str {
        self.fields.iter().find(|(t, _)| t == target).map_or(target, |(_, s)| s.as_str())
    }

    /// A validation error about a mapped record, rewritten to name the field as the file spells
    /// it: `field `instruction`` becomes `field `question``, `messages[1].role` becomes
    /// `dialog[1].speaker`, with the mapping that led there appended to the message.
    pub fn explain(&self, e: Error) -> Error {
        let Error::Record { location, field: Some(field), message } = e else { return e };
        let head_end = field.find(['[', '.']).unwrap_or(field.len());
        let (head, rest) = field.split_at(head_end);
        let mut notes = Vec::new();
        let mut new_head = head.to_string();
        if let Some((t, s)) = self.fields.iter().find(|(t, _)| t == head) {
            notes.push(format!("`{s}` mapped to `{t}`"));
            new_head = s.clone();
        }
        // The last `.key` of a message path (`messages[1].role`).
        let mut new_rest = rest.to_string();
        if let Some(dot) = rest.rfind('.') {
            let key = &rest[dot + 1..];
            if let Some((t, s)) = self.keys.iter().find(|(t, _)| *t == key) {
                notes.push(format!("`{s}` mapped to `{t}`"));
                new_rest = format!("{}.{s}", &rest[..dot]);
            }
        }
        if notes.is_empty() {
            return Error::Record { location, field: Some(field), message };
        }
        Error::Record {
            location,
            field: Some(format!("{new_head}{new_rest}")),
            message: format!("{message} ({} by --columns)", notes.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Location;
    use serde_json::json;

    fn map(spec: &str) -> ColumnMap {
        ColumnMap::parse(&[spec]).unwrap()
    }

    #[test]
    fn renames_fields_keys_and_roles() {
        let m = map("instruction=question, output=answer");
        let got = m.apply(&json!({"question": "q", "answer": "a", "id": 3})).unwrap().unwrap();
        assert_eq!(got, json!({"instruction": "q", "output": "a", "id": 3}));
        let m = map("messages=dialog,role=speaker,content=text,user=human,assistant=bot");
        let got = m
            .apply(&json!({"dialog": [{"speaker": "human", "text": "hi"}, {"speaker": "bot", "text": "yo"}]}))
            .unwrap()
            .unwrap();
        assert_eq!(got, json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}));
        assert_eq!(m.apply(&json!({"text": "plain"})).unwrap(), None);
    }

    #[test]
    fn parse_errors_name_the_pair() {
        let e = |s: &str| ColumnMap::parse(&[s]).unwrap_err().to_string();
        assert!(e("instruction").contains("--columns `instruction`: expected PYFT_NAME=YOUR_NAME"));
        assert!(e("question=instruction").contains("unknown name `question`"));
        assert!(e("output=a,output=b").contains("`output` is mapped twice"));
        assert!(e("role=a,role_tag=b").contains("`role_tag` is mapped twice"));
        assert!(e("input=a,output=a").contains("`a` is mapped to two fields"));
    }

    #[test]
    fn conflicts_and_error_names_use_the_files_spelling() {
        let m = map("output=answer");
        assert_eq!(
            m.apply(&json!({"instruction": "i", "answer": "a", "output": "o"})).unwrap_err(),
            (Some("output".into()), "present, and `answer` is also mapped to it by --columns".into())
        );
        let loc = Location { file: "d.jsonl".into(), line: 3 };
        let m = map("instruction=question,messages=dialog,content=text");
        let e = Error::Record { location: loc.clone(), field: Some("instruction".into()), message: "missing".into() };
        assert_eq!(m.explain(e).to_string(), "d.jsonl:3: field `question`: missing (`question` mapped to `instruction` by --columns)");
        let e = Error::Record { location: loc, field: Some("messages[1].content".into()), message: "empty".into() };
        assert_eq!(
            m.explain(e).to_string(),
            "d.jsonl:3: field `dialog[1].text`: empty (`dialog` mapped to `messages`, `text` mapped to `content` by --columns)"
        );
    }
}
