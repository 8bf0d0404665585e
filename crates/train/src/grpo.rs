//! Group Relative Policy Optimization's objective, with TRL's option names and semantics
//! (`GRPOConfig` / `GRPOTrainer._compute_loss`, TRL 1.16), checked value for value against TRL's
//! own code on fixed log-probabilities (`tools/make_grpo_golden.py`, `tests/grpo_golden.rs`).
//!
//! Design decision: the objective is computed from per-token log-probabilities and returns its
//! gradient with respect to them, so it is independent of how those log-probabilities were
//! produced: the training forward backpropagates `grad_logps` through the model.
//!
//! Letters: B completions (prompts x `num_generations`), T completion positions (padded).

/// How the per-token losses are averaged (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossType {
    /// Each completion's mean over its tokens, then the mean over completions (the paper's).
    Grpo,
    /// Mean over every token of the batch.
    Bnpo,
    /// Sum over tokens divided by B x `max_completion_length` (Dr. GRPO: no length bias).
    DrGrpo,
    /// Sum over tokens divided by the tokens of the whole generation batch (DAPO).
    Dapo,
}

impl LossType {
    /// TRL's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "grpo" => Self::Grpo,
            "bnpo" => Self::Bnpo,
            "dr_grpo" => Self::DrGrpo,
            "dapo" => Self::Dapo,
            _ => return None,
        })
    }
}

/// How rewards become advantages (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRewards {
    /// Centre on the group mean, divide by the group's standard deviation.
    Group,
    /// Centre on the group mean, divide by the batch's standard deviation.
    Batch,
    /// Centre on the group mean only (Dr. GRPO).
    None,
}

impl ScaleRewards {
    /// TRL's spelling (`true` / `false` as TRL's older boolean).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "group" | "true" => Self::Group,
            "batch" => Self::Batch,
            "none" | "false" => Self::None,
            _ => return None,
        })
    }
}

/// Standard deviation with Bessel's correction over the values that are not NaN; NaN with
/// fewer than two (TRL's `nanstd`).
fn nanstd(xs: &[f64]) -> f64 {
    let v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = v.len() as f64;
    if v.len() < 2 {
        return f64::NAN;
    }
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (var * n / (n - 1.0)).sqrt()
}

fn nanmean(xs: &[f64]) -> f64 {
    let v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    v.iter().sum::<f64>() / v.len() as f64
}

/// Advantages of `rewards` (consecutive groups of `num_generations`; a NaN reward is an
/// unscorable completion), and which completions' scale was zero (all-equal groups, logged as
/// `frac_reward_zero_std`). NaN advantages become 0, as TRL does.
pub fn advantages(
    rewards: &[f64],
    num_generations: usize,
    scale: ScaleRewards,
) -> (Vec<f64>, Vec<bool>) {
    let g = num_generations.max(1);
    let batch_std = nanstd(rewards);
    let mut adv = Vec::with_capacity(rewards.len());
    let mut zero = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(g) {
        let mean = nanmean(group);
        let std = match scale {
            ScaleRewards::Group | ScaleRewards::None if g > 1 => nanstd(group),
            ScaleRewards::Group | ScaleRewards::None => 0.0,
            ScaleRewards::Batch => batch_std,
        };
        for &r in group {
            let mut a = r - mean;
            if scale != ScaleRewards::None {
                a /= std + 1e-4;
            }
            adv.push(if a.is_nan() { 0.0 } else { a });
            // torch.isclose(std, 0): |std| <= 1e-8 (NaN is not close).
            zero.push(std.abs() <= 1e-8);
        }
    }
    (adv, zero)
}

/// The options of the objective (TRL's names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoLossConfig {
    /// `loss_type`.
    pub loss_type: LossType,
    /// `beta`: weight of the k3 KL estimate against the reference (0: no reference needed).
    pub beta: f64,
    /// `epsilon`: lower clip of the ratio (1 - epsilon).
    pub epsilon: f64,
    /// `epsilon_high`: upper clip (1 + epsilon_high); TRL defaults it to `epsilon`.
    pub epsilon_high: f64,
    /// `max_completion_length` (Dr. GRPO's normaliser).
    pub max_completion_length: usize,
    /// `gradient_accumulation_steps`: the loss is divided by it (one optimizer step's worth).
    pub gradient_accumulation_steps: usize,
    /// `steps_per_generation` (DAPO's normaliser spans the generation batch).
    pub steps_per_generation: usize,
}

/// One micro-batch's per-token inputs; `mask[i][t]` marks completion tokens.
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a> {
    /// The policy's log-probability of each sampled token (B x T).
    pub logps: &'a [Vec<f64>],
    /// The log-probabilities when the completions were generated (`num_iterations` > 1);
    /// `None`: the same as `logps` (ratio 1).
    pub old_logps: Option<&'a [Vec<f64>]>,
    /// The frozen reference's (needed when beta > 0).
    pub ref_logps: Option<&'a [Vec<f64>]>,
    /// Completion tokens (1) and padding (0).
    pub mask: &'a [Vec<bool>],
    /// One advantage per completion.
    pub advantages: &'a [f64],
    /// Completion tokens in the whole generation batch (DAPO).
    pub num_items_in_batch: f64,
}

/// The objective, its gradient and TRL's logged figures.
#[derive(Debug, Clone, PartialEq)]
pub struct LossOutput {
    /// The loss (already divided for gradient accumulation, as TRL returns it).
    pub loss: f64,
    /// d loss / d `logps[i][t]` (0 on padding).
    pub grad_logps: Vec<Vec<f64>>,
    /// Mean k3 KL over completion tokens (`kl`), when beta > 0.
    pub kl: Option<f64>,
    /// `clip_ratio/low_mean`: tokens whose ratio fell under 1 - epsilon with a negative advantage.
    pub clip_ratio_low_mean: f64,
    /// `clip_ratio/high_mean`: over 1 + epsilon_high with a positive advantage.
    pub clip_ratio_high_mean: f64,
    /// `clip_ratio/region_mean`: either.
    pub clip_ratio_region_mean: f64,
    /// `clip_ratio/low_min`: the smallest per-completion low-clip fraction.
    pub clip_ratio_low_min: f64,
    /// `clip_ratio/high_max`: the largest per-completion high-clip fraction.
    pub clip_ratio_high_max: f64,
}

/// The clipped surrogate with the KL penalty, aggregated per `loss_type`, and its gradient.
pub fn grpo_loss(cfg: &GrpoLossConfig, x: &LossInputs<'_>) -> LossOutput {
    let b = x.logps.len();
    let (lo, hi) = (1.0 - cfg.epsilon, 1.0 + cfg.epsilon_high);
    let ga = cfg.gradient_accumulation_steps.max(1) as f64;
    let total_tokens: f64 = x.mask.iter().flatten().filter(|m| **m).count() as f64;
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(b);
    let (mut kl_sum, mut low_sum, mut high_sum, mut region_sum) = (0.0, 0.0, 0.0, 0.0);
    let (mut low_min, mut high_max) = (f64::NAN, f64::NAN);
    for i in 0..b {
        let a = x.advantages[i];
        let n_i = x.mask[i].iter().filter(|m| **m).count() as f64;
        // Weight of token t's loss in the aggregate.
        let w = match cfg.loss_type {
            LossType::Grpo => 1.0 / (n_i.max(1.0) * b as f64 * ga),
            LossType::Bnpo => 1.0 / (total_tokens.max(1.0) * ga),
            LossType::DrGrpo => 1.0 / ((b * cfg.max_completion_length) as f64 * ga),
            LossType::Dapo => {
                cfg.steps_per_generation.max(1) as f64 / (x.num_items_in_batch.max(1.0) * ga)
            }
        };
        let mut g_row = vec![0.0; x.logps[i].len()];
        let (mut low_i, mut high_i) = (0.0, 0.0);
        for (t, &lp) in x.logps[i].iter().enumerate() {
            if !x.mask[i][t] {
                continue;
            }
            let old = x.old_logps.map_or(lp, |o| o[i][t]);
            let c1 = (lp - old).exp();
            let c2 = c1.clamp(lo, hi);
            let inside = (lo..=hi).contains(&c1);
            let (l1, l2) = (c1 * a, c2 * a);
            // d min(l1, l2) / d lp, with torch's split of a tie.
            let d1 = c1 * a;
            let d2 = if inside { c1 * a } else { 0.0 };
            let dmin = if l1 < l2 {
                d1
            } else if l1 > l2 {
                d2
            } else {
                0.5 * (d1 + d2)
            };
            let mut tok_loss = -l1.min(l2);
            let mut tok_grad = -dmin;
            if cfg.beta != 0.0 {
                let r = x.ref_logps.map_or(lp, |r| r[i][t]);
                let kl = (r - lp).exp() - (r - lp) - 1.0;
                tok_loss += cfg.beta * kl;
                tok_grad += cfg.beta * (1.0 - (r - lp).exp());
                kl_sum += kl;
            }
            loss += w * tok_loss;
            g_row[t] = w * tok_grad;
            let low = c1 < lo && a < 0.0;
            let high = c1 > hi && a > 0.0;
            low_i += f64::from(u8::from(low));
            high_i += f64::from(u8::from(high));
            region_sum += f64::from(u8::from(low || high));
        }
        low_sum += low_i;
        high_sum += high_i;
        if n_i > 0.0 {
            low_min = low_min.min(low_i / n_i);
            high_max = high_max.max(high_i / n_i);
        }
        grad.push(g_row);
    }
    let per_token = |s: f64| s / total_tokens.max(1.0);
    LossOutput {
        loss,
        grad_logps: grad,
        kl: (cfg.beta != 0.0).then(|| per_token(kl_sum)),
        clip_ratio_low_mean: per_token(low_sum),
        clip_ratio_high_mean: per_token(high_sum),
        clip_ratio_region_mean: per_token(region_sum),
        clip_ratio_low_min: low_min,
        clip_ratio_high_max: high_max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_rewards_give_zero_advantages_and_are_flagged() {
        let (a, z) = advantages(&[1.0, 1.0, 0.0, 1.0], 2, ScaleRewards::Group);
        assert_eq!(&a[..2], &[0.0, 0.0]);
        assert_eq!(z, [true, true, false, false]);
        assert!(a[2] < 0.0 && a[3] > 0.0);
        // An unscorable completion (NaN reward) gets advantage 0 and is left out of the mean.
        let (a, _) = advantages(&[f64::NAN, 1.0, 0.0], 3, ScaleRewards::None);
        assert_eq!(a, [0.0, 0.5, -0.5]);
    }

    #[test]
    fn names_parse_as_trl_spells_them() {
        assert_eq!(LossType::parse("dr_grpo"), Some(LossType::DrGrpo));
        assert_eq!(ScaleRewards::parse("batch"), Some(ScaleRewards::Batch));
        assert_eq!(LossType::parse("ppo"), None);
    }
}

/// One prompt's sampled completions, ready for a policy step.
#[derive(Debug, Clone)]
pub struct Group {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// Each completion's token ids (end-of-sequence token included when it stopped).
    pub completions: Vec<Vec<u32>>,
    /// Each completion's reward (NaN: unscorable).
    pub rewards: Vec<f64>,
    /// Whether each completion was cut by `max_completion_length`.
    pub truncated: Vec<bool>,
}

/// What one policy step did (TRL's metric names in `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// The objective.
    pub loss: f64,
    /// Mean reward (`reward`).
    pub reward: f64,
    /// Mean over groups of the reward's standard deviation (`reward_std`).
    pub reward_std: f64,
    /// Share of completions in groups whose rewards were all equal (`frac_reward_zero_std`).
    pub frac_reward_zero_std: f64,
    /// Mean completion length in tokens (`completions/mean_length`).
    pub mean_length: f64,
    /// Share cut by the length limit (`completions/clipped_ratio`).
    pub clipped_ratio: f64,
    /// The objective's clip ratios and KL.
    pub clip_ratio_region_mean: f64,
    /// `kl`, when beta > 0.
    pub kl: Option<f64>,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
}

/// How a policy step runs.
#[derive(Debug, Clone, Copy)]
pub struct StepConfig {
    /// The objective's options.
    pub loss: GrpoLossConfig,
    /// `scale_rewards`.
    pub scale_rewards: ScaleRewards,
    /// `mask_truncated_completions`: cut completions take no part in the loss.
    pub mask_truncated_completions: bool,
    /// `max_grad_norm`.
    pub max_grad_norm: f64,
    /// The learning rate of this step.
    pub learning_rate: f64,
    /// Completions per forward and backward (memory: a row's logits and activations).
    pub micro_batch: usize,
    /// Recompute each layer in the backward (gradient checkpointing).
    pub gradient_checkpointing: bool,
}

/// A generation batch made ready for the policy: one row per completion (prompt + completion
/// tokens, the completion's tokens as labels), its mask, and the advantages computed over the
/// whole batch (TRL computes them once per generation batch, before splitting it into steps).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `(ids, labels)` per completion.
    pub rows: Vec<(Vec<u32>, Vec<Option<u32>>)>,
    /// Completion tokens that take part in the loss, per row (row length).
    pub mask: Vec<Vec<bool>>,
    /// One advantage per completion.
    pub advantages: Vec<f64>,
    /// Whether each completion's group had all-equal rewards.
    pub zero_std: Vec<bool>,
    /// The rewards (NaN: unscorable).
    pub rewards: Vec<f64>,
    /// Completions per prompt.
    pub num_generations: usize,
    /// Completion lengths.
    pub lengths: Vec<usize>,
    /// Whether each was cut.
    pub truncated: Vec<bool>,
}

/// Rows, masks and advantages of `groups` (each of `num_generations` completions).
pub fn prepare(
    groups: &[Group],
    scale_rewards: ScaleRewards,
    mask_truncated_completions: bool,
) -> crate::Result<Prepared> {
    let g = groups.first().map_or(1, |x| x.completions.len());
    let mut p = Prepared {
        rows: Vec::new(),
        mask: Vec::new(),
        advantages: Vec::new(),
        zero_std: Vec::new(),
        rewards: Vec::new(),
        num_generations: g,
        lengths: Vec::new(),
        truncated: Vec::new(),
    };
    for grp in groups {
        if grp.completions.len() != g || grp.rewards.len() != g || grp.truncated.len() != g {
            return Err(crate::TrainError::Config(
                "every prompt needs num_generations completions, rewards and truncation flags"
                    .into(),
            ));
        }
        p.rewards.extend(&grp.rewards);
        for (c, &cut) in grp.completions.iter().zip(&grp.truncated) {
            let mut ids = grp.prompt.clone();
            ids.extend(c);
            // Position p predicts token p + 1: the completion's tokens are the labels.
            let mut labels: Vec<Option<u32>> = vec![None; ids.len()];
            for (k, &t) in c.iter().enumerate() {
                labels[grp.prompt.len() + k - 1] = Some(t);
            }
            let keep = !(cut && mask_truncated_completions);
            p.mask
                .push(labels.iter().map(|l| l.is_some() && keep).collect());
            p.lengths.push(c.len());
            p.truncated.push(cut);
            p.rows.push((ids, labels));
        }
    }
    let (adv, zero) = advantages(&p.rewards, g, scale_rewards);
    p.advantages = adv;
    p.zero_std = zero;
    Ok(p)
}

/// Per-token log-probs of `rows` (each as long as its row; 0 off the labels) under `ctx`
/// (`Ctx::eval()`: the policy; `Ctx::reference()`: the base without the adapter), in
/// micro-batches of `micro` rows.
pub fn logps_of(
    model: &seek_models::autograd::Trainable,
    rows: &[(Vec<u32>, Vec<Option<u32>>)],
    micro: usize,
    reference: bool,
) -> crate::Result<Vec<Vec<f64>>> {
    use seek_models::autograd::{Batch, Ctx};
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(micro.max(1)) {
        let b = Batch::from_rows(chunk).map_err(crate::TrainError::from)?;
        let mut ctx = if reference {
            Ctx::reference()
        } else {
            Ctx::eval()
        };
        let lp = model
            .token_logps(&b, &mut ctx)
            .map_err(crate::TrainError::from)?;
        for (r, row) in lp.into_iter().zip(chunk) {
            out.push(r.into_iter().take(row.0.len()).map(f64::from).collect());
        }
    }
    Ok(out)
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStats {
    /// The objective.
    pub loss: f64,
    /// `clip_ratio/region_mean`.
    pub clip_ratio_region_mean: f64,
    /// `clip_ratio/low_mean`.
    pub clip_ratio_low_mean: f64,
    /// `clip_ratio/high_mean`.
    pub clip_ratio_high_mean: f64,
    /// `kl`, when beta > 0.
    pub kl: Option<f64>,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
}

/// One optimizer step on the rows `range` of `p`. `old_logps` are the log-probs at generation
/// time (`num_iterations` > 1; `None`: the current ones, ratio 1) and `ref_logps` the
/// reference's (beta > 0), both over all of `p`'s rows.
pub fn update(
    model: &seek_models::autograd::Trainable,
    opt: &mut crate::optim::AdamW,
    p: &Prepared,
    range: std::ops::Range<usize>,
    old_logps: Option<&[Vec<f64>]>,
    ref_logps: Option<&[Vec<f64>]>,
    cfg: &StepConfig,
) -> crate::Result<UpdateStats> {
    use seek_models::autograd::{Batch, Ctx};
    if cfg.loss.beta != 0.0 && ref_logps.is_none() {
        return Err(crate::TrainError::Config(
            "beta > 0 needs the reference model's log-probs".into(),
        ));
    }
    let rows = &p.rows[range.clone()];
    let micro = cfg.micro_batch.max(1);
    let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let pad = |v: &[Vec<f64>]| -> Vec<Vec<f64>> {
        v[range.clone()]
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.resize(t, 0.0);
                r
            })
            .collect()
    };
    // With the old log-probs equal to the current ones (ratio 1) and no KL term, the objective's
    // gradient does not depend on the log-prob values: the policy's forward is skipped.
    let logps = if old_logps.is_some() || cfg.loss.beta != 0.0 {
        pad(&logps_of(model, rows, micro, false)?)
    } else {
        vec![vec![0.0; t]; rows.len()]
    };
    let old = old_logps.map(pad);
    let reference = ref_logps.map(pad);
    let mask: Vec<Vec<bool>> = p.mask[range.clone()]
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.resize(t, false);
            m
        })
        .collect();
    let tokens = mask.iter().flatten().filter(|m| **m).count() as f64;
    let out = grpo_loss(
        &cfg.loss,
        &LossInputs {
            logps: &logps,
            old_logps: old.as_deref(),
            ref_logps: reference.as_deref(),
            mask: &mask,
            advantages: &p.advantages[range.clone()],
            num_items_in_batch: tokens,
        },
    );
    // d loss / d logp = g  ->  loss = Σ (-g) · CE, as CE = -logp; summed over micro-batches.
    let mut grads: Option<Vec<Vec<f32>>> = None;
    for (k, chunk) in rows.chunks(micro).enumerate() {
        let mut b = Batch::from_rows(chunk).map_err(crate::TrainError::from)?;
        let bt = b.dims().1;
        b.weights = Some(
            out.grad_logps[k * micro..(k * micro + chunk.len())]
                .iter()
                .map(|r| r[..bt].iter().map(|&x| -(x as f32)).collect())
                .collect(),
        );
        let (_, _, gk) = model
            .loss_and_grads(&b, &mut Ctx::eval(), 1.0, cfg.gradient_checkpointing)
            .map_err(crate::TrainError::from)?;
        match &mut grads {
            None => grads = Some(gk),
            Some(acc) => {
                for (a, gk) in acc.iter_mut().zip(&gk) {
                    for (a, gk) in a.iter_mut().zip(gk) {
                        *a += gk;
                    }
                }
            }
        }
    }
    let mut grads = grads.unwrap_or_default();
    let grad_norm = crate::optim::clip_grad_norm(&mut grads, cfg.max_grad_norm);
    opt.update(&grads, cfg.learning_rate)?;
    Ok(UpdateStats {
        loss: out.loss,
        clip_ratio_region_mean: out.clip_ratio_region_mean,
        clip_ratio_low_mean: out.clip_ratio_low_mean,
        clip_ratio_high_mean: out.clip_ratio_high_mean,
        kl: out.kl,
        grad_norm,
    })
}

impl Prepared {
    /// TRL's reward figures of the batch: mean reward, mean group std, share of all-equal
    /// groups, mean length, share cut.
    pub fn summary(&self) -> (f64, f64, f64, f64, f64) {
        let n = self.rows.len().max(1) as f64;
        let finite: Vec<f64> = self
            .rewards
            .iter()
            .copied()
            .filter(|r| !r.is_nan())
            .collect();
        let stds: Vec<f64> = self
            .rewards
            .chunks(self.num_generations.max(1))
            .map(|c| {
                let s = nanstd(c);
                if s.is_nan() {
                    0.0
                } else {
                    s
                }
            })
            .collect();
        (
            finite.iter().sum::<f64>() / finite.len().max(1) as f64,
            stds.iter().sum::<f64>() / stds.len().max(1) as f64,
            self.zero_std.iter().filter(|z| **z).count() as f64 / n,
            self.lengths.iter().sum::<usize>() as f64 / n,
            self.truncated.iter().filter(|c| **c).count() as f64 / n,
        )
    }
}

/// One GRPO policy step with `num_iterations` = 1 (the completions were sampled from the
/// current weights, so the old log-probs are the current ones and the ratio starts at 1):
/// advantages from the groups' rewards, the per-token objective on the policy's log-probs,
/// its gradient pushed through the model as a weighted cross-entropy, clipped, one AdamW update.
/// With beta > 0 the reference is the base model without the adapter.
pub fn policy_step(
    model: &seek_models::autograd::Trainable,
    opt: &mut crate::optim::AdamW,
    groups: &[Group],
    cfg: &StepConfig,
) -> crate::Result<StepStats> {
    let p = prepare(groups, cfg.scale_rewards, cfg.mask_truncated_completions)?;
    let reference = if cfg.loss.beta != 0.0 {
        Some(logps_of(model, &p.rows, cfg.micro_batch, true)?)
    } else {
        None
    };
    let u = update(
        model,
        opt,
        &p,
        0..p.rows.len(),
        None,
        reference.as_deref(),
        cfg,
    )?;
    let (reward, reward_std, frac_reward_zero_std, mean_length, clipped_ratio) = p.summary();
    Ok(StepStats {
        loss: u.loss,
        reward,
        reward_std,
        frac_reward_zero_std,
        mean_length,
        clipped_ratio,
        clip_ratio_region_mean: u.clip_ratio_region_mean,
        kl: u.kl,
        grad_norm: u.grad_norm,
    })
}
