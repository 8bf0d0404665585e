//! `seek eval redteam` end to end against a `seek serve` on loopback (the tiny DeepSeek-V3
//! fixture, so no download is needed): samples and summary are written, counts add up, and a
//! second run resumes instead of recomputing; a run killed after a few samples (a torn last
//! line) redoes only what is missing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(clippy::zombie_processes)] // `Server`'s drop kills and waits for it
fn start_server() -> (Server, String) {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepseek/dsv3-qlora-yarn");
    let mut child = Command::new(env!("CARGO_BIN_EXE_seek"))
        .args([
            "serve",
            fixture.to_str().unwrap(),
            "--port",
            "0",
            "--served-model-name",
            "tiny",
        ])
        .env("SEEK_THREADS", "2")
        .env_remove("SEEK_API_KEY")
        .env_remove("SEEK_AUDIT_DB")
        .stderr(Stdio::piped())
        .spawn()
        .expect("seek runs");
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("an address is printed");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    for _ in 0..12_000 {
        if ureq::get(&format!("{url}/health")).call().is_ok() {
            return (Server(child), url);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the server never became ready");
}

fn eval(url: &str, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_seek"))
        .args([
            "eval",
            "redteam",
            "--url",
            &format!("{url}/v1"),
            "--served-model",
            "tiny",
            "--limit",
            "3",
            "--attacks",
            "direct,base64",
            "--max-tokens",
            "8",
            "--concurrency",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .expect("seek runs")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn redteam_against_a_live_server_writes_resumable_results() {
    let (_server, url) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let o = eval(&url, dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let samples = dir.path().join("redteam/samples.jsonl");
    let first = lines(&samples);
    assert_eq!(first.len(), 6, "3 behaviors x 2 attacks");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("redteam/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["behaviors"], 3);
    assert_eq!(summary["runs"][0]["overall"]["n"], 6);
    assert_eq!(summary["runs"][0]["by_attack"]["base64"]["n"], 3);
    for l in &first {
        let s: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(s["prompt"].as_str().unwrap().len() > 10);
        // The tiny model is a reasoning model: its tokens are judged as reasoning.
        assert!(s["rule_reasoning"].is_boolean());
    }

    // Again: everything is already done.
    let o = eval(&url, dir.path());
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("resuming: 6 of 6"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(lines(&samples), first);

    // A run killed while writing: the last line torn, one sample missing.
    let text = std::fs::read_to_string(&samples).unwrap();
    let cut = text.trim_end().rfind('\n').unwrap() + 20;
    std::fs::write(&samples, &text[..cut]).unwrap();
    let o = eval(&url, dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("resuming: 5 of 6"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let keys = |ls: &[String]| {
        let mut k: Vec<String> = ls
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["key"].as_str().unwrap().to_string())
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&lines(&samples)), keys(&first));
}

/// The iterative `pair` attack asks the attacker for a new prompt until the judge (here the
/// refusal rule) says the target complied, for at most `--pair-rounds` target replies; it
/// needs an attacker.
#[test]
fn pair_attack_runs_its_rounds_and_needs_an_attacker() {
    let (_server, url) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let api = format!("{url}/v1");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "redteam",
            "--url",
            &api,
            "--served-model",
            "tiny",
            "--limit",
            "1",
            "--attacks",
            "pair",
            "--max-tokens",
            "6",
            "--out",
            dir.path().to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let o = Command::new(env!("CARGO_BIN_EXE_seek"))
        .args(args(&[]))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("needs an attacker"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_seek"))
        .args(args(&[
            "--attacker-url",
            &api,
            "--attacker-served-model",
            "tiny",
            "--pair-rounds",
            "2",
        ]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let samples = lines(&dir.path().join("redteam/samples.jsonl"));
    assert_eq!(samples.len(), 1);
    let s: serde_json::Value = serde_json::from_str(&samples[0]).unwrap();
    // One round when the first reply already complies (by the refusal rule), else both.
    let want = if s["rule_answer"] == true { 1 } else { 2 };
    assert_eq!(s["rounds"], want, "{s}");
    assert_eq!(s["attack"], "pair");
}
