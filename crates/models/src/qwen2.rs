//! Qwen2 / Qwen2.5: DeepSeek-R1-Distill-Qwen (1.5B, 7B, 14B, 32B) and Qwen2.5-Coder.
//!
//! Traits: the Llama decoder (RMSNorm, GQA, SwiGLU, RoPE rotating halves, large `rope_theta`)
//! plus biases on the q, k and v projections. The layers are those of `llama.rs`; this file
//! holds what differs: the config and how it maps onto them.
//!
//! Checked against: transformers `Qwen2ForCausalLM` (tiny random checkpoint with random
//! biases, `tools/make_golden.py`) and transformers loading the Qwen2.5-Coder-0.5B GGUF.

use serde::Deserialize;

use crate::llama::{config_err, DecoderConfig, Llama, RopeConfig, RopeParameters};
use crate::weights::Weights;
use crate::Result;

/// Hugging Face `config.json` of a Qwen2 model (field names as in `Qwen2Config`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// V.
    pub vocab_size: usize,
    /// E.
    pub hidden_size: usize,
    /// F.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// H.
    pub num_attention_heads: usize,
    /// Hkv.
    pub num_key_value_heads: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base (transformers v4).
    pub rope_theta: Option<f64>,
    /// RoPE base (transformers v5).
    pub rope_parameters: Option<RopeParameters>,
    /// Longest context the model was trained for.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Sliding-window attention (not supported; off in every Qwen2.5 and R1-Distill model).
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Activation of the MLP (`silu`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_max_positions() -> usize {
    32768
}
fn default_act() -> String {
    "silu".into()
}

/// A Qwen2 model: the Llama decoder with q/k/v biases.
pub type Qwen2 = Llama;

impl Config {
    pub(crate) fn decoder(&self) -> std::result::Result<DecoderConfig, String> {
        if self.use_sliding_window {
            return Err("use_sliding_window = true is not supported".into());
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"silu\")",
                self.hidden_act
            ));
        }
        let theta = self
            .rope_theta
            .or_else(|| self.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(10_000.0);
        if let Some(t) = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
        {
            if t != "default" {
                return Err(format!(
                    "rope type {t:?} is not supported for qwen2 (only default)"
                ));
            }
        }
        let cfg = DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.hidden_size / self.num_attention_heads.max(1),
            rms_norm_eps: self.rms_norm_eps,
            rope: RopeConfig {
                theta,
                llama3: None,
                freq_factors: None,
                interleaved: false,
            },
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: true,
            qk_norm: false,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

/// Builds a Qwen2 model from its Hugging Face config and weights.
pub fn new(cfg: &Config, w: &Weights) -> Result<Qwen2> {
    let dec = cfg.decoder().map_err(|p| config_err(w.path(), p))?;
    Llama::from_decoder(dec, w)
}
