//! AVX2 + FMA + F16C kernels: ggml-cpu's AVX2 integer arithmetic on 8 weight rows at a time.
//!
//! Each row's integer partial sums of a block are reduced across lanes by a transpose tree
//! ([`tree8`]) into one vector with a row per lane, so the float work (convert, scale, FMA)
//! runs once per 8 rows and in the canonical order (see the crate docs).
//!
//! 32-element types keep their weights unsigned (`q + offset`, 0..31) so that one `vpmaddubsw`
//! multiplies them with the signed activations; the offset is taken back out per activation
//! block (`vpmaddubsw(offset, y)`), once per activation block rather than once per row. Q8_0 has
//! no unsigned form (`q + 128` times 127 overflows `vpmaddubsw`'s 16-bit pairs) and uses ggml's
//! sign trick, `|q| * (y * sign(q))`, exact for every `q` including -128 because the activations
//! stay within -127..=127.

use super::{ahead_of, group_ptrs, prefetch, prefetch_first_group, range_entry};
use crate::dispatch::{Job, RangeFn, Sink};
use crate::layout::{q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_1, q8_k};
use crate::QType;
use core::arch::x86_64::*;
use core::ops::Range;
use core::ptr;

/// The AVX2 kernel for `ty`: (function, rows per group, `m` from which it uses
/// [`crate::dispatch::Job::act_info`]), or `None` where the scalar code is used.
pub fn kernel(ty: QType) -> Option<(RangeFn, usize, usize)> {
    let f: RangeFn = match ty {
        QType::Q4_0 => range_q4_0,
        QType::Q4_1 => range_q4_1,
        QType::Q5_0 => range_q5_0,
        QType::Q5_1 => range_q5_1,
        QType::Q8_0 => range_q8_0,
        QType::Q4K => range_q4_k,
        QType::Q5K => range_q5_k,
        QType::Q6K => range_q6_k,
        _ => return None,
    };
    Some((f, G, PACK_FROM_M))
}

/// Activation rows from which weights are repacked (below, each block is unpacked once per
/// 4 activation rows, which costs less than the repacking).
const PACK_FROM_M: usize = 4;

/// Weight rows per group: one per f32 lane.
const G: usize = 8;

range_entry!("avx2,fma,f16c", range_q4_0, range_q32, Q4_0);
range_entry!("avx2,fma,f16c", range_q4_1, range_q32, Q4_1);
range_entry!("avx2,fma,f16c", range_q5_0, range_q32, Q5_0);
range_entry!("avx2,fma,f16c", range_q5_1, range_q32, Q5_1);
range_entry!("avx2,fma,f16c", range_q8_0, range_q32, Q8_0);
range_entry!("avx2,fma,f16c", range_q4_k, range_k, Q4K);
range_entry!("avx2,fma,f16c", range_q5_k, range_k, Q5K);
range_entry!("avx2,fma,f16c", range_q6_k, range_k, Q6K);

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
    /// What `unpack` adds to the signed quant (0 for the types with a min, and for Q8_0).
    const OFFSET: u8;
    /// Whether `unpack` gives signed quants (Q8_0).
    const SIGNED: bool;
    /// Per-activation-block term that `dot` needs (shared by the group's weight rows).
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
    const OFFSET: u8 = 8;
    const SIGNED: bool = false;
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
    const OFFSET: u8 = 16;
    const SIGNED: bool = false;
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
    const OFFSET: u8 = 0;
    const SIGNED: bool = true;
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
    const OFFSET: u8 = 0;
    const SIGNED: bool = false;
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
    const OFFSET: u8 = 0;
    const SIGNED: bool = false;
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

#[inline(always)]
unsafe fn l1(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: see the section comment.
    unsafe { _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b)) }
}

#[inline(always)]
unsafe fn l2(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: see the section comment.
    unsafe { _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b)) }
}

/// Sums of the 8 lanes of each of 8 vectors: lane `r` of the result is `sum(v[r])`.
#[inline(always)]
pub(super) unsafe fn tree8(v: &[__m256i; 8]) -> __m256i {
    // SAFETY: see the section comment.
    unsafe {
        // Per 128-bit lane: [sum of v[0], v[1], v[2], v[3] over that lane], then rows 4..8.
        let w0 = l2(l1(v[0], v[1]), l1(v[2], v[3]));
        let w1 = l2(l1(v[4], v[5]), l1(v[6], v[7]));
        _mm256_add_epi32(
            _mm256_permute2x128_si256(w0, w1, 0x20),
            _mm256_permute2x128_si256(w0, w1, 0x31),
        )
    }
}

/// The f16 at `base + offs[r] + at` in lane `r`, as f32: one gather of the dwords that hold
/// them (a stack array and a reload would stall on store forwarding), starting at the f16 if
/// it opens its block (`field == 0`) and ending at it otherwise, so that no read leaves the
/// block.
#[inline(always)]
unsafe fn f16_lanes(base: *const u8, offs: __m256i, at: usize, field: usize) -> __m256 {
    // SAFETY: see the section comment; a block has at least 4 bytes, and a field at
    // `field >= 2` has 2 bytes of its block before it.
    unsafe {
        let lo = if field == 0 {
            let v = _mm256_i32gather_epi32::<1>(base.add(at).cast(), offs);
            _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF))
        } else {
            let v = _mm256_i32gather_epi32::<1>(base.add(at - 2).cast(), offs);
            _mm256_srli_epi32(v, 16)
        };
        // The low 16 bits of each dword, packed into 8 words.
        let w = _mm256_packus_epi32(lo, lo);
        let w = _mm256_permute4x64_epi64::<0b10_00_10_00>(w);
        _mm256_cvtph_ps(_mm256_castsi256_si128(w))
    }
}

/// The byte offsets of `rows[r]` from `rows[0]` (rows of one matrix, so they fit in i32).
#[inline(always)]
unsafe fn row_offsets(rows: &[*const u8; G]) -> __m256i {
    let mut o = [0i32; G];
    for r in 0..G {
        o[r] = (rows[r] as isize - rows[0] as isize) as i32;
    }
    // SAFETY: see the section comment.
    unsafe { _mm256_loadu_si256(o.as_ptr().cast()) }
}

/// Activation rows per pass: each weight block is unpacked once for up to this many.
const C: usize = 4;

/// The dot products of 8 weight rows (`rows`) with `NC` activation rows (`x[c]`), lane `r`
/// for row `r`, in the canonical order. Prefetches the bytes `ahead` of each block read
/// (none when 0).
#[inline(always)]
unsafe fn group_q32<K: Q32, const NC: usize>(
    rows: &[*const u8; G],
    x: &[*const u8; NC],
    nb: usize,
    ahead: usize,
) -> [__m256; NC] {
    // SAFETY: see the section comment; `nb` blocks of each row are in bounds.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); NC];
        let offs = row_offsets(rows);
        for b in 0..nb {
            let mut y = [_mm256_setzero_si256(); NC];
            let mut col = [_mm256_setzero_si256(); NC];
            for c in 0..NC {
                y[c] = load256(x[c].add(b * K::XB + K::XQS));
                col[c] = K::col(y[c]);
            }
            let mut v = [[_mm256_setzero_si256(); G]; NC];
            for r in 0..G {
                let p = rows[r].add(b * K::WB);
                if ahead != 0 {
                    prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead), K::WB);
                }
                let q = K::unpack(p);
                for c in 0..NC {
                    v[c][r] = K::dot(q, y[c], col[c]);
                }
            }
            let dw = f16_lanes(rows[0], offs, b * K::WB, 0);
            let mw = if K::HAS_MIN {
                f16_lanes(rows[0], offs, b * K::WB + 2, 2)
            } else {
                _mm256_setzero_ps()
            };
            for c in 0..NC {
                let px = x[c].add(b * K::XB);
                let s = _mm256_cvtepi32_ps(tree8(&v[c]));
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(f16(px)));
                acc[c] = _mm256_fmadd_ps(s, d, acc[c]);
                if K::HAS_MIN {
                    acc[c] = _mm256_fmadd_ps(mw, _mm256_set1_ps(f16(px.add(2))), acc[c]);
                }
            }
        }
        acc
    }
}

/// Hands lanes `..n` of `acc` to `out` as the results of rows `r..` with activation row `c`.
#[inline(always)]
unsafe fn emit(
    acc: __m256,
    c: usize,
    r: usize,
    n: usize,
    out: &mut dyn FnMut(usize, usize, &[f32]),
) {
    // SAFETY: see the section comment.
    unsafe {
        let mut v = [0f32; G];
        _mm256_storeu_ps(v.as_mut_ptr(), acc);
        out(c, r, &v[..n]);
    }
}

/// The activation rows `c0..c0 + NC`.
#[inline(always)]
unsafe fn act_rows<const NC: usize>(job: &Job<'_>, c0: usize) -> [*const u8; NC] {
    // SAFETY: see the section comment.
    unsafe { core::array::from_fn(|c| job.act.as_ptr().add((c0 + c) * job.xrow)) }
}

/// Rows `rows` of the job in groups of 8 (a short last group repeats its last row), against
/// up to 4 activation rows at a time.
#[inline(always)]
unsafe fn range_q32<K: Q32>(job: &Job<'_>, rows: Range<usize>, pack: &mut Vec<u8>, out: Sink<'_>) {
    // SAFETY: see the section comment.
    unsafe {
        if job.m >= PACK_FROM_M {
            let buf = pack_buf(pack, job.nb * packed_bytes_q32(K::SIGNED, K::HAS_MIN));
            let mut r = rows.start;
            while r < rows.end {
                let n = G.min(rows.end - r);
                pack_q32::<K>(&group_ptrs::<G>(job, r, n), job.nb, buf);
                let mut c = 0;
                while c < job.m {
                    if c + C <= job.m {
                        let acc = packed_dot_q32::<K, C>(buf, job, c);
                        for (i, acc) in acc.into_iter().enumerate() {
                            emit(acc, c + i, r, n, out);
                        }
                        c += C;
                    } else {
                        let [acc] = packed_dot_q32::<K, 1>(buf, job, c);
                        emit(acc, c, r, n, out);
                        c += 1;
                    }
                }
                r += n;
            }
            return;
        }
        prefetch_first_group(job, &rows, G);
        let mut r = rows.start;
        while r < rows.end {
            let n = G.min(rows.end - r);
            let ptrs = group_ptrs::<G>(job, r, n);
            // The first pass over the activation rows fetches the next group.
            let ahead = ahead_of(job, &rows, r, G);
            let mut c = 0;
            while c + C <= job.m {
                let acc = group_q32::<K, C>(
                    &ptrs,
                    &act_rows(job, c),
                    job.nb,
                    if c == 0 { ahead } else { 0 },
                );
                for (i, acc) in acc.into_iter().enumerate() {
                    emit(acc, c + i, r, n, out);
                }
                c += C;
            }
            while c < job.m {
                let [acc] = group_q32::<K, 1>(
                    &ptrs,
                    &act_rows(job, c),
                    job.nb,
                    if c == 0 { ahead } else { 0 },
                );
                emit(acc, c, r, n, out);
                c += 1;
            }
            r += n;
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
    /// Offset of the f16 `d`.
    const D: usize;
    /// Offset of the f16 `dmin` (if `HAS_MIN`).
    const DMIN: usize;
    /// The integer term that uses the activations' 16 `bsums` (`bs`): for Q4_K/Q5_K the
    /// mins' products `sum_j m_j * (bsums[2j] + bsums[2j+1])` (given the pair-summed `bs2`),
    /// for Q6_K the offset's `32 * sum_g sc_g * bsums[g]`.
    unsafe fn bsum_term(aux: __m256i, bs: __m256i, bs2: __m128i) -> __m256i;
    /// Scale groups per super-block (8 of 32 quants, or 16 of 16).
    const NSC: usize;
    /// 16-bit pairs of the term that uses the activations' `bsums`: the mins of Q4_K/Q5_K
    /// (4 pairs, against pair-summed bsums) or the scales of Q6_K (8 pairs).
    const NAUX: usize;
    /// k-groups (of 4 quants) whose `vpmaddubsw` products can be summed in 16 bits before
    /// they are scaled: the largest quant times 127 times 2 per product pair must stay below
    /// 2^15 for the whole run.
    const RUN: usize;
    /// The block's scales as i32 (`sc[..NSC]`) and the `NAUX` pairs, read plainly.
    unsafe fn row_scales(p: *const u8, sc: &mut [i32; 16], aux: &mut [u32; 8]);
}

/// `[lo as u16, hi as u16]` as one dword.
pub(super) fn pair16(lo: i32, hi: i32) -> u32 {
    (lo as u16 as u32) | (hi as u16 as u32) << 16
}

/// Q4_K/Q5_K scales and mins (the 12 bytes at `p`) for `row_scales`.
#[inline(always)]
pub(super) unsafe fn k4_row_scales(p: *const u8, sc: &mut [i32; 16], aux: &mut [u32; 8]) {
    // SAFETY: see the section comment.
    let s: [u8; 12] = unsafe { ptr::read_unaligned(p.cast()) };
    let mut m = [0i32; 8];
    for j in 0..8 {
        let (a, b) = crate::layout::scale_min_k4(j, &s);
        sc[j] = a as i32;
        m[j] = b as i32;
    }
    for k in 0..4 {
        aux[k] = pair16(m[2 * k], m[2 * k + 1]);
    }
}

/// Q6_K scales (the 16 signed bytes at `p`) for `row_scales`.
#[inline(always)]
pub(super) unsafe fn q6k_row_scales(p: *const u8, sc: &mut [i32; 16], aux: &mut [u32; 8]) {
    // SAFETY: see the section comment.
    let s: [i8; 16] = unsafe { ptr::read_unaligned(p.cast()) };
    for g in 0..16 {
        sc[g] = s[g] as i32;
    }
    for k in 0..8 {
        aux[k] = pair16(sc[2 * k], sc[2 * k + 1]);
    }
}

/// Q4_K/Q5_K 6-bit scales and mins (the 12 bytes at `p`; 16 are read) to the bytes
/// `[scales[0..8], mins[0..8]]`, in vector registers (ggml's `utmp` shuffle, lane-parallel).
#[inline(always)]
pub(super) unsafe fn k4_scales_mins(p: *const u8) -> __m128i {
    // SAFETY: see the section comment; the scales are followed by the block's quants.
    unsafe {
        // Dwords u0, u1, u2 of the scales. Lanes 0..4 of the result: scales 0-3, scales 4-7,
        // mins 0-3, mins 4-7:
        //   u0 & 0x3f, (u2 & 0x0f) | ((u0 >> 6) & 3) << 4, u1 & 0x3f, ((u2 >> 4) & 0x0f) | ((u1 >> 6) & 3) << 4.
        let u = load128(p);
        let a = _mm_shuffle_epi32::<0b10_01_10_00>(u); // [u0, u2, u1, u2]
        let b = _mm_shuffle_epi32::<0b01_01_00_00>(u); // [u0, u0, u1, u1]
        let a = _mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4));
        let a = _mm_and_si128(
            a,
            _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f),
        );
        let b = _mm_and_si128(
            _mm_srli_epi32(b, 2),
            _mm_setr_epi32(0, 0x30303030, 0, 0x30303030),
        );
        _mm_or_si128(a, b)
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
    const D: usize = 0;
    const DMIN: usize = q4_k::DMIN;
    const NSC: usize = 8;
    const NAUX: usize = 4;
    const RUN: usize = 8;
    #[inline(always)]
    unsafe fn row_scales(p: *const u8, sc: &mut [i32; 16], aux: &mut [u32; 8]) {
        // SAFETY: see the section comment.
        unsafe { k4_row_scales(p.add(q4_k::SCALES), sc, aux) }
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
    const D: usize = 0;
    const DMIN: usize = q5_k::DMIN;
    const NSC: usize = 8;
    const NAUX: usize = 4;
    const RUN: usize = 4;
    #[inline(always)]
    unsafe fn row_scales(p: *const u8, sc: &mut [i32; 16], aux: &mut [u32; 8]) {
        // SAFETY: see the section comment.
        unsafe { k4_row_scales(p.add(q5_k::SCALES), sc, aux) }
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
    const D: usize = q6_k::D;
    const DMIN: usize = 0;
    const NSC: usize = 16;
    const NAUX: usize = 8;
    const RUN: usize = 2;
    #[inline(always)]
    unsafe fn row_scales(p: *const u8, sc: &mut [i32; 16], aux: &mut [u32; 8]) {
        // SAFETY: see the section comment.
        unsafe { q6k_row_scales(p.add(q6_k::SCALES), sc, aux) }
    }
    #[inline(always)]
    unsafe fn bsum_term(aux: __m256i, bs: __m256i, _bs2: __m128i) -> __m256i {
        // SAFETY: see the section comment.
        unsafe { _mm256_slli_epi32(_mm256_madd_epi16(aux, bs), 5) }
    }
}

/// The dot products of 8 weight rows with `NC` activation rows, lane `r` for row `r`, in
/// the canonical order. Prefetches the bytes `ahead` of each block read (none when 0).
#[inline(always)]
unsafe fn group_k<K: KQuant, const NC: usize>(
    rows: &[*const u8; G],
    x: &[*const u8; NC],
    nb: usize,
    ahead: usize,
) -> [__m256; NC] {
    // SAFETY: see the section comment; `nb` blocks of each row are in bounds.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); NC];
        let mut q = [_mm256_setzero_si256(); 8];
        let mut sc = [_mm256_setzero_si256(); 8];
        let offs = row_offsets(rows);
        for b in 0..nb {
            let mut bs = [_mm256_setzero_si256(); NC];
            let mut bs2 = [_mm_setzero_si128(); NC];
            for c in 0..NC {
                let px = x[c].add(b * q8_k::BYTES);
                bs[c] = load256(px.add(q8_k::BSUMS));
                let lo = _mm256_castsi256_si128(bs[c]);
                bs2[c] = _mm_hadd_epi16(lo, _mm256_extracti128_si256(bs[c], 1));
            }
            let mut v = [[_mm256_setzero_si256(); G]; NC];
            let mut vm = [[_mm256_setzero_si256(); G]; NC];
            for r in 0..G {
                let p = rows[r].add(b * K::WB);
                if ahead != 0 {
                    prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead), K::WB);
                }
                let aux = K::unpack(p, &mut q, &mut sc);
                for c in 0..NC {
                    let y = x[c].add(b * q8_k::BYTES + q8_k::QS);
                    let mut sumi = _mm256_setzero_si256();
                    for k in 0..8 {
                        let p16 = _mm256_maddubs_epi16(q[k], load256(y.add(32 * k)));
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc[k], p16));
                    }
                    let t = K::bsum_term(aux, bs[c], bs2[c]);
                    if K::HAS_MIN {
                        v[c][r] = sumi;
                        vm[c][r] = t;
                    } else {
                        v[c][r] = _mm256_sub_epi32(sumi, t);
                    }
                }
            }
            let d = f16_lanes(rows[0], offs, b * K::WB + K::D, K::D);
            let dmin = if K::HAS_MIN {
                f16_lanes(rows[0], offs, b * K::WB + K::DMIN, K::DMIN)
            } else {
                _mm256_setzero_ps()
            };
            for c in 0..NC {
                let dy = _mm256_set1_ps(f32_at(x[c].add(b * q8_k::BYTES)));
                let s = _mm256_cvtepi32_ps(tree8(&v[c]));
                acc[c] = _mm256_fmadd_ps(s, _mm256_mul_ps(d, dy), acc[c]);
                if K::HAS_MIN {
                    let sm = _mm256_cvtepi32_ps(tree8(&vm[c]));
                    let neg = _mm256_xor_ps(_mm256_mul_ps(dmin, dy), _mm256_set1_ps(-0.0));
                    acc[c] = _mm256_fmadd_ps(sm, neg, acc[c]);
                }
            }
        }
        acc
    }
}

/// Rows `rows` of the job in groups of 8, against up to 4 activation rows at a time.
#[inline(always)]
unsafe fn range_k<K: KQuant>(job: &Job<'_>, rows: Range<usize>, pack: &mut Vec<u8>, out: Sink<'_>) {
    // SAFETY: see the section comment.
    unsafe {
        if job.m >= PACK_FROM_M {
            let buf = pack_buf(pack, job.nb * k_packed(K::NSC, K::NAUX).bytes);
            let mut r = rows.start;
            while r < rows.end {
                let n = G.min(rows.end - r);
                pack_k::<K>(&group_ptrs::<G>(job, r, n), job.nb, buf);
                let mut c = 0;
                while c < job.m {
                    if c + C <= job.m {
                        let acc = packed_dot_k::<K, C>(buf, job, c);
                        for (i, acc) in acc.into_iter().enumerate() {
                            emit(acc, c + i, r, n, out);
                        }
                        c += C;
                    } else {
                        let [acc] = packed_dot_k::<K, 1>(buf, job, c);
                        emit(acc, c, r, n, out);
                        c += 1;
                    }
                }
                r += n;
            }
            return;
        }
        prefetch_first_group(job, &rows, G);
        let mut r = rows.start;
        while r < rows.end {
            let n = G.min(rows.end - r);
            let ptrs = group_ptrs::<G>(job, r, n);
            // The first pass over the activation rows fetches the next group.
            let ahead = ahead_of(job, &rows, r, G);
            let mut c = 0;
            while c + C <= job.m {
                let acc = group_k::<K, C>(
                    &ptrs,
                    &act_rows(job, c),
                    job.nb,
                    if c == 0 { ahead } else { 0 },
                );
                for (i, acc) in acc.into_iter().enumerate() {
                    emit(acc, c + i, r, n, out);
                }
                c += C;
            }
            while c < job.m {
                let [acc] = group_k::<K, 1>(
                    &ptrs,
                    &act_rows(job, c),
                    job.nb,
                    if c == 0 { ahead } else { 0 },
                );
                emit(acc, c, r, n, out);
                c += 1;
            }
            r += n;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prefill: 8 rows repacked so that a register holds 4 quants of each row (lane `r` for row
// `r`); one `vpmaddubsw` with 4 broadcast activation bytes then advances all 8 dot products.
// The products of a run of k-groups are summed in 16 bits (`KQuant::RUN`, `RUN_Q32`) before
// one `vpmaddwd` widens (and for K-quants scales) them.

/// k-groups of a 32-element type summed in 16 bits: 4 x 2 products of at most 31 * 127.
const RUN_Q32: usize = 4;

/// Transposes 8 rows of 8 dwords (`a[r]`) into `w[g]` = dword `g` of rows 0..8.
#[inline(always)]
unsafe fn transpose8x8(a: &[__m256i; 8]) -> [__m256i; 8] {
    // SAFETY: see the section comment.
    unsafe {
        let mut t = [_mm256_setzero_si256(); 8];
        for i in 0..4 {
            t[2 * i] = _mm256_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
        }
        // u[4h + k], per 128-bit lane l: dword k + 4l of rows 4h..4h + 4.
        let mut u = [_mm256_setzero_si256(); 8];
        for h in 0..2 {
            let (t0, t1, t2, t3) = (t[4 * h], t[4 * h + 1], t[4 * h + 2], t[4 * h + 3]);
            u[4 * h] = _mm256_unpacklo_epi64(t0, t2);
            u[4 * h + 1] = _mm256_unpackhi_epi64(t0, t2);
            u[4 * h + 2] = _mm256_unpacklo_epi64(t1, t3);
            u[4 * h + 3] = _mm256_unpackhi_epi64(t1, t3);
        }
        let mut w = [_mm256_setzero_si256(); 8];
        for k in 0..4 {
            w[k] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x20);
            w[4 + k] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x31);
        }
        w
    }
}

/// The f16 at `row + at` of 8 rows as f32, for packing (off the hot loop).
#[inline(always)]
unsafe fn f16_rows(rows: &[*const u8; G], at: usize) -> [f32; G] {
    // SAFETY: see the section comment.
    unsafe { core::array::from_fn(|r| f16(rows[r].add(at))) }
}

/// Bytes of one repacked block of 8 rows: 8 registers of quants (and for Q8_0 8 more of
/// their magnitudes), `d` (and `m`) as f32.
const fn packed_bytes_q32(signed: bool, has_min: bool) -> usize {
    let q = if signed { 16 * 32 } else { 8 * 32 };
    q + 32 + if has_min { 32 } else { 0 }
}

/// Repacks `nb` blocks of 8 rows into `buf` (32-byte aligned).
#[inline(always)]
unsafe fn pack_q32<K: Q32>(rows: &[*const u8; G], nb: usize, buf: *mut u8) {
    // SAFETY: see the section comment; `buf` holds `nb * packed_bytes_q32` bytes.
    unsafe {
        let pb = packed_bytes_q32(K::SIGNED, K::HAS_MIN);
        let qb = if K::SIGNED { 16 * 32 } else { 8 * 32 };
        for b in 0..nb {
            let dst = buf.add(b * pb);
            let mut a = [_mm256_setzero_si256(); G];
            for r in 0..G {
                a[r] = K::unpack(rows[r].add(b * K::WB));
            }
            for (g, w) in transpose8x8(&a).iter().enumerate() {
                _mm256_store_si256(dst.add(32 * g).cast(), *w);
                if K::SIGNED {
                    _mm256_store_si256(dst.add(256 + 32 * g).cast(), _mm256_abs_epi8(*w));
                }
            }
            let d = f16_rows(rows, b * K::WB);
            _mm256_store_ps(dst.add(qb).cast(), _mm256_loadu_ps(d.as_ptr()));
            if K::HAS_MIN {
                let m = f16_rows(rows, b * K::WB + 2);
                _mm256_store_ps(dst.add(qb + 32).cast(), _mm256_loadu_ps(m.as_ptr()));
            }
        }
    }
}

/// The dot products of a repacked group with activation rows `c0..c0 + NC`.
#[inline(always)]
unsafe fn packed_dot_q32<K: Q32, const NC: usize>(
    buf: *const u8,
    job: &Job<'_>,
    c0: usize,
) -> [__m256; NC] {
    // SAFETY: see the section comment; `act_info` has `m * nb` entries (checked by the
    // dispatcher for `m >= PACK_FROM_M`).
    unsafe {
        let pb = packed_bytes_q32(K::SIGNED, K::HAS_MIN);
        let qb = if K::SIGNED { 16 * 32 } else { 8 * 32 };
        let info = &job.act_info;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); NC];
        for b in 0..job.nb {
            let wp = buf.add(b * pb);
            let dw = _mm256_load_ps(wp.add(qb).cast());
            let mut s = [_mm256_setzero_si256(); NC];
            let mut s16 = [_mm256_setzero_si256(); NC];
            for g in 0..8 {
                let w = _mm256_load_si256(wp.add(32 * g).cast());
                let aw = if K::SIGNED {
                    _mm256_load_si256(wp.add(256 + 32 * g).cast())
                } else {
                    w
                };
                for c in 0..NC {
                    let y = job
                        .act
                        .as_ptr()
                        .add((c0 + c) * job.xrow + b * K::XB + K::XQS);
                    let yb = _mm256_set1_epi32(ptr::read_unaligned(y.add(4 * g).cast()));
                    if K::SIGNED {
                        // |w| * (y * sign(w)): each pair fits 16 bits, two would not.
                        let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(yb, w));
                        s[c] = _mm256_add_epi32(s[c], _mm256_madd_epi16(p, ones));
                    } else {
                        s16[c] = _mm256_add_epi16(s16[c], _mm256_maddubs_epi16(w, yb));
                        if g % RUN_Q32 == RUN_Q32 - 1 {
                            s[c] = _mm256_add_epi32(s[c], _mm256_madd_epi16(s16[c], ones));
                            s16[c] = _mm256_setzero_si256();
                        }
                    }
                }
            }
            for c in 0..NC {
                let i = (c0 + c) * job.nb + b;
                let mut si = s[c];
                if K::OFFSET != 0 {
                    let off = -(K::OFFSET as i32) * *info.sum.get_unchecked(i);
                    si = _mm256_add_epi32(si, _mm256_set1_epi32(off));
                }
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(*info.d.get_unchecked(i)));
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si), d, acc[c]);
                if K::HAS_MIN {
                    let mw = _mm256_load_ps(wp.add(qb + 32).cast());
                    let sy = _mm256_set1_ps(*info.s.get_unchecked(i));
                    acc[c] = _mm256_fmadd_ps(mw, sy, acc[c]);
                }
            }
        }
        acc
    }
}

/// A pack buffer of `len` bytes, 32-byte aligned.
#[inline(always)]
unsafe fn pack_buf(pack: &mut Vec<u8>, len: usize) -> *mut u8 {
    if pack.len() < len + 32 {
        pack.resize(len + 32, 0);
    }
    let p = pack.as_mut_ptr();
    // SAFETY: the offset is below 32, inside the buffer.
    unsafe { p.add(p.align_offset(32)) }
}

/// Byte offsets inside one repacked super-block of 8 rows: 64 registers of quants, the scale
/// groups as 16-bit pairs `(sc, sc)`, the `bsums` pairs, `d` and `dmin` as f32.
struct KPacked {
    sc: usize,
    aux: usize,
    d: usize,
    dmin: usize,
    bytes: usize,
}

const fn k_packed(nsc: usize, naux: usize) -> KPacked {
    let sc = 64 * 32;
    let aux = sc + 32 * nsc;
    let d = aux + 32 * naux;
    KPacked {
        sc,
        aux,
        d,
        dmin: d + 32,
        bytes: d + 64,
    }
}

/// Repacks `nb` super-blocks of 8 rows into `buf` (32-byte aligned).
#[inline(always)]
unsafe fn pack_k<K: KQuant>(rows: &[*const u8; G], nb: usize, buf: *mut u8) {
    // SAFETY: see the section comment; `buf` holds `nb * k_packed(..).bytes` bytes.
    unsafe {
        let lay = k_packed(K::NSC, K::NAUX);
        let mut qs = [[_mm256_setzero_si256(); 8]; G];
        let mut unused = [_mm256_setzero_si256(); 8];
        for b in 0..nb {
            let dst = buf.add(b * lay.bytes);
            for r in 0..G {
                let p = rows[r].add(b * K::WB);
                K::unpack(p, &mut qs[r], &mut unused);
                let mut sc = [0i32; 16];
                let mut aux = [0u32; 8];
                K::row_scales(p, &mut sc, &mut aux);
                for j in 0..K::NSC {
                    let pair = pair16(sc[j], sc[j]);
                    ptr::write(dst.add(lay.sc + 32 * j + 4 * r).cast::<u32>(), pair);
                }
                for k in 0..K::NAUX {
                    ptr::write(dst.add(lay.aux + 32 * k + 4 * r).cast::<u32>(), aux[k]);
                }
                ptr::write(dst.add(lay.d + 4 * r).cast::<f32>(), f16(p.add(K::D)));
                if K::HAS_MIN {
                    ptr::write(dst.add(lay.dmin + 4 * r).cast::<f32>(), f16(p.add(K::DMIN)));
                }
            }
            for k in 0..8 {
                let a: [__m256i; G] = core::array::from_fn(|r| qs[r][k]);
                for (g, w) in transpose8x8(&a).iter().enumerate() {
                    _mm256_store_si256(dst.add(32 * (8 * k + g)).cast(), *w);
                }
            }
        }
    }
}

/// The dot products of a repacked K-quant group with activation rows `c0..c0 + NC`.
#[inline(always)]
unsafe fn packed_dot_k<K: KQuant, const NC: usize>(
    buf: *const u8,
    job: &Job<'_>,
    c0: usize,
) -> [__m256; NC] {
    // SAFETY: see the section comment.
    unsafe {
        let lay = k_packed(K::NSC, K::NAUX);
        let kg = 64 / K::NSC;
        let mut acc = [_mm256_setzero_ps(); NC];
        for b in 0..job.nb {
            let sp = buf.add(b * lay.bytes);
            let ys: [*const u8; NC] = core::array::from_fn(|c| {
                job.act.as_ptr().add((c0 + c) * job.xrow + b * q8_k::BYTES)
            });
            let mut isum = [_mm256_setzero_si256(); NC];
            for j in 0..K::NSC {
                let scj = _mm256_load_si256(sp.add(lay.sc + 32 * j).cast());
                let mut s16 = [_mm256_setzero_si256(); NC];
                for g in 0..kg {
                    let t = j * kg + g;
                    let w = _mm256_load_si256(sp.add(32 * t).cast());
                    for c in 0..NC {
                        let y = ys[c].add(q8_k::QS + 4 * t);
                        let yb = _mm256_set1_epi32(ptr::read_unaligned(y.cast()));
                        s16[c] = _mm256_add_epi16(s16[c], _mm256_maddubs_epi16(w, yb));
                        if g % K::RUN == K::RUN - 1 {
                            isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(s16[c], scj));
                            s16[c] = _mm256_setzero_si256();
                        }
                    }
                }
            }
            let d = _mm256_load_ps(sp.add(lay.d).cast());
            for c in 0..NC {
                let dy = _mm256_set1_ps(f32_at(ys[c]));
                let bsums = ys[c].add(q8_k::BSUMS);
                let mut t = _mm256_setzero_si256();
                if K::HAS_MIN {
                    let bs = load256(bsums);
                    let lo = _mm256_castsi256_si128(bs);
                    let bs2 = _mm_hadd_epi16(lo, _mm256_extracti128_si256(bs, 1));
                    let mut pairs = [0i32; 4];
                    _mm_storeu_si128(pairs.as_mut_ptr().cast(), bs2);
                    for (k, &pair) in pairs.iter().enumerate() {
                        let aux = _mm256_load_si256(sp.add(lay.aux + 32 * k).cast());
                        let p = _mm256_madd_epi16(aux, _mm256_set1_epi32(pair));
                        t = _mm256_add_epi32(t, p);
                    }
                } else {
                    for k in 0..K::NAUX {
                        let aux = _mm256_load_si256(sp.add(lay.aux + 32 * k).cast());
                        let pair = ptr::read_unaligned(bsums.add(4 * k).cast::<i32>());
                        t = _mm256_add_epi32(t, _mm256_madd_epi16(aux, _mm256_set1_epi32(pair)));
                    }
                    isum[c] = _mm256_sub_epi32(isum[c], _mm256_slli_epi32(t, 5));
                }
                let s = _mm256_cvtepi32_ps(isum[c]);
                acc[c] = _mm256_fmadd_ps(s, _mm256_mul_ps(d, dy), acc[c]);
                if K::HAS_MIN {
                    let dmin = _mm256_load_ps(sp.add(lay.dmin).cast());
                    let neg = _mm256_xor_ps(_mm256_mul_ps(dmin, dy), _mm256_set1_ps(-0.0));
                    acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), neg, acc[c]);
                }
            }
        }
        acc
    }
}
