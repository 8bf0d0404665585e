//! `Tokenizer::from_hf_dir`: a folder made by saving a GGUF tokenizer as tokenizer.json, next
//! to a tokenizer_config.json written here, must tokenize and render like the fixtures.

mod common;

use std::path::Path;

use common::{assert_ids, load_gguf_tokenizer, model_fixture};
use seek_tokenizer::{Tokenizer, TokenizerError};
use serde_json::json;

fn write_json(path: &Path, value: serde_json::Value) {
    std::fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

/// Saves the GGUF tokenizer of `fixture_name` as a Hugging Face folder; returns the folder and
/// the GGUF tokenizer.
fn hf_folder(fixture_name: &str) -> (tempfile::TempDir, Tokenizer, common::ModelFixture) {
    let fixture = model_fixture(fixture_name);
    let tok = load_gguf_tokenizer(&fixture.model_file);
    let dir = tempfile::tempdir().unwrap();
    tok.hf()
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let mut config = json!({
        "chat_template": tok.chat_template().unwrap().source(),
        "add_bos_token": true,
        "tokenizer_class": "LlamaTokenizerFast",
    });
    for (k, v) in &fixture.special_tokens {
        config[k] = json!(v);
    }
    write_json(&dir.path().join("tokenizer_config.json"), config);
    (dir, tok, fixture)
}

#[test]
fn r1_distill_folder_matches_the_fixture() {
    let (dir, gguf_tok, fixture) = hf_folder("r1-distill-qwen.json");
    // The older AddedToken form of a special token, and a generation config with a list.
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    config["bos_token"] = json!({ "content": "<｜begin▁of▁sentence｜>", "lstrip": false });
    write_json(&dir.path().join("tokenizer_config.json"), config);
    write_json(
        &dir.path().join("generation_config.json"),
        json!({ "bos_token_id": 151646, "eos_token_id": [151643, 151647] }),
    );

    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.pre_tokenizer_name(), Some("qwen2"));
    assert_eq!(tok.bos_token_id(), Some(151646));
    assert_eq!(tok.eos_token_ids(), [151643, 151647]);
    assert_eq!(tok.vocab_size(), gguf_tok.vocab_size());
    for enc in &fixture.encodings {
        assert_ids(
            &format!("{:?}", enc.text),
            &enc.ids,
            &tok.encode(&enc.text, false).unwrap(),
        );
        assert_ids(
            &format!("{:?} + BOS", enc.text),
            &enc.ids_with_special_tokens,
            &tok.encode(&enc.text, true).unwrap(),
        );
        assert_eq!(tok.decode(&enc.ids, false).unwrap(), enc.decoded);
    }
    let template = tok.chat_template().unwrap();
    for chat in &fixture.chats {
        let rendered = template
            .render(&chat.messages, chat.add_generation_prompt)
            .unwrap();
        assert_eq!(rendered, chat.rendered);
        assert_ids(&rendered, &chat.ids, &tok.encode(&rendered, false).unwrap());
    }
}

#[test]
fn smollm2_folder_matches_the_fixture_and_prefers_chat_template_jinja() {
    let (dir, _, fixture) = hf_folder("smollm2.json");
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.pre_tokenizer_name(), Some("smollm"));
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_ids(), [2, 0]);
    for enc in &fixture.encodings {
        assert_ids(
            &format!("{:?}", enc.text),
            &enc.ids,
            &tok.encode(&enc.text, false).unwrap(),
        );
    }
    for chat in &fixture.chats {
        assert_eq!(
            tok.chat_template()
                .unwrap()
                .render(&chat.messages, chat.add_generation_prompt)
                .unwrap(),
            chat.rendered
        );
    }

    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{{ messages[0].content }}!",
    )
    .unwrap();
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(
        tok.chat_template()
            .unwrap()
            .render(&fixture.chats[0].messages, false)
            .unwrap(),
        "You are a terse assistant.!"
    );
}

#[test]
fn config_forms_and_errors() {
    let (dir, _, fixture) = hf_folder("smollm2.json");
    let config_path = dir.path().join("tokenizer_config.json");
    let config = |v: serde_json::Value| write_json(&config_path, v);

    // A list of named templates: "default" is used.
    config(json!({ "chat_template": [
        { "name": "tool_use", "template": "tools" },
        { "name": "default", "template": "{{ bos_token }}default" },
    ], "bos_token": "<|im_start|>" }));
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(
        tok.chat_template()
            .unwrap()
            .render(&fixture.chats[0].messages, false)
            .unwrap(),
        "<|im_start|>default"
    );

    // No template anywhere, no config at all: still a tokenizer.
    std::fs::remove_file(&config_path).unwrap();
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert!(tok.chat_template().is_none());
    assert_eq!(tok.bos_token_id(), None);

    // The legacy chat_template.json.
    write_json(
        &dir.path().join("chat_template.json"),
        json!({ "chat_template": "legacy" }),
    );
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.chat_template().unwrap().source(), "legacy");

    let bad = |v: serde_json::Value, needle: &str| {
        write_json(&config_path, v);
        let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
        assert!(matches!(e, TokenizerError::BadConfig { .. }), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
        assert!(e.to_string().contains("tokenizer_config.json"), "{e}");
    };
    bad(json!({ "eos_token": 5 }), "eos_token should be a string");
    bad(
        json!({ "eos_token": "<|not_in_vocab|>" }),
        "not in tokenizer.json's vocabulary",
    );
    bad(
        json!({ "chat_template": [{ "name": "x", "template": "y" }] }),
        "one named \"default\"",
    );
    std::fs::write(&config_path, "{ not json").unwrap();
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("invalid JSON"), "{e}");

    let e = Tokenizer::from_hf_dir(&dir.path().join("nowhere")).unwrap_err();
    assert!(e.to_string().contains("has no tokenizer.json"), "{e}");
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not a valid tokenizer.json"), "{e}");
}
