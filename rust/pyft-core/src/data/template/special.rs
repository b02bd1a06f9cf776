//! The special-token strings a chat template sees as variables (`bos_token`,
//! `eos_token`, …), read from `tokenizer_config.json` the way transformers 5 builds
//! `tokenizer.special_tokens_map`.

use serde_json::{Map, Value};

/// The named special tokens transformers always knows, in its order.
const NAMED: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Special-token strings passed to the template as variables, exactly as transformers
/// passes `tokenizer.special_tokens_map`: name (`"eos_token"`) to string (`"</s>"`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    /// Variable name to value; values are normally strings.
    pub map: Map<String, Value>,
}

impl SpecialTokens {
    /// No special tokens: templates see `bos_token` and friends as undefined.
    pub fn new() -> SpecialTokens {
        SpecialTokens::default()
    }

    /// Special tokens from `(name, token)` pairs, e.g. `[("eos_token", "</s>")]`.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> SpecialTokens {
        SpecialTokens {
            map: pairs.into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect(),
        }
    }

    /// Sets `name` to `token`, replacing any earlier value.
    pub fn insert(&mut self, name: impl Into<String>, token: impl Into<String>) {
        self.map.insert(name.into(), Value::String(token.into()));
    }

    /// The token named `name` (`"eos_token"`), if it is set and a string.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).and_then(Value::as_str)
    }

    /// Reads the special tokens of an HF tokenizer directory's `tokenizer_config.json`.
    ///
    /// Like transformers 5's `special_tokens_map`, the result holds:
    /// - the seven named tokens (`bos_token`, `eos_token`, `unk_token`, `sep_token`,
    ///   `pad_token`, `cls_token`, `mask_token`) that are set (not `null`);
    /// - every other `*_token` key whose value is a token (model-specific tokens such as
    ///   `image_token`; booleans like `add_bos_token` are not tokens);
    /// - the entries of `extra_special_tokens` (or, without it, the older
    ///   `additional_special_tokens`) when it is a name-to-token object.
    ///
    /// A token is a string or an AddedToken object (`{"content": "<s>", ...}`). A *list*
    /// of extra special tokens is not passed to templates by transformers 5, so it is
    /// not included here either; see [`SpecialTokens::extra_from_tokenizer_config`].
    pub fn from_tokenizer_config(cfg: &Value) -> SpecialTokens {
        let mut out = SpecialTokens::new();
        let Some(cfg) = cfg.as_object() else {
            return out;
        };
        for name in NAMED {
            if let Some(token) = cfg.get(name).and_then(token_text) {
                out.insert(name, token);
            }
        }
        for (name, value) in cfg {
            if name.ends_with("_token") && !NAMED.contains(&name.as_str()) {
                if let Some(token) = token_text(value) {
                    out.insert(name.as_str(), token);
                }
            }
        }
        if let Some(Value::Object(named)) = extra_entry(cfg) {
            for (name, value) in named {
                if let Some(token) = token_text(value) {
                    out.insert(name.as_str(), token);
                }
            }
        }
        out
    }

    /// The list of extra special tokens of a `tokenizer_config.json`
    /// (`extra_special_tokens`, or the older `additional_special_tokens`), as strings;
    /// empty when it is absent or a name-to-token object.
    pub fn extra_from_tokenizer_config(cfg: &Value) -> Vec<String> {
        match cfg.as_object().and_then(extra_entry) {
            Some(Value::Array(items)) => items.iter().filter_map(token_text).map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }
}

/// `extra_special_tokens` if set (non-empty), else `additional_special_tokens`.
fn extra_entry(cfg: &Map<String, Value>) -> Option<&Value> {
    let set = |v: &&Value| match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    };
    cfg.get("extra_special_tokens")
        .filter(set)
        .or_else(|| cfg.get("additional_special_tokens"))
}

/// A token's text: a string, or the `content` of an AddedToken object.
fn token_text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strings_added_tokens_and_model_specific_tokens() {
        let cfg = serde_json::json!({
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "pad_token": null,
            "add_bos_token": true,
            "image_token": "<image>",
            "additional_special_tokens": ["<a>", {"content": "<b>"}],
        });
        let special = SpecialTokens::from_tokenizer_config(&cfg);
        assert_eq!(special.get("bos_token"), Some("<s>"));
        assert_eq!(special.get("eos_token"), Some("</s>"));
        assert_eq!(special.get("image_token"), Some("<image>"));
        assert_eq!(special.map.len(), 3);
        assert_eq!(SpecialTokens::extra_from_tokenizer_config(&cfg), ["<a>", "<b>"]);
    }

    #[test]
    fn named_extra_tokens_become_variables() {
        let cfg = serde_json::json!({"extra_special_tokens": {"audio_token": "<audio>"}});
        let special = SpecialTokens::from_tokenizer_config(&cfg);
        assert_eq!(special.get("audio_token"), Some("<audio>"));
        assert!(SpecialTokens::extra_from_tokenizer_config(&cfg).is_empty());
    }
}
