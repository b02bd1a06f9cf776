//! HF-style Jinja chat templates, rendered like transformers'
//! `apply_chat_template(..., tokenize=False)`.
//!
//! A [`ChatTemplate`] is compiled once (into its own minijinja environment, set up as
//! transformers sets up Jinja2) and then rendered from any number of threads. Rendering
//! passes the variables transformers passes: `messages`, `tools`, `documents`,
//! `add_generation_prompt`, the special tokens and any extra keyword variables.
//! `{% generation %}` blocks are supported: [`Rendered::generation_spans`] holds the
//! byte ranges they produced, which is what `return_assistant_tokens_mask` is built
//! from.
//!
//! Every render is bounded ([`limits`]): at most 10 million steps and 16 MiB of text per
//! conversation, so a template cannot run forever or fill memory by printing.
//!
//! Differences from Jinja2 that remain are listed in the [`ChatTemplate`] docs.

mod builtins;
mod env;
mod generation;
mod limits;
mod markup;
mod pyjson;
pub(crate) mod pyrepr;
mod pystr;
mod special;
mod strftime;

use std::ops::Range;
use std::path::Path;

use minijinja::Environment;
use serde_json::{Map, Value};

pub use special::SpecialTokens;

use crate::data::formats::json_kind;
use crate::error::{Error, Result};

/// The name the template is stored under in its environment (appears nowhere else).
const NAME: &str = "chat_template";

/// Message keys transformers copies a message's reasoning between (the first set one
/// wins): templates read `reasoning_content`, gpt-oss templates read `thinking`.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// A compiled chat template. Cheap to render, `Send + Sync`.
///
/// Jinja2 features that behave differently here (all rare in chat templates; the
/// reference cases in `tests/data/template_cases.json` pass exactly):
/// - `str ~ value` and `"{}".format(value)` spell lists, dicts and floats outside
///   `-4 ≤ exponent < 16` the minijinja way (`["a"]`, `0.00001`); printing with
///   `{{ value }}`, `|string` and `|join` uses Python's spelling (`['a']`, `1e-05`).
///   Tuples (`(1, 2)`, `d.items()`) are lists here and print as such; namespaces
///   print as dicts.
/// - Not available: Python's `%` string formatting, the `cycler`, `joiner` and
///   `lipsum` globals, `dict.fromkeys`, the filters `truncate`, `wordcount`,
///   `wordwrap`, `center`, `filesizeformat`, `striptags`, `xmlattr`, `urlize`,
///   `forceescape`, `random`, and string methods other than those in `pystr.rs` and
///   minijinja-contrib's pycompat (e.g. `zfill`, `ljust`, `center`, `expandtabs`).
/// - transformers' refusal of `_`-prefixed namespace attributes is not enforced
///   (it guards Python internals that do not exist here).
/// - Iterating over `none` (`{% for part in message.content %}` with a null content)
///   yields nothing; Jinja2 fails with "'NoneType' object is not iterable".
/// - Jinja2's `Markup` strings (`x|safe`, `x|escape`) HTML-escape the other operand
///   of `+` (`'a'|safe + value` escapes `value`), which minijinja does not. A template
///   that combines `+` with those filters is refused for every conversation that reaches
///   them (functionary-medium-v3.1 with tools; its plain chats render identically).
/// - `map`, `select`, `reject`, ... give lists; Jinja2 gives generators, which
///   transformers' `tojson` cannot serialize (it fails where pyft renders the list).
/// - `x|attr(name)` also finds dict keys (Jinja2's only finds attributes, so on a
///   message dict it gives undefined).
/// - `strftime_now` uses UTC, not the local time zone.
/// - JSON integers beyond 64 bits arrive as floats.
/// - A `{% generation %}` block whose output is captured before it is written (`{% set
///   %}` blocks, a macro whose result is filtered or concatenated) is tracked where its
///   text finally lands; transformers records the output length at the time the block
///   ran, which is off in those cases. Nested generation blocks are an error.
/// - The rewrite of `{% generation %}` tags is textual, so the tag is also rewritten
///   inside `{% raw %}` blocks.
/// - `continue_final_message` is not a render option (trim the rendered text instead).
/// - A render stops with an error after 10 million steps or 16 MiB of text (Jinja2 has no
///   bound); the real templates tested use a few thousand steps.
pub struct ChatTemplate {
    source: String,
    /// What the template is, for errors: its file, "the tokenizer's chat_template (...)", ...
    name: String,
    env: Environment<'static>,
    generation: bool,
    /// The source combines `+` with `|safe`/`|escape` (see [`markup`]): renders that reach those
    /// filters are refused.
    markup_plus: bool,
}

/// The output of [`ChatTemplate::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The rendered conversation.
    pub text: String,
    /// Byte ranges into `text` covered by `{% generation %}...{% endgeneration %}`
    /// blocks, in order (empty if the template has no markers).
    pub generation_spans: Vec<Range<usize>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("source_bytes", &self.source.len())
            .field("generation", &self.generation)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template, named "the chat template" in errors (see
    /// [`ChatTemplate::with_name`]).
    ///
    /// Errors ([`Error::Template`]) on syntax errors, naming the line, and on sources
    /// holding U+FDD0 or U+FDD1 (reserved to track generation blocks); a panic in minijinja
    /// while compiling is reported as a malformed template.
    pub fn new(source: &str) -> Result<ChatTemplate> {
        let malformed = |panic: &str| Error::Template(format!("malformed template (minijinja failed: {panic})"));
        crate::guard::catch(malformed, || ChatTemplate::compile(source))
    }

    fn compile(source: &str) -> Result<ChatTemplate> {
        if let Some(line) = source
            .lines()
            .position(|l| l.contains([generation::OPEN, generation::CLOSE]))
        {
            return Err(Error::Template(format!(
                "the template holds a reserved character U+FDD0 or U+FDD1 (line {})",
                line + 1
            )));
        }
        // Jinja2 writes every newline of the template (`\r\n`, `\r`, `\n`) as `\n`.
        let normalized = if source.contains('\r') {
            std::borrow::Cow::Owned(source.replace("\r\n", "\n").replace('\r', "\n"))
        } else {
            std::borrow::Cow::Borrowed(source)
        };
        let generation = generation::has_markers(&normalized);
        let rewritten = generation::rewrite(&normalized).into_owned();
        let mut env = env::build();
        let markup_plus = markup::has_markup_arithmetic(&normalized);
        if markup_plus {
            markup::track(&mut env);
        }
        env.add_template_owned(NAME, rewritten.clone())
            .map_err(|e| template_error(&e, Some(&rewritten)))?;
        Ok(ChatTemplate {
            source: source.to_owned(),
            name: "the chat template".to_owned(),
            env,
            generation,
            markup_plus,
        })
    }

    /// The same template, named `name` in errors about rendering it (its file, "the
    /// tokenizer's chat_template", ...).
    pub fn with_name(mut self, name: impl Into<String>) -> ChatTemplate {
        self.name = name.into();
        self
    }

    /// What the template is called in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The built-in template `name` (see [`ChatTemplate::builtin_names`]).
    pub fn builtin(name: &str) -> Result<ChatTemplate> {
        let source = ChatTemplate::builtin_source(name).ok_or_else(|| {
            Error::Template(format!(
                "unknown built-in template `{name}` (known: {})",
                builtins::NAMES.join(", ")
            ))
        })?;
        Ok(ChatTemplate::new(source)?.with_name(format!("the built-in template `{name}`")))
    }

    /// The Jinja file `path`, named by its path in errors; compile errors name it too.
    pub fn from_file(path: &Path) -> Result<ChatTemplate> {
        compile_named(&read(path)?, &path.display().to_string())
    }

    /// Names of the built-in templates: chatml, llama3, alpaca, mistral, gemma, zephyr.
    pub fn builtin_names() -> &'static [&'static str] {
        &builtins::NAMES
    }

    /// The Jinja source of the built-in template `name`.
    pub fn builtin_source(name: &str) -> Option<&'static str> {
        builtins::source(name)
    }

    /// The chat template of an HF tokenizer directory, found as transformers finds it:
    /// `chat_template.jinja` (plus named ones in `chat_templates/*.jinja`) if present,
    /// else `chat_template` in `tokenizer_config.json` (a string, or a list of
    /// `{name, template}`). With several named templates, the one named `default` is
    /// used; there being none is an error. `Ok(None)` when the directory has no template.
    ///
    /// Errors name the template by its file, or as "the tokenizer's chat_template
    /// (`DIR/tokenizer_config.json`)". A template file that is there but not a regular file
    /// (a FIFO, a device) is an error, not skipped.
    pub fn from_tokenizer_dir(dir: &Path) -> Result<Option<ChatTemplate>> {
        // (template name, source, what errors call it)
        let mut named: Vec<(String, String, String)> = Vec::new();
        let main = dir.join("chat_template.jinja");
        if main.exists() {
            named.push(("default".into(), read(&main)?, main.display().to_string()));
        }
        let extra_dir = dir.join("chat_templates");
        if extra_dir.is_dir() {
            let entries = std::fs::read_dir(&extra_dir).map_err(|e| Error::io(&extra_dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| Error::io(&extra_dir, e))?.path();
                if let Some(stem) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".jinja"))
                {
                    named.push((stem.to_owned(), read(&path)?, path.display().to_string()));
                }
            }
        }
        if named.is_empty() {
            let cfg_path = dir.join("tokenizer_config.json");
            if !cfg_path.exists() {
                return Ok(None);
            }
            let cfg: Value = serde_json::from_str(&read(&cfg_path)?).map_err(|e| Error::File {
                path: cfg_path.clone(),
                message: format!("invalid json: {e}"),
            })?;
            let label = format!("the tokenizer's chat_template ({})", cfg_path.display());
            match cfg.get("chat_template") {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::String(s)) => return compile_named(s, &label).map(Some),
                Some(Value::Array(items)) => {
                    for item in items {
                        match (
                            item.get("name").and_then(Value::as_str),
                            item.get("template").and_then(Value::as_str),
                        ) {
                            (Some(n), Some(t)) => named.push((
                                n.to_owned(),
                                t.to_owned(),
                                format!("the tokenizer's chat_template `{n}` ({})", cfg_path.display()),
                            )),
                            _ => {
                                return Err(Error::File {
                                    path: cfg_path,
                                    message: "`chat_template` list entries must be {\"name\": ..., \"template\": ...}"
                                        .into(),
                                })
                            }
                        }
                    }
                }
                Some(_) => {
                    return Err(Error::File {
                        path: cfg_path,
                        message: "`chat_template` must be a string or a list of {name, template}".into(),
                    })
                }
            }
        }
        match named.iter().rev().find(|(n, _, _)| n == "default") {
            Some((_, src, label)) => compile_named(src, label).map(Some),
            None => {
                let mut names: Vec<&str> = named.iter().map(|(n, _, _)| n.as_str()).collect();
                names.sort_unstable();
                Err(Error::Template(format!(
                    "{} has several chat templates and none named `default` (names: {})",
                    dir.display(),
                    names.join(", ")
                )))
            }
        }
    }

    /// The Jinja source as given (before the generation-tag rewrite).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template has `{% generation %}` blocks.
    pub fn has_generation_markers(&self) -> bool {
        self.generation
    }

    /// Renders a conversation.
    ///
    /// Args:
    ///     messages: JSON array of message objects (`role`, `content` and any other
    ///         keys such as `tool_calls`).
    ///     add_generation_prompt: passed to the template as `add_generation_prompt`.
    ///     special: the special tokens, passed as variables (`bos_token`, …).
    ///     extra: more variables (`tools`, `documents`, custom kwargs), overriding the
    ///         special tokens; `tools` and `documents` are `none` unless given here.
    ///
    /// Returns: the text and the byte spans of `{% generation %}` blocks.
    ///
    /// Raises: [`Error::Template`] when `messages` is not an array of objects, `extra`
    /// sets `messages` or `add_generation_prompt`, the template fails (the message of
    /// `raise_exception`, or minijinja's, with the template line), the render runs into one
    /// of its [`limits`] (naming the template and the limit), or, for templates with
    /// generation blocks, an input string holds U+FDD0 or U+FDD1; a panic in minijinja
    /// (e.g. `seq[::-1]` on an empty list in minijinja 2.24) is reported as this template
    /// failing on this conversation.
    pub fn render(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
        special: &SpecialTokens,
        extra: Option<&Map<String, Value>>,
    ) -> Result<Rendered> {
        let failed = |panic: &str| {
            Error::Template(format!("{} failed on this conversation (minijinja failed: {panic})", self.name))
        };
        crate::guard::catch(failed, || self.render_unguarded(messages, add_generation_prompt, special, extra))
    }

    fn render_unguarded(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
        special: &SpecialTokens,
        extra: Option<&Map<String, Value>>,
    ) -> Result<Rendered> {
        let messages = prepare_messages(messages)?;
        if self.generation {
            check_reserved(&messages, special, extra)?;
        }
        let mut ctx: Vec<(&str, minijinja::Value)> = Vec::with_capacity(special.map.len() + 8);
        for (k, v) in &special.map {
            ctx.push((k, minijinja::Value::from_serialize(v)));
        }
        let (mut tools, mut documents) = (minijinja::Value::from(()), minijinja::Value::from(()));
        for (k, v) in extra.into_iter().flatten() {
            match k.as_str() {
                "messages" | "add_generation_prompt" => {
                    return Err(Error::Template(format!("extra variable `{k}` is set by render itself")))
                }
                "tools" => tools = minijinja::Value::from_serialize(v),
                "documents" => documents = minijinja::Value::from_serialize(v),
                _ => ctx.push((k, minijinja::Value::from_serialize(v))),
            }
        }
        ctx.push(("messages", minijinja::Value::from_serialize(&*messages)));
        ctx.push(("tools", tools));
        ctx.push(("documents", documents));
        ctx.push(("add_generation_prompt", minijinja::Value::from(add_generation_prompt)));
        let ctx: minijinja::Value = ctx.into_iter().collect();

        let template = self.env.get_template(NAME).map_err(|e| template_error(&e, None))?;
        let mut out = limits::Output::default();
        limits::start();
        let captured = template.render_captured_to(ctx, &mut out).map_err(|e| {
            let limit = if out.full { Some(limits::Limit::Text) } else { limits::hit(&e) };
            match limit {
                Some(limit) => Error::Template(format!("{} {limit}", self.name)),
                None => template_error(&e, Some(template.source())),
            }
        })?;
        if self.markup_plus && markup::ran(captured.state()) {
            return Err(Error::Template(markup::REFUSAL.to_owned()));
        }
        let raw = String::from_utf8(out.bytes).expect("minijinja writes UTF-8 text");
        if !self.generation {
            return Ok(Rendered {
                text: raw,
                generation_spans: Vec::new(),
            });
        }
        let (text, generation_spans) = generation::extract(raw).map_err(Error::Template)?;
        Ok(Rendered { text, generation_spans })
    }
}

/// Reads a whole template or config file (a regular file: a FIFO would block, a device never end).
fn read(path: &Path) -> Result<String> {
    crate::io::file::read_to_string(path)
}

/// Compiles `source`, named `label` in errors (compile errors start with it too).
fn compile_named(source: &str, label: &str) -> Result<ChatTemplate> {
    let template = ChatTemplate::new(source).map_err(|e| match e {
        Error::Template(m) => Error::Template(format!("{label}: {m}")),
        other => other,
    })?;
    Ok(template.with_name(label))
}

/// Checks that `messages` is an array of objects and applies transformers' reasoning
/// aliasing: a message with `reasoning_content`, `thinking` or `reasoning` set gets
/// `thinking` (first, unless present) and `reasoning_content` (last, unless present)
/// set to it. Borrows when no message needs that.
fn prepare_messages(messages: &Value) -> Result<std::borrow::Cow<'_, Value>> {
    let items = messages
        .as_array()
        .ok_or_else(|| Error::Template(format!("messages must be a json array, not {}", json_kind(messages))))?;
    let mut needs_alias = false;
    for (i, m) in items.iter().enumerate() {
        let obj = m
            .as_object()
            .ok_or_else(|| Error::Template(format!("messages[{i}] must be a json object, not {}", json_kind(m))))?;
        needs_alias |= reasoning_of(obj).is_some();
    }
    if !needs_alias {
        return Ok(std::borrow::Cow::Borrowed(messages));
    }
    let aliased = items
        .iter()
        .map(|m| {
            let obj = m.as_object().expect("checked above");
            match reasoning_of(obj) {
                None => m.clone(),
                Some(r) => {
                    let mut out = Map::with_capacity(obj.len() + 2);
                    out.insert("thinking".into(), r.clone());
                    for (k, v) in obj {
                        out.insert(k.clone(), v.clone());
                    }
                    out.insert("reasoning_content".into(), r.clone());
                    Value::Object(out)
                }
            }
        })
        .collect();
    Ok(std::borrow::Cow::Owned(Value::Array(aliased)))
}

/// The first of the reasoning fields that is set (not null).
fn reasoning_of(obj: &Map<String, Value>) -> Option<&Value> {
    REASONING_FIELDS
        .iter()
        .find_map(|k| obj.get(*k).filter(|v| !v.is_null()))
}

/// Rejects inputs holding the generation-marker characters, naming the first culprit
/// by its JSON path (`messages[2].content`, `eos_token`, `tools[0].function.name`).
fn check_reserved(messages: &Value, special: &SpecialTokens, extra: Option<&Map<String, Value>>) -> Result<()> {
    let culprit = |path: String| {
        Err(Error::Template(format!(
            "`{path}` holds a reserved character U+FDD0 or U+FDD1 (used to track generation blocks)"
        )))
    };
    let mut path = String::from("messages");
    if generation::find_reserved(messages, &mut path) {
        return culprit(path);
    }
    for (name, value) in special.map.iter().chain(extra.into_iter().flatten()) {
        let mut path = name.clone();
        if name.contains([generation::OPEN, generation::CLOSE]) || generation::find_reserved(value, &mut path) {
            return culprit(path);
        }
    }
    Ok(())
}

/// A minijinja error as [`Error::Template`]: the `raise_exception` message, or
/// minijinja's description with the failing expression from `source`; then the
/// template line when known.
fn template_error(err: &minijinja::Error, source: Option<&str>) -> Error {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(raised) = e.downcast_ref::<env::Raised>() {
            let line = err.line().map(|l| format!(" (line {l})")).unwrap_or_default();
            return Error::Template(format!("{}{line}", raised.0));
        }
        cur = e.source();
    }
    let mut msg = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    let snippet = err
        .range()
        .zip(source)
        .and_then(|(range, src)| src.get(range))
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty());
    match (err.line(), snippet) {
        (Some(line), Some(s)) if s.chars().count() <= 80 => msg.push_str(&format!(" (line {line}: `{s}`)")),
        (Some(line), _) => msg.push_str(&format!(" (line {line})")),
        _ => {}
    }
    // One line, whatever the template holds: control characters (a quoted newline) are escaped.
    Error::Template(msg.chars().flat_map(|c| if c.is_control() { c.escape_debug().collect() } else { vec![c] }).collect())
}

#[cfg(test)]
mod tests;
