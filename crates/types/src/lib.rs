//! Plain data shared by every Seek crate: token ids, sampling settings, chat messages,
//! finish reasons and usage counts.
//!
//! Design decision: nothing here knows about tensors, HTTP or files. These types cross every
//! crate boundary, so they stay small, `Clone` and serde-friendly (OpenAI field names).
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};

/// Index of a token in a model's vocabulary.
pub type TokenId = u32;

/// How the next token is picked from the logits. OpenAI / vLLM names and meanings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; `0.0` means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set whose probability mass reaches `top_p`; `1.0` disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top token's; `0.0` disables.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of already-seen tokens by this; `1.0` disables.
    pub repetition_penalty: f32,
    /// Subtract this from the logit of every token that appeared in the output so far.
    pub presence_penalty: f32,
    /// Subtract this times the count of each token in the output so far.
    pub frequency_penalty: f32,
    /// Random seed; same seed and input give the same output.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// DeepSeek's recommended settings for R1 models: temperature 0.6, top-p 0.95.
    pub fn r1_defaults() -> Self {
        Self {
            temperature: 0.6,
            top_p: 0.95,
            ..Self::default()
        }
    }

    /// Whether sampling reduces to argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// Why generation stopped (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-sequence token or a stop string matched.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The request was aborted.
    Abort,
    /// A guardrail stopped the output (OpenAI's `content_filter`).
    ContentFilter,
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
            Self::ContentFilter => "content_filter",
        })
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The visible text of the turn.
    pub content: String,
    /// The chain of thought of an assistant turn, kept apart from `content` (DeepSeek's field name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The functions an assistant turn called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` turn: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` turn: the name of the function that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A function call made by an assistant turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id (`call_...`).
    pub id: String,
    /// The function's name.
    pub name: String,
    /// Its arguments: a JSON object, as text.
    pub arguments: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Token counts of one request (OpenAI's `usage`, with DeepSeek's reasoning detail).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: usize,
    /// Tokens generated, reasoning included.
    pub completion_tokens: usize,
    /// Of the completion tokens, those inside the `<think>` block.
    pub reasoning_tokens: usize,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: usize,
    /// Of the prompt tokens, those whose KV came from the prefix cache (DeepSeek's
    /// `prompt_cache_hit_tokens`).
    #[serde(default)]
    pub cached_prompt_tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_detection() {
        assert!(SamplingParams::greedy().is_greedy());
        assert!(!SamplingParams::r1_defaults().is_greedy());
        let k1 = SamplingParams {
            top_k: 1,
            ..SamplingParams::default()
        };
        assert!(k1.is_greedy());
    }

    #[test]
    fn finish_reason_wire_names() {
        assert_eq!(
            serde_json::to_string(&FinishReason::Length).unwrap(),
            "\"length\""
        );
    }
}
