//! pyft's pure-Rust core.
//!
//! Everything here is plain Rust with no Python dependency; the `pyft-py` crate wraps it
//! for Python. Modules:
//! - [`data`]: reading conversation files, validation, chat templating, tokenization,
//!   loss masks, packing and the token-shard writer.
//! - [`guard`]: panics in third-party parsers (parquet, tokenizers, minijinja) as typed errors.
//! - [`gguf`]: GGUF files for llama.cpp/Ollama: writer, reader, quantizers, export.
//! - [`io`]: safetensors reading (validated, memory-mapped) and streaming writing.
//! - [`merge`]: folding LoRA-family adapters into base weights, tensor by tensor.
//! - [`nf4`]: 4-bit NormalFloat quantization, byte-compatible with bitsandbytes.
//! - [`tensor`]: element types and f32 conversion.
#![deny(missing_docs)]

pub mod data;
pub mod error;
pub mod gguf;
pub mod guard;
pub mod io;
pub mod merge;
pub mod nf4;
pub mod parallel;
pub mod tensor;

pub use error::{Error, Result};
