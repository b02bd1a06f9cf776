//! Merging adapters into base models, streamed tensor by tensor: LoRA, rsLoRA, DoRA (added
//! deltas, combinable), IA3 (scaling) and OFT (block rotations), each merged in f32 and rounded
//! once. The other PEFT-family methods add tokens or activations and are refused with what to
//! do instead ([`adapter::classify`]).
//!
//! [`MergedModel`] is the merged model as a tensor source (validated up front, each tensor computed
//! on demand); [`merge_model`] writes it as safetensors shards; the GGUF exporter reads it too.

pub mod adapter;
pub mod combine;
pub mod ia3;
pub mod lora;
pub mod model;
pub mod oft;
pub mod source;
pub mod svd;

pub use adapter::{Adapter, Kind};
pub use model::{merge_model, MergeOptions, MergeReport};
pub use source::{AdapterInput, Combine, MergedModel, SourceTensor};
