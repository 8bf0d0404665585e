//! Policy files: the TOML wire types, their checking into a [`Policy`], and the input check.
//!
//! The wire types mirror the file and live only here; [`Policy::from_toml`] is the one
//! function past that boundary, so every limit and combination is checked once, at load,
//! with the file position of the offending value.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use regex::RegexBuilder;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::model_rail::{JudgeTemplate, LLAMA_GUARD_CATEGORIES};
use crate::normalize::Text;
use crate::pseudonym::Pseudonyms;
use crate::rules::{
    Fix, Hit, Injection, InjectionCheck, Patterns, Pii, PiiKind, Rule, Scan, SecretKind, Secrets,
    Words, MAX_WORD_BYTES,
};
use crate::stream::OutputGuard;
use crate::{
    Action, Channel, Finding, InputOutcome, JudgeBackend, JudgeRail, ModelRail, OnError,
    OutputOutcome, PerplexityRail, RailResult, Stage,
};

/// How many bytes an output stream is held back by default. Raised automatically for
/// policies whose words could be longer (three bytes per letter: fullwidth spellings).
pub const DEFAULT_OVERLAP: usize = 128;

/// What the audit log may store of prompts and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AuditMode {
    /// Prompts and answers as received and sent.
    #[serde(rename = "full")]
    Full,
    /// The redacted forms only (what the model saw, what the client got).
    #[default]
    #[serde(rename = "redacted")]
    Redacted,
    /// Only hashes of prompts and answers (no text at all).
    #[serde(rename = "hashes")]
    HashesOnly,
}

/// Length limits on a response, in characters; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OutputLimits {
    /// Most characters of `content`.
    pub max_content_chars: Option<usize>,
    /// Most characters of `reasoning_content`.
    pub max_reasoning_chars: Option<usize>,
}

/// A policy that cannot be used, with where and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{}: cannot read the policy file: {source}; check the path", path.display())]
    Read {
        /// The path given.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A value is wrong or a combination does not hold (TOML syntax included).
    #[error("{origin}:{line}:{col}: {field}: {message}\n  ---> fix: {fix}")]
    Invalid {
        /// The file name (or what the text came from).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        col: usize,
        /// The field, as `[input.rails] pattern` or `name`.
        field: String,
        /// What is wrong.
        message: String,
        /// What to change.
        fix: String,
    },
    /// Two policy files were given for one tenant.
    #[error(
        "tenant {tenant:?} has two policies ({first} and {second}); give each tenant one policy"
    )]
    DuplicateTenant {
        /// The tenant.
        tenant: String,
        /// The first policy's origin.
        first: String,
        /// The second policy's origin.
        second: String,
    },
}

// ---------------------------------------------------------------------------------------
// Wire types: exactly the file's shape, unknown fields refused.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyWire {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    audit: Option<AuditWire>,
    input: Option<InputWire>,
    output: Option<OutputWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditWire {
    store: AuditMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputWire {
    #[serde(default)]
    rails: Vec<Spanned<RailWire>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputWire {
    #[serde(default)]
    rails: Vec<Spanned<RailWire>>,
    max_content_chars: Option<Spanned<i64>>,
    max_reasoning_chars: Option<Spanned<i64>>,
    overlap: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum RailType {
    Words,
    Regex,
    Pii,
    Secrets,
    Injection,
    Judge,
    Perplexity,
}

impl RailType {
    fn name(self) -> &'static str {
        match self {
            RailType::Words => "words",
            RailType::Regex => "regex",
            RailType::Pii => "pii",
            RailType::Secrets => "secrets",
            RailType::Injection => "injection",
            RailType::Judge => "judge",
            RailType::Perplexity => "perplexity",
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum PiiMode {
    Mask,
    #[serde(alias = "pseudonymize")]
    Pseudonymise,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternWire {
    name: Spanned<String>,
    pattern: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RailWire {
    #[serde(rename = "type")]
    kind: Spanned<RailType>,
    name: Option<Spanned<String>>,
    action: Spanned<Action>,
    apply_to: Option<Spanned<Vec<Channel>>>,
    words: Option<Spanned<Vec<Spanned<String>>>>,
    case_sensitive: Option<Spanned<bool>>,
    whole_words: Option<Spanned<bool>>,
    patterns: Option<Spanned<Vec<Spanned<PatternWire>>>>,
    kinds: Option<Spanned<Vec<Spanned<String>>>>,
    mode: Option<Spanned<PiiMode>>,
    checks: Option<Spanned<Vec<Spanned<String>>>>,
    min_encoded_len: Option<Spanned<i64>>,
    prompt: Option<Spanned<String>>,
    taxonomy: Option<Spanned<String>>,
    categories: Option<Spanned<Vec<Spanned<String>>>>,
    model: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    api_key_env: Option<Spanned<String>>,
    on_error: Option<Spanned<OnError>>,
    max_perplexity: Option<Spanned<f64>>,
    min_chars: Option<Spanned<i64>>,
}

impl RailWire {
    /// The type-specific fields that are set, with where they are.
    fn present(&self) -> Vec<(&'static str, Range<usize>)> {
        fn at<T>(
            name: &'static str,
            f: &Option<Spanned<T>>,
        ) -> Option<(&'static str, Range<usize>)> {
            f.as_ref().map(|s| (name, s.span()))
        }
        [
            at("words", &self.words),
            at("case_sensitive", &self.case_sensitive),
            at("whole_words", &self.whole_words),
            at("patterns", &self.patterns),
            at("kinds", &self.kinds),
            at("mode", &self.mode),
            at("checks", &self.checks),
            at("min_encoded_len", &self.min_encoded_len),
            at("prompt", &self.prompt),
            at("taxonomy", &self.taxonomy),
            at("categories", &self.categories),
            at("model", &self.model),
            at("url", &self.url),
            at("api_key_env", &self.api_key_env),
            at("on_error", &self.on_error),
            at("max_perplexity", &self.max_perplexity),
            at("min_chars", &self.min_chars),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Which rail types each type-specific field belongs to.
fn field_types(field: &str) -> &'static [RailType] {
    use RailType::*;
    match field {
        "words" | "whole_words" => &[Words],
        "case_sensitive" => &[Words, Regex],
        "patterns" => &[Regex],
        "kinds" => &[Pii, Secrets],
        "mode" => &[Pii],
        "checks" | "min_encoded_len" => &[Injection],
        "prompt" | "taxonomy" | "categories" | "url" | "api_key_env" => &[Judge],
        "model" | "on_error" => &[Judge, Perplexity],
        "max_perplexity" | "min_chars" => &[Perplexity],
        _ => &[],
    }
}

// ---------------------------------------------------------------------------------------
// The checked policy.

/// A rule rail ready to run.
#[derive(Debug)]
pub(crate) struct RuleRail {
    pub name: String,
    pub action: Action,
    /// Output rails: the channels it applies to (input rails: both, unused).
    pub channels: Vec<Channel>,
    pub rule: Rule,
}

impl RuleRail {
    pub fn result(&self, hits: &[Hit], latency_us: u64) -> RailResult {
        RailResult {
            rail: self.name.clone(),
            kind: self.rule.kind(),
            action: self.action,
            triggered: !hits.is_empty(),
            findings: hits
                .iter()
                .map(|h| Finding {
                    what: h.what.clone(),
                    start: h.start,
                    end: h.end,
                })
                .collect(),
            latency_us,
        }
    }
}

/// One checked policy: the rails for input and output, the audit mode and the limits.
#[derive(Debug)]
pub struct Policy {
    name: String,
    description: String,
    origin: String,
    audit: AuditMode,
    input: Vec<RuleRail>,
    /// Shared with every [`OutputGuard`] made from this policy.
    output: Arc<Vec<RuleRail>>,
    model_rails: Vec<ModelRail>,
    limits: OutputLimits,
    overlap: usize,
}

/// A replacement of `start..end` in a text.
#[derive(Debug, Clone)]
pub(crate) struct Edit {
    pub start: usize,
    pub end: usize,
    pub fix: Fix,
}

/// Applies non-overlapping replacements to `text`. Overlapping edits are merged into one
/// `[REDACTED]` (a pseudonym must stand for exactly one value); an edit inside another is
/// dropped. Returns the new text.
pub(crate) fn apply_edits(text: &str, mut edits: Vec<Edit>, pseudonyms: &mut Pseudonyms) -> String {
    edits.sort_by_key(|e| (e.start, std::cmp::Reverse(e.end)));
    let mut kept: Vec<Edit> = Vec::with_capacity(edits.len());
    for e in edits {
        match kept.last_mut() {
            Some(last) if e.start < last.end => {
                if e.end > last.end {
                    last.end = e.end;
                    last.fix = Fix::Mask("[REDACTED]".into());
                }
            }
            _ => kept.push(e),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for e in kept {
        out.push_str(&text[at..e.start]);
        match &e.fix {
            Fix::Mask(m) => out.push_str(m),
            Fix::Pseudonym(label) => {
                out.push_str(&pseudonyms.tag_for(label, &text[e.start..e.end]))
            }
            Fix::Delete => {}
        }
        at = e.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Byte offset -> 1-based line and column (in characters).
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// The `key` of `key = value` on the line of `offset`, for errors that point at a value.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..offset];
    let eq = before.rfind('=')?;
    let key = before[..eq].trim_end();
    let key: String = key
        .chars()
        .rev()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!key.is_empty()).then_some(key)
}

/// The allowed field (listed in toml's message as `a`, `b`, ...) nearest to a misspelt one,
/// if it is at most two edits away.
fn closest(field: &str, message: &str) -> Option<String> {
    let (_, expected) = message.split_once("expected")?;
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for j in 0..b.len() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != b[j]))
                    .min(row[j] + 1)
                    .min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    };
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|c| (distance(field, c), c))
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, c)| c.to_string())
}

/// Builds errors for one policy text.
struct Errors<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Errors<'_> {
    fn at(
        &self,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> PolicyError {
        let (line, col) = line_col(self.text, span.start);
        PolicyError::Invalid {
            origin: self.origin.to_string(),
            line,
            col,
            field: field.to_string(),
            message: message.into(),
            fix: fix.into(),
        }
    }

    fn syntax(&self, e: toml::de::Error) -> PolicyError {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        let named = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|r| r.split('`').nth(1))
                .map(str::to_string)
        };
        let (field, fix) = if let Some(f) = named("unknown field") {
            let fix = match closest(&f, &message) {
                Some(c) => format!("did you mean `{c}`? Otherwise remove it"),
                None => {
                    "remove it or correct its spelling (the fields allowed here are listed above)"
                        .into()
                }
            };
            (f, fix)
        } else if let Some(f) = named("missing field") {
            (f, "add it to this table".into())
        } else if message.starts_with("unknown variant") {
            (
                key_at(self.text, span.start).unwrap_or_else(|| "value".into()),
                "use one of the values listed".into(),
            )
        } else if message.starts_with("invalid type") {
            (
                key_at(self.text, span.start).unwrap_or_else(|| "value".into()),
                "write the value in the type expected (strings in quotes, lists in [ ])".into(),
            )
        } else {
            (
                "syntax".to_string(),
                "correct the TOML at this position".into(),
            )
        };
        self.at(span, &field, message, fix)
    }
}

impl Policy {
    /// Parses and checks a policy. `origin` names the text in errors (usually its path).
    pub fn from_toml(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let err = Errors { text, origin };
        let wire: PolicyWire = toml::from_str(text).map_err(|e| err.syntax(e))?;
        if wire.name.get_ref().trim().is_empty() {
            return Err(err.at(
                wire.name.span(),
                "name",
                "the policy name is empty",
                "give it a name, e.g. name = \"strict\"",
            ));
        }
        let mut input = Vec::new();
        let mut output = Vec::new();
        let mut model_rails = Vec::new();
        let mut names: Vec<(Stage, String)> = Vec::new();
        let stages = [
            (Stage::Input, wire.input.as_ref().map(|i| &i.rails)),
            (Stage::Output, wire.output.as_ref().map(|o| &o.rails)),
        ];
        for (stage, rails) in stages {
            for rail in rails.into_iter().flatten() {
                match build_rail(&err, stage, rail, &mut names)? {
                    Built::Rule(r) if stage == Stage::Input => input.push(r),
                    Built::Rule(r) => output.push(r),
                    Built::Model(m) => model_rails.push(m),
                }
            }
        }
        let out = wire.output.as_ref();
        let limit = |f: Option<&Spanned<i64>>, field: &str| -> Result<Option<usize>, PolicyError> {
            match f {
                None => Ok(None),
                Some(v) if *v.get_ref() >= 1 => Ok(Some(*v.get_ref() as usize)),
                Some(v) => Err(err.at(
                    v.span(),
                    field,
                    format!("{} is not a length", v.get_ref()),
                    "use a positive number of characters, or leave it out for no limit",
                )),
            }
        };
        let limits = OutputLimits {
            max_content_chars: limit(
                out.and_then(|o| o.max_content_chars.as_ref()),
                "[output] max_content_chars",
            )?,
            max_reasoning_chars: limit(
                out.and_then(|o| o.max_reasoning_chars.as_ref()),
                "[output] max_reasoning_chars",
            )?,
        };
        // A word spelled in fullwidth letters takes three bytes a letter; the stream must
        // hold back enough to see the longest one whole.
        let longest_word = wire
            .output
            .iter()
            .flat_map(|o| &o.rails)
            .filter_map(|r| r.get_ref().words.as_ref())
            .flat_map(|w| w.get_ref())
            .map(|w| w.get_ref().len())
            .max()
            .unwrap_or(0);
        let needed = 3 * longest_word + 16;
        let overlap = match out.and_then(|o| o.overlap.as_ref()) {
            None => DEFAULT_OVERLAP.max(needed),
            Some(v) => {
                let n = *v.get_ref();
                if !(32..=65536).contains(&n) {
                    return Err(err.at(
                        v.span(),
                        "[output] overlap",
                        format!("{n} bytes is out of range"),
                        "use 32 to 65536 bytes (128 is the default)",
                    ));
                }
                if (n as usize) < needed {
                    return Err(err.at(v.span(), "[output] overlap", format!("{n} bytes cannot hold the longest output word ({longest_word} bytes) in fullwidth letters"), format!("raise it to at least {needed}, or leave it out")));
                }
                n as usize
            }
        };
        Ok(Policy {
            name: wire.name.into_inner(),
            description: wire.description,
            origin: origin.to_string(),
            audit: wire.audit.map(|a| a.store).unwrap_or_default(),
            input,
            output: Arc::new(output),
            model_rails,
            limits,
            overlap,
        })
    }

    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::from_toml(&text, &path.display().to_string())
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy's description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Where the policy came from (its path, or the origin given to [`Policy::from_toml`]).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// What the audit log may store.
    pub fn audit_mode(&self) -> AuditMode {
        self.audit
    }

    /// The judge and perplexity rails, input and output, in policy order.
    pub fn model_rails(&self) -> &[ModelRail] {
        &self.model_rails
    }

    /// The response length limits.
    pub fn output_limits(&self) -> OutputLimits {
        self.limits
    }

    /// How many bytes an output stream is held back.
    pub fn overlap(&self) -> usize {
        self.overlap
    }

    /// Names and types of the rule rails of a stage, in order (for listings).
    pub fn rule_rails(&self, stage: Stage) -> Vec<(&str, &'static str, Action)> {
        let rails = match stage {
            Stage::Input => &self.input,
            Stage::Output => &*self.output,
        };
        rails
            .iter()
            .map(|r| (r.name.as_str(), r.rule.kind(), r.action))
            .collect()
    }

    /// Runs the input rule rails on one input text (a user message) with fresh pseudonyms.
    pub fn check_input(&self, text: &str) -> InputOutcome {
        let mut pseudonyms = Pseudonyms::new();
        let mut outcome = self.check_input_with(text, &mut pseudonyms);
        outcome.pseudonyms = pseudonyms;
        outcome
    }

    /// Runs the input rule rails on one of several messages of a request, sharing
    /// `pseudonyms` so that a value gets the same tag in every message.
    pub fn check_input_with(&self, text: &str, pseudonyms: &mut Pseudonyms) -> InputOutcome {
        let t = Text::new(text);
        let mut results = Vec::with_capacity(self.input.len());
        let mut edits = Vec::new();
        let mut blocked_by = None;
        for rail in &self.input {
            let started = Instant::now();
            let mut scan = Scan::default();
            rail.rule.scan(&t, 0, &mut scan);
            let us = started.elapsed().as_micros() as u64;
            if !scan.hits.is_empty() {
                match rail.action {
                    Action::Block if blocked_by.is_none() => blocked_by = Some(rail.name.clone()),
                    Action::Redact => edits.extend(scan.hits.iter().map(|h| Edit {
                        start: h.start,
                        end: h.end,
                        fix: h.fix.clone(),
                    })),
                    _ => {}
                }
            }
            results.push(rail.result(&scan.hits, us));
        }
        let text = apply_edits(text, edits, pseudonyms);
        InputOutcome {
            text,
            blocked_by,
            results,
            pseudonyms: pseudonyms.clone(),
        }
    }

    /// A streaming guard for one output channel of one response. `pseudonyms` are the
    /// input's: their tags are restored to the original values in what the guard emits.
    pub fn output_guard(&self, channel: Channel, pseudonyms: &Pseudonyms) -> OutputGuard {
        let max_chars = match channel {
            Channel::Content => self.limits.max_content_chars,
            Channel::Reasoning => self.limits.max_reasoning_chars,
        };
        OutputGuard::new(
            self.output.clone(),
            channel,
            pseudonyms.clone(),
            self.overlap,
            max_chars,
        )
    }

    /// Runs the output rails on a whole text (non-streamed responses): the same as pushing it
    /// to an [`OutputGuard`] in one piece.
    pub fn check_output(
        &self,
        channel: Channel,
        text: &str,
        pseudonyms: &Pseudonyms,
    ) -> OutputOutcome {
        let mut guard = self.output_guard(channel, pseudonyms);
        let mut out = guard.push(text).emit;
        let last = guard.finish();
        out.push_str(&last.emit);
        OutputOutcome {
            text: out,
            blocked_by: last.blocked_by,
            results: guard.results(),
        }
    }
}

enum Built {
    Rule(RuleRail),
    Model(ModelRail),
}

fn build_rail(
    err: &Errors<'_>,
    stage: Stage,
    spanned: &Spanned<RailWire>,
    names: &mut Vec<(Stage, String)>,
) -> Result<Built, PolicyError> {
    let w = spanned.get_ref();
    let kind = *w.kind.get_ref();
    let table = match stage {
        Stage::Input => "[[input.rails]]",
        Stage::Output => "[[output.rails]]",
    };
    let field = |f: &str| format!("{table} {f}");
    for (f, span) in w.present() {
        let allowed = field_types(f);
        if !allowed.contains(&kind) {
            let owners: Vec<&str> = allowed.iter().map(|t| t.name()).collect();
            return Err(err.at(
                span,
                &field(f),
                format!(
                    "`{f}` does not apply to a {} rail (it belongs to: {})",
                    kind.name(),
                    owners.join(", ")
                ),
                format!("remove it, or change `type` to {}", owners.join(" or ")),
            ));
        }
    }

    // Name: given, or the type; numbered when the type repeats.
    let name = match &w.name {
        Some(n) => {
            let n_str = n.get_ref().trim().to_string();
            if n_str.is_empty() || names.iter().any(|(s, x)| *s == stage && *x == n_str) {
                return Err(err.at(
                    n.span(),
                    &field("name"),
                    format!("the rail name {n_str:?} is empty or used twice in this stage"),
                    "give every rail of a stage its own name",
                ));
            }
            n_str
        }
        None => {
            let base = kind.name().to_string();
            let mut candidate = base.clone();
            let mut k = 2;
            while names.iter().any(|(s, x)| *s == stage && *x == candidate) {
                candidate = format!("{base}_{k}");
                k += 1;
            }
            candidate
        }
    };
    names.push((stage, name.clone()));

    let action = *w.action.get_ref();
    let channels = match (&w.apply_to, stage) {
        (Some(a), Stage::Input) => {
            return Err(err.at(
                a.span(),
                &field("apply_to"),
                "`apply_to` chooses output channels; input rails check user messages",
                "remove it from this input rail",
            ));
        }
        (Some(a), Stage::Output) => {
            if a.get_ref().is_empty() {
                return Err(err.at(
                    a.span(),
                    &field("apply_to"),
                    "an empty `apply_to` turns the rail off",
                    "list \"content\", \"reasoning\" or both, or delete the rail",
                ));
            }
            let mut c = a.get_ref().clone();
            c.dedup();
            c
        }
        (None, _) => vec![Channel::Content, Channel::Reasoning],
    };
    let is_model = matches!(kind, RailType::Judge | RailType::Perplexity);
    if is_model && action == Action::Redact {
        return Err(err.at(
            w.action.span(),
            &field("action"),
            format!(
                "a {} rail judges the whole text and cannot redact part of it",
                kind.name()
            ),
            "use action = \"block\" or \"flag\"",
        ));
    }

    let list = |f: &Option<Spanned<Vec<Spanned<String>>>>| -> Vec<(String, Range<usize>)> {
        f.iter()
            .flat_map(|l| l.get_ref())
            .map(|s| (s.get_ref().clone(), s.span()))
            .collect()
    };
    let count = |v: &Option<Spanned<i64>>,
                 f: &str,
                 default: usize,
                 range: std::ops::RangeInclusive<usize>|
     -> Result<usize, PolicyError> {
        match v {
            None => Ok(default),
            Some(n) if *n.get_ref() >= 0 && range.contains(&(*n.get_ref() as usize)) => {
                Ok(*n.get_ref() as usize)
            }
            Some(n) => Err(err.at(
                n.span(),
                &field(f),
                format!("{} is out of range", n.get_ref()),
                format!("use {} to {}", range.start(), range.end()),
            )),
        }
    };
    let case_sensitive = w.case_sensitive.as_ref().is_some_and(|b| *b.get_ref());

    let rule = match kind {
        RailType::Words => {
            let Some(words) = &w.words else {
                return Err(err.at(
                    spanned.span(),
                    &field("words"),
                    "a words rail needs a word list",
                    "add words = [\"...\", ...]",
                ));
            };
            if words.get_ref().is_empty() {
                return Err(err.at(
                    words.span(),
                    &field("words"),
                    "the word list is empty",
                    "list at least one word or phrase, or delete the rail",
                ));
            }
            for (word, span) in list(&w.words) {
                if word.len() > MAX_WORD_BYTES || word.trim().is_empty() {
                    return Err(err.at(
                        span,
                        &field("words"),
                        format!("{word:?} is empty or longer than {MAX_WORD_BYTES} bytes"),
                        "use words and short phrases; for longer patterns use a regex rail",
                    ));
                }
            }
            let words: Vec<String> = list(&w.words).into_iter().map(|(s, _)| s).collect();
            let whole = w.whole_words.as_ref().is_none_or(|b| *b.get_ref());
            Rule::Words(Words::new(&words, case_sensitive, whole).map_err(|m| {
                err.at(
                    spanned.span(),
                    &field("words"),
                    m,
                    "remove or change the word named",
                )
            })?)
        }
        RailType::Regex => {
            let Some(patterns) = &w.patterns else {
                return Err(err.at(
                    spanned.span(),
                    &field("patterns"),
                    "a regex rail needs patterns",
                    "add patterns = [{ name = \"...\", pattern = \"...\" }]",
                ));
            };
            if patterns.get_ref().is_empty() {
                return Err(err.at(
                    patterns.span(),
                    &field("patterns"),
                    "the pattern list is empty",
                    "add at least one { name, pattern }, or delete the rail",
                ));
            }
            let mut compiled = Vec::new();
            for p in patterns.get_ref() {
                let p = p.get_ref();
                let pname = p.name.get_ref().trim().to_string();
                if pname.is_empty() || compiled.iter().any(|(n, _)| *n == pname) {
                    return Err(err.at(
                        p.name.span(),
                        &field("patterns.name"),
                        format!("the pattern name {pname:?} is empty or used twice"),
                        "name every pattern of the rail differently",
                    ));
                }
                let re = RegexBuilder::new(p.pattern.get_ref())
                    .case_insensitive(!case_sensitive)
                    .size_limit(16 << 20)
                    .build()
                    .map_err(|e| err.at(p.pattern.span(), &field("patterns.pattern"), format!("pattern {pname:?} does not compile: {e}"), "fix the regex (Rust regex syntax: no look-around or backreferences); in TOML prefer 'single quotes' so backslashes stay as written"))?;
                if re.is_match("") {
                    return Err(err.at(p.pattern.span(), &field("patterns.pattern"), format!("pattern {pname:?} matches the empty string, so it would match everywhere"), "require at least one character (use + instead of *)"));
                }
                compiled.push((pname, re));
            }
            Rule::Regex(Patterns { patterns: compiled })
        }
        RailType::Pii => {
            let kinds = parse_kinds(
                err,
                &field("kinds"),
                &list(&w.kinds),
                PiiKind::parse,
                &PiiKind::ALL.map(PiiKind::name),
            )?
            .unwrap_or_else(|| PiiKind::ALL.to_vec());
            let pseudonymise = w
                .mode
                .as_ref()
                .is_some_and(|m| *m.get_ref() == PiiMode::Pseudonymise);
            if let (Some(m), Stage::Output, true) = (&w.mode, stage, pseudonymise) {
                return Err(err.at(
                    m.span(),
                    &field("mode"),
                    "output rails cannot pseudonymise: nobody would restore the tags",
                    "use mode = \"mask\" (tags from the input are restored automatically)",
                ));
            }
            if pseudonymise && action != Action::Redact {
                let m = w.mode.as_ref().expect("mode set");
                return Err(err.at(m.span(), &field("mode"), format!("mode = \"pseudonymise\" takes effect only with action = \"redact\", not {:?}", action.name()), "set action = \"redact\" or remove `mode`"));
            }
            Rule::Pii(Pii {
                kinds,
                pseudonymise,
            })
        }
        RailType::Secrets => {
            let kinds = parse_kinds(
                err,
                &field("kinds"),
                &list(&w.kinds),
                SecretKind::parse,
                &SecretKind::ALL.map(SecretKind::name),
            )?
            .unwrap_or_else(|| SecretKind::ALL.to_vec());
            Rule::Secrets(Secrets { kinds })
        }
        RailType::Injection => {
            let all = ["jailbreak", "invisible", "encoded"];
            let default = match stage {
                // Jailbreak phrasings describe user turns; in answers "Sure, here is" is normal.
                Stage::Input => vec![
                    InjectionCheck::Jailbreak,
                    InjectionCheck::Invisible,
                    InjectionCheck::Encoded,
                ],
                Stage::Output => vec![InjectionCheck::Invisible, InjectionCheck::Encoded],
            };
            let checks = parse_kinds(
                err,
                &field("checks"),
                &list(&w.checks),
                InjectionCheck::parse,
                &all,
            )?
            .unwrap_or(default);
            let min = count(&w.min_encoded_len, "min_encoded_len", 40, 16..=4096)?;
            Rule::Injection(Injection::new(checks, min))
        }
        RailType::Judge | RailType::Perplexity => {
            return build_model_rail(err, stage, w, kind, name, action, channels).map(Built::Model);
        }
    };
    rule.prepare();
    Ok(Built::Rule(RuleRail {
        name,
        action,
        channels,
        rule,
    }))
}

/// Parses a list of kind names; `None` when the field is absent.
fn parse_kinds<K: PartialEq>(
    err: &Errors<'_>,
    field: &str,
    items: &[(String, Range<usize>)],
    parse: fn(&str) -> Option<K>,
    allowed: &[&str],
) -> Result<Option<Vec<K>>, PolicyError> {
    if items.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (s, span) in items {
        let k = parse(s).ok_or_else(|| {
            err.at(
                span.clone(),
                field,
                format!("unknown kind {s:?}"),
                format!("use some of: {}", allowed.join(", ")),
            )
        })?;
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(Some(out))
}

fn build_model_rail(
    err: &Errors<'_>,
    stage: Stage,
    w: &RailWire,
    kind: RailType,
    name: String,
    action: Action,
    channels: Vec<Channel>,
) -> Result<ModelRail, PolicyError> {
    let table = match stage {
        Stage::Input => "[[input.rails]]",
        Stage::Output => "[[output.rails]]",
    };
    let field = |f: &str| format!("{table} {f}");
    let model = w.model.as_ref().map(|m| m.get_ref().trim().to_string());
    let backend = match &w.url {
        Some(url) => {
            let u = url.get_ref().trim();
            if !(u.starts_with("http://") || u.starts_with("https://"))
                || u.len() <= "https://".len()
            {
                return Err(err.at(
                    url.span(),
                    &field("url"),
                    format!("{u:?} is not an http(s) URL"),
                    "use the judge's OpenAI-compatible base URL, e.g. \"http://127.0.0.1:8001/v1\"",
                ));
            }
            if let Some(env) = &w.api_key_env {
                let e = env.get_ref();
                if e.is_empty() || !e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(err.at(env.span(), &field("api_key_env"), format!("{e:?} is not an environment variable name"), "name the variable that holds the key, e.g. \"JUDGE_API_KEY\" (never the key itself)"));
                }
            }
            JudgeBackend::Url {
                url: u.trim_end_matches('/').to_string(),
                model: model.filter(|m| m != "local"),
                api_key_env: w.api_key_env.as_ref().map(|e| e.get_ref().clone()),
            }
        }
        None => {
            if let Some(env) = &w.api_key_env {
                return Err(err.at(
                    env.span(),
                    &field("api_key_env"),
                    "`api_key_env` is only used with `url`",
                    "add url = \"http://...\" or remove api_key_env",
                ));
            }
            JudgeBackend::Local {
                model: model.filter(|m| m != "local" && !m.is_empty()),
            }
        }
    };
    let on_error = w.on_error.as_ref().map_or(OnError::Allow, |o| *o.get_ref());
    if kind == RailType::Perplexity {
        let Some(max) = &w.max_perplexity else {
            return Err(err.at(w.kind.span(), &field("max_perplexity"), "a perplexity rail needs a threshold", "add max_perplexity = 1000.0 (prose scores under 100; adversarial suffixes in the thousands)"));
        };
        if max.get_ref().partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater)
            || !max.get_ref().is_finite()
        {
            return Err(err.at(
                max.span(),
                &field("max_perplexity"),
                format!("{} can never be exceeded meaningfully", max.get_ref()),
                "use a finite number above 1, e.g. 1000.0",
            ));
        }
        let min_chars = match &w.min_chars {
            None => 32,
            Some(n) if *n.get_ref() >= 0 => *n.get_ref() as usize,
            Some(n) => {
                return Err(err.at(
                    n.span(),
                    &field("min_chars"),
                    "negative length",
                    "use 0 or more characters",
                ))
            }
        };
        return Ok(ModelRail::Perplexity(PerplexityRail {
            name,
            action,
            stage,
            channels,
            backend,
            max_perplexity: *max.get_ref(),
            min_chars,
            on_error,
        }));
    }
    let (template, categories) = match (&w.prompt, &w.taxonomy) {
        (Some(p), None) => {
            if !p.get_ref().contains("{text}") {
                return Err(err.at(
                    p.span(),
                    &field("prompt"),
                    "the prompt has no {text} placeholder, so the judge would never see the text",
                    "put {text} where the text to judge goes",
                ));
            }
            if let Some(c) = &w.categories {
                return Err(err.at(
                    c.span(),
                    &field("categories"),
                    "`categories` selects from the taxonomy, not a custom prompt",
                    "remove it, or use taxonomy = \"llama-guard-s1-s14\" instead of prompt",
                ));
            }
            (JudgeTemplate::Custom(p.get_ref().clone()), Vec::new())
        }
        (None, Some(t)) => {
            if t.get_ref() != "llama-guard-s1-s14" {
                return Err(err.at(
                    t.span(),
                    &field("taxonomy"),
                    format!("unknown taxonomy {:?}", t.get_ref()),
                    "use \"llama-guard-s1-s14\", or write your own prompt with {text}",
                ));
            }
            let chosen = list_of(&w.categories);
            let mut cats = Vec::new();
            for (code, span) in &chosen {
                let up = code.trim().to_ascii_uppercase();
                let Some(&(c, n)) = LLAMA_GUARD_CATEGORIES.iter().find(|(c, _)| *c == up) else {
                    return Err(err.at(
                        span.clone(),
                        &field("categories"),
                        format!("{code:?} is not a hazard category"),
                        "use S1 to S14 (see LLAMA_GUARD_CATEGORIES), or leave it out for all",
                    ));
                };
                cats.push((c.to_string(), n.to_string()));
            }
            if chosen.is_empty() {
                cats = LLAMA_GUARD_CATEGORIES
                    .iter()
                    .map(|&(c, n)| (c.to_string(), n.to_string()))
                    .collect();
            }
            (JudgeTemplate::Taxonomy, cats)
        }
        (Some(p), Some(_)) => {
            return Err(err.at(
                p.span(),
                &field("prompt"),
                "both `prompt` and `taxonomy` are set",
                "keep one: the taxonomy's Llama Guard prompt, or your own prompt",
            ));
        }
        (None, None) => {
            return Err(err.at(
                w.kind.span(),
                &field("taxonomy"),
                "a judge needs a taxonomy or a prompt",
                "add taxonomy = \"llama-guard-s1-s14\" or prompt = \"... {text} ...\"",
            ));
        }
    };
    Ok(ModelRail::Judge(JudgeRail {
        name,
        action,
        stage,
        channels,
        backend,
        on_error,
        template,
        categories,
    }))
}

fn list_of(f: &Option<Spanned<Vec<Spanned<String>>>>) -> Vec<(String, Range<usize>)> {
    f.iter()
        .flat_map(|l| l.get_ref())
        .map(|s| (s.get_ref().clone(), s.span()))
        .collect()
}
