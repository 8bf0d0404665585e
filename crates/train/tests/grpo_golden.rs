//! GRPO's objective against TRL's own `GRPOTrainer._compute_loss` and advantage code on fixed
//! rewards and log-probabilities (`tools/make_grpo_golden.py`): every `loss_type` x
//! `scale_rewards` x beta, with clip-higher. Advantages, loss, the gradient with respect to every
//! log-probability, KL and the clip ratios match within 1e-5 (relative, or absolute below 1).

use seek_train::grpo::{advantages, grpo_loss, GrpoLossConfig, LossInputs, LossType, ScaleRewards};
use serde_json::Value;

fn close(what: &str, got: f64, want: f64) {
    let tol = 1e-5 * want.abs().max(1.0);
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, TRL {want} (diff {:.3e})",
        (got - want).abs()
    );
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn grpo_matches_trl_for_every_loss_type_and_reward_scaling() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grpo_loss.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 24);
    let mut worst: f64 = 0.0;
    for c in cases {
        let name = format!(
            "{} / {} / beta {}",
            c["loss_type"], c["scale_rewards"], c["beta"]
        );
        let scale = ScaleRewards::parse(c["scale_rewards"].as_str().unwrap()).unwrap();
        let rewards: Vec<f64> = c["rewards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let g = c["num_generations"].as_u64().unwrap() as usize;
        let (adv, zero) = advantages(&rewards, g, scale);
        for (i, a) in adv.iter().enumerate() {
            close(
                &format!("{name}: advantage {i}"),
                *a,
                c["advantages"][i].as_f64().unwrap(),
            );
            assert_eq!(
                zero[i],
                c["std_is_zero"][i].as_bool().unwrap(),
                "{name}: zero std {i}"
            );
        }
        let mask: Vec<Vec<bool>> = c["mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_i64() == Some(1))
                    .collect()
            })
            .collect();
        let (logps, old, refs) = (
            rows(&c["logps"]),
            rows(&c["old_logps"]),
            rows(&c["ref_logps"]),
        );
        let cfg = GrpoLossConfig {
            loss_type: LossType::parse(c["loss_type"].as_str().unwrap()).unwrap(),
            beta: c["beta"].as_f64().unwrap(),
            epsilon: c["epsilon"].as_f64().unwrap(),
            epsilon_high: c["epsilon_high"].as_f64().unwrap(),
            max_completion_length: c["max_completion_length"].as_u64().unwrap() as usize,
            gradient_accumulation_steps: c["gradient_accumulation_steps"].as_u64().unwrap()
                as usize,
            steps_per_generation: c["steps_per_generation"].as_u64().unwrap() as usize,
        };
        let out = grpo_loss(
            &cfg,
            &LossInputs {
                logps: &logps,
                old_logps: Some(&old),
                ref_logps: Some(&refs),
                mask: &mask,
                advantages: &adv,
                num_items_in_batch: c["num_items_in_batch"].as_f64().unwrap(),
            },
        );
        close(
            &format!("{name}: loss"),
            out.loss,
            c["loss"].as_f64().unwrap(),
        );
        let want_grad = rows(&c["grad_logps"]);
        for (i, row) in out.grad_logps.iter().enumerate() {
            for (t, g) in row.iter().enumerate() {
                let w = want_grad[i][t];
                worst = worst.max((g - w).abs());
                close(&format!("{name}: d loss / d logp[{i}][{t}]"), *g, w);
            }
        }
        match (out.kl, c["kl"].as_f64()) {
            (Some(k), Some(w)) => close(&format!("{name}: kl"), k, w),
            (None, None) => {}
            other => panic!("{name}: kl {other:?}"),
        }
        for (k, got) in [
            ("clip_ratio_low_mean", out.clip_ratio_low_mean),
            ("clip_ratio_high_mean", out.clip_ratio_high_mean),
            ("clip_ratio_region_mean", out.clip_ratio_region_mean),
            ("clip_ratio_low_min", out.clip_ratio_low_min),
            ("clip_ratio_high_max", out.clip_ratio_high_max),
        ] {
            close(&format!("{name}: {k}"), got, c[k].as_f64().unwrap());
        }
    }
    eprintln!("largest gradient difference from TRL: {worst:.3e}");
}
