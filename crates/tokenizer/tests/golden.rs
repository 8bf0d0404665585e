//! Golden tests: the three sample GGUF models against the reference tokenizers built by
//! tools/make_tokenizer_fixtures.py from their official tokenizer.json and rendered by
//! transformers' apply_chat_template. Ids and rendered prompts must match exactly.

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;

use common::{assert_ids, load_gguf_tokenizer, model_fixture, ModelFixture};
use seek_tokenizer::{ChatTemplate, IncrementalDetokenizer, Tokenizer};

struct Model {
    tok: Tokenizer,
    fixture: ModelFixture,
}

fn model(cell: &'static OnceLock<Model>, fixture: &str) -> &'static Model {
    cell.get_or_init(|| {
        let fixture = model_fixture(fixture);
        Model {
            tok: load_gguf_tokenizer(&fixture.model_file),
            fixture,
        }
    })
}

static SMOLLM2: OnceLock<Model> = OnceLock::new();
static QWEN: OnceLock<Model> = OnceLock::new();
static R1: OnceLock<Model> = OnceLock::new();

fn smollm2() -> &'static Model {
    model(&SMOLLM2, "smollm2.json")
}
fn qwen() -> &'static Model {
    model(&QWEN, "qwen2.5-coder.json")
}
fn r1() -> &'static Model {
    model(&R1, "r1-distill-qwen.json")
}

fn check_encodings(m: &Model) {
    for enc in &m.fixture.encodings {
        let what = format!("{} {:?}", m.fixture.model_file, enc.text);
        assert_ids(&what, &enc.ids, &m.tok.encode(&enc.text, false).unwrap());
        assert_ids(
            &format!("{what} with special tokens"),
            &enc.ids_with_special_tokens,
            &m.tok.encode(&enc.text, true).unwrap(),
        );
        assert_eq!(
            m.tok.decode(&enc.ids, false).unwrap(),
            enc.decoded,
            "{what}: decode"
        );
    }
}

/// The added tokens that the GGUF marks as control (so we skip them when decoding with
/// `skip_special_tokens`) while the official tokenizer.json has `"special": false`. llama.cpp's
/// converter marks every `<|...|>` / `<｜...｜>` token as control; the GGUF cannot say otherwise.
fn control_but_not_special(m: &Model) -> Vec<&str> {
    let ours = m.tok.hf().get_added_tokens_decoder();
    m.fixture
        .added_tokens
        .iter()
        .filter(|t| !t.special && ours.get(&t.id).is_some_and(|o| o.special))
        .map(|t| t.content.as_str())
        .collect()
}

fn check_decode_skipping_special(m: &Model, expected_divergence: &[&str]) {
    let divergent = control_but_not_special(m);
    assert_eq!(divergent, expected_divergence, "{}", m.fixture.model_file);
    for enc in &m.fixture.encodings {
        let want = divergent
            .iter()
            .fold(enc.decoded_skip_special.clone(), |s, t| s.replace(t, ""));
        assert_eq!(
            m.tok.decode(&enc.ids, true).unwrap(),
            want,
            "{} {:?}",
            m.fixture.model_file,
            enc.text
        );
    }
}

fn check_chats(m: &Model) {
    let template = m
        .tok
        .chat_template()
        .expect("the sample models ship a chat template");
    check_chats_with(m, template, &m.fixture.chats);
}

fn check_chats_with(m: &Model, template: &ChatTemplate, chats: &[common::Chat]) {
    for chat in chats {
        let rendered = template
            .render(&chat.messages, chat.add_generation_prompt)
            .unwrap();
        assert_eq!(
            rendered, chat.rendered,
            "{}: rendering {:?} (add_generation_prompt={})",
            m.fixture.model_file, chat.messages, chat.add_generation_prompt
        );
        assert_ids(
            &format!("{} prompt {rendered:?}", m.fixture.model_file),
            &chat.ids,
            &m.tok.encode(&rendered, false).unwrap(),
        );
    }
}

/// Streams every fixture encoding token by token: the pieces never contain U+FFFD and add up to
/// the full decode. Returns how many pushes held text back.
fn check_streaming(m: &Model) -> usize {
    let mut held_back = 0;
    for skip in [false, true] {
        for enc in &m.fixture.encodings {
            let mut detok = IncrementalDetokenizer::new(&m.tok, skip);
            let mut text = String::new();
            for &id in &enc.ids {
                let piece = detok.push(id).unwrap();
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "{:?}: piece {piece:?} has U+FFFD",
                    enc.text
                );
                held_back += usize::from(piece.is_empty());
                text.push_str(&piece);
            }
            text.push_str(&detok.finish().unwrap());
            assert_eq!(
                text,
                m.tok.decode(&enc.ids, skip).unwrap(),
                "{:?} (skip_special_tokens={skip})",
                enc.text
            );
        }
    }
    held_back
}

fn token_ids(tok: &Tokenizer, texts: &[&str]) -> Vec<u32> {
    texts
        .iter()
        .map(|t| {
            tok.token_to_id(t)
                .unwrap_or_else(|| panic!("{t} not in vocab"))
        })
        .collect()
}

#[test]
fn smollm2_encodes_like_transformers() {
    check_encodings(smollm2());
    check_decode_skipping_special(smollm2(), &[]);
}

#[test]
fn smollm2_chat_template_renders_like_transformers() {
    check_chats(smollm2());
}

#[test]
fn smollm2_special_tokens() {
    let m = smollm2();
    assert_eq!(m.tok.vocab_size(), m.fixture.vocab_size);
    assert_eq!(m.tok.pre_tokenizer_name(), Some("smollm"));
    assert_eq!(m.tok.bos_token_id(), Some(1));
    // <|im_end|> is the GGUF's EOS; <|endoftext|> is also an end-of-text control token.
    assert_eq!(
        m.tok.eos_token_ids(),
        token_ids(&m.tok, &["<|im_end|>", "<|endoftext|>"])
    );
}

#[test]
fn smollm2_streams_without_broken_characters() {
    assert!(
        check_streaming(smollm2()) > 0,
        "no text was ever held back: the test lost its emoji"
    );
}

#[test]
fn qwen_encodes_like_transformers() {
    check_encodings(qwen());
    check_decode_skipping_special(
        qwen(),
        &[
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
        ],
    );
}

#[test]
fn qwen_chat_template_renders_like_transformers() {
    check_chats(qwen());
}

#[test]
fn qwen_special_tokens() {
    let m = qwen();
    assert_eq!(m.tok.vocab_size(), m.fixture.vocab_size);
    assert_eq!(m.tok.pre_tokenizer_name(), Some("qwen2"));
    assert_eq!(m.tok.bos_token_id(), Some(151643));
    // As generation_config.json of Qwen2.5 instruct models: [<|im_end|>, <|endoftext|>].
    assert_eq!(m.tok.eos_token_ids(), [151645, 151643]);
    assert_eq!(m.tok.id_to_token(151644).as_deref(), Some("<|im_start|>"));
}

#[test]
fn qwen_streams_without_broken_characters() {
    assert!(check_streaming(qwen()) > 0);
}

#[test]
fn r1_distill_encodes_like_transformers() {
    check_encodings(r1());
    check_decode_skipping_special(
        r1(),
        &[
            "<｜User｜>",
            "<｜Assistant｜>",
            "<|EOT|>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
        ],
    );
    // <think> stays visible, so the reasoning splitter can see it.
    assert_eq!(
        r1().tok
            .decode(&token_ids(&r1().tok, &["<think>", "</think>"]), true)
            .unwrap(),
        "<think></think>"
    );
}

#[test]
fn r1_distill_chat_template_renders_like_transformers() {
    check_chats(r1());
}

#[test]
fn r1_distill_current_hub_template_opens_the_reasoning() {
    let m = r1();
    let variant = &m.fixture.template_variants[0];
    let template = ChatTemplate::new(
        variant.source.clone(),
        Some("<｜begin▁of▁sentence｜>".into()),
        Some("<｜end▁of▁sentence｜>".into()),
    )
    .unwrap();
    check_chats_with(m, &template, &variant.chats);
    let with_prompt = variant
        .chats
        .iter()
        .find(|c| c.add_generation_prompt)
        .unwrap();
    assert!(
        with_prompt.rendered.ends_with("<｜Assistant｜><think>\n"),
        "{}",
        variant.name
    );
}

#[test]
fn r1_distill_special_tokens() {
    let m = r1();
    assert_eq!(m.tok.vocab_size(), m.fixture.vocab_size);
    assert_eq!(m.tok.pre_tokenizer_name(), Some("deepseek-r1-qwen"));
    assert_eq!(m.tok.bos_token_id(), Some(151646));
    assert_eq!(m.tok.eos_token_ids(), [151643]);
    // add_bos_token: plain encoding with special tokens starts with BOS.
    assert_eq!(m.tok.encode("Hi", true).unwrap()[0], 151646);
    let source = m.tok.chat_template().unwrap().source();
    assert!(
        source.contains("content.split('</think>')[-1]"),
        "the sample's template strips past reasoning"
    );
}

#[test]
fn r1_distill_streams_without_broken_characters() {
    assert!(check_streaming(r1()) > 0);
}

#[test]
fn emoji_and_cjk_split_over_several_tokens_stream_whole() {
    // 🦙 and 😶‍🌫️ are several byte-level tokens each in Qwen's vocabulary.
    let m = qwen();
    let text = "🦙日本語😶\u{200d}🌫\u{fe0f}";
    let ids = m.tok.encode(text, false).unwrap();
    let chars: HashSet<char> = text.chars().collect();
    assert!(ids.len() > 4, "{ids:?}");
    let mut detok = IncrementalDetokenizer::new(&m.tok, false);
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.push(detok.push(id).unwrap());
    }
    pieces.push(detok.finish().unwrap());
    assert!(
        pieces.iter().any(String::is_empty),
        "some piece should have been held back: {pieces:?}"
    );
    for p in &pieces {
        assert!(
            p.chars().all(|c| chars.contains(&c)),
            "piece {p:?} is not made of whole characters of the text"
        );
    }
    assert_eq!(pieces.concat(), text);
}

/// Tool conversations (tools in the system prompt, an assistant turn of tool calls, a tool
/// result) render as transformers' chat-template Jinja renders them
/// (tools/make_tool_template_fixtures.py).
#[test]
fn tool_conversations_render_like_transformers() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tool_chats.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let models = fixture["models"].as_array().unwrap();
    assert_eq!(models.len(), 2, "Qwen2.5 and R1-Distill have tool formats");
    for m in models {
        let model = match m["model_file"].as_str().unwrap() {
            f if f.starts_with("Qwen") => qwen(),
            _ => r1(),
        };
        let template = model.tok.chat_template().unwrap();
        for chat in m["chats"].as_array().unwrap() {
            let messages: Vec<seek_types::ChatMessage> = chat["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|msg| seek_types::ChatMessage {
                    role: msg["role"].as_str().unwrap().into(),
                    content: msg["content"].as_str().unwrap_or("").into(),
                    tool_calls: msg["tool_calls"]
                        .as_array()
                        .map(|calls| {
                            calls
                                .iter()
                                .map(|c| seek_types::ToolCall {
                                    id: c["id"].as_str().unwrap().into(),
                                    name: c["function"]["name"].as_str().unwrap().into(),
                                    arguments: match &c["function"]["arguments"] {
                                        serde_json::Value::String(s) => s.clone(),
                                        v => v.to_string(),
                                    },
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    tool_call_id: msg["tool_call_id"].as_str().map(Into::into),
                    name: msg["name"].as_str().map(Into::into),
                    ..Default::default()
                })
                .collect();
            let tools: Vec<serde_json::Value> = chat["tools"].as_array().unwrap().clone();
            let rendered = template
                .render_with_tools(
                    &messages,
                    Some(&tools),
                    chat["add_generation_prompt"].as_bool().unwrap(),
                )
                .unwrap();
            assert_eq!(
                rendered,
                chat["rendered"].as_str().unwrap(),
                "{}: {messages:?}",
                m["model_file"]
            );
        }
    }
}
