//! Token shards: int32 arrays in safetensors files, written into a staging directory
//! ([`crate::io::staging::StagingDir`]) that replaces the output directory only once everything is written.
//!
//! Layout of an output directory (see also `meta.json`, written by the pipeline):
//! ```text
//! OUT/meta.json
//! OUT/train/shard-00000.safetensors   (and more shards when large)
//! OUT/validation/shard-00000.safetensors
//! ```
//! A chat/text shard holds 1-D int32 tensors:
//! - `input_ids` `[T]`, `labels` `[T]` (-100 = not trained on) — all documents back to back;
//! - `doc_offsets` `[D+1]`: document `d` is `input_ids[doc_offsets[d]..doc_offsets[d+1]]`;
//! - `row_offsets` `[R+1]`: row `r` holds documents `row_offsets[r]..row_offsets[r+1]` (one
//!   document per row unless packed).
//!
//! A preference shard holds `prompt_ids`, `chosen_ids`, `rejected_ids` with their
//! `*_offsets` `[N+1]`; a KTO shard `prompt_ids`, `completion_ids`, their offsets and `label`
//! `[N]` (1 desirable, 0 undesirable); a classify shard `input_ids`, `input_offsets` `[N+1]` and
//! `label` `[N]` (the index of the example's class in `meta.json`'s `classes.values`).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;

use crate::error::{Error, Result};

/// Named 1-D int32 columns that make one shard.
#[derive(Debug, Default)]
pub struct ShardColumns {
    columns: Vec<(String, Vec<i32>)>,
}

impl ShardColumns {
    /// Add a column.
    pub fn push(&mut self, name: &str, values: Vec<i32>) {
        self.columns.push((name.to_string(), values));
    }

    /// Write the columns as one safetensors file with `metadata` in its header.
    pub fn write(&self, path: &Path, metadata: Option<HashMap<String, String>>) -> Result<()> {
        let bytes: Vec<(String, Vec<u8>, usize)> = self
            .columns
            .iter()
            .map(|(n, v)| (n.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.len()))
            .collect();
        let views: Vec<(String, TensorView<'_>)> = bytes
            .iter()
            .map(|(n, b, len)| {
                TensorView::new(Dtype::I32, vec![*len], b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::File { path: path.to_path_buf(), message: format!("tensor `{n}`: {e}") })
            })
            .collect::<Result<_>>()?;
        safetensors::serialize_to_file(views, metadata, path)
            .map_err(|e| Error::File { path: path.to_path_buf(), message: format!("cannot write shard: {e}") })
    }
}

/// Summary of one written shard, recorded in `meta.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShardInfo {
    /// Path relative to the output directory.
    pub file: String,
    /// Rows (training sequences, or examples for preference/KTO).
    pub rows: usize,
    /// Tokens in the shard.
    pub tokens: u64,
}

/// Convert a count to int32 for a shard column.
pub fn to_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Option(format!("{what} {v} does not fit in int32; lower the shard size")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_columns_round_trip_through_safetensors() {
        let base = std::env::temp_dir().join(format!("pyft-shards-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let mut cols = ShardColumns::default();
        cols.push("input_ids", vec![1, 2, 3]);
        cols.write(&base.join("s.safetensors"), None).unwrap();
        let bytes = std::fs::read(base.join("s.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("input_ids").unwrap();
        assert_eq!(t.dtype(), Dtype::I32);
        assert_eq!(t.shape(), &[3]);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
