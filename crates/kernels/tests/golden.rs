//! `dequantize_row` against gguf-py's decoder (llama.cpp's reference), bit for bit, on the
//! fixture written by tools/make_golden.py.

use seek_gguf::GgufFile;
use seek_kernels::{dequantize_row, QType};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/gguf/quant-blocks.gguf")
}

#[test]
fn dequantize_row_matches_ggml_exactly() {
    let file = GgufFile::open(fixture()).expect("fixture");
    for ty in QType::ALL {
        let info = file.tensor_info(ty.name()).expect("tensor of the type");
        let data = file.tensor_data(info).unwrap();
        let exp_info = file
            .tensor_info(&format!("{}.expected", ty.name()))
            .unwrap();
        let expected: Vec<f32> = file
            .tensor_data(exp_info)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let cols = info.dims[0] as usize;
        let rows = info.dims[1] as usize;
        assert_eq!(expected.len(), rows * cols);
        let rb = ty.row_bytes(cols);
        let mut got = vec![0f32; cols];
        for r in 0..rows {
            dequantize_row(ty, &data[r * rb..(r + 1) * rb], &mut got);
            let want = &expected[r * cols..(r + 1) * cols];
            let bad: Vec<_> = (0..cols)
                .filter(|&i| got[i].to_bits() != want[i].to_bits())
                .collect();
            let max_diff = (0..cols)
                .map(|i| (got[i] - want[i]).abs())
                .fold(0f32, f32::max);
            assert!(
                bad.is_empty(),
                "{ty} row {r}: {} of {cols} differ (max diff {max_diff:e}); first at {}: got {:?} want {:?}; first values got {:?} want {:?}",
                bad.len(),
                bad[0],
                got[bad[0]],
                want[bad[0]],
                &got[..4],
                &want[..4]
            );
        }
    }
}
