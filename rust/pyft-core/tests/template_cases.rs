//! Replays `tests/data/template_cases.json`, written by
//! `tools/compat/make_template_cases.py` from transformers' own `render_jinja_template`:
//! every case must give the same text and generation byte spans, or fail where
//! transformers fails (with the same message for `raise_exception`).

use std::collections::HashMap;

use pyft_core::data::template::{ChatTemplate, SpecialTokens};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/template_cases.json");
    let text = std::fs::read_to_string(path).expect("fixture is readable");
    serde_json::from_str(&text).expect("fixture is json")
}

/// The outcome of one case as a comparable string, or a description of the mismatch.
fn check_case(case: &Value, templates: &HashMap<String, ChatTemplate>) -> Result<(), String> {
    let template = &templates[case["template"].as_str().unwrap()];
    let special = SpecialTokens {
        map: case["special"].as_object().unwrap().clone(),
    };
    let extra = case["extra"].as_object();
    let agp = case["add_generation_prompt"].as_bool().unwrap();
    let got = template.render(&case["messages"], agp, &special, extra);
    match (case.get("error"), got) {
        (None, Ok(rendered)) => {
            let want_text = case["text"].as_str().unwrap();
            let want_spans: Vec<std::ops::Range<usize>> = case["generation_spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s[0].as_u64().unwrap() as usize..s[1].as_u64().unwrap() as usize)
                .collect();
            if rendered.text != want_text {
                return Err(format!(
                    "text differs\n--- want\n{want_text:?}\n--- got\n{:?}",
                    rendered.text
                ));
            }
            if rendered.generation_spans != want_spans {
                return Err(format!(
                    "spans differ: want {want_spans:?}, got {:?}",
                    rendered.generation_spans
                ));
            }
            Ok(())
        }
        (None, Err(e)) => Err(format!("unexpected error: {e}")),
        (Some(want), Ok(rendered)) => Err(format!("expected error {want}, got text {:?}", rendered.text)),
        (Some(want), Err(e)) => {
            let raised = case["raised"].as_bool().unwrap();
            let want = want.as_str().unwrap();
            if raised && !e.to_string().contains(want) {
                return Err(format!("error message differs: want {want:?} in {e}"));
            }
            Ok(())
        }
    }
}

#[test]
fn renders_like_transformers() {
    let fixture = fixture();
    let mut templates = HashMap::new();
    for (name, source) in fixture["templates"].as_object().unwrap() {
        let source = source.as_str().unwrap();
        if let Some(builtin) = ChatTemplate::builtin_source(name) {
            assert_eq!(
                builtin, source,
                "built-in `{name}` changed: rerun tools/compat/make_template_cases.py"
            );
        }
        let compiled = ChatTemplate::new(source).unwrap_or_else(|e| panic!("template `{name}`: {e}"));
        templates.insert(name.clone(), compiled);
    }
    let cases = fixture["cases"].as_array().unwrap();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            check_case(case, &templates)
                .err()
                .map(|why| format!("case `{}`: {why}", case["name"].as_str().unwrap()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from transformers:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn builtins_are_all_covered() {
    let fixture = fixture();
    for name in ChatTemplate::builtin_names() {
        assert!(
            fixture["templates"].get(*name).is_some(),
            "no reference cases for built-in `{name}`"
        );
    }
}

#[test]
fn special_tokens_match_transformers() {
    for case in fixture()["special_tokens"].as_array().unwrap() {
        let got = SpecialTokens::from_tokenizer_config(&case["config"]);
        let want = case["expected"].as_object().unwrap();
        assert_eq!(&got.map, want, "case `{}`", case["name"]);
    }
}

#[test]
fn renders_from_many_threads() {
    let template = ChatTemplate::builtin("chatml").unwrap();
    let special = SpecialTokens::from_pairs([("eos_token", "<|im_end|>")]);
    let want = template
        .render(
            &serde_json::json!([{"role": "user", "content": "hi"}]),
            true,
            &special,
            None,
        )
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100 {
                    let messages = serde_json::json!([{"role": "user", "content": "hi"}]);
                    assert_eq!(template.render(&messages, true, &special, None).unwrap(), want);
                }
            });
        }
    });
}
