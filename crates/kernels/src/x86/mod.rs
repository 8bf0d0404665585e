//! x86-64 SIMD kernels, chosen at run time.
//!
//! Every `unsafe fn` here is called only from a `#[target_feature]` entry point whose features
//! the dispatcher checked ([`crate::Simd::is_available`]), with pointers that the dispatcher
//! bounds-checked ([`crate::dispatch::Kernel::run`]). The `#[inline(always)]` helpers carry no
//! `#[target_feature]` of their own: they are inlined into the entry points, which compile the
//! intrinsics with the entry point's features (the pattern the `memchr` crate uses).

// Kernels index rows and lanes by number: index loops read like the math.
#![allow(clippy::needless_range_loop)]

pub mod avx2;
pub mod avx512;
pub mod quantize;

/// Declares a kernel entry point `$name` (a [`crate::dispatch::RangeFn`]) with `$features`
/// that runs `$range::<$k>`.
macro_rules! range_entry {
    ($features:literal, $name:ident, $range:ident, $k:ty) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(
            job: &crate::dispatch::Job<'_>,
            rows: core::ops::Range<usize>,
            pack: &mut Vec<u8>,
            out: crate::dispatch::Sink<'_>,
        ) {
            // SAFETY: the caller's `RangeFn` contract: the features are present and the job's
            // slices are in bounds.
            unsafe { $range::<$k>(job, rows, pack, out) }
        }
    };
}
pub(crate) use range_entry;

/// Pointers to the `n <= G` weight rows from `r`, the last repeated to fill `G` (its lanes are
/// computed and dropped).
#[inline(always)]
pub(crate) fn group_ptrs<const G: usize>(
    job: &crate::dispatch::Job<'_>,
    r: usize,
    n: usize,
) -> [*const u8; G] {
    core::array::from_fn(|i| job.w[(r + i.min(n - 1)) * job.wrow..].as_ptr())
}
