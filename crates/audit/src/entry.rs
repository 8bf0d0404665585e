//! The records: one [`AuditEntry`] per request, one [`RailRecord`] per rail verdict, the
//! [`Filter`] that selects entries and the [`Summary`] of a selection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `action` of a rail that stops the request (an input block, or a stream ended with
/// `finish_reason: "content_filter"`).
pub const ACTION_BLOCK: &str = "block";
/// The `action` of a rail that masks what it matched and lets the request go on.
pub const ACTION_REDACT: &str = "redact";
/// The `action` of a monitoring-only rail: it records that it matched and changes nothing.
pub const ACTION_FLAG: &str = "flag";

/// One request as the audit trail keeps it.
///
/// Which texts are kept is the guard policy's choice: the raw `prompt`/`reasoning`/`answer`,
/// only their redacted forms, or neither; the SHA-256 of each raw text is kept either way, so a
/// text produced later can be proven to be (or not be) the one that was sent.
///
/// In JSON (the JSONL export, `seek audit --json`) `time_ms` is written as `time`, an RFC 3339
/// UTC string with milliseconds (`2026-05-01T12:00:00.123Z`); every other field keeps its name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The entry's id, assigned by the database when it is recorded (ignored by
    /// [`crate::AuditLog::record`]); ids only grow and are never reused, even after a purge.
    pub id: Option<i64>,
    /// When the request arrived, in milliseconds since the Unix epoch (UTC).
    #[serde(rename = "time", with = "rfc3339_ms")]
    pub time_ms: i64,
    /// The server's request id (the `id` of the response).
    pub request_id: String,
    /// The tenant the API key belongs to.
    pub tenant: String,
    /// The end user the client named (OpenAI's `user`, Anthropic's `metadata.user_id`), if it
    /// named one.
    #[serde(default)]
    pub end_user: Option<String>,
    /// The served model name the client asked for.
    pub model: String,
    /// The route, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The HTTP status of the response.
    pub status: u16,
    /// `stop`, `length`, `content_filter`, ... (none when the request failed before generating).
    pub finish_reason: Option<String>,
    /// The guard policy applied (its name), if any.
    pub policy: Option<String>,
    /// The prompt as received (the chat messages rendered as text), when the policy keeps it.
    pub prompt: Option<String>,
    /// The prompt with the redacting rails applied, when the policy keeps it.
    pub prompt_redacted: Option<String>,
    /// SHA-256 of the raw prompt ([`crate::sha256_hex`]), always kept.
    pub prompt_sha256: String,
    /// The reasoning (`reasoning_content`), when the policy keeps it.
    pub reasoning: Option<String>,
    /// The reasoning after redaction, when the policy keeps it.
    pub reasoning_redacted: Option<String>,
    /// SHA-256 of the raw reasoning, when there was one.
    pub reasoning_sha256: Option<String>,
    /// The answer (`content`), when the policy keeps it.
    pub answer: Option<String>,
    /// The answer after redaction, when the policy keeps it.
    pub answer_redacted: Option<String>,
    /// SHA-256 of the raw answer, when there was one.
    pub answer_sha256: Option<String>,
    /// Every rail that ran, in the order it ran, triggered or not.
    pub rails: Vec<RailRecord>,
    /// Prompt tokens (`usage.prompt_tokens`).
    pub prompt_tokens: u64,
    /// Completion tokens, reasoning included (`usage.completion_tokens`).
    pub completion_tokens: u64,
    /// The part of `completion_tokens` spent reasoning.
    pub reasoning_tokens: u64,
    /// The part of `prompt_tokens` served from the prefix cache.
    pub cached_prompt_tokens: u64,
    /// What the request cost, in US dollars, at the server's prices.
    pub cost_usd: f64,
    /// Time from arrival to the last byte of the response, in milliseconds.
    pub latency_ms: f64,
    /// The error returned to the client, if the request failed.
    pub error: Option<String>,
}

impl AuditEntry {
    /// The rails that blocked this request (triggered with action `block`), each name once,
    /// in the order they ran.
    pub fn blocked_by(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for r in &self.rails {
            if r.triggered && r.action == ACTION_BLOCK && !names.contains(&r.rail.as_str()) {
                names.push(&r.rail);
            }
        }
        names
    }

    /// Whether any rail blocked this request.
    pub fn is_blocked(&self) -> bool {
        self.rails
            .iter()
            .any(|r| r.triggered && r.action == ACTION_BLOCK)
    }
}

/// One rail's verdict on one stage of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RailRecord {
    /// The rail's name in the policy (e.g. `pii`, `jailbreak`, `deny_words`).
    pub rail: String,
    /// What it looked at: `input`, `output:content` or `output:reasoning`.
    pub stage: String,
    /// What it does when it triggers: [`ACTION_BLOCK`], [`ACTION_REDACT`] or [`ACTION_FLAG`].
    pub action: String,
    /// Whether it matched.
    pub triggered: bool,
    /// What it matched or why (never the matched secret itself: the guard masks it).
    pub detail: String,
    /// Time the rail took, in microseconds (summed over the chunks of a stream).
    pub latency_us: u64,
}

/// Which entries a query covers. Every set field must hold (they are ANDed); the default
/// selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Entries at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Entries strictly before this time (unix ms).
    pub until_ms: Option<i64>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this HTTP status.
    pub status: Option<u16>,
    /// Only entries some rail blocked (with `rail`: that rail blocked).
    pub blocked_only: bool,
    /// Only entries on which this rail triggered (with any action).
    pub rail: Option<String>,
    /// At most this many entries: the newest ones, still returned oldest first (like
    /// `tail -n`). Ignored by [`crate::AuditLog::summary`], which covers the whole selection.
    pub limit: Option<usize>,
}

/// Counts and sums over a set of entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Entries.
    pub entries: u64,
    /// Entries some rail blocked.
    pub blocked: u64,
    /// Entries some flag-only rail triggered on.
    pub flagged: u64,
    /// Entries answered with an HTTP status of 400 or more.
    pub errors: u64,
    /// Sum of prompt tokens.
    pub prompt_tokens: u64,
    /// Sum of completion tokens (reasoning included).
    pub completion_tokens: u64,
    /// Sum of reasoning tokens.
    pub reasoning_tokens: u64,
    /// Sum of prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: u64,
    /// Sum of costs, in US dollars.
    pub cost_usd: f64,
}

/// What [`crate::AuditLog::summary`] reports about the entries a [`Filter`] selects.
///
/// Every "by rail" count is a number of entries (a rail that triggered on both the prompt and
/// the reasoning of one request counts once).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Totals over every selected entry.
    pub totals: Totals,
    /// Time of the oldest selected entry (unix ms), if any.
    pub first_ms: Option<i64>,
    /// Time of the newest selected entry (unix ms), if any.
    pub last_ms: Option<i64>,
    /// Entries per HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Entries each rail blocked.
    pub blocks_by_rail: BTreeMap<String, u64>,
    /// Blocked entries per tenant (tenants with none are left out).
    pub blocks_by_tenant: BTreeMap<String, u64>,
    /// Entries each flag-only rail triggered on.
    pub flags_by_rail: BTreeMap<String, u64>,
    /// Entries each redacting rail triggered on.
    pub redactions_by_rail: BTreeMap<String, u64>,
    /// Totals per tenant.
    pub tenants: BTreeMap<String, Totals>,
}

/// Serde for unix milliseconds as an RFC 3339 UTC string with milliseconds.
pub(crate) mod rfc3339_ms {
    use chrono::DateTime;
    use serde::{de, ser, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        let text = super::format_rfc3339_ms(*ms).ok_or_else(|| {
            ser::Error::custom(format!(
                "time {ms} ms is outside the dates RFC 3339 can write"
            ))
        })?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                de::Error::custom(format!(
                    "time {text:?} is not RFC 3339 (like 2026-05-01T12:00:00.123Z): {e}"
                ))
            })
    }
}

/// `ms` (unix milliseconds) as RFC 3339 UTC with milliseconds, e.g. `2026-05-01T12:00:00.123Z`;
/// `None` beyond the years chrono can represent.
pub fn format_rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}
