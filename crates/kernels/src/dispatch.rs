//! The contract between the matmul driver and the kernels, and the choice of kernel for a
//! (SIMD level, weight type).

use crate::layout::{f16_at, f32_at, q8_1};
use crate::{scalar, QType, Simd, VecDotType};
use std::ops::Range;

/// One product's inputs, as the kernels see them.
pub struct Job<'a> {
    /// Weight rows, `wrow` bytes apart.
    pub w: &'a [u8],
    /// Bytes per weight row.
    pub wrow: usize,
    /// `m` quantized activation rows, `xrow` bytes apart.
    pub act: &'a [u8],
    /// Bytes per activation row.
    pub xrow: usize,
    /// Blocks per row.
    pub nb: usize,
    /// Activation rows.
    pub m: usize,
    /// Per activation block (`m * nb`, row-major), for kernels that pack weights: the scale
    /// `d` as f32, the Q8_1 `s` as f32, and the sum of the quants. Empty when `m` is small.
    pub act_info: ActInfo<'a>,
}

/// Per-block facts about the activations, computed once per product (see [`Job::act_info`]).
#[derive(Clone, Copy, Default)]
pub struct ActInfo<'a> {
    /// `d` of each block.
    pub d: &'a [f32],
    /// `s` of each Q8_1 block (empty otherwise).
    pub s: &'a [f32],
    /// Sum of the quants of each Q8_0/Q8_1 block (empty for Q8_K).
    pub sum: &'a [i32],
}

/// Buffers for [`ActInfo`].
#[derive(Debug, Clone, Default)]
pub struct ActInfoBuf {
    d: Vec<f32>,
    s: Vec<f32>,
    sum: Vec<i32>,
}

impl ActInfoBuf {
    /// Fills the buffers for `m` rows of `nb` blocks of `vt` in `act`.
    pub fn fill(&mut self, vt: VecDotType, act: &[u8], xrow: usize, m: usize, nb: usize) {
        self.d.clear();
        self.s.clear();
        self.sum.clear();
        let bb = vt.block_bytes();
        for c in 0..m {
            for blk in act[c * xrow..c * xrow + nb * bb].chunks_exact(bb) {
                match vt {
                    VecDotType::Q8K => self.d.push(f32_at(blk, 0)),
                    VecDotType::Q8_0 | VecDotType::Q8_1 => {
                        self.d.push(f16_at(blk, 0));
                        let qs = if vt == VecDotType::Q8_1 { q8_1::QS } else { 2 };
                        let sum: i32 = blk[qs..qs + 32].iter().map(|&q| q as i8 as i32).sum();
                        self.sum.push(sum);
                        if vt == VecDotType::Q8_1 {
                            self.s.push(f16_at(blk, q8_1::S));
                        }
                    }
                }
            }
        }
    }

    /// The filled facts.
    pub fn info(&self) -> ActInfo<'_> {
        ActInfo {
            d: &self.d,
            s: &self.s,
            sum: &self.sum,
        }
    }
}

/// Where a kernel puts its results: `out(c, r0, v)` receives the dot products of weight rows
/// `r0..r0 + v.len()` with activation row `c`.
pub type Sink<'s> = &'s mut dyn FnMut(usize, usize, &[f32]);

/// A kernel: the dot products of weight rows `rows` with every activation row of the job.
/// `pack` is the calling thread's buffer for repacked weights (grown as needed).
///
/// # Safety
/// The CPU supports the kernel's SIMD level, and the job's slices hold what it says they hold
/// (as [`Kernel::run`] checks).
pub type RangeFn = unsafe fn(job: &Job<'_>, rows: Range<usize>, pack: &mut Vec<u8>, out: Sink<'_>);

/// The kernel of one (SIMD level, weight type).
#[derive(Clone, Copy)]
pub struct Kernel {
    ty: QType,
    f: RangeFn,
    /// Weight rows the kernel computes together; thread ranges are multiples of it.
    pub group: usize,
    /// Fewest activation rows for which the kernel uses [`Job::act_info`].
    pub info_from_m: usize,
}

impl Kernel {
    /// Panics if the CPU cannot run `simd`: that is a caller's broken invariant, as every
    /// public entry point checks [`Simd::is_available`] or starts from [`Simd::best`].
    pub fn new(simd: Simd, ty: QType) -> Self {
        assert!(simd.is_available(), "this CPU cannot run {simd:?} kernels");
        // A level without a kernel for `ty` falls back to the next lower one.
        let simd_kernel = match simd {
            Simd::Scalar => None,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => crate::x86::avx2::kernel(ty),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => crate::x86::avx512::kernel(ty).or_else(|| crate::x86::avx2::kernel(ty)),
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => crate::arm::neon::kernel(ty),
            #[allow(unreachable_patterns)]
            _ => unreachable!("is_available is false for {simd:?} on this architecture"),
        };
        let (f, group, info_from_m) = simd_kernel.unwrap_or((scalar_range(ty), 1, usize::MAX));
        Self {
            ty,
            f,
            group,
            info_from_m,
        }
    }

    /// Runs the kernel after checking the job's shape.
    pub fn run(&self, job: &Job<'_>, rows: Range<usize>, pack: &mut Vec<u8>, out: Sink<'_>) {
        let vt = self.ty.vec_dot_type();
        assert_eq!(job.wrow, job.nb * self.ty.block_bytes());
        assert!(rows.start <= rows.end && rows.end * job.wrow <= job.w.len());
        assert!(job.xrow >= job.nb * vt.block_bytes());
        assert!(job.m == 0 || (job.m - 1) * job.xrow + job.nb * vt.block_bytes() <= job.act.len());
        if job.m >= self.info_from_m {
            let n = job.m * job.nb;
            assert_eq!(job.act_info.d.len(), n);
            if vt != VecDotType::Q8K {
                assert_eq!(job.act_info.sum.len(), n);
            }
            if vt == VecDotType::Q8_1 {
                assert_eq!(job.act_info.s.len(), n);
            }
        }
        // SAFETY: `Kernel::new` checked that the CPU supports the level; the job's slices are
        // in bounds (checked just above).
        unsafe { (self.f)(job, rows, pack, out) }
    }
}

/// The scalar kernel: one canonical dot product at a time.
fn scalar_range(ty: QType) -> RangeFn {
    macro_rules! range {
        ($ty:expr) => {{
            fn f(job: &Job<'_>, rows: Range<usize>, _pack: &mut Vec<u8>, out: Sink<'_>) {
                for c in 0..job.m {
                    let x = &job.act[c * job.xrow..];
                    for r in rows.clone() {
                        let v = scalar::vec_dot($ty, &job.w[r * job.wrow..], x, job.nb);
                        out(c, r, &[v]);
                    }
                }
            }
            f as RangeFn
        }};
    }
    macro_rules! range_decoded {
        ($ty:expr) => {{
            // Each weight row is decoded once for all the activation rows.
            fn f(job: &Job<'_>, rows: Range<usize>, pack: &mut Vec<u8>, out: Sink<'_>) {
                let len = crate::iquant::decoded_bytes(job.nb);
                if pack.len() < len {
                    pack.resize(len, 0);
                }
                for r in rows {
                    crate::iquant::decode_row(
                        $ty,
                        &job.w[r * job.wrow..],
                        job.nb,
                        &mut pack[..len],
                    );
                    for c in 0..job.m {
                        let x = &job.act[c * job.xrow..];
                        out(c, r, &[crate::iquant::dot_decoded(&pack[..len], x, job.nb)]);
                    }
                }
            }
            f as RangeFn
        }};
    }
    match ty {
        QType::Q4_0 => range!(QType::Q4_0),
        QType::Q4_1 => range!(QType::Q4_1),
        QType::Q5_0 => range!(QType::Q5_0),
        QType::Q5_1 => range!(QType::Q5_1),
        QType::Q8_0 => range!(QType::Q8_0),
        QType::Q2K => range!(QType::Q2K),
        QType::Q3K => range!(QType::Q3K),
        QType::Q4K => range!(QType::Q4K),
        QType::Q5K => range!(QType::Q5K),
        QType::Q6K => range!(QType::Q6K),
        QType::IQ4NL => range!(QType::IQ4NL),
        QType::IQ4XS => range!(QType::IQ4XS),
        QType::IQ2XXS => range_decoded!(QType::IQ2XXS),
        QType::IQ2XS => range_decoded!(QType::IQ2XS),
        QType::IQ2S => range_decoded!(QType::IQ2S),
        QType::IQ3XXS => range_decoded!(QType::IQ3XXS),
        QType::IQ3S => range_decoded!(QType::IQ3S),
        QType::IQ1S => range_decoded!(QType::IQ1S),
        QType::IQ1M => range_decoded!(QType::IQ1M),
        QType::TQ1_0 => range_decoded!(QType::TQ1_0),
        QType::TQ2_0 => range_decoded!(QType::TQ2_0),
    }
}

/// Quantizes a whole row (`out` is exactly its blocks) at `simd`; every level gives the same
/// bytes.
pub fn quantize_into(simd: Simd, x: &[f32], to: VecDotType, out: &mut [u8]) {
    assert!(simd.is_available(), "this CPU cannot run {simd:?} kernels");
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2, FMA and F16C are available (both levels include them).
        Simd::Avx2 | Simd::Avx512 => unsafe { crate::x86::quantize::quantize_row_avx2(x, to, out) },
        // The portable code (NEON activations included: quantizing is a small part of a
        // product).
        _ => scalar::quantize_row(x, to, out),
    }
}
