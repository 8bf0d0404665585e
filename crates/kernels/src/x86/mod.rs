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

/// Asks the caches for the lines of `len > 0` bytes from `p`, which may lie past the matrix:
/// a prefetch never faults, and the pointer is only formed with wrapping arithmetic.
///
/// Decode reads every weight byte once, so its speed is the memory's, provided the loads
/// are in flight early enough. The kernels read a group of 8 or 16 rows side by side, which
/// the hardware prefetchers follow poorly (that many interleaved streams): they ask for the
/// same bytes of the next group while computing this one (`_MM_HINT_T0`), and for the first
/// group of a range at its start (`_MM_HINT_T2`, many lines at once). Measured on the
/// `gemv` example (Xeon, 2 threads): 46-65% of a streaming read without, 78-99% with.
#[inline(always)]
pub(crate) unsafe fn prefetch<const HINT: i32>(p: *const u8, len: usize) {
    use core::arch::x86_64::_mm_prefetch;
    // SAFETY: a prefetch has no architectural effect.
    unsafe {
        let mut o = 0;
        while o < len {
            _mm_prefetch::<HINT>(p.wrapping_add(o).cast());
            o += 64;
        }
        // The last line, which the steps of 64 miss when `p` is not line-aligned.
        _mm_prefetch::<HINT>(p.wrapping_add(len - 1).cast());
    }
}

/// How far ahead (in bytes) the decode group of `g` rows at row `r` prefetches: one group, or
/// nothing for the last group of the range (the next range may be another thread's).
#[inline(always)]
pub(crate) fn ahead_of(
    job: &crate::dispatch::Job<'_>,
    rows: &core::ops::Range<usize>,
    r: usize,
    g: usize,
) -> usize {
    if r + g < rows.end {
        g * job.wrow
    } else {
        0
    }
}

/// Prefetches the first group (up to `g` rows) of a decode range.
#[inline(always)]
pub(crate) unsafe fn prefetch_first_group(
    job: &crate::dispatch::Job<'_>,
    rows: &core::ops::Range<usize>,
    g: usize,
) {
    let n = g.min(rows.end - rows.start);
    if n > 0 {
        // SAFETY: see `prefetch`.
        unsafe {
            prefetch::<{ core::arch::x86_64::_MM_HINT_T2 }>(
                job.w.as_ptr().wrapping_add(rows.start * job.wrow),
                n * job.wrow,
            )
        }
    }
}
