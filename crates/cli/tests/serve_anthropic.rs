//! `seek serve` on real models driven by the real `anthropic` Python SDK, as Claude Code and
//! other Anthropic clients drive it. On SmolLM2-135M-Instruct: `messages.create`,
//! `messages.stream` (`text_stream`, `get_final_message`), `messages.count_tokens`, stop
//! sequences, `max_tokens`, a continued assistant turn, the SDK's error classes, the
//! `x-api-key` header, and the end user of `metadata.user_id` in the access log and the audit
//! log. On Qwen2.5-Coder-0.5B-Instruct (SmolLM2's template has no tools): a tool round trip,
//! streamed and not, that must match the same conversation through OpenAI's API.
//!
//! Scripts are in `tests/clients/`; the sample models come from `scripts/fetch-sample-models.sh`
//! and the Python packages from `scripts/test-deps.sh` (into `SEEK_PYDEPS`).

mod common;

use common::{python, sample_model, Server};
use serde_json::Value;

const SMOL: &str = "SmolLM2-135M-Instruct-Q4_1.gguf";
const QWEN: &str = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf";

fn run(script: &str, args: &[&str]) -> Value {
    let out = python(script, args);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn the_anthropic_sdk_creates_streams_and_counts_messages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let server = Server::start(
        &sample_model(SMOL),
        "smol",
        &[
            "--api-key",
            "sk-anthropic",
            "--audit-db",
            db.to_str().unwrap(),
        ],
        None,
        None,
    );
    let v = run(
        include_str!("clients/anthropic_messages.py"),
        &[&server.url(), "sk-anthropic"],
    );

    let m = &v["create"];
    assert!(m["id"].as_str().unwrap().starts_with("msg_"), "{m}");
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], "smol");
    let content = m["content"].as_array().unwrap();
    assert_eq!(
        content.len(),
        1,
        "not a reasoning model: one text block: {m}"
    );
    assert_eq!(content[0]["type"], "text");
    let text = content[0]["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{m}");
    assert_eq!(m["stop_reason"], "end_turn", "{m}");
    assert!(m["stop_sequence"].is_null());
    let input = |m: &serde_json::Value| {
        let u = &m["usage"];
        u["input_tokens"].as_u64().unwrap() + u["cache_read_input_tokens"].as_u64().unwrap()
    };
    // count_tokens counts the prompt the message was generated from, system prompt included.
    let count = v["count"].as_u64().unwrap();
    assert_eq!(input(m), count, "{v}");
    let output = m["usage"]["output_tokens"].as_u64().unwrap();
    assert!(output > 0, "{m}");

    // The stream adds up to the same message (greedy), and its text to the same text.
    let f = &v["final"];
    assert_eq!(v["text_stream"], text, "{v}");
    assert_eq!(f["content"], m["content"], "{v}");
    assert_eq!(f["stop_reason"], "end_turn");
    assert_eq!(f["usage"]["output_tokens"], output);
    assert_eq!(input(f), count);
    // The second request read the prompt from the prefix cache.
    assert!(
        f["usage"]["cache_read_input_tokens"].as_u64().unwrap() > 0,
        "{f}"
    );

    let short = &v["short"];
    assert_eq!(short["stop_reason"], "max_tokens", "{short}");
    assert_eq!(short["usage"]["output_tokens"], 3);
    let stopped = &v["stopped"];
    assert_eq!(stopped["stop_reason"], "stop_sequence", "{stopped}");
    assert_eq!(stopped["stop_sequence"], "Paris");
    assert_eq!(
        stopped["content"][0]["text"],
        text[..text.find("Paris").unwrap()],
        "{stopped}"
    );
    assert_eq!(v["x_api_key"], "max_tokens", "{v}");

    let e = &v["unknown_model"];
    assert_eq!(
        (&e["class"], &e["status"], &e["type"]),
        (
            &"NotFoundError".into(),
            &404.into(),
            &"not_found_error".into()
        ),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("smol"), "{e}");
    let e = &v["bad_key"];
    assert_eq!(
        (&e["class"], &e["status"], &e["type"]),
        (
            &"AuthenticationError".into(),
            &401.into(),
            &"authentication_error".into()
        ),
        "{e}"
    );
    let e = &v["image"];
    assert_eq!(
        (&e["class"], &e["status"], &e["type"]),
        (
            &"BadRequestError".into(),
            &400.into(),
            &"invalid_request_error".into()
        ),
        "{e}"
    );

    assert!(
        e["message"].as_str().unwrap().contains("\"image\" block"),
        "{e}"
    );
    let c = &v["continued"];
    let continued = c["content"][0]["text"].as_str().unwrap();
    assert!(
        continued.contains("Paris") && !continued.contains("capital of France"),
        "the answer continues the turn: {c}"
    );

    // The end user of metadata.user_id: in the access log and the audit entry.
    let id = m["id"].as_str().unwrap();
    let lines: Vec<String> = server.log.try_iter().collect();
    let access = lines
        .iter()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("no access log line for {id}: {lines:#?}"));
    assert!(access.contains("end_user=\"user-7f3a\""), "{access}");
    assert!(access.contains("endpoint=messages"), "{access}");
    let log = seek_audit::AuditLog::open(&db).unwrap();
    let entries = log.list(&Default::default()).unwrap();
    let e = entries.iter().find(|e| e.request_id == id).unwrap();
    assert_eq!(e.end_user.as_deref(), Some("user-7f3a"));
    assert_eq!(e.endpoint, "messages");
    assert_eq!(e.answer.as_deref(), Some(text));
}

#[test]
fn the_anthropic_sdk_round_trips_a_tool_call() {
    let server = Server::start(&sample_model(QWEN), "qwen", &[], None, None);
    let v = run(
        include_str!("clients/anthropic_tools.py"),
        &[&server.url(), "qwen"],
    );
    let first = &v["first"];
    assert_eq!(first["stop_reason"], "tool_use", "{first}");
    let content = first["content"].as_array().unwrap();
    // Only a call: no text block.
    assert_eq!(content.len(), 1, "{first}");
    let call = &content[0];
    assert_eq!(call["type"], "tool_use");
    assert_eq!(call["name"], "get_weather");
    assert!(!call["id"].as_str().unwrap().is_empty());
    assert_eq!(call["input"]["unit"], "celsius", "{call}");
    assert!(
        call["input"]["city"].as_str().unwrap().contains("Paris"),
        "{call}"
    );

    // Streamed: the same call, as a tool_use block and input_json_deltas.
    let streamed = &v["streamed"];
    assert_eq!(streamed["stop_reason"], "tool_use");
    assert_eq!(streamed["content"][0]["name"], call["name"]);
    assert_eq!(streamed["content"][0]["input"], call["input"]);
    let events: Vec<String> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e[0].as_str().unwrap();
            match (e[1].as_str(), e[2].as_str()) {
                (Some(d), _) | (None, Some(d)) => format!("{name}:{d}"),
                (None, None) => name.to_string(),
            }
        })
        .collect();
    let mut distinct = events.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        [
            "message_start",
            "content_block_start:tool_use",
            "content_block_delta:input_json_delta",
            // The SDK adds the finished block to the stop event.
            "content_block_stop:tool_use",
            "message_delta",
            "message_stop"
        ],
        "{events:?}"
    );

    // The result goes back as a tool_result block: the model sees what OpenAI's tool message
    // shows it (the same prompt, so the same greedy answer).
    let answer = &v["answer"];
    let oai = &v["openai"];
    assert_eq!(answer["content"][0]["text"], oai["text"], "{v}");
    assert_eq!(answer["stop_reason"], "end_turn");
    assert_eq!(oai["finish_reason"], "stop");
    let u = &answer["usage"];
    let input =
        u["input_tokens"].as_u64().unwrap() + u["cache_read_input_tokens"].as_u64().unwrap();
    assert_eq!(input, oai["prompt_tokens"].as_u64().unwrap(), "{v}");
    assert_eq!(v["count"], oai["prompt_tokens"], "{v}");

    // A named tool is called; `none` calls nothing.
    let named = &v["named"];
    assert_eq!(named["stop_reason"], "tool_use", "{named}");
    assert_eq!(named["content"][0]["name"], "get_weather", "{named}");
    let none = &v["none"];
    assert_ne!(none["stop_reason"], "tool_use", "{none}");
    assert!(
        none["content"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["type"] == "text"),
        "{none}"
    );
}
