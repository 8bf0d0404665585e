//! NEON kernels: one weight row at a time against each activation row. A block's integer dot
//! product runs on 16-byte vectors (`vmull_s8` widening products, summed pairwise into 32-bit
//! lanes), then the scalar code's float operations follow in its order (one fused
//! multiply-add per block, a second for the mins), so every result is the scalar kernel's
//! bits. The dot-product instructions (`sdot`) would be faster where present, but their Rust
//! intrinsics are not stable on this toolchain. Q2_K and Q3_K run the scalar code.

use crate::dispatch::{Job, RangeFn, Sink};
use crate::layout::*;
use crate::QType;
use core::arch::aarch64::*;
use core::ops::Range;

/// The NEON kernel for `ty`: (function, rows per group, `m` from which it uses the
/// activation facts — never), or `None` where the scalar code runs.
pub fn kernel(ty: QType) -> Option<(RangeFn, usize, usize)> {
    let f: RangeFn = match ty {
        QType::Q4_0 => range::<Q4_0>,
        QType::Q4_1 => range::<Q4_1>,
        QType::Q5_0 => range::<Q5_0>,
        QType::Q5_1 => range::<Q5_1>,
        QType::Q8_0 => range::<Q8_0>,
        QType::Q4K => range::<Q4K>,
        QType::Q5K => range::<Q5K>,
        QType::Q6K => range::<Q6K>,
        _ => return None,
    };
    Some((f, 1, usize::MAX))
}

/// One weight type's dot product of `nb` blocks of `w` with `nb` activation blocks of `x`.
trait Dot {
    /// # Safety
    /// `w` and `x` hold `nb` whole blocks.
    unsafe fn dot(w: &[u8], x: &[u8], nb: usize) -> f32;
}

/// Rows per pass: their weights stay in cache while every activation row meets them.
const ROWS: usize = 16;

/// # Safety
/// The job's slices hold what it says (checked by [`crate::dispatch::Kernel::run`]).
unsafe fn range<K: Dot>(job: &Job<'_>, rows: Range<usize>, _pack: &mut Vec<u8>, out: Sink<'_>) {
    let mut buf = [0f32; ROWS];
    let mut r = rows.start;
    while r < rows.end {
        let n = ROWS.min(rows.end - r);
        for c in 0..job.m {
            let x = &job.act[c * job.xrow..];
            for (i, o) in buf[..n].iter_mut().enumerate() {
                let w = &job.w[(r + i) * job.wrow..(r + i + 1) * job.wrow];
                // SAFETY: a row holds `nb` blocks, and so does each activation row.
                *o = unsafe { K::dot(w, x, job.nb) };
            }
            out(c, r, &buf[..n]);
        }
        r += n;
    }
}

// SAFETY (all helpers): NEON is part of the AArch64 baseline; pointers point at the bytes the
// callers name (16 from each load).

/// `sum(a[i] * b[i])` over 16 lanes, in four 32-bit lanes.
#[inline(always)]
unsafe fn dot16(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    unsafe {
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
        vpadalq_s16(lo, vmull_high_s8(a, b))
    }
}

/// `sum(a[i] * b[i])` of 32 weights (two vectors) and the 32 activations at `x`.
#[inline(always)]
unsafe fn dot32(a0: int8x16_t, a1: int8x16_t, x: *const u8) -> i32 {
    unsafe {
        let x0 = vld1q_s8(x.cast());
        let x1 = vld1q_s8(x.add(16).cast());
        vaddvq_s32(vaddq_s32(dot16(a0, x0), dot16(a1, x1)))
    }
}

#[inline(always)]
unsafe fn load(p: *const u8) -> uint8x16_t {
    unsafe { vld1q_u8(p) }
}

#[inline(always)]
fn s8(v: uint8x16_t) -> int8x16_t {
    unsafe { vreinterpretq_s8_u8(v) }
}

/// Low and high nibbles of 16 bytes.
#[inline(always)]
unsafe fn nibbles(v: uint8x16_t) -> (uint8x16_t, uint8x16_t) {
    unsafe { (vandq_u8(v, vdupq_n_u8(0xF)), vshrq_n_u8::<4>(v)) }
}

/// 16 in lane `i` where bit `i` of `bits` is set, else 0.
#[inline(always)]
unsafe fn bit16(bits: u16) -> uint8x16_t {
    const LANE_BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    unsafe {
        let v = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
        vandq_u8(vtstq_u8(v, vld1q_u8(LANE_BIT.as_ptr())), vdupq_n_u8(16))
    }
}

/// 16 in lane `i` where byte `i` of `v` has a bit of `mask`, else 0.
#[inline(always)]
unsafe fn bit_of(v: uint8x16_t, mask: u8) -> uint8x16_t {
    unsafe { vandq_u8(vtstq_u8(v, vdupq_n_u8(mask)), vdupq_n_u8(16)) }
}

/// The block pairs of a 32-element type: weights `WB` bytes apart, activations `XB`.
macro_rules! blocks {
    ($w:expr, $x:expr, $nb:expr, $wb:expr, $xb:expr) => {
        $w.chunks_exact($wb).zip($x.chunks_exact($xb)).take($nb)
    };
}

struct Q4_0;
impl Dot for Q4_0 {
    unsafe fn dot(w: &[u8], x: &[u8], nb: usize) -> f32 {
        let mut sumf = 0f32;
        for (a, b) in blocks!(w, x, nb, q4_0::BYTES, q8_0::BYTES) {
            let sumi = unsafe {
                let (lo, hi) = nibbles(load(a.as_ptr().add(q4_0::QS)));
                let eight = vdupq_n_s8(8);
                let (lo, hi) = (vsubq_s8(s8(lo), eight), vsubq_s8(s8(hi), eight));
                dot32(lo, hi, b.as_ptr().add(q8_0::QS))
            };
            sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
        }
        sumf
    }
}

struct Q4_1;
impl Dot for Q4_1 {
    unsafe fn dot(w: &[u8], x: &[u8], nb: usize) -> f32 {
        let mut sumf = 0f32;
        for (a, b) in blocks!(w, x, nb, q4_1::BYTES, q8_1::BYTES) {
            let sumi = unsafe {
                let (lo, hi) = nibbles(load(a.as_ptr().add(q4_1::QS)));
                dot32(s8(lo), s8(hi), b.as_ptr().add(q8_1::QS))
            };
            sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
            sumf = f16_at(a, q4_1::M).mul_add(f16_at(b, q8_1::S), sumf);
        }
        sumf
    }
}

struct Q5_0;
impl Dot for Q5_0 {
    unsafe fn dot(w: &[u8], x: &[u8], nb: usize) -> f32 {
        let mut sumf = 0f32;
        for (a, b) in blocks!(w, x, nb, q5_0::BYTES, q8_0::BYTES) {
            let qh = u32_at(a, q5_0::QH);
            let sumi = unsafe {
                let (lo, hi) = nibbles(load(a.as_ptr().add(q5_0::QS)));
                // Bit j of qh is the fifth bit of element j.
                let lo = vorrq_u8(lo, bit16(qh as u16));
                let hi = vorrq_u8(hi, bit16((qh >> 16) as u16));
                let sixteen = vdupq_n_s8(16);
                dot32(
                    vsubq_s8(s8(lo), sixteen),
                    vsubq_s8(s8(hi), sixteen),
                    b.as_ptr().add(q8_0::QS),
                )
            };
            sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
        }
        sumf
    }
}

struct Q5_1;
impl Dot for Q5_1 {
    unsafe fn dot(w: &[u8], x: &[u8], nb: usize) -> f32 {
        let mut sumf = 0f32;
        for (a, b) in blocks!(w, x, nb, q5_1::BYTES, q8_1::BYTES) {
            let qh = u32_at(a, q5_1::QH);
            let sumi = unsafe {
                let (lo, hi) = nibbles(load(a.as_ptr().add(q5_1::QS)));
                let lo = vorrq_u8(lo, bit16(qh as u16));
                let hi = vorrq_u8(hi, bit16((qh >> 16) as u16));
                dot32(s8(lo), s8(hi), b.as_ptr().add(q8_1::QS))
            };
            sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
            sumf = f16_at(a, q5_1::M).mul_add(f16_at(b, q8_1::S), sumf);
        }
        sumf
    }
}

struct Q8_0;
impl Dot for Q8_0 {
    unsafe fn dot(w: &[u8], x: &[u8], nb: usize) -> f32 {
        let mut sumf = 0f32;
        for (a, b) in blocks!(w, x, nb, q8_0::BYTES, q8_0::BYTES) {
            let sumi = unsafe {
                let p = a.as_ptr().add(q8_0::QS);
                dot32(s8(load(p)), s8(load(p.add(16))), b.as_ptr().add(q8_0::QS))
            };
            sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
        }
        sumf
    }
}

/// `bsums[j]` of a Q8_K block.
fn bsum(b: &[u8], j: usize) -> i32 {
    i16_at(b, q8_k::BSUMS + 2 * j) as i32
}

/// Q4_K and Q5_K: 4 groups of 64 elements, the low nibbles of 32 bytes then the high ones,
/// each half with its own 6-bit scale and min; `high(j)` gives the fifth bits (Q5_K).
#[inline(always)]
unsafe fn dot_k4<const SCALES: usize, const QS: usize, const DMIN: usize>(
    w: &[u8],
    x: &[u8],
    nb: usize,
    wb: usize,
    high: impl Fn(&[u8], usize) -> Option<[uint8x16_t; 4]>,
) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w.chunks_exact(wb).zip(x.chunks_exact(q8_k::BYTES)).take(nb) {
        let scales = &a[SCALES..SCALES + 12];
        let (mut isum_all, mut summ) = (0i32, 0i32);
        for j in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * j, scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
            let (s1, s2) = unsafe {
                let q = a.as_ptr().add(QS + 32 * j);
                let (mut l0, mut h0) = nibbles(load(q));
                let (mut l1, mut h1) = nibbles(load(q.add(16)));
                if let Some([a0, a1, b0, b1]) = high(a, j) {
                    (l0, l1) = (vorrq_u8(l0, a0), vorrq_u8(l1, a1));
                    (h0, h1) = (vorrq_u8(h0, b0), vorrq_u8(h1, b1));
                }
                let y = b.as_ptr().add(q8_k::QS + 64 * j);
                (dot32(s8(l0), s8(l1), y), dot32(s8(h0), s8(h1), y.add(32)))
            };
            isum_all += sc1 as i32 * s1 + sc2 as i32 * s2;
            summ += m1 as i32 * (bsum(b, 4 * j) + bsum(b, 4 * j + 1));
            summ += m2 as i32 * (bsum(b, 4 * j + 2) + bsum(b, 4 * j + 3));
        }
        let dy = f32_at(b, 0);
        sumf = (isum_all as f32).mul_add(f16_at(a, 0) * dy, sumf);
        sumf = (summ as f32).mul_add(-(f16_at(a, DMIN) * dy), sumf);
    }
    sumf
}

struct Q4K;
impl Dot for Q4K {
    unsafe fn dot(w: &[u8], x: &[u8], nb: usize) -> f32 {
        unsafe {
            dot_k4::<{ q4_k::SCALES }, { q4_k::QS }, { q4_k::DMIN }>(
                w,
                x,
                nb,
                q4_k::BYTES,
                |_, _| None,
            )
        }
    }
}

struct Q5K;
impl Dot for Q5K {
    unsafe fn dot(w: &[u8], x: &[u8], nb: usize) -> f32 {
        let high = |a: &[u8], j: usize| {
            // Bit 2j of qh[l] is the fifth bit of low-nibble element l, bit 2j + 1 of the
            // high-nibble one.
            Some(unsafe {
                let h0 = load(a.as_ptr().add(q5_k::QH));
                let h1 = load(a.as_ptr().add(q5_k::QH + 16));
                let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                [
                    bit_of(h0, u1),
                    bit_of(h1, u1),
                    bit_of(h0, u2),
                    bit_of(h1, u2),
                ]
            })
        };
        unsafe {
            dot_k4::<{ q5_k::SCALES }, { q5_k::QS }, { q5_k::DMIN }>(w, x, nb, q5_k::BYTES, high)
        }
    }
}

struct Q6K;
impl Dot for Q6K {
    unsafe fn dot(w: &[u8], x: &[u8], nb: usize) -> f32 {
        let mut sumf = 0f32;
        for (a, b) in w
            .chunks_exact(q6_k::BYTES)
            .zip(x.chunks_exact(q8_k::BYTES))
            .take(nb)
        {
            let mut isum_all = 0i32;
            for n in 0..2 {
                for half in 0..2 {
                    // SAFETY: offsets inside the block (ql 128, qh 64 bytes).
                    let q: [int8x16_t; 4] = unsafe {
                        let ql0 = load(a.as_ptr().add(q6_k::QL + 64 * n + 16 * half));
                        let ql1 = load(a.as_ptr().add(q6_k::QL + 64 * n + 32 + 16 * half));
                        let qh = load(a.as_ptr().add(q6_k::QH + 32 * n + 16 * half));
                        let three = vdupq_n_u8(3);
                        let hi = |s: u8| {
                            let h = match s {
                                0 => qh,
                                2 => vshrq_n_u8::<2>(qh),
                                4 => vshrq_n_u8::<4>(qh),
                                _ => vshrq_n_u8::<6>(qh),
                            };
                            vshlq_n_u8::<4>(vandq_u8(h, three))
                        };
                        let (l0, h0) = nibbles(ql0);
                        let (l1, h1) = nibbles(ql1);
                        let m32 = vdupq_n_s8(32);
                        [
                            vsubq_s8(s8(vorrq_u8(l0, hi(0))), m32),
                            vsubq_s8(s8(vorrq_u8(l1, hi(2))), m32),
                            vsubq_s8(s8(vorrq_u8(h0, hi(4))), m32),
                            vsubq_s8(s8(vorrq_u8(h1, hi(6))), m32),
                        ]
                    };
                    for (k, qk) in q.into_iter().enumerate() {
                        // Elements 128n + 32k + 16 half .. + 16: scale group 8n + 2k + half.
                        let e = 128 * n + 32 * k + 16 * half;
                        let sc = a[q6_k::SCALES + e / 16] as i8 as i32;
                        let s = unsafe {
                            let y = vld1q_s8(b.as_ptr().add(q8_k::QS + e).cast());
                            vaddvq_s32(dot16(qk, y))
                        };
                        isum_all += sc * s;
                    }
                }
            }
            sumf = (isum_all as f32).mul_add(f16_at(a, q6_k::D) * f32_at(b, 0), sumf);
        }
        sumf
    }
}
