//! The matrix product driver: activations are quantized once per row into the caller's
//! [`Scratch`], and weight rows are split evenly across the pool's threads in whole groups of
//! the kernel (8 or 16 rows), each thread computing its rows against every activation row.

use crate::dispatch::{quantize_into, ActInfoBuf, Job, Kernel};
use crate::pool::{Chunks, ThreadPool};
use crate::{KernelError, QType, Simd, VecDotType};
use std::marker::PhantomData;

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
    /// [`matmul_many`]'s quantized row, one per vec-dot type.
    acts: Vec<Vec<u8>>,
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
            acts: Vec::new(),
            info: ActInfoBuf::default(),
            packs: Vec::new(),
        }
    }

    /// The SIMD level in use.
    pub fn simd(&self) -> Simd {
        self.simd
    }
}

/// Below this many weight bytes times activation rows a product runs on the calling thread:
/// waking the pool costs more than it saves.
const MIN_PARALLEL_WORK: usize = 32 * 1024;

/// Below this many activations (`m * cols`) they are quantized on the calling thread.
const MIN_PARALLEL_QUANTIZE: usize = 32 * 1024;

/// `out = x · wᵀ`: `x` is `(m, cols)` row-major f32, `out` is `(m, rows)` row-major.
///
/// The activations are quantized once into `scratch` (in parallel when `m > 1`); the weight
/// rows are then shared out across the threads of `pool` (the caller's among them) in whole
/// groups of the kernel's rows. Every element of `out` equals
/// [`Simd::vec_dot`] of its weight row and quantized activation row, bit for bit.
pub fn matmul(
    w: &QMatrix<'_>,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    scratch: &mut Scratch,
    pool: &ThreadPool,
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
    let threads = pool.threads();
    if m > 1 && threads > 1 && m * cols >= MIN_PARALLEL_QUANTIZE {
        let act = Disjoint::new(act);
        let rows_q = Chunks::new(m);
        pool.run(&|_| {
            while let Some(c) = rows_q.next() {
                // SAFETY: activation row c is handed out once, so only this thread writes it.
                let a = unsafe { act.slice(c * xrow..(c + 1) * xrow) };
                quantize_into(simd, &x[c * cols..(c + 1) * cols], vt, a);
            }
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
    let packs = &mut scratch.packs;
    if packs.len() < threads {
        packs.resize_with(threads, Vec::new);
    }
    if threads == 1 || w.data.len() * m < MIN_PARALLEL_WORK {
        kernel.run(&job, 0..rows, &mut packs[0], &mut |c, r0, v| {
            out[c * rows + r0..c * rows + r0 + v.len()].copy_from_slice(v)
        });
        return;
    }
    // Whole groups of rows in more chunks than threads, taken by whoever is free: a thread
    // that starts late (or not at all, on a busy machine) leaves its share to the others.
    let n_chunks = groups.min(CHUNKS_PER_THREAD * threads);
    let chunks = Chunks::new(n_chunks);
    let out = Disjoint::new(out);
    let packs_all = &mut packs[..threads];
    {
        let packs = Disjoint::new(&mut *packs_all);
        pool.run(&|t| {
            // SAFETY: pack t belongs to thread t, the only one running `f(t)`.
            let pack = unsafe { &mut packs.slice(t..t + 1)[0] };
            while let Some(i) = chunks.next() {
                let g0 = groups * i / n_chunks;
                let g1 = groups * (i + 1) / n_chunks;
                let rows_i = g0 * kernel.group..(g1 * kernel.group).min(rows);
                kernel.run(&job, rows_i, pack, &mut |c, r0, v| {
                    // SAFETY: chunk i is handed out once, and its results are the elements of its
                    // weight rows `rows_i` (for every activation row), which no other chunk holds.
                    unsafe { out.slice(c * rows + r0..c * rows + r0 + v.len()) }.copy_from_slice(v)
                });
            }
        });
    }
    // Which thread repacks which chunk depends on scheduling: give every thread's buffer the
    // largest size any needed, so a thread that sat out the warm-up does not allocate later.
    let need = packs_all.iter().map(Vec::len).max().unwrap_or(0);
    for p in packs_all.iter_mut().filter(|p| p.len() < need) {
        p.resize(need, 0);
    }
}

/// Several products of one activation row (decode: `m = 1`) with matrices of the same width,
/// in one dispatch of the pool: `outs[i] = x · ws[i]ᵀ`. The row is quantized once per
/// vec-dot type, and the rows of all matrices are shared out together, so a layer's q/k/v
/// (or gate/up) projections cost one wake-up of the pool instead of three (or two). Each
/// element equals [`matmul`]'s, bit for bit.
pub fn matmul_many(
    ws: &[QMatrix<'_>],
    x: &[f32],
    outs: &mut [&mut [f32]],
    scratch: &mut Scratch,
    pool: &ThreadPool,
) {
    assert_eq!(ws.len(), outs.len(), "matmul_many: one output per matrix");
    let Some(first) = ws.first() else { return };
    let cols = first.cols;
    assert!(
        ws.iter().all(|w| w.cols == cols),
        "matmul_many: every matrix must have {cols} columns"
    );
    assert_eq!(x.len(), cols, "matmul_many: x must be one row of {cols}");
    for (w, o) in ws.iter().zip(outs.iter()) {
        assert_eq!(
            o.len(),
            w.rows,
            "matmul_many: out must have the matrix's rows"
        );
    }
    let simd = scratch.simd;
    // One quantized copy of x per distinct vec-dot type (at most three exist).
    let mut types: Vec<VecDotType> = Vec::new();
    for w in ws {
        let vt = w.ty.vec_dot_type();
        if !types.contains(&vt) {
            types.push(vt);
        }
    }
    if scratch.acts.len() < types.len() {
        scratch.acts.resize_with(types.len(), Vec::new);
    }
    for (vt, buf) in types.iter().zip(scratch.acts.iter_mut()) {
        buf.resize(vt.row_bytes(cols), 0);
        quantize_into(simd, x, *vt, buf);
    }
    let acts = &scratch.acts;
    let plans: Vec<(Kernel, Job<'_>, usize)> = ws
        .iter()
        .map(|w| {
            let vt = w.ty.vec_dot_type();
            let a = &acts[types
                .iter()
                .position(|t| *t == vt)
                .expect("collected above")];
            let kernel = Kernel::new(simd, w.ty);
            let groups = w.rows.div_ceil(kernel.group);
            let job = Job {
                w: w.data,
                wrow: w.ty.row_bytes(cols),
                act: a,
                xrow: a.len(),
                nb: cols / w.ty.block_elems(),
                m: 1,
                act_info: Default::default(),
            };
            (kernel, job, groups)
        })
        .collect();
    let threads = pool.threads();
    let packs = &mut scratch.packs;
    if packs.len() < threads {
        packs.resize_with(threads, Vec::new);
    }
    let bytes: usize = ws.iter().map(|w| w.data.len()).sum();
    if threads == 1 || bytes < MIN_PARALLEL_WORK {
        for ((kernel, job, _), (w, out)) in plans.iter().zip(ws.iter().zip(outs.iter_mut())) {
            kernel.run(job, 0..w.rows, &mut packs[0], &mut |_, r0, v| {
                out[r0..r0 + v.len()].copy_from_slice(v)
            });
        }
        return;
    }
    // Chunks of each matrix in proportion to its bytes, numbered across all of them.
    let total_chunks = CHUNKS_PER_THREAD * threads;
    let mut first_chunk = Vec::with_capacity(ws.len() + 1);
    let mut n = 0;
    for ((_, _, groups), w) in plans.iter().zip(ws) {
        first_chunk.push(n);
        n += (*groups).min((total_chunks * w.data.len()).div_ceil(bytes).max(1));
    }
    first_chunk.push(n);
    let chunks = Chunks::new(n);
    let outs: Vec<Disjoint<'_, f32>> = outs.iter_mut().map(|o| Disjoint::new(o)).collect();
    let packs = Disjoint::new(&mut packs[..threads]);
    pool.run(&|t| {
        // SAFETY: pack t belongs to thread t, the only one running `f(t)`.
        let pack = unsafe { &mut packs.slice(t..t + 1)[0] };
        while let Some(c) = chunks.next() {
            let mi = first_chunk.partition_point(|&f| f <= c) - 1;
            let (kernel, job, groups) = &plans[mi];
            let (i, k) = (c - first_chunk[mi], first_chunk[mi + 1] - first_chunk[mi]);
            let g0 = groups * i / k;
            let g1 = groups * (i + 1) / k;
            let rows = g0 * kernel.group..(g1 * kernel.group).min(ws[mi].rows);
            let out = &outs[mi];
            kernel.run(job, rows, pack, &mut |_, r0, v| {
                // SAFETY: chunk c is handed out once and covers rows no other chunk holds.
                unsafe { out.slice(r0..r0 + v.len()) }.copy_from_slice(v)
            });
        }
    });
}

/// Chunks of weight rows per thread of the pool: enough to even out a late start.
const CHUNKS_PER_THREAD: usize = 4;

/// A slice that threads of one `pool.run` write in disjoint parts.
pub(crate) struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: PhantomData<&'a mut [T]>,
}

// SAFETY: parts are handed out only through `slice`, whose callers keep them disjoint; `T` is
// sent between threads that way.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub(crate) fn new(s: &'a mut [T]) -> Self {
        Self {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _slice: PhantomData,
        }
    }

    /// The elements `r`.
    ///
    /// # Safety
    /// No other thread uses any of these elements while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, r: std::ops::Range<usize>) -> &'a mut [T] {
        assert!(r.start <= r.end && r.end <= self.len);
        // SAFETY: in bounds (just checked); exclusive by the caller's contract; the slice
        // lives as long as the borrow `new` took.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}
