//! What an evaluation talks to: a local model through Seek's own pipeline (chat template,
//! engine, optionally a guard policy, exactly as `seek serve` runs them), or any
//! OpenAI-compatible endpoint. Both answer one chat at a time and may be called from several
//! threads at once (a local engine batches them).

use std::sync::Arc;
use std::time::Duration;

use seek_engine::chat::{default_sampling, render_chat};
use seek_engine::sequence::SequenceParams;
use seek_engine::serve::{CompleteError, EngineHandle, ServeRequest};
use seek_guard::{Channel, Policy, Pseudonyms};
use seek_tokenizer::Tokenizer;
use seek_types::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// One chat to send.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most new tokens, reasoning included.
    pub max_tokens: usize,
    /// Sampling temperature (0 is greedy).
    pub temperature: f32,
    /// Seed, for repeatable sampling.
    pub seed: Option<u64>,
}

/// What came back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The chain of thought, if any.
    pub reasoning: String,
    /// The answer.
    pub content: String,
    /// `stop`, `length`, `content_filter`, ...
    pub finish_reason: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated, reasoning included.
    pub completion_tokens: usize,
    /// Of them, reasoning tokens.
    pub reasoning_tokens: usize,
    /// The guard rail that refused the prompt or cut the answer, if any.
    pub blocked_by: Option<String>,
}

/// A model under evaluation (or a judge).
pub trait Target: Send + Sync {
    /// A label for reports.
    fn name(&self) -> String;
    /// One chat, blocking.
    fn chat(&self, req: &ChatRequest) -> Result<Reply, EvalError>;
}

/// A local model: its engine and tokenizer, and the guard policy if the run is guarded.
pub struct LocalTarget {
    /// Label.
    pub label: String,
    /// The engine (shared by every thread of the run).
    pub engine: EngineHandle,
    /// The model's tokenizer and chat template.
    pub tokenizer: Arc<Tokenizer>,
    /// The guard, as `seek serve --policy` would apply it.
    pub policy: Option<Arc<Policy>>,
}

impl Target for LocalTarget {
    fn name(&self) -> String {
        match &self.policy {
            Some(p) => format!("{} + guard {}", self.label, p.name()),
            None => self.label.clone(),
        }
    }

    fn chat(&self, req: &ChatRequest) -> Result<Reply, EvalError> {
        let mut messages = req.messages.clone();
        let mut pseudonyms = Pseudonyms::new();
        if let Some(p) = &self.policy {
            for m in messages.iter_mut().filter(|m| m.role != "assistant") {
                let o = p.check_input_with(&m.content, &mut pseudonyms);
                if let Some(rail) = o.blocked_by {
                    return Ok(Reply {
                        finish_reason: "content_filter".into(),
                        blocked_by: Some(rail),
                        ..Reply::default()
                    });
                }
                m.content = o.text;
            }
        }
        let rendered = render_chat(&self.tokenizer, &messages)?;
        let mut sampling = default_sampling(&self.tokenizer);
        sampling.temperature = req.temperature;
        sampling.seed = req.seed;
        if req.temperature == 0.0 {
            sampling = seek_types::SamplingParams::greedy();
        }
        let room = self
            .engine
            .max_context()
            .saturating_sub(rendered.ids.len() + 1);
        let done = self
            .engine
            .complete(ServeRequest {
                prompt: rendered.ids,
                params: SequenceParams {
                    sampling,
                    max_tokens: req.max_tokens.min(room),
                    stop: Vec::new(),
                    ignore_eos: false,
                    starts_in_reasoning: rendered.starts_in_reasoning,
                    max_reasoning_tokens: None,
                    split_reasoning: true,
                    ..SequenceParams::default()
                },
                logprobs: None,
            })
            .map_err(|e| match e {
                CompleteError::Submit(e) => EvalError::Submit(e),
                CompleteError::Failed(m) => EvalError::Target(m),
            })?;
        let mut out = Reply {
            reasoning: done.reasoning,
            content: done.content,
            finish_reason: done
                .finish_reason
                .map(|f| f.to_string())
                .unwrap_or_default(),
            prompt_tokens: done.usage.prompt_tokens,
            completion_tokens: done.usage.completion_tokens,
            reasoning_tokens: done.usage.reasoning_tokens,
            blocked_by: None,
        };
        if let Some(p) = &self.policy {
            for (channel, text) in [
                (Channel::Reasoning, &mut out.reasoning),
                (Channel::Content, &mut out.content),
            ] {
                let o = p.check_output(channel, text, &pseudonyms);
                *text = o.text;
                if out.blocked_by.is_none() && o.blocked_by.is_some() {
                    out.blocked_by = o.blocked_by;
                    out.finish_reason = "content_filter".into();
                }
            }
        }
        Ok(out)
    }
}

/// Any OpenAI-compatible endpoint (`seek serve`, vLLM, Ollama, a hosted API).
pub struct UrlTarget {
    /// Base URL up to `/v1`.
    pub base_url: String,
    /// The `model` field.
    pub model: String,
    /// Bearer key, if needed.
    pub api_key: Option<String>,
    /// Attempts per request (429, 5xx and transport errors are retried with backoff).
    pub retries: u32,
    agent: ureq::Agent,
}

impl UrlTarget {
    /// A target at `base_url` (with or without `/v1`).
    pub fn new(base_url: &str, model: &str, api_key: Option<String>) -> Self {
        let base = base_url.trim_end_matches('/');
        Self {
            base_url: if base.ends_with("/v1") {
                base.to_string()
            } else {
                format!("{base}/v1")
            },
            model: model.to_string(),
            api_key,
            retries: 4,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(Duration::from_secs(600))
                .build(),
        }
    }
}

impl Target for UrlTarget {
    fn name(&self) -> String {
        format!("{} at {}", self.model, self.base_url)
    }

    fn chat(&self, req: &ChatRequest) -> Result<Reply, EvalError> {
        let messages: Vec<serde_json::Value> = req
            .messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        let mut body = serde_json::json!({
            "model": self.model, "messages": messages,
            "max_tokens": req.max_tokens, "temperature": req.temperature,
        });
        if let Some(s) = req.seed {
            body["seed"] = s.into();
        }
        let url = format!("{}/chat/completions", self.base_url);
        let mut delay = Duration::from_millis(500);
        let mut last = String::new();
        for attempt in 0..self.retries.max(1) {
            if attempt > 0 {
                std::thread::sleep(delay);
                delay *= 2;
            }
            let mut r = self.agent.post(&url);
            if let Some(k) = &self.api_key {
                r = r.set("Authorization", &format!("Bearer {k}"));
            }
            match r.send_json(body.clone()) {
                Ok(resp) => {
                    let v: serde_json::Value = resp
                        .into_json()
                        .map_err(|e| EvalError::Target(format!("{url}: not JSON: {e}")))?;
                    return Ok(reply_of(&v));
                }
                Err(ureq::Error::Status(code, resp)) if code == 429 || code >= 500 => {
                    last = format!("{url}: {code} {}", resp.into_string().unwrap_or_default());
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    // A refusal by a guard in front of the model is an answer, not a failure.
                    if code == 400 && text.contains("content_filter") {
                        return Ok(Reply {
                            finish_reason: "content_filter".into(),
                            blocked_by: Some("upstream guard".into()),
                            ..Reply::default()
                        });
                    }
                    return Err(EvalError::Target(format!("{url}: {code} {text}")));
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(EvalError::Target(format!(
            "{last} (after {} attempts)",
            self.retries.max(1)
        )))
    }
}

fn reply_of(v: &serde_json::Value) -> Reply {
    let m = &v["choices"][0]["message"];
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    let u = &v["usage"];
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0) as usize;
    Reply {
        reasoning: match s(&m["reasoning_content"]) {
            r if r.is_empty() => s(&m["reasoning"]),
            r => r,
        },
        content: s(&m["content"]),
        finish_reason: s(&v["choices"][0]["finish_reason"]),
        prompt_tokens: n(&u["prompt_tokens"]),
        completion_tokens: n(&u["completion_tokens"]),
        reasoning_tokens: n(&u["completion_tokens_details"]["reasoning_tokens"]),
        blocked_by: None,
    }
}
