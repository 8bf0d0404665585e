//! AVX-512 (F, BW, VL, VNNI) kernels: 64 quants per register, 16 weight rows per group (one
//! per f32 lane).
//!
//! Decode (few activation rows): 32-element types take two blocks per register; their unsigned
//! quants meet the signed activations in one `vpdpbusd` whose accumulator starts at
//! `-offset * sum(y)`, and a transpose tree ([`tree16`]) turns 16 rows' partial sums into one
//! vector per block. K-quants multiply 64 quants by `vpmaddubsw` and fold in the 16-bit
//! sub-block scales with `vpdpwssd`; Q4_K/Q5_K registers hold two sub-blocks 64 elements apart
//! (the low and high nibbles of one 64-byte load), so the activations are gathered to match.
//! The 16 rows' f16 scales of a block come in with one `vpgatherdd`.
//!
//! Prefill (`m >= PACK_FROM_M`): each group of 16 rows is unpacked once and transposed so that
//! a register holds 4 quants of each of the 16 rows; one `vpdpbusd` with 4 broadcast activation
//! bytes then advances all 16 dot products, and the group is reused for every activation row.
//! Both paths do the same integer sums and the same float operations per lane, so they agree
//! bit for bit.

use super::avx2::{f16, f32_at, k4_row_scales, k4_scales_mins, load128, load256, q6k_row_scales};
use super::{ahead_of, group_ptrs, prefetch, prefetch_first_group, range_entry};
use crate::dispatch::{Job, RangeFn, Sink};
use crate::layout::{q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_1, q8_k};
use crate::QType;
use core::arch::x86_64::*;
use core::ops::Range;
use core::ptr;

/// The AVX-512 kernel for `ty`: (function, rows per group, `m` from which it uses
/// [`crate::dispatch::Job::act_info`]), or `None` where AVX2 is used.
pub fn kernel(ty: QType) -> Option<(RangeFn, usize, usize)> {
    let (f, info): (RangeFn, usize) = match ty {
        QType::Q4_0 => (range_q4_0, PACK_FROM_M),
        QType::Q4_1 => (range_q4_1, PACK_FROM_M),
        QType::Q5_0 => (range_q5_0, PACK_FROM_M),
        QType::Q5_1 => (range_q5_1, PACK_FROM_M),
        QType::Q8_0 => (range_q8_0, PACK_FROM_M),
        QType::Q4K => (range_q4_k, PACK_FROM_M),
        QType::Q5K => (range_q5_k, PACK_FROM_M),
        QType::Q6K => (range_q6_k, PACK_FROM_M),
        _ => return None,
    };
    Some((f, G, info))
}

/// Weight rows per group: one per f32 lane.
const G: usize = 16;

/// Activation rows from which weights are repacked (below, each row's blocks are unpacked
/// once per activation row, which costs less than the repacking).
const PACK_FROM_M: usize = 3;

macro_rules! entry {
    ($name:ident, $range:ident, $k:ty) => {
        range_entry!(
            "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
            $name,
            $range,
            $k
        );
    };
}
entry!(range_q4_0, range_q32, Q4_0);
entry!(range_q4_1, range_q32, Q4_1);
entry!(range_q5_0, range_q32, Q5_0);
entry!(range_q5_1, range_q32, Q5_1);
entry!(range_q8_0, range_q32, Q8_0);
entry!(range_q4_k, range_k, Q4K);
entry!(range_q5_k, range_k, Q5K);
entry!(range_q6_k, range_k, Q6K);

// ---------------------------------------------------------------------------------------------
// Helpers. SAFETY (all of them): called from the entry points above, which enable the
// features; pointer arguments point at enough readable bytes (the caller's contract).

#[inline(always)]
unsafe fn load512(p: *const u8) -> __m512i {
    // SAFETY: see the section comment.
    unsafe { _mm512_loadu_si512(p as *const __m512i) }
}

#[inline(always)]
unsafe fn u16_at(p: *const u8) -> u16 {
    // SAFETY: see the section comment.
    unsafe { ptr::read_unaligned(p as *const u16) }
}

/// 32 bytes at `p0` then 32 at `p1`.
#[inline(always)]
unsafe fn join256(p0: *const u8, p1: *const u8) -> __m512i {
    // SAFETY: see the section comment.
    unsafe { _mm512_inserti64x4(_mm512_castsi256_si512(load256(p0)), load256(p1), 1) }
}

/// 16 bytes of nibbles at `p0` and at `p1` to 64 bytes: the low then the high nibbles of each.
#[inline(always)]
unsafe fn nibbles2(p0: *const u8, p1: *const u8) -> __m512i {
    // SAFETY: see the section comment.
    unsafe {
        let a = _mm256_broadcastsi128_si256(load128(p0));
        let b = _mm256_broadcastsi128_si256(load128(p1));
        let v = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
        // Shifting a 64-bit lane by 4 moves each byte's high nibble down; the next byte's low
        // nibble lands above it and is masked off.
        let v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
        _mm512_and_si512(v, _mm512_set1_epi8(0xF))
    }
}

/// Adds 16 to the bytes whose bit is set in the two u32 at `p0` and `p1` (bit i of the first
/// is byte i, of the second byte 32 + i).
#[inline(always)]
unsafe fn add_high_bits(v: __m512i, p0: *const u8, p1: *const u8) -> __m512i {
    // SAFETY: see the section comment.
    unsafe {
        let h0 = ptr::read_unaligned(p0 as *const u32) as u64;
        let h1 = ptr::read_unaligned(p1 as *const u32) as u64;
        let k = _cvtu64_mask64(h0 | h1 << 32);
        _mm512_mask_add_epi8(v, k, v, _mm512_set1_epi8(16))
    }
}

// ---------------------------------------------------------------------------------------------
// 32-element types, two blocks at a time.

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
    /// What `unpack` adds to the signed quant (0 for the types with a min).
    const OFFSET: u8;
    /// The quants of the blocks at `p0` and `p1` as unsigned bytes, in element order.
    unsafe fn unpack(p0: *const u8, p1: *const u8) -> __m512i;
}

struct Q4_0;
impl Q32 for Q4_0 {
    const WB: usize = q4_0::BYTES;
    const XB: usize = q8_0::BYTES;
    const XQS: usize = q8_0::QS;
    const HAS_MIN: bool = false;
    const OFFSET: u8 = 8;
    #[inline(always)]
    unsafe fn unpack(p0: *const u8, p1: *const u8) -> __m512i {
        // SAFETY: see the section comment.
        unsafe { nibbles2(p0.add(q4_0::QS), p1.add(q4_0::QS)) }
    }
}

struct Q5_0;
impl Q32 for Q5_0 {
    const WB: usize = q5_0::BYTES;
    const XB: usize = q8_0::BYTES;
    const XQS: usize = q8_0::QS;
    const HAS_MIN: bool = false;
    const OFFSET: u8 = 16;
    #[inline(always)]
    unsafe fn unpack(p0: *const u8, p1: *const u8) -> __m512i {
        // SAFETY: see the section comment.
        unsafe {
            let v = nibbles2(p0.add(q5_0::QS), p1.add(q5_0::QS));
            add_high_bits(v, p0.add(q5_0::QH), p1.add(q5_0::QH))
        }
    }
}

struct Q8_0;
impl Q32 for Q8_0 {
    const WB: usize = q8_0::BYTES;
    const XB: usize = q8_0::BYTES;
    const XQS: usize = q8_0::QS;
    const HAS_MIN: bool = false;
    const OFFSET: u8 = 128;
    #[inline(always)]
    unsafe fn unpack(p0: *const u8, p1: *const u8) -> __m512i {
        // SAFETY: see the section comment.
        unsafe {
            let v = join256(p0.add(q8_0::QS), p1.add(q8_0::QS));
            // q + 128 as u8: flip the sign bit.
            _mm512_xor_si512(v, _mm512_set1_epi8(-128))
        }
    }
}

struct Q4_1;
impl Q32 for Q4_1 {
    const WB: usize = q4_1::BYTES;
    const XB: usize = q8_1::BYTES;
    const XQS: usize = q8_1::QS;
    const HAS_MIN: bool = true;
    const OFFSET: u8 = 0;
    #[inline(always)]
    unsafe fn unpack(p0: *const u8, p1: *const u8) -> __m512i {
        // SAFETY: see the section comment.
        unsafe { nibbles2(p0.add(q4_1::QS), p1.add(q4_1::QS)) }
    }
}

struct Q5_1;
impl Q32 for Q5_1 {
    const WB: usize = q5_1::BYTES;
    const XB: usize = q8_1::BYTES;
    const XQS: usize = q8_1::QS;
    const HAS_MIN: bool = true;
    const OFFSET: u8 = 0;
    #[inline(always)]
    unsafe fn unpack(p0: *const u8, p1: *const u8) -> __m512i {
        // SAFETY: see the section comment.
        unsafe {
            let v = nibbles2(p0.add(q5_1::QS), p1.add(q5_1::QS));
            add_high_bits(v, p0.add(q5_1::QH), p1.add(q5_1::QH))
        }
    }
}

/// Zeros standing in for the block after an odd last block (its lanes are dropped).
static ZERO: [u8; 64] = [0; 64];

/// Per-block sums of 16 rows: `v[r]` holds row `r`'s partial sums of two blocks (lanes 0..8
/// and 8..16); returns one vector per block with row `r` in lane `r`.
#[inline(always)]
unsafe fn tree16(v: &[__m512i; 16]) -> (__m512i, __m512i) {
    // SAFETY: see the section comment.
    unsafe {
        let mut u = [_mm512_setzero_si512(); 8];
        for i in 0..8 {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            u[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        }
        // w[i], per 128-bit chunk j: the sums over chunk j of rows 4i..4i + 4.
        let mut w = [_mm512_setzero_si512(); 4];
        for i in 0..4 {
            let (a, b) = (u[2 * i], u[2 * i + 1]);
            w[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
        }
        // Chunks 0 and 1 are block 0, chunks 2 and 3 block 1:
        // z = [rows 4i.. block 0, rows 4i.. block 1, rows 4i+4.. block 0, rows 4i+4.. block 1].
        let z = |a: __m512i, b: __m512i| {
            _mm512_add_epi32(
                _mm512_shuffle_i32x4::<0x88>(a, b),
                _mm512_shuffle_i32x4::<0xDD>(a, b),
            )
        };
        let (z01, z23) = (z(w[0], w[1]), z(w[2], w[3]));
        (
            _mm512_shuffle_i32x4::<0x88>(z01, z23),
            _mm512_shuffle_i32x4::<0xDD>(z01, z23),
        )
    }
}

/// 16 f16 as f32.
#[inline(always)]
unsafe fn f16x16(h: &[u16; 16]) -> __m512 {
    // SAFETY: see the section comment.
    unsafe { _mm512_cvtph_ps(load256(h.as_ptr().cast())) }
}

/// The f16 at `base + offs[r] + at` in lane `r`, as f32: one gather of the dwords that hold
/// them, starting at the f16 if it opens its block (`field == 0`) and ending at it otherwise,
/// so that no read leaves the block.
#[inline(always)]
unsafe fn f16_lanes(base: *const u8, offs: __m512i, at: usize, field: usize) -> __m512 {
    // SAFETY: see the section comment; a block has at least 4 bytes, and a field at
    // `field >= 2` has 2 bytes of its block before it.
    unsafe {
        let v = if field == 0 {
            _mm512_i32gather_epi32::<1>(offs, base.add(at).cast())
        } else {
            let v = _mm512_i32gather_epi32::<1>(offs, base.add(at - 2).cast());
            _mm512_srli_epi32(v, 16)
        };
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
    }
}

/// The byte offsets of `rows[r]` from `rows[0]` (rows of one matrix, so they fit in i32).
#[inline(always)]
unsafe fn row_offsets(rows: &[*const u8; G]) -> __m512i {
    let mut o = [0i32; G];
    for r in 0..G {
        o[r] = (rows[r] as isize - rows[0] as isize) as i32;
    }
    // SAFETY: see the section comment.
    unsafe { _mm512_loadu_si512(o.as_ptr().cast()) }
}

/// The dot products of 16 weight rows with one activation row, lane `r` for row `r`, in the
/// canonical order; two blocks at a time, unpacked in place. Prefetches the bytes `ahead`
/// of each block read (none when 0).
#[inline(always)]
unsafe fn group_q32<K: Q32>(
    rows: &[*const u8; G],
    x: *const u8,
    nb: usize,
    ahead: usize,
) -> __m512 {
    // SAFETY: see the section comment; `nb` blocks of each row are in bounds, and ZERO covers
    // what is read of a stand-in block.
    unsafe {
        let mut acc = _mm512_setzero_ps();
        let offs = row_offsets(rows);
        let mut b = 0;
        while b < nb {
            let two = b + 1 < nb;
            let px0 = x.add(b * K::XB);
            let px1 = if two { px0.add(K::XB) } else { ZERO.as_ptr() };
            let y = join256(px0.add(K::XQS), px1.add(K::XQS));
            let y0 = if K::OFFSET != 0 {
                // -OFFSET * (sums of 4 activations): the dot product's starting value.
                let off = _mm512_set1_epi8(K::OFFSET as i8);
                let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, y);
                _mm512_sub_epi32(_mm512_setzero_si512(), s)
            } else {
                _mm512_setzero_si512()
            };
            let mut v = [_mm512_setzero_si512(); G];
            for r in 0..G {
                let p0 = rows[r].add(b * K::WB);
                let p1 = if two { p0.add(K::WB) } else { ZERO.as_ptr() };
                if ahead != 0 {
                    prefetch::<_MM_HINT_T0>(p0.wrapping_add(ahead), 2 * K::WB);
                }
                v[r] = _mm512_dpbusd_epi32(y0, K::unpack(p0, p1), y);
            }
            let (t0, t1) = tree16(&v);
            for (h, (t, px)) in [(t0, px0), (t1, px1)].into_iter().enumerate() {
                if h == 1 && !two {
                    break;
                }
                let at = (b + h) * K::WB;
                let d = _mm512_mul_ps(f16_lanes(rows[0], offs, at, 0), _mm512_set1_ps(f16(px)));
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), d, acc);
                if K::HAS_MIN {
                    let m = f16_lanes(rows[0], offs, at + 2, 2);
                    acc = _mm512_fmadd_ps(m, _mm512_set1_ps(f16(px.add(2))), acc);
                }
            }
            b += 2;
        }
        acc
    }
}

/// `vpermt2d` indices of [`transpose16x8`]'s three stages.
struct TransposeIdx {
    s1: [[i32; 16]; 2],
    s2: [[i32; 16]; 2],
    s3: [[i32; 16]; 2],
}

static TRANSPOSE_IDX: TransposeIdx = {
    let mut t = TransposeIdx {
        s1: [[0; 16]; 2],
        s2: [[0; 16]; 2],
        s3: [[0; 16]; 2],
    };
    let mut l = 0;
    while l < 16 {
        let (g, k) = (l / 4, l % 4);
        // Stage 1: rows k of [row a, a+1 | a+2, a+3], group g (h = 0) or 4 + g (h = 1).
        let mut h = 0;
        while h < 2 {
            t.s1[h][l] = (4 * h + g + 8 * (k % 2) + 16 * (k / 2)) as i32;
            h += 1;
        }
        // Stage 2: lane 8t' + k' (k' < 8 rows), local group 2e + t'.
        let (tt, kk) = (l / 8, l % 8);
        let mut e = 0;
        while e < 2 {
            let src = 4 * (2 * e + tt) + kk % 4;
            t.s2[e][l] = (src + 16 * (kk / 4)) as i32;
            e += 1;
        }
        // Stage 3: lane k'' (16 rows), group t'.
        let mut tt = 0;
        while tt < 2 {
            t.s3[tt][l] = (8 * tt + l % 8 + 16 * (l / 8)) as i32;
            tt += 1;
        }
        l += 1;
    }
    t
};

/// Transposes 16 rows x 8 dwords, given as `z[i] = [row 2i, row 2i + 1]`, into `w[g]` =
/// dword `g` of rows 0..16.
#[inline(always)]
unsafe fn transpose16x8(z: &[__m512i; 8]) -> [__m512i; 8] {
    // SAFETY: see the section comment.
    unsafe {
        let idx = |a: &[i32; 16]| _mm512_loadu_si512(a.as_ptr().cast());
        let i1 = [idx(&TRANSPOSE_IDX.s1[0]), idx(&TRANSPOSE_IDX.s1[1])];
        let i2 = [idx(&TRANSPOSE_IDX.s2[0]), idx(&TRANSPOSE_IDX.s2[1])];
        let i3 = [idx(&TRANSPOSE_IDX.s3[0]), idx(&TRANSPOSE_IDX.s3[1])];
        // p[j][h]: rows 4j..4j + 4, groups 4h..4h + 4, as [group][row].
        let mut p = [[_mm512_setzero_si512(); 2]; 4];
        for j in 0..4 {
            for h in 0..2 {
                p[j][h] = _mm512_permutex2var_epi32(z[2 * j], i1[h], z[2 * j + 1]);
            }
        }
        // q[jj][h][e]: rows 8jj..8jj + 8, groups 4h + 2e, 4h + 2e + 1.
        let mut q = [[[_mm512_setzero_si512(); 2]; 2]; 2];
        for jj in 0..2 {
            for h in 0..2 {
                for e in 0..2 {
                    q[jj][h][e] = _mm512_permutex2var_epi32(p[2 * jj][h], i2[e], p[2 * jj + 1][h]);
                }
            }
        }
        let mut w = [_mm512_setzero_si512(); 8];
        for h in 0..2 {
            for e in 0..2 {
                for t in 0..2 {
                    w[4 * h + 2 * e + t] = _mm512_permutex2var_epi32(q[0][h][e], i3[t], q[1][h][e]);
                }
            }
        }
        w
    }
}

/// Bytes of one repacked block of 16 rows: 8 registers of quants, `d` (and `m`) as f32.
const fn packed_bytes(has_min: bool) -> usize {
    8 * 64 + 64 + if has_min { 64 } else { 0 }
}

/// Repacks `nb` blocks of 16 rows into `buf` (64-byte aligned).
#[inline(always)]
unsafe fn pack_q32<K: Q32>(rows: &[*const u8; G], nb: usize, buf: *mut u8) {
    // SAFETY: see the section comment; `buf` holds `nb * packed_bytes` bytes.
    unsafe {
        let pb = packed_bytes(K::HAS_MIN);
        for b in 0..nb {
            let mut z = [_mm512_setzero_si512(); 8];
            for (i, z) in z.iter_mut().enumerate() {
                *z = K::unpack(rows[2 * i].add(b * K::WB), rows[2 * i + 1].add(b * K::WB));
            }
            let w = transpose16x8(&z);
            let dst = buf.add(b * pb);
            for (g, w) in w.iter().enumerate() {
                _mm512_store_si512(dst.add(64 * g).cast(), *w);
            }
            let mut dw = [0u16; G];
            let mut mw = [0u16; G];
            for r in 0..G {
                dw[r] = u16_at(rows[r].add(b * K::WB));
                if K::HAS_MIN {
                    mw[r] = u16_at(rows[r].add(b * K::WB + 2));
                }
            }
            _mm512_store_ps(dst.add(512).cast(), f16x16(&dw));
            if K::HAS_MIN {
                _mm512_store_ps(dst.add(576).cast(), f16x16(&mw));
            }
        }
    }
}

/// The dot products of a repacked group with activation rows `c0..c0 + C`.
#[inline(always)]
unsafe fn packed_dot_q32<K: Q32, const C: usize>(
    buf: *const u8,
    job: &Job<'_>,
    c0: usize,
) -> [__m512; C] {
    // SAFETY: see the section comment; `act_info` has `m * nb` entries (checked by the
    // dispatcher for `m >= PACK_FROM_M`).
    unsafe {
        let pb = packed_bytes(K::HAS_MIN);
        let info = &job.act_info;
        let mut acc = [_mm512_setzero_ps(); C];
        for b in 0..job.nb {
            let wp = buf.add(b * pb);
            let mut w = [_mm512_setzero_si512(); 8];
            for (g, w) in w.iter_mut().enumerate() {
                *w = _mm512_load_si512(wp.add(64 * g).cast());
            }
            let dw = _mm512_load_ps(wp.add(512).cast());
            for c in 0..C {
                let i = (c0 + c) * job.nb + b;
                let y = job
                    .act
                    .as_ptr()
                    .add((c0 + c) * job.xrow + b * K::XB + K::XQS);
                let yb = |g: usize| _mm512_set1_epi32(ptr::read_unaligned(y.add(4 * g).cast()));
                let mut s0 = if K::OFFSET != 0 {
                    _mm512_set1_epi32(-(K::OFFSET as i32) * *info.sum.get_unchecked(i))
                } else {
                    _mm512_setzero_si512()
                };
                let mut s1 = _mm512_setzero_si512();
                for g in (0..8).step_by(2) {
                    s0 = _mm512_dpbusd_epi32(s0, w[g], yb(g));
                    s1 = _mm512_dpbusd_epi32(s1, w[g + 1], yb(g + 1));
                }
                let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(*info.d.get_unchecked(i)));
                acc[c] = _mm512_fmadd_ps(s, d, acc[c]);
                if K::HAS_MIN {
                    let mw = _mm512_load_ps(wp.add(576).cast());
                    acc[c] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*info.s.get_unchecked(i)), acc[c]);
                }
            }
        }
        acc
    }
}

/// Hands lanes `..n` of `acc` to `out` as the results of rows `r..` with activation row `c`.
#[inline(always)]
unsafe fn emit(
    acc: __m512,
    c: usize,
    r: usize,
    n: usize,
    out: &mut dyn FnMut(usize, usize, &[f32]),
) {
    // SAFETY: see the section comment.
    unsafe {
        let mut v = [0f32; G];
        _mm512_storeu_ps(v.as_mut_ptr(), acc);
        out(c, r, &v[..n]);
    }
}

/// Rows `rows` of the job in groups of 16 (a short last group repeats its last row).
#[inline(always)]
unsafe fn range_q32<K: Q32>(job: &Job<'_>, rows: Range<usize>, pack: &mut Vec<u8>, out: Sink<'_>) {
    // SAFETY: see the section comment.
    unsafe {
        let packed = job.m >= PACK_FROM_M;
        let buf = if packed {
            let len = job.nb * packed_bytes(K::HAS_MIN) + 64;
            if pack.len() < len {
                pack.resize(len, 0);
            }
            let p = pack.as_mut_ptr();
            p.add(p.align_offset(64))
        } else {
            ptr::null_mut()
        };
        if !packed {
            prefetch_first_group(job, &rows, G);
        }
        let mut r = rows.start;
        while r < rows.end {
            let n = G.min(rows.end - r);
            let ptrs = group_ptrs::<G>(job, r, n);
            if packed {
                pack_q32::<K>(&ptrs, job.nb, buf);
                let mut c = 0;
                while c + 4 <= job.m {
                    let acc = packed_dot_q32::<K, 4>(buf, job, c);
                    for (i, acc) in acc.into_iter().enumerate() {
                        emit(acc, c + i, r, n, out);
                    }
                    c += 4;
                }
                while c < job.m {
                    let [acc] = packed_dot_q32::<K, 1>(buf, job, c);
                    emit(acc, c, r, n, out);
                    c += 1;
                }
            } else {
                for c in 0..job.m {
                    // The first activation row's pass fetches the next group.
                    let ahead = if c == 0 {
                        ahead_of(job, &rows, r, G)
                    } else {
                        0
                    };
                    let acc =
                        group_q32::<K>(&ptrs, job.act.as_ptr().add(c * job.xrow), job.nb, ahead);
                    emit(acc, c, r, n, out);
                }
            }
            r += n;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants against Q8_K, 64 quants per register.

/// A K-quant weight type against Q8_K activations.
trait KQuant {
    /// Weight block bytes.
    const WB: usize;
    /// Whether the type has mins (`- dmin * m * sum(y)` per sub-block).
    const HAS_MIN: bool;
    /// Whether register `k` holds elements `64k..64k + 64` (else sub-blocks `a` and `a + 2`,
    /// see [`K4_SUBBLOCKS`]).
    const CONTIGUOUS: bool;
    /// The 256 quants as 4 registers of unsigned bytes, each register's 16-bit scales for
    /// `vpdpwssd`, and what `bsum_term` needs (the 8 mins, or the 16 scales, as i16).
    unsafe fn unpack(p: *const u8, q: &mut [__m512i; 4], sc: &mut [__m512i; 4]) -> __m256i;
    /// Offset of the f16 `d`.
    const D: usize;
    /// Offset of the f16 `dmin` (if `HAS_MIN`).
    const DMIN: usize;
    /// Scale groups per super-block (8 of 32 quants, or 16 of 16).
    const NSC: usize;
    /// 16-bit pairs of the term that uses the activations' `bsums`: the mins of Q4_K/Q5_K
    /// (4 pairs, against pair-summed bsums) or the scales of Q6_K (8 pairs).
    const NAUX: usize;
    /// The block's scales as i32 (`sc[..NSC]`) and the `NAUX` pairs, read plainly.
    unsafe fn row_scales(p: *const u8, sc: &mut [i32; 16], aux: &mut [u32; 8]);
}

/// The sub-blocks of 32 in the low and high halves of Q4_K/Q5_K register `k`.
const K4_SUBBLOCKS: [(usize, usize); 4] = [(0, 2), (1, 3), (4, 6), (5, 7)];

/// `a` in 16-bit lanes 0..16 and `b` in 16..32 (the two 256-bit halves).
#[inline(always)]
unsafe fn halves(a: i16, b: i16) -> __m512i {
    // SAFETY: see the section comment.
    unsafe { _mm512_mask_blend_epi16(0xFFFF_0000, _mm512_set1_epi16(a), _mm512_set1_epi16(b)) }
}

/// `vpermw` indices that spread 16-bit scales `4k..4k + 4` over 8 lanes each.
#[inline(always)]
unsafe fn spread4(k: i16) -> __m512i {
    // SAFETY: see the section comment.
    unsafe {
        let lane = _mm512_setr_epi32(
            0,
            0,
            0,
            0,
            0x0001_0001,
            0x0001_0001,
            0x0001_0001,
            0x0001_0001,
            0x0002_0002,
            0x0002_0002,
            0x0002_0002,
            0x0002_0002,
            0x0003_0003,
            0x0003_0003,
            0x0003_0003,
            0x0003_0003,
        );
        _mm512_add_epi16(lane, _mm512_set1_epi16(4 * k))
    }
}

/// `vpshufb` masks that spread bytes `a` and `b` (of each 128-bit lane) as 16-bit words over
/// the low and high 256-bit halves of a register, for [`K4_SUBBLOCKS`].
static K4_SPREAD: [[u8; 64]; 4] = {
    let mut m = [[0u8; 64]; 4];
    let mut k = 0;
    while k < 4 {
        let (a, b) = K4_SUBBLOCKS[k];
        let mut i = 0;
        while i < 32 {
            // Word i: its low byte is scale a (or b), its high byte zero (0x80 clears).
            m[k][2 * i] = if i < 16 { a as u8 } else { b as u8 };
            m[k][2 * i + 1] = 0x80;
            i += 1;
        }
        k += 1;
    }
    m
};

/// The scales of registers 0..4 of a Q4_K/Q5_K block, and its 8 mins as i16 (in a 256-bit
/// register's low half, for [`mins_term`]).
#[inline(always)]
unsafe fn k4_scale_regs(sm: __m128i, sc: &mut [__m512i; 4]) -> __m256i {
    // SAFETY: see the section comment.
    unsafe {
        let all = _mm512_broadcast_i32x4(sm);
        for (k, sc) in sc.iter_mut().enumerate() {
            *sc = _mm512_shuffle_epi8(all, _mm512_loadu_si512(K4_SPREAD[k].as_ptr().cast()));
        }
        _mm256_zextsi128_si256(_mm_cvtepu8_epi16(_mm_unpackhi_epi64(sm, sm)))
    }
}

struct Q4K;
impl KQuant for Q4K {
    const WB: usize = q4_k::BYTES;
    const HAS_MIN: bool = true;
    const CONTIGUOUS: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, q: &mut [__m512i; 4], sc: &mut [__m512i; 4]) -> __m256i {
        // SAFETY: see the section comment.
        unsafe {
            let m4 = _mm512_set1_epi8(0xF);
            for h in 0..2 {
                let bits = load512(p.add(q4_k::QS + 64 * h));
                q[2 * h] = _mm512_and_si512(bits, m4);
                q[2 * h + 1] = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4);
            }
            k4_scale_regs(k4_scales_mins(p.add(q4_k::SCALES)), sc)
        }
    }
    const D: usize = 0;
    const DMIN: usize = q4_k::DMIN;
    const NSC: usize = 8;
    const NAUX: usize = 4;
    #[inline(always)]
    unsafe fn row_scales(p: *const u8, sc: &mut [i32; 16], aux: &mut [u32; 8]) {
        // SAFETY: see the section comment.
        unsafe { k4_row_scales(p.add(q4_k::SCALES), sc, aux) }
    }
}

struct Q5K;
impl KQuant for Q5K {
    const WB: usize = q5_k::BYTES;
    const HAS_MIN: bool = true;
    const CONTIGUOUS: bool = false;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, q: &mut [__m512i; 4], sc: &mut [__m512i; 4]) -> __m256i {
        // SAFETY: see the section comment.
        unsafe {
            let m4 = _mm512_set1_epi8(0xF);
            let m16 = _mm512_set1_epi8(0x10);
            // qh bit j of byte l belongs to sub-block j: register k needs bits a and b of
            // K4_SUBBLOCKS[k] at bit 4 of its low and high halves. Bits shifted in from the
            // neighbouring byte of a 16-bit lane never reach bit 4 (shifts are at most 4).
            let qh = _mm512_broadcast_i64x4(load256(p.add(q5_k::QH)));
            let h = [
                _mm512_sllv_epi16(qh, halves(4, 2)),
                _mm512_sllv_epi16(qh, halves(3, 1)),
                _mm512_srlv_epi16(qh, halves(0, 2)),
                _mm512_srlv_epi16(qh, halves(1, 3)),
            ];
            for half in 0..2 {
                let bits = load512(p.add(q5_k::QS + 64 * half));
                let lo = _mm512_and_si512(bits, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4);
                q[2 * half] = _mm512_or_si512(lo, _mm512_and_si512(h[2 * half], m16));
                q[2 * half + 1] = _mm512_or_si512(hi, _mm512_and_si512(h[2 * half + 1], m16));
            }
            k4_scale_regs(k4_scales_mins(p.add(q5_k::SCALES)), sc)
        }
    }
    const D: usize = 0;
    const DMIN: usize = q5_k::DMIN;
    const NSC: usize = 8;
    const NAUX: usize = 4;
    #[inline(always)]
    unsafe fn row_scales(p: *const u8, sc: &mut [i32; 16], aux: &mut [u32; 8]) {
        // SAFETY: see the section comment.
        unsafe { k4_row_scales(p.add(q5_k::SCALES), sc, aux) }
    }
}

struct Q6K;
impl KQuant for Q6K {
    const WB: usize = q6_k::BYTES;
    const HAS_MIN: bool = false;
    const CONTIGUOUS: bool = true;
    #[inline(always)]
    unsafe fn unpack(p: *const u8, q: &mut [__m512i; 4], sc: &mut [__m512i; 4]) -> __m256i {
        // SAFETY: see the section comment.
        unsafe {
            let m4 = _mm512_set1_epi8(0xF);
            let m30 = _mm512_set1_epi8(0x30);
            for n in 0..2 {
                // 64 bytes of ql: the low nibbles are elements 0..64 of this half, the high
                // nibbles 64..128; their 2 high bits sit in qh (32 bytes) at bits 0-1 and 2-3
                // (low nibbles, first and second 32), 4-5 and 6-7 (high nibbles).
                let l = load512(p.add(q6_k::QL + 64 * n));
                let qh = _mm512_broadcast_i64x4(load256(p.add(q6_k::QH + 32 * n)));
                let h_lo = _mm512_and_si512(_mm512_sllv_epi16(qh, halves(4, 2)), m30);
                let h_hi = _mm512_and_si512(_mm512_srlv_epi16(qh, halves(0, 2)), m30);
                q[2 * n] = _mm512_or_si512(_mm512_and_si512(l, m4), h_lo);
                q[2 * n + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), h_hi);
            }
            let s16 = _mm256_cvtepi8_epi16(load128(p.add(q6_k::SCALES)));
            let s = _mm512_castsi256_si512(s16);
            for (k, sc) in sc.iter_mut().enumerate() {
                *sc = _mm512_permutexvar_epi16(spread4(k as i16), s);
            }
            s16
        }
    }
    const D: usize = q6_k::D;
    const DMIN: usize = 0;
    const NSC: usize = 16;
    const NAUX: usize = 8;
    #[inline(always)]
    unsafe fn row_scales(p: *const u8, sc: &mut [i32; 16], aux: &mut [u32; 8]) {
        // SAFETY: see the section comment.
        unsafe { q6k_row_scales(p.add(q6_k::SCALES), sc, aux) }
    }
}

/// The dot products of 16 weight rows with one activation row, lane `r` for row `r`, in the
/// canonical order.
#[inline(always)]
unsafe fn group_k<K: KQuant>(
    rows: &[*const u8; G],
    x: *const u8,
    nb: usize,
    ahead: usize,
) -> __m512 {
    // SAFETY: see the section comment; `nb` blocks of each row are in bounds.
    unsafe {
        let mut acc = _mm512_setzero_ps();
        let mut q = [_mm512_setzero_si512(); 4];
        let mut sc = [_mm512_setzero_si512(); 4];
        let offs = row_offsets(rows);
        for b in 0..nb {
            let px = x.add(b * q8_k::BYTES);
            let dy = _mm512_set1_ps(f32_at(px));
            let bs = load256(px.add(q8_k::BSUMS));
            let bs2 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            let qs = px.add(q8_k::QS);
            let mut y = [_mm512_setzero_si512(); 4];
            for (k, y) in y.iter_mut().enumerate() {
                *y = if K::CONTIGUOUS {
                    load512(qs.add(64 * k))
                } else {
                    let (a, b) = K4_SUBBLOCKS[k];
                    join256(qs.add(32 * a), qs.add(32 * b))
                };
            }
            let mut v = [_mm512_setzero_si512(); G];
            let mut vm = [_mm512_setzero_si512(); G];
            for r in 0..G {
                let p = rows[r].add(b * K::WB);
                if ahead != 0 {
                    prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead), K::WB);
                }
                let aux = K::unpack(p, &mut q, &mut sc);
                let mut sumi = _mm512_setzero_si512();
                for k in 0..4 {
                    let p16 = _mm512_maddubs_epi16(q[k], y[k]);
                    sumi = _mm512_dpwssd_epi32(sumi, p16, sc[k]);
                }
                if K::HAS_MIN {
                    v[r] = sumi;
                    // sum_j m_j * (bsums[2j] + bsums[2j+1]) in 4 lanes.
                    let t = _mm_madd_epi16(_mm256_castsi256_si128(aux), bs2);
                    vm[r] = _mm512_zextsi128_si512(t);
                } else {
                    // The -32 offset: 32 * sum_g sc_g * bsums[g], in 8 lanes.
                    let t = _mm256_slli_epi32(_mm256_madd_epi16(aux, bs), 5);
                    v[r] = _mm512_sub_epi32(sumi, _mm512_zextsi256_si512(t));
                }
            }
            let (t0, t1) = tree16(&v);
            let s = _mm512_cvtepi32_ps(_mm512_add_epi32(t0, t1));
            let at = b * K::WB;
            let d = f16_lanes(rows[0], offs, at + K::D, K::D);
            acc = _mm512_fmadd_ps(s, _mm512_mul_ps(d, dy), acc);
            if K::HAS_MIN {
                let (m0, m1) = tree16(&vm);
                let sm = _mm512_cvtepi32_ps(_mm512_add_epi32(m0, m1));
                let dm = _mm512_mul_ps(f16_lanes(rows[0], offs, at + K::DMIN, K::DMIN), dy);
                let neg = _mm512_xor_ps(dm, _mm512_set1_ps(-0.0));
                acc = _mm512_fmadd_ps(sm, neg, acc);
            }
        }
        acc
    }
}

/// Byte offsets inside one repacked super-block of 16 rows: 64 registers of quants (4 of each
/// row per register, in element order), the scale groups as i32, the `bsums` pairs, `d` and
/// `dmin` as f32.
struct KPacked {
    sc: usize,
    aux: usize,
    d: usize,
    dmin: usize,
    bytes: usize,
}

const fn k_packed(nsc: usize, naux: usize) -> KPacked {
    let sc = 64 * 64;
    let aux = sc + 64 * nsc;
    let d = aux + 64 * naux;
    KPacked {
        sc,
        aux,
        d,
        dmin: d + 64,
        bytes: d + 128,
    }
}

/// Where sub-block `j` (32 quants) of a Q4_K/Q5_K block sits after `unpack`: (register, half).
const K4_LOCATION: [(usize, usize); 8] = [
    (0, 0),
    (1, 0),
    (0, 1),
    (1, 1),
    (2, 0),
    (3, 0),
    (2, 1),
    (3, 1),
];

/// Repacks `nb` super-blocks of 16 rows into `buf` (64-byte aligned).
#[inline(always)]
unsafe fn pack_k<K: KQuant>(rows: &[*const u8; G], nb: usize, buf: *mut u8) {
    // SAFETY: see the section comment; `buf` holds `nb * k_packed(..).bytes` bytes.
    unsafe {
        let lay = k_packed(K::NSC, K::NAUX);
        let mut qs = [[_mm512_setzero_si512(); 4]; G];
        let mut unused = [_mm512_setzero_si512(); 4];
        for b in 0..nb {
            let dst = buf.add(b * lay.bytes);
            for r in 0..G {
                let p = rows[r].add(b * K::WB);
                K::unpack(p, &mut qs[r], &mut unused);
                let mut sc = [0i32; 16];
                let mut aux = [0u32; 8];
                K::row_scales(p, &mut sc, &mut aux);
                for j in 0..K::NSC {
                    ptr::write(dst.add(lay.sc + 64 * j + 4 * r).cast::<i32>(), sc[j]);
                }
                for k in 0..K::NAUX {
                    ptr::write(dst.add(lay.aux + 64 * k + 4 * r).cast::<u32>(), aux[k]);
                }
                ptr::write(dst.add(lay.d + 4 * r).cast::<f32>(), f16(p.add(K::D)));
                if K::HAS_MIN {
                    ptr::write(dst.add(lay.dmin + 4 * r).cast::<f32>(), f16(p.add(K::DMIN)));
                }
            }
            for j in 0..8 {
                let (k, h) = if K::CONTIGUOUS {
                    (j / 2, j % 2)
                } else {
                    K4_LOCATION[j]
                };
                let mut z = [_mm512_setzero_si512(); 8];
                for (i, z) in z.iter_mut().enumerate() {
                    let (a, b) = (qs[2 * i][k], qs[2 * i + 1][k]);
                    *z = if h == 0 {
                        _mm512_shuffle_i64x2::<0x44>(a, b)
                    } else {
                        _mm512_shuffle_i64x2::<0xEE>(a, b)
                    };
                }
                for (g, w) in transpose16x8(&z).iter().enumerate() {
                    _mm512_store_si512(dst.add(64 * (8 * j + g)).cast(), *w);
                }
            }
        }
    }
}

/// The dot products of a repacked group with activation rows `c0..c0 + C`.
#[inline(always)]
unsafe fn packed_dot_k<K: KQuant, const C: usize>(
    buf: *const u8,
    job: &Job<'_>,
    c0: usize,
) -> [__m512; C] {
    // SAFETY: see the section comment.
    unsafe {
        let lay = k_packed(K::NSC, K::NAUX);
        let kg = 64 / K::NSC;
        let mut acc = [_mm512_setzero_ps(); C];
        for b in 0..job.nb {
            let sp = buf.add(b * lay.bytes);
            let mut ys = [ptr::null(); C];
            for (c, y) in ys.iter_mut().enumerate() {
                *y = job.act.as_ptr().add((c0 + c) * job.xrow + b * q8_k::BYTES);
            }
            let yb = |c: usize, t: usize| -> __m512i {
                _mm512_set1_epi32(ptr::read_unaligned(ys[c].add(q8_k::QS + 4 * t).cast()))
            };
            let mut isum = [_mm512_setzero_si512(); C];
            for j in 0..K::NSC {
                let mut s = [[_mm512_setzero_si512(); 2]; C];
                for g in 0..kg {
                    let t = j * kg + g;
                    let w = _mm512_load_si512(sp.add(64 * t).cast());
                    for c in 0..C {
                        s[c][g % 2] = _mm512_dpbusd_epi32(s[c][g % 2], w, yb(c, t));
                    }
                }
                let scj = _mm512_load_si512(sp.add(lay.sc + 64 * j).cast());
                for c in 0..C {
                    let sj = _mm512_add_epi32(s[c][0], s[c][1]);
                    isum[c] = _mm512_add_epi32(isum[c], _mm512_mullo_epi32(sj, scj));
                }
            }
            let d = _mm512_load_ps(sp.add(lay.d).cast());
            for c in 0..C {
                let dy = _mm512_set1_ps(f32_at(ys[c]));
                let bsums = ys[c].add(q8_k::BSUMS);
                let mut t = _mm512_setzero_si512();
                if K::HAS_MIN {
                    // Pairs of pair-summed bsums against the mins' pairs.
                    let bs = load256(bsums);
                    let lo = _mm256_castsi256_si128(bs);
                    let bs2 = _mm_hadd_epi16(lo, _mm256_extracti128_si256(bs, 1));
                    let mut pairs = [0i32; 4];
                    _mm_storeu_si128(pairs.as_mut_ptr().cast(), bs2);
                    for (k, &pair) in pairs.iter().enumerate() {
                        let aux = _mm512_load_si512(sp.add(lay.aux + 64 * k).cast());
                        t = _mm512_dpwssd_epi32(t, aux, _mm512_set1_epi32(pair));
                    }
                } else {
                    for k in 0..K::NAUX {
                        let aux = _mm512_load_si512(sp.add(lay.aux + 64 * k).cast());
                        let pair = ptr::read_unaligned(bsums.add(4 * k).cast::<i32>());
                        t = _mm512_dpwssd_epi32(t, aux, _mm512_set1_epi32(pair));
                    }
                    isum[c] = _mm512_sub_epi32(isum[c], _mm512_slli_epi32(t, 5));
                }
                let s = _mm512_cvtepi32_ps(isum[c]);
                acc[c] = _mm512_fmadd_ps(s, _mm512_mul_ps(d, dy), acc[c]);
                if K::HAS_MIN {
                    let dmin = _mm512_load_ps(sp.add(lay.dmin).cast());
                    let neg = _mm512_xor_ps(_mm512_mul_ps(dmin, dy), _mm512_set1_ps(-0.0));
                    acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), neg, acc[c]);
                }
            }
        }
        acc
    }
}

/// Rows `rows` of the job in groups of 16: repacked for `m >= PACK_FROM_M`, else one
/// activation row at a time.
#[inline(always)]
unsafe fn range_k<K: KQuant>(job: &Job<'_>, rows: Range<usize>, pack: &mut Vec<u8>, out: Sink<'_>) {
    // SAFETY: see the section comment.
    unsafe {
        let packed = job.m >= PACK_FROM_M;
        let buf = if packed {
            let len = job.nb * k_packed(K::NSC, K::NAUX).bytes + 64;
            if pack.len() < len {
                pack.resize(len, 0);
            }
            let p = pack.as_mut_ptr();
            p.add(p.align_offset(64))
        } else {
            ptr::null_mut()
        };
        if !packed {
            prefetch_first_group(job, &rows, G);
        }
        let mut r = rows.start;
        while r < rows.end {
            let n = G.min(rows.end - r);
            let ptrs = group_ptrs::<G>(job, r, n);
            if packed {
                pack_k::<K>(&ptrs, job.nb, buf);
                let mut c = 0;
                while c + 4 <= job.m {
                    let acc = packed_dot_k::<K, 4>(buf, job, c);
                    for (i, acc) in acc.into_iter().enumerate() {
                        emit(acc, c + i, r, n, out);
                    }
                    c += 4;
                }
                while c < job.m {
                    let [acc] = packed_dot_k::<K, 1>(buf, job, c);
                    emit(acc, c, r, n, out);
                    c += 1;
                }
            } else {
                for c in 0..job.m {
                    // The first activation row's pass fetches the next group.
                    let ahead = if c == 0 {
                        ahead_of(job, &rows, r, G)
                    } else {
                        0
                    };
                    let acc =
                        group_k::<K>(&ptrs, job.act.as_ptr().add(c * job.xrow), job.nb, ahead);
                    emit(acc, c, r, n, out);
                }
            }
            r += n;
        }
    }
}
