//! Throughput of seek-kernels' `matmul` against candle's quantized matmul, on random weights
//! of Qwen2.5-0.5B's shapes (hidden 896, FFN 4864, vocabulary 151936).
//!
//!   cargo run -p seek-kernels --release --example bench -- --threads 2
//!   cargo run -p seek-kernels --release --example bench -- --threads 1 --types Q5_0,Q8_0 --no-candle
//!
//! Decode rows (m = 1) report GB/s of weight bytes read; prefill rows (m = 128) also report
//! integer GOP/s (2 * rows * cols * m). candle runs in the same process with the same thread
//! count (`CANDLE_NUM_THREADS`), on the same bytes. `--simd avx2|scalar` forces our level.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{Device, Module, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seek_kernels::{matmul, quantize_row, QMatrix, QType, Scratch, Simd, ThreadPool, VecDotType};
use std::time::{Duration, Instant};

/// Column heads of one implementation's timings.
const HEAD: &str = "wall ms   GB/s  GOP/s cpuGB cpuGOP";

struct Args {
    threads: usize,
    types: Vec<QType>,
    candle: bool,
    min_time: Duration,
    simd: Option<Simd>,
}

fn parse_args() -> Args {
    let mut args = Args {
        threads: 1,
        types: vec![
            QType::Q4_0,
            QType::Q4_1,
            QType::Q5_0,
            QType::Q5_1,
            QType::Q8_0,
            QType::Q4K,
            QType::Q5K,
            QType::Q6K,
        ],
        candle: true,
        min_time: Duration::from_millis(400),
        simd: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--threads" => {
                args.threads = it.next().and_then(|v| v.parse().ok()).expect("--threads N")
            }
            "--types" => {
                let list = it.next().expect("--types Q5_0,Q8_0,...");
                args.types = list
                    .split(',')
                    .map(|n| {
                        *QType::ALL
                            .iter()
                            .find(|t| t.name() == n)
                            .unwrap_or_else(|| panic!("unknown type {n}"))
                    })
                    .collect();
            }
            "--no-candle" => args.candle = false,
            "--simd" => {
                let name = it.next().expect("--simd scalar|avx2|avx512");
                args.simd =
                    Some(Simd::from_name(&name).unwrap_or_else(|| panic!("unknown level {name}")));
            }
            "--quick" => args.min_time = Duration::from_millis(100),
            other => panic!("unknown argument {other}; see the header of examples/bench.rs"),
        }
    }
    args
}

/// candle's type for `ty`, where candle has one (not the I-quants).
fn candle_dtype(ty: QType) -> Option<GgmlDType> {
    Some(match ty {
        QType::Q4_0 => GgmlDType::Q4_0,
        QType::Q4_1 => GgmlDType::Q4_1,
        QType::Q5_0 => GgmlDType::Q5_0,
        QType::Q5_1 => GgmlDType::Q5_1,
        QType::Q8_0 => GgmlDType::Q8_0,
        QType::Q2K => GgmlDType::Q2K,
        QType::Q3K => GgmlDType::Q3K,
        QType::Q4K => GgmlDType::Q4K,
        QType::Q5K => GgmlDType::Q5K,
        QType::Q6K => GgmlDType::Q6K,
        _ => return None,
    })
}

/// Random blocks with small finite f16 scales (random bytes elsewhere).
fn random_weights(ty: QType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut data = vec![0u8; rows * ty.row_bytes(cols)];
    rng.fill(&mut data[..]);
    let scales: &[usize] = match ty {
        QType::Q4_0 | QType::Q5_0 | QType::Q8_0 | QType::IQ4NL | QType::IQ4XS => &[0],
        QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K => &[0, 2],
        QType::Q2K => &[80, 82],
        QType::Q3K => &[108],
        QType::Q6K => &[208],
        QType::TQ1_0 => &[52],
        QType::TQ2_0 => &[64],
        // IQ1_M's scale is spread over its scale words; random bits may make it NaN, which
        // does not change the speed.
        QType::IQ1M => &[],
        _ => &[0],
    };
    for block in data.chunks_exact_mut(ty.block_bytes()) {
        for &at in scales {
            let v: f32 = rng.random_range(-0.02..0.02);
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    data
}

/// Nanoseconds all threads of this process have run (`/proc/self/task/*/schedstat`).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Seconds per call of `f` after a warm-up, over at least `min_time`: the median wall time,
/// and the mean CPU time of all threads (on a shared machine, waiting for a core inflates
/// the first but not the second).
fn time(min_time: Duration, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    let cpu0 = cpu_ns();
    while times.len() < 3 || start.elapsed() < min_time {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu = (cpu_ns() - cpu0) as f64 * 1e-9 / times.len() as f64;
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], cpu)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    // candle sizes its pool from this variable when it first multiplies.
    std::env::set_var("CANDLE_NUM_THREADS", args.threads.to_string());
    let pool = ThreadPool::new(args.threads).expect("thread pool");
    let mut scratch = match args.simd {
        Some(simd) => Scratch::with_simd(simd)?,
        None => Scratch::new(),
    };
    println!(
        "seek-kernels at {:?}, {} thread(s); candle-core 0.11.1 with CANDLE_NUM_THREADS={}",
        scratch.simd(),
        args.threads,
        args.threads
    );
    println!("wall: median ms per call, GB/s of weights and GOP/s (2*rows*cols*m) by wall time;");
    println!(
        "cpu: GB/s and GOP/s by CPU time of all threads (waiting for a busy core does not count)"
    );
    println!(
        "{:<5} {:>14} {:>4} | {:<34} | {:<34} | {:>15}",
        "", "", "", "seek", "candle", "candle / seek"
    );
    println!(
        "{:<5} {:>14} {:>4} | {HEAD} | {HEAD} | {:>7} {:>7}",
        "type", "rows x cols", "m", "wall", "cpu"
    );
    let cases: [(usize, usize, usize); 5] = [
        (4864, 896, 1),
        (896, 4864, 1),
        (151936, 896, 1),
        (4864, 896, 128),
        (896, 4864, 128),
    ];
    let mut rng = StdRng::seed_from_u64(0);
    // Activation quantization, the part of a product that does not scale with the weights.
    let x: Vec<f32> = (0..128 * 4864)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut q = Vec::new();
    for vt in [VecDotType::Q8_0, VecDotType::Q8K] {
        let (wall, _) = time(args.min_time, || {
            for row in x.chunks(4864) {
                quantize_row(row, vt, &mut q);
            }
        });
        let gb = (x.len() * 4) as f64 / 1e9;
        println!(
            "quantize_row to {vt:?}: 128 x 4864 f32 in {:.3} ms, {:.2} GB/s of f32",
            wall * 1e3,
            gb / wall
        );
    }
    // The fixed cost of a call: a product too small to split (k_proj, 128 x 896).
    let data = random_weights(QType::Q5_0, 128, 896, &mut rng);
    let w = QMatrix::new(QType::Q5_0, &data, 128, 896).expect("shape");
    let mut out = vec![0f32; 128];
    let (wall, _) = time(args.min_time, || {
        matmul(&w, &x[..896], 1, &mut out, &mut scratch, &pool)
    });
    println!("Q5_0 128 x 896, m = 1: {:.1} us per call", wall * 1e6);
    for &ty in &args.types {
        for &(rows, cols, m) in &cases {
            if cols % ty.block_elems() != 0 {
                continue; // 896 is not a multiple of the K-quants' 256
            }
            let data = random_weights(ty, rows, cols, &mut rng);
            let w = QMatrix::new(ty, &data, rows, cols).expect("shape");
            let x: Vec<f32> = (0..m * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut out = vec![0f32; m * rows];
            let seek = time(args.min_time, || {
                matmul(&w, &x, m, &mut out, &mut scratch, &pool)
            });
            let gb = data.len() as f64 / 1e9;
            let gop = 2.0 * (rows * cols * m) as f64 / 1e9;
            let candle = if let (true, Some(dt)) = (args.candle, candle_dtype(ty)) {
                let qt = qtensor_from_ggml(dt, &data, vec![rows, cols], &Device::Cpu)?;
                let mm = QMatMul::from_qtensor(qt)?;
                let xt = Tensor::from_slice(&x, (m, cols), &Device::Cpu)?;
                // Same results, or the comparison is meaningless.
                let theirs: Vec<f32> = mm.forward(&xt)?.flatten_all()?.to_vec1()?;
                let top = out.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = theirs
                    .iter()
                    .zip(&out)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst <= 1e-2 * top,
                    "{ty} {rows}x{cols}: candle and seek differ by {worst} (max |out| {top})"
                );
                Some(time(args.min_time, || {
                    mm.forward(&xt).expect("candle forward");
                }))
            } else {
                None
            };
            let fmt = |t: Option<(f64, f64)>| match t {
                Some((wall, cpu)) => format!(
                    "{:>7.3} {:>6.2} {:>6.1} {:>5.2} {:>6.1}",
                    wall * 1e3,
                    gb / wall,
                    gop / wall,
                    gb / cpu,
                    gop / cpu
                ),
                None => format!("{:>34}", "-"),
            };
            let speedup = candle
                .map(|c| format!("{:>6.2}x {:>6.2}x", c.0 / seek.0, c.1 / seek.1))
                .unwrap_or_default();
            println!(
                "{:<5} {:>14} {:>4} | {} | {} | {}",
                ty.name(),
                format!("{rows} x {cols}"),
                m,
                fmt(Some(seek)),
                fmt(candle),
                speedup
            );
        }
    }
    Ok(())
}
