//! AVX-512 (F, BW, VL, VNNI) kernels.

use crate::dispatch::TileFn;
use crate::QType;

/// The AVX-512 tile kernel for `ty` and its tile shape, or `None` where AVX2 is used.
pub fn tile_fn(_ty: QType) -> Option<(TileFn, usize, usize)> {
    None
}
