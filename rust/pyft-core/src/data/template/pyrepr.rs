//! Python's `str()` and `repr()` of template values, so that `{{ value }}` prints what
//! Jinja2 prints: `None`, `True`, `1e-05`, `[1, 'a']`, `{'k': 'v'}`.
//!
//! minijinja's own `Display` already agrees for strings, integers, `None` and booleans,
//! but writes containers JSON-style (`["a"]`) and floats Rust-style (`0.00001`).

use std::fmt::{self, Write};

use minijinja::value::{Value, ValueKind};

/// Python's `repr(float)` (which is also `str(float)`): the shortest digits that
/// round-trip, fixed notation for decimal exponents in `-4..16`, else scientific with
/// a signed exponent of at least two digits (`1e-05`, `1.5e+20`); `inf`, `-inf`, `nan`.
pub(crate) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f < 0.0 { "-inf" } else { "inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives the shortest round-trip digits, e.g. "-1.2345e-5", but breaks an exact tie
    // between two shortest candidates upwards; Python takes the correctly rounded one (half to
    // even), which `{:.N e}` produces for the same digit count.
    let shortest = format!("{f:e}");
    let count = shortest.split('e').next().map_or(1, |m| m.bytes().filter(u8::is_ascii_digit).count());
    let sci = format!("{:.*e}", count.saturating_sub(1), f);
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

/// The float inside a number value, or `None` for integers and non-numbers.
pub(crate) fn as_float(v: &Value) -> Option<f64> {
    if v.kind() == ValueKind::Number && !v.is_integer() {
        f64::try_from(v.clone()).ok()
    } else {
        None
    }
}

/// The (key, value) pairs of a map value, in iteration order.
pub(crate) fn map_pairs(v: &Value) -> Vec<(Value, Value)> {
    match v.try_iter() {
        Ok(keys) => keys
            .map(|k| {
                let item = v.get_item(&k).unwrap_or_default();
                (k, item)
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Writes Python's `str(v)`: strings as they are, undefined as nothing, the rest as
/// `repr`.
pub(crate) fn write_str<W: Write>(w: &mut W, v: &Value) -> fmt::Result {
    match v.kind() {
        ValueKind::Undefined => Ok(()),
        ValueKind::String => w.write_str(v.as_str().unwrap_or_default()),
        _ => write_repr(w, v),
    }
}

/// Python's `str(v)` as a `String`.
pub(crate) fn to_str(v: &Value) -> String {
    if let Some(s) = v.as_str() {
        return s.to_owned();
    }
    let mut out = String::new();
    let _ = write_str(&mut out, v);
    out
}

/// Writes Python's `repr(v)`.
pub(crate) fn write_repr<W: Write>(w: &mut W, v: &Value) -> fmt::Result {
    match v.kind() {
        ValueKind::Undefined => w.write_str("Undefined"),
        ValueKind::String => write_string_repr(w, v.as_str().unwrap_or_default()),
        ValueKind::Number => match as_float(v) {
            Some(f) => w.write_str(&float_repr(f)),
            None => write!(w, "{v}"),
        },
        ValueKind::Seq | ValueKind::Iterable => {
            w.write_char('[')?;
            if let Ok(items) = v.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        w.write_str(", ")?;
                    }
                    write_repr(w, &item)?;
                }
            }
            w.write_char(']')
        }
        ValueKind::Map => {
            w.write_char('{')?;
            for (i, (k, item)) in map_pairs(v).iter().enumerate() {
                if i > 0 {
                    w.write_str(", ")?;
                }
                write_repr(w, k)?;
                w.write_str(": ")?;
                write_repr(w, item)?;
            }
            w.write_char('}')
        }
        // None, booleans (`None`, `True`, `False`) and the rest: minijinja agrees.
        _ => write!(w, "{v}"),
    }
}

/// Writes Python's `repr(str)`: single quotes unless the text holds `'` but no `"`;
/// backslash escapes for the quote, `\\`, `\t`, `\n`, `\r` and non-printable characters.
fn write_string_repr<W: Write>(w: &mut W, s: &str) -> fmt::Result {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    w.write_char(quote)?;
    for c in s.chars() {
        match c {
            '\\' => w.write_str("\\\\")?,
            '\t' => w.write_str("\\t")?,
            '\n' => w.write_str("\\n")?,
            '\r' => w.write_str("\\r")?,
            c if c == quote => {
                w.write_char('\\')?;
                w.write_char(c)?;
            }
            c if is_printable(c) => w.write_char(c)?,
            c if (c as u32) < 0x100 => write!(w, "\\x{:02x}", c as u32)?,
            c if (c as u32) < 0x10000 => write!(w, "\\u{:04x}", c as u32)?,
            c => write!(w, "\\U{:08x}", c as u32)?,
        }
    }
    w.write_char(quote)
}

/// Python's `str.isprintable` for one character, approximated without Unicode tables:
/// control, format, separator (other than space), private-use and non-characters are
/// non-printable; unassigned code points are treated as printable.
fn is_printable(c: char) -> bool {
    let u = c as u32;
    !matches!(u,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad
        | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x1680
        | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064 | 0x2066..=0x206f
        | 0x3000 | 0xd800..=0xf8ff | 0xfdd0..=0xfdef | 0xfeff | 0xfff9..=0xfffb
        | 0xfffe | 0xffff | 0x110bd | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f
        | 0xf0000..=0x10ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python() {
        // An exact tie between two 16-digit candidates: Python rounds half to even.
        assert_eq!(float_repr(f64::from_bits(0x4053_4f00_8000_0000)), "77.23440551757812");
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e20, "1.5e+20"),
            (123456.789, "123456.789"),
            (1e100, "1e+100"),
            (-0.0, "-0.0"),
            (f64::INFINITY, "inf"),
            (2.5e-7, "2.5e-07"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f:e}");
        }
    }

    #[test]
    fn containers_print_like_python() {
        let v = Value::from_serialize(serde_json::json!({"a": [1, 2.0, null, true, "it's"], "b": "x\ny"}));
        assert_eq!(to_str(&v), r#"{'a': [1, 2.0, None, True, "it's"], 'b': 'x\ny'}"#);
        assert_eq!(to_str(&Value::from("plain")), "plain");
        assert_eq!(to_str(&Value::UNDEFINED), "");
        let quotes = Value::from_serialize(["'\"\u{7f}é\u{200b}"]);
        assert_eq!(to_str(&quotes), r#"['\'"\x7fé\u200b']"#);
    }
}
