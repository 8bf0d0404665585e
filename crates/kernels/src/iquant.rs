//! The low-bit I-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) and the ternary
//! types (TQ1_0, TQ2_0), decoded to one integer form that every kernel shares.
//!
//! Each 256-weight block is read as `w = dw * ls[i / 16] * q[i]`: `q` a small signed integer
//! per weight (a grid value with its sign; for IQ1, `8 * grid +- 1`), `ls` an integer scale per
//! 16 weights (`2 s + 1`, or 1) and `dw` the block's f16 scale times a power of two (1/8 for
//! IQ2 and IQ1, 1/4 for IQ3_XXS), so the scaling is exact. A dot product with Q8_K activations
//! is then `sum_g ls[g] * sum_{i in g} q[i] * y[i]`, an exact integer per block, followed by the
//! canonical `fma(isum, dw * dy, sum)` (see the crate docs); the decoded value `(dw * ls) * q`
//! is the same f32 as gguf-py's and ggml's formulas (checked bit for bit by the golden test).
//!
//! These run the portable code at every SIMD level for now.

use crate::iq_grids::*;
use crate::layout::*;
use crate::QType;

// The block sizes `QType::block_bytes` states are the layouts' (crate::block).
const _: () = {
    assert!(iq2_xxs::BYTES == 66 && iq2_xs::BYTES == 74 && iq2_s::BYTES == 82);
    assert!(iq3_xxs::BYTES == 98 && iq3_s::BYTES == 110);
    assert!(iq1_s::BYTES == 50 && iq1_m::BYTES == 56);
    assert!(tq1_0::BYTES == 54 && tq2_0::BYTES == 66);
    assert!(iq2_xxs::D == 0 && iq2_xs::D == 0 && iq2_s::D == 0 && iq3_xxs::D == 0);
    assert!(iq3_s::D == 0 && iq1_s::D == 0);
};

/// The power of two folded into `dw`.
pub(crate) const fn d_scale(ty: QType) -> f32 {
    match ty {
        QType::IQ2XXS | QType::IQ2XS | QType::IQ2S | QType::IQ1S | QType::IQ1M => 0.125,
        QType::IQ3XXS => 0.25,
        _ => 1.0,
    }
}

/// The f16 super-block scale of IQ1_M, spread over the top nibbles of its 4 scale words.
pub(crate) fn iq1m_d_bits(sc: [u16; 4]) -> u16 {
    (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000)
}

fn iq1m_scales(b: &[u8]) -> [u16; 4] {
    core::array::from_fn(|k| u16_at(b, iq1_m::SCALES + 2 * k))
}

/// `dw` of a block of `ty`.
pub(crate) fn block_d(ty: QType, b: &[u8]) -> f32 {
    let d = match ty {
        QType::IQ1M => half::f16::from_bits(iq1m_d_bits(iq1m_scales(b))).to_f32(),
        QType::TQ1_0 => f16_at(b, tq1_0::D),
        QType::TQ2_0 => f16_at(b, tq2_0::D),
        _ => f16_at(b, 0),
    };
    d * d_scale(ty)
}

/// The integer scale `ls` of each 16 weights of a block.
pub(crate) fn block_scales(ty: QType, b: &[u8]) -> [i32; 16] {
    let mut ls = [1i32; 16];
    for ib in 0..8 {
        let (lo, hi) = match ty {
            QType::IQ2XXS => {
                let s = (u32_at(b, iq2_xxs::QS + 8 * ib + 4) >> 28) as i32;
                (s, s)
            }
            QType::IQ2XS | QType::IQ2S => {
                let at = if ty == QType::IQ2XS {
                    iq2_xs::SCALES
                } else {
                    iq2_s::SCALES
                };
                let s = b[at + ib] as i32;
                (s & 15, s >> 4)
            }
            QType::IQ3XXS => {
                let s = (u32_at(b, iq3_xxs::SAS + 4 * ib) >> 28) as i32;
                (s, s)
            }
            QType::IQ3S => {
                let s = (b[iq3_s::SCALES + ib / 2] >> (4 * (ib % 2))) as i32 & 15;
                (s, s)
            }
            QType::IQ1S => {
                let s = (u16_at(b, iq1_s::QH + 2 * ib) >> 12) as i32 & 7;
                (s, s)
            }
            QType::IQ1M => {
                let w = u16_at(b, iq1_m::SCALES + 2 * (ib / 2)) as i32 >> (6 * (ib % 2));
                (w & 7, (w >> 3) & 7)
            }
            _ => continue,
        };
        ls[2 * ib] = 2 * lo + 1;
        ls[2 * ib + 1] = 2 * hi + 1;
    }
    ls
}

/// `byte j of v`, negated where bit `j` of `signs` is set.
#[inline(always)]
fn signed(v: u64, signs: u8, j: usize) -> i8 {
    let m = (v >> (8 * j)) as u8 as i8;
    if signs >> j & 1 != 0 {
        -m
    } else {
        m
    }
}

/// The integer weights `q` of a block (see the module docs).
pub(crate) fn block_quants(ty: QType, b: &[u8], q: &mut [i8; 256]) {
    match ty {
        QType::IQ2XXS => {
            for ib in 0..8 {
                let at = iq2_xxs::QS + 8 * ib;
                let aux = u32_at(b, at + 4);
                for l in 0..4 {
                    let g = IQ2XXS_GRID[b[at + l] as usize];
                    let s = KSIGNS[(aux >> (7 * l)) as usize & 127];
                    for j in 0..8 {
                        q[32 * ib + 8 * l + j] = signed(g, s, j);
                    }
                }
            }
        }
        QType::IQ2XS => {
            for k in 0..32 {
                let v = u16_at(b, iq2_xs::QS + 2 * k);
                let g = IQ2XS_GRID[(v & 511) as usize];
                let s = KSIGNS[(v >> 9) as usize];
                for j in 0..8 {
                    q[8 * k + j] = signed(g, s, j);
                }
            }
        }
        QType::IQ2S => {
            for k in 0..32 {
                let (ib, l) = (k / 4, k % 4);
                let hi = (b[iq2_s::QH + ib] as usize >> (2 * l)) & 3;
                let g = IQ2S_GRID[b[iq2_s::QS + k] as usize | hi << 8];
                let s = b[iq2_s::SIGNS + k];
                for j in 0..8 {
                    q[8 * k + j] = signed(g, s, j);
                }
            }
        }
        QType::IQ3XXS => {
            for ib in 0..8 {
                let aux = u32_at(b, iq3_xxs::SAS + 4 * ib);
                for l in 0..4 {
                    let s = KSIGNS[(aux >> (7 * l)) as usize & 127];
                    let g1 = IQ3XXS_GRID[b[iq3_xxs::QS + 8 * ib + 2 * l] as usize] as u64;
                    let g2 = IQ3XXS_GRID[b[iq3_xxs::QS + 8 * ib + 2 * l + 1] as usize] as u64;
                    let g = g1 | g2 << 32;
                    for j in 0..8 {
                        q[32 * ib + 8 * l + j] = signed(g, s, j);
                    }
                }
            }
        }
        QType::IQ3S => {
            for k in 0..64 {
                let ib = k / 8;
                let hi = (b[iq3_s::QH + ib] as usize >> (k % 8)) & 1;
                let g = IQ3S_GRID[b[iq3_s::QS + k] as usize | hi << 8] as u64;
                let s = b[iq3_s::SIGNS + k / 2] >> (4 * (k % 2));
                for j in 0..4 {
                    q[4 * k + j] = signed(g, s, j);
                }
            }
        }
        QType::IQ1S => {
            for ib in 0..8 {
                let qh = u16_at(b, iq1_s::QH + 2 * ib) as usize;
                let delta: i8 = if qh & 0x8000 != 0 { -1 } else { 1 };
                for l in 0..4 {
                    let g =
                        IQ1S_GRID[b[iq1_s::QS + 4 * ib + l] as usize | ((qh >> (3 * l)) & 7) << 8];
                    for j in 0..8 {
                        q[32 * ib + 8 * l + j] = 8 * ((g >> (8 * j)) as u8 as i8) + delta;
                    }
                }
            }
        }
        QType::IQ1M => {
            for k in 0..32 {
                let h = (b[iq1_m::QH + k / 2] as usize >> (4 * (k % 2))) & 15;
                let g = IQ1S_GRID[b[iq1_m::QS + k] as usize | (h & 7) << 8];
                let delta: i8 = if h & 8 != 0 { -1 } else { 1 };
                for j in 0..8 {
                    q[8 * k + j] = 8 * ((g >> (8 * j)) as u8 as i8) + delta;
                }
            }
        }
        QType::TQ1_0 => {
            const POW3: [u8; 5] = [1, 3, 9, 27, 81];
            let trit =
                |byte: u8, n: usize| (((byte.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as i8) - 1;
            for n in 0..5 {
                for m in 0..32 {
                    q[32 * n + m] = trit(b[tq1_0::QS + m], n);
                }
                for m in 0..16 {
                    q[160 + 16 * n + m] = trit(b[tq1_0::QS + 32 + m], n);
                }
            }
            for n in 0..4 {
                for m in 0..4 {
                    q[240 + 4 * n + m] = trit(b[tq1_0::QH + m], n);
                }
            }
        }
        QType::TQ2_0 => {
            for c in 0..2 {
                for l in 0..4 {
                    for m in 0..32 {
                        q[128 * c + 32 * l + m] =
                            ((b[tq2_0::QS + 32 * c + m] >> (2 * l)) & 3) as i8 - 1;
                    }
                }
            }
        }
        _ => unreachable!("{ty} is not an I-quant of this module"),
    }
}

/// Decodes one block: `y[i] = (dw * ls[i / 16]) * q[i]`.
pub(crate) fn dequantize_block(ty: QType, b: &[u8], y: &mut [f32]) {
    let mut q = [0i8; 256];
    block_quants(ty, b, &mut q);
    let ls = block_scales(ty, b);
    let dw = block_d(ty, b);
    for (i, (y, &q)) in y.iter_mut().zip(&q).enumerate() {
        *y = dw * ls[i / 16] as f32 * q as f32;
    }
}

/// The dot product of `nb` blocks of `ty` with `nb` Q8_K blocks, in the canonical order.
pub(crate) fn vec_dot(ty: QType, w: &[u8], x: &[u8], nb: usize) -> f32 {
    let bb = ty.block_bytes();
    let mut buf = [0u8; 256 + 16 + 4];
    let mut sumf = 0f32;
    for (a, y) in w.chunks_exact(bb).zip(x.chunks_exact(q8_k::BYTES)).take(nb) {
        decode_row(ty, a, 1, &mut buf);
        sumf = fma_block(&buf[..256], &buf[256..272], f32_at(&buf, 272), y, sumf);
    }
    sumf
}

/// Bytes [`decode_row`] needs for `nb` blocks.
pub(crate) fn decoded_bytes(nb: usize) -> usize {
    nb * (256 + 16 + 4)
}

/// Decodes `nb` blocks of a weight row into `buf` (`decoded_bytes(nb)` long): the quants,
/// then the scales (each fits a byte), then `dw` per block, so that a prefill decodes each
/// row once for all its activation rows.
pub(crate) fn decode_row(ty: QType, w: &[u8], nb: usize, buf: &mut [u8]) {
    let bb = ty.block_bytes();
    let (qs, rest) = buf.split_at_mut(nb * 256);
    let (ls, ds) = rest.split_at_mut(nb * 16);
    let mut q = [0i8; 256];
    for b in 0..nb {
        let a = &w[b * bb..(b + 1) * bb];
        block_quants(ty, a, &mut q);
        for (o, &v) in qs[256 * b..256 * (b + 1)].iter_mut().zip(&q) {
            *o = v as u8;
        }
        for (o, s) in ls[16 * b..16 * (b + 1)].iter_mut().zip(block_scales(ty, a)) {
            *o = s as u8;
        }
        ds[4 * b..4 * b + 4].copy_from_slice(&block_d(ty, a).to_le_bytes());
    }
}

/// [`vec_dot`] of a row decoded by [`decode_row`]: the same integers and float operations.
pub(crate) fn dot_decoded(buf: &[u8], x: &[u8], nb: usize) -> f32 {
    let (qs, rest) = buf.split_at(nb * 256);
    let (ls, ds) = rest.split_at(nb * 16);
    let mut sumf = 0f32;
    for (b, y) in x.chunks_exact(q8_k::BYTES).take(nb).enumerate() {
        let (q, l) = (&qs[256 * b..256 * (b + 1)], &ls[16 * b..16 * (b + 1)]);
        sumf = fma_block(q, l, f32_at(ds, 4 * b), y, sumf);
    }
    sumf
}

/// One decoded block (`q` as bytes, `ls`, `dw`) against the Q8_K block `y`:
/// `fma(sum_g ls[g] * sum_{i in g} q[i] * y[i], dw * dy, sumf)`.
fn fma_block(q: &[u8], ls: &[u8], dw: f32, y: &[u8], sumf: f32) -> f32 {
    let mut isum = 0i32;
    for g in 0..16 {
        let s: i32 = q[16 * g..16 * g + 16]
            .iter()
            .zip(&y[q8_k::QS + 16 * g..q8_k::QS + 16 * g + 16])
            .map(|(&w, &a)| w as i8 as i32 * a as i8 as i32)
            .sum();
        isum += ls[g] as i32 * s;
    }
    (isum as f32).mul_add(dw * f32_at(y, 0), sumf)
}
