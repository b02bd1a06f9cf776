//! Files: reading safetensors (memory-mapped, validated), writing them as a stream, staging outputs
//! and the rule that keeps outputs away from inputs.

pub mod file;
pub mod safetensors;
pub mod paths;
pub mod staging;
