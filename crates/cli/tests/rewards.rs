//! `seek rewards serve` as a process, answering the request OpenRLHF's `remote_rm_fn` posts
//! (`{"query", "prompts", "labels"}` -> `{"rewards": [...]}`), and refusing an unknown reward
//! name with a clear error.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn the_reward_server_scores_openrlhfs_request() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_seek"))
        .args([
            "rewards",
            "serve",
            "--port",
            "0",
            "--reward_funcs",
            "accuracy_reward",
            "think_format_reward",
            "--reward_weights",
            "1",
            "0.5",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .unwrap();
        if let Some(u) = line.split(" on ").nth(1) {
            break u.trim().to_string();
        }
    };
    let prompt = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n";
    let body = serde_json::json!({
        "query": [format!("{prompt}<think>2 and 3</think> The answer is 5"), format!("{prompt}It is 6")],
        "prompts": [prompt, prompt],
        "labels": ["5", "5"],
    });
    let v: serde_json::Value = ureq::post(&url)
        .send_json(body)
        .expect("200")
        .into_json()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(v["rewards"], serde_json::json!([1.5, 0.0]), "{v}");
    assert_eq!(
        v["extra_logs"]["think_format_reward"],
        serde_json::json!([1.0, 0.0])
    );

    let out = Command::new(env!("CARGO_BIN_EXE_seek"))
        .args([
            "rewards",
            "serve",
            "--port",
            "0",
            "--reward_funcs",
            "length_reward",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown reward \"length_reward\""), "{err}");
}
