//! Llama: SmolLM2, Llama 3.x and DeepSeek-R1-Distill-Llama.
//!
//! Traits: pre-norm decoder, RMSNorm, grouped-query attention (GQA), SwiGLU MLP, rotary
//! embeddings (RoPE) with optional Llama 3 frequency scaling, optional q/k/v biases (used by
//! Qwen2, which reuses these layers: see `qwen2.rs`).
//!
//! RoPE layout: Hugging Face checkpoints rotate halves (`rotate_half`); llama.cpp's converter
//! permutes the q/k rows of `llama` GGUF files so that ggml can rotate interleaved pairs, so
//! a GGUF llama uses the interleaved form and gets the same numbers.
//!
//! Checked against: transformers `LlamaForCausalLM` / `Qwen2ForCausalLM` (f32 logits of
//! tiny random checkpoints, `tools/make_golden.py`) and against transformers loading the
//! real GGUF sample models (`tools/make_gguf_reference.py`).
//!
//! Shapes: B batch, T new positions, S cached + new positions, E hidden size, H query heads,
//! Hkv key/value heads, D head dim, F intermediate size, V vocabulary.

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use seek_kernels::vector;

use crate::paged::{KvBlocks, PagedLayout, Span};
use crate::weights::{Embedding, Matmul, Weights};
use crate::{CausalLm, KvCache, ModelError, Result};

/// `rope_scaling` / `rope_parameters` of a Hugging Face config (transformers v4 and v5 names).
/// The kind may be written `type` (transformers 4.3x), `rope_type`, or both (5.x keeps the key it
/// was given and adds `rope_type`); both with different values is an error that names them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawRopeParameters")]
pub struct RopeParameters {
    /// `default`, `llama3`, `linear`, `yarn`, ...
    pub rope_type: Option<String>,
    /// Base frequency (transformers v5 keeps it here).
    pub rope_theta: Option<f64>,
    /// Scaling factor.
    pub factor: Option<f64>,
    /// Llama 3: low-frequency factor.
    pub low_freq_factor: Option<f64>,
    /// Llama 3: high-frequency factor.
    pub high_freq_factor: Option<f64>,
    /// Llama 3 and YaRN: the context length the model was pre-trained with.
    pub original_max_position_embeddings: Option<usize>,
    /// YaRN: rotations above which dimensions are extrapolated (default 32).
    pub beta_fast: Option<f64>,
    /// YaRN: rotations below which dimensions are interpolated (default 1).
    pub beta_slow: Option<f64>,
    /// YaRN: numerator of the cos/sin attention factor.
    pub mscale: Option<f64>,
    /// YaRN: its denominator, and DeepSeek's softmax-scale correction.
    pub mscale_all_dim: Option<f64>,
}

/// [`RopeParameters`] as written, `type` and `rope_type` apart.
#[derive(Deserialize)]
struct RawRopeParameters {
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
}

impl TryFrom<RawRopeParameters> for RopeParameters {
    type Error = String;

    fn try_from(r: RawRopeParameters) -> std::result::Result<Self, String> {
        let rope_type = match (r.kind, r.rope_type) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "the rope settings say type = {a:?} and rope_type = {b:?}; they must agree (keep one of them)"
                ))
            }
            (a, b) => b.or(a),
        };
        Ok(Self {
            rope_type,
            rope_theta: r.rope_theta,
            factor: r.factor,
            low_freq_factor: r.low_freq_factor,
            high_freq_factor: r.high_freq_factor,
            original_max_position_embeddings: r.original_max_position_embeddings,
            beta_fast: r.beta_fast,
            beta_slow: r.beta_slow,
            mscale: r.mscale,
            mscale_all_dim: r.mscale_all_dim,
        })
    }
}

/// Hugging Face `config.json` of a Llama model (field names as in `LlamaConfig`).
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
    /// Hkv; defaults to H.
    pub num_key_value_heads: Option<usize>,
    /// D; defaults to E / H.
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base (transformers v4).
    pub rope_theta: Option<f64>,
    /// RoPE scaling (transformers v4).
    pub rope_scaling: Option<RopeParameters>,
    /// RoPE base and scaling (transformers v5).
    pub rope_parameters: Option<RopeParameters>,
    /// Longest context the model was trained for.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP projections (not supported).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Activation of the MLP (`silu`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_max_positions() -> usize {
    4096
}
fn default_act() -> String {
    "silu".into()
}

/// Llama 3 RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Rotary embedding settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RopeConfig {
    pub theta: f64,
    pub llama3: Option<Llama3Scaling>,
    /// Per-frequency divisors stored by llama.cpp (`rope_freqs.weight`): Llama 3 scaling in GGUF.
    pub freq_factors: Option<Vec<f32>>,
    /// Rotate interleaved pairs (GGUF `llama`) instead of halves.
    pub interleaved: bool,
}

/// The checked hyperparameters of a Llama-family decoder, shared by `llama` and `qwen2`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    /// Qwen3: an RMSNorm over each head of q and k (weights of `head_dim`) before RoPE.
    pub qk_norm: bool,
}

impl Config {
    /// Checks the values and turns them into the decoder's settings.
    pub(crate) fn decoder(&self) -> std::result::Result<DecoderConfig, String> {
        if self.mlp_bias {
            return Err("mlp_bias = true is not supported".into());
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"silu\")",
                self.hidden_act
            ));
        }
        let rope = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or_default();
        let theta = self.rope_theta.or(rope.rope_theta).unwrap_or(10_000.0);
        let llama3 = match rope.rope_type.as_deref() {
            None | Some("default") => None,
            Some("llama3") => {
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| format!("rope_scaling.{name} is missing"))
                };
                Some(Llama3Scaling {
                    factor: need(rope.factor, "factor")?,
                    low_freq_factor: need(rope.low_freq_factor, "low_freq_factor")?,
                    high_freq_factor: need(rope.high_freq_factor, "high_freq_factor")?,
                    original_max_position_embeddings: rope
                        .original_max_position_embeddings
                        .ok_or("rope_scaling.original_max_position_embeddings is missing")?,
                })
            }
            Some(other) => {
                return Err(format!(
                    "rope type {other:?} is not supported for llama/qwen2 (default, llama3)"
                ))
            }
        };
        let cfg = DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope: RopeConfig {
                theta,
                llama3,
                freq_factors: None,
                interleaved: false,
            },
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
            qk_norm: false,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

impl DecoderConfig {
    /// Rejects values no real model has, before any of them sizes an allocation.
    pub fn check(&self) -> std::result::Result<(), String> {
        let fields = [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_layers, 1024),
            ("num_attention_heads", self.num_heads, 1024),
            ("num_key_value_heads", self.num_kv_heads, 1024),
            ("head_dim", self.head_dim, 1024),
        ];
        for (name, v, max) in fields {
            if v == 0 || v > max {
                return Err(format!("{name} = {v} is out of range (1..={max})"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_attention_heads = {} is not a multiple of num_key_value_heads = {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim = {} must be even for RoPE",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(format!(
                "rms_norm_eps = {} is out of range (0, 1)",
                self.rms_norm_eps
            ));
        }
        if !(self.rope.theta > 1.0 && self.rope.theta.is_finite()) {
            return Err(format!(
                "rope_theta = {} must be a finite number above 1",
                self.rope.theta
            ));
        }
        Ok(())
    }

    /// Reads the hyperparameters llama.cpp writes under `{arch}.*`.
    pub fn from_gguf(
        file: &std::sync::Arc<seek_gguf::GgufFile>,
        arch: &str,
        attention_bias: bool,
    ) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let n_heads = file.get_u64(&key("attention.head_count"))? as usize;
        let hidden = file.get_u64(&key("embedding_length"))? as usize;
        let head_dim = match file.get_u64(&key("attention.key_length")) {
            Ok(d) => d as usize,
            Err(_) => hidden / n_heads.max(1),
        };
        let vocab = match file.get_u64(&key("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => file.tensor_info("token_embd.weight")?.shape()[0],
        };
        if let Ok(rope_dims) = file.get_u64(&key("rope.dimension_count")) {
            if rope_dims as usize != head_dim {
                return Err(config_err(file.path(), format!(
                    "{arch}.rope.dimension_count = {rope_dims} differs from the head size {head_dim}; partial RoPE is not supported"
                )));
            }
        }
        let freq_factors = match file.tensor_info("rope_freqs.weight") {
            Ok(info) if info.n_elements() as usize == head_dim / 2 => {
                let t = Weights::Gguf {
                    file: file.clone(),
                    device: Device::Cpu,
                    kernels: None,
                };
                Some(
                    t.tensor("rope_freqs.weight", &[head_dim / 2])?
                        .to_vec1::<f32>()?,
                )
            }
            Ok(info) => {
                return Err(config_err(
                    file.path(),
                    format!(
                        "rope_freqs.weight has {} values, expected head_dim / 2 = {}",
                        info.n_elements(),
                        head_dim / 2
                    ),
                ))
            }
            Err(_) => None,
        };
        let cfg = DecoderConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: file.get_u64(&key("feed_forward_length"))? as usize,
            num_layers: file.get_u64(&key("block_count"))? as usize,
            num_heads: n_heads,
            num_kv_heads: file
                .get_u64(&key("attention.head_count_kv"))
                .map(|v| v as usize)
                .unwrap_or(n_heads),
            head_dim,
            rms_norm_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope: RopeConfig {
                theta: file.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
                llama3: None,
                freq_factors,
                // ggml rotates interleaved pairs for `llama` (the converter permuted q/k) and
                // halves (NEOX style) for `qwen2`.
                interleaved: arch == "llama",
            },
            max_position_embeddings: file
                .get_u64(&key("context_length"))
                .map(|v| v as usize)
                .unwrap_or(4096),
            tie_word_embeddings: !file.has_tensor("output.weight"),
            attention_bias,
            qk_norm: arch == "qwen3",
        };
        cfg.check().map_err(|p| config_err(file.path(), p))?;
        Ok(cfg)
    }

    /// Weights this config implies.
    pub fn parameter_count(&self) -> u64 {
        let (e, f, l) = (self.hidden_size, self.intermediate_size, self.num_layers);
        let (q, kv) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let bias = if self.attention_bias { q + 2 * kv } else { 0 }
            + if self.qk_norm { 2 * self.head_dim } else { 0 };
        let layer = e * q + 2 * e * kv + q * e + bias + 3 * e * f + 2 * e;
        let embed = self.vocab_size * e * if self.tie_word_embeddings { 1 } else { 2 };
        (embed + l * layer + e) as u64
    }

    /// Bytes of KV cache one token costs with `bytes_per_value` bytes per key or value.
    pub fn kv_bytes_per_token(&self, bytes_per_value: usize) -> u64 {
        (2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_value) as u64
    }
}

pub(crate) fn config_err(path: &std::path::Path, problem: String) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        problem,
    }
}

/// Root-mean-square layer norm.
#[derive(Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    /// The weight in f32, for the fused decode path.
    weight_f32: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn new(w: &Weights, name: &str, size: usize, eps: f64) -> Result<Self> {
        let weight = w.tensor(name, &[size])?;
        Ok(Self {
            weight_f32: weight.to_dtype(DType::F32)?.to_vec1()?,
            weight: weight.to_dtype(w.dtype())?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }

    /// Normalizes each `head_dim` slice of `x` in place (Qwen3's q/k norm on `(N, H*D)` rows).
    fn normalize_heads(&self, x: &mut [f32]) {
        let d = self.weight_f32.len();
        let mut tmp = vec![0f32; d];
        for head in x.chunks_exact_mut(d) {
            vector::rms_norm(head, &self.weight_f32, self.eps, &mut tmp);
            head.copy_from_slice(&tmp);
        }
    }

    /// Normalizes each row of `x: (m, E)` into `out`.
    fn forward_rows(&self, x: &[f32], out: &mut [f32]) {
        let e = self.weight_f32.len();
        for (x, o) in x.chunks_exact(e).zip(out.chunks_exact_mut(e)) {
            vector::rms_norm(x, &self.weight_f32, self.eps, o);
        }
    }
}

/// `x @ W^T + b` with a possibly quantized `W: (out, in)`.
#[derive(Clone)]
pub(crate) struct Linear {
    weight: Matmul,
    bias: Option<Tensor>,
    /// The bias in f32, for the fused decode path.
    bias_f32: Option<Vec<f32>>,
    /// A LoRA adapter applied unmerged (the base stays quantized).
    lora: Option<Box<LoraDelta>>,
}

/// `scale · B (A x)` of a LoRA adapter, kept apart from the (possibly quantized) base.
#[derive(Clone)]
pub(crate) struct LoraDelta {
    /// `(in, r)`: Aᵀ.
    a_t: Tensor,
    /// `(r, out)`: Bᵀ.
    b_t: Tensor,
    /// A, `(r, in)` row-major, for the fused path.
    a: Vec<f32>,
    /// Bᵀ, `(r, out)` row-major.
    b_rows_t: Vec<f32>,
    r: usize,
    scale: f32,
}

impl LoraDelta {
    /// `a: (r, in)`, `b: (out, r)`.
    pub(crate) fn new(a: &Tensor, b: &Tensor, scale: f64) -> Result<Self> {
        let (r, _) = a.dims2()?;
        let a = a.to_dtype(DType::F32)?;
        let b_t = b.to_dtype(DType::F32)?.t()?.contiguous()?;
        Ok(Self {
            a: a.flatten_all()?.to_vec1()?,
            b_rows_t: b_t.flatten_all()?.to_vec1()?,
            a_t: a.t()?.contiguous()?,
            b_t,
            r,
            scale: scale as f32,
        })
    }

    /// Adds the update for rows `x: (m, in)` to `out: (m, out)`.
    fn add_rows(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let n_in = x.len() / m.max(1);
        let n_out = out.len() / m.max(1);
        let mut u = vec![0f32; self.r];
        for (xr, or) in x.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)) {
            for (k, uk) in u.iter_mut().enumerate() {
                let a = &self.a[k * n_in..(k + 1) * n_in];
                *uk = self.scale * a.iter().zip(xr).map(|(a, x)| a * x).sum::<f32>();
            }
            for (k, &uk) in u.iter().enumerate() {
                let b = &self.b_rows_t[k * n_out..(k + 1) * n_out];
                for (o, b) in or.iter_mut().zip(b) {
                    *o += uk * b;
                }
            }
        }
    }
}

impl Linear {
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        Self::from_matmul(
            w.matmul(&format!("{prefix}.weight"), out_dim, in_dim)?,
            w,
            prefix,
            out_dim,
            bias,
        )
    }

    /// A layer around an already loaded matrix (an expert's slice of a stacked tensor).
    pub(crate) fn from_matmul(
        weight: Matmul,
        w: &Weights,
        prefix: &str,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let bias = if bias {
            Some(w.tensor(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        let bias_f32 = match &bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1()?),
            None => None,
        };
        Ok(Self {
            weight,
            bias,
            bias_f32,
            lora: None,
        })
    }

    /// Applies a LoRA adapter on top of this layer.
    pub(crate) fn set_lora(&mut self, delta: LoraDelta) {
        self.lora = Some(Box::new(delta));
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        Ok(match &self.lora {
            Some(l) => {
                // (..., in) @ (in, r) @ (r, out)
                let d = x
                    .to_dtype(DType::F32)?
                    .broadcast_matmul(&l.a_t)?
                    .broadcast_matmul(&l.b_t)?;
                let d = (d * l.scale as f64)?.to_dtype(y.dtype())?;
                (y + d)?
            }
            None => y,
        })
    }

    /// [`Linear::forward_rows`] for several layers reading the same rows (q/k/v, gate/up),
    /// in one dispatch of the kernels when decoding one row.
    fn forward_rows_many(
        layers: &[&Linear],
        x: &[f32],
        m: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        let qs: Vec<&crate::weights::QuantMatrix> = layers
            .iter()
            .map(|l| {
                l.weight
                    .quantized()
                    .expect("the fused path is only taken when every weight is quantized")
            })
            .collect();
        crate::weights::QuantMatrix::forward_many(&qs, x, m, outs)?;
        for (l, out) in layers.iter().zip(outs.iter_mut()) {
            if let Some(d) = &l.lora {
                d.add_rows(x, m, out);
            }
            if let Some(b) = &l.bias_f32 {
                for row in out.chunks_exact_mut(b.len()) {
                    for (o, b) in row.iter_mut().zip(b) {
                        *o += b;
                    }
                }
            }
        }
        Ok(())
    }

    /// `out = x W^T + b` on rows `x: (m, in)` -> `out: (m, out)`; only for weights that
    /// Seek's kernels compute (see [`Llama::can_fuse`]).
    fn forward_rows(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        let q = self
            .weight
            .quantized()
            .expect("the fused path is only taken when every weight is quantized");
        q.forward_slice(x, m, out)?;
        if let Some(d) = &self.lora {
            d.add_rows(x, m, out);
        }
        if let Some(b) = &self.bias_f32 {
            for row in out.chunks_exact_mut(b.len()) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += b;
                }
            }
        }
        Ok(())
    }
}

/// Inverse frequencies of the rotary embedding, `(D/2,)`, as transformers computes them.
pub(crate) fn inv_freq(cfg: &DecoderConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let mut f: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (cfg.rope.theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    if let Some(s) = &cfg.rope.llama3 {
        let old = s.original_max_position_embeddings as f32;
        let low_wavelen = old / s.low_freq_factor as f32;
        let high_wavelen = old / s.high_freq_factor as f32;
        let factor = s.factor as f32;
        for x in &mut f {
            let wavelen = 2.0 * std::f32::consts::PI / *x;
            if wavelen > low_wavelen {
                *x /= factor;
            } else if wavelen >= high_wavelen {
                let smooth = (old / wavelen - s.low_freq_factor as f32)
                    / (s.high_freq_factor as f32 - s.low_freq_factor as f32);
                *x = (1.0 - smooth) * *x / factor + smooth * *x;
            }
        }
    }
    if let Some(factors) = &cfg.rope.freq_factors {
        for (x, div) in f.iter_mut().zip(factors) {
            *x /= div;
        }
    }
    f
}

/// Rotary position embedding for positions `offset..offset + T`.
#[derive(Clone)]
struct Rope {
    inv_freq: Vec<f32>,
    interleaved: bool,
}

impl Rope {
    /// `(cos, sin)`, each `(T, D/2)`.
    fn tables(
        &self,
        offset: usize,
        t: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut angles = Vec::with_capacity(t * half);
        for pos in offset..offset + t {
            angles.extend(self.inv_freq.iter().map(|f| pos as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (t, half), device)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }

    /// Rotates `x: (B, H, T, D)`.
    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(&x, cos, sin)?
        })
    }
}

#[derive(Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3's per-head norms of q and k (over `head_dim`), before RoPE.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &DecoderConfig, w: &Weights, prefix: &str) -> Result<Self> {
        let (e, h, hkv, d) = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        );
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: Linear::new(w, &format!("{prefix}.q_proj"), h * d, e, bias)?,
            k_proj: Linear::new(w, &format!("{prefix}.k_proj"), hkv * d, e, bias)?,
            v_proj: Linear::new(w, &format!("{prefix}.v_proj"), hkv * d, e, bias)?,
            // Qwen2 has biases on q/k/v but not on o.
            o_proj: Linear::new(w, &format!("{prefix}.o_proj"), e, h * d, false)?,
            q_norm: cfg
                .qk_norm
                .then(|| RmsNorm::new(w, &format!("{prefix}.q_norm.weight"), d, cfg.rms_norm_eps))
                .transpose()?,
            k_norm: cfg
                .qk_norm
                .then(|| RmsNorm::new(w, &format!("{prefix}.k_norm.weight"), d, cfg.rms_norm_eps))
                .transpose()?,
            num_heads: h,
            num_kv_heads: hkv,
            head_dim: d,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        step: &Step,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // (B, T, H*D) -> (B, T, H, D) -> (B, H, T, D)
        let q = self.q_proj.forward(x)?.reshape((b, t, h, d))?;
        let q = match &self.q_norm {
            Some(n) => n.forward(&q)?,
            None => q,
        }
        .transpose(1, 2)?;
        let k = self.k_proj.forward(x)?.reshape((b, t, hkv, d))?;
        let k = match &self.k_norm {
            Some(n) => n.forward(&k)?,
            None => k,
        }
        .transpose(1, 2)?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape((b, t, hkv, d))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = step.rope.apply(&q, &step.cos, &step.sin)?;
        let k = step.rope.apply(&k, &step.cos, &step.sin)?;
        // (B, Hkv, S, D)
        let (k, v) = cache.append(layer, &k, &v)?;
        if t == 1 {
            if let Some(y) = decode_attention(&q, &k, &v)? {
                return self.o_proj.forward(&y);
            }
        }
        // GQA: each group of H/Hkv query heads shares one key/value head.
        let group = h / hkv;
        let s = k.dim(2)?;
        // (B, Hkv, G*T, D): the queries of one group stacked along time, one matmul per KV head.
        let q = q.reshape((b, hkv, group * t, d))?;
        let scale = 1.0 / (d as f64).sqrt();
        // One KV head at a time: the scores `(G*T, S)` of one head are what a prefill chunk
        // holds at once, not those of all heads (for a 7B model at 8K tokens, 88 MB instead of
        // 350 MB per step of the softmax).
        let mut ys = Vec::with_capacity(hkv);
        for j in 0..hkv {
            let qj = q.narrow(1, j, 1)?;
            // A cache stored in another type (f16) is widened for the matmuls.
            let kj = k.narrow(1, j, 1)?.to_dtype(q.dtype())?;
            let vj = v.narrow(1, j, 1)?.to_dtype(q.dtype())?;
            // (B, 1, G*T, D) @ (B, 1, D, S) -> (B, 1, G*T, S)
            let att = (qj.matmul(&kj.t()?)? * scale)?;
            let att = match &step.mask {
                // mask: (T, S) broadcast over (B, 1, G, T, S)
                Some(mask) => att
                    .reshape((b, 1, group, t, s))?
                    .broadcast_add(mask)?
                    .reshape((b, 1, group * t, s))?,
                None => att,
            };
            let att = candle_nn::ops::softmax_last_dim(&att.to_dtype(DType::F32)?)?
                .to_dtype(vj.dtype())?;
            // (B, 1, G*T, S) @ (B, 1, S, D) -> (B, 1, G*T, D)
            ys.push(att.matmul(&vj)?);
        }
        // (B, Hkv, G*T, D) = (B, H, T, D)
        let y = Tensor::cat(&ys, 1)?.reshape((b, h, t, d))?;
        // (B, H, T, D) -> (B, T, H*D)
        let y = y.transpose(1, 2)?.reshape((b, t, h * d))?;
        self.o_proj.forward(&y)
    }
}

/// Decode attention: one new position attending to every cached one, read straight from the
/// KV-cache buffers (a matmul would first copy the strided cache views to contiguous memory,
/// a cost that grows with the context). `q: (B, H, 1, D)`, `k, v: (B, Hkv, S, D)` ->
/// `(B, 1, H*D)`; `None` when the tensors are not f32 on the CPU with contiguous rows.
fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
    if q.dtype() != DType::F32 || !q.device().is_cpu() {
        return Ok(None);
    }
    let (b, h, _, d) = q.dims4()?;
    // (B, H, 1, D) -> B*H rows of D
    let qv: Vec<f32> = q.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; b * h * d];
    if !attend_cached(&qv, h, k, v, &mut out, None)? {
        return Ok(None);
    }
    // (B, H, 1, D) laid out as (B, 1, H*D)
    Ok(Some(Tensor::from_vec(out, (b, 1, h * d), q.device())?))
}

/// Runs `head(i, out_i)` for every head row `i` of `out` (rows of `d`) on the pool's threads,
/// each thread taking one contiguous run of rows. Heads next to each other share their keys
/// and values (GQA) or their sequence, so a thread reads them from memory once and then from
/// its own cache; heads dealt out one at a time would make every thread read every cache.
fn par_heads(
    pool: &seek_kernels::ThreadPool,
    out: &mut [f32],
    d: usize,
    head: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let per = (out.len() / d).div_ceil(pool.threads()).max(1);
    pool.par_chunks_mut(out, d * per, &|c, part| {
        for (j, o) in part.chunks_mut(d).enumerate() {
            head(c * per + j, o);
        }
    });
}

thread_local! {
    /// Attention scores of one head, reused so that decode does not allocate per head.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The core of [`decode_attention`] on plain rows: `q: (B, H*D)` (one position per sequence),
/// `k, v: (B, Hkv, S, D)` views of the cache, `out: (B, H*D)`. Returns `false`, writing
/// nothing, when the cache is not f32 on the CPU with contiguous rows. Long contexts spread
/// the heads over `pool` (or rayon's threads without one).
fn attend_cached(
    q: &[f32],
    h: usize,
    k: &Tensor,
    v: &Tensor,
    out: &mut [f32],
    pool: Option<&seek_kernels::ThreadPool>,
) -> Result<bool> {
    use candle_core::Storage;
    if k.dtype() != v.dtype() {
        return Ok(false);
    }
    let (k_storage, kl) = k.storage_and_layout();
    let (v_storage, vl) = v.storage_and_layout();
    let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*k_storage, &*v_storage) else {
        return Ok(false);
    };
    let (_, _, s, d) = k.dims4()?;
    let heads = HeadViews { h, s, d, kl, vl };
    match k.dtype() {
        DType::F32 => heads.attend(q, kc.as_slice::<f32>()?, vc.as_slice::<f32>()?, out, pool),
        DType::F16 => heads.attend(
            q,
            kc.as_slice::<half::f16>()?,
            vc.as_slice::<half::f16>()?,
            out,
            pool,
        ),
        _ => Ok(false),
    }
}

/// The cached keys and values of every head, as laid out in the cache buffers.
struct HeadViews<'a> {
    h: usize,
    s: usize,
    d: usize,
    kl: &'a candle_core::Layout,
    vl: &'a candle_core::Layout,
}

impl HeadViews<'_> {
    fn attend<T: vector::Element>(
        &self,
        q: &[f32],
        kd: &[T],
        vd: &[T],
        out: &mut [f32],
        pool: Option<&seek_kernels::ThreadPool>,
    ) -> Result<bool> {
        use rayon::prelude::*;
        let (h, s, d) = (self.h, self.s, self.d);
        let (ks, vs) = (self.kl.stride(), self.vl.stride());
        if ks[3] != 1 || vs[3] != 1 {
            return Ok(false);
        }
        let hkv = self.kl.dims()[1];
        let group = h / hkv;
        let scale = 1.0 / (d as f32).sqrt();
        let head = |row: usize, o: &mut [f32]| {
            let (bi, hi) = (row / h, row % h);
            let kv_head = hi / group;
            let rows = |data, l: &candle_core::Layout, st: &[usize]| vector::Rows {
                data,
                offset: l.start_offset() + bi * st[0] + kv_head * st[1],
                stride: st[2],
            };
            SCORES.with(|sc| {
                vector::attention(
                    &q[row * d..][..d],
                    rows(kd, self.kl, ks),
                    rows(vd, self.vl, vs),
                    s,
                    scale,
                    &mut sc.borrow_mut(),
                    o,
                )
            });
        };
        // Heads are independent; spread them over threads once the cache is long enough to
        // pay for waking the pool (short contexts stay on this thread).
        if s * h * d < 1 << 16 {
            out.chunks_mut(d)
                .enumerate()
                .for_each(|(row, o)| head(row, o));
        } else if let Some(pool) = pool {
            par_heads(pool, out, d, &head);
        } else {
            out.par_chunks_mut(d)
                .enumerate()
                .for_each(|(row, o)| head(row, o));
        }
        Ok(true)
    }
}

/// Rotates every head of the rows `x: (B, heads*D)` for position `pos`, with `cos, sin: (D/2,)`
/// for that position (the fused decode path's RoPE: one position per sequence).
fn rope_rows(x: &mut [f32], d: usize, cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = d / 2;
    for head in x.chunks_exact_mut(d) {
        for i in 0..half {
            let (a, b) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos[i] - x1 * sin[i];
            head[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

/// The output projection `(V, E)`: `lm_head.weight`, or the embedding when the weights are
/// tied (or the file has no separate head, as GGUF files of tied models do not).
pub(crate) fn lm_head(w: &Weights, v: usize, e: usize, tied: bool) -> Result<Matmul> {
    if tied || !w.contains("lm_head.weight") {
        w.matmul("model.embed_tokens.weight", v, e)
    } else {
        w.matmul("lm_head.weight", v, e)
    }
}

/// SwiGLU: `down(silu(gate(x)) * up(x))` (also DeepSeek's dense layers and experts).
#[derive(Clone)]
pub(crate) struct Mlp {
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
}

impl Mlp {
    /// The projections under `prefix`, hidden size `e`, intermediate size `f`.
    pub(crate) fn new(w: &Weights, prefix: &str, e: usize, f: usize) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::new(w, &format!("{prefix}.gate_proj"), f, e, false)?,
            up_proj: Linear::new(w, &format!("{prefix}.up_proj"), f, e, false)?,
            down_proj: Linear::new(w, &format!("{prefix}.down_proj"), e, f, false)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

#[derive(Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &DecoderConfig, w: &Weights, layer: usize) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let (e, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: RmsNorm::new(w, &format!("{p}.input_layernorm.weight"), e, eps)?,
            self_attn: Attention::new(cfg, w, &format!("{p}.self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                w,
                &format!("{p}.post_attention_layernorm.weight"),
                e,
                eps,
            )?,
            mlp: Mlp::new(w, &format!("{p}.mlp"), e, cfg.intermediate_size)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        step: &Step,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let h =
            (x + self
                .self_attn
                .forward(&self.input_layernorm.forward(x)?, step, cache, layer)?)?;
        Ok((&h
            + self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?)?)
    }
}

/// Per-forward values every layer shares.
struct Step {
    rope: Rope,
    cos: Tensor,
    sin: Tensor,
    /// Additive causal mask `(T, S)`, or none for a single new position.
    mask: Option<Tensor>,
}

/// A Llama-family decoder-only transformer.
#[derive(Clone)]
pub struct Llama {
    cfg: DecoderConfig,
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Matmul,
    rope: Rope,
    device: Device,
    dtype: DType,
    /// See [`Llama::can_fuse`].
    fused: bool,
}

impl Llama {
    /// Builds the model from a Hugging Face `config.json` and its weights.
    pub fn new(cfg: &Config, w: &Weights) -> Result<Self> {
        let dec = cfg.decoder().map_err(|p| config_err(w.path(), p))?;
        Self::from_decoder(dec, w)
    }

    pub(crate) fn from_decoder(cfg: DecoderConfig, w: &Weights) -> Result<Self> {
        let (v, e) = (cfg.vocab_size, cfg.hidden_size);
        let embed_tokens = w.embedding("model.embed_tokens.weight", v, e)?;
        let layers = (0..cfg.num_layers)
            .map(|i| Block::new(&cfg, w, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(w, "model.norm.weight", e, cfg.rms_norm_eps)?;
        let lm_head = lm_head(w, v, e, cfg.tie_word_embeddings)?;
        let rope = Rope {
            inv_freq: inv_freq(&cfg),
            interleaved: cfg.rope.interleaved,
        };
        let mut model = Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            device: w.device().clone(),
            dtype: w.dtype(),
            cfg,
            fused: false,
        };
        model.fused = model.can_fuse();
        Ok(model)
    }
}

/// A LoRA adapter in PEFT's layout: its tensors by PEFT key
/// (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`) and `lora_alpha / r`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// The update's scale.
    pub scaling: f64,
    /// `lora_A` / `lora_B` tensors by PEFT key.
    pub tensors: std::collections::BTreeMap<String, Tensor>,
}

/// llama.cpp's row permutation of a q/k projection for interleaved RoPE over `heads` heads
/// (rows `(heads, 2, D/2)` stored as `(heads, D/2, 2)`), applied to a LoRA B.
pub fn permute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    let d = dims[0] / heads;
    // (heads, 2, D/2, rest) -> (heads, D/2, 2, rest)
    Ok(t.reshape((heads, 2, d / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

impl Llama {
    /// Applies a LoRA adapter to the layers it names, unmerged: the base weights stay as they
    /// are (quantized ones too) and each adapted layer adds `scaling · B A x`. Errors name an
    /// adapter tensor that fits no layer of this model.
    pub fn with_lora(mut self, adapter: &LoraAdapter) -> Result<Self> {
        let (h, hkv) = (self.cfg.num_heads, self.cfg.num_kv_heads);
        let interleaved = self.cfg.rope.interleaved;
        let mut used = std::collections::BTreeSet::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            let named: [(&str, &mut Linear, Option<usize>); 7] = [
                ("self_attn.q_proj", &mut a.q_proj, Some(h)),
                ("self_attn.k_proj", &mut a.k_proj, Some(hkv)),
                ("self_attn.v_proj", &mut a.v_proj, None),
                ("self_attn.o_proj", &mut a.o_proj, None),
                ("mlp.gate_proj", &mut m.gate_proj, None),
                ("mlp.up_proj", &mut m.up_proj, None),
                ("mlp.down_proj", &mut m.down_proj, None),
            ];
            for (name, lin, heads) in named {
                let key = format!("base_model.model.model.layers.{i}.{name}");
                let (ka, kb) = (
                    format!("{key}.lora_A.weight"),
                    format!("{key}.lora_B.weight"),
                );
                let (Some(ta), Some(tb)) = (adapter.tensors.get(&ka), adapter.tensors.get(&kb))
                else {
                    continue;
                };
                let tb = match heads {
                    Some(n) if interleaved => permute_rows(&tb.to_dtype(DType::F32)?, n)?,
                    _ => tb.clone(),
                };
                let (r, n_in) = ta.dims2()?;
                let (n_out, rb) = tb.dims2()?;
                let want_out = match name {
                    "self_attn.q_proj" => h * self.cfg.head_dim,
                    "self_attn.k_proj" | "self_attn.v_proj" => hkv * self.cfg.head_dim,
                    "mlp.gate_proj" | "mlp.up_proj" => self.cfg.intermediate_size,
                    _ => self.cfg.hidden_size,
                };
                let want_in = match name {
                    "self_attn.o_proj" => h * self.cfg.head_dim,
                    "mlp.down_proj" => self.cfg.intermediate_size,
                    _ => self.cfg.hidden_size,
                };
                if rb != r || n_in != want_in || n_out != want_out {
                    return Err(ModelError::Shape {
                        name: key,
                        expected: vec![want_out, r, want_in],
                        found: vec![n_out, rb, n_in],
                    });
                }
                lin.set_lora(LoraDelta::new(ta, &tb, adapter.scaling)?);
                used.insert(ka);
                used.insert(kb);
            }
        }
        if let Some(k) = adapter.tensors.keys().find(|k| !used.contains(*k)) {
            return Err(ModelError::Input(format!(
                "the adapter's tensor {k:?} fits no layer of this model (only the attention and MLP projections of its {} layers take adapters); it was trained for another model",
                self.layers.len()
            )));
        }
        // The fused decode path handles adapters; nothing else changes.
        Ok(self)
    }
}

/// Which positions `forward_inner` projects onto the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Project {
    All,
    Last,
    /// None: the hidden states are returned (a prefill chunk before the last).
    Nothing,
}

/// Positions a long prompt is prefilled in at once by `forward_last`.
const PREFILL_CHUNK: usize = 128;

/// Additive causal mask `(T, S)` for `T` new positions after `offset` cached ones.
pub(crate) fn causal_mask(
    t: usize,
    offset: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let s = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, s), device)?.to_dtype(dtype)?)
}

impl Llama {
    /// Logits `(B, T, V)`, or `(B, 1, V)` for the last position only when `last_only`.
    fn forward_inner(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        project: Project,
    ) -> Result<Tensor> {
        let (_b, t) = input_ids.dims2()?;
        let offset = cache.seq_len();
        crate::check_forward(cache, self.layers.len(), t)?;
        if t == 1 && self.fused && project != Project::Nothing {
            let ids: Vec<u32> = input_ids.flatten_all()?.to_vec1()?;
            let b = ids.len();
            let logits = self.decode_fused(&ids, &mut [cache], &[b])?;
            return Ok(Tensor::from_vec(
                logits,
                (b, 1, self.cfg.vocab_size),
                &self.device,
            )?);
        }
        let (cos, sin) = self.rope.tables(offset, t, &self.device, self.dtype)?;
        let mask = if t > 1 {
            Some(causal_mask(t, offset, &self.device, self.dtype)?)
        } else {
            None
        };
        let step = Step {
            rope: self.rope.clone(),
            cos,
            sin,
            mask,
        };
        // (B, T) -> (B, T, E)
        let mut x = self.embed_tokens.forward(input_ids)?.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &step, cache, i)?;
        }
        cache.advance(t);
        if project == Project::Nothing {
            // (B, T, E): a prefill chunk whose positions need no logits
            return Ok(x);
        }
        // (B, T, E) -> (B, 1, E)
        let x = if project == Project::Last {
            x.narrow(1, t - 1, 1)?
        } else {
            x
        };
        let x = self.norm.forward(&x)?;
        // (B, T, E) -> (B, T, V), in f32 whatever the compute type
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }
}

impl Llama {
    /// Whether a decode step can run fused: every product on Seek's kernels, activations in
    /// f32 on the CPU. The step then works on reusable f32 rows (RMSNorm, RoPE, SwiGLU and
    /// attention over the cache in place), not one tensor allocation per operation.
    fn can_fuse(&self) -> bool {
        let quantized = |l: &Linear| l.weight.quantized().is_some();
        self.device.is_cpu()
            && self.dtype == DType::F32
            && self.lm_head.quantized().is_some()
            && self.layers.iter().all(|l| {
                let (a, m) = (&l.self_attn, &l.mlp);
                [
                    &a.q_proj,
                    &a.k_proj,
                    &a.v_proj,
                    &a.o_proj,
                    &m.gate_proj,
                    &m.up_proj,
                    &m.down_proj,
                ]
                .into_iter()
                .all(quantized)
            })
    }

    /// The fused forward on f32 rows: `ids[r]` at position `positions[r]`; `kv` stores each
    /// layer's keys and values and runs attention for the rows; the logits `(len(last), V)`
    /// of the rows listed in `last`. Every weight is read once for all rows (batched decode,
    /// prefill chunks of several sequences), and the rows of different sequences never see
    /// each other: that is `kv`'s business.
    fn fused_rows(
        &self,
        ids: &[u32],
        positions: &[usize],
        last: &[usize],
        kv: &mut dyn RowKv,
    ) -> Result<Vec<f32>> {
        let n = ids.len();
        let cfg = &self.cfg;
        let (e, h, hkv, d, f) = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        );
        let lm_head = self
            .lm_head
            .quantized()
            .expect("can_fuse() checked the output projection");
        let pool = lm_head.pool();
        // (N, 1) -> (N, E)
        let ids_t = Tensor::from_slice(ids, (n, 1), &self.device)?;
        let mut x: Vec<f32> = self
            .embed_tokens
            .forward(&ids_t)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        // (N, D/2) each: the rotation of every row's position
        let half = self.rope.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        for &p in positions {
            for f in &self.rope.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let mut normed = vec![0f32; n * e];
        let mut q = vec![0f32; n * h * d];
        let mut k = vec![0f32; n * hkv * d];
        let mut v = vec![0f32; n * hkv * d];
        let mut att = vec![0f32; n * h * d];
        let mut proj = vec![0f32; n * e];
        let mut gate = vec![0f32; n * f];
        let mut up = vec![0f32; n * f];
        let (qw, kw) = (h * d, hkv * d);
        for (i, layer) in self.layers.iter().enumerate() {
            let a = &layer.self_attn;
            layer.input_layernorm.forward_rows(&x, &mut normed);
            // (N, E) -> (N, H*D), (N, Hkv*D), (N, Hkv*D)
            Linear::forward_rows_many(
                &[&a.q_proj, &a.k_proj, &a.v_proj],
                &normed,
                n,
                &mut [&mut q, &mut k, &mut v],
            )?;
            if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
                qn.normalize_heads(&mut q);
                kn.normalize_heads(&mut k);
            }
            for r in 0..n {
                let (c, sn) = (
                    &cos[r * half..(r + 1) * half],
                    &sin[r * half..(r + 1) * half],
                );
                rope_rows(
                    &mut q[r * qw..(r + 1) * qw],
                    d,
                    c,
                    sn,
                    self.rope.interleaved,
                );
                rope_rows(
                    &mut k[r * kw..(r + 1) * kw],
                    d,
                    c,
                    sn,
                    self.rope.interleaved,
                );
            }
            kv.store(i, &k, &v)?;
            kv.attend(i, &q, &mut att, pool)?;
            a.o_proj.forward_rows(&att, n, &mut proj)?;
            vector::axpy(1.0, &proj, &mut x);
            layer.post_attention_layernorm.forward_rows(&x, &mut normed);
            let m = &layer.mlp;
            Linear::forward_rows_many(
                &[&m.gate_proj, &m.up_proj],
                &normed,
                n,
                &mut [&mut gate, &mut up],
            )?;
            vector::silu_mul(&mut gate, &up);
            m.down_proj.forward_rows(&gate, n, &mut proj)?;
            vector::axpy(1.0, &proj, &mut x);
        }
        kv.advance();
        // The rows whose logits are wanted: (L, E) -> (L, V)
        let mut rows = vec![0f32; last.len() * e];
        for (o, &r) in rows.chunks_exact_mut(e).zip(last) {
            self.norm.forward_rows(&x[r * e..(r + 1) * e], o);
        }
        let mut logits = vec![0f32; last.len() * cfg.vocab_size];
        lm_head.forward_slice(&rows, last.len(), &mut logits)?;
        Ok(logits)
    }

    /// One decode step on the fused path for the rows of several contiguous caches: cache `c`
    /// holds `batch_sizes[c]` sequences and takes that many ids. Logits `(N, V)`.
    fn decode_fused(
        &self,
        ids: &[u32],
        caches: &mut [&mut KvCache],
        batch_sizes: &[usize],
    ) -> Result<Vec<f32>> {
        let mut positions = Vec::with_capacity(ids.len());
        for (c, &b) in caches.iter().zip(batch_sizes) {
            if c.batch_size().is_some_and(|cb| cb != b) {
                return Err(ModelError::Input(format!(
                    "a KV cache of {} sequences was given {b} tokens; give one token per sequence",
                    c.batch_size().unwrap_or(0)
                )));
            }
            positions.extend(std::iter::repeat_n(c.seq_len(), b));
        }
        if positions.len() != ids.len() {
            return Err(ModelError::Input(format!(
                "{} tokens for caches holding {} sequences; give one token per sequence",
                ids.len(),
                positions.len()
            )));
        }
        let cfg = &self.cfg;
        let mut kv = ContiguousKv {
            caches,
            batch_sizes,
            views: Vec::new(),
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            device: &self.device,
        };
        let last: Vec<usize> = (0..ids.len()).collect();
        self.fused_rows(ids, &positions, &last, &mut kv)
    }
}

/// Where the fused forward keeps keys and values and how its rows attend.
trait RowKv {
    /// Stores this layer's keys and values of the new rows, `(N, Hkv*D)` each.
    fn store(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()>;
    /// Attention of the new rows `q: (N, H*D)` over what each may see, into `out: (N, H*D)`.
    fn attend(
        &mut self,
        layer: usize,
        q: &[f32],
        out: &mut [f32],
        pool: &seek_kernels::ThreadPool,
    ) -> Result<()>;
    /// Called once after the last layer.
    fn advance(&mut self);
}

/// Contiguous per-sequence caches ([`KvCache`]), one new row per sequence (decode).
struct ContiguousKv<'a, 'c> {
    caches: &'a mut [&'c mut KvCache],
    batch_sizes: &'a [usize],
    /// This layer's `(B_c, Hkv, S, D)` views of each cache.
    views: Vec<(Tensor, Tensor)>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    device: &'a Device,
}

impl RowKv for ContiguousKv<'_, '_> {
    fn store(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let (hkv, d) = (self.kv_heads, self.head_dim);
        let w = hkv * d;
        self.views.clear();
        let mut r0 = 0;
        for (cache, &b) in self.caches.iter_mut().zip(self.batch_sizes) {
            // (B_c, Hkv*D) is (B_c, Hkv, 1, D)
            let kt = Tensor::from_slice(&k[r0 * w..(r0 + b) * w], (b, hkv, 1, d), self.device)?;
            let vt = Tensor::from_slice(&v[r0 * w..(r0 + b) * w], (b, hkv, 1, d), self.device)?;
            self.views.push(cache.append(layer, &kt, &vt)?);
            r0 += b;
        }
        Ok(())
    }

    fn attend(
        &mut self,
        _layer: usize,
        q: &[f32],
        out: &mut [f32],
        pool: &seek_kernels::ThreadPool,
    ) -> Result<()> {
        let qw = self.heads * self.head_dim;
        let mut r0 = 0;
        for ((kc, vc), &b) in self.views.iter().zip(self.batch_sizes) {
            let (q, out) = (&q[r0 * qw..(r0 + b) * qw], &mut out[r0 * qw..(r0 + b) * qw]);
            if !attend_cached(q, self.heads, kc, vc, out, Some(pool))? {
                return Err(ModelError::Input(
                    "the KV cache is not f32 or f16 on the CPU; make it with CausalLm::new_cache"
                        .into(),
                ));
            }
            r0 += b;
        }
        Ok(())
    }

    fn advance(&mut self) {
        for c in self.caches.iter_mut() {
            c.advance(1);
        }
    }
}

/// Paged KV memory: each row of a span sees its span's positions up to its own.
struct PagedKv<'a> {
    blocks: &'a mut KvBlocks,
    spans: &'a [Span<'a>],
    /// `(span, position)` of each row.
    rows: Vec<(usize, usize)>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl RowKv for PagedKv<'_> {
    fn store(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let w = self.kv_heads * self.head_dim;
        for (r, &(si, pos)) in self.rows.iter().enumerate() {
            let table = self.spans[si].table;
            self.blocks.write(
                layer,
                table,
                pos,
                &k[r * w..(r + 1) * w],
                &v[r * w..(r + 1) * w],
            )?;
        }
        Ok(())
    }

    fn attend(
        &mut self,
        layer: usize,
        q: &[f32],
        out: &mut [f32],
        pool: &seek_kernels::ThreadPool,
    ) -> Result<()> {
        let (h, d) = (self.heads, self.head_dim);
        let group = h / self.kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        let blocks = &*self.blocks;
        let (spans, rows) = (self.spans, &self.rows);
        // One part per (row, head).
        let head = |i: usize, o: &mut [f32]| {
            let (r, hi) = (i / h, i % h);
            let (si, pos) = rows[r];
            let segs = blocks.segments(layer, spans[si].table, hi / group, pos + 1);
            SCORES.with(|sc| {
                vector::attention_segments(
                    &q[i * d..(i + 1) * d],
                    &segs,
                    scale,
                    &mut sc.borrow_mut(),
                    o,
                )
            });
        };
        let work: usize = rows.iter().map(|&(_, p)| p + 1).sum::<usize>() * h * d;
        if work < 1 << 16 {
            out.chunks_mut(d).enumerate().for_each(|(i, o)| head(i, o));
        } else {
            par_heads(pool, out, d, &head);
        }
        Ok(())
    }

    fn advance(&mut self) {}
}

impl CausalLm for Llama {
    fn forward(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_inner(input_ids, cache, Project::All)
    }

    fn forward_last(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        // A long prompt goes through in chunks: the attention scores and MLP activations of
        // one chunk are what a prefill holds at once (peak memory), and only the last
        // chunk's last position is projected onto the vocabulary.
        let t = input_ids.dim(1)?;
        let mut start = 0;
        while t - start > PREFILL_CHUNK {
            // (B, C)
            let chunk = input_ids.narrow(1, start, PREFILL_CHUNK)?;
            self.forward_inner(&chunk, cache, Project::Nothing)?;
            start += PREFILL_CHUNK;
        }
        let rest = input_ids.narrow(1, start, t - start)?;
        // (B, 1, V) -> (B, V)
        Ok(self
            .forward_inner(&rest, cache, Project::Last)?
            .squeeze(1)?)
    }

    fn paged_layout(&self) -> Option<PagedLayout> {
        self.fused.then_some(PagedLayout {
            layers: self.layers.len(),
            kv_heads: self.cfg.num_kv_heads,
            head_dim: self.cfg.head_dim,
        })
    }

    fn forward_paged(&self, spans: &[Span<'_>], blocks: &mut KvBlocks) -> Result<Tensor> {
        let layout = self.paged_layout().ok_or_else(|| {
            ModelError::Input("paged KV needs the fused CPU path (a GGUF model on the CPU)".into())
        })?;
        if blocks.layout() != layout {
            return Err(ModelError::Input(format!(
                "the KV blocks were made for {:?}, not this model's {layout:?}",
                blocks.layout()
            )));
        }
        let (mut ids, mut positions, mut rows, mut last) = (vec![], vec![], vec![], vec![]);
        for (si, sp) in spans.iter().enumerate() {
            if sp.tokens.is_empty() {
                return Err(ModelError::Input("a span needs at least one token".into()));
            }
            let end = sp.start + sp.tokens.len();
            if end > self.cfg.max_position_embeddings {
                return Err(ModelError::Input(format!(
                    "position {end} is past the model's context window of {} tokens",
                    self.cfg.max_position_embeddings
                )));
            }
            if end.div_ceil(blocks.block_size()) > sp.table.len() {
                return Err(ModelError::Input(format!(
                    "a block table of {} blocks does not cover {end} positions",
                    sp.table.len()
                )));
            }
            for (j, &t) in sp.tokens.iter().enumerate() {
                ids.push(t);
                positions.push(sp.start + j);
                rows.push((si, sp.start + j));
            }
            last.push(ids.len() - 1);
        }
        let cfg = &self.cfg;
        let mut kv = PagedKv {
            blocks,
            spans,
            rows,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        };
        let logits = self.fused_rows(&ids, &positions, &last, &mut kv)?;
        Ok(Tensor::from_vec(
            logits,
            (spans.len(), cfg.vocab_size),
            &self.device,
        )?)
    }

    fn decode_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        if !self.fused {
            return crate::decode_each(self, tokens, caches);
        }
        if tokens.len() != caches.len() {
            return Err(ModelError::Input(format!(
                "{} tokens for {} caches; give one token per sequence",
                tokens.len(),
                caches.len()
            )));
        }
        let logits = self.decode_fused(tokens, caches, &vec![1; tokens.len()])?;
        Ok(Tensor::from_vec(
            logits,
            (tokens.len(), self.cfg.vocab_size),
            &self.device,
        )?)
    }

    fn new_cache(&self) -> KvCache {
        if self.fused {
            // Decode reads the whole cache every step: f16 halves those bytes (llama.cpp's
            // default too), and the fused attention widens it to f32 exactly as it loads.
            KvCache::with_dtype(self.layers.len(), DType::F16)
        } else {
            KvCache::new(self.layers.len())
        }
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

    fn cfg(theta: f64, llama3: Option<Llama3Scaling>) -> DecoderConfig {
        DecoderConfig {
            vocab_size: 10,
            hidden_size: 16,
            intermediate_size: 32,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope: RopeConfig {
                theta,
                llama3,
                freq_factors: None,
                interleaved: false,
            },
            max_position_embeddings: 128,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
        }
    }

    /// The cache-reading decode attention equals softmax(q kᵀ / √D) v computed with matmuls,
    /// on short contexts (one thread) and long ones (heads spread over threads).
    #[test]
    fn decode_attention_matches_matmul_attention() {
        let dev = Device::Cpu;
        for s in [5usize, 1500] {
            let (h, hkv, d) = (4, 2, 16);
            let q = Tensor::randn(0f32, 1.0, (1, h, 1, d), &dev).unwrap();
            // Views into a larger buffer, as the KV cache hands them out.
            let kbuf = Tensor::randn(0f32, 1.0, (1, hkv, s + 7, d), &dev).unwrap();
            let vbuf = Tensor::randn(0f32, 1.0, (1, hkv, s + 7, d), &dev).unwrap();
            let (k, v) = (kbuf.narrow(2, 0, s).unwrap(), vbuf.narrow(2, 0, s).unwrap());
            let ours: Vec<f32> = decode_attention(&q, &k, &v)
                .unwrap()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            // Reference: repeat each KV head for its group of query heads.
            let rep = |t: &Tensor| {
                t.contiguous()
                    .unwrap()
                    .unsqueeze(2)
                    .unwrap()
                    .repeat((1, 1, h / hkv, 1, 1))
                    .unwrap()
                    .reshape((1, h, s, d))
                    .unwrap()
            };
            let att = (q.matmul(&rep(&k).t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
            let reference: Vec<f32> = att
                .matmul(&rep(&v))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let diff = ours
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "s = {s}: max abs diff {diff}");
        }
    }

    #[test]
    fn inv_freq_matches_formula() {
        let f = inv_freq(&cfg(10000.0, None));
        assert_eq!(f.len(), 4);
        assert!((f[0] - 1.0).abs() < 1e-7);
        assert!((f[1] - 0.1).abs() < 1e-7);
        assert!((f[3] - 0.001).abs() < 1e-9);
    }

    #[test]
    fn llama3_scaling_divides_low_frequencies_only() {
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let plain = inv_freq(&cfg(500000.0, None));
        let scaled = inv_freq(&cfg(500000.0, Some(s)));
        // The highest frequency (wavelength 2π < 16) is unchanged; the lowest is divided by 8.
        assert_eq!(plain[0], scaled[0]);
        assert!((scaled[3] - plain[3] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn bad_configs_are_rejected_with_the_field_name() {
        let mut c = cfg(10000.0, None);
        c.num_kv_heads = 3;
        assert!(c.check().unwrap_err().contains("num_key_value_heads"));
        let mut c = cfg(10000.0, None);
        c.vocab_size = usize::MAX;
        assert!(c.check().unwrap_err().contains("vocab_size"));
    }

    #[test]
    fn causal_mask_allows_cached_positions() {
        let m = causal_mask(2, 3, &Device::Cpu, DType::F32)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0][..4], [0.0; 4]);
        assert_eq!(m[0][4], f32::NEG_INFINITY);
        assert_eq!(m[1], vec![0.0; 5]);
    }
}
