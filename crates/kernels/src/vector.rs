//! f32 vector operations for the parts of a decode step that are not weight products:
//! attention over the KV cache, RMSNorm, SwiGLU, residual adds.
//!
//! Like the quantized kernels, each has one canonical arithmetic order, so every SIMD level
//! returns the same bits: [`dot`] keeps 8 partial sums (element `i` into sum `i % 8`, each
//! updated with a fused multiply-add), reduces them pairwise `(s0+s4, s1+s5, s2+s6, s3+s7)`,
//! then `(t0+t2, t1+t3)`, then `u0+u1`, and adds the tail elements one by one. Rust compiled
//! for baseline x86-64 has no FMA or AVX, so without these entry points the compiler emits
//! 4-wide SSE code with separate multiplies and adds.

use crate::Simd;
use half::f16;

/// An element type of a KV cache: f32, or f16 as llama.cpp keeps its cache by default
/// (half the bytes, which is what long-context decode reads). Values are widened to f32
/// exactly before any arithmetic, so the order of operations is the same for both.
pub trait Element: Copy + Send + Sync + private::Sealed {
    /// The value as f32.
    fn to_f32(self) -> f32;
    /// Loads 8 consecutive values as f32 lanes.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `p..p + 8` is readable.
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Loads 16 consecutive values as f32 lanes.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and F16C; `p..p + 16` is readable.
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (16 readable bytes, F16C present).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract (32 readable bytes, AVX-512 F present).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }
}

/// `a · b` over the common length (see the module docs for the order of the sums).
pub fn dot<T: Element>(a: &[f32], b: &[T]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    if Simd::best() >= Simd::Avx2 {
        // SAFETY: AVX2, FMA and F16C are present (checked by `Simd::best`).
        return unsafe { x86::dot(a, b) };
    }
    dot_scalar(a, b)
}

/// `y += alpha * x` element by element (one fused multiply-add each).
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    #[cfg(target_arch = "x86_64")]
    if Simd::best() >= Simd::Avx2 {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { x86::axpy(alpha, &x[..n], &mut y[..n]) };
    }
    for (y, x) in y[..n].iter_mut().zip(&x[..n]) {
        *y = x.mul_add(alpha, *y);
    }
}

/// Where one attention head's keys or values lie: row `i` (of `d` elements) starts at
/// `data[offset + i * stride]`.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a, T> {
    /// The buffer that holds the rows.
    pub data: &'a [T],
    /// Start of row 0.
    pub offset: usize,
    /// Elements from one row to the next.
    pub stride: usize,
}

impl<T> Rows<'_, T> {
    fn row(&self, i: usize, d: usize) -> &[T] {
        &self.data[self.offset + i * self.stride..][..d]
    }
}

/// One attention head for one query: `out = softmax(q · kᵢ * scale) · v` over the `s` rows of
/// `k` and `v` (each of `q.len()` elements). `scores` is a reusable buffer. The order is fixed:
/// scores by [`dot`], softmax with the maximum subtracted and `exp` in f32, weights divided by
/// their sum, then `out[j] = fma(vᵢ[j], wᵢ, out[j])` for `i = 0..s` from `out = 0`.
pub fn attention<T: Element>(
    q: &[f32],
    k: Rows<'_, T>,
    v: Rows<'_, T>,
    s: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attention_segments(q, &[(k, v, s)], scale, scores, out)
}

/// [`attention`] over keys and values held in several runs of rows (the blocks of a paged KV
/// cache): `(keys, values, rows)` per segment, in position order. Same order of operations,
/// so the result equals [`attention`] over the same rows laid out contiguously, bit for bit.
pub fn attention_segments<T: Element>(
    q: &[f32],
    segments: &[(Rows<'_, T>, Rows<'_, T>, usize)],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attention_segments_at(Simd::best(), q, segments, scale, scores, out)
}

/// [`attention_segments`] with the kernels of `simd` (which the CPU must support).
fn attention_segments_at<T: Element>(
    simd: Simd,
    q: &[f32],
    segments: &[(Rows<'_, T>, Rows<'_, T>, usize)],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert!(simd.is_available(), "this CPU cannot run {simd:?} code");
    let d = q.len();
    assert_eq!(out.len(), d, "attention: out must have the query's length");
    scores.clear();
    for (k, _, n) in segments {
        let from = scores.len();
        scores.resize(from + n, 0.0);
        let out = &mut scores[from..];
        #[cfg(target_arch = "x86_64")]
        if simd >= Simd::Avx2 && *n > 0 {
            // Rows must lie inside the buffer before the SIMD code reads them unchecked.
            let _ = (k.row(n - 1, d), k.row(0, d));
            // SAFETY: AVX2, FMA and F16C are present; the rows were bounds-checked just
            // above (evenly spaced, so the first and last bound them all).
            unsafe { x86::scores(q, *k, scale, out) };
            continue;
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot(q, k.row(i, d)) * scale;
        }
    }
    softmax_at(simd, scores);
    out.fill(0.0);
    let mut from = 0;
    for (_, v, n) in segments {
        let w = &scores[from..from + n];
        from += n;
        if *n == 0 {
            continue;
        }
        // Rows must lie inside the buffers before the SIMD code reads them unchecked.
        let _ = (v.row(n - 1, d), v.row(0, d));
        #[cfg(target_arch = "x86_64")]
        if simd >= Simd::Avx2 {
            // SAFETY: the features are present (`simd` is available); every row was
            // bounds-checked just above (rows are evenly spaced, so the first and last bound
            // them all).
            unsafe {
                if simd >= Simd::Avx512 {
                    x86::weighted_sum512(w, *v, out)
                } else {
                    x86::weighted_sum(w, *v, out)
                }
            };
            continue;
        }
        for (i, &wi) in w.iter().enumerate() {
            for (o, &x) in out.iter_mut().zip(v.row(i, d)) {
                *o = x.to_f32().mul_add(wi, *o);
            }
        }
    }
}

/// `y *= alpha` element by element.
pub fn scale(alpha: f32, y: &mut [f32]) {
    for v in y {
        *v *= alpha;
    }
}

/// RMSNorm of one row: `out = x / sqrt(mean(x²) + eps) * weight`, as transformers computes it
/// in f32 (`x * rsqrt(mean + eps)` then the weight).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == out.len(),
        "rms_norm: x, weight and out must have the same length"
    );
    let mean = dot(x, x) / x.len() as f32;
    let r = 1.0 / (mean + eps).sqrt();
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = x * r * w;
    }
}

/// SwiGLU's middle: `gate = silu(gate) * up = gate / (1 + e^-gate) * up`, in place, with
/// [`exp`]; the same bits at every SIMD level.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    silu_mul_at(Simd::best(), gate, up)
}

fn silu_mul_at(simd: Simd, gate: &mut [f32], up: &[f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "silu_mul: gate and up differ in length"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (`simd` is available); the lengths are equal.
    let done = if simd >= Simd::Avx2 {
        unsafe { x86::silu_mul(gate, up) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = simd;
        0
    };
    for (g, &u) in gate[done..].iter_mut().zip(&up[done..]) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// Below this, `e^x` is 0 (the smallest normal f32 is `e^-87.34`).
const EXP_LO: f32 = -87.336_55;
/// Above this, `e^x` is infinite.
const EXP_HI: f32 = 88.722_84;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two, so that `x - n ln 2` loses nothing for the `n` of an f32 exponent.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial for `e^r` on `|r| <= ln 2 / 2`: `1 + r + r² P(r)`.
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` as the attention softmax computes it, within 2 ulp of the exact value for normal
/// results: `x = n ln 2 + r` with `n` rounded to even, Cephes' polynomial for `e^r` in fused
/// multiply-adds, then `2^n` put into the exponent. The SIMD code does the same operations
/// in the same order on 8 lanes, so it returns the same bits (libm's `expf` would not: its
/// result is not specified to the bit, and calling it per element was a fifth of the time
/// of a long-context decode step). `x < -87.34` gives 0, `x > 88.72` infinity.
pub fn exp(x: f32) -> f32 {
    if x < EXP_LO {
        return 0.0;
    }
    if x > EXP_HI {
        return f32::INFINITY;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_P[0];
    for c in &EXP_P[1..] {
        p = p.mul_add(r, *c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    // n is in -126..=128 here; 2^128 is built as 2 * 2^127.
    let n = n as i32;
    let (n, extra) = if n > 127 { (127, 2.0) } else { (n, 1.0) };
    y * f32::from_bits(((n + 127) as u32) << 23) * extra
}

/// `xs = softmax(xs)` in place, in the order every level follows: the maximum, `e^(x - max)`
/// by [`exp`], their sum as [`dot`] sums (8 partial sums, element `i` into sum `i % 8`,
/// reduced pairwise, then the tail one by one), then each divided by the sum. For inputs
/// that are not NaN.
pub fn softmax(xs: &mut [f32]) {
    softmax_at(Simd::best(), xs)
}

fn softmax_at(simd: Simd, xs: &mut [f32]) {
    if xs.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd >= Simd::Avx2 {
        // SAFETY: AVX2 and FMA are present (`simd` is available).
        return unsafe { x86::softmax(xs) };
    }
    let _ = simd;
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = [0f32; 8];
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp(c[i] - max);
            s[i] += c[i];
        }
    }
    let t = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    let u = [t[0] + t[2], t[1] + t[3]];
    let mut denom = u[0] + u[1];
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        denom += *x;
    }
    for x in xs.iter_mut() {
        *x /= denom;
    }
}

/// `dot` without SIMD, in the canonical order.
fn dot_scalar<T: Element>(a: &[f32], b: &[T]) -> f32 {
    let mut s = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            s[i] = x[i].mul_add(y[i].to_f32(), s[i]);
        }
    }
    let t = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    let u = [t[0] + t[2], t[1] + t[3]];
    let mut r = u[0] + u[1];
    for (x, y) in ar.iter().zip(br) {
        r = x.mul_add(y.to_f32(), r);
    }
    r
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Element, Rows};
    use std::arch::x86_64::*;

    /// Rows this far ahead of the one being read are prefetched: a decode step reads each
    /// layer's cached keys and values once, straight from memory, in position order.
    const AHEAD: usize = 16;

    /// Asks for the cache lines of the `d` elements at `p`, which may lie past the cache
    /// (a prefetch never faults; the pointer is formed with wrapping arithmetic).
    #[inline(always)]
    unsafe fn prefetch_row<T>(p: *const T, d: usize) {
        let bytes = d * core::mem::size_of::<T>();
        let p = p as *const i8;
        let mut o = 0;
        // SAFETY: a prefetch has no architectural effect.
        unsafe {
            while o < bytes {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(o));
                o += 64;
            }
            // The last line, when a row does not end on one of the steps above.
            if !bytes.is_multiple_of(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(bytes - 1));
            }
        }
    }

    /// `out += Σᵢ wᵢ vᵢ` (see [`super::attention`]), 64 outputs at a time in registers.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; rows `0..w.len()` of `v`, each `out.len()` long, are in bounds.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum<T: Element>(w: &[f32], v: Rows<'_, T>, out: &mut [f32]) {
        // SAFETY: the caller's contract (features present, rows in bounds).
        unsafe {
            let d = out.len();
            let base = v.data.as_ptr().add(v.offset);
            let mut j = 0;
            while j + 64 <= d {
                let mut acc = [_mm256_setzero_ps(); 8];
                for (l, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(out.as_ptr().add(j + 8 * l));
                }
                for (i, &wi) in w.iter().enumerate() {
                    prefetch_row(base.wrapping_add((i + AHEAD) * v.stride + j), 64);
                    let wv = _mm256_set1_ps(wi);
                    let row = base.add(i * v.stride + j);
                    for (l, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(T::load8(row.add(8 * l)), wv, *a);
                    }
                }
                for (l, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(j + 8 * l), *a);
                }
                j += 64;
            }
            while j + 8 <= d {
                let mut a = _mm256_loadu_ps(out.as_ptr().add(j));
                for (i, &wi) in w.iter().enumerate() {
                    let row = base.add(i * v.stride + j);
                    a = _mm256_fmadd_ps(T::load8(row), _mm256_set1_ps(wi), a);
                }
                _mm256_storeu_ps(out.as_mut_ptr().add(j), a);
                j += 8;
            }
            for (jj, o) in out.iter_mut().enumerate().skip(j) {
                let mut a = *o;
                for (i, &wi) in w.iter().enumerate() {
                    a = (*base.add(i * v.stride + jj)).to_f32().mul_add(wi, a);
                }
                *o = a;
            }
        }
    }

    /// `dot(q, row r) * scale` for the 8 rows at `rows[r]` (`q.len()` elements each) into
    /// `out[r]`, the same bits as [`dot`]: each row has its own 8 partial sums, then the eight
    /// reductions run side by side, by shuffles that add the same pairs in the same order
    /// (`s_j + s_{j+4}`, then `t_j + t_{j+2}`, then `u_0 + u_1`) as [`dot`] does for one row.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; each `rows[r]..rows[r] + q.len()` is readable; `out`
    /// has 8 writable values.
    #[inline(always)]
    unsafe fn scores8<U: Element>(q: &[f32], rows: [*const U; 8], scale: f32, out: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe {
            let d = q.len();
            let full = d / 8 * 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut j = 0;
            while j < full {
                let x = _mm256_loadu_ps(q.as_ptr().add(j));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(x, U::load8(rows[r].add(j)), *a);
                }
                j += 8;
            }
            // t: per row, (s0+s4, s1+s5, s2+s6, s3+s7); rows r and r + 1 in one register.
            let t = |a: __m256, b: __m256| {
                _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(a, b),
                    _mm256_permute2f128_ps::<0x31>(a, b),
                )
            };
            let (t01, t23) = (t(acc[0], acc[1]), t(acc[2], acc[3]));
            let (t45, t67) = (t(acc[4], acc[5]), t(acc[6], acc[7]));
            // u: (t0+t2, t1+t3) of rows (0, 2 | 1, 3) and (4, 6 | 5, 7).
            let u = |a: __m256, b: __m256| {
                _mm256_add_ps(
                    _mm256_shuffle_ps::<0x44>(a, b),
                    _mm256_shuffle_ps::<0xEE>(a, b),
                )
            };
            let (u0, u1) = (u(t01, t23), u(t45, t67));
            // u0 + u1 of rows (0, 2, 4, 6 | 1, 3, 5, 7).
            let r = _mm256_add_ps(
                _mm256_shuffle_ps::<0x88>(u0, u1),
                _mm256_shuffle_ps::<0xDD>(u0, u1),
            );
            if full == d {
                // No tail: rows back in order, scaled, stored at once (eight scalar stores
                // read back as one vector would stall on store forwarding).
                let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                let r = _mm256_permutevar8x32_ps(r, order);
                _mm256_storeu_ps(out, _mm256_mul_ps(r, _mm256_set1_ps(scale)));
                return;
            }
            let mut v = [0f32; 8];
            _mm256_storeu_ps(v.as_mut_ptr(), r);
            for (lane, row) in [0, 2, 4, 6, 1, 3, 5, 7].into_iter().enumerate() {
                let mut x = v[lane];
                for (jj, &qj) in q.iter().enumerate().skip(full) {
                    x = qj.mul_add((*rows[row].add(jj)).to_f32(), x);
                }
                *out.add(row) = x * scale;
            }
        }
    }

    /// `out[i] = dot(q, kᵢ) * scale` for the rows `kᵢ` of `k` (`q.len()` elements each), the
    /// same bits as [`dot`], eight rows at a time ([`scores8`]): one pass over the keys
    /// instead of a call and a horizontal sum per key.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; rows `0..out.len()` of `k` are in bounds.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores<T: Element>(q: &[f32], k: Rows<'_, T>, scale: f32, out: &mut [f32]) {
        // SAFETY: the caller's contract (features present, rows in bounds).
        unsafe {
            let d = q.len();
            let base = k.data.as_ptr().add(k.offset);
            let n = out.len();
            let mut i = 0;
            while i + 8 <= n {
                for r in i + AHEAD..i + AHEAD + 8 {
                    prefetch_row(base.wrapping_add(r * k.stride), d);
                }
                let rows = core::array::from_fn(|r| base.add((i + r) * k.stride));
                scores8(q, rows, scale, out.as_mut_ptr().add(i));
                i += 8;
            }
            for (r, o) in out.iter_mut().enumerate().skip(i) {
                let row = core::slice::from_raw_parts(base.add(r * k.stride), d);
                *o = dot(q, row) * scale;
            }
        }
    }

    /// [`super::exp`] on 8 lanes, the same operations in the same order.
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        use super::{EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO, LOG2E};
        // SAFETY: the caller has AVX2 and FMA.
        unsafe {
            let zero = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_LO));
            let inf = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(EXP_HI));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
            );
            let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
            let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
            let mut p = _mm256_set1_ps(EXP_P[0]);
            for c in &EXP_P[1..] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
            }
            let y = _mm256_add_ps(
                _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
                _mm256_set1_ps(1.0),
            );
            // n = 128 (x just below EXP_HI) is 2 * 2^127, as in the scalar code.
            let ni = _mm256_cvtps_epi32(n);
            let big = _mm256_cmpgt_epi32(ni, _mm256_set1_epi32(127));
            let ni = _mm256_min_epi32(ni, _mm256_set1_epi32(127));
            let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                ni,
                _mm256_set1_epi32(127),
            )));
            let extra = _mm256_blendv_ps(
                _mm256_set1_ps(1.0),
                _mm256_set1_ps(2.0),
                _mm256_castsi256_ps(big),
            );
            let v = _mm256_mul_ps(_mm256_mul_ps(y, pow), extra);
            let v = _mm256_andnot_ps(zero, v);
            _mm256_blendv_ps(v, _mm256_set1_ps(f32::INFINITY), inf)
        }
    }

    /// [`super::silu_mul`] on the whole 8-lane chunks of `gate`; returns how many elements
    /// it did (the caller does the rest).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `up` is as long as `gate`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) -> usize {
        // SAFETY: the features are present; every access is inside the slices.
        unsafe {
            let full = gate.len() / 8 * 8;
            let (g, u) = (gate.as_mut_ptr(), up.as_ptr());
            let one = _mm256_set1_ps(1.0);
            let sign = _mm256_set1_ps(-0.0);
            let mut i = 0;
            while i < full {
                let x = _mm256_loadu_ps(g.add(i));
                let e = exp8(_mm256_xor_ps(x, sign));
                let y = _mm256_mul_ps(
                    _mm256_div_ps(x, _mm256_add_ps(one, e)),
                    _mm256_loadu_ps(u.add(i)),
                );
                _mm256_storeu_ps(g.add(i), y);
                i += 8;
            }
            full
        }
    }

    /// [`super::softmax`] 8 lanes at a time, the same bits.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax(xs: &mut [f32]) {
        // SAFETY: the features are present; every access is inside `xs`.
        unsafe {
            let n = xs.len();
            let full = n / 8 * 8;
            let p = xs.as_mut_ptr();
            let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut i = 0;
            while i < full {
                mv = _mm256_max_ps(mv, _mm256_loadu_ps(p.add(i)));
                i += 8;
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
            let max = lanes
                .iter()
                .chain(&xs[full..])
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let m = _mm256_set1_ps(max);
            let mut s = _mm256_setzero_ps();
            let mut i = 0;
            while i < full {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
                _mm256_storeu_ps(p.add(i), e);
                s = _mm256_add_ps(s, e);
                i += 8;
            }
            let t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
            let mut denom = _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)));
            for x in &mut xs[full..] {
                *x = super::exp(*x - max);
                denom += *x;
            }
            let dv = _mm256_set1_ps(denom);
            let mut i = 0;
            while i < full {
                _mm256_storeu_ps(p.add(i), _mm256_div_ps(_mm256_loadu_ps(p.add(i)), dv));
                i += 8;
            }
            for x in &mut xs[full..] {
                *x /= denom;
            }
        }
    }

    /// [`weighted_sum`] 16 lanes at a time: each output element gets the same fused
    /// multiply-adds in the same order, so the same bits.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, AVX2, FMA and F16C; rows `0..w.len()` of `v`, each `out.len()`
    /// long, are in bounds.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn weighted_sum512<T: Element>(w: &[f32], v: Rows<'_, T>, out: &mut [f32]) {
        // SAFETY: the caller's contract (features present, rows in bounds).
        unsafe {
            let d = out.len();
            let base = v.data.as_ptr().add(v.offset);
            let mut j = 0;
            while j + 64 <= d {
                let mut acc = [_mm512_setzero_ps(); 4];
                for (l, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(out.as_ptr().add(j + 16 * l));
                }
                for (i, &wi) in w.iter().enumerate() {
                    prefetch_row(base.wrapping_add((i + AHEAD) * v.stride + j), 64);
                    let wv = _mm512_set1_ps(wi);
                    let row = base.add(i * v.stride + j);
                    for (l, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(T::load16(row.add(16 * l)), wv, *a);
                    }
                }
                for (l, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add(j + 16 * l), *a);
                }
                j += 64;
            }
            if j < d {
                let rest = Rows {
                    offset: v.offset + j,
                    ..v
                };
                weighted_sum(w, rest, &mut out[j..]);
            }
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; `a` and `b` have the same length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot<T: Element>(a: &[f32], b: &[T]) -> f32 {
        let n = a.len();
        let full = n / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < full {
            // SAFETY: i + 8 <= n for both slices.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    T::load8(b.as_ptr().add(i)),
                )
            };
            acc = _mm256_fmadd_ps(x, y, acc);
            i += 8;
        }
        // (s0+s4, s1+s5, s2+s6, s3+s7)
        let t = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        // (t0+t2, t1+t3)
        let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
        // u0 + u1
        let r = _mm_add_ss(u, _mm_shuffle_ps(u, u, 1));
        let mut r = _mm_cvtss_f32(r);
        for j in full..n {
            r = a[j].mul_add(b[j].to_f32(), r);
        }
        r
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; `x` and `y` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let full = n / 8 * 8;
        let a = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i < full {
            // SAFETY: i + 8 <= n for both slices.
            unsafe {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i));
                let yp = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(yp, _mm256_fmadd_ps(xv, a, _mm256_loadu_ps(yp)));
            }
            i += 8;
        }
        for j in full..n {
            y[j] = x[j].mul_add(alpha, y[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    #[test]
    fn dot_is_the_same_bits_at_every_level_and_close_to_f64() {
        for n in [0usize, 1, 7, 8, 9, 64, 100, 129] {
            let (a, b) = (data(n, 1), data(n, 7));
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let d = dot(&a, &b);
            assert_eq!(d.to_bits(), dot_scalar(&a, &b).to_bits(), "n = {n}");
            assert!(
                (d as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()),
                "n = {n}"
            );
        }
    }

    /// The head attention equals softmax(q kᵀ * scale) v computed in f64, and the SIMD and
    /// scalar orders agree bit for bit (head sizes with and without a 64-wide block and tail).
    #[test]
    fn attention_matches_a_plain_softmax() {
        // Key counts below, at and past the 8 rows the scores take at once; head sizes with
        // and without a tail of fewer than 8 elements.
        for (d, s) in [
            (64usize, 1usize),
            (64, 37),
            (128, 5),
            (72, 9),
            (5, 3),
            (68, 19),
            (5, 17),
            (128, 64),
        ] {
            let stride = d + 3;
            let q = data(d, 11);
            let k = data(stride * s + 2, 13);
            let v = data(stride * s + 2, 17);
            let (kr, vr) = (
                Rows {
                    data: &k,
                    offset: 2,
                    stride,
                },
                Rows {
                    data: &v,
                    offset: 2,
                    stride,
                },
            );
            let scale = 0.125f32;
            let mut out = vec![f32::NAN; d];
            attention(&q, kr, vr, s, scale, &mut Vec::new(), &mut out);
            let sc: Vec<f64> = (0..s)
                .map(|i| {
                    (0..d)
                        .map(|j| q[j] as f64 * k[2 + i * stride + j] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let den: f64 = sc.iter().map(|x| (x - max).exp()).sum();
            for j in 0..d {
                let want: f64 = (0..s)
                    .map(|i| (sc[i] - max).exp() / den * v[2 + i * stride + j] as f64)
                    .sum();
                assert!((out[j] as f64 - want).abs() < 1e-4, "d {d} s {s} j {j}");
            }
            // Scalar order, written out.
            let mut w: Vec<f32> = (0..s)
                .map(|i| dot_scalar(&q, &k[2 + i * stride..][..d]) * scale)
                .collect();
            softmax_at(Simd::Scalar, &mut w);
            let mut plain = vec![0f32; d];
            for (i, &wi) in w.iter().enumerate() {
                for j in 0..d {
                    plain[j] = v[2 + i * stride + j].mul_add(wi, plain[j]);
                }
            }
            assert_eq!(out, plain, "d {d} s {s}");
            // Every SIMD level gives the same bits, f32 and f16 caches alike.
            let k16: Vec<f16> = k.iter().map(|&x| f16::from_f32(x)).collect();
            let v16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            let rows16 = |data| Rows {
                data,
                offset: 2,
                stride,
            };
            let mut want16 = vec![0f32; d];
            attention_segments_at(
                Simd::Scalar,
                &q,
                &[(rows16(&k16), rows16(&v16), s)],
                scale,
                &mut Vec::new(),
                &mut want16,
            );
            for simd in Simd::ALL.into_iter().filter(|s| s.is_available()) {
                let mut got = vec![0f32; d];
                attention_segments_at(simd, &q, &[(kr, vr, s)], scale, &mut Vec::new(), &mut got);
                assert_eq!(got, plain, "{simd:?} d {d} s {s}");
                attention_segments_at(
                    simd,
                    &q,
                    &[(rows16(&k16), rows16(&v16), s)],
                    scale,
                    &mut Vec::new(),
                    &mut got,
                );
                assert_eq!(got, want16, "{simd:?} f16 d {d} s {s}");
            }

            // An f16 cache: the same as f32 rows holding the f16-rounded values.
            let (k16, v16): (Vec<f16>, Vec<f16>) = (
                k.iter().map(|&x| f16::from_f32(x)).collect(),
                v.iter().map(|&x| f16::from_f32(x)).collect(),
            );
            let (kw, vw): (Vec<f32>, Vec<f32>) = (
                k16.iter().map(|x| x.to_f32()).collect(),
                v16.iter().map(|x| x.to_f32()).collect(),
            );
            let (mut a16, mut a32) = (vec![0f32; d], vec![0f32; d]);
            attention(
                &q,
                Rows {
                    data: &k16[..],
                    offset: 2,
                    stride,
                },
                Rows {
                    data: &v16[..],
                    offset: 2,
                    stride,
                },
                s,
                scale,
                &mut Vec::new(),
                &mut a16,
            );
            attention(
                &q,
                Rows {
                    data: &kw[..],
                    offset: 2,
                    stride,
                },
                Rows {
                    data: &vw[..],
                    offset: 2,
                    stride,
                },
                s,
                scale,
                &mut Vec::new(),
                &mut a32,
            );
            assert_eq!(a16, a32, "f16 d {d} s {s}");
        }
    }

    /// The same rows split into segments (blocks of a paged cache) give the same bits.
    #[test]
    fn attention_over_segments_equals_contiguous_attention() {
        let (d, s, stride) = (72usize, 37usize, 75usize);
        let q = data(d, 3);
        let k = data(stride * s, 5);
        let v = data(stride * s, 7);
        let mut whole = vec![0f32; d];
        attention(
            &q,
            Rows {
                data: &k,
                offset: 0,
                stride,
            },
            Rows {
                data: &v,
                offset: 0,
                stride,
            },
            s,
            0.2,
            &mut Vec::new(),
            &mut whole,
        );
        // Blocks of 16, 16 and 5 rows.
        let segs: Vec<(Rows<f32>, Rows<f32>, usize)> = [(0usize, 16usize), (16, 16), (32, 5)]
            .iter()
            .map(|&(from, n)| {
                (
                    Rows {
                        data: &k,
                        offset: from * stride,
                        stride,
                    },
                    Rows {
                        data: &v,
                        offset: from * stride,
                        stride,
                    },
                    n,
                )
            })
            .collect();
        let mut split = vec![0f32; d];
        attention_segments(&q, &segs, 0.2, &mut Vec::new(), &mut split);
        assert_eq!(whole, split);
    }

    /// The canonical exp is within 2 ulp of e^x where the result is a normal f32, 0 below
    /// and infinite above the f32 range, and the 8-lane code gives the same bits.
    #[test]
    fn exp_is_close_to_e_x_and_the_same_bits_on_every_level() {
        let mut xs: Vec<f32> = (0..20_000)
            .map(|i| -88.0 + i as f32 * 0.008_840_7)
            .collect();
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 88.7, -87.3, -87.4, -100.0, 100.0]);
        xs.extend([f32::NEG_INFINITY, f32::INFINITY, EXP_LO, EXP_HI]);
        for &x in &xs {
            let got = exp(x);
            let want = (x as f64).exp();
            if x < EXP_LO {
                assert_eq!(got, 0.0, "x = {x}");
            } else if x > EXP_HI {
                assert_eq!(got, f32::INFINITY, "x = {x}");
            } else if want >= f32::MIN_POSITIVE as f64 && want <= f32::MAX as f64 {
                let ulp = (want as f32).abs() * f32::EPSILON;
                assert!(
                    ((got as f64) - want).abs() <= 2.0 * ulp as f64,
                    "x = {x}: {got} vs {want}"
                );
            }
        }
        // softmax runs exp on 8 lanes: equal bits at every level, lengths with and without
        // a tail, a masked (-inf) position included.
        for n in [1usize, 7, 8, 9, 64, 100, 1000] {
            let mut base: Vec<f32> = data(n, 41).iter().map(|x| x * 20.0).collect();
            if n > 1 {
                base[n / 2] = f32::NEG_INFINITY;
            }
            let mut want = base.clone();
            softmax_at(Simd::Scalar, &mut want);
            let total: f64 = want.iter().map(|&x| x as f64).sum();
            assert!((total - 1.0).abs() < 1e-5, "n {n}: sums to {total}");
            for simd in Simd::ALL.into_iter().filter(|s| s.is_available()) {
                let mut got = base.clone();
                softmax_at(simd, &mut got);
                assert_eq!(got, want, "{simd:?} n {n}");
            }
        }
    }

    #[test]
    fn axpy_adds_a_scaled_vector() {
        for n in [3usize, 8, 21] {
            let x = data(n, 3);
            let mut y = data(n, 5);
            let want: Vec<f32> = y.iter().zip(&x).map(|(y, x)| x.mul_add(0.5, *y)).collect();
            axpy(0.5, &x, &mut y);
            assert_eq!(y, want);
        }
    }

    #[test]
    fn rms_norm_and_silu_mul_match_their_formulas() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let w = [1.0f32, 2.0, 0.5, 1.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &w, 1e-6, &mut out);
        let r = 1.0 / ((1.0 + 4.0 + 9.0 + 0.25) / 4.0f32 + 1e-6).sqrt();
        for i in 0..4 {
            assert!((out[i] - x[i] * r * w[i]).abs() < 1e-6);
        }
        let mut g = [0.0f32, 1.0, -3.0];
        silu_mul(&mut g, &[2.0, 2.0, 2.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
        assert!((g[2] - 2.0 * -3.0 / (1.0 + 3.0f32.exp())).abs() < 1e-6);
        // Every level gives the same bits, including where e^-gate overflows.
        let mut gate: Vec<f32> = data(203, 43).iter().map(|x| x * 30.0).collect();
        (gate[1], gate[2]) = (-100.0, 100.0);
        let up = data(203, 47);
        let mut want = gate.clone();
        silu_mul_at(Simd::Scalar, &mut want, &up);
        for (w, (&g, &u)) in want.iter().zip(gate.iter().zip(&up)) {
            let exact = g as f64 / (1.0 + (-g as f64).exp()) * u as f64;
            assert!(
                (*w as f64 - exact).abs() <= 1e-6 * (1.0 + exact.abs()),
                "{g}"
            );
        }
        for simd in Simd::ALL.into_iter().filter(|s| s.is_available()) {
            let mut got = gate.clone();
            silu_mul_at(simd, &mut got, &up);
            assert_eq!(got, want, "{simd:?}");
        }
    }
}
