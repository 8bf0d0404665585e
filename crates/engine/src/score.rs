//! Scoring text with a model: the perplexity a guardrail compares against a threshold (text
//! that no language model finds likely — long encoded blobs, adversarial suffixes of the
//! GCG kind — scores far above natural prose).

use seek_models::CausalLm;
use seek_tokenizer::Tokenizer;

use crate::generate::all_logits;
use crate::EngineError;

/// The perplexity of `text` under `model`: `exp` of the mean negative log-likelihood of each
/// token given the ones before it (the first token is only context). At most `max_tokens`
/// tokens are scored (the start of the text); `None` when fewer than two tokens remain.
pub fn perplexity(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    text: &str,
    max_tokens: usize,
) -> Result<Option<f64>, EngineError> {
    let mut ids = tokenizer.encode(text, false)?;
    ids.truncate(max_tokens);
    perplexity_of_ids(model, &ids)
}

/// [`perplexity`] of token ids (cut to the model's context window).
pub fn perplexity_of_ids(model: &dyn CausalLm, ids: &[u32]) -> Result<Option<f64>, EngineError> {
    let ids = &ids[..ids.len().min(model.max_context())];
    if ids.len() < 2 {
        return Ok(None);
    }
    // (T, V)
    let logits = all_logits(model, ids)?.to_vec2::<f32>()?;
    let mut nll = 0f64;
    for (row, &next) in logits.iter().zip(&ids[1..]) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max as f64
            + row
                .iter()
                .map(|&x| ((x - max) as f64).exp())
                .sum::<f64>()
                .ln();
        nll += lse - row[next as usize] as f64;
    }
    Ok(Some((nll / (ids.len() - 1) as f64).exp()))
}
