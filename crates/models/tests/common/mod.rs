//! Shared by the golden tests: reading a transformers reference (`golden.json` + raw f32
//! logits, written by `tools/make_golden.py` and `tools/make_deepseek_golden.py`) and
//! checking a model against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use seek_models::{load, CausalLm, LoadOptions};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden")
}

pub struct Golden {
    pub json: Value,
    pub logits: Vec<f32>,
    pub t: usize,
    pub v: usize,
}

pub fn golden(json_path: &Path) -> Golden {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    let file = json_path
        .parent()
        .unwrap()
        .join(json["logits_file"].as_str().unwrap());
    let bytes = std::fs::read(file).unwrap();
    let logits: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let shape = json["logits_shape"].as_array().unwrap();
    let (t, v) = (
        shape[0].as_u64().unwrap() as usize,
        shape[1].as_u64().unwrap() as usize,
    );
    assert_eq!(logits.len(), t * v);
    Golden { json, logits, t, v }
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn forward(model: &dyn CausalLm, tokens: &[u32], cache: &mut seek_models::KvCache) -> Vec<f32> {
    let input = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&input, cache)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > row[best] { i } else { best })
}

/// Full-sequence logits, chunked-through-cache logits and greedy tokens, all against the reference.
pub fn check(model_path: &Path, g: &Golden, tol: f32, exact_greedy: bool) {
    let name = model_path.display();
    let loaded =
        load(model_path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let model = loaded.model.as_ref();
    let input = ids(&g.json["input_ids"]);

    let mut cache = model.new_cache();
    let ours = forward(model, &input, &mut cache);
    assert_eq!(ours.len(), g.t * g.v, "{name}: logits shape");
    assert_eq!(cache.seq_len(), g.t);
    let diff = max_abs_diff(&ours, &g.logits);
    println!(
        "{name}: full forward max abs diff {diff:.2e}; ours[0..4] {:?} ref[0..4] {:?}",
        &ours[..4],
        &g.logits[..4]
    );
    assert!(
        diff <= tol,
        "{name}: full forward max abs diff {diff} > {tol}\n ours {:?}\n ref  {:?}",
        &ours[..8],
        &g.logits[..8]
    );

    // Generation's path: only the last position is projected onto the vocabulary.
    let mut cache = model.new_cache();
    let input_t = Tensor::new(input.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let last: Vec<f32> = model
        .forward_last(&input_t, &mut cache)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(last.len(), g.v);
    let diff = max_abs_diff(&last, &ours[(g.t - 1) * g.v..]);
    assert!(
        diff <= 1e-5,
        "{name}: forward_last differs from the last row of forward by {diff}"
    );

    // The same rows, fed in chunks through the KV cache.
    let mut cache = model.new_cache();
    let mut chunked = Vec::new();
    for c in g.json["incremental"]["chunks"].as_array().unwrap() {
        let (a, b) = (
            c[0].as_u64().unwrap() as usize,
            c[1].as_u64().unwrap() as usize,
        );
        chunked.extend(forward(model, &input[a..b], &mut cache));
    }
    let diff = max_abs_diff(&chunked, &g.logits);
    assert!(
        diff <= tol,
        "{name}: chunked forward max abs diff {diff} > {tol}"
    );

    // Truncating the cache and feeding the rest again gives the same rows (prefix reuse).
    let mut cache = model.new_cache();
    forward(model, &input, &mut cache);
    cache.truncate(3).unwrap();
    assert_eq!(cache.seq_len(), 3);
    let again = forward(model, &input[3..], &mut cache);
    let diff = max_abs_diff(&again, &g.logits[3 * g.v..]);
    assert!(
        diff <= tol,
        "{name}: after truncate(3), max abs diff {diff} > {tol}"
    );

    // Greedy decoding, one token at a time through the cache.
    let greedy = &g.json["greedy"];
    let prompt = ids(&greedy["prompt"]);
    let expected = ids(&greedy["tokens"]);
    let mut cache = model.new_cache();
    let mut last = forward(model, &prompt, &mut cache);
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let row = &last[last.len() - g.v..];
        let next = argmax(row) as u32;
        got.push(next);
        last = forward(model, &[next], &mut cache);
    }
    if exact_greedy {
        assert_eq!(got, expected, "{name}: greedy continuation");
    } else {
        let same = got
            .iter()
            .zip(&expected)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            same >= 4,
            "{name}: greedy continuation diverges after {same} tokens: {got:?} vs {expected:?}"
        );
    }
}
