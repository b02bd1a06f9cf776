//! Merging LoRA-family adapters into base models, streamed tensor by tensor.

pub mod lora;
pub mod model;

pub use model::{merge_model, MergeOptions, MergeReport};
