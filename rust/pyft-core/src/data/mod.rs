//! Data preparation: conversation files to validated, templated, masked, packed token shards.

pub mod read;
pub mod formats;
pub mod pack;
pub mod mask;
pub mod shards;
pub mod progress;
pub mod split;
