//! Python methods on template values (`text.strip()`, `text.split(',')`,
//! `messages.index(m)`, `d.items()`), with Python's semantics.
//!
//! minijinja-contrib's `pycompat` callback covers most methods; the ones below are
//! written here because pycompat departs from Python for them: character (not byte)
//! offsets in `find`, Python's whitespace set in `strip`/`split`, `False` for the `is*`
//! tests on empty strings, `rsplit`, `partition`, `removeprefix`, `title` and others.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

/// The unknown-method callback of the environment: Python semantics first, then
/// minijinja-contrib's `pycompat` for everything else.
pub(crate) fn method_callback(state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        if let Some(rv) = string_method(s, method, args)? {
            return Ok(rv);
        }
    } else if value.kind() == ValueKind::Seq && method == "index" {
        let Some(needle) = params(method, args, &["value"])?.pop().flatten() else {
            return Err(bad_args("index() takes exactly one argument"));
        };
        return match value.try_iter()?.position(|item| item == needle) {
            Some(i) => Ok(Value::from(i)),
            None => Err(bad_args(format!("{} is not in list", super::pyrepr::to_str(&needle)))),
        };
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Python's `str.isspace` for one character: Unicode White_Space plus the
/// information separators U+001C..U+001F.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn bad_args(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// Python-style arguments: positional values then an optional trailing kwargs map,
/// matched against `names`. Python `None` counts as "not given".
fn params(method: &str, args: &[Value], names: &[&str]) -> Result<Vec<Option<Value>>, Error> {
    let (positional, kwargs) = match args.split_last() {
        Some((last, rest)) if last.is_kwargs() => (rest, Some(last)),
        _ => (args, None),
    };
    if positional.len() > names.len() {
        return Err(bad_args(format!(
            "{method}() takes at most {} arguments ({} given)",
            names.len(),
            positional.len()
        )));
    }
    let mut out: Vec<Option<Value>> = positional.iter().cloned().map(Some).collect();
    out.resize(names.len(), None);
    if let Some(kwargs) = kwargs {
        for key in kwargs.try_iter()? {
            let name = key.as_str().unwrap_or_default();
            let Some(idx) = names.iter().position(|n| *n == name) else {
                return Err(bad_args(format!(
                    "{method}() got an unexpected keyword argument '{name}'"
                )));
            };
            out[idx] = Some(kwargs.get_item(&key)?);
        }
    }
    Ok(out
        .into_iter()
        .map(|v| v.filter(|v| !v.is_none() && !v.is_undefined()))
        .collect())
}

/// A string argument, or an error naming the method.
fn str_arg<'a>(method: &str, v: &'a Option<Value>) -> Result<Option<&'a str>, Error> {
    match v {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| bad_args(format!("{method}() argument must be str, not {}", v.kind()))),
    }
}

/// An integer argument, or an error naming the method.
fn int_arg(method: &str, v: &Option<Value>) -> Result<Option<i64>, Error> {
    match v {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad_args(format!("{method}() argument must be int, not {}", v.kind()))),
    }
}

fn list(items: impl IntoIterator<Item = impl Into<Value>>) -> Value {
    Value::from(items.into_iter().map(Into::into).collect::<Vec<Value>>())
}

/// The Python string method `method` on `s`, or `Ok(None)` to defer to pycompat.
fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Option<Value>, Error> {
    let rv = match method {
        "strip" | "lstrip" | "rstrip" => {
            let p = params(method, args, &["chars"])?;
            let chars = str_arg(method, &p[0])?;
            let strip = |c: char| match chars {
                Some(set) => set.contains(c),
                None => is_py_space(c),
            };
            Value::from(match method {
                "strip" => s.trim_matches(strip),
                "lstrip" => s.trim_start_matches(strip),
                _ => s.trim_end_matches(strip),
            })
        }
        "split" | "rsplit" => {
            let p = params(method, args, &["sep", "maxsplit"])?;
            let sep = str_arg(method, &p[0])?;
            let maxsplit = int_arg(method, &p[1])?.unwrap_or(-1);
            list(split(s, sep, maxsplit, method == "rsplit")?)
        }
        "splitlines" => {
            let p = params(method, args, &["keepends"])?;
            list(splitlines(s, p[0].as_ref().is_some_and(Value::is_true)))
        }
        "find" | "rfind" | "index" | "rindex" => {
            let p = params(method, args, &["sub", "start", "end"])?;
            let sub = str_arg(method, &p[0])?.ok_or_else(|| bad_args(format!("{method}() missing argument 'sub'")))?;
            let (start, end) = (int_arg(method, &p[1])?, int_arg(method, &p[2])?);
            match find(s, sub, start, end, method.starts_with('r')) {
                Some(i) => Value::from(i),
                None if method.ends_with("find") => Value::from(-1),
                None => return Err(bad_args("substring not found")),
            }
        }
        "count" => {
            let p = params(method, args, &["sub"])?;
            let sub = str_arg(method, &p[0])?.ok_or_else(|| bad_args("count() missing argument 'sub'"))?;
            Value::from(if sub.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(sub).count()
            })
        }
        "removeprefix" | "removesuffix" => {
            let p = params(method, args, &["affix"])?;
            let affix = str_arg(method, &p[0])?.unwrap_or_default();
            Value::from(if method == "removeprefix" {
                s.strip_prefix(affix).unwrap_or(s)
            } else {
                s.strip_suffix(affix).unwrap_or(s)
            })
        }
        "partition" | "rpartition" => {
            let p = params(method, args, &["sep"])?;
            let sep = str_arg(method, &p[0])?.unwrap_or_default();
            if sep.is_empty() {
                return Err(bad_args("empty separator"));
            }
            let found = if method == "partition" {
                s.find(sep)
            } else {
                s.rfind(sep)
            };
            match found {
                Some(i) => list([&s[..i], sep, &s[i + sep.len()..]]),
                None if method == "partition" => list([s, "", ""]),
                None => list(["", "", s]),
            }
        }
        "title" => Value::from(title(s)),
        "capitalize" => {
            let mut chars = s.chars();
            let mut out: String = chars.next().map(|c| c.to_uppercase().collect()).unwrap_or_default();
            out.extend(chars.flat_map(char::to_lowercase));
            Value::from(out)
        }
        "casefold" => Value::from(s.to_lowercase()),
        "swapcase" => Value::from(
            s.chars()
                .flat_map(|c| -> Vec<char> {
                    if c.is_uppercase() {
                        c.to_lowercase().collect()
                    } else if c.is_lowercase() {
                        c.to_uppercase().collect()
                    } else {
                        vec![c]
                    }
                })
                .collect::<String>(),
        ),
        "isspace" => Value::from(!s.is_empty() && s.chars().all(is_py_space)),
        "isalpha" => Value::from(!s.is_empty() && s.chars().all(char::is_alphabetic)),
        "isalnum" => Value::from(!s.is_empty() && s.chars().all(char::is_alphanumeric)),
        "isdigit" | "isdecimal" | "isnumeric" => Value::from(!s.is_empty() && s.chars().all(char::is_numeric)),
        "islower" => Value::from(s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase)),
        "isupper" => Value::from(s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase)),
        _ => return Ok(None),
    };
    Ok(Some(rv))
}

/// `str.split` / `str.rsplit`: on runs of whitespace (ignoring leading and trailing
/// whitespace) without `sep`, on each `sep` otherwise; at most `maxsplit` splits
/// (negative: no limit), counted from the right for `rsplit`.
fn split(s: &str, sep: Option<&str>, maxsplit: i64, from_right: bool) -> Result<Vec<String>, Error> {
    let limit = usize::try_from(maxsplit).ok();
    let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
    if let Some(sep) = sep {
        if sep.is_empty() {
            return Err(bad_args("empty separator"));
        }
        return Ok(match (limit, from_right) {
            (None, _) => owned(s.split(sep).collect()),
            (Some(n), false) => owned(s.splitn(n + 1, sep).collect()),
            (Some(n), true) => {
                let mut parts: Vec<&str> = s.rsplitn(n + 1, sep).collect();
                parts.reverse();
                owned(parts)
            }
        });
    }
    let mut parts = Vec::new();
    if !from_right {
        let mut rest = s.trim_start_matches(is_py_space);
        while !rest.is_empty() {
            if limit == Some(parts.len()) {
                parts.push(rest);
                break;
            }
            match rest.find(is_py_space) {
                Some(i) => {
                    parts.push(&rest[..i]);
                    rest = rest[i..].trim_start_matches(is_py_space);
                }
                None => {
                    parts.push(rest);
                    break;
                }
            }
        }
    } else {
        let mut rest = s.trim_end_matches(is_py_space);
        while !rest.is_empty() {
            if limit == Some(parts.len()) {
                parts.push(rest);
                break;
            }
            match rest.char_indices().rev().find(|(_, c)| is_py_space(*c)) {
                Some((i, c)) => {
                    parts.push(&rest[i + c.len_utf8()..]);
                    rest = rest[..i].trim_end_matches(is_py_space);
                }
                None => {
                    parts.push(rest);
                    break;
                }
            }
        }
        parts.reverse();
    }
    Ok(owned(parts))
}

/// `str.splitlines`: splits on `\n`, `\r`, `\r\n`, `\v`, `\f`, U+001C..U+001E, U+0085,
/// U+2028 and U+2029.
pub(crate) fn splitlines(s: &str, keepends: bool) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let is_break = matches!(
            c,
            '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{1c}'..='\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}'
        );
        if !is_break {
            continue;
        }
        let mut end = i + c.len_utf8();
        if c == '\r' && iter.peek().is_some_and(|(_, n)| *n == '\n') {
            iter.next();
            end += 1;
        }
        lines.push(&s[start..if keepends { end } else { i }]);
        start = end;
    }
    if start < s.len() {
        lines.push(&s[start..]);
    }
    lines
}

/// `str.find` / `str.rfind` with Python slice bounds, in characters.
fn find(s: &str, sub: &str, start: Option<i64>, end: Option<i64>, from_right: bool) -> Option<usize> {
    let n = s.chars().count() as i64;
    let clamp = |i: i64| if i < 0 { (i + n).max(0) } else { i.min(n) };
    let (lo, hi) = (clamp(start.unwrap_or(0)), clamp(end.unwrap_or(n)));
    if lo > hi {
        return None;
    }
    let byte = |ci: i64| s.char_indices().nth(ci as usize).map_or(s.len(), |(b, _)| b);
    let (blo, bhi) = (byte(lo), byte(hi));
    let hay = &s[blo..bhi];
    let at = if from_right { hay.rfind(sub) } else { hay.find(sub) }?;
    Some(lo as usize + hay[..at].chars().count())
}

/// Python's `str.title`: a letter after a cased letter is lowercased, any other letter
/// is uppercased.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        if prev_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_cased = c.is_lowercase() || c.is_uppercase();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_vec(s: &str, sep: Option<&str>, max: i64, right: bool) -> Vec<String> {
        split(s, sep, max, right).unwrap()
    }

    #[test]
    fn split_matches_python() {
        assert_eq!(split_vec("  a b\t c  ", None, -1, false), ["a", "b", "c"]);
        assert_eq!(split_vec("  a b  c ", None, 1, false), ["a", "b  c "]);
        assert_eq!(split_vec("  a b  c ", None, 1, true), ["  a b", "c"]);
        assert_eq!(split_vec("a,,b", Some(","), -1, false), ["a", "", "b"]);
        assert_eq!(split_vec("a,b,c", Some(","), 1, true), ["a,b", "c"]);
        assert!(split_vec("   ", None, -1, false).is_empty());
        assert!(split("x", Some(""), -1, false).is_err());
    }

    #[test]
    fn find_counts_characters() {
        assert_eq!(find("héllo", "l", None, None, false), Some(2));
        assert_eq!(find("héllo", "l", None, None, true), Some(3));
        assert_eq!(find("héllo", "l", Some(-2), None, false), Some(3));
        assert_eq!(find("héllo", "z", None, None, false), None);
    }

    #[test]
    fn title_and_lines_match_python() {
        assert_eq!(title("hello wORLD's x1y"), "Hello World'S X1Y");
        assert_eq!(splitlines("a\r\nb\rc\n\nd", false), ["a", "b", "c", "", "d"]);
        assert_eq!(splitlines("a\nb\n", true), ["a\n", "b\n"]);
    }
}
