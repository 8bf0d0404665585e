//! `seek audit`: read the audit trail `seek serve --audit-db PATH` writes.
//!
//! ```text
//! seek audit list --since 1h --blocked
//! seek audit show 42
//! seek audit summary --since 7d --json
//! seek audit export --tenant acme --out acme.jsonl
//! seek audit purge --older-than 30d
//! ```
//!
//! The database is `--db PATH`, else `SEEK_AUDIT_DB`, else `seek-audit.db`; it is read while
//! a server writes it (WAL). Times print in UTC.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use seek_audit::{
    format_rfc3339_ms, now_ms, AuditConfig, AuditEntry, AuditError, AuditLog, Filter, Summary,
    Totals,
};

/// `seek audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The audit database, as written by `seek serve --audit-db PATH`.
    #[arg(
        long,
        global = true,
        env = "SEEK_AUDIT_DB",
        default_value = "seek-audit.db",
        value_name = "PATH"
    )]
    db: PathBuf,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// One line per entry, oldest first: time, id, tenant, model, status, finish reason,
    /// the rails that blocked it, tokens and cost.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only the newest N entries (still listed oldest first).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// A JSON array of entries instead (the fields of `export`).
        #[arg(long)]
        json: bool,
    },
    /// Everything recorded about one entry, its rails as a table.
    Show {
        /// The entry's id (the second column of `list`).
        id: i64,
        /// JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Entries as JSON Lines, one object per entry, oldest first, times in RFC 3339 UTC.
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only the newest N entries.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Write to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Totals, counts by status, blocks by rail and by tenant, flags and redactions by rail,
    /// tokens and cost per tenant.
    Summary {
        #[command(flatten)]
        filter: FilterArgs,
        /// JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Delete entries older than an age (retention); prints how many went.
    Purge {
        /// The age: a number and a unit (s, m, h, d, w), e.g. `30d`.
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Duration,
    },
}

/// The filters shared by list, export and summary.
#[derive(Args, Debug)]
struct FilterArgs {
    /// Entries at or after WHEN: an age (`90m`, `1h`, `2d`, `1w`: that long ago), an RFC 3339
    /// time (`2026-05-01T09:30:00Z`) or a date (`2026-05-01`, midnight UTC).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    since: Option<When>,
    /// Entries before WHEN (same forms as --since).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    until: Option<When>,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this model (the served name).
    #[arg(long)]
    model: Option<String>,
    /// Only this HTTP status.
    #[arg(long)]
    status: Option<u16>,
    /// Only entries a rail blocked (with --rail: that rail).
    #[arg(long)]
    blocked: bool,
    /// Only entries on which this rail triggered.
    #[arg(long, value_name = "RAIL")]
    rail: Option<String>,
}

impl FilterArgs {
    fn to_filter(&self, limit: Option<usize>) -> Filter {
        let now = now_ms();
        Filter {
            since_ms: self.since.map(|w| w.resolve(now)),
            until_ms: self.until.map(|w| w.resolve(now)),
            tenant: self.tenant.clone(),
            model: self.model.clone(),
            status: self.status,
            blocked_only: self.blocked,
            rail: self.rail.clone(),
            limit,
        }
    }
}

/// A point in time as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// That long before now.
    Ago(Duration),
    /// Unix milliseconds.
    At(i64),
}

impl When {
    fn resolve(self, now_ms: i64) -> i64 {
        match self {
            When::Ago(d) => now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            When::At(ms) => ms,
        }
    }
}

/// `30s`, `90m`, `1h`, `2d`, `1w`.
fn parse_age(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{s:?} is not an age: use a number and a unit (s, m, h, d, w), like 90m, 1h, 2d or 1w"
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long an age"))
}

fn parse_when(s: &str) -> Result<When, String> {
    if let Ok(age) = parse_age(s) {
        return Ok(When::Ago(age));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(When::At(t.timestamp_millis()));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let midnight = d.and_hms_opt(0, 0, 0).expect("midnight exists");
        return Ok(When::At(midnight.and_utc().timestamp_millis()));
    }
    Err(format!(
        "{s:?} is not a time: use an age (90m, 1h, 2d, 1w), an RFC 3339 time \
         (2026-05-01T09:30:00Z) or a date (2026-05-01)"
    ))
}

/// Runs `seek audit ...`.
pub fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match run(args, &mut out).and_then(|()| Ok(out.flush()?)) {
        // `seek audit list | head` closed the pipe: not an error.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = c
            .downcast_ref::<std::io::Error>()
            .or(match c.downcast_ref::<AuditError>() {
                Some(AuditError::Write(io)) => Some(io),
                _ => None,
            });
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(args: AuditArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let log = open(&args.db)?;
    let db = args.db.display();
    match args.command {
        AuditCommand::List {
            filter,
            limit,
            json,
        } => {
            let entries = log.list(&filter.to_filter(limit))?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &entries)?;
                writeln!(out)?;
            } else {
                out.write_all(list_table(&entries).as_bytes())?;
            }
        }
        AuditCommand::Show { id, json } => {
            let Some(e) = log.get(id)? else {
                bail!("no audit entry with id {id} in {db} (`seek audit list` shows the ids)");
            };
            if json {
                serde_json::to_writer_pretty(&mut *out, &e)?;
                writeln!(out)?;
            } else {
                out.write_all(show_text(&e).as_bytes())?;
            }
        }
        AuditCommand::Export {
            filter,
            limit,
            out: file,
        } => {
            let f = filter.to_filter(limit);
            match file {
                Some(file) => {
                    let mut w = BufWriter::new(
                        File::create(&file)
                            .with_context(|| format!("cannot create {}", file.display()))?,
                    );
                    let n = log.export_jsonl(&f, &mut w)?;
                    eprintln!("exported {n} entries from {db} to {}", file.display());
                }
                None => {
                    log.export_jsonl(&f, out)?;
                }
            }
        }
        AuditCommand::Summary { filter, json } => {
            let s = log.summary(&filter.to_filter(None))?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &s)?;
                writeln!(out)?;
            } else {
                out.write_all(summary_text(&s).as_bytes())?;
            }
        }
        AuditCommand::Purge { older_than } => {
            let cutoff =
                now_ms().saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
            let n = log.purge_before(cutoff)?;
            writeln!(
                out,
                "purged {n} entries older than {} (before {}) from {db}",
                humantime(older_than),
                time_s(cutoff)
            )?;
        }
    }
    Ok(())
}

fn open(db: &Path) -> anyhow::Result<AuditLog> {
    match AuditLog::open_existing(db, &AuditConfig::default()) {
        Ok(log) => Ok(log),
        Err(AuditError::Missing { .. }) => bail!(
            "no audit database at {}: a server writes one when started with \
             `seek serve --audit-db {}`; read another with --db PATH or SEEK_AUDIT_DB",
            db.display(),
            db.display()
        ),
        Err(e) => Err(e.into()),
    }
}

/// RFC 3339 UTC to the second (what a listing needs).
fn time_s(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// `text` safe to print on a terminal: a recorded prompt is whatever a client sent, and an
/// escape sequence in it must not reach the operator's terminal, nor should invisible
/// characters hide what an auditor is reading. Control characters, zero-width and bidi
/// controls and tag characters are written as Rust escapes (`\u{1b}`); line breaks and tabs
/// are kept only with `keep_lines` (a table cell stays on one line).
fn printable(text: &str, keep_lines: bool) -> String {
    let invisible = |c: char| {
        matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}'
            | '\u{feff}' | '\u{e0000}'..='\u{e007f}')
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (c.is_control() && !(keep_lines && (c == '\n' || c == '\t'))) || invisible(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, secs) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= secs && s.is_multiple_of(secs) {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

fn usd(x: f64) -> String {
    format!("${x:.6}")
}

/// Columns padded to their widest cell; the last one is not padded.
fn table(rows: &[Vec<String>], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| printable(s, false).chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for row in rows {
        s.push_str(indent);
        for (c, cell) in row.iter().enumerate() {
            let cell = &printable(cell, false);
            if c + 1 == row.len() {
                s.push_str(cell);
            } else {
                let pad = widths[c] - cell.chars().count();
                s.push_str(cell);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.push('\n');
    }
    s
}

fn list_table(entries: &[AuditEntry]) -> String {
    let mut rows = vec![[
        "TIME (UTC)",
        "ID",
        "TENANT",
        "MODEL",
        "STATUS",
        "FINISH",
        "BLOCKED-BY",
        "TOKENS IN/OUT",
        "COST",
    ]
    .map(String::from)
    .to_vec()];
    for e in entries {
        let blocked = e.blocked_by().join(",");
        rows.push(vec![
            time_s(e.time_ms),
            e.id.map_or_else(String::new, |id| id.to_string()),
            e.tenant.clone(),
            e.model.clone(),
            e.status.to_string(),
            e.finish_reason.clone().unwrap_or_else(|| "-".into()),
            if blocked.is_empty() {
                "-".into()
            } else {
                blocked
            },
            format!("{}/{}", e.prompt_tokens, e.completion_tokens),
            usd(e.cost_usd),
        ]);
    }
    let mut s = table(&rows, "");
    let _ = writeln!(s, "{} entries", entries.len());
    s
}

fn show_text(e: &AuditEntry) -> String {
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let blocked = e.blocked_by().join(", ");
    let fields = [
        (
            "time",
            format_rfc3339_ms(e.time_ms).unwrap_or_else(|| format!("{} ms", e.time_ms)),
        ),
        ("request id", e.request_id.clone()),
        ("tenant", e.tenant.clone()),
        ("end user", opt(&e.end_user)),
        ("model", e.model.clone()),
        ("endpoint", e.endpoint.clone()),
        ("status", e.status.to_string()),
        ("finish", opt(&e.finish_reason)),
        ("policy", opt(&e.policy)),
        (
            "blocked by",
            if blocked.is_empty() {
                "-".into()
            } else {
                blocked
            },
        ),
        (
            "tokens",
            format!(
                "prompt {} (cached {}), completion {} (reasoning {})",
                e.prompt_tokens, e.cached_prompt_tokens, e.completion_tokens, e.reasoning_tokens
            ),
        ),
        ("cost", usd(e.cost_usd)),
        ("latency", format!("{} ms", e.latency_ms)),
        ("error", opt(&e.error)),
    ];
    let mut s = format!("entry {}\n", e.id.unwrap_or_default());
    let rows: Vec<Vec<String>> = fields
        .into_iter()
        .map(|(k, v)| vec![k.to_string(), v])
        .collect();
    s.push_str(&table(&rows, "  "));

    s.push_str("rails\n");
    if e.rails.is_empty() {
        s.push_str("  (none ran)\n");
    } else {
        let mut rows = vec![
            ["RAIL", "STAGE", "ACTION", "TRIGGERED", "LATENCY", "DETAIL"]
                .map(String::from)
                .to_vec(),
        ];
        for r in &e.rails {
            rows.push(vec![
                r.rail.clone(),
                r.stage.clone(),
                r.action.clone(),
                if r.triggered { "yes" } else { "no" }.into(),
                format!("{} µs", r.latency_us),
                r.detail.clone(),
            ]);
        }
        s.push_str(&table(&rows, "  "));
    }

    let texts = [
        (
            "prompt",
            &e.prompt,
            &e.prompt_redacted,
            Some(&e.prompt_sha256),
        ),
        (
            "reasoning",
            &e.reasoning,
            &e.reasoning_redacted,
            e.reasoning_sha256.as_ref(),
        ),
        (
            "answer",
            &e.answer,
            &e.answer_redacted,
            e.answer_sha256.as_ref(),
        ),
    ];
    for (name, raw, redacted, sha) in texts {
        let _ = writeln!(s, "{name} (sha256 {})", sha.map_or("-", String::as_str));
        if raw.is_none() && redacted.is_none() {
            s.push_str("  (not kept by the policy)\n");
        }
        for (label, text) in [("as sent", raw), ("redacted", redacted)] {
            if let Some(text) = text {
                let _ = writeln!(s, "  {label}:");
                for line in printable(text, true).lines() {
                    let _ = writeln!(s, "    {line}");
                }
            }
        }
    }
    s
}

/// `(name, count)` pairs, most first.
fn ranked(map: &std::collections::BTreeMap<String, u64>) -> Vec<Vec<String>> {
    let mut pairs: Vec<(&String, &u64)> = map.iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    pairs
        .into_iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect()
}

fn summary_text(s: &Summary) -> String {
    let mut o = String::new();
    let t = &s.totals;
    let span = match (s.first_ms, s.last_ms) {
        (Some(a), Some(b)) => format!(" from {} to {}", time_s(a), time_s(b)),
        _ => String::new(),
    };
    let _ = writeln!(o, "{} entries{span}", t.entries);
    let _ = writeln!(
        o,
        "blocked {}, flagged {}, errors (status >= 400) {}",
        t.blocked, t.flagged, t.errors
    );
    let _ = writeln!(
        o,
        "tokens: prompt {} (cached {}), completion {} (reasoning {})",
        t.prompt_tokens, t.cached_prompt_tokens, t.completion_tokens, t.reasoning_tokens
    );
    let _ = writeln!(o, "cost: {}", usd(t.cost_usd));

    let statuses: Vec<Vec<String>> = s
        .by_status
        .iter()
        .map(|(k, v)| vec![k.to_string(), v.to_string()])
        .collect();
    for (title, rows) in [
        ("by status", statuses),
        ("blocks by rail", ranked(&s.blocks_by_rail)),
        ("blocks by tenant", ranked(&s.blocks_by_tenant)),
        ("flags by rail", ranked(&s.flags_by_rail)),
        ("redactions by rail", ranked(&s.redactions_by_rail)),
    ] {
        let _ = writeln!(o, "\n{title}");
        if rows.is_empty() {
            o.push_str("  (none)\n");
        } else {
            o.push_str(&table(&rows, "  "));
        }
    }

    let _ = writeln!(o, "\nper tenant");
    let mut rows = vec![[
        "TENANT",
        "ENTRIES",
        "BLOCKED",
        "FLAGGED",
        "ERRORS",
        "PROMPT",
        "COMPLETION",
        "REASONING",
        "COST",
    ]
    .map(String::from)
    .to_vec()];
    let tenant_row = |name: &str, t: &Totals| {
        vec![
            name.to_string(),
            t.entries.to_string(),
            t.blocked.to_string(),
            t.flagged.to_string(),
            t.errors.to_string(),
            t.prompt_tokens.to_string(),
            t.completion_tokens.to_string(),
            t.reasoning_tokens.to_string(),
            usd(t.cost_usd),
        ]
    };
    for (name, t) in &s.tenants {
        rows.push(tenant_row(name, t));
    }
    o.push_str(&table(&rows, "  "));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_times_parse() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        for bad in ["", "30", "d", "1.5h", "-1h", "3y", "1 h"] {
            let err = parse_age(bad).unwrap_err();
            assert!(err.contains("2d"), "{bad:?}: {err}");
        }
        assert!(parse_age("99999999999999999w")
            .unwrap_err()
            .contains("too long"));

        assert_eq!(parse_when("1h"), Ok(When::Ago(Duration::from_secs(3600))));
        assert_eq!(When::Ago(Duration::from_secs(1)).resolve(10_000), 9_000);
        assert_eq!(
            parse_when("2026-01-01T00:00:00.5Z"),
            Ok(When::At(1_767_225_600_500))
        );
        assert_eq!(
            parse_when("2026-01-01T01:00:00+01:00"),
            Ok(When::At(1_767_225_600_000))
        );
        assert_eq!(parse_when("2026-01-01"), Ok(When::At(1_767_225_600_000)));
        assert!(parse_when("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn ages_print_in_their_largest_whole_unit() {
        assert_eq!(humantime(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(humantime(Duration::from_secs(14 * 86_400)), "2w");
        assert_eq!(humantime(Duration::from_secs(5400)), "90m");
        assert_eq!(humantime(Duration::from_secs(61)), "61s");
        assert_eq!(humantime(Duration::ZERO), "0s");
    }

    #[test]
    fn terminal_escapes_in_recorded_text_are_not_printed() {
        let evil = "hi\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nnext\tline\u{9b}";
        assert_eq!(
            printable(evil, true),
            "hi\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\r\nnext\tline\\u{9b}"
        );
        assert_eq!(printable("a\nb\tc", false), "a\\nb\\tc");
        assert_eq!(
            printable("ab\u{202e}dc\u{200b}\u{e0041}é", false),
            "ab\\u{202e}dc\\u{200b}\\u{e0041}é"
        );
        let e = AuditEntry {
            tenant: "t\u{1b}[31m".into(),
            prompt: Some(evil.into()),
            ..Default::default()
        };
        for text in [show_text(&e), list_table(std::slice::from_ref(&e))] {
            assert!(
                !text
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t'),
                "{text:?}"
            );
        }
    }

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let rows = vec![
            vec!["a".to_string(), "bb".into(), "c".into()],
            vec!["aaa".to_string(), "b".into(), "last column unpadded".into()],
        ];
        assert_eq!(
            table(&rows, "> "),
            "> a    bb  c\n> aaa  b   last column unpadded\n"
        );
    }
}
