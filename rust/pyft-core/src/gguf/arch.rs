//! HF → GGUF model mapping for the architectures pyft exports: hyper-parameter keys, tensor
//! names and the Llama Q/K row permutation (`shared/specs/gguf.md` §2).

use serde_json::Value;

use crate::error::{Error, Result};
use crate::gguf::value::GgufValue;

/// An exported architecture (`general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `LlamaForCausalLM`, `MistralForCausalLM`: llama.cpp's `llama` (Q/K rows permuted).
    Llama,
    /// `Qwen2ForCausalLM`: `qwen2` (q/k/v biases, NeoX RoPE, no permutation).
    Qwen2,
    /// `Qwen3ForCausalLM`: `qwen3` (q/k RMS norms, NeoX RoPE, no permutation).
    Qwen3,
    /// `Gemma2ForCausalLM`: `gemma2` (soft-capping, sliding window, pre/post norms stored as
    /// `1 + w`, output tied to the embedding).
    Gemma2,
    /// `Gemma3ForCausalLM`: `gemma3` (as Gemma 2 plus q/k norms and local/global RoPE bases,
    /// no attention soft-capping).
    Gemma3,
    /// `Qwen2MoeForCausalLM`: `qwen2moe` (Qwen2 attention, stacked experts, a gated shared expert).
    Qwen2Moe,
    /// `Qwen3MoeForCausalLM`: `qwen3moe` (Qwen3 attention, stacked experts, no shared expert).
    Qwen3Moe,
    /// `GraniteForCausalLM`: `granite` (Llama plus embedding/residual/attention multipliers and a
    /// logits divisor; `head_dim` ignored as the converter does).
    Granite,
    /// `Olmo2ForCausalLM`: `olmo2` (post-attention/post-FFN norms only, q/k norms over the whole
    /// projection, NeoX RoPE, no permutation).
    Olmo2,
    /// `SmolLM3ForCausalLM`: `smollm3` (Llama with RoPE skipped on every fourth layer; llama.cpp
    /// fixes that pattern, so other `no_rope_layers` are refused).
    SmolLM3,
    /// `Phi3ForCausalLM` (Phi-3, Phi-3.5, Phi-4): `phi3` (fused `attn_qkv` and gate+up `ffn_up`,
    /// NeoX RoPE, long/short RoPE factor tensors for LongRoPE checkpoints).
    Phi3,
}

/// An HF `architectures` value pyft exports, and the linear modules of one decoder layer as PEFT
/// names them (relative to `model.layers.N.`; one expert stands for all, as expert 0). The support
/// table ([`crate::gguf::support`]) derives what GGUF LoRA can carry from these through
/// [`map_tensor`], so it cannot disagree with the export.
#[derive(Debug, Clone, Copy)]
pub struct HfArchitecture {
    /// `config.json` `architectures[0]`, e.g. `Gemma2ForCausalLM`.
    pub name: &'static str,
    /// The GGUF architecture it exports as.
    pub arch: Arch,
    /// The layer's linear modules (attention, MLP or experts), PEFT `target_modules` paths.
    pub layer_linears: &'static [&'static str],
}

const ATTENTION: [&str; 4] = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"];
const DENSE: &[&str] = &[ATTENTION[0], ATTENTION[1], ATTENTION[2], ATTENTION[3], "mlp.gate_proj", "mlp.up_proj",
                         "mlp.down_proj"];
const PHI3: &[&str] = &["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"];
const MIXTRAL: &[&str] = &[ATTENTION[0], ATTENTION[1], ATTENTION[2], ATTENTION[3], "block_sparse_moe.experts.0.w1",
                           "block_sparse_moe.experts.0.w3", "block_sparse_moe.experts.0.w2"];
const QWEN2_MOE: &[&str] = &[ATTENTION[0], ATTENTION[1], ATTENTION[2], ATTENTION[3], "mlp.experts.0.gate_proj",
                             "mlp.experts.0.up_proj", "mlp.experts.0.down_proj", "mlp.shared_expert.gate_proj",
                             "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj"];
const QWEN3_MOE: &[&str] = &[ATTENTION[0], ATTENTION[1], ATTENTION[2], ATTENTION[3], "mlp.experts.0.gate_proj",
                             "mlp.experts.0.up_proj", "mlp.experts.0.down_proj"];

const fn hf(name: &'static str, arch: Arch, layer_linears: &'static [&'static str]) -> HfArchitecture {
    HfArchitecture { name, arch, layer_linears }
}

/// HF `architectures` values and the GGUF architecture they export as.
pub const SUPPORTED: &[HfArchitecture] = &[
    hf("LlamaForCausalLM", Arch::Llama, DENSE),
    hf("MistralForCausalLM", Arch::Llama, DENSE),
    // llama.cpp runs Mixtral as `llama` with stacked experts (`ffn_*_exps`).
    hf("MixtralForCausalLM", Arch::Llama, MIXTRAL),
    hf("Qwen2ForCausalLM", Arch::Qwen2, DENSE),
    hf("Qwen3ForCausalLM", Arch::Qwen3, DENSE),
    hf("Gemma2ForCausalLM", Arch::Gemma2, DENSE),
    hf("Gemma3ForCausalLM", Arch::Gemma3, DENSE),
    hf("Qwen2MoeForCausalLM", Arch::Qwen2Moe, QWEN2_MOE),
    hf("Qwen3MoeForCausalLM", Arch::Qwen3Moe, QWEN3_MOE),
    hf("GraniteForCausalLM", Arch::Granite, DENSE),
    hf("Olmo2ForCausalLM", Arch::Olmo2, DENSE),
    hf("SmolLM3ForCausalLM", Arch::SmolLM3, DENSE),
    hf("Phi3ForCausalLM", Arch::Phi3, PHI3),
];

/// HF `architectures` values refused with a specific reason rather than "unsupported".
pub const REFUSED: &[(&str, &str)] = &[
    ("Gemma3ForConditionalGeneration",
     "Gemma 3 vision-language checkpoints nest the text model (`model.language_model.*`, `text_config`) beside a \
      vision tower that llama.cpp writes to a separate mmproj file; pyft exports text-only `Gemma3ForCausalLM` \
      checkpoints"),
];

impl Arch {
    /// The architecture of an HF `config.json`.
    pub fn from_config(config: &Value) -> Result<Arch> {
        let names: Vec<&str> = config["architectures"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for n in &names {
            if let Some(h) = SUPPORTED.iter().find(|h| h.name == *n) {
                return Ok(h.arch);
            }
        }
        for n in &names {
            if let Some((_, why)) = REFUSED.iter().find(|(s, _)| s == n) {
                return Err(Error::Option(format!("architecture {n} is not supported by the GGUF export: {why}")));
            }
        }
        let supported: Vec<&str> = SUPPORTED.iter().map(|h| h.name).collect();
        Err(Error::Option(format!(
            "unsupported architecture {names:?} (config.json `architectures`); GGUF export supports {}",
            supported.join(", "))))
    }

    /// `general.architecture` and the prefix of the hyper-parameter keys.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Qwen2Moe => "qwen2moe",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Granite => "granite",
            Arch::Olmo2 => "olmo2",
            Arch::SmolLM3 => "smollm3",
            Arch::Phi3 => "phi3",
        }
    }

    /// The per-layer GGUF tensors llama.cpp requires (without `blk.N.` and `.weight`).
    pub fn required_block_tensors(self) -> &'static [&'static str] {
        match self {
            // No pre-norms: post-attention and post-FFN norms only.
            Arch::Olmo2 => &["attn_q", "attn_k", "attn_v", "attn_output", "post_attention_norm", "ffn_gate", "ffn_up",
                             "ffn_down", "post_ffw_norm"],
            Arch::Phi3 => &["attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"],
            _ => &["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"],
        }
    }

    /// Whether HF's RMS norm weights are stored as `w` for a `(1 + w)` scale, which llama.cpp's
    /// converter writes as `1 + w` (every `*norm.weight`; added in F16 for F16 checkpoints, in F32
    /// otherwise).
    pub fn shifts_norms(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }

    /// Whether llama.cpp runs this architecture with adjacent-pair RoPE, so HF's Q/K rows must be
    /// permuted (§2.4).
    pub fn permutes_qk(self) -> bool {
        matches!(self, Arch::Llama | Arch::Granite | Arch::SmolLM3)
    }

    /// Whether the converter's class derives from its `LlamaModel` (vocab size and RoPE dimension
    /// keys, Llama vocabulary rules).
    pub fn is_llama_family(self) -> bool {
        matches!(self, Arch::Llama | Arch::Granite | Arch::SmolLM3)
    }

    /// Whether the architecture is one of the Qwen MoE families (`mlp.experts.{e}.*_proj`).
    pub fn is_qwen_moe(self) -> bool {
        matches!(self, Arch::Qwen2Moe | Arch::Qwen3Moe)
    }

    /// Whether the architecture has per-head q/k RMS norms (`attn_q_norm`, `attn_k_norm`).
    pub fn has_qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3 | Arch::Olmo2)
    }
}

/// The number of routed experts (`num_local_experts`, `num_experts`, `n_routed_experts`, the keys
/// llama.cpp's converter looks up in that order), or `None` for a dense model.
pub fn expert_count(config: &Value) -> Option<u64> {
    first_u64(config, &["num_local_experts", "num_experts", "n_routed_experts"])
}

/// The expert index of a per-expert HF tensor (`model.layers.0.mlp.experts.3.up_proj.weight` → 3),
/// the position of its slice in the stacked GGUF tensor.
pub fn expert_index(hf_name: &str) -> Option<usize> {
    let (_, rest) = hf_name.split_once(".experts.")?;
    rest.split('.').next()?.parse().ok()
}

/// The hyper-parameters the export needs, read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Key/value heads (GQA); `n_head` when absent.
    pub n_head_kv: usize,
    /// `config.vocab_size`.
    pub vocab_size: usize,
    /// Whether the output layer shares the embedding.
    pub tied: bool,
}

fn first_u64(config: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| config.get(*k).and_then(Value::as_u64))
}

fn first_f64(config: &Value, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| config.get(*k).and_then(Value::as_f64))
}

fn u32_of(v: u64, key: &str) -> Result<GgufValue> {
    u32::try_from(v).map(GgufValue::U32).map_err(|_| Error::Option(format!("config.json `{key}` = {v} does not fit in u32")))
}

impl HParams {
    /// Read from `config.json`.
    pub fn from_config(config: &Value) -> Result<HParams> {
        let need = |keys: &[&str]| {
            first_u64(config, keys).map(|v| v as usize).ok_or_else(|| {
                Error::Option(format!("config.json has no integer `{}`", keys[0]))
            })
        };
        let n_head = need(&["num_attention_heads", "n_head", "n_heads"])?;
        Ok(HParams {
            n_layer: need(&["num_hidden_layers", "n_layers", "n_layer", "num_layers"])?,
            n_embd: need(&["hidden_size", "n_embd", "dim"])?,
            n_head,
            n_head_kv: first_u64(config, &["num_key_value_heads", "n_kv_heads"]).map_or(n_head, |v| v as usize),
            vocab_size: need(&["vocab_size"])?,
            tied: config["tie_word_embeddings"].as_bool().unwrap_or(false),
        })
    }
}

/// The RoPE parameters as llama.cpp's converter normalises them (`rope_parameters` in
/// transformers 5 configs, else `rope_scaling` plus a top-level `rope_theta`).
pub fn rope_parameters(config: &Value) -> serde_json::Map<String, Value> {
    let mut p = config.get("rope_parameters").or_else(|| config.get("rope_scaling"))
        .and_then(Value::as_object).cloned().unwrap_or_default();
    if !p.contains_key("full_attention") && !p.contains_key("sliding_attention") {
        if !p.contains_key("rope_theta") {
            if let Some(t) = ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"]
                .iter().find_map(|k| config.get(*k).filter(|v| v.is_number())) {
                p.insert("rope_theta".into(), t.clone());
            }
        }
        if !p.contains_key("rope_type") {
            if let Some(t) = p.get("type").cloned() {
                p.insert("rope_type".into(), t);
            }
        }
        if !p.contains_key("original_max_position_embeddings") {
            if let Some(v) = config.get("original_max_position_embeddings") {
                p.insert("original_max_position_embeddings".into(), v.clone());
            }
        }
    }
    if let Some(Value::Object(full)) = p.get("full_attention") {
        return full.clone();
    }
    p
}

/// The model hyper-parameter KVs, in the order llama.cpp's converter writes them
/// (`set_gguf_parameters`), with its exact types (§2.2). `file_type` is `general.file_type`.
pub fn hparam_kvs(arch: Arch, config: &Value, file_type: u32) -> Result<Vec<(String, GgufValue)>> {
    if arch == Arch::Gemma2 {
        return gemma2_kvs(config, file_type);
    }
    if arch == Arch::Phi3 {
        return phi3_kvs(config, file_type);
    }
    if arch == Arch::Granite && config.get("head_dim").is_some() {
        // GraniteModel.set_gguf_parameters pops head_dim before the generic keys.
        let mut config = config.clone();
        config.as_object_mut().map(|c| c.remove("head_dim"));
        return hparam_kvs(arch, &config, file_type);
    }
    if arch == Arch::SmolLM3 {
        check_smollm3_nope(config)?;
    }
    let a = arch.name();
    let hp = HParams::from_config(config)?;
    let key = |k: &str| format!("{a}.{k}");
    let mut kv: Vec<(String, GgufValue)> = Vec::new();
    kv.push((key("block_count"), u32_of(hp.n_layer as u64, "num_hidden_layers")?));
    if let Some(n) = first_u64(config, &["max_position_embeddings", "n_ctx", "n_positions", "max_length",
                                          "max_sequence_length", "model_max_length"]) {
        kv.push((key("context_length"), u32_of(n, "max_position_embeddings")?));
    }
    kv.push((key("embedding_length"), u32_of(hp.n_embd as u64, "hidden_size")?));
    if let Some(n) = first_u64(config, &["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size",
                                          "n_inner", "hidden_dim"]) {
        kv.push((key("feed_forward_length"), u32_of(n, "intermediate_size")?));
    }
    kv.push((key("attention.head_count"), u32_of(hp.n_head as u64, "num_attention_heads")?));
    // Always written: Ollama defaults a missing head_count_kv to 1.
    kv.push((key("attention.head_count_kv"), u32_of(hp.n_head_kv as u64, "num_key_value_heads")?));
    if config.get("is_causal").and_then(Value::as_bool) == Some(false) {
        return Err(Error::Option("config.json says is_causal = false: not a causal LM".into()));
    }
    let rope = rope_parameters(config);
    if let Some(rope_type) = rope.get("rope_type").and_then(Value::as_str) {
        let factor = rope.get("factor").and_then(Value::as_f64);
        match (rope_type, factor) {
            ("linear", Some(f)) => {
                kv.push((key("rope.scaling.type"), GgufValue::String("linear".into())));
                kv.push((key("rope.scaling.factor"), GgufValue::F32(f as f32)));
            }
            ("yarn", Some(f)) => {
                kv.push((key("rope.scaling.type"), GgufValue::String("yarn".into())));
                kv.push((key("rope.scaling.factor"), GgufValue::F32(f as f32)));
                let orig = rope.get("original_max_position_embeddings").and_then(Value::as_u64).ok_or_else(|| {
                    Error::Option("yarn rope scaling needs `original_max_position_embeddings`".into())
                })?;
                kv.push((key("rope.scaling.original_context_length"), u32_of(orig, "original_max_position_embeddings")?));
                for (hf, gguf) in [("extrapolation_factor", "rope.scaling.yarn_ext_factor"),
                                   ("attention_factor", "rope.scaling.yarn_attn_factor"),
                                   ("beta_fast", "rope.scaling.yarn_beta_fast"),
                                   ("beta_slow", "rope.scaling.yarn_beta_slow")] {
                    let v = rope.get(hf).or_else(|| (hf == "attention_factor").then(|| rope.get("attn_factor")).flatten());
                    if let Some(v) = v.and_then(Value::as_f64) {
                        kv.push((key(gguf), GgufValue::F32(v as f32)));
                    }
                }
            }
            ("default" | "llama3", _) => {}
            (other, _) => {
                return Err(Error::Option(format!("RoPE type `{other}` is not supported by the GGUF export")));
            }
        }
    }
    if let Some(theta) = rope.get("rope_theta").and_then(Value::as_f64) {
        kv.push((key("rope.freq_base"), GgufValue::F32(theta as f32)));
    }
    if let Some(theta) = swa_rope_theta(config) {
        kv.push((key("rope.freq_base_swa"), GgufValue::F32(theta as f32)));
    }
    let eps = first_f64(config, &["rms_norm_eps", "norm_eps"])
        .ok_or_else(|| Error::Option("config.json has no `rms_norm_eps`".into()))?;
    kv.push((key("attention.layer_norm_rms_epsilon"), GgufValue::F32(eps as f32)));
    if let Some(n) = expert_count(config) {
        kv.push((key("expert_count"), u32_of(n, "num_local_experts")?));
    }
    if let Some(n) = first_u64(config, &["num_experts_per_tok", "num_experts_per_token", "top_k_experts"]) {
        kv.push((key("expert_used_count"), u32_of(n, "num_experts_per_tok")?));
    }
    if let Some(head_dim) = config.get("head_dim").and_then(Value::as_u64) {
        kv.push((key("attention.key_length"), u32_of(head_dim, "head_dim")?));
        kv.push((key("attention.value_length"), u32_of(head_dim, "head_dim")?));
    }
    kv.push(("general.file_type".into(), GgufValue::U32(file_type)));
    if arch.is_llama_family() {
        kv.push((key("vocab_size"), u32_of(hp.vocab_size as u64, "vocab_size")?));
        let rope_dim = match config.get("head_dim").and_then(Value::as_u64) {
            Some(d) => d,
            None => (hp.n_embd / hp.n_head) as u64,
        };
        kv.push((key("rope.dimension_count"), u32_of(rope_dim, "head_dim")?));
    }
    if arch == Arch::Gemma3 {
        gemma3_overrides(&mut kv, config)?;
    }
    if matches!(arch, Arch::Qwen2Moe | Arch::Qwen3Moe) {
        for (hf, gguf) in [("moe_intermediate_size", "expert_feed_forward_length"),
                           ("shared_expert_intermediate_size", "expert_shared_feed_forward_length")] {
            if let Some(n) = config.get(hf).and_then(Value::as_u64) {
                kv.push((key(gguf), u32_of(n, hf)?));
            }
        }
    }
    if arch == Arch::Granite {
        // Written only when set and non-zero (the converter's `if x := hparams.get(...)`).
        for (hf, gguf) in [("attention_multiplier", "attention.scale"), ("embedding_multiplier", "embedding_scale"),
                           ("residual_multiplier", "residual_scale"), ("logits_scaling", "logit_scale")] {
            if let Some(v) = config.get(hf).and_then(Value::as_f64).filter(|v| *v != 0.0) {
                kv.push((key(gguf), GgufValue::F32(v as f32)));
            }
        }
    }
    Ok(kv)
}

/// Phi-3's rotary dimensions: `int(partial_rotary_factor · hidden_size) // num_attention_heads`.
fn phi3_rope_dims(config: &Value, hp: &HParams) -> usize {
    let rot = rope_parameters(config).get("partial_rotary_factor").and_then(Value::as_f64).unwrap_or(1.0);
    (rot * hp.n_embd as f64) as usize / hp.n_head.max(1)
}

/// Phi-3's keys (`Phi3MiniModel.set_gguf_parameters`), then the LongRoPE attention factor its
/// `generate_extra_tensors` adds (the converter writes that one first, before `general.type`;
/// llama.cpp reads keys by name).
fn phi3_kvs(config: &Value, file_type: u32) -> Result<Vec<(String, GgufValue)>> {
    let hp = HParams::from_config(config)?;
    let key = |k: &str| format!("phi3.{k}");
    let rope = rope_parameters(config);
    let orig = rope.get("original_max_position_embeddings").and_then(Value::as_u64)
        .ok_or_else(|| Error::Option("config.json has no integer `original_max_position_embeddings`".into()))?;
    let max_pos = first_u64(config, &["n_positions", "max_position_embeddings"])
        .ok_or_else(|| Error::Option("config.json has no integer `max_position_embeddings`".into()))?;
    let theta = rope.get("rope_theta").and_then(Value::as_f64)
        .ok_or_else(|| Error::Option("config.json has no `rope_theta`".into()))?;
    let sliding_window = config.get("sliding_window").and_then(Value::as_u64).unwrap_or(0);
    let mut kv = vec![
        (key("context_length"), u32_of(max_pos, "max_position_embeddings")?),
        (key("rope.scaling.original_context_length"), u32_of(orig, "original_max_position_embeddings")?),
        (key("embedding_length"), u32_of(hp.n_embd as u64, "hidden_size")?),
        (key("feed_forward_length"), u32_of(need_u64(config, "intermediate_size")?, "intermediate_size")?),
        (key("block_count"), u32_of(hp.n_layer as u64, "num_hidden_layers")?),
        (key("attention.head_count"), u32_of(hp.n_head as u64, "num_attention_heads")?),
        (key("attention.head_count_kv"), u32_of(hp.n_head_kv as u64, "num_key_value_heads")?),
        (key("attention.layer_norm_rms_epsilon"), GgufValue::F32(need_f64(config, "rms_norm_eps")? as f32)),
        (key("rope.dimension_count"), u32_of(phi3_rope_dims(config, &hp) as u64, "partial_rotary_factor")?),
        (key("rope.freq_base"), GgufValue::F32(theta as f32)),
        ("general.file_type".into(), GgufValue::U32(file_type)),
        // 0 when absent: llama.cpp's way of telling Phi-4 (no sliding window) apart.
        (key("attention.sliding_window"), u32_of(sliding_window, "sliding_window")?),
    ];
    if let Some((attn_factor, _, _)) = phi3_rope_factors(config)? {
        kv.push((key("rope.scaling.attn_factor"), GgufValue::F32(attn_factor as f32)));
    }
    Ok(kv)
}

/// Phi-3's LongRoPE scaling: `(attn_factor, long_factors, short_factors)`.
pub type LongRope = (f64, Vec<f32>, Vec<f32>);

/// Phi-3's LongRoPE scaling, or `None` without `long_factor` (the converter's
/// `generate_extra_tensors`, with its checks).
pub fn phi3_rope_factors(config: &Value) -> Result<Option<LongRope>> {
    let rope = rope_parameters(config);
    let factors = |k: &str| rope.get(k).and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_f64().map(|x| x as f32)).collect::<Option<Vec<f32>>>());
    let long = match factors("long_factor") {
        None => return Ok(None),
        Some(v) => v.ok_or_else(|| Error::Option("rope `long_factor` must be a list of numbers".into()))?,
    };
    if long.is_empty() {
        return Ok(None);
    }
    let hp = HParams::from_config(config)?;
    let max_pos = first_u64(config, &["n_positions", "max_position_embeddings"]).unwrap_or(0) as f64;
    let orig = rope.get("original_max_position_embeddings").and_then(Value::as_u64)
        .ok_or_else(|| Error::Option("config.json has no integer `original_max_position_embeddings`".into()))? as f64;
    let scale = max_pos / orig;
    let rope_type = rope.get("rope_type").and_then(Value::as_str).unwrap_or("").to_lowercase();
    let attn_factor = match rope_type.as_str() {
        "su" | "longrope" if scale > 1.0 => (1.0 + scale.ln() / orig.ln()).sqrt(),
        "yarn" if scale > 1.0 => 0.1 * scale.ln() + 1.0,
        "su" | "longrope" | "yarn" => 1.0,
        "" => return Err(Error::Option("config.json rope scaling has long factors but no `rope_type`".into())),
        other => return Err(Error::Option(format!("Phi-3 RoPE scaling type `{other}` is not supported"))),
    };
    let short = factors("short_factor").and_then(|v| v)
        .ok_or_else(|| Error::Option("config.json rope scaling has `long_factor` but no `short_factor`".into()))?;
    let half = phi3_rope_dims(config, &hp) / 2;
    if long.len() != half || short.len() != half {
        return Err(Error::Shape(format!(
            "RoPE long/short factors must have {half} entries (rotary dimensions / 2), not {} and {}",
            long.len(), short.len())));
    }
    Ok(Some((attn_factor, long, short)))
}

/// llama.cpp runs SmolLM3 without RoPE on every fourth layer (`(il + 1) % 4 == 0`) whatever the
/// config says, and the converter writes no key for it: refuse a `no_rope_layers` (1 = RoPE) that
/// differs, which would export a model computing something else.
fn check_smollm3_nope(config: &Value) -> Result<()> {
    let Some(layers) = config.get("no_rope_layers").and_then(Value::as_array) else {
        return Ok(());
    };
    let expected = (0..layers.len()).map(|i| u64::from((i + 1) % 4 != 0));
    if !layers.iter().map(Value::as_u64).eq(expected.map(Some)) {
        return Err(Error::Option(format!(
            "config.json `no_rope_layers` = {} is not SmolLM3's every-fourth-layer NoPE pattern, the only one \
             llama.cpp runs (the GGUF would compute a different model)", Value::Array(layers.clone()))));
    }
    Ok(())
}

/// The RoPE base of sliding-window layers: `rope_parameters.sliding_attention.rope_theta`
/// (transformers 5), else a top-level local-base key such as Gemma 3's `rope_local_base_freq`.
fn swa_rope_theta(config: &Value) -> Option<f64> {
    let params = config.get("rope_parameters").or_else(|| config.get("rope_scaling")).and_then(Value::as_object);
    if params.is_some_and(|p| p.contains_key("full_attention") || p.contains_key("sliding_attention")) {
        return params?.get("sliding_attention")?.get("rope_theta")?.as_f64();
    }
    first_f64(config, &["local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta", "rope_local_base_freq"])
}

/// Replace `key`'s value in place (the converter's writer keeps a re-added key's first position).
fn set_kv(kv: &mut Vec<(String, GgufValue)>, key: String, value: GgufValue) {
    match kv.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => kv.push((key, value)),
    }
}

fn need_u64(config: &Value, key: &str) -> Result<u64> {
    config.get(key).and_then(Value::as_u64).ok_or_else(|| Error::Option(format!("config.json has no integer `{key}`")))
}

fn need_f64(config: &Value, key: &str) -> Result<f64> {
    config.get(key).and_then(Value::as_f64).ok_or_else(|| Error::Option(format!("config.json has no number `{key}`")))
}

/// Gemma 2's keys (the converter's `Gemma2Model.set_gguf_parameters`: no RoPE keys, llama.cpp
/// uses its defaults; soft-capping and the sliding window are required).
fn gemma2_kvs(config: &Value, file_type: u32) -> Result<Vec<(String, GgufValue)>> {
    let hp = HParams::from_config(config)?;
    let key = |k: &str| format!("gemma2.{k}");
    let head_dim = need_u64(config, "head_dim")?;
    Ok(vec![
        (key("context_length"), u32_of(need_u64(config, "max_position_embeddings")?, "max_position_embeddings")?),
        (key("embedding_length"), u32_of(hp.n_embd as u64, "hidden_size")?),
        (key("block_count"), u32_of(hp.n_layer as u64, "num_hidden_layers")?),
        (key("feed_forward_length"), u32_of(need_u64(config, "intermediate_size")?, "intermediate_size")?),
        (key("attention.head_count"), u32_of(hp.n_head as u64, "num_attention_heads")?),
        (key("attention.head_count_kv"), u32_of(hp.n_head_kv as u64, "num_key_value_heads")?),
        (key("attention.layer_norm_rms_epsilon"), GgufValue::F32(need_f64(config, "rms_norm_eps")? as f32)),
        (key("attention.key_length"), u32_of(head_dim, "head_dim")?),
        (key("attention.value_length"), u32_of(head_dim, "head_dim")?),
        ("general.file_type".into(), GgufValue::U32(file_type)),
        (key("attn_logit_softcapping"), GgufValue::F32(need_f64(config, "attn_logit_softcapping")? as f32)),
        (key("final_logit_softcapping"), GgufValue::F32(need_f64(config, "final_logit_softcapping")? as f32)),
        (key("attention.sliding_window"), u32_of(need_u64(config, "sliding_window")?, "sliding_window")?),
    ])
}

/// What the converter's `Gemma3Model.set_gguf_parameters` changes after the generic keys: its
/// defaults for missing fields, the global RoPE base, final soft-capping, the sliding window.
fn gemma3_overrides(kv: &mut Vec<(String, GgufValue)>, config: &Value) -> Result<()> {
    let key = |k: &str| format!("gemma3.{k}");
    let int = |k: &str, d: u64| config.get(k).and_then(Value::as_u64).unwrap_or(d);
    set_kv(kv, key("context_length"), u32_of(int("max_position_embeddings", 131072), "max_position_embeddings")?);
    set_kv(kv, key("attention.head_count"), u32_of(int("num_attention_heads", 8), "num_attention_heads")?);
    let eps = config.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6);
    set_kv(kv, key("attention.layer_norm_rms_epsilon"), GgufValue::F32(eps as f32));
    set_kv(kv, key("attention.key_length"), u32_of(int("head_dim", 256), "head_dim")?);
    set_kv(kv, key("attention.value_length"), u32_of(int("head_dim", 256), "head_dim")?);
    let theta = rope_parameters(config).get("rope_theta").and_then(Value::as_f64).unwrap_or(1_000_000.0);
    set_kv(kv, key("rope.freq_base"), GgufValue::F32(theta as f32));
    if config.get("attn_logit_softcapping").is_some_and(|v| !v.is_null()) {
        return Err(Error::Option("config.json sets `attn_logit_softcapping`, which Gemma 3 does not have \
                                  (llama.cpp's gemma3 ignores it)".into()));
    }
    if let Some(cap) = config.get("final_logit_softcapping").and_then(Value::as_f64).filter(|c| *c != 0.0) {
        set_kv(kv, key("final_logit_softcapping"), GgufValue::F32(cap as f32));
    }
    if config.get("sliding_window_pattern").and_then(Value::as_i64) != Some(1) {
        set_kv(kv, key("attention.sliding_window"), u32_of(need_u64(config, "sliding_window")?, "sliding_window")?);
    }
    set_kv(kv, key("attention.head_count_kv"), u32_of(int("num_key_value_heads", 4), "num_key_value_heads")?);
    Ok(())
}

/// Per-frequency RoPE factors of Llama 3.x (`rope_freqs.weight`, `[head_dim / 2]`), or `None`
/// when the config does not use `rope_type: llama3`.
pub fn llama3_rope_factors(config: &Value) -> Option<Vec<f32>> {
    let rope = rope_parameters(config);
    if !rope.get("rope_type").and_then(Value::as_str).is_some_and(|t| t.eq_ignore_ascii_case("llama3")) {
        return None;
    }
    let get = |k: &str, d: f64| rope.get(k).and_then(Value::as_f64).unwrap_or(d);
    let base = get("rope_theta", 10000.0) as f32;
    let dim = config.get("head_dim").and_then(Value::as_u64).unwrap_or_else(|| {
        config["hidden_size"].as_u64().unwrap_or(0) / config["num_attention_heads"].as_u64().unwrap_or(1)
    }) as usize;
    let factor = get("factor", 8.0) as f32;
    let low = get("low_freq_factor", 1.0) as f32;
    let high = get("high_freq_factor", 4.0) as f32;
    let old_ctx = get("original_max_position_embeddings", 8192.0) as f32;
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    // Same f32 arithmetic as the converter (torch float32 tensors).
    Some((0..dim).step_by(2).map(|i| {
        let freq = 1.0f32 / base.powf(i as f32 / dim as f32);
        let wavelen = (2.0 * std::f64::consts::PI) as f32 / freq;
        if wavelen < high_wavelen {
            1.0
        } else if wavelen > low_wavelen {
            factor
        } else {
            let smooth = (old_ctx / wavelen - low) / (high - low);
            1.0 / ((1.0 - smooth) / factor + smooth)
        }
    }).collect())
}

/// What a GGUF tensor is, for dtype and quantization-mix decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `token_embd.weight`.
    TokenEmbd,
    /// `output.weight`.
    Output,
    /// `attn_q`, with its layer.
    AttnQ(usize),
    /// `attn_k`.
    AttnK(usize),
    /// `attn_v`.
    AttnV(usize),
    /// `attn_output`.
    AttnOutput(usize),
    /// Phi-3's fused `attn_qkv`.
    AttnQkv(usize),
    /// `ffn_gate`.
    FfnGate(usize),
    /// `ffn_up`.
    FfnUp(usize),
    /// `ffn_down`.
    FfnDown(usize),
    /// `ffn_gate_exps`: the experts' gate projections stacked into `[n_expert, n_ff, n_embd]`.
    FfnGateExps(usize),
    /// `ffn_up_exps`, stacked like [`Role::FfnGateExps`].
    FfnUpExps(usize),
    /// `ffn_down_exps`, stacked into `[n_expert, n_embd, n_ff]`.
    FfnDownExps(usize),
    /// `ffn_gate_shexp`: the shared expert's gate projection (Qwen2-MoE).
    FfnGateShexp(usize),
    /// `ffn_up_shexp`.
    FfnUpShexp(usize),
    /// `ffn_down_shexp`.
    FfnDownShexp(usize),
    /// Norm weights, biases, `rope_freqs`, the expert routers (`ffn_gate_inp`,
    /// `ffn_gate_inp_shexp`: F32 in the converter, never quantized by llama-quantize): always F32.
    Vector,
}

impl Role {
    /// Whether the tensor is stacked from one HF tensor per expert.
    pub fn is_stacked_experts(self) -> bool {
        matches!(self, Role::FfnGateExps(_) | Role::FfnUpExps(_) | Role::FfnDownExps(_))
    }
}

/// The GGUF name and role of an HF tensor. `Ok(None)`: the tensor is dropped (rotary caches).
/// Unknown tensors are an error: llama.cpp refuses files with tensors it does not use.
pub fn map_tensor(arch: Arch, hf_name: &str) -> Result<Option<(String, Role)>> {
    if hf_name.ends_with(".rotary_emb.inv_freq") || hf_name.ends_with(".attention.masked_bias")
        || hf_name.ends_with(".attention.bias") {
        return Ok(None);
    }
    let unknown = || Error::Option(format!(
        "tensor `{hf_name}` has no GGUF counterpart for architecture `{}` (llama.cpp rejects unused tensors)", arch.name()));
    // Gemma 2 always ties the output layer: the converter drops a stored lm_head.
    if arch == Arch::Gemma2 && hf_name == "lm_head.weight" {
        return Ok(None);
    }
    let simple = match hf_name {
        "model.embed_tokens.weight" => Some(("token_embd.weight".to_string(), Role::TokenEmbd)),
        "lm_head.weight" => Some(("output.weight".to_string(), Role::Output)),
        "model.norm.weight" => Some(("output_norm.weight".to_string(), Role::Vector)),
        _ => None,
    };
    if simple.is_some() {
        return Ok(simple);
    }
    let rest = hf_name.strip_prefix("model.layers.").ok_or_else(unknown)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(unknown)?;
    let bid: usize = layer.parse().map_err(|_| unknown())?;
    let (module, suffix) = rest.rsplit_once('.').ok_or_else(unknown)?;
    if suffix != "weight" && suffix != "bias" {
        return Err(unknown());
    }
    let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
    let olmo2 = arch == Arch::Olmo2;
    let (gguf, role) = match module {
        "input_layernorm" => ("attn_norm", Role::Vector),
        // Gemma's sandwich norms (llama.cpp names the pre-FFN norm `ffn_norm`) and OLMo 2's
        // post-norms.
        "post_attention_layernorm" if gemma || olmo2 => ("post_attention_norm", Role::Vector),
        "pre_feedforward_layernorm" if gemma => ("ffn_norm", Role::Vector),
        "post_feedforward_layernorm" if gemma || olmo2 => ("post_ffw_norm", Role::Vector),
        "post_attention_layernorm" => ("ffn_norm", Role::Vector),
        "self_attn.q_proj" => ("attn_q", Role::AttnQ(bid)),
        "self_attn.k_proj" => ("attn_k", Role::AttnK(bid)),
        "self_attn.v_proj" => ("attn_v", Role::AttnV(bid)),
        "self_attn.o_proj" => ("attn_output", Role::AttnOutput(bid)),
        // Phi-3's fused projections, written as they are (its gate+up half-and-half as `ffn_up`).
        "self_attn.qkv_proj" if arch == Arch::Phi3 => ("attn_qkv", Role::AttnQkv(bid)),
        "mlp.gate_up_proj" if arch == Arch::Phi3 => ("ffn_up", Role::FfnUp(bid)),
        "mlp.gate_proj" => ("ffn_gate", Role::FfnGate(bid)),
        "mlp.up_proj" => ("ffn_up", Role::FfnUp(bid)),
        "mlp.down_proj" => ("ffn_down", Role::FfnDown(bid)),
        "self_attn.q_norm" if arch.has_qk_norm() => ("attn_q_norm", Role::Vector),
        "self_attn.k_norm" if arch.has_qk_norm() => ("attn_k_norm", Role::Vector),
        // Mixtral (llama): router and per-expert w1 (gate), w2 (down), w3 (up).
        "block_sparse_moe.gate" if arch == Arch::Llama => ("ffn_gate_inp", Role::Vector),
        // Qwen MoE: router, per-expert projections, the shared expert and its sigmoid gate.
        "mlp.gate" if arch.is_qwen_moe() => ("ffn_gate_inp", Role::Vector),
        "mlp.shared_expert.gate_proj" if arch == Arch::Qwen2Moe => ("ffn_gate_shexp", Role::FfnGateShexp(bid)),
        "mlp.shared_expert.up_proj" if arch == Arch::Qwen2Moe => ("ffn_up_shexp", Role::FfnUpShexp(bid)),
        "mlp.shared_expert.down_proj" if arch == Arch::Qwen2Moe => ("ffn_down_shexp", Role::FfnDownShexp(bid)),
        "mlp.shared_expert_gate" if arch == Arch::Qwen2Moe => ("ffn_gate_inp_shexp", Role::Vector),
        m => {
            // `block_sparse_moe.experts.{e}.w1` / `mlp.experts.{e}.gate_proj`: one slice of a stacked tensor.
            if suffix != "weight" {
                return Err(unknown());
            }
            let (prefix, proj) = m.rsplit_once('.').ok_or_else(unknown)?;
            let (owner, expert) = prefix.rsplit_once('.').ok_or_else(unknown)?;
            expert.parse::<usize>().map_err(|_| unknown())?;
            let mixtral = arch == Arch::Llama && owner == "block_sparse_moe.experts";
            let qwen = arch.is_qwen_moe() && owner == "mlp.experts";
            match (proj, mixtral, qwen) {
                ("w1", true, _) | ("gate_proj", _, true) => ("ffn_gate_exps", Role::FfnGateExps(bid)),
                ("w3", true, _) | ("up_proj", _, true) => ("ffn_up_exps", Role::FfnUpExps(bid)),
                ("w2", true, _) | ("down_proj", _, true) => ("ffn_down_exps", Role::FfnDownExps(bid)),
                _ => return Err(unknown()),
            }
        }
    };
    let role = if suffix == "bias" { Role::Vector } else { role };
    Ok(Some((format!("blk.{bid}.{gguf}.{suffix}"), role)))
}

/// The HF module path of a GGUF-mapped linear (`model.layers.3.self_attn.q_proj`), for matching
/// adapter modules; the inverse direction of [`map_tensor`] for `.weight` tensors.
pub fn gguf_name_of_module(arch: Arch, module: &str) -> Result<Option<(String, Role)>> {
    map_tensor(arch, &format!("{module}.weight"))
}

/// Reorder the output rows of a Q or K projection (weight `[rows, cols]` or bias `[rows]`, row
/// major) from HF's rotate-half layout to llama.cpp's adjacent pairs, in `groups` heads:
/// `new[h·d + 2i + j] = old[h·d + j·(d/2) + i]` with `d = rows / groups` (§2.4).
pub fn permute_qk_rows<T: Copy>(data: &[T], rows: usize, groups: usize) -> Result<Vec<T>> {
    if groups == 0 || !rows.is_multiple_of(groups) || !(rows / groups).is_multiple_of(2) || !data.len().is_multiple_of(rows.max(1)) {
        return Err(Error::Shape(format!(
            "cannot permute {rows} rows into {groups} heads of even size (check num_attention_heads / num_key_value_heads)")));
    }
    let cols = data.len() / rows;
    let d = rows / groups;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..groups {
        for m in 0..d {
            let old = h * d + (m % 2) * (d / 2) + m / 2;
            out.extend_from_slice(&data[old * cols..(old + 1) * cols]);
        }
    }
    Ok(out)
}

/// The number of head groups a Q or K tensor is permuted in: `n_head` for Q, `n_head_kv` for K
/// (llama.cpp's converter uses `n_head_kv` whenever it differs).
pub fn permute_groups(role: Role, hp: &HParams) -> Option<usize> {
    match role {
        Role::AttnQ(_) => Some(hp.n_head),
        Role::AttnK(_) => Some(hp.n_head_kv),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn permutation_matches_the_spec_example() {
        // d = 8: old rows come in the order 0, 4, 1, 5, 2, 6, 3, 7.
        let rows: Vec<u32> = (0..8).collect();
        assert_eq!(permute_qk_rows(&rows, 8, 1).unwrap(), vec![0, 4, 1, 5, 2, 6, 3, 7]);
        // Two heads of 4, two columns each.
        let data: Vec<u32> = (0..16).collect();
        let p = permute_qk_rows(&data, 8, 2).unwrap();
        assert_eq!(p, vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]);
        assert!(permute_qk_rows(&data, 8, 3).is_err());
    }

    #[test]
    fn names_map_like_llama_cpp() {
        let m = |n| map_tensor(Arch::Llama, n).unwrap().map(|(g, _)| g);
        assert_eq!(m("model.layers.12.self_attn.k_proj.weight").as_deref(), Some("blk.12.attn_k.weight"));
        assert_eq!(m("model.layers.0.mlp.down_proj.weight").as_deref(), Some("blk.0.ffn_down.weight"));
        assert_eq!(m("model.norm.weight").as_deref(), Some("output_norm.weight"));
        assert_eq!(m("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
        assert_eq!(map_tensor(Arch::Qwen2, "model.layers.1.self_attn.q_proj.bias").unwrap().unwrap(),
                   ("blk.1.attn_q.bias".to_string(), Role::Vector));
        assert!(map_tensor(Arch::Llama, "model.layers.0.self_attn.q_norm.weight").is_err());
        assert!(map_tensor(Arch::Qwen3, "model.layers.0.self_attn.q_norm.weight").is_ok());
        assert!(map_tensor(Arch::Llama, "score.weight").is_err());
        let g = |a, n| map_tensor(a, n).unwrap().map(|(g, _)| g);
        assert_eq!(g(Arch::Gemma2, "model.layers.1.post_attention_layernorm.weight").as_deref(),
                   Some("blk.1.post_attention_norm.weight"));
        assert_eq!(g(Arch::Gemma2, "model.layers.1.pre_feedforward_layernorm.weight").as_deref(), Some("blk.1.ffn_norm.weight"));
        assert_eq!(g(Arch::Gemma3, "model.layers.0.post_feedforward_layernorm.weight").as_deref(),
                   Some("blk.0.post_ffw_norm.weight"));
        assert_eq!(g(Arch::Gemma2, "lm_head.weight"), None);
        assert!(map_tensor(Arch::Gemma2, "model.layers.0.self_attn.q_norm.weight").is_err());
        assert!(map_tensor(Arch::Llama, "model.layers.0.pre_feedforward_layernorm.weight").is_err());
    }

    #[test]
    fn gemma_keys() {
        let cfg = json!({"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 6,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 176,
                         "rms_norm_eps": 1e-6, "vocab_size": 512, "sliding_window": 8,
                         "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                             "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                "rope_theta": 1e6}}});
        let kv = hparam_kvs(Arch::from_config(&cfg).unwrap(), &cfg, 1).unwrap();
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("gemma3.context_length"), Some(GgufValue::U32(131072)));
        assert_eq!(get("gemma3.rope.freq_base"), Some(GgufValue::F32(1e6)));
        assert_eq!(get("gemma3.rope.freq_base_swa"), Some(GgufValue::F32(10000.0)));
        assert_eq!(get("gemma3.rope.scaling.factor"), Some(GgufValue::F32(8.0)));
        assert_eq!(get("gemma3.attention.sliding_window"), Some(GgufValue::U32(8)));
        let vlm = json!({"architectures": ["Gemma3ForConditionalGeneration"]});
        assert!(Arch::from_config(&vlm).unwrap_err().to_string().contains("Gemma3ForCausalLM"));
    }

    #[test]
    fn experts_map_to_stacked_tensors() {
        let m = |a, n| map_tensor(a, n).unwrap();
        assert_eq!(m(Arch::Llama, "model.layers.3.block_sparse_moe.experts.7.w2.weight"),
                   Some(("blk.3.ffn_down_exps.weight".into(), Role::FfnDownExps(3))));
        assert_eq!(m(Arch::Llama, "model.layers.0.block_sparse_moe.gate.weight"),
                   Some(("blk.0.ffn_gate_inp.weight".into(), Role::Vector)));
        assert_eq!(m(Arch::Qwen3Moe, "model.layers.1.mlp.experts.0.up_proj.weight"),
                   Some(("blk.1.ffn_up_exps.weight".into(), Role::FfnUpExps(1))));
        assert_eq!(m(Arch::Qwen2Moe, "model.layers.1.mlp.shared_expert.down_proj.weight"),
                   Some(("blk.1.ffn_down_shexp.weight".into(), Role::FfnDownShexp(1))));
        assert_eq!(m(Arch::Qwen2Moe, "model.layers.1.mlp.shared_expert_gate.weight"),
                   Some(("blk.1.ffn_gate_inp_shexp.weight".into(), Role::Vector)));
        assert!(map_tensor(Arch::Qwen3Moe, "model.layers.1.mlp.shared_expert.down_proj.weight").is_err());
        assert!(map_tensor(Arch::Llama, "model.layers.1.mlp.experts.0.up_proj.weight").is_err());
        assert!(map_tensor(Arch::Qwen2Moe, "model.layers.1.mlp.experts.x.up_proj.weight").is_err());
        assert!(map_tensor(Arch::Qwen2Moe, "model.layers.1.mlp.experts.0.up_proj.bias").is_err());
        assert_eq!(expert_index("model.layers.1.mlp.experts.12.up_proj.weight"), Some(12));
        assert_eq!(expert_index("model.layers.1.mlp.gate.weight"), None);
    }

    #[test]
    fn moe_hparams() {
        let cfg = json!({"architectures": ["Qwen2MoeForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 176,
                         "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48, "num_experts": 4,
                         "num_experts_per_tok": 2, "rms_norm_eps": 1e-6, "vocab_size": 512});
        let kv = hparam_kvs(Arch::from_config(&cfg).unwrap(), &cfg, 1).unwrap();
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("qwen2moe.expert_count"), Some(GgufValue::U32(4)));
        assert_eq!(get("qwen2moe.expert_used_count"), Some(GgufValue::U32(2)));
        assert_eq!(get("qwen2moe.expert_feed_forward_length"), Some(GgufValue::U32(32)));
        assert_eq!(get("qwen2moe.expert_shared_feed_forward_length"), Some(GgufValue::U32(48)));
    }

    #[test]
    fn granite_olmo2_smollm3() {
        let cfg = json!({"architectures": ["GraniteForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "head_dim": 32, "rms_norm_eps": 1e-5, "vocab_size": 512,
                         "attention_multiplier": 1.0, "embedding_multiplier": 12.0, "residual_multiplier": 0.0,
                         "logits_scaling": 4.0});
        let kv = hparam_kvs(Arch::from_config(&cfg).unwrap(), &cfg, 1).unwrap();
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("granite.attention.key_length"), None);
        assert_eq!(get("granite.rope.dimension_count"), Some(GgufValue::U32(16)));
        assert_eq!(get("granite.embedding_scale"), Some(GgufValue::F32(12.0)));
        assert_eq!(get("granite.residual_scale"), None);
        assert_eq!(get("granite.logit_scale"), Some(GgufValue::F32(4.0)));
        let g = |n| map_tensor(Arch::Olmo2, n).unwrap().map(|(g, _)| g);
        assert_eq!(g("model.layers.0.post_attention_layernorm.weight").as_deref(), Some("blk.0.post_attention_norm.weight"));
        assert_eq!(g("model.layers.0.self_attn.k_norm.weight").as_deref(), Some("blk.0.attn_k_norm.weight"));
        let smol = json!({"architectures": ["SmolLM3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 4,
                          "num_attention_heads": 4, "rms_norm_eps": 1e-6, "vocab_size": 512,
                          "no_rope_layers": [1, 1, 1, 0]});
        assert!(hparam_kvs(Arch::SmolLM3, &smol, 1).is_ok());
        let mut odd = smol.clone();
        odd["no_rope_layers"] = json!([1, 1, 0, 1]);
        assert!(hparam_kvs(Arch::SmolLM3, &odd, 1).unwrap_err().to_string().contains("every-fourth-layer"));
    }

    #[test]
    fn hparams_have_exact_types() {
        let cfg = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 176,
                         "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "vocab_size": 512,
                         "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}});
        let kv = hparam_kvs(Arch::from_config(&cfg).unwrap(), &cfg, 1).unwrap();
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("llama.context_length"), Some(GgufValue::U32(2048)));
        assert_eq!(get("llama.attention.head_count_kv"), Some(GgufValue::U32(2)));
        assert_eq!(get("llama.attention.layer_norm_rms_epsilon"), Some(GgufValue::F32(1e-5)));
        assert_eq!(get("llama.rope.freq_base"), Some(GgufValue::F32(10000.0)));
        assert_eq!(get("llama.rope.dimension_count"), Some(GgufValue::U32(16)));
        assert_eq!(get("general.file_type"), Some(GgufValue::U32(1)));
        assert!(Arch::from_config(&json!({"architectures": ["GPT2LMHeadModel"]})).is_err());
    }
}
