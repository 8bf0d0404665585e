//! Times constrained decoding's setup on a model's vocabulary: indexing the vocabulary
//! (once per model) and compiling each JSON Schema of a file (once per new schema), then the
//! mean time to compute one token mask along a sampled answer.
//!
//!     cargo run --release -p seek-structured --example compile_time -- MODEL.gguf SCHEMAS.json
//!
//! SCHEMAS.json is a JSON array of schemas; prints one JSON object.

use std::time::Instant;

use seek_structured::{Constraint, Grammars};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(model), Some(schemas)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: compile_time MODEL.gguf SCHEMAS.json");
        std::process::exit(2);
    };
    let tok = seek_tokenizer::Tokenizer::from_gguf(&seek_gguf::GgufFile::open(model)?)?;
    let schemas: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(schemas)?)?;
    let t = Instant::now();
    let grammars = Grammars::new(&tok)?;
    let index_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut compile_ms = Vec::new();
    let mut cached_ms = Vec::new();
    let mut mask_us = Vec::new();
    let mut logits = vec![0f32; tok.vocab_size()];
    for s in &schemas {
        let c = Constraint::JsonSchema(s.clone());
        let t = Instant::now();
        let mut guide = grammars.compile(&c)?;
        compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let _again = grammars.compile(&c)?;
        cached_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // Walk the first allowed token each step (a deterministic answer) and time the masks.
        for _ in 0..64 {
            logits.iter_mut().for_each(|l| *l = 0.0);
            let t = Instant::now();
            guide.mask(&mut logits)?;
            mask_us.push(t.elapsed().as_secs_f64() * 1e6);
            let Some(next) = logits.iter().position(|l| l.is_finite()) else {
                break;
            };
            if tok.eos_token_ids().contains(&(next as u32)) {
                break;
            }
            guide.consume(next as u32)?;
            if guide.is_finished() {
                break;
            }
        }
    }
    let stats = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
        serde_json::json!({"mean": mean, "median": s.get(s.len() / 2), "max": s.last()})
    };
    println!(
        "{}",
        serde_json::json!({
            "vocab_size": tok.vocab_size(),
            "schemas": schemas.len(),
            "index_vocabulary_ms": index_ms,
            "compile_ms": stats(&compile_ms),
            "compile_cached_ms": stats(&cached_ms),
            "mask_us": stats(&mask_us),
        })
    );
    Ok(())
}
