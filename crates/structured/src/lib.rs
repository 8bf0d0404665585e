//! Structured outputs: what a generated text must match (a JSON Schema, any JSON object, a
//! regular expression, one of a list of strings, a grammar, a tool call), turned into a mask
//! over the vocabulary at every decoding step, and the parsers that read each model family's
//! tool calls back out of its text.
//!
//! Design decision: the grammar engine is `llguidance`, the Rust library behind llama.cpp's
//! and vLLM's guidance backends, not a hand-written matcher. A [`Grammars`] is built once per
//! model (it indexes the vocabulary as a byte trie); [`Grammars::compile`] turns a
//! [`Constraint`] into a [`Guide`] outside the engine loop (on the request's thread, so a slow
//! schema never stalls the batch); each constrained sequence owns its [`Guide`], so the
//! unconstrained sequences of the same batch pay nothing.
//!
//! Model files and requests are untrusted: a schema or grammar llguidance cannot compile, or
//! a vocabulary it cannot index, is a [`StructuredError`] naming the problem, never a panic.
#![deny(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use seek_tokenizer::Tokenizer;
use seek_types::TokenId;
use serde_json::{json, Value};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

pub mod tools;

pub use tools::{ParsedCall, ParsedOutput, ToolChoice, ToolFormat, ToolSpec};

/// Why a constraint or a vocabulary cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StructuredError {
    /// The schema, regex or grammar is invalid or unsupported; the message says where.
    #[error("{0}")]
    Invalid(String),
    /// The model's vocabulary cannot be indexed for constrained decoding.
    #[error("constrained decoding is not available for this model's tokenizer: {0}")]
    Vocabulary(String),
    /// The model's chat template has no tool-call format Seek can parse.
    #[error("{0}")]
    NoToolFormat(String),
}

/// What the generated text must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON object valid against this JSON Schema.
    JsonSchema(Value),
    /// The whole text matches this regular expression (Rust `regex` syntax).
    Regex(String),
    /// The text is exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect (which also embeds JSON Schemas with `%json`).
    Grammar(String),
}

impl Constraint {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonObject => "json_object",
            Constraint::JsonSchema(_) => "json_schema",
            Constraint::Regex(_) => "regex",
            Constraint::Choice(_) => "choice",
            Constraint::Grammar(_) => "grammar",
        }
    }

    /// A key for the compiled-grammar cache.
    fn cache_key(&self) -> String {
        match self {
            Constraint::JsonObject => "o".into(),
            Constraint::JsonSchema(v) => format!("s{v}"),
            Constraint::Regex(r) => format!("r{r}"),
            Constraint::Choice(c) => format!("c{}", Value::from(c.clone())),
            Constraint::Grammar(g) => format!("g{g}"),
        }
    }

    fn to_grammar(&self) -> Result<TopLevelGrammar, StructuredError> {
        Ok(match self {
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(with_layout(json!({"type": "object"})))
            }
            Constraint::JsonSchema(s) => {
                if !s.is_object() && !s.is_boolean() {
                    return Err(StructuredError::Invalid(
                        "the JSON Schema must be an object (or true/false)".into(),
                    ));
                }
                TopLevelGrammar::from_json_schema(with_layout(s.clone()))
            }
            Constraint::Regex(r) => TopLevelGrammar::from_regex(r),
            Constraint::Choice(options) => {
                if options.is_empty() {
                    return Err(StructuredError::Invalid(
                        "the choice list is empty; give at least one string".into(),
                    ));
                }
                let alts: Vec<String> = options.iter().map(|o| lark_string(o)).collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
            Constraint::Grammar(g) => TopLevelGrammar::from_lark(g.clone()),
        })
    }
}

/// A Lark string literal (Lark strings take JSON's escapes).
pub(crate) fn lark_string(s: &str) -> String {
    Value::from(s).to_string()
}

/// JSON as OpenAI writes it: `{"a": 1, "b": [2, 3]}`, one space after `:` and `,`, no
/// newlines. A fixed layout also keeps a small model from looping on whitespace, which a
/// flexible one allows. A schema's own `x-guidance` options win.
fn with_layout(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// Most compiled grammars kept per model (a service sends the same few schemas again and again).
const CACHE_ENTRIES: usize = 64;

/// One model's vocabulary, indexed for constrained decoding; compiles [`Constraint`]s.
pub struct Grammars {
    factory: ParserFactory,
    vocab_size: usize,
    eos: Vec<TokenId>,
    cache: Mutex<HashMap<String, Arc<Matcher>>>,
}

impl fmt::Debug for Grammars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

/// The tokenizer as llguidance sees it: every token's bytes in a trie, and the model's own
/// tokenizer for the text a grammar forces.
struct SeekTokEnv {
    trie: TokTrie,
    hf: tokenizers::Tokenizer,
}

impl TokenizerEnv for SeekTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Forced text can end inside a character: the whole characters go through the
        // model's tokenizer, the cut bytes through the trie's greedy split (a valid, if not
        // canonical, tokenization), so that the ids spell exactly these bytes.
        let valid = match std::str::from_utf8(s) {
            Ok(_) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = std::str::from_utf8(&s[..valid]).unwrap_or_default();
        let mut ids = match self.hf.encode_fast(text, false) {
            Ok(enc) => enc.get_ids().to_vec(),
            Err(_) => self.trie.greedy_tokenize(&s[..valid]),
        };
        ids.extend(self.trie.greedy_tokenize(&s[valid..]));
        ids
    }
}

impl Grammars {
    /// Indexes `tokenizer`'s vocabulary. Byte-level BPE (GPT-2 style) and SentencePiece byte
    /// fallback vocabularies are supported; special tokens can only be produced where a
    /// grammar names them.
    pub fn new(tokenizer: &Tokenizer) -> Result<Self, StructuredError> {
        let hf = tokenizer.hf().clone();
        let text = hf
            .to_string(false)
            .map_err(|e| StructuredError::Vocabulary(e.to_string()))?;
        let parsed: Value =
            serde_json::from_str(&text).map_err(|e| StructuredError::Vocabulary(e.to_string()))?;
        // llguidance asserts on malformed vocabularies; a model file must not crash the server.
        let words = catch_unwind(AssertUnwindSafe(|| {
            llguidance::token_bytes_from_tokenizer_json(&parsed)
        }))
        .map_err(|_| StructuredError::Vocabulary("malformed vocabulary entries".into()))?
        .map_err(|e| StructuredError::Vocabulary(e.to_string()))?;
        let vocab_size = words.len().max(tokenizer.vocab_size());
        let mut words = words;
        words.resize(vocab_size, Vec::new());
        let eos: Vec<TokenId> = tokenizer.eos_token_ids().to_vec();
        let first_eos = eos.first().copied().unwrap_or(0);
        let trie = catch_unwind(AssertUnwindSafe(|| {
            TokTrie::from(&TokRxInfo::new(vocab_size as u32, first_eos), &words)
                .with_eos_tokens(&eos)
        }))
        .map_err(|_| StructuredError::Vocabulary("cannot build the token trie".into()))?;
        let env: TokEnv = Arc::new(SeekTokEnv { trie, hf });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| StructuredError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Self {
            factory,
            vocab_size,
            eos,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The id of a special token written `text` (`None` for text that ordinary tokens spell):
    /// a grammar names such a token as `<[id]>`.
    pub fn special_token(&self, text: &str) -> Option<TokenId> {
        self.factory.tok_env().tok_trie().get_special_token(text)
    }

    /// Compiles `constraint` into a fresh [`Guide`] (the same constraint again is served from
    /// a cache of compiled grammars).
    pub fn compile(&self, constraint: &Constraint) -> Result<Guide, StructuredError> {
        let key = constraint.cache_key();
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        let proto = match cached {
            Some(m) => m,
            None => {
                let grammar = constraint.to_grammar()?;
                let parser = catch_unwind(AssertUnwindSafe(|| self.factory.create_parser(grammar)))
                    .map_err(|_| {
                        StructuredError::Invalid(format!(
                            "the {} could not be compiled (the grammar engine failed)",
                            constraint.kind()
                        ))
                    })?
                    .map_err(|e| {
                        StructuredError::Invalid(format!(
                            "the {} cannot be used: {e}",
                            constraint.kind()
                        ))
                    })?;
                let m = Matcher::new(Ok(parser));
                if let Some(e) = m.get_error() {
                    return Err(StructuredError::Invalid(format!(
                        "the {} cannot be used: {e}",
                        constraint.kind()
                    )));
                }
                let m = Arc::new(m);
                if let Ok(mut c) = self.cache.lock() {
                    if c.len() >= CACHE_ENTRIES {
                        c.clear();
                    }
                    c.insert(key, m.clone());
                }
                m
            }
        };
        Ok(Guide {
            matcher: proto.deep_clone(),
            vocab_size: self.vocab_size,
            eos: self.eos.clone(),
            kind: constraint.kind(),
        })
    }
}

/// One sequence's constraint: which tokens may come next, updated with every token.
pub struct Guide {
    matcher: Matcher,
    vocab_size: usize,
    eos: Vec<TokenId>,
    kind: &'static str,
}

impl Clone for Guide {
    fn clone(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
            vocab_size: self.vocab_size,
            eos: self.eos.clone(),
            kind: self.kind,
        }
    }
}

impl fmt::Debug for Guide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guide").field("kind", &self.kind).finish()
    }
}

impl Guide {
    /// Sets the logits of every token that cannot continue a valid text to `-inf` (end of
    /// sequence is allowed once the text is complete; it is the only token left when the
    /// grammar cannot go on).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), StructuredError> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| StructuredError::Invalid(format!("{} constraint: {e}", self.kind)))?;
        // A word of the mask at a time: most words allow nothing (one fill of 32 logits) or
        // everything (skipped); only mixed words are looked at bit by bit.
        let n = logits.len().min(self.vocab_size);
        let words = allowed.as_slice();
        for (w, chunk) in logits[..n].chunks_mut(32).enumerate() {
            match words.get(w).copied().unwrap_or(0) {
                0 => chunk.fill(f32::NEG_INFINITY),
                u32::MAX => {}
                bits => {
                    for (b, l) in chunk.iter_mut().enumerate() {
                        if bits & (1 << b) == 0 {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        logits[n..].fill(f32::NEG_INFINITY);
        Ok(())
    }

    /// Advances past `token` (an end-of-sequence token ends the text).
    pub fn consume(&mut self, token: TokenId) -> Result<(), StructuredError> {
        if self.eos.contains(&token) && self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| StructuredError::Invalid(format!("{} constraint: {e}", self.kind)))
    }

    /// Whether the text is complete and nothing may follow it.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Whether the text so far is a complete match (end of sequence allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// The constraint's kind (`json_schema`, `regex`, ...).
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_strings_are_escaped() {
        assert_eq!(lark_string("a\"b\\"), r#""a\"b\\""#);
    }

    #[test]
    fn layout_is_added_unless_given() {
        let s = with_layout(json!({"type": "object"}));
        assert_eq!(s["x-guidance"]["key_separator"], ": ");
        let s = with_layout(json!({"x-guidance": {"whitespace_flexible": true}}));
        assert_eq!(s["x-guidance"], json!({"whitespace_flexible": true}));
    }
}
