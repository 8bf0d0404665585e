//! The choice of tile kernel for a (SIMD level, weight type), made once per call site.

use crate::{scalar, QType, Simd, VecDotType};

/// Up to four rows (weight or activation) of blocks, `stride` bytes apart.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    data: &'a [u8],
    stride: usize,
}

impl<'a> Rows<'a> {
    /// Rows `0, 1, ..` start at `data[0]`, `data[stride]`, ...
    pub fn new(data: &'a [u8], stride: usize) -> Self {
        Self { data, stride }
    }
}

/// One tile: the dot products of `r` weight rows with `c` activation rows over `nb` blocks
/// (`r, c <= 4`); rows `i` start at `w[i * ws]` and `x[i * xs]`.
pub struct Tile<'a> {
    pub w: &'a [u8],
    pub ws: usize,
    pub x: &'a [u8],
    pub xs: usize,
    pub nb: usize,
    pub r: usize,
    pub c: usize,
}

/// A tile kernel: writes the dot product of weight row `i` and activation row `j` of the
/// tile to `out[i * c + j]`.
///
/// # Safety
/// The CPU supports the kernel's SIMD level, and the tile's rows are in bounds (as
/// [`Kernel::tile`] checks).
pub type TileFn = unsafe fn(t: &Tile<'_>, out: &mut [f32; 16]);

/// The tile kernel of one (SIMD level, weight type) and its preferred tile shape.
#[derive(Clone, Copy)]
pub struct Kernel {
    ty: QType,
    f: TileFn,
    /// Weight rows per tile (1 or this).
    pub rows: usize,
    /// Activation rows per tile (1 or this).
    pub cols: usize,
}

impl Kernel {
    /// Panics if the CPU cannot run `simd`: that is a caller's broken invariant, as every
    /// public entry point checks [`Simd::is_available`] or starts from [`Simd::best`].
    pub fn new(simd: Simd, ty: QType) -> Self {
        assert!(simd.is_available(), "this CPU cannot run {simd:?} kernels");
        // A level without a kernel for `ty` falls back to the next lower one.
        let simd_tile = match simd {
            Simd::Scalar => None,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => crate::x86::avx2::tile_fn(ty),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => {
                crate::x86::avx512::tile_fn(ty).or_else(|| crate::x86::avx2::tile_fn(ty))
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("is_available is false off x86-64"),
        };
        let (f, rows, cols) = simd_tile.unwrap_or((scalar_tile_fn(ty), 4, 4));
        Self { ty, f, rows, cols }
    }

    /// Runs the kernel on an `r x c` tile after checking that the rows hold `nb` blocks.
    pub fn tile(&self, r: usize, c: usize, w: Rows, x: Rows, nb: usize, out: &mut [f32; 16]) {
        assert!((1..=4).contains(&r) && (1..=4).contains(&c));
        let wb = nb * self.ty.block_bytes();
        let xb = nb * self.ty.vec_dot_type().block_bytes();
        assert!(w.data.len() >= (r - 1) * w.stride + wb && (r == 1 || w.stride >= wb));
        assert!(x.data.len() >= (c - 1) * x.stride + xb && (c == 1 || x.stride >= xb));
        let t = Tile {
            w: w.data,
            ws: w.stride,
            x: x.data,
            xs: x.stride,
            nb,
            r,
            c,
        };
        // SAFETY: `Kernel::new` checked that the CPU supports the level; the rows are in
        // bounds (checked just above).
        unsafe { (self.f)(&t, out) }
    }
}

fn scalar_tile_fn(ty: QType) -> TileFn {
    macro_rules! tile {
        ($ty:expr) => {{
            fn f(t: &Tile<'_>, out: &mut [f32; 16]) {
                for i in 0..t.r {
                    for j in 0..t.c {
                        let (w, x) = (&t.w[i * t.ws..], &t.x[j * t.xs..]);
                        out[i * t.c + j] = scalar::vec_dot($ty, w, x, t.nb);
                    }
                }
            }
            f as TileFn
        }};
    }
    match ty {
        QType::Q4_0 => tile!(QType::Q4_0),
        QType::Q4_1 => tile!(QType::Q4_1),
        QType::Q5_0 => tile!(QType::Q5_0),
        QType::Q5_1 => tile!(QType::Q5_1),
        QType::Q8_0 => tile!(QType::Q8_0),
        QType::Q2K => tile!(QType::Q2K),
        QType::Q3K => tile!(QType::Q3K),
        QType::Q4K => tile!(QType::Q4K),
        QType::Q5K => tile!(QType::Q5K),
        QType::Q6K => tile!(QType::Q6K),
    }
}

/// Quantizes a whole row (`out` is exactly its blocks) at `simd`; every level gives the same
/// bytes.
pub fn quantize_into(simd: Simd, x: &[f32], to: VecDotType, out: &mut [u8]) {
    assert!(simd.is_available(), "this CPU cannot run {simd:?} kernels");
    match simd {
        Simd::Scalar => scalar::quantize_row(x, to, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2, FMA and F16C are available (both levels include them).
        _ => unsafe { crate::x86::quantize::quantize_row_avx2(x, to, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("is_available is false off x86-64"),
    }
}
