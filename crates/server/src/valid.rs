//! Parse, don't validate: wire requests become [`ValidRequest`]s here, in one pass that checks
//! every field and limit once. Past this module, nothing re-checks a request.
//!
//! Choices made where OpenAI leaves room (each named in the error it produces):
//! - a setting left out takes the model's default (DeepSeek's temperature 0.6 and top-p 0.95
//!   for R1 models, see `seek_engine::chat::default_sampling`);
//! - chat `max_tokens` defaults to the room left in the context window (vLLM); completions
//!   default to 16 (OpenAI's and vLLM's default for that endpoint);
//! - `n` is at most [`MAX_N`]; `stop` holds at most 4 strings (OpenAI's limit);
//! - `response_format: json_object` requires the word "json" in the messages (OpenAI's rule);
//!   decoding is not constrained, the result is checked instead (see `crate::routes`);
//!   `json_schema` is refused.

use std::sync::Arc;

use seek_engine::chat::{render_chat, render_raw};
use seek_engine::sequence::SequenceParams;
use seek_engine::serve::ServeRequest;
use seek_engine::EngineError;
use seek_tokenizer::TokenizerError;
use seek_types::{ChatMessage, SamplingParams, TokenId};

use crate::error::AppError;
use crate::state::{AppState, Backend, ServedModel};
use crate::wire::{
    ChatCompletionRequest, CompletionRequest, MessageContent, Prompt, ResponseFormat, Stop,
    StreamOptions,
};

/// Most choices per prompt.
pub const MAX_N: usize = 16;
const MAX_N_U64: u64 = MAX_N as u64;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Most `top_logprobs` for chat (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most `logprobs` for legacy completions (OpenAI's limit).
pub const MAX_COMPLETION_LOGPROBS: usize = 5;
/// `max_tokens` of a completion request that leaves it out (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// One prompt, encoded, with what to generate after it.
#[derive(Debug, Clone)]
pub(crate) struct ValidPrompt {
    pub ids: Vec<TokenId>,
    pub params: SequenceParams,
}

/// A checked request of either endpoint.
pub(crate) struct ValidRequest {
    pub model: Arc<ServedModel>,
    pub prompts: Vec<ValidPrompt>,
    /// Choices per prompt.
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// `Some(k)`: log-probabilities with the `k` best alternatives.
    pub logprobs: Option<usize>,
    /// `response_format: json_object` (or `json_schema`).
    pub json_object: bool,
    /// `response_format: json_schema`: the schema each answer is validated against.
    pub json_schema: Option<serde_json::Value>,
    /// Gateway mode: the body to forward to the upstream (the client's JSON, its checked
    /// messages in place); the prompts are then empty.
    pub upstream_body: Option<serde_json::Value>,
}

impl ValidRequest {
    /// Choices in the response: `n` per prompt (an upstream request counts as one prompt).
    pub fn choices(&self) -> usize {
        self.prompts
            .len()
            .max(usize::from(self.upstream_body.is_some()))
            * self.n
    }

    /// The engine requests: prompt `i`'s choice `j` at index `i * n + j`, seeded `seed + j`.
    pub fn engine_requests(&self) -> Vec<ServeRequest> {
        let mut out = Vec::with_capacity(self.prompts.len() * self.n);
        for p in &self.prompts {
            for j in 0..self.n {
                let mut params = p.params.clone();
                params.sampling.seed = params.sampling.seed.map(|s| s.wrapping_add(j as u64));
                out.push(ServeRequest {
                    prompt: p.ids.clone(),
                    params,
                    logprobs: self.logprobs,
                });
            }
        }
        out
    }

    /// Caps each prompt's completion budget at `max_tokens`; whether the room left in the
    /// context window is the tighter limit for any of them. Anthropic's `max_tokens` is such a
    /// cap (its clients send 32000 whatever the model): a Messages request is checked without
    /// it, so its budget starts as the room left, then capped here.
    pub fn cap_max_tokens(&mut self, max_tokens: u64) -> bool {
        let mut window = false;
        for p in &mut self.prompts {
            if (p.params.max_tokens as u64) < max_tokens {
                window = true;
            } else {
                p.params.max_tokens = max_tokens as usize;
            }
        }
        window
    }

    /// Checks a chat request.
    pub fn chat(
        req: ChatCompletionRequest,
        mut raw: serde_json::Value,
        state: &AppState,
    ) -> Result<Self, AppError> {
        let model = state.model(&req.model)?;
        if req.messages.is_empty() {
            return Err(AppError::bad(
                "messages",
                "`messages` is empty: send at least one user message",
            ));
        }
        let mut messages = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(AppError::bad(
                        "messages",
                        format!("messages[{i}].role is {other:?}; use system, developer, user, assistant or tool"),
                    ))
                }
            };
            let content = match m.content {
                Some(MessageContent::Text(t)) => t,
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, p) in parts.into_iter().enumerate() {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => texts.push(t),
                            ("text", None) => {
                                return Err(AppError::bad("messages", format!("messages[{i}].content[{j}] is a text part without `text`")))
                            }
                            (kind, _) => {
                                return Err(AppError::bad(
                                    "messages",
                                    format!("messages[{i}].content[{j}] is a {kind:?} part; this server reads text parts only"),
                                ))
                            }
                        }
                    }
                    texts.join("\n")
                }
                None if role == "assistant" => String::new(),
                None => {
                    return Err(AppError::bad(
                        "messages",
                        format!("messages[{i}].content is missing; a {role} message needs content"),
                    ))
                }
            };
            messages.push(ChatMessage {
                role: role.into(),
                content,
                reasoning_content: m.reasoning_content,
            });
        }
        let (json_object, json_schema) = response_format(req.response_format.as_ref())?;
        if json_object
            && json_schema.is_none()
            && !messages
                .iter()
                .any(|m| m.content.to_ascii_lowercase().contains("json"))
        {
            return Err(AppError::bad(
                "response_format",
                "'messages' must contain the word 'json' in some form to use 'response_format' of type 'json_object'",
            ));
        }
        let stream = req.stream.unwrap_or(false);
        let include_usage = include_usage(stream, req.stream_options.as_ref())?;
        let n = n_choices(req.n)?;
        let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
            (true, k) => {
                let k = k.unwrap_or(0);
                if k > MAX_TOP_LOGPROBS as u64 {
                    return Err(AppError::bad(
                        "top_logprobs",
                        format!("top_logprobs is {k}; it must be between 0 and {MAX_TOP_LOGPROBS}"),
                    ));
                }
                Some(k as usize)
            }
            (false, Some(_)) => {
                return Err(AppError::bad(
                    "top_logprobs",
                    "top_logprobs needs `logprobs: true`",
                ))
            }
            (false, None) => None,
        };
        let sampling = sampling(
            &model.defaults,
            SamplingFields {
                temperature: req.temperature,
                top_p: req.top_p,
                seed: req.seed,
                presence_penalty: req.presence_penalty,
                frequency_penalty: req.frequency_penalty,
                top_k: req.top_k,
                min_p: req.min_p,
                repetition_penalty: req.repetition_penalty,
            },
        )?;
        let stop = stops(req.stop)?;
        let tokenizer = match &model.backend {
            Backend::Local { tokenizer, .. } => tokenizer.clone(),
            Backend::Upstream(_) => {
                if logprobs.is_some() {
                    return Err(AppError::bad(
                        "logprobs",
                        "log-probabilities are not passed through in gateway mode",
                    ));
                }
                // The checked messages (text parts joined) replace the client's.
                raw["messages"] = serde_json::to_value(
                    messages
                        .iter()
                        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
                        .collect::<Vec<_>>(),
                )
                .expect("messages serialize");
                return Ok(Self {
                    prompts: Vec::new(),
                    model,
                    n,
                    stream,
                    include_usage,
                    logprobs,
                    json_object,
                    json_schema,
                    upstream_body: Some(raw),
                });
            }
        };
        let rendered =
            render_chat(&tokenizer, &messages).map_err(|e| render_error("messages", e))?;
        let (param, max_tokens) = match (req.max_completion_tokens, req.max_tokens) {
            (Some(m), _) => ("max_completion_tokens", Some(m)),
            (None, m) => ("max_tokens", m),
        };
        let max_tokens = fit_context(&model, rendered.ids.len(), param, max_tokens, None)?;
        Ok(Self {
            prompts: vec![ValidPrompt {
                ids: rendered.ids,
                params: SequenceParams {
                    sampling,
                    max_tokens,
                    stop,
                    ignore_eos: req.ignore_eos.unwrap_or(false),
                    starts_in_reasoning: rendered.starts_in_reasoning,
                    max_reasoning_tokens: None,
                    split_reasoning: true,
                },
            }],
            model,
            n,
            stream,
            include_usage,
            logprobs,
            json_object,
            json_schema,
            upstream_body: None,
        })
    }

    /// Checks a completion request.
    pub fn completion(req: CompletionRequest, state: &AppState) -> Result<Self, AppError> {
        let model = state.model(&req.model)?;
        let Backend::Local { tokenizer, .. } = &model.backend else {
            return Err(AppError::bad(
                "model",
                "this model is served by an upstream server (gateway mode), which takes chat completions only",
            ));
        };
        let tokenizer = tokenizer.clone();
        if req.echo.unwrap_or(false) {
            return Err(AppError::bad(
                "echo",
                "`echo` is not supported; leave it out",
            ));
        }
        if req.suffix.is_some() {
            return Err(AppError::bad(
                "suffix",
                "`suffix` is not supported; leave it out",
            ));
        }
        let n = n_choices(req.n)?;
        if req.best_of.is_some_and(|b| b != n as u64) {
            return Err(AppError::bad(
                "best_of",
                "`best_of` must equal `n` (candidates are not ranked); leave it out",
            ));
        }
        let stream = req.stream.unwrap_or(false);
        let include_usage = include_usage(stream, req.stream_options.as_ref())?;
        let logprobs = match req.logprobs {
            Some(k) if k > MAX_COMPLETION_LOGPROBS as u64 => {
                return Err(AppError::bad(
                    "logprobs",
                    format!("logprobs is {k}; it must be between 0 and {MAX_COMPLETION_LOGPROBS}"),
                ))
            }
            k => k.map(|k| k as usize),
        };
        let sampling = sampling(
            &model.defaults,
            SamplingFields {
                temperature: req.temperature,
                top_p: req.top_p,
                seed: req.seed,
                presence_penalty: req.presence_penalty,
                frequency_penalty: req.frequency_penalty,
                top_k: req.top_k,
                min_p: req.min_p,
                repetition_penalty: req.repetition_penalty,
            },
        )?;
        let stop = stops(req.stop)?;
        let vocab = tokenizer.vocab_size();
        let check_ids = |ids: Vec<u32>| -> Result<Vec<TokenId>, AppError> {
            match ids.iter().find(|&&t| t as usize >= vocab) {
                Some(t) => Err(AppError::bad(
                    "prompt",
                    format!("token id {t} is outside the model's vocabulary of {vocab} tokens"),
                )),
                None => Ok(ids),
            }
        };
        let encode = |text: &str| -> Result<Vec<TokenId>, AppError> {
            render_raw(&tokenizer, text)
                .map(|r| r.ids)
                .map_err(|e| render_error("prompt", e))
        };
        let prompts: Vec<Vec<TokenId>> = match req.prompt {
            None => return Err(AppError::bad("prompt", "`prompt` is missing")),
            Some(Prompt::Text(t)) => vec![encode(&t)?],
            Some(Prompt::Texts(ts)) => ts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
            Some(Prompt::Tokens(ids)) => vec![check_ids(ids)?],
            Some(Prompt::TokenLists(l)) => {
                l.into_iter().map(check_ids).collect::<Result<_, _>>()?
            }
        };
        if prompts.is_empty() {
            return Err(AppError::bad("prompt", "`prompt` is an empty list"));
        }
        if prompts.len() * n > MAX_N * 4 {
            return Err(AppError::bad(
                "prompt",
                format!(
                    "{} prompts times n = {n} is more than {} choices; split the request",
                    prompts.len(),
                    MAX_N * 4
                ),
            ));
        }
        let mut valid = Vec::with_capacity(prompts.len());
        for ids in prompts {
            if ids.is_empty() {
                return Err(AppError::bad(
                    "prompt",
                    "a prompt is empty (and the model adds no BOS token); send some text",
                ));
            }
            let max_tokens = fit_context(
                &model,
                ids.len(),
                "max_tokens",
                req.max_tokens,
                Some(DEFAULT_COMPLETION_MAX_TOKENS),
            )?;
            valid.push(ValidPrompt {
                ids,
                params: SequenceParams {
                    sampling: sampling.clone(),
                    max_tokens,
                    stop: stop.clone(),
                    ignore_eos: req.ignore_eos.unwrap_or(false),
                    starts_in_reasoning: false,
                    max_reasoning_tokens: None,
                    // Raw completions return the text as the model wrote it, tags included.
                    split_reasoning: false,
                },
            });
        }
        Ok(Self {
            model,
            prompts: valid,
            n,
            stream,
            include_usage,
            logprobs,
            json_object: false,
            json_schema: None,
            upstream_body: None,
        })
    }
}

/// The sampling fields both endpoints share.
struct SamplingFields {
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
}

fn sampling(defaults: &SamplingParams, f: SamplingFields) -> Result<SamplingParams, AppError> {
    let in_range = |param: &'static str, v: Option<f32>, lo: f32, hi: f32, lo_open: bool| match v {
        Some(x) if !x.is_finite() || x > hi || x < lo || (lo_open && x == lo) => {
            Err(AppError::bad(
                param,
                format!(
                    "{param} is {x}; it must be in {}{lo}, {hi}]",
                    if lo_open { "(" } else { "[" }
                ),
            ))
        }
        _ => Ok(v),
    };
    let temperature = in_range("temperature", f.temperature, 0.0, 2.0, false)?;
    let top_p = in_range("top_p", f.top_p, 0.0, 1.0, true)?;
    let presence = in_range("presence_penalty", f.presence_penalty, -2.0, 2.0, false)?;
    let frequency = in_range("frequency_penalty", f.frequency_penalty, -2.0, 2.0, false)?;
    let min_p = in_range("min_p", f.min_p, 0.0, 1.0, false)?;
    let repetition = in_range("repetition_penalty", f.repetition_penalty, 0.0, 10.0, true)?;
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(AppError::bad(
                "top_k",
                format!("top_k is {k}; use -1 or 0 to disable it, or a positive number"),
            ))
        }
    };
    Ok(SamplingParams {
        temperature: temperature.unwrap_or(defaults.temperature),
        top_p: top_p.unwrap_or(defaults.top_p),
        top_k: if f.top_k.is_some() {
            top_k
        } else {
            defaults.top_k
        },
        min_p: min_p.unwrap_or(defaults.min_p),
        repetition_penalty: repetition.unwrap_or(defaults.repetition_penalty),
        presence_penalty: presence.unwrap_or(defaults.presence_penalty),
        frequency_penalty: frequency.unwrap_or(defaults.frequency_penalty),
        // OpenAI's seed is a signed 64-bit integer; every value maps to a distinct seed.
        seed: f.seed.map(|s| s as u64),
    })
}

fn n_choices(n: Option<u64>) -> Result<usize, AppError> {
    match n.unwrap_or(1) {
        n @ 1..=MAX_N_U64 => Ok(n as usize),
        n => Err(AppError::bad(
            "n",
            format!("n is {n}; it must be between 1 and {MAX_N}"),
        )),
    }
}

fn include_usage(stream: bool, opts: Option<&StreamOptions>) -> Result<bool, AppError> {
    match opts {
        Some(_) if !stream => Err(AppError::bad(
            "stream_options",
            "the 'stream_options' parameter is only allowed when 'stream' is enabled",
        )),
        Some(o) => Ok(o.include_usage.unwrap_or(false)),
        None => Ok(false),
    }
}

fn stops(stop: Option<Stop>) -> Result<Vec<String>, AppError> {
    let list = match stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if list.len() > MAX_STOP {
        return Err(AppError::bad(
            "stop",
            format!(
                "stop has {} strings; at most {MAX_STOP} are allowed",
                list.len()
            ),
        ));
    }
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

/// `(json_object, json_schema)`: whether the answer must be JSON, and the schema it must match.
fn response_format(
    f: Option<&ResponseFormat>,
) -> Result<(bool, Option<serde_json::Value>), AppError> {
    match f.map(|f| f.kind.as_str()) {
        None | Some("text") => Ok((false, None)),
        Some("json_object") => Ok((true, None)),
        Some("json_schema") => {
            let schema = f
                .and_then(|f| f.json_schema.as_ref())
                .and_then(|j| j.schema.clone())
                .ok_or_else(|| {
                    AppError::bad(
                        "response_format",
                        "response_format json_schema needs `json_schema.schema`: the JSON Schema the answer must match",
                    )
                })?;
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(AppError::bad(
                    "response_format",
                    "response_format.json_schema.schema must be a JSON Schema object",
                ));
            }
            Ok((true, Some(schema)))
        }
        Some(other) => Err(AppError::bad(
            "response_format",
            format!("response_format.type is {other:?}; use text, json_object or json_schema"),
        )),
    }
}

/// The completion budget of a `prompt_tokens`-token prompt: `requested` if the context window
/// holds it, else 400 naming both limits; without a request, `default` capped to the room left
/// (or all of it).
fn fit_context(
    model: &ServedModel,
    prompt_tokens: usize,
    param: &'static str,
    requested: Option<u64>,
    default: Option<usize>,
) -> Result<usize, AppError> {
    let n_ctx = model.max_context().unwrap_or(usize::MAX);
    let room = n_ctx.saturating_sub(prompt_tokens);
    let overflow = |asked: String| {
        AppError::BadRequest {
        message: format!(
            "this model's maximum context length is {n_ctx} tokens; your request has {prompt_tokens} prompt tokens and asks for {asked} completion tokens; shorten the prompt or lower {param}"
        ),
        param: Some(if requested.is_some() { param } else { "messages" }),
        code: Some("context_length_exceeded"),
    }
    };
    match requested {
        Some(0) => Err(AppError::bad(
            param,
            format!("{param} is 0; it must be at least 1"),
        )),
        Some(m) if m > room as u64 => Err(overflow(m.to_string())),
        Some(m) => Ok(m as usize),
        None if room == 0 => Err(overflow("at least 1".into())),
        None => Ok(default.map_or(room, |d| d.min(room))),
    }
}

fn render_error(param: &'static str, e: EngineError) -> AppError {
    match e {
        EngineError::Request(m) => AppError::bad(param, m),
        EngineError::Tokenizer(
            e @ (TokenizerError::TemplateRaised(_) | TokenizerError::TemplateRender(_)),
        ) => AppError::bad(param, e.to_string()),
        e => {
            tracing::error!(error = %e, "cannot render the prompt");
            AppError::Internal("cannot render the prompt; see the server log".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_ranges() {
        let d = SamplingParams::r1_defaults();
        let f = |temperature, top_p| SamplingFields {
            temperature,
            top_p,
            seed: Some(-1),
            presence_penalty: None,
            frequency_penalty: None,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
        };
        let s = sampling(&d, f(None, None)).unwrap();
        assert_eq!((s.temperature, s.top_p), (0.6, 0.95));
        assert_eq!(s.seed, Some(u64::MAX));
        assert_eq!(
            sampling(&d, f(Some(0.0), Some(1.0))).unwrap().temperature,
            0.0
        );
        for (t, p, param) in [
            (Some(2.5), None, "temperature"),
            (None, Some(0.0), "top_p"),
            (Some(f32::NAN), None, "temperature"),
        ] {
            let e = sampling(&d, f(t, p)).unwrap_err();
            assert!(
                matches!(e, AppError::BadRequest { param: Some(x), .. } if x == param),
                "{e}"
            );
        }
    }

    #[test]
    fn stop_strings_are_limited() {
        assert_eq!(stops(Some(Stop::One("x".into()))).unwrap(), ["x"]);
        assert!(stops(Some(Stop::Many(vec!["a".into(); 5]))).is_err());
        assert!(stops(None).unwrap().is_empty());
    }

    #[test]
    fn stream_options_need_stream() {
        let o = StreamOptions {
            include_usage: Some(true),
        };
        assert!(include_usage(false, Some(&o)).is_err());
        assert!(include_usage(true, Some(&o)).unwrap());
    }

    #[test]
    fn n_limits() {
        assert_eq!(n_choices(None).unwrap(), 1);
        assert!(n_choices(Some(0)).is_err());
        assert!(n_choices(Some(MAX_N as u64 + 1)).is_err());
    }
}
