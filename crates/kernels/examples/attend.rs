//! One decode step's attention over an f16 KV cache shaped like SmolLM2's (30 layers, 3 KV
//! heads each read by 3 query heads), single thread: time per step and per key.
//!
//! `cargo run --release -p seek-kernels --example attend -- [CONTEXT [HEAD_DIM]]`

use half::f16;
use seek_kernels::vector::{attention, Rows};
use seek_kernels::Simd;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let s: usize = args.next().map_or(2048, |a| a.parse().expect("CONTEXT"));
    let d: usize = args.next().map_or(64, |a| a.parse().expect("HEAD_DIM"));
    let reps: usize = std::env::var("REPS").map_or(5, |r| r.parse().expect("REPS"));
    let (layers, kv_heads, group) = (30usize, 3usize, 3usize);
    let per_head = s * d;
    let n = layers * kv_heads * per_head;
    let val = |i: usize, m: usize| f16::from_f32(((i * m) % 1000) as f32 / 500.0 - 1.0);
    let k: Vec<f16> = (0..n).map(|i| val(i, 7919)).collect();
    let v: Vec<f16> = (0..n).map(|i| val(i, 104729)).collect();
    let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut scores = Vec::new();
    let mut out = vec![0f32; d];
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        for h in 0..layers * kv_heads {
            let rows = |data| Rows {
                data,
                offset: h * per_head,
                stride: d,
            };
            for _ in 0..group {
                attention(
                    &q,
                    rows(&k[..]),
                    rows(&v[..]),
                    s,
                    0.125,
                    &mut scores,
                    &mut out,
                );
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let heads = (layers * kv_heads * group) as f64;
    println!(
        "{:?}, context {s}, head dim {d}: {:.2} ms per step, {:.1} ns per key per query head",
        Simd::best(),
        best * 1e3,
        best * 1e9 / (heads * s as f64),
    );
}
