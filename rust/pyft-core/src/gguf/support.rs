//! What pyft exports per HF architecture: its GGUF architecture and which PEFT LoRA modules a GGUF
//! LoRA adapter can carry. Derived from the export's own tables ([`SUPPORTED`], [`map_tensor`]), so
//! `pyft inspect --support` and the README cannot drift from what the export does.

use crate::error::Result;
use crate::gguf::arch::{map_tensor, Role, REFUSED, SUPPORTED};

/// One row of the support table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchSupport {
    /// `config.json` `architectures[0]`.
    pub hf_architecture: &'static str,
    /// `general.architecture` of the exported GGUF.
    pub gguf_architecture: &'static str,
    /// Whether the model has routed experts (stacked into `ffn_*_exps`).
    pub moe: bool,
    /// PEFT module paths (relative to `model.layers.N.`, or `embed_tokens` / `lm_head`) that a GGUF
    /// LoRA adapter carries; `lm_head` only for bases that do not tie it to the embeddings.
    pub lora_modules: Vec<String>,
    /// Module paths whose LoRA has no GGUF LoRA form (stacked experts): merge, then export. An
    /// expert index is written `*`.
    pub merge_only: Vec<String>,
}

/// The support table, one row per supported HF architecture, in [`SUPPORTED`] order.
pub fn support_table() -> Result<Vec<ArchSupport>> {
    SUPPORTED.iter().map(|h| {
        let mut lora_modules = Vec::new();
        let mut merge_only = Vec::new();
        let mut moe = false;
        let global = [("embed_tokens", "model.embed_tokens.weight"), ("lm_head", "lm_head.weight")];
        let layer = h.layer_linears.iter().map(|m| (*m, format!("model.layers.0.{m}.weight")));
        for (module, tensor) in global.iter().map(|(m, t)| (*m, t.to_string())).chain(layer) {
            let Some((_, role)) = map_tensor(h.arch, &tensor)? else { continue };
            let shown = module.replace(".0.", ".*.");
            if role.is_stacked_experts() {
                moe = true;
                merge_only.push(shown);
            } else if role != Role::Vector {
                lora_modules.push(shown);
            }
        }
        Ok(ArchSupport { hf_architecture: h.name, gguf_architecture: h.arch.name(), moe, lora_modules, merge_only })
    }).collect()
}

/// HF architectures refused with a specific reason, and the reason.
pub fn refused_architectures() -> &'static [(&'static str, &'static str)] {
    REFUSED
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> ArchSupport {
        support_table().unwrap().into_iter().find(|r| r.hf_architecture == name).unwrap()
    }

    #[test]
    fn every_supported_architecture_has_a_row_with_lora_on_attention() {
        let table = support_table().unwrap();
        assert_eq!(table.len(), SUPPORTED.len());
        for r in &table {
            assert!(r.lora_modules.iter().any(|m| m.starts_with("self_attn.")), "{r:?}");
            assert!(r.lora_modules.contains(&"embed_tokens".to_string()), "{r:?}");
            assert_eq!(r.moe, !r.merge_only.is_empty());
        }
    }

    #[test]
    fn dense_models_carry_every_linear_and_moe_models_refuse_routed_experts() {
        let llama = row("LlamaForCausalLM");
        assert_eq!(llama.gguf_architecture, "llama");
        assert!(!llama.moe && llama.lora_modules.contains(&"mlp.down_proj".to_string()));
        let mixtral = row("MixtralForCausalLM");
        assert_eq!(mixtral.gguf_architecture, "llama");
        assert_eq!(mixtral.merge_only, ["block_sparse_moe.experts.*.w1", "block_sparse_moe.experts.*.w3",
                                        "block_sparse_moe.experts.*.w2"]);
        let qwen2moe = row("Qwen2MoeForCausalLM");
        assert!(qwen2moe.lora_modules.contains(&"mlp.shared_expert.up_proj".to_string()));
        assert_eq!(qwen2moe.merge_only.len(), 3);
        let phi = row("Phi3ForCausalLM");
        assert!(phi.lora_modules.contains(&"self_attn.qkv_proj".to_string()));
    }

    #[test]
    fn gemma2_has_no_lm_head_lora_because_it_always_ties_the_output() {
        assert!(!row("Gemma2ForCausalLM").lora_modules.contains(&"lm_head".to_string()));
        assert!(row("Gemma3ForCausalLM").lora_modules.contains(&"lm_head".to_string()));
    }
}
