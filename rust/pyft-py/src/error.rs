//! The one bridge from `pyft_core::Error` to Python exceptions.
//!
//! Hierarchy (all importable from `pyft.errors`):
//! `PyftError` ─┬─ `DataError` (bad input records/files; has `.file`, `.line`, `.field`)
//!              ├─ `TemplateError` (chat template compile/render failures)
//!              ├─ `TokenizerError`
//!              ├─ `ConfigError` (invalid options)
//!              ├─ `ShapeError` (tensor shapes or buffer sizes that do not fit together)
//!              └─ `InternalError` (a pyft bug: the message asks for a report)
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
pyo3::create_exception!(pyft._core, ShapeError, PyftError,
                        "Tensor shapes or buffer sizes do not fit together; names the tensor and both sizes.");
pyo3::create_exception!(pyft._core, InternalError, PyftError,
                        "pyft broke one of its own invariants: a bug in pyft, to be reported.");

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
        Error::Shape(_) => ShapeError::new_err(message),
        Error::Internal(_) => InternalError::new_err(message),
        Error::Value(_) => PyValueError::new_err(message),
    }
}

/// Raise the Python exception that a core error of `kind` becomes, so tests can check the mapping
/// of kinds no valid input reaches (`internal`). Not part of pyft's API.
///
/// Args:
///     kind (str): `option`, `shape`, `internal`, `value`, `template`, `tokenizer` or `file`
///         (`file` names `message` as the file).
///     message (str): the core error's message.
/// Raises:
///     ConfigError, ShapeError, InternalError, ValueError, TemplateError, TokenizerError or
///     DataError: always; ValueError also for an unknown `kind`.
#[pyfunction]
pub fn _raise_core_error(py: Python<'_>, kind: &str, message: &str) -> PyResult<()> {
    let m = message.to_string();
    let err = match kind {
        "option" => Error::Option(m),
        "shape" => Error::Shape(m),
        "internal" => Error::Internal(m),
        "value" => Error::Value(m),
        "template" => Error::Template(m),
        "tokenizer" => Error::Tokenizer(m),
        "file" => Error::File { path: m.into(), message: "bad file".into() },
        other => return Err(PyValueError::new_err(format!("unknown core error kind `{other}`"))),
    };
    Err(to_pyerr(py, err))
}
