//! The server on a real model: the tiny DeepSeek-V3 fixture with DeepSeek-R1's tokenizer
//! layout and chat template (`tests/fixtures/deepseek/dsv3-qlora-yarn`, made by
//! `tools/make_deepseek_golden.py`; random weights, 256-token context, a reasoning model).
//!
//! Routes go through `app(state).oneshot(..)`; the last tests use real TCP (`serve` on
//! 127.0.0.1:0) with `ureq` as the client. Nothing depends on timing: where a test needs the
//! engine to hold still (a full queue, a client that leaves mid-request, a drain), the model is
//! wrapped in a [`Gate`] that lets forward passes through only when the test says so, and
//! waits poll for a state with a generous deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use candle_core::{Device, Tensor};
use seek_engine::chat::render_chat;
use seek_engine::serve::{EngineConfig, EngineHandle, EngineStats};
use seek_models::paged::{KvBlocks, PagedLayout, Span};
use seek_models::{CausalLm, KvCache};
use seek_server::{
    app, ApiKeys, AppState, Limits, Phase, Prices, RateLimits, ServedModel, ServerConfig,
};
use seek_tokenizer::Tokenizer;
use seek_types::ChatMessage;
use serde_json::{json, Value};
use tower::ServiceExt;

const MODEL: &str = "tiny-r1";
const CONTEXT: usize = 256;
const PROMPT: &str = "Explain briefly why the sky looks blue on a clear afternoon.";

fn fixture() -> PathBuf {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepseek/dsv3-qlora-yarn");
    assert!(
        dir.join("tokenizer.json").is_file() && dir.join("model.safetensors").is_file(),
        "{} lacks model.safetensors or tokenizer.json: they are made by tools/make_deepseek_golden.py",
        dir.display()
    );
    dir
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_hf_dir(&fixture()).unwrap()
}

/// Lets forward passes through only when the test allows: `permits` passes, or all once open.
#[derive(Default)]
struct Gate {
    /// (permits, passes waiting); `usize::MAX` permits means open.
    state: Mutex<(usize, usize)>,
    cv: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut g = self.state.lock().unwrap();
        g.1 += 1;
        self.cv.notify_all();
        while g.0 == 0 {
            g = self.cv.wait(g).unwrap();
        }
        if g.0 != usize::MAX {
            g.0 -= 1;
        }
        g.1 -= 1;
        self.cv.notify_all();
    }

    fn open(&self) {
        self.state.lock().unwrap().0 = usize::MAX;
        self.cv.notify_all();
    }

    /// Lets `n` more forward passes through.
    fn permit(&self, n: usize) {
        self.state.lock().unwrap().0 += n;
        self.cv.notify_all();
    }

    /// Waits until a forward pass is held at the gate.
    fn wait_for_waiter(&self) {
        let g = self.state.lock().unwrap();
        let (g, t) = self
            .cv
            .wait_timeout_while(g, Duration::from_secs(120), |g| g.1 == 0)
            .unwrap();
        assert!(
            !t.timed_out() || g.1 > 0,
            "no forward pass reached the gate"
        );
    }
}

/// The real model behind a [`Gate`].
struct Gated {
    inner: Box<dyn CausalLm>,
    gate: Arc<Gate>,
}

impl CausalLm for Gated {
    fn forward(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, seek_models::ModelError> {
        self.gate.pass();
        self.inner.forward(input_ids, cache)
    }
    fn forward_last(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, seek_models::ModelError> {
        self.gate.pass();
        self.inner.forward_last(input_ids, cache)
    }
    fn decode_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor, seek_models::ModelError> {
        self.gate.pass();
        self.inner.decode_batch(tokens, caches)
    }
    fn paged_layout(&self) -> Option<PagedLayout> {
        self.inner.paged_layout()
    }
    fn forward_paged(
        &self,
        spans: &[Span<'_>],
        blocks: &mut KvBlocks,
    ) -> Result<Tensor, seek_models::ModelError> {
        self.gate.pass();
        self.inner.forward_paged(spans, blocks)
    }
    fn new_cache(&self) -> KvCache {
        self.inner.new_cache()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
}

struct Setup {
    engine: EngineConfig,
    keys: ApiKeys,
    prices: Prices,
    gate: Option<Arc<Gate>>,
    grace: Duration,
    limits: RateLimits,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            keys: ApiKeys::none(),
            prices: Prices::default(),
            gate: None,
            grace: Duration::from_secs(600),
            limits: RateLimits::default(),
        }
    }
}

impl Setup {
    fn no_prefix_cache() -> Self {
        Self {
            engine: EngineConfig {
                prefix_cache_tokens: 0,
                ..EngineConfig::default()
            },
            ..Self::default()
        }
    }

    fn state(self) -> AppState {
        let loaded = seek_models::load(&fixture(), &Default::default()).unwrap();
        let model: Box<dyn CausalLm> = match self.gate {
            Some(gate) => Box::new(Gated {
                inner: loaded.model,
                gate,
            }),
            None => loaded.model,
        };
        let tok = Arc::new(tokenizer());
        let engine = EngineHandle::start(model, tok.clone(), self.engine).unwrap();
        let cfg = ServerConfig {
            api_keys: self.keys,
            insecure_no_auth: false,
            model_names: vec![],
            shutdown_grace: self.grace,
            rate_limits: self.limits,
            ..ServerConfig::default()
        };
        AppState::with_models(cfg, vec![ServedModel::new(MODEL, engine, tok, self.prices)])
    }
}

fn state() -> AppState {
    Setup::default().state()
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `data:` payloads of an event stream, in order.
    fn events(&self) -> Vec<String> {
        sse_events(&self.text)
    }
}

fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

async fn send(
    state: &AppState,
    method: &str,
    uri: &str,
    body: Option<String>,
    key: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
    let res = app(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn post(state: &AppState, uri: &str, body: &Value) -> Reply {
    send(state, "POST", uri, Some(body.to_string()), None).await
}

/// A greedy chat request for `content`, with `extra` fields on top.
fn chat(content: &str, extra: Value) -> Value {
    let mut v = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 16,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn prompt_tokens(content: &str) -> usize {
    render_chat(&tokenizer(), &[ChatMessage::user(content)])
        .unwrap()
        .ids
        .len()
}

fn assert_usage_consistent(u: &Value, prices: Prices) {
    let n = |k: &str| {
        u[k].as_u64()
            .unwrap_or_else(|| panic!("usage.{k} missing: {u}")) as usize
    };
    let (p, c, t, hit, miss) = (
        n("prompt_tokens"),
        n("completion_tokens"),
        n("total_tokens"),
        n("prompt_cache_hit_tokens"),
        n("prompt_cache_miss_tokens"),
    );
    assert_eq!(t, p + c, "{u}");
    assert_eq!(hit + miss, p, "{u}");
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], hit, "{u}");
    let reasoning = u["completion_tokens_details"]["reasoning_tokens"]
        .as_u64()
        .unwrap() as usize;
    assert!(reasoning <= c, "{u}");
    let cost = &u["cost_details"];
    assert_eq!(cost["currency"], "USD", "{u}");
    let want = [
        ("input_cache_hit", hit as f64 * prices.input_cache_hit / 1e6),
        (
            "input_cache_miss",
            miss as f64 * prices.input_cache_miss / 1e6,
        ),
        ("output", c as f64 * prices.output / 1e6),
    ];
    let mut total = 0.0;
    for (k, w) in want {
        let got = cost[k].as_f64().unwrap();
        assert!((got - w).abs() <= 1e-12, "cost.{k} = {got}, want {w}: {u}");
        total += w;
    }
    assert!(
        (cost["total"].as_f64().unwrap() - total).abs() <= 1e-12,
        "{u}"
    );
    // `usage.cost` is the number in dollars that LiteLLM and OpenRouter clients read.
    assert_eq!(u["cost"].as_f64(), cost["total"].as_f64(), "{u}");
}

// ---------------------------------------------------------------------------------------------
// Chat completions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn chat_completion_has_consistent_usage_and_cost() {
    let prices = Prices {
        input_cache_hit: 1.0,
        input_cache_miss: 3.0,
        output: 7.0,
    };
    let s = Setup {
        prices,
        ..Setup::default()
    }
    .state();
    let r = post(
        &s,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"max_tokens": 12})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    // A reasoning model: the chain of thought under both names, the answer apart.
    assert!(c["message"]["reasoning_content"].is_string(), "{v}");
    assert_eq!(c["message"]["reasoning"], c["message"]["reasoning_content"]);
    assert!(c["message"]["content"].is_string(), "{v}");
    let u = &v["usage"];
    assert_usage_consistent(u, prices);
    assert_eq!(u["prompt_tokens"], prompt_tokens(PROMPT));
    let completion = u["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion), "{u}");
    match c["finish_reason"].as_str().unwrap() {
        "length" => assert_eq!(completion, 12),
        "stop" => {}
        other => panic!("finish_reason {other}"),
    }
    // Typed view of the same body.
    let typed: seek_server::wire::ChatCompletion = serde_json::from_str(&r.text).unwrap();
    assert_eq!(typed.usage.completion_tokens as u64, completion);
}

#[tokio::test]
async fn max_tokens_defaults_to_the_rest_of_the_context() {
    let s = state();
    let body = chat(PROMPT, json!({"ignore_eos": true}));
    let mut body = body;
    body.as_object_mut().unwrap().remove("max_tokens");
    let r = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["total_tokens"], CONTEXT, "{v}");
}

#[tokio::test]
async fn streamed_deltas_concatenate_to_the_non_streamed_answer() {
    let s = Setup::no_prefix_cache().state();
    let body = chat(PROMPT, json!({"max_tokens": 40}));
    let whole = post(&s, "/v1/chat/completions", &body).await.json();
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let r = post(&s, "/v1/chat/completions", &sbody).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect();
    let id = chunks[0]["id"].clone();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (mut reasoning, mut content, mut finish) = (String::new(), String::new(), None);
    let (usage_chunk, deltas) = chunks.split_last().unwrap();
    for c in deltas {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert!(
            c["usage"].is_null() && c.get("usage").is_some(),
            "usage: null before the last chunk: {c}"
        );
        let ch = &c["choices"][0];
        assert_eq!(ch["index"], 0);
        let d = &ch["delta"];
        if let Some(t) = d["reasoning_content"].as_str() {
            assert_eq!(d["reasoning"], t);
            reasoning += t;
        }
        content += d["content"].as_str().unwrap_or("");
        if let Some(f) = ch["finish_reason"].as_str() {
            assert!(finish.is_none(), "one finish chunk");
            finish = Some(f.to_string());
        }
    }
    let m = &whole["choices"][0]["message"];
    assert_eq!(reasoning, m["reasoning_content"].as_str().unwrap());
    assert_eq!(content, m["content"].as_str().unwrap());
    assert_eq!(
        finish.as_deref(),
        whole["choices"][0]["finish_reason"].as_str()
    );
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_usage_consistent(&usage_chunk["usage"], Prices::default());
    assert_eq!(usage_chunk["usage"], whole["usage"]);

    // Without include_usage, no chunk has a usage field.
    sbody.as_object_mut().unwrap().remove("stream_options");
    let r = post(&s, "/v1/chat/completions", &sbody).await;
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert!(c.get("usage").is_none(), "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 1, "{c}");
    }
}

#[tokio::test]
async fn text_parts_are_the_same_as_a_string() {
    let s = Setup::no_prefix_cache().state();
    let mut body = chat(PROMPT, json!({}));
    let (first, second) = PROMPT.split_at(20);
    // Parts are joined with a newline, so split at one to compare.
    let joined = format!("{first}\n{second}");
    body["messages"] = json!([{"role": "user", "content": [{"type": "text", "text": first}, {"type": "text", "text": second}]}]);
    let b = post(&s, "/v1/chat/completions", &body).await.json();
    let c = post(&s, "/v1/chat/completions", &chat(&joined, json!({})))
        .await
        .json();
    assert_eq!(b["choices"], c["choices"]);
    assert_eq!(b["usage"]["prompt_tokens"], prompt_tokens(&joined));
}

#[tokio::test]
async fn a_repeated_prompt_reports_prefix_cache_hits() {
    let s = state();
    let body = chat(PROMPT, json!({"max_tokens": 4}));
    let first = post(&s, "/v1/chat/completions", &body).await.json();
    assert_eq!(first["usage"]["prompt_cache_hit_tokens"], 0, "{first}");
    let second = post(&s, "/v1/chat/completions", &body).await.json();
    let u = &second["usage"];
    assert_usage_consistent(u, Prices::default());
    let hit = u["prompt_cache_hit_tokens"].as_u64().unwrap();
    let p = u["prompt_tokens"].as_u64().unwrap();
    assert!(hit > 0, "the second identical request hits the cache: {u}");
    assert_eq!(hit % 16, 0, "hits are whole blocks: {u}");
    assert!(hit < p, "the last prompt token is always computed: {u}");
    assert!(
        u["cost"].as_f64().unwrap() < first["usage"]["cost"].as_f64().unwrap()
            || u["completion_tokens"] != first["usage"]["completion_tokens"],
        "cache hits are cheaper"
    );
    assert!(u["cost_details"]["input_cache_hit"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn n_choices_are_indexed_and_seeded() {
    let s = Setup::no_prefix_cache().state();
    let body = chat(
        PROMPT,
        json!({"n": 3, "temperature": 1.0, "seed": 42, "max_tokens": 8}),
    );
    let a = post(&s, "/v1/chat/completions", &body).await.json();
    let choices = a["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{a}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    let u = &a["usage"];
    assert_usage_consistent(u, Prices::default());
    assert_eq!(
        u["prompt_tokens"],
        prompt_tokens(PROMPT),
        "the prompt is billed once"
    );
    let b = post(&s, "/v1/chat/completions", &body).await.json();
    assert_eq!(a["choices"], b["choices"], "same seed, same choices");
    assert_eq!(
        a["usage"]["completion_tokens"],
        b["usage"]["completion_tokens"]
    );

    // Greedy choices are all the greedy answer.
    let g = post(&s, "/v1/chat/completions", &chat(PROMPT, json!({"n": 2})))
        .await
        .json();
    assert_eq!(g["choices"][0]["message"], g["choices"][1]["message"]);

    // Streamed, every choice gets its role chunk, its deltas and its finish chunk.
    let mut sb = chat(PROMPT, json!({"n": 2, "stream": true}));
    sb["max_tokens"] = json!(8);
    let r = post(&s, "/v1/chat/completions", &sb).await;
    let mut finishes = [0, 0];
    let mut content = [String::new(), String::new()];
    for e in r.events().iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        let ch = &c["choices"][0];
        let i = ch["index"].as_u64().unwrap() as usize;
        content[i] += ch["delta"]["reasoning_content"].as_str().unwrap_or("");
        finishes[i] += usize::from(ch["finish_reason"].is_string());
    }
    assert_eq!(finishes, [1, 1]);
    assert_eq!(content[0], content[1]);
}

#[tokio::test]
async fn greedy_logprobs_put_the_chosen_token_first() {
    let s = state();
    let r = post(
        &s,
        "/v1/chat/completions",
        &chat(
            PROMPT,
            json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 6}),
        ),
    )
    .await;
    let v = r.json();
    let entries = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        entries.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        "{v}"
    );
    for e in entries {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{e}");
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        assert_eq!(
            top[0]["token"], e["token"],
            "greedy picks the most likely token: {e}"
        );
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        assert!(top
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        assert_eq!(e["bytes"], json!(e["token"].as_str().unwrap().as_bytes()));
    }
    // Without logprobs the field is null.
    let v = post(&s, "/v1/chat/completions", &chat(PROMPT, json!({})))
        .await
        .json();
    assert!(v["choices"][0]["logprobs"].is_null());
}

#[tokio::test]
async fn a_stop_string_ends_the_output_before_it() {
    let s = Setup::no_prefix_cache().state();
    let free = post(
        &s,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"max_tokens": 40, "ignore_eos": true})),
    )
    .await
    .json();
    let reasoning = free["choices"][0]["message"]["reasoning_content"]
        .as_str()
        .unwrap()
        .to_string();
    let chars: Vec<char> = reasoning.chars().collect();
    assert!(chars.len() >= 8, "the fixture writes some text: {free}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let before = &reasoning[..reasoning.find(&stop).unwrap()];
    let cut = post(
        &s,
        "/v1/chat/completions",
        &chat(
            PROMPT,
            json!({"max_tokens": 40, "ignore_eos": true, "stop": [stop]}),
        ),
    )
    .await
    .json();
    let c = &cut["choices"][0];
    assert_eq!(c["finish_reason"], "stop", "{cut}");
    assert_eq!(c["message"]["reasoning_content"], before, "stop {stop:?}");
    assert_eq!(c["message"]["content"], "");
    // vLLM's stop_reason says which stop string it was; absent when none was.
    assert_eq!(c["stop_reason"], stop.as_str(), "{cut}");
    assert!(free["choices"][0].get("stop_reason").is_none(), "{free}");
}

// ---------------------------------------------------------------------------------------------
// Completions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn completions_take_texts_and_token_ids_and_stream_the_same_text() {
    let s = Setup::no_prefix_cache().state();
    let body = json!({"model": MODEL, "prompt": PROMPT, "temperature": 0, "max_tokens": 10});
    let r = post(&s, "/v1/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    let u = &v["usage"];
    assert_usage_consistent(u, Prices::default());
    let ids = tokenizer().encode(PROMPT, true).unwrap();
    assert_eq!(u["prompt_tokens"], ids.len(), "raw text, BOS added");

    // The same prompt as token ids.
    let t = post(
        &s,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": ids, "temperature": 0, "max_tokens": 10}),
    )
    .await
    .json();
    assert_eq!(t["choices"][0]["text"], text.as_str());

    // Streamed.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let events = post(&s, "/v1/completions", &sb).await.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(chunks.last().unwrap()["usage"], v["usage"]);

    // Default max_tokens is OpenAI's 16.
    let d = post(
        &s,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": PROMPT, "temperature": 0, "ignore_eos": true}),
    )
    .await
    .json();
    assert_eq!(
        d["usage"]["completion_tokens"],
        seek_server::DEFAULT_COMPLETION_MAX_TOKENS
    );

    // Two prompts, two choices each: index = prompt * n + choice; prompts billed once each.
    let m = post(&s, "/v1/completions", &json!({"model": MODEL, "prompt": [PROMPT, "Hi"], "n": 2, "temperature": 0, "max_tokens": 4})).await.json();
    let choices = m["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    assert_eq!(choices[0]["text"], choices[1]["text"]);
    assert_eq!(choices[2]["text"], choices[3]["text"]);
    let hi = tokenizer().encode("Hi", true).unwrap().len();
    assert_eq!(m["usage"]["prompt_tokens"], ids.len() + hi);
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn assert_openai_error(r: &Reply, status: u16, code: Option<&str>, param: Option<&str>) -> String {
    assert_eq!(r.status, status, "{}", r.text);
    let v = r.json();
    let e = &v["error"];
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "error.{k} missing: {v}");
    }
    assert!(!e["message"].as_str().unwrap().is_empty());
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{v}");
    }
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
    e["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn bad_json_is_400_in_openai_shape() {
    let s = state();
    let r = send(
        &s,
        "POST",
        "/v1/chat/completions",
        Some("{\"model\": ".into()),
        None,
    )
    .await;
    assert_openai_error(&r, 400, None, None);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    // Valid JSON of the wrong shape, too.
    let r = send(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(r#"{"model": 3}"#.into()),
        None,
    )
    .await;
    assert_openai_error(&r, 400, None, None);
}

#[tokio::test]
async fn an_unknown_model_is_404_model_not_found() {
    let s = state();
    let mut body = chat(PROMPT, json!({}));
    body["model"] = json!("gpt-4o");
    let r = post(&s, "/v1/chat/completions", &body).await;
    let m = assert_openai_error(&r, 404, Some("model_not_found"), Some("model"));
    assert!(m.contains("gpt-4o") && m.contains(MODEL), "{m}");
    let r = post(
        &s,
        "/v1/completions",
        &json!({"model": "nope", "prompt": "x"}),
    )
    .await;
    assert_openai_error(&r, 404, Some("model_not_found"), Some("model"));
}

#[tokio::test]
async fn context_overflow_is_400_naming_both_limits() {
    let s = state();
    let p = prompt_tokens(PROMPT);
    let r = post(
        &s,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"max_tokens": 1000})),
    )
    .await;
    let m = assert_openai_error(&r, 400, Some("context_length_exceeded"), Some("max_tokens"));
    assert!(m.contains(&format!("{CONTEXT} tokens")), "{m}");
    assert!(m.contains(&format!("{p} prompt tokens")), "{m}");
    assert!(m.contains("1000 completion tokens"), "{m}");
    // max_completion_tokens is checked the same way and named.
    let r = post(
        &s,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"max_completion_tokens": 1000})),
    )
    .await;
    assert_openai_error(
        &r,
        400,
        Some("context_length_exceeded"),
        Some("max_completion_tokens"),
    );
    // Exactly filling the window is fine.
    let r = post(
        &s,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"max_tokens": CONTEXT - p})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A prompt that fills the window alone.
    let long = "word ".repeat(400);
    let mut body = chat(&long, json!({}));
    body.as_object_mut().unwrap().remove("max_tokens");
    let r = post(&s, "/v1/chat/completions", &body).await;
    let m = assert_openai_error(&r, 400, Some("context_length_exceeded"), Some("messages"));
    assert!(
        m.contains(&format!("{CONTEXT} tokens"))
            && m.contains(&format!("{} prompt tokens", prompt_tokens(&long))),
        "{m}"
    );
}

#[tokio::test]
async fn invalid_fields_are_400_naming_the_field() {
    let s = state();
    let cases = [
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"n": 0}), "n"),
        (json!({"n": 17}), "n"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"presence_penalty": 3}), "presence_penalty"),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format",
        ),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "messages",
        ),
    ];
    for (extra, param) in cases {
        let r = post(&s, "/v1/chat/completions", &chat(PROMPT, extra.clone())).await;
        assert_openai_error(&r, 400, None, Some(param));
    }
    // json_object with the word JSON in the prompt is accepted (the output is checked, not forced).
    let r = post(
        &s,
        "/v1/chat/completions",
        &chat(
            "Answer in JSON: what is 1+1?",
            json!({"response_format": {"type": "json_object"}}),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Unknown fields are ignored, as OpenAI does.
    let r = post(
        &s,
        "/v1/chat/completions",
        &chat(
            PROMPT,
            json!({"user": "u1", "metadata": {"a": 1}, "parallel_tool_calls": false}),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Unknown routes are OpenAI-shaped 404s.
    let r = send(&s, "POST", "/v1/embeddings", Some("{}".into()), None).await;
    assert_openai_error(&r, 404, None, None);
}

#[tokio::test]
async fn keys_are_required_and_name_the_tenant() {
    let mut keys = ApiKeys::none();
    keys.add_file("team-a:sk-aaaa\nteam-b:sk-bbbb\n").unwrap();
    let s = Setup {
        keys,
        ..Setup::default()
    }
    .state();
    let body = chat(PROMPT, json!({"max_tokens": 2})).to_string();
    let r = send(&s, "POST", "/v1/chat/completions", Some(body.clone()), None).await;
    assert_openai_error(&r, 401, Some("invalid_api_key"), None);
    let r = send(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(body.clone()),
        Some("sk-aaab"),
    )
    .await;
    assert_openai_error(&r, 401, Some("invalid_api_key"), None);
    let r = send(&s, "GET", "/v1/models", None, Some("sk-wrong")).await;
    assert_openai_error(&r, 401, None, None);
    let r = send(&s, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 401);
    // Health stays open for load balancers.
    assert_eq!(send(&s, "GET", "/health", None, None).await.status, 200);

    let r = send(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(body),
        Some("sk-bbbb"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = send(&s, "GET", "/metrics", None, Some("sk-aaaa")).await;
    assert_eq!(m.status, 200);
    assert!(m.text.contains(&format!("seek_requests_total{{endpoint=\"chat\",model=\"{MODEL}\",tenant=\"team-b\",status=\"200\"}} 1")), "{}", m.text);
    assert!(m.text.contains("seek_requests_total{endpoint=\"chat\",model=\"unknown\",tenant=\"unknown\",status=\"401\"} 2"), "{}", m.text);
    assert!(!m.text.contains("sk-"), "keys never reach the metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_429_with_retry_after() {
    // The engine holds still in the first request's prefill, so the queue's state is known.
    let gate = Arc::new(Gate::default());
    let s = Setup {
        engine: EngineConfig {
            max_running: 1,
            max_queue: 2,
            ..EngineConfig::default()
        },
        gate: Some(gate.clone()),
        ..Setup::default()
    }
    .state();
    let body = chat(PROMPT, json!({"max_tokens": 3}));
    let first = tokio::spawn({
        let (s, b) = (s.clone(), body.clone());
        async move { post(&s, "/v1/chat/completions", &b).await }
    });
    gate.wait_for_waiter();
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let (s, b) = (s.clone(), body.clone());
            tokio::spawn(async move { post(&s, "/v1/chat/completions", &b).await })
        })
        .collect();
    let engine = s.models()[0].engine().expect("a local model").clone();
    wait_for(&engine, "two requests queued", |st| st.queued == 2).await;
    let r = post(&s, "/v1/chat/completions", &body).await;
    assert_openai_error(&r, 429, Some("rate_limit_exceeded"), None);
    assert_eq!(r.headers["retry-after"], "1");
    // n = 2 needs two places: refused whole, nothing left queued.
    let r = post(&s, "/v1/chat/completions", &chat(PROMPT, json!({"n": 2}))).await;
    assert_eq!(r.status, 429);
    gate.open();
    for h in std::iter::once(first).chain(queued) {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let m = s.metrics_text();
    assert!(m.contains("status=\"429\"} 2"), "{m}");
}

/// A server whose keys (and the tenants' limits) come from `keys_file`.
fn limited(keys_file: &str, default: Limits) -> AppState {
    let mut keys = ApiKeys::none();
    let tenants = keys.add_file(keys_file).unwrap();
    Setup {
        keys,
        limits: RateLimits { default, tenants },
        ..Setup::default()
    }
    .state()
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", r.headers))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn a_tenants_requests_per_minute_are_429_with_openais_headers() {
    let s = limited("small:sk-small rpm=2\nbig:sk-big\n", Limits::default());
    let body = chat(PROMPT, json!({"max_tokens": 2})).to_string();
    let call = |key: &'static str, uri: &'static str, body: String| {
        let s = s.clone();
        async move { send(&s, "POST", uri, Some(body), Some(key)).await }
    };
    for remaining in ["1", "0"] {
        let r = call("sk-small", "/v1/chat/completions", body.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "2");
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), remaining);
        // Only the configured kinds.
        assert!(!r.headers.contains_key("x-ratelimit-limit-tokens"));
    }
    let r = call("sk-small", "/v1/chat/completions", body.clone()).await;
    let message = assert_openai_error(&r, 429, Some("rate_limit_exceeded"), None);
    let e = &r.json()["error"];
    assert_eq!(e["type"], "requests", "{e}");
    assert!(e["param"].is_null(), "{e}");
    assert!(
        message.starts_with(
            "Rate limit reached for requests per minute (limit 2) for tenant \"small\": please try again in "
        ),
        "{message}"
    );
    // Two a minute: the next one in up to 30 s.
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((29..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    let reset = header(&r, "x-ratelimit-reset-requests");
    // Both spent: full again a minute after the first (a few milliseconds ago).
    assert!(reset == "1m0s" || reset.starts_with("59."), "{reset}");
    // The limit is the tenant's, whichever endpoint; another tenant is not limited.
    let completion = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2}).to_string();
    let r = call("sk-small", "/v1/completions", completion.clone()).await;
    assert_openai_error(&r, 429, Some("rate_limit_exceeded"), None);
    for _ in 0..3 {
        let r = call("sk-big", "/v1/chat/completions", body.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(!r.headers.contains_key("x-ratelimit-limit-requests"));
    }
    let m = send(&s, "GET", "/metrics", None, Some("sk-big")).await.text;
    assert_eq!(
        metric(
            &m,
            "seek_rate_limited_total{tenant=\"small\",limit=\"requests\"}"
        ),
        2.0
    );
    assert!(!m.contains("tenant=\"big\",limit"), "{m}");
    // The refusals are requests like any other in the request metrics (and the access log).
    assert_eq!(
        metric(
            &m,
            "seek_requests_total{endpoint=\"chat\",model=\"unknown\",tenant=\"small\",status=\"429\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "seek_requests_total{endpoint=\"completions\",model=\"unknown\",tenant=\"small\",status=\"429\"}"
        ),
        1.0
    );
}

/// Asserts a 429 of the tokens limit of `tpm` per minute after `used` tokens were debited from
/// a full bucket: the balance `tpm - used` refills to 1 at `tpm / 60` a second.
fn assert_tokens_refused(r: &Reply, tpm: u64, used: u64) {
    assert_openai_error(r, 429, Some("rate_limit_exceeded"), None);
    assert_eq!(r.json()["error"]["type"], "tokens", "{}", r.text);
    assert_eq!(header(r, "x-ratelimit-limit-tokens"), tpm.to_string());
    assert_eq!(header(r, "x-ratelimit-remaining-tokens"), "0");
    let wait = (used + 1 - tpm) as f64 * 60.0 / tpm as f64;
    let retry: f64 = header(r, "retry-after").parse().unwrap();
    // A little time has passed since the debit.
    assert!(
        retry <= wait.ceil() && retry >= wait.ceil() - 1.0,
        "Retry-After {retry}, want about {wait} s after {used} tokens"
    );
}

#[tokio::test]
async fn a_tokens_per_minute_limit_refuses_once_usage_is_debited() {
    let tpm = 10;
    assert!(
        prompt_tokens(PROMPT) > tpm as usize,
        "one request spends the minute"
    );
    let s = limited(
        "streamed:sk-s tpm=10\nwhole:sk-w tpm=10\n",
        Limits::default(),
    );
    let usage_of = |r: &Reply| -> u64 {
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()["usage"]["total_tokens"].as_u64().unwrap()
    };
    // Non-streamed: the headers already count the request's tokens.
    let body = chat(PROMPT, json!({"max_tokens": 3})).to_string();
    let r = send(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(body.clone()),
        Some("sk-w"),
    )
    .await;
    let used = usage_of(&r);
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "10");
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "0");
    assert!(!r.headers.contains_key("x-ratelimit-limit-requests"));
    let r = send(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(body.clone()),
        Some("sk-w"),
    )
    .await;
    assert_tokens_refused(&r, tpm, used);
    // Streamed: admitted while the bucket is full, debited when the stream ends.
    let streamed = chat(
        PROMPT,
        json!({"max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let r = send(
        &s,
        "POST",
        "/v1/chat/completions",
        Some(streamed.to_string()),
        Some("sk-s"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "10");
    let events = r.events();
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let used = last["usage"]["total_tokens"].as_u64().unwrap();
    let r = send(&s, "POST", "/v1/chat/completions", Some(body), Some("sk-s")).await;
    assert_tokens_refused(&r, tpm, used);
    let m = send(&s, "GET", "/metrics", None, Some("sk-s")).await.text;
    for tenant in ["streamed", "whole"] {
        assert_eq!(
            metric(
                &m,
                &format!("seek_rate_limited_total{{tenant=\"{tenant}\",limit=\"tokens\"}}")
            ),
            1.0
        );
    }
}

#[tokio::test]
async fn without_keys_the_default_limits_apply_to_the_anonymous_tenant() {
    let s = Setup {
        limits: RateLimits {
            default: Limits {
                requests_per_minute: Some(1),
                tokens_per_minute: Some(100_000),
            },
            ..RateLimits::default()
        },
        ..Setup::default()
    }
    .state();
    let body = chat(PROMPT, json!({"max_tokens": 2}));
    let r = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "1");
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "100000");
    let r = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.text.contains("tenant \\\"anonymous\\\""), "{}", r.text);
    // Both kinds' headers on the refusal.
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    let tokens_left: u64 = header(&r, "x-ratelimit-remaining-tokens").parse().unwrap();
    assert!(
        tokens_left < 100_000,
        "the first request's tokens were debited"
    );
}

#[test]
fn keys_file_limit_errors_name_the_line() {
    let e = ApiKeys::none()
        .add_file("# keys\nteam-a:sk-a rpm=60\nteam-b:sk-b rpm=sixty\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("line 3 of the keys file: ") && e.contains("write e.g. rpm=60"),
        "{e}"
    );
    let e = ApiKeys::none()
        .add_file("team-a:sk-a1 rpm=60\nteam-a:sk-a2 rpm=10\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("line 2 of the keys file: ") && e.contains("line 1"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_and_draining_are_503() {
    // Loading: the model is named but not added yet.
    let loading = AppState::new(ServerConfig {
        model_names: vec![MODEL.into()],
        ..ServerConfig::default()
    });
    assert_eq!(loading.phase(), Phase::Loading);
    let r = send(&loading, "GET", "/health", None, None).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["status"].clone()),
        (503, json!("loading"))
    );
    let r = post(&loading, "/v1/chat/completions", &chat(PROMPT, json!({}))).await;
    assert_openai_error(&r, 503, Some("model_loading"), None);

    // Draining: an in-flight request finishes within the grace period; new ones get 503.
    let gate = Arc::new(Gate::default());
    let s = Setup {
        gate: Some(gate.clone()),
        ..Setup::default()
    }
    .state();
    assert_eq!(send(&s, "GET", "/health", None, None).await.status, 200);
    let inflight = tokio::spawn({
        let s = s.clone();
        async move {
            post(
                &s,
                "/v1/chat/completions",
                &chat(PROMPT, json!({"max_tokens": 5})),
            )
            .await
        }
    });
    gate.wait_for_waiter();
    let drain = tokio::spawn({
        let s = s.clone();
        async move { s.drain().await }
    });
    while s.phase() != Phase::Draining {
        tokio::task::yield_now().await;
    }
    let r = send(&s, "GET", "/health", None, None).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["status"].clone()),
        (503, json!("draining"))
    );
    let r = post(&s, "/v1/chat/completions", &chat(PROMPT, json!({}))).await;
    assert_openai_error(&r, 503, Some("shutting_down"), None);
    assert!(s.metrics_text().contains("seek_draining 1"));
    gate.open();
    let r = inflight.await.unwrap();
    assert_eq!(
        r.status, 200,
        "finished within the grace period: {}",
        r.text
    );
    drain.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_past_the_grace_period_cancels_in_flight_requests() {
    let gate = Arc::new(Gate::default());
    let s = Setup {
        gate: Some(gate.clone()),
        grace: Duration::ZERO,
        ..Setup::default()
    }
    .state();
    let body = chat(PROMPT, json!({"max_tokens": 100, "ignore_eos": true}));
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let streamed = tokio::spawn({
        let s = s.clone();
        async move { post(&s, "/v1/chat/completions", &sb).await }
    });
    // The streamed request is in its prefill; the plain one waits behind the held engine.
    gate.wait_for_waiter();
    let plain = tokio::spawn({
        let (s, b) = (s.clone(), body.clone());
        async move { post(&s, "/v1/chat/completions", &b).await }
    });
    let engine = s.models()[0].engine().expect("a local model").clone();
    wait_for(&engine, "the plain request queued", |st| st.queued == 1).await;
    let drain = tokio::spawn({
        let s = s.clone();
        async move { s.drain().await }
    });
    while !engine.is_shutting_down() {
        tokio::task::yield_now().await;
    }
    gate.open();
    drain.await.unwrap();
    let r = plain.await.unwrap();
    assert_openai_error(&r, 503, Some("shutting_down"), None);
    let r = streamed.await.unwrap();
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "shutting_down", "{events:?}");
}

// ---------------------------------------------------------------------------------------------
// Anthropic's Messages API
// ---------------------------------------------------------------------------------------------

/// A greedy Messages request for `content`, with `extra` fields on top.
fn message(content: &str, extra: Value) -> Value {
    let mut v = json!({
        "model": MODEL,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// POST with extra headers.
async fn post_with(state: &AppState, uri: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app(state.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// The events of an Anthropic stream: each `event:` name must be its data's `type`.
fn anthropic_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let field = |name: &str| {
                e.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|l| l.trim_start().to_string())
                    .unwrap_or_else(|| panic!("no {name} line in {e:?}"))
            };
            let v: Value = serde_json::from_str(&field("data:")).unwrap();
            assert_eq!(v["type"], field("event:"), "{e}");
            v
        })
        .collect()
}

/// The message a stream of events adds up to (as the `anthropic` SDK accumulates it),
/// checking the order of the events on the way.
fn accumulate(events: &[Value]) -> Value {
    let (first, rest) = events.split_first().unwrap();
    assert_eq!(first["type"], "message_start", "{events:?}");
    assert_eq!(rest[0]["type"], "ping", "{events:?}");
    assert_eq!(events.last().unwrap()["type"], "message_stop", "{events:?}");
    let mut m = first["message"].clone();
    assert!(
        m["stop_reason"].is_null() && m["content"] == json!([]),
        "{m}"
    );
    let mut open: Option<usize> = None;
    for e in &rest[1..rest.len() - 2] {
        let i = e["index"].as_u64().map(|i| i as usize);
        match e["type"].as_str().unwrap() {
            "content_block_start" => {
                assert!(
                    open.is_none(),
                    "a block opens while one is open: {events:?}"
                );
                assert_eq!(i, Some(m["content"].as_array().unwrap().len()));
                m["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(e["content_block"].clone());
                open = i;
            }
            "content_block_delta" => {
                assert_eq!(i, open, "{e}");
                let b = &mut m["content"][i.unwrap()];
                let (field, d) = match e["delta"]["type"].as_str().unwrap() {
                    "text_delta" => ("text", &e["delta"]["text"]),
                    "thinking_delta" => ("thinking", &e["delta"]["thinking"]),
                    other => panic!("delta {other}"),
                };
                let t = b[field].as_str().unwrap().to_string() + d.as_str().unwrap();
                assert!(!d.as_str().unwrap().is_empty(), "an empty delta: {e}");
                b[field] = json!(t);
            }
            "content_block_stop" => {
                assert_eq!(i, open, "{e}");
                open = None;
            }
            other => panic!("unexpected {other} in {events:?}"),
        }
    }
    assert!(open.is_none(), "a block is left open: {events:?}");
    let d = &events[events.len() - 2];
    assert_eq!(d["type"], "message_delta", "{events:?}");
    m["stop_reason"] = d["delta"]["stop_reason"].clone();
    m["stop_sequence"] = d["delta"]["stop_sequence"].clone();
    m["usage"] = d["usage"].clone();
    m
}

#[tokio::test]
async fn a_message_is_the_chat_completion_of_the_same_request() {
    let s = state();
    let system = "You answer in one sentence.";
    let openai = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": MODEL, "max_tokens": 40, "temperature": 0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": PROMPT}]}),
    )
    .await
    .json();
    let r = post(
        &s,
        "/v1/messages",
        &message(
            PROMPT,
            json!({"max_tokens": 40, "system": [{"type": "text", "text": system}]}),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = r.json();
    assert!(m["id"].as_str().unwrap().starts_with("msg_"), "{m}");
    assert_eq!(
        (&m["type"], &m["role"], &m["model"]),
        (&json!("message"), &json!("assistant"), &json!(MODEL))
    );
    let want = &openai["choices"][0];
    // A reasoning model: its chain of thought first, as a thinking block, then the text.
    let reasoning = want["message"]["reasoning_content"].as_str().unwrap();
    assert!(!reasoning.is_empty(), "{openai}");
    assert_eq!(
        m["content"][0],
        json!({"type": "thinking", "thinking": reasoning, "signature": ""})
    );
    assert_eq!(
        m["content"][1],
        json!({"type": "text", "text": want["message"]["content"]})
    );
    assert_eq!(m["content"].as_array().unwrap().len(), 2, "{m}");
    let stop = match want["finish_reason"].as_str().unwrap() {
        "stop" => "end_turn",
        "length" => "max_tokens",
        other => panic!("{other}"),
    };
    assert_eq!(m["stop_reason"], stop);
    assert!(m["stop_sequence"].is_null());
    // The same prompt: the second request reads it from the prefix cache, and Anthropic counts
    // cache reads apart from the input tokens.
    let u = &m["usage"];
    let prompt = want_usage(&openai, "prompt_tokens");
    assert!(u["cache_read_input_tokens"].as_u64().unwrap() > 0, "{u}");
    assert_eq!(
        u["input_tokens"].as_u64().unwrap() + u["cache_read_input_tokens"].as_u64().unwrap(),
        prompt
    );
    assert_eq!(
        u["output_tokens"].as_u64().unwrap(),
        want_usage(&openai, "completion_tokens")
    );
    assert_eq!(u["cache_creation_input_tokens"], 0);
    // count_tokens says the same, and counts the system prompt.
    let mut count = message(PROMPT, json!({"system": system}));
    count.as_object_mut().unwrap().remove("max_tokens");
    let r = post(&s, "/v1/messages/count_tokens", &count).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"input_tokens": prompt}));
    let r = post(&s, "/messages/count_tokens", &message(PROMPT, json!({}))).await;
    assert_eq!(r.json()["input_tokens"], prompt_tokens(PROMPT));
}

fn want_usage(openai: &Value, field: &str) -> u64 {
    openai["usage"][field].as_u64().unwrap()
}

#[tokio::test]
async fn a_streamed_message_adds_up_to_the_message() {
    let s = Setup::no_prefix_cache().state();
    let body = message(PROMPT, json!({"max_tokens": 40}));
    let whole = post(&s, "/v1/messages", &body).await.json();
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let r = post(&s, "/messages", &sbody).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = anthropic_events(&r.text);
    // message_start has the prompt's tokens already.
    assert_eq!(
        events[0]["message"]["usage"]["input_tokens"],
        whole["usage"]["input_tokens"]
    );
    let mut got = accumulate(&events);
    assert_ne!(got["id"], whole["id"]);
    got["id"] = whole["id"].clone();
    assert_eq!(got, whole);
}

#[tokio::test]
async fn a_stop_sequence_ends_a_message_with_stop_reason_stop_sequence() {
    let s = Setup::no_prefix_cache().state();
    let free = post(
        &s,
        "/v1/messages",
        &message(PROMPT, json!({"max_tokens": 40})),
    )
    .await
    .json();
    let thinking = free["content"][0]["thinking"].as_str().unwrap().to_string();
    let chars: Vec<char> = thinking.chars().collect();
    assert!(chars.len() >= 8, "the fixture writes some text: {free}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let before = &thinking[..thinking.find(&stop).unwrap()];
    let body = message(PROMPT, json!({"max_tokens": 40, "stop_sequences": [stop]}));
    let cut = post(&s, "/v1/messages", &body).await.json();
    assert_eq!(cut["stop_reason"], "stop_sequence", "{cut}");
    assert_eq!(cut["stop_sequence"], stop.as_str(), "{cut}");
    assert_eq!(cut["content"][0]["thinking"], before, "{cut}");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let mut streamed = accumulate(&anthropic_events(
        &post(&s, "/v1/messages", &sbody).await.text,
    ));
    streamed["id"] = cut["id"].clone();
    assert_eq!(streamed, cut);
}

#[tokio::test]
async fn max_tokens_caps_the_room_left_in_the_context_window() {
    let s = state();
    // Claude Code asks for 32000 tokens whatever the model: the 256-token window decides.
    let r = post(
        &s,
        "/v1/messages",
        &message(PROMPT, json!({"max_tokens": 32000})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = r.json();
    let u = &m["usage"];
    let total = ["input_tokens", "cache_read_input_tokens", "output_tokens"]
        .iter()
        .map(|k| u[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(m["stop_reason"], "model_context_window_exceeded", "{m}");
    assert_eq!(total, CONTEXT as u64, "{m}");
    // Below the room left, max_tokens is what stops it.
    let r = post(
        &s,
        "/v1/messages",
        &message(PROMPT, json!({"max_tokens": 5})),
    )
    .await;
    let m = r.json();
    assert_eq!(m["stop_reason"], "max_tokens", "{m}");
    assert_eq!(m["usage"]["output_tokens"], 5, "{m}");
    let r = post(
        &s,
        "/v1/messages",
        &message(PROMPT, json!({"max_tokens": 0})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
}

#[tokio::test]
async fn messages_errors_are_in_anthropics_shape_with_openais_statuses() {
    fn assert_error(r: &Reply, status: u16, kind: &str) -> String {
        assert_eq!(r.status, status, "{}", r.text);
        let v = r.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        v["error"]["message"].as_str().unwrap().to_string()
    }
    let s = limited("team-a:sk-a rpm=2\n", Limits::default());
    let key = [("x-api-key", "sk-a")];
    let body = message(PROMPT, json!({"max_tokens": 2}));
    // Keys: Anthropic's header, or OpenAI's.
    let r = post_with(&s, "/v1/messages", &body, &[]).await;
    assert!(assert_error(&r, 401, "authentication_error").contains("x-api-key"));
    let r = post_with(&s, "/v1/messages", &body, &[("x-api-key", "sk-wrong")]).await;
    assert_error(&r, 401, "authentication_error");
    let r = post_with(
        &s,
        "/v1/messages/count_tokens",
        &body,
        &[("x-api-key", "sk-wrong")],
    )
    .await;
    assert_error(&r, 401, "authentication_error");
    let r = post_with(&s, "/v1/messages", &body, &key).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = post_with(
        &s,
        "/v1/messages",
        &body,
        &[("authorization", "Bearer sk-a")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The tenant's rate limit, as for OpenAI's routes.
    let r = post_with(&s, "/v1/messages", &body, &key).await;
    let m = assert_error(&r, 429, "rate_limit_error");
    assert!(m.contains("tenant \"team-a\""), "{m}");
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
    // count_tokens is not rate limited (it generates nothing).
    let r = post_with(&s, "/v1/messages/count_tokens", &body, &key).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let s = state();
    let mut no_max = body.clone();
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let m = assert_error(
        &post(&s, "/v1/messages", &no_max).await,
        400,
        "invalid_request_error",
    );
    assert!(m.contains("`max_tokens` is required"), "{m}");
    let mut unknown = body.clone();
    unknown["model"] = json!("claude-sonnet-4-5");
    // 404, as on OpenAI's routes: the SDK raises NotFoundError.
    let m = assert_error(
        &post(&s, "/v1/messages", &unknown).await,
        404,
        "not_found_error",
    );
    assert!(m.contains("claude-sonnet-4-5") && m.contains(MODEL), "{m}");
    let r = send(
        &s,
        "POST",
        "/v1/messages",
        Some("{\"model\": ".into()),
        None,
    )
    .await;
    assert_error(&r, 400, "invalid_request_error");
    let too_long = message(&"sky ".repeat(300), json!({}));
    let m = assert_error(
        &post(&s, "/v1/messages", &too_long).await,
        400,
        "invalid_request_error",
    );
    assert!(m.contains("maximum context length is 256 tokens"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stream_cut_short_ends_with_an_error_event() {
    let gate = Arc::new(Gate::default());
    let s = Setup {
        gate: Some(gate.clone()),
        grace: Duration::ZERO,
        ..Setup::default()
    }
    .state();
    let streamed = tokio::spawn({
        let s = s.clone();
        async move {
            post(
                &s,
                "/v1/messages",
                &message(PROMPT, json!({"max_tokens": 100, "stream": true})),
            )
            .await
        }
    });
    gate.wait_for_waiter();
    let engine = s.models()[0].engine().expect("a local model").clone();
    let drain = tokio::spawn({
        let s = s.clone();
        async move { s.drain().await }
    });
    while !engine.is_shutting_down() {
        tokio::task::yield_now().await;
    }
    gate.open();
    drain.await.unwrap();
    let r = streamed.await.unwrap();
    assert_eq!(r.status, 200);
    let events = anthropic_events(&r.text);
    let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    // What was generated before the drain, then the error, and nothing after it.
    assert_eq!(names[..2], ["message_start", "ping"], "{events:?}");
    assert_eq!(names.last(), Some(&"error"), "{events:?}");
    assert!(
        !names.contains(&"message_delta") && !names.contains(&"message_stop"),
        "{events:?}"
    );
    let e = &events.last().unwrap()["error"];
    assert_eq!(e["type"], "overloaded_error", "{events:?}");
    assert!(e["message"].as_str().unwrap().contains("shut down"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Models, health, metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn models_lists_the_served_model() {
    let s = state();
    let r = send(&s, "GET", "/v1/models", None, None).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["max_model_len"], CONTEXT);
    // DeepSeek's base URL without /v1 works too.
    assert_eq!(send(&s, "GET", "/models", None, None).await.json(), v);
    // `client.models.retrieve(id)`: one model, or 404 model_not_found.
    let one = send(&s, "GET", &format!("/v1/models/{MODEL}"), None, None).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json(), v["data"][0]);
    let r = send(&s, "GET", "/v1/models/org/no-such-model", None, None).await;
    let m = assert_openai_error(&r, 404, Some("model_not_found"), Some("model"));
    assert!(m.contains("org/no-such-model"), "{m}");
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(line_prefix)
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("no metric {line_prefix}: {text}"))
}

#[tokio::test]
async fn metrics_count_requests_tokens_latency_and_cost() {
    let s = state();
    let a = post(
        &s,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"max_tokens": 5, "ignore_eos": true})),
    )
    .await
    .json();
    let b = post(
        &s,
        "/v1/chat/completions",
        &chat(
            PROMPT,
            json!({"max_tokens": 5, "ignore_eos": true, "stream": true}),
        ),
    )
    .await;
    assert_eq!(b.status, 200);
    let _ = post(
        &s,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"temperature": 9})),
    )
    .await;
    // The engine stores its running count after the step that finished the requests.
    let engine = s.models()[0].engine().expect("a local model").clone();
    wait_for(&engine, "idle", |st| st.running == 0 && st.queued == 0).await;
    let r = send(&s, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = r.text;
    let labels = format!("{{model=\"{MODEL}\",tenant=\"anonymous\"}}");
    assert_eq!(metric(&m, &format!("seek_requests_total{{endpoint=\"chat\",model=\"{MODEL}\",tenant=\"anonymous\",status=\"200\"}}")), 2.0);
    assert_eq!(metric(&m, &format!("seek_requests_total{{endpoint=\"chat\",model=\"{MODEL}\",tenant=\"anonymous\",status=\"400\"}}")), 1.0);
    let p = prompt_tokens(PROMPT) as f64;
    assert_eq!(
        metric(&m, &format!("seek_prompt_tokens_total{labels}")),
        2.0 * p
    );
    let completion = metric(&m, &format!("seek_completion_tokens_total{labels}"));
    assert_eq!(completion, 10.0, "{m}");
    let hit = metric(&m, &format!("seek_prompt_cache_hit_tokens_total{labels}"));
    let miss = metric(&m, &format!("seek_prompt_cache_miss_tokens_total{labels}"));
    assert_eq!(hit + miss, 2.0 * p);
    assert!(hit > 0.0, "the second request hit the cache: {m}");
    let cost = metric(&m, &format!("seek_cost_usd_total{labels}"));
    let first_cost = a["usage"]["cost"].as_f64().unwrap();
    assert!(cost > first_cost, "{m}");
    let pr = Prices::default();
    let want =
        (hit * pr.input_cache_hit + miss * pr.input_cache_miss + completion * pr.output) / 1e6;
    assert!((cost - want).abs() < 1e-12, "cost {cost} want {want}");
    assert_eq!(
        metric(
            &m,
            &format!("seek_time_to_first_token_seconds_count{{model=\"{MODEL}\"}}")
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            &format!("seek_inter_token_latency_seconds_count{{model=\"{MODEL}\"}}")
        ),
        completion - 2.0,
        "one gap per token after each choice's first"
    );
    assert_eq!(
        metric(&m, &format!("seek_queue_depth{{model=\"{MODEL}\"}}")),
        0.0
    );
    assert_eq!(
        metric(&m, &format!("seek_running_sequences{{model=\"{MODEL}\"}}")),
        0.0
    );
    assert!(
        metric(
            &m,
            &format!("seek_prompt_cache_hit_ratio{{model=\"{MODEL}\"}}")
        ) > 0.0
    );
    assert_eq!(
        metric(
            &m,
            &format!("seek_price_output_usd_per_million_tokens{{model=\"{MODEL}\"}}")
        ),
        2.19
    );
    assert_eq!(metric(&m, "seek_draining "), 0.0);
}

/// A scraper that asks for OpenMetrics (Prometheus does) gets it, under the same sample
/// names; one that does not gets the classic text format.
#[tokio::test]
async fn metrics_are_openmetrics_when_the_scraper_asks() {
    let s = state();
    let r = post(
        &s,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let scrape = |accept: &'static str| {
        let s = s.clone();
        async move {
            let req = Request::builder()
                .uri("/metrics")
                .header("accept", accept)
                .body(Body::empty())
                .unwrap();
            let res = app(s).oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let ct = res.headers()["content-type"].to_str().unwrap().to_string();
            let body = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap();
            (ct, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let requests = format!(
        "seek_requests_total{{endpoint=\"chat\",model=\"{MODEL}\",tenant=\"anonymous\",status=\"200\"}}"
    );
    let (ct, m) = scrape(
        "application/openmetrics-text;version=1.0.0,\
         application/openmetrics-text;version=0.0.1;q=0.75,\
         text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    )
    .await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(m.ends_with("# EOF\n"), "{m}");
    assert!(m.contains("# TYPE seek_requests counter\n"), "{m}");
    assert_eq!(metric(&m, &requests), 1.0);
    assert_eq!(metric(&m, "seek_connections_open "), 0.0);
    let (ct, m) = scrape("*/*").await;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(!m.contains("# EOF"), "{m}");
    assert!(m.contains("# TYPE seek_requests_total counter\n"), "{m}");
    assert_eq!(metric(&m, &requests), 1.0);
}

async fn wait_for(engine: &EngineHandle, what: &str, cond: impl Fn(&EngineStats) -> bool) {
    for _ in 0..60_000 {
        if cond(&engine.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the engine never reached: {what} ({:?})", engine.stats());
}

// ---------------------------------------------------------------------------------------------
// Real TCP
// ---------------------------------------------------------------------------------------------

/// A server on 127.0.0.1:0 in its own runtime; dropping it shuts it down and checks that
/// `serve` returned cleanly.
struct Live {
    rt: tokio::runtime::Runtime,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), seek_server::ServeError>>>,
}

impl Live {
    fn start(state: AppState) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(seek_server::serve(listener, state, async {
            let _ = rx.await;
        }));
        Self {
            rt,
            url,
            stop: Some(tx),
            server: Some(server),
        }
    }

    fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let server = self.server.take().unwrap();
        self.rt.block_on(server).unwrap().unwrap();
    }
}

fn ureq_chat(url: &str, body: &Value) -> Value {
    ureq::post(&format!("{url}/v1/chat/completions"))
        .send_json(body.clone())
        .unwrap()
        .into_json()
        .unwrap()
}

/// Reads a streamed chat answer over TCP: (reasoning, content).
fn ureq_chat_stream(url: &str, body: &Value) -> (String, String) {
    let r = ureq::post(&format!("{url}/v1/chat/completions"))
        .send_json(body.clone())
        .unwrap();
    let mut text = String::new();
    r.into_reader().read_to_string(&mut text).unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let (mut reasoning, mut content) = (String::new(), String::new());
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        reasoning += c["choices"][0]["delta"]["reasoning_content"]
            .as_str()
            .unwrap_or("");
        content += c["choices"][0]["delta"]["content"].as_str().unwrap_or("");
    }
    (reasoning, content)
}

#[test]
fn concurrent_requests_over_tcp_equal_the_same_requests_one_at_a_time() {
    let state = Setup::no_prefix_cache().state();
    let engine = state.models()[0].engine().expect("a local model").clone();
    let live = Live::start(state);
    let prompts: Vec<String> = (0..6)
        .map(|i| format!("Question {i}: {}", &PROMPT[..20 + 5 * i]))
        .collect();
    let body = |p: &str| chat(p, json!({"max_tokens": 24 + 4 * p.len() % 7}));
    let alone: Vec<(String, String)> = prompts
        .iter()
        .map(|p| {
            let v = ureq_chat(&live.url, &body(p));
            let m = &v["choices"][0]["message"];
            (
                m["reasoning_content"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let before = engine.stats();
    let barrier = Arc::new(std::sync::Barrier::new(prompts.len()));
    let together: Vec<(String, String)> = std::thread::scope(|sc| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (url, barrier, b) = (live.url.clone(), barrier.clone(), body(p));
                sc.spawn(move || {
                    barrier.wait();
                    if i % 2 == 0 {
                        let v = ureq_chat(&url, &b);
                        let m = &v["choices"][0]["message"];
                        (
                            m["reasoning_content"].as_str().unwrap().to_string(),
                            m["content"].as_str().unwrap().to_string(),
                        )
                    } else {
                        let mut b = b;
                        b["stream"] = json!(true);
                        ureq_chat_stream(&url, &b)
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone, "batched generation equals one at a time");
    let after = engine.stats();
    assert_eq!(
        after.requests_finished - before.requests_finished,
        prompts.len() as u64
    );
    eprintln!(
        "mean batch while concurrent: {:.2}",
        (after.batched_sequences - before.batched_sequences) as f64
            / (after.decode_steps - before.decode_steps).max(1) as f64
    );
    // Health and errors over the wire.
    assert_eq!(
        ureq::get(&format!("{}/health", live.url))
            .call()
            .unwrap()
            .status(),
        200
    );
    match ureq::post(&format!("{}/v1/chat/completions", live.url)).send_string("{") {
        Err(ureq::Error::Status(400, r)) => {
            let v: Value = r.into_json().unwrap();
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
        other => panic!("expected 400, got {other:?}"),
    }
    live.shutdown();
}

/// Sends a raw HTTP request and returns the open connection.
fn raw_request(url: &str, body: &Value) -> std::net::TcpStream {
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let b = body.to_string();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    s
}

#[test]
fn a_client_that_disconnects_frees_its_sequence() {
    for stream in [false, true] {
        let gate = Arc::new(Gate::default());
        let state = Setup {
            gate: Some(gate.clone()),
            ..Setup::no_prefix_cache()
        }
        .state();
        let engine = state.models()[0].engine().expect("a local model").clone();
        let live = Live::start(state.clone());
        let max_tokens = 150;
        let body = chat(
            PROMPT,
            json!({"max_tokens": max_tokens, "ignore_eos": true, "stream": stream}),
        );
        let conn = raw_request(&live.url, &body);
        if stream {
            // The role chunk comes before any forward pass.
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while !line.starts_with("data:") {
                line.clear();
                r.read_line(&mut line).unwrap();
            }
        }
        gate.wait_for_waiter();
        conn.shutdown(std::net::Shutdown::Both).unwrap();
        drop(conn);
        // The server notices the closed connection and drops the request (recorded as 499),
        // which aborts the engine request; only then may the engine move.
        let mut seen = false;
        for _ in 0..60_000 {
            if state.metrics_text().contains("status=\"499\"} 1") {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            seen,
            "the dropped request was never recorded: {}",
            state.metrics_text()
        );
        gate.open();
        for _ in 0..60_000 {
            let st = engine.stats();
            if st.requests_finished == 1 && st.running == 0 && st.queued == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let st = engine.stats();
        assert_eq!(st.requests_finished, 1, "{st:?}");
        assert!(
            st.generated_tokens < 5,
            "stream={stream}: the sequence was aborted, not run to {max_tokens} tokens: {st:?}"
        );
        live.shutdown();
    }
}

#[test]
fn a_client_that_leaves_mid_stream_pays_for_the_tokens_it_used() {
    let tpm = 10;
    let p = prompt_tokens(PROMPT) as u64;
    assert!(p > tpm, "the prompt alone spends the minute");
    let gate = Arc::new(Gate::default());
    let state = Setup {
        gate: Some(gate.clone()),
        limits: RateLimits {
            default: Limits {
                requests_per_minute: None,
                tokens_per_minute: Some(tpm),
            },
            ..RateLimits::default()
        },
        ..Setup::no_prefix_cache()
    }
    .state();
    let live = Live::start(state.clone());
    let body = chat(
        PROMPT,
        json!({"max_tokens": 150, "ignore_eos": true, "stream": true, "logprobs": true}),
    );
    let conn = raw_request(&live.url, &body);
    // One forward pass (the prefill) makes the first token; read until its chunk arrives, so
    // the server has seen the prompt and that token.
    gate.permit(1);
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the stream ended early"
        );
        if line.starts_with("data:") && line.contains("\"logprobs\":{") {
            break;
        }
    }
    gate.wait_for_waiter();
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    drop((conn, r));
    let mut seen = false;
    for _ in 0..60_000 {
        if state.metrics_text().contains("status=\"499\"} 1") {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(seen, "the dropped request was never recorded");
    gate.open();
    // The tokens it used (the prompt and one or two generated) were debited.
    let r = live.rt.block_on(post(
        &state,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"max_tokens": 2})),
    ));
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.json()["error"]["type"], "tokens");
    let retry: f64 = header(&r, "retry-after").parse().unwrap();
    let wait = |used: u64| (used + 1 - tpm) as f64 * 60.0 / tpm as f64;
    assert!(
        retry >= wait(p + 1).ceil() - 1.0 && retry <= wait(p + 3).ceil(),
        "Retry-After {retry}: not the prompt ({p} tokens) and a token or two"
    );
    live.shutdown();
}

#[test]
fn serve_refuses_a_public_address_without_keys() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let s = AppState::new(ServerConfig::default());
        let e = seek_server::serve(listener, s, async {}).await.unwrap_err();
        assert!(e.to_string().contains("--api-key"), "{e}");
    });
}

// ---------------------------------------------------------------------------------------------
// A model with paged KV memory
// ---------------------------------------------------------------------------------------------

/// SmolLM2 (GGUF, llama) keeps its KV in the engine's shared blocks, whose full blocks are the
/// prefix cache: the server gets batched = alone and cache hits on that path too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_model_batches_and_reports_prefix_hits() {
    let dir = std::env::var_os("SEEK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let path = dir.join("SmolLM2-135M-Instruct-Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-sample-models.sh first",
        path.display()
    );
    let loaded = seek_models::load(&path, &Default::default()).unwrap();
    assert!(
        loaded.model.paged_layout().is_some(),
        "SmolLM2 runs on paged KV"
    );
    let tok = match &loaded.format {
        seek_models::ModelFormat::Gguf(f) => Arc::new(Tokenizer::from_gguf(f).unwrap()),
        other => panic!("not a GGUF: {other:?}"),
    };
    let engine = EngineHandle::start(loaded.model, tok.clone(), EngineConfig::default()).unwrap();
    let s = AppState::with_models(
        ServerConfig::default(),
        vec![ServedModel::new("smol", engine, tok, Prices::default())],
    );
    let body = |i: usize| {
        let mut b = chat(
            &format!("Question {i}: name a colour of the sky, in one word."),
            json!({"max_tokens": 12}),
        );
        b["model"] = json!("smol");
        b
    };
    let mut alone = Vec::new();
    for i in 0..4 {
        let r = post(&s, "/v1/chat/completions", &body(i)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = r.json();
        assert!(
            v["choices"][0]["message"]["reasoning_content"].is_null(),
            "not a reasoning model"
        );
        assert_usage_consistent(&v["usage"], Prices::default());
        let content = v["choices"][0]["message"]["content"].clone();
        assert!(!content.as_str().unwrap().trim().is_empty(), "{v}");
        alone.push(content);
    }
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (s, b) = (s.clone(), body(i));
            tokio::spawn(async move { post(&s, "/v1/chat/completions", &b).await })
        })
        .collect();
    let mut together = Vec::new();
    for h in handles {
        let v = h.await.unwrap().json();
        assert!(
            v["usage"]["prompt_cache_hit_tokens"].as_u64().unwrap() > 0,
            "the prompt was served before: {v}"
        );
        together.push(v["choices"][0]["message"]["content"].clone());
    }
    assert_eq!(together, alone, "batched with cached prefixes = alone");
}

/// Gateway mode: a second server in front of the first (`seek serve --upstream URL`) answers
/// with the upstream's text, streamed or not, with its own keys and its own prices applied to
/// the upstream's token counts; the upstream's refusals keep their meaning, and an upstream
/// that cannot be reached is 502.
#[test]
#[allow(clippy::result_large_err)] // ureq's error, in a test
fn gateway_mode_fronts_another_openai_compatible_server() {
    let upstream = Live::start(Setup::no_prefix_cache().state());
    let gw_prices = Prices {
        input_cache_hit: 1.0,
        input_cache_miss: 2.0,
        output: 3.0,
    };
    let mut keys = ApiKeys::none();
    keys.add("team-a", "sk-gateway").unwrap();
    let gw_state = AppState::with_models(
        ServerConfig {
            api_keys: keys,
            insecure_no_auth: false,
            model_names: vec![],
            shutdown_grace: Duration::from_secs(60),
            ..ServerConfig::default()
        },
        vec![ServedModel::upstream(
            "front",
            seek_server::Upstream::new(&upstream.url, MODEL, None),
            gw_prices,
        )],
    );
    let gateway = Live::start(gw_state);
    let body = chat(
        "Tell me about the sea.",
        json!({"max_tokens": 12, "temperature": 0}),
    );
    let direct = ureq_chat(&upstream.url, &body);

    let mut via = body.clone();
    via["model"] = json!("front");
    let post = |b: &Value| {
        ureq::post(&format!("{}/v1/chat/completions", gateway.url))
            .set("Authorization", "Bearer sk-gateway")
            .send_json(b.clone())
    };
    let got: Value = post(&via).unwrap().into_json().unwrap();
    let (d, g) = (
        &direct["choices"][0]["message"],
        &got["choices"][0]["message"],
    );
    assert_eq!(g["content"], d["content"], "{got}");
    assert_eq!(g["reasoning_content"], d["reasoning_content"], "{got}");
    assert_eq!(got["model"], "front");
    assert_eq!(
        got["usage"]["prompt_tokens"],
        direct["usage"]["prompt_tokens"]
    );
    assert_eq!(
        got["usage"]["completion_tokens"],
        direct["usage"]["completion_tokens"]
    );
    assert_usage_consistent(&got["usage"], gw_prices);

    // Streamed through the gateway: the same text.
    let mut streamed = via.clone();
    streamed["stream"] = json!(true);
    let r = post(&streamed).unwrap();
    let mut text = String::new();
    r.into_reader().read_to_string(&mut text).unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, d["content"].as_str().unwrap());

    // The gateway's own key is required; the upstream's refusal keeps its status.
    match ureq::post(&format!("{}/v1/chat/completions", gateway.url)).send_json(via.clone()) {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    // An upstream that refuses (it serves no model by that name) is a 400, with its words.
    let wrong = Live::start(AppState::with_models(
        ServerConfig::default(),
        vec![ServedModel::upstream(
            "front",
            seek_server::Upstream::new(&upstream.url, "no-such-model", None),
            Prices::default(),
        )],
    ));
    match ureq::post(&format!("{}/v1/chat/completions", wrong.url)).send_json(via.clone()) {
        Err(ureq::Error::Status(400, r)) => {
            let v: Value = r.into_json().unwrap();
            assert_eq!(v["error"]["code"], "upstream_rejected", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no-such-model"),
                "{v}"
            );
        }
        other => panic!("expected 400, got {other:?}"),
    }
    wrong.shutdown();
    gateway.shutdown();
    upstream.shutdown();

    // Nobody listens at the upstream address any more: 502 in OpenAI's shape.
    let dead = Live::start(AppState::with_models(
        ServerConfig::default(),
        vec![ServedModel::upstream(
            "front",
            seek_server::Upstream::new("http://127.0.0.1:9", MODEL, None),
            Prices::default(),
        )],
    ));
    match ureq::post(&format!("{}/v1/chat/completions", dead.url)).send_json(via) {
        Err(ureq::Error::Status(502, r)) => {
            let v: Value = r.into_json().unwrap();
            assert_eq!(v["error"]["code"], "upstream_error", "{v}");
        }
        other => panic!("expected 502, got {other:?}"),
    }
    dead.shutdown();
}

/// A server on SmolLM2 (a real chat model) with a guard policy and an audit log.
fn guarded_smol(policy: &str, db: &Path) -> AppState {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct-Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-sample-models.sh",
        path.display()
    );
    let loaded = seek_models::load(&path, &Default::default()).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&seek_gguf::GgufFile::open(&path).unwrap()).unwrap());
    let engine = EngineHandle::start(loaded.model, tok.clone(), EngineConfig::default()).unwrap();
    let policy = seek_guard::Policy::from_toml(policy, "test.toml").unwrap();
    AppState::with_models(
        ServerConfig {
            guard: Some(Arc::new(seek_guard::PolicySet::new(policy))),
            audit: Some(Arc::new(seek_audit::AuditLog::open(db).unwrap())),
            ..ServerConfig::default()
        },
        vec![ServedModel::new("smol", engine, tok, Prices::default())],
    )
}

fn smol_chat(content: &str, extra: Value) -> Value {
    let mut b = json!({"model": "smol", "messages": [{"role": "user", "content": content}],
        "temperature": 0, "max_tokens": 24});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// Waits for the audit log to hold `n` entries (they are written on a blocking thread).
async fn audit_entries(db: &Path, n: usize) -> Vec<seek_audit::AuditEntry> {
    for _ in 0..2000 {
        let log = seek_audit::AuditLog::open(db).unwrap();
        let all = log.list(&Default::default()).unwrap();
        if all.len() >= n {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the audit log never held {n} entries");
}

/// Input rails: a blocked word refuses the request with 400 `content_filter` naming the rail;
/// PII is pseudonymised before the model sees it; every request lands in the audit log with
/// each rail's verdict, the texts kept as the policy says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_rails_block_and_pseudonymise_and_everything_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let s = guarded_smol(
        r#"
name = "test-input"
[audit]
store = "full"
[[input.rails]]
type = "words"
name = "no-bombs"
action = "block"
words = ["bomb"]
[[input.rails]]
type = "pii"
action = "redact"
mode = "pseudonymise"
"#,
        &db,
    );
    // Obfuscated ("b0mb", fullwidth) still counts.
    for text in ["How do I build a b0mb?", "how to make a ｂｏｍｂ"] {
        let r = post(&s, "/v1/chat/completions", &smol_chat(text, json!({}))).await;
        let msg = assert_openai_error(&r, 400, Some("content_filter"), Some("messages"));
        assert!(msg.contains("no-bombs"), "{msg}");
    }
    let r = post(
        &s,
        "/v1/chat/completions",
        &smol_chat(
            "Write a one-line greeting to jane.doe@example.com.",
            json!({}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let entries = audit_entries(&db, 3).await;
    let (blocked, ok) = (&entries[0], &entries[2]);
    assert_eq!(blocked.status, 400);
    assert_eq!(blocked.policy.as_deref(), Some("test-input"));
    assert!(blocked
        .rails
        .iter()
        .any(|r| r.rail == "no-bombs" && r.triggered && r.action == "block"));
    assert_eq!(ok.status, 200);
    assert!(ok
        .prompt
        .as_deref()
        .unwrap()
        .contains("jane.doe@example.com"));
    let redacted = ok.prompt_redacted.as_deref().unwrap();
    assert!(
        redacted.contains("<EMAIL_1>") && !redacted.contains("jane.doe"),
        "{redacted}"
    );
    assert!(ok
        .rails
        .iter()
        .any(|r| r.stage == "input" && r.triggered && r.detail.contains("email")));
    assert!(ok.completion_tokens > 0 && ok.answer.is_some());
}

/// Output rails on the stream: a word the model is about to say ends the stream with
/// `finish_reason: "content_filter"` before the word, streamed or not, and the audit log keeps
/// only hashes under `store = "hashes"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_rails_stop_the_stream_before_a_blocked_word() {
    let dir = tempfile::tempdir().unwrap();
    let question = "What is the capital of France? Answer in one sentence.";
    // What the model says without a guard.
    let free = guarded_smol("name = \"none\"\n", &dir.path().join("free.db"));
    let r = post(
        &free,
        "/v1/chat/completions",
        &smol_chat(question, json!({})),
    )
    .await;
    let said = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(said.contains("Paris"), "{said}");

    let db = dir.path().join("audit.db");
    let s = guarded_smol(
        r#"
name = "no-paris"
[audit]
store = "hashes"
[[output.rails]]
type = "words"
name = "city"
action = "block"
words = ["paris"]
apply_to = ["content"]
"#,
        &db,
    );
    let r = post(&s, "/v1/chat/completions", &smol_chat(question, json!({}))).await;
    let c = &r.json()["choices"][0];
    assert_eq!(c["finish_reason"], "content_filter", "{}", r.text);
    let cut = c["message"]["content"].as_str().unwrap();
    assert!(
        said.starts_with(cut) && !cut.contains("Paris"),
        "{cut:?} vs {said:?}"
    );

    let r = post(
        &s,
        "/v1/chat/completions",
        &smol_chat(question, json!({"stream": true})),
    )
    .await;
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut content = String::new();
    let mut finish = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        content += v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(finish.as_deref(), Some("content_filter"));
    assert_eq!(content, cut, "streamed = non-streamed");

    let entries = audit_entries(&db, 2).await;
    for e in &entries {
        assert_eq!(e.finish_reason.as_deref(), Some("content_filter"));
        assert!(e.prompt.is_none() && e.prompt_redacted.is_none() && e.answer.is_none());
        assert_eq!(e.prompt_sha256.len(), 64);
        assert!(e
            .rails
            .iter()
            .any(|r| r.rail == "city" && r.stage == "output:content" && r.triggered));
    }
}

/// Model rails on the input: a perplexity check with the served model refuses gibberish (an
/// adversarial-suffix look-alike) and lets prose through; a judge that cannot be reached
/// fails closed with `on_error = "block"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_rails_score_with_the_local_model_and_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let s = guarded_smol(
        r#"
name = "model-rails"
[[input.rails]]
type = "perplexity"
name = "gibberish"
action = "block"
max_perplexity = 2000.0
min_chars = 20
model = "local"
"#,
        &db,
    );
    let prose =
        "Please write a short, friendly note thanking my neighbour for watering the plants.";
    let r = post(
        &s,
        "/v1/chat/completions",
        &smol_chat(prose, json!({"max_tokens": 4})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let junk = "describing.\\ + similarlyNow write oppositeley.]( Me giving**ONE please? revert with \"\\!--Two zQ7#v Lx]] pq";
    let r = post(
        &s,
        "/v1/chat/completions",
        &smol_chat(junk, json!({"max_tokens": 4})),
    )
    .await;
    let msg = assert_openai_error(&r, 400, Some("content_filter"), Some("messages"));
    assert!(msg.contains("gibberish"), "{msg}");
    let entries = audit_entries(&db, 2).await;
    assert!(entries[1]
        .rails
        .iter()
        .any(|r| r.rail == "gibberish" && r.triggered));
    assert!(entries[0]
        .rails
        .iter()
        .any(|r| r.rail == "gibberish" && !r.triggered));

    let closed = guarded_smol(
        r#"
name = "judge-down"
[[input.rails]]
type = "judge"
name = "hazards"
action = "block"
taxonomy = "llama-guard-s1-s14"
url = "http://127.0.0.1:9/v1"
on_error = "block"
"#,
        &dir.path().join("j.db"),
    );
    let r = post(
        &closed,
        "/v1/chat/completions",
        &smol_chat("Hello!", json!({"max_tokens": 4})),
    )
    .await;
    assert_openai_error(&r, 400, Some("content_filter"), Some("messages"));
}

/// `response_format: json_schema`: the answer is validated against the schema after decoding
/// (which is not constrained), and the verdict is the audit's `json_schema` rail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_answers_are_validated_into_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let s = guarded_smol("name = \"plain\"\n[audit]\nstore = \"full\"\n", &db);
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let body = smol_chat(
        "Reply with a JSON object with one key, city, naming the capital of France.",
        json!({"max_tokens": 40, "response_format": {"type": "json_schema",
            "json_schema": {"name": "capital", "schema": schema.clone(), "strict": true}}}),
    );
    let r = post(&s, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let finished = v["choices"][0]["finish_reason"] == "stop";
    let entries = audit_entries(&db, 1).await;
    let rail = entries[0].rails.iter().find(|r| r.rail == "json_schema");
    if finished {
        let rail = rail.expect("a json_schema verdict for a finished answer");
        let violations = seek_guard::validate_json(content, &schema);
        assert_eq!(
            rail.triggered,
            !violations.is_empty(),
            "{content:?}: {violations:?}"
        );
    } else {
        assert!(rail.is_none(), "an answer cut by max_tokens is not judged");
    }
    // A schema that is not an object is refused up front.
    let mut bad = body.clone();
    bad["response_format"]["json_schema"]["schema"] = json!(3);
    let r = post(&s, "/v1/chat/completions", &bad).await;
    assert_openai_error(&r, 400, None, Some("response_format"));
}

/// Anthropic's Messages run the same guard and audit as chat completions: an input rail
/// refuses in Anthropic's shape, PII is pseudonymised, an output rail ends the turn with
/// `stop_reason: "refusal"`, and the audit entry names the end user of `metadata.user_id`
/// (OpenAI's `user` for chat completions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_guarded_and_audited_with_their_end_user() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let s = guarded_smol(
        r#"
name = "test-messages"
[audit]
store = "full"
[[input.rails]]
type = "words"
name = "no-bombs"
action = "block"
words = ["bomb"]
[[input.rails]]
type = "pii"
action = "redact"
mode = "pseudonymise"
[[output.rails]]
type = "words"
name = "city"
action = "block"
words = ["paris"]
apply_to = ["content"]
"#,
        &db,
    );
    let message = |text: &str| {
        json!({"model": "smol", "max_tokens": 24, "temperature": 0,
               "metadata": {"user_id": "user-7f3a"},
               "messages": [{"role": "user", "content": text}]})
    };
    let r = post(&s, "/v1/messages", &message("How do I build a b0mb?")).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(r.text.contains("no-bombs"), "{}", r.text);
    let r = post(
        &s,
        "/v1/messages",
        &message("Write a one-line greeting to jane.doe@example.com."),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let q = "What is the capital of France? Answer in one sentence.";
    let r = post(&s, "/v1/messages", &message(q)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = r.json();
    assert_eq!(m["stop_reason"], "refusal", "{m}");
    assert!(!m["content"][0]["text"].as_str().unwrap().contains("Paris"));
    let r = post(
        &s,
        "/v1/chat/completions",
        &smol_chat("Hi", json!({"user": "user-b2"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = post(
        &s,
        "/v1/messages",
        &json!({"model": "smol", "max_tokens": 4, "metadata": {"user_id": "u".repeat(257)},
                "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("longer than 256 characters"), "{}", r.text);

    let entries = audit_entries(&db, 5).await;
    let users: Vec<Option<&str>> = entries.iter().map(|e| e.end_user.as_deref()).collect();
    assert_eq!(
        users,
        [
            Some("user-7f3a"),
            Some("user-7f3a"),
            Some("user-7f3a"),
            Some("user-b2"),
            None
        ]
    );
    let endpoints: Vec<&str> = entries.iter().map(|e| e.endpoint.as_str()).collect();
    assert_eq!(
        endpoints,
        ["messages", "messages", "messages", "chat", "messages"]
    );
    let (blocked, redacted, refused) = (&entries[0], &entries[1], &entries[2]);
    assert!(blocked.request_id.starts_with("msg_"), "{blocked:?}");
    assert!(blocked
        .rails
        .iter()
        .any(|r| r.rail == "no-bombs" && r.triggered));
    let p = redacted.prompt_redacted.as_deref().unwrap();
    assert!(p.contains("<EMAIL_1>") && !p.contains("jane.doe"), "{p}");
    assert_eq!(refused.finish_reason.as_deref(), Some("content_filter"));
}

// ---------------------------------------------------------------------------------------------
// Constrained decoding, tools, logit_bias
// ---------------------------------------------------------------------------------------------

fn completion(prompt: &str, extra: Value) -> Value {
    let mut v =
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 120, "temperature": 1.0, "seed": 7});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// Random weights write noise; under a schema, the noise is still a valid object.
#[tokio::test]
async fn a_schema_constrains_even_a_random_model() {
    let s = state();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "n": {"type": "integer", "minimum": 1, "maximum": 9},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "n", "ok"],
        "additionalProperties": false
    });
    for (field, value) in [
        (
            "response_format",
            json!({"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": true}}),
        ),
        ("structured_outputs", json!({"json": schema})),
        ("guided_json", json!(schema.to_string())),
        ("json_schema", schema.clone()),
    ] {
        for seed in 0..3 {
            let body = completion("Data:", json!({field: value, "seed": seed, "n": 2}));
            let r = post(&s, "/v1/completions", &body).await;
            assert_eq!(r.status, 200, "{field}: {}", r.text);
            for c in r.json()["choices"].as_array().unwrap() {
                assert_eq!(c["finish_reason"], "stop", "{field}: {c}");
                let text = c["text"].as_str().unwrap();
                let v: Value =
                    serde_json::from_str(text).unwrap_or_else(|e| panic!("{field}: {e}: {text:?}"));
                assert!(v["name"].as_str().unwrap().chars().count() <= 8, "{text}");
                assert!((1..=9).contains(&v["n"].as_i64().unwrap()), "{text}");
                assert!(v["ok"].is_boolean(), "{text}");
            }
        }
    }
    // Batched constrained sequences (masked in parallel) give what each gives alone.
    let together = post(
        &s,
        "/v1/completions",
        &completion("Data:", json!({"guided_json": schema, "seed": 11, "n": 4})),
    )
    .await
    .json();
    for j in 0..4 {
        let alone = post(
            &s,
            "/v1/completions",
            &completion("Data:", json!({"guided_json": schema, "seed": 11 + j})),
        )
        .await
        .json();
        assert_eq!(
            together["choices"][j as usize]["text"], alone["choices"][0]["text"],
            "choice {j}"
        );
    }
    // Regex, choice and grammar (vLLM's and llama.cpp's names).
    let r = post(
        &s,
        "/v1/completions",
        &completion("x", json!({"guided_regex": "[a-c]{2}-[0-9]{3}"})),
    )
    .await;
    let t = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(
        regex::Regex::new("^[a-c]{2}-[0-9]{3}$")
            .unwrap()
            .is_match(&t),
        "{t:?}"
    );
    let r = post(
        &s,
        "/v1/completions",
        &completion(
            "x",
            json!({"structured_outputs": {"choice": ["red", "green"]}}),
        ),
    )
    .await;
    let t = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(t == "red" || t == "green", "{t:?}");
    let r = post(
        &s,
        "/v1/completions",
        &completion(
            "x",
            json!({"grammar": "start: \"(\" DIGIT \"+\" DIGIT \")\"\nDIGIT: /[0-9]/"}),
        ),
    )
    .await;
    let t = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(
        regex::Regex::new(r"^\([0-9]\+[0-9]\)$")
            .unwrap()
            .is_match(&t),
        "{t:?}"
    );
}

#[tokio::test]
async fn constrained_streams_carry_the_same_valid_text() {
    let s = state();
    let body = completion(
        "Data:",
        json!({"stream": true, "guided_json": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 999}}, "required": ["a"], "additionalProperties": false}}),
    );
    let r = post(&s, "/v1/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut text = String::new();
    for e in r.events() {
        if e == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&e).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
    }
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(v["a"].is_i64(), "{text}");
}

#[tokio::test]
async fn logit_bias_moves_tokens_and_bad_entries_are_400() {
    let s = state();
    let tok = tokenizer();
    let id = tok.encode("a", false).unwrap()[0];
    // +100 on one token makes greedy decoding pick it every time.
    let body = completion(
        "Hello",
        json!({"temperature": 0, "max_tokens": 5, "logit_bias": {id.to_string(): 100}}),
    );
    let r = post(&s, "/v1/completions", &body).await;
    assert_eq!(r.json()["choices"][0]["text"], "aaaaa", "{}", r.text);
    for (bias, needle) in [
        (json!({"a": 1}), "not a token id"),
        (json!({"999999": 1}), "outside the model's vocabulary"),
        (json!({id.to_string(): 101}), "between -100 and 100"),
        (json!({id.to_string(): "x"}), "between -100 and 100"),
    ] {
        let r = post(
            &s,
            "/v1/chat/completions",
            &chat(PROMPT, json!({"logit_bias": bias})),
        )
        .await;
        let m = assert_openai_error(&r, 400, None, Some("logit_bias"));
        assert!(m.contains(needle), "{m}");
    }
}

#[tokio::test]
async fn bad_constraints_and_tools_are_400_naming_the_field() {
    let s = state();
    let tools =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    for (extra, param, needle) in [
        (json!({"guided_regex": "(", }), "guided_regex", "regex"),
        (
            json!({"guided_regex": "a", "guided_choice": ["b"]}),
            "guided_choice",
            "several output constraints",
        ),
        (
            json!({"structured_outputs": {}}),
            "structured_outputs",
            "is empty",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}),
            "response_format",
            "json_schema",
        ),
        (
            json!({"tool_choice": "required"}),
            "tool_choice",
            "only allowed when `tools`",
        ),
        (
            json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice",
            "\"g\"",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}),
            "tools",
            "letters, digits",
        ),
        (
            json!({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
            "tools",
            "only \"function\"",
        ),
        (
            json!({"tools": tools, "tool_choice": "required", "guided_regex": "a"}),
            "guided_regex",
            "cannot both apply",
        ),
    ] {
        let r = post(&s, "/v1/chat/completions", &chat(PROMPT, extra.clone())).await;
        let m = assert_openai_error(&r, 400, None, Some(param));
        assert!(m.contains(needle), "{extra}: {m}");
    }
}

#[tokio::test]
async fn a_named_tool_call_comes_back_parsed_from_deepseeks_format() {
    // The fixture has R1's chat template (DeepSeek's tool format). A prefix completion that
    // closes the reasoning lets the constraint start at once: the random model then writes
    // the call the grammar forces, and the server reads it back as an OpenAI tool call.
    let s = state();
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "maxLength": 6}},
        "required": ["q"], "additionalProperties": false}}}]);
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Find it."},
                     {"role": "assistant", "content": "Calling it.", "reasoning_content": "Use the tool.", "prefix": true}],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "parallel_tool_calls": false,
        // The tiny vocabulary has no marker tokens: they are spelled byte by byte.
        "max_tokens": 200, "temperature": 1.0, "seed": 3,
    });
    for stream in [false, true] {
        let mut body = body.clone();
        body["stream"] = json!(stream);
        let r = post(&s, "/v1/chat/completions", &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let (name, args, finish) = if stream {
            let (mut name, mut args, mut finish) = (String::new(), String::new(), String::new());
            for e in r.events() {
                if e == "[DONE]" {
                    break;
                }
                let v: Value = serde_json::from_str(&e).unwrap();
                let c = &v["choices"][0];
                if let Some(calls) = c["delta"]["tool_calls"].as_array() {
                    for call in calls {
                        assert_eq!(call["index"], 0);
                        name.push_str(call["function"]["name"].as_str().unwrap_or(""));
                        args.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
                    }
                }
                if let Some(f) = c["finish_reason"].as_str() {
                    finish = f.to_string();
                }
            }
            (name, args, finish)
        } else {
            let v = r.json();
            let c = &v["choices"][0];
            let call = &c["message"]["tool_calls"][0];
            assert!(call.is_object(), "{v:#}");
            assert!(call["id"].as_str().unwrap().starts_with("call_"), "{v}");
            (
                call["function"]["name"].as_str().unwrap().to_string(),
                call["function"]["arguments"].as_str().unwrap().to_string(),
                c["finish_reason"].as_str().unwrap().to_string(),
            )
        };
        assert_eq!(name, "lookup", "stream={stream}");
        assert_eq!(finish, "tool_calls", "stream={stream}");
        let a: Value = serde_json::from_str(&args).unwrap_or_else(|e| panic!("{e}: {args:?}"));
        assert!(a["q"].as_str().unwrap().chars().count() <= 6, "{args}");
    }
}

/// vLLM's `chat_template_kwargs` reach the template (a variable it does not use changes
/// nothing); one that would replace the conversation's own variables is a 400.
#[tokio::test]
async fn chat_template_kwargs_are_template_variables() {
    let s = state();
    let plain = post(
        &s,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"temperature": 0, "max_tokens": 4})),
    )
    .await;
    let with = post(
        &s,
        "/v1/chat/completions",
        &chat(
            PROMPT,
            json!({"temperature": 0, "max_tokens": 4, "chat_template_kwargs": {"enable_thinking": false}}),
        ),
    )
    .await;
    assert_eq!(
        with.json()["choices"][0]["message"],
        plain.json()["choices"][0]["message"],
        "{}",
        with.text
    );
    let r = post(
        &s,
        "/v1/chat/completions",
        &chat(PROMPT, json!({"chat_template_kwargs": {"messages": []}})),
    )
    .await;
    let m = assert_openai_error(&r, 400, None, Some("messages"));
    assert!(m.contains("cannot set \"messages\""), "{m}");
}
