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
    let template = tokenizer.chat_template().ok_or_else(|| {
        EngineError::Request(
            "the model has no chat template; pass the prompt as raw text instead (`--raw`)".into(),
        )
    })?;
    if messages.is_empty() {
        return Err(EngineError::Request(
            "no messages: a chat needs at least one user message".into(),
        ));
    }
    let reasoning = is_reasoning_model(tokenizer);
    let messages = if reasoning {
        fold_system_into_user(messages)
    } else {
        messages.to_vec()
    };
    let mut text = template.render(&messages, true)?;
    let mut starts_in_reasoning = false;
    if reasoning {
        let trimmed = text.trim_end_matches('\n');
        if trimmed.ends_with("<think>") {
            starts_in_reasoning = true;
        } else {
            text.push_str("<think>\n");
            starts_in_reasoning = true;
        }
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
