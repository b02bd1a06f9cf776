//! GGUF v3 files for llama.cpp and Ollama: element types, metadata values, the writer, the
//! reader, quantizers, tokenizer metadata and the HF → GGUF model/adapter export.
//!
//! Format reference: `shared/specs/gguf.md` (GGUF v3, little-endian, alignment 32).

pub mod arch;
pub mod export;
pub mod ggml_type;
pub mod lora;
pub mod mix;
pub mod quant;
pub mod reader;
pub mod support;
pub mod value;
pub mod vocab;
pub mod writer;

pub use ggml_type::GgmlType;
pub use quant::{dequantize_row, quantize_row, quantize_rows};
pub use reader::{GgufFile, GgufHeader, GgufTensorInfo};
pub use value::{GgufArray, GgufValue};
