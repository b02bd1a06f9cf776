//! Input formats: detection, validation and conversion of raw JSON records into [`Example`]s.
//!
//! Supported (see the README for the exact shapes):
//! - `alpaca`: `instruction`, optional `input`, `output`, optional `system` and `history`
//!   (a list of `[question, answer]` pairs);
//! - `sharegpt`: `conversations` of `{from, value}` (roles human/user, gpt/assistant, system,
//!   tool/observation), optional top-level `system`;
//! - `messages`: `messages` of `{role, content}` (system, user, assistant, tool), optional `tools`;
//!
//! (Either list may hold either kind of turn: the keys of a turn decide how it is read.)
//! - `text`: `text` (continued pre-training);
//! - `preference`: `prompt` (optional when implicit), `chosen`, `rejected`, each a string or a
//!   list of messages;
//! - `kto`: `prompt`, `completion` (string or messages) and a boolean `label`;
//! - `classify`: `text` or `messages` and a `label`: a class name (string) or a class index
//!   (integer >= 0); detected when a record has `label` and `text`/`messages` but no
//!   `prompt`/`completion`.
//!
//! Every validation failure is an [`Error::Record`] naming the file, line and field.

use serde_json::{Map, Value};

use crate::error::{Error, Location, Result};

/// The record formats pyft reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// instruction / input / output.
    Alpaca,
    /// conversations of from / value.
    Sharegpt,
    /// messages of role / content.
    Messages,
    /// plain text for continued pre-training.
    Text,
    /// prompt + chosen + rejected.
    Preference,
    /// prompt + completion + boolean label.
    Kto,
    /// text or messages + class label (sequence classification).
    Classify,
}

impl Format {
    /// All formats, in detection priority order.
    pub const ALL: [Format; 7] = [
        Format::Classify,
        Format::Messages,
        Format::Sharegpt,
        Format::Preference,
        Format::Kto,
        Format::Alpaca,
        Format::Text,
    ];

    /// The format's name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Alpaca => "alpaca",
            Format::Sharegpt => "sharegpt",
            Format::Messages => "messages",
            Format::Text => "text",
            Format::Preference => "preference",
            Format::Kto => "kto",
            Format::Classify => "classify",
        }
    }

    /// Parse a format name.
    pub fn from_name(name: &str) -> Result<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name).ok_or_else(|| {
            Error::Option(format!(
                "unknown format `{name}` (expected one of: {})",
                Format::ALL.map(Format::name).join(", ")
            ))
        })
    }

    /// Guess the format of a record from its keys.
    pub fn detect(record: &Value) -> Option<Format> {
        let obj = record.as_object()?;
        let has = |k: &str| obj.contains_key(k);
        if has("label") && !has("prompt") && !has("completion") && (has("text") || has("messages")) {
            Some(Format::Classify)
        } else if has("messages") {
            Some(Format::Messages)
        } else if has("conversations") {
            Some(Format::Sharegpt)
        } else if has("chosen") && has("rejected") {
            Some(Format::Preference)
        } else if has("completion") && has("label") {
            Some(Format::Kto)
        } else if has("instruction") && has("output") {
            Some(Format::Alpaca)
        } else if has("text") {
            Some(Format::Text)
        } else {
            None
        }
    }

    /// The format that some of a record's keys belong to when [`Format::detect`] finds none (a
    /// record that lacks one required key): `chosen` or `rejected` (preference), `completion` or
    /// `label` (KTO), `instruction` or `output` (alpaca). Its conversion then names the missing key.
    pub fn detect_partial(record: &Value) -> Option<Format> {
        let obj = record.as_object()?;
        let any = |keys: &[&str]| keys.iter().any(|k| obj.contains_key(*k));
        if any(&["chosen", "rejected"]) {
            Some(Format::Preference)
        } else if any(&["label"]) && !any(&["prompt", "completion"]) {
            Some(Format::Classify)
        } else if any(&["completion", "label"]) {
            Some(Format::Kto)
        } else if any(&["instruction", "output"]) {
            Some(Format::Alpaca)
        } else {
            None
        }
    }

    /// The kind of training example this format produces.
    pub fn kind(self) -> ExampleKind {
        match self {
            Format::Alpaca | Format::Sharegpt | Format::Messages => ExampleKind::Chat,
            Format::Text => ExampleKind::Text,
            Format::Preference => ExampleKind::Preference,
            Format::Kto => ExampleKind::Kto,
            Format::Classify => ExampleKind::Classify,
        }
    }
}

/// What an output directory holds; all inputs of one `prepare` call must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExampleKind {
    /// Conversations for supervised fine-tuning.
    Chat,
    /// Plain text for continued pre-training.
    Text,
    /// Paired preferences (DPO, ORPO, SimPO, reward models).
    Preference,
    /// Unpaired binary feedback (KTO).
    Kto,
    /// Labelled sequences (sequence classification).
    Classify,
}

impl ExampleKind {
    /// The name written to `meta.json`.
    pub fn name(self) -> &'static str {
        match self {
            ExampleKind::Chat => "chat",
            ExampleKind::Text => "text",
            ExampleKind::Preference => "preference",
            ExampleKind::Kto => "kto",
            ExampleKind::Classify => "classify",
        }
    }
}

/// A prompt or completion: plain text, or a list of chat messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Plain text, tokenized without a chat template.
    Text(String),
    /// A JSON array of `{role, content, ...}` messages.
    Messages(Value),
}

/// The class of a classified example: a name, or an index into the class list of the training config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClassLabel {
    /// A class name (`"positive"`).
    Name(String),
    /// A class index (`1`).
    Index(u32),
}

impl ClassLabel {
    /// The label as JSON (a string or an integer), as in the input.
    pub fn to_json(&self) -> Value {
        match self {
            ClassLabel::Name(n) => Value::String(n.clone()),
            ClassLabel::Index(i) => Value::from(*i),
        }
    }

    /// `name` or `index`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClassLabel::Name(_) => "name",
            ClassLabel::Index(_) => "index",
        }
    }
}

/// One validated training example.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// A conversation: a JSON array of `{role, content, ...}` objects, plus optional extra
    /// template variables (e.g. `tools`).
    Chat {
        /// The messages, normalized to `role`/`content` keys.
        messages: Value,
        /// Extra template variables from the record (`tools`).
        extra: Option<Map<String, Value>>,
    },
    /// Plain text.
    Text(String),
    /// A preference pair.
    Preference {
        /// The shared prompt.
        prompt: Part,
        /// The preferred completion.
        chosen: Part,
        /// The dispreferred completion.
        rejected: Part,
    },
    /// Unpaired feedback.
    Kto {
        /// The prompt.
        prompt: Part,
        /// The completion.
        completion: Part,
        /// Whether the completion is desirable.
        label: bool,
    },
    /// A sequence with its class.
    Classify {
        /// The text, or the messages (rendered with the chat template, no generation prompt).
        input: Part,
        /// Its class.
        label: ClassLabel,
    },
}

impl Example {
    /// A canonical string for exact-duplicate detection.
    pub fn canonical(&self) -> String {
        fn part(p: &Part) -> Value {
            match p {
                Part::Text(t) => Value::String(t.clone()),
                Part::Messages(m) => m.clone(),
            }
        }
        let v = match self {
            Example::Chat { messages, extra } => serde_json::json!(["chat", messages, extra]),
            Example::Text(t) => serde_json::json!(["text", t]),
            Example::Preference { prompt, chosen, rejected } => {
                serde_json::json!(["pref", part(prompt), part(chosen), part(rejected)])
            }
            Example::Kto { prompt, completion, label } => {
                serde_json::json!(["kto", part(prompt), part(completion), label])
            }
            Example::Classify { input, label } => serde_json::json!(["classify", part(input), label.to_json()]),
        };
        v.to_string()
    }
}

struct Ctx<'a> {
    location: &'a Location,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Record { location: self.location.clone(), field: Some(field.into()), message: message.into() }
    }

    fn err_record(&self, message: impl Into<String>) -> Error {
        Error::Record { location: self.location.clone(), field: None, message: message.into() }
    }

    /// The value at `key`, which must be present; a `null` is returned too, for the caller's type
    /// check to report as "got null" (not "missing", which would send the user looking for a key
    /// that is there).
    fn required<'v>(&self, obj: &'v Map<String, Value>, key: &str) -> Result<&'v Value> {
        obj.get(key).ok_or_else(|| self.err(key, "missing"))
    }

    /// A required, non-blank string at `path`.
    fn text<'v>(&self, v: &'v Value, path: &str) -> Result<&'v str> {
        match v {
            Value::String(s) if s.trim().is_empty() => Err(self.err(path, "empty")),
            Value::String(s) => Ok(s),
            other => Err(self.err(path, format!("expected a string, got {}", json_kind(other)))),
        }
    }

    fn optional_text<'v>(&self, obj: &'v Map<String, Value>, key: &str) -> Result<Option<&'v str>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(key, format!("expected a string, got {}", json_kind(other)))),
        }
    }
}

/// A JSON value's kind as used in messages ("a string", "an array", ...).
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const CHAT_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

fn message(role: &str, content: &str) -> Value {
    serde_json::json!({"role": role, "content": content})
}

/// Convert `record` (read from `location`) in format `format` into an [`Example`].
pub fn convert(record: &Value, format: Format, location: &Location) -> Result<Example> {
    let ctx = Ctx { location };
    let obj = record
        .as_object()
        .ok_or_else(|| ctx.err_record(format!("expected a JSON object, got {}", json_kind(record))))?;
    match format {
        Format::Messages => convert_messages(&ctx, obj),
        Format::Sharegpt => convert_sharegpt(&ctx, obj),
        Format::Alpaca => convert_alpaca(&ctx, obj),
        Format::Text => Ok(Example::Text(ctx.text(ctx.required(obj, "text")?, "text")?.to_string())),
        Format::Preference => convert_preference(&ctx, obj),
        Format::Kto => convert_kto(&ctx, obj),
        Format::Classify => convert_classify(&ctx, obj),
    }
}

/// Validate a list of `{role, content}` messages at `path`; returns the normalized array.
fn validate_messages(ctx: &Ctx, v: &Value, path: &str, need_assistant: bool) -> Result<Value> {
    let items = v.as_array().ok_or_else(|| ctx.err(path, format!("expected a list of messages, got {}", json_kind(v))))?;
    if items.is_empty() {
        return Err(ctx.err(path, "empty"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let obj = m
            .as_object()
            .ok_or_else(|| ctx.err(&here, format!("expected a message object, got {}", json_kind(m))))?;
        let role = match obj.get("role") {
            None => return Err(ctx.err(format!("{here}.role"), "missing")),
            Some(Value::String(r)) => r.as_str(),
            Some(other) => return Err(ctx.err(format!("{here}.role"), format!("expected a string, got {}", json_kind(other)))),
        };
        if !CHAT_ROLES.contains(&role) {
            return Err(ctx.err(
                format!("{here}.role"),
                format!("unknown role `{role}` (expected one of: {})", CHAT_ROLES.join(", ")),
            ));
        }
        let has_tool_calls = obj.get("tool_calls").is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()));
        match obj.get("content") {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            None | Some(Value::Null) if has_tool_calls => {}
            Some(Value::String(_)) if has_tool_calls => {}
            None => return Err(ctx.err(format!("{here}.content"), "missing")),
            Some(Value::String(_)) => return Err(ctx.err(format!("{here}.content"), "empty")),
            Some(other) => {
                return Err(ctx.err(format!("{here}.content"), format!("expected a string, got {}", json_kind(other))))
            }
        }
        out.push(m.clone());
    }
    if need_assistant && !out.iter().any(|m| m["role"] == "assistant") {
        return Err(ctx.err(path, "no assistant turn: nothing to train on"));
    }
    Ok(Value::Array(out))
}

fn convert_messages(ctx: &Ctx, obj: &Map<String, Value>) -> Result<Example> {
    let turns = normalize_turns(ctx, ctx.required(obj, "messages")?, "messages")?;
    let messages = validate_messages(ctx, &turns, "messages", true)?;
    let extra = match obj.get("tools") {
        None | Some(Value::Null) => None,
        Some(tools @ Value::Array(_)) => Some(Map::from_iter([("tools".to_string(), tools.clone())])),
        Some(Value::String(s)) => {
            let parsed: Value = serde_json::from_str(s).map_err(|e| ctx.err("tools", format!("not valid JSON: {e}")))?;
            Some(Map::from_iter([("tools".to_string(), parsed)]))
        }
        Some(other) => return Err(ctx.err("tools", format!("expected a list, got {}", json_kind(other)))),
    };
    Ok(Example::Chat { messages, extra })
}

fn sharegpt_role(from: &str) -> Option<&'static str> {
    match from {
        "human" | "user" => Some("user"),
        "gpt" | "assistant" | "model" => Some("assistant"),
        "system" => Some("system"),
        "tool" | "observation" | "function_response" => Some("tool"),
        _ => None,
    }
}

/// One ShareGPT `{from, value}` turn at `here` as a `{role, content}` message.
fn sharegpt_turn(ctx: &Ctx, t: &Map<String, Value>, here: &str) -> Result<Value> {
    let from_v = t.get("from").ok_or_else(|| ctx.err(format!("{here}.from"), "missing"))?;
    let from = from_v
        .as_str()
        .ok_or_else(|| ctx.err(format!("{here}.from"), format!("expected a string, got {}", json_kind(from_v))))?;
    let role = sharegpt_role(from).ok_or_else(|| {
        ctx.err(
            format!("{here}.from"),
            format!("unknown role `{from}` (expected human, user, gpt, assistant, system, tool or observation)"),
        )
    })?;
    let value = t.get("value").ok_or_else(|| ctx.err(format!("{here}.value"), "missing"))?;
    Ok(message(role, ctx.text(value, &format!("{here}.value"))?))
}

/// The turns of a `messages` or `conversations` list, each either OpenAI-style `{role, content}`
/// (kept as is, checked by [`validate_messages`]) or ShareGPT-style `{from, value}` (converted,
/// with ShareGPT's role names). The keys of a turn decide which, so both lists accept both.
fn normalize_turns(ctx: &Ctx, v: &Value, path: &str) -> Result<Value> {
    let items = v.as_array().ok_or_else(|| ctx.err(path, format!("expected a list of messages, got {}", json_kind(v))))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let obj = t.as_object().ok_or_else(|| ctx.err(&here, format!("expected a message object, got {}", json_kind(t))))?;
        if obj.contains_key("role") {
            out.push(t.clone());
        } else if obj.contains_key("from") {
            out.push(sharegpt_turn(ctx, obj, &here)?);
        } else {
            let keys: Vec<&String> = obj.keys().collect();
            return Err(ctx.err(
                &here,
                format!("no role: expected `role` and `content` (or ShareGPT's `from` and `value`), got keys {keys:?}"),
            ));
        }
    }
    Ok(Value::Array(out))
}

fn convert_sharegpt(ctx: &Ctx, obj: &Map<String, Value>) -> Result<Example> {
    let turns = normalize_turns(ctx, ctx.required(obj, "conversations")?, "conversations")?;
    let mut messages = Vec::new();
    if let Some(system) = ctx.optional_text(obj, "system")? {
        if !system.trim().is_empty() {
            messages.push(message("system", system));
        }
    }
    let had_system = messages.len();
    let turns = validate_messages(ctx, &turns, "conversations", false)?;
    messages.extend(turns.as_array().expect("validated").iter().cloned());
    if !messages[had_system..].iter().any(|m| m["role"] == "assistant") {
        return Err(ctx.err("conversations", "no assistant turn (`gpt`): nothing to train on"));
    }
    Ok(Example::Chat { messages: Value::Array(messages), extra: None })
}

fn convert_alpaca(ctx: &Ctx, obj: &Map<String, Value>) -> Result<Example> {
    let instruction = ctx.text(ctx.required(obj, "instruction")?, "instruction")?;
    let input = ctx.optional_text(obj, "input")?.unwrap_or("");
    let output = ctx.text(ctx.required(obj, "output")?, "output")?;
    let mut messages = Vec::new();
    if let Some(system) = ctx.optional_text(obj, "system")? {
        if !system.trim().is_empty() {
            messages.push(message("system", system));
        }
    }
    if let Some(history) = obj.get("history").filter(|h| !h.is_null()) {
        let pairs = history.as_array().ok_or_else(|| ctx.err("history", "expected a list of [question, answer] pairs"))?;
        for (i, pair) in pairs.iter().enumerate() {
            let here = format!("history[{i}]");
            let qa = pair.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
                ctx.err(&here, "expected a [question, answer] pair")
            })?;
            messages.push(message("user", ctx.text(&qa[0], &format!("{here}[0]"))?));
            messages.push(message("assistant", ctx.text(&qa[1], &format!("{here}[1]"))?));
        }
    }
    // Chat templates see the instruction and input joined by a newline (as LLaMA-Factory does);
    // the built-in `alpaca` template reads the two parts to render the Stanford Alpaca prompt.
    if input.trim().is_empty() {
        messages.push(message("user", instruction));
    } else {
        messages.push(serde_json::json!({"role": "user", "content": format!("{instruction}\n{input}"),
                                         "instruction": instruction, "input": input}));
    }
    messages.push(message("assistant", output));
    Ok(Example::Chat { messages: Value::Array(messages), extra: None })
}

/// A prompt or completion that may be a string or a list of messages.
fn part(ctx: &Ctx, obj: &Map<String, Value>, key: &str, need_assistant: bool) -> Result<Part> {
    let v = ctx.required(obj, key)?;
    match v {
        Value::String(_) => Ok(Part::Text(ctx.text(v, key)?.to_string())),
        Value::Array(_) => Ok(Part::Messages(validate_messages(ctx, v, key, need_assistant)?)),
        other => Err(ctx.err(key, format!("expected a string or a list of messages, got {}", json_kind(other)))),
    }
}

fn convert_preference(ctx: &Ctx, obj: &Map<String, Value>) -> Result<Example> {
    let chosen = part(ctx, obj, "chosen", false)?;
    let rejected = part(ctx, obj, "rejected", false)?;
    let (prompt, chosen, rejected) = match obj.get("prompt").filter(|p| !p.is_null()) {
        Some(_) => (part(ctx, obj, "prompt", false)?, chosen, rejected),
        None => split_implicit_prompt(ctx, chosen, rejected)?,
    };
    match (&prompt, &chosen, &rejected) {
        (Part::Text(_), Part::Text(_), Part::Text(_)) | (Part::Messages(_), Part::Messages(_), Part::Messages(_)) => {}
        _ => return Err(ctx.err_record("`prompt`, `chosen` and `rejected` must all be strings or all be message lists")),
    }
    if chosen == rejected {
        return Err(ctx.err("rejected", "identical to `chosen`: the pair carries no preference"));
    }
    for (key, p) in [("chosen", &chosen), ("rejected", &rejected)] {
        if let Part::Messages(m) = p {
            if !m.as_array().is_some_and(|a| a.iter().any(|m| m["role"] == "assistant")) {
                return Err(ctx.err(key, "no assistant message: empty completion"));
            }
        }
    }
    Ok(Example::Preference { prompt, chosen, rejected })
}

/// TRL's implicit-prompt convention: the longest common leading run of messages is the prompt.
fn split_implicit_prompt(ctx: &Ctx, chosen: Part, rejected: Part) -> Result<(Part, Part, Part)> {
    let (Part::Messages(c), Part::Messages(r)) = (&chosen, &rejected) else {
        return Err(ctx.err("prompt", "missing (an implicit prompt needs `chosen` and `rejected` as message lists)"));
    };
    let (c, r) = (c.as_array().expect("validated"), r.as_array().expect("validated"));
    let common = c.iter().zip(r).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return Err(ctx.err("prompt", "missing, and `chosen` and `rejected` share no leading messages"));
    }
    let prompt = Value::Array(c[..common].to_vec());
    let (c_rest, r_rest) = (&c[common..], &r[common..]);
    if c_rest.is_empty() {
        return Err(ctx.err("chosen", "empty completion after the shared prompt"));
    }
    if r_rest.is_empty() {
        return Err(ctx.err("rejected", "empty completion after the shared prompt"));
    }
    Ok((Part::Messages(prompt), Part::Messages(Value::Array(c_rest.to_vec())), Part::Messages(Value::Array(r_rest.to_vec()))))
}

fn convert_kto(ctx: &Ctx, obj: &Map<String, Value>) -> Result<Example> {
    let prompt = part(ctx, obj, "prompt", false)?;
    let completion = part(ctx, obj, "completion", false)?;
    let label = match ctx.required(obj, "label")? {
        Value::Bool(b) => *b,
        other => return Err(ctx.err("label", format!("expected true or false, got {other}"))),
    };
    if matches!(&prompt, Part::Text(_)) != matches!(&completion, Part::Text(_)) {
        return Err(ctx.err_record("`prompt` and `completion` must both be strings or both be message lists"));
    }
    if let Part::Messages(m) = &completion {
        if !m.as_array().is_some_and(|a| a.iter().any(|m| m["role"] == "assistant")) {
            return Err(ctx.err("completion", "no assistant message: empty completion"));
        }
    }
    Ok(Example::Kto { prompt, completion, label })
}

fn convert_classify(ctx: &Ctx, obj: &Map<String, Value>) -> Result<Example> {
    let present = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let input = match (present("text"), present("messages")) {
        (true, true) => return Err(ctx.err_record("has both `text` and `messages`; a classified example is one of them")),
        (false, true) => {
            let turns = normalize_turns(ctx, &obj["messages"], "messages")?;
            Part::Messages(validate_messages(ctx, &turns, "messages", false)?)
        }
        (true, false) => Part::Text(ctx.text(&obj["text"], "text")?.to_string()),
        (false, false) => return Err(ctx.err("text", "missing (a classified example has `text` or `messages`)")),
    };
    let label = match ctx.required(obj, "label")? {
        Value::String(s) if s.trim().is_empty() => return Err(ctx.err("label", "empty")),
        Value::String(s) => ClassLabel::Name(s.clone()),
        Value::Number(n) if n.as_u64().is_some_and(|i| i <= u64::from(u32::MAX)) => {
            ClassLabel::Index(n.as_u64().expect("checked") as u32)
        }
        other => {
            return Err(ctx.err(
                "label",
                format!("expected a class name (a string) or a class index (an integer >= 0), got {other}"),
            ))
        }
    };
    Ok(Example::Classify { input, label })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn loc() -> Location {
        Location { file: "d.jsonl".into(), line: 7 }
    }

    fn err(v: Value, f: Format) -> String {
        convert(&v, f, &loc()).unwrap_err().to_string()
    }

    #[test]
    fn detects_formats() {
        assert_eq!(Format::detect(&json!({"messages": []})), Some(Format::Messages));
        assert_eq!(Format::detect(&json!({"conversations": []})), Some(Format::Sharegpt));
        assert_eq!(Format::detect(&json!({"instruction": "a", "output": "b"})), Some(Format::Alpaca));
        assert_eq!(Format::detect(&json!({"prompt": "a", "chosen": "b", "rejected": "c"})), Some(Format::Preference));
        assert_eq!(Format::detect(&json!({"prompt": "a", "completion": "b", "label": true})), Some(Format::Kto));
        assert_eq!(Format::detect(&json!({"text": "a"})), Some(Format::Text));
        assert_eq!(Format::detect(&json!({"foo": "a"})), None);
        assert_eq!(Format::detect_partial(&json!({"prompt": "a", "chosen": "b"})), Some(Format::Preference));
        assert_eq!(Format::detect_partial(&json!({"prompt": "a", "completion": "b"})), Some(Format::Kto));
        assert_eq!(Format::detect_partial(&json!({"output": "b"})), Some(Format::Alpaca));
        assert_eq!(Format::detect_partial(&json!({"prompt": "a"})), None);
    }

    #[test]
    fn alpaca_becomes_messages() {
        let ex = convert(
            &json!({"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be brief.",
                    "history": [["hi", "hello"]]}),
            Format::Alpaca,
            &loc(),
        )
        .unwrap();
        let Example::Chat { messages, .. } = ex else { panic!() };
        assert_eq!(
            messages,
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "hello"},
                   {"role": "user", "content": "Add\n2 and 3", "instruction": "Add", "input": "2 and 3"},
                   {"role": "assistant", "content": "5"}])
        );
        let Example::Chat { messages, .. } =
            convert(&json!({"instruction": "Add", "input": " ", "output": "5"}), Format::Alpaca, &loc()).unwrap()
        else {
            panic!()
        };
        assert_eq!(messages[0], json!({"role": "user", "content": "Add"}));
    }

    #[test]
    fn either_turn_style_in_either_list() {
        let openai = json!([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]);
        let sharegpt = json!([{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]);
        for (key, format) in [("conversations", Format::Sharegpt), ("messages", Format::Messages)] {
            for turns in [&openai, &sharegpt] {
                let Example::Chat { messages, .. } = convert(&json!({key: turns}), format, &loc()).unwrap() else { panic!() };
                assert_eq!(messages, openai, "{key}: {turns}");
            }
        }
        let ex = convert(&json!({"system": "S", "conversations": openai}), Format::Sharegpt, &loc()).unwrap();
        let Example::Chat { messages, .. } = ex else { panic!() };
        assert_eq!(messages[0], json!({"role": "system", "content": "S"}));
        // role/content turns keep OpenAI's role names; from/value turns ShareGPT's.
        assert_eq!(
            err(json!({"conversations": [{"role": "human", "content": "Q"}]}), Format::Sharegpt),
            "d.jsonl:7: field `conversations[0].role`: unknown role `human` (expected one of: system, user, assistant, tool)"
        );
        assert_eq!(
            err(json!({"conversations": [{"speaker": "human", "text": "Q"}]}), Format::Sharegpt),
            "d.jsonl:7: field `conversations[0]`: no role: expected `role` and `content` (or ShareGPT's `from` and \
             `value`), got keys [\"speaker\", \"text\"]"
        );
        assert_eq!(
            err(json!({"conversations": [{"from": "human", "value": "Q"}]}), Format::Sharegpt),
            "d.jsonl:7: field `conversations`: no assistant turn (`gpt`): nothing to train on"
        );
    }

    #[test]
    fn sharegpt_roles_map() {
        let ex = convert(
            &json!({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}),
            Format::Sharegpt,
            &loc(),
        )
        .unwrap();
        let Example::Chat { messages, .. } = ex else { panic!() };
        assert_eq!(messages[2], json!({"role": "assistant", "content": "A"}));
    }

    #[test]
    fn validation_messages_name_file_line_field() {
        assert_eq!(
            err(json!({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}), Format::Messages),
            "d.jsonl:7: field `messages[1].role`: unknown role `bot` (expected one of: system, user, assistant, tool)"
        );
        assert_eq!(
            err(json!({"messages": [{"role": "user", "content": "hi"}]}), Format::Messages),
            "d.jsonl:7: field `messages`: no assistant turn: nothing to train on"
        );
        assert_eq!(
            err(json!({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}), Format::Messages),
            "d.jsonl:7: field `messages[0].content`: empty"
        );
        assert_eq!(err(json!({"instruction": "x"}), Format::Alpaca), "d.jsonl:7: field `output`: missing");
        assert_eq!(
            err(json!({"conversations": [{"from": "robot", "value": "x"}]}), Format::Sharegpt),
            "d.jsonl:7: field `conversations[0].from`: unknown role `robot` (expected human, user, gpt, assistant, system, tool or observation)"
        );
        assert_eq!(err(json!({"text": 3}), Format::Text), "d.jsonl:7: field `text`: expected a string, got a number");
        assert_eq!(err(json!([1]), Format::Text), "d.jsonl:7: expected a JSON object, got an array");
    }

    #[test]
    fn preference_checks() {
        assert_eq!(
            err(json!({"prompt": "p", "chosen": "same", "rejected": "same"}), Format::Preference),
            "d.jsonl:7: field `rejected`: identical to `chosen`: the pair carries no preference"
        );
        assert_eq!(err(json!({"prompt": "p", "chosen": "", "rejected": "r"}), Format::Preference), "d.jsonl:7: field `chosen`: empty");
        assert_eq!(err(json!({"prompt": "p", "chosen": "c"}), Format::Preference), "d.jsonl:7: field `rejected`: missing");
        let implicit = convert(
            &json!({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
                    "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]}),
            Format::Preference,
            &loc(),
        )
        .unwrap();
        let Example::Preference { prompt, chosen, .. } = implicit else { panic!() };
        assert_eq!(prompt, Part::Messages(json!([{"role": "user", "content": "q"}])));
        assert_eq!(chosen, Part::Messages(json!([{"role": "assistant", "content": "good"}])));
    }

    #[test]
    fn null_is_reported_as_null_not_missing() {
        let user = json!({"role": "user", "content": "q"});
        assert_eq!(
            err(json!({"messages": [user, {"role": "assistant", "content": null}]}), Format::Messages),
            "d.jsonl:7: field `messages[1].content`: expected a string, got null"
        );
        assert_eq!(
            err(json!({"messages": [{"role": null, "content": "q"}]}), Format::Messages),
            "d.jsonl:7: field `messages[0].role`: expected a string, got null"
        );
        assert_eq!(
            err(json!({"instruction": "i", "output": null}), Format::Alpaca),
            "d.jsonl:7: field `output`: expected a string, got null"
        );
        assert_eq!(
            err(json!({"prompt": "p", "chosen": "c", "rejected": null}), Format::Preference),
            "d.jsonl:7: field `rejected`: expected a string or a list of messages, got null"
        );
        assert_eq!(err(json!({"messages": null}), Format::Messages), "d.jsonl:7: field `messages`: expected a list of messages, got null");
        assert_eq!(err(json!({"text": null}), Format::Text), "d.jsonl:7: field `text`: expected a string, got null");
        // Absent stays "missing"; a null content next to tool calls is fine.
        assert_eq!(
            err(json!({"messages": [user, {"role": "assistant"}]}), Format::Messages),
            "d.jsonl:7: field `messages[1].content`: missing"
        );
        let call = json!({"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f"}}]});
        let answer = json!({"role": "assistant", "content": "a"});
        assert!(convert(&json!({"messages": [user, call, answer]}), Format::Messages, &loc()).is_ok());
    }

    #[test]
    fn classify_is_detected_and_converted() {
        assert_eq!(Format::detect(&json!({"text": "a", "label": "pos"})), Some(Format::Classify));
        assert_eq!(Format::detect(&json!({"messages": [], "label": 1})), Some(Format::Classify));
        assert_eq!(Format::detect(&json!({"prompt": "a", "completion": "b", "label": true})), Some(Format::Kto));
        assert_eq!(Format::detect(&json!({"text": "a"})), Some(Format::Text));
        assert_eq!(Format::detect_partial(&json!({"sentence": "a", "label": 0})), Some(Format::Classify));
        let ex = convert(&json!({"text": "good", "label": "pos"}), Format::Classify, &loc()).unwrap();
        assert_eq!(ex, Example::Classify { input: Part::Text("good".into()), label: ClassLabel::Name("pos".into()) });
        let ex = convert(&json!({"messages": [{"role": "user", "content": "hi"}], "label": 2}), Format::Classify, &loc())
            .unwrap();
        assert!(matches!(ex, Example::Classify { input: Part::Messages(_), label: ClassLabel::Index(2) }));
        assert_eq!(
            err(json!({"text": "t", "label": 1.5}), Format::Classify),
            "d.jsonl:7: field `label`: expected a class name (a string) or a class index (an integer >= 0), got 1.5"
        );
        assert_eq!(
            err(json!({"text": "t", "label": -1}), Format::Classify),
            "d.jsonl:7: field `label`: expected a class name (a string) or a class index (an integer >= 0), got -1"
        );
        assert_eq!(err(json!({"text": "t", "label": " "}), Format::Classify), "d.jsonl:7: field `label`: empty");
        assert_eq!(err(json!({"text": "t"}), Format::Classify), "d.jsonl:7: field `label`: missing");
        assert_eq!(
            err(json!({"label": "x"}), Format::Classify),
            "d.jsonl:7: field `text`: missing (a classified example has `text` or `messages`)"
        );
        assert!(ClassLabel::Name("b".into()) > ClassLabel::Name("a".into()));
        assert!(ClassLabel::Index(10) > ClassLabel::Index(9));
    }

    #[test]
    fn kto_label_must_be_boolean() {
        assert_eq!(
            err(json!({"prompt": "p", "completion": "c", "label": "yes"}), Format::Kto),
            "d.jsonl:7: field `label`: expected true or false, got \"yes\""
        );
        assert!(convert(&json!({"prompt": "p", "completion": "c", "label": false}), Format::Kto, &loc()).is_ok());
    }
}
