//! CPU kernels for ggml-quantized matrix-vector and matrix-matrix products, as llama.cpp's
//! ggml-cpu computes them: weights stay in their GGUF block encoding (read straight from the
//! memory map), activations are quantized once per row to the matching 8-bit "vec-dot" type
//! (Q8_0, Q8_1 or Q8_K), and the dot products run on integers with one float scale per block.
//!
//! Design decision: **every kernel follows one canonical arithmetic order**, so results are
//! the same bits at every SIMD level, on every CPU, for every batch size and thread count.
//! Per block, the integer dot product of the quants is exact (ggml's arithmetic, any order);
//! the float part is fixed: `sum = fma(isum as f32, d_w * d_x, sum)` block after block from
//! `sum = 0` (a second FMA right after for a min term: `fma(m_w, s_x, sum)` for Q4_1/Q5_1,
//! `fma(isum_min as f32, -(dmin_w * d_x), sum)` for Q2_K/Q4_K/Q5_K). The scalar code states it
//! plainly; SIMD kernels keep the float accumulators with one weight row per lane, which is
//! what makes them fast: decode reduces each row's integer lanes in a transpose tree and pays
//! the float work once per 8 (AVX2) or 16 (AVX-512) rows; prefill repacks 8 or 16 weight rows
//! so that one `vpmaddubsw` or `vpdpbusd` multiplies 4 quants of every row by 4 broadcast
//! activation bytes, and reuses the repacked rows for every activation row. So `matmul` equals
//! per-row [`vec_dot`] bit for bit, and a prompt's prefill equals its token-by-token decode.
//! The SIMD level is chosen at run time ([`Simd::best`]): AVX-512 (F/BW/VL/VNNI), AVX2 (with
//! FMA and F16C), NEON on AArch64 (one row at a time, integer dot products on 16-byte vectors;
//! tested bit for bit against the scalar code under `qemu-aarch64`), or the portable scalar
//! code. The I-quants below 4 bits and the ternary types share one integer form
//! (`iquant`) and one AVX2 kernel (used at the AVX-512 level too); Q2_K, Q3_K, IQ4_NL and
//! IQ4_XS, and every I-quant on NEON, run the scalar code.
//!
//! A decode loop keeps one [`Scratch`] and one [`ThreadPool`] and multiplies straight from the
//! model file's bytes:
//!
//! ```
//! use seek_kernels::{matmul, QMatrix, QType, Scratch, ThreadPool};
//!
//! let (rows, cols) = (64, 256);
//! let bytes = vec![0u8; rows * QType::Q8_0.row_bytes(cols)]; // a GGUF tensor's data
//! let w = QMatrix::new(QType::Q8_0, &bytes, rows, cols)?;
//! let pool = ThreadPool::new(2)?; // --threads
//! let mut scratch = Scratch::new();
//! let x = vec![0.5f32; cols]; // one activation row (m = 1)
//! let mut y = vec![0f32; rows];
//! matmul(&w, &x, 1, &mut y, &mut scratch, &pool);
//! # Ok::<(), seek_kernels::KernelError>(())
//! ```
//!
//! Layouts are ggml's exactly (little-endian, f16 scales); blocks are read with unaligned loads
//! because a GGUF file only aligns the start of a tensor.
#![deny(missing_docs)]

#[cfg(target_arch = "aarch64")]
mod arm;
pub mod block;
mod dispatch;
mod iq_grids;
mod iquant;
mod layout;
mod matmul;
mod pool;
mod scalar;
pub mod vector;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use matmul::{matmul, matmul_many, QMatrix, Scratch};
pub use pool::ThreadPool;

use std::fmt;
use std::sync::OnceLock;

/// A ggml weight encoding that these kernels compute with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// 4-bit non-linear: 32-element blocks of nibbles that index a fixed table of 16 values.
    IQ4NL,
    /// IQ4_NL's table in 256-element super-blocks with a 6-bit scale per 32 elements.
    IQ4XS,
    /// 2.06 bits: 8-element entries of a 256-point lattice, 7-bit sign patterns.
    IQ2XXS,
    /// 2.31 bits: a 512-point lattice, a scale per 16 elements.
    IQ2XS,
    /// 2.56 bits: a 1024-point lattice, explicit signs.
    IQ2S,
    /// 3.06 bits: 4-element entries of a 256-point lattice.
    IQ3XXS,
    /// 3.44 bits: a 512-point lattice, explicit signs.
    IQ3S,
    /// 1.56 bits: a 2048-point lattice of -1/0/1 with a shift of 1/8.
    IQ1S,
    /// 1.75 bits: IQ1_S's lattice with finer scales and shifts.
    IQ1M,
    /// 1.69 bits: ternary, five base-3 digits per byte.
    TQ1_0,
    /// 2.06 bits: ternary, 2 bits per weight.
    TQ2_0,
}

impl QType {
    /// Every type, in ggml's type-code order.
    pub const ALL: [QType; 21] = [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
        QType::Q2K,
        QType::Q3K,
        QType::Q4K,
        QType::Q5K,
        QType::Q6K,
        QType::IQ2XXS,
        QType::IQ2XS,
        QType::IQ3XXS,
        QType::IQ1S,
        QType::IQ4NL,
        QType::IQ3S,
        QType::IQ2S,
        QType::IQ4XS,
        QType::IQ1M,
        QType::TQ1_0,
        QType::TQ2_0,
    ];

    /// ggml's name for the type (`"Q4_K"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            QType::Q4_0 => "Q4_0",
            QType::Q4_1 => "Q4_1",
            QType::Q5_0 => "Q5_0",
            QType::Q5_1 => "Q5_1",
            QType::Q8_0 => "Q8_0",
            QType::Q2K => "Q2_K",
            QType::Q3K => "Q3_K",
            QType::Q4K => "Q4_K",
            QType::Q5K => "Q5_K",
            QType::Q6K => "Q6_K",
            QType::IQ4NL => "IQ4_NL",
            QType::IQ4XS => "IQ4_XS",
            QType::IQ2XXS => "IQ2_XXS",
            QType::IQ2XS => "IQ2_XS",
            QType::IQ2S => "IQ2_S",
            QType::IQ3XXS => "IQ3_XXS",
            QType::IQ3S => "IQ3_S",
            QType::IQ1S => "IQ1_S",
            QType::IQ1M => "IQ1_M",
            QType::TQ1_0 => "TQ1_0",
            QType::TQ2_0 => "TQ2_0",
        }
    }

    /// Elements per block: 32, or 256 for the K-quants' super-blocks.
    pub fn block_elems(self) -> usize {
        match self {
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 | QType::Q8_0 | QType::IQ4NL => {
                32
            }
            _ => 256,
        }
    }

    /// The type with ggml's name `name` (`"Q4_K"`, as GGUF readers print it), if the kernels
    /// compute with it.
    pub fn from_name(name: &str) -> Option<QType> {
        QType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q5_0 => 22,
            QType::Q5_1 => 24,
            QType::Q8_0 => 34,
            QType::Q2K => 84,
            QType::Q3K => 110,
            QType::Q4K => 144,
            QType::Q5K => 176,
            QType::Q6K => 210,
            QType::IQ4NL => 18,
            QType::IQ4XS => 136,
            QType::IQ2XXS => 66,
            QType::IQ2XS => 74,
            QType::IQ2S => 82,
            QType::IQ3XXS => 98,
            QType::IQ3S => 110,
            QType::IQ1S => 50,
            QType::IQ1M => 56,
            QType::TQ1_0 => 54,
            QType::TQ2_0 => 66,
        }
    }

    /// Bytes of a row of `n` elements; `n` must be a multiple of [`QType::block_elems`].
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }

    /// The type activations are quantized to before a dot product with this weight type
    /// (ggml's `vec_dot_type`).
    pub fn vec_dot_type(self) -> VecDotType {
        match self {
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 | QType::IQ4NL => VecDotType::Q8_0,
            QType::Q4_1 | QType::Q5_1 => VecDotType::Q8_1,
            _ => VecDotType::Q8K,
        }
    }
}

impl fmt::Display for QType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An 8-bit activation encoding: the right-hand side of every dot product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VecDotType {
    /// 32 elements: f16 scale `d`, 32 x i8 (34 bytes).
    Q8_0,
    /// 32 elements: f16 scale `d`, f16 `s = d * sum(qs)`, 32 x i8 (36 bytes).
    Q8_1,
    /// 256 elements: f32 scale `d`, 256 x i8, 16 x i16 sums of 16 (292 bytes).
    Q8K,
}

impl VecDotType {
    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            VecDotType::Q8_0 | VecDotType::Q8_1 => 32,
            VecDotType::Q8K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            VecDotType::Q8_0 => 34,
            VecDotType::Q8_1 => 36,
            VecDotType::Q8K => 292,
        }
    }

    /// Bytes of a row of `n` elements; `n` must be a multiple of [`VecDotType::block_elems`].
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }
}

/// A set of CPU instructions that the kernels can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Simd {
    /// Portable Rust, the reference that the other levels are tested against.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C (Haswell, Zen 1 and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later),
    /// on top of [`Simd::Avx2`].
    Avx512,
    /// AArch64 NEON (Apple silicon, Graviton, Ampere: every 64-bit ARM CPU).
    Neon,
}

impl Simd {
    /// Every level, slowest first.
    pub const ALL: [Simd; 4] = [Simd::Scalar, Simd::Avx2, Simd::Avx512, Simd::Neon];

    /// Whether this CPU can run the level.
    pub fn is_available(self) -> bool {
        match self {
            Simd::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => {
                Simd::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            // NEON is part of the AArch64 baseline.
            Simd::Neon => cfg!(target_arch = "aarch64"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest level this CPU can run, detected once.
    pub fn best() -> Simd {
        static BEST: OnceLock<Simd> = OnceLock::new();
        *BEST.get_or_init(|| {
            Simd::ALL
                .into_iter()
                .filter(|s| s.is_available())
                .max()
                .unwrap_or(Simd::Scalar)
        })
    }

    /// The level named `scalar`, `avx2`, `avx512` or `neon` (as a `--simd` flag would give it).
    pub fn from_name(name: &str) -> Option<Simd> {
        match name {
            "scalar" => Some(Simd::Scalar),
            "avx2" => Some(Simd::Avx2),
            "avx512" => Some(Simd::Avx512),
            "neon" => Some(Simd::Neon),
            _ => None,
        }
    }

    /// The levels this CPU can run, slowest first.
    pub fn available() -> Vec<Simd> {
        Simd::ALL.into_iter().filter(|s| s.is_available()).collect()
    }

    /// [`vec_dot`] at this level. Panics if the CPU cannot run it (see [`Simd::is_available`]).
    /// Every level returns the same bits (see the crate docs).
    pub fn vec_dot(self, ty: QType, w_row: &[u8], x_q: &[u8], n: usize) -> f32 {
        check_dot_args(ty, w_row, x_q, n);
        let job = dispatch::Job {
            w: w_row,
            wrow: w_row.len(),
            act: x_q,
            xrow: x_q.len(),
            nb: n / ty.block_elems(),
            m: 1,
            act_info: dispatch::ActInfo::default(),
        };
        let mut v = 0f32;
        let mut pack = Vec::new();
        dispatch::Kernel::new(self, ty).run(&job, 0..1, &mut pack, &mut |_, _, out| v = out[0]);
        v
    }

    /// [`quantize_row`] at this level; results are identical at every level.
    pub fn quantize_row(self, x: &[f32], to: VecDotType, out: &mut Vec<u8>) {
        assert!(
            x.len().is_multiple_of(to.block_elems()),
            "quantize_row: {} elements is not a multiple of the {to:?} block size {}",
            x.len(),
            to.block_elems()
        );
        out.clear();
        out.resize(to.row_bytes(x.len()), 0);
        dispatch::quantize_into(self, x, to, out);
    }
}

/// Why a weight matrix or a thread pool was refused.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The column count does not divide into whole blocks.
    #[error("{ty} matrix: {cols} columns is not a multiple of the block size {block}; quantize the tensor with a type whose block divides its row length (e.g. Q8_0 or Q4_0 for rows of 32k)")]
    RaggedRow {
        /// Weight type.
        ty: QType,
        /// Columns asked for.
        cols: usize,
        /// Elements per block.
        block: usize,
    },
    /// The data is not `rows * row_bytes` long.
    #[error("{ty} matrix of {rows} x {cols}: expected {expected} bytes of blocks, got {got}; the tensor's type or shape does not match its data")]
    WrongLength {
        /// Weight type.
        ty: QType,
        /// Rows asked for.
        rows: usize,
        /// Columns asked for.
        cols: usize,
        /// `rows * ty.row_bytes(cols)`.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A forced SIMD level that this CPU cannot run.
    #[error("this CPU cannot run {0:?} kernels; use Simd::best() or one of Simd::available()")]
    Unavailable(Simd),
    /// The worker threads could not be started.
    #[error("cannot start {threads} kernel threads: {source}")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// Why the system refused.
        source: std::io::Error,
    },
}

/// Quantizes one activation row to `to` (ggml's `quantize_row_q8_0` / `_q8_1` / `_q8_K`
/// reference rounding), replacing the contents of `out`. `x.len()` must be a multiple of
/// the block size.
pub fn quantize_row(x: &[f32], to: VecDotType, out: &mut Vec<u8>) {
    Simd::best().quantize_row(x, to, out)
}

/// Decodes one row of blocks of `ty` into `out` (ggml's `dequantize_row_*`, bit for bit).
/// `out.len()` elements are decoded; `w_row` must hold exactly their blocks.
pub fn dequantize_row(ty: QType, w_row: &[u8], out: &mut [f32]) {
    assert!(
        out.len().is_multiple_of(ty.block_elems()) && w_row.len() == ty.row_bytes(out.len()),
        "dequantize_row: {} bytes of {ty} do not hold {} elements",
        w_row.len(),
        out.len()
    );
    scalar::dequantize_row(ty, w_row, out)
}

/// Decodes one activation row quantized by [`quantize_row`] (`d * q` per element); tests use
/// it to build a plain f32 reference.
pub fn dequantize_act_row(from: VecDotType, x_q: &[u8], out: &mut [f32]) {
    assert!(
        out.len().is_multiple_of(from.block_elems()) && x_q.len() == from.row_bytes(out.len()),
        "dequantize_act_row: {} bytes of {from:?} do not hold {} elements",
        x_q.len(),
        out.len()
    );
    scalar::dequantize_act(from, x_q, out)
}

/// The dot product of a weight row of `n` elements (blocks of `ty`) with an activation row
/// quantized by [`quantize_row`] to `ty.vec_dot_type()`, at the best SIMD level.
pub fn vec_dot(ty: QType, w_row: &[u8], x_q: &[u8], n: usize) -> f32 {
    Simd::best().vec_dot(ty, w_row, x_q, n)
}

fn check_dot_args(ty: QType, w_row: &[u8], x_q: &[u8], n: usize) {
    assert!(
        n.is_multiple_of(ty.block_elems()),
        "vec_dot: {n} elements is not a multiple of the {ty} block size"
    );
    assert_eq!(
        w_row.len(),
        ty.row_bytes(n),
        "vec_dot: {ty} row of {n} elements"
    );
    assert_eq!(
        x_q.len(),
        ty.vec_dot_type().row_bytes(n),
        "vec_dot: {:?} activations of {n} elements",
        ty.vec_dot_type()
    );
}
