//! The `tojson` filter as transformers defines it: Python's
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
//!
//! Differences from minijinja's own `tojson`: no HTML escaping, Python's default
//! separators (`", "` and `": "` on one line; `","` and `": "` with an indent), Python
//! float spelling (`1.0`, `1e-05`, `NaN`, `Infinity`) and insertion key order.

use std::fmt::Write;

use minijinja::value::{from_args, Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

use super::pyrepr::{as_float, float_repr, map_pairs};

/// How `json.dumps` lays out its output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonStyle {
    /// Escape every non-ASCII character as `\uXXXX` (surrogate pairs above U+FFFF).
    pub ensure_ascii: bool,
    /// `None`: one line; `Some(s)`: one item per line, each level indented by `s`.
    pub indent: Option<String>,
    /// Between items (`", "` on one line, `","` with an indent).
    pub item_sep: String,
    /// Between a key and its value (`": "`).
    pub key_sep: String,
    /// Sort object keys (by code point).
    pub sort_keys: bool,
}

impl Default for JsonStyle {
    fn default() -> Self {
        JsonStyle {
            ensure_ascii: false,
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
        }
    }
}

/// The filter: `x|tojson`, `x|tojson(indent=2)`, `x|tojson(false, 2, none, true)`.
/// Arguments are Python's, by position or by name.
pub(crate) fn tojson_filter(value: &Value, args: &[Value]) -> Result<Value, Error> {
    type Args = (Option<Value>, Option<Value>, Option<Value>, Option<Value>, Kwargs);
    let (ensure_ascii, indent, separators, sort_keys, kwargs): Args = from_args(args)?;
    let pick = |pos: Option<Value>, name: &str| -> Result<Option<Value>, Error> {
        let named: Option<Value> = kwargs.get(name)?;
        Ok(named.or(pos))
    };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?;
    let indent = pick(indent, "indent")?;
    let separators = pick(separators, "separators")?;
    let sort_keys = pick(sort_keys, "sort_keys")?;
    kwargs.assert_all_used()?;

    let mut style = JsonStyle {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        ..JsonStyle::default()
    };
    match indent {
        None => {}
        Some(v) if v.is_none() || v.is_undefined() => {}
        Some(v) if v.as_str().is_some() => style.indent = Some(v.as_str().unwrap_or_default().into()),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: indent must be an integer or a string, not {}", v.kind()),
                )
            })?;
            style.indent = Some(" ".repeat(n.max(0) as usize));
        }
    }
    if style.indent.is_some() {
        style.item_sep = ",".into();
    }
    if let Some(seps) = separators.filter(|v| !v.is_none() && !v.is_undefined()) {
        let parts: Vec<Value> = seps.try_iter()?.collect();
        match parts.as_slice() {
            [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                style.item_sep = a.as_str().unwrap_or_default().into();
                style.key_sep = b.as_str().unwrap_or_default().into();
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be a pair of strings (item, key)",
                ))
            }
        }
    }
    let mut out = String::new();
    dump(&mut out, value, &style, 0)?;
    Ok(Value::from(out))
}

/// Appends `json.dumps(value)` in `style` to `out`; `depth` is the current nesting level.
pub(crate) fn dump(out: &mut String, value: &Value, style: &JsonStyle, depth: usize) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => match as_float(value) {
            Some(f) if f.is_nan() => out.push_str("NaN"),
            Some(f) if f.is_infinite() => out.push_str(if f < 0.0 { "-Infinity" } else { "Infinity" }),
            Some(f) => out.push_str(&float_repr(f)),
            None => {
                let _ = write!(out, "{value}");
            }
        },
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, style, depth + 1);
                dump(out, item, style, depth + 1)?;
            }
            newline(out, style, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut pairs = map_pairs(value)
                .into_iter()
                .map(|(k, v)| Ok((key_string(&k)?, v)))
                .collect::<Result<Vec<_>, Error>>()?;
            if pairs.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, style, depth + 1);
                write_string(out, k, style.ensure_ascii);
                out.push_str(&style.key_sep);
                dump(out, v, style, depth + 1)?;
            }
            newline(out, style, depth);
            out.push('}');
        }
        kind => {
            let name = if kind == ValueKind::Undefined {
                "Undefined".to_string()
            } else {
                kind.to_string()
            };
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: object of type {name} is not json serializable"),
            ));
        }
    }
    Ok(())
}

/// With an indent: a newline and `depth` copies of it.
fn newline(out: &mut String, style: &JsonStyle, depth: usize) {
    if let Some(indent) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

/// A map key as `json.dumps` spells it: strings as they are; numbers, booleans and
/// `None` converted (`1`, `1.5`, `true`, `null`); anything else is an error.
fn key_string(k: &Value) -> Result<String, Error> {
    Ok(match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_owned(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => if k.is_true() { "true" } else { "false" }.into(),
        ValueKind::Number => match as_float(k) {
            Some(f) if f.is_nan() => "NaN".into(),
            Some(f) if f.is_infinite() => if f < 0.0 { "-Infinity" } else { "Infinity" }.into(),
            Some(f) => float_repr(f),
            None => k.to_string(),
        },
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: keys must be str, int, float, bool or none, not {kind}"),
            ))
        }
    })
}

/// A JSON string literal with Python's escapes: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`,
/// `\f`, other control characters as `\u00XX`; with `ensure_ascii`, everything above
/// `~` (DEL and non-ASCII) as `\uXXXX`.
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && c > '~' => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(v: serde_json::Value, style: &JsonStyle) -> String {
        let mut out = String::new();
        dump(&mut out, &Value::from_serialize(v), style, 0).unwrap();
        out
    }

    #[test]
    fn default_style_matches_python() {
        let v = serde_json::json!({"b": [1, 2.0, {"x": null}], "a": "é\"<>&\n", "e": [], "f": {}});
        assert_eq!(
            dumps(v, &JsonStyle::default()),
            r#"{"b": [1, 2.0, {"x": null}], "a": "é\"<>&\n", "e": [], "f": {}}"#
        );
    }

    #[test]
    fn indent_and_ascii_match_python() {
        let style = JsonStyle {
            ensure_ascii: true,
            indent: Some("  ".into()),
            item_sep: ",".into(),
            sort_keys: true,
            ..JsonStyle::default()
        };
        let v = serde_json::json!({"z": ["😀", 1e-7], "a": {}});
        assert_eq!(
            dumps(v, &style),
            "{\n  \"a\": {},\n  \"z\": [\n    \"\\ud83d\\ude00\",\n    1e-07\n  ]\n}"
        );
    }
}
