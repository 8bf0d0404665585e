//! Gateway mode: a model served by another OpenAI-compatible endpoint (a vLLM or SGLang
//! cluster running the 671B model, a hosted API), behind this server's auth, guard, audit
//! and cost accounting.
//!
//! A chat request is forwarded with `model` renamed to the upstream's and always streamed
//! (`stream_options.include_usage` on), whatever the client asked: the upstream's chunks
//! become the same events a local engine produces (reasoning and content deltas per choice,
//! then each choice's finish with the usage), so everything downstream of the engine works
//! unchanged. The HTTP call is blocking (`ureq`, already in the dependency tree) on a
//! blocking thread; when the client goes away the event channel closes, the thread stops
//! reading and drops the connection, which tells the upstream to stop generating.

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seek_engine::serve::ServeEvent;
use seek_reasoning::Delta;
use seek_types::{FinishReason, Usage};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::error::AppError;
use crate::run::ChoiceEvent;

/// An OpenAI-compatible endpoint that serves one model.
#[derive(Debug)]
pub struct Upstream {
    /// Base URL up to and including `/v1` (e.g. `http://10.0.0.5:8000/v1`).
    pub base_url: String,
    /// The model name the upstream knows.
    pub model: String,
    /// Sent as `Authorization: Bearer`, when set.
    api_key: Option<String>,
    agent: ureq::Agent,
}

impl Upstream {
    /// An upstream at `base_url` (with or without a trailing `/v1`) serving `model`.
    pub fn new(base_url: &str, model: impl Into<String>, api_key: Option<String>) -> Self {
        let base = base_url.trim_end_matches('/');
        let base_url = if base.ends_with("/v1") {
            base.to_string()
        } else {
            format!("{base}/v1")
        };
        Self {
            base_url,
            model: model.into(),
            api_key,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(Duration::from_secs(600))
                .build(),
        }
    }

    /// Forwards a chat request (`body`, the client's JSON with checked fields) and returns
    /// the events of its `n` choices once the upstream has accepted it; its refusal becomes
    /// the matching error here (400 stays 400, 429 stays 429, the rest is 502).
    pub(crate) async fn chat(
        self: &Arc<Self>,
        mut body: Value,
        n: usize,
    ) -> Result<mpsc::UnboundedReceiver<ChoiceEvent>, AppError> {
        body["model"] = Value::String(self.model.clone());
        body["stream"] = Value::Bool(true);
        body["stream_options"] = serde_json::json!({"include_usage": true});
        let (tx, rx) = mpsc::unbounded_channel();
        let (head_tx, head_rx) = oneshot::channel();
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.stream_chat(body, n, tx, head_tx));
        head_rx
            .await
            .map_err(|_| AppError::Internal("the upstream request ended early".into()))??;
        Ok(rx)
    }

    fn stream_chat(
        &self,
        body: Value,
        n: usize,
        tx: mpsc::UnboundedSender<ChoiceEvent>,
        head: oneshot::Sender<Result<(), AppError>>,
    ) {
        let url = format!("{}/chat/completions", self.base_url);
        let mut req = self.agent.post(&url).set("Accept", "text/event-stream");
        if let Some(k) = &self.api_key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let resp = match req.send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let _ = head.send(Err(refusal(code, &text)));
                return;
            }
            Err(e) => {
                tracing::warn!(upstream = %self.base_url, error = %e, "upstream unreachable");
                let _ = head.send(Err(AppError::Upstream(format!(
                    "the upstream model server at {} cannot be reached",
                    self.base_url
                ))));
                return;
            }
        };
        if head.send(Ok(())).is_err() {
            return;
        }
        let mut st = StreamState::new(n);
        let send = |choice: usize, event: ServeEvent| {
            tx.send(ChoiceEvent {
                choice,
                at: Instant::now(),
                event,
            })
            .is_ok()
        };
        for c in 0..n {
            send(
                c,
                ServeEvent::Started {
                    prompt_tokens: 0,
                    cached_tokens: 0,
                },
            );
        }
        for line in BufReader::new(resp.into_reader()).lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    st.error = Some(format!("the upstream stream broke off: {e}"));
                    break;
                }
            };
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                st.done = true;
                break;
            }
            let chunk: Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => {
                    st.error = Some(format!("the upstream sent a chunk that is not JSON: {e}"));
                    break;
                }
            };
            if let Some(err) = chunk.get("error") {
                st.error = Some(format!("the upstream failed: {err}"));
                break;
            }
            for (choice, event) in st.take(&chunk) {
                if !send(choice, event) {
                    // The client went away: dropping the response closes the connection.
                    return;
                }
            }
        }
        for (choice, event) in st.finish() {
            send(choice, event);
        }
    }
}

/// An upstream's refusal as this server's error.
fn refusal(code: u16, body: &str) -> AppError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(300).collect());
    match code {
        400 | 404 | 422 => AppError::BadRequest {
            message: format!("the upstream refused the request: {message}"),
            param: None,
            code: Some("upstream_rejected"),
        },
        429 => AppError::Busy {
            message: format!("the upstream is busy: {message}"),
            retry_after_s: 1,
        },
        _ => AppError::Upstream(format!("the upstream answered {code}: {message}")),
    }
}

/// What the upstream's chunks have said so far.
struct StreamState {
    n: usize,
    finish: Vec<Option<FinishReason>>,
    usage: Option<Usage>,
    done: bool,
    error: Option<String>,
}

impl StreamState {
    fn new(n: usize) -> Self {
        Self {
            n,
            finish: vec![None; n],
            usage: None,
            done: false,
            error: None,
        }
    }

    /// The events of one chunk.
    fn take(&mut self, chunk: &Value) -> Vec<(usize, ServeEvent)> {
        let mut out = Vec::new();
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage_of(u));
        }
        for c in chunk["choices"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap_or(0) as usize;
            if i >= self.n {
                continue;
            }
            let d = &c["delta"];
            let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            let reasoning = match text("reasoning_content") {
                r if r.is_empty() => text("reasoning"),
                r => r,
            };
            let delta = Delta {
                reasoning,
                content: text("content"),
            };
            if !delta.is_empty() {
                out.push((
                    i,
                    ServeEvent::Delta {
                        delta,
                        // A token arrived (its id is the upstream's business); the marker
                        // lets latency metrics count it.
                        token: Some(0),
                        logprob: None,
                    },
                ));
            }
            if let Some(f) = c["finish_reason"].as_str() {
                self.finish[i] = Some(match f {
                    "length" => FinishReason::Length,
                    "content_filter" => FinishReason::ContentFilter,
                    _ => FinishReason::Stop,
                });
            }
        }
        out
    }

    /// Each choice's end: the usage goes with choice 0 (the upstream reports one for all).
    fn finish(self) -> Vec<(usize, ServeEvent)> {
        if let Some(e) = self.error.filter(|_| !self.done) {
            return (0..self.n)
                .map(|i| (i, ServeEvent::Failed { message: e.clone() }))
                .collect();
        }
        let usage = self.usage.unwrap_or_default();
        self.finish
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    i,
                    ServeEvent::Finished {
                        finish_reason: f.unwrap_or(FinishReason::Stop),
                        // Which stop string matched upstream is not passed on.
                        stop: None,
                        usage: if i == 0 { usage } else { Usage::default() },
                        timings: Default::default(),
                    },
                )
            })
            .collect()
    }
}

/// OpenAI's (and DeepSeek's) usage object as engine usage.
fn usage_of(u: &Value) -> Usage {
    let n = |v: &Value| v.as_u64().unwrap_or(0) as usize;
    let prompt = n(&u["prompt_tokens"]);
    let completion = n(&u["completion_tokens"]);
    let cached = match n(&u["prompt_cache_hit_tokens"]) {
        0 => n(&u["prompt_tokens_details"]["cached_tokens"]),
        c => c,
    };
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        reasoning_tokens: n(&u["completion_tokens_details"]["reasoning_tokens"]),
        total_tokens: prompt + completion,
        cached_prompt_tokens: cached.min(prompt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_engine_events() {
        let mut st = StreamState::new(2);
        let ev = st.take(&serde_json::json!({"choices": [
            {"index": 0, "delta": {"reasoning_content": "hm"}},
            {"index": 1, "delta": {"content": "Hi"}, "finish_reason": null}]}));
        assert_eq!(ev.len(), 2);
        st.take(&serde_json::json!({"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "length"}]}));
        st.take(&serde_json::json!({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5,
            "prompt_cache_hit_tokens": 4, "completion_tokens_details": {"reasoning_tokens": 2}}}));
        st.done = true;
        let end = st.finish();
        match &end[0].1 {
            ServeEvent::Finished {
                finish_reason,
                usage,
                ..
            } => {
                assert_eq!(*finish_reason, FinishReason::Length);
                assert_eq!(
                    (
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        usage.reasoning_tokens,
                        usage.cached_prompt_tokens
                    ),
                    (10, 5, 2, 4)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_keep_the_client_meaning() {
        assert_eq!(refusal(400, r#"{"error":{"message":"bad"}}"#).status(), 400);
        assert_eq!(refusal(429, "slow down").status(), 429);
        assert_eq!(refusal(401, "no").status(), 502);
        assert_eq!(refusal(500, "boom").status(), 502);
        assert!(refusal(400, r#"{"error":{"message":"bad field"}}"#)
            .to_string()
            .contains("bad field"));
    }
}
