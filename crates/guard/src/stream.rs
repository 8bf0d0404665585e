//! The streaming output guard.
//!
//! The guard keeps the text not yet emitted plus a little already-emitted context, and after
//! each chunk rescans that window from where it last emitted. It emits up to a *cut*: at most
//! `len - overlap`, moved back so that it never falls inside any candidate a rule looked at
//! (accepted or rejected) nor inside a pseudonym tag. Because the cut is outside every
//! candidate, the next scan starts in the same state a scan of the whole text would be in at
//! that point, so the stream's findings and redactions equal the whole text's; and because a
//! match shorter than `overlap` that could still grow is held back whole, no emitted byte can
//! later turn out to be part of a block or a redaction.

use std::sync::Arc;
use std::time::Instant;

use crate::normalize::Text;
use crate::policy::{apply_edits, Edit, RuleRail};
use crate::pseudonym::{Pseudonyms, TAG};
use crate::rules::{Fix, Scan};
use crate::{Action, Channel, Finding, RailResult};

/// Already-emitted bytes kept for look-behind (`\b`, spaced letters, emoji joiners).
const CONTEXT: usize = 64;

/// A candidate still open after this many held-back bytes is cut anyway: an endless base64
/// run or an unterminated key block must not hold the stream (and memory) forever.
const MAX_HOLD: usize = 64 * 1024;

/// What one [`OutputGuard::push`] or [`OutputGuard::finish`] lets through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStep {
    /// Text safe to send now (redacted, pseudonyms restored). May be empty.
    pub emit: String,
    /// Set once a block rail or the length limit triggered; nothing more is emitted, and the
    /// response should end with `finish_reason: "content_filter"`.
    pub blocked_by: Option<String>,
}

/// Checks one output channel of one response as it streams.
#[derive(Debug)]
pub struct OutputGuard {
    rails: Arc<Vec<RuleRail>>,
    /// Indexes of the rails that apply to this channel.
    active: Vec<usize>,
    channel: Channel,
    pseudonyms: Pseudonyms,
    overlap: usize,
    max_chars: Option<usize>,
    chars: usize,
    /// `buf[..ctx]` was emitted already (look-behind context); `buf[ctx..]` is pending.
    buf: String,
    ctx: usize,
    /// Stream offset of `buf[0]`.
    base: usize,
    results: Vec<RailResult>,
    limit_hit: bool,
    blocked_by: Option<String>,
    finished: bool,
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl OutputGuard {
    pub(crate) fn new(
        rails: Arc<Vec<RuleRail>>,
        channel: Channel,
        pseudonyms: Pseudonyms,
        overlap: usize,
        max_chars: Option<usize>,
    ) -> Self {
        let active: Vec<usize> = (0..rails.len())
            .filter(|&i| rails[i].channels.contains(&channel))
            .collect();
        let results = active.iter().map(|&i| rails[i].result(&[], 0)).collect();
        OutputGuard {
            rails,
            active,
            channel,
            pseudonyms,
            overlap,
            max_chars,
            chars: 0,
            buf: String::new(),
            ctx: 0,
            base: 0,
            results,
            limit_hit: false,
            blocked_by: None,
            finished: false,
        }
    }

    /// The channel this guard checks.
    pub fn channel(&self) -> Channel {
        self.channel
    }

    fn limit_name(&self) -> &'static str {
        match self.channel {
            Channel::Content => "max_content_chars",
            Channel::Reasoning => "max_reasoning_chars",
        }
    }

    fn stopped(&self) -> StreamStep {
        StreamStep {
            emit: String::new(),
            blocked_by: self.blocked_by.clone(),
        }
    }

    /// Adds a chunk of model output and returns what may be sent now.
    pub fn push(&mut self, chunk: &str) -> StreamStep {
        if self.blocked_by.is_some() || self.finished {
            return self.stopped();
        }
        self.chars += chunk.chars().count();
        if self.max_chars.is_some_and(|max| self.chars > max) {
            self.limit_hit = true;
            self.blocked_by = Some(self.limit_name().to_string());
            return self.stopped();
        }
        self.buf.push_str(chunk);
        self.step(false)
    }

    /// Ends the stream: checks and returns the held-back tail.
    pub fn finish(&mut self) -> StreamStep {
        if self.blocked_by.is_some() || self.finished {
            return self.stopped();
        }
        self.finished = true;
        self.step(true)
    }

    /// One result per rule rail that applies to this channel (findings so far, offsets in the
    /// stream), then the length limit's when one is set.
    pub fn results(&self) -> Vec<RailResult> {
        let mut out = self.results.clone();
        if self.max_chars.is_some() {
            out.push(RailResult {
                rail: self.limit_name().to_string(),
                kind: "limit",
                action: Action::Block,
                triggered: self.limit_hit,
                findings: if self.limit_hit {
                    vec![Finding {
                        what: format!("limit:{}", self.max_chars.unwrap_or(0)),
                        start: 0,
                        end: 0,
                    }]
                } else {
                    Vec::new()
                },
                latency_us: 0,
            });
        }
        out
    }

    fn step(&mut self, finishing: bool) -> StreamStep {
        let len = self.buf.len();
        let limit = if finishing {
            len
        } else {
            floor_char(&self.buf, len.saturating_sub(self.overlap))
        };
        if limit <= self.ctx {
            return StreamStep::default();
        }
        let text = Text::new(&self.buf);
        let mut scans: Vec<Scan> = Vec::with_capacity(self.active.len());
        for (k, &i) in self.active.iter().enumerate() {
            let started = Instant::now();
            let mut scan = Scan::default();
            self.rails[i].rule.scan(&text, self.ctx, &mut scan);
            self.results[k].latency_us += started.elapsed().as_micros() as u64;
            scans.push(scan);
        }
        drop(text);

        // Pseudonym tags the model echoed; a tag is never cut in two either.
        let mut tags: Vec<(usize, usize)> = Vec::new();
        if !self.pseudonyms.is_empty() {
            let mut at = self.ctx;
            while let Some(m) = TAG.find_at(&self.buf, at) {
                tags.push((m.start(), m.end()));
                at = m.end();
            }
        }

        // A block decided by a finding that starts before `limit` is final: everything such a
        // finding depends on is already in the buffer.
        let block = self.active.iter().zip(&scans).find_map(|(&i, s)| {
            let rail = &self.rails[i];
            (rail.action == Action::Block && s.hits.iter().any(|h| h.start < limit))
                .then(|| rail.name.clone())
        });

        let mut cut = limit;
        loop {
            let mut moved = false;
            for &(s, e) in scans.iter().flat_map(|s| &s.busy).chain(&tags) {
                if s < cut && cut < e {
                    cut = s;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        if cut <= self.ctx && len - self.ctx > MAX_HOLD {
            // Documented exception: a candidate longer than MAX_HOLD is cut through.
            cut = limit;
        }

        let record_until = if block.is_some() { limit } else { cut };
        for (k, scan) in scans.iter().enumerate() {
            let r = &mut self.results[k];
            for h in scan.hits.iter().filter(|h| h.start < record_until) {
                r.triggered = true;
                r.findings.push(Finding {
                    what: h.what.clone(),
                    start: self.base + h.start,
                    end: self.base + h.end,
                });
            }
        }
        if let Some(name) = block {
            self.blocked_by = Some(name);
            self.buf.clear();
            return self.stopped();
        }
        if cut <= self.ctx {
            return StreamStep::default();
        }

        let mut edits: Vec<Edit> = Vec::new();
        for (&i, scan) in self.active.iter().zip(&scans) {
            if self.rails[i].action != Action::Redact {
                continue;
            }
            for h in scan.hits.iter().filter(|h| h.start < cut) {
                edits.push(Edit {
                    start: h.start - self.ctx,
                    end: h.end.min(cut) - self.ctx,
                    fix: h.fix.clone(),
                });
            }
        }
        for &(s, e) in tags.iter().filter(|&&(s, _)| s < cut) {
            let Some(value) = self.pseudonyms.value(&self.buf[s..e]) else {
                continue;
            };
            let (s, e) = (s - self.ctx, e - self.ctx);
            // A redaction wins over a restoration it overlaps.
            if !edits.iter().any(|x| s < x.end && x.start < e) {
                edits.push(Edit {
                    start: s,
                    end: e,
                    fix: Fix::Mask(value.to_string()),
                });
            }
        }
        let emit = apply_edits(&self.buf[self.ctx..cut], edits, &mut self.pseudonyms);

        let keep_from = floor_char(&self.buf, cut.saturating_sub(CONTEXT));
        self.buf.drain(..keep_from);
        self.base += keep_from;
        self.ctx = cut - keep_from;
        StreamStep {
            emit,
            blocked_by: None,
        }
    }
}
