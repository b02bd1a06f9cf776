//! pyft's pure-Rust core.
//!
//! Everything here is plain Rust with no Python dependency; the `pyft-py` crate wraps it
//! for Python. Modules:
//! - [`data`]: reading conversation files, validation, chat templating, tokenization,
//!   loss masks, packing and the token-shard writer.
#![deny(missing_docs)]

pub mod data;
pub mod parallel;
pub mod error;

pub use error::{Error, Result};
