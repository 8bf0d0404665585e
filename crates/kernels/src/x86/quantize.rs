//! AVX2 activation quantization, bit-identical to the scalar reference (ggml's `_ref`
//! rounding: `roundf` for Q8_0/Q8_1, round-half-even for Q8_K).

use crate::layout::{f16_bytes, q8_1, q8_k, QK_K};
use crate::VecDotType;
use core::arch::x86_64::*;

/// Quantizes `x` into `out` (exactly its blocks).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_avx2(x: &[f32], to: VecDotType, out: &mut [u8]) {
    let (be, bb) = (to.block_elems(), to.block_bytes());
    for (xb, yb) in x.chunks_exact(be).zip(out.chunks_exact_mut(bb)) {
        let xb: &[f32; 256] = match to {
            VecDotType::Q8K => xb.try_into().expect("256 elements"),
            _ => {
                let xb: &[f32; 32] = xb.try_into().expect("32 elements");
                // SAFETY: the features are enabled (this function's contract).
                unsafe { q8_32(xb, yb, to == VecDotType::Q8_1) };
                continue;
            }
        };
        // SAFETY: as above.
        unsafe { q8_k(xb, yb) };
    }
}

// SAFETY (helpers): called from `quantize_row_avx2`, whose features they use; reads stay in
// the fixed-size arrays and writes in the block slices, whose lengths `chunks_exact` fixes.

#[inline(always)]
unsafe fn loadps(x: &[f32], at: usize) -> __m256 {
    assert!(at + 8 <= x.len());
    // SAFETY: in bounds (just checked); see the section comment.
    unsafe { _mm256_loadu_ps(x.as_ptr().add(at)) }
}

#[inline(always)]
unsafe fn abs(v: __m256) -> __m256 {
    // SAFETY: see the section comment.
    unsafe { _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff))) }
}

#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: see the section comment.
    unsafe {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }
}

#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: see the section comment.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

/// C's `roundf` (half away from zero), exactly: `v - trunc(v)` is exact below 2^23.
#[inline(always)]
unsafe fn roundf(v: __m256) -> __m256 {
    // SAFETY: see the section comment.
    unsafe {
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let frac = abs(_mm256_sub_ps(v, t));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        let sign = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN)));
        let one = _mm256_or_ps(_mm256_set1_ps(1.0), sign);
        _mm256_add_ps(t, _mm256_and_ps(up, one))
    }
}

/// Four vectors of 8 i32 (each in -128..=127) to 32 i8 in order, stored at `out[..32]`.
#[inline(always)]
unsafe fn store_i8(i: [__m256i; 4], out: &mut [u8]) {
    assert!(out.len() >= 32);
    // SAFETY: 32 bytes in bounds (just checked); see the section comment.
    unsafe {
        let a = _mm256_packs_epi32(i[0], i[1]);
        let b = _mm256_packs_epi32(i[2], i[3]);
        let p = _mm256_packs_epi16(a, b);
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, p);
    }
}

/// One Q8_0 (or, with `sum`, Q8_1) block.
#[inline(always)]
unsafe fn q8_32(x: &[f32; 32], y: &mut [u8], sum: bool) {
    // SAFETY: see the section comment.
    unsafe {
        let v = [loadps(x, 0), loadps(x, 8), loadps(x, 16), loadps(x, 24)];
        let m = _mm256_max_ps(
            _mm256_max_ps(abs(v[0]), abs(v[1])),
            _mm256_max_ps(abs(v[2]), abs(v[3])),
        );
        let amax = hmax(m);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        y[..2].copy_from_slice(&f16_bytes(d));
        let mut i = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            i[k] = _mm256_cvttps_epi32(roundf(_mm256_mul_ps(v[k], id)));
        }
        let qs = if sum { q8_1::QS } else { 2 };
        store_i8(i, &mut y[qs..]);
        if sum {
            let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            let s = hsum_i32(s) as f32 * d;
            y[q8_1::S..q8_1::S + 2].copy_from_slice(&f16_bytes(s));
        }
    }
}

/// One Q8_K block.
#[inline(always)]
unsafe fn q8_k(x: &[f32; QK_K], y: &mut [u8]) {
    // SAFETY: see the section comment.
    unsafe {
        let mut m = _mm256_setzero_ps();
        for k in 0..32 {
            m = _mm256_max_ps(m, abs(loadps(x, 8 * k)));
        }
        let amax = hmax(m);
        if amax == 0.0 {
            y.fill(0);
            return;
        }
        // The first element of largest magnitude, with its sign (as ggml's scan finds it).
        let am = _mm256_set1_ps(amax);
        let mut max = 0.0;
        for k in 0..32 {
            let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(abs(loadps(x, 8 * k)), am);
            let bits = _mm256_movemask_ps(eq);
            if bits != 0 {
                max = x[8 * k + bits.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let is = _mm256_set1_ps(iscale);
        let top = _mm256_set1_epi32(127);
        for g in 0..8 {
            let mut i = [_mm256_setzero_si256(); 4];
            for (k, i) in i.iter_mut().enumerate() {
                let v = _mm256_mul_ps(is, loadps(x, 32 * g + 8 * k));
                *i = _mm256_min_epi32(_mm256_cvtps_epi32(v), top);
            }
            store_i8(i, &mut y[q8_k::QS + 32 * g..]);
            for h in 0..2 {
                let s = hsum_i32(_mm256_add_epi32(i[2 * h], i[2 * h + 1])) as i16;
                let at = q8_k::BSUMS + 2 * (2 * g + h);
                y[at..at + 2].copy_from_slice(&s.to_le_bytes());
            }
        }
        y[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}
