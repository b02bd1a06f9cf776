//! Token shards: int32 arrays in safetensors files, written into a staging directory that
//! replaces the output directory only once everything is written.
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
//! `[N]` (1 desirable, 0 undesirable).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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

/// A directory being built next to its final location and moved into place by
/// [`StagingDir::commit`]. Dropped without commit, it is deleted: a failed run leaves nothing.
#[derive(Debug)]
pub struct StagingDir {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Create a fresh staging directory beside `target`. Fails if `target` exists and is not a
    /// directory, or exists and `overwrite` is false.
    pub fn new(target: &Path, overwrite: bool) -> Result<StagingDir> {
        if target.exists() {
            if !target.is_dir() {
                return Err(Error::File { path: target.to_path_buf(), message: "exists and is not a directory".into() });
            }
            if !overwrite {
                return Err(Error::File {
                    path: target.to_path_buf(),
                    message: "output directory already exists (pass overwrite to replace it)".into(),
                });
            }
        }
        let name = target
            .file_name()
            .ok_or_else(|| Error::File { path: target.to_path_buf(), message: "not a valid output directory".into() })?
            .to_string_lossy()
            .to_string();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(StagingDir { tmp, target: target.to_path_buf(), committed: false })
    }

    /// The directory to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Move the staged directory to its target. An existing target is first moved aside and
    /// deleted only after the new one is in place.
    pub fn commit(mut self) -> Result<()> {
        let old = self.tmp.with_extension("old");
        let had_old = self.target.exists();
        if had_old {
            std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.target) {
            if had_old {
                let _ = std::fs::rename(&old, &self.target);
            }
            return Err(Error::io(&self.target, e));
        }
        self.committed = true;
        if had_old {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Convert a count to int32 for a shard column.
pub fn to_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Option(format!("{what} {v} does not fit in int32; lower the shard size")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_commit_and_abort() {
        let base = std::env::temp_dir().join(format!("pyft-shards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let target = base.join("out");
        {
            let st = StagingDir::new(&target, false).unwrap();
            std::fs::write(st.path().join("a"), b"1").unwrap();
            // dropped without commit
        }
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0, "staging dir left behind");
        let st = StagingDir::new(&target, false).unwrap();
        let mut cols = ShardColumns::default();
        cols.push("input_ids", vec![1, 2, 3]);
        cols.write(&st.path().join("s.safetensors"), None).unwrap();
        st.commit().unwrap();
        let bytes = std::fs::read(target.join("s.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("input_ids").unwrap();
        assert_eq!(t.dtype(), Dtype::I32);
        assert_eq!(t.shape(), &[3]);
        assert!(StagingDir::new(&target, false).unwrap_err().to_string().contains("already exists"));
        let st = StagingDir::new(&target, true).unwrap();
        std::fs::write(st.path().join("b"), b"2").unwrap();
        st.commit().unwrap();
        assert!(target.join("b").exists() && !target.join("s.safetensors").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
