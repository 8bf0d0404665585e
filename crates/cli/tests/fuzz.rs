//! Untrusted files stay harmless: a mutation fuzzer on stable Rust (no cargo-fuzz, no nightly)
//! for every parser a model file, a request-side template or a policy reaches: the GGUF header,
//! metadata and tensor table (and the tokenizer and model config read from them), safetensors
//! headers and weights, `config.json`, `tokenizer.json`, chat-template compilation and rendering,
//! and guard policy TOML. Seeds are the real files the project ships or fetches.
//!
//! Each input runs under `catch_unwind`: a panic is a failure (the input is written to
//! `$CARGO_TARGET_TMPDIR/fuzz-crashes/` to reproduce). A global allocator records the largest
//! single allocation of each run: one larger than the input justifies (64 x its size + 64 MiB)
//! is a failure too. Errors are the expected outcome.
//!
//! CI runs a bounded pass (`SEEK_FUZZ_ITERS`, default 200 inputs per target); a long run:
//!     SEEK_FUZZ_ITERS=20000 cargo test --release -p seek-cli --test fuzz -- --nocapture

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::Value;

/// The system allocator, recording the largest single request.
struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter is updated.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING_U64: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// 1 to 4 byte-level mutations, biased towards the first `hot` bytes (a header).
fn mutate_bytes(rng: &mut Rng, seed: &[u8], hot: usize) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let span = if rng.below(4) == 0 {
            v.len()
        } else {
            hot.min(v.len())
        };
        if span == 0 {
            v.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(span);
        match rng.below(7) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v[at] = [0u8, 0xff, 0x7f, 0x80, b'{', b'"', 0][rng.below(7)],
            2 => {
                let x = INTERESTING_U64[rng.below(INTERESTING_U64.len())].to_le_bytes();
                let n = [1, 2, 4, 8][rng.below(4)];
                for (k, b) in x.iter().take(n).enumerate() {
                    if at + k < v.len() {
                        v[at + k] = *b;
                    }
                }
            }
            3 => {
                let n = 1 + rng.below(64);
                v.drain(at..(at + n).min(v.len()));
            }
            4 => {
                let n = 1 + rng.below(64);
                let chunk: Vec<u8> = v[at..(at + n).min(v.len())].to_vec();
                let to = rng.below(v.len());
                v.splice(to..to, chunk);
            }
            5 => v.truncate(at),
            _ => v.insert(at, rng.next() as u8),
        }
    }
    v
}

/// A structure-aware JSON mutation: one node somewhere in the tree replaced, removed or
/// duplicated, so that most inputs still parse as JSON and reach the code behind it.
fn mutate_json(rng: &mut Rng, v: &Value) -> Value {
    let mut v = v.clone();
    for _ in 0..1 + rng.below(3) {
        let mut node = &mut v;
        loop {
            let children = match node {
                Value::Object(o) => o.len(),
                Value::Array(a) => a.len(),
                _ => 0,
            };
            if children == 0 || rng.below(3) == 0 {
                break;
            }
            let k = rng.below(children);
            node = match node {
                Value::Object(o) => o.values_mut().nth(k).unwrap(),
                Value::Array(a) => &mut a[k],
                _ => unreachable!(),
            };
        }
        let old = node.clone();
        *node = match rng.below(10) {
            0 => Value::Null,
            1 => Value::from(-1),
            2 => Value::from(0),
            3 => Value::from(u64::MAX),
            4 => Value::from(1e308),
            5 => Value::from("\u{0}\u{ffff}<think>{{"),
            6 => Value::Array(vec![old.clone(), old.clone()]),
            7 => Value::Object(Default::default()),
            8 => match old {
                Value::Object(o) if !o.is_empty() => {
                    let mut o = o.clone();
                    let key = o.keys().nth(rng.below(o.len())).unwrap().clone();
                    o.remove(&key);
                    Value::Object(o)
                }
                Value::Array(a) if !a.is_empty() => {
                    let mut a = a.clone();
                    a.truncate(rng.below(a.len()));
                    Value::Array(a)
                }
                other => other,
            },
            _ => Value::from(i64::MIN),
        };
    }
    v
}

/// Template sources spliced with Jinja fragments.
fn mutate_text(rng: &mut Rng, seed: &str) -> String {
    const FRAGMENTS: &[&str] = &[
        "{{",
        "}}",
        "{%",
        "%}",
        "{% for m in messages %}",
        "{% endfor %}",
        "{% if x %}",
        "{% endif %}",
        "{{ raise_exception('x') }}",
        "{{ messages[999] }}",
        "{{ tools | tojson }}",
        "{% set ns = namespace(a=1) %}",
        "{{ ns.a + 'x' }}",
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
        "{{ range(100000) | list | length }}",
        "{{ '%s' % x }}",
        "\u{0}",
        "{#",
        "#}",
        "|",
        "'",
        "\"",
    ];
    let mut chars: Vec<char> = seed.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(3) {
            0 => {
                let f = FRAGMENTS[rng.below(FRAGMENTS.len())];
                chars.splice(at..at, f.chars());
            }
            1 => {
                let n = 1 + rng.below(32);
                chars.drain(at..(at + n).min(chars.len()));
            }
            _ => chars.truncate(at),
        }
    }
    chars.into_iter().collect()
}

fn iters() -> usize {
    std::env::var("SEEK_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `exec` on `iters()` mutated inputs; returns the failures.
fn fuzz(
    name: &str,
    seed_base: u64,
    mut make: impl FnMut(&mut Rng) -> Vec<u8>,
    mut exec: impl FnMut(&[u8]),
) -> Vec<String> {
    let mut rng = Rng(seed_base);
    let mut failures = Vec::new();
    let start = Instant::now();
    let n = iters();
    let crashes = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
    for i in 0..n {
        let input = make(&mut rng);
        LARGEST.store(0, Ordering::Relaxed);
        let r = catch_unwind(AssertUnwindSafe(|| exec(&input)));
        let largest = LARGEST.load(Ordering::Relaxed);
        let justified = 64 * input.len() + (64 << 20);
        let problem = match r {
            Err(p) => Some(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
            Ok(()) if largest > justified => Some(format!(
                "allocated {largest} bytes at once for a {}-byte input",
                input.len()
            )),
            Ok(()) => None,
        };
        if let Some(p) = problem {
            std::fs::create_dir_all(&crashes).unwrap();
            let file = crashes.join(format!("{name}-{i}.bin"));
            std::fs::write(&file, &input).unwrap();
            failures.push(format!("{name} #{i}: {p} (input: {})", file.display()));
        }
    }
    eprintln!(
        "fuzz {name}: {n} inputs in {:.1} s, {} failures",
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    failures
}

#[test]
fn untrusted_files_give_errors_not_panics() {
    // Keep a panic's message out of the log noise; the harness reports them.
    std::panic::set_hook(Box::new(|_| {}));
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();

    // GGUF: the tiny fixtures (every quant type) and the real R1-Distill header (its tokenizer
    // and chat template), through the header parser, every tensor's bounds, the tokenizer and
    // the model config; the tiny ones are also loaded as models from a file.
    let fixtures = root().join("tests/fixtures/golden/gguf");
    let mut ggufs: Vec<Vec<u8>> = [
        "tiny-llama.q4_0.gguf",
        "tiny-qwen2.f16.gguf",
        "tiny-llama-256.kmix-a.gguf",
        "quant-blocks.gguf",
        "tiny-qwen3.f32.gguf",
    ]
    .iter()
    .map(|f| std::fs::read(fixtures.join(f)).unwrap())
    .collect();
    let r1 = root().join("models/DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf");
    if let Ok(bytes) = std::fs::read(&r1) {
        // The header (metadata, 152K-token vocabulary, tensor table) is in the first 8 MiB.
        ggufs.push(bytes[..bytes.len().min(8 << 20)].to_vec());
    }
    let gguf_path = dir.path().join("m.gguf");
    let mut k = 0usize;
    failures.extend(fuzz(
        "gguf",
        1,
        |rng| {
            let seed = &ggufs[rng.below(ggufs.len())];
            mutate_bytes(rng, seed, 4096)
        },
        |input| {
            k += 1;
            if let Ok(f) = seek_gguf::GgufFile::from_bytes(input) {
                for t in &f.tensors {
                    let _ = f.tensor_data(t);
                }
                let _ = seek_tokenizer::Tokenizer::from_gguf(&f);
                if input.len() < (1 << 20) && k.is_multiple_of(4) {
                    std::fs::write(&gguf_path, input).unwrap();
                    if let Ok(m) = seek_models::load(&gguf_path, &Default::default()) {
                        let mut cache = m.model.new_cache();
                        let ids =
                            candle_core::Tensor::new(&[1u32, 2, 3][..], &candle_core::Device::Cpu)
                                .unwrap()
                                .unsqueeze(0)
                                .unwrap();
                        let _ = m.model.forward_last(&ids, &mut cache);
                    }
                }
            }
        },
    ));

    // config.json (every rope form, DeepSeek's MoE config) read as `seek inspect` reads a folder.
    let mut configs: Vec<Value> =
        std::fs::read_dir(root().join("crates/models/tests/fixtures/config_forms"))
            .unwrap()
            .map(|e| {
                serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap()
            })
            .collect();
    for d in [
        "tests/fixtures/golden/tiny-qwen3",
        "tests/fixtures/deepseek/dsv3-qlora-yarn",
    ] {
        configs.push(
            serde_json::from_str(
                &std::fs::read_to_string(root().join(d).join("config.json")).unwrap(),
            )
            .unwrap(),
        );
    }
    let cfg_dir = dir.path().join("cfg");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    failures.extend(fuzz(
        "config_json",
        2,
        |rng| {
            let seed = &configs[rng.below(configs.len())];
            serde_json::to_vec(&mutate_json(rng, seed)).unwrap()
        },
        |input| {
            std::fs::write(cfg_dir.join("config.json"), input).unwrap();
            let _ = seek_models::inspect(&cfg_dir);
        },
    ));

    // safetensors: a real tiny checkpoint's header and weights, loaded as a model.
    let st_seed = root().join("tests/fixtures/golden/tiny-qwen2");
    let st = std::fs::read(st_seed.join("model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let st_dir = dir.path().join("st");
    std::fs::create_dir_all(&st_dir).unwrap();
    std::fs::copy(st_seed.join("config.json"), st_dir.join("config.json")).unwrap();
    failures.extend(fuzz(
        "safetensors",
        3,
        |rng| mutate_bytes(rng, &st, header),
        |input| {
            std::fs::write(st_dir.join("model.safetensors"), input).unwrap();
            let _ = seek_models::load(&st_dir, &Default::default());
        },
    ));

    // tokenizer.json, then encoding and decoding with what it built.
    let tok_seed: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/train/tiny-r1-qwen2/tokenizer.json"))
            .unwrap(),
    )
    .unwrap();
    let tok_dir = dir.path().join("tok");
    std::fs::create_dir_all(&tok_dir).unwrap();
    failures.extend(fuzz(
        "tokenizer_json",
        4,
        |rng| serde_json::to_vec(&mutate_json(rng, &tok_seed)).unwrap(),
        |input| {
            std::fs::write(tok_dir.join("tokenizer.json"), input).unwrap();
            if let Ok(t) = seek_tokenizer::Tokenizer::from_hf_dir(&tok_dir) {
                if let Ok(ids) = t.encode("What is 2 + 2? <think>four</think>", true) {
                    let _ = t.decode(&ids, false);
                }
                let _ = t.decode(&[0, 5, u32::MAX], true);
            }
        },
    ));

    // Chat templates: those of the sample models and Qwen3's, compiled and rendered with a
    // conversation that has tools, tool calls and reasoning.
    let mut templates: Vec<String> = vec![std::fs::read_to_string(
        root().join("tests/fixtures/templates/Qwen-Qwen3-0.6B.jinja"),
    )
    .unwrap()];
    for f in [
        "SmolLM2-135M-Instruct-Q4_1.gguf",
        "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
    ] {
        if let Ok(g) = seek_gguf::GgufFile::open(root().join("models").join(f)) {
            if let Ok(t) = g.get_str("tokenizer.chat_template") {
                templates.push(t.to_string());
            }
        }
    }
    let tools = vec![
        serde_json::json!({"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}),
    ];
    let mut call = seek_types::ChatMessage::assistant("");
    call.tool_calls = vec![seek_types::ToolCall {
        id: "c1".into(),
        name: "add".into(),
        arguments: "{\"a\": 1}".into(),
    }];
    call.reasoning_content = Some("think".into());
    let messages = vec![
        seek_types::ChatMessage::system("Be brief."),
        seek_types::ChatMessage::user("Add 1 and 2"),
        call,
        seek_types::ChatMessage::new("tool", "3"),
    ];
    failures.extend(fuzz(
        "chat_template",
        5,
        |rng| {
            let seed = &templates[rng.below(templates.len())];
            mutate_text(rng, seed).into_bytes()
        },
        |input| {
            let src = String::from_utf8_lossy(input).to_string();
            if let Ok(t) =
                seek_tokenizer::ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into()))
            {
                let _ = t.render_with_tools(&messages, Some(&tools), true);
            }
        },
    ));

    // Guard policies.
    let policies: Vec<String> = std::fs::read_dir(root().join("examples/policies"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    failures.extend(fuzz(
        "policy_toml",
        6,
        |rng| {
            let seed = policies[rng.below(policies.len())].as_bytes();
            mutate_bytes(rng, seed, seed.len())
        },
        |input| {
            let _ = seek_guard::Policy::from_toml(&String::from_utf8_lossy(input), "fuzz");
        },
    ));

    // The default hook again, so that the verdict is printed.
    let _ = std::panic::take_hook();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
