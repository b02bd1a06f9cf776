//! Data preparation: conversation files to validated, templated, masked, packed token shards.

pub mod tokenize;
