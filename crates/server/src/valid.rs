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

use seek_engine::chat::{render_chat_with, render_raw, ChatOptions};
use seek_engine::sequence::SequenceParams;
use seek_engine::serve::ServeRequest;
use seek_engine::EngineError;
use seek_structured::{Constraint, Guide, StructuredError, ToolChoice, ToolFormat, ToolSpec};
use seek_tokenizer::TokenizerError;
use seek_types::{ChatMessage, SamplingParams, TokenId};

use crate::error::AppError;
use crate::state::{AppState, Backend, ServedModel};
use crate::wire::{
    ChatCompletionRequest, CompletionRequest, MessageContent, Prompt, ResponseFormat, Stop,
    StreamOptions, StructuredOutputs, Tool,
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
    /// Chat with tools: how calls are read back out of each answer.
    pub tools: Option<ToolPlan>,
}

/// How a chat request's answers are searched for tool calls.
#[derive(Debug, Clone)]
pub(crate) struct ToolPlan {
    /// The model's tool-call format.
    pub format: ToolFormat,
    /// The request's `tool_choice`.
    pub choice: ToolChoice,
    /// The names of the functions offered.
    pub names: Vec<String>,
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
        mut req: ChatCompletionRequest,
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
        let n_messages = req.messages.len();
        let messages_prefix = req.messages.last().and_then(|m| m.prefix);
        for (i, m) in std::mem::take(&mut req.messages).into_iter().enumerate() {
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
            if m.prefix == Some(true) && (i + 1 != n_messages || role != "assistant") {
                return Err(AppError::bad(
                    "messages",
                    format!("messages[{i}] has `prefix: true`; only the last message may, and it must be an assistant message"),
                ));
            }
            let tool_calls = match m.tool_calls {
                Some(calls) if role == "assistant" => calls
                    .into_iter()
                    .map(|c| seek_types::ToolCall {
                        id: c.id,
                        name: c.function.name,
                        arguments: c.function.arguments,
                    })
                    .collect(),
                Some(calls) if !calls.is_empty() => {
                    return Err(AppError::bad(
                        "messages",
                        format!("messages[{i}] is a {role} message with `tool_calls`; only assistant messages make calls"),
                    ))
                }
                _ => Vec::new(),
            };
            messages.push(ChatMessage {
                role: role.into(),
                content,
                reasoning_content: m.reasoning_content,
                tool_calls,
                tool_call_id: m.tool_call_id,
                name: m.name,
            });
        }
        let continue_final = messages_prefix.unwrap_or(false);
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
        let stop = stops(req.stop.clone())?;
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
                raw["messages"] =
                    serde_json::to_value(messages.iter().map(upstream_message).collect::<Vec<_>>())
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
                    tools: None,
                });
            }
        };
        // Tools: shown to the model through its template unless `tool_choice` is `none`;
        // `required` or a named function is enforced by the grammar of the model's format.
        let tool_specs = tool_specs(req.tools.as_deref())?;
        let choice = tool_choice(req.tool_choice.as_ref(), &tool_specs)?;
        let plan = match (&tool_specs[..], &choice) {
            ([], _) | (_, ToolChoice::None) => None,
            _ => Some(ToolPlan {
                format: ToolFormat::detect(tokenizer.chat_template().map(|t| t.source()))
                    .map_err(|e| AppError::bad("tools", e.to_string()))?,
                choice: choice.clone(),
                names: tool_specs.iter().map(|t| t.name.clone()).collect(),
            }),
        };
        let template_tools: Vec<serde_json::Value> = match &plan {
            Some(_) => req
                .tools
                .iter()
                .flatten()
                .map(|t| serde_json::to_value(t).expect("tools serialize"))
                .collect(),
            None => Vec::new(),
        };
        let explicit = OutputConstraint::of_chat(&req, json_schema.as_ref(), json_object)?;
        let guide = match (&plan, explicit) {
            (Some(p), Some((param, _)))
                if matches!(p.choice, ToolChoice::Required | ToolChoice::Named(_)) =>
            {
                return Err(AppError::bad(
                    param,
                    "a required tool call and an output constraint cannot both apply; drop one of them",
                ));
            }
            (Some(p), _) if matches!(p.choice, ToolChoice::Required | ToolChoice::Named(_)) => {
                let grammars = model.grammars()?;
                let only = match &p.choice {
                    ToolChoice::Named(n) => Some(n.as_str()),
                    _ => None,
                };
                let c = p
                    .format
                    .grammar(
                        &tool_specs,
                        only,
                        req.parallel_tool_calls.unwrap_or(true),
                        &|t| grammars.special_token(t),
                    )
                    .map_err(|e| AppError::bad("tool_choice", e.to_string()))?;
                Some(compile(&model, "tools", &c)?)
            }
            (_, Some((param, c))) => Some(compile(&model, param, &c)?),
            _ => None,
        };
        let logit_bias = logit_bias(req.logit_bias.as_ref(), tokenizer.vocab_size())?;
        let opts = ChatOptions {
            tools: plan.as_ref().map(|_| &template_tools[..]),
            continue_final,
            template_kwargs: req.chat_template_kwargs.as_ref(),
        };
        let rendered = render_chat_with(&tokenizer, &messages, &opts)
            .map_err(|e| render_error("messages", e))?;
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
                    guide,
                    logit_bias,
                    keep_special_tokens: plan
                        .as_ref()
                        .is_some_and(|p| p.format.needs_special_tokens()),
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
            tools: plan,
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
        let fim = match &req.suffix {
            Some(suffix) => Some((fim_tokens(&tokenizer)?, suffix.clone())),
            None => None,
        };
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
            match &fim {
                // Fill in the middle: <prefix tok> prompt <suffix tok> suffix <middle tok>.
                Some((f, suffix)) => {
                    let text = format!("{}{text}{}{suffix}{}", f.prefix, f.suffix, f.middle);
                    tokenizer
                        .encode(&text, false)
                        .map_err(|e| render_error("prompt", e.into()))
                }
                None => render_raw(&tokenizer, text)
                    .map(|r| r.ids)
                    .map_err(|e| render_error("prompt", e)),
            }
        };
        let prompts: Vec<Vec<TokenId>> = match req.prompt {
            None => return Err(AppError::bad("prompt", "`prompt` is missing")),
            Some(Prompt::Text(t)) => vec![encode(&t)?],
            Some(Prompt::Texts(ts)) => ts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
            Some(Prompt::Tokens(_) | Prompt::TokenLists(_)) if fim.is_some() => {
                return Err(AppError::bad(
                    "suffix",
                    "fill-in-the-middle takes the prompt as text; send `prompt` as a string",
                ))
            }
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
        let (json_object, json_schema) = response_format(req.response_format.as_ref())?;
        let explicit = OutputConstraint {
            json_object,
            json_schema: json_schema.as_ref(),
            structured: req.structured_outputs.as_ref(),
            guided_json: req.guided_json.as_ref(),
            guided_regex: req.guided_regex.as_ref(),
            guided_choice: req.guided_choice.as_ref(),
            guided_grammar: req.guided_grammar.as_ref(),
            grammar: req.grammar.as_ref(),
            llama_json_schema: req.json_schema.as_ref(),
        }
        .pick()?;
        let guide = match &explicit {
            Some((param, c)) => Some(compile(&model, param, c)?),
            None => None,
        };
        let logit_bias = logit_bias(req.logit_bias.as_ref(), vocab)?;
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
                    guide: guide.clone(),
                    logit_bias: logit_bias.clone(),
                    keep_special_tokens: false,
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
            json_object,
            json_schema,
            upstream_body: None,
            tools: None,
        })
    }
}

/// A model's fill-in-the-middle tokens.
struct FimTokens {
    prefix: &'static str,
    suffix: &'static str,
    middle: &'static str,
}

/// The FIM tokens of the model's vocabulary (Qwen2.5-Coder's, or DeepSeek-Coder's), or a 400.
fn fim_tokens(tokenizer: &seek_tokenizer::Tokenizer) -> Result<FimTokens, AppError> {
    const KNOWN: [FimTokens; 2] = [
        FimTokens {
            prefix: "<|fim_prefix|>",
            suffix: "<|fim_suffix|>",
            middle: "<|fim_middle|>",
        },
        FimTokens {
            prefix: "<｜fim▁begin｜>",
            suffix: "<｜fim▁hole｜>",
            middle: "<｜fim▁end｜>",
        },
    ];
    KNOWN
        .into_iter()
        .find(|f| {
            [f.prefix, f.suffix, f.middle]
                .iter()
                .all(|t| tokenizer.token_to_id(t).is_some())
        })
        .ok_or_else(|| {
            AppError::bad(
                "suffix",
                "`suffix` (fill in the middle) needs a model with FIM tokens (such as Qwen2.5-Coder's <|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>); this model has none, so leave `suffix` out",
            )
        })
}

/// A message as an upstream OpenAI-compatible server takes it (gateway mode).
fn upstream_message(m: &ChatMessage) -> serde_json::Value {
    let mut v = serde_json::json!({"role": m.role, "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                serde_json::json!({"id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = id.clone().into();
    }
    v
}

/// Most functions in `tools` (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// `tools`, checked: functions with OpenAI's name rule and object schemas.
fn tool_specs(tools: Option<&[Tool]>) -> Result<Vec<ToolSpec>, AppError> {
    let tools = tools.unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(AppError::bad(
            "tools",
            format!(
                "tools has {} functions; at most {MAX_TOOLS} are allowed",
                tools.len()
            ),
        ));
    }
    let mut specs: Vec<ToolSpec> = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(AppError::bad(
                "tools",
                format!(
                    "tools[{i}].type is {:?}; only \"function\" tools are supported",
                    t.kind
                ),
            ));
        }
        let name = &t.function.name;
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(AppError::bad(
                "tools",
                format!("tools[{i}].function.name is {name:?}; use 1 to 64 letters, digits, underscores or dashes"),
            ));
        }
        if specs.iter().any(|s| &s.name == name) {
            return Err(AppError::bad(
                "tools",
                format!("tools[{i}].function.name {name:?} is given twice"),
            ));
        }
        let parameters = match &t.function.parameters {
            None => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ serde_json::Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(AppError::bad(
                    "tools",
                    format!("tools[{i}].function.parameters must be a JSON Schema object"),
                ))
            }
        };
        specs.push(ToolSpec {
            name: name.clone(),
            description: t.function.description.clone(),
            parameters,
        });
    }
    Ok(specs)
}

/// `tool_choice`: `auto` by default with tools, `none` without.
fn tool_choice(
    choice: Option<&serde_json::Value>,
    tools: &[ToolSpec],
) -> Result<ToolChoice, AppError> {
    use serde_json::Value;
    let bad = |m: String| AppError::bad("tool_choice", m);
    let c = match choice {
        None | Some(Value::Null) => {
            return Ok(if tools.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            })
        }
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(format!(
                    "tool_choice is {other:?}; use \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                )))
            }
        },
        Some(v) => match v["function"]["name"].as_str() {
            Some(name) if v["type"] == "function" => ToolChoice::Named(name.to_string()),
            _ => {
                return Err(bad(
                    "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}".into(),
                ))
            }
        },
    };
    if tools.is_empty() && c != ToolChoice::None {
        return Err(bad(
            "tool_choice is only allowed when `tools` are given".into()
        ));
    }
    if let ToolChoice::Named(n) = &c {
        if !tools.iter().any(|t| &t.name == n) {
            return Err(bad(format!(
                "tool_choice names the function {n:?}, which is not in `tools`"
            )));
        }
    }
    Ok(c)
}

/// The output constraint fields both endpoints read (OpenAI's `response_format`, vLLM's
/// `structured_outputs` and `guided_*`, llama.cpp's `grammar` and `json_schema`).
struct OutputConstraint<'a> {
    json_object: bool,
    json_schema: Option<&'a serde_json::Value>,
    structured: Option<&'a StructuredOutputs>,
    guided_json: Option<&'a serde_json::Value>,
    guided_regex: Option<&'a String>,
    guided_choice: Option<&'a Vec<String>>,
    guided_grammar: Option<&'a String>,
    grammar: Option<&'a String>,
    llama_json_schema: Option<&'a serde_json::Value>,
}

impl OutputConstraint<'_> {
    fn of_chat(
        req: &ChatCompletionRequest,
        json_schema: Option<&serde_json::Value>,
        json_object: bool,
    ) -> Result<Option<(&'static str, Constraint)>, AppError> {
        OutputConstraint {
            json_object,
            json_schema,
            structured: req.structured_outputs.as_ref(),
            guided_json: req.guided_json.as_ref(),
            guided_regex: req.guided_regex.as_ref(),
            guided_choice: req.guided_choice.as_ref(),
            guided_grammar: req.guided_grammar.as_ref(),
            grammar: req.grammar.as_ref(),
            llama_json_schema: req.json_schema.as_ref(),
        }
        .pick()
    }

    /// The one constraint the request asks for; 400 when it asks for several.
    fn pick(self) -> Result<Option<(&'static str, Constraint)>, AppError> {
        let schema = |param: &'static str, v: &serde_json::Value| -> Result<Constraint, AppError> {
            match v {
                // vLLM accepts the schema as text too.
                serde_json::Value::String(t) => serde_json::from_str(t)
                    .map(Constraint::JsonSchema)
                    .map_err(|e| AppError::bad(param, format!("{param} is not valid JSON: {e}"))),
                v => Ok(Constraint::JsonSchema(v.clone())),
            }
        };
        let mut found: Vec<(&'static str, Constraint)> = Vec::new();
        match (self.json_object, self.json_schema) {
            (_, Some(s)) => found.push(("response_format", schema("response_format", s)?)),
            (true, None) => found.push(("response_format", Constraint::JsonObject)),
            _ => {}
        }
        if let Some(so) = self.structured {
            let mut n = 0;
            if let Some(j) = &so.json {
                found.push(("structured_outputs", schema("structured_outputs", j)?));
                n += 1;
            }
            if let Some(r) = &so.regex {
                found.push(("structured_outputs", Constraint::Regex(r.clone())));
                n += 1;
            }
            if let Some(c) = &so.choice {
                found.push(("structured_outputs", Constraint::Choice(c.clone())));
                n += 1;
            }
            if let Some(g) = &so.grammar {
                found.push(("structured_outputs", Constraint::Grammar(g.clone())));
                n += 1;
            }
            if so.json_object == Some(true) {
                found.push(("structured_outputs", Constraint::JsonObject));
                n += 1;
            }
            if n == 0 {
                return Err(AppError::bad(
                    "structured_outputs",
                    "structured_outputs is empty; give one of json, regex, choice, grammar or json_object",
                ));
            }
        }
        if let Some(j) = self.guided_json {
            found.push(("guided_json", schema("guided_json", j)?));
        }
        if let Some(r) = self.guided_regex {
            found.push(("guided_regex", Constraint::Regex(r.clone())));
        }
        if let Some(c) = self.guided_choice {
            found.push(("guided_choice", Constraint::Choice(c.clone())));
        }
        if let Some(g) = self.guided_grammar {
            found.push(("guided_grammar", Constraint::Grammar(g.clone())));
        }
        if let Some(g) = self.grammar {
            found.push(("grammar", Constraint::Grammar(g.clone())));
        }
        if let Some(j) = self.llama_json_schema {
            found.push(("json_schema", schema("json_schema", j)?));
        }
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|(p, _)| *p).collect();
            return Err(AppError::bad(
                found[1].0,
                format!(
                    "the request asks for several output constraints ({}); give only one",
                    names.join(", ")
                ),
            ));
        }
        Ok(found.pop())
    }
}

/// Compiles a constraint for `model`; a schema or grammar the engine cannot use is a 400
/// naming the field.
fn compile(model: &ServedModel, param: &'static str, c: &Constraint) -> Result<Guide, AppError> {
    let grammars = model.grammars().map_err(|e| match e {
        AppError::BadRequest { message, .. } => AppError::bad(param, message),
        e => e,
    })?;
    grammars.compile(c).map_err(|e| match e {
        StructuredError::Invalid(m) => AppError::bad(param, format!("{param}: {m}")),
        e => AppError::bad(param, e.to_string()),
    })
}

/// Most entries in `logit_bias` (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;

/// `logit_bias`: token ids (as strings) in the vocabulary, biases in `[-100, 100]`.
fn logit_bias(
    bias: Option<&serde_json::Map<String, serde_json::Value>>,
    vocab: usize,
) -> Result<Vec<(TokenId, f32)>, AppError> {
    let Some(bias) = bias else {
        return Ok(Vec::new());
    };
    if bias.len() > MAX_LOGIT_BIAS {
        return Err(AppError::bad(
            "logit_bias",
            format!(
                "logit_bias has {} entries; at most {MAX_LOGIT_BIAS} are allowed",
                bias.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(bias.len());
    for (k, v) in bias {
        let id: TokenId = k.trim().parse().map_err(|_| {
            AppError::bad(
                "logit_bias",
                format!("logit_bias key {k:?} is not a token id; keys are token ids as strings, e.g. \"50256\""),
            )
        })?;
        if id as usize >= vocab {
            return Err(AppError::bad(
                "logit_bias",
                format!(
                    "logit_bias token id {id} is outside the model's vocabulary of {vocab} tokens"
                ),
            ));
        }
        let b =
            v.as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| {
                    AppError::bad(
                "logit_bias",
                format!("logit_bias[{k:?}] is {v}; a bias must be a number between -100 and 100"),
            )
                })?;
        out.push((id, b as f32));
    }
    Ok(out)
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
