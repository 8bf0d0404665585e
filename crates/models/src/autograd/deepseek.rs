//! The training form of DeepSeek-V3 / R1 and DeepSeek-V2 (`deepseek_v3`, `deepseek_v2`, GGUF
//! `deepseek2`): the layers of `crate::deepseek_v3` written with differentiable ops.
//!
//! Traits: Multi-Head Latent Attention in its expanded form (per-head keys and values from
//! the latent, as the inference code's prefill computes them; training never uses a cache),
//! with or without the low-rank query (`q_lora_rank`), RoPE on the rope part only (interleaved
//! pairs, YaRN frequencies, cos/sin attention factor and softmax-scale correction from the
//! inference code's helpers); dense leading layers (`first_k_dense_replace`); DeepSeekMoE with
//! V3's sigmoid `noaux_tc` routing (a selection-only correction bias, group limit,
//! `norm_topk_prob`, `routed_scaling_factor`) or V2's softmax routing, and shared experts.
//!
//! The router is not differentiable through its choice of experts (neither is transformers'
//! `topk`): the experts are picked with the inference code's `route` on plain numbers, and the
//! router weight gets its gradient through the routing weights, which are recomputed here from
//! the router's scores with ops autograd follows. Only the picked experts run, each on the
//! rows routed to it (`index_select`, expert MLP, times its routing weight, `index_add`).
//!
//! Checked against: transformers + peft (`DeepseekV3ForCausalLM`: loss, every gradient and two
//! AdamW steps of the tiny checkpoints with and without `q_lora_rank`, full and LoRA:
//! `tools/make_train_golden.py`), finite differences, and the inference forward of
//! `crate::deepseek_v3` on the same weights (safetensors and GGUF).
//!
//! Shapes: B batch, T positions, M = B·T rows, E hidden size, H heads, Dn `qk_nope_head_dim`,
//! Dr `qk_rope_head_dim`, Dv `v_head_dim`, C `kv_lora_rank`, Q `q_lora_rank`, X routed
//! experts, m rows routed to one expert, F an MLP's hidden size, V vocabulary.

use std::collections::BTreeMap;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor, Var, D};

use super::llama::{lm_head, project, EmbedT, LmHead, MlpT, NormT};
use super::ops::{rope_halves, rope_interleaved, softmax_last_dim};
use super::{Base, Builder, Ctx, Finetune, Linear, Param, Step};
use crate::deepseek_v3::{
    rope_frequencies, route, softmax_scale, up_projections, DeepseekConfig, Routing, Scoring,
    TopkMethod,
};
use crate::weights::{Matmul, Weights};
use crate::{ModelError, Result};

/// A parameter made from a tensor already in hand (a dequantized GGUF expert slice, a
/// `kv_b_proj` rebuilt from split GGUF halves): trainable under its HF name when fine-tuning
/// fully, frozen otherwise, like [`Builder::param`].
fn param_from(b: &mut Builder<'_>, name: &str, t: Tensor) -> Result<Param> {
    let t = t.to_dtype(DType::F32)?.to_device(&b.device)?;
    Ok(if b.full() {
        let v = Var::from_tensor(&t)?;
        b.vars.push((name.to_string(), v.clone()));
        Param::Train(v)
    } else {
        Param::Frozen(t)
    })
}

/// A linear layer named `prefix` over a base matrix already in hand, with a LoRA adapter when
/// PEFT's rule targets it (what [`Builder::linear_named`] does for a weight it reads itself).
fn linear_from(
    b: &mut Builder<'_>,
    prefix: &str,
    weight: Base,
    out_dim: usize,
    in_dim: usize,
) -> Result<Linear> {
    let opts = b.opts;
    let lora = match &opts.finetune {
        Finetune::Lora(l) if l.targets(prefix) => Some(b.lora(prefix, l, out_dim, in_dim)?),
        _ => None,
    };
    Ok(Linear {
        name: prefix.to_string(),
        weight,
        bias: None,
        lora,
        permuted_heads: None,
    })
}

/// A quantized or dense GGUF matrix as a dense f32 tensor.
fn dequantized(m: Matmul, device: &Device) -> Result<Tensor> {
    Ok(match m {
        Matmul::Quantized(q) => q.dequantize()?.to_device(device)?,
        Matmul::Candle(QMatMul::QTensor(q)) => q.dequantize(device)?,
        Matmul::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.to_dtype(DType::F32)?,
    })
}

/// Routed expert `e`'s projection `{prefix}.{e}.{proj}` `(out, in)`. Safetensors hold it
/// under that name; a GGUF file holds one stacked `(X, out, in)` tensor per projection, whose
/// slice is dequantized (or, for a LoRA run's quantized base, computed in place by Seek's
/// kernels). Either way it is named, saved and targeted by LoRA under the HF name.
fn expert_linear(
    b: &mut Builder<'_>,
    prefix: &str,
    (e, n): (usize, usize),
    proj: &str,
    (out_dim, in_dim): (usize, usize),
) -> Result<Linear> {
    let name = format!("{prefix}.{e}.{proj}");
    if !matches!(b.w, Weights::Gguf { .. }) {
        return b.linear(&name, out_dim, in_dim, false);
    }
    let m = b.w.expert_matmul(prefix, e, n, proj, (out_dim, in_dim))?;
    let base = match m {
        Matmul::Quantized(q) if b.opts.quantized_base && !b.full() => Base::Quant(q),
        m => {
            let t = dequantized(m, &b.device)?;
            Base::Dense(param_from(b, &format!("{name}.weight"), t)?)
        }
    };
    linear_from(b, &name, base, out_dim, in_dim)
}

/// SwiGLU routed expert `e` of `n`.
fn expert(
    b: &mut Builder<'_>,
    prefix: &str,
    en: (usize, usize),
    e: usize,
    f: usize,
) -> Result<MlpT> {
    Ok(MlpT {
        gate_proj: expert_linear(b, prefix, en, "gate_proj", (f, e))?,
        up_proj: expert_linear(b, prefix, en, "up_proj", (f, e))?,
        down_proj: expert_linear(b, prefix, en, "down_proj", (e, f))?,
    })
}

/// The query projection: `q_b_proj(q_a_layernorm(q_a_proj(x)))` with `q_lora_rank`, else
/// `q_proj(x)`.
struct QueryT {
    /// `q_a_proj` and `q_a_layernorm`; none for a direct `q_proj`.
    down: Option<(Linear, NormT)>,
    /// `q_b_proj`, or `q_proj`.
    up: Linear,
}

/// Multi-Head Latent Attention, expanded.
struct MlaT {
    q: QueryT,
    kv_a_proj_with_mqa: Linear,
    kv_a_layernorm: NormT,
    kv_b_proj: Linear,
    o_proj: Linear,
    h: usize,
    dn: usize,
    dr: usize,
    dv: usize,
    c: usize,
    scale: f64,
    interleaved: bool,
}

impl MlaT {
    fn new(cfg: &DeepseekConfig, b: &mut Builder<'_>, prefix: &str) -> Result<Self> {
        let (e, h, c) = (cfg.hidden_size, cfg.num_heads, cfg.kv_lora_rank);
        let (dn, dr, dv) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim);
        let (bias, eps) = (cfg.attention_bias, cfg.rms_norm_eps);
        let q = match cfg.q_lora_rank {
            Some(qr) => QueryT {
                down: Some((
                    b.linear(&format!("{prefix}.q_a_proj"), qr, e, bias)?,
                    NormT::new(b, &format!("{prefix}.q_a_layernorm.weight"), qr, eps)?,
                )),
                up: b.linear(&format!("{prefix}.q_b_proj"), h * (dn + dr), qr, false)?,
            },
            None => QueryT {
                down: None,
                up: b.linear(&format!("{prefix}.q_proj"), h * (dn + dr), e, false)?,
            },
        };
        let kv_a_proj_with_mqa =
            b.linear(&format!("{prefix}.kv_a_proj_with_mqa"), c + dr, e, bias)?;
        let kv_a_layernorm = NormT::new(b, &format!("{prefix}.kv_a_layernorm.weight"), c, eps)?;
        let kv_b = format!("{prefix}.kv_b_proj");
        let kv_b_proj = if b.w.contains(&format!("{kv_b}.weight")) {
            b.linear(&kv_b, h * (dn + dv), c, false)?
        } else {
            // Newer llama.cpp GGUF files split kv_b_proj into k_b (H, C, Dn) and v_b (H, Dv, C);
            // training joins them back into the HF matrix, so it saves and adapts as kv_b_proj.
            let (w_uk, w_uv) = up_projections(cfg, b.w, prefix)?;
            // (H, Dn, C) ++ (H, Dv, C) -> (H, Dn+Dv, C) -> (H*(Dn+Dv), C)
            let t = Tensor::cat(&[w_uk, w_uv], 1)?.reshape((h * (dn + dv), c))?;
            let p = param_from(b, &format!("{kv_b}.weight"), t)?;
            linear_from(b, &kv_b, Base::Dense(p), h * (dn + dv), c)?
        };
        Ok(Self {
            q,
            kv_a_proj_with_mqa,
            kv_a_layernorm,
            kv_b_proj,
            o_proj: b.linear(&format!("{prefix}.o_proj"), e, h * dv, bias)?,
            h,
            dn,
            dr,
            dv,
            c,
            scale: softmax_scale(cfg),
            interleaved: cfg.rope_interleave,
        })
    }

    /// `x: (B, T, E)` -> `(B, T, E)`.
    fn forward(&self, x: &Tensor, step: &Step, ctx: &mut Ctx) -> Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        let (h, dn, dr, dv, c) = (self.h, self.dn, self.dr, self.dv, self.c);
        let rope = if self.interleaved {
            rope_interleaved
        } else {
            rope_halves
        };
        // (B, T, E) -> (M, E)
        let x = x.reshape((b * t, e))?;
        let q = match &self.q.down {
            Some((a, norm)) => self
                .q
                .up
                .forward(&norm.forward(&a.forward(&x, ctx)?)?, ctx)?,
            None => self.q.up.forward(&x, ctx)?,
        };
        // (M, H*(Dn+Dr)) -> (B, T, H, Dn+Dr) -> (B, H, T, Dn+Dr)
        let q = q.reshape((b, t, h, dn + dr))?.transpose(1, 2)?;
        // (B, H, T, Dn), (B, H, T, Dr) rotated
        let q_nope = q.narrow(D::Minus1, 0, dn)?;
        let q_pe = rope(
            &q.narrow(D::Minus1, dn, dr)?.contiguous()?,
            &step.cos,
            &step.sin,
        )?;
        // (M, C + Dr)
        let ckv = self.kv_a_proj_with_mqa.forward(&x, ctx)?;
        // (M, C): the normalized latent
        let latent = self
            .kv_a_layernorm
            .forward(&ckv.narrow(1, 0, c)?.contiguous()?)?;
        // (M, Dr) -> (B, 1, T, Dr): the rope key every head shares, rotated
        let k_pe = ckv.narrow(1, c, dr)?.reshape((b, 1, t, dr))?;
        let k_pe = rope(&k_pe, &step.cos, &step.sin)?;
        // (M, C) -> (M, H*(Dn+Dv)) -> (B, T, H, Dn+Dv) -> (B, H, T, Dn+Dv)
        let kv = self
            .kv_b_proj
            .forward(&latent, ctx)?
            .reshape((b, t, h, dn + dv))?
            .transpose(1, 2)?;
        // (B, H, T, Dn), (B, H, T, Dv)
        let k_nope = kv.narrow(D::Minus1, 0, dn)?.contiguous()?;
        let v = kv.narrow(D::Minus1, dn, dv)?.contiguous()?;
        // (B, H, T, Dn+Dr) each
        let k = Tensor::cat(
            &[k_nope, k_pe.broadcast_as((b, h, t, dr))?.contiguous()?],
            3,
        )?;
        let q = Tensor::cat(&[q_nope.contiguous()?, q_pe], 3)?.contiguous()?;
        // (B|1, 1, 1, T, T) -> (B|1, 1, T, T)
        let mask = step.mask.squeeze(2)?;
        // (B, H, T, Dn+Dr) @ (B, H, Dn+Dr, T) -> (B, H, T, T)
        let att = (q.matmul(&k.t()?.contiguous()?)? * self.scale)?;
        let att = softmax_last_dim(&att.broadcast_add(&mask)?)?;
        // (B, H, T, T) @ (B, H, T, Dv) -> (B, H, T, Dv) -> (B, T, H, Dv) -> (M, H*Dv)
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, h * dv))?;
        // (M, E) -> (B, T, E)
        Ok(self.o_proj.forward(&y, ctx)?.reshape((b, t, e))?)
    }

    fn linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = self.q.down.iter().map(|(a, _)| a).collect();
        v.push(&self.q.up);
        v.extend([&self.kv_a_proj_with_mqa, &self.kv_b_proj, &self.o_proj]);
        v
    }

    fn state(&self, merge: bool, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
        if let Some((_, norm)) = &self.q.down {
            norm.state(out);
        }
        self.kv_a_layernorm.state(out);
        for l in self.linears() {
            l.state(merge, out)?;
        }
        Ok(())
    }
}

/// DeepSeekMoE: the router, the routed experts (only the picked ones run) and shared experts.
struct MoeT {
    /// `{prefix}` = `model.layers.L.mlp`.
    prefix: String,
    /// Router `(X, E)`.
    gate: Param,
    /// V3's `e_score_correction_bias` `(X,)`: ranks experts (and groups) for selection only.
    /// A frozen tensor, never a variable: transformers keeps it as a buffer that the
    /// auxiliary-loss-free load balancing updates between steps, not gradients, and it does
    /// not enter the routing weights, so the loss has no gradient with respect to it.
    bias: Option<Tensor>,
    /// The same values, for `route`.
    bias_values: Option<Vec<f32>>,
    experts: Vec<MlpT>,
    shared: Option<MlpT>,
    routing: Routing,
}

impl MoeT {
    fn new(cfg: &DeepseekConfig, b: &mut Builder<'_>, prefix: &str, r: &Routing) -> Result<Self> {
        let (e, f, n) = (cfg.hidden_size, cfg.moe_intermediate_size, r.n_experts);
        let gate = b.param(&format!("{prefix}.gate.weight"), &[n, e])?;
        let bias_name = format!("{prefix}.gate.e_score_correction_bias");
        let bias = if b.w.contains(&bias_name) {
            Some(b.w.tensor(&bias_name, &[n])?.to_dtype(DType::F32)?)
        } else if r.method == TopkMethod::NoAuxTc && r.scoring == Scoring::Sigmoid {
            return Err(ModelError::MissingTensor {
                path: b.w.path().to_path_buf(),
                name: bias_name,
            });
        } else {
            None
        };
        let bias_values = bias.as_ref().map(Tensor::to_vec1::<f32>).transpose()?;
        let experts_prefix = format!("{prefix}.experts");
        let experts = (0..n)
            .map(|i| expert(b, &experts_prefix, (i, n), e, f))
            .collect::<Result<Vec<_>>>()?;
        let shared = if cfg.n_shared_experts > 0 {
            Some(MlpT::new(
                b,
                &format!("{prefix}.shared_experts"),
                e,
                f * cfg.n_shared_experts,
            )?)
        } else {
            None
        };
        Ok(Self {
            prefix: prefix.to_string(),
            gate,
            bias,
            bias_values,
            experts,
            shared,
            routing: r.clone(),
        })
    }

    /// `x: (M, E)` -> `(M, E)`.
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (m, _) = x.dims2()?;
        let r = &self.routing;
        let n = self.experts.len();
        // (M, E) @ (E, X) -> (M, X)
        let logits = x.matmul(&self.gate.tensor().t()?)?;
        // The choice: the inference code's `route` on plain numbers (no gradient, as `topk`).
        let choice = logits.detach().to_vec2::<f32>()?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut picked = vec![0f32; m * n];
        for (tok, l) in choice.iter().enumerate() {
            for (ex, _) in route(l, self.bias_values.as_deref(), r) {
                rows[ex].push(tok as u32);
                picked[tok * n + ex] = 1.0;
            }
        }
        // The weights, differentiable in the router's scores, by `route`'s rules: the
        // unbiased scores of the picked experts, normalized (V3, or V2 with
        // norm_topk_prob), scaled by routed_scaling_factor (V3, or V2 unnormalized).
        let scores = match r.scoring {
            Scoring::Sigmoid => candle_nn::ops::sigmoid(&logits)?,
            Scoring::Softmax => softmax_last_dim(&logits)?,
        };
        // (M, X), zero off the picked experts
        let picked = Tensor::from_vec(picked, (m, n), x.device())?;
        let mut weights = (scores * picked)?;
        let normalize = r.norm_topk_prob && r.top_k > 1;
        if normalize {
            // (M, X) / (M, 1)
            weights = weights.broadcast_div(&(weights.sum_keepdim(1)? + 1e-20)?)?;
        }
        if r.method == TopkMethod::NoAuxTc || !normalize {
            weights = (weights * r.scaling)?;
        }
        // (M, X) -> (X, M): one contiguous row of weights per expert
        let weights = weights.t()?.contiguous()?;
        let mut out = x.zeros_like()?;
        for (ex, toks) in rows.iter().enumerate() {
            if toks.is_empty() {
                continue;
            }
            let idx = Tensor::new(toks.as_slice(), x.device())?;
            // (M, E) -> (m, E) -> (m, E)
            let ys = self.experts[ex].forward(&x.index_select(&idx, 0)?, ctx)?;
            // (X, M) -> (M,) -> (m,) -> (m, 1)
            let w = weights.get(ex)?.index_select(&idx, 0)?.unsqueeze(1)?;
            out = out.index_add(&idx, &ys.broadcast_mul(&w)?, 0)?;
        }
        if let Some(shared) = &self.shared {
            out = (out + shared.forward(x, ctx)?)?;
        }
        Ok(out)
    }

    fn linears(&self) -> Vec<&Linear> {
        let mut v: Vec<&Linear> = self.experts.iter().flat_map(MlpT::linears).collect();
        if let Some(s) = &self.shared {
            v.extend(s.linears());
        }
        v
    }

    fn state(&self, merge: bool, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
        let p = &self.prefix;
        out.insert(format!("{p}.gate.weight"), self.gate.tensor().detach());
        if let Some(bias) = &self.bias {
            out.insert(format!("{p}.gate.e_score_correction_bias"), bias.clone());
        }
        for l in self.linears() {
            l.state(merge, out)?;
        }
        Ok(())
    }
}

enum FfnT {
    Dense(MlpT),
    Moe(MoeT),
}

struct BlockT {
    input_layernorm: NormT,
    self_attn: MlaT,
    post_attention_layernorm: NormT,
    mlp: FfnT,
}

/// The DeepSeek-V2/V3 decoder for training.
pub struct DeepseekT {
    cfg: DeepseekConfig,
    embed_tokens: EmbedT,
    layers: Vec<BlockT>,
    norm: NormT,
    lm_head: LmHead,
    inv_freq: Vec<f32>,
    /// YaRN's factor on cos and sin (1 without YaRN, and when `mscale == mscale_all_dim`).
    attention_factor: f32,
    device: Device,
}

impl DeepseekT {
    pub(crate) fn new(cfg: DeepseekConfig, b: &mut Builder<'_>) -> Result<Self> {
        let (v, e, eps) = (cfg.vocab_size, cfg.hidden_size, cfg.rms_norm_eps);
        let embed_tokens = EmbedT::new(b, v, e)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let input_layernorm = NormT::new(b, &format!("{p}.input_layernorm.weight"), e, eps)?;
            let self_attn = MlaT::new(&cfg, b, &format!("{p}.self_attn"))?;
            let post_attention_layernorm =
                NormT::new(b, &format!("{p}.post_attention_layernorm.weight"), e, eps)?;
            let mlp = match (&cfg.routing, cfg.is_moe(i)) {
                (Some(r), true) => FfnT::Moe(MoeT::new(&cfg, b, &format!("{p}.mlp"), r)?),
                _ => FfnT::Dense(MlpT::new(b, &format!("{p}.mlp"), e, cfg.intermediate_size)?),
            };
            layers.push(BlockT {
                input_layernorm,
                self_attn,
                post_attention_layernorm,
                mlp,
            });
        }
        let norm = NormT::new(b, "model.norm.weight", e, eps)?;
        let lm_head = lm_head(b, &embed_tokens, cfg.tie_word_embeddings, v, e)?;
        let (inv_freq, attention_factor) = rope_frequencies(&cfg);
        Ok(Self {
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            attention_factor,
            device: b.device.clone(),
        })
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    pub(crate) fn prepare(&self, batch: &super::Batch) -> Result<Step> {
        let mut step = Step::new(batch, &self.inv_freq, &self.device)?;
        // (B, 1, T, Dr/2) each, times YaRN's attention factor as transformers applies it
        let af = self.attention_factor as f64;
        step.cos = (step.cos * af)?;
        step.sin = (step.sin * af)?;
        Ok(step)
    }

    pub(crate) fn embed(&self, batch: &super::Batch) -> Result<Tensor> {
        // (B, T, E)
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
        // (B, T, E) -> (M, E) for the MLP
        let rows = l
            .post_attention_layernorm
            .forward(&h)?
            .reshape((b * t, e))?;
        let m = match &l.mlp {
            FfnT::Dense(m) => m.forward(&rows, ctx)?,
            FfnT::Moe(m) => m.forward(&rows, ctx)?,
        };
        // (M, E) -> (B, T, E)
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
            l.self_attn.state(merge, out)?;
            match &l.mlp {
                FfnT::Dense(m) => m.state(merge, out)?,
                FfnT::Moe(m) => m.state(merge, out)?,
            }
        }
        self.norm.state(out);
        if let LmHead::Linear(l) = &self.lm_head {
            if !self.cfg.tie_word_embeddings {
                l.state(merge, out)?;
            }
        }
        Ok(())
    }

    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.extend(l.self_attn.linears());
            match &l.mlp {
                FfnT::Dense(m) => v.extend(m.linears()),
                FfnT::Moe(m) => v.extend(m.linears()),
            }
        }
        if let LmHead::Linear(l) = &self.lm_head {
            v.push(l);
        }
        v
    }

    /// A `config.json` in `configuration_deepseek_v3.py`'s names (V3 for sigmoid routing, V2
    /// for softmax), for a checkpoint of a model that came from a GGUF file.
    pub(crate) fn hf_config(&self, _architecture: &str) -> serde_json::Value {
        let c = &self.cfg;
        let v2 = c
            .routing
            .as_ref()
            .is_some_and(|r| r.scoring == Scoring::Softmax);
        let (model_type, class) = if v2 {
            ("deepseek_v2", "DeepseekV2ForCausalLM")
        } else {
            ("deepseek_v3", "DeepseekV3ForCausalLM")
        };
        let mut v = serde_json::json!({
            "architectures": [class],
            "model_type": model_type,
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "moe_intermediate_size": c.moe_intermediate_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_heads,
            "n_shared_experts": c.n_shared_experts,
            "first_k_dense_replace": c.first_k_dense_replace,
            "moe_layer_freq": c.moe_layer_freq,
            "kv_lora_rank": c.kv_lora_rank,
            "q_lora_rank": c.q_lora_rank,
            "qk_rope_head_dim": c.qk_rope_head_dim,
            "qk_nope_head_dim": c.qk_nope_head_dim,
            "v_head_dim": c.v_head_dim,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "rope_interleave": c.rope_interleave,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "attention_bias": c.attention_bias,
            "hidden_act": "silu",
            "num_nextn_predict_layers": 0,
            "torch_dtype": "float32",
        });
        if let Some(r) = &c.routing {
            v["n_routed_experts"] = r.n_experts.into();
            v["num_experts_per_tok"] = r.top_k.into();
            v["n_group"] = r.n_group.into();
            v["topk_group"] = r.topk_group.into();
            v["norm_topk_prob"] = r.norm_topk_prob.into();
            v["routed_scaling_factor"] = r.scaling.into();
            v["scoring_func"] = if v2 { "softmax" } else { "sigmoid" }.into();
            v["topk_method"] = match r.method {
                TopkMethod::NoAuxTc => "noaux_tc",
                TopkMethod::Greedy => "greedy",
                TopkMethod::GroupLimitedGreedy => "group_limited_greedy",
            }
            .into();
        }
        if let Some(y) = &c.yarn {
            v["rope_scaling"] = serde_json::json!({
                "type": "yarn",
                "factor": y.factor,
                "original_max_position_embeddings": y.original_max_position_embeddings,
                "beta_fast": y.beta_fast,
                "beta_slow": y.beta_slow,
                "mscale": y.mscale,
                "mscale_all_dim": y.mscale_all_dim,
            });
        }
        v
    }
}

/// The training form of a `deepseek_v3` / `deepseek_v2` model.
pub(crate) fn build(
    cfg: DeepseekConfig,
    w: &Weights,
    opts: &super::TrainableOptions,
) -> Result<super::Trainable> {
    let mut b = Builder::new(w, opts);
    let m = DeepseekT::new(cfg, &mut b)?;
    Ok(super::Trainable::deepseek(m, b.vars, w.device().clone()))
}
