//! `seek serve` on a real model (Qwen2.5-Coder-0.5B Q4_K_M, the R1-Distill-Qwen architecture)
//! driven by the client libraries applications use: the `openai` SDK's `parse()` with Pydantic
//! models, tool round trips (streamed and not), a named `tool_choice`, and the errors SDKs map
//! to their exceptions. Scripts are in `tests/clients/`; packages come from
//! `scripts/test-deps.sh` (into `SEEK_PYDEPS`).

mod common;

use common::{python, sample_model, Server};
use serde_json::Value;

const QWEN: &str = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf";

fn qwen() -> Server {
    Server::start(&sample_model(QWEN), "qwen", &[], None, None)
}

#[test]
fn the_openai_sdk_parses_structured_outputs_and_round_trips_tool_calls() {
    let server = qwen();
    let out = python(
        include_str!("clients/openai_structured.py"),
        &[&server.url(), "qwen"],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    // Every Pydantic model parses: the answers were constrained to each schema.
    assert_eq!(v["parsed"], v["cases"], "{v:#}");
    assert!(v["cases"].as_u64().unwrap() >= 10);
    assert_eq!(v["streamed"], 1, "{v:#}");
    for key in ["tools", "tools_streamed"] {
        let t = &v[key];
        assert_eq!(t["finish_reason"], "tool_calls", "{key}: {t:#}");
        let call = &t["calls"][0];
        assert_eq!(call["name"], "get_weather", "{key}: {t:#}");
        assert!(call["arguments"]["city"].is_string(), "{key}: {t:#}");
        assert!(
            ["celsius", "fahrenheit"].contains(&call["arguments"]["unit"].as_str().unwrap()),
            "{key}: {t:#}"
        );
        // With the tool's result in the conversation, the model answers in text.
        assert_eq!(t["answer_finish"], "stop", "{key}: {t:#}");
        assert!(
            !t["answer"].as_str().unwrap_or("").is_empty(),
            "{key}: {t:#}"
        );
    }
    assert_eq!(v["named"]["name"], "add", "{v:#}");
    assert!(v["named"]["arguments"]["a"].is_i64() && v["named"]["arguments"]["b"].is_i64());
    // Prefix completion continues the assistant's words; FIM fills the function body.
    let prefix = v["prefix"].as_str().unwrap();
    assert!(prefix.contains("Paris"), "{v:#}");
    assert!(v["fim"].as_str().unwrap().contains("return a + b"), "{v:#}");
    let date = v["regex"].as_str().unwrap();
    assert!(
        regex::Regex::new(r"^2024-[01][0-9]-[0-3][0-9]$")
            .unwrap()
            .is_match(date),
        "{date}"
    );
    assert!(
        ["yes", "no"].contains(&v["choice"].as_str().unwrap()),
        "{v:#}"
    );
    assert_eq!(v["unknown_model"], "model_not_found");
    assert_eq!(v["bad_logit_bias"], "logit_bias");
}

#[test]
fn langchain_tools_and_structured_output_and_litellm_cost() {
    let server = qwen();
    let out = python(
        include_str!("clients/langchain_litellm.py"),
        &[&server.url(), "qwen"],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    // `bind_tools(..., tool_choice="required")`: LangChain reads the call back.
    let calls = v["bind_tools"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{v:#}");
    assert_eq!(calls[0]["name"], "get_weather");
    assert!(calls[0]["args"]["city"].is_string(), "{v:#}");
    // `with_structured_output(Person)` returns a validated Person.
    assert!(v["structured"]["name"].is_string(), "{v:#}");
    assert!(v["structured"]["age"].is_i64(), "{v:#}");
    // LiteLLM takes `usage.cost` as the number it expects, without a warning.
    let l = &v["litellm"];
    assert_eq!(l["cost_is_number"], true, "{l:#}");
    assert!(l["cost"].as_f64().unwrap() > 0.0, "{l:#}");
    assert_eq!(l["warnings"], serde_json::json!([]), "{l:#}");
    assert_eq!(l["log"], serde_json::json!([]), "{l:#}");
}
