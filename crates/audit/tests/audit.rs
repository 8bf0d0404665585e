//! The audit log through its public API: every field round-trips, filters select what they
//! say, summaries count hand-built entries, JSONL parses back to the entries, retention
//! deletes by age, the schema version is enforced, and threads can record at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use seek_audit::{
    now_ms, sha256_hex, AuditConfig, AuditEntry, AuditError, AuditLog, Filter, RailRecord, Summary,
    Totals, SCHEMA_VERSION,
};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;

fn rail(name: &str, stage: &str, action: &str, triggered: bool) -> RailRecord {
    RailRecord {
        rail: name.into(),
        stage: stage.into(),
        action: action.into(),
        triggered,
        detail: if triggered {
            format!("{name} matched")
        } else {
            String::new()
        },
        latency_us: 7,
    }
}

/// An entry with every optional field set and values that would show a swapped column.
fn full_entry() -> AuditEntry {
    let prompt = "My card is 4111 1111 1111 1111, ünïcödé ✓ and a \"quote\"\nnew line";
    let reasoning = "<think>The user shared a card number.</think>";
    let answer = "I cannot store card numbers.";
    AuditEntry {
        id: None,
        time_ms: T0 + 123,
        request_id: "chatcmpl-42".into(),
        tenant: "acme".into(),
        end_user: Some("user-7f3a".into()),
        model: "r1-distill-qwen-1.5b".into(),
        endpoint: "/v1/chat/completions".into(),
        status: 200,
        finish_reason: Some("content_filter".into()),
        policy: Some("strict".into()),
        prompt: Some(prompt.into()),
        prompt_redacted: Some("My card is <CARD_1>, ünïcödé ✓ and a \"quote\"\nnew line".into()),
        prompt_sha256: sha256_hex(prompt),
        reasoning: Some(reasoning.into()),
        reasoning_redacted: Some("<think>The user shared a <CARD_1>.</think>".into()),
        reasoning_sha256: Some(sha256_hex(reasoning)),
        answer: Some(answer.into()),
        answer_redacted: Some(answer.into()),
        answer_sha256: Some(sha256_hex(answer)),
        rails: vec![
            RailRecord {
                rail: "pii".into(),
                stage: "input".into(),
                action: "redact".into(),
                triggered: true,
                detail: "credit_card x1 (Luhn ok)".into(),
                latency_us: 31,
            },
            RailRecord {
                rail: "jailbreak".into(),
                stage: "input".into(),
                action: "flag".into(),
                triggered: false,
                detail: String::new(),
                latency_us: u64::MAX >> 1,
            },
            RailRecord {
                rail: "deny_words".into(),
                stage: "output:reasoning".into(),
                action: "block".into(),
                triggered: true,
                detail: "word \"card\"".into(),
                latency_us: 0,
            },
        ],
        prompt_tokens: 1234,
        completion_tokens: 567,
        reasoning_tokens: 89,
        cached_prompt_tokens: (i64::MAX) as u64,
        cost_usd: 0.000_456_7,
        latency_ms: 812.25,
        error: Some("stream ended by content filter".into()),
    }
}

#[test]
fn every_field_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&dir.path().join("a.db")).unwrap();
    let full = full_entry();
    // The sparse case: every option empty, no rails.
    let sparse = AuditEntry {
        time_ms: -5, // before 1970: still just a number
        prompt_sha256: sha256_hex(""),
        ..Default::default()
    };
    let id_full = log.record(&full).unwrap();
    let id_sparse = log.record(&sparse).unwrap();
    assert!(id_sparse > id_full);

    let got = log.get(id_full).unwrap().expect("recorded entry");
    assert_eq!(
        got,
        AuditEntry {
            id: Some(id_full),
            ..full.clone()
        }
    );
    let got = log.get(id_sparse).unwrap().expect("recorded entry");
    assert_eq!(
        got,
        AuditEntry {
            id: Some(id_sparse),
            ..sparse
        }
    );
    assert_eq!(log.get(id_sparse + 1).unwrap(), None);

    // And after closing and reopening the file.
    drop(log);
    let log = AuditLog::open(&dir.path().join("a.db")).unwrap();
    assert_eq!(
        log.get(id_full).unwrap().unwrap(),
        AuditEntry {
            id: Some(id_full),
            ..full
        }
    );
}

#[test]
fn numbers_sqlite_cannot_hold_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&dir.path().join("a.db")).unwrap();
    let e = AuditEntry {
        completion_tokens: u64::MAX,
        ..Default::default()
    };
    let err = log.record(&e).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::TooLarge {
                field: "completion_tokens",
                ..
            }
        ),
        "{err:?}"
    );
    // Nothing half-written.
    assert!(log.list(&Filter::default()).unwrap().is_empty());
}

/// Eight entries over two tenants, two models and three days, with rails of every action.
fn corpus(log: &AuditLog) -> Vec<AuditEntry> {
    let specs: [(i64, &str, &str, u16, Vec<RailRecord>); 8] = [
        (
            0,
            "acme",
            "m1",
            200,
            vec![rail("pii", "input", "redact", true)],
        ),
        (
            HOUR_MS,
            "acme",
            "m1",
            200,
            vec![
                rail("pii", "input", "redact", false),
                rail("jailbreak", "input", "block", true),
            ],
        ),
        (2 * HOUR_MS, "globex", "m2", 429, vec![]),
        (
            DAY_MS,
            "globex",
            "m1",
            200,
            vec![
                rail("deny_words", "output:reasoning", "block", true),
                // The same rail on two stages of one request counts once.
                rail("deny_words", "output:content", "block", true),
            ],
        ),
        (
            DAY_MS + 1,
            "acme",
            "m2",
            200,
            vec![rail("topic", "input", "flag", true)],
        ),
        (
            DAY_MS + 2,
            "acme",
            "m2",
            500,
            vec![rail("jailbreak", "input", "flag", true)],
        ),
        (
            2 * DAY_MS,
            "globex",
            "m2",
            200,
            vec![
                rail("pii", "output:content", "redact", true),
                rail("jailbreak", "input", "block", true),
            ],
        ),
        (
            2 * DAY_MS + 5,
            "acme",
            "m1",
            200,
            vec![rail("jailbreak", "input", "block", false)],
        ),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (dt, tenant, model, status, rails))| {
            let mut e = AuditEntry {
                time_ms: T0 + dt,
                request_id: format!("req-{i}"),
                tenant: tenant.into(),
                model: model.into(),
                endpoint: "/v1/chat/completions".into(),
                status,
                prompt_sha256: sha256_hex(&i.to_string()),
                rails,
                prompt_tokens: 100 + i as u64,
                completion_tokens: 10 * i as u64,
                reasoning_tokens: i as u64,
                cached_prompt_tokens: 2 * i as u64,
                cost_usd: 0.25 * i as f64,
                latency_ms: 1.5,
                ..Default::default()
            };
            e.id = Some(log.record(&e).unwrap());
            e
        })
        .collect()
}

fn request_ids(entries: &[AuditEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.request_id.as_str()).collect()
}

#[test]
fn filters_select_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&dir.path().join("a.db")).unwrap();
    let all = corpus(&log);
    let list = |f: Filter| {
        let got = log.list(&f).unwrap();
        // Every listed entry is the recorded one, rails included.
        for e in &got {
            assert_eq!(Some(e), all.iter().find(|a| a.id == e.id));
        }
        request_ids(&got).join(" ")
    };
    assert_eq!(
        list(Filter::default()),
        "req-0 req-1 req-2 req-3 req-4 req-5 req-6 req-7"
    );
    // since is inclusive, until exclusive.
    let day1 = Filter {
        since_ms: Some(T0 + DAY_MS),
        until_ms: Some(T0 + 2 * DAY_MS),
        ..Default::default()
    };
    assert_eq!(list(day1.clone()), "req-3 req-4 req-5");
    let tenant = |t: &str| Filter {
        tenant: Some(t.into()),
        ..Default::default()
    };
    assert_eq!(list(tenant("globex")), "req-2 req-3 req-6");
    assert_eq!(list(tenant("nobody")), "");
    assert_eq!(
        list(Filter {
            model: Some("m2".into()),
            ..day1
        }),
        "req-4 req-5"
    );
    assert_eq!(
        list(Filter {
            status: Some(200),
            tenant: Some("acme".into()),
            ..Default::default()
        }),
        "req-0 req-1 req-4 req-7"
    );
    // Blocked: some block rail triggered (req-7's jailbreak did not trigger).
    assert_eq!(
        list(Filter {
            blocked_only: true,
            ..Default::default()
        }),
        "req-1 req-3 req-6"
    );
    // A rail: triggered with any action.
    let by_rail = |r: &str, blocked_only| Filter {
        rail: Some(r.into()),
        blocked_only,
        ..Default::default()
    };
    assert_eq!(list(by_rail("jailbreak", false)), "req-1 req-5 req-6");
    assert_eq!(list(by_rail("pii", false)), "req-0 req-6");
    // Blocked and a rail: blocked by that rail (req-6 was blocked, but not by pii).
    assert_eq!(list(by_rail("jailbreak", true)), "req-1 req-6");
    assert_eq!(list(by_rail("pii", true)), "");
    // A limit keeps the newest, still oldest first.
    assert_eq!(
        list(Filter {
            limit: Some(3),
            ..Default::default()
        }),
        "req-5 req-6 req-7"
    );
    assert_eq!(
        list(Filter {
            limit: Some(2),
            tenant: Some("globex".into()),
            ..Default::default()
        }),
        "req-3 req-6"
    );
    assert_eq!(
        list(Filter {
            limit: Some(0),
            ..Default::default()
        }),
        ""
    );
    assert_eq!(all[3].blocked_by(), vec!["deny_words"]);
    assert!(!all[7].is_blocked());
}

#[test]
fn summary_counts_hand_built_entries() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&dir.path().join("a.db")).unwrap();
    corpus(&log);
    let map = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    // Entries 0..8: tokens 100+i, 10i, i, 2i; cost i/4; acme = 0 1 4 5 7, globex = 2 3 6.
    let totals = |ids: &[u64], blocked, flagged, errors| Totals {
        entries: ids.len() as u64,
        blocked,
        flagged,
        errors,
        prompt_tokens: ids.iter().map(|i| 100 + i).sum(),
        completion_tokens: ids.iter().map(|i| 10 * i).sum(),
        reasoning_tokens: ids.iter().sum(),
        cached_prompt_tokens: ids.iter().map(|i| 2 * i).sum(),
        cost_usd: ids.iter().map(|&i| 0.25 * i as f64).sum(),
    };
    let want = Summary {
        totals: totals(&[0, 1, 2, 3, 4, 5, 6, 7], 3, 2, 2),
        first_ms: Some(T0),
        last_ms: Some(T0 + 2 * DAY_MS + 5),
        by_status: [(200, 6), (429, 1), (500, 1)].into_iter().collect(),
        blocks_by_rail: map(&[("deny_words", 1), ("jailbreak", 2)]),
        blocks_by_tenant: map(&[("acme", 1), ("globex", 2)]),
        flags_by_rail: map(&[("jailbreak", 1), ("topic", 1)]),
        redactions_by_rail: map(&[("pii", 2)]),
        tenants: [
            ("acme".to_string(), totals(&[0, 1, 4, 5, 7], 1, 2, 1)),
            ("globex".to_string(), totals(&[2, 3, 6], 2, 0, 1)),
        ]
        .into_iter()
        .collect(),
    };
    assert_eq!(log.summary(&Filter::default()).unwrap(), want);

    // A filtered summary covers only the selection, and ignores the limit.
    let s = log
        .summary(&Filter {
            tenant: Some("globex".into()),
            limit: Some(1),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(s.totals, totals(&[2, 3, 6], 2, 0, 1));
    assert_eq!(
        s.blocks_by_rail,
        map(&[("deny_words", 1), ("jailbreak", 1)])
    );
    assert_eq!(s.blocks_by_tenant, map(&[("globex", 2)]));
    assert_eq!(s.redactions_by_rail, map(&[("pii", 1)]));
    assert!(s.flags_by_rail.is_empty());

    // Nothing selected: zeros, no times.
    let s = log
        .summary(&Filter {
            tenant: Some("nobody".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(s, Summary::default());
}

#[test]
fn jsonl_lines_parse_back_to_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(&dir.path().join("a.db")).unwrap();
    let mut all = corpus(&log);
    let mut full = full_entry();
    full.id = Some(log.record(&full).unwrap());
    all.insert(1, full); // T0 + 123 ms sorts second.

    let mut out = Vec::new();
    let n = log.export_jsonl(&Filter::default(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(n, all.len());
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), all.len());
    for (line, want) in lines.iter().zip(&all) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        // Times are RFC 3339 UTC strings with milliseconds.
        let time = value["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
        assert!(value.get("time_ms").is_none());
        let got: AuditEntry = serde_json::from_str(line).unwrap();
        assert_eq!(&got, want);
    }
    assert!(
        lines[1].contains("\"time\":\"2026-01-01T00:00:00.123Z\""),
        "{}",
        lines[1]
    );

    // Filters and limits apply.
    let mut out = Vec::new();
    let f = Filter {
        blocked_only: true,
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(log.export_jsonl(&f, &mut out).unwrap(), 2);
    let got: Vec<AuditEntry> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, log.list(&f).unwrap());
    assert_eq!(request_ids(&got), ["req-3", "req-6"]);
}

#[test]
fn purge_deletes_by_age_with_their_rails_and_never_reuses_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let log = AuditLog::open(&path).unwrap();
    let now = now_ms();
    let at = |dt: i64, name: &str| AuditEntry {
        time_ms: now - dt,
        request_id: name.into(),
        rails: vec![
            rail("pii", "input", "redact", true),
            rail("x", "input", "flag", false),
        ],
        ..Default::default()
    };
    let old = log.record(&at(40 * DAY_MS, "old")).unwrap();
    log.record(&at(29 * DAY_MS, "recent")).unwrap();
    let newest = log.record(&at(0, "now")).unwrap();

    assert_eq!(
        log.purge_older_than(Duration::from_secs(30 * 86_400))
            .unwrap(),
        1
    );
    assert_eq!(log.get(old).unwrap(), None);
    assert_eq!(
        request_ids(&log.list(&Filter::default()).unwrap()),
        ["recent", "now"]
    );
    assert_eq!(rail_rows(&path), 4, "the purged entry's rails go with it");
    // Again: nothing more is that old.
    assert_eq!(
        log.purge_older_than(Duration::from_secs(30 * 86_400))
            .unwrap(),
        0
    );

    // Purge everything, then record: the new id is not a purged one.
    assert_eq!(log.purge_before(i64::MAX).unwrap(), 2);
    assert_eq!(rail_rows(&path), 0);
    let next = log.record(&at(0, "after")).unwrap();
    assert!(next > newest, "id {next} reused (newest was {newest})");
    // An age beyond the epoch deletes nothing rather than overflowing.
    assert_eq!(log.purge_older_than(Duration::MAX).unwrap(), 0);
}

#[test]
fn purge_goes_through_more_entries_than_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let config = AuditConfig {
        synchronous: seek_audit::Synchronous::Normal, // Only to make the setup quick.
        ..AuditConfig::default()
    };
    let log = AuditLog::open_with(&path, &config).unwrap();
    let n = 2 * seek_audit::PURGE_BATCH + 7;
    for i in 0..n + 3 {
        log.record(&AuditEntry {
            time_ms: T0 + i as i64,
            rails: vec![rail("pii", "input", "redact", true)],
            ..Default::default()
        })
        .unwrap();
    }
    assert_eq!(log.purge_before(T0 + n as i64).unwrap(), n);
    let left = log.list(&Filter::default()).unwrap();
    let times: Vec<i64> = left.iter().map(|e| e.time_ms - T0).collect();
    assert_eq!(times, [n as i64, n as i64 + 1, n as i64 + 2]);
    assert_eq!(rail_rows(&path), 3);
}

fn rail_rows(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT COUNT(*) FROM rails", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_version_1_database_is_migrated_and_keeps_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let log = AuditLog::open(&path).unwrap();
    let old = AuditEntry {
        end_user: None,
        ..full_entry()
    };
    let id = log.record(&old).unwrap();
    drop(log);
    // What version 1 was: no end_user column.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("ALTER TABLE entries DROP COLUMN end_user; PRAGMA user_version = 1;")
        .unwrap();
    drop(conn);

    let log = AuditLog::open(&path).unwrap();
    assert_eq!(
        log.get(id).unwrap().unwrap(),
        AuditEntry {
            id: Some(id),
            ..old
        }
    );
    let id = log.record(&full_entry()).unwrap();
    assert_eq!(
        log.get(id).unwrap().unwrap().end_user.as_deref(),
        Some("user-7f3a")
    );
    drop(log);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn a_newer_schema_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let log = AuditLog::open(&path).unwrap();
    log.record(&full_entry()).unwrap();
    drop(log);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);

    let err = AuditLog::open(&path).unwrap_err();
    assert!(
        matches!(err, AuditError::NewerSchema { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("newer Seek"), "{msg}");
    // Readers refuse it too.
    assert!(matches!(
        AuditLog::open_existing(&path, &AuditConfig::default()),
        Err(AuditError::NewerSchema { .. })
    ));
}

#[test]
fn other_files_are_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();

    // Another application's SQLite database: not migrated into.
    let other = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE users (name TEXT)")
        .unwrap();
    drop(conn);
    let err = AuditLog::open(&other).unwrap_err();
    assert!(matches!(err, AuditError::Foreign { .. }), "{err:?}");
    assert!(err.to_string().contains("users"), "{err}");
    let conn = rusqlite::Connection::open(&other).unwrap();
    let tables: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1);

    // Not SQLite at all.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
    let err = AuditLog::open(&junk).unwrap_err();
    assert!(matches!(err, AuditError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("junk.db"), "{err}");

    // A reader does not create a missing file.
    let missing = dir.path().join("missing.db");
    let err = AuditLog::open_existing(&missing, &AuditConfig::default()).unwrap_err();
    assert!(matches!(err, AuditError::Missing { .. }), "{err:?}");
    assert!(!missing.exists());
}

#[test]
fn the_database_is_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let _log = AuditLog::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn threads_and_second_handles_record_at_once() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AuditLog>();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let shared = Arc::new(AuditLog::open(&path).unwrap());
    // Six threads on one handle, two on handles of their own (as another process would be):
    // those contend for SQLite's write lock and wait in the busy handler.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = if t < 6 {
                Arc::clone(&shared)
            } else {
                Arc::new(AuditLog::open(&path).unwrap())
            };
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        let e = AuditEntry {
                            time_ms: T0 + i,
                            request_id: format!("t{t}-{i}"),
                            tenant: format!("tenant{t}"),
                            rails: vec![rail("r", "input", "flag", i % 2 == 0)],
                            ..Default::default()
                        };
                        log.record(&e).unwrap()
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut ids: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8 * 40, "ids are unique");

    let all = shared.list(&Filter::default()).unwrap();
    assert_eq!(all.len(), 8 * 40);
    let s = shared.summary(&Filter::default()).unwrap();
    assert_eq!(s.tenants.len(), 8);
    assert!(s
        .tenants
        .values()
        .all(|t| t.entries == 40 && t.flagged == 20));
    for e in &all {
        assert_eq!(e.rails.len(), 1);
        assert_eq!(Some(e), shared.get(e.id.unwrap()).unwrap().as_ref());
    }
}
