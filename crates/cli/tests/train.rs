//! `seek train` as a user runs it, on the miniature R1-Distill-Qwen
//! (tests/fixtures/train/tiny-r1-qwen2): a TRL command pasted in, a TOML recipe under flags,
//! the adapter used by `seek run`, `seek logits` and `seek serve --lora`, export, and
//! distillation's rejection sampling.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn tiny() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/train/tiny-r1-qwen2")
        .display()
        .to_string()
}

fn seek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seek"))
        .args(args)
        .env("SEEK_THREADS", "2")
        .output()
        .expect("seek runs")
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "seek failed: {err}");
    err
}

fn data(dir: &Path) -> PathBuf {
    let p = dir.join("data.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("{}+{}?", i, i + 1)},
                {"role": "assistant", "content": format!("{}", 2 * i + 1)},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

fn metrics_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn a_trl_command_pastes_in_and_its_adapter_runs_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let out = dir.path().join("out");
    let (d, o) = (d.display().to_string(), out.display().to_string());
    // TRL's spelling, as in its docs.
    let log = ok(&seek(&[
        "train",
        "sft",
        "--model_name_or_path",
        &tiny(),
        "--dataset_name",
        &d,
        "--output_dir",
        &o,
        "--learning_rate",
        "2e-2",
        "--max_steps",
        "3",
        "--use_peft",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
    ]));
    assert!(log.contains("step     3/3"), "{log}");
    assert_eq!(metrics_lines(&out), 3);
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "report.html",
        "checkpoint-3/optimizer.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The adapter changes the logits `seek logits` writes.
    let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    ok(&seek(&[
        "logits",
        &tiny(),
        "--tokens",
        "0,5,17,200",
        "--out",
        a.to_str().unwrap(),
    ]));
    ok(&seek(&[
        "logits",
        &tiny(),
        "--tokens",
        "0,5,17,200",
        "--out",
        b.to_str().unwrap(),
        "--lora",
        &o,
    ]));
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // `seek run --lora` answers; a folder that is not an adapter is refused by name.
    ok(&seek(&[
        "run",
        &tiny(),
        "--lora",
        &o,
        "1+2?",
        "--max-tokens",
        "4",
        "--temperature",
        "0",
    ]));
    let bad = seek(&["run", &tiny(), "--lora", &d, "1+2?"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("adapter_config.json"));
    // Merged into a Hugging Face folder, it runs without the adapter.
    let merged = dir.path().join("merged");
    ok(&seek(&[
        "train",
        "export",
        "--base",
        &tiny(),
        "--lora",
        &o,
        "--merged_dir",
        merged.to_str().unwrap(),
    ]));
    let c = dir.path().join("c.npy");
    ok(&seek(&[
        "logits",
        merged.to_str().unwrap(),
        "--tokens",
        "0,5,17,200",
        "--out",
        c.to_str().unwrap(),
    ]));
    let (vb, vc) = (npy(&b), npy(&c));
    let diff = vb
        .iter()
        .zip(&vc)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff < 1e-4, "merged vs adapter logits differ by {diff}");
}

/// The float32 values of a .npy file `seek logits` wrote.
fn npy(p: &Path) -> Vec<f32> {
    let bytes = std::fs::read(p).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn a_toml_recipe_takes_flags_over_it_and_names_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let out = dir.path().join("out");
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "model_name_or_path = {:?}\ndataset_name = {:?}\noutput_dir = {:?}\nlearning_rate = 1e-3\nmax_steps = 4\nper_device_train_batch_size = 2\nlr_scheduler_type = \"cosine\"\nwarmup_ratio = 0.25\n",
            tiny(),
            d.display().to_string(),
            out.display().to_string()
        ),
    )
    .unwrap();
    ok(&seek(&[
        "train",
        "sft",
        "--config",
        recipe.to_str().unwrap(),
        "--max_steps",
        "2",
    ]));
    assert_eq!(metrics_lines(&out), 2, "the flag wins over the recipe");
    std::fs::write(&recipe, "learning_rat = 1e-3\n").unwrap();
    let bad = seek(&["train", "sft", "--config", recipe.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("learning_rat") && err.contains("recipe.toml"),
        "{err}"
    );
}

#[test]
fn serve_lora_serves_the_adapter_under_its_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(dir.path());
    let out = dir.path().join("out");
    ok(&seek(&[
        "train",
        "sft",
        "--model_name_or_path",
        &tiny(),
        "--dataset_name",
        d.to_str().unwrap(),
        "--output_dir",
        out.to_str().unwrap(),
        "--max_steps",
        "1",
        "--use_peft",
    ]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_seek"))
        .args([
            "serve",
            &tiny(),
            "--port",
            "0",
            "--served-model-name",
            "base",
        ])
        .arg("--lora")
        .arg(format!("tuned={}", out.display()))
        .env("SEEK_THREADS", "2")
        .env_remove("SEEK_API_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    let url = loop {
        let line = lines.next().expect("the server printed its address");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Ready once every model has loaded (`/health` is 200 from the first one on).
    loop {
        let line = lines.next().expect("the server loaded its models");
        assert!(!line.contains("error"), "{line}");
        if line.contains("ready; serving") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let models: serde_json::Value = ureq::get(&format!("{url}/v1/models"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "tuned"]);
    let r: serde_json::Value = ureq::post(&format!("{url}/v1/chat/completions"))
        .send_json(serde_json::json!({"model": "tuned", "messages": [{"role": "user", "content": "1+2?"}], "max_tokens": 3}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(r["model"], "tuned");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn distill_rejects_what_the_verifier_does_not_accept() {
    let dir = tempfile::tempdir().unwrap();
    let problems = dir.path().join("p.jsonl");
    std::fs::write(
        &problems,
        "{\"question\": \"What is 2 + 2?\", \"answer\": \"4\"}\n{\"question\": \"What is 3 * 3?\", \"answer\": \"9\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let args = [
        "train",
        "distill",
        "--teacher",
        &tiny(),
        "--problems",
        problems.to_str().unwrap(),
        "--num_generations",
        "2",
        "--max_completion_length",
        "6",
        "--output_dir",
        out.to_str().unwrap(),
        "--model_name_or_path",
        &tiny(),
    ];
    // A random tiny teacher answers nothing right: every trace is rejected, and SFT refuses
    // to start on nothing.
    let r = seek(&args);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("accepted no trace"),
        "{err}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("distill_summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        (summary["traces"].as_u64(), summary["accepted"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(
        std::fs::read_to_string(out.join("traces/samples.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    // Run again: every trace is already judged (resumed, nothing resampled).
    let again = seek(&args);
    assert!(String::from_utf8_lossy(&again.stderr).contains("4 of 4 items already done"));
}

/// `seek train grpo` with TRL's spellings runs rollouts through the engine, scores them and
/// updates a LoRA adapter; its metrics carry TRL's names and the step time split; the adapter
/// is written in PEFT's layout. Bad options are errors that name them.
#[test]
fn grpo_runs_as_a_trl_command_and_writes_trls_metrics() {
    let models = std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let smol = models.join("SmolLM2-135M-Instruct-Q4_1.gguf");
    let dir = tempfile::tempdir().unwrap();
    let problems = dir.path().join("problems.jsonl");
    std::fs::write(
        &problems,
        "{\"prompt\": \"What is 2 + 3? Answer with \\\\boxed{}.\", \"solution\": \"5\"}\n{\"question\": \"What is 4 * 4?\", \"answer\": \"16\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "grpo",
            "--model_name_or_path",
            smol.to_str().unwrap(),
            "--dataset_name",
            problems.to_str().unwrap(),
            "--output_dir",
            out.to_str().unwrap(),
            "--reward_funcs",
            "accuracy_reward",
            "think_format_reward",
            "get_soft_overlong_punishment",
            "--num_generations",
            "2",
            "--max_completion_length",
            "8",
            "--learning_rate",
            "1e-4",
            "--max_steps",
            "2",
            "--temperature",
            "1.0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        if !extra.contains(&"--per_device_train_batch_size") {
            v.extend(["--per_device_train_batch_size".to_string(), "4".to_string()]);
        }
        v
    };
    let a = args(&[]);
    let o = seek(&a.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&o);
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for k in [
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "rewards/accuracy_reward/mean",
        "rewards/think_format_reward/mean",
        "rewards/soft_overlong_punishment_reward/mean",
        "completions/mean_length",
        "completions/clipped_ratio",
        "clip_ratio/region_mean",
        "time_generation_s",
        "time_scoring_s",
        "time_training_s",
        "generation_tokens_per_s",
    ] {
        assert!(
            lines[1].get(k).is_some_and(|v| v.is_number()),
            "{k}: {}",
            lines[1]
        );
    }
    assert!(lines[0]["completions/mean_length"].as_f64().unwrap() <= 8.0);
    assert!(
        out.join("adapter_config.json").is_file()
            && out.join("adapter_model.safetensors").is_file()
    );
    for (extra, needle) in [
        (&["--loss_type", "ppo"][..], "--loss_type ppo"),
        (
            &[
                "--gradient_accumulation_steps",
                "3",
                "--per_device_train_batch_size",
                "1",
            ][..],
            "must be at least 2 and divide",
        ),
        (
            &["--num_iterations", "0"][..],
            "num_iterations must be at least 1",
        ),
        (
            &["--reward_on_error", "ignore"][..],
            "--reward_on_error ignore",
        ),
        (
            &["--reward_funcs", "nosuch"][..],
            "unknown reward \"nosuch\"",
        ),
        (
            &["--reward_weights", "1"][..],
            "1 reward weights for 3 reward functions",
        ),
    ] {
        let a = args(extra);
        let o = seek(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!o.status.success(), "{extra:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}

/// The rest of TRL's GRPO options on a real model: an R1-Zero text prompt (no chat template)
/// and a held-out set scored before and after; beta > 0 against the base without the adapter
/// (`kl` logged); num_iterations 2 (two optimizer steps per generation batch); a user's reward
/// as a command; checkpoints, and a run resumed from the latest one that carries on where it
/// stopped. A reward command that fails is reported with its input and counted, not hidden.
#[test]
fn grpo_keeps_a_reference_iterates_resumes_and_reports_failed_rewards() {
    let models = std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let smol = models.join("SmolLM2-135M-Instruct-Q4_1.gguf");
    let dir = tempfile::tempdir().unwrap();
    let tasks = dir.path().join("tasks.jsonl");
    let o = seek(&[
        "rewards",
        "tasks",
        "arithmetic",
        "--n",
        "6",
        "--seed",
        "3",
        "--out",
        tasks.to_str().unwrap(),
    ]);
    ok(&o);
    let held = dir.path().join("held.jsonl");
    let o = seek(&[
        "rewards",
        "tasks",
        "arithmetic",
        "--n",
        "3",
        "--seed",
        "4",
        "--exclude",
        tasks.to_str().unwrap(),
        "--out",
        held.to_str().unwrap(),
    ]);
    ok(&o);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&tasks)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(first["prompt"]
        .as_str()
        .unwrap()
        .ends_with("Assistant: <think>"));
    // A user's reward: 1 for a completion under 20 characters.
    let script = dir.path().join("short.py");
    std::fs::write(
        &script,
        "import json, sys\nd = json.load(sys.stdin)\nassert len(d['completions']) == len(d['rows'])\nprint(json.dumps({'rewards': [float(len(c) < 20) for c in d['completions']]}))\n",
    )
    .unwrap();
    let user_reward = format!("cmd:python3 {}", script.display());
    let out = dir.path().join("out");
    let args = |max_steps: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "grpo",
            "--model_name_or_path",
            smol.to_str().unwrap(),
            "--dataset_name",
            tasks.to_str().unwrap(),
            "--eval_dataset",
            held.to_str().unwrap(),
            "--output_dir",
            out.to_str().unwrap(),
            "--reward_funcs",
            "accuracy_reward",
            "think_format_reward",
            &user_reward,
            "--num_generations",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--max_completion_length",
            "8",
            "--learning_rate",
            "1e-3",
            "--beta",
            "0.04",
            "--num_iterations",
            "2",
            "--save_steps",
            "2",
            "--max_steps",
            max_steps,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = args("2", &[]);
    ok(&seek(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let lines = read();
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    let evals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("eval_reward").is_some())
        .collect();
    assert_eq!(steps.len(), 2);
    assert_eq!(
        evals
            .iter()
            .map(|e| e["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 2]
    );
    assert_eq!(evals[0]["eval_samples"], 3);
    assert!(evals[1]["eval_rewards/accuracy_reward/mean"].is_number());
    // One generation batch, two passes: the second step has no generation time of its own, and
    // its policy moved after the first update, so the reference's KL is positive.
    assert!(steps[0]["time_generation_s"].as_f64().unwrap() > 0.0);
    assert_eq!(steps[1]["time_generation_s"].as_f64().unwrap(), 0.0);
    assert!(steps[1]["kl"].as_f64().unwrap() > 0.0, "{}", steps[1]);
    let key = format!("rewards/{user_reward}/mean");
    assert!(steps[0][&key].is_number(), "{}", steps[0]);
    assert!(out.join("checkpoint-2/trainer_state.json").is_file());
    assert!(out.join("checkpoint-2/optimizer.safetensors").is_file());
    // Resume to step 4: steps 3 and 4 follow 1 and 2, once each.
    let a = args("4", &["--resume_from_checkpoint"]);
    ok(&seek(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let steps: Vec<u64> = read()
        .iter()
        .filter(|l| l.get("loss").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    assert!(out.join("checkpoint-4").is_dir());
    // report.html draws the run: reward and held-out curves, the time split, samples.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for needle in [
        "Held-out problems, greedy",
        "eval_rewards/accuracy_reward/mean",
        "time_generation_s",
        "Sample completions",
        "<svg",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
    std::fs::remove_file(out.join("report.html")).unwrap();
    ok(&seek(&[
        "train",
        "report",
        "--output_dir",
        out.to_str().unwrap(),
    ]));
    assert!(std::fs::read_to_string(out.join("report.html"))
        .unwrap()
        .contains("Held-out problems, greedy"));
    // A reward command that fails: named on stderr with the completion it got, counted, and
    // the run goes on with that function left out.
    let fresh = dir.path().join("failing");
    let o = seek(&[
        "train",
        "grpo",
        "--model_name_or_path",
        smol.to_str().unwrap(),
        "--dataset_name",
        tasks.to_str().unwrap(),
        "--output_dir",
        fresh.to_str().unwrap(),
        "--reward_funcs",
        "accuracy_reward",
        "cmd:false",
        "--num_generations",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--max_completion_length",
        "8",
        "--max_steps",
        "1",
    ]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("reward error: cmd:false: exited with"),
        "{err}"
    );
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(fresh.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["reward_errors"], 1);
}
