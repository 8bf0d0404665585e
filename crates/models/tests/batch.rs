//! `CausalLm::decode_batch`: sequences of different lengths decoded in one step give the
//! logits each gets alone (the serving engine's continuous batching relies on it).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use seek_models::{load, CausalLm, KvCache, LoadOptions};

fn models_dir() -> PathBuf {
    std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn last(model: &dyn CausalLm, ids: &[u32], cache: &mut KvCache) -> Vec<f32> {
    let t = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward_last(&t, cache)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn check(path: &Path, exact: bool) {
    let loaded = load(path, &LoadOptions::default()).unwrap();
    let m = loaded.model.as_ref();
    let v = m.vocab_size() as u32;
    let prompts: Vec<Vec<u32>> = vec![
        (1..12).map(|i| (i * 37) % v).collect(),
        (1..4).map(|i| (i * 101) % v).collect(),
        (1..30).map(|i| (i * 13) % v).collect(),
    ];
    // Alone: prefill, then two decode steps each.
    let mut alone = Vec::new();
    for p in &prompts {
        let mut c = m.new_cache();
        last(m, p, &mut c);
        let a = last(m, &[5], &mut c);
        let b = last(m, &[7], &mut c);
        alone.push((a, b));
    }
    // Together: the same prefills, then two batched steps.
    let mut caches: Vec<KvCache> = prompts
        .iter()
        .map(|p| {
            let mut c = m.new_cache();
            last(m, p, &mut c);
            c
        })
        .collect();
    for (step, tok) in [(0, 5u32), (1, 7u32)] {
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let rows: Vec<Vec<f32>> = m
            .decode_batch(&vec![tok; prompts.len()], &mut refs)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, row) in rows.iter().enumerate() {
            let want = if step == 0 { &alone[i].0 } else { &alone[i].1 };
            let diff = row
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            if exact {
                assert_eq!(row, want, "{}: sequence {i} step {step}", path.display());
            } else {
                assert!(
                    diff < 1e-4,
                    "{}: sequence {i} step {step}: {diff}",
                    path.display()
                );
            }
        }
    }
    for (c, p) in caches.iter().zip(&prompts) {
        assert_eq!(c.seq_len(), p.len() + 2);
    }
}

/// The fused CPU path (quantized GGUF): the same bits, batched or not.
#[test]
fn batched_decode_equals_sequential_on_a_real_gguf() {
    let p = models_dir().join("SmolLM2-135M-Instruct-Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-sample-models.sh",
        p.display()
    );
    check(&p, true);
}

/// The generic path (safetensors; one sequence after another).
#[test]
fn batched_decode_equals_sequential_on_safetensors() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/tiny-qwen2");
    check(&p, false);
}
