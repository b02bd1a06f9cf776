//! Which ggml type each tensor gets for a requested export type.
//!
//! Float types and Q8_0 follow llama.cpp's converter (`convert_hf_to_gguf.py --outtype`): vectors
//! (norms, biases, `rope_freqs`) F32, everything else the out-type, F16 when a row is not a
//! multiple of the block size. Q4_0 and the K-quant mixes follow `llama-quantize` without an
//! importance matrix applied to such a file (`src/llama-quant.cpp`): the output layer (or a tied
//! embedding) gets Q6_K, `attn_v` and `ffn_down` get Q6_K on the layers `use_more_bits` selects for
//! Q4_K_M/Q5_K_M, and rows that do not fit a 256-block type fall back (Q4_K→Q5_0, Q5_K→Q5_1,
//! Q6_K→Q8_0, then F16).

use crate::error::{Error, Result};
use crate::gguf::arch::{HParams, Role};
use crate::gguf::ggml_type::GgmlType;

/// A user-facing export type (`--qtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum QType {
    /// All 2-D weights F32.
    F32,
    /// All 2-D weights F16.
    F16,
    /// All 2-D weights BF16.
    BF16,
    /// All 2-D weights Q8_0 (as `convert_hf_to_gguf.py --outtype q8_0`).
    Q8_0,
    /// llama.cpp's `Q4_0` file type (output layer Q6_K).
    Q4_0,
    /// llama.cpp's `Q4_K_M` mix.
    Q4_K_M,
    /// llama.cpp's `Q5_K_M` mix.
    Q5_K_M,
    /// llama.cpp's `Q6_K` file type.
    Q6_K,
}

impl QType {
    /// Every export type, in the order `--help` lists them.
    pub const ALL: [QType; 8] = [QType::F32, QType::F16, QType::BF16, QType::Q8_0, QType::Q4_0, QType::Q4_K_M,
                                 QType::Q5_K_M, QType::Q6_K];

    /// The CLI name (`q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            QType::F32 => "f32",
            QType::F16 => "f16",
            QType::BF16 => "bf16",
            QType::Q8_0 => "q8_0",
            QType::Q4_0 => "q4_0",
            QType::Q4_K_M => "q4_k_m",
            QType::Q5_K_M => "q5_k_m",
            QType::Q6_K => "q6_k",
        }
    }

    /// Parse a CLI name, case-insensitively.
    pub fn from_name(name: &str) -> Result<QType> {
        QType::ALL.into_iter().find(|q| q.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
            let known: Vec<&str> = QType::ALL.iter().map(|q| q.name()).collect();
            Error::Option(format!("unknown GGUF quantization type `{name}` (supported: {})", known.join(", ")))
        })
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            QType::F32 => 0,
            QType::F16 => 1,
            QType::Q4_0 => 2,
            QType::Q8_0 => 7,
            QType::Q4_K_M => 15,
            QType::Q5_K_M => 17,
            QType::Q6_K => 18,
            QType::BF16 => 32,
        }
    }

    fn default_type(self) -> GgmlType {
        match self {
            QType::F32 => GgmlType::F32,
            QType::F16 => GgmlType::F16,
            QType::BF16 => GgmlType::BF16,
            QType::Q8_0 => GgmlType::Q8_0,
            QType::Q4_0 => GgmlType::Q4_0,
            QType::Q4_K_M => GgmlType::Q4_K,
            QType::Q5_K_M => GgmlType::Q5_K,
            QType::Q6_K => GgmlType::Q6_K,
        }
    }

    /// Whether the type comes from llama-quantize's rules rather than the converter's.
    pub fn is_llama_quantize(self) -> bool {
        matches!(self, QType::Q4_0 | QType::Q4_K_M | QType::Q5_K_M | QType::Q6_K)
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third between.
pub fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    // `i - n/8` is non-negative whenever the first test fails, so `%` equals C's remainder here.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama-quantize's fallback when a row of `ncols` does not fit `t`'s block size.
fn fallback(t: GgmlType, ncols: usize) -> GgmlType {
    if ncols.is_multiple_of(t.block_size()) {
        return t;
    }
    let f = match t {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if ncols.is_multiple_of(f.block_size()) { f } else { GgmlType::F16 }
}

/// The ggml type of a tensor with `role` whose rows have `ncols` values.
///
/// `has_output`: whether the file has a separate `output.weight` (otherwise the embedding doubles
/// as the output layer and gets its type). `model_is_70b`: llama.cpp's 70B bump of `attn_v`.
pub fn tensor_type(q: QType, role: Role, ncols: usize, hp: &HParams, has_output: bool, model_is_70b: bool) -> GgmlType {
    if role == Role::Vector {
        return GgmlType::F32;
    }
    if !q.is_llama_quantize() {
        let t = q.default_type();
        return if ncols.is_multiple_of(t.block_size()) { t } else { GgmlType::F16 };
    }
    let mut t = q.default_type();
    let n_layer = hp.n_layer;
    let k_mix = matches!(q, QType::Q4_K_M | QType::Q5_K_M);
    match role {
        Role::Output | Role::TokenEmbd if role == Role::Output || !has_output => {
            t = if !ncols.is_multiple_of(t.block_size()) {
                GgmlType::Q8_0
            } else if t != GgmlType::Q8_0 {
                GgmlType::Q6_K
            } else {
                t
            };
        }
        // llama-quantize counts a fused QKV (Phi-3) as the layer's attn_v.
        Role::AttnV(i) | Role::AttnQkv(i) => {
            if k_mix && use_more_bits(i, n_layer) {
                t = GgmlType::Q6_K;
            }
            if model_is_70b && matches!(t, GgmlType::Q4_K) {
                t = GgmlType::Q5_K;
            }
        }
        // llama-quantize matches `ffn_down` anywhere in the name, so the stacked experts and the
        // shared expert follow the same rule; for MoE models it takes the layer from the name.
        Role::FfnDown(i) | Role::FfnDownExps(i) | Role::FfnDownShexp(i) if k_mix && use_more_bits(i, n_layer) => {
            t = GgmlType::Q6_K
        }
        _ => {}
    }
    fallback(t, ncols)
}

/// llama-quantize's extra rules for models with exactly 8 experts (Mixtral-8x7B): `attn_k` and
/// `attn_v` become Q8_0, `attn_output` Q5_K in the Q4_K_M mix. `t` is [`tensor_type`]'s choice;
/// other models keep it.
pub fn eight_expert_type(q: QType, role: Role, ncols: usize, n_expert: u64, t: GgmlType) -> GgmlType {
    if n_expert != 8 || !q.is_llama_quantize() {
        return t;
    }
    let bumped = match role {
        Role::AttnK(_) | Role::AttnV(_) => GgmlType::Q8_0,
        Role::AttnOutput(_) if q == QType::Q4_K_M => GgmlType::Q5_K,
        _ => return t,
    };
    fallback(bumped, ncols)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(n_layer: usize) -> HParams {
        HParams { n_layer, n_embd: 256, n_head: 4, n_head_kv: 4, vocab_size: 512, tied: false }
    }

    #[test]
    fn use_more_bits_matches_llama_cpp() {
        // n = 32: i < 4, i >= 28, or (i - 4) % 3 == 2 (C remainder, i >= 4 here).
        let picked: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(picked, vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        // n = 2: n/8 = 0, 7n/8 = 1: layers 1 (last eighth) and those with i % 3 == 2.
        let picked: Vec<usize> = (0..2).filter(|&i| use_more_bits(i, 2)).collect();
        assert_eq!(picked, vec![1]);
    }

    #[test]
    fn q4_k_m_mix() {
        let h = hp(32);
        let t = |role| tensor_type(QType::Q4_K_M, role, 4096, &h, true, false);
        assert_eq!(t(Role::Output), GgmlType::Q6_K);
        assert_eq!(t(Role::TokenEmbd), GgmlType::Q4_K);
        assert_eq!(t(Role::AttnV(0)), GgmlType::Q6_K);
        assert_eq!(t(Role::AttnV(4)), GgmlType::Q4_K);
        assert_eq!(t(Role::AttnQkv(0)), GgmlType::Q6_K);
        assert_eq!(t(Role::FfnDown(6)), GgmlType::Q6_K);
        assert_eq!(t(Role::AttnQ(0)), GgmlType::Q4_K);
        assert_eq!(t(Role::Vector), GgmlType::F32);
        // Tied: the embedding is the output layer.
        assert_eq!(tensor_type(QType::Q4_K_M, Role::TokenEmbd, 4096, &h, false, false), GgmlType::Q6_K);
        // Qwen2.5-0.5B-like rows of 896: fallbacks.
        assert_eq!(tensor_type(QType::Q4_K_M, Role::AttnQ(0), 896, &h, true, false), GgmlType::Q5_0);
        assert_eq!(tensor_type(QType::Q5_K_M, Role::AttnQ(0), 896, &h, true, false), GgmlType::Q5_1);
        assert_eq!(tensor_type(QType::Q4_K_M, Role::Output, 896, &h, true, false), GgmlType::Q8_0);
        assert_eq!(tensor_type(QType::Q8_0, Role::AttnQ(0), 48, &h, true, false), GgmlType::F16);
    }

    #[test]
    fn moe_rules() {
        let h = hp(32);
        assert_eq!(tensor_type(QType::Q4_K_M, Role::FfnDownExps(6), 4096, &h, true, false), GgmlType::Q6_K);
        assert_eq!(tensor_type(QType::Q4_K_M, Role::FfnDownShexp(5), 4096, &h, true, false), GgmlType::Q4_K);
        assert_eq!(tensor_type(QType::Q4_K_M, Role::FfnGateExps(0), 4096, &h, true, false), GgmlType::Q4_K);
        let eight = |q, role| eight_expert_type(q, role, 4096, 8, tensor_type(q, role, 4096, &h, true, false));
        assert_eq!(eight(QType::Q4_K_M, Role::AttnV(0)), GgmlType::Q8_0);
        assert_eq!(eight(QType::Q6_K, Role::AttnK(3)), GgmlType::Q8_0);
        assert_eq!(eight(QType::Q4_K_M, Role::AttnOutput(3)), GgmlType::Q5_K);
        assert_eq!(eight(QType::Q5_K_M, Role::AttnOutput(3)), GgmlType::Q5_K);
        assert_eq!(eight(QType::Q8_0, Role::AttnK(3)), GgmlType::Q8_0);
        assert_eq!(eight_expert_type(QType::Q4_K_M, Role::AttnV(4), 4096, 60, GgmlType::Q4_K), GgmlType::Q4_K);
    }
}
