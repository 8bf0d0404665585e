//! A user's own reward function outside Seek: a command (`cmd:python3 score.py`) or an HTTP
//! endpoint (`http://host:port/score`), called once per batch of completions.
//!
//! In: one JSON object, TRL's reward-function arguments as lists, one entry per completion:
//! `{"prompts": [...], "completions": [...], "solution": [...], "rows": [{...}, ...]}` (a row is
//! the dataset line the prompt came from, every column included). A command reads it on stdin,
//! an endpoint as a POST body. Out: `{"rewards": [number or null, ...]}` or a bare array, one
//! per completion (`null`: cannot score that one). Anything else (a non-zero exit, a timeout,
//! not JSON, the wrong count, a non-finite number) is an error that names the function and what
//! it got; the caller decides how the batch is then scored.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::rewards::Sample;

/// Where an external reward lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum External {
    /// A program and its arguments (split on whitespace), JSON on stdin, JSON on stdout.
    Command(Vec<String>),
    /// An endpoint that answers a POST.
    Http(String),
}

impl External {
    /// `cmd:PROGRAM ARGS...` or an `http://` / `https://` URL; `None` for anything else.
    pub fn parse(spec: &str) -> Option<Self> {
        if let Some(cmd) = spec.strip_prefix("cmd:") {
            let argv: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
            return (!argv.is_empty()).then_some(Self::Command(argv));
        }
        (spec.starts_with("http://") || spec.starts_with("https://"))
            .then(|| Self::Http(spec.to_string()))
    }

    /// How it is named in metrics and errors.
    pub fn label(&self) -> String {
        match self {
            Self::Command(argv) => format!("cmd:{}", argv.join(" ")),
            Self::Http(url) => url.clone(),
        }
    }

    /// One reward (or `None`) per sample, or an error that says what went wrong.
    pub fn score(
        &self,
        batch: &[Sample<'_>],
        timeout: Duration,
    ) -> Result<Vec<Option<f64>>, String> {
        let body = json!({
            "prompts": batch.iter().map(|s| s.row.map_or(Value::Null, |r| r["prompt"].clone())).collect::<Vec<_>>(),
            "completions": batch.iter().map(|s| s.completion).collect::<Vec<_>>(),
            "solution": batch.iter().map(|s| s.solution).collect::<Vec<_>>(),
            "rows": batch.iter().map(|s| s.row.cloned().unwrap_or(Value::Null)).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string(&body).map_err(|e| e.to_string())?;
        let answer = match self {
            Self::Command(argv) => run_command(argv, &text, timeout)?,
            Self::Http(url) => {
                let agent = ureq::AgentBuilder::new().timeout(timeout).build();
                match agent
                    .post(url)
                    .set("content-type", "application/json")
                    .send_string(&text)
                {
                    Ok(resp) => resp
                        .into_string()
                        .map_err(|e| format!("cannot read the answer: {e}"))?,
                    Err(ureq::Error::Status(code, resp)) => {
                        let body = resp.into_string().unwrap_or_default();
                        return Err(format!("HTTP {code}: {}", excerpt(&body)));
                    }
                    Err(e) => return Err(format!("no answer within {timeout:?}: {e}")),
                }
            }
        };
        parse_rewards(&answer, batch.len())
    }
}

fn excerpt(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s.to_string()
    }
}

fn parse_rewards(answer: &str, n: usize) -> Result<Vec<Option<f64>>, String> {
    let v: Value = serde_json::from_str(answer.trim()).map_err(|e| {
        format!(
            "the answer is not JSON ({e}): {:?}; answer {{\"rewards\": [...]}}",
            excerpt(answer)
        )
    })?;
    let list = match &v {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("rewards") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(format!(
                    "the answer has no \"rewards\" list: {:?}",
                    excerpt(answer)
                ))
            }
        },
        _ => {
            return Err(format!(
                "the answer is not a list of rewards: {:?}",
                excerpt(answer)
            ))
        }
    };
    if list.len() != n {
        return Err(format!(
            "{} rewards for {n} completions; answer one per completion",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| match r {
            Value::Null => Ok(None),
            Value::Number(x) => match x.as_f64() {
                Some(f) if f.is_finite() => Ok(Some(f)),
                _ => Err(format!("reward {i} ({x}) is not a finite number")),
            },
            other => Err(format!("reward {i} is {other}, not a number or null")),
        })
        .collect()
}

fn run_command(argv: &[String], input: &str, timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let mut stdin = child.stdin.take();
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(input.as_bytes());
        }
    });
    let mut out = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let mut err = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {timeout:?} (killed)"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for it failed: {e}")),
        }
    };
    let _ = writer.join();
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("exited with {status}: {}", excerpt(&stderr)));
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(texts: &[&'static str]) -> Vec<Sample<'static>> {
        texts
            .iter()
            .map(|t| Sample {
                completion: t,
                solution: Some("4"),
                completion_tokens: None,
                prompt_opens_think: false,
                row: None,
            })
            .collect()
    }

    #[test]
    fn a_command_scores_a_batch_and_its_failures_are_named() {
        let batch = samples(&["four", "4"]);
        let t = Duration::from_secs(10);
        // Reward: the completion's length, read from the JSON on stdin; `x` cannot be scored.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("r.py");
        std::fs::write(
            &script,
            "import json, sys\nd = json.load(sys.stdin)\nprint(json.dumps({'rewards': [len(c) if c != 'x' else None for c in d['completions']]}))\n",
        )
        .unwrap();
        let ext = External::parse(&format!("cmd:python3 {}", script.display())).unwrap();
        assert_eq!(ext.score(&batch, t).unwrap(), vec![Some(4.0), Some(1.0)]);
        assert_eq!(ext.score(&samples(&["x"]), t).unwrap(), vec![None]);
        // A crash, a hang, the wrong count, not JSON.
        let crash = dir.path().join("crash.py");
        std::fs::write(
            &crash,
            "import sys\nsys.stderr.write('boom')\nsys.exit(3)\n",
        )
        .unwrap();
        let e = External::parse(&format!("cmd:python3 {}", crash.display()))
            .unwrap()
            .score(&batch, t)
            .unwrap_err();
        assert!(e.contains("boom"), "{e}");
        let hang = dir.path().join("hang.py");
        std::fs::write(&hang, "import time\ntime.sleep(30)\n").unwrap();
        let e = External::parse(&format!("cmd:python3 {}", hang.display()))
            .unwrap()
            .score(&batch, Duration::from_millis(300))
            .unwrap_err();
        assert!(e.contains("no answer within"), "{e}");
        assert!(parse_rewards("[1]", 2)
            .unwrap_err()
            .contains("1 rewards for 2"));
        assert!(parse_rewards("nope", 1).unwrap_err().contains("not JSON"));
        assert!(parse_rewards("{\"rewards\": [\"a\"]}", 1).is_err());
        assert_eq!(
            parse_rewards("{\"rewards\": [0.5, null]}", 2).unwrap(),
            vec![Some(0.5), None]
        );
        assert!(External::parse("nosuchreward").is_none());
    }
}
