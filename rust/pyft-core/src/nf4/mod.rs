//! 4-bit NormalFloat (NF4) quantization, byte for byte like bitsandbytes (spec `nf4.md`).
//!
//! - [`tables`]: the NF4 values, their thresholds and the 8-bit dynamic map CODE8.
//! - [`quantize`]: blockwise quantization (block sizes 32–4096) into packed nibbles + f32 scales.
//! - [`double_quant`]: 8-bit quantization of the block scales (blocks of 256, mean offset).
//! - [`dequant`]: back to f32 (for merging and export from 4-bit checkpoints).
//! - [`state`]: the JSON quant-state blob and tensor names of the checkpoint format.
//! - [`checkpoint`]: a bitsandbytes 4-bit checkpoint's weights found across shards and read back
//!   as 16-bit values (the merge and export source of an NF4 base).

#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod checkpoint;
pub mod dequant;
pub mod double_quant;
pub mod quantize;
pub mod state;
pub mod tables;

pub use double_quant::{double_quantize, mean_offset, NestedScales, NESTED_BLOCKSIZE};
pub use quantize::{quantize, Compat, Nf4Layout, BLOCKSIZES};
pub use state::Nf4Meta;
