//! Built-in chat templates, by name. Sources live in `src/data/templates/<name>.jinja`.
//!
//! Every built-in wraps each assistant turn's content plus its end-of-turn token in
//! `{% generation %}` (the newline after the token stays outside), and raises on
//! roles it does not support and, for formats that need it (mistral, gemma), on
//! conversations whose user/assistant turns do not alternate.

/// (name, Jinja source) of every built-in template, in the order they are listed.
const BUILTINS: [(&str, &str); 6] = [
    ("chatml", include_str!("../templates/chatml.jinja")),
    ("llama3", include_str!("../templates/llama3.jinja")),
    ("alpaca", include_str!("../templates/alpaca.jinja")),
    ("mistral", include_str!("../templates/mistral.jinja")),
    ("gemma", include_str!("../templates/gemma.jinja")),
    ("zephyr", include_str!("../templates/zephyr.jinja")),
];

/// The names of the built-in templates.
pub(crate) const NAMES: [&str; 6] = ["chatml", "llama3", "alpaca", "mistral", "gemma", "zephyr"];

/// The source of the built-in template `name`.
pub(crate) fn source(name: &str) -> Option<&'static str> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, src)| *src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_sources() {
        for (i, (name, src)) in BUILTINS.iter().enumerate() {
            assert_eq!(NAMES[i], *name);
            assert!(src.contains("{%- generation %}"), "{name} marks assistant turns");
        }
    }
}
