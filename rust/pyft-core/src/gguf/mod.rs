//! GGUF v3 files for llama.cpp and Ollama: element types, metadata values, the writer, the
//! reader, quantizers, tokenizer metadata and the HF → GGUF model/adapter export.
//!
//! Format reference: `shared/specs/gguf.md` (GGUF v3, little-endian, alignment 32).

pub mod ggml_type;
pub mod value;
pub mod vocab;

pub use ggml_type::GgmlType;
pub use value::{GgufArray, GgufValue};
