//! Per-sequence key/value cache, owned by the caller and passed into every forward.

use candle_core::Tensor;

use crate::Result;

/// The keys and values of every layer for one batch of sequences.
///
/// Shapes: each layer holds `k, v: (B, Hkv, T, D)` where `T` is [`KvCache::seq_len`].
/// The model never stores a cache: the engine owns one per sequence (or batch) and can
/// truncate it, which is what prefix reuse and a reasoning budget need.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    seq_len: usize,
}

impl KvCache {
    /// An empty cache for a model with `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            seq_len: 0,
        }
    }

    /// Number of positions already cached.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Appends this step's keys and values to layer `layer` and returns the full keys and values.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let slot = &mut self.layers[layer];
        let (k, v) = match slot.take() {
            None => (k.contiguous()?, v.contiguous()?),
            Some((pk, pv)) => (Tensor::cat(&[&pk, k], 2)?, Tensor::cat(&[&pv, v], 2)?),
        };
        *slot = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Marks `n` new positions as cached; called once per forward after every layer appended.
    pub(crate) fn advance(&mut self, n: usize) {
        self.seq_len += n;
    }

    /// Drops every position from `len` on, so that generation can resume from there.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.seq_len {
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, 0, len)?.contiguous()?;
            *v = v.narrow(2, 0, len)?.contiguous()?;
        }
        if len == 0 {
            self.layers.iter_mut().for_each(|l| *l = None);
        }
        self.seq_len = len;
        Ok(())
    }

    /// Bytes held by the cached keys and values.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// Keys of layer 0, for tests: `(B, Hkv, T, D)`.
    pub fn layer_keys(&self, layer: usize) -> Option<&Tensor> {
        self.layers.get(layer)?.as_ref().map(|(k, _)| k)
    }
}
