//! Guardrails for a reasoning model's requests and responses: rule rails (word lists,
//! regexes, PII, secrets, prompt-injection signals) that run in-process in microseconds,
//! descriptions of model rails (a Llama-Guard-style judge, a perplexity check) for the server
//! to run, and a streaming output guard that checks `content` and `reasoning_content`
//! separately.
//!
//! Design decision: **rules match a normalised view, and a stream is held back only as far
//! as a match could reach.** Every rule sees the text with obfuscations undone (NFKC,
//! accents, zero-width and tag characters, Cyrillic and Greek lookalikes, leetspeak, spaced
//! letters) while each finding keeps the byte range of the *original* text, so redaction
//! replaces exactly what the user or model wrote. On a stream, [`OutputGuard`] holds back the
//! last `overlap` bytes and never cuts inside a candidate match; it emits only bytes no later
//! chunk can turn into a block or a redaction, and its findings equal those of the whole text
//! (tested at every split point).
//!
//! A policy is a TOML file, checked once by [`Policy::from_toml`] into a [`Policy`]; errors
//! name `file:line:col`, the field and the fix. [`PolicySet`] picks a policy per tenant.
//!
//! ```
//! use seek_guard::{Policy, Channel};
//! let policy = Policy::from_toml(r#"
//!     name = "demo"
//!     [[input.rails]]
//!     type = "pii"
//!     action = "redact"
//!     mode = "pseudonymise"
//! "#, "demo.toml").unwrap();
//! let input = policy.check_input("Write to alice@example.com");
//! assert_eq!(input.text, "Write to <EMAIL_1>");
//! let mut out = policy.output_guard(Channel::Content, &input.pseudonyms);
//! let mut answer = out.push("Sent to <EMAIL_1>.").emit;
//! answer += &out.finish().emit;
//! assert_eq!(answer, "Sent to alice@example.com.");
//! ```
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};

mod model_rail;
mod normalize;
mod policy;
mod pseudonym;
mod rules;
mod schema;
mod set;
mod stream;
mod validate;

pub use model_rail::{
    parse_judge_reply, perplexity, JudgeBackend, JudgeRail, JudgeReplyError, JudgeVerdict,
    ModelRail, OnError, PerplexityRail, Stage, LLAMA_GUARD_CATEGORIES,
};
pub use policy::{AuditMode, OutputLimits, Policy, PolicyError, DEFAULT_OVERLAP};
pub use pseudonym::{PseudonymConflict, Pseudonyms};
pub use rules::{InjectionCheck, PiiKind, SecretKind};
pub use schema::{validate_json, SchemaViolation};
pub use set::PolicySet;
pub use stream::{OutputGuard, StreamStep};
pub use validate::{credit_card_valid, iban_valid, luhn_valid, us_ssn_valid};

/// What a rail does when it triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the request (input) or end the stream (output, `finish_reason: "content_filter"`).
    Block,
    /// Replace what was found (mask, pseudonym or removal) and go on.
    Redact,
    /// Record the finding only (monitoring).
    Flag,
}

impl Action {
    /// The name used in policies and results.
    pub fn name(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Redact => "redact",
            Action::Flag => "flag",
        }
    }
}

/// The two output channels of a reasoning model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The answer (`content`).
    Content,
    /// The chain of thought (`reasoning_content`).
    Reasoning,
}

impl Channel {
    /// The name used in policies (`apply_to`).
    pub fn name(self) -> &'static str {
        match self {
            Channel::Content => "content",
            Channel::Reasoning => "reasoning",
        }
    }
}

/// One thing a rail found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was found: `email`, `credit_card`, `aws_access_key`, `word:<word>`,
    /// `regex:<name>`, `jailbreak:<name>`, `invisible:U+200B`, `encoded:base64`, `hazard:S1`.
    pub what: String,
    /// Byte offset in the original text (for a stream: in everything pushed so far).
    pub start: usize,
    /// End byte offset (exclusive), on a character boundary.
    pub end: usize,
}

/// The verdict of one rail on one text (or one stream), for the response and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RailResult {
    /// The rail's name (its `name` in the policy, or its type).
    pub rail: String,
    /// The rail's type: `words`, `regex`, `pii`, `secrets`, `injection`, `judge`,
    /// `perplexity`, `limit`.
    pub kind: &'static str,
    /// The rail's action.
    pub action: Action,
    /// Whether it found anything.
    pub triggered: bool,
    /// What it found.
    pub findings: Vec<Finding>,
    /// Time spent in this rail, in microseconds (summed over a stream's chunks).
    pub latency_us: u64,
}

/// The result of the input rails on one piece of input text.
#[derive(Debug, Clone)]
pub struct InputOutcome {
    /// The text to send to the model: redactions applied, PII pseudonymised.
    pub text: String,
    /// The first rail (in policy order) with `action = "block"` that triggered.
    pub blocked_by: Option<String>,
    /// One result per rule rail, in policy order. Model rails are the server's to run.
    pub results: Vec<RailResult>,
    /// The pseudonyms in use after this text (pass them to [`Policy::output_guard`]).
    pub pseudonyms: Pseudonyms,
}

/// The result of the output rails on a whole text (see [`Policy::check_output`]).
#[derive(Debug, Clone)]
pub struct OutputOutcome {
    /// The text to return: redactions applied, pseudonyms restored. When blocked, what a
    /// stream would have emitted before the block.
    pub text: String,
    /// The rail (or output limit) that blocked, if any.
    pub blocked_by: Option<String>,
    /// One result per rule rail that applies to the channel, then the length limit if set.
    pub results: Vec<RailResult>,
}
