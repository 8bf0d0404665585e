//! The bridge between the engine thread and the async handlers.
//!
//! Each engine request gets a sink that stamps the event's arrival time and pushes it into one
//! unbounded channel per HTTP request (never blocking the engine thread). When the handler or
//! the SSE stream is dropped (the client went away), the channel closes, every sink returns
//! `false`, and [`Running`]'s drop aborts whatever has not finished, so a sequence still
//! waiting in the queue is freed as well.

use std::time::Instant;

use seek_engine::serve::{EngineHandle, ServeEvent, ServeRequest, Sink, TokenLogprob};
use seek_types::{FinishReason, Usage};
use tokio::sync::mpsc;

use crate::error::AppError;

/// An engine event for choice `choice`, stamped when the engine produced it.
pub(crate) struct ChoiceEvent {
    pub choice: usize,
    pub at: Instant,
    pub event: ServeEvent,
}

/// The engine requests of one HTTP request.
pub(crate) struct Running {
    rx: mpsc::UnboundedReceiver<ChoiceEvent>,
    /// The engine to abort unfinished requests on (none upstream: dropping `rx` stops the
    /// upstream reader, which closes the connection).
    engine: Option<EngineHandle>,
    ids: Vec<u64>,
    done: Vec<bool>,
    left: usize,
}

impl Running {
    /// Submits every request, or none: when one is refused, those already queued are aborted.
    pub fn submit(engine: &EngineHandle, reqs: Vec<ServeRequest>) -> Result<Self, AppError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut ids = Vec::with_capacity(reqs.len());
        for (choice, req) in reqs.into_iter().enumerate() {
            let tx = tx.clone();
            let sink: Sink = Box::new(move |event| {
                tx.send(ChoiceEvent {
                    choice,
                    at: Instant::now(),
                    event,
                })
                .is_ok()
            });
            match engine.submit(req, sink) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for &id in &ids {
                        engine.abort(id);
                    }
                    return Err(e.into());
                }
            }
        }
        let n = ids.len();
        Ok(Self {
            rx,
            engine: Some(engine.clone()),
            ids,
            done: vec![false; n],
            left: n,
        })
    }

    /// The events of `n` choices coming from an upstream server (gateway mode).
    pub fn upstream(rx: mpsc::UnboundedReceiver<ChoiceEvent>, n: usize) -> Self {
        Self {
            rx,
            engine: None,
            ids: Vec::new(),
            done: vec![false; n],
            left: n,
        }
    }

    /// Stops generating choice `choice` (a guard blocked it); the engine still reports its
    /// end. Upstream choices cannot be stopped one by one: their text is dropped instead.
    pub fn abort_choice(&self, choice: usize) {
        if let (Some(engine), Some(&id)) = (&self.engine, self.ids.get(choice)) {
            engine.abort(id);
        }
    }

    /// The next event, or `None` once every choice has finished or failed.
    pub async fn next(&mut self) -> Option<ChoiceEvent> {
        if self.left == 0 {
            return None;
        }
        let ev = self.rx.recv().await?;
        if matches!(
            ev.event,
            ServeEvent::Finished { .. } | ServeEvent::Failed { .. }
        ) && !std::mem::replace(&mut self.done[ev.choice], true)
        {
            self.left -= 1;
        }
        Some(ev)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(engine) = &self.engine else { return };
        for (&id, &done) in self.ids.iter().zip(&self.done) {
            if !done {
                engine.abort(id);
            }
        }
    }
}

/// What one choice has produced so far.
#[derive(Debug, Default)]
pub(crate) struct ChoiceOutput {
    pub reasoning: String,
    pub content: String,
    pub logprobs: Vec<TokenLogprob>,
    /// Characters of text before each entry of `logprobs` (legacy completions' `text_offset`).
    pub token_offsets: Vec<usize>,
    pub finish: Option<FinishReason>,
    /// The stop string that ended the choice, if one did.
    pub stop: Option<String>,
    pub failed: Option<String>,
    /// The engine's counts once finished; before that, the prompt and the tokens seen.
    pub usage: Usage,
    chars: usize,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// Gaps between consecutive tokens, seconds.
    pub gaps: Vec<f64>,
}

impl ChoiceOutput {
    /// Takes in one event.
    pub fn take(&mut self, at: Instant, event: &ServeEvent) {
        match event {
            // Until the engine's counts arrive with `Finished`, `usage` counts what has been
            // seen (what a request whose client leaves is charged to its rate limit).
            ServeEvent::Started {
                prompt_tokens,
                cached_tokens,
            } => {
                self.usage.prompt_tokens = *prompt_tokens;
                self.usage.cached_prompt_tokens = *cached_tokens;
                self.usage.total_tokens = self.usage.prompt_tokens + self.usage.completion_tokens;
            }
            ServeEvent::Delta {
                delta,
                token,
                logprob,
            } => {
                if logprob.is_some() {
                    self.token_offsets.push(self.text_chars());
                }
                self.reasoning.push_str(&delta.reasoning);
                self.content.push_str(&delta.content);
                self.chars += delta.reasoning.chars().count() + delta.content.chars().count();
                if token.is_some() {
                    self.usage.completion_tokens += 1;
                    self.usage.total_tokens += 1;
                    if let Some(last) = self.last_token {
                        self.gaps.push((at - last).as_secs_f64());
                    }
                    self.first_token.get_or_insert(at);
                    self.last_token = Some(at);
                }
                if let Some(lp) = logprob {
                    self.logprobs.push(lp.clone());
                }
            }
            ServeEvent::Finished {
                finish_reason,
                stop,
                usage,
                ..
            } => {
                self.finish = Some(*finish_reason);
                self.stop = stop.clone();
                self.usage = *usage;
            }
            ServeEvent::Failed { message } => self.failed = Some(message.clone()),
        }
    }

    /// Characters of text so far (reasoning first, as legacy completions write it).
    pub fn text_chars(&self) -> usize {
        self.chars
    }

    /// Seconds from `start` to the first token, if there was one.
    pub fn ttft(&self, start: Instant) -> Option<f64> {
        self.first_token.map(|t| (t - start).as_secs_f64())
    }
}
