//! Differentiable building blocks: the forms of RMSNorm, softmax and RoPE that candle's
//! autograd follows (its fused ops drop gradients), a fused cross-entropy and a quantized
//! linear layer with written backwards.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::weights::QuantMatrix;
use crate::{ModelError, Result};

/// The additive mask of a position that must not be attended to. Finite, so that a row with
/// every key masked (a padded position) gives a uniform softmax instead of NaN.
pub(crate) const MASKED: f32 = -1e30;

/// SplitMix64: the adapters' initialisation and dropout masks, reproducible from a seed.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension, as transformers' `LlamaRMSNorm`
/// computes it in f32: one op with a written backward (the composed form holds six
/// activations per norm for autograd; this one holds its input).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps })?)
}

struct RmsNorm {
    eps: f64,
}

impl RmsNorm {
    /// `1 / sqrt(mean(x²) + eps)` of one row.
    fn inv_rms(&self, row: &[f32]) -> f32 {
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        (1.0 / (ss / row.len() as f64 + self.eps).sqrt()) as f32
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "seek-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let d = w.len();
        if d == 0 || x.len() % d != 0 {
            candle_core::bail!("rms_norm: rows of {} do not fit a weight of {d}", x.len());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_exact_mut(d)
            .zip(x.par_chunks_exact(d))
            .for_each(|(o, row)| {
                let r = self.inv_rms(row);
                for ((o, &v), &w) in o.iter_mut().zip(row).zip(w) {
                    *o = v * r * w;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let ws: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let gs: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        let mut dx = vec![0f32; xs.len()];
        // dx = r (g∘w) - x r³ mean(g∘w∘x);  dw = Σ_rows g∘x r
        let dw_rows: Vec<Vec<f64>> = dx
            .par_chunks_exact_mut(d)
            .zip(xs.par_chunks_exact(d).zip(gs.par_chunks_exact(d)))
            .fold(
                || vec![0f64; d],
                |mut dw, (dx, (x, g))| {
                    let r = self.inv_rms(x);
                    let dot: f64 = x
                        .iter()
                        .zip(g)
                        .zip(&ws)
                        .map(|((&x, &g), &w)| (g * w * x) as f64)
                        .sum();
                    let c = (dot / d as f64) as f32 * r * r * r;
                    for i in 0..d {
                        dx[i] = r * g[i] * ws[i] - x[i] * c;
                        dw[i] += (g[i] * x[i] * r) as f64;
                    }
                    dw
                },
            )
            .collect();
        let mut dw = vec![0f64; d];
        for part in dw_rows {
            for (a, b) in dw.iter_mut().zip(part) {
                *a += b;
            }
        }
        let dw: Vec<f32> = dw.into_iter().map(|v| v as f32).collect();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

/// Softmax over the last dimension, one op with a written backward
/// (`dx = y ∘ (g - Σ g∘y)`): the composed form holds five `(…, T, T)` tensors per attention.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "seek-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let d = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d * 64)
            .zip(x.par_chunks(d * 64))
            .for_each(|(o, x)| {
                for (o, row) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (o, &v) in o.iter_mut().zip(row) {
                        *o = (v - m).exp();
                        sum += *o;
                    }
                    let inv = 1.0 / sum;
                    o.iter_mut().for_each(|o| *o *= inv);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let d = y.dims().last().copied().unwrap_or(1).max(1);
        let ys: Vec<f32> = y.flatten_all()?.to_vec1()?;
        let gs: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        let mut dx = vec![0f32; ys.len()];
        dx.par_chunks_mut(d * 64)
            .zip(ys.par_chunks(d * 64).zip(gs.par_chunks(d * 64)))
            .for_each(|(dx, (y, g))| {
                for ((dx, y), g) in dx
                    .chunks_exact_mut(d)
                    .zip(y.chunks_exact(d))
                    .zip(g.chunks_exact(d))
                {
                    let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                    for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                        *dx = y * (g - dot);
                    }
                }
            });
        Ok(Some(Tensor::from_vec(dx, y.shape(), y.device())?))
    }
}

/// SwiGLU's gate, `silu(gate) · up`, one op with a written backward: candle's `silu` and
/// product would hold and revisit four `(M, F)` tensors and take seven element-wise passes
/// for silu's gradient alone.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?)
}

struct SwiGlu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "seek-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if g.len() != u.len() {
            candle_core::bail!("swiglu: gate has {} values, up {}", g.len(), u.len());
        }
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(4096)
            .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
            .for_each(|(o, (g, u))| {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g * sigmoid(g) * u;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g: Vec<f32> = gate.flatten_all()?.to_vec1()?;
        let u: Vec<f32> = up.flatten_all()?.to_vec1()?;
        let d: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        dg.par_chunks_mut(4096)
            .zip(du.par_chunks_mut(4096))
            .zip(
                g.par_chunks(4096)
                    .zip(u.par_chunks(4096))
                    .zip(d.par_chunks(4096)),
            )
            .for_each(|((dg, du), ((g, u), d))| {
                for i in 0..g.len() {
                    let s = sigmoid(g[i]);
                    // d silu(g) / dg = s (1 + g (1 - s))
                    dg[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                    du[i] = d[i] * g[i] * s;
                }
            });
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(du, up.shape(), up.device())?),
        ))
    }
}

/// `x: (M, in)` times a frozen dense `w: (out, in)`: `x wᵀ`, whose backward computes only
/// `dx = dy w`. candle's matmul backward always computes the weight's gradient too, a third
/// of a layer's work (and its memory) wasted on a frozen LoRA base.
pub(crate) fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(FrozenLinear { w: w.clone() })?)
}

struct FrozenLinear {
    w: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "seek-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (m, k) = l.shape().dims2()?;
        // The activations are copied once (M·K values) for candle's GEMM; the product is M·K·N.
        let xt = Tensor::from_slice(x, (m, k), &candle_core::Device::Cpu)?;
        let y = xt.matmul(&self.w.t()?)?;
        let n = y.dim(1)?;
        Ok((
            CpuStorage::F32(y.flatten_all()?.to_vec1()?),
            Shape::from((m, n)),
        ))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.matmul(&self.w)?))
    }
}

/// Rotates halves (`rotate_half`, Hugging Face layout): `x: (B, H, T, D)`, `cos, sin:
/// (B, 1, T, D/2)`.
pub(crate) fn rope_halves(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let (x1, x2) = (
        x.narrow(D::Minus1, 0, d / 2)?,
        x.narrow(D::Minus1, d / 2, d / 2)?,
    );
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[a, b], D::Minus1)?)
}

/// Rotates interleaved pairs `(x[2i], x[2i+1])` (ggml's layout for GGUF `llama` and
/// DeepSeek's rope dimensions).
pub(crate) fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d = dims[dims.len() - 1];
    // (..., D) -> (..., D/2, 2)
    let mut pairs = dims.clone();
    *pairs.last_mut().expect("x has a last dimension") = d / 2;
    pairs.push(2);
    let xp = x.reshape(pairs)?;
    let x0 = xp.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let x1 = xp.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    let a = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
    let b = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
    // 2 x (..., D/2) -> (..., D/2, 2) -> (..., D)
    Ok(Tensor::stack(&[a, b], D::Minus1)?.reshape(dims)?)
}

/// Inverted dropout: zeroes each value with probability `p` and scales the rest by `1/(1-p)`.
pub(crate) fn dropout(x: &Tensor, p: f64, rng: &mut SplitMix64) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.next_f64() < p { 0.0 } else { keep as f32 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
    Ok((x * mask)?)
}

/// Summed cross-entropy of `logits: (N, V)` against `targets` (N ids): one pass per row for
/// the loss (log-sum-exp) and one for the gradient `softmax - onehot`, never holding a
/// second `(N, V)` tensor in the graph.
pub fn cross_entropy_sum(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    Ok(cross_entropy_rows(logits, targets)?.sum_all()?)
}

/// The cross-entropy of each row of `logits: (N, V)` against its target, `(N,)`.
pub fn cross_entropy_rows(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n {
        return Err(ModelError::Input(format!(
            "{} targets for {n} rows of logits",
            targets.len()
        )));
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        return Err(ModelError::Input(format!(
            "target {t} is outside the vocabulary (0..{v})"
        )));
    }
    Ok(logits.contiguous()?.apply_op1(CrossEntropy {
        targets: Arc::new(targets.to_vec()),
    })?)
}

struct CrossEntropy {
    targets: Arc<Vec<u32>>,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(all) = s else {
        candle_core::bail!("the training path computes in f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// `log Σ exp(row)` with the maximum subtracted.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = row.iter().map(|&x| ((x - m) as f64).exp()).sum();
    (m, m + s.ln() as f32)
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "seek-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (n, v) = l.shape().dims2()?;
        let out: Vec<f32> = x
            .par_chunks_exact(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| log_sum_exp(row).1 - row[t as usize])
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, v) = arg.dims2()?;
        let x = arg.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let g = grad.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * v];
        out.par_chunks_exact_mut(v)
            .zip(x.par_chunks_exact(v))
            .zip(self.targets.par_iter().zip(g.par_iter()))
            .for_each(|((o, row), (&t, &g))| {
                let lse = log_sum_exp(row).1;
                for (o, &x) in o.iter_mut().zip(row) {
                    *o = (x - lse).exp() * g;
                }
                o[t as usize] -= g;
            });
        Ok(Some(Tensor::from_vec(out, (n, v), arg.device())?))
    }
}

/// `x: (M, in)` times a quantized GGUF matrix `W: (out, in)`, `x Wᵀ`, computed by Seek's
/// kernels; the backward gives `dx = dy W` (the frozen base gets no gradient).
pub(crate) fn quant_linear(x: &Tensor, q: &QuantMatrix) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(QuantLinear { q: q.clone() })?)
}

struct QuantLinear {
    q: QuantMatrix,
}

/// Rows of `W` dequantized at once in the backward: bounds its extra memory.
const BWD_ROWS: usize = 256;

impl CustomOp1 for QuantLinear {
    fn name(&self) -> &'static str {
        "seek-quant-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (m, k) = l.shape().dims2()?;
        let (rows, cols) = self.q.dims();
        if k != cols {
            candle_core::bail!("quantized linear: input has {k} columns, the matrix {cols}");
        }
        let mut out = vec![0f32; m * rows];
        self.q
            .forward_slice(x, m, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((CpuStorage::F32(out), Shape::from((m, rows))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (rows, cols) = self.q.dims();
        let (m, _) = arg.dims2()?;
        let mut dx = Tensor::zeros((m, cols), candle_core::DType::F32, arg.device())?;
        let mut r0 = 0;
        while r0 < rows {
            let rc = BWD_ROWS.min(rows - r0);
            let w = self
                .q
                .dequantize_rows(r0, rc)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let w = Tensor::from_vec(w, (rc, cols), arg.device())?;
            // (M, rc) @ (rc, in) -> (M, in)
            dx = (dx + grad.narrow(1, r0, rc)?.contiguous()?.matmul(&w)?)?;
            r0 += rc;
        }
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{Matmul, Weights};
    use std::sync::Arc;

    /// The quantized layer's backward is exact: `dx = dy W` with `W` dequantized, equal to the
    /// dense layer's gradient on the same weights.
    #[test]
    fn quantized_linear_backward_is_the_dense_gradient() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/golden/gguf/tiny-llama.q8_0.gguf");
        let file = Arc::new(seek_gguf::GgufFile::open(&path).unwrap());
        let w = Weights::Gguf {
            file,
            device: candle_core::Device::Cpu,
            kernels: Some(Arc::new(seek_kernels::ThreadPool::new(2).unwrap())),
        };
        let Matmul::Quantized(q) = w
            .matmul("model.layers.0.mlp.down_proj.weight", 64, 96)
            .unwrap()
        else {
            panic!("Q8_0 is computed by Seek's kernels");
        };
        let dense = q.dequantize().unwrap();
        let x = candle_core::Var::from_tensor(
            &Tensor::randn(0f32, 1.0, (5, 96), &candle_core::Device::Cpu).unwrap(),
        )
        .unwrap();
        let dy = Tensor::randn(0f32, 1.0, (5, 64), &candle_core::Device::Cpu).unwrap();
        let gq = (quant_linear(x.as_tensor(), &q).unwrap() * &dy)
            .unwrap()
            .sum_all()
            .unwrap();
        let gd = (x.as_tensor().matmul(&dense.t().unwrap()).unwrap() * &dy)
            .unwrap()
            .sum_all()
            .unwrap();
        let a = gq.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let b = gd.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_keepdim(1)
            .unwrap()
            .max(0)
            .unwrap();
        let diff = diff.squeeze(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "max diff {diff}");
    }
}
