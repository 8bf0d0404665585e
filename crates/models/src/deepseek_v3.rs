//! DeepSeek-V3 / DeepSeek-R1 (671B, 37B active) and DeepSeek-V2: the full R1 architecture.
//!
//! Traits: Multi-Head Latent Attention (MLA) with a latent KV cache, DeepSeekMoE (shared plus
//! routed experts, sigmoid scores with a selection-only correction bias and group-limited
//! top-k, or V2's softmax routing), YaRN RoPE on the shared rope key only (interleaved pairs),
//! RMSNorm on the low-rank latents, optional low-rank query (`q_lora_rank`).
//!
//! The KV cache holds per token and layer only the normalized latent (`kv_lora_rank` values)
//! and the rotated rope key (`qk_rope_head_dim` values) — for V3 (512 + 64) x 61 layers —
//! never per-head keys and values. Prefill expands them into per-head keys and values (one
//! pass over many new positions); decode uses the absorbed form: the query goes through
//! `W_UK` into latent space, attention runs over the cached latents, and the result leaves
//! through `W_UV`, so a step reads the small cache and never materializes per-head K/V.
//!
//! Checked against: transformers `DeepseekV3ForCausalLM` (f32 logits of tiny random
//! checkpoints with and without `q_lora_rank`, with YaRN and a random correction bias;
//! FP8-block-scaled safetensors and `deepseek2` GGUF files of the same weights;
//! `tools/make_deepseek_golden.py`). The multi-token-prediction layers
//! (`num_nextn_predict_layers`) sit after the last decoder layer and are not loaded.
//!
//! Shapes: B batch, T new positions, S cached + new positions, E hidden size, H heads,
//! Dn `qk_nope_head_dim`, Dr `qk_rope_head_dim`, Dv `v_head_dim`, C `kv_lora_rank`,
//! Q `q_lora_rank`, X routed experts, K experts per token, V vocabulary.

use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;

use crate::llama::{causal_mask, config_err, lm_head, Linear, Mlp, RmsNorm};
use crate::weights::{Embedding, Matmul, Weights};
use crate::{CausalLm, KvCache, ModelError, Result};

/// `rope_scaling` (transformers v4) / `rope_parameters` (v5) of a DeepSeek config: `yarn`
/// (V3, R1) or `default`; the same fields as the Llama family's.
pub type RopeScaling = crate::llama::RopeParameters;

/// Hugging Face `config.json` of DeepSeek-V3 / R1 / V2 (field names as in
/// `configuration_deepseek_v3.py`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `deepseek_v3` or `deepseek_v2`.
    #[serde(default)]
    pub model_type: String,
    /// V.
    pub vocab_size: usize,
    /// E.
    pub hidden_size: usize,
    /// Hidden size of the dense MLP layers.
    pub intermediate_size: usize,
    /// Hidden size of one expert.
    pub moe_intermediate_size: usize,
    /// Decoder layers (the MTP layers come after these).
    pub num_hidden_layers: usize,
    /// H.
    pub num_attention_heads: usize,
    /// Shared experts per MoE layer.
    pub n_shared_experts: Option<usize>,
    /// X; `None` makes every layer dense.
    pub n_routed_experts: Option<usize>,
    /// Factor on the routed experts' weights.
    #[serde(default = "one")]
    pub routed_scaling_factor: f64,
    /// C.
    pub kv_lora_rank: usize,
    /// Q; `None` projects the query directly (`q_proj`).
    pub q_lora_rank: Option<usize>,
    /// Dr.
    pub qk_rope_head_dim: usize,
    /// Dv.
    pub v_head_dim: usize,
    /// Dn.
    pub qk_nope_head_dim: usize,
    /// `noaux_tc` (V3), `greedy` or `group_limited_greedy` (V2).
    pub topk_method: Option<String>,
    /// Expert groups.
    pub n_group: Option<usize>,
    /// Groups a token may route to.
    pub topk_group: Option<usize>,
    /// K.
    pub num_experts_per_tok: Option<usize>,
    /// Every how many layers a MoE layer comes (1 in every released model).
    #[serde(default = "one_usize")]
    pub moe_layer_freq: usize,
    /// Leading dense layers.
    #[serde(default)]
    pub first_k_dense_replace: usize,
    /// Normalize the top-k weights.
    #[serde(default)]
    pub norm_topk_prob: bool,
    /// `sigmoid` (V3) or `softmax` (V2).
    pub scoring_func: Option<String>,
    /// Activation (`silu`).
    #[serde(default = "silu")]
    pub hidden_act: String,
    /// Longest context.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base (v4).
    pub rope_theta: Option<f64>,
    /// RoPE scaling (v4).
    pub rope_scaling: Option<RopeScaling>,
    /// RoPE base and scaling (v5).
    pub rope_parameters: Option<RopeScaling>,
    /// Rope dimensions laid out in interleaved pairs (DeepSeek's checkpoints: true).
    #[serde(default = "yes")]
    pub rope_interleave: bool,
    /// Output projection shares the embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q_a / kv_a / o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Multi-token-prediction layers after the decoder (skipped).
    #[serde(default)]
    pub num_nextn_predict_layers: usize,
}

fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}
fn default_max_positions() -> usize {
    4096
}

/// How expert scores are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scoring {
    Sigmoid,
    Softmax,
}

/// How experts are picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TopkMethod {
    /// V3: groups ranked by the sum of their two best biased scores.
    NoAuxTc,
    /// V2: plain top-k.
    Greedy,
    /// V2: groups ranked by their best score.
    GroupLimitedGreedy,
}

/// Routing settings of a MoE layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Routing {
    pub scoring: Scoring,
    pub method: TopkMethod,
    pub n_experts: usize,
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub scaling: f64,
}

/// YaRN settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
}

/// Checked hyperparameters of a DeepSeek-V2/V3 model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeepseekConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub n_shared_experts: usize,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub routing: Option<Routing>,
    pub kv_lora_rank: usize,
    pub q_lora_rank: Option<usize>,
    pub qk_rope_head_dim: usize,
    pub qk_nope_head_dim: usize,
    pub v_head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub yarn: Option<Yarn>,
    pub rope_interleave: bool,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
}

impl Config {
    /// Checks the values and turns them into the model's settings.
    pub(crate) fn checked(&self) -> std::result::Result<DeepseekConfig, String> {
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"silu\")",
                self.hidden_act
            ));
        }
        let v3 = self.model_type != "deepseek_v2";
        let rope = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or_default();
        let theta = self.rope_theta.or(rope.rope_theta).unwrap_or(10_000.0);
        let yarn = match rope.rope_type.as_deref() {
            None | Some("default") => None,
            Some("yarn") => Some(Yarn {
                factor: rope.factor.ok_or("rope_scaling.factor is missing")?,
                original_max_position_embeddings: rope
                    .original_max_position_embeddings
                    .ok_or("rope_scaling.original_max_position_embeddings is missing")?,
                beta_fast: rope.beta_fast.unwrap_or(32.0),
                beta_slow: rope.beta_slow.unwrap_or(1.0),
                mscale: rope.mscale,
                mscale_all_dim: rope.mscale_all_dim,
            }),
            Some(other) => {
                return Err(format!(
                    "rope type {other:?} is not supported for DeepSeek (default, yarn)"
                ))
            }
        };
        let routing = match self.n_routed_experts {
            None | Some(0) => None,
            Some(n_experts) => {
                let scoring = match self.scoring_func.as_deref().unwrap_or(if v3 {
                    "sigmoid"
                } else {
                    "softmax"
                }) {
                    "sigmoid" => Scoring::Sigmoid,
                    "softmax" => Scoring::Softmax,
                    other => {
                        return Err(format!(
                            "scoring_func {other:?} is not supported (sigmoid, softmax)"
                        ))
                    }
                };
                let method = match self
                    .topk_method
                    .as_deref()
                    .unwrap_or(if v3 { "noaux_tc" } else { "greedy" })
                {
                    "noaux_tc" => TopkMethod::NoAuxTc,
                    "greedy" => TopkMethod::Greedy,
                    "group_limited_greedy" => TopkMethod::GroupLimitedGreedy,
                    other => {
                        return Err(format!(
                        "topk_method {other:?} is not supported (noaux_tc, greedy, group_limited_greedy)"
                    ))
                    }
                };
                Some(Routing {
                    scoring,
                    method,
                    n_experts,
                    top_k: self
                        .num_experts_per_tok
                        .ok_or("num_experts_per_tok is missing")?,
                    n_group: self.n_group.unwrap_or(1),
                    topk_group: self.topk_group.unwrap_or(1),
                    norm_topk_prob: self.norm_topk_prob,
                    scaling: self.routed_scaling_factor,
                })
            }
        };
        let cfg = DeepseekConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            moe_intermediate_size: self.moe_intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            n_shared_experts: self.n_shared_experts.unwrap_or(0),
            first_k_dense_replace: self.first_k_dense_replace,
            moe_layer_freq: self.moe_layer_freq,
            routing,
            kv_lora_rank: self.kv_lora_rank,
            q_lora_rank: self.q_lora_rank.filter(|&q| q > 0),
            qk_rope_head_dim: self.qk_rope_head_dim,
            qk_nope_head_dim: self.qk_nope_head_dim,
            v_head_dim: self.v_head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: theta,
            yarn,
            rope_interleave: self.rope_interleave,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

impl DeepseekConfig {
    /// Rejects values no real model has, before any of them sizes an allocation.
    pub fn check(&self) -> std::result::Result<(), String> {
        let fields = [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("moe_intermediate_size", self.moe_intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_layers, 1024),
            ("num_attention_heads", self.num_heads, 1024),
            ("kv_lora_rank", self.kv_lora_rank, 1 << 14),
            ("qk_nope_head_dim", self.qk_nope_head_dim, 1024),
            ("qk_rope_head_dim", self.qk_rope_head_dim, 1024),
            ("v_head_dim", self.v_head_dim, 1024),
        ];
        for (name, v, max) in fields {
            if v == 0 || v > max {
                return Err(format!("{name} = {v} is out of range (1..={max})"));
            }
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return Err(format!(
                "qk_rope_head_dim = {} must be even for RoPE",
                self.qk_rope_head_dim
            ));
        }
        if let Some(q) = self.q_lora_rank {
            if q > 1 << 16 {
                return Err(format!("q_lora_rank = {q} is out of range (1..=65536)"));
            }
        }
        if self.moe_layer_freq == 0 {
            return Err("moe_layer_freq = 0 is out of range (1..)".into());
        }
        if self.n_shared_experts > 1 << 12 {
            return Err(format!(
                "n_shared_experts = {} is out of range (0..=4096)",
                self.n_shared_experts
            ));
        }
        if let Some(r) = &self.routing {
            if r.n_experts > 1 << 12 {
                return Err(format!(
                    "n_routed_experts = {} is out of range (1..=4096)",
                    r.n_experts
                ));
            }
            if r.top_k == 0 || r.top_k > r.n_experts {
                return Err(format!(
                    "num_experts_per_tok = {} must be between 1 and n_routed_experts = {}",
                    r.top_k, r.n_experts
                ));
            }
            if r.n_group == 0 || !r.n_experts.is_multiple_of(r.n_group) {
                return Err(format!(
                    "n_group = {} must divide n_routed_experts = {}",
                    r.n_group, r.n_experts
                ));
            }
            if r.topk_group == 0 || r.topk_group > r.n_group {
                return Err(format!(
                    "topk_group = {} must be between 1 and n_group = {}",
                    r.topk_group, r.n_group
                ));
            }
            if r.method == TopkMethod::NoAuxTc && r.n_experts / r.n_group < 2 && r.n_group > 1 {
                return Err("noaux_tc routing needs at least 2 experts per group".into());
            }
            if r.topk_group * (r.n_experts / r.n_group) < r.top_k {
                return Err(format!(
                    "topk_group = {} groups of {} experts hold fewer than num_experts_per_tok = {}",
                    r.topk_group,
                    r.n_experts / r.n_group,
                    r.top_k
                ));
            }
        }
        if let Some(y) = &self.yarn {
            if !(y.factor >= 1.0 && y.factor.is_finite()) || y.original_max_position_embeddings == 0
            {
                return Err(format!(
                    "rope_scaling: factor {} must be >= 1 and original_max_position_embeddings > 0",
                    y.factor
                ));
            }
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(format!(
                "rms_norm_eps = {} is out of range (0, 1)",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta > 1.0 && self.rope_theta.is_finite()) {
            return Err(format!(
                "rope_theta = {} must be a finite number above 1",
                self.rope_theta
            ));
        }
        Ok(())
    }

    /// Whether layer `i` is a MoE layer.
    pub fn is_moe(&self, i: usize) -> bool {
        self.routing.is_some()
            && i >= self.first_k_dense_replace
            && i.is_multiple_of(self.moe_layer_freq)
    }

    /// Reads the hyperparameters llama.cpp writes for `deepseek2` (V2, V3 and R1).
    pub fn from_gguf(file: &std::sync::Arc<seek_gguf::GgufFile>) -> Result<Self> {
        let key = |k: &str| format!("deepseek2.{k}");
        let u = |k: &str| -> Result<usize> { Ok(file.get_u64(&key(k))? as usize) };
        let opt = |k: &str| file.get_u64(&key(k)).ok().map(|v| v as usize);
        let n_heads = u("attention.head_count")?;
        let hidden = u("embedding_length")?;
        let kv_lora_rank = u("attention.kv_lora_rank")?;
        let rope_dim = u("rope.dimension_count")?;
        // Since llama.cpp's MLA rewrite, `key_length` / `value_length` describe the latent
        // (C + Dr, C) and the per-head sizes moved to `*_mla`.
        let key_len =
            opt("attention.key_length_mla").map_or_else(|| u("attention.key_length"), Ok)?;
        let value_len =
            opt("attention.value_length_mla").map_or_else(|| u("attention.value_length"), Ok)?;
        if key_len <= rope_dim {
            return Err(config_err(
                file.path(),
                format!(
                    "deepseek2: key length {key_len} must exceed rope.dimension_count {rope_dim}"
                ),
            ));
        }
        let vocab = match opt("vocab_size") {
            Some(v) => v,
            None => file.tensor_info("token_embd.weight")?.shape()[0],
        };
        let n_experts = opt("expert_count").unwrap_or(0);
        let routing = if n_experts > 0 {
            // llama.cpp: 1 = softmax, 2 = sigmoid; files written before the field are V2.
            let scoring = match opt("expert_gating_func").unwrap_or(1) {
                2 => Scoring::Sigmoid,
                _ => Scoring::Softmax,
            };
            let n_group = opt("expert_group_count").unwrap_or(1).max(1);
            let has_bias = (0..u("block_count")?)
                .any(|l| file.has_tensor(&format!("blk.{l}.exp_probs_b.bias")));
            Some(Routing {
                scoring,
                method: if has_bias || scoring == Scoring::Sigmoid {
                    TopkMethod::NoAuxTc
                } else if n_group > 1 {
                    TopkMethod::GroupLimitedGreedy
                } else {
                    TopkMethod::Greedy
                },
                n_experts,
                top_k: u("expert_used_count")?,
                n_group,
                topk_group: opt("expert_group_used_count").unwrap_or(1).max(1),
                norm_topk_prob: file.get_bool(&key("expert_weights_norm")).unwrap_or(false),
                scaling: file.get_f64(&key("expert_weights_scale")).unwrap_or(1.0),
            })
        } else {
            None
        };
        let yarn = match file.get_str(&key("rope.scaling.type")) {
            Ok("yarn") => {
                // llama.cpp stores 0.1 * mscale_all_dim as the log multiplier and assumes
                // mscale == mscale_all_dim (true of every released V2/V3 config).
                let mul = file
                    .get_f64(&key("rope.scaling.yarn_log_multiplier"))
                    .unwrap_or(0.0);
                let m = (mul > 0.0).then_some(mul / 0.1);
                Some(Yarn {
                    factor: file.get_f64(&key("rope.scaling.factor"))?,
                    original_max_position_embeddings: u("rope.scaling.original_context_length")?,
                    beta_fast: file
                        .get_f64(&key("rope.scaling.yarn_beta_fast"))
                        .unwrap_or(32.0),
                    beta_slow: file
                        .get_f64(&key("rope.scaling.yarn_beta_slow"))
                        .unwrap_or(1.0),
                    mscale: m,
                    mscale_all_dim: m,
                })
            }
            _ => None,
        };
        let cfg = Self {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: u("feed_forward_length")?,
            moe_intermediate_size: opt("expert_feed_forward_length").unwrap_or(1),
            num_layers: u("block_count")?,
            num_heads: n_heads,
            n_shared_experts: opt("expert_shared_count").unwrap_or(0),
            first_k_dense_replace: opt("leading_dense_block_count").unwrap_or(0),
            moe_layer_freq: 1,
            routing,
            kv_lora_rank,
            q_lora_rank: opt("attention.q_lora_rank").filter(|&q| q > 0),
            qk_rope_head_dim: rope_dim,
            qk_nope_head_dim: key_len - rope_dim,
            v_head_dim: value_len,
            rms_norm_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: file.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            yarn,
            // ggml rotates DeepSeek's rope dimensions as interleaved pairs, like the checkpoints.
            rope_interleave: true,
            max_position_embeddings: opt("context_length").unwrap_or(4096),
            tie_word_embeddings: !file.has_tensor("output.weight"),
            attention_bias: false,
        };
        cfg.check().map_err(|p| config_err(file.path(), p))?;
        Ok(cfg)
    }

    /// Weights this config implies (the decoder; MTP layers excluded).
    pub fn parameter_count(&self) -> u64 {
        let (e, h, c) = (self.hidden_size, self.num_heads, self.kv_lora_rank);
        let (dn, dr, dv) = (
            self.qk_nope_head_dim,
            self.qk_rope_head_dim,
            self.v_head_dim,
        );
        let q = match self.q_lora_rank {
            Some(qr) => e * qr + qr + qr * h * (dn + dr),
            None => e * h * (dn + dr),
        };
        let attn = q + e * (c + dr) + c + c * h * (dn + dv) + h * dv * e;
        let dense = 3 * e * self.intermediate_size;
        let moe = self.routing.as_ref().map_or(0, |r| {
            let f = self.moe_intermediate_size;
            r.n_experts * e
                + r.n_experts
                + r.n_experts * 3 * e * f
                + self.n_shared_experts * 3 * e * f
        });
        let layers: usize = (0..self.num_layers)
            .map(|i| attn + 2 * e + if self.is_moe(i) { moe } else { dense })
            .sum();
        let embed = self.vocab_size * e * if self.tie_word_embeddings { 1 } else { 2 };
        (embed + layers + e) as u64
    }

    /// Bytes of KV cache per token: the latent and the rope key of every layer.
    pub fn kv_bytes_per_token(&self, bytes_per_value: usize) -> u64 {
        ((self.kv_lora_rank + self.qk_rope_head_dim) * self.num_layers * bytes_per_value) as u64
    }

    /// What a naive cache of per-head keys and values would cost per token.
    pub fn expanded_kv_bytes_per_token(&self, bytes_per_value: usize) -> u64 {
        let k = self.qk_nope_head_dim + self.qk_rope_head_dim;
        ((k + self.v_head_dim) * self.num_heads * self.num_layers * bytes_per_value) as u64
    }

    /// Weights one token uses: everything except the routed experts it does not visit (the
    /// embedding table counts one row).
    pub fn active_parameters(&self, total: u64) -> u64 {
        let Some(r) = &self.routing else {
            return total;
        };
        let per_expert = (3 * self.hidden_size * self.moe_intermediate_size) as u64;
        let moe_layers = (0..self.num_layers).filter(|&i| self.is_moe(i)).count() as u64;
        let idle = moe_layers * (r.n_experts - r.top_k) as u64 * per_expert;
        let embed_rest = ((self.vocab_size - 1) * self.hidden_size) as u64;
        total.saturating_sub(idle + embed_rest)
    }
}

/// Inverse frequencies `(Dr/2,)` and the cos/sin factor, as transformers computes them
/// (`_compute_yarn_parameters`, truncated correction range).
pub(crate) fn rope_frequencies(cfg: &DeepseekConfig) -> (Vec<f32>, f32) {
    let dim = cfg.qk_rope_head_dim;
    let base = cfg.rope_theta;
    let pos_freqs: Vec<f64> = (0..dim / 2)
        .map(|i| base.powf((2 * i) as f64 / dim as f64))
        .collect();
    let Some(y) = &cfg.yarn else {
        return (pos_freqs.iter().map(|p| (1.0 / p) as f32).collect(), 1.0);
    };
    let get_mscale = |scale: f64, m: f64| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    let attention_factor = match (y.mscale, y.mscale_all_dim) {
        (Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
            get_mscale(y.factor, m) / get_mscale(y.factor, a)
        }
        _ => get_mscale(y.factor, 1.0),
    };
    let orig = y.original_max_position_embeddings as f64;
    let correction_dim = |rot: f64| {
        (dim as f64 * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
    };
    let low = correction_dim(y.beta_fast).floor().max(0.0);
    let high = correction_dim(y.beta_slow).ceil().min(dim as f64 - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    let inv_freq = pos_freqs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // Computed in f32 as transformers does (torch.float32 ramp and frequencies).
            let ramp = ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
            let extrapolation = 1.0 - ramp;
            let (p, factor) = (*p as f32, y.factor as f32);
            let interp = 1.0 / (factor * p);
            let extra = 1.0 / p;
            interp * (1.0 - extrapolation) + extra * extrapolation
        })
        .collect();
    (inv_freq, attention_factor as f32)
}

/// The softmax scale: `1/sqrt(Dn + Dr)`, times `mscale(factor, mscale_all_dim)²` under YaRN.
pub(crate) fn softmax_scale(cfg: &DeepseekConfig) -> f64 {
    let mut s = 1.0 / ((cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) as f64).sqrt();
    if let Some(y) = &cfg.yarn {
        if let Some(a) = y.mscale_all_dim.filter(|&a| a != 0.0) {
            let m = if y.factor <= 1.0 {
                1.0
            } else {
                0.1 * a * y.factor.ln() + 1.0
            };
            s *= m * m;
        }
    }
    s
}

/// Picks a token's experts from its router logits `(X,)`: `(expert, weight)` pairs, best
/// first. Scores are computed in f32; V3's correction `bias` only ranks experts (and groups),
/// the weights come from the unbiased scores.
pub(crate) fn route(logits: &[f32], bias: Option<&[f32]>, r: &Routing) -> Vec<(usize, f32)> {
    let n = logits.len();
    let scores: Vec<f32> = match r.scoring {
        Scoring::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        Scoring::Softmax => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            e.iter().map(|x| x / sum).collect()
        }
    };
    let mut choice: Vec<f32> = match (r.method, bias) {
        (TopkMethod::NoAuxTc, Some(b)) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        _ => scores.clone(),
    };
    let grouped = r.n_group > 1
        && matches!(
            r.method,
            TopkMethod::NoAuxTc | TopkMethod::GroupLimitedGreedy
        );
    if grouped {
        let per = n / r.n_group;
        let group_score = |g: &[f32]| -> f32 {
            let mut v = g.to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            match r.method {
                TopkMethod::NoAuxTc => v[0] + v.get(1).copied().unwrap_or(0.0),
                _ => v[0],
            }
        };
        let gs: Vec<f32> = choice.chunks(per).map(group_score).collect();
        let keep = top_indices(&gs, r.topk_group);
        for (g, chunk) in choice.chunks_mut(per).enumerate() {
            if !keep.contains(&g) {
                chunk.fill(f32::NEG_INFINITY);
            }
        }
    }
    let picked = top_indices(&choice, r.top_k);
    let mut weights: Vec<f32> = picked.iter().map(|&e| scores[e]).collect();
    let normalize = r.norm_topk_prob && r.top_k > 1;
    if normalize {
        let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    // V3 scales after normalizing; V2 scales only weights it did not normalize.
    let scale = r.method == TopkMethod::NoAuxTc || !normalize;
    if scale {
        weights.iter_mut().for_each(|w| *w *= r.scaling as f32);
    }
    picked.into_iter().zip(weights).collect()
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Routed expert `i` of `n` under `prefix` (separate tensors, or one stacked GGUF tensor).
fn expert(w: &Weights, prefix: &str, i: usize, n: usize, e: usize, f: usize) -> Result<Mlp> {
    let m = |proj: &str, shape: (usize, usize)| -> Result<Linear> {
        let mm: Matmul = w.expert_matmul(prefix, i, n, proj, shape)?;
        Linear::from_matmul(mm, w, prefix, shape.0, false)
    };
    Ok(Mlp {
        gate_proj: m("gate_proj", (f, e))?,
        up_proj: m("up_proj", (f, e))?,
        down_proj: m("down_proj", (e, f))?,
    })
}

/// DeepSeekMoE: routed experts (only the selected ones run) plus shared experts.
#[derive(Clone)]
struct Moe {
    /// Router `(X, E)`, in f32.
    gate: Tensor,
    /// V3's selection bias `(X,)`.
    bias: Option<Vec<f32>>,
    experts: Vec<Mlp>,
    shared: Option<Mlp>,
    routing: Routing,
}

impl Moe {
    fn new(cfg: &DeepseekConfig, w: &Weights, prefix: &str, routing: &Routing) -> Result<Self> {
        let (e, f, n) = (
            cfg.hidden_size,
            cfg.moe_intermediate_size,
            routing.n_experts,
        );
        let gate = w
            .tensor(&format!("{prefix}.gate.weight"), &[n, e])?
            .to_dtype(DType::F32)?;
        let bias_name = format!("{prefix}.gate.e_score_correction_bias");
        let bias = if w.contains(&bias_name) {
            Some(
                w.tensor(&bias_name, &[n])?
                    .to_dtype(DType::F32)?
                    .to_vec1()?,
            )
        } else if routing.method == TopkMethod::NoAuxTc && routing.scoring == Scoring::Sigmoid {
            return Err(ModelError::MissingTensor {
                path: w.path().to_path_buf(),
                name: bias_name,
            });
        } else {
            None
        };
        let experts = (0..n)
            .map(|i| expert(w, &format!("{prefix}.experts"), i, n, e, f))
            .collect::<Result<Vec<_>>>()?;
        let shared = if cfg.n_shared_experts > 0 {
            Some(Mlp::new(
                w,
                &format!("{prefix}.shared_experts"),
                e,
                f * cfg.n_shared_experts,
            )?)
        } else {
            None
        };
        Ok(Self {
            gate,
            bias,
            experts,
            shared,
            routing: routing.clone(),
        })
    }

    /// `x: (B, T, E)` -> `(B, T, E)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        // (B*T, E)
        let rows = x.reshape((b * t, e))?;
        // (B*T, E) @ (E, X) -> (B*T, X), in f32 whatever the compute type
        let logits = rows
            .to_dtype(DType::F32)?
            .matmul(&self.gate.t()?)?
            .to_vec2::<f32>()?;
        // Tokens (and weights) per expert, so each selected expert runs once on its rows.
        let mut per_expert: Vec<(Vec<u32>, Vec<f32>)> =
            vec![Default::default(); self.experts.len()];
        for (tok, l) in logits.iter().enumerate() {
            for (ex, wgt) in route(l, self.bias.as_deref(), &self.routing) {
                per_expert[ex].0.push(tok as u32);
                per_expert[ex].1.push(wgt);
            }
        }
        let mut out = rows.zeros_like()?;
        for (ex, (toks, wgts)) in per_expert.iter().enumerate() {
            if toks.is_empty() {
                continue;
            }
            let idx = Tensor::new(toks.as_slice(), x.device())?;
            // (M, E)
            let xs = rows.index_select(&idx, 0)?;
            let ys = self.experts[ex].forward(&xs)?;
            let w = Tensor::new(wgts.as_slice(), x.device())?
                .to_dtype(ys.dtype())?
                .unsqueeze(1)?;
            out = out.index_add(&idx, &ys.broadcast_mul(&w)?, 0)?;
        }
        if let Some(shared) = &self.shared {
            out = (out + shared.forward(&rows)?)?;
        }
        Ok(out.reshape((b, t, e))?)
    }
}

/// Multi-Head Latent Attention.
#[derive(Clone)]
struct Attention {
    /// `q_a_proj` + `q_a_layernorm` + `q_b_proj`, or `q_proj`.
    q: QueryProj,
    kv_a_proj_with_mqa: Linear,
    kv_a_layernorm: RmsNorm,
    /// `W_UK`: `(H, Dn, C)`.
    w_uk: Tensor,
    /// `W_UV`: `(H, Dv, C)`.
    w_uv: Tensor,
    o_proj: Linear,
    num_heads: usize,
    nope: usize,
    rope: usize,
    v_dim: usize,
    kv_lora_rank: usize,
    scale: f64,
}

#[derive(Clone)]
// One per layer, built once: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum QueryProj {
    LowRank { a: Linear, norm: RmsNorm, b: Linear },
    Direct(Linear),
}

impl Attention {
    fn new(cfg: &DeepseekConfig, w: &Weights, prefix: &str) -> Result<Self> {
        let (e, h, c) = (cfg.hidden_size, cfg.num_heads, cfg.kv_lora_rank);
        let (dn, dr, dv) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim);
        let q_out = h * (dn + dr);
        let bias = cfg.attention_bias;
        let q = match cfg.q_lora_rank {
            Some(qr) => QueryProj::LowRank {
                a: Linear::new(w, &format!("{prefix}.q_a_proj"), qr, e, bias)?,
                norm: RmsNorm::new(
                    w,
                    &format!("{prefix}.q_a_layernorm.weight"),
                    qr,
                    cfg.rms_norm_eps,
                )?,
                b: Linear::new(w, &format!("{prefix}.q_b_proj"), q_out, qr, false)?,
            },
            None => QueryProj::Direct(Linear::new(
                w,
                &format!("{prefix}.q_proj"),
                q_out,
                e,
                false,
            )?),
        };
        let (w_uk, w_uv) = up_projections(cfg, w, prefix)?;
        Ok(Self {
            q,
            kv_a_proj_with_mqa: Linear::new(
                w,
                &format!("{prefix}.kv_a_proj_with_mqa"),
                c + dr,
                e,
                bias,
            )?,
            kv_a_layernorm: RmsNorm::new(
                w,
                &format!("{prefix}.kv_a_layernorm.weight"),
                c,
                cfg.rms_norm_eps,
            )?,
            w_uk,
            w_uv,
            o_proj: Linear::new(w, &format!("{prefix}.o_proj"), e, h * dv, bias)?,
            num_heads: h,
            nope: dn,
            rope: dr,
            v_dim: dv,
            kv_lora_rank: c,
            scale: softmax_scale(cfg),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        step: &Step,
        cache: &mut KvCache,
        layer: usize,
        absorbed: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, dn, dr, dv, c) = (
            self.num_heads,
            self.nope,
            self.rope,
            self.v_dim,
            self.kv_lora_rank,
        );
        let q = match &self.q {
            QueryProj::LowRank { a, norm, b } => b.forward(&norm.forward(&a.forward(x)?)?)?,
            QueryProj::Direct(p) => p.forward(x)?,
        };
        // (B, T, H*(Dn+Dr)) -> (B, H, T, Dn+Dr)
        let q = q.reshape((b, t, h, dn + dr))?.transpose(1, 2)?;
        let q_nope = q.narrow(D::Minus1, 0, dn)?;
        let q_pe = step.rotate(&q.narrow(D::Minus1, dn, dr)?)?;
        // (B, T, C + Dr)
        let ckv = self.kv_a_proj_with_mqa.forward(x)?;
        // (B, 1, T, C): the normalized latent, what the cache keeps
        let latent = self
            .kv_a_layernorm
            .forward(&ckv.narrow(D::Minus1, 0, c)?.contiguous()?)?
            .unsqueeze(1)?;
        // (B, 1, T, Dr): the shared rope key
        let k_pe = step.rotate(&ckv.narrow(D::Minus1, c, dr)?.unsqueeze(1)?)?;
        // (B, 1, S, C), (B, 1, S, Dr)
        let (latent, k_pe) = cache.append(layer, &latent, &k_pe)?;
        let s = latent.dim(2)?;
        let y = if t == 1 && absorbed {
            // (B, H, 1, Dn) -> (H, B, Dn) @ (H, Dn, C) -> (H, B, C) -> (B, H, C)
            let q_lat = q_nope
                .squeeze(2)?
                .transpose(0, 1)?
                .contiguous()?
                .matmul(&self.w_uk)?
                .transpose(0, 1)?;
            // (B, S, C), (B, S, Dr)
            let lat = latent.squeeze(1)?;
            let kpe = k_pe.squeeze(1)?;
            // (B, H, C) @ (B, C, S) + (B, H, Dr) @ (B, Dr, S) -> (B, H, S)
            let scores = (q_lat.contiguous()?.matmul(&lat.t()?)?
                + q_pe.squeeze(2)?.contiguous()?.matmul(&kpe.t()?)?)?;
            let p = softmax_f32(&(scores * self.scale)?)?;
            // (B, H, S) @ (B, S, C) -> (B, H, C) -> (H, B, C) @ (H, C, Dv) -> (H, B, Dv)
            let ctx = p.matmul(&lat.contiguous()?)?;
            let out = ctx.transpose(0, 1)?.contiguous()?.matmul(&self.w_uv.t()?)?;
            // (H, B, Dv) -> (B, 1, H*Dv)
            out.transpose(0, 1)?.reshape((b, 1, h * dv))?
        } else {
            // Expanded: per-head keys and values from the latents of all S positions.
            // (B, 1, S, C) @ (1, H, C, Dn) -> (B, H, S, Dn)
            let k_nope = latent.broadcast_matmul(&self.w_uk.t()?.unsqueeze(0)?)?;
            // (B, 1, S, C) @ (1, H, C, Dv) -> (B, H, S, Dv)
            let v = latent.broadcast_matmul(&self.w_uv.t()?.unsqueeze(0)?)?;
            // (B, H, S, Dn + Dr)
            let k = Tensor::cat(
                &[k_nope, k_pe.broadcast_as((b, h, s, dr))?.contiguous()?],
                3,
            )?;
            let q = Tensor::cat(&[q_nope.contiguous()?, q_pe], 3)?;
            // (B, H, T, S)
            let mut att = (q.matmul(&k.t()?)? * self.scale)?;
            if let Some(mask) = &step.mask {
                att = att.broadcast_add(mask)?;
            }
            let p = softmax_f32(&att)?;
            // (B, H, T, S) @ (B, H, S, Dv) -> (B, H, T, Dv) -> (B, T, H*Dv)
            p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h * dv))?
        };
        self.o_proj.forward(&y)
    }
}

/// Softmax over the last dimension in f32, back in the input's type.
fn softmax_f32(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?)
}

/// `W_UK (H, Dn, C)` and `W_UV (H, Dv, C)` from `kv_b_proj (H*(Dn+Dv), C)`, or from the
/// split `k_b_proj (H, C, Dn)` / `v_b_proj (H, Dv, C)` that newer llama.cpp GGUF files hold.
pub(crate) fn up_projections(
    cfg: &DeepseekConfig,
    w: &Weights,
    prefix: &str,
) -> Result<(Tensor, Tensor)> {
    let (h, c) = (cfg.num_heads, cfg.kv_lora_rank);
    let (dn, dv) = (cfg.qk_nope_head_dim, cfg.v_head_dim);
    let kv_b = format!("{prefix}.kv_b_proj.weight");
    if w.contains(&kv_b) {
        // (H*(Dn+Dv), C) -> (H, Dn+Dv, C)
        let kv = w
            .tensor(&kv_b, &[h * (dn + dv), c])?
            .reshape((h, dn + dv, c))?;
        return Ok((
            kv.narrow(1, 0, dn)?.contiguous()?,
            kv.narrow(1, dn, dv)?.contiguous()?,
        ));
    }
    // (H, C, Dn) -> (H, Dn, C)
    let k_b = w
        .tensor(&format!("{prefix}.k_b_proj.weight"), &[h, c, dn])?
        .transpose(1, 2)?
        .contiguous()?;
    let v_b = w.tensor(&format!("{prefix}.v_b_proj.weight"), &[h, dv, c])?;
    Ok((k_b, v_b))
}

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Ffn,
}

impl Block {
    fn new(cfg: &DeepseekConfig, w: &Weights, layer: usize) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let (e, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let mlp = match (&cfg.routing, cfg.is_moe(layer)) {
            (Some(r), true) => Ffn::Moe(Moe::new(cfg, w, &format!("{p}.mlp"), r)?),
            _ => Ffn::Dense(Mlp::new(w, &format!("{p}.mlp"), e, cfg.intermediate_size)?),
        };
        Ok(Self {
            input_layernorm: RmsNorm::new(w, &format!("{p}.input_layernorm.weight"), e, eps)?,
            self_attn: Attention::new(cfg, w, &format!("{p}.self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                w,
                &format!("{p}.post_attention_layernorm.weight"),
                e,
                eps,
            )?,
            mlp,
        })
    }
}

/// Per-forward values every layer shares.
struct Step {
    /// `(T, Dr/2)` each, already times the YaRN attention factor.
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
    /// Additive causal mask `(T, S)`, or none for one new position.
    mask: Option<Tensor>,
}

impl Step {
    /// Rotates `x: (B, heads, T, Dr)`.
    fn rotate(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, &self.cos, &self.sin)?
        } else {
            candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin)?
        })
    }
}

/// A DeepSeek-V2/V3/R1 model.
pub struct DeepseekV3 {
    cfg: DeepseekConfig,
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Matmul,
    inv_freq: Vec<f32>,
    attention_factor: f32,
    absorbed: bool,
    device: Device,
    dtype: DType,
}

impl DeepseekV3 {
    /// Builds the model from a Hugging Face `config.json` and its weights.
    pub fn new(cfg: &Config, w: &Weights) -> Result<Self> {
        let c = cfg.checked().map_err(|p| config_err(w.path(), p))?;
        Self::from_config(c, w)
    }

    pub(crate) fn from_config(cfg: DeepseekConfig, w: &Weights) -> Result<Self> {
        let (v, e) = (cfg.vocab_size, cfg.hidden_size);
        let embed_tokens = w.embedding("model.embed_tokens.weight", v, e)?;
        let layers = (0..cfg.num_layers)
            .map(|i| Block::new(&cfg, w, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(w, "model.norm.weight", e, cfg.rms_norm_eps)?;
        let lm_head = lm_head(w, v, e, cfg.tie_word_embeddings)?;
        let (inv_freq, attention_factor) = rope_frequencies(&cfg);
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            attention_factor,
            absorbed: true,
            device: w.device().clone(),
            dtype: w.dtype(),
            cfg,
        })
    }

    /// Decode (one new position) through the absorbed form (the default) or by expanding
    /// per-head keys and values like prefill (for tests and benchmarks of the two).
    pub fn set_absorbed_decode(&mut self, on: bool) {
        self.absorbed = on;
    }

    /// Logits `(B, T, V)`, or `(B, 1, V)` for the last position only when `last_only`.
    fn forward_inner(&self, ids: &Tensor, cache: &mut KvCache, last_only: bool) -> Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let offset = cache.seq_len();
        crate::check_forward(cache, self.layers.len(), t)?;
        let half = self.inv_freq.len();
        let mut angles = Vec::with_capacity(t * half);
        for pos in offset..offset + t {
            angles.extend(self.inv_freq.iter().map(|f| pos as f32 * f));
        }
        // (T, Dr/2)
        let angles = Tensor::from_vec(angles, (t, half), &self.device)?;
        let af = self.attention_factor as f64;
        let step = Step {
            cos: (angles.cos()? * af)?.to_dtype(self.dtype)?,
            sin: (angles.sin()? * af)?.to_dtype(self.dtype)?,
            interleaved: self.cfg.rope_interleave,
            mask: if t > 1 {
                Some(causal_mask(t, offset, &self.device, self.dtype)?)
            } else {
                None
            },
        };
        // (B, T) -> (B, T, E)
        let mut x = self.embed_tokens.forward(ids)?.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let a = layer.self_attn.forward(
                &layer.input_layernorm.forward(&x)?,
                &step,
                cache,
                i,
                self.absorbed,
            )?;
            x = (x + a)?;
            let h = layer.post_attention_layernorm.forward(&x)?;
            let m = match &layer.mlp {
                Ffn::Dense(m) => m.forward(&h)?,
                Ffn::Moe(m) => m.forward(&h)?,
            };
            x = (x + m)?;
        }
        cache.advance(t);
        let x = if last_only { x.narrow(1, t - 1, 1)? } else { x };
        let x = self.norm.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl CausalLm for DeepseekV3 {
    fn forward(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_inner(input_ids, cache, false)
    }

    fn forward_last(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        // (B, 1, V) -> (B, V)
        Ok(self.forward_inner(input_ids, cache, true)?.squeeze(1)?)
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn max_context(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(method: TopkMethod, scoring: Scoring, n_group: usize, topk_group: usize) -> Routing {
        Routing {
            scoring,
            method,
            n_experts: 8,
            top_k: 2,
            n_group,
            topk_group,
            norm_topk_prob: true,
            scaling: 2.5,
        }
    }

    /// V3: the bias picks the experts, the unbiased scores weight them.
    #[test]
    fn noaux_tc_selects_with_the_bias_and_weights_without_it() {
        let logits = [0.0f32, 2.0, 1.0, -1.0, 0.5, 0.0, 0.0, 0.0];
        let r = routing(TopkMethod::NoAuxTc, Scoring::Sigmoid, 1, 1);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        // Without bias: experts 1 and 2.
        let plain = route(&logits, Some(&[0.0; 8]), &r);
        assert_eq!(plain.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
        // A bias on expert 3 makes it win selection, but its weight is its own sigmoid.
        let mut bias = [0.0f32; 8];
        bias[3] = 1.0;
        let biased = route(&logits, Some(&bias), &r);
        assert_eq!(biased.iter().map(|p| p.0).collect::<Vec<_>>(), vec![3, 1]);
        let (s3, s1) = (sig(-1.0), sig(2.0));
        let want = [s3 / (s3 + s1) * 2.5, s1 / (s3 + s1) * 2.5];
        for (got, want) in biased.iter().zip(want) {
            assert!((got.1 - want).abs() < 1e-6, "{got:?} vs {want}");
        }
    }

    /// Groups are ranked by the sum of their two best biased scores; experts outside the
    /// kept groups are never chosen, however high their own score.
    #[test]
    fn group_limited_routing_masks_whole_groups() {
        // 4 groups of 2. Group 0 has one very high expert; group 2 has two good ones.
        let logits = [5.0f32, -5.0, 0.0, 0.0, 2.0, 2.0, -1.0, -1.0];
        let r = routing(TopkMethod::NoAuxTc, Scoring::Sigmoid, 4, 1);
        let picked: Vec<usize> = route(&logits, Some(&[0.0; 8]), &r)
            .iter()
            .map(|p| p.0)
            .collect();
        // Sums: g0 = σ(5)+σ(-5) = 1.0, g2 = 2σ(2) = 1.76 -> only group 2 survives.
        assert_eq!(picked, vec![4, 5]);
        // With two groups kept, expert 0 comes back first.
        let r2 = routing(TopkMethod::NoAuxTc, Scoring::Sigmoid, 4, 2);
        let picked: Vec<usize> = route(&logits, Some(&[0.0; 8]), &r2)
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(picked, vec![0, 4]);
    }

    /// V2: softmax scores; without normalization the weights are scaled.
    #[test]
    fn v2_softmax_greedy_and_group_limited() {
        let logits = [1.0f32, 0.0, 3.0, 0.0, 2.0, 0.0, 0.0, 0.5];
        let mut r = routing(TopkMethod::Greedy, Scoring::Softmax, 1, 1);
        r.norm_topk_prob = false;
        r.scaling = 1.0;
        let out = route(&logits, None, &r);
        let z: f32 = logits.iter().map(|x| x.exp()).sum();
        assert_eq!(out[0].0, 2);
        assert_eq!(out[1].0, 4);
        assert!((out[0].1 - 3f32.exp() / z).abs() < 1e-6);
        // Group-limited: groups of 2 ranked by their best score; keep 1 group -> {2, 3}.
        let r = routing(TopkMethod::GroupLimitedGreedy, Scoring::Softmax, 4, 1);
        let picked: Vec<usize> = route(&logits, None, &r).iter().map(|p| p.0).collect();
        assert_eq!(picked, vec![2, 3]);
    }

    #[test]
    fn latent_cache_size_of_the_real_v3_config() {
        let cfg: Config = serde_json::from_value(serde_json::json!({
            "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168,
            "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
            "num_attention_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
            "routed_scaling_factor": 2.5, "kv_lora_rank": 512, "q_lora_rank": 1536,
            "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
            "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
            "first_k_dense_replace": 3, "norm_topk_prob": true, "scoring_func": "sigmoid",
            "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
            "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
            "num_nextn_predict_layers": 1
        }))
        .unwrap();
        let c = cfg.checked().unwrap();
        // (512 + 64) x 61 layers x 2 bytes (bf16) = 70,272 bytes = 68.6 KiB
        assert_eq!(c.kv_bytes_per_token(2), 70_272);
        // The naive cache: (192 + 128) x 128 heads x 61 layers x 2 bytes = 4.77 MiB
        assert_eq!(c.expanded_kv_bytes_per_token(2), 4_997_120);
        // YaRN: mscale == mscale_all_dim -> cos/sin unscaled; softmax scale x mscale².
        let (_, af) = rope_frequencies(&c);
        assert!((af - 1.0).abs() < 1e-6);
        let m = 0.1 * 40f64.ln() + 1.0;
        assert!((softmax_scale(&c) - m * m / 192f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn bad_routing_configs_are_rejected_with_the_field_name() {
        let mut c = serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8, "moe_intermediate_size": 4,
            "num_hidden_layers": 1, "num_attention_heads": 2, "n_routed_experts": 8,
            "kv_lora_rank": 4, "qk_rope_head_dim": 2, "v_head_dim": 2, "qk_nope_head_dim": 2,
            "num_experts_per_tok": 9, "rms_norm_eps": 1e-6
        });
        let e = serde_json::from_value::<Config>(c.clone())
            .unwrap()
            .checked()
            .unwrap_err();
        assert!(e.contains("num_experts_per_tok"), "{e}");
        c["num_experts_per_tok"] = 2.into();
        c["n_group"] = 3.into();
        let e = serde_json::from_value::<Config>(c)
            .unwrap()
            .checked()
            .unwrap_err();
        assert!(e.contains("n_group"), "{e}");
    }
}
