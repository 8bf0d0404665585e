//! Every JSON body the server reads or writes, with OpenAI's field names (DeepSeek's and
//! vLLM's additions marked). Nothing here is checked: [`crate::valid`] turns requests into
//! checked types, and unknown request fields are ignored, as OpenAI's API does.
//!
//! Responses derive `Deserialize` as well, so that clients in Rust (tests, the evaluation
//! crate) read exactly what the server writes.

use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ChatCompletionRequest {
    /// The served model's name (see `GET /v1/models`).
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<RequestMessage>,
    /// Stream the answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options (only with `stream: true`).
    pub stream_options: Option<StreamOptions>,
    /// Choices to generate for the same prompt.
    pub n: Option<u64>,
    /// Up to 4 strings that end generation.
    pub stop: Option<Stop>,
    /// Most generated tokens, reasoning included (deprecated by OpenAI in favour of
    /// `max_completion_tokens`; both are read, the latter wins).
    pub max_tokens: Option<u64>,
    /// Most generated tokens, reasoning included.
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature in `[0, 2]`; 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass in `(0, 1]`.
    pub top_p: Option<f32>,
    /// Random seed (OpenAI's is a signed 64-bit integer).
    pub seed: Option<i64>,
    /// An id of the end user, kept in the audit entry and the access log.
    pub user: Option<String>,
    /// In `[-2, 2]`.
    pub presence_penalty: Option<f32>,
    /// In `[-2, 2]`.
    pub frequency_penalty: Option<f32>,
    /// Return the log-probability of each generated token.
    pub logprobs: Option<bool>,
    /// With `logprobs`, also the `top_logprobs` most likely tokens at each position (0..=20).
    pub top_logprobs: Option<u64>,
    /// `{"type": "text"}` or `{"type": "json_object"}`.
    pub response_format: Option<ResponseFormat>,
    /// vLLM extension: keep only the k most likely tokens (`-1` or `0` disables).
    pub top_k: Option<i64>,
    /// vLLM extension: drop tokens below this fraction of the top token's probability.
    pub min_p: Option<f32>,
    /// vLLM extension: penalise tokens already in the prompt or output (1.0 disables).
    pub repetition_penalty: Option<f32>,
    /// vLLM extension: keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// Functions the model may call.
    pub tools: Option<Vec<Tool>>,
    /// `"auto"`, `"none"`, `"required"` or `{"type": "function", "function": {"name": ..}}`.
    pub tool_choice: Option<serde_json::Value>,
    /// Allow more than one call per turn (default true).
    pub parallel_tool_calls: Option<bool>,
    /// vLLM's extra chat-template variables (`{"enable_thinking": false}` for Qwen3,
    /// `{"thinking": true}` for DeepSeek-V3.1).
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Token id (as a string) -> bias in `[-100, 100]` added to its logit.
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// vLLM extension: constrain the output (`json`, `regex`, `choice`, `grammar`).
    pub structured_outputs: Option<StructuredOutputs>,
    /// vLLM's older names of the same constraints.
    pub guided_json: Option<serde_json::Value>,
    /// vLLM: a regular expression the output must match.
    pub guided_regex: Option<String>,
    /// vLLM: the output is one of these strings.
    pub guided_choice: Option<Vec<String>>,
    /// vLLM: a grammar the output must match.
    pub guided_grammar: Option<String>,
    /// llama.cpp extension: a grammar (Lark syntax, llguidance's dialect) for the output.
    pub grammar: Option<String>,
    /// llama.cpp extension: a JSON Schema for the output.
    pub json_schema: Option<serde_json::Value>,
}

/// vLLM's `structured_outputs`: exactly one of its fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StructuredOutputs {
    /// A JSON Schema (an object, or its text).
    pub json: Option<serde_json::Value>,
    /// A regular expression.
    pub regex: Option<String>,
    /// One of these strings.
    pub choice: Option<Vec<String>>,
    /// A grammar (Lark syntax, llguidance's dialect).
    pub grammar: Option<String>,
    /// Any JSON object.
    pub json_object: Option<bool>,
}

/// One entry of `tools`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Tool {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDef,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FunctionDef {
    /// Its name.
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema of its arguments (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    /// OpenAI's strict mode (arguments are always constrained to the schema here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A call the model made (in a response) or made earlier (in a request's assistant message).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ToolCall {
    /// `call_...`; a `tool` message answers it by this id.
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function and its arguments.
    pub function: FunctionCall,
}

/// The function of a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments, a JSON object as text.
    pub arguments: String,
}

/// A streamed piece of a tool call: index, id and name first, then argument fragments.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ToolCallDelta {
    /// Which call of the choice this piece belongs to.
    pub index: usize,
    /// The call's id (first piece only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` (first piece only).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name (first piece) or an arguments fragment.
    pub function: FunctionCallDelta,
}

/// The function part of a [`ToolCallDelta`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct FunctionCallDelta {
    /// The function's name (first piece only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A fragment of the arguments' text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// One message of a chat request.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RequestMessage {
    /// `system`, `developer` (treated as `system`), `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, or an array of `{"type": "text", "text": ...}` parts; may be null for an
    /// assistant turn.
    pub content: Option<MessageContent>,
    /// An earlier assistant turn's chain of thought (DeepSeek's field; R1's template drops it).
    pub reasoning_content: Option<String>,
    /// An earlier assistant turn's function calls.
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
    /// A `tool` message: the function's name (optional).
    pub name: Option<String>,
    /// DeepSeek's chat prefix completion: the last assistant message is continued, not answered.
    pub prefix: Option<bool>,
}

/// A message's content.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts; only text parts are supported.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ContentPart {
    /// `text` (others, such as `image_url`, are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage of the whole request (and `usage: null` before).
    pub include_usage: Option<bool>,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema` (checked after decoding, which is not
    /// constrained).
    #[serde(rename = "type")]
    pub kind: String,
    /// With `json_schema`: `{"name", "schema", "strict"}`.
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JsonSchemaFormat {
    /// The schema's name.
    pub name: Option<String>,
    /// The JSON Schema the answer must match.
    pub schema: Option<serde_json::Value>,
    /// OpenAI's strict mode (accepted; the answer is validated either way).
    pub strict: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct CompletionRequest {
    /// The served model's name.
    pub model: String,
    /// Raw text (no chat template), several texts, or token ids.
    pub prompt: Option<Prompt>,
    /// Stream the text as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options (only with `stream: true`).
    pub stream_options: Option<StreamOptions>,
    /// Choices per prompt.
    pub n: Option<u64>,
    /// Must equal `n` when given (candidates are not ranked).
    pub best_of: Option<u64>,
    /// Up to 4 strings that end generation.
    pub stop: Option<Stop>,
    /// Most generated tokens (OpenAI's default for this endpoint: 16).
    pub max_tokens: Option<u64>,
    /// Sampling temperature in `[0, 2]`; 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass in `(0, 1]`.
    pub top_p: Option<f32>,
    /// Random seed.
    pub seed: Option<i64>,
    /// In `[-2, 2]`.
    pub presence_penalty: Option<f32>,
    /// In `[-2, 2]`.
    pub frequency_penalty: Option<f32>,
    /// Return the log-probabilities of the `logprobs` most likely tokens at each position (0..=5).
    pub logprobs: Option<u64>,
    /// Echo the prompt before the completion (refused).
    pub echo: Option<bool>,
    /// Fill in the middle: the text after the completion (needs a model with FIM tokens).
    pub suffix: Option<String>,
    /// vLLM extension: keep only the k most likely tokens (`-1` or `0` disables).
    pub top_k: Option<i64>,
    /// vLLM extension: drop tokens below this fraction of the top token's probability.
    pub min_p: Option<f32>,
    /// vLLM extension: penalise tokens already in the prompt or output (1.0 disables).
    pub repetition_penalty: Option<f32>,
    /// vLLM extension: keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// Token id (as a string) -> bias in `[-100, 100]` added to its logit.
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// `{"type": "json_object"}` or `{"type": "json_schema", ...}` (vLLM accepts it here too).
    pub response_format: Option<ResponseFormat>,
    /// vLLM extension: constrain the output (`json`, `regex`, `choice`, `grammar`).
    pub structured_outputs: Option<StructuredOutputs>,
    /// vLLM's older names of the same constraints.
    pub guided_json: Option<serde_json::Value>,
    /// vLLM: a regular expression the output must match.
    pub guided_regex: Option<String>,
    /// vLLM: the output is one of these strings.
    pub guided_choice: Option<Vec<String>>,
    /// vLLM: a grammar the output must match.
    pub guided_grammar: Option<String>,
    /// llama.cpp extension: a grammar (Lark syntax, llguidance's dialect) for the output.
    pub grammar: Option<String>,
    /// llama.cpp extension: a JSON Schema for the output.
    pub json_schema: Option<serde_json::Value>,
}

/// `prompt` of a completion request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One text.
    Text(String),
    /// Several texts, one completion each.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// A chat completion (`object: "chat.completion"`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// One per `n`.
    pub choices: Vec<ChatChoice>,
    /// Token counts and cost of the whole request.
    pub usage: Usage,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ChatChoice {
    /// Its index (0..n).
    pub index: usize,
    /// The answer.
    pub message: ResponseMessage,
    /// Per-token log-probabilities, when asked.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: Option<String>,
    /// vLLM extension: the stop string that ended the choice (absent when none did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

/// The assistant message of a choice.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ResponseMessage {
    /// `assistant`.
    pub role: String,
    /// The answer; null when the turn is only tool calls.
    pub content: Option<String>,
    /// The chain of thought (DeepSeek's name); null for a model that does not reason.
    pub reasoning_content: Option<String>,
    /// The same text under vLLM's and Ollama's name.
    pub reasoning: Option<String>,
    /// The functions the model called (`finish_reason: "tool_calls"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// `logprobs` of a chat choice or chunk.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ChatLogprobs {
    /// One entry per generated token (reasoning tokens included).
    pub content: Vec<TokenLogprob>,
}

/// A generated token's log-probability.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability under the model (before temperature and penalties).
    pub logprob: f32,
    /// The UTF-8 bytes of `token`.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position, best first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// One of the most likely tokens at a position.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// The UTF-8 bytes of `token`.
    pub bytes: Vec<u8>,
}

/// Token counts and cost (OpenAI's `usage` with DeepSeek's cache fields and Seek's cost).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct Usage {
    /// Tokens in the prompt (counted once for `n > 1`, as OpenAI bills).
    pub prompt_tokens: usize,
    /// Generated tokens, reasoning included, summed over choices.
    pub completion_tokens: usize,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: usize,
    /// OpenAI's detail of the prompt.
    pub prompt_tokens_details: PromptTokensDetails,
    /// OpenAI's detail of the completion.
    pub completion_tokens_details: CompletionTokensDetails,
    /// DeepSeek: prompt tokens served from the prefix cache.
    pub prompt_cache_hit_tokens: usize,
    /// DeepSeek: prompt tokens computed (`prompt_tokens - prompt_cache_hit_tokens`).
    pub prompt_cache_miss_tokens: usize,
    /// What the request costs at the configured prices, US dollars (OpenRouter's field; LiteLLM
    /// and other clients read a number here).
    pub cost: f64,
    /// The breakdown of `cost` (OpenRouter's `cost_details`).
    pub cost_details: Cost,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct CompletionTokensDetails {
    /// Generated tokens inside the `<think>` block.
    pub reasoning_tokens: usize,
}

/// `usage.cost`: US dollars at the served model's price table.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct Cost {
    /// Always `USD`.
    pub currency: Currency,
    /// Prompt tokens served from the cache.
    pub input_cache_hit: f64,
    /// Prompt tokens computed.
    pub input_cache_miss: f64,
    /// Generated tokens.
    pub output: f64,
    /// The sum.
    pub total: f64,
}

/// The currency of [`Cost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Currency {
    /// US dollars.
    #[serde(rename = "USD")]
    Usd,
}

/// A streamed piece of a chat completion (`object: "chat.completion.chunk"`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ChatCompletionChunk {
    /// The same for every chunk of a request.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// Usually one choice; empty in the final usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// With `include_usage`: `null` in every chunk but the last, which has the usage.
    /// Absent without it.
    #[serde(default, skip_serializing_if = "ChunkUsage::is_absent")]
    pub usage: ChunkUsage,
}

/// The `usage` field of a chunk: absent, `null`, or the counts.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ChunkUsage {
    /// Not written (the request did not ask for usage).
    #[default]
    Absent,
    /// Written as `null`.
    Null,
    /// The usage of the whole request.
    Final(Usage),
}

impl ChunkUsage {
    fn is_absent(&self) -> bool {
        matches!(self, ChunkUsage::Absent)
    }

    /// The usage, when this is the final chunk.
    pub fn get(&self) -> Option<&Usage> {
        match self {
            ChunkUsage::Final(u) => Some(u),
            _ => None,
        }
    }
}

impl Serialize for ChunkUsage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ChunkUsage::Final(u) => u.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for ChunkUsage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<Usage>::deserialize(d)? {
            Some(u) => ChunkUsage::Final(u),
            None => ChunkUsage::Null,
        })
    }
}

/// One choice of a chunk.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ChunkChoice {
    /// The choice's index.
    pub index: usize,
    /// New text.
    pub delta: ChunkDelta,
    /// Log-probabilities of the tokens behind this delta, when asked.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the choice's last chunk.
    pub finish_reason: Option<String>,
    /// vLLM extension, in the choice's last chunk: the stop string that ended it (absent when
    /// none did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

/// New text of a chunk; absent fields carry nothing new.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct ChunkDelta {
    /// `assistant` in each choice's first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New answer text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New chain-of-thought text (DeepSeek's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The same text under vLLM's and Ollama's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Pieces of tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A text completion (`object: "text_completion"`), also the shape of its stream chunks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Completion {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
    /// `n` per prompt; choice `i * n + j` is prompt `i`'s `j`-th.
    pub choices: Vec<CompletionChoice>,
    /// Token counts and cost (in a stream: as for chat chunks).
    #[serde(default, skip_serializing_if = "ChunkUsage::is_absent")]
    pub usage: ChunkUsage,
}

/// One choice of a text completion.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct CompletionChoice {
    /// Its index.
    pub index: usize,
    /// The generated text (a chain of thought, if the model opened one, comes first without
    /// its tags).
    pub text: String,
    /// Per-token log-probabilities, when asked.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; null in a stream until the choice's last chunk.
    pub finish_reason: Option<String>,
}

/// Legacy completions' `logprobs`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct CompletionLogprobs {
    /// Generated tokens' texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f32>,
    /// The most likely tokens at each position: text -> log-probability.
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Each token's character offset in the generated text.
    pub text_offset: Vec<usize>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The served models.
    pub data: Vec<Model>,
}

/// One served model.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Model {
    /// The name to pass as `model`.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds when it was loaded.
    pub created: u64,
    /// `seek`.
    pub owned_by: String,
    /// vLLM's field: the context window in tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
}

/// OpenAI's error object.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ErrorBody {
    /// What went wrong and how to fix it.
    pub message: String,
    /// `invalid_request_error`, `requests`, `server_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_a_string_or_text_parts() {
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                {"role":"assistant","content":null}],
                "stop":"x","unknown_field":{"nested":1}}"#,
        )
        .unwrap();
        assert!(matches!(r.messages[0].content, Some(MessageContent::Text(ref t)) if t == "hi"));
        assert!(
            matches!(r.messages[1].content, Some(MessageContent::Parts(ref p)) if p.len() == 2)
        );
        assert!(r.messages[2].content.is_none());
        assert!(matches!(r.stop, Some(Stop::One(ref s)) if s == "x"));
    }

    #[test]
    fn prompts_of_every_shape() {
        let p = |s: &str| serde_json::from_str::<Prompt>(s).unwrap();
        assert!(matches!(p(r#""a""#), Prompt::Text(_)));
        assert!(matches!(p(r#"["a","b"]"#), Prompt::Texts(v) if v.len() == 2));
        assert!(matches!(p("[1,2]"), Prompt::Tokens(v) if v == [1, 2]));
        assert!(matches!(p("[[1],[2,3]]"), Prompt::TokenLists(v) if v.len() == 2));
    }

    #[test]
    fn chunk_usage_is_absent_null_or_counts() {
        let chunk = |usage| ChatCompletionChunk {
            id: "c".into(),
            object: "chat.completion.chunk".into(),
            created: 0,
            model: "m".into(),
            choices: vec![],
            usage,
        };
        let v = serde_json::to_value(chunk(ChunkUsage::Absent)).unwrap();
        assert!(v.get("usage").is_none());
        let v = serde_json::to_value(chunk(ChunkUsage::Null)).unwrap();
        assert!(v["usage"].is_null());
        let back: ChatCompletionChunk = serde_json::from_value(v).unwrap();
        assert_eq!(back.usage, ChunkUsage::Null);
    }
}
