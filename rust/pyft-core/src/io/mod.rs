//! Model files: reading safetensors (memory-mapped, validated) and writing them as a stream.

pub mod safetensors;
