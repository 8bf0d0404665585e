//! Every kernel at every SIMD level this CPU has, against a plain f32 reference and against
//! the scalar code (bit for bit); `matmul` against per-row `vec_dot`, bit for bit.

mod common;

use common::*;
use seek_kernels::{matmul, quantize_row, QMatrix, QType, Scratch, Simd, ThreadPool, VecDotType};

const BLOCK_COUNTS: [usize; 4] = [1, 3, 7, 33];

#[test]
fn vec_dot_matches_the_f32_reference_at_every_level() {
    let mut rng = rng(1);
    for ty in QType::ALL {
        for nb in BLOCK_COUNTS {
            let n = nb * ty.block_elems();
            for trial in 0..4 {
                let w = random_blocks(ty, nb, &mut rng);
                let x = random_acts(n, &mut rng);
                let xq = quantize(ty, &x);
                let (want, scale) = reference_dot(ty, &w, &xq, n);
                let scalar = Simd::Scalar.vec_dot(ty, &w, &xq, n);
                for simd in Simd::available() {
                    let got = simd.vec_dot(ty, &w, &xq, n);
                    let err = (got as f64 - want).abs();
                    assert!(
                        err <= 2e-5 * scale + 1e-6,
                        "{ty} {simd:?} nb={nb} trial={trial}: got {got}, want {want}, err {err:e}, scale {scale:e}"
                    );
                    // The canonical order makes every level agree with the scalar code exactly.
                    assert_eq!(
                        got.to_bits(),
                        scalar.to_bits(),
                        "{ty} {simd:?} nb={nb}: {got} vs scalar {scalar}"
                    );
                }
            }
        }
    }
}

#[test]
fn quantize_row_is_identical_at_every_level() {
    let mut rng = rng(2);
    for to in [VecDotType::Q8_0, VecDotType::Q8_1, VecDotType::Q8K] {
        for nb in BLOCK_COUNTS {
            let n = nb * to.block_elems();
            let mut x = random_acts(n, &mut rng);
            // Exact halves after scaling, an all-zero block and ties of the largest magnitude.
            x[0] = 127.0;
            x[1] = 0.5;
            x[2] = -2.5;
            x[3] = -127.0;
            if nb > 1 {
                x[to.block_elems()..2 * to.block_elems()].fill(0.0);
            }
            let mut want = Vec::new();
            Simd::Scalar.quantize_row(&x, to, &mut want);
            for simd in Simd::available() {
                let mut got = Vec::new();
                simd.quantize_row(&x, to, &mut got);
                assert_eq!(got, want, "{to:?} {simd:?} nb={nb}");
            }
        }
    }
}

#[test]
fn quantize_row_follows_ggml_rounding() {
    // Q8_0: d = amax / 127 and roundf (half away from zero); here d = 1 exactly.
    let mut x = vec![0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.49999997;
    let mut q = Vec::new();
    quantize_row(&x, VecDotType::Q8_0, &mut q);
    assert_eq!(&q[..2], &half::f16::from_f32(1.0).to_le_bytes());
    assert_eq!(
        q[2..6].iter().map(|&b| b as i8).collect::<Vec<_>>(),
        [127, 3, -3, 0]
    );

    // Q8_1: s = d * sum(q).
    quantize_row(&x, VecDotType::Q8_1, &mut q);
    assert_eq!(&q[2..4], &half::f16::from_f32(127.0).to_le_bytes());

    // Q8_K: iscale = -127 / max (signed), round half to even, d = 1 / iscale, bsums.
    let mut x = vec![0f32; 256];
    x[0] = -127.0;
    x[1] = 2.5;
    x[2] = 3.5;
    x[17] = 1.0;
    quantize_row(&x, VecDotType::Q8K, &mut q);
    assert_eq!(f32::from_le_bytes(q[..4].try_into().unwrap()), 1.0);
    assert_eq!(
        q[4..7].iter().map(|&b| b as i8).collect::<Vec<_>>(),
        [-127, 2, 4]
    );
    let bsum = |j: usize| i16::from_le_bytes([q[260 + 2 * j], q[261 + 2 * j]]);
    assert_eq!((bsum(0), bsum(1)), (-127 + 2 + 4, 1));
}

#[test]
fn matmul_equals_per_row_vec_dot_exactly() {
    let mut rng = rng(3);
    let pools: Vec<_> = (1..=3).map(|t| ThreadPool::new(t).unwrap()).collect();
    // 531 rows: not a multiple of the 8- or 16-row groups, and enough bytes that 2 and 3
    // threads share even a single activation row (small products stay on one thread).
    let rows = 531;
    for ty in QType::ALL {
        let nb = if ty.block_elems() == 32 { 33 } else { 5 };
        let cols = nb * ty.block_elems();
        let w = random_blocks(ty, rows * nb, &mut rng);
        let w = QMatrix::new(ty, &w, rows, cols).unwrap();
        for simd in Simd::available() {
            let mut scratch = Scratch::with_simd(simd).unwrap();
            for m in [1, 2, 3, 5, 8, 17] {
                let x = random_acts(m * cols, &mut rng);
                let mut want = vec![0f32; m * rows];
                for c in 0..m {
                    let mut xq = Vec::new();
                    simd.quantize_row(&x[c * cols..(c + 1) * cols], ty.vec_dot_type(), &mut xq);
                    for r in 0..rows {
                        want[c * rows + r] = simd.vec_dot(ty, w.row(r), &xq, cols);
                    }
                }
                for pool in &pools {
                    let mut out = vec![f32::NAN; m * rows];
                    matmul(&w, &x, m, &mut out, &mut scratch, pool);
                    for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "{ty} {simd:?} m={m} threads={} at (c={}, r={}): {g} vs {e}",
                            pool.threads(),
                            i / rows,
                            i % rows
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_handles_odd_shapes() {
    let mut rng = rng(4);
    let pool = ThreadPool::new(3).unwrap();
    let mut scratch = Scratch::new();
    for ty in [QType::Q5_0, QType::Q4K] {
        for rows in [1, 3, 5, 7, 9] {
            let nb = 7;
            let cols = nb * ty.block_elems();
            let w = random_blocks(ty, rows * nb, &mut rng);
            let w = QMatrix::new(ty, &w, rows, cols).unwrap();
            for m in [1, 4, 6] {
                let x = random_acts(m * cols, &mut rng);
                let mut out = vec![0f32; m * rows];
                matmul(&w, &x, m, &mut out, &mut scratch, &pool);
                for c in 0..m {
                    let xq = quantize(ty, &x[c * cols..(c + 1) * cols]);
                    for r in 0..rows {
                        let (want, scale) = reference_dot(ty, w.row(r), &xq, cols);
                        let got = out[c * rows + r] as f64;
                        assert!(
                            (got - want).abs() <= 2e-5 * scale + 1e-6,
                            "{ty} {rows}x{cols} m={m}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn qmatrix_checks_its_shape() {
    let data = vec![0u8; 2 * 22];
    assert!(QMatrix::new(QType::Q5_0, &data, 2, 32).is_ok());
    let e = QMatrix::new(QType::Q5_0, &data, 2, 48)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a multiple of the block size 32"), "{e}");
    let e = QMatrix::new(QType::Q5_0, &data, 3, 32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected 66 bytes"), "{e}");
}

#[test]
fn block_sizes_are_ggmls() {
    let sizes: Vec<_> = QType::ALL
        .iter()
        .map(|t| (t.name(), t.block_bytes()))
        .collect();
    assert_eq!(
        sizes,
        [
            ("Q4_0", 18),
            ("Q4_1", 20),
            ("Q5_0", 22),
            ("Q5_1", 24),
            ("Q8_0", 34),
            ("Q2_K", 84),
            ("Q3_K", 110),
            ("Q4_K", 144),
            ("Q5_K", 176),
            ("Q6_K", 210),
            ("IQ2_XXS", 66),
            ("IQ2_XS", 74),
            ("IQ3_XXS", 98),
            ("IQ1_S", 50),
            ("IQ4_NL", 18),
            ("IQ3_S", 110),
            ("IQ2_S", 82),
            ("IQ4_XS", 136),
            ("IQ1_M", 56),
            ("TQ1_0", 54),
            ("TQ2_0", 66),
        ]
    );
    assert_eq!(QType::Q5_0.vec_dot_type(), VecDotType::Q8_0);
    assert_eq!(QType::Q5_1.vec_dot_type(), VecDotType::Q8_1);
    assert_eq!(QType::Q6K.vec_dot_type(), VecDotType::Q8K);
    assert_eq!(VecDotType::Q8K.block_bytes(), 292);
    assert_eq!(QType::from_name("Q4_K"), Some(QType::Q4K));
    assert_eq!(QType::from_name("F16"), None);
    assert_eq!(Simd::from_name("avx2"), Some(Simd::Avx2));
    assert_eq!(Simd::from_name("neon"), Some(Simd::Neon));
    // The widest level of the architecture is detected (NEON is in every AArch64 CPU), so
    // the tests above compare it with the scalar code.
    #[cfg(target_arch = "aarch64")]
    assert_eq!(Simd::best(), Simd::Neon);
    #[cfg(target_arch = "x86_64")]
    assert!(!Simd::Neon.is_available());
}

#[test]
fn matmul_is_the_same_at_every_level_and_batch_size() {
    // The canonical order: a product's bits depend on neither the SIMD level nor on how many
    // activation rows share the call (prefill equals token-by-token decode).
    let mut rng = rng(5);
    let pool = ThreadPool::new(2).unwrap();
    let rows = 37;
    for ty in QType::ALL {
        let nb = if ty.block_elems() == 32 { 9 } else { 2 };
        let cols = nb * ty.block_elems();
        let w = random_blocks(ty, rows * nb, &mut rng);
        let w = QMatrix::new(ty, &w, rows, cols).unwrap();
        let m = 9;
        let x = random_acts(m * cols, &mut rng);
        let mut want = vec![0f32; m * rows];
        matmul(
            &w,
            &x,
            m,
            &mut want,
            &mut Scratch::with_simd(Simd::Scalar).unwrap(),
            &pool,
        );
        for simd in Simd::available() {
            let mut scratch = Scratch::with_simd(simd).unwrap();
            let mut batched = vec![0f32; m * rows];
            matmul(&w, &x, m, &mut batched, &mut scratch, &pool);
            let mut one_by_one = vec![0f32; m * rows];
            for c in 0..m {
                let xc = &x[c * cols..(c + 1) * cols];
                matmul(
                    &w,
                    xc,
                    1,
                    &mut one_by_one[c * rows..(c + 1) * rows],
                    &mut scratch,
                    &pool,
                );
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&batched),
                bits(&want),
                "{ty} {simd:?}: batched vs scalar"
            );
            assert_eq!(
                bits(&one_by_one),
                bits(&want),
                "{ty} {simd:?}: one by one vs scalar"
            );
        }
    }
}

/// `matmul_many` (one dispatch for several matrices sharing an input row) gives every
/// element [`matmul`] gives, bit for bit: mixed types (so several vec-dot types), sizes that
/// split unevenly, one and several threads.
#[test]
fn matmul_many_equals_matmul_per_matrix() {
    let mut rng = rng(41);
    let cols = 512;
    let specs = [
        (QType::Q5_0, 200),
        (QType::Q6K, 72),
        (QType::Q8_0, 136),
        (QType::Q4_1, 8),
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|(ty, rows)| random_blocks(*ty, rows * cols / ty.block_elems(), &mut rng))
        .collect();
    let x = random_acts(cols, &mut rng);
    for threads in [1, 2, 3] {
        let pool = ThreadPool::new(threads).unwrap();
        let ws: Vec<QMatrix> = specs
            .iter()
            .zip(&data)
            .map(|((ty, rows), d)| QMatrix::new(*ty, d, *rows, cols).unwrap())
            .collect();
        let mut outs: Vec<Vec<f32>> = specs.iter().map(|(_, r)| vec![f32::NAN; *r]).collect();
        {
            let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            seek_kernels::matmul_many(&ws, &x, &mut refs, &mut Scratch::new(), &pool);
        }
        for (w, got) in ws.iter().zip(&outs) {
            let mut want = vec![0f32; w.rows()];
            matmul(w, &x, 1, &mut want, &mut Scratch::new(), &pool);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{:?} with {threads} threads",
                w.ty()
            );
        }
    }
}
