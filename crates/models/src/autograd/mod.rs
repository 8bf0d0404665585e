//! The differentiable forward: the training path of every architecture Seek runs.
//!
//! Design decision: inference and training share the weights, the names and the
//! configuration, not the forward code. The inference forward is built from candle's fused
//! ops (`softmax_last_dim`, `rms_norm`, `rope`) and Seek's quantized kernels, none of which
//! carry gradients; the training forward here is written with ops that candle's autograd
//! differentiates (or, for a quantized base, a custom op with a written backward), and a test
//! checks it against the inference forward on the same weights. Parameters are named as in
//! Hugging Face checkpoints, so a full fine-tune saves as `model.safetensors` and LoRA
//! adapters save under PEFT's keys.
//!
//! Shapes: B batch, T positions, E hidden size, H query heads, Hkv key/value heads,
//! G = H / Hkv, D head dim, F intermediate size, V vocabulary, N supervised positions.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::llama::permute_rows;
use crate::weights::{Matmul, QuantMatrix, Weights};
use crate::{ModelError, Result};

pub mod deepseek;
pub mod llama;
mod ops;

pub use ops::{cross_entropy_rows, cross_entropy_sum, rms_norm, softmax_last_dim};

/// A LoRA adapter's settings, as PEFT's `LoraConfig` names them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha`: the update is scaled by `alpha / r` (`alpha / sqrt(r)` with rsLoRA).
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Module names (`q_proj`, `v_proj`, ...) or `all-linear` (every linear but the output head).
    pub target_modules: Vec<String>,
    /// rsLoRA scaling.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// The update's scale.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Whether the linear layer at `path` (`model.layers.0.self_attn.q_proj`) is adapted, by
    /// PEFT's rule: a target equal to the path or to its last dotted parts; `all-linear`
    /// takes every linear layer but the output head.
    pub fn targets(&self, path: &str) -> bool {
        self.target_modules.iter().any(|t| {
            (t == "all-linear" && path != "lm_head")
                || path == t
                || path.ends_with(&format!(".{t}"))
        })
    }
}

/// What a training run updates.
#[derive(Debug, Clone, PartialEq)]
pub enum Finetune {
    /// Every weight.
    Full,
    /// LoRA adapters; the base stays frozen.
    Lora(LoraConfig),
}

/// How to build a [`Trainable`].
#[derive(Debug, Clone)]
pub struct TrainableOptions {
    /// Full or LoRA.
    pub finetune: Finetune,
    /// Seed of the adapters' initialisation.
    pub seed: u64,
    /// LoRA only: keep a quantized GGUF base in its encoding and compute it with Seek's
    /// kernels (forward and backward), instead of dequantizing it to f32.
    pub quantized_base: bool,
}

/// A tensor the optimizer updates, or one it leaves alone.
#[derive(Debug, Clone)]
pub enum Param {
    /// Updated by training.
    Train(Var),
    /// Frozen.
    Frozen(Tensor),
}

impl Param {
    /// The value, tracked by autograd when trainable.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Self::Train(v) => v.as_tensor(),
            Self::Frozen(t) => t,
        }
    }
}

/// Collects parameters by name while a model is built.
pub(crate) struct Builder<'a> {
    pub(crate) w: &'a Weights,
    pub(crate) opts: &'a TrainableOptions,
    pub(crate) device: Device,
    rng: crate::autograd::ops::SplitMix64,
    /// Trainable variables by their save name (HF name; PEFT key for adapters).
    pub(crate) vars: Vec<(String, Var)>,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(w: &'a Weights, opts: &'a TrainableOptions) -> Self {
        Self {
            w,
            opts,
            device: w.device().clone(),
            rng: ops::SplitMix64::new(opts.seed),
            vars: Vec::new(),
        }
    }

    fn full(&self) -> bool {
        self.opts.finetune == Finetune::Full
    }

    /// A dense weight by HF name, trainable when fine-tuning fully.
    pub(crate) fn param(&mut self, name: &str, shape: &[usize]) -> Result<Param> {
        let t = self.w.tensor(name, shape)?.to_dtype(DType::F32)?;
        Ok(if self.full() {
            let v = Var::from_tensor(&t)?;
            self.vars.push((name.to_string(), v.clone()));
            Param::Train(v)
        } else {
            Param::Frozen(t)
        })
    }

    /// A linear layer `prefix.weight (out, in)` (and `prefix.bias`), with a LoRA adapter when
    /// its module name is targeted.
    pub(crate) fn linear(
        &mut self,
        prefix: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<Linear> {
        let mut l = self.linear_named(prefix, prefix, out_dim, in_dim)?;
        if bias {
            l.bias = Some(self.param(&format!("{prefix}.bias"), &[out_dim])?);
        }
        Ok(l)
    }

    /// A linear layer whose weight is stored under `weight_prefix` but which is named (and
    /// targeted by LoRA) as `prefix`: a tied output head reads the embedding table.
    pub(crate) fn linear_named(
        &mut self,
        weight_prefix: &str,
        prefix: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> Result<Linear> {
        let lora_cfg = match &self.opts.finetune {
            Finetune::Lora(l) if l.targets(prefix) => Some(l.clone()),
            _ => None,
        };
        let weight_name = format!("{weight_prefix}.weight");
        let weight = if self.opts.quantized_base && !self.full() {
            match self.w.matmul(&weight_name, out_dim, in_dim)? {
                Matmul::Quantized(q) => Base::Quant(q),
                Matmul::Candle(_) => Base::Dense(self.param(&weight_name, &[out_dim, in_dim])?),
            }
        } else {
            Base::Dense(self.param(&weight_name, &[out_dim, in_dim])?)
        };
        let lora = match lora_cfg {
            Some(cfg) => Some(self.lora(prefix, &cfg, out_dim, in_dim)?),
            None => None,
        };
        Ok(Linear {
            name: prefix.to_string(),
            weight,
            bias: None,
            lora,
            permuted_heads: None,
        })
    }

    /// PEFT's initialisation: A as `kaiming_uniform_(a = sqrt(5))` (uniform in
    /// `±1/sqrt(in)`), B zero, so the adapted model starts equal to the base.
    fn lora(
        &mut self,
        prefix: &str,
        cfg: &LoraConfig,
        out_dim: usize,
        in_dim: usize,
    ) -> Result<Lora> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a: Vec<f32> = (0..cfg.r * in_dim)
            .map(|_| ((self.rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.r, in_dim), &self.device)?)?;
        let b = Var::zeros((out_dim, cfg.r), DType::F32, &self.device)?;
        let key = peft_key(prefix);
        self.vars.push((format!("{key}.lora_A.weight"), a.clone()));
        self.vars.push((format!("{key}.lora_B.weight"), b.clone()));
        Ok(Lora {
            a,
            b,
            scaling: cfg.scaling(),
            dropout: cfg.dropout,
        })
    }
}

/// PEFT's key of a module: `base_model.model.` + the HF module path.
pub fn peft_key(hf_prefix: &str) -> String {
    format!("base_model.model.{hf_prefix}")
}

/// A linear layer's frozen or trainable base matrix.
#[derive(Clone)]
pub(crate) enum Base {
    /// A dense f32 `(out, in)` matrix.
    Dense(Param),
    /// A quantized GGUF matrix computed by Seek's kernels; gradients flow to the input only.
    Quant(QuantMatrix),
}

/// A LoRA adapter: `scaling · B (A dropout(x))`.
#[derive(Clone)]
pub(crate) struct Lora {
    /// `(r, in)`.
    a: Var,
    /// `(out, r)`.
    b: Var,
    scaling: f64,
    dropout: f64,
}

/// `y = x Wᵀ + b (+ LoRA)`.
#[derive(Clone)]
pub(crate) struct Linear {
    name: String,
    weight: Base,
    bias: Option<Param>,
    lora: Option<Lora>,
    /// GGUF `llama` q/k rows, permuted by llama.cpp's converter for interleaved RoPE, over
    /// this many heads: un-permuted when saved, so checkpoints are in Hugging Face order.
    pub(crate) permuted_heads: Option<usize>,
}

/// Per-forward state: dropout's random numbers.
pub struct Ctx {
    seed: Option<u64>,
    rng: Option<ops::SplitMix64>,
    /// The LoRA adapters are skipped (PEFT's `disable_adapter()`): the frozen base model.
    no_adapter: bool,
}

impl Ctx {
    /// Training: dropout on, drawn from `seed`.
    pub fn train(seed: u64) -> Self {
        Self {
            seed: Some(seed),
            rng: Some(ops::SplitMix64::new(seed)),
            no_adapter: false,
        }
    }

    /// Evaluation: no dropout.
    pub fn eval() -> Self {
        Self {
            seed: None,
            rng: None,
            no_adapter: false,
        }
    }

    /// The base model without its LoRA adapters (no dropout): GRPO's frozen reference, with
    /// no second copy of the weights kept.
    pub fn reference() -> Self {
        Self {
            no_adapter: true,
            ..Self::eval()
        }
    }

    /// The context of one part of the model (a layer, the head): its own stream of random
    /// numbers, so that recomputing a layer (gradient checkpointing) draws the same dropout.
    fn part(&self, i: usize) -> Self {
        let mut c = match self.seed {
            None => Self::eval(),
            Some(s) => Self::train(s ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        };
        c.no_adapter = self.no_adapter;
        c
    }
}

/// Stream index of the output head in [`Ctx::part`].
const HEAD: usize = usize::MAX - 1;

impl Linear {
    /// `x: (M, in)` -> `(M, out)`.
    pub(crate) fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let y = match &self.weight {
            Base::Dense(Param::Train(w)) => x.matmul(&w.as_tensor().t()?)?,
            Base::Dense(Param::Frozen(w)) => ops::frozen_linear(x, w)?,
            Base::Quant(q) => ops::quant_linear(x, q)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b.tensor())?,
            None => y,
        };
        let Some(l) = self.lora.as_ref().filter(|_| !ctx.no_adapter) else {
            return Ok(y);
        };
        let xd = match (&mut ctx.rng, l.dropout > 0.0) {
            (Some(rng), true) => ops::dropout(x, l.dropout, rng)?,
            _ => x.clone(),
        };
        // (M, in) @ (in, r) @ (r, out)
        let u = xd
            .matmul(&l.a.as_tensor().t()?)?
            .matmul(&l.b.as_tensor().t()?)?;
        Ok((y + (u * l.scaling)?)?)
    }

    /// The dense base weight, with the adapter merged in when `merge` (PEFT's `merge_and_unload`).
    pub(crate) fn dense_weight(&self, merge: bool) -> Result<Tensor> {
        let w = match &self.weight {
            Base::Dense(p) => p.tensor().detach(),
            Base::Quant(q) => q.dequantize()?,
        };
        match (&self.lora, merge) {
            (Some(l), true) => {
                let delta = (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scaling)?;
                Ok((w + delta)?)
            }
            _ => Ok(w),
        }
    }

    /// Rows in Hugging Face order (see `permuted_heads`).
    fn hf_rows(&self, t: Tensor) -> Result<Tensor> {
        match self.permuted_heads {
            None => Ok(t),
            Some(heads) => unpermute_rows(&t, heads),
        }
    }

    /// Name, dense weight (merged or not) and bias, for a state dict.
    pub(crate) fn state(&self, merge: bool, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
        let w = self.hf_rows(self.dense_weight(merge)?)?;
        out.insert(format!("{}.weight", self.name), w);
        if let Some(b) = &self.bias {
            out.insert(
                format!("{}.bias", self.name),
                self.hf_rows(b.tensor().detach())?,
            );
        }
        Ok(())
    }

    /// The adapter under PEFT's keys (`...q_proj.lora_A.weight`), B's rows in HF order.
    pub(crate) fn adapter_state(&self, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
        if let Some(l) = &self.lora {
            let key = peft_key(&self.name);
            out.insert(format!("{key}.lora_A.weight"), l.a.as_tensor().detach());
            out.insert(
                format!("{key}.lora_B.weight"),
                self.hf_rows(l.b.as_tensor().detach())?,
            );
        }
        Ok(())
    }

    /// Sets the adapter from PEFT tensors (B's rows in HF order).
    pub(crate) fn load_adapter(&self, tensors: &BTreeMap<String, Tensor>) -> Result<bool> {
        let Some(l) = &self.lora else {
            return Ok(false);
        };
        let key = peft_key(&self.name);
        let get = |part: &str, want: &[usize]| -> Result<Tensor> {
            let name = format!("{key}.{part}.weight");
            let t = tensors.get(&name).ok_or_else(|| {
                ModelError::Input(format!(
                    "the adapter has no tensor {name:?}; it was trained with other target_modules or another model"
                ))
            })?;
            if t.dims() != want {
                return Err(ModelError::Shape {
                    name,
                    expected: want.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        l.a.set(&get("lora_A", l.a.dims())?)?;
        let b = get("lora_B", l.b.dims())?;
        let b = match self.permuted_heads {
            None => b,
            Some(heads) => permute_rows(&b, heads)?,
        };
        l.b.set(&b)?;
        Ok(true)
    }
}

/// GGUF row order -> Hugging Face order of a q/k projection over `heads` heads: the inverse
/// of llama.cpp's `permute` (rows `(heads, 2, D/2)` stored as `(heads, D/2, 2)`).
fn unpermute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    let d = dims[0] / heads;
    // (heads, D/2, 2, rest) -> (heads, 2, D/2, rest)
    Ok(t.reshape((heads, d / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// A model built for training: all positions' logits and the loss, with gradients.
pub struct Trainable {
    inner: Arch,
    vars: Vec<(String, Var)>,
    device: Device,
}

enum Arch {
    Llama(llama::LlamaT),
    Deepseek(deepseek::DeepseekT),
}

/// A micro-batch of token rows, right-padded, with its supervision.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(B, T)` token ids.
    pub input_ids: Vec<Vec<u32>>,
    /// `(B, T)` positions (0.. per row, restarting per packed sequence).
    pub position_ids: Vec<Vec<u32>>,
    /// `(B, T)` which packed sequence each position belongs to; attention never crosses them.
    /// `None`: one sequence per row.
    pub segment_ids: Option<Vec<Vec<u32>>>,
    /// `(B, T)`: the token the logits at this position must predict, or `None` (no loss).
    pub labels: Vec<Vec<Option<u32>>>,
    /// `(B, T)`: each supervised position's weight in the summed loss (`None`: 1 each). A
    /// policy-gradient step (GRPO) is a weighted cross-entropy: weight `-dL/dlogp` per token.
    pub weights: Option<Vec<Vec<f32>>>,
}

impl Batch {
    /// One row per sequence, no packing, positions 0.. .
    pub fn from_rows(rows: &[(Vec<u32>, Vec<Option<u32>>)]) -> Result<Self> {
        let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        if t == 0 {
            return Err(ModelError::Input("a batch needs at least one token".into()));
        }
        let mut batch = Self {
            input_ids: Vec::new(),
            position_ids: Vec::new(),
            segment_ids: None,
            labels: Vec::new(),
            weights: None,
        };
        for (ids, labels) in rows {
            let mut ids = ids.clone();
            let mut labels = labels.clone();
            ids.resize(t, 0);
            labels.resize(t, None);
            batch.input_ids.push(ids);
            batch.position_ids.push((0..t as u32).collect());
            batch.labels.push(labels);
        }
        Ok(batch)
    }

    /// Supervised positions.
    pub fn n_labels(&self) -> usize {
        self.labels.iter().flatten().filter(|l| l.is_some()).count()
    }

    /// B and T.
    pub fn dims(&self) -> (usize, usize) {
        (
            self.input_ids.len(),
            self.input_ids.first().map_or(0, Vec::len),
        )
    }
}

/// What the layers of a forward share: rotary tables and the attention mask.
pub(crate) struct Step {
    /// `(B, 1, T, D/2)` each, from the position ids.
    pub cos: Tensor,
    pub sin: Tensor,
    /// Additive `(B or 1, 1, 1, T, T)` mask.
    pub mask: Tensor,
}

impl Step {
    pub(crate) fn new(batch: &Batch, inv_freq: &[f32], device: &Device) -> Result<Self> {
        let (b, t) = batch.dims();
        let half = inv_freq.len();
        let mut angles = Vec::with_capacity(b * t * half);
        for row in &batch.position_ids {
            for &p in row {
                angles.extend(inv_freq.iter().map(|f| p as f32 * f));
            }
        }
        // (B, 1, T, D/2)
        let angles = Tensor::from_vec(angles, (b, 1, t, half), device)?;
        let mask = match &batch.segment_ids {
            None => {
                let m: Vec<f32> = (0..t)
                    .flat_map(|i| (0..t).map(move |j| if j > i { ops::MASKED } else { 0.0 }))
                    .collect();
                Tensor::from_vec(m, (1, 1, 1, t, t), device)?
            }
            Some(seg) => {
                let mut m = Vec::with_capacity(b * t * t);
                for s in seg {
                    for i in 0..t {
                        for j in 0..t {
                            m.push(if j > i || s[i] != s[j] {
                                ops::MASKED
                            } else {
                                0.0
                            });
                        }
                    }
                }
                Tensor::from_vec(m, (b, 1, 1, t, t), device)?
            }
        };
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
            mask,
        })
    }
}

impl Trainable {
    /// Builds the training form of a model from its weights.
    pub(crate) fn llama(m: llama::LlamaT, vars: Vec<(String, Var)>, device: Device) -> Self {
        Self {
            inner: Arch::Llama(m),
            vars,
            device,
        }
    }

    /// Builds the training form of a DeepSeek-V2/V3 model from its weights.
    pub(crate) fn deepseek(
        m: deepseek::DeepseekT,
        vars: Vec<(String, Var)>,
        device: Device,
    ) -> Self {
        Self {
            inner: Arch::Deepseek(m),
            vars,
            device,
        }
    }

    /// The variables the optimizer updates, by save name, in a fixed order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Number of trainable values.
    pub fn trainable_parameters(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// V.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Arch::Llama(m) => m.vocab_size(),
            Arch::Deepseek(m) => m.vocab_size(),
        }
    }

    /// Final hidden states `(B, T, E)` after the last norm.
    pub fn hidden(&self, batch: &Batch, ctx: &mut Ctx) -> Result<Tensor> {
        check_batch(batch, self.vocab_size())?;
        let step = self.prepare(batch)?;
        let mut x = self.embed(batch)?;
        for i in 0..self.n_layers() {
            x = self.layer(i, &x, &step, &mut ctx.part(i))?;
        }
        self.final_norm(&x)
    }

    fn prepare(&self, batch: &Batch) -> Result<Step> {
        match &self.inner {
            Arch::Llama(m) => m.prepare(batch),
            Arch::Deepseek(m) => m.prepare(batch),
        }
    }

    fn embed(&self, batch: &Batch) -> Result<Tensor> {
        match &self.inner {
            Arch::Llama(m) => m.embed(batch),
            Arch::Deepseek(m) => m.embed(batch),
        }
    }

    fn n_layers(&self) -> usize {
        match &self.inner {
            Arch::Llama(m) => m.n_layers(),
            Arch::Deepseek(m) => m.n_layers(),
        }
    }

    fn layer(&self, i: usize, x: &Tensor, step: &Step, ctx: &mut Ctx) -> Result<Tensor> {
        match &self.inner {
            Arch::Llama(m) => m.layer(i, x, step, ctx),
            Arch::Deepseek(m) => m.layer(i, x, step, ctx),
        }
    }

    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        match &self.inner {
            Arch::Llama(m) => m.final_norm(x),
            Arch::Deepseek(m) => m.final_norm(x),
        }
    }

    /// The summed loss of `batch` and the gradients of `scale ·` that loss for every
    /// trainable variable (flattened, in the order of [`Trainable::vars`]; zeros where the loss
    /// does not reach). With `checkpoint`, only each layer's input is kept during the forward
    /// and each layer is run again during the backward (gradient checkpointing): activation
    /// memory of one layer instead of all, for about a third more compute; the gradients are
    /// the same.
    pub fn loss_and_grads(
        &self,
        batch: &Batch,
        ctx: &mut Ctx,
        scale: f64,
        checkpoint: bool,
    ) -> Result<(f64, usize, Vec<Vec<f32>>)> {
        let mut acc: Vec<Option<Vec<f32>>> = vec![None; self.vars.len()];
        // Each gradient leaves the store once copied, so both are never held whole.
        let mut add = |mut store: candle_core::backprop::GradStore| -> Result<()> {
            for ((_, v), a) in self.vars.iter().zip(acc.iter_mut()) {
                if let Some(g) = store.remove(v.as_tensor()) {
                    let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
                    match a {
                        None => *a = Some(g),
                        Some(a) => a.iter_mut().zip(&g).for_each(|(a, g)| *a += g),
                    }
                }
            }
            Ok(())
        };
        let (loss_sum, n) = if !checkpoint {
            let (sum, n) = self.loss_sum(batch, ctx)?;
            add((&sum * scale)?.backward()?)?;
            (sum.to_scalar::<f32>()? as f64, n)
        } else {
            check_batch(batch, self.vocab_size())?;
            let step = self.prepare(batch)?;
            // Forward without a graph: each layer's input, detached.
            let mut xs = vec![self.embed(batch)?.detach()];
            for i in 0..self.n_layers() {
                let y = self.layer(i, &xs[i], &step, &mut ctx.part(i))?;
                xs.push(y.detach());
            }
            // The head and the loss, then each layer again from its input, last first.
            let last = Var::from_tensor(&xs[self.n_layers()])?;
            let h = self.final_norm(last.as_tensor())?;
            let (sum, n) = self.loss_from_hidden(&h, batch, ctx)?;
            let mut store = (&sum * scale)?.backward()?;
            let mut g = match store.remove(last.as_tensor()) {
                Some(g) => g,
                None => last.as_tensor().zeros_like()?,
            };
            add(store)?;
            for i in (0..self.n_layers()).rev() {
                let x = Var::from_tensor(&xs[i])?;
                let y = self.layer(i, x.as_tensor(), &step, &mut ctx.part(i))?;
                let mut store = (y * &g)?.sum_all()?.backward()?;
                g = match store.remove(x.as_tensor()) {
                    Some(g) => g,
                    None => x.as_tensor().zeros_like()?,
                };
                add(store)?;
            }
            let e = self.embed(batch)?;
            if e.is_variable() || e.track_op() {
                add((e * &g)?.sum_all()?.backward()?)?;
            }
            (sum.to_scalar::<f32>()? as f64, n)
        };
        let grads = self
            .vars
            .iter()
            .zip(acc)
            .map(|((_, v), a)| a.unwrap_or_else(|| vec![0.0; v.elem_count()]))
            .collect();
        Ok((loss_sum, n, grads))
    }

    /// Projects hidden rows `(M, E)` onto the vocabulary: `(M, V)`.
    pub fn project(&self, h: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        match &self.inner {
            Arch::Llama(m) => m.project(h, ctx),
            Arch::Deepseek(m) => m.project(h, ctx),
        }
    }

    /// Logits of every position, `(B, T, V)`.
    pub fn logits(&self, batch: &Batch, ctx: &mut Ctx) -> Result<Tensor> {
        let (b, t) = batch.dims();
        let h = self.hidden(batch, ctx)?;
        let e = h.dim(D::Minus1)?;
        // (B, T, E) -> (B*T, E) -> (B*T, V) -> (B, T, V)
        Ok(self
            .project(&h.reshape((b * t, e))?, ctx)?
            .reshape((b, t, ()))?)
    }

    /// Summed cross-entropy over the supervised positions (a scalar) and their count. Only
    /// supervised positions are projected onto the vocabulary.
    pub fn loss_sum(&self, batch: &Batch, ctx: &mut Ctx) -> Result<(Tensor, usize)> {
        let h = self.hidden(batch, ctx)?;
        self.loss_from_hidden(&h, batch, ctx)
    }

    /// The loss from the final hidden states `h: (B, T, E)`.
    fn loss_from_hidden(
        &self,
        h: &Tensor,
        batch: &Batch,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, usize)> {
        let (per_row, n) = self.cross_entropy_rows(h, batch, ctx)?;
        let Some(per_row) = per_row else {
            return Ok((Tensor::zeros((), DType::F32, &self.device)?, 0));
        };
        let sum = match &batch.weights {
            None => per_row.sum_all()?,
            Some(w) => {
                let mut ws = Vec::with_capacity(n);
                for (i, labels) in batch.labels.iter().enumerate() {
                    for (j, l) in labels.iter().enumerate() {
                        if l.is_some() {
                            ws.push(w.get(i).and_then(|r| r.get(j)).copied().unwrap_or(1.0));
                        }
                    }
                }
                (per_row * Tensor::new(ws.as_slice(), &self.device)?)?.sum_all()?
            }
        };
        Ok((sum, n))
    }

    /// The cross-entropy of each supervised position, `(N,)` in row-major order, and N.
    fn cross_entropy_rows(
        &self,
        h: &Tensor,
        batch: &Batch,
        ctx: &mut Ctx,
    ) -> Result<(Option<Tensor>, usize)> {
        let (b, t) = batch.dims();
        let e = h.dim(D::Minus1)?;
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for (i, labels) in batch.labels.iter().enumerate() {
            for (j, l) in labels.iter().enumerate() {
                if let Some(l) = l {
                    rows.push((i * t + j) as u32);
                    targets.push(*l);
                }
            }
        }
        let n = rows.len();
        if n == 0 {
            return Ok((None, 0));
        }
        // (B*T, E) -> (N, E) -> (N, V)
        let rows = Tensor::new(rows.as_slice(), &self.device)?;
        let h = h.reshape((b * t, e))?.index_select(&rows, 0)?;
        let logits = self.project(&h, &mut ctx.part(HEAD))?;
        Ok((Some(cross_entropy_rows(&logits, &targets)?), n))
    }

    /// The log-probability of each supervised position's label, `(B, T)` with 0 elsewhere:
    /// a policy's per-token log-probs of sampled completions (GRPO's ratio and KL), without a
    /// gradient graph.
    pub fn token_logps(&self, batch: &Batch, ctx: &mut Ctx) -> Result<Vec<Vec<f32>>> {
        let h = self.hidden(batch, ctx)?.detach();
        let (per_row, _) = self.cross_entropy_rows(&h, batch, ctx)?;
        let values: Vec<f32> = match per_row {
            Some(r) => r.detach().to_vec1()?,
            None => Vec::new(),
        };
        let mut it = values.into_iter();
        Ok(batch
            .labels
            .iter()
            .map(|row| {
                row.iter()
                    .map(|l| {
                        if l.is_some() {
                            -it.next().unwrap_or(0.0)
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect())
    }

    /// The LoRA adapters under PEFT's keys.
    pub fn adapter_state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for l in self.linears() {
            l.adapter_state(&mut out)?;
        }
        Ok(out)
    }

    /// Sets every adapter from PEFT tensors (an `adapter_model.safetensors`); errors name a
    /// missing or misshapen tensor.
    pub fn load_adapter(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut n = 0;
        for l in self.linears() {
            n += usize::from(l.load_adapter(tensors)?);
        }
        if n == 0 {
            return Err(ModelError::Input(
                "the model has no LoRA adapters to load into; build it with Finetune::Lora".into(),
            ));
        }
        Ok(())
    }

    /// Sets every trainable weight of a full fine-tune from a Hugging Face state dict (a
    /// checkpoint's `model.safetensors`); errors name a missing or misshapen tensor.
    pub fn load_state(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut heads = std::collections::HashMap::new();
        for l in self.linears() {
            if let Some(h) = l.permuted_heads {
                heads.insert(format!("{}.weight", l.name), h);
                heads.insert(format!("{}.bias", l.name), h);
            }
        }
        for (name, var) in &self.vars {
            let t = tensors.get(name).ok_or_else(|| {
                ModelError::Input(format!(
                    "the checkpoint has no tensor {name:?}; it belongs to another model or fine-tuning mode"
                ))
            })?;
            if t.dims() != var.dims() {
                return Err(ModelError::Shape {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            let t = t.to_dtype(DType::F32)?.to_device(&self.device)?;
            let t = match heads.get(name) {
                Some(&h) => permute_rows(&t, h)?,
                None => t,
            };
            var.set(&t)?;
        }
        Ok(())
    }

    /// A Hugging Face `config.json` describing this model, for a checkpoint of a model that
    /// came from a GGUF file (one from a folder keeps its own `config.json`).
    pub fn hf_config(&self, architecture: &str) -> serde_json::Value {
        match &self.inner {
            Arch::Llama(m) => m.hf_config(architecture),
            Arch::Deepseek(m) => m.hf_config(architecture),
        }
    }

    fn linears(&self) -> Vec<&Linear> {
        match &self.inner {
            Arch::Llama(m) => m.linears(),
            Arch::Deepseek(m) => m.linears(),
        }
    }

    /// Every weight under its Hugging Face name (adapters merged when `merge`), for a full
    /// checkpoint.
    pub fn state_dict(&self, merge: bool) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        match &self.inner {
            Arch::Llama(m) => m.state(merge, &mut out)?,
            Arch::Deepseek(m) => m.state(merge, &mut out)?,
        }
        Ok(out)
    }
}

fn check_batch(batch: &Batch, vocab: usize) -> Result<()> {
    let (b, t) = batch.dims();
    if b == 0 || t == 0 {
        return Err(ModelError::Input("a batch needs at least one token".into()));
    }
    for (i, row) in batch.input_ids.iter().enumerate() {
        let ragged = |what: &str, len: usize| {
            ModelError::Input(format!(
                "batch row {i}: {what} has {len} positions, expected {t}"
            ))
        };
        if row.len() != t {
            return Err(ragged("input_ids", row.len()));
        }
        if batch.position_ids[i].len() != t {
            return Err(ragged("position_ids", batch.position_ids[i].len()));
        }
        if batch.labels[i].len() != t {
            return Err(ragged("labels", batch.labels[i].len()));
        }
        if let Some(id) = row
            .iter()
            .chain(batch.labels[i].iter().flatten())
            .find(|&&id| id as usize >= vocab)
        {
            return Err(ModelError::Input(format!(
                "token id {id} is outside the vocabulary (0..{vocab}); the data was tokenized for another model"
            )));
        }
    }
    Ok(())
}
