//! Golden tests: Seek's forward pass against transformers on tiny random checkpoints.
//!
//! Fixtures come from `tools/make_golden.py` (transformers + torch, CPU); see tools/README.md.
//! On failure the first values and the max abs diff are printed, llm.c style.

use std::sync::Arc;

use candle_core::Device;
use seek_models::weights::Weights;
use seek_models::{load, LoadOptions};
use serde_json::Value;

mod common;

use common::*;

#[test]
fn safetensors_checkpoints_match_transformers() {
    for dir in [
        "tiny-llama",
        "tiny-llama-sharded",
        "tiny-qwen2",
        "tiny-qwen2-bf16",
        "tiny-llama3-rope",
        // tools/make_qwen3_golden.py: head_dim apart from hidden / heads, per-head q/k norms
        "tiny-qwen3",
    ] {
        let path = fixtures().join(dir);
        let g = golden(&path.join("golden.json"));
        check(&path, &g, 1e-4, true);
    }
}

#[test]
fn unquantized_gguf_files_match_transformers() {
    for stem in [
        "tiny-llama.f32",
        "tiny-llama.f16",
        "tiny-qwen2.f32",
        "tiny-qwen2.f16",
        "tiny-qwen2.bf16",
        "tiny-llama3-rope.f16",
        "tiny-qwen3.f32",
    ] {
        let dir = fixtures().join("gguf");
        let path = dir.join(format!("{stem}.gguf"));
        if !path.exists() {
            panic!(
                "fixture {} is missing; run tools/make_golden.py",
                path.display()
            );
        }
        let g = golden(&dir.join(format!("{stem}.golden.json")));
        check(&path, &g, 1e-4, true);
    }
}

/// Quantized files: the reference dequantizes the weights and runs in f32, while the
/// quantized kernels also round activations to 8 bits (as llama.cpp does), so logits agree
/// closely but not to 1e-4.
#[test]
fn quantized_gguf_files_track_the_dequantized_reference() {
    let dir = fixtures().join("gguf");
    let mut stems: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".golden.json").map(str::to_string))
        .filter(|s| {
            s != "quant-blocks"
                && !s.ends_with(".f32")
                && !s.ends_with(".f16")
                && !s.ends_with(".bf16")
        })
        .collect();
    stems.sort();
    assert!(
        stems.len() >= 5,
        "expected the quantized fixtures, found {stems:?}"
    );
    for stem in stems {
        let g = golden(&dir.join(format!("{stem}.golden.json")));
        let path = dir.join(g.json["model_file"].as_str().unwrap());
        let loaded = load(&path, &LoadOptions::default()).unwrap();
        let input = ids(&g.json["input_ids"]);
        let mut cache = loaded.model.new_cache();
        let ours = forward(loaded.model.as_ref(), &input, &mut cache);
        let scale = g.logits.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = max_abs_diff(&ours, &g.logits);
        let agree = (0..g.t)
            .filter(|&i| {
                argmax(&ours[i * g.v..(i + 1) * g.v]) == argmax(&g.logits[i * g.v..(i + 1) * g.v])
            })
            .count();
        println!(
            "{stem}: max abs diff {diff:.4} (logit scale {scale:.2}), top-1 agreement {agree}/{}",
            g.t
        );
        assert!(
            diff <= 0.05 * scale,
            "{stem}: max abs diff {diff} vs scale {scale}"
        );
        assert!(
            agree * 10 >= g.t * 8,
            "{stem}: top-1 agreement {agree}/{}",
            g.t
        );
    }
}

/// Every supported quantization type dequantizes to exactly what llama.cpp's reference decoder gives.
#[test]
fn every_quant_type_dequantizes_like_ggml() {
    let path = fixtures().join("gguf/quant-blocks.gguf");
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gguf/quant-blocks.golden.json")).unwrap(),
    )
    .unwrap();
    let file = Arc::new(seek_gguf::GgufFile::open(&path).unwrap());
    let w = Weights::Gguf {
        file: file.clone(),
        device: Device::Cpu,
        kernels: None,
    };
    for ty in g["types"].as_array().unwrap() {
        let ty = ty.as_str().unwrap();
        let shape = file.tensor_info(ty).unwrap().shape();
        let ours: Vec<f32> = w
            .tensor(ty, &shape)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected: Vec<f32> = w
            .tensor(&format!("{ty}.expected"), &shape)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let diff = max_abs_diff(&ours, &expected);
        assert!(
            diff <= 1e-6,
            "{ty}: dequantized values differ by {diff}: {:?} vs {:?}",
            &ours[..4],
            &expected[..4]
        );
    }
}
