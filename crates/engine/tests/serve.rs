//! The serving engine on a real model (SmolLM2 Q4_1): continuous batching gives each request
//! what it gets alone, the prefix cache serves repeated prompts, and aborts, the bounded
//! queue and shutdown behave. Nothing here depends on timing: waits poll the engine's state.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use seek_engine::chat::render_chat;
use seek_engine::sequence::SequenceParams;
use seek_engine::serve::{EngineConfig, EngineHandle, ServeEvent, ServeRequest, SubmitError};
use seek_engine::{generate, GenerateRequest};
use seek_tokenizer::Tokenizer;
use seek_types::{ChatMessage, FinishReason, SamplingParams, Usage};

const SMOL: &str = "SmolLM2-135M-Instruct-Q4_1.gguf";

fn model_path() -> PathBuf {
    let dir = std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join(SMOL);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-sample-models.sh first",
        p.display()
    );
    p
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&seek_gguf::GgufFile::open(model_path()).unwrap()).unwrap()
}

fn engine(cfg: EngineConfig) -> (EngineHandle, Arc<Tokenizer>) {
    let loaded = seek_models::load(&model_path(), &Default::default()).unwrap();
    let tok = Arc::new(tokenizer());
    (
        EngineHandle::start(loaded.model, tok.clone(), cfg).unwrap(),
        tok,
    )
}

fn prompt(tok: &Tokenizer, text: &str) -> Vec<u32> {
    render_chat(tok, &[ChatMessage::user(text)]).unwrap().ids
}

fn params(max_tokens: usize) -> SequenceParams {
    SequenceParams {
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop: Vec::new(),
        ignore_eos: false,
        starts_in_reasoning: false,
        max_reasoning_tokens: None,
        split_reasoning: true,
        ..SequenceParams::default()
    }
}

/// Everything a request heard, in order.
#[derive(Debug, Default)]
struct Heard {
    started: Option<(usize, usize)>,
    content: String,
    tokens: Vec<u32>,
    finish: Option<(FinishReason, Usage)>,
    failed: Option<String>,
}

/// Submits and returns a receiver of the events.
fn submit(
    h: &EngineHandle,
    prompt: Vec<u32>,
    p: SequenceParams,
) -> (u64, mpsc::Receiver<ServeEvent>) {
    let (tx, rx) = mpsc::channel();
    let id = h
        .submit(
            ServeRequest {
                prompt,
                params: p,
                logprobs: None,
            },
            Box::new(move |e| tx.send(e).is_ok()),
        )
        .unwrap();
    (id, rx)
}

fn collect(rx: mpsc::Receiver<ServeEvent>) -> Heard {
    let mut h = Heard::default();
    for e in rx {
        match e {
            ServeEvent::Started {
                prompt_tokens,
                cached_tokens,
            } => h.started = Some((prompt_tokens, cached_tokens)),
            ServeEvent::Delta { delta, token, .. } => {
                h.content.push_str(&delta.content);
                h.tokens.extend(token);
            }
            ServeEvent::Finished {
                finish_reason,
                usage,
                ..
            } => {
                h.finish = Some((finish_reason, usage));
                break;
            }
            ServeEvent::Failed { message } => {
                h.failed = Some(message);
                break;
            }
        }
    }
    h
}

fn wait_until(
    h: &EngineHandle,
    what: &str,
    cond: impl Fn(&seek_engine::serve::EngineStats) -> bool,
) {
    for _ in 0..20_000 {
        if cond(&h.stats()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("the engine never reached: {what} ({:?})", h.stats());
}

/// Requests running together (joining at different steps, prompts of different lengths,
/// prefill chunks next to decode rows) produce exactly what each produces alone.
#[test]
fn continuous_batching_gives_each_request_what_it_gets_alone() {
    let (h, tok) = engine(EngineConfig {
        prefill_chunk: 16,
        ..EngineConfig::default()
    });
    let questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "List three prime numbers.",
        "Why is the sky blue? Answer in one sentence.",
    ];
    // Alone: one request at a time.
    let alone: Vec<Heard> = questions
        .iter()
        .map(|q| collect(submit(&h, prompt(&tok, q), params(24)).1))
        .collect();
    let steps_alone = h.stats().decode_steps;
    // Together: all submitted at once.
    let rxs: Vec<_> = questions
        .iter()
        .map(|q| submit(&h, prompt(&tok, q), params(24)).1)
        .collect();
    let together: Vec<Heard> = rxs.into_iter().map(collect).collect();
    for ((q, a), t) in questions.iter().zip(&alone).zip(&together) {
        assert_eq!(t.failed, None);
        assert!(!a.tokens.is_empty());
        assert_eq!(t.tokens, a.tokens, "{q}");
        assert_eq!(t.content, a.content, "{q}");
        let ((ra, ua), (rt, ut)) = (a.finish.unwrap(), t.finish.unwrap());
        assert_eq!(ra, rt);
        assert_eq!(ua.completion_tokens, ut.completion_tokens);
        assert_eq!(ut.total_tokens, ut.prompt_tokens + ut.completion_tokens);
    }
    let s = h.stats();
    assert_eq!(s.requests_finished, 8);
    assert!(
        s.decode_steps - steps_alone < s.batched_sequences / 2,
        "sequences were decoded together: {s:?}"
    );
    h.shutdown(Duration::from_secs(5));
}

/// The engine's text for a greedy request is the model's: it matches `generate` on the same
/// prompt. The two prefill in different ways (fused rows in the engine, candle ops in
/// `generate`) whose last bits differ, and an 8-bit activation rounding tipped by one ulp
/// can move a logit by a few tenths: "What is the capital of France?" opens with two tokens
/// 0.24 apart, which a one-ulp change of `exp` flips. This prompt's greedy tokens lead the
/// runner-up by at least 1.07 at each of the 8 steps (`seek logits`), so the paths must agree.
#[test]
fn the_engine_agrees_with_generate() {
    let (h, tok) = engine(EngineConfig::default());
    let q = "Name the largest planet in the solar system.";
    let got = collect(submit(&h, prompt(&tok, q), params(8)).1);
    let loaded = seek_models::load(&model_path(), &Default::default()).unwrap();
    let alone = generate(
        loaded.model.as_ref(),
        &tok,
        &GenerateRequest {
            prompt: prompt(&tok, q),
            sampling: SamplingParams::greedy(),
            max_tokens: 8,
            stop: Vec::new(),
            ignore_eos: false,
            starts_in_reasoning: false,
            max_reasoning_tokens: None,
            guide: None,
        },
        |_| std::ops::ControlFlow::Continue(()),
    )
    .unwrap();
    let same = got
        .tokens
        .iter()
        .zip(&alone.token_ids)
        .take_while(|(a, b)| a == b)
        .count();
    assert_eq!(same, 8, "{:?} vs {:?}", got.tokens, alone.token_ids);
    h.shutdown(Duration::from_secs(5));
}

/// A repeated prompt (a multi-turn history, a shared system prompt) starts from the cached
/// KV of the earlier request: whole blocks reported as cache hits, same answer.
#[test]
fn repeated_prompts_hit_the_prefix_cache() {
    let (h, tok) = engine(EngineConfig::default());
    let p = prompt(
        &tok,
        "You are a helpful assistant. Here is a long shared context that many requests start with. What is 2 + 2?",
    );
    let first = collect(submit(&h, p.clone(), params(12)).1);
    let second = collect(submit(&h, p.clone(), params(12)).1);
    assert_eq!(first.started.unwrap().1, 0, "a cold cache has no hits");
    let (prompt_tokens, cached) = second.started.unwrap();
    assert_eq!(prompt_tokens, p.len());
    assert!(
        cached > 0 && cached % 16 == 0 && cached < p.len(),
        "cached {cached} of {}",
        p.len()
    );
    assert_eq!(second.finish.unwrap().1.cached_prompt_tokens, cached);
    assert_eq!(second.content, first.content);
    assert!(h.stats().cached_prompt_tokens >= cached as u64);
    h.shutdown(Duration::from_secs(5));
}

/// A client that goes away frees its sequence at the next step.
#[test]
fn a_dropped_client_aborts_its_sequence() {
    let (h, tok) = engine(EngineConfig::default());
    let (tx, rx) = mpsc::channel::<ServeEvent>();
    let mut p = params(400);
    p.ignore_eos = true;
    h.submit(
        ServeRequest {
            prompt: prompt(&tok, "Count from one to one thousand."),
            params: p,
            logprobs: None,
        },
        Box::new(move |e| tx.send(e).is_ok()),
    )
    .unwrap();
    // Listen to three deltas, then hang up.
    let mut deltas = 0;
    for e in rx.iter() {
        if matches!(e, ServeEvent::Delta { .. }) {
            deltas += 1;
            if deltas == 3 {
                break;
            }
        }
    }
    drop(rx);
    wait_until(&h, "the sequence is freed", |s| {
        s.running == 0 && s.requests_finished == 1
    });
    assert!(h.stats().generated_tokens < 400);
    h.shutdown(Duration::from_secs(5));
}

/// Beyond `max_running` requests wait; beyond `max_queue` they are refused.
#[test]
fn a_full_queue_refuses_requests() {
    let (h, tok) = engine(EngineConfig {
        max_running: 1,
        max_queue: 1,
        ..EngineConfig::default()
    });
    let mut long = params(10_000);
    long.ignore_eos = true;
    let (id1, _rx1) = submit(&h, prompt(&tok, "Tell me a long story."), long.clone());
    wait_until(&h, "the first request runs", |s| {
        s.running == 1 && s.queued == 0
    });
    let (id2, rx2) = submit(&h, prompt(&tok, "Hi"), params(4));
    let err = h
        .submit(
            ServeRequest {
                prompt: prompt(&tok, "Hello"),
                params: params(4),
                logprobs: None,
            },
            Box::new(|_| true),
        )
        .unwrap_err();
    assert_eq!(
        err,
        SubmitError::QueueFull {
            queued: 1,
            limit: 1
        }
    );
    // Aborting the long request lets the waiting one through.
    h.abort(id1);
    let second = collect(rx2);
    assert!(second.finish.is_some(), "{second:?}");
    assert_ne!(id1, id2);
    h.shutdown(Duration::from_secs(5));
}

/// Shutdown cancels what cannot finish within the grace period, then refuses new work;
/// prompts longer than the context window are refused up front.
#[test]
fn shutdown_cancels_in_flight_requests_and_refuses_new_ones() {
    let (h, tok) = engine(EngineConfig::default());
    let mut long = params(100_000);
    long.ignore_eos = true;
    let (_, rx) = submit(&h, prompt(&tok, "Tell me a long story."), long);
    wait_until(&h, "the request runs", |s| s.running == 1);
    h.shutdown(Duration::ZERO);
    let heard = collect(rx);
    assert_eq!(heard.finish.unwrap().0, FinishReason::Abort);
    let err = h
        .submit(
            ServeRequest {
                prompt: vec![1, 2, 3],
                params: params(4),
                logprobs: None,
            },
            Box::new(|_| true),
        )
        .unwrap_err();
    assert_eq!(err, SubmitError::ShuttingDown);

    let (h, _) = engine(EngineConfig::default());
    let too_long = vec![1u32; h.max_context()];
    let err = h
        .submit(
            ServeRequest {
                prompt: too_long,
                params: params(4),
                logprobs: None,
            },
            Box::new(|_| true),
        )
        .unwrap_err();
    assert!(matches!(err, SubmitError::Invalid(m) if m.contains("context window")));
    h.shutdown(Duration::from_secs(1));
}

/// When the paged memory is short, requests wait for blocks instead of failing; a prompt
/// that can never fit fails with a message that names the fix.
#[test]
fn a_small_kv_memory_makes_requests_wait_not_fail() {
    let (h, tok) = engine(EngineConfig {
        kv_cache_tokens: 128,
        ..EngineConfig::default()
    });
    let p = prompt(
        &tok,
        "Tell me about the history of the printing press in Europe.",
    );
    assert!(
        p.len() + 40 <= 128 && 2 * (p.len() + 40) > 128,
        "{} prompt tokens",
        p.len()
    );
    let mut long = params(40);
    long.ignore_eos = true;
    let rxs: Vec<_> = (0..2)
        .map(|_| submit(&h, p.clone(), long.clone()).1)
        .collect();
    for heard in rxs.into_iter().map(collect) {
        assert_eq!(heard.failed, None);
        assert_eq!(heard.tokens.len(), 40);
    }
    assert_eq!(h.stats().kv_blocks_total, 8);
    let huge: Vec<u32> = p.iter().cycle().take(300).copied().collect();
    let heard = collect(submit(&h, huge, params(4)).1);
    assert!(
        heard
            .failed
            .as_deref()
            .is_some_and(|m| m.contains("--kv-cache-tokens")),
        "{heard:?}"
    );
    h.shutdown(Duration::from_secs(5));
}

/// A model without a paged layout (safetensors DeepSeek-V3) runs on per-sequence caches:
/// batching still gives each request its own tokens, and a repeated prompt reuses the
/// cached KV of the earlier one.
#[test]
fn models_without_paging_use_per_sequence_caches() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepseek/dsv3-qlora-yarn");
    let loaded = seek_models::load(&dir, &Default::default()).unwrap();
    assert!(loaded.model.paged_layout().is_none());
    let tok = Arc::new(Tokenizer::from_hf_dir(&dir).unwrap());
    let h = EngineHandle::start(loaded.model, tok.clone(), EngineConfig::default()).unwrap();
    let p = |q: &str| render_chat(&tok, &[ChatMessage::user(q)]).unwrap().ids;
    let (a, b) = (
        p("The quick brown fox jumps over the lazy dog."),
        p("Hello there"),
    );
    let alone_a = collect(submit(&h, a.clone(), params(10)).1);
    let alone_b = collect(submit(&h, b.clone(), params(10)).1);
    let rxs = [
        submit(&h, a.clone(), params(10)).1,
        submit(&h, b, params(10)).1,
    ];
    let [ta, tb] = rxs.map(collect);
    assert_eq!(ta.tokens, alone_a.tokens);
    assert_eq!(tb.tokens, alone_b.tokens);
    let cached = ta.started.unwrap().1;
    assert!(
        cached >= 16 && cached % 16 == 0,
        "cached {cached} of {}",
        a.len()
    );
    assert_eq!(h.stats().kv_blocks_total, 0);
    h.shutdown(Duration::from_secs(5));
}
