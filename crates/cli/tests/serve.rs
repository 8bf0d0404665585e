//! `seek serve` as a process: it binds, loads, answers with keys, and drains on SIGTERM.
//! Uses the tiny DeepSeek-V3 fixture (made by `tools/make_deepseek_golden.py`), so it needs
//! no downloaded model. Waits poll for a state (a printed line, `/health`), never sleep a
//! fixed time.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn fixture() -> String {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepseek/dsv3-qlora-yarn");
    assert!(
        dir.join("tokenizer.json").is_file(),
        "{}: tokenizer.json missing; it is made by tools/make_deepseek_golden.py",
        dir.display()
    );
    dir.display().to_string()
}

#[test]
fn serve_answers_with_keys_and_drains_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_seek"))
        .args([
            "serve",
            &fixture(),
            "--port",
            "0",
            "--served-model-name",
            "tiny",
            "--api-key",
            "sk-test-key",
            "--shutdown-grace",
            "5",
        ])
        .env("SEEK_THREADS", "2")
        .env_remove("SEEK_API_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .expect("seek runs");
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no address printed: {log:#?}"));
        log.push(line.clone());
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Ready when /health says so (503 while loading).
    let mut ready = false;
    for _ in 0..12_000 {
        if let Ok(r) = ureq::get(&format!("{url}/health")).call() {
            assert_eq!(r.status(), 200);
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ready, "never ready");

    let body = serde_json::json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0,
        "max_tokens": 8,
    });
    match ureq::post(&format!("{url}/v1/chat/completions")).send_json(body.clone()) {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("expected 401 without a key, got {other:?}"),
    }
    let v: serde_json::Value = ureq::post(&format!("{url}/v1/chat/completions"))
        .set("Authorization", "Bearer sk-test-key")
        .send_json(body)
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(v["model"], "tiny");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    log.extend(rx.try_iter());
    assert!(status.success(), "exit {status:?}: {log:#?}");
    let text = log.join("\n");
    assert!(text.contains("draining"), "{text}");
    assert!(text.contains("stopped"), "{text}");
    // The access log names the tenant and the status of each request.
    assert!(
        text.contains("tenant=default") && text.contains("status=200"),
        "{text}"
    );
    assert!(text.contains("status=401"), "{text}");
}
