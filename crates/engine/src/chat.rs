//! From chat messages to prompt tokens, with DeepSeek's usage notes for R1 models applied.
//!
//! DeepSeek recommends, for R1 and its distillations: no system prompt (its instructions go
//! into the user turn), temperature 0.5-0.7 (0.6), top-p 0.95, and forcing the answer to
//! begin with `<think>\n` so the model does not skip its reasoning. A model counts as a
//! reasoning model when its chat template mentions `<think>` or `</think>` (the January 2025
//! R1-Distill templates only strip `</think>` from history; later ones also open `<think>`).

use seek_tokenizer::Tokenizer;
use seek_types::{ChatMessage, SamplingParams, TokenId};

use crate::EngineError;

/// A prompt ready for [`crate::generate`].
#[derive(Debug, Clone)]
pub struct RenderedPrompt {
    /// The text the template produced (plus any forced `<think>\n`).
    pub text: String,
    /// Its tokens.
    pub ids: Vec<TokenId>,
    /// Whether the prompt ends inside an open `<think>` block.
    pub starts_in_reasoning: bool,
}

/// Whether the model emits a `<think>` block (R1 and its distillations).
pub fn is_reasoning_model(tokenizer: &Tokenizer) -> bool {
    tokenizer
        .chat_template()
        .is_some_and(|t| t.source().contains("<think>") || t.source().contains("</think>"))
}

/// The sampling defaults for this model: DeepSeek's for reasoning models, greedy-free
/// neutral ones (temperature 0.7, top-p 0.9) otherwise.
pub fn default_sampling(tokenizer: &Tokenizer) -> SamplingParams {
    if is_reasoning_model(tokenizer) {
        SamplingParams::r1_defaults()
    } else {
        SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            ..SamplingParams::default()
        }
    }
}

/// Moves a leading system message into the first user turn, as DeepSeek advises for R1.
pub fn fold_system_into_user(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    let mut system: Vec<&str> = Vec::new();
    for m in messages {
        if m.role == "system" {
            system.push(&m.content);
            continue;
        }
        let mut m = m.clone();
        if m.role == "user" && !system.is_empty() {
            m.content = format!("{}\n\n{}", system.join("\n\n"), m.content);
            system.clear();
        }
        out.push(m);
    }
    if !system.is_empty() {
        out.push(ChatMessage::user(system.join("\n\n")));
    }
    out
}

/// Renders `messages` with the model's chat template, applies the R1 conventions for a
/// reasoning model, and encodes the result.
pub fn render_chat(
    tokenizer: &Tokenizer,
    messages: &[ChatMessage],
) -> Result<RenderedPrompt, EngineError> {
    render_chat_with(tokenizer, messages, &ChatOptions::default())
}

/// What a chat prompt holds besides its messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatOptions<'a> {
    /// The functions the model may call (OpenAI's `tools` entries), shown by the template.
    pub tools: Option<&'a [serde_json::Value]>,
    /// DeepSeek's chat prefix completion: the last message is an assistant turn to continue
    /// (its `reasoning_content`, then its `content`), not a turn to answer.
    pub continue_final: bool,
    /// Extra template variables (vLLM's `chat_template_kwargs`: `{"enable_thinking": false}`
    /// turns Qwen3's thinking off).
    pub template_kwargs: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// [`render_chat`] with tools and prefix continuation.
pub fn render_chat_with(
    tokenizer: &Tokenizer,
    messages: &[ChatMessage],
    opts: &ChatOptions<'_>,
) -> Result<RenderedPrompt, EngineError> {
    let (messages, prefix) = match messages.split_last() {
        Some((last, head)) if opts.continue_final => {
            if last.role != "assistant" {
                return Err(EngineError::Request(
                    "a prefix completion continues the last message, which must be an assistant message".into(),
                ));
            }
            (head, Some(last))
        }
        _ => (messages, None),
    };
    let template = tokenizer.chat_template().ok_or_else(|| {
        EngineError::Request(
            "the model has no chat template; pass the prompt as raw text instead (`--raw`)".into(),
        )
    })?;
    if messages.is_empty() {
        return Err(EngineError::Request(
            "no messages: a chat needs at least one user message (before the prefix)".into(),
        ));
    }
    let reasoning = is_reasoning_model(tokenizer);
    let messages = if reasoning {
        fold_system_into_user(messages)
    } else {
        messages.to_vec()
    };
    let mut text =
        template.render_with_kwargs(&messages, opts.tools, true, opts.template_kwargs)?;
    let mut starts_in_reasoning = false;
    // A template that closed the reasoning itself (Qwen3 with `enable_thinking: false` ends in
    // an empty `<think>\n\n</think>`) asked for an answer without it.
    let closed = text.trim_end().ends_with("</think>");
    if reasoning && !closed {
        let trimmed = text.trim_end_matches('\n');
        if !trimmed.ends_with("<think>") {
            text.push_str("<think>\n");
        }
        starts_in_reasoning = true;
    }
    if let Some(p) = prefix {
        if reasoning {
            if let Some(r) = &p.reasoning_content {
                text.push_str(r);
            }
            if !p.content.is_empty() {
                text.push_str(crate::sequence::THINK_CLOSE);
                starts_in_reasoning = false;
            }
        }
        text.push_str(&p.content);
    }
    let ids = tokenizer.encode(&text, false)?;
    Ok(RenderedPrompt {
        text,
        ids,
        starts_in_reasoning,
    })
}

/// Encodes raw text (no template), with the model's BOS token when it wants one.
pub fn render_raw(tokenizer: &Tokenizer, text: &str) -> Result<RenderedPrompt, EngineError> {
    let ids = tokenizer.encode(text, true)?;
    Ok(RenderedPrompt {
        text: text.to_string(),
        ids,
        starts_in_reasoning: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_folds_into_first_user_turn() {
        let m = vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hi"),
            ChatMessage::assistant("Hello"),
        ];
        let f = fold_system_into_user(&m);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].role, "user");
        assert_eq!(f[0].content, "Be brief.\n\nHi");
        assert_eq!(f[1].content, "Hello");
    }

    #[test]
    fn lone_system_becomes_user() {
        let f = fold_system_into_user(&[ChatMessage::system("Solve 2+2.")]);
        assert_eq!(f, vec![ChatMessage::user("Solve 2+2.")]);
    }
}
