//! Generation for one conversation: prompt in, streamed reasoning and answer out.
//!
//! The loop is prefill (one forward over the whole prompt) then decode (one forward per new
//! token), each followed by sampling. Text goes token ids -> incremental detokenizer -> stop
//! strings -> `<think>` splitter, so what a caller sees is whole UTF-8, never past a stop
//! string, with the chain of thought apart from the answer.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use seek_models::{CausalLm, KvCache};
use seek_tokenizer::Tokenizer;
use seek_types::{FinishReason, SamplingParams, TokenId, Usage};
use serde::Serialize;

pub use crate::sequence::THINK_CLOSE;
use crate::sequence::{Sequence, SequenceParams};
use crate::EngineError;

/// What to generate, after the prompt has been rendered and encoded.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The encoded prompt.
    pub prompt: Vec<TokenId>,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Most new tokens, reasoning included.
    pub max_tokens: usize,
    /// Strings that end generation (not included in the output).
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Whether the prompt already opened a `<think>` block.
    pub starts_in_reasoning: bool,
    /// Most tokens inside the reasoning block; when spent, [`THINK_CLOSE`] is inserted and the
    /// model goes on to answer.
    pub max_reasoning_tokens: Option<usize>,
    /// What the answer must match (after the reasoning, for a reasoning model).
    pub guide: Option<seek_structured::Guide>,
}

/// A piece of streamed output: new reasoning text and new answer text.
pub use seek_reasoning::Delta;

/// Wall-clock figures of one generation.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    /// Prefill (prompt forward) time.
    pub prefill_s: f64,
    /// Time from start to the first sampled token.
    pub time_to_first_token_s: f64,
    /// Time spent on every token after the first.
    pub decode_s: f64,
    /// Prompt tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
}

/// The result of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateOutput {
    /// The chain of thought, when the model produced one.
    pub reasoning_content: Option<String>,
    /// The answer.
    pub content: String,
    /// Every generated token id (inserted budget tokens included).
    pub token_ids: Vec<TokenId>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Speed.
    pub timings: Timings,
}

/// Runs one request to completion, calling `on_delta` with each piece of text; returning
/// `ControlFlow::Break` from it aborts the generation.
pub fn generate(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    req: &GenerateRequest,
    mut on_delta: impl FnMut(&Delta) -> ControlFlow<()>,
) -> Result<GenerateOutput, EngineError> {
    if req.prompt.is_empty() {
        return Err(EngineError::Request(
            "the prompt is empty: it must have at least one token".into(),
        ));
    }
    let context = model.max_context();
    if req.prompt.len() >= context {
        return Err(EngineError::Request(format!(
            "the prompt has {} tokens, but the model's context is {context}; shorten the prompt",
            req.prompt.len()
        )));
    }
    let max_tokens = req.max_tokens.min(context - req.prompt.len());
    let length_capped = max_tokens < req.max_tokens;

    let start = Instant::now();
    let mut cache = model.new_cache();
    cache.reserve(req.prompt.len() + max_tokens);
    let mut seq = Sequence::new(
        tokenizer,
        SequenceParams {
            sampling: req.sampling.clone(),
            max_tokens,
            stop: req.stop.clone(),
            ignore_eos: req.ignore_eos,
            starts_in_reasoning: req.starts_in_reasoning,
            max_reasoning_tokens: req.max_reasoning_tokens,
            split_reasoning: true,
            guide: req.guide.clone(),
            ..SequenceParams::default()
        },
    )?;
    let mut out = GenerateOutput {
        reasoning_content: None,
        content: String::new(),
        token_ids: Vec::new(),
        finish_reason: FinishReason::Length,
        usage: Usage {
            prompt_tokens: req.prompt.len(),
            ..Usage::default()
        },
        timings: Timings::default(),
    };
    let mut reasoning = String::new();

    let mut logits = last_logits(model, &req.prompt, &mut cache)?;
    let prefill = start.elapsed();
    let mut first_token_at: Option<Duration> = None;

    let mut emit = |delta: Delta, out: &mut GenerateOutput, reasoning: &mut String| {
        reasoning.push_str(&delta.reasoning);
        out.content.push_str(&delta.content);
        if delta.is_empty() {
            ControlFlow::Continue(())
        } else {
            on_delta(&delta)
        }
    };

    let reason = loop {
        let step = seq.step(&mut logits, &req.prompt)?;
        first_token_at.get_or_insert_with(|| start.elapsed());
        let flow = emit(step.delta, &mut out, &mut reasoning);
        if let Some(reason) = step.finished {
            break reason;
        }
        if flow.is_break() {
            break FinishReason::Abort;
        }
        let token = step.token.expect("an unfinished step feeds a token");
        logits = last_logits(model, &[token], &mut cache)?;
    };
    if reason == FinishReason::Length && length_capped && seq.output.len() < req.max_tokens {
        tracing::debug!("generation stopped at the end of the context window");
    }
    // Flush what the detokenizer, stop matcher and splitter still hold.
    let tail = seq.finish(reason)?;
    let _ = emit(tail, &mut out, &mut reasoning);
    out.finish_reason = seq.finished().unwrap_or(reason);
    out.token_ids = std::mem::take(&mut seq.output);
    let reasoning_tokens = seq.reasoning_tokens;

    let total = start.elapsed();
    let ttft = first_token_at.unwrap_or(total);
    let n = out.token_ids.len();
    out.reasoning_content = (req.starts_in_reasoning || !reasoning.is_empty()).then_some(reasoning);
    out.usage.completion_tokens = n;
    out.usage.reasoning_tokens = reasoning_tokens;
    out.usage.total_tokens = out.usage.prompt_tokens + n;
    let decode = total.saturating_sub(ttft);
    out.timings = Timings {
        prefill_s: prefill.as_secs_f64(),
        time_to_first_token_s: ttft.as_secs_f64(),
        decode_s: decode.as_secs_f64(),
        prefill_tokens_per_s: req.prompt.len() as f64 / prefill.as_secs_f64().max(1e-9),
        decode_tokens_per_s: if n > 1 {
            (n - 1) as f64 / decode.as_secs_f64().max(1e-9)
        } else {
            0.0
        },
    };
    Ok(out)
}

/// Feeds `tokens` after what `cache` holds and returns the logits of the last position.
fn last_logits(
    model: &dyn CausalLm,
    tokens: &[TokenId],
    cache: &mut KvCache,
) -> Result<Vec<f32>, EngineError> {
    let input = Tensor::new(tokens, model.device())?.unsqueeze(0)?;
    // (1, V) -> (V,)
    Ok(model
        .forward_last(&input, cache)?
        .squeeze(0)?
        .to_vec1::<f32>()?)
}

/// Logits of every position of `tokens` from a fresh cache, `(T, V)`: what `seek logits` writes.
pub fn all_logits(model: &dyn CausalLm, tokens: &[TokenId]) -> Result<Tensor, EngineError> {
    if tokens.is_empty() {
        return Err(EngineError::Request("no tokens given".into()));
    }
    let mut cache = model.new_cache();
    cache.reserve(tokens.len());
    let input = Tensor::new(tokens, model.device())?.unsqueeze(0)?;
    let logits = model.forward(&input, &mut cache)?;
    // (1, T, V) -> (T, V)
    Ok(logits.squeeze(0)?)
}
