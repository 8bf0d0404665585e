//! `kill -9` while recording loses no committed entry and leaves no corruption.
//!
//! The test binary runs itself as the writer: with `SEEK_AUDIT_CRASH_DB` set, the
//! `crash_writer` test records entries in a loop and prints `committed INDEX ID` after each
//! `record` returns. The parent kills it with SIGKILL while it writes, reads every line it
//! printed, reopens the database and checks that each printed entry is there, intact, and
//! that `PRAGMA integrity_check` says ok. Several rounds append to one file, so each open
//! also recovers the WAL the previous victim left.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use seek_audit::{sha256_hex, AuditConfig, AuditEntry, AuditLog, Filter, RailRecord, Synchronous};

const DB_ENV: &str = "SEEK_AUDIT_CRASH_DB";
const START_ENV: &str = "SEEK_AUDIT_CRASH_START";
const SYNC_ENV: &str = "SEEK_AUDIT_CRASH_SYNC";

/// Entry number `i`, the same in the writer and the checker. Large enough (about 40 KB over
/// several pages and four rail rows) that a commit takes long enough to be interrupted.
fn entry(i: u64) -> AuditEntry {
    let prompt = format!("prompt {i} ").repeat(1500);
    let reasoning = format!("<think>step {i}</think>").repeat(800);
    AuditEntry {
        time_ms: 1_767_225_600_000 + i as i64,
        request_id: format!("crash-{i}"),
        tenant: format!("tenant{}", i % 3),
        model: "m".into(),
        endpoint: "/v1/chat/completions".into(),
        status: 200,
        prompt_sha256: sha256_hex(&prompt),
        prompt: Some(prompt),
        reasoning_sha256: Some(sha256_hex(&reasoning)),
        reasoning: Some(reasoning),
        rails: (0..4)
            .map(|r| RailRecord {
                rail: format!("rail{r}"),
                stage: "input".into(),
                action: "flag".into(),
                triggered: (i + r) & 1 == 0,
                detail: format!("{i}/{r}"),
                latency_us: i + r,
            })
            .collect(),
        prompt_tokens: i,
        completion_tokens: 2 * i,
        cost_usd: i as f64 / 8.0,
        ..Default::default()
    }
}

fn sync_mode(name: &str) -> Synchronous {
    match name {
        "normal" => Synchronous::Normal,
        "full" => Synchronous::Full,
        other => panic!("{SYNC_ENV}={other}: expected normal or full"),
    }
}

/// The writer. A no-op in an ordinary test run (the variable is unset).
#[test]
fn crash_writer() {
    let Ok(db) = std::env::var(DB_ENV) else {
        return;
    };
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let config = AuditConfig {
        synchronous: sync_mode(&std::env::var(SYNC_ENV).unwrap()),
        ..AuditConfig::default()
    };
    let log = AuditLog::open_with(Path::new(&db), &config).unwrap();
    let mut out = std::io::stdout().lock();
    for i in start.. {
        let id = log.record(&entry(i)).unwrap();
        // Printed only after the commit returned: every printed id must survive.
        writeln!(out, "committed {i} {id}").unwrap();
        out.flush().unwrap();
    }
}

/// One victim: starts a writer at `start`, kills it after `kill_after` printed commits,
/// and returns every (index, id) it printed.
fn run_victim(db: &Path, sync: &str, start: u64, kill_after: usize) -> Vec<(u64, i64)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(DB_ENV, db)
        .env(START_ENV, start.to_string())
        .env(SYNC_ENV, sync)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the test binary runs itself");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = Vec::new();
    let mut lines = stdout.lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("committed ") {
            let (i, id) = rest.split_once(' ').unwrap();
            printed.push((i.parse().unwrap(), id.parse().unwrap()));
            if printed.len() == kill_after {
                // SIGKILL on Unix: no destructor, no atexit, mid-loop.
                child.kill().unwrap();
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    // What it printed between our kill and its death is still in the pipe.
    for line in lines {
        if let Some(rest) = line.unwrap().strip_prefix("committed ") {
            let (i, id) = rest.split_once(' ').unwrap();
            printed.push((i.parse().unwrap(), id.parse().unwrap()));
        }
    }
    assert!(
        printed.len() >= kill_after,
        "the writer stopped early ({status}) after {} commits",
        printed.len()
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the writer was not killed but ended: {status}"
        );
    }
    printed
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn crash_rounds(sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let mut next = 0u64;
    let mut all_printed = Vec::new();
    for kill_after in [25, 1, 60, 7, 40] {
        let printed = run_victim(&db, sync, next, kill_after);
        // Reopening recovers the WAL the victim left (with its partial last transaction, if
        // the kill landed inside one).
        let log = AuditLog::open(&db).unwrap();
        for &(i, id) in &printed {
            let got = log.get(id).unwrap().unwrap_or_else(|| {
                panic!("{sync}: entry {i} (id {id}) was printed as committed but is gone")
            });
            assert_eq!(
                got,
                AuditEntry {
                    id: Some(id),
                    ..entry(i)
                },
                "{sync}: entry {i}"
            );
        }
        // Anything beyond what was printed is whole entries in order (a commit that finished
        // before the print), never a fragment.
        let stored = log.list(&Filter::default()).unwrap();
        let last = printed.last().unwrap().0;
        let extra: Vec<_> = stored
            .iter()
            .filter(|e| e.time_ms > entry(last).time_ms)
            .collect();
        assert!(
            extra.len() <= 1,
            "{sync}: {} unprinted entries",
            extra.len()
        );
        for e in extra {
            let i = last + 1;
            assert_eq!(
                *e,
                AuditEntry {
                    id: e.id,
                    ..entry(i)
                }
            );
            next = i;
        }
        next = next.max(last) + 1;
        drop(log);
        assert_eq!(integrity(&db), "ok", "{sync}: after killing the writer");
        all_printed.extend(printed);
    }
    // Everything from every round is still there at the end.
    let log = AuditLog::open(&db).unwrap();
    for (i, id) in all_printed {
        assert_eq!(
            log.get(id).unwrap().map(|e| e.request_id),
            Some(format!("crash-{i}"))
        );
    }
}

#[test]
fn kill_9_loses_no_committed_entry_with_synchronous_normal() {
    // NORMAL is the weaker setting: if it keeps every entry, FULL does too for a killed
    // process (FULL only adds an fsync).
    crash_rounds("normal");
}

#[test]
fn kill_9_loses_no_committed_entry_with_synchronous_full() {
    crash_rounds("full");
}
