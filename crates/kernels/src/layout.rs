//! Byte offsets inside ggml's blocks (ggml-common.h) and little-endian readers.
//!
//! Every block is read from a byte slice at an arbitrary offset: a GGUF tensor starts
//! aligned, but a Q5_0 block is 22 bytes, so its fields are not.

/// Super-block size of the K-quants.
pub const QK_K: usize = 256;

// Offsets and sizes come from the `#[repr(C)]` structs in `crate::block`, which state ggml's
// layouts; the kernels never cast bytes to them (the fields are not aligned in a file).
macro_rules! offsets {
    ($(#[$doc:meta])* $m:ident, $block:ident { $($name:ident = $field:ident),* }) => {
        $(#[$doc])*
        pub mod $m {
            use crate::block::$block;
            pub const BYTES: usize = core::mem::size_of::<$block>();
            $(pub const $name: usize = core::mem::offset_of!($block, $field);)*
        }
    };
}

offsets!(q4_0, BlockQ4_0 { QS = qs });
offsets!(q4_1, BlockQ4_1 { M = m, QS = qs });
offsets!(q5_0, BlockQ5_0 { QH = qh, QS = qs });
offsets!(q5_1, BlockQ5_1 { M = m, QH = qh, QS = qs });
offsets!(q8_0, BlockQ8_0 { QS = qs });
offsets!(q8_1, BlockQ8_1 { S = s, QS = qs });
offsets!(q2_k, BlockQ2K { SCALES = scales, QS = qs, D = d, DMIN = dmin });
offsets!(q3_k, BlockQ3K { HMASK = hmask, QS = qs, SCALES = scales, D = d });
offsets!(q4_k, BlockQ4K { DMIN = dmin, SCALES = scales, QS = qs });
offsets!(q5_k, BlockQ5K { DMIN = dmin, SCALES = scales, QH = qh, QS = qs });
offsets!(q6_k, BlockQ6K { QL = ql, QH = qh, SCALES = scales, D = d });
offsets!(q8_k, BlockQ8K { QS = qs, BSUMS = bsums });
offsets!(iq2_xxs, BlockIQ2XXS { D = d, QS = qs });
offsets!(iq2_xs, BlockIQ2XS { D = d, QS = qs, SCALES = scales });
offsets!(iq2_s, BlockIQ2S { D = d, QS = qs, SIGNS = signs, QH = qh, SCALES = scales });
offsets!(iq3_xxs, BlockIQ3XXS { D = d, QS = qs, SAS = scales_and_signs });
offsets!(iq3_s, BlockIQ3S { D = d, QS = qs, QH = qh, SIGNS = signs, SCALES = scales });
offsets!(iq1_s, BlockIQ1S { D = d, QS = qs, QH = qh });
offsets!(iq1_m, BlockIQ1M { QS = qs, QH = qh, SCALES = scales });
offsets!(tq1_0, BlockTQ1_0 { QS = qs, QH = qh, D = d });
offsets!(tq2_0, BlockTQ2_0 { QS = qs, D = d });

/// The f16 at `b[at..at + 2]`, widened (exactly) to f32.
#[inline(always)]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The f32 at `b[at..at + 4]`.
#[inline(always)]
pub fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The u32 at `b[at..at + 4]`.
#[inline(always)]
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The i16 at `b[at..at + 2]`.
#[inline(always)]
pub fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_le_bytes([b[at], b[at + 1]])
}

/// f32 to the f16 bytes ggml stores (round to nearest even, as `GGML_FP32_TO_FP16`).
#[inline(always)]
pub fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block (ggml's
/// `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 16 signed 6-bit scales of a Q3_K block (before subtracting 32), unpacked as ggml does.
#[inline(always)]
pub fn q3k_scales(s: &[u8]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32_at(s, 0);
    let a1 = u32_at(s, 4);
    let tmp = u32_at(s, 8);
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0u8; 16];
    for (i, a) in aux.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&a.to_le_bytes());
    }
    out
}

/// The u16 at `b[at..at + 2]`.
#[inline(always)]
pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
