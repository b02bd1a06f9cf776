//! `pyft._core`: the thin PyO3 binding over `pyft-core`.
use pyo3::prelude::*;

/// The compiled core of pyft.
#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}
