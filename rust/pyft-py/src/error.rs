//! The one bridge from `pyft_core::Error` to Python exceptions.
//!
//! Hierarchy (all importable from `pyft.errors`):
//! `PyftError` ─┬─ `DataError` (bad input records/files; has `.file`, `.line`, `.field`)
//!              ├─ `TemplateError` (chat template compile/render failures)
//!              ├─ `TokenizerError`
//!              └─ `ConfigError` (invalid options)
//! I/O failures become `OSError` with the path in the message (`FileExistsError` for an output that
//! exists without `--overwrite`); unusable tensor values `ValueError`.

use pyo3::exceptions::{PyException, PyFileExistsError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyft_core::Error;

pyo3::create_exception!(pyft._core, PyftError, PyException, "Base class of every pyft error.");
pyo3::create_exception!(pyft._core, DataError, PyftError, "Invalid input data: names the file, line and field.");
pyo3::create_exception!(pyft._core, TemplateError, PyftError, "A chat template failed to compile or render.");
pyo3::create_exception!(pyft._core, TokenizerError, PyftError, "A tokenizer could not be loaded or used.");
pyo3::create_exception!(pyft._core, ConfigError, PyftError, "An option or configuration value is invalid.");

/// Convert a core error into the matching Python exception.
pub fn to_pyerr(py: Python<'_>, err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
            PyFileExistsError::new_err(message)
        }
        Error::Io { .. } => PyOSError::new_err(message),
        Error::Record { location, field, .. } => {
            let e = DataError::new_err(message);
            let v = e.value(py);
            let _ = v.setattr("file", location.file.display().to_string());
            let _ = v.setattr("line", location.line);
            let _ = v.setattr("field", field);
            e
        }
        Error::File { path, .. } => {
            let e = DataError::new_err(message);
            let v = e.value(py);
            let _ = v.setattr("file", path.display().to_string());
            let _ = v.setattr("line", py.None());
            let _ = v.setattr("field", py.None());
            e
        }
        Error::Template(_) => TemplateError::new_err(message),
        Error::Tokenizer(_) => TokenizerError::new_err(message),
        Error::Option(_) => ConfigError::new_err(message),
        Error::Value(_) => PyValueError::new_err(message),
    }
}
