//! Resuming a killed run, on a real (tiny) model through Seek's own pipeline: the DeepSeek-V3
//! test fixture (`tests/fixtures/deepseek/dsv3-qlora-yarn`, random weights, real MLA/MoE
//! layout and chat template) behind a `LocalTarget`. A second run recomputes nothing; after
//! the last sample line is deleted (a kill while writing it) exactly that item is redone.
//!
//! The fixture's context window is 256 tokens, shorter than most GSM8K problems in its
//! tokenizer, so the test points `SEEK_EVAL_DATA` at a copy of `data/` with two short
//! GSM8K-style problems and one too long (recorded as an error sample, not a failed run). It is
//! one test so that the environment is set before any other thread runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seek_engine::serve::{EngineConfig, EngineHandle};
use seek_eval::overrefusal::{overrefusal, OverRefusalOptions};
use seek_eval::reliability::{reliability, Dataset, ReliabilityOptions};
use seek_eval::run::RunConfig;
use seek_eval::target::{ChatRequest, LocalTarget, Reply, Target};
use seek_eval::EvalError;
use seek_tokenizer::Tokenizer;

/// A real target that counts the chats it answers.
struct Counting {
    inner: LocalTarget,
    chats: AtomicUsize,
}

impl Target for Counting {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn chat(&self, req: &ChatRequest) -> Result<Reply, EvalError> {
        self.chats.fetch_add(1, Ordering::SeqCst);
        self.inner.chat(req)
    }
}

fn target() -> Counting {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepseek/dsv3-qlora-yarn");
    let loaded = seek_models::load(&dir, &Default::default()).unwrap();
    let tokenizer = Arc::new(Tokenizer::from_hf_dir(&dir).unwrap());
    let engine =
        EngineHandle::start(loaded.model, tokenizer.clone(), EngineConfig::default()).unwrap();
    Counting {
        inner: LocalTarget {
            label: "dsv3-fixture".into(),
            engine,
            tokenizer,
            policy: None,
            grammars: Default::default(),
        },
        chats: AtomicUsize::new(0),
    }
}

fn config(out: &Path) -> RunConfig {
    RunConfig {
        out: out.to_path_buf(),
        concurrency: 2,
        max_requests: None,
        max_tokens_total: None,
        max_cost_usd: None,
        prices_per_million: (0.0, 0.0),
        progress: false,
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn drop_last_line(path: &PathBuf) {
    let mut l = lines(path);
    l.pop();
    std::fs::write(path, l.iter().map(|x| format!("{x}\n")).collect::<String>()).unwrap();
}

/// A data folder with short GSM8K problems, one too long for the fixture, and XSTest as shipped.
fn data_dir(root: &Path) -> PathBuf {
    let real = seek_eval::data::data_dir();
    let dir = root.join("data");
    for (sub, file) in [
        ("xstest", "xstest_prompts.csv"),
        ("judge", "xstest_refusal_classifiers.json"),
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::copy(real.join(sub).join(file), dir.join(sub).join(file)).unwrap();
    }
    std::fs::create_dir_all(dir.join("gsm8k")).unwrap();
    let long = "Tom has many apples and counts them again and again. ".repeat(30);
    let problems = [
        ("What is 2 + 3?", "2 + 3 = <<2+3=5>>5\n#### 5"),
        ("What is 4 * 5?", "4 * 5 = <<4*5=20>>20\n#### 20"),
        (long.as_str(), "#### 1,000"),
    ];
    let text: String = problems
        .iter()
        .map(|(q, a)| serde_json::json!({"question": q, "answer": a}).to_string() + "\n")
        .collect();
    std::fs::write(dir.join("gsm8k/test.jsonl"), text).unwrap();
    dir
}

#[test]
fn suites_resume_without_recomputing() {
    let tmp = tempfile::tempdir().unwrap();
    std::env::set_var("SEEK_EVAL_DATA", data_dir(tmp.path()));
    reliability_resumes(&tmp.path().join("out"));
    overrefusal_resumes(&tmp.path().join("out"));
}

fn reliability_resumes(out: &Path) {
    let t = target();
    let cfg = config(out);
    let opts = ReliabilityOptions {
        datasets: vec![Dataset::Gsm8k],
        limit: Some(3),
        sample_seed: 1,
        seeds: 1,
        max_tokens: 4,
        temperature: 0.0,
    };
    let first = reliability(&t, &cfg, &opts).unwrap();
    assert_eq!(t.chats.load(Ordering::SeqCst), 3);
    assert_eq!(first.overall.problems, 3);
    assert_eq!(first.overall.errors, 1, "{first:#?}");
    assert!(first.overall.budget_hit >= 1.0 / 3.0, "{first:#?}");
    let dir = out.join("reliability");
    let samples = dir.join("samples.jsonl");
    let summary_text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    assert_eq!(lines(&samples).len(), 3);

    // Everything is done: nothing is asked again, and the summary is the same.
    let second = reliability(&t, &cfg, &opts).unwrap();
    assert_eq!(t.chats.load(Ordering::SeqCst), 3);
    assert_eq!(second, first);
    assert_eq!(lines(&samples).len(), 3);
    assert_eq!(
        std::fs::read_to_string(dir.join("summary.json")).unwrap(),
        summary_text
    );

    // A kill lost the last line: exactly that item is redone, and (greedy) comes out the same.
    drop_last_line(&samples);
    let third = reliability(&t, &cfg, &opts).unwrap();
    assert_eq!(t.chats.load(Ordering::SeqCst), 4);
    assert_eq!(lines(&samples).len(), 3);
    assert_eq!(third, first);
    t.inner.engine.shutdown(Duration::from_secs(5));
}

fn overrefusal_resumes(out: &Path) {
    let t = target();
    let cfg = config(out);
    let opts = OverRefusalOptions {
        limit: Some(1),
        max_tokens: 4,
        temperature: 0.0,
        ..Default::default()
    };
    let first = overrefusal(&t, &cfg, &opts).unwrap();
    assert_eq!((first.safe.prompts, first.unsafe_.prompts), (1, 1));
    assert_eq!(first.safe.errors + first.unsafe_.errors, 0);
    let samples = out.join("overrefusal/samples.jsonl");
    assert_eq!(lines(&samples).len(), 2);
    assert_eq!(overrefusal(&t, &cfg, &opts).unwrap(), first);
    assert_eq!(t.chats.load(Ordering::SeqCst), 2);
    drop_last_line(&samples);
    assert_eq!(overrefusal(&t, &cfg, &opts).unwrap(), first);
    assert_eq!(t.chats.load(Ordering::SeqCst), 3);
    assert_eq!(lines(&samples).len(), 2);
    t.inner.engine.shutdown(Duration::from_secs(5));
}
