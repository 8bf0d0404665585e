//! x86-64 SIMD kernels, chosen at run time.
//!
//! Every `unsafe fn` here is called only from a `#[target_feature]` entry point whose features
//! the dispatcher checked ([`crate::Simd::is_available`]), with pointers that the dispatcher
//! bounds-checked ([`crate::dispatch::Kernel::tile`]). The `#[inline(always)]` helpers carry no
//! `#[target_feature]` of their own: they are inlined into the entry points, which compile the
//! intrinsics with the entry point's features (the pattern the `memchr` crate uses).

// The tiles index `acc[r][c]` by row and column: index loops read like the math.
#![allow(clippy::needless_range_loop)]

pub mod avx2;
pub mod avx512;
pub mod quantize;

/// The entry-point `match` of a tile kernel: monomorphizes `$tile::<$k, R, C>` for the tile
/// shapes the matmul driver asks for (4 x c and 1 x c, c <= 4) and decomposes any other shape
/// into 1 x 1 tiles, which compute the same per-pair instruction sequence.
macro_rules! tile_entry {
    ($features:literal, $name:ident, $tile:ident, $k:ty) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(t: &crate::dispatch::Tile<'_>, out: &mut [f32; 16]) {
            let (w, ws, x, xs, nb) = (t.w.as_ptr(), t.ws, t.x.as_ptr(), t.xs, t.nb);
            // SAFETY: the caller's `TileFn` contract: the features are present and the `r`
            // weight rows and `c` activation rows of `nb` blocks are in bounds.
            unsafe {
                match (t.r, t.c) {
                    (4, 4) => $tile::<$k, 4, 4>(w, ws, x, xs, nb, out),
                    (4, 3) => $tile::<$k, 4, 3>(w, ws, x, xs, nb, out),
                    (4, 2) => $tile::<$k, 4, 2>(w, ws, x, xs, nb, out),
                    (4, 1) => $tile::<$k, 4, 1>(w, ws, x, xs, nb, out),
                    (1, 4) => $tile::<$k, 1, 4>(w, ws, x, xs, nb, out),
                    (1, 3) => $tile::<$k, 1, 3>(w, ws, x, xs, nb, out),
                    (1, 2) => $tile::<$k, 1, 2>(w, ws, x, xs, nb, out),
                    _ => {
                        let mut one = [0f32; 16];
                        for i in 0..t.r {
                            for j in 0..t.c {
                                $tile::<$k, 1, 1>(w.add(i * ws), 0, x.add(j * xs), 0, nb, &mut one);
                                out[i * t.c + j] = one[0];
                            }
                        }
                    }
                }
            }
        }
    };
}
pub(crate) use tile_entry;
