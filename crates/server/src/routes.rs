//! The handlers: authenticate, parse, check ([`ValidRequest`]), submit, and answer with one
//! JSON body or a server-sent event stream. Every request ends in exactly one access-log line
//! and one metrics update ([`RequestRecord`]), whether it succeeds, fails, or its client leaves.
//!
//! A tenant's rate limits are checked as soon as its key is known, before the body is read; the
//! tokens a request used are debited from its tenant when its record is written, so a request
//! whose client left pays for what it used.
//!
//! `response_format: json_object` is not enforced while decoding: when a choice ends with
//! `stop` and its content does not parse as JSON, the response is still returned as generated,
//! the failure is logged and counted in `seek_json_invalid_total`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use seek_engine::serve::{ServeEvent, TokenLogprob};
use seek_types::FinishReason;
use serde::de::DeserializeOwned;

use crate::anthropic;
use crate::error::AppError;
use crate::guarded::{self, AuditDraft, Guarded};
use crate::metrics::Format;
use crate::run::{ChoiceEvent, ChoiceOutput, Running};
use crate::state::{unix_now, AppState, Backend, Phase};
use crate::toolcalls::{self, ToolStream};
use crate::valid::ValidRequest;
use crate::wire::{self, ChunkUsage};
use seek_guard::Stage;
use seek_structured::ToolFormat;

/// The largest request body accepted, bytes.
pub(crate) const BODY_LIMIT: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

/// The API a request came in on: the pipeline is the same, the shapes it reads and writes
/// differ (Anthropic's Messages run as chat requests, see [`anthropic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    fn error_response(self, e: AppError) -> Response {
        match self {
            Api::OpenAi => e.into_response(),
            Api::Anthropic => e.into_anthropic_response(),
        }
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(state, Endpoint::Chat, Api::OpenAi, headers, body).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(state, Endpoint::Completion, Api::OpenAi, headers, body).await
}

/// `POST /v1/messages` (Anthropic's Messages API).
pub(crate) async fn messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(state, Endpoint::Chat, Api::Anthropic, headers, body).await
}

/// `POST /v1/messages/count_tokens`: the tokens of the prompt a Messages request renders to.
/// Behind the keys, but not the rate limits (nothing is generated).
pub(crate) async fn count_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut rec = RequestRecord::new(&state, "count_tokens", "msg_");
    let res = match count_prompt(&state, &headers, body, &mut rec) {
        Ok(input_tokens) => {
            rec.finish(200, None);
            Json(anthropic::TokenCount { input_tokens }).into_response()
        }
        Err(e) => {
            rec.failed(&e);
            e.into_anthropic_response()
        }
    };
    rec.committed().await;
    res
}

fn count_prompt(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    rec: &mut RequestRecord,
) -> Result<usize, AppError> {
    rec.tenant = state.config().api_keys.check(headers)?;
    let body = read_body(body)?;
    let req: anthropic::MessagesRequest = parse_json(&body)?;
    rec.set_model(state, &req.model);
    let req = req.into_chat(false)?;
    let raw = anthropic::raw_of(&req);
    let valid = ValidRequest::chat(req, raw, state)?;
    if valid.upstream_body.is_some() {
        return Err(AppError::bad(
            "model",
            "this model is served by an upstream server (gateway mode): its tokenizer is not here to count with",
        ));
    }
    Ok(valid.prompts.iter().map(|p| p.ids.len()).sum())
}

fn wire_model(m: &crate::state::ServedModel) -> wire::Model {
    wire::Model {
        id: m.name.clone(),
        object: "model".into(),
        created: m.created,
        owned_by: "seek".into(),
        max_model_len: m.max_context(),
    }
}

/// `GET /v1/models/{id}`: one model, or 404 `model_not_found`.
pub(crate) async fn model(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let mut rec = RequestRecord::new(&state, "models", "models-");
    let res = state.config().api_keys.check(&headers).and_then(|tenant| {
        rec.tenant = tenant;
        state.model(&id)
    });
    match res {
        Err(e) => rec.fail(e),
        Ok(m) => {
            rec.finish(200, None);
            Json(wire_model(&m)).into_response()
        }
    }
}

/// `GET /v1/models`.
pub(crate) async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut rec = RequestRecord::new(&state, "models", "models-");
    match state.config().api_keys.check(&headers) {
        Err(e) => rec.fail(e),
        Ok(tenant) => {
            rec.tenant = tenant;
            let data = state.models().iter().map(|m| wire_model(m)).collect();
            rec.finish(200, None);
            Json(wire::ModelList {
                object: "list".into(),
                data,
            })
            .into_response()
        }
    }
}

/// `GET /health`: 200 when ready, 503 while loading or draining.
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let (status, text) = match state.phase() {
        Phase::Ready => (StatusCode::OK, "ok"),
        Phase::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
        Phase::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
    };
    (status, Json(serde_json::json!({ "status": text }))).into_response()
}

/// `GET /metrics` (behind the same keys as the API).
pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.config().api_keys.check(&headers) {
        Err(e) => e.into_response(),
        Ok(_) => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            (
                [(header::CONTENT_TYPE, format.content_type())],
                state.metrics_in(format),
            )
                .into_response()
        }
    }
}

/// Any other route: OpenAI's 404.
pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    AppError::NotFound(format!("invalid URL ({method} {})", uri.path())).into_response()
}

async fn generate(
    state: AppState,
    endpoint: Endpoint,
    api: Api,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (label, prefix) = match (api, endpoint) {
        (Api::Anthropic, _) => ("messages", "msg_"),
        (Api::OpenAi, Endpoint::Chat) => ("chat", "chatcmpl-"),
        (Api::OpenAi, Endpoint::Completion) => ("completions", "cmpl-"),
    };
    let mut rec = RequestRecord::new(&state, label, prefix);
    let res = match generate_inner(&state, endpoint, api, &headers, body, &mut rec).await {
        Ok(mut r) => {
            // As OpenAI does, a limited tenant's answers say where its limits stand (after
            // this request's tokens, unless they are still being streamed).
            if let Some(s) = state.rate_limiter().status(&rec.tenant, Instant::now()) {
                s.write_headers(r.headers_mut());
            }
            r
        }
        Err(e) => {
            rec.failed(&e);
            api.error_response(e)
        }
    };
    // A streamed answer's record lives in its stream, which waits there.
    rec.committed().await;
    res
}

async fn generate_inner(
    state: &AppState,
    endpoint: Endpoint,
    api: Api,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    rec: &mut RequestRecord,
) -> Result<Response, AppError> {
    rec.tenant = state.config().api_keys.check(headers)?;
    if let Err(refused) = state.rate_limiter().admit(&rec.tenant, Instant::now()) {
        state
            .metrics()
            .rate_limited(&rec.tenant, refused.kind.as_str());
        return Err(refused.into());
    }
    let body = read_body(body)?;
    let policy = state
        .config()
        .guard
        .as_ref()
        .map(|g| g.for_tenant(&rec.tenant));
    if let Some(p) = &policy {
        rec.audit.policy = Some(p.name().to_string());
        rec.audit.mode = Some(p.audit_mode());
    }
    let mut input: Option<guarded::GuardedInput> = None;
    // Anthropic's `max_tokens`, a cap on the room left in the context window (see
    // `ValidRequest::cap_max_tokens`), and whether the window is the tighter limit.
    let mut anthropic_cap = None;
    let mut window_limited = false;
    let valid = match endpoint {
        Endpoint::Chat => {
            let (mut req, raw) = match api {
                Api::OpenAi => {
                    let req: wire::ChatCompletionRequest = parse_json(&body)?;
                    rec.set_model(state, &req.model);
                    (req, parse_json(&body)?)
                }
                Api::Anthropic => {
                    let req: anthropic::MessagesRequest = parse_json(&body)?;
                    rec.set_model(state, &req.model);
                    let mut req = req.into_chat(true)?;
                    let raw = anthropic::raw_of(&req);
                    anthropic_cap = req.max_tokens.take();
                    (req, raw)
                }
            };
            rec.audit.end_user = end_user(req.user.take())?;
            rec.audit.prompt = Some(guarded::prompt_text(&req.messages));
            if let Some(p) = &policy {
                let (g, blocked) = guarded::guard_messages(p.clone(), &mut req.messages);
                rec.audit.prompt_redacted = Some(guarded::prompt_text(&req.messages));
                rec.audit.rails.extend(g.results.iter().cloned());
                if let Some(rail) = blocked {
                    rec.audit.finish_reason = Some("content_filter".into());
                    return Err(guarded::blocked_error(p, &rail));
                }
                input = Some(g);
            }
            let mut valid = ValidRequest::chat(req, raw, state)?;
            if let Some(m) = anthropic_cap {
                window_limited = valid.cap_max_tokens(m);
            }
            valid
        }
        Endpoint::Completion => {
            let mut req: wire::CompletionRequest = parse_json(&body)?;
            rec.set_model(state, &req.model);
            if let Some(wire::Prompt::Text(t)) = &req.prompt {
                rec.audit.prompt = Some(t.clone());
            }
            if let Some(p) = &policy {
                let mut texts = match req.prompt.take() {
                    Some(wire::Prompt::Text(t)) => vec![t],
                    Some(wire::Prompt::Texts(ts)) => ts,
                    other => {
                        req.prompt = other;
                        Vec::new()
                    }
                };
                let one = req.prompt.is_none() && texts.len() == 1;
                let (g, blocked) = guarded::guard_prompts(p.clone(), &mut texts);
                rec.audit.prompt_redacted = Some(texts.join("\n"));
                rec.audit.rails.extend(g.results.iter().cloned());
                if let Some(rail) = blocked {
                    rec.audit.finish_reason = Some("content_filter".into());
                    return Err(guarded::blocked_error(p, &rail));
                }
                if req.prompt.is_none() {
                    req.prompt = Some(if one {
                        wire::Prompt::Text(texts.remove(0))
                    } else {
                        wire::Prompt::Texts(texts)
                    });
                }
                input = Some(g);
            }
            ValidRequest::completion(req, state)?
        }
    };
    // The model rails (a hazard judge, a perplexity check) on what the model will see.
    if let Some(g) = input.take() {
        let has_model_rails = g
            .policy
            .model_rails()
            .iter()
            .any(|r| r.stage() == Stage::Input);
        input = Some(if has_model_rails {
            let text = rec.audit.prompt_redacted.clone().unwrap_or_default();
            let model = valid.model.clone();
            let others = state.models();
            let before = g.results.len();
            let (g, blocked) = tokio::task::spawn_blocking(move || {
                let mut g = g;
                let b = guarded::run_input_model_rails(&mut g, &text, &model, &others);
                (g, b)
            })
            .await
            .map_err(|_| AppError::Internal("a guard rail panicked".into()))?;
            rec.audit.rails.extend(g.results[before..].iter().cloned());
            if let Some(rail) = blocked {
                rec.audit.finish_reason = Some("content_filter".into());
                return Err(guarded::blocked_error(&g.policy, &rail));
            }
            g
        } else {
            g
        });
    }
    let running = match (&valid.model.backend, &valid.upstream_body) {
        (Backend::Upstream(up), Some(body)) => {
            Running::upstream(up.chat(body.clone(), valid.n).await?, valid.n)
        }
        (Backend::Local { engine, .. }, _) => Running::submit(engine, valid.engine_requests())?,
        (Backend::Upstream(_), None) => {
            return Err(AppError::bad(
                "model",
                "this model is served by an upstream server (gateway mode), which takes chat completions only",
            ))
        }
    };
    let out = Output::new(&valid, endpoint, rec.id.clone(), rec.start);
    let render = match api {
        Api::OpenAi => Render::OpenAi,
        Api::Anthropic => Render::Anthropic(anthropic::MessageStream::new(
            valid.prompts.iter().map(|p| p.ids.len()).sum(),
            window_limited,
        )),
    };
    let running = Guarded::new(running, input.as_ref(), valid.choices());
    if valid.stream {
        Ok(stream(state.clone(), running, out, rec.detach(), render))
    } else {
        collect(state, running, out, rec, render).await
    }
}

/// Where the pipeline's typed results go: written as they are (OpenAI's shapes), or through
/// the Anthropic adapter.
enum Render {
    OpenAi,
    Anthropic(anthropic::MessageStream),
}

impl Render {
    fn chat_completion(&self, c: wire::ChatCompletion) -> Response {
        match self {
            Render::OpenAi => Json(c).into_response(),
            Render::Anthropic(s) => Json(anthropic::message(c, s.window_limited())).into_response(),
        }
    }

    fn chunk(&mut self, c: Chunk, out: &mut VecDeque<Event>) {
        match (self, c) {
            (Render::OpenAi, Chunk::Chat(c)) => out.push_back(data(&c)),
            (Render::OpenAi, Chunk::Completion(c)) => out.push_back(data(&c)),
            (Render::Anthropic(s), Chunk::Chat(c)) => {
                out.extend(s.chunk(&c).iter().map(anthropic_event))
            }
            (Render::Anthropic(_), Chunk::Completion(_)) => {
                unreachable!("Messages requests run as chat requests")
            }
        }
    }

    /// The events of an error that ends the stream.
    fn error(&mut self, e: &AppError, out: &mut VecDeque<Event>) {
        match self {
            // OpenAI's clients raise the error object, then read `[DONE]`.
            Render::OpenAi => {
                out.push_back(data(&wire::ErrorResponse { error: e.body() }));
                out.push_back(Event::default().data("[DONE]"));
            }
            Render::Anthropic(s) => out.push_back(anthropic_event(&s.error(e))),
        }
    }

    /// The events after the last chunk.
    fn done(&mut self, out: &mut VecDeque<Event>) {
        match self {
            Render::OpenAi => out.push_back(Event::default().data("[DONE]")),
            // `message_stop` came with the usage chunk.
            Render::Anthropic(_) => {}
        }
    }
}

/// A stream chunk of either endpoint, before it is written.
enum Chunk {
    Chat(wire::ChatCompletionChunk),
    Completion(wire::Completion),
}

fn data(body: &impl serde::Serialize) -> Event {
    Event::default().data(serde_json::to_string(body).expect("chunks serialize"))
}

fn anthropic_event(e: &anthropic::StreamEvent) -> Event {
    data(e).event(e.name())
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(body).map_err(|e| AppError::BadRequest {
        message: format!("the request body is not valid JSON for this endpoint: {e}"),
        param: None,
        code: None,
    })
}

/// Most characters of an end user's id (Anthropic's limit for `metadata.user_id`).
const MAX_END_USER: usize = 256;

/// The end user a request names, for the audit entry and the access log.
fn end_user(user: Option<String>) -> Result<Option<String>, AppError> {
    match user {
        Some(u) if u.chars().count() > MAX_END_USER => Err(AppError::bad(
            "user",
            format!("`user` (Anthropic's `metadata.user_id`) is longer than {MAX_END_USER} characters; send an opaque id such as a hash"),
        )),
        u => Ok(u.filter(|u| !u.is_empty())),
    }
}

/// The request body, or the error that says why it could not be read.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, AppError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::TooLarge(format!(
                "the request body is larger than {BODY_LIMIT} bytes"
            ))
        } else if crate::conn::is_body_timeout(&e) {
            AppError::Timeout(format!(
                "the request body did not arrive in time ({}); send it in one go",
                e.body_text()
            ))
        } else {
            AppError::BadRequest {
                message: format!("cannot read the request body: {}", e.body_text()),
                param: None,
                code: None,
            }
        }
    })
}

/// Waits for every choice and answers with one JSON body.
async fn collect(
    state: &AppState,
    mut running: Guarded,
    mut out: Output,
    rec: &mut RequestRecord,
    render: Render,
) -> Result<Response, AppError> {
    while let Some(ChoiceEvent { choice, at, event }) = running.next().await {
        out.outputs[choice].take(at, &event);
        rec.used_tokens = out.usage().total_tokens as u64;
    }
    rec.audit_outputs(&running, &out);
    drop(running);
    out.record_latencies(state);
    out.check_outcome(&rec.id)?;
    let checks = out.check_json(state);
    rec.audit.rails.extend(checks);
    let usage = out.usage();
    rec.finish(200, Some(&usage));
    Ok(match out.endpoint {
        Endpoint::Chat => render.chat_completion(out.chat_completion(usage)),
        Endpoint::Completion => Json(out.completion(usage)).into_response(),
    })
}

/// Answers with server-sent events: one chunk per delta, a finish chunk per choice, the usage
/// chunk when asked, then `[DONE]`.
fn stream(
    state: AppState,
    running: Guarded,
    out: Output,
    rec: RequestRecord,
    render: Render,
) -> Response {
    let mut st = StreamState {
        state,
        running,
        out,
        rec,
        render,
        pending: VecDeque::new(),
        ended: false,
    };
    for c in st.out.start_chunks() {
        st.push(c);
    }
    let events = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.ended {
                // The last events acknowledge the request: its audit entry is committed first.
                st.rec.committed().await;
            }
            if let Some(event) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), st));
            }
            if st.ended {
                return None;
            }
            match st.running.next().await {
                Some(ev) => st.on_event(ev),
                None => st.on_end(),
            }
        }
    });
    Sse::new(events).into_response()
}

struct StreamState {
    state: AppState,
    running: Guarded,
    out: Output,
    rec: RequestRecord,
    render: Render,
    pending: VecDeque<Event>,
    ended: bool,
}

impl StreamState {
    fn push(&mut self, c: Chunk) {
        self.render.chunk(c, &mut self.pending);
    }

    fn on_event(&mut self, ChoiceEvent { choice, at, event }: ChoiceEvent) {
        let offset = self.out.outputs[choice].text_chars();
        self.out.outputs[choice].take(at, &event);
        self.rec.used_tokens = self.out.usage().total_tokens as u64;
        match &event {
            ServeEvent::Started { .. } => {}
            ServeEvent::Delta { delta, logprob, .. } if !self.out.tool_streams.is_empty() => {
                // Content up to a possible call goes out as content; calls as call pieces.
                let answer = &self.out.outputs[choice].content;
                let pieces = self.out.tool_streams[choice].update(answer, false);
                let delta = seek_reasoning::Delta {
                    reasoning: delta.reasoning.clone(),
                    content: pieces.content,
                };
                if let Some(c) = self
                    .out
                    .delta_chunk(choice, &delta, logprob.as_ref(), offset)
                {
                    self.push(c);
                }
                if !pieces.calls.is_empty() {
                    let c = self.out.tool_call_chunk(choice, pieces.calls);
                    self.push(c);
                }
            }
            ServeEvent::Delta { delta, logprob, .. } => {
                if let Some(c) = self
                    .out
                    .delta_chunk(choice, delta, logprob.as_ref(), offset)
                {
                    self.push(c);
                }
            }
            ServeEvent::Finished {
                finish_reason: FinishReason::Abort,
                ..
            } => self.error(AppError::Unavailable {
                message: "the server shut down before the generation finished".into(),
                code: "shutting_down",
            }),
            ServeEvent::Finished { finish_reason, .. } => {
                let mut calls = false;
                if !self.out.tool_streams.is_empty() {
                    let answer = &self.out.outputs[choice].content;
                    let pieces = self.out.tool_streams[choice].update(answer, true);
                    if !pieces.content.is_empty() {
                        let delta = seek_reasoning::Delta {
                            reasoning: String::new(),
                            content: pieces.content,
                        };
                        if let Some(c) = self.out.delta_chunk(choice, &delta, None, 0) {
                            self.push(c);
                        }
                    }
                    if !pieces.calls.is_empty() {
                        let c = self.out.tool_call_chunk(choice, pieces.calls);
                        self.push(c);
                    }
                    calls = self.out.tool_streams[choice].has_calls();
                }
                let c = match (*finish_reason, calls) {
                    (FinishReason::Stop, true) => self.out.chat_chunk(
                        vec![wire::ChunkChoice {
                            index: choice,
                            delta: wire::ChunkDelta::default(),
                            logprobs: None,
                            finish_reason: Some("tool_calls".into()),
                            stop_reason: None,
                        }],
                        self.out.chunk_usage(),
                    ),
                    (reason, _) => self.out.finish_chunk(choice, reason),
                };
                self.push(c);
            }
            ServeEvent::Failed { message } => {
                tracing::error!(request_id = %self.rec.id, choice, error = %message, "generation failed");
                self.error(generation_failed(&self.rec.id));
            }
        }
    }

    fn on_end(&mut self) {
        self.rec.audit_outputs(&self.running, &self.out);
        if let Err(e) = self.out.check_outcome(&self.rec.id) {
            return self.error(e);
        }
        self.out.record_latencies(&self.state);
        let checks = self.out.check_json(&self.state);
        self.rec.audit.rails.extend(checks);
        let usage = self.out.usage();
        if self.out.include_usage {
            let c = self.out.usage_chunk(usage);
            self.push(c);
        }
        self.render.done(&mut self.pending);
        self.rec.finish(200, Some(&usage));
        self.ended = true;
    }

    /// Ends the stream with an error event (the clients raise it).
    fn error(&mut self, e: AppError) {
        self.rec.audit_outputs(&self.running, &self.out);
        self.out.record_latencies(&self.state);
        self.render.error(&e, &mut self.pending);
        self.rec.finish_with(e.status().as_u16(), None, Some(&e));
        self.ended = true;
    }
}

fn generation_failed(id: &str) -> AppError {
    AppError::Internal(format!(
        "generation failed; the server log has the details under request id {id}"
    ))
}

/// Everything needed to write a request's responses, and its choices' outputs.
struct Output {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    start: Instant,
    n: usize,
    include_usage: bool,
    logprobs: bool,
    reasoning: bool,
    json_object: bool,
    json_schema: Option<serde_json::Value>,
    prices: crate::price::Prices,
    outputs: Vec<ChoiceOutput>,
    /// Chat with tools: the model's call format, the offered names, and per choice what its
    /// stream has sent.
    tool_format: Option<ToolFormat>,
    tool_names: Vec<String>,
    tool_streams: Vec<ToolStream>,
}

impl Output {
    fn new(v: &ValidRequest, endpoint: Endpoint, id: String, start: Instant) -> Self {
        let choices = v.choices();
        Self {
            endpoint,
            id,
            created: unix_now(),
            model: v.model.name.clone(),
            start,
            n: v.n,
            include_usage: v.include_usage,
            logprobs: v.logprobs.is_some(),
            reasoning: v.model.reasoning && endpoint == Endpoint::Chat,
            json_object: v.json_object,
            json_schema: v.json_schema.clone(),
            prices: v.model.prices,
            outputs: (0..choices).map(|_| ChoiceOutput::default()).collect(),
            tool_format: v.tools.as_ref().map(|t| t.format),
            tool_names: v
                .tools
                .as_ref()
                .map(|t| t.names.clone())
                .unwrap_or_default(),
            tool_streams: match &v.tools {
                Some(t) => (0..choices)
                    .map(|_| ToolStream::new(t.format, t.names.clone()))
                    .collect(),
                None => Vec::new(),
            },
        }
    }

    /// Usage as billed: each prompt once (its first choice's counts), every choice's output.
    /// Before every choice has finished, what was used so far.
    fn usage(&self) -> wire::Usage {
        let (mut prompt, mut hit, mut completion, mut reasoning) = (0, 0, 0, 0);
        for (i, o) in self.outputs.iter().enumerate() {
            if i % self.n == 0 {
                prompt += o.usage.prompt_tokens;
                hit += o.usage.cached_prompt_tokens;
            }
            completion += o.usage.completion_tokens;
            reasoning += o.usage.reasoning_tokens;
        }
        let miss = prompt - hit;
        let cost = self.prices.cost(hit, miss, completion);
        wire::Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: wire::PromptTokensDetails { cached_tokens: hit },
            completion_tokens_details: wire::CompletionTokensDetails {
                reasoning_tokens: reasoning,
            },
            prompt_cache_hit_tokens: hit,
            prompt_cache_miss_tokens: miss,
            cost: cost.total,
            cost_details: cost,
        }
    }

    /// 500 when a choice failed or never finished, 503 when the engine cancelled one.
    fn check_outcome(&self, id: &str) -> Result<(), AppError> {
        for (i, o) in self.outputs.iter().enumerate() {
            if let Some(m) = &o.failed {
                tracing::error!(request_id = %id, choice = i, error = %m, "generation failed");
                return Err(generation_failed(id));
            }
            match o.finish {
                None => {
                    tracing::error!(request_id = %id, choice = i, "the engine stopped without finishing the request");
                    return Err(generation_failed(id));
                }
                Some(FinishReason::Abort) => {
                    return Err(AppError::Unavailable {
                        message: "the server shut down before the generation finished".into(),
                        code: "shutting_down",
                    })
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn record_latencies(&mut self, state: &AppState) {
        for o in &mut self.outputs {
            let gaps = std::mem::take(&mut o.gaps);
            state
                .metrics()
                .latencies(&self.model, o.ttft(self.start), &gaps);
        }
    }

    /// Validates each finished answer as `response_format` asks (JSON, or JSON matching the
    /// schema): an invalid one is logged and counted, and the audit gets one result per choice.
    fn check_json(&self, state: &AppState) -> Vec<(String, seek_guard::RailResult)> {
        if !self.json_object {
            return Vec::new();
        }
        let mut results = Vec::new();
        for (i, o) in self.outputs.iter().enumerate() {
            if o.finish != Some(FinishReason::Stop) {
                continue;
            }
            let started = Instant::now();
            let violations: Vec<String> = match &self.json_schema {
                Some(schema) => seek_guard::validate_json(&o.content, schema)
                    .iter()
                    .map(|v| v.to_string())
                    .collect(),
                None => serde_json::from_str::<serde_json::Value>(o.content.trim())
                    .err()
                    .map(|e| vec![format!("the answer is not JSON: {e}")])
                    .unwrap_or_default(),
            };
            if !violations.is_empty() {
                tracing::warn!(request_id = %self.id, choice = i, violations = %violations.join("; "), "response_format: the answer does not match");
                state.metrics().json_invalid(&self.model);
            }
            results.push((
                "output:content".to_string(),
                seek_guard::RailResult {
                    rail: if self.json_schema.is_some() {
                        "json_schema"
                    } else {
                        "json_object"
                    }
                    .into(),
                    kind: "schema",
                    action: seek_guard::Action::Flag,
                    triggered: !violations.is_empty(),
                    findings: violations
                        .into_iter()
                        .map(|what| seek_guard::Finding {
                            what,
                            start: 0,
                            end: 0,
                        })
                        .collect(),
                    latency_us: started.elapsed().as_micros() as u64,
                },
            ));
        }
        results
    }

    fn chunk_usage(&self) -> ChunkUsage {
        if self.include_usage {
            ChunkUsage::Null
        } else {
            ChunkUsage::Absent
        }
    }

    fn chat_chunk(&self, choices: Vec<wire::ChunkChoice>, usage: ChunkUsage) -> Chunk {
        let c = wire::ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        };
        Chunk::Chat(c)
    }

    fn completion_chunk(&self, choices: Vec<wire::CompletionChoice>, usage: ChunkUsage) -> Chunk {
        let c = wire::Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        };
        Chunk::Completion(c)
    }

    /// Chat streams open each choice with the assistant role.
    fn start_chunks(&self) -> Vec<Chunk> {
        if self.endpoint != Endpoint::Chat {
            return vec![];
        }
        (0..self.outputs.len())
            .map(|index| {
                let choice = wire::ChunkChoice {
                    index,
                    delta: wire::ChunkDelta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        ..Default::default()
                    },
                    logprobs: None,
                    finish_reason: None,
                    stop_reason: None,
                };
                self.chat_chunk(vec![choice], self.chunk_usage())
            })
            .collect()
    }

    /// A chat chunk of tool-call pieces.
    fn tool_call_chunk(&self, index: usize, calls: Vec<wire::ToolCallDelta>) -> Chunk {
        let choice = wire::ChunkChoice {
            index,
            delta: wire::ChunkDelta {
                tool_calls: Some(calls),
                ..Default::default()
            },
            logprobs: None,
            finish_reason: None,
            stop_reason: None,
        };
        self.chat_chunk(vec![choice], self.chunk_usage())
    }

    /// The chunk of one delta, or none when it carries nothing to send.
    fn delta_chunk(
        &self,
        index: usize,
        delta: &seek_reasoning::Delta,
        logprob: Option<&TokenLogprob>,
        offset: usize,
    ) -> Option<Chunk> {
        if delta.is_empty() && logprob.is_none() {
            return None;
        }
        Some(match self.endpoint {
            Endpoint::Chat => {
                let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
                let mut d = wire::ChunkDelta {
                    content: some(&delta.content),
                    reasoning_content: some(&delta.reasoning),
                    reasoning: some(&delta.reasoning),
                    role: None,
                    tool_calls: None,
                };
                if delta.is_empty() {
                    d.content = Some(String::new());
                }
                let choice = wire::ChunkChoice {
                    index,
                    delta: d,
                    logprobs: logprob.map(|l| wire::ChatLogprobs {
                        content: vec![chat_logprob(l)],
                    }),
                    finish_reason: None,
                    stop_reason: None,
                };
                self.chat_chunk(vec![choice], self.chunk_usage())
            }
            Endpoint::Completion => {
                let choice = wire::CompletionChoice {
                    index,
                    text: format!("{}{}", delta.reasoning, delta.content),
                    logprobs: logprob
                        .map(|l| completion_logprobs(std::slice::from_ref(l), &[offset])),
                    finish_reason: None,
                };
                self.completion_chunk(vec![choice], self.chunk_usage())
            }
        })
    }

    fn finish_chunk(&self, index: usize, reason: FinishReason) -> Chunk {
        let reason = Some(reason.to_string());
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(
                vec![wire::ChunkChoice {
                    index,
                    delta: wire::ChunkDelta::default(),
                    logprobs: None,
                    finish_reason: reason,
                    stop_reason: self.outputs[index].stop.clone(),
                }],
                self.chunk_usage(),
            ),
            Endpoint::Completion => self.completion_chunk(
                vec![wire::CompletionChoice {
                    index,
                    text: String::new(),
                    logprobs: None,
                    finish_reason: reason,
                }],
                self.chunk_usage(),
            ),
        }
    }

    fn usage_chunk(&self, usage: wire::Usage) -> Chunk {
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(vec![], ChunkUsage::Final(usage)),
            Endpoint::Completion => self.completion_chunk(vec![], ChunkUsage::Final(usage)),
        }
    }

    fn chat_completion(&self, usage: wire::Usage) -> wire::ChatCompletion {
        let choices = self
            .outputs
            .iter()
            .enumerate()
            .map(|(index, o)| {
                let reasoning =
                    (self.reasoning || !o.reasoning.is_empty()).then(|| o.reasoning.clone());
                let (content, tool_calls) = match self.tool_format {
                    Some(f) => toolcalls::finished(f, &self.tool_names, &o.content),
                    None => (Some(o.content.clone()), None),
                };
                let finish_reason = match (o.finish, &tool_calls) {
                    (Some(FinishReason::Stop), Some(_)) => Some("tool_calls".to_string()),
                    (f, _) => f.map(|f| f.to_string()),
                };
                wire::ChatChoice {
                    index,
                    message: wire::ResponseMessage {
                        role: "assistant".into(),
                        content,
                        reasoning_content: reasoning.clone(),
                        reasoning,
                        tool_calls,
                    },
                    logprobs: self.logprobs.then(|| wire::ChatLogprobs {
                        content: o.logprobs.iter().map(chat_logprob).collect(),
                    }),
                    finish_reason,
                    stop_reason: o.stop.clone(),
                }
            })
            .collect();
        wire::ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn completion(&self, usage: wire::Usage) -> wire::Completion {
        let choices = self
            .outputs
            .iter()
            .enumerate()
            .map(|(index, o)| wire::CompletionChoice {
                index,
                text: format!("{}{}", o.reasoning, o.content),
                logprobs: self
                    .logprobs
                    .then(|| completion_logprobs(&o.logprobs, &o.token_offsets)),
                finish_reason: o.finish.map(|f| f.to_string()),
            })
            .collect();
        wire::Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: ChunkUsage::Final(usage),
        }
    }
}

fn chat_logprob(l: &TokenLogprob) -> wire::TokenLogprob {
    wire::TokenLogprob {
        token: l.token.clone(),
        logprob: l.logprob,
        bytes: l.token.as_bytes().to_vec(),
        top_logprobs: l
            .top
            .iter()
            .map(|(_, token, logprob)| wire::TopLogprob {
                token: token.clone(),
                logprob: *logprob,
                bytes: token.as_bytes().to_vec(),
            })
            .collect(),
    }
}

fn completion_logprobs(tokens: &[TokenLogprob], offsets: &[usize]) -> wire::CompletionLogprobs {
    wire::CompletionLogprobs {
        tokens: tokens.iter().map(|l| l.token.clone()).collect(),
        token_logprobs: tokens.iter().map(|l| l.logprob).collect(),
        top_logprobs: tokens
            .iter()
            .map(|l| {
                l.top
                    .iter()
                    .map(|(_, t, lp)| (t.clone(), serde_json::Value::from(*lp)))
                    .collect()
            })
            .collect(),
        text_offset: offsets.to_vec(),
    }
}

/// One request's access-log line and metrics update, written exactly once: by `finish`, or on
/// drop with status 499 when the client went away first.
pub(crate) struct RequestRecord {
    state: AppState,
    pub id: String,
    endpoint: &'static str,
    pub start: Instant,
    pub tenant: String,
    model: String,
    /// Tokens used so far, debited from the tenant's rate limit if the record is written
    /// without usage (the client left, the generation failed).
    pub used_tokens: u64,
    done: bool,
    /// What the audit entry will say.
    pub audit: AuditDraft,
    /// The audit entry's write, once finished: the answer waits for its commit, so an
    /// acknowledged request is in the audit log even if the process is killed next.
    written: Option<tokio::task::JoinHandle<()>>,
}

impl RequestRecord {
    fn new(state: &AppState, endpoint: &'static str, prefix: &str) -> Self {
        Self {
            state: state.clone(),
            id: format!("{prefix}{:032x}", rand::random::<u128>()),
            endpoint,
            start: Instant::now(),
            tenant: "unknown".into(),
            model: "unknown".into(),
            used_tokens: 0,
            done: false,
            audit: AuditDraft::default(),
            written: None,
        }
    }

    /// Takes the texts and output rails of a finished (or failed) request into the draft.
    fn audit_outputs(&mut self, running: &Guarded, out: &Output) {
        let (rails, raw_reasoning, raw_content) = running.audit_parts();
        self.audit.rails.extend(rails);
        let sent = |f: fn(&ChoiceOutput) -> &str| guarded::join_choices(out.outputs.iter().map(f));
        let reasoning = sent(|o| o.reasoning.as_str());
        self.audit.reasoning = Some(raw_reasoning).filter(|r| !r.is_empty());
        self.audit.reasoning_redacted = Some(reasoning).filter(|r| !r.is_empty());
        self.audit.answer = Some(raw_content);
        self.audit.answer_redacted = Some(sent(|o| o.content.as_str()));
        self.audit.finish_reason = out
            .outputs
            .first()
            .and_then(|o| o.finish)
            .map(|f| f.to_string());
    }

    /// Labels the record with the requested model, if it is one this server serves (the
    /// label set stays bounded whatever clients send).
    fn set_model(&mut self, state: &AppState, name: &str) {
        if state.config().model_names.iter().any(|n| n == name) {
            self.model = name.to_string();
        }
    }

    /// Hands the record to a stream that outlives the handler.
    fn detach(&mut self) -> RequestRecord {
        self.done = true;
        RequestRecord {
            state: self.state.clone(),
            id: self.id.clone(),
            endpoint: self.endpoint,
            start: self.start,
            tenant: self.tenant.clone(),
            model: self.model.clone(),
            used_tokens: self.used_tokens,
            done: false,
            audit: std::mem::take(&mut self.audit),
            written: None,
        }
    }

    fn fail(&mut self, e: AppError) -> Response {
        self.failed(&e);
        e.into_response()
    }

    fn failed(&mut self, e: &AppError) {
        self.finish_with(e.status().as_u16(), None, Some(e));
    }

    fn finish(&mut self, status: u16, usage: Option<&wire::Usage>) {
        self.finish_with(status, usage, None);
    }

    fn finish_with(&mut self, status: u16, usage: Option<&wire::Usage>, error: Option<&AppError>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64();
        // Before the metrics, so a scrape that sees this request sees its tokens debited.
        let tokens = usage.map_or(self.used_tokens, |u| u.total_tokens as u64);
        if tokens > 0 {
            self.state
                .rate_limiter()
                .debit(&self.tenant, tokens, Instant::now());
        }
        let m = self.state.metrics();
        m.request(self.endpoint, &self.model, &self.tenant, status, secs);
        if let Some(u) = usage {
            m.usage(&self.model, &self.tenant, u);
        }
        let u = usage.copied();
        tracing::info!(
            target: "seek_server::access",
            request_id = %self.id,
            tenant = %self.tenant,
            end_user = self.audit.end_user.as_deref(),
            model = %self.model,
            endpoint = %self.endpoint,
            status,
            prompt_tokens = u.map(|u| u.prompt_tokens),
            cached_tokens = u.map(|u| u.prompt_cache_hit_tokens),
            completion_tokens = u.map(|u| u.completion_tokens),
            reasoning_tokens = u.map(|u| u.completion_tokens_details.reasoning_tokens),
            cost_usd = u.map(|u| u.cost),
            latency_ms = (secs * 1e3).round() as u64,
            error = error.map(tracing::field::display),
            "request"
        );
        if let Some(log) = &self.state.config().audit {
            let entry = std::mem::take(&mut self.audit).entry(guarded::AuditMeta {
                request_id: &self.id,
                tenant: &self.tenant,
                model: &self.model,
                endpoint: self.endpoint,
                status,
                usage,
                latency_ms: secs * 1e3,
                error: error.map(|e| e.to_string()),
            });
            self.written = guarded::record(log.clone(), entry);
        }
    }

    /// Waits until the audit entry (if any) is committed.
    async fn committed(&mut self) {
        if let Some(w) = self.written.take() {
            let _ = w.await;
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        // The client went away before the answer was complete.
        self.finish(499, None);
    }
}
