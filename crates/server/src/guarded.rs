//! The guard and the audit trail in the request pipeline.
//!
//! Input: the tenant's policy runs its rule rails on every message a client wrote (not the
//! assistant turns), in order, sharing pseudonyms, so `<EMAIL_1>` means the same address in
//! every message; the redacted text is what the model sees. Model rails (a hazard judge, a
//! perplexity check) run next, on a blocking thread. A blocking rail refuses the request
//! with 400 `content_filter`.
//!
//! Output: each choice's reasoning and answer pass through their own streaming guard
//! ([`seek_guard::OutputGuard`]), which holds back a short tail so that a match split
//! across chunks is still caught, restores pseudonyms, and on a block ends the choice with
//! `finish_reason: "content_filter"` while the engine stops generating it.
//!
//! Audit: whatever the outcome, the request becomes one entry of the audit log (written on a
//! blocking thread), with each rail's verdict and latency, and the prompt and answer kept as
//! the policy's `[audit] store` allows: full, redacted, or hashes only.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use seek_audit::{sha256_hex, AuditEntry, AuditLog, RailRecord};
use seek_engine::serve::ServeEvent;
use seek_guard::{
    Action, AuditMode, Channel, JudgeBackend, ModelRail, OnError, OutputGuard, Policy, Pseudonyms,
    RailResult, Stage,
};
use seek_reasoning::Delta;
use seek_types::{ChatMessage, FinishReason};

use crate::error::AppError;
use crate::run::{ChoiceEvent, Running};
use crate::state::{Backend, ServedModel};
use crate::wire::{self, MessageContent, RequestMessage};

/// What the input rails decided, kept for the output guards and the audit entry.
pub(crate) struct GuardedInput {
    pub policy: Arc<Policy>,
    pub pseudonyms: Pseudonyms,
    pub results: Vec<(String, RailResult)>,
}

/// The texts of a request's user-written messages, joined (what the audit log hashes).
pub(crate) fn prompt_text(messages: &[RequestMessage]) -> String {
    let mut out = Vec::new();
    for m in messages.iter().filter(|m| m.role != "assistant") {
        for t in texts(m) {
            out.push(format!("{}: {t}", m.role));
        }
    }
    out.join("\n")
}

fn texts(m: &RequestMessage) -> Vec<&str> {
    match &m.content {
        Some(MessageContent::Text(t)) => vec![t.as_str()],
        Some(MessageContent::Parts(parts)) => {
            parts.iter().filter_map(|p| p.text.as_deref()).collect()
        }
        None => Vec::new(),
    }
}

/// Runs the rule rails on every text of every message the client wrote (assistant turns are
/// the model's own), redacting in place. A block is an error after the results are kept.
pub(crate) fn guard_messages(
    policy: Arc<Policy>,
    messages: &mut [RequestMessage],
) -> (GuardedInput, Option<String>) {
    let texts = messages
        .iter_mut()
        .filter(|m| m.role != "assistant")
        .flat_map(|m| match &mut m.content {
            Some(MessageContent::Text(t)) => vec![t],
            Some(MessageContent::Parts(parts)) => {
                parts.iter_mut().filter_map(|p| p.text.as_mut()).collect()
            }
            None => Vec::new(),
        });
    guard_texts(policy, texts)
}

/// The same for the prompts of a text completion.
pub(crate) fn guard_prompts(
    policy: Arc<Policy>,
    prompts: &mut [String],
) -> (GuardedInput, Option<String>) {
    guard_texts(policy, prompts.iter_mut())
}

/// The input rails on each text in turn, sharing pseudonyms; the first blocking rail, if any.
fn guard_texts<'a>(
    policy: Arc<Policy>,
    texts: impl Iterator<Item = &'a mut String>,
) -> (GuardedInput, Option<String>) {
    let mut pseudonyms = Pseudonyms::new();
    let mut results = Vec::new();
    let mut blocked = None;
    for t in texts {
        let o = policy.check_input_with(t, &mut pseudonyms);
        *t = o.text;
        if blocked.is_none() {
            blocked = o.blocked_by;
        }
        results.extend(o.results.into_iter().map(|r| ("input".to_string(), r)));
    }
    (
        GuardedInput {
            policy,
            pseudonyms,
            results,
        },
        blocked,
    )
}

/// The 400 of a request a rail refused.
pub(crate) fn blocked_error(policy: &Policy, rail: &str) -> AppError {
    AppError::BadRequest {
        message: format!(
            "the request was refused by the guard rail `{rail}` of policy `{}`",
            policy.name()
        ),
        param: Some("messages"),
        code: Some("content_filter"),
    }
}

/// Runs the policy's input model rails (judge, perplexity) on `text`; returns the rail that
/// blocks, if any. Blocking calls: run on a blocking thread.
pub(crate) fn run_input_model_rails(
    input: &mut GuardedInput,
    text: &str,
    model: &ServedModel,
    others: &[Arc<ServedModel>],
) -> Option<String> {
    let rails: Vec<ModelRail> = input
        .policy
        .model_rails()
        .iter()
        .filter(|r| r.stage() == Stage::Input)
        .cloned()
        .collect();
    let mut blocked = None;
    for rail in rails {
        let started = Instant::now();
        let result = match verdict(&rail, text, model, others) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(rail = rail.name(), error = %e, "a model rail gave no verdict");
                let mut r = rail.error_result(&e, started.elapsed().as_micros() as u64);
                if rail.on_error() == OnError::Block {
                    r.triggered = true;
                }
                r
            }
        };
        if result.triggered && rail.action() == Action::Block && blocked.is_none() {
            blocked = Some(rail.name().to_string());
        }
        input.results.push(("input".into(), result));
    }
    blocked
}

/// One model rail's result on `text`.
fn verdict(
    rail: &ModelRail,
    text: &str,
    model: &ServedModel,
    others: &[Arc<ServedModel>],
) -> Result<RailResult, String> {
    let started = Instant::now();
    let target = |name: &Option<String>| -> Result<&ServedModel, String> {
        match name {
            None => Ok(model),
            Some(n) => others
                .iter()
                .find(|m| &m.name == n)
                .map(|m| m.as_ref())
                .ok_or_else(|| {
                    format!("the rail names model {n:?}, which this server does not serve")
                }),
        }
    };
    match rail {
        ModelRail::Judge(j) => {
            let prompt = j.judge_prompt(text);
            let reply = match &j.backend {
                JudgeBackend::Local { model: name } => local_reply(target(name)?, &prompt)?,
                JudgeBackend::Url {
                    url,
                    model,
                    api_key_env,
                } => url_reply(url, model.as_deref(), api_key_env.as_deref(), &prompt)?,
            };
            let v = seek_guard::parse_judge_reply(&reply).map_err(|e| e.to_string())?;
            Ok(j.result(&v, text.len(), started.elapsed().as_micros() as u64))
        }
        ModelRail::Perplexity(p) => {
            if text.chars().count() < p.min_chars {
                return Ok(p.result(text, 0.0, started.elapsed().as_micros() as u64));
            }
            let JudgeBackend::Local { model: name } = &p.backend else {
                return Err("perplexity needs a local model (token log-probabilities)".into());
            };
            let m = target(name)?;
            let Backend::Local { engine, tokenizer } = &m.backend else {
                return Err(format!(
                    "model {:?} is upstream: it cannot score text",
                    m.name
                ));
            };
            let ids = tokenizer.encode(text, false).map_err(|e| e.to_string())?;
            let ppl = engine
                .perplexity(ids)
                .map_err(|e| e.to_string())?
                .unwrap_or(0.0);
            Ok(p.result(text, ppl, started.elapsed().as_micros() as u64))
        }
    }
}

/// A judge's reply from a served model: the prompt as one user turn, greedy, a few tokens.
fn local_reply(model: &ServedModel, prompt: &str) -> Result<String, String> {
    use seek_engine::sequence::SequenceParams;
    use seek_engine::serve::ServeRequest;
    let Backend::Local { engine, tokenizer } = &model.backend else {
        return Err(format!(
            "model {:?} is upstream; use `url` for it",
            model.name
        ));
    };
    let rendered = seek_engine::chat::render_chat(tokenizer, &[ChatMessage::user(prompt)])
        .map_err(|e| e.to_string())?;
    engine
        .complete(ServeRequest {
            prompt: rendered.ids,
            params: SequenceParams {
                sampling: seek_types::SamplingParams::greedy(),
                max_tokens: 24,
                stop: Vec::new(),
                ignore_eos: false,
                starts_in_reasoning: rendered.starts_in_reasoning,
                max_reasoning_tokens: Some(0),
                split_reasoning: true,
                ..SequenceParams::default()
            },
            logprobs: None,
        })
        .map(|c| c.content)
        .map_err(|e| e.to_string())
}

/// A judge's reply from an OpenAI-compatible endpoint.
fn url_reply(
    url: &str,
    model: Option<&str>,
    api_key_env: Option<&str>,
    prompt: &str,
) -> Result<String, String> {
    let endpoint = format!("{}/chat/completions", url.trim_end_matches('/'));
    let mut req = ureq::post(&endpoint).timeout(std::time::Duration::from_secs(60));
    if let Some(var) = api_key_env {
        let key =
            std::env::var(var).map_err(|_| format!("the judge's key variable {var} is not set"))?;
        req = req.set("Authorization", &format!("Bearer {key}"));
    }
    let body = serde_json::json!({
        "model": model.unwrap_or("judge"),
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0, "max_tokens": 24,
    });
    let v: serde_json::Value = req
        .send_json(body)
        .map_err(|e| format!("the judge at {url} failed: {e}"))?
        .into_json()
        .map_err(|e| format!("the judge at {url} sent no JSON: {e}"))?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("the judge at {url} sent no message content"))
}

/// The output guards of one choice, and what they saw and let through.
struct ChoiceGuard {
    /// `None` without a policy: the text passes as it is.
    content: Option<OutputGuard>,
    reasoning: Option<OutputGuard>,
    raw_content: String,
    raw_reasoning: String,
    blocked_by: Option<String>,
}

/// The events of a request's choices with the output rails applied (see the module docs).
pub(crate) struct Guarded {
    inner: Running,
    guards: Vec<ChoiceGuard>,
    pending: VecDeque<ChoiceEvent>,
}

impl Guarded {
    pub fn new(inner: Running, input: Option<&GuardedInput>, choices: usize) -> Self {
        let guard = |c: Channel| input.map(|g| g.policy.output_guard(c, &g.pseudonyms));
        Self {
            inner,
            guards: (0..choices)
                .map(|_| ChoiceGuard {
                    content: guard(Channel::Content),
                    reasoning: guard(Channel::Reasoning),
                    raw_content: String::new(),
                    raw_reasoning: String::new(),
                    blocked_by: None,
                })
                .collect(),
            pending: VecDeque::new(),
        }
    }

    /// The next event, guarded; `None` once every choice has ended.
    pub async fn next(&mut self) -> Option<ChoiceEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let ChoiceEvent { choice, at, event } = self.inner.next().await?;
            let g = &mut self.guards[choice];
            match event {
                ServeEvent::Delta {
                    delta,
                    token,
                    logprob,
                } => {
                    if g.blocked_by.is_some() {
                        continue; // the engine is stopping this choice
                    }
                    g.raw_reasoning.push_str(&delta.reasoning);
                    g.raw_content.push_str(&delta.content);
                    let r = push(&mut g.reasoning, &delta.reasoning);
                    let c = push(&mut g.content, &delta.content);
                    let blocked = r.blocked_by.or(c.blocked_by);
                    self.pending.push_back(ChoiceEvent {
                        choice,
                        at,
                        event: ServeEvent::Delta {
                            delta: Delta {
                                reasoning: r.emit,
                                content: c.emit,
                            },
                            token,
                            logprob,
                        },
                    });
                    if let Some(rail) = blocked {
                        g.blocked_by = Some(rail);
                        self.inner.abort_choice(choice);
                    }
                }
                ServeEvent::Finished {
                    finish_reason,
                    stop,
                    usage,
                    timings,
                } => {
                    let reason = if g.blocked_by.is_some() {
                        FinishReason::ContentFilter
                    } else {
                        // Flush the held-back tails (they may still trip a rail).
                        let r = finish(&mut g.reasoning);
                        let c = finish(&mut g.content);
                        if let Some(rail) = r.blocked_by.or(c.blocked_by) {
                            g.blocked_by = Some(rail);
                        }
                        let tail = Delta {
                            reasoning: r.emit,
                            content: c.emit,
                        };
                        if !tail.is_empty() {
                            self.pending.push_back(ChoiceEvent {
                                choice,
                                at,
                                event: ServeEvent::Delta {
                                    delta: tail,
                                    token: None,
                                    logprob: None,
                                },
                            });
                        }
                        if g.blocked_by.is_some() {
                            FinishReason::ContentFilter
                        } else {
                            finish_reason
                        }
                    };
                    self.pending.push_back(ChoiceEvent {
                        choice,
                        at,
                        event: ServeEvent::Finished {
                            // A stop string ended it only if the guard did not.
                            stop: stop.filter(|_| reason == FinishReason::Stop),
                            finish_reason: reason,
                            usage,
                            timings,
                        },
                    });
                }
                other => self.pending.push_back(ChoiceEvent {
                    choice,
                    at,
                    event: other,
                }),
            }
        }
    }

    /// Each rail's result over every choice, by stage, and the raw texts (for the audit).
    pub fn audit_parts(&self) -> (Vec<(String, RailResult)>, String, String) {
        let mut rails = Vec::new();
        for g in &self.guards {
            for (stage, guard) in [
                ("output:reasoning", &g.reasoning),
                ("output:content", &g.content),
            ] {
                if let Some(guard) = guard {
                    rails.extend(guard.results().into_iter().map(|r| (stage.to_string(), r)));
                }
            }
        }
        (
            rails,
            join_choices(self.guards.iter().map(|g| g.raw_reasoning.as_str())),
            join_choices(self.guards.iter().map(|g| g.raw_content.as_str())),
        )
    }
}

fn push(g: &mut Option<OutputGuard>, text: &str) -> seek_guard::StreamStep {
    match g {
        Some(g) => g.push(text),
        None => seek_guard::StreamStep {
            emit: text.to_string(),
            blocked_by: None,
        },
    }
}

fn finish(g: &mut Option<OutputGuard>) -> seek_guard::StreamStep {
    match g {
        Some(g) => g.finish(),
        None => seek_guard::StreamStep {
            emit: String::new(),
            blocked_by: None,
        },
    }
}

/// Several choices' texts as one (numbered when there are several).
pub(crate) fn join_choices<'a>(texts: impl Iterator<Item = &'a str>) -> String {
    let texts: Vec<&str> = texts.collect();
    if texts.len() == 1 {
        return texts[0].to_string();
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| format!("[choice {i}]\n{t}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a request's audit entry is made of, filled in as the request goes.
#[derive(Default)]
pub(crate) struct AuditDraft {
    pub policy: Option<String>,
    pub mode: Option<AuditMode>,
    pub prompt: Option<String>,
    pub prompt_redacted: Option<String>,
    pub reasoning: Option<String>,
    pub reasoning_redacted: Option<String>,
    pub answer: Option<String>,
    pub answer_redacted: Option<String>,
    pub rails: Vec<(String, RailResult)>,
    pub finish_reason: Option<String>,
    /// The end user the client named (`user`; Anthropic's `metadata.user_id`).
    pub end_user: Option<String>,
}

/// Everything but the draft that an entry needs.
pub(crate) struct AuditMeta<'a> {
    pub request_id: &'a str,
    pub tenant: &'a str,
    pub model: &'a str,
    pub endpoint: &'a str,
    pub status: u16,
    pub usage: Option<&'a wire::Usage>,
    pub latency_ms: f64,
    pub error: Option<String>,
}

impl AuditDraft {
    /// The entry, with texts kept as the policy allows (`full` without a policy).
    pub fn entry(self, meta: AuditMeta<'_>) -> AuditEntry {
        let mode = self.mode.unwrap_or(AuditMode::Full);
        let keep = |raw: Option<String>, red: Option<String>| -> (Option<String>, Option<String>) {
            match mode {
                AuditMode::Full => (raw, red),
                AuditMode::Redacted => (None, red),
                AuditMode::HashesOnly => (None, None),
            }
        };
        let prompt_sha256 = sha256_hex(self.prompt.as_deref().unwrap_or(""));
        let reasoning_sha256 = self
            .reasoning
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(sha256_hex);
        let answer_sha256 = self.answer.as_deref().map(sha256_hex);
        let (prompt, prompt_redacted) = keep(self.prompt, self.prompt_redacted);
        let (reasoning, reasoning_redacted) = keep(self.reasoning, self.reasoning_redacted);
        let (answer, answer_redacted) = keep(self.answer, self.answer_redacted);
        let u = meta.usage;
        AuditEntry {
            id: None,
            time_ms: seek_audit::now_ms() - meta.latency_ms as i64,
            request_id: meta.request_id.to_string(),
            tenant: meta.tenant.to_string(),
            end_user: self.end_user,
            model: meta.model.to_string(),
            endpoint: meta.endpoint.to_string(),
            status: meta.status,
            finish_reason: self.finish_reason,
            policy: self.policy,
            prompt,
            prompt_redacted,
            prompt_sha256,
            reasoning,
            reasoning_redacted,
            reasoning_sha256,
            answer,
            answer_redacted,
            answer_sha256,
            rails: self
                .rails
                .into_iter()
                .map(|(stage, r)| RailRecord {
                    rail: r.rail,
                    stage,
                    action: r.action.name().to_string(),
                    triggered: r.triggered,
                    detail: r
                        .findings
                        .iter()
                        .map(|f| f.what.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    latency_us: r.latency_us,
                })
                .collect(),
            prompt_tokens: u.map_or(0, |u| u.prompt_tokens as u64),
            completion_tokens: u.map_or(0, |u| u.completion_tokens as u64),
            reasoning_tokens: u.map_or(0, |u| u.completion_tokens_details.reasoning_tokens as u64),
            cached_prompt_tokens: u.map_or(0, |u| u.prompt_cache_hit_tokens as u64),
            cost_usd: u.map_or(0.0, |u| u.cost),
            latency_ms: meta.latency_ms,
            error: meta.error,
        }
    }
}

/// Writes an entry on a blocking thread (the log waits for its commit); the handle ends when
/// it is committed (none: written already, outside a runtime).
pub(crate) fn record(log: Arc<AuditLog>, entry: AuditEntry) -> Option<tokio::task::JoinHandle<()>> {
    let write = move || {
        if let Err(e) = log.record(&entry) {
            tracing::error!(request_id = %entry.request_id, error = %e, "cannot write the audit entry");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => Some(h.spawn_blocking(write)),
        Err(_) => {
            write();
            None
        }
    }
}
