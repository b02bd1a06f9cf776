//! Unit tests of the public API; transformers-reference cases are in
//! `tests/template_cases.rs`.

use super::*;

fn render(src: &str, messages: Value) -> Result<Rendered> {
    ChatTemplate::new(src)?.render(&messages, false, &SpecialTokens::new(), None)
}

#[test]
fn template_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ChatTemplate>();
}

#[test]
fn prints_values_like_python() {
    let out = render(
        "{{ messages[0].x }}|{{ none }}|{{ 1e-5 }}|{{ tools }}|{{ undefined_name }}",
        serde_json::json!([{"x": [1, "a", {"b": true}]}]),
    )
    .unwrap();
    assert_eq!(out.text, "[1, 'a', {'b': True}]|None|1e-05|None|");
}

#[test]
fn generation_spans_are_byte_ranges() {
    let src = "{% for m in messages %}{{ m.role }}:{% generation %}{{ m.content }}{% endgeneration %}\n{% endfor %}";
    let out = render(
        src,
        serde_json::json!([{"role": "user", "content": "é"}, {"role": "assistant", "content": "ü!"}]),
    )
    .unwrap();
    assert_eq!(out.text, "user:éassistant:ü!");
    assert_eq!(out.generation_spans, vec![5..7, 17..20]);
    assert!(ChatTemplate::new(src).unwrap().has_generation_markers());
}

#[test]
fn raise_exception_carries_the_message_and_line() {
    let err = render(
        "line one\n{{ raise_exception('roles must alternate') }}",
        serde_json::json!([]),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "chat template: roles must alternate (line 2)");
}

#[test]
fn syntax_errors_name_the_line() {
    let err = ChatTemplate::new("ok\n{% if %}").unwrap_err().to_string();
    assert!(err.contains("syntax error") && err.contains("line 2"), "{err}");
}

#[test]
fn bad_inputs_are_rejected() {
    let t = ChatTemplate::builtin("chatml").unwrap();
    let special = SpecialTokens::new();
    let err = t
        .render(&serde_json::json!({"role": "user"}), false, &special, None)
        .unwrap_err();
    assert!(err.to_string().contains("messages must be a json array"), "{err}");
    let err = t.render(&serde_json::json!(["hi"]), false, &special, None).unwrap_err();
    assert!(err.to_string().contains("messages[0] must be a json object"), "{err}");
    let msgs = serde_json::json!([{"role": "user", "content": "a\u{FDD0}"}]);
    let err = t.render(&msgs, false, &special, None).unwrap_err();
    assert!(err.to_string().contains("messages[0].content"), "{err}");
    let mut extra = Map::new();
    extra.insert("messages".into(), Value::Null);
    let err = t
        .render(&serde_json::json!([]), false, &special, Some(&extra))
        .unwrap_err();
    assert!(err.to_string().contains("`messages`"), "{err}");
}

#[test]
fn unknown_builtin_lists_the_names() {
    let err = ChatTemplate::builtin("nope").unwrap_err().to_string();
    assert!(
        err.contains("`nope`") && err.contains("chatml, llama3, alpaca, mistral, gemma, zephyr"),
        "{err}"
    );
    for name in ChatTemplate::builtin_names() {
        assert!(ChatTemplate::builtin(name).unwrap().has_generation_markers());
    }
}

#[test]
fn strftime_now_prints_the_year() {
    let year = render("{{ strftime_now('%Y') }}", serde_json::json!([])).unwrap().text;
    let now = strftime::DateTime::now();
    assert_eq!(year, now.year.to_string());
}

/// A fresh empty directory under the system temp dir.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pyft-template-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn tokenizer_dir_lookup_follows_transformers() {
    let dir = temp_dir("lookup");
    assert!(ChatTemplate::from_tokenizer_dir(&dir).unwrap().is_none());

    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "</s>"}"#).unwrap();
    assert!(ChatTemplate::from_tokenizer_dir(&dir).unwrap().is_none());

    let cfg = r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#;
    std::fs::write(dir.join("tokenizer_config.json"), cfg).unwrap();
    assert_eq!(ChatTemplate::from_tokenizer_dir(&dir).unwrap().unwrap().source(), "D");

    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": "C"}"#).unwrap();
    assert_eq!(ChatTemplate::from_tokenizer_dir(&dir).unwrap().unwrap().source(), "C");

    std::fs::write(dir.join("chat_template.jinja"), "J").unwrap();
    assert_eq!(ChatTemplate::from_tokenizer_dir(&dir).unwrap().unwrap().source(), "J");

    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    std::fs::create_dir(dir.join("chat_templates")).unwrap();
    std::fs::write(dir.join("chat_templates/tool_use.jinja"), "T").unwrap();
    let err = ChatTemplate::from_tokenizer_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("none named `default`") && err.contains("tool_use"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Known departures from Jinja2, pinned so that a change in minijinja is noticed (see
/// the `ChatTemplate` docs).
#[test]
fn known_differences_from_jinja2() {
    let msgs = serde_json::json!([{"role": "user", "content": null}]);
    // Jinja2: TypeError ('NoneType' object is not iterable).
    assert_eq!(
        render("[{% for p in messages[0].content %}x{% endfor %}]", msgs.clone())
            .unwrap()
            .text,
        "[]"
    );
    // Jinja2: undefined (dicts have no attribute `role`).
    assert_eq!(
        render("{{ messages[0] | attr('role') }}", msgs.clone()).unwrap().text,
        "user"
    );
    // Jinja2 gives `[1, 'a']1e-07`.
    assert_eq!(
        render("{{ [1, 'a'] ~ 1e-7 }}", msgs).unwrap().text,
        "[1, \"a\"]0.0000001"
    );
}

#[test]
fn indent_matches_jinja2() {
    // Expected values from Jinja2 3.1's `do_indent`.
    let cases = [
        (r"{{ '{\n'|indent(4, first=true) }}", "    {\n"),
        (r"{{ 'a\nb\n\nc'|indent(2) }}", "a\n  b\n\n  c"),
        (r"{{ 'a\nb\n\nc\n'|indent(2, true, true) }}", "  a\n  b\n  \n  c\n  "),
        ("{{ 'x\r\ny\u{2028}z'|indent('> ') }}", "x\n> y\n> z"),
        (r"{{ ''|indent(first=true) }}|{{ 'q'|indent(width=3, blank=true) }}", "    |q"),
    ];
    for (src, want) in cases {
        assert_eq!(render(src, serde_json::json!([])).unwrap().text, want, "{src}");
    }
    let err = render("{{ 5|indent }}", serde_json::json!([])).unwrap_err().to_string();
    assert!(err.contains("indent expects a string"), "{err}");
}

#[test]
fn markup_plus_is_refused_only_where_it_runs() {
    // functionary-medium-v3.1's shape: Jinja2 would write `Use &#39;f&#39;`, minijinja `Use 'f'`.
    let src = "{% if tools %}{% for t in tools %}{{ \"Use '\"|safe + t.name + \"'\"|safe }}{% endfor %}{% endif %}\
               {% for m in messages %}{{ m.content }}{% endfor %}";
    let template = ChatTemplate::new(src).unwrap();
    let messages = serde_json::json!([{"role": "user", "content": "hi"}]);
    let plain = template.render(&messages, false, &SpecialTokens::new(), None).unwrap();
    assert_eq!(plain.text, "hi");
    let mut extra = Map::new();
    extra.insert("tools".into(), serde_json::json!([{"name": "f"}]));
    let err = template.render(&messages, false, &SpecialTokens::new(), Some(&extra)).unwrap_err().to_string();
    assert!(err.contains("Markup") && err.contains("refuses"), "{err}");
    // `~` with a safe string prints the same in Jinja2: not refused.
    let tilde = ChatTemplate::new("{{ '<a>' ~ (messages[0].content | safe) ~ '</a>' }}").unwrap();
    assert_eq!(tilde.render(&messages, false, &SpecialTokens::new(), None).unwrap().text, "<a>hi</a>");
}

/// Runs `f` on its own thread and fails the test when it has not returned within `limit`, so
/// that a render without bounds fails the run instead of hanging it.
fn within<T: Send + 'static>(limit: std::time::Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the render did not stop within {limit:?}"))
}

#[test]
fn runaway_loops_run_out_of_fuel() {
    // 99999² iterations: hours of work without a bound. The loops print nothing, so only the
    // step limit can stop them (the output limit never triggers).
    let src = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}";
    let err = within(std::time::Duration::from_secs(60), move || {
        render(src, serde_json::json!([])).unwrap_err().to_string()
    });
    assert!(err.contains("the chat template") && err.contains("steps"), "{err}");
}

/// The error of a render expected to fail (without printing megabytes when it succeeds).
fn render_err(src: &str) -> String {
    match render(src, serde_json::json!([])) {
        Ok(r) => panic!("rendered {} bytes instead of failing", r.text.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn output_beyond_the_limit_is_refused() {
    // Printed values: 17 × 1 MiB.
    let err = render_err("{% for i in range(17) %}{{ 'x' * 1048576 }}{% endfor %}");
    assert!(err.contains("16 MiB"), "{err}");
    // Template text: 17 × 1024 × 1 KiB.
    let raw = format!("{{% for i in range(17408) %}}{}{{% endfor %}}", "y".repeat(1024));
    let err = render_err(&raw);
    assert!(err.contains("16 MiB"), "{err}");
    // Text that a macro captures and doubles 25 times (32 MiB) before printing only its length.
    let doubling = "{% macro d(n) %}{% if n %}{% set x = d(n - 1) %}{{ x }}{{ x }}{% else %}x{% endif %}\
                    {% endmacro %}{{ d(25) | length }}";
    let err = render_err(doubling);
    assert!(err.contains("16 MiB"), "{err}");
    // Just under the limit renders.
    let ok = render("{% for i in range(15) %}{{ 'x' * 1048576 }}{% endfor %}", serde_json::json!([])).unwrap();
    assert_eq!(ok.text.len(), 15 << 20);
}

#[test]
fn limit_errors_name_the_template_and_the_limit() {
    let dir = temp_dir("names");
    let runaway = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}";
    let render_err = |t: ChatTemplate| {
        t.render(&serde_json::json!([]), false, &SpecialTokens::new(), None).unwrap_err().to_string()
    };
    let cfg = dir.join("tokenizer_config.json");
    std::fs::write(&cfg, serde_json::json!({"chat_template": runaway}).to_string()).unwrap();
    let err = render_err(ChatTemplate::from_tokenizer_dir(&dir).unwrap().unwrap());
    assert_eq!(
        err,
        format!(
            "chat template: the tokenizer's chat_template ({}) ran past the limit of 10000000 steps for one \
             conversation (a loop that does not end?)",
            cfg.display()
        )
    );
    let jinja = dir.join("chat_template.jinja");
    std::fs::write(&jinja, "{% for i in range(17) %}{{ 'x' * 1048576 }}{% endfor %}").unwrap();
    let err = render_err(ChatTemplate::from_tokenizer_dir(&dir).unwrap().unwrap());
    assert_eq!(
        err,
        format!("chat template: {} wrote more than 16 MiB of text for one conversation, the limit", jinja.display())
    );
    let file = dir.join("mine.jinja");
    std::fs::write(&file, runaway).unwrap();
    let err = render_err(ChatTemplate::from_file(&file).unwrap());
    assert!(err.starts_with(&format!("chat template: {} ran past the limit", file.display())), "{err}");
    std::fs::write(&file, "{% if %}").unwrap();
    let err = ChatTemplate::from_file(&file).unwrap_err().to_string();
    assert!(err.starts_with(&format!("chat template: {}: syntax error", file.display())), "{err}");
    assert_eq!(ChatTemplate::builtin("chatml").unwrap().name(), "the built-in template `chatml`");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn template_files_that_are_not_regular_are_refused() {
    let dir = temp_dir("fifo");
    crate::io::file::mkfifo(&dir.join("chat_template.jinja"));
    let d = dir.clone();
    let err = within(std::time::Duration::from_secs(20), move || {
        ChatTemplate::from_tokenizer_dir(&d).unwrap_err().to_string()
    });
    assert!(err.contains("chat_template.jinja") && err.contains("a FIFO"), "{err}");
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("tokenizer_config.json")).unwrap();
    let err = ChatTemplate::from_tokenizer_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json") && err.contains("a character device"), "{err}");
    let zero = dir.join("tokenizer_config.json");
    let err = ChatTemplate::from_file(&zero).unwrap_err().to_string();
    assert!(err.contains("a character device"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn minijinja_panics_are_template_errors_naming_the_template() {
    // minijinja 2.24 panics on `seq[::-1]` of an empty list and on `{% break %}` inside a
    // generation block (which pyft rewrites into a call block).
    for src in ["{% for m in messages[::-1] %}{{ m }}{% endfor %}",
                "{% for m in [1] %}{% generation %}{% break %}{% endgeneration %}{% endfor %}"] {
        let template = ChatTemplate::new(src).map(|t| t.with_name("`t.jinja`"));
        let err = template.and_then(|t| t.render(&serde_json::json!([]), false, &SpecialTokens::new(), None)).unwrap_err();
        assert!(matches!(&err, Error::Template(m) if m.contains("`t.jinja` failed on this conversation")), "{src}: {err}");
    }
}
