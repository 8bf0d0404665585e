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
    // The client a TRL or veRL run uses (tools/seek_reward_client.py), as each calls it: TRL with
    // chat-message completions and the dataset's `solution` column, veRL one completion at a time.
    let tools = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools");
    let py = Command::new("python3")
        .args([
            "-c",
            "import sys; from seek_reward_client import seek_reward, compute_score\n\
             print(seek_reward(['Q: 2+3?'], [[{'role': 'assistant', 'content': '<think>add</think> \\\\boxed{5}'}]], solution=['5']))\n\
             print(seek_reward(prompts=['Q'], completions=['6'], solution=['5']))\n\
             print(compute_score('gsm8k', '<think>x</think> so 5', '5'))",
        ])
        .env("PYTHONPATH", tools)
        .env("SEEK_REWARD_URL", &url)
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let stdout = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["[1.5]", "[0.0]", "1.5"],
        "{stdout}"
    );
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
