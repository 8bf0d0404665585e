//! After a warm-up call, `matmul` allocates nothing: a decode loop that keeps its `Scratch`
//! and pool runs allocation-free (counted by a wrapping global allocator, on the threads that
//! run the products only: the test harness's own threads may allocate at any time).

mod common;

use common::*;
use seek_kernels::{matmul, QMatrix, QType, Scratch, ThreadPool};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread runs products (the test's thread and the pool's workers).
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // `try_with`: a thread being torn down has no thread-locals left.
    if TRACKED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn matmul_does_not_allocate_after_warm_up() {
    let mut rng = rng(6);
    let pool = ThreadPool::new(2).unwrap();
    // Mark every pool thread: each part waits until both threads have taken one.
    let marked = AtomicUsize::new(0);
    pool.par_chunks_mut(&mut [0u8; 2], 1, &|_, _| {
        TRACKED.with(|t| t.set(true));
        marked.fetch_add(1, Ordering::SeqCst);
        while marked.load(Ordering::SeqCst) < 2 {
            std::hint::spin_loop();
        }
    });
    let mut scratch = Scratch::new();
    // Large enough to be split across both threads; m = 1 (decode) and m = 8 (prefill, which
    // repacks weights into the per-thread buffers).
    let cases: Vec<_> = [(QType::Q5_0, 512, 896), (QType::Q4K, 512, 1024)]
        .into_iter()
        .map(|(ty, rows, cols)| {
            (
                ty,
                rows,
                cols,
                random_blocks(ty, rows * cols / ty.block_elems(), &mut rng),
            )
        })
        .collect();
    let x = random_acts(8 * 1024, &mut rng);
    let mut out = vec![0f32; 8 * 512];
    let mut run = |scratch: &mut Scratch| {
        for (ty, rows, cols, data) in &cases {
            let w = QMatrix::new(*ty, data, *rows, *cols).unwrap();
            for m in [1, 8] {
                matmul(&w, &x[..m * cols], m, &mut out[..m * rows], scratch, &pool);
            }
        }
    };
    // Several warm-up passes: which pool thread takes which chunk depends on scheduling, and a
    // thread's first job may set up its thread-locals once.
    for _ in 0..10 {
        run(&mut scratch);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..10 {
        run(&mut scratch);
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        0,
        "{} allocations in 10 warm passes",
        after - before
    );
}
