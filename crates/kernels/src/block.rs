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

/// IQ2_XXS, 256 weights (2.06 bits each) in 8 sub-blocks of 32: per sub-block 8 bytes, four
/// 8-bit indices into `iq2xxs_grid` (8 magnitudes each), then a u32 of four 7-bit sign
/// patterns (`ksigns`) and a 4-bit scale `s` on top: `w = d * (2 s + 1) / 8 * grid * sign`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockIQ2XXS {
    /// Super-block scale.
    pub d: f16,
    /// Indices, signs and scales, as above.
    pub qs: [u8; 64],
}
check_size!(BlockIQ2XXS, 66);

/// IQ2_XS, 256 weights (2.31 bits): 32 u16 of a 9-bit `iq2xs_grid` index and a 7-bit sign
/// pattern, and a 4-bit scale per 16 weights: `w = d * (2 s + 1) / 8 * grid * sign`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockIQ2XS {
    /// Super-block scale.
    pub d: f16,
    /// Index (low 9 bits) and sign pattern (high 7) per 8 weights.
    pub qs: [u16; 32],
    /// Two 4-bit scales per 32 weights.
    pub scales: [u8; 8],
}
check_size!(BlockIQ2XS, 74);

/// IQ2_S, 256 weights (2.56 bits): a 10-bit `iq2s_grid` index per 8 weights (low 8 bits in
/// `qs`, 2 in `qh`), one explicit sign bit per weight, a 4-bit scale per 16 weights.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockIQ2S {
    /// Super-block scale.
    pub d: f16,
    /// Low 8 bits of the indices.
    pub qs: [u8; 32],
    /// Sign bits, weight `i` in bit `i % 8` of byte `i / 8`.
    pub signs: [u8; 32],
    /// High 2 bits of the indices, four per byte (one byte per 32 weights).
    pub qh: [u8; 8],
    /// Two 4-bit scales per 32 weights.
    pub scales: [u8; 8],
}
check_size!(BlockIQ2S, 82);

/// IQ3_XXS, 256 weights (3.06 bits): an 8-bit `iq3xxs_grid` index per 4 weights, then per 32
/// weights a u32 of four 7-bit sign patterns and a 4-bit scale: `w = d * (2 s + 1) / 4 * grid
/// * sign`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockIQ3XXS {
    /// Super-block scale.
    pub d: f16,
    /// Grid indices.
    pub qs: [u8; 64],
    /// Sign patterns and scales.
    pub scales_and_signs: [u8; 32],
}
check_size!(BlockIQ3XXS, 98);

/// IQ3_S, 256 weights (3.44 bits): a 9-bit `iq3s_grid` index per 4 weights (8 bits in `qs`,
/// 1 in `qh`), one sign bit per weight, a 4-bit scale per 32: `w = d * (2 s + 1) * grid * sign`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockIQ3S {
    /// Super-block scale.
    pub d: f16,
    /// Low 8 bits of the indices.
    pub qs: [u8; 64],
    /// High bits of the indices, one byte per 32 weights.
    pub qh: [u8; 8],
    /// Sign bits.
    pub signs: [u8; 32],
    /// 4-bit scales, two per byte.
    pub scales: [u8; 4],
}
check_size!(BlockIQ3S, 110);

/// IQ1_S, 256 weights (1.56 bits): an 11-bit `iq1s_grid` index (values -1, 0, 1) per 8 weights
/// and per 32 weights a u16 of the indices' high bits, a 3-bit scale and the sign of a shift
/// of 1/8: `w = d * (2 s + 1) * (grid +- 1/8)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockIQ1S {
    /// Super-block scale.
    pub d: f16,
    /// Low 8 bits of the indices.
    pub qs: [u8; 32],
    /// High 3 bits of four indices (bits 0..12), scale (12..15), shift sign (15).
    pub qh: [u16; 8],
}
check_size!(BlockIQ1S, 50);

/// IQ1_M, 256 weights (1.75 bits): IQ1_S's grid with a 3-bit scale per 16 weights and a shift
/// sign per 8; the f16 super-block scale is spread over the top nibbles of the 4 scale words.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockIQ1M {
    /// Low 8 bits of the indices.
    pub qs: [u8; 32],
    /// Per 8 weights a nibble: the index's high 3 bits and the shift sign (bit 3).
    pub qh: [u8; 16],
    /// Four 3-bit scales per u16 (bits 0..12); bits 12..16 of the four are `d`'s nibbles.
    pub scales: [u16; 4],
}
check_size!(BlockIQ1M, 56);

/// TQ1_0, 256 ternary weights (1.69 bits): five base-3 digits per byte (four in `qh`),
/// `w = d * (digit - 1)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockTQ1_0 {
    /// Weights 0..240, five per byte.
    pub qs: [u8; 48],
    /// Weights 240..256, four per byte.
    pub qh: [u8; 4],
    /// Scale.
    pub d: f16,
}
check_size!(BlockTQ1_0, 54);

/// TQ2_0, 256 ternary weights (2.06 bits): 2-bit `q`, `w = d * (q - 1)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockTQ2_0 {
    /// Weight `128 c + 32 l + m` in bits `2 l..2 l + 2` of byte `32 c + m`.
    pub qs: [u8; 64],
    /// Scale.
    pub d: f16,
}
check_size!(BlockTQ2_0, 66);
