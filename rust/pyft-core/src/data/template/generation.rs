//! `{% generation %}` … `{% endgeneration %}`: transformers' `AssistantTracker` tag,
//! which marks the text the model is trained to produce.
//!
//! minijinja has no custom tags, so the source is rewritten before compiling:
//! `{% generation %}` becomes `{% filter __pyft_generation %}{% with %}` and
//! `{% endgeneration %}` becomes `{% endwith %}{% endfilter %}` (whitespace-control
//! marks stay on the outer ends, line numbers are unchanged). The filter wraps the
//! block's output in two reserved non-characters; after rendering they are removed and
//! their positions become the spans. `with` gives the body its own scope, as the
//! `caller()` macro of Jinja2's tag does.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use regex::Regex;

/// Written where a generation block starts (U+FDD0, a Unicode non-character).
pub(crate) const OPEN: char = '\u{FDD0}';
/// Written where a generation block ends (U+FDD1).
pub(crate) const CLOSE: char = '\u{FDD1}';
/// Name of the filter that wraps a block's output in [`OPEN`] … [`CLOSE`].
pub(crate) const FILTER: &str = "__pyft_generation";

fn tag_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}").expect("generation tag regex is valid"))
}

/// Whether `source` has a `{% generation %}` tag (with or without `-`/`+` marks).
pub(crate) fn has_markers(source: &str) -> bool {
    tag_regex()
        .find_iter(source)
        .any(|m| !m.as_str().contains("endgeneration"))
}

/// `source` with the generation tags rewritten into filter blocks (see the module docs).
pub(crate) fn rewrite(source: &str) -> Cow<'_, str> {
    tag_regex().replace_all(source, |caps: &regex::Captures<'_>| {
        let (pre, post) = (&caps[1], &caps[3]);
        if caps.get(2).is_some() {
            format!("{{%{pre} endwith %}}{{% endfilter {post}%}}")
        } else {
            format!("{{%{pre} filter {FILTER} %}}{{% with {post}%}}")
        }
    })
}

/// The filter: the block's output between the markers.
pub(crate) fn wrap(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2 * OPEN.len_utf8());
    out.push(OPEN);
    out.push_str(body);
    out.push(CLOSE);
    out
}

/// Removes the markers from a rendering and returns the text with the byte ranges that
/// were between them, in order. Errors on nested or unbalanced markers.
pub(crate) fn extract(raw: String) -> Result<(String, Vec<Range<usize>>), String> {
    if !raw.contains([OPEN, CLOSE]) {
        return Ok((raw, Vec::new()));
    }
    let mut text = String::with_capacity(raw.len());
    let mut spans = Vec::new();
    let mut open: Option<usize> = None;
    let mut last = 0;
    for (i, m) in raw.match_indices([OPEN, CLOSE]) {
        text.push_str(&raw[last..i]);
        last = i + m.len();
        if m.starts_with(OPEN) {
            if open.is_some() {
                return Err("nested {% generation %} blocks are not supported".into());
            }
            open = Some(text.len());
        } else {
            let start = open
                .take()
                .ok_or("a {% generation %} block's output was cut by the template (unbalanced markers)")?;
            spans.push(start..text.len());
        }
    }
    if open.is_some() {
        return Err("a {% generation %} block's output was cut by the template (unbalanced markers)".into());
    }
    text.push_str(&raw[last..]);
    Ok((text, spans))
}

/// Whether any string or key in `v` holds a marker character; if so, `path` gets the
/// JSON path of the first one appended (`[0].content`).
pub(crate) fn find_reserved(v: &serde_json::Value, path: &mut String) -> bool {
    let bad = |s: &str| s.contains([OPEN, CLOSE]);
    match v {
        serde_json::Value::String(s) => bad(s),
        serde_json::Value::Array(items) => {
            match items.iter().position(|item| find_reserved(item, &mut String::new())) {
                Some(i) => {
                    path.push_str(&format!("[{i}]"));
                    find_reserved(&items[i], path)
                }
                None => false,
            }
        }
        serde_json::Value::Object(map) => {
            let hit = map
                .iter()
                .find(|(k, item)| bad(k) || find_reserved(item, &mut String::new()));
            match hit {
                Some((k, item)) => {
                    path.push('.');
                    path.push_str(k);
                    bad(k) || find_reserved(item, path)
                }
                None => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_marks_and_lines() {
        let src = "a\n{%- generation -%}\nx{% endgeneration %}\n{%+generation%}{%endgeneration-%}";
        let out = rewrite(src);
        assert_eq!(
            out,
            "a\n{%- filter __pyft_generation %}{% with -%}\nx{% endwith %}{% endfilter %}\n\
             {%+ filter __pyft_generation %}{% with %}{% endwith %}{% endfilter -%}"
        );
        assert_eq!(out.lines().count(), src.lines().count());
        assert!(has_markers(src));
        assert!(!has_markers("{% endgeneration %}{{ generation }}"));
    }

    #[test]
    fn extract_returns_byte_spans() {
        let raw = format!("é{OPEN}ab{CLOSE}c{OPEN}{CLOSE}");
        let (text, spans) = extract(raw).unwrap();
        assert_eq!(text, "éabc");
        assert_eq!(spans, vec![2..4, 5..5]);
        assert!(extract(format!("{OPEN}{OPEN}{CLOSE}{CLOSE}")).is_err());
        assert!(extract(format!("{CLOSE}")).is_err());
        assert!(extract(format!("{OPEN}")).is_err());
    }

    #[test]
    fn reserved_characters_are_found_with_their_path() {
        let v = serde_json::json!([{"role": "user", "content": format!("x{OPEN}")}]);
        let mut path = String::from("messages");
        assert!(find_reserved(&v, &mut path));
        assert_eq!(path, "messages[0].content");
    }
}
