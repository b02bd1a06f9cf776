//! Data preparation: conversation files to validated, templated, masked, packed token shards.

pub mod columns;
pub mod encode;
pub mod formats;
pub mod length;
pub mod mask;
pub mod output;
pub mod pack;
pub mod prepare;
pub mod progress;
pub mod read;
pub mod shards;
pub mod split;
pub mod template;
pub mod tokenize;
