//! Shared by the integration tests: locating the sample models, reading the golden fixtures
//! (made by tools/make_tokenizer_fixtures.py) and writing small synthetic GGUF files.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};

use seek_gguf::writer::GgufWriter;
use seek_gguf::{GgufFile, Value};
use seek_tokenizer::Tokenizer;
use seek_types::{ChatMessage, TokenId};
use serde::Deserialize;

/// `$SEEK_MODELS_DIR`, or `models/` at the workspace root.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("SEEK_MODELS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"),
    }
}

/// A sample model; a missing one fails the test (it is never skipped).
pub fn model_path(file: &str) -> PathBuf {
    let path = models_dir().join(file);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-sample-models.sh (or point SEEK_MODELS_DIR at the folder that has it)",
        path.display()
    );
    path
}

pub fn load_gguf_tokenizer(file: &str) -> Tokenizer {
    let gguf = GgufFile::open(model_path(file)).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{e}"))
}

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_fixture<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with python3 tools/make_tokenizer_fixtures.py",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Debug, Deserialize)]
pub struct ModelFixture {
    pub model_file: String,
    pub vocab_size: usize,
    pub special_tokens: std::collections::BTreeMap<String, String>,
    pub added_tokens: Vec<AddedToken>,
    pub encodings: Vec<Encoding>,
    pub chats: Vec<Chat>,
    #[serde(default)]
    pub template_variants: Vec<TemplateVariant>,
}

#[derive(Debug, Deserialize)]
pub struct AddedToken {
    pub id: TokenId,
    pub content: String,
    pub special: bool,
}

#[derive(Debug, Deserialize)]
pub struct Encoding {
    pub text: String,
    pub ids: Vec<TokenId>,
    pub ids_with_special_tokens: Vec<TokenId>,
    pub decoded: String,
    pub decoded_skip_special: String,
}

#[derive(Debug, Deserialize)]
pub struct Chat {
    pub messages: Vec<ChatMessage>,
    pub add_generation_prompt: bool,
    pub rendered: String,
    pub ids: Vec<TokenId>,
}

#[derive(Debug, Deserialize)]
pub struct TemplateVariant {
    pub name: String,
    pub source: String,
    pub chats: Vec<Chat>,
}

pub fn model_fixture(name: &str) -> ModelFixture {
    read_fixture(name)
}

#[derive(Debug, Deserialize)]
pub struct PreTokenizerFixture {
    pub families: std::collections::BTreeMap<String, Family>,
}

#[derive(Debug, Deserialize)]
pub struct Family {
    pub splits: Vec<Split>,
}

#[derive(Debug, Deserialize)]
pub struct Split {
    pub text: String,
    pub pieces: Vec<String>,
}

pub fn pretokenizer_fixture() -> PreTokenizerFixture {
    read_fixture("pretokenizers.json")
}

/// Asserts two id lists are equal, printing the first difference.
pub fn assert_ids(what: &str, want: &[TokenId], got: &[TokenId]) {
    if want != got {
        let at = want
            .iter()
            .zip(got)
            .position(|(a, b)| a != b)
            .unwrap_or(want.len().min(got.len()));
        panic!(
            "{what}: ids differ at index {at} (reference has {} ids, we have {})\n  reference: {want:?}\n  ours:      {got:?}",
            want.len(),
            got.len()
        );
    }
}

/// GPT-2's byte-to-character table of byte-level BPE: printable bytes stand for themselves,
/// the others are shifted to U+0100 and up.
pub fn byte_chars() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut next = 256;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// A byte-level vocabulary (ids 0..256 are the bytes) followed by `extra` tokens with their
/// GGUF token types (3 control, 4 user-defined).
pub struct Synthetic {
    pub pre: Option<String>,
    pub model: String,
    pub extra: Vec<(String, i32)>,
    pub merges: Vec<String>,
    pub more: Vec<(String, Value)>,
}

impl Synthetic {
    pub fn new(pre: &str) -> Self {
        Self {
            pre: Some(pre.into()),
            model: "gpt2".into(),
            extra: Vec::new(),
            merges: Vec::new(),
            more: Vec::new(),
        }
    }

    pub fn token(mut self, text: &str, token_type: i32) -> Self {
        self.extra.push((text.into(), token_type));
        self
    }

    pub fn meta(mut self, key: &str, value: Value) -> Self {
        self.more.push((key.into(), value));
        self
    }

    pub fn tokens(&self) -> Vec<String> {
        byte_chars()
            .into_iter()
            .map(String::from)
            .chain(self.extra.iter().map(|(t, _)| t.clone()))
            .collect()
    }

    /// Writes the file into `dir` and opens it.
    pub fn write(&self, dir: &Path) -> GgufFile {
        let tokens = self.tokens();
        let types: Vec<Value> = (0..256)
            .map(|_| Value::I32(1))
            .chain(self.extra.iter().map(|(_, t)| Value::I32(*t)))
            .collect();
        let mut w = GgufWriter::new()
            .meta("general.architecture", Value::String("llama".into()))
            .meta("tokenizer.ggml.model", Value::String(self.model.clone()));
        if let Some(pre) = &self.pre {
            w = w.meta("tokenizer.ggml.pre", Value::String(pre.clone()));
        }
        w = w
            .meta(
                "tokenizer.ggml.tokens",
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            )
            .meta("tokenizer.ggml.token_type", Value::Array(types))
            .meta(
                "tokenizer.ggml.merges",
                Value::Array(self.merges.iter().cloned().map(Value::String).collect()),
            );
        for (k, v) in &self.more {
            w = w.meta(k, v.clone());
        }
        let path = dir.join("synthetic.gguf");
        std::fs::write(&path, w.to_bytes()).unwrap();
        GgufFile::open(&path).unwrap()
    }

    pub fn build(&self) -> Result<Tokenizer, seek_tokenizer::TokenizerError> {
        let dir = tempfile::tempdir().unwrap();
        Tokenizer::from_gguf(&self.write(dir.path()))
    }
}
