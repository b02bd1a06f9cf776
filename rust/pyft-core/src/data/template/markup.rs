//! Jinja2's `Markup` arithmetic, which pyft does not reproduce, refused instead of rendered
//! differently.
//!
//! In Jinja2 `x|safe` and `x|escape` return `Markup` strings, and `Markup + str` (either order)
//! HTML-escapes the plain operand: `'a'|safe + '"'` is `a&#34;`. minijinja's `+` concatenates as is.
//! Concatenation with `~` and printing a `Markup` behave alike in both, so only `+` next to one of
//! those filters can diverge (functionary-medium-v3.1 writes its tool list that way). A template whose
//! source has that shape gets filters that note when they run; a render in which one ran fails with
//! [`REFUSAL`]. Renders that never reach them (functionary's plain chats) are unaffected.

use std::sync::LazyLock;

use minijinja::value::Value;
use minijinja::{Environment, Error, State};
use regex::Regex;

/// The temp a tracking filter sets when it runs.
const RAN: &str = "__pyft_markup_filter_ran";

/// Why a render was refused.
pub(crate) const REFUSAL: &str = "this conversation reaches a `+` on a `|safe`/`|escape` (Markup) string: \
     Jinja2 (transformers) HTML-escapes the other operand there and pyft does not, so it refuses \
     rather than render different text";

/// `+` right after a Markup filter (`x|safe + y`, `(x|e) + y`) or right before an operand that ends
/// in one (`y + 'x'|safe`).
static MARKUP_PLUS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"\|\s*(?:safe|escape|e)\b\s*\)*\s*\+|\+\s*(?:"[^"]*"|'[^']*'|[\w.\[\]]+)\s*\|\s*(?:safe|escape|e)\b"#,
    )
    .expect("valid regex")
});

/// Whether `source` combines a Markup filter with `+`.
pub(crate) fn has_markup_arithmetic(source: &str) -> bool {
    MARKUP_PLUS.is_match(source)
}

/// Replaces `safe`, `escape` and `e` with versions that behave the same and note that they ran.
pub(crate) fn track(env: &mut Environment<'static>) {
    env.add_filter("safe", |state: &State, v: String| {
        state.set_temp(RAN, Value::from(true));
        minijinja::filters::safe(v)
    });
    for name in ["escape", "e"] {
        env.add_filter(name, |state: &State, v: &Value| -> Result<Value, Error> {
            state.set_temp(RAN, Value::from(true));
            minijinja::filters::escape(state, v)
        });
    }
}

/// Whether a tracking filter ran in the render that left `state`.
pub(crate) fn ran(state: &State) -> bool {
    state.get_temp(RAN).is_some_and(|v| v.is_true())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markup_plus() {
        assert!(has_markup_arithmetic(r#"{{ "Use '"|safe + t["name"] }}"#));
        assert!(has_markup_arithmetic("{{ (x | e) + y }}"));
        assert!(has_markup_arithmetic("{{ y + 'a'|safe }}"));
        assert!(!has_markup_arithmetic("{{ '<a>' ~ (d | tojson | safe) ~ '</a>' }}"));
        assert!(!has_markup_arithmetic("{% set a = x | tojson | safe if x is mapping else x | string %}"));
        assert!(!has_markup_arithmetic("{{ a + b }} {{ c|safe }}"));
    }
}
