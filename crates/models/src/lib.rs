//! Model architectures and weight loading for Seek.
//!
//! Design decision: a model is a pure function of its weights. The KV cache is created by
//! the model ([`CausalLm::new_cache`]) but owned by the caller and passed into every
//! [`CausalLm::forward`], which returns logits for *every* position, so the same code serves
//! prefill, decode, batched serving and training. One file per architecture (`llama.rs`,
//! `qwen2.rs`); weights come from GGUF or safetensors through [`weights::Weights`].
#![deny(missing_docs)]

use candle_core::{Device, Tensor};

pub mod autograd;
pub mod deepseek_v3;
mod error;
mod kv_cache;
pub mod llama;
mod load;
pub mod paged;
pub mod qwen2;
pub mod weights;

pub use error::{ModelError, Result};

/// Refuses a forward a model cannot run: a cache made for another model, or no tokens.
pub(crate) fn check_forward(cache: &KvCache, layers: usize, t: usize) -> Result<()> {
    if cache.n_layers() != layers {
        return Err(ModelError::Input(format!(
            "the KV cache has {} layers but the model has {layers}; make it with CausalLm::new_cache",
            cache.n_layers()
        )));
    }
    if t == 0 {
        return Err(ModelError::Input("forward needs at least one token".into()));
    }
    Ok(())
}

/// [`CausalLm::decode_batch`] one sequence at a time.
pub(crate) fn decode_each<M: CausalLm + ?Sized>(
    model: &M,
    tokens: &[u32],
    caches: &mut [&mut KvCache],
) -> Result<Tensor> {
    if tokens.len() != caches.len() {
        return Err(ModelError::Input(format!(
            "{} tokens for {} caches; give one token per sequence",
            tokens.len(),
            caches.len()
        )));
    }
    let rows = tokens
        .iter()
        .zip(caches.iter_mut())
        .map(|(&t, c)| {
            let input = Tensor::new(&[t], model.device())?.unsqueeze(0)?;
            model.forward_last(&input, c)
        })
        .collect::<Result<Vec<_>>>()?;
    // N x (1, V) -> (N, V)
    Ok(Tensor::cat(&rows, 0)?)
}
pub use kv_cache::KvCache;
pub use llama::{permute_rows as llama_permute_rows, LoraAdapter};
pub use load::{
    available_memory, inspect, load, load_trainable, LoadOptions, LoadedModel, LoraBase,
    MemoryPlan, ModelFormat, ModelInfo,
};

/// A decoder-only language model.
pub trait CausalLm: Send + Sync {
    /// Runs `input_ids: (B, T)` after the `cache.seq_len()` positions already cached, appends
    /// their keys and values to `cache`, and returns logits `(B, T, V)` in f32.
    fn forward(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor>;
    /// Like [`CausalLm::forward`] but returns only the last position's logits `(B, V)`: what
    /// generation needs, without projecting every prompt position onto the vocabulary.
    fn forward_last(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor>;
    /// One decode step for independent sequences: `tokens[i]` follows what `caches[i]` holds
    /// (each a cache of one sequence, any length). Returns the logits `(N, V)`. What a
    /// serving engine batches: the sequences share every weight read. The default runs them
    /// one after another.
    fn decode_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        decode_each(self, tokens, caches)
    }
    /// The shape of one cached position when the model can keep its KV in shared blocks
    /// ([`paged::KvBlocks`]); `None` when it cannot (then it uses [`KvCache`]).
    fn paged_layout(&self) -> Option<paged::PagedLayout> {
        None
    }
    /// Feeds each span's tokens after its cached positions, keys and values in `blocks`, and
    /// returns the logits `(spans, V)` of each span's last token: prefill chunks and decode
    /// steps of many sequences in one forward.
    fn forward_paged(
        &self,
        _spans: &[paged::Span<'_>],
        _blocks: &mut paged::KvBlocks,
    ) -> Result<Tensor> {
        Err(ModelError::Input(
            "this model keeps its KV cache per sequence (no paged layout)".into(),
        ))
    }
    /// An empty cache shaped for this model.
    fn new_cache(&self) -> KvCache;
    /// V.
    fn vocab_size(&self) -> usize;
    /// The context length the model was trained for.
    fn max_context(&self) -> usize;
    /// Where the weights live.
    fn device(&self) -> &Device;
}

#[cfg(test)]
mod config_forms_tests;
