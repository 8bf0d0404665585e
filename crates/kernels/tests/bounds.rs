//! No kernel reads past its blocks: each tensor (and activation row) ends exactly where a
//! mapped page ends and the next page lies beyond the end of the file, so any over-read
//! faults (SIGBUS) instead of passing unnoticed.

mod common;

use common::*;
use seek_kernels::{dequantize_row, matmul, QMatrix, QType, Scratch, Simd, ThreadPool};
use std::io::Write;

const PAGE: usize = 4096;

/// `bytes` at the very end of a file-backed mapping whose next page is unreadable.
struct Guarded {
    map: memmap2::Mmap,
    at: usize,
    len: usize,
    _file: tempfile::NamedTempFile,
}

impl Guarded {
    fn new(bytes: &[u8]) -> Self {
        let size = bytes.len().div_ceil(PAGE).max(1) * PAGE;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let mut content = vec![0u8; size];
        content[size - bytes.len()..].copy_from_slice(bytes);
        file.write_all(&content).unwrap();
        file.flush().unwrap();
        // One page more than the file: touching it is a SIGBUS.
        // SAFETY: the file is private to this test and not modified while mapped.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(size + PAGE)
                .map(file.as_file())
        }
        .unwrap();
        Self {
            map,
            at: size - bytes.len(),
            len: bytes.len(),
            _file: file,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.map[self.at..self.at + self.len]
    }
}

#[test]
fn kernels_stay_inside_their_blocks() {
    let mut rng = rng(7);
    let pool = ThreadPool::new(2).unwrap();
    for ty in QType::ALL {
        // 19 rows: a partial last group at every level; 3 blocks: an odd count.
        let (rows, nb) = (19, 3);
        let cols = nb * ty.block_elems();
        let w = Guarded::new(&random_blocks(ty, rows * nb, &mut rng));
        let qm = QMatrix::new(ty, w.bytes(), rows, cols).unwrap();
        let last = qm.row(rows - 1);
        let mut deq = vec![0f32; cols];
        dequantize_row(ty, last, &mut deq);
        let x = random_acts(5 * cols, &mut rng);
        let xq = Guarded::new(&quantize(ty, &x[..cols]));
        for simd in Simd::available() {
            let mut scratch = Scratch::with_simd(simd).unwrap();
            for m in [1, 5] {
                let mut out = vec![0f32; m * rows];
                matmul(&qm, &x[..m * cols], m, &mut out, &mut scratch, &pool);
            }
            let v = simd.vec_dot(ty, last, xq.bytes(), cols);
            assert!(v.is_finite(), "{ty} {simd:?}");
        }
    }
}
