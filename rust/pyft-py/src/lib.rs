//! `pyft._core`: the thin PyO3 binding over `pyft-core`.
//!
//! Every function extracts its arguments, releases the GIL for the work, and maps
//! `pyft_core::Error` to the Python exceptions of [`error`].

mod data;
mod error;
mod export;
mod inspect;
mod gguf_vocab;
mod merge;
mod nf4;
mod staging;
mod safetensors;

use pyo3::prelude::*;

/// In a forked child (PyTorch DataLoader workers) the parent's thread pool is gone: switch the
/// core to sequential work.
extern "C" fn after_fork_in_child() {
    pyft_core::parallel::mark_forked();
}

/// The compiled core of pyft.
#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    use super::data::{builtin_template, builtin_template_names, prepare, prepare_defaults, render_template, PyTokenizer};
    #[pymodule_export]
    use super::export::{export_gguf, export_gguf_lora, gguf_support};
    #[pymodule_export]
    use super::inspect::gguf_read_metadata;
    #[pymodule_export]
    use super::gguf_vocab::gguf_tokenizer_metadata;
    #[pymodule_export]
    use super::merge::merge;
    #[pymodule_export]
    use super::nf4::{nf4_double_quantize, nf4_quantize, nf4_state_json};
    #[pymodule_export]
    use super::safetensors::{safetensors_layout, safetensors_model_files};
    #[pymodule_export]
    use super::staging::{check_output_disjoint, discard_dir, remove_stale_staging, PyStagingDir, PyStagingFile};
    #[pymodule_export]
    use super::error::{
        _raise_core_error, ConfigError, DataError, InternalError, PyftError, ShapeError, TemplateError, TokenizerError,
    };

    use pyo3::prelude::*;

    #[allow(non_upper_case_globals)]
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");

    /// `release` or `debug`: benchmarks refuse debug builds.
    #[pyfunction]
    fn build_profile() -> &'static str {
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    }

    #[pymodule_init]
    fn init(_m: &Bound<'_, PyModule>) -> PyResult<()> {
        // SAFETY: registering a plain `extern "C"` function with no captured state.
        unsafe {
            libc::pthread_atfork(None, None, Some(super::after_fork_in_child));
        }
        Ok(())
    }
}
