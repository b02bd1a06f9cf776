//! Merging LoRA-family adapters into base models, streamed tensor by tensor.
//!
//! [`MergedModel`] is the merged model as a tensor source (validated up front, each tensor computed
//! on demand); [`merge_model`] writes it as safetensors shards; the GGUF exporter reads it too.

pub mod combine;
pub mod lora;
pub mod model;
pub mod source;
pub mod svd;

pub use model::{merge_model, MergeOptions, MergeReport};
pub use source::{AdapterInput, Combine, MergedModel, SourceTensor};
