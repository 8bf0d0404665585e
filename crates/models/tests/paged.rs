//! Paged KV memory (`CausalLm::forward_paged`) on a real quantized model: a prompt fed as one
//! span, token by token, or next to other sequences gives the same logits, bit for bit; and
//! they equal the contiguous-cache decode path's.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use seek_models::paged::{KvBlocks, Span};
use seek_models::{load, CausalLm, LoadOptions};

fn model() -> Box<dyn CausalLm> {
    let p: PathBuf = std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
        .join("SmolLM2-135M-Instruct-Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-sample-models.sh",
        p.display()
    );
    load(&p, &LoadOptions::default()).unwrap().model
}

const BS: usize = 16;

fn rows(t: Tensor) -> Vec<Vec<f32>> {
    t.to_vec2().unwrap()
}

#[test]
fn paged_prefill_decode_and_batching_agree_bit_for_bit() {
    let m = model();
    let layout = m.paged_layout().expect("a GGUF model on the CPU is paged");
    let v = m.vocab_size() as u32;
    let prompt: Vec<u32> = (0..37).map(|i| (i * 7919 + 11) % v).collect();
    let other: Vec<u32> = (0..21).map(|i| (i * 104_729 + 3) % v).collect();

    // 1. The whole prompt as one span (a prefill chunk).
    let mut blocks = KvBlocks::new(layout, BS, 16).unwrap();
    let table: Vec<u32> = vec![3, 9, 1];
    let whole = rows(
        m.forward_paged(
            &[Span {
                tokens: &prompt,
                start: 0,
                table: &table,
            }],
            &mut blocks,
        )
        .unwrap(),
    );

    // 2. Token by token in other blocks: each step's logits; the last equals (1).
    let table2: Vec<u32> = vec![4, 5, 6];
    let mut steps = Vec::new();
    for (p, t) in prompt.iter().enumerate() {
        let out = m
            .forward_paged(
                &[Span {
                    tokens: &[*t],
                    start: p,
                    table: &table2,
                }],
                &mut blocks,
            )
            .unwrap();
        steps.push(rows(out).remove(0));
    }
    assert_eq!(
        steps.last().unwrap(),
        &whole[0],
        "one span = token by token"
    );

    // 3. The contiguous-cache decode path, token by token, gives the same rows.
    let mut cache = m.new_cache();
    for (p, t) in prompt.iter().enumerate() {
        let input = Tensor::new(&[*t], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let row: Vec<f32> = m
            .forward_last(&input, &mut cache)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(row, steps[p], "paged = contiguous at position {p}");
    }

    // 4. Two sequences in one forward (a decode row next to a prefill chunk) equal each alone.
    let t_other: Vec<u32> = vec![10, 11];
    let alone_other = rows(
        m.forward_paged(
            &[Span {
                tokens: &other,
                start: 0,
                table: &t_other,
            }],
            &mut blocks,
        )
        .unwrap(),
    );
    let t_a: Vec<u32> = vec![12, 13, 14];
    let t_b: Vec<u32> = vec![15, 0];
    // Sequence A already holds the prompt but its last token; B is new.
    m.forward_paged(
        &[Span {
            tokens: &prompt[..36],
            start: 0,
            table: &t_a,
        }],
        &mut blocks,
    )
    .unwrap();
    let both = rows(
        m.forward_paged(
            &[
                Span {
                    tokens: &prompt[36..],
                    start: 36,
                    table: &t_a,
                },
                Span {
                    tokens: &other,
                    start: 0,
                    table: &t_b,
                },
            ],
            &mut blocks,
        )
        .unwrap(),
    );
    assert_eq!(both[0], whole[0], "sequence A next to B");
    assert_eq!(both[1], alone_other[0], "sequence B next to A");

    // A table that does not cover the positions is an error, not a panic.
    let short: Vec<u32> = vec![2];
    let e = m
        .forward_paged(
            &[Span {
                tokens: &prompt,
                start: 0,
                table: &short,
            }],
            &mut blocks,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not cover"), "{e}");
}
