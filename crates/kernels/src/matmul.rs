//! The matrix product driver: activations are quantized once per row into the caller's
//! [`Scratch`], weight rows are split evenly across the pool's threads, and each thread walks
//! its rows in tiles of 4 weight rows by up to 4 activation rows.

use crate::dispatch::{quantize_into, Kernel, Rows};
use crate::{KernelError, QType, Simd};
use rayon::prelude::*;

/// A row-major matrix of quantized weights: `rows` rows of `cols` elements, each row a run of
/// blocks (a GGUF tensor of ggml shape `[cols, rows]`).
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    ty: QType,
    data: &'a [u8],
    rows: usize,
    cols: usize,
}

impl<'a> QMatrix<'a> {
    /// Checks that `data` holds exactly `rows` rows of `cols` elements of `ty`.
    pub fn new(ty: QType, data: &'a [u8], rows: usize, cols: usize) -> Result<Self, KernelError> {
        if !cols.is_multiple_of(ty.block_elems()) {
            return Err(KernelError::RaggedRow {
                ty,
                cols,
                block: ty.block_elems(),
            });
        }
        let expected = rows * ty.row_bytes(cols);
        if data.len() != expected {
            return Err(KernelError::WrongLength {
                ty,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            ty,
            data,
            rows,
            cols,
        })
    }

    /// Weight type.
    pub fn ty(&self) -> QType {
        self.ty
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The blocks of row `i`.
    pub fn row(&self, i: usize) -> &'a [u8] {
        let rb = self.ty.row_bytes(self.cols);
        &self.data[i * rb..(i + 1) * rb]
    }
}

/// What a caller of [`matmul`] keeps between calls: the SIMD level and the buffer for the
/// quantized activations, which grows to the largest `m x cols` seen and is then reused, so a
/// decode loop does not allocate.
#[derive(Debug, Clone)]
pub struct Scratch {
    simd: Simd,
    act: Vec<u8>,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    /// Scratch at the best SIMD level of this CPU.
    pub fn new() -> Self {
        Self {
            simd: Simd::best(),
            act: Vec::new(),
        }
    }

    /// Scratch at a forced SIMD level (tests, benchmarks), refused if the CPU lacks it.
    pub fn with_simd(simd: Simd) -> Result<Self, KernelError> {
        if !simd.is_available() {
            return Err(KernelError::Unavailable(simd));
        }
        Ok(Self {
            simd,
            act: Vec::new(),
        })
    }

    /// The SIMD level in use.
    pub fn simd(&self) -> Simd {
        self.simd
    }
}

/// A pool of `threads` worker threads for [`matmul`], built once by the caller.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, KernelError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("seek-kernel-{i}"))
        .build()
        .map_err(|source| KernelError::ThreadPool { threads, source })
}

/// Below this many weight bytes times activation rows a product runs on the calling thread:
/// waking the pool costs more than it saves.
const MIN_PARALLEL_WORK: usize = 64 * 1024;

/// `out = x · wᵀ`: `x` is `(m, cols)` row-major f32, `out` is `(m, rows)` row-major.
///
/// The activations are quantized once into `scratch` (in parallel when `m > 1`); the weight
/// rows are then split evenly across the threads of `pool`. Every element of `out` equals
/// [`Simd::vec_dot`] of its weight row and quantized activation row, bit for bit.
pub fn matmul(
    w: &QMatrix<'_>,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    scratch: &mut Scratch,
    pool: &rayon::ThreadPool,
) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(
        x.len(),
        m * cols,
        "matmul: x must be (m = {m}, cols = {cols})"
    );
    assert_eq!(
        out.len(),
        m * rows,
        "matmul: out must be (m = {m}, rows = {rows})"
    );
    if m == 0 || rows == 0 {
        return;
    }
    let simd = scratch.simd;
    let vt = w.ty.vec_dot_type();
    let xrow = vt.row_bytes(cols);
    let act = &mut scratch.act;
    act.resize(m * xrow, 0);
    let act = &mut act[..m * xrow];
    if m > 1 && pool.current_num_threads() > 1 {
        pool.install(|| {
            act.par_chunks_mut(xrow)
                .zip(x.par_chunks(cols))
                .for_each(|(a, x)| quantize_into(simd, x, vt, a));
        });
    } else {
        for (a, x) in act.chunks_mut(xrow).zip(x.chunks(cols)) {
            quantize_into(simd, x, vt, a);
        }
    }
    let act: &[u8] = act;

    let kernel = Kernel::new(simd, w.ty);
    let job = Job {
        kernel,
        w: w.data,
        wrow: w.ty.row_bytes(cols),
        act,
        xrow,
        nb: cols / w.ty.block_elems(),
        rows,
        m,
    };
    let groups = rows.div_ceil(kernel.rows);
    let threads = if w.data.len() * m < MIN_PARALLEL_WORK {
        1
    } else {
        pool.current_num_threads().min(groups)
    };
    if threads <= 1 {
        job.run(0..rows, |i, v| out[i] = v);
        return;
    }
    let shared = SharedOut {
        ptr: out.as_mut_ptr(),
        len: out.len(),
    };
    let range = |t: usize| {
        let g0 = groups * t / threads;
        let g1 = groups * (t + 1) / threads;
        g0 * kernel.rows..(g1 * kernel.rows).min(rows)
    };
    // SAFETY (of the writes): thread `t` writes only the elements of its weight rows
    // `range(t)`, and the ranges are disjoint; `out` is not touched otherwise until
    // `install` returns.
    pool.install(|| {
        split(0, threads, &|t| {
            job.run(range(t), |i, v| unsafe { shared.write(i, v) })
        })
    });
}

/// Runs `f(t)` for `t` in `lo..hi`, spread over the current pool by `rayon::join`, which
/// (unlike `broadcast`) needs no allocation.
fn split(lo: usize, hi: usize, f: &(dyn Fn(usize) + Sync)) {
    if hi - lo == 1 {
        f(lo)
    } else {
        let mid = lo + (hi - lo) / 2;
        rayon::join(|| split(lo, mid, f), || split(mid, hi, f));
    }
}

/// `out` of one [`matmul`], shared by threads that write disjoint elements.
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the pointer is only written through `write`, whose callers write disjoint elements.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// No other thread reads or writes element `i` while the matmul runs.
    unsafe fn write(&self, i: usize, v: f32) {
        assert!(i < self.len);
        // SAFETY: in bounds (just checked); exclusive by the caller's contract.
        unsafe { *self.ptr.add(i) = v }
    }
}

/// One product's fixed inputs.
struct Job<'a> {
    kernel: Kernel,
    w: &'a [u8],
    wrow: usize,
    act: &'a [u8],
    xrow: usize,
    nb: usize,
    rows: usize,
    m: usize,
}

impl Job<'_> {
    /// Computes the weight rows `rows` against every activation row, handing each result to
    /// `store(index into out, value)`.
    fn run(&self, rows: std::ops::Range<usize>, mut store: impl FnMut(usize, f32)) {
        let (rt, ct) = (self.kernel.rows, self.kernel.cols);
        let mut tile = [0f32; 16];
        let mut r = rows.start;
        while r < rows.end {
            let rr = if r + rt <= rows.end { rt } else { 1 };
            let w = Rows::new(&self.w[r * self.wrow..], self.wrow);
            let mut c = 0;
            while c < self.m {
                let cc = ct.min(self.m - c);
                let x = Rows::new(&self.act[c * self.xrow..], self.xrow);
                self.kernel.tile(rr, cc, w, x, self.nb, &mut tile);
                for i in 0..rr {
                    for j in 0..cc {
                        store((c + j) * self.rows + r + i, tile[i * cc + j]);
                    }
                }
                c += cc;
            }
            r += rr;
        }
    }
}
