//! The kernels' thread pool: `run(f)` calls `f(0)` on the caller's thread and `f(t)` on each
//! worker `t` that joins while the caller is busy; `f` takes its work from a shared counter
//! (see [`Chunks`]), so whoever is running finishes the job.
//!
//! It runs one job at a time (a matmul) and nothing else, which keeps it small: no queue, no
//! allocation per job, and idle workers spin for a short while before they sleep, so the
//! back-to-back products of a decode step do not pay a wake-up each. The caller never waits
//! for a worker that has not joined: on a busy machine a descheduled worker costs its share
//! of speed-up, not a stall (a fixed split of the rows would wait for it).

use crate::KernelError;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins, waiting for the next job, before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

/// A job: `&dyn Fn(usize)` whose lifetime `run` guarantees (see there).
#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync`, and `run` keeps it alive while any worker is inside it.
unsafe impl Send for JobRef {}

/// The current job and the workers inside it.
struct Slot {
    /// `Some` from the start of `run` until the caller has finished its own call.
    job: Option<JobRef>,
    /// Workers that took the job and have not returned from it.
    inside: usize,
    /// Workers asleep on `start` (a job start wakes them; without any it makes no syscall).
    sleepers: usize,
    /// The caller sleeps on `done` (the last worker out wakes it; otherwise no syscall).
    closer_waiting: bool,
}

struct Shared {
    /// Bumped by `run` for each job; idle workers watch it.
    epoch: AtomicU64,
    /// A worker's call panicked.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// `Slot::inside`, readable without the lock: the caller spins on it before sleeping.
    busy: AtomicUsize,
    slot: Mutex<Slot>,
    /// Signalled when a job starts or the pool shuts down.
    start: Condvar,
    /// Signalled when the last worker leaves a closed job.
    done: Condvar,
}

/// A fixed set of worker threads for [`crate::matmul`], built once by the caller
/// (`--threads`) and shared by every product. `threads` counts the caller: a pool of 2 starts
/// one worker thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held while a job runs: one job at a time (a second caller waits).
    running: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl ThreadPool {
    /// Starts `threads - 1` workers (`threads >= 1`).
    pub fn new(threads: usize) -> Result<Self, KernelError> {
        if threads == 0 {
            return Err(KernelError::ThreadPool {
                threads,
                source: std::io::Error::other("at least 1 thread (the caller's) is needed"),
            });
        }
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            slot: Mutex::new(Slot {
                job: None,
                inside: 0,
                sleepers: 0,
                closer_waiting: false,
            }),
            start: Condvar::new(),
            done: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for t in 1..threads {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("seek-kernel-{t}"))
                .spawn(move || worker(&shared, t))
                .map_err(|source| KernelError::ThreadPool { threads, source })?;
            workers.push(handle);
        }
        Ok(Self {
            shared,
            workers,
            running: Mutex::new(()),
        })
    }

    /// Threads that can run a job, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i, part)` for each part `i` of `data` cut into runs of `chunk` elements (the
    /// last may be shorter), spread over the pool's threads, the caller's among them: the
    /// non-matmul work of a decode step (attention heads) on the same threads as its products,
    /// so the two never compete for cores. Must not be called from inside another job.
    pub fn par_chunks_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        assert!(chunk > 0, "par_chunks_mut: chunk must be positive");
        let len = data.len();
        let chunks = Chunks::new(len.div_ceil(chunk));
        let parts = crate::matmul::Disjoint::new(data);
        self.run(&|_| {
            while let Some(i) = chunks.next() {
                let r = i * chunk..((i + 1) * chunk).min(len);
                // SAFETY: part i is handed out once, so only this call touches its elements.
                f(i, unsafe { parts.slice(r) });
            }
        });
    }

    /// Calls `f(0)` here and `f(t)` on each worker `t` that joins before `f(0)` returns, then
    /// waits for the workers that joined. `f` must share its work out through [`Chunks`] (or
    /// the like) so that `f(0)` alone completes it. Panics if a worker's call panicked.
    pub(crate) fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            return f(0);
        }
        let _one_job = lock(&self.running);
        let sh = &*self.shared;
        sh.panicked.store(false, Ordering::SeqCst);
        // SAFETY (of erasing `f`'s lifetime): a worker calls the job only while it is counted
        // in `inside`, after taking it from the slot; `Close` (which runs even if `f(0)`
        // unwinds) empties the slot and waits for `inside` to reach zero before `run` ends.
        let job = JobRef(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                f as *const _,
            )
        });
        {
            let mut slot = lock(&sh.slot);
            slot.job = Some(job);
            sh.epoch.fetch_add(1, Ordering::SeqCst);
            if slot.sleepers > 0 {
                sh.start.notify_all();
            }
        }
        let close = Close(sh);
        f(0);
        drop(close);
        if sh.panicked.swap(false, Ordering::SeqCst) {
            panic!("a seek-kernels worker thread panicked (see its message above)");
        }
    }
}

/// Closes the current job on drop: no worker takes it any more, and the ones inside are
/// waited for.
struct Close<'a>(&'a Shared);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        let sh = self.0;
        lock(&sh.slot).job = None;
        // The workers inside usually finish within microseconds: spin for them first, as a
        // sleep and a wake-up would cost more than the wait.
        let t0 = Instant::now();
        let mut spins = 0u32;
        while sh.busy.load(Ordering::Acquire) > 0 {
            spins += 1;
            if spins.is_multiple_of(64) && t0.elapsed() > SPIN {
                break;
            }
            std::hint::spin_loop();
        }
        let mut slot = lock(&sh.slot);
        while slot.inside > 0 {
            slot.closer_waiting = true;
            slot = sh.done.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
        slot.closer_waiting = false;
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _g = lock(&self.shared.slot);
            self.shared.shutdown.store(true, Ordering::SeqCst);
            self.shared.start.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the slot's data stays consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker(sh: &Shared, t: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin briefly, then sleep.
        let t0 = Instant::now();
        let mut spins = 0u32;
        while sh.epoch.load(Ordering::SeqCst) == seen && !sh.shutdown.load(Ordering::SeqCst) {
            spins += 1;
            if spins.is_multiple_of(64) && t0.elapsed() > SPIN {
                let mut slot = lock(&sh.slot);
                while sh.epoch.load(Ordering::SeqCst) == seen && !sh.shutdown.load(Ordering::SeqCst)
                {
                    slot.sleepers += 1;
                    slot = sh.start.wait(slot).unwrap_or_else(|e| e.into_inner());
                    slot.sleepers -= 1;
                }
                break;
            }
            std::hint::spin_loop();
        }
        if sh.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // Join the job if it is still open.
        let job = {
            let mut slot = lock(&sh.slot);
            seen = sh.epoch.load(Ordering::SeqCst);
            let job = slot.job;
            if job.is_some() {
                slot.inside += 1;
                sh.busy.store(slot.inside, Ordering::Release);
            }
            job
        };
        let Some(JobRef(f)) = job else { continue };
        // SAFETY: counted in `inside`, so `run` keeps the job alive until we leave.
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*f)(t) }));
        if r.is_err() {
            sh.panicked.store(true, Ordering::SeqCst);
        }
        let mut slot = lock(&sh.slot);
        slot.inside -= 1;
        sh.busy.store(slot.inside, Ordering::Release);
        if slot.inside == 0 && slot.closer_waiting {
            sh.done.notify_all();
        }
    }
}

/// A counter that hands out the chunks `0..n` of a job, each once, to whoever asks next.
pub(crate) struct Chunks {
    next: AtomicUsize,
    n: usize,
}

impl Chunks {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            n,
        }
    }

    /// The next chunk, or `None` when all are taken.
    pub(crate) fn next(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.n).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` chunks, counting each chunk's runs.
    fn count_chunks(pool: &ThreadPool, n: usize) -> Vec<usize> {
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let chunks = Chunks::new(n);
        pool.run(&|_| {
            while let Some(i) = chunks.next() {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        hits.into_iter().map(|h| h.into_inner()).collect()
    }

    #[test]
    fn every_chunk_runs_once() {
        for threads in 1..=4 {
            let pool = ThreadPool::new(threads).unwrap();
            assert_eq!(pool.threads(), threads);
            for n in [0, 1, 7, 100] {
                for _ in 0..20 {
                    assert!(count_chunks(&pool, n).iter().all(|&h| h == 1));
                }
            }
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2).unwrap();
        // The caller waits until the worker has joined, and the worker panics.
        let joined = AtomicBool::new(false);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|t| {
                if t == 1 {
                    joined.store(true, Ordering::SeqCst);
                    panic!("boom");
                }
                while !joined.load(Ordering::SeqCst) {
                    std::hint::spin_loop();
                }
            })
        }));
        assert!(r.is_err());
        assert!(count_chunks(&pool, 10).iter().all(|&h| h == 1));
    }

    #[test]
    fn par_chunks_mut_visits_every_part_once() {
        for threads in 1..=3 {
            let pool = ThreadPool::new(threads).unwrap();
            for (len, chunk) in [(0usize, 4usize), (10, 3), (64, 64), (100, 7)] {
                let mut data = vec![0usize; len];
                pool.par_chunks_mut(&mut data, chunk, &|i, part| {
                    for x in part.iter_mut() {
                        *x += i + 1;
                    }
                });
                let want: Vec<usize> = (0..len).map(|j| j / chunk + 1).collect();
                assert_eq!(data, want, "threads {threads} len {len} chunk {chunk}");
            }
        }
    }

    #[test]
    fn zero_threads_is_refused() {
        let e = ThreadPool::new(0).unwrap_err().to_string();
        assert!(e.contains("at least 1 thread"), "{e}");
    }

    #[test]
    fn workers_sleep_and_wake() {
        let pool = ThreadPool::new(3).unwrap();
        for _ in 0..3 {
            // Longer than the spin, so the workers are asleep when the next job starts.
            std::thread::sleep(SPIN * 5);
            assert!(count_chunks(&pool, 50).iter().all(|&h| h == 1));
        }
    }
}
