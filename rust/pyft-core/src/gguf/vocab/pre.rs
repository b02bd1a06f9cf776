//! `tokenizer.ggml.pre`: the converter's chkhsh method and pyft's policy (spec §3.3) for
//! tokenizers the hash table does not know.

use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::tables::{ACCEPTED_PRE, CHKHSH_TABLE, CHK_TXT};
use super::{load_hf_tokenizer, read_json};
use crate::error::{Error, Result};

/// The Llama-3 `Split` regex of tokenizer.json (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen2 `Split` regex (single digits; llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen3.5 `Split` regex (letters with marks; llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN35`).
const QWEN35_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// chkhsh of an encoded probe text: SHA-256 (lowercase hex) of Python's `str(list_of_ids)`,
/// e.g. `"[198, 4815, 3]"`.
pub(crate) fn chkhsh_of_ids(ids: &[u32]) -> String {
    let text = format!("[{}]", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", "));
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// chkhsh of the tokenizer.json at `path`: the probe text encoded with special tokens, as the
/// converter's `tokenizer.encode(chktxt)` does.
pub(crate) fn chkhsh(path: &Path) -> Result<String> {
    let tok = load_hf_tokenizer(path)?;
    let enc = tok.encode(CHK_TXT, true).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("cannot encode the pre-tokenizer probe text: {e}"),
    })?;
    Ok(chkhsh_of_ids(enc.get_ids()))
}

/// The converter's name for `hash` (the last matching entry, as its chain of `if`s does), when
/// llama.cpp also accepts that name (the table has BERT-only names such as `bert-bge`).
pub(crate) fn lookup(hash: &str) -> Option<&'static str> {
    CHKHSH_TABLE.iter().rev().find(|(h, _)| *h == hash).map(|(_, n)| *n).filter(|n| is_accepted(n))
}

/// Whether llama.cpp loads a gpt2 model with this `tokenizer.ggml.pre`.
pub(crate) fn is_accepted(name: &str) -> bool {
    ACCEPTED_PRE.contains(&name)
}

/// The pre-tokenizer family of a tokenizer.json, when its pre-tokenizer is exactly one that a
/// llama.cpp pre type reproduces: GPT-2's `ByteLevel` regex → `gpt-2`; a `Split` on the
/// Llama-3 / Qwen2 / Qwen3.5 regex followed by a regex-less `ByteLevel` → `llama-bpe` /
/// `qwen2` / `qwen35`. The normalizer must be absent or NFC.
pub(crate) fn guess_family(tokenizer_json: &Value) -> Option<&'static str> {
    let normalizer = tokenizer_json.get("normalizer").unwrap_or(&Value::Null);
    if !(normalizer.is_null() || normalizer.get("type").and_then(Value::as_str) == Some("NFC")) {
        return None;
    }
    let pre = tokenizer_json.get("pre_tokenizer")?;
    let ty = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_string);
    let flag = |v: &Value, k: &str, default: bool| v.get(k).and_then(Value::as_bool).unwrap_or(default);
    match ty(pre).as_deref() {
        Some("ByteLevel") if flag(pre, "use_regex", true) && !flag(pre, "add_prefix_space", true) => Some("gpt-2"),
        Some("Sequence") => {
            let list = pre.get("pretokenizers")?.as_array()?;
            let [split, byte_level] = list.as_slice() else { return None };
            if ty(split).as_deref() != Some("Split")
                || ty(byte_level).as_deref() != Some("ByteLevel")
                || flag(byte_level, "use_regex", true)
                || flag(byte_level, "add_prefix_space", true)
                || split.get("behavior").and_then(Value::as_str) != Some("Isolated")
                || flag(split, "invert", false)
            {
                return None;
            }
            match split.get("pattern")?.get("Regex")?.as_str()? {
                LLAMA3_REGEX => Some("llama-bpe"),
                QWEN2_REGEX => Some("qwen2"),
                QWEN35_REGEX => Some("qwen35"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Pick `tokenizer.ggml.pre` for the byte-level BPE tokenizer in `dir` (spec §3.3): the chkhsh
/// table; else `pre_override` (already validated); else the base model's name when its
/// tokenizer is recognized and pre-tokenizes the same way; else the family of the
/// pre-tokenizer regex; else `None` (the key is omitted). Never an unknown name.
pub(crate) fn choose_pre(
    dir: &Path,
    tokenizer_json: &Value,
    pre_override: Option<&str>,
    base_dir: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<Option<String>> {
    let path = dir.join("tokenizer.json");
    let hash = chkhsh(&path)?;
    if let Some(name) = lookup(&hash) {
        if let Some(o) = pre_override.filter(|o| *o != name) {
            warnings.push(format!(
                "pre-tokenizer override `{o}` ignored: the tokenizer is recognized by its chkhsh as `{name}`"
            ));
        }
        return Ok(Some(name.to_string()));
    }
    if let Some(o) = pre_override {
        return Ok(Some(o.to_string()));
    }
    if let Some(base) = base_dir {
        let base_path = base.join("tokenizer.json");
        match read_json(&base_path)? {
            None => warnings.push(format!("{}: not found, cannot reuse the base model's pre-tokenizer", base_path.display())),
            Some(base_json) => {
                let same = ["pre_tokenizer", "normalizer"].iter().all(|k| base_json.get(k) == tokenizer_json.get(k));
                match lookup(&chkhsh(&base_path)?) {
                    Some(name) if same => {
                        warnings.push(format!(
                            "tokenizer not in llama.cpp's pre-tokenizer table (chkhsh {hash}); using the base model's `{name}`"
                        ));
                        return Ok(Some(name.to_string()));
                    }
                    Some(name) => warnings.push(format!(
                        "base model pre-tokenizer `{name}` not reused: the fine-tune's pre_tokenizer/normalizer differ"
                    )),
                    None => warnings.push("the base model's tokenizer is not in llama.cpp's pre-tokenizer table either".into()),
                }
            }
        }
    }
    if let Some(name) = guess_family(tokenizer_json) {
        warnings.push(format!(
            "tokenizer not in llama.cpp's pre-tokenizer table (chkhsh {hash}); guessed `{name}` from the tokenizer.json pre-tokenizer"
        ));
        return Ok(Some(name.to_string()));
    }
    warnings.push(format!(
        "PRE-TOKENIZER NOT RECOGNIZED (chkhsh {hash}): `tokenizer.ggml.pre` omitted; llama.cpp will fall back to its \
         default pre-tokenizer and generation quality may degrade. Pass the pre-tokenizer name explicitly or the base model directory"
    ));
    Ok(None)
}

/// Check a user-given pre-tokenizer name against the names llama.cpp loads.
pub(crate) fn validate_override(name: &str) -> Result<()> {
    if is_accepted(name) {
        return Ok(());
    }
    Err(Error::Option(format!(
        "pre-tokenizer `{name}` is not one llama.cpp loads (it would refuse the file); known names: {}",
        ACCEPTED_PRE.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probe_text_is_the_pinned_one() {
        assert_eq!(CHK_TXT.chars().count(), 350);
        assert_eq!(CHK_TXT.len(), 431);
        let digest: String = Sha256::digest(CHK_TXT.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest, "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da");
    }

    #[test]
    fn chkhsh_formats_ids_like_python() {
        // sha256(b"[1, 2, 3]") and sha256(b"[]").
        assert_eq!(chkhsh_of_ids(&[1, 2, 3]), "a36b1f2c3f84522dd1005145646617d7054c0851e97c72a039c0bdfac9fa07f3");
        assert_eq!(chkhsh_of_ids(&[]), "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945");
    }

    #[test]
    fn table_lookup() {
        assert_eq!(lookup("0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"), Some("llama-bpe"));
        assert_eq!(lookup("e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea"), Some("qwen2"));
        assert_eq!(lookup("3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454"), Some("gpt-2"));
        // Repeated hash: the converter's later `if` wins (mpt, then olmo).
        let dup = CHKHSH_TABLE.iter().find(|(_, n)| *n == "olmo").unwrap().0;
        assert_eq!(lookup(dup), Some("olmo"));
        // A BERT-only name llama.cpp would refuse for a gpt2 vocab is never returned.
        assert!(CHKHSH_TABLE.iter().any(|(_, n)| *n == "bert-bge"));
        assert!(CHKHSH_TABLE.iter().filter_map(|(h, _)| lookup(h)).all(is_accepted));
        assert_eq!(lookup("00"), None);
        assert!(validate_override("qwen2").is_ok());
        assert!(validate_override("llama-3").unwrap_err().to_string().contains("llama-bpe"));
    }

    #[test]
    fn family_guess() {
        let split = |re: &str| {
            json!({"normalizer": null, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}})
        };
        assert_eq!(guess_family(&split(LLAMA3_REGEX)), Some("llama-bpe"));
        assert_eq!(guess_family(&split(QWEN2_REGEX)), Some("qwen2"));
        assert_eq!(guess_family(&split(r"\s+")), None);
        let gpt2 = json!({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}});
        assert_eq!(guess_family(&gpt2), Some("gpt-2"));
        let lower = json!({"normalizer": {"type": "Lowercase"}, "pre_tokenizer": gpt2["pre_tokenizer"]});
        assert_eq!(guess_family(&lower), None);
    }
}
