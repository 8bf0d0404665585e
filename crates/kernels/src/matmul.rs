//! The matrix product driver: activations are quantized once per row into the caller's
//! [`Scratch`], and weight rows are split evenly across the pool's threads in whole groups of
//! the kernel (8 or 16 rows), each thread computing its rows against every activation row.

use crate::dispatch::{quantize_into, ActInfoBuf, Job, Kernel};
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

/// What a caller of [`matmul`] keeps between calls: the SIMD level and the buffers for the
/// quantized activations and each thread's repacked weights, which grow to the largest shape
/// seen and are then reused, so a decode loop does not allocate.
#[derive(Debug, Clone)]
pub struct Scratch {
    simd: Simd,
    act: Vec<u8>,
    info: ActInfoBuf,
    packs: Vec<Vec<u8>>,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    /// Scratch at the best SIMD level of this CPU.
    pub fn new() -> Self {
        Self::at(Simd::best())
    }

    /// Scratch at a forced SIMD level (tests, benchmarks), refused if the CPU lacks it.
    pub fn with_simd(simd: Simd) -> Result<Self, KernelError> {
        if !simd.is_available() {
            return Err(KernelError::Unavailable(simd));
        }
        Ok(Self::at(simd))
    }

    fn at(simd: Simd) -> Self {
        Self {
            simd,
            act: Vec::new(),
            info: ActInfoBuf::default(),
            packs: Vec::new(),
        }
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
const MIN_PARALLEL_WORK: usize = 256 * 1024;

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
    let nb = cols / w.ty.block_elems();
    if m >= kernel.info_from_m {
        scratch.info.fill(vt, act, xrow, m, nb);
    }
    let job = Job {
        w: w.data,
        wrow: w.ty.row_bytes(cols),
        act,
        xrow,
        nb,
        m,
        act_info: scratch.info.info(),
    };
    let groups = rows.div_ceil(kernel.group);
    let threads = if w.data.len() * m < MIN_PARALLEL_WORK {
        1
    } else {
        pool.current_num_threads().min(groups)
    };
    let packs = &mut scratch.packs;
    if packs.len() < threads {
        packs.resize_with(threads, Vec::new);
    }
    if threads <= 1 {
        kernel.run(&job, 0..rows, &mut packs[0], &mut |c, r0, v| {
            out[c * rows + r0..c * rows + r0 + v.len()].copy_from_slice(v)
        });
        return;
    }
    let shared = SharedOut {
        ptr: out.as_mut_ptr(),
        len: out.len(),
    };
    let range = |t: usize| {
        let g0 = groups * t / threads;
        let g1 = groups * (t + 1) / threads;
        g0 * kernel.group..(g1 * kernel.group).min(rows)
    };
    let work = |t: usize, pack: &mut Vec<u8>| {
        let rows_t = range(t);
        // SAFETY: thread `t` writes only the elements of its weight rows `rows_t`, and the
        // threads' ranges are disjoint; `out` is not otherwise touched until `install` returns.
        kernel.run(&job, rows_t, pack, &mut |c, r0, v| unsafe {
            shared.write(c * rows + r0, v)
        });
    };
    pool.install(|| split(&mut packs[..threads], 0, &work));
}

/// Runs `f(t, pack t)` for `t` in `lo..lo + packs.len()`, spread over the current pool by
/// `rayon::join`, which (unlike `broadcast`) needs no allocation.
fn split(packs: &mut [Vec<u8>], lo: usize, f: &(dyn Fn(usize, &mut Vec<u8>) + Sync)) {
    if packs.len() == 1 {
        f(lo, &mut packs[0])
    } else {
        let mid = packs.len() / 2;
        let (a, b) = packs.split_at_mut(mid);
        rayon::join(|| split(a, lo, f), || split(b, lo + mid, f));
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
    /// Writes `v` at `out[at..]`.
    ///
    /// # Safety
    /// No other thread reads or writes these elements while the matmul runs.
    unsafe fn write(&self, at: usize, v: &[f32]) {
        assert!(at + v.len() <= self.len);
        // SAFETY: in bounds (just checked); exclusive by the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(at), v.len()) }
    }
}
