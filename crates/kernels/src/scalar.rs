//! Portable reference kernels, transcribed from ggml's generic C (ggml-quants.c and
//! ggml-cpu/quants.c). The SIMD levels are tested against these.

use crate::layout::*;
use crate::{QType, VecDotType};

// ---------------------------------------------------------------------------------------------
// Dequantization (ggml's dequantize_row_*; the golden test checks these bit for bit).

/// Decodes `out.len()` elements of `ty` from `w`.
pub fn dequantize_row(ty: QType, w: &[u8], out: &mut [f32]) {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    for (x, y) in w.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        match ty {
            QType::Q4_0 => dequant_q4_0(x, y),
            QType::Q4_1 => dequant_q4_1(x, y),
            QType::Q5_0 => dequant_q5_0(x, y),
            QType::Q5_1 => dequant_q5_1(x, y),
            QType::Q8_0 => dequant_q8_0(x, y),
            QType::Q2K => dequant_q2_k(x, y),
            QType::Q3K => dequant_q3_k(x, y),
            QType::Q4K => dequant_q4_k(x, y),
            QType::Q5K => dequant_q5_k(x, y),
            QType::Q6K => dequant_q6_k(x, y),
            QType::IQ4NL => dequant_iq4_nl(x, y),
            QType::IQ4XS => dequant_iq4_xs(x, y),
            _ => crate::iquant::dequantize_block(ty, x, y),
        }
    }
}

/// The 16 values IQ4_NL's and IQ4_XS's nibbles index (the format's non-linear grid).
pub(crate) const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// IQ4_NL: `d` (f16), then 16 bytes: element `j` is the low nibble of byte `j`, element
/// `j + 16` its high nibble, each an index into [`IQ4_VALUES`].
fn dequant_iq4_nl(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for j in 0..16 {
        let q = x[2 + j];
        y[j] = d * IQ4_VALUES[(q & 0xF) as usize] as f32;
        y[j + 16] = d * IQ4_VALUES[(q >> 4) as usize] as f32;
    }
}

/// The 6-bit scale of sub-block `ib` (0..8) of an IQ4_XS super-block: 4 low bits from
/// `scales_l` (two per byte), 2 high bits from `scales_h` (a u16), stored offset by 32.
fn iq4_xs_scale(x: &[u8], ib: usize) -> i32 {
    let scales_h = u16::from_le_bytes([x[2], x[3]]) as i32;
    let low = (x[4 + ib / 2] >> (4 * (ib % 2))) as i32 & 0xF;
    let high = (scales_h >> (2 * ib)) & 3;
    (low | (high << 4)) - 32
}

/// IQ4_XS: `d` (f16), `scales_h` (u16), `scales_l` (4 bytes), then 8 sub-blocks of 32
/// elements, each 16 bytes laid out as IQ4_NL's.
fn dequant_iq4_xs(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for ib in 0..8 {
        let dl = d * iq4_xs_scale(x, ib) as f32;
        let qs = &x[8 + 16 * ib..8 + 16 * ib + 16];
        let y = &mut y[32 * ib..32 * ib + 32];
        for j in 0..16 {
            y[j] = dl * IQ4_VALUES[(qs[j] & 0xF) as usize] as f32;
            y[j + 16] = dl * IQ4_VALUES[(qs[j] >> 4) as usize] as f32;
        }
    }
}

fn dequant_q4_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for j in 0..16 {
        let q = x[q4_0::QS + j];
        y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

fn dequant_q4_1(x: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(x, 0), f16_at(x, q4_1::M));
    for j in 0..16 {
        let q = x[q4_1::QS + j];
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

fn dequant_q5_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let qh = u32_at(x, q5_0::QH);
    for j in 0..16 {
        let q = x[q5_0::QS + j];
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((q & 0xF) | xh0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) | xh1) as i32 - 16) as f32 * d;
    }
}

fn dequant_q5_1(x: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(x, 0), f16_at(x, q5_1::M));
    let qh = u32_at(x, q5_1::QH);
    for j in 0..16 {
        let q = x[q5_1::QS + j];
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((q & 0xF) | xh0) as f32 * d + m;
        y[j + 16] = ((q >> 4) | xh1) as f32 * d + m;
    }
}

fn dequant_q8_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for j in 0..32 {
        y[j] = x[q8_0::QS + j] as i8 as f32 * d;
    }
}

fn dequant_q2_k(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, q2_k::D);
    let min = f16_at(x, q2_k::DMIN);
    let scales = &x[q2_k::SCALES..q2_k::SCALES + 16];
    let mut out = 0;
    let mut is = 0;
    for n in 0..2 {
        let q = &x[q2_k::QS + 32 * n..q2_k::QS + 32 * n + 32];
        for shift in [0, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0xF) as f32;
                let ml = min * (sc >> 4) as f32;
                for l in 0..16 {
                    y[out] = dl * ((q[16 * half + l] >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

fn dequant_q3_k(x: &[u8], y: &mut [f32]) {
    let d_all = f16_at(x, q3_k::D);
    let scales = q3k_scales(&x[q3_k::SCALES..q3_k::SCALES + 12]);
    let hm = &x[q3_k::HMASK..q3_k::HMASK + 32];
    let mut m = 1u8;
    let mut out = 0;
    let mut is = 0;
    for n in 0..2 {
        let q = &x[q3_k::QS + 32 * n..q3_k::QS + 32 * n + 32];
        for shift in [0, 2, 4, 6] {
            for half in 0..2 {
                let dl = d_all * (scales[is] as i32 - 32) as f32;
                is += 1;
                for l in 16 * half..16 * half + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let high = if hm[l] & m != 0 { 0 } else { 4 };
                    y[out] = dl * (low - high) as f32;
                    out += 1;
                }
            }
            m <<= 1;
        }
    }
}

fn dequant_q4_k(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let min = f16_at(x, q4_k::DMIN);
    let scales = &x[q4_k::SCALES..q4_k::SCALES + 12];
    for j in 0..4 {
        let q = &x[q4_k::QS + 32 * j..q4_k::QS + 32 * j + 32];
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for l in 0..32 {
            y[64 * j + l] = d1 * (q[l] & 0xF) as f32 - m1;
            y[64 * j + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn dequant_q5_k(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    let min = f16_at(x, q5_k::DMIN);
    let scales = &x[q5_k::SCALES..q5_k::SCALES + 12];
    let qh = &x[q5_k::QH..q5_k::QH + 32];
    for j in 0..4 {
        let ql = &x[q5_k::QS + 32 * j..q5_k::QS + 32 * j + 32];
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * j + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
            y[64 * j + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn dequant_q6_k(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, q6_k::D);
    for n in 0..2 {
        let ql = &x[q6_k::QL + 64 * n..q6_k::QL + 64 * n + 64];
        let qh = &x[q6_k::QH + 32 * n..q6_k::QH + 32 * n + 32];
        let sc = &x[q6_k::SCALES + 8 * n..q6_k::SCALES + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Decodes one activation row (used by tests to build the plain reference).
pub fn dequantize_act(to: VecDotType, xq: &[u8], out: &mut [f32]) {
    for (b, y) in xq
        .chunks_exact(to.block_bytes())
        .zip(out.chunks_exact_mut(to.block_elems()))
    {
        let (d, qs) = match to {
            VecDotType::Q8_0 => (f16_at(b, 0), &b[q8_0::QS..]),
            VecDotType::Q8_1 => (f16_at(b, 0), &b[q8_1::QS..]),
            VecDotType::Q8K => (f32_at(b, 0), &b[q8_k::QS..q8_k::QS + QK_K]),
        };
        for (y, &q) in y.iter_mut().zip(qs) {
            *y = d * q as i8 as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Activation quantization (ggml's quantize_row_q8_0_ref, _q8_1_ref, _q8_K_ref).

/// Quantizes `x` into `out`, which holds exactly the blocks.
pub fn quantize_row(x: &[f32], to: VecDotType, out: &mut [u8]) {
    let (be, bb) = (to.block_elems(), to.block_bytes());
    for (x, y) in x.chunks_exact(be).zip(out.chunks_exact_mut(bb)) {
        match to {
            VecDotType::Q8_0 => quantize_q8_0(x, y),
            VecDotType::Q8_1 => quantize_q8_1(x, y),
            VecDotType::Q8K => quantize_q8_k(x, y),
        }
    }
}

pub fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16_bytes(d));
    for (q, v) in y[q8_0::QS..].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

pub fn quantize_q8_1(x: &[f32], y: &mut [u8]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f16_bytes(d));
    let mut sum = 0i32;
    for (q, v) in y[q8_1::QS..].iter_mut().zip(x) {
        let r = (v * id).round() as i8;
        sum += r as i32;
        *q = r as u8;
    }
    y[q8_1::S..q8_1::S + 2].copy_from_slice(&f16_bytes(sum as f32 * d));
}

/// ggml's `nearest_int`: round half to even via the 1.5 * 2^23 trick.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12582912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

pub fn quantize_q8_k(x: &[f32], y: &mut [u8]) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        // ggml leaves bsums untouched here; they are zero in a zeroed buffer.
        y.fill(0);
        return;
    }
    let iscale = -127.0 / max;
    for (q, &v) in y[q8_k::QS..q8_k::QS + QK_K].iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let s: i32 = (0..16).map(|i| y[q8_k::QS + 16 * j + i] as i8 as i32).sum();
        y[q8_k::BSUMS + 2 * j..q8_k::BSUMS + 2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
    }
    y[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Dot products over `nb` blocks: ggml's integer arithmetic per block, then the canonical float
// order that every kernel follows (see the crate docs): `sumf = fma(sumi as f32, dw * dy, sumf)`
// block after block, and for a second term (mins) a second FMA right after the first.

/// The dot product of `nb` weight blocks of `ty` with `nb` activation blocks.
pub fn vec_dot(ty: QType, w: &[u8], x: &[u8], nb: usize) -> f32 {
    match ty {
        QType::Q4_0 => dot_q4_0(w, x, nb),
        QType::Q4_1 => dot_q4_1(w, x, nb),
        QType::Q5_0 => dot_q5_0(w, x, nb),
        QType::Q5_1 => dot_q5_1(w, x, nb),
        QType::Q8_0 => dot_q8_0(w, x, nb),
        QType::Q2K => dot_q2_k(w, x, nb),
        QType::Q3K => dot_q3_k(w, x, nb),
        QType::Q4K => dot_q4_k(w, x, nb),
        QType::Q5K => dot_q5_k(w, x, nb),
        QType::Q6K => dot_q6_k(w, x, nb),
        QType::IQ4NL => dot_iq4_nl(w, x, nb),
        QType::IQ4XS => dot_iq4_xs(w, x, nb),
        _ => crate::iquant::vec_dot(ty, w, x, nb),
    }
}

fn dot_iq4_nl(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w.chunks_exact(18).zip(x.chunks_exact(q8_0::BYTES)).take(nb) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let q = a[2 + j];
            sumi += IQ4_VALUES[(q & 0xF) as usize] as i32 * b[q8_0::QS + j] as i8 as i32;
            sumi += IQ4_VALUES[(q >> 4) as usize] as i32 * b[q8_0::QS + j + 16] as i8 as i32;
        }
        sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
    }
    sumf
}

fn dot_iq4_xs(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(136)
        .zip(x.chunks_exact(q8_k::BYTES))
        .take(nb)
    {
        let mut isum_all = 0i32;
        for ib in 0..8 {
            let qs = &a[8 + 16 * ib..8 + 16 * ib + 16];
            let q8 = &b[q8_k::QS + 32 * ib..];
            let mut sumi = 0i32;
            for j in 0..16 {
                sumi += IQ4_VALUES[(qs[j] & 0xF) as usize] as i32 * q8[j] as i8 as i32;
                sumi += IQ4_VALUES[(qs[j] >> 4) as usize] as i32 * q8[j + 16] as i8 as i32;
            }
            isum_all += iq4_xs_scale(a, ib) * sumi;
        }
        sumf = (isum_all as f32).mul_add(f16_at(a, 0) * f32_at(b, 0), sumf);
    }
    sumf
}

fn dot_q4_0(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(q4_0::BYTES)
        .zip(x.chunks_exact(q8_0::BYTES))
        .take(nb)
    {
        let mut sumi = 0i32;
        for j in 0..16 {
            let q = a[q4_0::QS + j];
            sumi += ((q & 0xF) as i32 - 8) * b[q8_0::QS + j] as i8 as i32;
            sumi += ((q >> 4) as i32 - 8) * b[q8_0::QS + j + 16] as i8 as i32;
        }
        sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
    }
    sumf
}

fn dot_q4_1(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(q4_1::BYTES)
        .zip(x.chunks_exact(q8_1::BYTES))
        .take(nb)
    {
        let mut sumi = 0i32;
        for j in 0..16 {
            let q = a[q4_1::QS + j];
            sumi += (q & 0xF) as i32 * b[q8_1::QS + j] as i8 as i32;
            sumi += (q >> 4) as i32 * b[q8_1::QS + j + 16] as i8 as i32;
        }
        sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
        sumf = f16_at(a, q4_1::M).mul_add(f16_at(b, q8_1::S), sumf);
    }
    sumf
}

fn dot_q5_0(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(q5_0::BYTES)
        .zip(x.chunks_exact(q8_0::BYTES))
        .take(nb)
    {
        let qh = u32_at(a, q5_0::QH);
        let mut sumi = 0i32;
        for j in 0..16 {
            let q = a[q5_0::QS + j];
            let x0 = ((q & 0xF) as u32 | (((qh >> j) << 4) & 0x10)) as i32 - 16;
            let x1 = ((q >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32 - 16;
            sumi += x0 * b[q8_0::QS + j] as i8 as i32 + x1 * b[q8_0::QS + j + 16] as i8 as i32;
        }
        sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
    }
    sumf
}

fn dot_q5_1(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(q5_1::BYTES)
        .zip(x.chunks_exact(q8_1::BYTES))
        .take(nb)
    {
        let qh = u32_at(a, q5_1::QH);
        let mut sumi = 0i32;
        for j in 0..16 {
            let q = a[q5_1::QS + j];
            let x0 = ((q & 0xF) as u32 | (((qh >> j) << 4) & 0x10)) as i32;
            let x1 = ((q >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32;
            sumi += x0 * b[q8_1::QS + j] as i8 as i32 + x1 * b[q8_1::QS + j + 16] as i8 as i32;
        }
        sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
        sumf = f16_at(a, q5_1::M).mul_add(f16_at(b, q8_1::S), sumf);
    }
    sumf
}

fn dot_q8_0(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(q8_0::BYTES)
        .zip(x.chunks_exact(q8_0::BYTES))
        .take(nb)
    {
        let sumi: i32 = (0..32)
            .map(|j| a[q8_0::QS + j] as i8 as i32 * b[q8_0::QS + j] as i8 as i32)
            .sum();
        sumf = (sumi as f32).mul_add(f16_at(a, 0) * f16_at(b, 0), sumf);
    }
    sumf
}

/// `sum_j q8[j] * q[j]` over 16 or 32 activations.
#[inline(always)]
fn isum(q8: &[u8], q: impl Iterator<Item = i32>) -> i32 {
    q8.iter().zip(q).map(|(&y, q)| y as i8 as i32 * q).sum()
}

fn bsum(b: &[u8], j: usize) -> i32 {
    i16_at(b, q8_k::BSUMS + 2 * j) as i32
}

fn dot_q2_k(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(q2_k::BYTES)
        .zip(x.chunks_exact(q8_k::BYTES))
        .take(nb)
    {
        let sc = &a[q2_k::SCALES..q2_k::SCALES + 16];
        let summs: i32 = (0..16).map(|j| bsum(b, j) * (sc[j] >> 4) as i32).sum();
        let mut isum_all = 0i32;
        let mut is = 0;
        for n in 0..2 {
            let q2 = &a[q2_k::QS + 32 * n..q2_k::QS + 32 * n + 32];
            for (k, shift) in [0, 2, 4, 6].into_iter().enumerate() {
                let q8 = &b[q8_k::QS + 128 * n + 32 * k..];
                for half in 0..2 {
                    let d = (sc[is] & 0xF) as i32;
                    is += 1;
                    let qs = q2[16 * half..16 * half + 16]
                        .iter()
                        .map(|&q| ((q >> shift) & 3) as i32);
                    isum_all += d * isum(&q8[16 * half..16 * half + 16], qs);
                }
            }
        }
        sumf = (isum_all as f32).mul_add(f16_at(a, q2_k::D) * f32_at(b, 0), sumf);
        sumf = (summs as f32).mul_add(-(f16_at(a, q2_k::DMIN) * f32_at(b, 0)), sumf);
    }
    sumf
}

fn dot_q3_k(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(q3_k::BYTES)
        .zip(x.chunks_exact(q8_k::BYTES))
        .take(nb)
    {
        let scales = q3k_scales(&a[q3_k::SCALES..q3_k::SCALES + 12]);
        let hm = &a[q3_k::HMASK..q3_k::HMASK + 32];
        let mut isum_all = 0i32;
        let mut is = 0;
        for n in 0..2 {
            let q3 = &a[q3_k::QS + 32 * n..q3_k::QS + 32 * n + 32];
            for (k, shift) in [0, 2, 4, 6].into_iter().enumerate() {
                let m = 1u8 << (4 * n + k);
                let q8 = &b[q8_k::QS + 128 * n + 32 * k..];
                for half in 0..2 {
                    let sc = scales[is] as i32 - 32;
                    is += 1;
                    let r = 16 * half..16 * half + 16;
                    let qs = q3[r.clone()]
                        .iter()
                        .zip(&hm[r.clone()])
                        .map(|(&q, &h)| ((q >> shift) & 3) as i32 - if h & m != 0 { 0 } else { 4 });
                    isum_all += sc * isum(&q8[r], qs);
                }
            }
        }
        sumf = (isum_all as f32).mul_add(f16_at(a, q3_k::D) * f32_at(b, 0), sumf);
    }
    sumf
}

fn dot_q4_k(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(q4_k::BYTES)
        .zip(x.chunks_exact(q8_k::BYTES))
        .take(nb)
    {
        let scales = &a[q4_k::SCALES..q4_k::SCALES + 12];
        let (mut isum_all, mut summ) = (0i32, 0i32);
        for j in 0..4 {
            let q = &a[q4_k::QS + 32 * j..q4_k::QS + 32 * j + 32];
            let q8 = &b[q8_k::QS + 64 * j..];
            let (sc1, m1) = scale_min_k4(2 * j, scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
            isum_all += sc1 as i32 * isum(&q8[..32], q.iter().map(|&q| (q & 0xF) as i32));
            isum_all += sc2 as i32 * isum(&q8[32..64], q.iter().map(|&q| (q >> 4) as i32));
            summ += m1 as i32 * (bsum(b, 4 * j) + bsum(b, 4 * j + 1));
            summ += m2 as i32 * (bsum(b, 4 * j + 2) + bsum(b, 4 * j + 3));
        }
        let dy = f32_at(b, 0);
        sumf = (isum_all as f32).mul_add(f16_at(a, 0) * dy, sumf);
        sumf = (summ as f32).mul_add(-(f16_at(a, q4_k::DMIN) * dy), sumf);
    }
    sumf
}

fn dot_q5_k(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(q5_k::BYTES)
        .zip(x.chunks_exact(q8_k::BYTES))
        .take(nb)
    {
        let scales = &a[q5_k::SCALES..q5_k::SCALES + 12];
        let qh = &a[q5_k::QH..q5_k::QH + 32];
        let (mut isum_all, mut summ) = (0i32, 0i32);
        for j in 0..4 {
            let q = &a[q5_k::QS + 32 * j..q5_k::QS + 32 * j + 32];
            let q8 = &b[q8_k::QS + 64 * j..];
            let (sc1, m1) = scale_min_k4(2 * j, scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let lo = q
                .iter()
                .zip(qh)
                .map(|(&q, &h)| ((q & 0xF) + if h & u1 != 0 { 16 } else { 0 }) as i32);
            let hi = q
                .iter()
                .zip(qh)
                .map(|(&q, &h)| ((q >> 4) + if h & u2 != 0 { 16 } else { 0 }) as i32);
            isum_all += sc1 as i32 * isum(&q8[..32], lo);
            isum_all += sc2 as i32 * isum(&q8[32..64], hi);
            summ += m1 as i32 * (bsum(b, 4 * j) + bsum(b, 4 * j + 1));
            summ += m2 as i32 * (bsum(b, 4 * j + 2) + bsum(b, 4 * j + 3));
        }
        let dy = f32_at(b, 0);
        sumf = (isum_all as f32).mul_add(f16_at(a, 0) * dy, sumf);
        sumf = (summ as f32).mul_add(-(f16_at(a, q5_k::DMIN) * dy), sumf);
    }
    sumf
}

fn dot_q6_k(w: &[u8], x: &[u8], nb: usize) -> f32 {
    let mut sumf = 0f32;
    for (a, b) in w
        .chunks_exact(q6_k::BYTES)
        .zip(x.chunks_exact(q8_k::BYTES))
        .take(nb)
    {
        let mut q6 = [0i32; QK_K];
        for n in 0..2 {
            let ql = &a[q6_k::QL + 64 * n..];
            let qh = &a[q6_k::QH + 32 * n..];
            for l in 0..32 {
                q6[128 * n + l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                q6[128 * n + l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                q6[128 * n + l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                q6[128 * n + l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            }
        }
        let isum_all: i32 = (0..16)
            .map(|g| {
                let sc = a[q6_k::SCALES + g] as i8 as i32;
                sc * isum(
                    &b[q8_k::QS + 16 * g..q8_k::QS + 16 * g + 16],
                    q6[16 * g..16 * g + 16].iter().copied(),
                )
            })
            .sum();
        sumf = (isum_all as f32).mul_add(f16_at(a, q6_k::D) * f32_at(b, 0), sumf);
    }
    sumf
}
