//! `seek inspect` and `seek run` on a GGUF model split into parts (llama.cpp's
//! `NAME-00001-of-00003.gguf` naming): the parts are listed, the model runs from the first
//! part's path and gives the whole file's greedy answer; a missing part is named.

use std::path::{Path, PathBuf};
use std::process::Command;

use seek_gguf::{split_path, GgufFile};

fn models_dir() -> PathBuf {
    std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn seek(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_seek"))
        .args(args)
        .env("SEEK_THREADS", "2")
        .output()
        .unwrap()
}

#[test]
fn a_split_model_is_listed_runs_and_a_missing_part_is_named() {
    let whole = models_dir().join("SmolLM2-135M-Instruct-Q4_1.gguf");
    let parts = seek_gguf::writer::GgufWriter::copy_of(&GgufFile::open(&whole).unwrap())
        .unwrap()
        .to_split_bytes(3);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("smol-00001-of-00003.gguf");
    for (k, bytes) in parts.iter().enumerate() {
        std::fs::write(split_path(&first, k as u64, 3).unwrap(), bytes).unwrap();
    }
    let o = seek(&["inspect", first.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["parts"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["complete_percent"].as_f64().unwrap().round(), 100.0);
    let run = |model: &Path| {
        let o = seek(&[
            "run",
            model.to_str().unwrap(),
            "What is the capital of France?",
            "-n",
            "8",
            "-t",
            "0",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(run(&first), run(&whole));
    std::fs::remove_file(split_path(&first, 1, 3).unwrap()).unwrap();
    let o = seek(&["inspect", first.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("part 2 of 3") && err.contains("missing"),
        "{err}"
    );
}

/// `--no-mmap` (the file copied into memory) answers as the mapped file does; `--mlock` either
/// locks the weights or, where `ulimit -l` is too small, says so and how to fix it.
#[test]
fn no_mmap_and_mlock_run_the_same_model() {
    let whole = models_dir().join("SmolLM2-135M-Instruct-Q4_1.gguf");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            whole.to_str().unwrap(),
            "What is the capital of France?",
            "-n",
            "8",
            "-t",
            "0",
        ];
        args.extend_from_slice(extra);
        seek(&args)
    };
    let mapped = run(&[]);
    assert!(mapped.status.success());
    let copied = run(&["--no-mmap"]);
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    assert_eq!(copied.stdout, mapped.stdout);
    let locked = run(&["--mlock"]);
    if locked.status.success() {
        assert_eq!(locked.stdout, mapped.stdout);
    } else {
        let err = String::from_utf8_lossy(&locked.stderr);
        assert!(
            err.contains("cannot lock") && err.contains("ulimit -l"),
            "{err}"
        );
    }
}
