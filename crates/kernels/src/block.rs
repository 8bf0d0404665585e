//! ggml's block layouts (ggml-common.h), as `#[repr(C)]` structs: the authority for every
//! byte offset the kernels use. Scales are f16 (`half::f16`), all fields little-endian.
//!
//! The kernels read blocks from `&[u8]` at their byte offsets and never cast a slice to these
//! types: a GGUF file aligns a tensor's start, not its 18- or 22-byte blocks.

use half::f16;

macro_rules! check_size {
    ($block:ident, $bytes:expr) => {
        const _: () = assert!(core::mem::size_of::<$block>() == $bytes);
    };
}

/// Q4_0, 32 weights: `w = d * (q - 8)`, `q` the low nibbles (weights 0..16) then the high.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// 4-bit quants.
    pub qs: [u8; 16],
}
check_size!(BlockQ4_0, 18);

/// Q4_1, 32 weights: `w = d * q + m`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// 4-bit quants.
    pub qs: [u8; 16],
}
check_size!(BlockQ4_1, 20);

/// Q5_0, 32 weights: `w = d * (q - 16)`, bit 4 of weight `i` in bit `i` of `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits (a little-endian u32).
    pub qh: [u8; 4],
    /// Low 4 bits.
    pub qs: [u8; 16],
}
check_size!(BlockQ5_0, 22);

/// Q5_1, 32 weights: `w = d * q + m`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Fifth bits (a little-endian u32).
    pub qh: [u8; 4],
    /// Low 4 bits.
    pub qs: [u8; 16],
}
check_size!(BlockQ5_1, 24);

/// Q8_0, 32 weights or activations: `w = d * q`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quants.
    pub qs: [i8; 32],
}
check_size!(BlockQ8_0, 34);

/// Q8_1, 32 activations: `x = d * q`, with `s = d * sum(q)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d` times the sum of the quants.
    pub s: f16,
    /// Quants.
    pub qs: [i8; 32],
}
check_size!(BlockQ8_1, 36);

/// Q2_K, 256 weights in 16 sub-blocks: `w = d * sc * q - dmin * m` (4-bit `sc`, `m`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ2K {
    /// Per sub-block: scale (low nibble) and min (high nibble).
    pub scales: [u8; 16],
    /// 2-bit quants.
    pub qs: [u8; 64],
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
}
check_size!(BlockQ2K, 84);

/// Q3_K, 256 weights in 16 sub-blocks: `w = d * (sc - 32) * (q - (hbit ? 0 : 4))`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ3K {
    /// High bits.
    pub hmask: [u8; 32],
    /// Low 2 bits.
    pub qs: [u8; 64],
    /// 6-bit scales, packed.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}
check_size!(BlockQ3K, 110);

/// Q4_K, 256 weights in 8 sub-blocks: `w = d * sc * q - dmin * m` (6-bit `sc`, `m`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ4K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// 6-bit scales and mins, packed.
    pub scales: [u8; 12],
    /// 4-bit quants.
    pub qs: [u8; 128],
}
check_size!(BlockQ4K, 144);

/// Q5_K, 256 weights in 8 sub-blocks: as Q4_K with a fifth bit.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ5K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// 6-bit scales and mins, packed.
    pub scales: [u8; 12],
    /// Fifth bits.
    pub qh: [u8; 32],
    /// Low 4 bits.
    pub qs: [u8; 128],
}
check_size!(BlockQ5K, 176);

/// Q6_K, 256 weights in 16 sub-blocks: `w = d * sc * (q - 32)` (8-bit signed `sc`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ6K {
    /// Low 4 bits.
    pub ql: [u8; 128],
    /// High 2 bits.
    pub qh: [u8; 64],
    /// Sub-block scales.
    pub scales: [i8; 16],
    /// Super-block scale.
    pub d: f16,
}
check_size!(BlockQ6K, 210);

/// Q8_K, 256 activations: `x = d * q`, with the sums of each 16 quants.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ8K {
    /// Scale (f32, unlike the others).
    pub d: f32,
    /// Quants.
    pub qs: [i8; 256],
    /// Sums of `qs[16 j..16 j + 16]`.
    pub bsums: [i16; 16],
}
check_size!(BlockQ8K, 292);
