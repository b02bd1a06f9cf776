//! The minijinja environment, set up like transformers' `_compile_jinja_template`:
//! `trim_blocks`, `lstrip_blocks`, loop controls, no auto-escaping, the globals
//! `raise_exception` and `strftime_now`, transformers' `tojson`, Python method
//! semantics, and Python's `str()` when printing values; plus pyft's bounds on one render
//! (steps and printed text, see [`limits`]).
//!
//! Jinja2 filters and tests whose minijinja versions behave differently on the values
//! chat templates use are replaced here: `length`/`count` (0 for undefined),
//! `first`/`last` (undefined for undefined), `string`
//! and `join` (Python `str()` of items), `trim` (Python whitespace), `title` (Jinja2's
//! word split), `indent` (keeps a trailing newline, string widths), and the tests
//! `sequence`/`iterable` (true for strings and dicts, as in Python).

use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind};

use super::{generation, limits, pyjson, pyrepr, pystr, strftime};

/// The message of a `raise_exception(...)` call, attached as the source of the
/// minijinja error so that it can be reported as the template wrote it.
#[derive(Debug)]
pub(crate) struct Raised(pub String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// A fresh environment with every chat-template setting, filter and global.
pub(crate) fn build() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_debug(false);
    env.set_unknown_method_callback(pystr::method_callback);
    env.set_fuel(Some(limits::FUEL));
    env.set_formatter(|out, _state, value| {
        match value.as_str() {
            Some(s) => {
                limits::count_formatted(s.len())?;
                out.write_str(s)?;
            }
            None => {
                let mut s = String::new();
                pyrepr::write_str(&mut s, value)?;
                limits::count_formatted(s.len())?;
                out.write_str(&s)?;
            }
        }
        Ok(())
    });

    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", |format: &str| {
        strftime::strftime(&strftime::DateTime::now(), format)
    });

    env.add_filter("tojson", pyjson::tojson_filter);
    env.add_filter("string", |v: &Value| Value::from(pyrepr::to_str(v)));
    env.add_filter("length", length);
    env.add_filter("count", length);
    env.add_filter("trim", trim);
    env.add_filter("title", title);
    env.add_filter("join", join);
    env.add_filter("indent", indent);
    env.add_filter("first", |v: &Value| {
        if v.is_undefined() {
            Ok(Value::UNDEFINED)
        } else {
            minijinja::filters::first(v)
        }
    });
    env.add_filter("last", |v: Value| {
        if v.is_undefined() {
            Ok(Value::UNDEFINED)
        } else {
            minijinja::filters::last(v)
        }
    });
    env.add_filter(generation::FILTER, |body: &str| generation::wrap(body));

    env.add_test("sequence", |v: &Value| {
        matches!(v.kind(), ValueKind::Seq | ValueKind::Map | ValueKind::String)
    });
    env.add_test("iterable", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::String | ValueKind::Iterable
        ) || v.is_undefined()
    });
    env
}

/// `raise_exception(message)`: fails the rendering with the template's message.
fn raise_exception(message: Option<Value>) -> Result<Value, Error> {
    let message = message.map(|m| pyrepr::to_str(&m)).unwrap_or_default();
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// `x|length`: Python's `len(x)`, with 0 for undefined as Jinja2's `Undefined` has.
fn length(v: &Value) -> Result<usize, Error> {
    if v.is_undefined() {
        return Ok(0);
    }
    v.len().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("object of type {} has no len()", v.kind()),
        )
    })
}

/// `x|trim(chars=None)`: Python's `str(x).strip(chars)`.
fn trim(v: &Value, chars: Option<&str>) -> Value {
    let s = pyrepr::to_str(v);
    Value::from(match chars {
        Some(set) => s.trim_matches(|c| set.contains(c)),
        None => s.trim_matches(pystr::is_py_space),
    })
}

/// `x|title`: Jinja2's `do_title`: split before runs of whitespace, `-`, `(`, `{`, `[`
/// and `<`; each piece gets its first character uppercased and the rest lowercased.
fn title(v: &Value) -> Value {
    let s = pyrepr::to_str(v);
    let mut out = String::with_capacity(s.len());
    let mut word_start = true;
    for c in s.chars() {
        if pystr::is_py_space(c) || matches!(c, '-' | '(' | '{' | '[' | '<') {
            out.push(c);
            word_start = true;
        } else if word_start {
            out.extend(c.to_uppercase());
            word_start = false;
        } else {
            out.extend(c.to_lowercase());
        }
    }
    Value::from(out)
}

/// `items|join(d="", attribute=None)`: Python's `d.join(str(i) for i in items)`, with
/// `attribute` (dotted path, integer parts index lists) looked up on each item first.
fn join(v: &Value, d: Option<&str>, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let attribute: Option<&str> = kwargs.get("attribute")?;
    let d: Option<&str> = d.or(kwargs.get("d")?);
    kwargs.assert_all_used()?;
    if v.is_undefined() || v.is_none() {
        return Ok(Value::from(""));
    }
    let mut out = String::new();
    for (i, item) in v.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(d.unwrap_or_default());
        }
        let item = match attribute {
            Some(path) => lookup_path(&item, path)?,
            None => item,
        };
        pyrepr::write_str(&mut out, &item)?;
    }
    Ok(Value::from(out))
}

/// `s|indent(width=4, first=False, blank=False)`: Jinja2's `do_indent`. Unlike
/// minijinja's it keeps a trailing newline (`'{\n'|indent(4, true)` is `'    {\n'`),
/// splits lines as Python's `str.splitlines` and takes a string `width` as the indent.
fn indent(
    s: &Value,
    width: Option<Value>,
    first: Option<Value>,
    blank: Option<Value>,
    kwargs: minijinja::value::Kwargs,
) -> Result<Value, Error> {
    let width = width.or(kwargs.get("width")?);
    let first = first.or(kwargs.get("first")?).is_some_and(|v| v.is_true());
    let blank = blank.or(kwargs.get("blank")?).is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let Some(s) = s.as_str() else {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("indent expects a string, not {}", s.kind()),
        ));
    };
    let indention = match &width {
        None => "    ".to_owned(),
        Some(w) if w.as_str().is_some() => w.as_str().unwrap_or_default().to_owned(),
        Some(w) => match i64::try_from(w.clone()) {
            Ok(n) => " ".repeat(usize::try_from(n).unwrap_or(0)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("indent width must be an integer or a string, not {}", w.kind()),
                ))
            }
        },
    };
    // Jinja2 appends a newline before splitting, so a trailing newline survives.
    let with_newline = format!("{s}\n");
    let lines = pystr::splitlines(&with_newline, false);
    let mut out = String::with_capacity(s.len() + indention.len() * lines.len());
    if first {
        out.push_str(&indention);
    }
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push('\n');
            if blank || !line.is_empty() {
                out.push_str(&indention);
            }
        }
        out.push_str(line);
    }
    Ok(Value::from(out))
}

/// Jinja2's attribute getter: `a.b.0` looks up `a`, then `b`, then index 0.
fn lookup_path(v: &Value, path: &str) -> Result<Value, Error> {
    let mut cur = v.clone();
    for part in path.split('.') {
        cur = match part.parse::<i64>() {
            Ok(idx) => cur.get_item(&Value::from(idx))?,
            Err(_) => cur.get_attr(part)?,
        };
    }
    Ok(cur)
}
