//! Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`) as an
//! adapter on the OpenAI pipeline: so the `anthropic` SDKs and Claude Code talk to Seek.
//!
//! Design decision: nothing here generates. A Messages request is translated into the
//! internal chat request ([`wire::ChatCompletionRequest`]) and runs the same pipeline as
//! `/v1/chat/completions` (keys, rate limits, guard rails, audit, metrics, cost); its typed
//! results (a [`wire::ChatCompletion`], or the stream of [`wire::ChatCompletionChunk`]s) are
//! translated back here. Errors keep their one status mapping ([`AppError::status`]) and get
//! Anthropic's body ([`error_body`]).
//!
//! How the shapes meet:
//! - `system` (a string or text blocks) becomes a system message; `thinking` blocks of
//!   assistant turns become `reasoning_content`; Anthropic's `stop_sequences`, `top_k` and
//!   `metadata.user_id` become `stop`, `top_k` and `user`.
//! - Tools: `tools` (`{name, description, input_schema}`) become functions; `tool_choice`
//!   `auto`, `any`, `tool` and `none` become `"auto"`, `"required"`, the named function and
//!   `"none"` (`disable_parallel_tool_use` is `parallel_tool_calls: false`); an assistant's
//!   `tool_use` blocks become its `tool_calls`, and a user turn's `tool_result` blocks become
//!   `tool` messages (before the turn's text), answering by `tool_use_id`.
//! - The answer's chain of thought comes back as a `thinking` block (with an empty
//!   `signature`: nothing is signed) before the `text` block, and its tool calls as `tool_use`
//!   blocks after it (streamed: `input_json_delta`s of the arguments). A turn has a text block
//!   unless it is only tool calls, streamed or not.
//! - `usage.input_tokens` counts the prompt tokens computed, `cache_read_input_tokens` those
//!   served from the prefix cache (their sum is the prompt), as Anthropic counts;
//!   `cache_creation_input_tokens` is always 0 (the prefix cache needs no opt-in).
//! - `stop_reason`: `stop` is `end_turn`, or `stop_sequence` when one of the request's stop
//!   sequences ended the turn; `length` is `max_tokens`, `tool_calls` is `tool_use`,
//!   `content_filter` (a guard rail) is `refusal`.
//! - `max_tokens` caps the room left in the context window instead of having to fit in it
//!   (Claude Code asks for 32000 whatever the model): when the window is the tighter limit, a
//!   `length` finish is `model_context_window_exceeded`.
//! - A last turn of the assistant's is continued: it becomes DeepSeek's chat prefix completion
//!   (`prefix: true`), and the answer holds only what follows it.
//! - A `tool_result` with `is_error: true` reaches the model as `Error: ` before its content.
//!
//! What is refused (400, naming the field): a missing `max_tokens`, image and document blocks,
//! Anthropic's server tools (`web_search_...`, `bash_...`: they run on Anthropic's servers).
//! `thinking` settings, `cache_control` and other fields are accepted and ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::AppError;
use crate::valid::MAX_STOP;
use crate::wire;

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// `POST /v1/messages` (and, without `max_tokens`, `POST /v1/messages/count_tokens`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct MessagesRequest {
    /// The served model's name.
    pub model: String,
    /// Most generated tokens, thinking included (required by `/v1/messages`).
    pub max_tokens: Option<u64>,
    /// The conversation: `user` and `assistant` turns.
    pub messages: Vec<InputMessage>,
    /// The system prompt: a string or text blocks.
    pub system: Option<Content>,
    /// Strings that end generation.
    pub stop_sequences: Option<Vec<String>>,
    /// Stream the answer as Anthropic's server-sent events.
    pub stream: Option<bool>,
    /// Sampling temperature (Anthropic's range is `[0, 1]`; Seek takes `[0, 2]`).
    pub temperature: Option<f32>,
    /// Nucleus sampling mass in `(0, 1]`.
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    pub top_k: Option<i64>,
    /// `user_id`: the end user, kept in the audit entry and the access log.
    pub metadata: Option<Metadata>,
    /// Tools the model may call.
    pub tools: Option<Vec<ToolDef>>,
    /// `{"type": "auto" | "any" | "tool" | "none"}` (with `name` for `tool`).
    pub tool_choice: Option<ToolChoice>,
}

/// One entry of `tools`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ToolDef {
    /// Absent (or `custom`) for a client tool; a server tool's versioned type otherwise.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The tool's name.
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema of its input (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
}

/// `tool_choice`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ToolChoice {
    /// `auto`, `any`, `tool` or `none`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The tool, with `tool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// At most one tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_parallel_tool_use: Option<bool>,
}

/// One turn of a Messages request.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct InputMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// A string, or content blocks.
    pub content: Content,
}

/// A message's (or the system prompt's) content.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text (one text block).
    Text(String),
    /// Content blocks.
    Blocks(Vec<InputBlock>),
}

/// One content block of a request. Read loosely (the fields of every block type, by
/// `type`), so that a block of an unsupported type is refused by name rather than as bad JSON.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct InputBlock {
    /// `text`, `thinking`, `redacted_thinking` (dropped), ... (`image` and `document` are
    /// refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// A `text` block's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A `thinking` block's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    /// A `thinking` block's signature (not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// A `tool_use` block's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A `tool_use` block's tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A `tool_use` block's input (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// A `tool_result` block: the `tool_use` it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    /// A `tool_result` block's content: a string or text blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// A `tool_result` block: the tool failed (passed on as `Error: ` before its content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
}

/// `metadata`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Metadata {
    /// An opaque id of the end user.
    pub user_id: Option<String>,
}

impl MessagesRequest {
    /// The chat request that runs this one: for `/v1/messages` when `generate`, else for
    /// counting its prompt (`max_tokens` is then neither needed nor passed on).
    pub fn into_chat(self, generate: bool) -> Result<wire::ChatCompletionRequest, AppError> {
        let max_tokens = match (generate, self.max_tokens) {
            (true, None) => {
                return Err(AppError::bad(
                    "max_tokens",
                    "`max_tokens` is required: the most tokens to generate, thinking included",
                ))
            }
            (true, Some(0)) => {
                return Err(AppError::bad(
                    "max_tokens",
                    "`max_tokens` is 0; it must be at least 1",
                ))
            }
            (true, m) => m,
            (false, _) => None,
        };
        if self.messages.is_empty() {
            return Err(AppError::bad(
                "messages",
                "`messages` is empty: send at least one user message",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        if let Some(system) = self.system {
            let content = match system {
                Content::Text(t) => wire::MessageContent::Text(t),
                Content::Blocks(blocks) => {
                    let mut parts = Vec::with_capacity(blocks.len());
                    for (j, b) in blocks.into_iter().enumerate() {
                        match (b.kind.as_str(), b.text) {
                            ("text", Some(t)) => parts.push(text_part(t)),
                            (kind, _) => {
                                return Err(AppError::bad(
                                    "system",
                                    format!("system[{j}] is a {kind:?} block without text; the system prompt takes text blocks"),
                                ))
                            }
                        }
                    }
                    wire::MessageContent::Parts(parts)
                }
            };
            messages.push(wire::RequestMessage {
                role: "system".into(),
                content: Some(content),
                ..Default::default()
            });
        }
        let last = self.messages.len() - 1;
        for (i, m) in self.messages.into_iter().enumerate() {
            let assistant = match m.role.as_str() {
                "user" => false,
                "assistant" => true,
                other => {
                    return Err(AppError::bad(
                        "messages",
                        format!("messages[{i}].role is {other:?}; use user or assistant (the system prompt goes in `system`)"),
                    ))
                }
            };
            translate_message(i, assistant, m.content, &mut messages)?;
            if assistant && i == last {
                // The answer continues this turn (DeepSeek's chat prefix completion).
                if let Some(m) = messages.last_mut() {
                    m.prefix = Some(true);
                }
            }
        }
        let stop = match self.stop_sequences {
            Some(s) if s.len() > MAX_STOP => {
                return Err(AppError::bad(
                    "stop_sequences",
                    format!(
                        "stop_sequences has {} strings; at most {MAX_STOP} are supported",
                        s.len()
                    ),
                ))
            }
            Some(s) if !s.is_empty() => Some(wire::Stop::Many(s)),
            _ => None,
        };
        let stream = generate && self.stream.unwrap_or(false);
        let tools = match self.tools {
            None => None,
            Some(tools) => Some(
                tools
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| translate_tool(i, t))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let (tool_choice, parallel_tool_calls) = match self.tool_choice {
            None => (None, None),
            Some(c) => {
                let choice = match (c.kind.as_str(), c.name) {
                    ("auto", _) => Value::from("auto"),
                    ("any", _) => Value::from("required"),
                    ("none", _) => Value::from("none"),
                    ("tool", Some(name)) => {
                        serde_json::json!({"type": "function", "function": {"name": name}})
                    }
                    ("tool", None) => {
                        return Err(AppError::bad(
                            "tool_choice",
                            "tool_choice of type \"tool\" needs `name`: the tool to call",
                        ))
                    }
                    (other, _) => {
                        return Err(AppError::bad(
                            "tool_choice",
                            format!("tool_choice.type is {other:?}; use auto, any, tool or none"),
                        ))
                    }
                };
                let parallel = c.disable_parallel_tool_use.map(|d| !d);
                (Some(choice), parallel)
            }
        };
        Ok(wire::ChatCompletionRequest {
            model: self.model,
            messages,
            stream: Some(stream),
            // The adapter needs the usage at the end of the stream (`message_delta`).
            stream_options: stream.then_some(wire::StreamOptions {
                include_usage: Some(true),
            }),
            stop,
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            user: self.metadata.and_then(|m| m.user_id),
            tools,
            tool_choice,
            parallel_tool_calls,
            ..Default::default()
        })
    }
}

fn translate_tool(i: usize, t: ToolDef) -> Result<wire::Tool, AppError> {
    if let Some(kind) = t.kind.as_deref().filter(|k| *k != "custom") {
        return Err(AppError::bad(
            "tools",
            format!(
                "tools[{i}] ({:?}) is Anthropic's server tool {kind:?}, which runs on Anthropic's servers; give client tools (name, description, input_schema)",
                t.name
            ),
        ));
    }
    Ok(wire::Tool {
        kind: "function".into(),
        function: wire::FunctionDef {
            name: t.name,
            description: t.description,
            parameters: t.input_schema,
            strict: None,
        },
    })
}

fn text_part(text: String) -> wire::ContentPart {
    wire::ContentPart {
        kind: "text".into(),
        text: Some(text),
    }
}

/// One Anthropic turn as chat messages: an assistant turn is one message (its `tool_use`
/// blocks its `tool_calls`); a user turn is a `tool` message per `tool_result` block, then a
/// user message of its text, if it has any.
fn translate_message(
    i: usize,
    assistant: bool,
    content: Content,
    out: &mut Vec<wire::RequestMessage>,
) -> Result<(), AppError> {
    let role = if assistant { "assistant" } else { "user" };
    let blocks = match content {
        Content::Text(t) => {
            out.push(wire::RequestMessage {
                role: role.into(),
                content: Some(wire::MessageContent::Text(t)),
                ..Default::default()
            });
            return Ok(());
        }
        Content::Blocks(b) => b,
    };
    let mut parts = Vec::new();
    let mut thinking: Vec<String> = Vec::new();
    let mut calls = Vec::new();
    let mut results = Vec::new();
    for (j, b) in blocks.into_iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        let missing = |field: &str| {
            AppError::bad(
                "messages",
                format!("{at} is a {} block without `{field}`", b.kind),
            )
        };
        match b.kind.as_str() {
            "text" => parts.push(text_part(b.text.clone().ok_or_else(|| missing("text"))?)),
            "thinking" if assistant => thinking.extend(b.thinking.clone()),
            // Its text is encrypted: nothing to pass on.
            "redacted_thinking" if assistant => {}
            "tool_use" if assistant => {
                let id = b.id.clone().ok_or_else(|| missing("id"))?;
                let name = b.name.clone().ok_or_else(|| missing("name"))?;
                let input = b.input.clone().unwrap_or_else(|| Value::Object(Default::default()));
                calls.push(wire::ToolCall {
                    id,
                    kind: "function".into(),
                    function: wire::FunctionCall {
                        name,
                        arguments: input.to_string(),
                    },
                });
            }
            "tool_result" if !assistant => {
                let id = b.tool_use_id.clone().ok_or_else(|| missing("tool_use_id"))?;
                let mut text = match b.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t,
                    Some(Content::Blocks(inner)) => {
                        let mut texts = Vec::with_capacity(inner.len());
                        for (k, ib) in inner.into_iter().enumerate() {
                            match (ib.kind.as_str(), ib.text) {
                                ("text", Some(t)) => texts.push(t),
                                (kind, _) => {
                                    return Err(AppError::bad(
                                        "messages",
                                        format!("{at}.content[{k}] is a {kind:?} block; a tool result holds text blocks here"),
                                    ))
                                }
                            }
                        }
                        texts.join("\n")
                    }
                };
                if b.is_error == Some(true) {
                    text = format!("Error: {text}");
                }
                results.push(wire::RequestMessage {
                    role: "tool".into(),
                    content: Some(wire::MessageContent::Text(text)),
                    tool_call_id: Some(id),
                    ..Default::default()
                });
            }
            kind @ ("thinking" | "redacted_thinking" | "tool_use") => {
                return Err(AppError::bad(
                    "messages",
                    format!("{at} is a {kind:?} block in a user turn; it belongs to assistant turns"),
                ))
            }
            "tool_result" => {
                return Err(AppError::bad(
                    "messages",
                    format!("{at} is a tool_result block in an assistant turn; it belongs to user turns"),
                ))
            }
            kind => {
                return Err(AppError::bad(
                    "messages",
                    format!(
                        "{at} is a {kind:?} block; this server reads text, thinking, tool_use and tool_result blocks"
                    ),
                ))
            }
        }
    }
    let has_results = !results.is_empty();
    out.extend(results);
    if assistant || !parts.is_empty() || !has_results {
        out.push(wire::RequestMessage {
            role: role.into(),
            content: Some(wire::MessageContent::Parts(parts)),
            reasoning_content: (!thinking.is_empty()).then(|| thinking.concat()),
            tool_calls: (!calls.is_empty()).then_some(calls),
            ..Default::default()
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// A message (`type: "message"`): the answer of `POST /v1/messages`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Message {
    /// `msg_...` (the request id of the access log and the audit entry).
    pub id: String,
    /// `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `assistant`.
    pub role: String,
    /// Thinking, then text, then tool calls.
    pub content: Vec<ContentBlock>,
    /// The served model's name.
    pub model: String,
    /// Why the turn ended; null only in `message_start`.
    pub stop_reason: Option<StopReason>,
    /// The stop sequence that ended the turn, if one did.
    pub stop_sequence: Option<String>,
    /// Token counts.
    pub usage: Usage,
}

/// A content block of an answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// Answer text.
    Text {
        /// The text.
        text: String,
    },
    /// The model's chain of thought.
    Thinking {
        /// The text.
        thinking: String,
        /// Always empty: Seek signs nothing.
        signature: String,
    },
    /// A tool call.
    ToolUse {
        /// Its id, which a `tool_result` answers by.
        id: String,
        /// The tool.
        name: String,
        /// Its input (an object; `{}` in `content_block_start`).
        input: Value,
    },
}

/// `stop_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended its turn.
    EndTurn,
    /// `max_tokens` (or the context window) was reached.
    MaxTokens,
    /// One of `stop_sequences` was generated.
    StopSequence,
    /// The model called tools.
    ToolUse,
    /// A guard rail stopped the answer.
    Refusal,
    /// The context window filled before `max_tokens` was reached.
    ModelContextWindowExceeded,
}

impl StopReason {
    /// The stop reason of an OpenAI `finish_reason`.
    fn of(finish_reason: &str, stop_sequence: Option<&str>, window_limited: bool) -> Self {
        match finish_reason {
            "length" if window_limited => StopReason::ModelContextWindowExceeded,
            "length" => StopReason::MaxTokens,
            "content_filter" => StopReason::Refusal,
            "tool_calls" => StopReason::ToolUse,
            _ if stop_sequence.is_some() => StopReason::StopSequence,
            _ => StopReason::EndTurn,
        }
    }
}

/// `usage` of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct Usage {
    /// Prompt tokens computed (not served from the prefix cache).
    pub input_tokens: usize,
    /// Generated tokens, thinking included.
    pub output_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cache_read_input_tokens: usize,
    /// Always 0: nothing needs writing to a cache.
    pub cache_creation_input_tokens: usize,
}

impl Usage {
    fn of(u: &wire::Usage) -> Self {
        Self {
            input_tokens: u.prompt_cache_miss_tokens,
            output_tokens: u.completion_tokens,
            cache_read_input_tokens: u.prompt_cache_hit_tokens,
            cache_creation_input_tokens: 0,
        }
    }
}

/// `POST /v1/messages/count_tokens`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct TokenCount {
    /// Tokens in the rendered prompt.
    pub input_tokens: usize,
}

/// The message of a (one-choice) chat completion; `window_limited` as for
/// [`MessageStream::new`].
pub fn message(c: wire::ChatCompletion, window_limited: bool) -> Message {
    let usage = Usage::of(&c.usage);
    let choice = c.choices.into_iter().next();
    let mut content = Vec::new();
    let mut stop_reason = StopReason::EndTurn;
    let mut stop_sequence = None;
    if let Some(ch) = choice {
        if let Some(t) = ch.message.reasoning_content.filter(|t| !t.is_empty()) {
            content.push(ContentBlock::Thinking {
                thinking: t,
                signature: String::new(),
            });
        }
        let calls = ch.message.tool_calls.unwrap_or_default();
        let text = ch.message.content.unwrap_or_default();
        if !text.is_empty() || calls.is_empty() {
            content.push(ContentBlock::Text { text });
        }
        content.extend(calls.into_iter().map(|c| ContentBlock::ToolUse {
            input: tool_input(&c.function.arguments),
            id: c.id,
            name: c.function.name,
        }));
        stop_reason = StopReason::of(
            ch.finish_reason.as_deref().unwrap_or("stop"),
            ch.stop_reason.as_deref(),
            window_limited,
        );
        stop_sequence = ch.stop_reason;
    }
    Message {
        id: c.id,
        kind: "message".into(),
        role: "assistant".into(),
        content,
        model: c.model,
        stop_reason: Some(stop_reason),
        stop_sequence,
        usage,
    }
}

/// A call's arguments as the object Anthropic's `input` is. Arguments are constrained to the
/// tool's schema, so this is a broken invariant: logged, and `{}` sent.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            tracing::error!(arguments, "a tool call's arguments are not a JSON object");
            Value::Object(Default::default())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// One server-sent event of a streamed message; its `type` is also the SSE `event:` name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The message, without content yet.
    MessageStart {
        /// `stop_reason` null, `usage.input_tokens` the prompt's tokens.
        message: Message,
    },
    /// A block opens.
    ContentBlockStart {
        /// Its index in `content`.
        index: usize,
        /// The block, empty.
        content_block: ContentBlock,
    },
    /// New text of the open block.
    ContentBlockDelta {
        /// The block's index.
        index: usize,
        /// The text.
        delta: BlockDelta,
    },
    /// The block is complete.
    ContentBlockStop {
        /// The block's index.
        index: usize,
    },
    /// Why the turn ended, and the usage (cumulative).
    MessageDelta {
        /// `stop_reason` and `stop_sequence`.
        delta: MessageDelta,
        /// The whole request's counts.
        usage: Usage,
    },
    /// The last event of a complete message.
    MessageStop,
    /// Sent after `message_start` (keeps proxies from closing an idle connection).
    Ping,
    /// The stream failed; no more events follow.
    Error {
        /// What failed.
        error: ErrorBody,
    },
}

impl StreamEvent {
    /// The SSE `event:` name (the `type` field).
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
            StreamEvent::Ping => "ping",
            StreamEvent::Error { .. } => "error",
        }
    }
}

/// New text of a block.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    /// Of a `text` block.
    TextDelta {
        /// The text.
        text: String,
    },
    /// Of a `thinking` block.
    ThinkingDelta {
        /// The text.
        thinking: String,
    },
    /// Of a `tool_use` block: a piece of its input's JSON text.
    InputJsonDelta {
        /// The piece.
        partial_json: String,
    },
}

/// `message_delta.delta`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct MessageDelta {
    /// Why the turn ended.
    pub stop_reason: Option<StopReason>,
    /// The stop sequence that ended it, if one did.
    pub stop_sequence: Option<String>,
}

/// What kind of block is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    Tool,
}

/// Turns the chunks of a one-choice chat stream into a message's events.
#[derive(Debug)]
pub struct MessageStream {
    /// The prompt's tokens, for `message_start` (the final count comes in `message_delta`).
    input_tokens: usize,
    window_limited: bool,
    started: bool,
    open: Option<Open>,
    /// Blocks opened so far (the next block's index).
    blocks: usize,
    text_blocks: usize,
    /// OpenAI's index of each tool call -> its block's index.
    tools: Vec<(usize, usize)>,
    stop_reason: Option<StopReason>,
    stop_sequence: Option<String>,
}

impl MessageStream {
    /// A stream whose prompt has `input_tokens` tokens; `window_limited` when the room left in
    /// the context window is less than `max_tokens` (a `length` finish is then
    /// `model_context_window_exceeded`).
    pub fn new(input_tokens: usize, window_limited: bool) -> Self {
        Self {
            input_tokens,
            window_limited,
            started: false,
            open: None,
            blocks: 0,
            text_blocks: 0,
            tools: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
        }
    }

    /// Whether the context window, not `max_tokens`, limits the answer.
    pub fn window_limited(&self) -> bool {
        self.window_limited
    }

    /// The events of one chunk.
    pub fn chunk(&mut self, c: &wire::ChatCompletionChunk) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if !std::mem::replace(&mut self.started, true) {
            out.push(StreamEvent::MessageStart {
                message: Message {
                    id: c.id.clone(),
                    kind: "message".into(),
                    role: "assistant".into(),
                    content: Vec::new(),
                    model: c.model.clone(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage: Usage {
                        input_tokens: self.input_tokens,
                        ..Usage::default()
                    },
                },
            });
            out.push(StreamEvent::Ping);
        }
        // One choice: Messages requests have no `n`.
        for ch in c.choices.iter().filter(|ch| ch.index == 0) {
            if let Some(t) = ch
                .delta
                .reasoning_content
                .as_deref()
                .filter(|t| !t.is_empty())
            {
                self.delta(
                    &mut out,
                    Open::Thinking,
                    BlockDelta::ThinkingDelta { thinking: t.into() },
                );
            }
            if let Some(t) = ch.delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.delta(
                    &mut out,
                    Open::Text,
                    BlockDelta::TextDelta { text: t.into() },
                );
            }
            for call in ch.delta.tool_calls.iter().flatten() {
                self.tool_call(&mut out, call);
            }
            if let Some(f) = &ch.finish_reason {
                self.close(&mut out);
                if self.text_blocks == 0 && self.tools.is_empty() {
                    // As in a message that is not streamed: a turn has a text block.
                    self.open(&mut out, Open::Text);
                    self.close(&mut out);
                }
                self.stop_reason = Some(StopReason::of(
                    f,
                    ch.stop_reason.as_deref(),
                    self.window_limited,
                ));
                self.stop_sequence = ch.stop_reason.clone();
            }
        }
        if let Some(u) = c.usage.get() {
            self.close(&mut out);
            out.push(StreamEvent::MessageDelta {
                delta: MessageDelta {
                    stop_reason: Some(self.stop_reason.unwrap_or(StopReason::EndTurn)),
                    stop_sequence: self.stop_sequence.clone(),
                },
                usage: Usage::of(u),
            });
            out.push(StreamEvent::MessageStop);
        }
        out
    }

    /// The event of an error that ends the stream.
    pub fn error(&mut self, e: &AppError) -> StreamEvent {
        StreamEvent::Error {
            error: error_body(e).error,
        }
    }

    /// A piece of a tool call: its first (with id and name) opens its block; arguments go to
    /// the block as `input_json_delta`s.
    fn tool_call(&mut self, out: &mut Vec<StreamEvent>, call: &wire::ToolCallDelta) {
        let known = self
            .tools
            .iter()
            .find(|(i, _)| *i == call.index)
            .map(|t| t.1);
        let index = match (known, &call.id, &call.function.name) {
            (Some(index), _, _) => index,
            (None, Some(id), Some(name)) => {
                self.close(out);
                let index = self.blocks;
                out.push(StreamEvent::ContentBlockStart {
                    index,
                    content_block: ContentBlock::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                        input: Value::Object(Default::default()),
                    },
                });
                self.blocks += 1;
                self.open = Some(Open::Tool);
                self.tools.push((call.index, index));
                index
            }
            (None, _, _) => {
                tracing::error!(
                    index = call.index,
                    "a tool call's first piece has no id or name"
                );
                return;
            }
        };
        if let Some(args) = call.function.arguments.as_deref().filter(|a| !a.is_empty()) {
            out.push(StreamEvent::ContentBlockDelta {
                index,
                delta: BlockDelta::InputJsonDelta {
                    partial_json: args.into(),
                },
            });
        }
    }

    fn delta(&mut self, out: &mut Vec<StreamEvent>, kind: Open, delta: BlockDelta) {
        if self.open != Some(kind) {
            self.close(out);
            self.open(out, kind);
        }
        out.push(StreamEvent::ContentBlockDelta {
            index: self.blocks - 1,
            delta,
        });
    }

    fn open(&mut self, out: &mut Vec<StreamEvent>, kind: Open) {
        let content_block = match kind {
            Open::Text => {
                self.text_blocks += 1;
                ContentBlock::Text {
                    text: String::new(),
                }
            }
            Open::Thinking => ContentBlock::Thinking {
                thinking: String::new(),
                signature: String::new(),
            },
            Open::Tool => unreachable!("tool blocks open in `tool_call`"),
        };
        out.push(StreamEvent::ContentBlockStart {
            index: self.blocks,
            content_block,
        });
        self.blocks += 1;
        self.open = Some(kind);
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if self.open.take().is_some() {
            out.push(StreamEvent::ContentBlockStop {
                index: self.blocks - 1,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The body of an error response (`type: "error"`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ErrorResponse {
    /// `error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The error.
    pub error: ErrorBody,
}

/// Anthropic's error object.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ErrorBody {
    /// `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `request_too_large`, `rate_limit_error`, `api_error` or `overloaded_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What went wrong and how to fix it.
    pub message: String,
}

/// Anthropic's rendering of an error (its status is [`AppError::status`], as for OpenAI).
pub fn error_body(e: &AppError) -> ErrorResponse {
    let kind = match e {
        AppError::BadRequest { .. } | AppError::Timeout(_) => "invalid_request_error",
        AppError::Unauthorized(_) => "authentication_error",
        AppError::NotFound(_) | AppError::ModelNotFound(_) => "not_found_error",
        AppError::TooLarge(_) => "request_too_large",
        AppError::RateLimited(_) => "rate_limit_error",
        // A full queue, loading, draining: try again (elsewhere).
        AppError::Busy { .. } | AppError::Unavailable { .. } => "overloaded_error",
        AppError::Internal(_) | AppError::Upstream(_) => "api_error",
    };
    ErrorResponse {
        kind: "error".into(),
        error: ErrorBody {
            kind: kind.into(),
            message: e.to_string(),
        },
    }
}

/// A chat request as JSON without the nulls of unset options, at the top level and in each
/// message (what gateway mode forwards to an OpenAI-compatible upstream).
pub(crate) fn raw_of(req: &wire::ChatCompletionRequest) -> Value {
    fn drop_nulls(v: &mut Value) {
        if let Value::Object(m) = v {
            m.retain(|_, x| !x.is_null());
        }
    }
    let mut v = serde_json::to_value(req).expect("requests serialize");
    drop_nulls(&mut v);
    if let Some(Value::Array(messages)) = v.get_mut("messages") {
        messages.iter_mut().for_each(drop_nulls);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> MessagesRequest {
        serde_json::from_value(v).unwrap()
    }

    fn chat_of(v: Value) -> Value {
        raw_of(&req(v).into_chat(true).unwrap())
    }

    #[test]
    fn a_request_becomes_the_chat_request_it_means() {
        let got = chat_of(json!({
            "model": "m", "max_tokens": 64, "stream": true,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "They greet.", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xyz"},
                    {"type": "text", "text": "Hello!"}]},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "stop_sequences": ["\n\nHuman:"], "temperature": 0.5, "top_p": 0.75, "top_k": 40,
            "metadata": {"user_id": "u-42"}, "thinking": {"type": "enabled", "budget_tokens": 2048}
        }));
        assert_eq!(
            got,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}],
                     "reasoning_content": "They greet."},
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
                ],
                "stream": true, "stream_options": {"include_usage": true},
                "stop": ["\n\nHuman:"], "max_tokens": 64, "temperature": 0.5, "top_p": 0.75,
                "top_k": 40, "user": "u-42"
            })
        );
    }

    #[test]
    fn a_last_assistant_turn_is_a_prefix_to_continue() {
        let got = chat_of(json!({"model": "m", "max_tokens": 8, "messages": [
            {"role": "user", "content": "Pick A or B."},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "Which?"},
            {"role": "assistant", "content": [{"type": "text", "text": "The answer is ("}]}]}));
        let m = got["messages"].as_array().unwrap();
        assert!(m[1].get("prefix").is_none(), "{got}");
        assert_eq!(m[3]["prefix"], true, "{got}");
        assert_eq!(
            m[3]["content"],
            json!([{"type": "text", "text": "The answer is ("}])
        );
    }

    #[test]
    fn counting_needs_no_max_tokens_and_never_streams() {
        let r = req(json!({"model": "m", "stream": true,
                           "messages": [{"role": "user", "content": "Hi"}]}))
        .into_chat(false)
        .unwrap();
        assert_eq!((r.max_tokens, r.stream), (None, Some(false)));
        assert!(r.stream_options.is_none());
    }

    #[test]
    fn what_cannot_be_served_is_400_naming_the_field() {
        let user = |content: Value| {
            json!({"model": "m", "max_tokens": 8,
                                           "messages": [{"role": "user", "content": content}]})
        };
        for (body, param, says) in [
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}),
                "max_tokens",
                "`max_tokens` is required",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "messages": []}),
                "messages",
                "is empty",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "messages": [{"role": "system", "content": "x"}]}),
                "messages",
                "messages[0].role is \"system\"; use user or assistant",
            ),
            (
                user(json!([{"type": "text", "text": "see"},
                            {"type": "image", "source": {"type": "base64", "data": ""}}])),
                "messages",
                "messages[0].content[1] is a \"image\" block",
            ),
            (
                user(json!([{"type": "thinking", "thinking": "x", "signature": ""}])),
                "messages",
                "\"thinking\" block in a user turn; it belongs to assistant turns",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "system": [{"type": "image"}],
                       "messages": [{"role": "user", "content": "Hi"}]}),
                "system",
                "system[0] is a \"image\" block",
            ),
            (
                json!({"model": "m", "max_tokens": 8, "stop_sequences": ["a", "b", "c", "d", "e"],
                       "messages": [{"role": "user", "content": "Hi"}]}),
                "stop_sequences",
                "at most 4",
            ),
        ] {
            let e = req(body.clone()).into_chat(true).unwrap_err();
            match &e {
                AppError::BadRequest {
                    param: Some(p),
                    message,
                    ..
                } => {
                    assert_eq!(*p, param, "{body}: {e}");
                    assert!(message.contains(says), "{body}: {message}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    fn completion(reasoning: Option<&str>, content: &str, finish: &str) -> wire::ChatCompletion {
        let usage: wire::Usage = serde_json::from_value(json!({
            "prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 16},
            "completion_tokens_details": {"reasoning_tokens": 5},
            "prompt_cache_hit_tokens": 16, "prompt_cache_miss_tokens": 14,
            "cost": 0.0,
            "cost_details": {"currency": "USD", "input_cache_hit": 0.0, "input_cache_miss": 0.0,
                             "output": 0.0, "total": 0.0}
        }))
        .unwrap();
        wire::ChatCompletion {
            id: "msg_1".into(),
            object: "chat.completion".into(),
            created: 0,
            model: "m".into(),
            choices: vec![wire::ChatChoice {
                index: 0,
                message: wire::ResponseMessage {
                    role: "assistant".into(),
                    content: Some(content.into()),
                    reasoning_content: reasoning.map(Into::into),
                    reasoning: reasoning.map(Into::into),
                    tool_calls: None,
                },
                logprobs: None,
                finish_reason: Some(finish.into()),
                stop_reason: None,
            }],
            usage,
        }
    }

    #[test]
    fn a_completion_becomes_a_message_with_thinking_first() {
        let m = message(completion(Some("Think."), "Answer.", "stop"), false);
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                "content": [{"type": "thinking", "thinking": "Think.", "signature": ""},
                            {"type": "text", "text": "Answer."}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 14, "output_tokens": 12, "cache_read_input_tokens": 16,
                          "cache_creation_input_tokens": 0}
            })
        );
        // No reasoning: no thinking block; an empty answer still has its text block.
        let m = message(completion(Some(""), "", "length"), false);
        assert_eq!(
            m.content,
            [ContentBlock::Text {
                text: String::new()
            }]
        );
        assert_eq!(m.stop_reason, Some(StopReason::MaxTokens));
        let m = message(completion(None, "x", "content_filter"), false);
        assert_eq!(m.stop_reason, Some(StopReason::Refusal));
        // The context window filled before max_tokens.
        let m = message(completion(None, "x", "length"), true);
        assert_eq!(m.stop_reason, Some(StopReason::ModelContextWindowExceeded));
        assert_eq!(
            serde_json::to_value(m.stop_reason).unwrap(),
            "model_context_window_exceeded"
        );
    }

    fn chunk(
        delta: Value,
        finish: Option<&str>,
        usage: Option<&wire::Usage>,
    ) -> wire::ChatCompletionChunk {
        wire::ChatCompletionChunk {
            id: "msg_1".into(),
            object: "chat.completion.chunk".into(),
            created: 0,
            model: "m".into(),
            choices: if delta.is_null() {
                vec![]
            } else {
                vec![wire::ChunkChoice {
                    index: 0,
                    delta: serde_json::from_value(delta).unwrap(),
                    logprobs: None,
                    finish_reason: finish.map(Into::into),
                    stop_reason: None,
                }]
            },
            usage: usage.map_or(wire::ChunkUsage::Null, |u| wire::ChunkUsage::Final(*u)),
        }
    }

    /// The events of a stream, as `(event name, data)`.
    fn run(chunks: &[wire::ChatCompletionChunk]) -> Vec<Value> {
        let mut s = MessageStream::new(30, false);
        chunks
            .iter()
            .flat_map(|c| s.chunk(c))
            .map(|e| {
                let v = serde_json::to_value(&e).unwrap();
                assert_eq!(v["type"], e.name());
                v
            })
            .collect()
    }

    #[test]
    fn a_stream_of_chunks_becomes_a_stream_of_blocks() {
        let usage = completion(None, "", "stop").usage;
        let events = run(&[
            chunk(json!({"role": "assistant", "content": ""}), None, None),
            chunk(
                json!({"reasoning_content": "Hm", "reasoning": "Hm"}),
                None,
                None,
            ),
            chunk(
                json!({"reasoning_content": ".", "content": "Hi"}),
                None,
                None,
            ),
            chunk(json!({"content": " there"}), None, None),
            chunk(json!({}), Some("stop"), None),
            chunk(Value::Null, None, Some(&usage)),
        ]);
        let want = json!([
            {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "content": [], "model": "m", "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 30, "output_tokens": 0, "cache_read_input_tokens": 0,
                          "cache_creation_input_tokens": 0}}},
            {"type": "ping"},
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hm"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "."}},
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " there"}},
            {"type": "content_block_stop", "index": 1},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
             "usage": {"input_tokens": 14, "output_tokens": 12, "cache_read_input_tokens": 16,
                       "cache_creation_input_tokens": 0}},
            {"type": "message_stop"}
        ]);
        assert_eq!(Value::Array(events), want);
    }

    #[test]
    fn a_streamed_turn_without_text_still_has_a_text_block() {
        let usage = completion(None, "", "length").usage;
        let events = run(&[
            chunk(json!({"role": "assistant", "content": ""}), None, None),
            chunk(json!({"reasoning_content": "Long thought"}), None, None),
            chunk(json!({}), Some("length"), None),
            chunk(Value::Null, None, Some(&usage)),
        ]);
        let kinds: Vec<String> = events
            .iter()
            .map(|e| {
                let t = e["type"].as_str().unwrap();
                match (&e["content_block"]["type"], &e["delta"]["stop_reason"]) {
                    (Value::String(b), _) => format!("{t}:{b}"),
                    (_, Value::String(r)) => format!("{t}:{r}"),
                    _ => t.to_string(),
                }
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "ping",
                "content_block_start:thinking",
                "content_block_delta",
                "content_block_stop",
                "content_block_start:text",
                "content_block_stop",
                "message_delta:max_tokens",
                "message_stop"
            ]
        );
    }

    #[test]
    fn tools_tool_uses_and_tool_results_become_openais() {
        let got = chat_of(json!({
            "model": "m", "max_tokens": 64,
            "tools": [{"name": "get_weather", "description": "Weather in a city.",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                        "required": ["city"]}},
                      {"type": "custom", "name": "noop", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                     "content": [{"type": "text", "text": "timeout"}]},
                    {"type": "text", "text": "Thanks."}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]}
            ]
        }));
        let no = Value::Null;
        assert_eq!(
            got["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}
            ])
        );
        assert_eq!(
            got["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        assert_eq!(got["parallel_tool_calls"], false);
        let m = got["messages"].as_array().unwrap();
        let brief: Vec<Value> = m
            .iter()
            .map(|m| json!([m["role"], m["content"], m["tool_calls"], m["tool_call_id"]]))
            .collect();
        assert_eq!(
            brief,
            [
                json!(["user", "Weather in Paris and Rome?", no, no]),
                json!(["assistant", [{"type": "text", "text": "Checking."}], [
                    {"id": "toolu_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}], no]),
                // Results first, as OpenAI's tool messages must follow the calls, then the text.
                json!(["tool", "18 C", no, "toolu_1"]),
                json!(["tool", "Error: timeout", no, "toolu_2"]),
                json!(["user", [{"type": "text", "text": "Thanks."}], no, no]),
                // A turn of results alone is only tool messages.
                json!(["tool", "", no, "toolu_3"]),
            ]
        );
        for (choice, want) in [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "any"}), json!("required")),
            (json!({"type": "none"}), json!("none")),
        ] {
            let got = chat_of(json!({"model": "m", "max_tokens": 8, "tool_choice": choice,
                                     "messages": [{"role": "user", "content": "Hi"}]}));
            assert_eq!(got["tool_choice"], want);
            assert!(got.get("parallel_tool_calls").is_none(), "{got}");
        }
        let e = req(json!({"model": "m", "max_tokens": 8,
                           "tools": [{"type": "web_search_20250305", "name": "web_search"}],
                           "messages": [{"role": "user", "content": "Hi"}]}))
        .into_chat(true)
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("server tool \"web_search_20250305\""),
            "{e}"
        );
        let e = req(
            json!({"model": "m", "max_tokens": 8, "tool_choice": {"type": "tool"},
                           "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .into_chat(true)
        .unwrap_err();
        assert!(e.to_string().contains("needs `name`"), "{e}");
    }

    #[test]
    fn tool_calls_become_tool_use_blocks() {
        let mut c = completion(None, "", "tool_calls");
        let msg = &mut c.choices[0].message;
        msg.content = None;
        msg.tool_calls = Some(vec![wire::ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: wire::FunctionCall {
                name: "get_weather".into(),
                arguments: r#"{"city": "Paris"}"#.into(),
            },
        }]);
        let m = message(c.clone(), false);
        assert_eq!(m.stop_reason, Some(StopReason::ToolUse));
        // Only tool calls: no text block.
        assert_eq!(
            serde_json::to_value(&m.content).unwrap(),
            json!([{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}])
        );
        c.choices[0].message.content = Some("Let me check.".into());
        let m = message(c, false);
        assert_eq!(m.content.len(), 2);
        assert_eq!(
            m.content[0],
            ContentBlock::Text {
                text: "Let me check.".into()
            }
        );
    }

    #[test]
    fn streamed_tool_calls_become_tool_use_blocks_with_input_json_deltas() {
        let usage = completion(None, "", "tool_calls").usage;
        let call = |index: usize, head: Option<(&str, &str)>, args: &str| {
            let mut f = json!({"arguments": args});
            let mut d = json!({"index": index, "function": {}});
            if let Some((id, name)) = head {
                d["id"] = json!(id);
                d["type"] = json!("function");
                f["name"] = json!(name);
            }
            d["function"] = f;
            json!({"tool_calls": [d]})
        };
        let events = run(&[
            chunk(json!({"role": "assistant", "content": ""}), None, None),
            chunk(json!({"content": "Checking."}), None, None),
            chunk(call(0, Some(("call_a", "get_weather")), ""), None, None),
            chunk(call(0, None, "{\"city\": "), None, None),
            chunk(call(0, None, "\"Paris\"}"), None, None),
            chunk(
                call(1, Some(("call_b", "get_weather")), "{\"city\": \"Rome\"}"),
                None,
                None,
            ),
            chunk(json!({}), Some("tool_calls"), None),
            chunk(Value::Null, None, Some(&usage)),
        ]);
        let want = json!([
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}},
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_start", "index": 1,
             "content_block": {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}},
            {"type": "content_block_delta", "index": 1,
             "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}},
            {"type": "content_block_delta", "index": 1,
             "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}},
            {"type": "content_block_stop", "index": 1},
            {"type": "content_block_start", "index": 2,
             "content_block": {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}}},
            {"type": "content_block_delta", "index": 2,
             "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Rome\"}"}},
            {"type": "content_block_stop", "index": 2}
        ]);
        assert_eq!(Value::Array(events[2..events.len() - 2].to_vec()), want);
        assert_eq!(events[events.len() - 2]["delta"]["stop_reason"], "tool_use");
        // Only tool calls: no text block at the end either.
        let events = run(&[
            chunk(json!({"role": "assistant", "content": ""}), None, None),
            chunk(call(0, Some(("call_a", "noop")), "{}"), None, None),
            chunk(json!({}), Some("tool_calls"), None),
            chunk(Value::Null, None, Some(&usage)),
        ]);
        let starts: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "content_block_start")
            .map(|e| &e["content_block"]["type"])
            .collect();
        assert_eq!(starts, [&json!("tool_use")]);
    }

    #[test]
    fn a_stop_string_is_stop_reason_stop_sequence_streamed_or_not() {
        let mut c = completion(None, "Roses are", "stop");
        c.choices[0].stop_reason = Some("red".into());
        let m = message(c, false);
        assert_eq!(
            (m.stop_reason, m.stop_sequence.as_deref()),
            (Some(StopReason::StopSequence), Some("red"))
        );
        let usage = completion(None, "", "stop").usage;
        let mut finish = chunk(json!({}), Some("stop"), None);
        finish.choices[0].stop_reason = Some("red".into());
        let events = run(&[
            chunk(json!({"role": "assistant", "content": ""}), None, None),
            chunk(json!({"content": "Roses are"}), None, None),
            finish,
            chunk(Value::Null, None, Some(&usage)),
        ]);
        assert_eq!(
            events[events.len() - 2]["delta"],
            json!({"stop_reason": "stop_sequence", "stop_sequence": "red"})
        );
    }

    #[test]
    fn errors_keep_their_status_and_get_anthropics_types() {
        for (e, status, kind) in [
            (AppError::bad("model", "x"), 400, "invalid_request_error"),
            (
                AppError::Unauthorized("x".into()),
                401,
                "authentication_error",
            ),
            (AppError::NotFound("x".into()), 404, "not_found_error"),
            (AppError::TooLarge("x".into()), 413, "request_too_large"),
            (
                AppError::Busy {
                    message: "x".into(),
                    retry_after_s: 1,
                },
                429,
                "overloaded_error",
            ),
            (AppError::shutting_down(), 503, "overloaded_error"),
            (AppError::Internal("x".into()), 500, "api_error"),
        ] {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            let body = serde_json::to_value(error_body(&e)).unwrap();
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], kind, "{e:?}");
            assert_eq!(body["error"]["message"], e.to_string());
        }
    }
}
