//! AdamW as `torch.optim.AdamW` computes it, global-norm clipping as `clip_grad_norm_`, and
//! transformers' learning-rate schedules.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// AdamW's settings (`SFTConfig` names: `adam_beta1`, `adam_beta2`, `adam_epsilon`,
/// `weight_decay`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay (not applied to biases and norms).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Whether transformers' Trainer applies weight decay to a parameter: not to biases and
/// norm weights (`get_decay_parameter_names`).
pub fn decays(name: &str) -> bool {
    !(name.contains("bias") || name.contains("norm"))
}

/// One variable's optimizer state.
#[derive(Debug, Clone)]
pub struct Moments {
    /// First moment.
    pub m: Vec<f32>,
    /// Second moment.
    pub v: Vec<f32>,
}

/// AdamW over named variables.
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    state: Vec<Moments>,
    /// Steps taken.
    pub step: u64,
}

impl AdamW {
    /// Zero moments for every variable.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Self {
        let state = vars
            .iter()
            .map(|(_, v)| Moments {
                m: vec![0.0; v.elem_count()],
                v: vec![0.0; v.elem_count()],
            })
            .collect();
        Self {
            cfg,
            vars,
            state,
            step: 0,
        }
    }

    /// The variables, in order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The moments, in the order of [`AdamW::vars`].
    pub fn state(&self) -> &[Moments] {
        &self.state
    }

    /// Restores moments saved by a checkpoint.
    pub fn set_state(&mut self, state: Vec<Moments>, step: u64) -> Result<()> {
        if state.len() != self.vars.len()
            || state
                .iter()
                .zip(&self.vars)
                .any(|(s, (_, v))| s.m.len() != v.elem_count() || s.v.len() != v.elem_count())
        {
            return Err(TrainError::Checkpoint(
                "the optimizer state does not match the model's trainable parameters (another model or LoRA setting?)".into(),
            ));
        }
        self.state = state;
        self.step = step;
        Ok(())
    }

    /// One update with `grads` (one per variable, in order) at learning rate `lr`, in the
    /// order of operations of torch's single-tensor AdamW.
    pub fn update(&mut self, grads: &[Vec<f32>], lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let step_size = (lr / bc1) as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        for (((name, var), st), g) in self.vars.iter().zip(&mut self.state).zip(grads) {
            let mut p = flat(var.as_tensor())?;
            let decay = if decays(name) {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            for i in 0..p.len() {
                p[i] *= decay;
                // torch: exp_avg.lerp_(grad, 1 - beta1)
                st.m[i] += (g[i] - st.m[i]) * (1.0 - b1);
                st.v[i] = st.v[i] * b2 + (1.0 - b2) * g[i] * g[i];
                let denom = st.v[i].sqrt() / bc2_sqrt as f32 + eps;
                p[i] -= step_size * st.m[i] / denom;
            }
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
        }
        Ok(())
    }
}

/// A tensor's values, flattened, in f32.
pub fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?)
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (torch's
/// `clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, applied when below 1); returns
/// the norm before clipping. `max_norm <= 0` only measures.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let sq: f64 = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum();
    let norm = sq.sqrt();
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for x in grads.iter_mut().flat_map(|g| g.iter_mut()) {
                *x *= coef as f32;
            }
        }
    }
    norm
}

/// transformers' `lr_scheduler_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Warmup, then linear decay to 0.
    Linear,
    /// Warmup, then half a cosine to 0.
    Cosine,
    /// The base rate throughout.
    Constant,
    /// Warmup, then the base rate.
    ConstantWithWarmup,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "linear" => Self::Linear,
            "cosine" => Self::Cosine,
            "constant" => Self::Constant,
            "constant_with_warmup" => Self::ConstantWithWarmup,
            other => {
                return Err(format!(
                "lr_scheduler_type {other:?} is not supported; use linear, cosine, constant or constant_with_warmup"
            ))
            }
        })
    }
}

impl Schedule {
    /// The rate of optimizer step `step` (0-based) of `total`, after `warmup` warmup steps:
    /// transformers' `get_*_schedule_with_warmup` lambdas times `base`.
    pub fn lr(self, base: f64, step: u64, warmup: u64, total: u64) -> f64 {
        let (s, w, n) = (step as f64, warmup as f64, total as f64);
        let factor = match self {
            Self::Constant => 1.0,
            _ if step < warmup => s / w.max(1.0),
            Self::ConstantWithWarmup => 1.0,
            Self::Linear => ((n - s) / (n - w).max(1.0)).max(0.0),
            Self::Cosine => {
                let progress = (s - w) / (n - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        };
        base * factor
    }
}

/// Warmup steps from `warmup_steps`, or else `ceil(warmup_ratio · total)` as transformers
/// computes them.
pub fn warmup_steps(warmup_steps: u64, warmup_ratio: f64, total: u64) -> u64 {
    if warmup_steps > 0 {
        warmup_steps
    } else {
        (warmup_ratio * total as f64).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_to_the_max_norm_and_reports_the_norm_before() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-9);
        let after = (g[0][0].powi(2) + g[1][0].powi(2)).sqrt();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        let mut small = vec![vec![0.3f32]];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small[0][0], 0.3);
    }

    #[test]
    fn schedule_names_are_transformers() {
        assert_eq!("cosine".parse::<Schedule>().unwrap(), Schedule::Cosine);
        let err = "cosine_with_restarts".parse::<Schedule>().unwrap_err();
        assert!(err.contains("linear, cosine"), "{err}");
        assert_eq!(warmup_steps(0, 0.1, 95), 10);
        assert_eq!(warmup_steps(4, 0.1, 95), 4);
        assert!(decays("model.layers.0.mlp.up_proj.weight"));
        assert!(!decays("model.layers.0.input_layernorm.weight"));
        assert!(!decays("model.layers.0.self_attn.q_proj.bias"));
    }
}
