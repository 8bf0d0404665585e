//! `seek serve` on real models driven by the real `anthropic` Python SDK, as Claude Code and
//! other Anthropic clients drive it. On SmolLM2-135M-Instruct: `messages.create`,
//! `messages.stream` (`text_stream`, `get_final_message`), `messages.count_tokens`, stop
//! sequences, `max_tokens`, a continued assistant turn, the SDK's error classes, the
//! `x-api-key` header, and the end user of `metadata.user_id` in the access log and the audit
//! log. On Qwen2.5-Coder-0.5B-Instruct (SmolLM2's template has no tools): a tool round trip,
//! streamed and not, that must match the same conversation through OpenAI's API.
//!
//! Needs the sample models (`scripts/fetch-sample-models.sh`) and the Python packages of
//! `scripts/test-deps.sh` (into `SEEK_PYDEPS`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SMOL: &str = "SmolLM2-135M-Instruct-Q4_1.gguf";
const QWEN: &str = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf";

fn model(file: &str) -> String {
    let dir = std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let p = dir.join(file);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-sample-models.sh first",
        p.display()
    );
    p.display().to_string()
}

fn pydeps() -> PathBuf {
    std::env::var_os("SEEK_PYDEPS").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME");
            PathBuf::from(home).join(".cache/seek/pydeps")
        },
        PathBuf::from,
    )
}

/// `seek serve` on a sample model as `name`, ready on /health; its stderr lines arrive on `log`.
struct Server {
    child: Child,
    url: String,
    log: mpsc::Receiver<String>,
}

impl Server {
    fn start(file: &str, name: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_seek"))
            .args([
                "serve",
                &model(file),
                "--port",
                "0",
                "--served-model-name",
                name,
            ])
            .args(args)
            .env("SEEK_THREADS", "2")
            .env_remove("SEEK_API_KEY")
            .env_remove("SEEK_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("seek runs");
        let (tx, log) = mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let url = loop {
            let line = log
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no address printed: {seen:#?}"));
            seen.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !matches!(ureq::get(&format!("{url}/health")).call(), Ok(r) if r.status() == 200) {
            assert!(Instant::now() < deadline, "never ready: {seen:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, url, log }
    }

    /// Every line it has printed so far.
    fn lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python script with the test packages; its stdout as JSON.
fn python(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", pydeps())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed (is the anthropic package installed? run scripts/test-deps.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const ANTHROPIC_CLIENT: &str = r#"
import json, sys, anthropic
url, key = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
q = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
# This SDK takes no sampling settings as arguments any more; the server still reads them.
greedy = {"temperature": 0}
out = {}
m = client.messages.create(model="smol", max_tokens=32, messages=q, extra_body=greedy,
                           system="You are a helpful assistant.",
                           metadata={"user_id": "user-7f3a"})
out["create"] = m.model_dump()
with client.messages.stream(model="smol", max_tokens=32, messages=q, extra_body=greedy,
                            system="You are a helpful assistant.") as s:
    out["text_stream"] = "".join(s.text_stream)
    out["final"] = s.get_final_message().model_dump()
out["count"] = client.messages.count_tokens(model="smol", messages=q,
                                            system="You are a helpful assistant.").input_tokens
out["short"] = client.messages.create(model="smol", max_tokens=3, messages=q,
                                      extra_body=greedy).model_dump()
out["stopped"] = client.messages.create(model="smol", max_tokens=32, messages=q, extra_body=greedy,
                                        stop_sequences=["Paris"]).model_dump()
# Claude Code sends its key as x-api-key.
xkey = anthropic.Anthropic(base_url=url, api_key=None, default_headers={"x-api-key": key},
                           max_retries=0)
out["x_api_key"] = xkey.messages.create(model="smol", max_tokens=3, messages=q).stop_reason

def error(call):
    try:
        call()
    except anthropic.APIStatusError as e:
        return {"class": type(e).__name__, "status": e.status_code, "type": e.body["error"]["type"],
                "message": e.body["error"]["message"]}
    return None

out["unknown_model"] = error(lambda: client.messages.create(
    model="claude-sonnet-4-5", max_tokens=8, messages=q))
out["bad_key"] = error(lambda: anthropic.Anthropic(base_url=url, api_key="sk-wrong", max_retries=0)
                       .messages.create(model="smol", max_tokens=8, messages=q))
out["image"] = error(lambda: client.messages.create(model="smol", max_tokens=8, messages=[
    {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                              "data": "iVBORw0KGgo="}}]}]))
# A last assistant turn is continued, not answered anew.
out["continued"] = client.messages.create(
    model="smol", max_tokens=16, extra_body=greedy,
    messages=q + [{"role": "assistant", "content": "The capital of France is"}]).model_dump()
print(json.dumps(out))
"#;

#[test]
fn the_anthropic_sdk_creates_streams_and_counts_messages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let server = Server::start(
        SMOL,
        "smol",
        &[
            "--api-key",
            "sk-anthropic",
            "--audit-db",
            db.to_str().unwrap(),
        ],
    );
    let v = python(ANTHROPIC_CLIENT, &[&server.url, "sk-anthropic"]);

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
    let lines = server.lines();
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

const ANTHROPIC_TOOLS: &str = r#"
import json, sys, anthropic, openai
url, model = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=url, api_key="sk-none", max_retries=0)
tools = [{"name": "get_weather", "description": "Get the current weather in a city.",
          "input_schema": {"type": "object", "properties": {
              "city": {"type": "string", "maxLength": 30},
              "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
              "required": ["city", "unit"], "additionalProperties": False}}]
q = [{"role": "user", "content": "What is the weather in Paris right now, in celsius?"}]
greedy = dict(model=model, extra_body={"temperature": 0})
out = {}
first = client.messages.create(max_tokens=200, messages=q, tools=tools, tool_choice={"type": "any"}, **greedy)
out["first"] = first.model_dump()
with client.messages.stream(max_tokens=200, messages=q, tools=tools, tool_choice={"type": "any"},
                            **greedy) as s:
    # The wire events (the SDK skips `ping`, and adds its own `input_json` and `text` events).
    out["events"] = [[e.type, getattr(getattr(e, "delta", None), "type", None),
                      getattr(getattr(e, "content_block", None), "type", None)]
                     for e in s if e.type not in ("input_json", "text", "thinking")]
    out["streamed"] = s.get_final_message().model_dump()
uses = [b for b in first.content if b.type == "tool_use"]
result = json.dumps({"temperature": 18, "sky": "sunny"})
history = q + [{"role": "assistant", "content": first.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id, "content": result}
                                            for u in uses]}]
out["answer"] = client.messages.create(max_tokens=60, messages=history, tools=tools, **greedy).model_dump()
out["count"] = client.messages.count_tokens(model=model, messages=history, tools=tools).input_tokens
# The same conversation through OpenAI's API on the same server.
oai = openai.OpenAI(base_url=url + "/v1", api_key="sk-none", max_retries=0)
oai_history = q + [{"role": "assistant", "content": None, "tool_calls": [
    {"id": u.id, "type": "function", "function": {"name": u.name, "arguments": json.dumps(u.input)}}
    for u in uses]}] + [{"role": "tool", "tool_call_id": u.id, "content": result} for u in uses]
oai_tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                "parameters": t["input_schema"]}} for t in tools]
r = oai.chat.completions.create(model=model, messages=oai_history, tools=oai_tools, temperature=0,
                                max_tokens=60)
out["openai"] = {"text": r.choices[0].message.content, "prompt_tokens": r.usage.prompt_tokens,
                 "finish_reason": r.choices[0].finish_reason}
out["named"] = client.messages.create(max_tokens=200, tools=tools,
                                      tool_choice={"type": "tool", "name": "get_weather"},
                                      messages=[{"role": "user", "content": "Hi!"}], **greedy).model_dump()
out["none"] = client.messages.create(max_tokens=20, messages=q, tools=tools, tool_choice={"type": "none"},
                                     **greedy).model_dump()
print(json.dumps(out))
"#;

#[test]
fn the_anthropic_sdk_round_trips_a_tool_call() {
    let server = Server::start(QWEN, "qwen", &[]);
    let v = python(ANTHROPIC_TOOLS, &[&server.url, "qwen"]);
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
