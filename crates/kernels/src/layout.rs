//! Byte offsets inside ggml's blocks (ggml-common.h) and little-endian readers.
//!
//! Every block is read from a byte slice at an arbitrary offset: a GGUF tensor starts
//! aligned, but a Q5_0 block is 22 bytes, so its fields are not.

/// Super-block size of the K-quants.
pub const QK_K: usize = 256;

/// Q4_0: `d: f16, qs: [u8; 16]`.
pub mod q4_0 {
    pub const BYTES: usize = 18;
    pub const QS: usize = 2;
}
/// Q4_1: `d: f16, m: f16, qs: [u8; 16]`.
pub mod q4_1 {
    pub const BYTES: usize = 20;
    pub const M: usize = 2;
    pub const QS: usize = 4;
}
/// Q5_0: `d: f16, qh: [u8; 4], qs: [u8; 16]`.
pub mod q5_0 {
    pub const BYTES: usize = 22;
    pub const QH: usize = 2;
    pub const QS: usize = 6;
}
/// Q5_1: `d: f16, m: f16, qh: [u8; 4], qs: [u8; 16]`.
pub mod q5_1 {
    pub const BYTES: usize = 24;
    pub const M: usize = 2;
    pub const QH: usize = 4;
    pub const QS: usize = 8;
}
/// Q8_0: `d: f16, qs: [i8; 32]`.
pub mod q8_0 {
    pub const BYTES: usize = 34;
    pub const QS: usize = 2;
}
/// Q8_1: `d: f16, s: f16, qs: [i8; 32]`.
pub mod q8_1 {
    pub const BYTES: usize = 36;
    pub const S: usize = 2;
    pub const QS: usize = 4;
}
/// Q2_K: `scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16`.
pub mod q2_k {
    pub const BYTES: usize = 84;
    pub const SCALES: usize = 0;
    pub const QS: usize = 16;
    pub const D: usize = 80;
    pub const DMIN: usize = 82;
}
/// Q3_K: `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16`.
pub mod q3_k {
    pub const BYTES: usize = 110;
    pub const HMASK: usize = 0;
    pub const QS: usize = 32;
    pub const SCALES: usize = 96;
    pub const D: usize = 108;
}
/// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
pub mod q4_k {
    pub const BYTES: usize = 144;
    pub const DMIN: usize = 2;
    pub const SCALES: usize = 4;
    pub const QS: usize = 16;
}
/// Q5_K: `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
pub mod q5_k {
    pub const BYTES: usize = 176;
    pub const DMIN: usize = 2;
    pub const SCALES: usize = 4;
    pub const QH: usize = 16;
    pub const QS: usize = 48;
}
/// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
pub mod q6_k {
    pub const BYTES: usize = 210;
    pub const QL: usize = 0;
    pub const QH: usize = 128;
    pub const SCALES: usize = 192;
    pub const D: usize = 208;
}
/// Q8_K: `d: f32, qs: [i8; 256], bsums: [i16; 16]` (sums of 16 consecutive `qs`).
pub mod q8_k {
    pub const BYTES: usize = 292;
    pub const QS: usize = 4;
    pub const BSUMS: usize = 260;
}

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
