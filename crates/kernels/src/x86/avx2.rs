//! AVX2 + FMA + F16C kernels: ggml-cpu's AVX2 arithmetic, rearranged into R x C tiles.
//!
//! 32-element types keep their weights unsigned (`q + offset`, 0..31) so that one `vpmaddubsw`
//! multiplies them with the signed activations; the offset is taken back out per activation
//! block (`vpmaddubsw(offset, y)`), once per tile column rather than once per pair. Q8_0 has
//! no unsigned form and uses ggml's sign trick.

use super::tile_entry;
use crate::dispatch::TileFn;
use crate::layout::{q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_1, q8_k};
use crate::QType;
use core::arch::x86_64::*;
use core::ptr;

/// The AVX2 tile kernel for `ty` and its tile shape, or `None` where the scalar code is used.
pub fn tile_fn(ty: QType) -> Option<(TileFn, usize, usize)> {
    let f: TileFn = match ty {
        QType::Q4_0 => tile_q4_0,
        QType::Q4_1 => tile_q4_1,
        QType::Q5_0 => tile_q5_0,
        QType::Q5_1 => tile_q5_1,
        QType::Q8_0 => tile_q8_0,
        QType::Q4K => tile_q4_k,
        QType::Q5K => tile_q5_k,
        QType::Q6K => tile_q6_k,
        QType::Q2K | QType::Q3K => return None,
    };
    Some((f, 4, 4))
}

tile_entry!("avx2,fma,f16c", tile_q4_0, tile_q32, Q4_0);
tile_entry!("avx2,fma,f16c", tile_q4_1, tile_q32, Q4_1);
tile_entry!("avx2,fma,f16c", tile_q5_0, tile_q32, Q5_0);
tile_entry!("avx2,fma,f16c", tile_q5_1, tile_q32, Q5_1);
tile_entry!("avx2,fma,f16c", tile_q8_0, tile_q32, Q8_0);
tile_entry!("avx2,fma,f16c", tile_q4_k, tile_k, Q4K);
tile_entry!("avx2,fma,f16c", tile_q5_k, tile_k, Q5K);
tile_entry!("avx2,fma,f16c", tile_q6_k, tile_k, Q6K);

// ---------------------------------------------------------------------------------------------
// Helpers. SAFETY (all of them): called from the entry points above, which enable the
// features; pointer arguments point at enough readable bytes (the caller's contract).

/// The f16 at `p`, as f32.
#[inline(always)]
pub(super) unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: see the section comment.
    unsafe {
        let h = ptr::read_unaligned(p as *const u16);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }
}

#[inline(always)]
pub(super) unsafe fn f32_at(p: *const u8) -> f32 {
    // SAFETY: see the section comment.
    unsafe { ptr::read_unaligned(p as *const f32) }
}

#[inline(always)]
pub(super) unsafe fn load256(p: *const u8) -> __m256i {
    // SAFETY: see the section comment.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

#[inline(always)]
pub(super) unsafe fn load128(p: *const u8) -> __m128i {
    // SAFETY: see the section comment.
    unsafe { _mm_loadu_si128(p as *const __m128i) }
}

/// Sum of the 8 lanes, in a fixed order.
#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: see the section comment.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// 16 bytes at `p` to 32 nibbles: the low nibbles (elements 0..16), then the high ones.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: see the section comment.
    unsafe {
        let t = load128(p);
        let b = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
        _mm256_and_si256(b, _mm256_set1_epi8(0xF))
    }
}

/// The 32 bits of the u32 at `p` to 32 bytes: `0x10` where the bit is set, else 0.
#[inline(always)]
unsafe fn bits_0x10(p: *const u8) -> __m256i {
    // SAFETY: see the section comment.
    unsafe {
        let qh = ptr::read_unaligned(p as *const u32);
        let shuf = _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
        // Byte i keeps every bit but bit i % 8 set, so it is all ones iff that bit is set.
        let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
        let set = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

/// Signed x signed bytes to 8 sums of 4 (ggml's `mul_sum_i8_pairs`).
#[inline(always)]
unsafe fn dot_i8(q: __m256i, y: __m256i) -> __m256i {
    // SAFETY: see the section comment.
    unsafe {
        let ax = _mm256_sign_epi8(q, q);
        let sy = _mm256_sign_epi8(y, q);
        _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
    }
}

// ---------------------------------------------------------------------------------------------
// 32-element types.

/// A 32-element weight type against Q8_0 or Q8_1 activations.
trait Q32 {
    /// Weight block bytes.
    const WB: usize;
    /// Activation block bytes (Q8_0 or Q8_1).
    const XB: usize;
    /// Offset of the activation quants.
    const XQS: usize;
    /// Whether the block has a min `m` at byte 2 (then the activations carry `s` at byte 2).
    const HAS_MIN: bool;
    /// Per-activation-block term that `dot` needs (shared by the tile's weight rows).
    unsafe fn col(y: __m256i) -> __m256i;
    /// The block's 32 quants as bytes, in element order.
    unsafe fn unpack(p: *const u8) -> __m256i;
    /// 8 partial sums of `q[i] * y[i]` (with the offset taken out).
    unsafe fn dot(q: __m256i, y: __m256i, col: __m256i) -> __m256i;
}

/// `madd(maddubs(q, y) - maddubs(OFFSET, y), 1)` for unsigned `q` that encode `q - OFFSET`.
#[inline(always)]
unsafe fn dot_offset(q: __m256i, y: __m256i, col: __m256i) -> __m256i {
    // SAFETY: see the section comment. No i16 overflow: |q * y| pairs <= 2 * 31 * 127.
    unsafe {
        let p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), col);
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
}

#[inline(always)]
unsafe fn dot_unsigned(q: __m256i, y: __m256i) -> __m256i {
    // SAFETY: see the section comment.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1)) }
}

struct Q4_0;
impl Q32 for Q4_0 {
    const WB: usize = q4_0::BYTES;
    const XB: usize = q8_0::BYTES;
    const XQS: usize = q8_0::QS;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn col(y: __m256i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { _mm256_maddubs_epi16(_mm256_set1_epi8(8), y) }
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { nibbles(p.add(q4_0::QS)) }
    }
    #[inline(always)]
    unsafe fn dot(q: __m256i, y: __m256i, col: __m256i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { dot_offset(q, y, col) }
    }
}

struct Q5_0;
impl Q32 for Q5_0 {
    const WB: usize = q5_0::BYTES;
    const XB: usize = q8_0::BYTES;
    const XQS: usize = q8_0::QS;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn col(y: __m256i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { _mm256_maddubs_epi16(_mm256_set1_epi8(16), y) }
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { _mm256_or_si256(nibbles(p.add(q5_0::QS)), bits_0x10(p.add(q5_0::QH))) }
    }
    #[inline(always)]
    unsafe fn dot(q: __m256i, y: __m256i, col: __m256i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { dot_offset(q, y, col) }
    }
}

struct Q8_0;
impl Q32 for Q8_0 {
    const WB: usize = q8_0::BYTES;
    const XB: usize = q8_0::BYTES;
    const XQS: usize = q8_0::QS;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn col(y: __m256i) -> __m256i {
        y
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { load256(p.add(q8_0::QS)) }
    }
    #[inline(always)]
    unsafe fn dot(q: __m256i, y: __m256i, _col: __m256i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { dot_i8(q, y) }
    }
}

struct Q4_1;
impl Q32 for Q4_1 {
    const WB: usize = q4_1::BYTES;
    const XB: usize = q8_1::BYTES;
    const XQS: usize = q8_1::QS;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn col(y: __m256i) -> __m256i {
        y
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { nibbles(p.add(q4_1::QS)) }
    }
    #[inline(always)]
    unsafe fn dot(q: __m256i, y: __m256i, _col: __m256i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { dot_unsigned(q, y) }
    }
}

struct Q5_1;
impl Q32 for Q5_1 {
    const WB: usize = q5_1::BYTES;
    const XB: usize = q8_1::BYTES;
    const XQS: usize = q8_1::QS;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn col(y: __m256i) -> __m256i {
        y
    }
    #[inline(always)]
    unsafe fn unpack(p: *const u8) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { _mm256_or_si256(nibbles(p.add(q5_1::QS)), bits_0x10(p.add(q5_1::QH))) }
    }
    #[inline(always)]
    unsafe fn dot(q: __m256i, y: __m256i, _col: __m256i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { dot_unsigned(q, y) }
    }
}

/// `R x C` dot products of a 32-element type, one block at a time.
#[inline(always)]
unsafe fn tile_q32<K: Q32, const R: usize, const C: usize>(
    w: *const u8,
    ws: usize,
    x: *const u8,
    xs: usize,
    nb: usize,
    out: &mut [f32; 16],
) {
    // SAFETY: see the section comment; block `b < nb` of row `r < R` (`c < C`) is in bounds.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut accm = [[0f32; C]; R];
        for b in 0..nb {
            let mut y = [_mm256_setzero_si256(); C];
            let mut yc = [_mm256_setzero_si256(); C];
            let mut dy = [_mm256_setzero_ps(); C];
            let mut sy = [0f32; C];
            for c in 0..C {
                let p = x.add(c * xs + b * K::XB);
                y[c] = load256(p.add(K::XQS));
                yc[c] = K::col(y[c]);
                dy[c] = _mm256_set1_ps(f16(p));
                if K::HAS_MIN {
                    sy[c] = f16(p.add(2));
                }
            }
            for r in 0..R {
                let p = w.add(r * ws + b * K::WB);
                let q = K::unpack(p);
                let dw = _mm256_set1_ps(f16(p));
                let mw = if K::HAS_MIN { f16(p.add(2)) } else { 0.0 };
                for c in 0..C {
                    let s = _mm256_cvtepi32_ps(K::dot(q, y[c], yc[c]));
                    acc[r][c] = _mm256_fmadd_ps(s, _mm256_mul_ps(dw, dy[c]), acc[r][c]);
                    if K::HAS_MIN {
                        accm[r][c] += mw * sy[c];
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out[r * C + c] = hsum(acc[r][c]) + accm[r][c];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants against Q8_K: per super-block, 8 chunks of 32 quants whose products are summed with
// their 16-bit sub-block scales by `vpmaddwd`, so one float FMA per super-block remains.

/// `vpshufb` masks that repeat 16-bit word `i` of a 128-bit lane (ggml's
/// `get_scale_shuffle_k4`).
static SHUF_K4: [[u8; 32]; 8] = {
    let mut m = [[0u8; 32]; 8];
    let mut i = 0;
    while i < 8 {
        let mut j = 0;
        while j < 16 {
            m[i][2 * j] = 2 * i as u8;
            m[i][2 * j + 1] = 2 * i as u8 + 1;
            j += 1;
        }
        i += 1;
    }
    m
};

/// `vpshufb` masks that put byte `2k` in bytes 0..8 and byte `2k + 1` in bytes 8..16
/// (ggml's `get_scale_shuffle`).
static SHUF_Q6: [[u8; 16]; 8] = {
    let mut m = [[0u8; 16]; 8];
    let mut k = 0;
    while k < 8 {
        let mut j = 0;
        while j < 8 {
            m[k][j] = 2 * k as u8;
            m[k][j + 8] = 2 * k as u8 + 1;
            j += 1;
        }
        k += 1;
    }
    m
};

/// A K-quant weight type against Q8_K activations.
trait KQuant {
    /// Weight block bytes.
    const WB: usize;
    /// Whether the type has mins (`- dmin * m * sum(y)` per sub-block).
    const HAS_MIN: bool;
    /// The block's 256 quants as 8 chunks of 32 unsigned bytes, and per chunk the 16-bit
    /// scales for `vpmaddwd`; returns what `bsum_term` needs of the block (mins or scales).
    unsafe fn unpack(p: *const u8, q: &mut [__m256i; 8], sc: &mut [__m256i; 8]) -> __m256i;
    /// `d`, and `dmin` (0 if none).
    unsafe fn scales(p: *const u8) -> (f32, f32);
    /// The integer term that uses the activations' 16 `bsums` (`bs`): for Q4_K/Q5_K the
    /// mins' products `sum_j m_j * (bsums[2j] + bsums[2j+1])` (given the pair-summed `bs2`),
    /// for Q6_K the offset's `32 * sum_g sc_g * bsums[g]`.
    unsafe fn bsum_term(aux: __m256i, bs: __m256i, bs2: __m128i) -> __m256i;
}

/// Q4_K/Q5_K 6-bit scales and mins (12 bytes) to `[scales[0..8], mins[0..8]]` as u8.
#[inline(always)]
unsafe fn k4_scales_mins(p: *const u8) -> __m128i {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    // SAFETY: see the section comment.
    unsafe {
        let u0 = ptr::read_unaligned(p as *const u32);
        let u1 = ptr::read_unaligned(p.add(4) as *const u32);
        let u2 = ptr::read_unaligned(p.add(8) as *const u32);
        let m1 = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
        let m0 = u1 & KMASK1;
        let s1 = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
        let s0 = u0 & KMASK1;
        _mm_set_epi32(m1 as i32, m0 as i32, s1 as i32, s0 as i32)
    }
}

struct Q4K;
impl KQuant for Q4K {
    const WB: usize = q4_k::BYTES;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, q: &mut [__m256i; 8], sc: &mut [__m256i; 8]) -> __m256i {
        // SAFETY: see the section comment.
        unsafe {
            let m4 = _mm256_set1_epi8(0xF);
            let sm16 = _mm256_cvtepu8_epi16(k4_scales_mins(p.add(q4_k::SCALES)));
            let s16 = _mm256_permute2x128_si256(sm16, sm16, 0x00);
            for j in 0..4 {
                let bits = load256(p.add(q4_k::QS + 32 * j));
                q[2 * j] = _mm256_and_si256(bits, m4);
                q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                sc[2 * j] = _mm256_shuffle_epi8(s16, load256(SHUF_K4[2 * j].as_ptr()));
                sc[2 * j + 1] = _mm256_shuffle_epi8(s16, load256(SHUF_K4[2 * j + 1].as_ptr()));
            }
            // The mins as 16-bit lanes, in the low half.
            _mm256_permute2x128_si256(sm16, sm16, 0x81)
        }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        // SAFETY: see the section comment.
        unsafe { (f16(p), f16(p.add(q4_k::DMIN))) }
    }
    #[inline(always)]
    unsafe fn bsum_term(aux: __m256i, _bs: __m256i, bs2: __m128i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { mins_term(aux, bs2) }
    }
}

/// `sum_j m_j * (bsums[2j] + bsums[2j+1])` in 4 lanes (upper lanes zero), from the 8 mins
/// as 16-bit lanes in the low half of `mins`.
#[inline(always)]
unsafe fn mins_term(mins: __m256i, bs2: __m128i) -> __m256i {
    // SAFETY: see the section comment.
    unsafe { _mm256_zextsi128_si256(_mm_madd_epi16(_mm256_castsi256_si128(mins), bs2)) }
}

struct Q5K;
impl KQuant for Q5K {
    const WB: usize = q5_k::BYTES;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, q: &mut [__m256i; 8], sc: &mut [__m256i; 8]) -> __m256i {
        // SAFETY: see the section comment.
        unsafe {
            let m4 = _mm256_set1_epi8(0xF);
            let m16 = _mm256_set1_epi8(0x10);
            let sm16 = _mm256_cvtepu8_epi16(k4_scales_mins(p.add(q5_k::SCALES)));
            let s16 = _mm256_permute2x128_si256(sm16, sm16, 0x00);
            // Chunk k takes bit k of each qh byte: bit 0 of `h` after k 16-bit right shifts
            // (what leaks in from the high byte stays above bit 0 for k < 8), moved to bit 4.
            let mut h = load256(p.add(q5_k::QH));
            for j in 0..4 {
                let bits = load256(p.add(q5_k::QS + 32 * j));
                let h0 = _mm256_and_si256(_mm256_slli_epi16(h, 4), m16);
                h = _mm256_srli_epi16(h, 1);
                let h1 = _mm256_and_si256(_mm256_slli_epi16(h, 4), m16);
                h = _mm256_srli_epi16(h, 1);
                q[2 * j] = _mm256_or_si256(_mm256_and_si256(bits, m4), h0);
                q[2 * j + 1] =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), h1);
                sc[2 * j] = _mm256_shuffle_epi8(s16, load256(SHUF_K4[2 * j].as_ptr()));
                sc[2 * j + 1] = _mm256_shuffle_epi8(s16, load256(SHUF_K4[2 * j + 1].as_ptr()));
            }
            // The mins as 16-bit lanes, in the low half.
            _mm256_permute2x128_si256(sm16, sm16, 0x81)
        }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        // SAFETY: see the section comment.
        unsafe { (f16(p), f16(p.add(q5_k::DMIN))) }
    }
    #[inline(always)]
    unsafe fn bsum_term(aux: __m256i, _bs: __m256i, bs2: __m128i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { mins_term(aux, bs2) }
    }
}

struct Q6K;
impl KQuant for Q6K {
    const WB: usize = q6_k::BYTES;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, q: &mut [__m256i; 8], sc: &mut [__m256i; 8]) -> __m256i {
        // SAFETY: see the section comment.
        unsafe {
            let m4 = _mm256_set1_epi8(0xF);
            let m2 = _mm256_set1_epi8(3);
            let scales = load128(p.add(q6_k::SCALES));
            for n in 0..2 {
                let l0 = load256(p.add(q6_k::QL + 64 * n));
                let l1 = load256(p.add(q6_k::QL + 64 * n + 32));
                let hb = load256(p.add(q6_k::QH + 32 * n));
                let h0 = _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4);
                let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4);
                let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4);
                let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4);
                q[4 * n] = _mm256_or_si256(_mm256_and_si256(l0, m4), h0);
                q[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), h1);
                q[4 * n + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2);
                q[4 * n + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3);
            }
            for (k, s) in sc.iter_mut().enumerate() {
                let b = _mm_shuffle_epi8(scales, load128(SHUF_Q6[k].as_ptr()));
                *s = _mm256_cvtepi8_epi16(b);
            }
            _mm256_cvtepi8_epi16(scales)
        }
    }
    #[inline(always)]
    unsafe fn scales(p: *const u8) -> (f32, f32) {
        // SAFETY: see the section comment.
        unsafe { (f16(p.add(q6_k::D)), 0.0) }
    }
    #[inline(always)]
    unsafe fn bsum_term(aux: __m256i, bs: __m256i, _bs2: __m128i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { _mm256_slli_epi32(_mm256_madd_epi16(aux, bs), 5) }
    }
}

/// `R x C` dot products of a K-quant, one super-block at a time.
#[inline(always)]
unsafe fn tile_k<K: KQuant, const R: usize, const C: usize>(
    w: *const u8,
    ws: usize,
    x: *const u8,
    xs: usize,
    nb: usize,
    out: &mut [f32; 16],
) {
    // SAFETY: see the section comment; block `b < nb` of row `r < R` (`c < C`) is in bounds.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut q = [_mm256_setzero_si256(); 8];
        let mut sc = [_mm256_setzero_si256(); 8];
        for b in 0..nb {
            let mut dy = [0f32; C];
            let mut bs = [_mm256_setzero_si256(); C];
            let mut bs2 = [_mm_setzero_si128(); C];
            for c in 0..C {
                let p = x.add(c * xs + b * q8_k::BYTES);
                dy[c] = f32_at(p);
                bs[c] = load256(p.add(q8_k::BSUMS));
                if K::HAS_MIN {
                    let lo = _mm256_castsi256_si128(bs[c]);
                    bs2[c] = _mm_hadd_epi16(lo, _mm256_extracti128_si256(bs[c], 1));
                }
            }
            for r in 0..R {
                let p = w.add(r * ws + b * K::WB);
                let aux = K::unpack(p, &mut q, &mut sc);
                let (d, dmin) = K::scales(p);
                for c in 0..C {
                    let y = x.add(c * xs + b * q8_k::BYTES + q8_k::QS);
                    let mut sumi = _mm256_setzero_si256();
                    for k in 0..8 {
                        let p16 = _mm256_maddubs_epi16(q[k], load256(y.add(32 * k)));
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc[k], p16));
                    }
                    let t = K::bsum_term(aux, bs[c], bs2[c]);
                    if K::HAS_MIN {
                        let vd = _mm256_set1_ps(d * dy[c]);
                        acc[r][c] = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc[r][c]);
                        let vm = _mm256_set1_ps(-dmin * dy[c]);
                        acc[r][c] = _mm256_fmadd_ps(vm, _mm256_cvtepi32_ps(t), acc[r][c]);
                    } else {
                        let vd = _mm256_set1_ps(d * dy[c]);
                        let s = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi, t));
                        acc[r][c] = _mm256_fmadd_ps(vd, s, acc[r][c]);
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out[r * C + c] = hsum(acc[r][c]);
            }
        }
    }
}
