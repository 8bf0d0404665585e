//! What happens to one sequence after each forward: pick the next token (sampling, or the
//! tokens that close a spent reasoning budget), then turn it into text (incremental
//! detokenizer -> stop strings -> `<think>` splitter). Shared by [`crate::generate`] (one
//! request) and the serving engine (many requests batched), so both stream the same text.

use seek_reasoning::{Delta, ReasoningSplitter};
use seek_structured::Guide;
use seek_tokenizer::{IncrementalDetokenizer, Tokenizer};
use seek_types::{FinishReason, SamplingParams, TokenId};

use crate::sampler::Sampler;
use crate::stop::{StopMatcher, StopOutcome};
use crate::EngineError;

/// The text that closes a reasoning block when its budget is spent.
pub const THINK_CLOSE: &str = "\n</think>\n\n";

/// What a sequence is asked to do after its prompt.
#[derive(Debug, Clone)]
pub struct SequenceParams {
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Most new tokens, reasoning included (already capped to the context window).
    pub max_tokens: usize,
    /// Strings that end generation (not included in the output).
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Whether the prompt already opened a `<think>` block.
    pub starts_in_reasoning: bool,
    /// Most sampled tokens inside the reasoning block before [`THINK_CLOSE`] is inserted.
    pub max_reasoning_tokens: Option<usize>,
    /// Split `<think>` blocks out of the text as reasoning (chat); `false` keeps every piece
    /// of text, tags included, as content (raw completions).
    pub split_reasoning: bool,
    /// What the answer must match (a JSON Schema, a regex, a tool call...). For a reasoning
    /// model it applies after `</think>`: the reasoning stays free, as in vLLM.
    pub guide: Option<Guide>,
    /// Added to the logits of these tokens before sampling (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Keep special tokens in the text (tool-call markers that are special tokens).
    pub keep_special_tokens: bool,
}

impl Default for SequenceParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
            starts_in_reasoning: false,
            max_reasoning_tokens: None,
            split_reasoning: true,
            guide: None,
            logit_bias: Vec::new(),
            keep_special_tokens: false,
        }
    }
}

/// One step's outcome for a sequence.
#[derive(Debug, Clone)]
pub struct Step {
    /// The token to feed next (already recorded), or `None` when the sequence ended without
    /// one (end-of-sequence token).
    pub token: Option<TokenId>,
    /// Text that became final with this token.
    pub delta: Delta,
    /// Set when the sequence is done.
    pub finished: Option<FinishReason>,
}

/// The generation state of one sequence.
pub struct Sequence<'t> {
    params: SequenceParams,
    tokenizer: &'t Tokenizer,
    sampler: Sampler,
    detok: IncrementalDetokenizer<'t>,
    stops: StopMatcher,
    /// `None` when the text is not split (see [`SequenceParams::split_reasoning`]).
    splitter: Option<ReasoningSplitter>,
    close_ids: Vec<TokenId>,
    /// Tokens to feed without sampling (the budget's closing tag), last first.
    pending: Vec<TokenId>,
    /// Every generated token (inserted ones included).
    pub output: Vec<TokenId>,
    /// Tokens inside the reasoning block, the closing tag included.
    pub reasoning_tokens: usize,
    /// What the budget counts: reasoning tokens the model chose.
    sampled_reasoning: usize,
    /// The constraint, once the answer has begun (taken from the params).
    guide: Option<Guide>,
    /// Why the sequence could not go on (reported by [`Self::finish`] as an error).
    failure: Option<String>,
    /// The logits of this step were already biased and masked ([`Self::constrain`]).
    constrained: bool,
    finished: Option<FinishReason>,
}

impl<'t> Sequence<'t> {
    /// A sequence that will generate after its prompt.
    pub fn new(tokenizer: &'t Tokenizer, mut params: SequenceParams) -> Result<Self, EngineError> {
        Ok(Self {
            sampler: Sampler::new(params.sampling.clone()),
            detok: IncrementalDetokenizer::new(tokenizer, !params.keep_special_tokens),
            guide: params.guide.take(),
            failure: None,
            constrained: false,
            stops: StopMatcher::new(params.stop.clone()),
            splitter: params
                .split_reasoning
                .then(|| ReasoningSplitter::new(params.starts_in_reasoning)),
            close_ids: tokenizer.encode(THINK_CLOSE, false)?,
            pending: Vec::new(),
            output: Vec::new(),
            reasoning_tokens: 0,
            sampled_reasoning: 0,
            finished: None,
            tokenizer,
            params,
        })
    }

    /// Why the sequence ended, once it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// The stop string that ended the sequence, if one did.
    pub fn matched_stop(&self) -> Option<&str> {
        self.stops.matched()
    }

    /// Picks the next token from `logits` (of the last fed position) and turns it into text.
    pub fn step(&mut self, logits: &mut [f32], prompt: &[TokenId]) -> Result<Step, EngineError> {
        if self.output.len() >= self.params.max_tokens {
            return Ok(self.done(FinishReason::Length, None, Delta::default()));
        }
        let in_reasoning = self
            .splitter
            .as_ref()
            .is_some_and(|s| s.in_reasoning() && !s.reasoning_closed());
        let budget_spent = in_reasoning
            && self
                .params
                .max_reasoning_tokens
                .is_some_and(|m| self.sampled_reasoning >= m);
        if budget_spent && self.pending.is_empty() {
            self.pending = self.close_ids.iter().rev().copied().collect();
        }
        // The constraint guides sampled answer tokens only (not the reasoning, not the
        // inserted closing tag).
        let guided = !in_reasoning && self.pending.is_empty() && self.guide.is_some();
        let (token, sampled) = match self.pending.pop() {
            Some(t) => (t, false),
            None => {
                if !std::mem::take(&mut self.constrained) {
                    self.bias_and_mask(logits, guided);
                }
                if self.failure.is_some() {
                    return Ok(self.done(FinishReason::Abort, None, Delta::default()));
                }
                (self.sampler.sample(logits, prompt, &self.output), true)
            }
        };
        let ends = !self.params.ignore_eos && self.tokenizer.eos_token_ids().contains(&token);
        if guided && !ends {
            if let Some(g) = &mut self.guide {
                if let Err(e) = g.consume(token) {
                    return Ok(self.fail(e));
                }
            }
        }
        if ends {
            return Ok(self.done(FinishReason::Stop, None, Delta::default()));
        }
        self.output.push(token);
        if in_reasoning {
            self.reasoning_tokens += 1;
            self.sampled_reasoning += usize::from(sampled);
        }
        let text = self.detok.push(token)?;
        let (text, stopped) = match self.stops.push(&text) {
            StopOutcome::Continue { emit } => (emit, false),
            StopOutcome::Stopped { emit, .. } => (emit, true),
        };
        let delta = self.split(&text);
        // A constrained answer that is complete ends here (nothing may follow it).
        let complete = guided && self.guide.as_ref().is_some_and(|g| g.is_finished());
        if stopped || complete {
            return Ok(self.done(FinishReason::Stop, Some(token), delta));
        }
        if self.output.len() >= self.params.max_tokens {
            return Ok(self.done(FinishReason::Length, Some(token), delta));
        }
        Ok(Step {
            token: Some(token),
            delta,
            finished: None,
        })
    }

    /// Ends the sequence (for `reason`, when it has not ended by itself) and returns what the
    /// detokenizer, stop matcher and splitter still hold.
    pub fn finish(&mut self, reason: FinishReason) -> Result<Delta, EngineError> {
        if let Some(f) = &self.failure {
            return Err(EngineError::Request(f.clone()));
        }
        let reason = *self.finished.get_or_insert(reason);
        let mut out = Delta::default();
        if reason != FinishReason::Stop || self.stops.matched().is_none() {
            let tail = self.detok.finish()?;
            let text = match self.stops.push(&tail) {
                StopOutcome::Continue { emit } => emit + &self.stops.finish(),
                StopOutcome::Stopped { emit, .. } => {
                    self.finished = Some(FinishReason::Stop);
                    emit
                }
            };
            out.append(self.split(&text));
        }
        if let Some(s) = &mut self.splitter {
            out.append(s.finish());
        }
        Ok(out)
    }

    /// Whether a constraint may apply to the next sampled token.
    pub fn is_guided(&self) -> bool {
        self.guide.is_some() && self.finished.is_none()
    }

    /// Applies `logit_bias` and the constraint's mask to this step's `logits` ahead of
    /// [`Self::step`] (which then does not apply them again), so that the engine can mask
    /// many sequences at once. Does nothing when the next token will not be sampled under the
    /// constraint (inside the reasoning, or while the budget's closing tag is inserted).
    pub fn constrain(&mut self, logits: &mut [f32]) {
        let in_reasoning = self
            .splitter
            .as_ref()
            .is_some_and(|s| s.in_reasoning() && !s.reasoning_closed());
        let budget_spent = in_reasoning
            && self
                .params
                .max_reasoning_tokens
                .is_some_and(|m| self.sampled_reasoning >= m);
        if in_reasoning || budget_spent || !self.pending.is_empty() || self.finished.is_some() {
            return;
        }
        self.bias_and_mask(logits, true);
        self.constrained = true;
    }

    /// `logit_bias`, then (when `guided`) the constraint's mask; a failed mask is recorded in
    /// `failure`.
    fn bias_and_mask(&mut self, logits: &mut [f32], guided: bool) {
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if guided {
            if let Some(g) = &mut self.guide {
                if let Err(e) = g.mask(logits) {
                    tracing::error!(error = %e, "constrained decoding failed; ending the sequence");
                    self.failure = Some(format!("constrained decoding failed: {e}"));
                }
            }
        }
    }

    /// Ends the sequence because its constraint failed; [`Self::finish`] reports why.
    fn fail(&mut self, e: seek_structured::StructuredError) -> Step {
        tracing::error!(error = %e, "constrained decoding failed; ending the sequence");
        self.failure = Some(format!("constrained decoding failed: {e}"));
        self.done(FinishReason::Abort, None, Delta::default())
    }

    fn done(&mut self, reason: FinishReason, token: Option<TokenId>, delta: Delta) -> Step {
        self.finished = Some(reason);
        Step {
            token,
            delta,
            finished: Some(reason),
        }
    }

    fn split(&mut self, text: &str) -> Delta {
        match &mut self.splitter {
            Some(s) => s.push(text),
            None => Delta {
                reasoning: String::new(),
                content: text.to_string(),
            },
        }
    }

    /// Whether any reasoning was seen (or the prompt opened the block).
    pub fn has_reasoning(&self) -> bool {
        self.params.starts_in_reasoning || self.splitter.as_ref().is_some_and(|s| s.in_reasoning())
    }
}
