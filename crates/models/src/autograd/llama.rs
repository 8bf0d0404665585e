//! The training form of the Llama decoder (`llama`, `qwen2`): the layers of `crate::llama`
//! written with differentiable ops.
//!
//! Checked against: transformers + peft (loss, every gradient and two AdamW steps of tiny
//! Llama and Qwen2 models, full and LoRA: `tools/make_train_golden.py`), finite differences,
//! and the inference forward of `crate::llama` on the same weights.
//!
//! Shapes: B batch, T positions, E hidden, H heads, Hkv KV heads, G = H/Hkv, D head dim.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use super::ops::{rms_norm, rope_halves, rope_interleaved, softmax_last_dim};
use super::{Builder, Ctx, Linear, Param, Step};
use crate::llama::{inv_freq, DecoderConfig};
use crate::weights::{Embedding, Weights};
use crate::Result;

/// RMSNorm with a (possibly trainable) weight.
pub(crate) struct NormT {
    name: String,
    weight: Param,
    eps: f64,
}

impl NormT {
    pub(crate) fn new(b: &mut Builder<'_>, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            name: name.to_string(),
            weight: b.param(name, &[size])?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, self.weight.tensor(), self.eps)
    }

    pub(crate) fn state(&self, out: &mut BTreeMap<String, Tensor>) {
        out.insert(self.name.clone(), self.weight.tensor().detach());
    }
}

/// Token embeddings: a dense table (trainable or not) or the rows of a quantized GGUF table.
pub(crate) enum EmbedT {
    Dense(Param),
    Quantized(Box<Embedding>),
}

impl EmbedT {
    pub(crate) fn new(b: &mut Builder<'_>, v: usize, e: usize) -> Result<Self> {
        let name = "model.embed_tokens.weight";
        Ok(match b.w {
            Weights::Gguf { .. } if b.opts.quantized_base && !b.full() => {
                Self::Quantized(Box::new(b.w.embedding(name, v, e)?))
            }
            _ => Self::Dense(b.param(name, &[v, e])?),
        })
    }

    /// `ids: (B, T)` -> `(B, T, E)`.
    pub(crate) fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let (b, t) = (ids.len(), ids[0].len());
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let idx = Tensor::from_vec(flat, (b, t), device)?;
        Ok(match self {
            Self::Dense(p) => {
                p.tensor()
                    .index_select(&idx.flatten_all()?, 0)?
                    .reshape((b, t, ()))?
            }
            Self::Quantized(q) => q.forward(&idx)?.to_dtype(DType::F32)?,
        })
    }

    pub(crate) fn state(&self, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
        let t = match self {
            Self::Dense(p) => p.tensor().detach(),
            Self::Quantized(q) => {
                let (v, _) = q.dims();
                let ids: Vec<u32> = (0..v as u32).collect();
                let ids = Tensor::from_vec(ids, (1, v), &Device::Cpu)?;
                q.forward(&ids)?.squeeze(0)?
            }
        };
        out.insert("model.embed_tokens.weight".into(), t);
        Ok(())
    }
}

struct AttentionT {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    h: usize,
    hkv: usize,
    d: usize,
    interleaved: bool,
}

impl AttentionT {
    fn forward(&self, x: &Tensor, step: &Step, ctx: &mut Ctx) -> Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        let (h, hkv, d) = (self.h, self.hkv, self.d);
        let g = h / hkv;
        // (B, T, E) -> (B*T, E)
        let x = x.reshape((b * t, e))?;
        // (B*T, H*D) -> (B, T, H, D) -> (B, H, T, D)
        let q = self
            .q_proj
            .forward(&x, ctx)?
            .reshape((b, t, h, d))?
            .transpose(1, 2)?;
        let k = self
            .k_proj
            .forward(&x, ctx)?
            .reshape((b, t, hkv, d))?
            .transpose(1, 2)?;
        let v = self
            .v_proj
            .forward(&x, ctx)?
            .reshape((b, t, hkv, d))?
            .transpose(1, 2)?;
        let rope = if self.interleaved {
            rope_interleaved
        } else {
            rope_halves
        };
        let q = rope(&q.contiguous()?, &step.cos, &step.sin)?;
        let k = rope(&k.contiguous()?, &step.cos, &step.sin)?;
        // GQA: query heads j*G .. (j+1)*G share KV head j. (B, H, T, D) -> (B, Hkv, G*T, D)
        let q = q.reshape((b, hkv, g * t, d))?;
        let scale = 1.0 / (d as f64).sqrt();
        // (B, Hkv, G*T, D) @ (B, Hkv, D, T) -> (B, Hkv, G*T, T) -> (B, Hkv, G, T, T)
        let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?.reshape((b, hkv, g, t, t))?;
        let att = softmax_last_dim(&att.broadcast_add(&step.mask)?)?;
        // (B, Hkv, G*T, T) @ (B, Hkv, T, D) -> (B, Hkv, G*T, D) = (B, H, T, D)
        let y = att
            .reshape((b, hkv, g * t, t))?
            .matmul(&v.contiguous()?)?
            .reshape((b, h, t, d))?;
        // (B, H, T, D) -> (B, T, H, D) -> (B*T, H*D)
        let y = y.transpose(1, 2)?.reshape((b * t, h * d))?;
        Ok(self.o_proj.forward(&y, ctx)?.reshape((b, t, e))?)
    }
}

/// SwiGLU `down(silu(gate(x)) * up(x))` on rows `(M, E)`.
pub(crate) struct MlpT {
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
}

impl MlpT {
    pub(crate) fn new(b: &mut Builder<'_>, prefix: &str, e: usize, f: usize) -> Result<Self> {
        Ok(Self {
            gate_proj: b.linear(&format!("{prefix}.gate_proj"), f, e, false)?,
            up_proj: b.linear(&format!("{prefix}.up_proj"), f, e, false)?,
            down_proj: b.linear(&format!("{prefix}.down_proj"), e, f, false)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x, ctx)?;
        let up = self.up_proj.forward(x, ctx)?;
        self.down_proj
            .forward(&super::ops::swiglu(&gate, &up)?, ctx)
    }

    pub(crate) fn state(&self, merge: bool, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
        for l in [&self.gate_proj, &self.up_proj, &self.down_proj] {
            l.state(merge, out)?;
        }
        Ok(())
    }

    pub(crate) fn linears(&self) -> [&Linear; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }
}

struct BlockT {
    input_layernorm: NormT,
    self_attn: AttentionT,
    post_attention_layernorm: NormT,
    mlp: MlpT,
}

/// The Llama decoder for training.
pub struct LlamaT {
    cfg: DecoderConfig,
    embed_tokens: EmbedT,
    layers: Vec<BlockT>,
    norm: NormT,
    /// `None` when tied to the (dense) embedding table.
    lm_head: LmHead,
    inv_freq: Vec<f32>,
    device: Device,
}

/// The output projection.
pub(crate) enum LmHead {
    /// Its own matrix (or a quantized tied table, read as a matrix).
    Linear(Box<Linear>),
    /// The dense embedding table.
    Tied,
}

impl LlamaT {
    pub(crate) fn new(cfg: DecoderConfig, b: &mut Builder<'_>) -> Result<Self> {
        let (v, e, f) = (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size);
        let (h, hkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps;
        let interleaved = cfg.rope.interleaved;
        let embed_tokens = EmbedT::new(b, v, e)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let bias = cfg.attention_bias;
            let mut q_proj = b.linear(&format!("{p}.self_attn.q_proj"), h * d, e, bias)?;
            let mut k_proj = b.linear(&format!("{p}.self_attn.k_proj"), hkv * d, e, bias)?;
            if interleaved {
                // GGUF `llama` rows are permuted for interleaved RoPE; saved in HF order.
                q_proj.permuted_heads = Some(h);
                k_proj.permuted_heads = Some(hkv);
            }
            layers.push(BlockT {
                input_layernorm: NormT::new(b, &format!("{p}.input_layernorm.weight"), e, eps)?,
                self_attn: AttentionT {
                    q_proj,
                    k_proj,
                    v_proj: b.linear(&format!("{p}.self_attn.v_proj"), hkv * d, e, bias)?,
                    o_proj: b.linear(&format!("{p}.self_attn.o_proj"), e, h * d, false)?,
                    h,
                    hkv,
                    d,
                    interleaved,
                },
                post_attention_layernorm: NormT::new(
                    b,
                    &format!("{p}.post_attention_layernorm.weight"),
                    e,
                    eps,
                )?,
                mlp: MlpT::new(b, &format!("{p}.mlp"), e, f)?,
            });
        }
        let norm = NormT::new(b, "model.norm.weight", e, eps)?;
        let lm_head = lm_head(b, &embed_tokens, cfg.tie_word_embeddings, v, e)?;
        Ok(Self {
            inv_freq: inv_freq(&cfg),
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            device: b.device.clone(),
        })
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    pub(crate) fn prepare(&self, batch: &super::Batch) -> Result<Step> {
        Step::new(batch, &self.inv_freq, &self.device)
    }

    pub(crate) fn embed(&self, batch: &super::Batch) -> Result<Tensor> {
        self.embed_tokens.forward(&batch.input_ids, &self.device)
    }

    pub(crate) fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Decoder layer `i` on `x: (B, T, E)`.
    pub(crate) fn layer(&self, i: usize, x: &Tensor, step: &Step, ctx: &mut Ctx) -> Result<Tensor> {
        let l = &self.layers[i];
        let (b, t, e) = x.dims3()?;
        let h = (x + l
            .self_attn
            .forward(&l.input_layernorm.forward(x)?, step, ctx)?)?;
        // (B, T, E) -> (B*T, E) for the MLP
        let m = l.mlp.forward(
            &l.post_attention_layernorm
                .forward(&h)?
                .reshape((b * t, e))?,
            ctx,
        )?;
        Ok((h + m.reshape((b, t, e))?)?)
    }

    pub(crate) fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(x)
    }

    pub(crate) fn project(&self, h: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        project(&self.lm_head, &self.embed_tokens, h, ctx)
    }

    pub(crate) fn state(&self, merge: bool, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
        self.embed_tokens.state(out)?;
        for l in &self.layers {
            l.input_layernorm.state(out);
            l.post_attention_layernorm.state(out);
            let a = &l.self_attn;
            for lin in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
                lin.state(merge, out)?;
            }
            l.mlp.state(merge, out)?;
        }
        self.norm.state(out);
        if let LmHead::Linear(l) = &self.lm_head {
            if !self.cfg.tie_word_embeddings {
                l.state(merge, out)?;
            }
        }
        Ok(())
    }

    pub(crate) fn hf_config(&self, architecture: &str) -> serde_json::Value {
        let c = &self.cfg;
        let (model_type, class) = match architecture {
            "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
            _ => ("llama", "LlamaForCausalLM"),
        };
        let mut v = serde_json::json!({
            "architectures": [class],
            "model_type": model_type,
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope.theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if model_type == "llama" {
            v["attention_bias"] = c.attention_bias.into();
            v["mlp_bias"] = false.into();
        } else {
            v["use_sliding_window"] = false.into();
        }
        v
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut v = Vec::new();
        for l in &self.layers {
            let a = &l.self_attn;
            v.extend([&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]);
            v.extend(l.mlp.linears());
        }
        if let LmHead::Linear(l) = &self.lm_head {
            v.push(l);
        }
        v
    }
}

/// The output head: its own matrix, the dense embedding table when tied, or a tied quantized
/// table read as a matrix.
pub(crate) fn lm_head(
    b: &mut Builder<'_>,
    embed: &EmbedT,
    tied: bool,
    v: usize,
    e: usize,
) -> Result<LmHead> {
    let own = !tied && b.w.contains("lm_head.weight");
    if own {
        return Ok(LmHead::Linear(Box::new(b.linear("lm_head", v, e, false)?)));
    }
    match embed {
        EmbedT::Dense(_) => Ok(LmHead::Tied),
        EmbedT::Quantized(_) => Ok(LmHead::Linear(Box::new(b.linear_named(
            "model.embed_tokens",
            "lm_head",
            v,
            e,
        )?))),
    }
}

/// `h: (M, E)` -> logits `(M, V)`.
pub(crate) fn project(head: &LmHead, embed: &EmbedT, h: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
    match (head, embed) {
        (LmHead::Linear(l), _) => l.forward(h, ctx),
        // A frozen tied table (LoRA) needs no gradient: candle's matmul would compute one.
        (LmHead::Tied, EmbedT::Dense(Param::Frozen(w))) => super::ops::frozen_linear(h, w),
        (LmHead::Tied, EmbedT::Dense(w)) => Ok(h.matmul(&w.tensor().t()?)?),
        (LmHead::Tied, EmbedT::Quantized(_)) => {
            unreachable!("a quantized tied table is read as a matrix (lm_head)")
        }
    }
}

/// The training form of a `llama` / `qwen2` model.
pub(crate) fn build(
    cfg: DecoderConfig,
    w: &Weights,
    opts: &super::TrainableOptions,
) -> Result<super::Trainable> {
    let mut b = Builder::new(w, opts);
    let m = LlamaT::new(cfg, &mut b)?;
    Ok(super::Trainable::llama(m, b.vars, w.device().clone()))
}
