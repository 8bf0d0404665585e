//! Random blocks and plain f32 references shared by the kernel tests.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seek_kernels::{dequantize_act_row, dequantize_row, quantize_row, QType};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Byte offsets of the f16 scales (`d`, `dmin`/`m`) in a block of `ty`.
fn f16_fields(ty: QType) -> &'static [usize] {
    match ty {
        QType::Q4_0 | QType::Q5_0 | QType::Q8_0 | QType::IQ4NL | QType::IQ4XS => &[0],
        QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K => &[0, 2],
        QType::Q2K => &[80, 82],
        QType::Q3K => &[108],
        QType::Q6K => &[208],
        QType::IQ2XXS | QType::IQ2XS | QType::IQ2S | QType::IQ3XXS | QType::IQ3S | QType::IQ1S => {
            &[0]
        }
        QType::TQ1_0 => &[52],
        QType::TQ2_0 => &[64],
        // IQ1_M's scale is spread over its scale words (see `random_blocks`).
        QType::IQ1M => &[],
    }
}

/// `n_blocks` blocks of `ty`: random quants (Q8_0's -128 included, which ggml's quantizer never
/// writes but a file may hold) and random finite f16 scales.
pub fn random_blocks(ty: QType, n_blocks: usize, rng: &mut StdRng) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut data = vec![0u8; n_blocks * bb];
    rng.fill(&mut data[..]);
    for block in data.chunks_exact_mut(bb) {
        for &at in f16_fields(ty) {
            let v: f32 = rng.random_range(-0.02..0.02);
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        if ty == QType::IQ1M {
            // The f16 scale's nibbles sit in bits 12..16 of the 4 scale words at 48.
            let v: f32 = rng.random_range(-0.02..0.02);
            let d = half::f16::from_f32(v).to_bits();
            for k in 0..4 {
                let at = 48 + 2 * k;
                let w = u16::from_le_bytes([block[at], block[at + 1]]);
                let w = (w & 0x0FFF) | ((d >> (4 * k)) & 0xF) << 12;
                block[at..at + 2].copy_from_slice(&w.to_le_bytes());
            }
        }
    }
    data
}

/// Random activations, roughly N(0, 1) with a few outliers as in real hidden states.
pub fn random_acts(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v: f32 = rng.random_range(-1.0..1.0) + rng.random_range(-1.0..1.0);
            if rng.random_range(0..64) == 0 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

/// The plain reference of `vec_dot(ty, w, quantize_row(x))`: both sides dequantized to f32,
/// the dot product summed in f64. Returns the value and the error scale that tolerances are
/// relative to: `sum_i |y_i| * max_i |w_i|`, plus for Q4_1/Q5_1 the f16 rounding of Q8_1's
/// `s = d * sum(q)`, which ggml's kernels use in place of the exact sum.
pub fn reference_dot(ty: QType, w: &[u8], x_q: &[u8], n: usize) -> (f64, f64) {
    let mut wf = vec![0f32; n];
    let mut yf = vec![0f32; n];
    dequantize_row(ty, w, &mut wf);
    dequantize_act_row(ty.vec_dot_type(), x_q, &mut yf);
    let dot: f64 = wf.iter().zip(&yf).map(|(&a, &b)| a as f64 * b as f64).sum();
    let wmax = wf.iter().fold(0f64, |m, &a| m.max(a.abs() as f64));
    let ysum: f64 = yf.iter().map(|&b| b.abs() as f64).sum();
    let mut slack = 0f64;
    if matches!(ty, QType::Q4_1 | QType::Q5_1) {
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[2], b[3]]).to_f64();
        for (wb, xb) in w.chunks_exact(ty.block_bytes()).zip(x_q.chunks_exact(36)) {
            slack += (f16(wb) * f16(xb)).abs() * 2f64.powi(-11) / 2e-5;
        }
    }
    (dot, ysum * wmax + slack)
}

/// Quantized activations for `x`.
pub fn quantize(ty: QType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    quantize_row(x, ty.vec_dot_type(), &mut out);
    out
}
