//! The generation loop and R1 prompt conventions on the real sample models.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use seek_engine::chat::{is_reasoning_model, render_chat};
use seek_engine::generate::Delta;
use seek_engine::{generate, GenerateRequest};
use seek_tokenizer::Tokenizer;
use seek_types::{ChatMessage, FinishReason, SamplingParams};

fn model(name: &str) -> PathBuf {
    let dir = std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-sample-models.sh first",
        p.display()
    );
    p
}

fn tokenizer(name: &str) -> Tokenizer {
    Tokenizer::from_gguf(&seek_gguf::GgufFile::open(model(name)).unwrap()).unwrap()
}

#[test]
fn r1_prompt_folds_the_system_prompt_and_opens_think() {
    let tok = tokenizer("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf");
    assert!(is_reasoning_model(&tok));
    let p = render_chat(
        &tok,
        &[
            ChatMessage::system("Answer tersely."),
            ChatMessage::user("What is 2+2?"),
        ],
    )
    .unwrap();
    assert!(p.starts_in_reasoning);
    assert!(p.text.ends_with("<｜Assistant｜><think>\n"), "{:?}", p.text);
    assert!(
        p.text.contains("<｜User｜>Answer tersely.\n\nWhat is 2+2?"),
        "{:?}",
        p.text
    );
    assert_eq!(
        p.ids.iter().filter(|&&t| t == 151648).count(),
        1,
        "one <think> token"
    );
}

/// Qwen3's template (on the Qwen2.5 vocabulary, which shares its chat tokens): thinking by
/// default, the prompt opens `<think>`; with `enable_thinking: false` the template closes an
/// empty block itself and the answer starts outside the reasoning, with no `<think>` added.
#[test]
fn qwen3_thinking_can_be_turned_off_through_template_kwargs() {
    use seek_engine::chat::{render_chat_with, ChatOptions};
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/templates/Qwen-Qwen3-0.6B.jinja"),
    )
    .unwrap();
    let tok = tokenizer("Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf").with_chat_template(
        seek_tokenizer::ChatTemplate::new(source, None, Some("<|im_end|>".into())).unwrap(),
    );
    assert!(is_reasoning_model(&tok));
    let msgs = [ChatMessage::user("What is 2+2?")];
    let on = render_chat(&tok, &msgs).unwrap();
    assert!(on.starts_in_reasoning);
    assert!(
        on.text.ends_with("<|im_start|>assistant\n<think>\n"),
        "{:?}",
        on.text
    );
    let mut kw = serde_json::Map::new();
    kw.insert("enable_thinking".into(), false.into());
    let off = render_chat_with(
        &tok,
        &msgs,
        &ChatOptions {
            template_kwargs: Some(&kw),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!off.starts_in_reasoning);
    assert!(
        off.text
            .ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        "{:?}",
        off.text
    );
}

fn qwen() -> (seek_models::LoadedModel, Tokenizer) {
    let path = model("Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf");
    let loaded = seek_models::load(&path, &Default::default()).unwrap();
    let tok = Tokenizer::from_gguf(&seek_gguf::GgufFile::open(&path).unwrap()).unwrap();
    (loaded, tok)
}

/// A model stuck in its reasoning gets `</think>` after the budget and then answers.
#[test]
fn reasoning_budget_closes_the_block_and_lets_the_model_answer() {
    let (loaded, tok) = qwen();
    let mut prompt = render_chat(
        &tok,
        &[ChatMessage::user("What is 12 + 30? Reply with the number.")],
    )
    .unwrap();
    // Qwen2.5-Coder does not think by itself: open a block as an R1 template would.
    prompt.ids.extend(tok.encode("<think>\n", false).unwrap());
    let req = GenerateRequest {
        prompt: prompt.ids,
        sampling: SamplingParams::greedy(),
        max_tokens: 40,
        stop: vec![],
        ignore_eos: false,
        starts_in_reasoning: true,
        max_reasoning_tokens: Some(6),
        guide: None,
    };
    let mut deltas: Vec<Delta> = Vec::new();
    let out = generate(loaded.model.as_ref(), &tok, &req, |d| {
        deltas.push(d.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    let reasoning = out.reasoning_content.clone().unwrap();
    assert!(!reasoning.is_empty());
    assert!(!reasoning.contains("</think>"), "{reasoning:?}");
    // Six sampled tokens plus the forced closing tag.
    let close = tok
        .encode(seek_engine::generate::THINK_CLOSE, false)
        .unwrap()
        .len();
    assert_eq!(out.usage.reasoning_tokens, 6 + close);
    assert!(
        out.content.contains("42"),
        "content after the forced close: {:?}",
        out.content
    );
    // The streamed pieces add up to the final texts.
    let streamed_content: String = deltas.iter().map(|d| d.content.as_str()).collect();
    let streamed_reasoning: String = deltas.iter().map(|d| d.reasoning.as_str()).collect();
    assert_eq!(streamed_content, out.content);
    assert_eq!(streamed_reasoning, reasoning);
}

#[test]
fn max_tokens_abort_and_determinism() {
    let (loaded, tok) = qwen();
    let prompt = render_chat(&tok, &[ChatMessage::user("Tell me a story about a robot.")]).unwrap();
    let req = GenerateRequest {
        prompt: prompt.ids.clone(),
        sampling: SamplingParams {
            temperature: 0.8,
            seed: Some(3),
            ..SamplingParams::default()
        },
        max_tokens: 8,
        stop: vec![],
        ignore_eos: false,
        starts_in_reasoning: false,
        max_reasoning_tokens: None,
        guide: None,
    };
    let run = |req: &GenerateRequest| {
        generate(loaded.model.as_ref(), &tok, req, |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
    };
    let a = run(&req);
    assert_eq!(a.finish_reason, FinishReason::Length);
    assert_eq!(a.token_ids.len(), 8);
    assert_eq!(a.usage.completion_tokens, 8);
    assert_eq!(a.usage.total_tokens, prompt.ids.len() + 8);
    assert_eq!(run(&req).token_ids, a.token_ids, "same seed, same tokens");

    let mut n = 0;
    let aborted = generate(loaded.model.as_ref(), &tok, &req, |_| {
        n += 1;
        if n == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(aborted.finish_reason, FinishReason::Abort);
    assert!(aborted.token_ids.len() < 8);

    let too_long = GenerateRequest {
        prompt: vec![1; 40_000],
        ..req
    };
    let e = generate(loaded.model.as_ref(), &tok, &too_long, |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(e.to_string().contains("context is 32768"), "{e}");
}

/// Natural prose is far more likely to a language model than a random-looking blob of the
/// same length (what the perplexity guardrail relies on).
#[test]
fn perplexity_separates_prose_from_noise() {
    let path = model("SmolLM2-135M-Instruct-Q4_1.gguf");
    let loaded = seek_models::load(&path, &Default::default()).unwrap();
    let tok = Tokenizer::from_gguf(&seek_gguf::GgufFile::open(&path).unwrap()).unwrap();
    let prose = "The weather was pleasant today, so we took a long walk along the river and had lunch in the park.";
    let noise = "xq7 Zv!! kTq9 ]]p3 wVb =-= Qz0p rR4s^ mK8 vv%% Lp2 zz8q }{ 7Tt Xw$ pQ1 bn3 ;;q";
    let p = seek_engine::score::perplexity(loaded.model.as_ref(), &tok, prose, 512)
        .unwrap()
        .unwrap();
    let n = seek_engine::score::perplexity(loaded.model.as_ref(), &tok, noise, 512)
        .unwrap()
        .unwrap();
    assert!(p < 100.0 && n > 5.0 * p, "prose {p:.1}, noise {n:.1}");
    assert_eq!(
        seek_engine::score::perplexity(loaded.model.as_ref(), &tok, "a", 512).unwrap(),
        None
    );
}
