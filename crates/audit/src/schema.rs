//! The schema, its version (`PRAGMA user_version`) and the migrations that bring an older
//! database up to it.
//!
//! To change the schema, append a migration to [`MIGRATIONS`]; never edit one that shipped.
//! [`SCHEMA_VERSION`] follows from the list's length.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::AuditError;

/// The schema version this build writes and reads (`PRAGMA user_version` of the database).
/// A database with a higher one is refused ([`AuditError::NewerSchema`]).
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// `PRAGMA application_id`: "SEEK" in ASCII, so `file(1)` and this crate can tell an audit
/// trail from another application's SQLite file.
const APPLICATION_ID: i32 = 0x5345_454B;

/// Migration `i` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: entries and their rail verdicts.
    "
    -- AUTOINCREMENT: ids only grow, even after a purge deletes the newest entries, so an id
    -- in an exported file or a ticket never comes to name another request.
    CREATE TABLE entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms INTEGER NOT NULL,            -- unix milliseconds, UTC
        request_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        status INTEGER NOT NULL,
        finish_reason TEXT,
        policy TEXT,
        prompt TEXT,
        prompt_redacted TEXT,
        prompt_sha256 TEXT NOT NULL,
        reasoning TEXT,
        reasoning_redacted TEXT,
        reasoning_sha256 TEXT,
        answer TEXT,
        answer_redacted TEXT,
        answer_sha256 TEXT,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cached_prompt_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        latency_ms REAL NOT NULL,
        error TEXT
    );
    CREATE INDEX entries_time ON entries (time_ms);
    CREATE INDEX entries_tenant_time ON entries (tenant, time_ms);

    -- One row per rail that ran on a request, in the order it ran (seq).
    CREATE TABLE rails (
        entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        rail TEXT NOT NULL,
        stage TEXT NOT NULL,                 -- input | output:content | output:reasoning
        action TEXT NOT NULL,                -- block | redact | flag
        triggered INTEGER NOT NULL,          -- 0 or 1
        detail TEXT NOT NULL,
        latency_us INTEGER NOT NULL,
        PRIMARY KEY (entry_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX rails_rail_triggered ON rails (rail, triggered);
    ",
    // 2: the end user a client names (OpenAI's `user`, Anthropic's `metadata.user_id`).
    "
    ALTER TABLE entries ADD COLUMN end_user TEXT;
    ",
];

/// The version of the database, after refusing one that is newer than this build or that
/// belongs to another application. Takes no write lock.
pub(crate) fn check(conn: &Connection, path: &Path) -> Result<i32, AuditError> {
    let open_err = |source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    };
    // The first read of the header: "file is not a database" surfaces here.
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(open_err)?;
    if app != 0 && app != APPLICATION_ID {
        return Err(AuditError::Foreign {
            path: path.to_path_buf(),
            why: format!("its application_id is {app:#x}, not Seek's {APPLICATION_ID:#x}"),
        });
    }
    if version < 0 {
        return Err(AuditError::Foreign {
            path: path.to_path_buf(),
            why: format!("its user_version is {version}"),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(AuditError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 0 {
        let tables = foreign_tables(conn).map_err(open_err)?;
        if !tables.is_empty() {
            return Err(AuditError::Foreign {
                path: path.to_path_buf(),
                why: format!(
                    "it has tables ({}) but no Seek schema version",
                    tables.join(", ")
                ),
            });
        }
    }
    Ok(version)
}

/// Brings the database to [`SCHEMA_VERSION`] in one transaction. Another process may be
/// doing the same at the same moment (two servers started on one file): the version is read
/// again under the write lock, and only the missing steps run.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), AuditError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version = check(&tx, path)?;
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.commit()?;
    Ok(())
}

fn foreign_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )?;
    let names = st.query_map([], |r| r.get(0))?;
    names.collect()
}
