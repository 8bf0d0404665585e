//! Seek's training step against transformers + peft (tools/make_train_golden.py): the loss,
//! every gradient and the weights after two AdamW steps with clipping, for tiny Llama,
//! Qwen2 and DeepSeek-V3 (MLA + DeepSeekMoE) models, full and LoRA. Tolerance: 1e-4 relative
//! to each tensor's largest value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use seek_models::autograd::{Batch, Ctx, Finetune, Trainable, TrainableOptions};
use seek_models::{load_trainable, LoadOptions};
use seek_train::optim::{clip_grad_norm, flat, AdamW, AdamWConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden(case: &str) -> serde_json::Value {
    let p = root()
        .join("tests/fixtures/train")
        .join(case)
        .join("golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn tensors(case: &str, file: &str) -> BTreeMap<String, Tensor> {
    let p = root().join("tests/fixtures/train").join(case).join(file);
    candle_core::safetensors::load(p, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

fn batch(g: &serde_json::Value) -> Batch {
    let ids: Vec<Vec<u32>> = serde_json::from_value(g["batch"]["input_ids"].clone()).unwrap();
    let labels: Vec<Vec<Option<u32>>> =
        serde_json::from_value(g["batch"]["labels"].clone()).unwrap();
    let rows: Vec<_> = ids.into_iter().zip(labels).collect();
    Batch::from_rows(&rows).unwrap()
}

/// Max |a - b| relative to max |b|; prints the first values on failure.
fn assert_close(name: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let (i, diff) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        diff <= rel * scale,
        "{name}: max diff {diff:e} at {i} (scale {scale:e}); got {:?} want {:?}",
        &got[..got.len().min(4)],
        &want[..want.len().min(4)]
    );
}

fn model(case: &str, g: &serde_json::Value) -> Trainable {
    let base = root().join(g["base"].as_str().unwrap());
    let finetune = if g["mode"] == "lora" {
        let (cfg, _) = seek_train::peft::read_adapter(
            &root()
                .join("tests/fixtures/train")
                .join(case)
                .join("adapter_init"),
        )
        .unwrap();
        Finetune::Lora(cfg)
    } else {
        Finetune::Full
    };
    let opts = TrainableOptions {
        finetune,
        seed: 0,
        quantized_base: false,
    };
    let (m, _, _) = load_trainable(&base, &LoadOptions::default(), &opts).unwrap();
    if g["mode"] == "lora" {
        let (_, t) = seek_train::peft::read_adapter(
            &root()
                .join("tests/fixtures/train")
                .join(case)
                .join("adapter_init"),
        )
        .unwrap();
        m.load_adapter(&t).unwrap();
    }
    m
}

fn check(case: &str) {
    let g = golden(case);
    let m = model(case, &g);
    let b = batch(&g);
    let want_grads = tensors(case, "grads.safetensors");
    let want_after = tensors(case, "after.safetensors");
    let names: Vec<String> = m.vars().iter().map(|(n, _)| n.clone()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    let mut want_names: Vec<String> = want_grads.keys().cloned().collect();
    want_names.sort();
    assert_eq!(sorted, want_names, "{case}: trainable parameter names");

    let o = &g["optimizer"];
    let cfg = AdamWConfig {
        beta1: o["betas"][0].as_f64().unwrap(),
        beta2: o["betas"][1].as_f64().unwrap(),
        eps: o["eps"].as_f64().unwrap(),
        weight_decay: o["weight_decay"].as_f64().unwrap(),
    };
    let lr = o["lr"].as_f64().unwrap();
    let mut opt = AdamW::new(m.vars().to_vec(), cfg);
    for step in 0..2 {
        let (sum, n) = m.loss_sum(&b, &mut Ctx::eval()).unwrap();
        let loss = (sum / n as f64).unwrap();
        let l = loss.to_scalar::<f32>().unwrap() as f64;
        let want = g["loss"][step].as_f64().unwrap();
        assert!(
            (l - want).abs() <= 1e-4 * want.abs(),
            "{case} step {step}: loss {l} want {want}"
        );
        let mut grads = seek_train::gradients(&m, &loss).unwrap();
        if step == 0 {
            for (name, gr) in names.iter().zip(&grads) {
                assert_close(
                    &format!("{case} grad {name}"),
                    gr,
                    &flat(&want_grads[name]).unwrap(),
                    1e-4,
                );
            }
        }
        let norm = clip_grad_norm(&mut grads, o["max_grad_norm"].as_f64().unwrap());
        let want_norm = g["grad_norm"][step].as_f64().unwrap();
        assert!(
            (norm - want_norm).abs() <= 1e-4 * want_norm,
            "{case} step {step}: grad norm {norm} want {want_norm}"
        );
        opt.update(&grads, lr).unwrap();
    }
    for (name, v) in m.vars() {
        assert_close(
            &format!("{case} after {name}"),
            &flat(v.as_tensor()).unwrap(),
            &flat(&want_after[name]).unwrap(),
            1e-4,
        );
    }
}

#[test]
fn llama_full_matches_transformers() {
    check("llama-full");
}

#[test]
fn qwen2_full_matches_transformers() {
    check("qwen2-full");
}

#[test]
fn llama_lora_matches_peft() {
    check("llama-lora");
}

#[test]
fn qwen2_lora_matches_peft() {
    check("qwen2-lora");
}

/// DeepSeek-V3 with q_lora_rank, YaRN and group-limited routing: every weight, the fused
/// experts of transformers 5 compared under their per-expert checkpoint names.
#[test]
fn deepseek_qlora_full_matches_transformers() {
    check("deepseek-qlora-full");
}

/// DeepSeek-V3 without q_lora_rank (plain q_proj), default RoPE, one expert group.
#[test]
fn deepseek_noqlora_full_matches_transformers() {
    check("deepseek-noqlora-full");
}

/// LoRA on the MLA projections with stock transformers 5 + peft.
#[test]
fn deepseek_qlora_lora_matches_transformers() {
    check("deepseek-qlora-lora");
}

/// LoRA on the attention, the dense MLP, the shared experts and every routed expert's
/// gate/up/down projections (per-expert Linear modules, as peft adapts them on
/// transformers 4 and DeepSeek's own modeling code).
#[test]
fn deepseek_noqlora_lora_matches_transformers() {
    check("deepseek-noqlora-lora");
}

#[test]
fn schedules_match_transformers() {
    use seek_train::optim::Schedule;
    let p = root().join("tests/fixtures/train/schedules.json");
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let base = s["base_lr"].as_f64().unwrap();
    for (name, sched) in [
        ("linear", Schedule::Linear),
        ("cosine", Schedule::Cosine),
        ("constant_with_warmup", Schedule::ConstantWithWarmup),
    ] {
        for (step, want) in s[name].as_array().unwrap().iter().enumerate() {
            let got = sched.lr(base, step as u64, 3, 10);
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-12,
                "{name} step {step}: {got} want {want}"
            );
        }
    }
}
