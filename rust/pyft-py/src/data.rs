//! Bindings of `pyft_core::data`: `prepare`, the tokenizer and the chat templates.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyft_core::data::columns::ColumnMap;
use pyft_core::data::encode::TrainOn;
use pyft_core::data::formats::Format;
use pyft_core::data::prepare::{prepare as core_prepare, Overlong, PrepareOptions, TemplateChoice, Truncation};
use pyft_core::data::template::{ChatTemplate, SpecialTokens};
use pyft_core::data::tokenize::Tokenizer;

use crate::error::to_pyerr;

/// Prepare training data: read, validate, template, tokenize, mask, pack and write shards.
///
/// Args:
///     inputs (list[str]): data files (.jsonl, .json, .parquet).
///     tokenizer (str): a tokenizer directory or tokenizer.json file.
///     out_dir (str): output directory (written atomically).
///     (see `pyft.data.prepare` for the other options; one left out, or None, keeps the default
///     that `prepare_defaults` reports)
/// Returns:
///     str: the content of the written meta.json.
#[pyfunction]
#[pyo3(signature = (inputs, tokenizer, out_dir, *, mix=Vec::new(), format=None, columns=Vec::new(), template=None,
                    train_on=None, max_len=None, overlong=None, truncation=None, pack=None, on_error=None, dedup=None,
                    val_ratio=None, seed=None, system_prompt=None, shard_tokens=None, overwrite=None, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    py: Python<'_>,
    inputs: Vec<PathBuf>,
    tokenizer: PathBuf,
    out_dir: PathBuf,
    mix: Vec<(PathBuf, f64)>,
    format: Option<&str>,
    columns: Vec<String>,
    template: Option<&str>,
    train_on: Option<&str>,
    max_len: Option<usize>,
    overlong: Option<&str>,
    truncation: Option<&str>,
    pack: Option<bool>,
    on_error: Option<&str>,
    dedup: Option<bool>,
    val_ratio: Option<f64>,
    seed: Option<u64>,
    system_prompt: Option<String>,
    shard_tokens: Option<usize>,
    overwrite: Option<bool>,
    progress: Option<bool>,
) -> PyResult<String> {
    let build = || -> pyft_core::Result<PrepareOptions> {
        let mut o = PrepareOptions::new(inputs, tokenizer, out_dir);
        o.mix = mix;
        o.format = format.map(Format::from_name).transpose()?;
        o.columns = ColumnMap::parse(&columns)?;
        if let Some(t) = template {
            o.template = TemplateChoice::parse(t);
        }
        if let Some(t) = train_on {
            o.train_on = TrainOn::from_name(t)?;
        }
        o.max_len = max_len.unwrap_or(o.max_len);
        if let Some(t) = overlong {
            o.overlong = Overlong::from_name(t)?;
        }
        if let Some(t) = truncation {
            o.truncation = Truncation::from_name(t)?;
        }
        o.pack = pack.unwrap_or(o.pack);
        o.skip_invalid = match on_error {
            None => o.skip_invalid,
            Some("fail") => false,
            Some("skip") => true,
            Some(other) => {
                return Err(pyft_core::Error::Option(format!("unknown on_error `{other}` (expected fail or skip)")))
            }
        };
        o.dedup = dedup.unwrap_or(o.dedup);
        o.val_ratio = val_ratio.unwrap_or(o.val_ratio);
        o.seed = seed.unwrap_or(o.seed);
        o.system_prompt = system_prompt;
        o.shard_tokens = shard_tokens.unwrap_or(o.shard_tokens);
        o.overwrite = overwrite.unwrap_or(o.overwrite);
        o.progress = progress.unwrap_or(o.progress);
        Ok(o)
    };
    let opts = build().map_err(|e| to_pyerr(py, e))?;
    let meta = py.detach(|| core_prepare(&opts)).map_err(|e| to_pyerr(py, e))?;
    Ok(serde_json::to_string_pretty(&meta).unwrap_or_default())
}

/// The default option values of `prepare`, as a JSON object keyed by `pyft.data.prepare`'s
/// argument names (the single source of the defaults the Python signature and the CLI show).
#[pyfunction]
pub fn prepare_defaults() -> String {
    PrepareOptions::new(Vec::new(), PathBuf::new(), PathBuf::new()).settings().to_string()
}

/// The Jinja source of a built-in chat template (`chatml`, `llama3`, `alpaca`, ...).
#[pyfunction]
pub fn builtin_template(py: Python<'_>, name: &str) -> PyResult<String> {
    ChatTemplate::builtin(name).map(|t| t.source().to_string()).map_err(|e| to_pyerr(py, e))
}

/// Names of the built-in chat templates.
#[pyfunction]
pub fn builtin_template_names() -> Vec<&'static str> {
    ChatTemplate::builtin_names().to_vec()
}

/// Render a chat template with pyft's Rust renderer.
///
/// Args:
///     source (str): Jinja template source.
///     messages_json (str): the messages as a JSON array.
///     add_generation_prompt (bool): append the assistant header.
///     special_tokens_json (str): JSON object of special-token strings (bos_token, eos_token, ...).
/// Returns:
///     tuple[str, list[tuple[int, int]]]: the text and the `{% generation %}` spans as
///     *character* offsets (as transformers reports them).
#[pyfunction]
#[pyo3(signature = (source, messages_json, add_generation_prompt=false, special_tokens_json="{}", extra_json=None))]
pub fn render_template(
    py: Python<'_>,
    source: &str,
    messages_json: &str,
    add_generation_prompt: bool,
    special_tokens_json: &str,
    extra_json: Option<&str>,
) -> PyResult<(String, Vec<(usize, usize)>)> {
    let bad_json = |what: &str, e: serde_json::Error| pyft_core::Error::Option(format!("{what}: invalid JSON: {e}"));
    let run = || -> pyft_core::Result<(String, Vec<(usize, usize)>)> {
        let template = ChatTemplate::new(source)?;
        let messages: serde_json::Value = serde_json::from_str(messages_json).map_err(|e| bad_json("messages", e))?;
        let special: serde_json::Value = serde_json::from_str(special_tokens_json).map_err(|e| bad_json("special tokens", e))?;
        let extra: Option<serde_json::Map<String, serde_json::Value>> =
            extra_json.map(serde_json::from_str).transpose().map_err(|e| bad_json("extra", e))?;
        let special = SpecialTokens::from_tokenizer_config(&special);
        let r = template.render(&messages, add_generation_prompt, &special, extra.as_ref())?;
        let to_char = |b: usize| r.text[..b].chars().count();
        let spans = r.generation_spans.iter().map(|s| (to_char(s.start), to_char(s.end))).collect();
        Ok((r.text, spans))
    };
    py.detach(run).map_err(|e| to_pyerr(py, e))
}

/// Token ids and their `[start, end)` byte offsets.
type IdsAndOffsets = (Vec<u32>, Vec<(u32, u32)>);

/// A tokenizer loaded from a `tokenizer.json`, with ids identical to HF `tokenizers`.
#[pyclass(module = "pyft._core", name = "Tokenizer", frozen)]
pub struct PyTokenizer {
    inner: Tokenizer,
}

#[pymethods]
impl PyTokenizer {
    /// Load a `tokenizer.json` file.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<PyTokenizer> {
        py.detach(|| Tokenizer::from_file(&path)).map(|inner| PyTokenizer { inner }).map_err(|e| to_pyerr(py, e))
    }

    /// Encode `text`; returns `(ids, byte_offsets)`.
    #[pyo3(signature = (text, add_special_tokens=false))]
    fn encode(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> PyResult<IdsAndOffsets> {
        py.detach(|| self.inner.encode(text, add_special_tokens))
            .map(|e| (e.ids, e.offsets))
            .map_err(|e| to_pyerr(py, e))
    }

    /// Encode many texts in parallel; returns the id lists.
    #[pyo3(signature = (texts, add_special_tokens=false))]
    fn encode_batch(&self, py: Python<'_>, texts: Vec<String>, add_special_tokens: bool) -> PyResult<Vec<Vec<u32>>> {
        py.detach(|| {
            pyft_core::parallel::map(&texts, |t| self.inner.encode(t, add_special_tokens).map(|e| e.ids))
                .into_iter()
                .collect::<pyft_core::Result<Vec<_>>>()
        })
        .map_err(|e| to_pyerr(py, e))
    }

    /// Decode ids to text.
    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.inner.decode(&ids, skip_special_tokens).map_err(|e| to_pyerr(py, e))
    }

    /// The string of one token id, or None.
    fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id).map(|s| s.to_string())
    }

    /// The id of a token string, or None.
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is a special added token.
    fn is_special(&self, id: u32) -> bool {
        self.inner.is_special(id)
    }

    /// `fast-bpe` (pyft's byte-level BPE) or `hf` (the tokenizers crate).
    #[getter]
    fn backend(&self) -> String {
        self.inner.backend().to_string()
    }

    /// Why pyft's fast path does not encode this tokenizer (e.g. `model type "WordPiece"`), or
    /// None when `backend` is `fast-bpe`.
    #[getter]
    fn fallback_reason(&self) -> Option<String> {
        self.inner.fallback_reason().map(str::to_string)
    }

    /// Vocabulary size including added tokens.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
}
