//! Every weight matrix of a real GGUF model multiplied once, in file order, as one decode
//! step (m = 1) or one prefill chunk (m > 1) would: seek-kernels against candle on the same
//! mapped bytes, with their results compared tensor by tensor.
//!
//!   cargo run -p seek-kernels --release --example model_decode -- \
//!       models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf --threads 2 [--m 1] [--no-candle]
//!
//! The token embedding is skipped (a lookup, not a product); norms and biases are not matrices.

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{Device, Module, Tensor};
use seek_gguf::{GgmlType, GgufFile};
use seek_kernels::{matmul, QMatrix, QType, Scratch, ThreadPool};
use std::time::{Duration, Instant};

fn qtype(t: GgmlType) -> Option<(QType, GgmlDType)> {
    Some(match t {
        GgmlType::Q4_0 => (QType::Q4_0, GgmlDType::Q4_0),
        GgmlType::Q4_1 => (QType::Q4_1, GgmlDType::Q4_1),
        GgmlType::Q5_0 => (QType::Q5_0, GgmlDType::Q5_0),
        GgmlType::Q5_1 => (QType::Q5_1, GgmlDType::Q5_1),
        GgmlType::Q8_0 => (QType::Q8_0, GgmlDType::Q8_0),
        GgmlType::Q2K => (QType::Q2K, GgmlDType::Q2K),
        GgmlType::Q3K => (QType::Q3K, GgmlDType::Q3K),
        GgmlType::Q4K => (QType::Q4K, GgmlDType::Q4K),
        GgmlType::Q5K => (QType::Q5K, GgmlDType::Q5K),
        GgmlType::Q6K => (QType::Q6K, GgmlDType::Q6K),
        _ => return None,
    })
}

/// Median seconds per call of `f` over at least `min` (after one warm-up call).
fn time(min: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 3 || start.elapsed() < min {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: model_decode MODEL.gguf [--threads N] [--m M] [--no-candle]")?;
    let (mut threads, mut m, mut candle) = (1usize, 1usize, true);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().ok_or("--threads N")?.parse()?,
            "--m" => m = args.next().ok_or("--m M")?.parse()?,
            "--no-candle" => candle = false,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    let file = GgufFile::open(&path)?;
    let mut mats = Vec::new();
    for info in &file.tensors {
        let Some((ty, dt)) = qtype(info.ggml_type) else {
            continue;
        };
        if info.dims.len() != 2 || info.name.starts_with("token_embd") {
            continue;
        }
        let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
        mats.push((
            info.name.clone(),
            ty,
            dt,
            rows,
            cols,
            file.tensor_data(info)?,
        ));
    }
    let bytes: usize = mats.iter().map(|m| m.5.len()).sum();
    let pool = ThreadPool::new(threads)?;
    let mut scratch = Scratch::new();
    let x: Vec<f32> = (0..m * 4864 * 4)
        .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|mt| vec![0f32; m * mt.3]).collect();
    let qms: Vec<QMatrix> = mats
        .iter()
        .map(|(_, ty, _, rows, cols, data)| QMatrix::new(*ty, data, *rows, *cols))
        .collect::<Result<_, _>>()?;
    let seek = time(Duration::from_secs(2), || {
        for (w, out) in qms.iter().zip(outs.iter_mut()) {
            matmul(w, &x[..m * w.cols()], m, out, &mut scratch, &pool);
        }
    });
    println!(
        "{path}: {} matrices, {:.1} MB, m = {m}, {threads} thread(s), seek-kernels at {:?}",
        mats.len(),
        bytes as f64 / 1e6,
        scratch.simd()
    );
    let ops: f64 = mats.iter().map(|mt| (2 * mt.3 * mt.4) as f64).sum();
    let report = |name: &str, t: f64| {
        println!(
            "{name:>7}: {:8.2} ms per pass, {:6.2} GB/s of weights, {:7.1} GOP/s",
            t * 1e3,
            bytes as f64 / t / 1e9,
            ops * m as f64 / t / 1e9
        );
    };
    report("seek", seek);
    if candle {
        let dev = Device::Cpu;
        let mut cms = Vec::new();
        for (_, _, dt, rows, cols, data) in &mats {
            cms.push(QMatMul::from_qtensor(qtensor_from_ggml(
                *dt,
                data,
                vec![*rows, *cols],
                &dev,
            )?)?);
        }
        let xs: Vec<Tensor> = mats
            .iter()
            .map(|mt| Tensor::from_slice(&x[..m * mt.4], (m, mt.4), &dev))
            .collect::<Result<_, _>>()?;
        let mut worst = (0f32, String::new());
        for ((mm, xt), (mt, out)) in cms.iter().zip(&xs).zip(mats.iter().zip(&outs)) {
            let theirs: Vec<f32> = mm.forward(xt)?.flatten_all()?.to_vec1()?;
            let top = out.iter().fold(0f32, |a, v| a.max(v.abs()));
            let diff = theirs
                .iter()
                .zip(out)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            if diff / top > worst.0 {
                worst = (diff / top, mt.0.clone());
            }
        }
        let t = time(Duration::from_secs(2), || {
            for (mm, xt) in cms.iter().zip(&xs) {
                mm.forward(xt).expect("candle forward");
            }
        });
        report("candle", t);
        println!(
            "speedup {:.2}x; largest difference from candle {:.2e} of the largest output ({})",
            t / seek,
            worst.0,
            worst.1
        );
    }
    Ok(())
}
