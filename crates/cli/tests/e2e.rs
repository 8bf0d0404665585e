//! End to end through the `seek` binary on the real sample models
//! (`scripts/fetch-sample-models.sh` puts them in `models/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn models_dir() -> PathBuf {
    std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn model(name: &str) -> String {
    let p = models_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-sample-models.sh first",
        p.display()
    );
    p.display().to_string()
}

const QWEN: &str = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf";
const SMOL: &str = "SmolLM2-135M-Instruct-Q4_1.gguf";
const R1: &str = "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf";

fn seek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seek"))
        .args(args)
        .env("SEEK_THREADS", "2")
        .output()
        .expect("seek runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let o = seek(args);
    assert!(o.status.success(), "seek {args:?} failed: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&o)))
}

#[test]
fn chat_model_answers_a_factual_question() {
    let q = model(QWEN);
    let j = run_json(&[
        "run",
        &q,
        "What is the capital of France? Answer in one sentence.",
        "-t",
        "0",
        "-n",
        "32",
        "--json",
    ]);
    let content = j["content"].as_str().unwrap();
    assert!(content.contains("Paris"), "answer: {content:?}");
    assert_eq!(j["finish_reason"], "stop", "{j}");
    assert!(j["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(j["timings"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    // Not a reasoning model: no reasoning block.
    assert!(j["reasoning_content"].is_null(), "{j}");
}

#[test]
fn same_seed_same_output_and_streaming_matches_json() {
    let s = model(SMOL);
    let args = [
        "run",
        &s,
        "Write a haiku about the sea.",
        "-t",
        "0.9",
        "--seed",
        "42",
        "-n",
        "24",
    ];
    let a = run_json(&[&args[..], &["--json"]].concat());
    let b = run_json(&[&args[..], &["--json"]].concat());
    assert_eq!(a["content"], b["content"]);
    let c = run_json(&[
        "run",
        &s,
        "Write a haiku about the sea.",
        "-t",
        "0.9",
        "--seed",
        "7",
        "-n",
        "24",
        "--json",
    ]);
    assert_ne!(
        a["content"], c["content"],
        "different seeds gave the same 24 tokens"
    );
    // The streamed text (stdout, not a terminal) is the JSON content plus a newline.
    let streamed = seek(&args);
    assert!(streamed.status.success(), "{}", stderr(&streamed));
    assert_eq!(
        stdout(&streamed).trim_end(),
        a["content"].as_str().unwrap().trim_end()
    );
    assert!(
        stderr(&streamed).contains("tok/s"),
        "stats line missing: {}",
        stderr(&streamed)
    );
}

#[test]
fn stop_strings_end_generation_without_being_printed() {
    let q = model(QWEN);
    let j = run_json(&[
        "run",
        &q,
        "Count from 1 to 20, separated by commas.",
        "-t",
        "0",
        "-n",
        "64",
        "--stop",
        "7",
        "--json",
    ]);
    let content = j["content"].as_str().unwrap();
    assert!(
        content.contains('6') && !content.contains('7'),
        "{content:?}"
    );
    assert_eq!(j["finish_reason"], "stop");
}

#[test]
fn truncated_r1_file_inspects_and_tokenizes_but_refuses_to_run() {
    let r1 = model(R1);
    let o = seek(&["inspect", &r1]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("qwen2") && text.contains("TRUNCATED"),
        "{text}"
    );
    assert!(
        text.contains("deepseek-r1-qwen") && text.contains("reasoning model"),
        "{text}"
    );

    let o = seek(&["tokenize", &r1, "<｜User｜>Hi<｜Assistant｜><think>\n"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<u32> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        ids.first(),
        Some(&151644),
        "<｜User｜> is one token: {ids:?}"
    );
    assert!(ids.contains(&151645) && ids.contains(&151648), "{ids:?}");

    let o = seek(&["run", &r1, "hi"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("truncated") && err.contains("download it again"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_model_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        ("empty.gguf", b"", "truncated or corrupt"),
        (
            "text.gguf",
            b"hello, this is not a model at all",
            "not a GGUF file",
        ),
        (
            "v1.gguf",
            b"GGUF\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            "version 1",
        ),
    ];
    for (name, bytes, expected) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let o = seek(&["run", p.to_str().unwrap(), "hi"]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        let err = stderr(&o);
        assert!(
            err.contains(expected) && err.contains(name),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // A folder without config.json.
    let empty = tempfile::tempdir().unwrap();
    let o = seek(&["inspect", empty.path().to_str().unwrap()]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("config.json"), "{err}");
    // A repo id when the hub is unreachable, or a path that does not exist.
    let o = seek(&["inspect", "./no/such/model.gguf"]);
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
}

#[test]
fn logits_writes_every_position() {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/gguf/tiny-qwen2.f32.gguf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.npy");
    let o = seek(&[
        "logits",
        tiny.to_str().unwrap(),
        "--tokens",
        "1,17,42",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(std::str::from_utf8(&bytes[10..10 + hlen])
        .unwrap()
        .contains("(3, 256)"));
    assert_eq!(bytes.len(), 10 + hlen + 3 * 256 * 4);
    let o = seek(&[
        "logits",
        tiny.to_str().unwrap(),
        "--tokens",
        "1,9999",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("outside the vocabulary"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_lists_every_command() {
    let o = seek(&["--help"]);
    let text = stdout(&o);
    for c in ["run", "chat", "inspect", "tokenize", "logits"] {
        assert!(text.contains(c), "{text}");
    }
}

#[test]
fn unreachable_hub_explains_how_to_pass_a_local_path() {
    // Port 9 on loopback is closed: the hub client fails fast, as it does on an offline machine.
    let cache = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_seek"))
        .args(["inspect", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HOME", cache.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("cannot fetch deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"),
        "{err}"
    );
    assert!(err.contains("pass its path"), "{err}");
}

#[test]
fn chat_keeps_the_conversation() {
    use std::io::Write;
    use std::process::Stdio;
    let q = model(QWEN);
    let mut child = Command::new(env!("CARGO_BIN_EXE_seek"))
        .args(["chat", &q, "-t", "0", "-n", "24"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"My name is Ada. Reply with one short sentence.\nWhat is my name? Reply with one word.\n/exit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let turns: Vec<&str> = out
        .trim()
        .split('\n')
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(turns.len() >= 2, "{out}");
    assert!(
        turns.last().unwrap().contains("Ada"),
        "the second answer should recall the name: {out}"
    );
    assert_eq!(
        stderr(&o).matches("prompt tokens").count(),
        2,
        "one stats line per turn: {}",
        stderr(&o)
    );
}

/// `seek inspect` on DeepSeek-V3's published config.json (no weights): total and active
/// parameters and the latent KV cache, (512 + 64) x 61 layers per token.
#[test]
fn inspect_shows_the_latent_cache_and_active_parameters_of_deepseek_v3() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/deepseek/DeepSeek-V3-config");
    let dir = dir.display().to_string();
    let o = seek(&["inspect", &dir]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("671.03B") && out.contains("36.63B active per token"),
        "{out}"
    );
    assert!(
        out.contains("256 routed (8 per token, 8 groups, top 4) + 1 shared"),
        "{out}"
    );
    assert!(
        out.contains("MLA latent 512 + rope key 64 per layer"),
        "{out}"
    );
    let j = run_json(&["inspect", &dir, "--json"]);
    // f32 on the CPU: (512 + 64) * 61 * 4 bytes
    assert_eq!(j["kv_bytes_per_token"], (512 + 64) * 61 * 4, "{j}");
    assert_eq!(j["architecture"], "deepseek_v3");
}

/// `seek logits` on a DeepSeek-V3 GGUF (`deepseek2`, split `attn_k_b`/`attn_v_b`) writes
/// transformers' logits for the fixture's ids.
#[test]
fn logits_of_a_deepseek_v3_gguf_match_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepseek/gguf");
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("dsv3-qlora-yarn.split.golden.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<String> = golden["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let reference: Vec<f32> = std::fs::read(dir.join(golden["logits_file"].as_str().unwrap()))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("l.npy");
    let o = seek(&[
        "logits",
        dir.join("dsv3-qlora-yarn.split.gguf").to_str().unwrap(),
        "--tokens",
        &ids.join(","),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let ours: Vec<f32> = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(ours.len(), reference.len());
    let diff = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-4, "max abs diff {diff}");
}

/// `seek run` on a DeepSeek-V3 checkpoint (the tiny random one, with R1's tokenizer tokens
/// and chat template): the prompt opens `<think>`, tokens stream as reasoning, and the
/// counts add up. Also from the Q8_0 GGUF of the same weights.
#[test]
fn run_works_on_the_deepseek_v3_architecture() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepseek");
    for m in [
        base.join("dsv3-qlora-yarn"),
        base.join("gguf/dsv3-qlora-yarn.q8_0.gguf"),
    ] {
        let j = run_json(&[
            "run",
            m.to_str().unwrap(),
            "Hello",
            "-n",
            "12",
            "-t",
            "0",
            "--json",
        ]);
        assert_eq!(j["finish_reason"], "length", "{j}");
        assert_eq!(j["usage"]["completion_tokens"], 12, "{j}");
        // The R1 template leaves the answer inside an open <think> block.
        assert_eq!(j["usage"]["reasoning_tokens"], 12, "{j}");
        assert!(j["reasoning_content"].is_string(), "{j}");
    }
}

#[test]
fn run_with_a_json_schema_answers_a_valid_object() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("city.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
            "country": {"type": "string", "maxLength": 20}, "population_millions": {"type": "number", "minimum": 0, "maximum": 100}},
            "required": ["city", "country", "population_millions"], "additionalProperties": false}"#,
    )
    .unwrap();
    let q = model(SMOL);
    let j = run_json(&[
        "run",
        &q,
        "Describe Paris.",
        "-t",
        "0",
        "-n",
        "64",
        "--json",
        "--json-schema",
        schema.to_str().unwrap(),
    ]);
    assert_eq!(j["finish_reason"], "stop", "{j}");
    let v: serde_json::Value =
        serde_json::from_str(j["content"].as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {j}"));
    assert!(v["city"].is_string() && v["country"].is_string(), "{v}");
    let p = v["population_millions"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&p), "{v}");
    // A schema file that is not JSON is a clear error.
    std::fs::write(&schema, "{not json").unwrap();
    let o = seek(&["run", &q, "x", "--json-schema", schema.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--json-schema takes a JSON Schema file"),
        "{}",
        stderr(&o)
    );
    // A regex and a choice, on the same path.
    let j = run_json(&[
        "run",
        &q,
        "Pick a colour.",
        "-t",
        "0",
        "-n",
        "8",
        "--json",
        "--choice",
        "red",
        "--choice",
        "blue",
    ]);
    assert!(
        ["red", "blue"].contains(&j["content"].as_str().unwrap()),
        "{j}"
    );
}
