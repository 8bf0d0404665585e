//! One GRPO policy step on a real (tiny) Qwen2 with LoRA: the completion with the best reward
//! in its group becomes more likely and the worst less likely, a group whose rewards are all
//! equal moves nothing, and truncated completions can be left out of the loss.

use std::path::Path;

use seek_models::autograd::{Batch, Ctx, Finetune, LoraConfig, Trainable, TrainableOptions};
use seek_models::{load_trainable, LoadOptions};
use seek_train::grpo::{policy_step, Group, GrpoLossConfig, LossType, ScaleRewards, StepConfig};
use seek_train::optim::{AdamW, AdamWConfig};

fn model() -> Trainable {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/tiny-qwen2");
    let opts = TrainableOptions {
        finetune: Finetune::Lora(LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["all-linear".into()],
            use_rslora: false,
        }),
        seed: 3,
        quantized_base: false,
    };
    load_trainable(&path, &LoadOptions::default(), &opts)
        .unwrap()
        .0
}

const PROMPT: [u32; 3] = [1, 17, 200];
const COMPLETIONS: [[u32; 3]; 4] = [[45, 3, 99], [128, 7, 255], [45, 7, 3], [99, 99, 99]];

/// Log-probability of each completion after the prompt.
fn seq_logps(m: &Trainable) -> Vec<f64> {
    let rows: Vec<(Vec<u32>, Vec<Option<u32>>)> = COMPLETIONS
        .iter()
        .map(|c| {
            let ids: Vec<u32> = PROMPT.iter().chain(c).copied().collect();
            let mut labels = vec![None; ids.len()];
            for (k, &t) in c.iter().enumerate() {
                labels[PROMPT.len() + k - 1] = Some(t);
            }
            (ids, labels)
        })
        .collect();
    let b = Batch::from_rows(&rows).unwrap();
    m.token_logps(&b, &mut Ctx::eval())
        .unwrap()
        .iter()
        .map(|r| r.iter().map(|&x| x as f64).sum())
        .collect()
}

fn cfg(loss_type: LossType) -> StepConfig {
    StepConfig {
        loss: GrpoLossConfig {
            loss_type,
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: 0.2,
            max_completion_length: 3,
            gradient_accumulation_steps: 1,
            steps_per_generation: 1,
        },
        scale_rewards: ScaleRewards::Group,
        mask_truncated_completions: false,
        max_grad_norm: 1.0,
        learning_rate: 5e-3,
        micro_batch: 3,
        gradient_checkpointing: true,
    }
}

fn group(rewards: [f64; 4], truncated: [bool; 4]) -> Group {
    Group {
        prompt: PROMPT.to_vec(),
        completions: COMPLETIONS.iter().map(|c| c.to_vec()).collect(),
        rewards: rewards.to_vec(),
        truncated: truncated.to_vec(),
    }
}

#[test]
fn the_best_completion_gains_probability_and_the_worst_loses_it() {
    for loss_type in [
        LossType::Grpo,
        LossType::Bnpo,
        LossType::DrGrpo,
        LossType::Dapo,
    ] {
        let m = model();
        let mut opt = AdamW::new(m.vars().to_vec(), AdamWConfig::default());
        let before = seq_logps(&m);
        let stats = policy_step(
            &m,
            &mut opt,
            &[group([1.0, 0.0, 0.5, 0.5], [false; 4])],
            &cfg(loss_type),
        )
        .unwrap();
        let after = seq_logps(&m);
        assert!(
            after[0] > before[0],
            "{loss_type:?}: best {} -> {}",
            before[0],
            after[0]
        );
        assert!(
            after[1] < before[1],
            "{loss_type:?}: worst {} -> {}",
            before[1],
            after[1]
        );
        assert_eq!(stats.reward, 0.5);
        assert_eq!(stats.frac_reward_zero_std, 0.0);
        assert!(stats.grad_norm > 0.0);
    }
}

#[test]
fn equal_rewards_move_nothing_and_truncated_completions_can_be_masked() {
    let m = model();
    let mut opt = AdamW::new(m.vars().to_vec(), AdamWConfig::default());
    let before = seq_logps(&m);
    let stats = policy_step(
        &m,
        &mut opt,
        &[group([1.0; 4], [false; 4])],
        &cfg(LossType::Grpo),
    )
    .unwrap();
    assert_eq!(stats.frac_reward_zero_std, 1.0);
    assert_eq!(stats.grad_norm, 0.0);
    assert_eq!(seq_logps(&m), before);
    // Only the truncated completions carry reward differences: masked, nothing moves either.
    let mut c = cfg(LossType::Grpo);
    c.mask_truncated_completions = true;
    let stats = policy_step(&m, &mut opt, &[group([1.0, 0.0, 0.5, 0.5], [true; 4])], &c).unwrap();
    assert_eq!(stats.clipped_ratio, 1.0);
    assert_eq!(stats.grad_norm, 0.0);
}

/// beta > 0: the reference is the base without the adapter. While the adapter is zero the
/// policy is the reference (KL exactly 0); once a step moved it, the KL is positive.
#[test]
fn the_reference_is_the_base_without_the_adapter() {
    let rewards = [1.0, 0.0, 0.5, 0.5];
    let m = model();
    let mut opt = AdamW::new(m.vars().to_vec(), AdamWConfig::default());
    let mut c = cfg(LossType::Grpo);
    c.loss.beta = 0.04;
    let first = policy_step(&m, &mut opt, &[group(rewards, [false; 4])], &c).unwrap();
    assert_eq!(first.kl, Some(0.0));
    let second = policy_step(&m, &mut opt, &[group(rewards, [false; 4])], &c).unwrap();
    assert!(second.kl.unwrap() > 0.0, "{:?}", second.kl);
    // Without beta no KL is computed (nor the reference's forward run).
    let plain = policy_step(
        &m,
        &mut opt,
        &[group(rewards, [false; 4])],
        &cfg(LossType::Grpo),
    )
    .unwrap();
    assert_eq!(plain.kl, None);
}
