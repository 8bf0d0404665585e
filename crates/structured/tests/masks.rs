//! Constrained decoding on the real sample tokenizers: a sampler that picks tokens at random
//! among those the mask allows always ends with a text that matches the constraint, and a
//! token the mask forbids is never one that could continue a valid text.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seek_structured::{Constraint, Grammars, Guide, ToolFormat, ToolSpec};
use seek_tokenizer::Tokenizer;
use serde_json::{json, Value};

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

const QWEN: &str = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf";
const SMOL: &str = "SmolLM2-135M-Instruct-Q4_1.gguf";
const R1: &str = "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf";

/// Samples under the mask with random logits (a few tokens favoured so texts end), up to
/// `max` tokens; returns the text and whether the guide finished (end of sequence chosen).
fn walk(tok: &Tokenizer, guide: &mut Guide, seed: u64, max: usize) -> (String, bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab = tok.vocab_size();
    let mut ids = Vec::new();
    let mut logits = vec![0f32; vocab + 7];
    for _ in 0..max {
        for l in logits.iter_mut() {
            *l = rng.random::<f32>();
        }
        // Favour end of sequence, so random walks stop.
        for &e in tok.eos_token_ids() {
            logits[e as usize] = 0.5;
        }
        guide.mask(&mut logits).unwrap();
        assert!(
            logits[vocab..].iter().all(|l| *l == f32::NEG_INFINITY),
            "padding rows past the vocabulary are never allowed"
        );
        let allowed: Vec<usize> = (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect();
        assert!(!allowed.is_empty(), "the mask left no token");
        // Among allowed: end of sequence with some probability, else a random token.
        let eos_allowed: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|i| tok.eos_token_ids().contains(&(*i as u32)))
            .collect();
        let t = if !eos_allowed.is_empty()
            && (rng.random::<f32>() < 0.3 || allowed.len() == eos_allowed.len())
        {
            eos_allowed[0]
        } else {
            let others: Vec<usize> = allowed
                .iter()
                .copied()
                .filter(|i| !eos_allowed.contains(i))
                .collect();
            others[rng.random_range(0..others.len())]
        } as u32;
        if tok.eos_token_ids().contains(&t) {
            return (tok.decode(&ids, false).unwrap(), true);
        }
        guide.consume(t).unwrap();
        ids.push(t);
        if guide.is_finished() {
            return (tok.decode(&ids, false).unwrap(), true);
        }
    }
    (tok.decode(&ids, false).unwrap(), false)
}

#[test]
fn random_walks_under_a_schema_give_valid_json() {
    for name in [QWEN, SMOL] {
        let tok = tokenizer(name);
        let g = Grammars::new(&tok).unwrap();
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                "ok": {"type": "boolean"}
            },
            "required": ["name", "age", "tags", "ok"],
            "additionalProperties": false
        });
        let c = Constraint::JsonSchema(schema);
        let mut finished = 0;
        for seed in 0..20 {
            let mut guide = g.compile(&c).unwrap();
            let (text, done) = walk(&tok, &mut guide, seed, 200);
            if !done {
                continue;
            }
            finished += 1;
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} seed {seed}: {e}: {text:?}"));
            let age = v["age"].as_i64().unwrap();
            assert!((0..=150).contains(&age), "{text}");
            assert!(v["name"].as_str().unwrap().chars().count() <= 12, "{text}");
            assert!(v["tags"].as_array().unwrap().len() <= 3, "{text}");
            assert!(v["ok"].is_boolean(), "{text}");
            assert!(text.starts_with("{\"name\": "), "OpenAI's layout: {text}");
        }
        assert!(finished >= 10, "{name}: only {finished} of 20 walks ended");
    }
}

#[test]
fn regex_choice_and_json_object_hold() {
    let tok = tokenizer(QWEN);
    let g = Grammars::new(&tok).unwrap();
    let re = regex::Regex::new(r"^[0-9]{3}-[a-z]{2,4}$").unwrap();
    for seed in 0..10 {
        let mut guide = g
            .compile(&Constraint::Regex(r"[0-9]{3}-[a-z]{2,4}".into()))
            .unwrap();
        let (text, done) = walk(&tok, &mut guide, seed, 50);
        assert!(done && re.is_match(&text), "{text:?}");

        let options = vec!["positive".to_string(), "negative".into(), "neutral".into()];
        let mut guide = g.compile(&Constraint::Choice(options.clone())).unwrap();
        let (text, done) = walk(&tok, &mut guide, seed, 50);
        assert!(done && options.contains(&text), "{text:?}");

        let mut guide = g.compile(&Constraint::JsonObject).unwrap();
        let (text, done) = walk(&tok, &mut guide, seed, 120);
        if done {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(v.is_object(), "{text}");
        }
    }
}

#[test]
fn bad_constraints_are_errors_naming_the_problem() {
    let tok = tokenizer(SMOL);
    let g = Grammars::new(&tok).unwrap();
    let e = g
        .compile(&Constraint::Regex("(unclosed".into()))
        .unwrap_err();
    assert!(e.to_string().contains("regex"), "{e}");
    let e = g
        .compile(&Constraint::JsonSchema(json!({"type": "no-such-type"})))
        .unwrap_err();
    assert!(e.to_string().contains("json_schema"), "{e}");
    let e = g
        .compile(&Constraint::Grammar("start: undefined_rule".into()))
        .unwrap_err();
    assert!(e.to_string().contains("grammar"), "{e}");
    assert!(g.compile(&Constraint::Choice(vec![])).is_err());
    assert!(g
        .compile(&Constraint::JsonSchema(json!("a string")))
        .is_err());
}

#[test]
fn forced_tool_calls_parse_back_with_valid_arguments() {
    let tok = tokenizer(QWEN);
    let format = ToolFormat::detect(tok.chat_template().map(|t| t.source())).unwrap();
    assert_eq!(format, ToolFormat::Hermes);
    let g = Grammars::new(&tok).unwrap();
    let tools = vec![
        ToolSpec {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"], "additionalProperties": false}),
        },
        ToolSpec {
            name: "add".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"], "additionalProperties": false}),
        },
    ];
    let c = format
        .grammar(&tools, None, false, &|s| g.special_token(s))
        .unwrap();
    let mut parsed = 0;
    for seed in 0..10 {
        let mut guide = g.compile(&c).unwrap();
        let (text, done) = walk(&tok, &mut guide, seed, 120);
        if !done {
            continue;
        }
        let out = format.parse(&text);
        assert_eq!(out.calls.len(), 1, "{text:?}");
        let call = &out.calls[0];
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        match call.name.as_str() {
            "get_weather" => assert!(args["unit"] == "c" || args["unit"] == "f", "{text}"),
            // JSON Schema integers: whole numbers (`-0` included).
            "add" => assert!(
                [&args["a"], &args["b"]]
                    .iter()
                    .all(|v| v.as_f64().is_some_and(|x| x.fract() == 0.0)),
                "{text}"
            ),
            other => panic!("unknown function {other}: {text}"),
        }
        parsed += 1;
    }
    assert!(parsed >= 5, "only {parsed} walks ended");
    // A named choice only ever calls that function.
    let c = format
        .grammar(&tools, Some("add"), false, &|s| g.special_token(s))
        .unwrap();
    for seed in 0..5 {
        let mut guide = g.compile(&c).unwrap();
        let (text, done) = walk(&tok, &mut guide, seed, 80);
        if done {
            assert_eq!(format.parse(&text).calls[0].name, "add", "{text}");
        }
    }
}

#[test]
fn deepseek_r1_markers_are_tokens_the_grammar_can_force() {
    let tok = tokenizer(R1);
    let format = ToolFormat::detect(tok.chat_template().map(|t| t.source())).unwrap();
    assert_eq!(format, ToolFormat::DeepSeekV3);
    let g = Grammars::new(&tok).unwrap();
    let tools = vec![ToolSpec {
        name: "lookup".into(),
        description: None,
        parameters: json!({"type": "object", "properties": {"q": {"type": "string", "maxLength": 8}}, "required": ["q"], "additionalProperties": false}),
    }];
    let c = format
        .grammar(&tools, None, false, &|s| g.special_token(s))
        .unwrap();
    for seed in 0..5 {
        let mut guide = g.compile(&c).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ids = Vec::new();
        for _ in 0..80 {
            let mut logits: Vec<f32> = (0..tok.vocab_size()).map(|_| rng.random()).collect();
            guide.mask(&mut logits).unwrap();
            let t = (0..logits.len())
                .filter(|&i| logits[i].is_finite())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap() as u32;
            if tok.eos_token_ids().contains(&t) {
                break;
            }
            guide.consume(t).unwrap();
            ids.push(t);
            if guide.is_finished() {
                break;
            }
        }
        // The markers are special tokens: the text keeps them only when asked to.
        let text = tok.decode(&ids, false).unwrap();
        let out = format.parse(&text);
        assert_eq!(out.calls.len(), 1, "{text:?}");
        let args: Value = serde_json::from_str(&out.calls[0].arguments).unwrap();
        assert!(args["q"].is_string(), "{text}");
    }
}

/// A vocabulary without DeepSeek's marker tokens (the tiny test fixture) still takes the
/// grammar: the markers are spelled in bytes, and forced text cut inside a character is
/// tokenized exactly.
#[test]
fn tool_markers_spelled_in_bytes_when_the_vocabulary_lacks_them() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepseek/dsv3-qlora-yarn");
    let tok = Tokenizer::from_hf_dir(&dir).unwrap();
    let g = Grammars::new(&tok).unwrap();
    let format = ToolFormat::detect(tok.chat_template().map(|t| t.source())).unwrap();
    assert_eq!(g.special_token("<｜tool▁calls▁begin｜>"), None);
    let tools = vec![ToolSpec {
        name: "lookup".into(),
        description: None,
        parameters: json!({"type": "object", "properties": {"q": {"type": "string", "maxLength": 6}},
            "required": ["q"], "additionalProperties": false}),
    }];
    let c = format
        .grammar(&tools, Some("lookup"), false, &|s| g.special_token(s))
        .unwrap();
    let mut finished = 0;
    for seed in 0..10 {
        let mut guide = g.compile(&c).unwrap();
        let (text, done) = walk(&tok, &mut guide, seed, 300);
        if done {
            finished += 1;
            let out = format.parse(&text);
            assert_eq!(out.calls.len(), 1, "{text:?}");
            assert_eq!(out.calls[0].name, "lookup");
        }
    }
    assert!(finished >= 5, "{finished}");
}
