//! Output staging and the output-vs-input rule, for the writers implemented in Python.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyft_core::io::{paths, staging};

use crate::error::to_pyerr;

/// Refuse an output that is, contains, or lies inside any input (real paths, symlinks resolved).
///
/// Args:
///     out (str): the output file or directory. inputs (list[str]): the command's inputs.
/// Raises:
///     ConfigError: the output overlaps an input.
#[pyfunction]
pub fn check_output_disjoint(py: Python<'_>, out: PathBuf, inputs: Vec<PathBuf>) -> PyResult<()> {
    let refs: Vec<&std::path::Path> = inputs.iter().map(PathBuf::as_path).collect();
    paths::check_output_disjoint(&out, &refs).map_err(|e| to_pyerr(py, e))
}

/// Remove the staging entries of output `name` in `parent` whose owner process has exited.
///
/// Returns:
///     int: how many were removed.
#[pyfunction]
pub fn remove_stale_staging(parent: PathBuf, name: String) -> usize {
    staging::remove_stale_staging(&parent, &name.into())
}

/// Delete directory `path` without ever leaving it half-deleted under its own name (renamed to a
/// staging name first).
#[pyfunction]
pub fn discard_dir(py: Python<'_>, path: PathBuf) -> PyResult<()> {
    py.detach(|| staging::discard_dir(&path)).map_err(|e| to_pyerr(py, e))
}

/// A directory staged beside `target` under a unique new name (`.NAME.pyft-stage-PID-NONCE`); stale
/// staging of dead processes is removed first. `commit()` puts it in place (an existing `target`,
/// allowed only with `overwrite`, is exchanged atomically and deleted); `discard()` or garbage
/// collection without commit deletes it.
#[pyclass(module = "pyft._core", name = "StagingDir")]
pub struct PyStagingDir {
    inner: Option<staging::StagingDir>,
    path: PathBuf,
}

#[pymethods]
impl PyStagingDir {
    #[new]
    #[pyo3(signature = (target, overwrite=false))]
    fn new(py: Python<'_>, target: PathBuf, overwrite: bool) -> PyResult<Self> {
        let inner = staging::StagingDir::new(&target, overwrite).map_err(|e| to_pyerr(py, e))?;
        Ok(PyStagingDir { path: inner.path().to_path_buf(), inner: Some(inner) })
    }

    /// The staging directory to write into.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Move the staged directory onto its target.
    fn commit(&mut self, py: Python<'_>) -> PyResult<()> {
        match self.inner.take() {
            Some(inner) => py.detach(|| inner.commit()).map_err(|e| to_pyerr(py, e)),
            None => Err(pyo3::exceptions::PyRuntimeError::new_err("staging directory already committed or discarded")),
        }
    }

    /// Delete the staged directory.
    fn discard(&mut self, py: Python<'_>) {
        if let Some(inner) = self.inner.take() {
            py.detach(|| drop(inner));
        }
    }
}

/// A file staged beside `target`: created new and exclusive (never following a link) under a unique
/// name; `commit()` renames it onto `target` (replacing an existing file only with `overwrite`);
/// `discard()` or garbage collection without commit deletes it.
#[pyclass(module = "pyft._core", name = "StagingFile")]
pub struct PyStagingFile {
    inner: Option<staging::StagingFile>,
    path: PathBuf,
}

#[pymethods]
impl PyStagingFile {
    #[new]
    #[pyo3(signature = (target, overwrite=false))]
    fn new(py: Python<'_>, target: PathBuf, overwrite: bool) -> PyResult<Self> {
        let (inner, _file) = staging::StagingFile::create(&target, overwrite).map_err(|e| to_pyerr(py, e))?;
        Ok(PyStagingFile { path: inner.path().to_path_buf(), inner: Some(inner) })
    }

    /// The staging file to write (it exists, empty).
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Rename the staged file onto its target.
    fn commit(&mut self, py: Python<'_>) -> PyResult<()> {
        match self.inner.take() {
            Some(inner) => inner.commit().map(drop).map_err(|e| to_pyerr(py, e)),
            None => Err(pyo3::exceptions::PyRuntimeError::new_err("staging file already committed or discarded")),
        }
    }

    /// Delete the staged file.
    fn discard(&mut self) {
        self.inner.take();
    }
}
