//! ggml tensor element types: ids, block sizes and bytes per block.

use crate::error::{Error, Result};

/// A ggml tensor type as stored in a GGUF tensor-info record (`i32` id).
///
/// Only the types pyft writes or reads are listed; ids are ggml's (`ggml.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// 32 values: f16 scale + 16 bytes of 4-bit quants.
    Q4_0,
    /// 32 values: f16 scale, f16 min + 16 bytes of 4-bit quants.
    Q4_1,
    /// 32 values: f16 scale + 4 bytes of high bits + 16 bytes of low nibbles.
    Q5_0,
    /// 32 values: f16 scale, f16 min + 4 bytes of high bits + 16 bytes of low nibbles.
    Q5_1,
    /// 32 values: f16 scale + 32 signed bytes.
    Q8_0,
    /// 256 values: 4-bit K-quant (8 sub-blocks of 32 with 6-bit scales and mins).
    Q4_K,
    /// 256 values: 5-bit K-quant.
    Q5_K,
    /// 256 values: 6-bit K-quant (16 sub-blocks of 16 with 8-bit scales).
    Q6_K,
    /// bfloat16.
    BF16,
}

impl GgmlType {
    /// Every type pyft knows.
    pub const ALL: [GgmlType; 11] = [
        GgmlType::F32, GgmlType::F16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
        GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::BF16,
    ];

    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// The type with ggml id `id`, if pyft knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's name (`Q4_K`, `F16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Parse a type name, case-insensitively (`q8_0`, `F16`).
    pub fn from_name(name: &str) -> Result<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
            let known: Vec<&str> = GgmlType::ALL.iter().map(|t| t.name()).collect();
            Error::Option(format!("unknown ggml type `{name}` (known: {})", known.join(", ")))
        })
    }

    /// Values per block (1 for float types).
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }

    /// Whether this is a quantized (block) type.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of one row of `n` values, or `None` when `n` is not a multiple of the block size.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_size()).then(|| n / self.block_size() * self.type_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_sizes_match_ggml() {
        // Bytes per 512-value row from the spec's table (§4.1).
        let expected = [(GgmlType::F16, 1024), (GgmlType::BF16, 1024), (GgmlType::Q8_0, 544), (GgmlType::Q4_0, 288),
                        (GgmlType::Q4_K, 288), (GgmlType::Q5_K, 352), (GgmlType::Q6_K, 420), (GgmlType::F32, 2048)];
        for (t, bytes) in expected {
            assert_eq!(t.row_bytes(512), Some(bytes), "{}", t.name());
        }
        assert_eq!(GgmlType::Q4_K.row_bytes(896), None);
    }

    #[test]
    fn ids_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(&t.name().to_lowercase()).unwrap(), t);
        }
        assert!(GgmlType::from_name("q3_k").is_err());
    }
}
