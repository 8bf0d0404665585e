//! Decode-shaped products (one activation row) over more weight bytes than the caches hold,
//! in GB/s of weights read, next to a plain streaming read of as many bytes: how close each
//! kernel comes to the memory bandwidth.
//!
//! `cargo run --release -p seek-kernels --example gemv -- [THREADS [scalar|avx2|avx512]]`

#[path = "../tests/common/mod.rs"]
mod common;

use seek_kernels::{matmul, QMatrix, QType, Scratch, Simd, ThreadPool};
use std::time::Instant;

/// Total weight bytes per measurement: well past any last-level cache.
const TOTAL: usize = 768 << 20;

fn stream_sum(xs: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] = acc[k].wrapping_add(c[k]);
        }
    }
    acc.iter().fold(0u64, |a, &x| a.wrapping_add(x))
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("THREADS"))
        .unwrap_or(2);
    let pool = ThreadPool::new(threads).expect("pool");
    let simd = std::env::args()
        .nth(2)
        .map(|s| Simd::from_name(&s).expect("SIMD: scalar, avx2 or avx512"))
        .unwrap_or_else(Simd::best);
    let mut scratch = Scratch::with_simd(simd).expect("this CPU runs SIMD");
    println!("{simd:?} kernels");
    let mut rng = common::rng(7);

    // Streaming read of TOTAL bytes split across the threads.
    let buf: Vec<u64> = (0..TOTAL / 8).map(|i| i as u64 | 1).collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let s: u64 = std::thread::scope(|sc| {
            let hs: Vec<_> = buf
                .chunks(buf.len().div_ceil(threads))
                .map(|p| sc.spawn(move || stream_sum(std::hint::black_box(p))))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        std::hint::black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let stream = TOTAL as f64 / best / 1e9;
    println!("stream read {stream:.1} GB/s ({threads} threads)");
    drop(buf);

    let shapes: &[(QType, usize, usize)] = &[
        (QType::Q8_0, 151936, 896),
        (QType::Q5_0, 4864, 896),
        (QType::Q5_0, 896, 4864),
        (QType::Q4_1, 1536, 576),
        (QType::Q4_0, 4864, 896),
        (QType::Q4K, 896, 4864),
        (QType::Q6K, 896, 4864),
    ];
    for &(ty, rows, cols) in shapes {
        let nbytes = ty.row_bytes(cols) * rows;
        let copies = TOTAL.div_ceil(nbytes);
        let mats: Vec<Vec<u8>> = (0..copies)
            .map(|_| common::random_blocks(ty, nbytes / ty.block_bytes(), &mut rng))
            .collect();
        let x = common::random_acts(cols, &mut rng);
        let mut y = vec![0f32; rows];
        let mut cold = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for m in &mats {
                let w = QMatrix::new(ty, m, rows, cols).unwrap();
                matmul(&w, &x, 1, &mut y, &mut scratch, &pool);
            }
            cold = cold.min(t.elapsed().as_secs_f64());
        }
        // The first matrix again and again: in cache when it fits, so compute-bound.
        let w = QMatrix::new(ty, &mats[0], rows, cols).unwrap();
        let mut hot = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..copies {
                matmul(&w, &x, 1, &mut y, &mut scratch, &pool);
            }
            hot = hot.min(t.elapsed().as_secs_f64());
        }
        let total = (nbytes * copies) as f64;
        println!(
            "{:>5} {rows:>6}x{cols:<5} {:>6.1} MiB  memory {:>5.1} GB/s ({:>3.0}% of stream)  same matrix {:>5.1} GB/s",
            ty.name(),
            nbytes as f64 / (1 << 20) as f64,
            total / cold / 1e9,
            100.0 * total / cold / 1e9 / stream,
            total / hot / 1e9,
        );
    }
}
