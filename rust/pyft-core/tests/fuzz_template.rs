//! Fuzzing the chat-template compiler and renderer (`pyft_core::data::template`). See
//! `fuzz_support` for the harness.
//!
//! Half of the templates come from a small grammar of Jinja fragments (loops with `loop.*`,
//! `break`/`continue`, conditions, namespaces, macros calling themselves, filters and Python
//! string methods, `raise_exception`, `{% generation %}` blocks, big `range`s and string
//! repetition, includes and imports that have nothing to load); the other half are the real
//! templates of `tests/data/template_cases.json` and the built-ins, cut, spliced and mixed with
//! grammar fragments. Each is compiled and rendered over random conversations (roles and content
//! of the wrong type, reserved characters, tool calls, tools).
//!
//! Contract: compiling and rendering return `Ok` or a template error; a render's text is at most
//! the renderer's output bound and its generation spans lie inside it on character boundaries.

mod fuzz_support;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use fuzz_support::{mutate_bytes, Campaign, Outcome, Rng};
use pyft_core::data::template::{ChatTemplate, SpecialTokens};
use pyft_core::error::Error;
use serde_json::{json, Map, Value};

/// The renderer's bound on one conversation's text (`data/template/limits.rs`, `MAX_TEXT`).
const MAX_TEXT: usize = 16 << 20;

fn var(rng: &mut Rng) -> String {
    rng.pick(&["messages", "message", "m", "messages[0]", "messages[-1]", "messages[1:]", "message['role']",
               "message.content", "m.content", "m['tool_calls']", "tools", "documents", "add_generation_prompt",
               "bos_token", "eos_token", "unknown", "loop.index", "loop.first", "loop.revindex0", "ns.x", "ns",
               "message.content[0]", "messages|length", "range(3)", "x", "i"])
        .to_string()
}

fn literal(rng: &mut Rng, big: bool) -> String {
    let n = if big { *rng.pick(&["99999", "1000000", "4294967296", "9223372036854775807", "1e308"]) } else {
        rng.pick(&["0", "1", "2", "-1", "3"])
    };
    if rng.chance(0.002) {
        return "'\u{FDD0}'".into(); // reserved for generation tracking: refused at compile time
    }
    rng.pick(&["'a'", "\"<|im_end|>\"", "''", "none", "true", "false", "[1, 'b', none]", "{'role': 'user'}",
               "1.5", "'{{ x }}'", n, "-0.0", "(1, 2)"])
        .to_string()
}

const FILTERS: &[&str] = &["tojson", "tojson(indent=2)", "trim", "length", "upper", "lower", "join(', ')", "string",
                           "first", "last", "indent(2)", "replace('a', 'b')", "default('d')", "list", "sort",
                           "unique", "reverse", "map(attribute='role')", "selectattr('role', 'equalto', 'user')",
                           "items", "dictsort", "int", "float", "abs", "round", "batch(2)", "title", "capitalize",
                           "safe", "escape", "count", "sum", "min", "max", "truncate(3)", "wordcount", "attr('role')",
                           "groupby('role')", "rejectattr('content')", "tojson|safe"];

const METHODS: &[&str] = &[".strip()", ".split(' ')", ".startswith('a')", ".endswith('>')", ".replace('a', 'b')",
                           ".upper()", ".get('role')", ".items()", ".keys()", ".values()", ".format(1)",
                           ".lstrip('<')", ".rsplit('|', 1)", ".title()", ".append(1)", ".pop()", ".index('x')"];

fn expr(rng: &mut Rng, depth: usize, big: bool) -> String {
    if depth == 0 || rng.chance(0.3) {
        return if rng.chance(0.6) { var(rng) } else { literal(rng, big) };
    }
    let a = expr(rng, depth - 1, big);
    match rng.below(9) {
        0 | 1 => format!("{a}|{}", rng.pick(FILTERS)),
        2 => format!("{a}{}", rng.pick(METHODS)),
        3 => {
            let b = expr(rng, depth - 1, big);
            let op = rng.pick(&["+", "~", "*", "/", "//", "%", "**", "==", "!=", "<", "and", "or", "in", "not in"]);
            format!("({a} {op} {b})")
        }
        4 => format!("({a} is {})", rng.pick(&["defined", "none", "string", "mapping", "sequence", "iterable",
                                              "number", "undefined", "true", "divisibleby(2)"])),
        5 => format!("not {a}"),
        6 => format!("{a}[{}]", literal(rng, false)),
        7 => {
            let c = expr(rng, depth - 1, big);
            let d = expr(rng, depth - 1, big);
            format!("({a} if {c} else {d})")
        }
        _ => format!("raise_exception({a})"),
    }
}

/// A block of template text from the grammar; `big` allows loops and repetitions that only the
/// renderer's bounds stop.
fn block(rng: &mut Rng, depth: usize, big: bool) -> String {
    let n = rng.range(1, 3);
    (0..n).map(|_| statement(rng, depth, big)).collect()
}

fn statement(rng: &mut Rng, depth: usize, big: bool) -> String {
    let leaf = depth == 0 || rng.chance(0.25);
    let e = expr(rng, 2, big);
    if leaf {
        return match rng.below(7) {
            0 | 6 => rng.pick(&["<|im_start|>", "\n", " ", "{#- c -#}", "{{- '' -}}", "{% raw %}{{x}}{% endraw %}",
                                "<|im_end|>\n", "{{ bos_token }}"])
                .to_string(),
            _ if rng.chance(0.05) => rng.pick(&["%}", "{{", "{#", "{% endfor %}", "{% else %}"]).to_string(),
            // With big loops, an assignment such as `x = x ~ x` would double a string up to
            // 2^(millions) bytes: minijinja has no bound on a value's size (`fuzz_template_known_failures`).
            1 | 2 => {
                let value = if big { literal(rng, false) } else { e };
                format!("{{% set {} = {value} %}}", rng.pick(&["x", "ns.x"]))
            }
            3 if rng.chance(0.3) => rng.pick(&["{% break %}", "{% continue %}", "{% include 'x' %}",
                                               "{% import 'x' as y %}", "{% extends 'x' %}"])
                .to_string(),
            3 => rng.pick(&["{{ strftime_now('%Y-%m-%d') }}", "{{ strftime_now('%Q%') }}",
                            "{{ messages|tojson }}"])
                .to_string(),
            _ => format!("{{{{ {e} }}}}"),
        };
    }
    let body = block(rng, depth - 1, big);
    match rng.below(9) {
        0 | 1 => {
            let it = if big && rng.chance(0.3) {
                format!("range({})", rng.pick(&["99999", "1000000", "9223372036854775807"]))
            } else {
                rng.pick(&["messages", "range(3)", "messages|reverse", "tools", "message.content", "'abc'",
                           "messages|selectattr('role', 'equalto', 'user')", "{'a': 1}.items()", "none", "range(-2)"])
                    .to_string()
            };
            let name = rng.pick(&["m", "message", "i", "x"]);
            let tail = if rng.chance(0.2) { "{% else %}empty" } else { "" };
            format!("{{% for {name} in {it} %}}{body}{tail}{{% endfor %}}")
        }
        2 => {
            let other = block(rng, depth - 1, big);
            format!("{{% if {e} %}}{body}{{% elif {} %}}{other}{{% else %}}x{{% endif %}}", expr(rng, 1, big))
        }
        3 => format!("{{% set ns = namespace(x={}) %}}{body}", literal(rng, false)),
        4 => format!("{{% macro r(n) %}}{body}{{% if n > 0 %}}{{{{ r(n - 1) }}}}{{% endif %}}{{% endmacro %}}\
                      {{{{ r({}) }}}}", literal(rng, big)),
        5 => format!("{{% generation %}}{body}{{% endgeneration %}}"),
        6 => format!("{{% filter upper %}}{body}{{% endfilter %}}"),
        7 => format!("{{% set captured %}}{body}{{% endset %}}{{{{ captured ~ captured }}}}"),
        _ => {
            let times = if big { *rng.pick(&["10**8", "10**12", "999999999999"]) } else { "3" };
            format!("{{{{ ({e}|string) * {times} }}}}{body}")
        }
    }
}

/// The real templates (transformers' reference cases) and the built-ins.
fn real_templates() -> &'static [String] {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/template_cases.json");
        let cases: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
        let mut out: Vec<String> = cases["templates"].as_object().expect("templates").values()
            .filter_map(|t| t.as_str().map(str::to_owned)).collect();
        let builtins = ChatTemplate::builtin_names().iter().filter_map(|n| ChatTemplate::builtin_source(n));
        out.extend(builtins.map(str::to_owned));
        out
    })
}

/// A real template, sometimes as it is, else damaged: a span cut out or repeated, a grammar
/// fragment spliced in, byte-level damage.
fn mutated_real(rng: &mut Rng, big: bool) -> String {
    let mut t = rng.pick(real_templates()).clone().into_bytes();
    for _ in 0..rng.range(0, 3) {
        let len = t.len();
        let (a, b) = (rng.below(len + 1), rng.below(len + 1));
        let (a, b) = (a.min(b), a.max(b).min(a.min(b) + 200));
        match rng.below(4) {
            0 => {
                t.drain(a..b);
            }
            1 => {
                let span = t[a..b].to_vec();
                t.splice(a..a, span);
            }
            2 => {
                let fragment = statement(rng, 2, big).into_bytes();
                t.splice(a..a, fragment);
            }
            _ => mutate_bytes(rng, &mut t, 1),
        }
    }
    String::from_utf8_lossy(&t).into_owned()
}

fn content(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => Value::Null,
        1 => json!(7),
        2 => json!([{"type": "text", "text": "part"}, {"type": "image"}]),
        3 if rng.chance(0.1) => json!("\u{FDD0}reserved\u{FDD1}"),
        4 => json!("x".repeat(rng.range(100, 5000))),
        _ => json!(rng.pick(&["hi", "", "<|im_end|>", "{{ bos_token }}", "é\u{1F600}", "\0"])),
    }
}

/// A conversation, `add_generation_prompt`, special tokens and extra variables.
fn conversation(rng: &mut Rng) -> (Value, bool, SpecialTokens, Option<Map<String, Value>>) {
    let n = rng.small(6);
    let messages: Vec<Value> = (0..n).map(|_| {
        let mut m = json!({"role": rng.pick(&["system", "user", "assistant", "tool", "ipython", "", "USER"]),
                           "content": content(rng)});
        if rng.chance(0.15) {
            m["tool_calls"] = json!([{"type": "function", "function": {"name": "get", "arguments": {"q": 1}}}]);
        }
        if rng.chance(0.1) {
            m["reasoning_content"] = content(rng);
        }
        if rng.chance(0.05) {
            m = json!(rng.pick(&[json!(1), json!("text"), Value::Null]));
        }
        m
    }).collect();
    let messages = if rng.chance(0.03) { json!({"messages": messages}) } else { Value::Array(messages) };
    let special = SpecialTokens {
        map: serde_json::from_value(json!({"bos_token": "<s>", "eos_token": rng.pick(&["</s>", "\u{FDD1}", ""]),
                                          "pad_token": null}))
            .unwrap(),
    };
    let extra = rng.chance(0.3).then(|| {
        let mut extra = Map::new();
        extra.insert("tools".into(), json!([{"type": "function", "function": {"name": "get", "parameters": {}}}]));
        if rng.chance(0.2) {
            extra.insert(rng.pick(&["messages", "enable_thinking", "documents"]).to_string(), json!(true));
        }
        extra
    });
    (messages, rng.chance(0.5), special, extra)
}

/// A case: the template source, then a NUL, then the seed of its conversations.
fn generate(rng: &mut Rng) -> Vec<u8> {
    // Big loops and repetitions in one case in 150: the renderer's bounds stop them, after about
    // 3 s per render in this unoptimised build (10 million steps), so they are kept rare.
    let big = rng.chance(1.0 / 150.0);
    let source = if rng.chance(0.5) { block(rng, 3, big) } else { mutated_real(rng, big) };
    [source.into_bytes(), vec![0], rng.u64().to_le_bytes().to_vec()].concat()
}

fn check(_path: &Path, bytes: &[u8]) -> Result<Outcome, String> {
    // Corpus files are plain template sources (conversations from a fixed seed).
    let (source, seed) = match bytes.iter().rposition(|&b| b == 0) {
        Some(i) if bytes.len() - i == 9 => (&bytes[..i], u64::from_le_bytes(bytes[i + 1..].try_into().unwrap())),
        _ => (bytes, 0),
    };
    let source = String::from_utf8_lossy(source);
    let template = match ChatTemplate::new(&source) {
        Ok(t) => t,
        Err(Error::Template(message)) => return Ok(Outcome::Refused(message)),
        Err(e) => return Err(format!("compile failed with a non-template error: {e}")),
    };
    let mut rng = Rng::new(seed);
    let mut outcome = Outcome::Accepted;
    for i in 0..3 {
        let (mut messages, agp, special, extra) = conversation(&mut rng);
        if i == 0 && seed == 0 {
            messages = json!([]); // corpus files: an empty conversation first
        }
        match template.render(&messages, agp, &special, extra.as_ref()) {
            Ok(r) => {
                if r.text.len() > MAX_TEXT {
                    return Err(format!("rendered {} bytes, over the {MAX_TEXT}-byte bound", r.text.len()));
                }
                let mut end = 0;
                for span in &r.generation_spans {
                    if span.start < end || span.end < span.start || span.end > r.text.len()
                        || !r.text.is_char_boundary(span.start) || !r.text.is_char_boundary(span.end) {
                        return Err(format!("generation span {span:?} is not inside the {}-byte text in order",
                                           r.text.len()));
                    }
                    end = span.end;
                }
            }
            Err(Error::Template(message)) => {
                // A render that ran into a bound took its time; one is enough.
                let limit = message.contains("limit");
                outcome = Outcome::Refused(message);
                if limit {
                    break;
                }
            }
            Err(e) => return Err(format!("render failed with a non-template error: {e}")),
        }
    }
    Ok(outcome)
}

#[test]
fn fuzz_template() {
    // A render that uses up the renderer's 10 million steps takes about 3 s unoptimised (1 s in
    // release, `data/template/limits.rs`); a case stops rendering at its first such refusal.
    let bound = if cfg!(debug_assertions) { 8.0 } else { 2.0 };
    Campaign::new("template", "jinja", 600).with_case_bound(bound).fuzz(check, generate);
}

/// The one known limit left (`known-failures/abort-double-string.jinja`): a string doubled in a
/// loop (`{% set ns.s = ns.s ~ ns.s %}`) reaches 2^40 bytes in 40 steps, and neither pyft's step
/// bound nor its output cap sees it (the string is never printed). minijinja (2.24, the newest
/// 2.x; 3.1 likewise) has fuel and a recursion limit but no bound on the size of a value, and
/// `~` is its own operator, so pyft cannot hook it. The allocation fails and the process aborts:
/// this test ends the test process while that lasts, so it is `#[ignore]`d; the generator keeps
/// doubling out of its big loops (see `statement`).
#[test]
#[ignore = "known limit: minijinja has no bound on string size (string doubling aborts the process)"]
fn fuzz_template_known_failures() {
    let mut c = Campaign::new("template", "jinja", 0);
    c.replay_known_failures(Arc::new(check));
    c.finish();
}
