//! Qwen3's chat template (as Qwen3 GGUF files carry it) renders as transformers renders it, with
//! `enable_thinking` unset, true and false passed as template variables (vLLM's
//! `chat_template_kwargs`); fixtures from `tools/make_qwen3_template_fixtures.py`.

use seek_tokenizer::ChatTemplate;
use seek_types::ChatMessage;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/templates")
}

#[test]
fn qwen3_renders_with_and_without_thinking_as_transformers_does() {
    let source = std::fs::read_to_string(fixtures().join("Qwen-Qwen3-0.6B.jinja")).unwrap();
    let t = ChatTemplate::new(source, None, Some("<|im_end|>".into())).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("qwen3_renders.json")).unwrap(),
    )
    .unwrap();
    let renders = fixture["renders"].as_array().unwrap();
    assert_eq!(renders.len(), 9);
    for r in renders {
        let messages: Vec<ChatMessage> = r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let mut msg =
                    ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap());
                msg.reasoning_content = m["reasoning_content"].as_str().map(str::to_string);
                msg
            })
            .collect();
        let kwargs = r["kwargs"].as_object().unwrap();
        let got = t
            .render_with_kwargs(
                &messages,
                None,
                true,
                (!kwargs.is_empty()).then_some(kwargs),
            )
            .unwrap();
        assert_eq!(got, r["rendered"].as_str().unwrap(), "{kwargs:?}");
    }
    // A variable the conversation sets cannot be overridden.
    let mut bad = serde_json::Map::new();
    bad.insert("messages".into(), serde_json::json!([]));
    let e = t
        .render_with_kwargs(&[ChatMessage::user("x")], None, true, Some(&bad))
        .unwrap_err();
    assert!(e.to_string().contains("cannot set \"messages\""), "{e}");
}
