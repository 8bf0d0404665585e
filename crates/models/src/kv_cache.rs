//! Per-sequence key/value cache, owned by the caller and passed into every forward.

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Positions reserved when a layer's buffer is first made; it then doubles as needed.
const MIN_CAPACITY: usize = 256;

/// A zeroed buffer whose pages the OS maps only when written: the capacity past the live
/// positions costs address space, not memory. (`Tensor::zeros` fills f16 and bf16 buffers
/// element by element, which makes every page resident: a cache that had just doubled held
/// twice its live bytes.)
fn lazy_zeros(
    shape: (usize, usize, usize, usize),
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    use half::vec::HalfBitsVecExt;
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    if !device.is_cpu() {
        return Ok(Tensor::zeros(shape, dtype, device)?);
    }
    // `vec![0; n]` of a primitive is `calloc`: fresh pages from the OS, untouched.
    Ok(match dtype {
        DType::F32 => Tensor::from_vec(vec![0f32; n], shape, device)?,
        DType::F16 => {
            Tensor::from_vec(vec![0u16; n].reinterpret_into::<half::f16>(), shape, device)?
        }
        DType::BF16 => Tensor::from_vec(
            vec![0u16; n].reinterpret_into::<half::bf16>(),
            shape,
            device,
        )?,
        _ => Tensor::zeros(shape, dtype, device)?,
    })
}

/// The keys and values of every layer for one batch of sequences.
///
/// Shapes: each layer holds buffers `k, v: (B, Hkv, capacity, D)` (MLA: a latent
/// `(B, 1, capacity, kv_lora_rank)` and a rope key `(B, 1, capacity, qk_rope_head_dim)`) of which the first
/// [`KvCache::seq_len`] positions are live. A step writes its keys and values in place
/// (the capacity is what [`KvCache::reserve`] asked for, and doubles when full), so decode
/// copies one position per layer, not the whole cache. The model never stores a cache: the engine owns one per sequence (or batch)
/// and can truncate it, which is what prefix reuse and a reasoning budget need.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    seq_len: usize,
    /// The type values are stored in; `None` keeps the type the model computes in.
    dtype: Option<DType>,
    /// Positions the caller expects to cache ([`KvCache::reserve`]): buffers are made this
    /// size when first needed, instead of doubling towards it.
    reserved: usize,
}

impl Clone for KvCache {
    /// A deep copy: writes to the clone never show in the original.
    fn clone(&self) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|(k, v)| {
                    (
                        k.copy().expect("copy of a CPU tensor"),
                        v.copy().expect("copy of a CPU tensor"),
                    )
                })
            })
            .collect();
        Self {
            layers,
            seq_len: self.seq_len,
            dtype: self.dtype,
            reserved: self.reserved,
        }
    }
}

impl KvCache {
    /// An empty cache for a model with `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            seq_len: 0,
            dtype: None,
            reserved: 0,
        }
    }

    /// Tells the cache how many positions it will hold (prompt plus the most tokens a
    /// generation may add), as llama.cpp sizes its cache to `n_ctx`: each layer's buffers are
    /// then made that size once, never copied to grow and never larger than needed. Without
    /// it (or past it) a buffer doubles when full, which may leave up to half of it unused.
    pub fn reserve(&mut self, positions: usize) {
        self.reserved = self.reserved.max(positions);
    }

    /// An empty cache that stores its values as `dtype` (f16 halves the bytes a long-context
    /// decode step reads, as llama.cpp's default cache does); views come back in that type.
    pub fn with_dtype(n_layers: usize, dtype: DType) -> Self {
        Self {
            dtype: Some(dtype),
            ..Self::new(n_layers)
        }
    }

    /// The type values are stored in, when it is not the model's.
    pub fn dtype(&self) -> Option<DType> {
        self.dtype
    }

    /// Number of positions already cached.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Sequences the cache holds (its batch size), once a forward has written to it.
    pub fn batch_size(&self) -> Option<usize> {
        self.layers
            .iter()
            .flatten()
            .next()
            .and_then(|(k, _)| k.dim(0).ok())
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Writes this step's keys and values `(B, Hkv, T, D)` after the cached positions of layer
    /// `layer` and returns views of all of them, `(B, Hkv, S, D)`.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = match self.dtype {
            Some(dt) => (k.to_dtype(dt)?, v.to_dtype(dt)?),
            None => (k.clone(), v.clone()),
        };
        let (k, v) = (&k, &v);
        let t = k.dim(2)?;
        let start = self.seq_len;
        let need = start + t;
        let slot = &mut self.layers[layer];
        let capacity = slot.as_ref().map_or(0, |(kb, _)| kb.dim(2).unwrap_or(0));
        if need > capacity {
            let new_cap = if need <= self.reserved {
                self.reserved
            } else {
                need.max(capacity * 2).max(MIN_CAPACITY)
            };
            // Keys and values may differ in width (MLA caches a latent and a rope key).
            let grow = |old: Option<&Tensor>, like: &Tensor| -> Result<Tensor> {
                let (b, heads, _, width) = like.dims4()?;
                let buf = lazy_zeros((b, heads, new_cap, width), like.dtype(), like.device())?;
                if let Some(old) = old {
                    if start > 0 {
                        buf.slice_set(&old.narrow(2, 0, start)?.contiguous()?, 2, 0)?;
                    }
                }
                Ok(buf)
            };
            let (ok, ov) = match slot.as_ref() {
                Some((kb, vb)) => (Some(kb), Some(vb)),
                None => (None, None),
            };
            *slot = Some((grow(ok, k)?, grow(ov, v)?));
        }
        let (kb, vb) = slot.as_ref().expect("buffer exists");
        kb.slice_set(&k.contiguous()?, 2, start)?;
        vb.slice_set(&v.contiguous()?, 2, start)?;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }

    /// Marks `n` new positions as cached; called once per forward after every layer appended.
    pub(crate) fn advance(&mut self, n: usize) {
        self.seq_len += n;
    }

    /// Drops every position from `len` on, so that generation can resume from there.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        // Positions past `len` are simply overwritten by the next step.
        self.seq_len = self.seq_len.min(len);
        Ok(())
    }

    /// Positions the buffers hold before they must grow (0 before the first forward).
    pub fn capacity(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .next()
            .map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    /// Bytes held by the cached keys and values (live positions).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| {
                let per = |t: &Tensor| {
                    let (b, h, _, d) = t.dims4().unwrap_or((0, 0, 0, 0));
                    b * h * self.seq_len * d * t.dtype().size_in_bytes()
                };
                per(k) + per(v)
            })
            .sum()
    }

    /// Keys of a layer, for tests: `(B, Hkv, T, D)`.
    pub fn layer_keys(&self, layer: usize) -> Option<Tensor> {
        let (k, _) = self.layers.get(layer)?.as_ref()?;
        k.narrow(2, 0, self.seq_len).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(cache: &mut KvCache, first: f32, t: usize) -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..2 * t * 4).map(|i| first + i as f32).collect();
        let k = Tensor::from_vec(vals.clone(), (1, 2, t, 4), &dev).unwrap();
        let v = (k.clone() * 2.0).unwrap();
        let out = cache.append(0, &k, &v).unwrap();
        cache.advance(t);
        out
    }

    /// A reserved cache is made that size once; past it, it doubles and keeps every value.
    #[test]
    fn reserve_sizes_the_buffers_and_growth_keeps_the_values() {
        let mut cache = KvCache::with_dtype(1, DType::F16);
        cache.reserve(300);
        step(&mut cache, 0.0, 5);
        assert_eq!(
            cache.capacity(),
            300,
            "made at the reserved size, not 256 or 512"
        );
        for i in 0..295 {
            step(&mut cache, i as f32, 1);
        }
        assert_eq!(cache.capacity(), 300, "no growth inside the reservation");
        let before = cache.layer_keys(0).unwrap().to_dtype(DType::F32).unwrap();
        let (k, v) = step(&mut cache, 7.0, 1);
        assert_eq!(cache.capacity(), 600, "past the reservation it doubles");
        let after = k.narrow(2, 0, 300).unwrap().to_dtype(DType::F32).unwrap();
        let diff = (before - after).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        // The new position went in after the old ones, values twice the keys.
        let last = v.narrow(2, 300, 1).unwrap().to_dtype(DType::F32).unwrap();
        let want = (k.narrow(2, 300, 1).unwrap().to_dtype(DType::F32).unwrap() * 2.0).unwrap();
        let diff = (last - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    /// The lazily zeroed buffers hold zeros of every cache type.
    #[test]
    fn lazy_zeros_are_zeros() {
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let t = lazy_zeros((1, 2, 3, 4), dt, &Device::Cpu).unwrap();
            assert_eq!(t.dtype(), dt);
            let sum = t
                .to_dtype(DType::F32)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap();
            assert_eq!(sum.to_scalar::<f32>().unwrap(), 0.0);
        }
    }
}
