//! Untrusted model files: every problem is an error naming the file and the fix, never a panic.

use std::path::Path;

use seek_gguf::writer::GgufWriter;
use seek_gguf::Value;
use seek_models::{load, LoadOptions};

fn golden(dir: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(dir)
}

fn load_err(path: &Path) -> String {
    match load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    let bytes = GgufWriter::new()
        .meta("general.architecture", Value::String("mamba".into()))
        .to_bytes();
    std::fs::write(&p, bytes).unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("\"mamba\" is not supported") && e.contains("qwen2"),
        "{e}"
    );

    let cfg = dir.path().join("hf");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(cfg.join("config.json"), r#"{"model_type": "gpt_oss"}"#).unwrap();
    let e = load_err(&cfg);
    assert!(
        e.contains("\"gpt_oss\" is not supported") && e.contains("deepseek_v3"),
        "{e}"
    );
    // A known architecture with fields missing names the first one.
    std::fs::write(cfg.join("config.json"), r#"{"model_type": "deepseek_v3"}"#).unwrap();
    let e = load_err(&cfg);
    assert!(e.contains("missing field `vocab_size`"), "{e}");
}

#[test]
fn missing_hyperparameters_and_wrong_shapes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    let bytes = GgufWriter::new()
        .meta("general.architecture", Value::String("llama".into()))
        .to_bytes();
    std::fs::write(&p, bytes).unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("llama.attention.head_count") && e.contains("m.gguf"),
        "{e}"
    );

    // A config whose hidden size disagrees with the weights.
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    let src = golden("tiny-llama");
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 64");
    std::fs::write(hf.join("config.json"), cfg).unwrap();
    std::fs::copy(src.join("model.safetensors"), hf.join("model.safetensors")).unwrap();
    let e = load_err(&hf);
    assert!(e.contains("mlp") && e.contains("shape"), "{e}");
}

#[test]
fn corrupt_safetensors_and_configs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = golden("tiny-llama");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();

    // Truncated weights.
    std::fs::write(
        dir.path().join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("safetensors"), "{e}");

    // A header length far beyond the file.
    let mut bad = weights.clone();
    bad[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(dir.path().join("model.safetensors"), &bad).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("safetensors"), "{e}");

    // Config values no model has.
    std::fs::write(dir.path().join("model.safetensors"), &weights).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("num_key_value_heads"), "{e}");
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("JSON"), "{e}");
}

#[test]
fn index_cannot_point_outside_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let src = golden("tiny-llama-sharded");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"lm_head.weight": "../../etc/passwd.safetensors"}}"#,
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("not a plain"), "{e}");
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"lm_head.weight": "model-00009-of-00009.safetensors"}}"#,
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("download every shard"), "{e}");
}
