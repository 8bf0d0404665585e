//! A GGUF model split into parts as llama.cpp's `gguf-split` writes them runs exactly as the
//! whole file: the real SmolLM2 file, written again in three parts by Seek's writer, gives the
//! same logits from either the first part's path or the parts' folder.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use seek_gguf::{split_path, GgufFile};
use seek_models::{inspect, load, LoadOptions};

fn models_dir() -> PathBuf {
    std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn logits(path: &Path) -> Vec<f32> {
    let m = load(path, &LoadOptions::default()).unwrap().model;
    let mut cache = m.new_cache();
    let ids = Tensor::new(&[1u32, 504, 3458, 282, 4649, 314][..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward_last(&ids, &mut cache)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn a_split_model_gives_the_whole_files_logits() {
    let whole = models_dir().join("SmolLM2-135M-Instruct-Q4_1.gguf");
    let file = GgufFile::open(&whole).unwrap();
    let parts = seek_gguf::writer::GgufWriter::copy_of(&file)
        .unwrap()
        .to_split_bytes(3);
    assert_eq!(parts.len(), 3);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("smollm2-00001-of-00003.gguf");
    for (k, bytes) in parts.iter().enumerate() {
        std::fs::write(split_path(&first, k as u64, 3).unwrap(), bytes).unwrap();
    }
    let want = logits(&whole);
    assert_eq!(logits(&first), want);
    assert_eq!(logits(dir.path()), want);
    let (info, _) = inspect(&split_path(&first, 2, 3).unwrap()).unwrap();
    assert_eq!(info.architecture, "llama");
}
