//! `seek train sft` end to end on a miniature R1-Distill-Qwen (tests/fixtures/train/tiny-r1-qwen2:
//! a tiny random Qwen2 with a byte-level BPE and DeepSeek-R1's chat template): how examples are
//! rendered and masked, bad data, learning, checkpoints that resume to the same losses, a
//! diverging run stopping, and the outputs loading back.

use std::path::{Path, PathBuf};

use seek_models::autograd::{Batch, Ctx};
use seek_models::{load, LoadOptions};
use seek_train::data::{load_jsonl, DataConfig, Overlong};
use seek_train::report::read_metrics;
use seek_train::sft::{run, setup, tokenizer_for, Progress, Quiet, SftConfig};
use seek_train::TrainError;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train/tiny-r1-qwen2")
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// Small arithmetic conversations with R1-style reasoning.
fn arithmetic(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (a, b) = (i % 7 + 1, i % 5 + 2);
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("{a}+{b}?")},
                {"role": "assistant", "reasoning_content": format!("{a} plus {b}"), "content": format!("{}", a + b)},
            ]})
            .to_string()
        })
        .collect()
}

fn tokenizer() -> seek_tokenizer::Tokenizer {
    tokenizer_for(&seek_models::ModelFormat::HfDir(model_dir())).unwrap()
}

fn data_cfg() -> DataConfig {
    DataConfig {
        max_length: 128,
        overlong: Overlong::Drop,
        completion_only_loss: true,
    }
}

#[test]
fn r1_examples_render_as_seek_run_prompts_with_the_loss_on_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer();
    let p = write(
        dir.path(),
        "d.jsonl",
        &[
            serde_json::json!({"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "reasoning_content": "two and two", "content": "4"},
            ]})
            .to_string(),
            // The same answer given as a <think> block inside the content.
            serde_json::json!({"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>\ntwo and two\n</think>\n\n4"},
            ]})
            .to_string(),
        ],
    );
    let ds = load_jsonl(&p, &tok, &data_cfg()).unwrap();
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(
        ds.examples[0],
        seek_train::data::Example {
            line: 1,
            ..ds.examples[1].clone()
        }
    );
    let ex = &ds.examples[0];
    let text = tok.decode(&ex.input_ids, false).unwrap();
    assert_eq!(
        text,
        "<｜begin▁of▁sentence｜><｜User｜>Be brief.\n\n2+2?<｜Assistant｜><think>\ntwo and two\n</think>\n\n4<｜end▁of▁sentence｜>"
    );
    // The learned tokens are exactly those after "<think>\n".
    let first = ex.labels.iter().position(Option::is_some).unwrap();
    let learned: Vec<u32> = ex.labels.iter().flatten().copied().collect();
    assert_eq!(
        tok.decode(&learned, false).unwrap(),
        "two and two\n</think>\n\n4<｜end▁of▁sentence｜>"
    );
    assert!(tok
        .decode(&ex.input_ids[..=first], false)
        .unwrap()
        .ends_with("<think>\n"));
}

#[test]
fn bad_data_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer();
    let cases = [
        ("{\"prompt\": \"x\"}", "without a completion"),
        ("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", "no assistant message"),
        ("{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"x\"}]}", "wizard"),
        ("{\"foo\": 1}", "TRL's dataset formats"),
        ("not json", "not a JSON object"),
    ];
    for (line, want) in cases {
        let p = write(
            dir.path(),
            "bad.jsonl",
            &[arithmetic(1)[0].clone(), line.to_string()],
        );
        let err = load_jsonl(&p, &tok, &data_cfg()).unwrap_err().to_string();
        assert!(
            err.contains("bad.jsonl:2:") && err.contains(want),
            "{line}: {err}"
        );
    }
    // Too long: dropped and counted, or truncated, per the setting.
    let long = serde_json::json!({"prompt": "x".repeat(400), "completion": "y"}).to_string();
    let p = write(dir.path(), "long.jsonl", &[arithmetic(1)[0].clone(), long]);
    let ds = load_jsonl(&p, &tok, &data_cfg()).unwrap();
    assert_eq!((ds.examples.len(), ds.dropped_overlong), (1, 1));
    let cfg = DataConfig {
        overlong: Overlong::Truncate,
        completion_only_loss: false,
        ..data_cfg()
    };
    let ds = load_jsonl(&p, &tok, &cfg).unwrap();
    assert_eq!((ds.examples.len(), ds.truncated), (2, 1));
    assert_eq!(ds.examples[1].input_ids.len(), 128);
}

/// Stops a run after `n` steps, as Ctrl-C or a killed process would.
struct StopAfter(u64, u64);

impl Progress for StopAfter {
    fn step(&mut self, rec: &seek_train::report::StepRecord, _max: u64) {
        self.1 = rec.step;
    }
    fn note(&mut self, _msg: &str) {}
    fn should_stop(&mut self) -> bool {
        self.1 >= self.0
    }
}

fn config(dir: &Path, data: &Path) -> SftConfig {
    SftConfig {
        model_name_or_path: model_dir().display().to_string(),
        dataset_name: data.display().to_string(),
        output_dir: dir.join("out").display().to_string(),
        learning_rate: 3e-3,
        max_steps: 6,
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 2,
        max_length: 64,
        logging_steps: 0,
        save_steps: 3,
        ..SftConfig::default()
    }
}

#[test]
fn full_fine_tuning_learns_and_resumes_to_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "d.jsonl", &arithmetic(10));
    let mut cfg = config(dir.path(), &data);
    cfg.max_steps = 30;
    cfg.save_steps = 0;
    cfg.lr_scheduler_type = seek_train::optim::Schedule::Constant;
    let s = setup(&cfg, &LoadOptions::default()).unwrap();
    run(&cfg, &s, &mut Quiet).unwrap();
    let m = read_metrics(&Path::new(&cfg.output_dir).join("metrics.jsonl")).unwrap();
    assert_eq!(m.len(), 30);
    let (first, last) = (m[0].loss, m[29].loss);
    assert!(last < first * 0.5, "loss {first} -> {last}");

    // Interrupted at step 3 and resumed: the same losses as straight through.
    let straight = tempfile::tempdir().unwrap();
    let cfg = config(straight.path(), &data);
    run(
        &cfg,
        &setup(&cfg, &LoadOptions::default()).unwrap(),
        &mut Quiet,
    )
    .unwrap();
    let want = read_metrics(&Path::new(&cfg.output_dir).join("metrics.jsonl")).unwrap();

    let resumed = tempfile::tempdir().unwrap();
    let mut cfg = config(resumed.path(), &data);
    cfg.save_steps = 0;
    let s = run(
        &cfg,
        &setup(&cfg, &LoadOptions::default()).unwrap(),
        &mut StopAfter(4, 0),
    )
    .unwrap();
    assert_eq!(s.steps, 4);
    cfg.resume_from_checkpoint = Some("latest".into());
    run(
        &cfg,
        &setup(&cfg, &LoadOptions::default()).unwrap(),
        &mut Quiet,
    )
    .unwrap();
    let got = read_metrics(&Path::new(&cfg.output_dir).join("metrics.jsonl")).unwrap();
    assert_eq!(got.len(), 6);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.step, w.step);
        assert!(
            (g.loss - w.loss).abs() < 1e-6,
            "step {}: {} vs {}",
            g.step,
            g.loss,
            w.loss
        );
    }
    let out = Path::new(&cfg.output_dir);
    assert!(out.join("checkpoint-6/optimizer.safetensors").is_file());
    assert!(out.join("report.html").is_file());

    // The result is a model folder Seek runs: its logits are the trained weights'.
    let trained = load(out, &LoadOptions::default()).unwrap().model;
    let again = setup(
        &SftConfig {
            model_name_or_path: out.display().to_string(),
            resume_from_checkpoint: None,
            ..cfg.clone()
        },
        &LoadOptions::default(),
    )
    .unwrap();
    let ids = [0u32, 5, 17, 200, 3];
    let batch = Batch::from_rows(&[(ids.to_vec(), vec![None; 5])]).unwrap();
    let a = again.model.logits(&batch, &mut Ctx::eval()).unwrap();
    let input = candle_core::Tensor::new(&ids, trained.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let b = trained.forward(&input, &mut trained.new_cache()).unwrap();
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-4, "{d}");
}

#[test]
fn lora_writes_a_peft_adapter_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "d.jsonl", &arithmetic(8));
    let mut cfg = config(dir.path(), &data);
    cfg.use_peft = true;
    cfg.lora_r = 4;
    cfg.lora_alpha = 8.0;
    cfg.lora_target_modules = vec!["all-linear".into()];
    let s = setup(&cfg, &LoadOptions::default()).unwrap();
    let summary = run(&cfg, &s, &mut Quiet).unwrap();
    assert_eq!(summary.steps, 6);
    let out = Path::new(&cfg.output_dir);
    let (lora, tensors) = seek_train::peft::read_adapter(out).unwrap();
    assert_eq!((lora.r, lora.alpha), (4, 8.0));
    assert_eq!(tensors.len(), 2 * 7 * 2);
    assert!(tensors.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    // Losses of a resumed LoRA run equal a straight one's.
    let want = read_metrics(&out.join("metrics.jsonl")).unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let mut c2 = cfg.clone();
    c2.output_dir = d2.path().join("out").display().to_string();
    run(
        &c2,
        &setup(&c2, &LoadOptions::default()).unwrap(),
        &mut StopAfter(3, 0),
    )
    .unwrap();
    c2.resume_from_checkpoint = Some(
        Path::new(&c2.output_dir)
            .join("checkpoint-3")
            .display()
            .to_string(),
    );
    run(
        &c2,
        &setup(&c2, &LoadOptions::default()).unwrap(),
        &mut Quiet,
    )
    .unwrap();
    let got = read_metrics(&Path::new(&c2.output_dir).join("metrics.jsonl")).unwrap();
    assert_eq!(got.len(), 6);
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g.loss - w.loss).abs() < 1e-6,
            "step {}: {} vs {}",
            g.step,
            g.loss,
            w.loss
        );
    }
}

#[test]
fn a_diverging_run_stops_and_names_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "d.jsonl", &arithmetic(8));
    let mut cfg = config(dir.path(), &data);
    cfg.learning_rate = 1e12;
    cfg.max_grad_norm = 0.0;
    cfg.save_steps = 1;
    cfg.max_steps = 20;
    let err = run(
        &cfg,
        &setup(&cfg, &LoadOptions::default()).unwrap(),
        &mut Quiet,
    )
    .unwrap_err();
    let TrainError::Diverged {
        step, last_good, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert!(*step >= 2, "{err}");
    assert!(
        last_good.ends_with(&format!("checkpoint-{}", step - 1)),
        "{err}"
    );
    assert!(Path::new(last_good).join("model.safetensors").is_file());
}
