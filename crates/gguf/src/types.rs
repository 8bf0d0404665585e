//! ggml tensor element types and their block layouts.

/// The encoding of a tensor's elements (ggml's `ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ4NL,
    IQ4XS,
    IQ2XXS,
    IQ2XS,
    IQ3XXS,
    IQ1S,
    IQ3S,
    IQ2S,
    IQ1M,
    TQ1_0,
    TQ2_0,
}

/// ggml type codes that exist but that Seek cannot compute with, by name.
const UNSUPPORTED: &[(u32, &str)] = &[
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (39, "MXFP4"),
];

impl GgmlType {
    /// The type for a ggml type code, or a message naming the unsupported type and the fix.
    pub fn from_code(code: u32) -> Result<Self, String> {
        Ok(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            30 => Self::BF16,
            20 => Self::IQ4NL,
            23 => Self::IQ4XS,
            16 => Self::IQ2XXS,
            17 => Self::IQ2XS,
            18 => Self::IQ3XXS,
            19 => Self::IQ1S,
            21 => Self::IQ3S,
            22 => Self::IQ2S,
            29 => Self::IQ1M,
            34 => Self::TQ1_0,
            35 => Self::TQ2_0,
            _ => {
                return Err(match UNSUPPORTED.iter().find(|(c, _)| *c == code) {
                    Some((_, name)) => format!(
                        "quantization type {name} is not supported; use a file quantized to one of F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, the I-quants IQ1_S..IQ4_XS, TQ1_0, TQ2_0 (e.g. Q4_K_M or IQ4_XS)"
                    ),
                    None => format!("unknown ggml type code {code}; the file is corrupt or newer than Seek"),
                })
            }
        })
    }

    /// The ggml name, e.g. `Q4_K`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q8_1 => "Q8_1",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Q8K => "Q8_K",
            Self::IQ4NL => "IQ4_NL",
            Self::IQ4XS => "IQ4_XS",
            Self::IQ2XXS => "IQ2_XXS",
            Self::IQ2XS => "IQ2_XS",
            Self::IQ3XXS => "IQ3_XXS",
            Self::IQ1S => "IQ1_S",
            Self::IQ3S => "IQ3_S",
            Self::IQ2S => "IQ2_S",
            Self::IQ1M => "IQ1_M",
            Self::TQ1_0 => "TQ1_0",
            Self::TQ2_0 => "TQ2_0",
        }
    }

    /// `(elements per block, bytes per block)`.
    pub fn block_layout(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::IQ4NL => (32, 18),
            Self::IQ4XS => (256, 136),
            Self::IQ2XXS => (256, 66),
            Self::IQ2XS => (256, 74),
            Self::IQ3XXS => (256, 98),
            Self::IQ1S => (256, 50),
            Self::IQ3S => (256, 110),
            Self::IQ2S => (256, 82),
            Self::IQ1M => (256, 56),
            Self::TQ1_0 => (256, 54),
            Self::TQ2_0 => (256, 66),
        }
    }

    /// Average bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        let (b, s) = self.block_layout();
        s as f64 * 8.0 / b as f64
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
