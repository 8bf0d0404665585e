//! Seek's audit trail: every request, each guard rail's verdict and latency, tokens and cost,
//! in one SQLite database (WAL, SQLite compiled in), with filters, summaries, JSONL export and
//! retention by age.
//!
//! Design decision: **an entry is one transaction, and `record` returns only after it is
//! committed**, so "recorded" means "in the database": a `kill -9` of the server at any moment
//! loses no entry `record` returned for. In WAL mode a commit appends the transaction's pages
//! to the `-wal` file with `write()` before returning; once there they belong to the kernel,
//! which outlives the killed process, and the next open replays them. That holds with
//! `synchronous=NORMAL`. `synchronous=FULL` (the default here, [`Synchronous::Full`])
//! additionally `fsync`s the WAL at every commit, so a committed entry also survives a power
//! cut or a kernel crash, which NORMAL does not promise (it may roll back the last
//! transactions, never corrupt). An audit trail is where that matters, and one fsync per
//! request is small next to generating an answer; [`Synchronous::Normal`] is there for
//! deployments that only need to survive the process dying. Either way the database is never
//! left corrupt.
//!
//! [`AuditLog`] is `Send + Sync` (a connection behind a mutex): share it behind an `Arc`.
//! `record` blocks for a commit (with FULL, an fsync: about a millisecond on a typical disk),
//! so call it from a blocking thread (`tokio::task::spawn_blocking`), not on an async executor.
//! Readers (`seek audit` in another process) open their own [`AuditLog`]; WAL lets them read
//! while the server writes.
//!
//! ```
//! # fn main() -> Result<(), seek_audit::AuditError> {
//! use seek_audit::{sha256_hex, AuditEntry, AuditLog, Filter, RailRecord};
//! # let dir = tempfile::tempdir().unwrap();
//! let log = AuditLog::open(&dir.path().join("audit.db"))?;
//! let prompt = "What is my neighbour's email?";
//! let id = log.record(&AuditEntry {
//!     time_ms: 1_767_225_600_000,
//!     tenant: "acme".into(),
//!     model: "r1-distill".into(),
//!     status: 200,
//!     prompt_sha256: sha256_hex(prompt),
//!     prompt_redacted: Some(prompt.into()),
//!     rails: vec![RailRecord {
//!         rail: "pii".into(),
//!         stage: "output:content".into(),
//!         action: "redact".into(),
//!         triggered: true,
//!         detail: "email x1".into(),
//!         latency_us: 41,
//!     }],
//!     ..Default::default()
//! })?;
//! assert_eq!(log.get(id)?.unwrap().tenant, "acme");
//! assert_eq!(log.summary(&Filter::default())?.redactions_by_rail["pii"], 1);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod entry;
mod schema;
mod sha256;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, Row};

pub use entry::{
    format_rfc3339_ms, AuditEntry, Filter, RailRecord, Summary, Totals, ACTION_BLOCK, ACTION_FLAG,
    ACTION_REDACT,
};
pub use schema::SCHEMA_VERSION;
pub use sha256::{sha256, sha256_hex};

/// Everything that can go wrong with the audit database.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// [`AuditLog::open_existing`] was given a path with no file.
    #[error("audit database {} does not exist", path.display())]
    Missing {
        /// The path that was looked at.
        path: PathBuf,
    },
    /// The file could not be opened or set up as a SQLite database.
    #[error("audit database {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said (for instance "file is not a database").
        source: rusqlite::Error,
    },
    /// The database was written by a newer Seek, with a schema this build does not know.
    #[error(
        "audit database {} has schema version {found}, newer than version {supported} that this \
         build of Seek reads; use a newer Seek to read it, or point this one at another file",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its `PRAGMA user_version`.
        found: i32,
        /// [`SCHEMA_VERSION`].
        supported: i32,
    },
    /// The file is a SQLite database of something else.
    #[error(
        "{} is a SQLite database but not a Seek audit trail ({why}); give the audit log a \
         file of its own",
        path.display()
    )]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// What gave it away.
        why: String,
    },
    /// SQLite could not switch the database to write-ahead logging.
    #[error(
        "audit database {}: journal mode is {mode:?}, not \"wal\"; the audit trail needs \
         write-ahead logging, which needs a local file system (not NFS or SMB) and a file (not \
         \":memory:\")",
        path.display()
    )]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// A number in an entry does not fit SQLite's signed 64-bit integers.
    #[error("audit entry field {field} = {value} is larger than {max}, the most SQLite stores", max = i64::MAX)]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A query or a write failed.
    #[error("audit database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An entry could not be written as JSON.
    #[error("audit entry {id:?} as JSON: {source}")]
    Json {
        /// The entry's id.
        id: Option<i64>,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// The export's destination refused the bytes.
    #[error("writing the audit export: {0}")]
    Write(#[source] std::io::Error),
}

/// How hard a commit works to reach the disk (SQLite's `PRAGMA synchronous` in WAL mode).
/// Both keep every committed entry through a `kill -9`; see the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Commits are written to the WAL but not fsynced: survives the process dying, may lose
    /// the last entries on a power cut or OS crash.
    Normal,
    /// Every commit fsyncs the WAL: survives a power cut too.
    #[default]
    Full,
}

/// Settings for [`AuditLog::open_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Durability of a commit.
    pub synchronous: Synchronous,
    /// How long a write waits for another connection's write (a second process on the same
    /// file) before failing with "database is locked".
    pub busy_timeout: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The audit trail: a SQLite database of [`AuditEntry`]s. See the crate docs.
#[derive(Debug)]
pub struct AuditLog {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// The columns of `entries`, in the order [`entry_from_row`] reads them.
const ENTRY_COLUMNS: &str = "e.id, e.time_ms, e.request_id, e.tenant, e.model, e.endpoint, \
    e.status, e.finish_reason, e.policy, e.prompt, e.prompt_redacted, e.prompt_sha256, \
    e.reasoning, e.reasoning_redacted, e.reasoning_sha256, e.answer, e.answer_redacted, \
    e.answer_sha256, e.prompt_tokens, e.completion_tokens, e.reasoning_tokens, \
    e.cached_prompt_tokens, e.cost_usd, e.latency_ms, e.error, e.end_user";

impl AuditLog {
    /// Opens the audit database at `path`, creating it (and its schema) when there is none,
    /// with the default [`AuditConfig`] (`synchronous=FULL`, 5 s busy timeout).
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_with(path, &AuditConfig::default())
    }

    /// [`AuditLog::open`] with explicit settings.
    pub fn open_with(path: &Path, config: &AuditConfig) -> Result<Self, AuditError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Self::open_flags(path, config, flags)
    }

    /// Opens an audit database that must already exist (what a reader such as `seek audit`
    /// wants: a mistyped path is an error, not a new empty database).
    pub fn open_existing(path: &Path, config: &AuditConfig) -> Result<Self, AuditError> {
        if !path.exists() {
            return Err(AuditError::Missing {
                path: path.to_path_buf(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Self::open_flags(path, config, flags)
    }

    fn open_flags(path: &Path, config: &AuditConfig, flags: OpenFlags) -> Result<Self, AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        };
        // NO_MUTEX: SQLite's own per-connection mutex is redundant behind ours.
        let mut conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        conn.busy_timeout(config.busy_timeout).map_err(open_err)?;
        // Refuse a newer or foreign database before changing anything in it.
        let version = schema::check(&conn, path)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(AuditError::NoWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        let sync = match config.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        if version < SCHEMA_VERSION {
            schema::migrate(&mut conn, path)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A thread that panicked while holding the lock left no transaction open (dropping a
        // rusqlite Transaction rolls it back), so the connection is still good.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one entry and its rails in one transaction; returns its id once committed.
    /// `e.id` is ignored.
    pub fn record(&self, e: &AuditEntry) -> Result<i64, AuditError> {
        let mut conn = self.lock();
        // IMMEDIATE takes the write lock up front, so contention with another process waits
        // in the busy handler instead of failing halfway.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let id = {
            let mut insert = tx.prepare_cached(
                "INSERT INTO entries (time_ms, request_id, tenant, model, endpoint, status, \
                 finish_reason, policy, prompt, prompt_redacted, prompt_sha256, reasoning, \
                 reasoning_redacted, reasoning_sha256, answer, answer_redacted, answer_sha256, \
                 prompt_tokens, completion_tokens, reasoning_tokens, cached_prompt_tokens, \
                 cost_usd, latency_ms, error, end_user) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
                 ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, \
                 ?25)",
            )?;
            insert.execute(params![
                e.time_ms,
                e.request_id,
                e.tenant,
                e.model,
                e.endpoint,
                e.status,
                e.finish_reason,
                e.policy,
                e.prompt,
                e.prompt_redacted,
                e.prompt_sha256,
                e.reasoning,
                e.reasoning_redacted,
                e.reasoning_sha256,
                e.answer,
                e.answer_redacted,
                e.answer_sha256,
                to_i64("prompt_tokens", e.prompt_tokens)?,
                to_i64("completion_tokens", e.completion_tokens)?,
                to_i64("reasoning_tokens", e.reasoning_tokens)?,
                to_i64("cached_prompt_tokens", e.cached_prompt_tokens)?,
                e.cost_usd,
                e.latency_ms,
                e.error,
                e.end_user,
            ])?;
            let id = tx.last_insert_rowid();
            let mut rail = tx.prepare_cached(
                "INSERT INTO rails (entry_id, seq, rail, stage, action, triggered, detail, \
                 latency_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (seq, r) in e.rails.iter().enumerate() {
                rail.execute(params![
                    id,
                    to_i64("rails[].seq", seq as u64)?,
                    r.rail,
                    r.stage,
                    r.action,
                    r.triggered,
                    r.detail,
                    to_i64("rails[].latency_us", r.latency_us)?,
                ])?;
            }
            id
        };
        tx.commit()?;
        Ok(id)
    }

    /// The entries `f` selects, oldest first (with `f.limit`, the newest `limit` of them).
    pub fn list(&self, f: &Filter) -> Result<Vec<AuditEntry>, AuditError> {
        let conn = self.lock();
        let mut out = Vec::new();
        for_each_entry(&conn, f, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// The entry with this id, if there is one.
    pub fn get(&self, id: i64) -> Result<Option<AuditEntry>, AuditError> {
        let conn = self.lock();
        let entry = conn
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries e WHERE e.id = ?1"
            ))?
            .query_row([id], entry_from_row)
            .optional()?;
        match entry {
            Some(mut e) => {
                e.rails = rails_of(&conn, id)?;
                Ok(Some(e))
            }
            None => Ok(None),
        }
    }

    /// Counts by status, blocks by rail and by tenant, flags and redactions by rail, and token
    /// and cost totals overall and per tenant, over the entries `f` selects (`f.limit` is
    /// ignored).
    pub fn summary(&self, f: &Filter) -> Result<Summary, AuditError> {
        let conn = self.lock();
        let (cond, args) = where_clause(f);
        let mut s = Summary::default();

        let mut per_tenant = conn.prepare(&format!(
            "SELECT e.tenant, COUNT(*), \
             SUM(EXISTS (SELECT 1 FROM rails r WHERE r.entry_id = e.id AND r.triggered AND r.action = '{ACTION_BLOCK}')), \
             SUM(EXISTS (SELECT 1 FROM rails r WHERE r.entry_id = e.id AND r.triggered AND r.action = '{ACTION_FLAG}')), \
             SUM(e.status >= 400), SUM(e.prompt_tokens), SUM(e.completion_tokens), \
             SUM(e.reasoning_tokens), SUM(e.cached_prompt_tokens), TOTAL(e.cost_usd), \
             MIN(e.time_ms), MAX(e.time_ms) \
             FROM entries e WHERE {cond} GROUP BY e.tenant"
        ))?;
        let mut rows = per_tenant.query(params_from_iter(&args))?;
        while let Some(row) = rows.next()? {
            let tenant: String = row.get(0)?;
            let t = Totals {
                entries: get_u64(row, 1)?,
                blocked: get_u64(row, 2)?,
                flagged: get_u64(row, 3)?,
                errors: get_u64(row, 4)?,
                prompt_tokens: get_u64(row, 5)?,
                completion_tokens: get_u64(row, 6)?,
                reasoning_tokens: get_u64(row, 7)?,
                cached_prompt_tokens: get_u64(row, 8)?,
                cost_usd: row.get(9)?,
            };
            let (first, last): (i64, i64) = (row.get(10)?, row.get(11)?);
            s.first_ms = Some(s.first_ms.map_or(first, |m| m.min(first)));
            s.last_ms = Some(s.last_ms.map_or(last, |m| m.max(last)));
            let all = &mut s.totals;
            all.entries += t.entries;
            all.blocked += t.blocked;
            all.flagged += t.flagged;
            all.errors += t.errors;
            all.prompt_tokens += t.prompt_tokens;
            all.completion_tokens += t.completion_tokens;
            all.reasoning_tokens += t.reasoning_tokens;
            all.cached_prompt_tokens += t.cached_prompt_tokens;
            all.cost_usd += t.cost_usd;
            if t.blocked > 0 {
                s.blocks_by_tenant.insert(tenant.clone(), t.blocked);
            }
            s.tenants.insert(tenant, t);
        }

        let mut by_status = conn.prepare(&format!(
            "SELECT e.status, COUNT(*) FROM entries e WHERE {cond} GROUP BY e.status"
        ))?;
        let mut rows = by_status.query(params_from_iter(&args))?;
        while let Some(row) = rows.next()? {
            s.by_status.insert(row.get(0)?, get_u64(row, 1)?);
        }

        let mut by_rail = conn.prepare(&format!(
            "SELECT r.rail, r.action, COUNT(DISTINCT r.entry_id) \
             FROM rails r JOIN entries e ON e.id = r.entry_id \
             WHERE r.triggered AND {cond} GROUP BY r.rail, r.action"
        ))?;
        let mut rows = by_rail.query(params_from_iter(&args))?;
        while let Some(row) = rows.next()? {
            let (rail, action): (String, String) = (row.get(0)?, row.get(1)?);
            let n = get_u64(row, 2)?;
            let map = match action.as_str() {
                ACTION_BLOCK => &mut s.blocks_by_rail,
                ACTION_FLAG => &mut s.flags_by_rail,
                ACTION_REDACT => &mut s.redactions_by_rail,
                _ => continue, // An action this build does not know: listed, not summarised.
            };
            *map.entry(rail).or_default() += n;
        }
        Ok(s)
    }

    /// Writes the entries `f` selects to `out` as JSON Lines (one [`AuditEntry`] per line,
    /// times as RFC 3339 UTC), oldest first; returns how many. Entries are read one at a time,
    /// so an export of the whole trail does not hold it in memory. The handle is locked
    /// until the export ends: export through a handle of its own (as `seek audit` does), not
    /// the one a server records through.
    pub fn export_jsonl(&self, f: &Filter, out: &mut dyn Write) -> Result<usize, AuditError> {
        let conn = self.lock();
        let mut n = 0;
        let mut line = Vec::new();
        for_each_entry(&conn, f, |e| {
            line.clear();
            serde_json::to_writer(&mut line, &e)
                .map_err(|source| AuditError::Json { id: e.id, source })?;
            line.push(b'\n');
            out.write_all(&line).map_err(AuditError::Write)?;
            n += 1;
            Ok(())
        })?;
        out.flush().map_err(AuditError::Write)?;
        Ok(n)
    }

    /// Deletes the entries (and their rails) older than `age`; returns how many entries went.
    pub fn purge_older_than(&self, age: Duration) -> Result<usize, AuditError> {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        self.purge_before(now_ms().saturating_sub(age_ms))
    }

    /// Deletes the entries (and their rails) with `time_ms < cutoff_ms`; returns how many
    /// entries went. Ids are not reused afterwards.
    ///
    /// Deletes in batches of [`PURGE_BATCH`] entries, each its own transaction, so a
    /// retention run over a large trail never holds the write lock for long: a server
    /// recording meanwhile waits for one batch at most, well inside its busy timeout.
    pub fn purge_before(&self, cutoff_ms: i64) -> Result<usize, AuditError> {
        const VICTIMS: &str =
            "SELECT id FROM entries WHERE time_ms < ?1 ORDER BY time_ms, id LIMIT ?2";
        let batch = PURGE_BATCH as i64;
        let mut total = 0;
        loop {
            let mut conn = self.lock();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                &format!("DELETE FROM rails WHERE entry_id IN ({VICTIMS})"),
                params![cutoff_ms, batch],
            )?;
            let n = tx.execute(
                &format!("DELETE FROM entries WHERE id IN ({VICTIMS})"),
                params![cutoff_ms, batch],
            )?;
            tx.commit()?;
            total += n;
            if n < PURGE_BATCH {
                return Ok(total);
            }
        }
    }
}

/// How many entries [`AuditLog::purge_before`] deletes per transaction.
pub const PURGE_BATCH: usize = 1000;

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn to_i64(field: &'static str, value: u64) -> Result<i64, AuditError> {
    i64::try_from(value).map_err(|_| AuditError::TooLarge { field, value })
}

fn get_u64(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    // SUM over no rows is NULL.
    let v: Option<i64> = row.get(i)?;
    u64::try_from(v.unwrap_or(0)).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Integer, e.into())
    })
}

/// The SQL condition (over `entries e`) and its positional arguments for `f`.
fn where_clause(f: &Filter) -> (String, Vec<Value>) {
    let mut conds: Vec<String> = Vec::new();
    let mut args = Vec::new();
    if let Some(t) = f.since_ms {
        conds.push("e.time_ms >= ?".into());
        args.push(Value::Integer(t));
    }
    if let Some(t) = f.until_ms {
        conds.push("e.time_ms < ?".into());
        args.push(Value::Integer(t));
    }
    if let Some(t) = &f.tenant {
        conds.push("e.tenant = ?".into());
        args.push(Value::Text(t.clone()));
    }
    if let Some(m) = &f.model {
        conds.push("e.model = ?".into());
        args.push(Value::Text(m.clone()));
    }
    if let Some(s) = f.status {
        conds.push("e.status = ?".into());
        args.push(Value::Integer(s.into()));
    }
    if f.blocked_only || f.rail.is_some() {
        // One rail row must satisfy both, so `--blocked --rail pii` means "blocked by pii".
        let mut c =
            String::from("EXISTS (SELECT 1 FROM rails r WHERE r.entry_id = e.id AND r.triggered");
        if let Some(r) = &f.rail {
            c.push_str(" AND r.rail = ?");
            args.push(Value::Text(r.clone()));
        }
        if f.blocked_only {
            c.push_str(&format!(" AND r.action = '{ACTION_BLOCK}'"));
        }
        c.push(')');
        conds.push(c);
    }
    if conds.is_empty() {
        ("1".into(), args)
    } else {
        (conds.join(" AND "), args)
    }
}

/// Calls `each` on every entry `f` selects, with its rails, oldest first.
fn for_each_entry(
    conn: &Connection,
    f: &Filter,
    mut each: impl FnMut(AuditEntry) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let (cond, mut args) = where_clause(f);
    if let Some(limit) = f.limit {
        // The newest `limit`, then back to oldest first.
        args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        let mut st = conn.prepare(&format!(
            "SELECT {ENTRY_COLUMNS} FROM entries e WHERE {cond} \
             ORDER BY e.time_ms DESC, e.id DESC LIMIT ?"
        ))?;
        let mut entries = st
            .query_map(params_from_iter(&args), entry_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        entries.reverse();
        for mut e in entries {
            e.rails = rails_of(conn, e.id.expect("read from the table"))?;
            each(e)?;
        }
    } else {
        let mut st = conn.prepare(&format!(
            "SELECT {ENTRY_COLUMNS} FROM entries e WHERE {cond} ORDER BY e.time_ms, e.id"
        ))?;
        let mut rows = st.query(params_from_iter(&args))?;
        while let Some(row) = rows.next()? {
            let mut e = entry_from_row(row)?;
            e.rails = rails_of(conn, e.id.expect("read from the table"))?;
            each(e)?;
        }
    }
    Ok(())
}

fn rails_of(conn: &Connection, id: i64) -> Result<Vec<RailRecord>, AuditError> {
    let mut st = conn.prepare_cached(
        "SELECT rail, stage, action, triggered, detail, latency_us FROM rails \
         WHERE entry_id = ?1 ORDER BY seq",
    )?;
    let rails = st
        .query_map([id], |row| {
            Ok(RailRecord {
                rail: row.get(0)?,
                stage: row.get(1)?,
                action: row.get(2)?,
                triggered: row.get(3)?,
                detail: row.get(4)?,
                latency_us: get_u64(row, 5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rails)
}

/// An entry (without its rails) from a row of [`ENTRY_COLUMNS`].
fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: Some(row.get(0)?),
        time_ms: row.get(1)?,
        request_id: row.get(2)?,
        tenant: row.get(3)?,
        model: row.get(4)?,
        endpoint: row.get(5)?,
        status: row.get(6)?,
        finish_reason: row.get(7)?,
        policy: row.get(8)?,
        prompt: row.get(9)?,
        prompt_redacted: row.get(10)?,
        prompt_sha256: row.get(11)?,
        reasoning: row.get(12)?,
        reasoning_redacted: row.get(13)?,
        reasoning_sha256: row.get(14)?,
        answer: row.get(15)?,
        answer_redacted: row.get(16)?,
        answer_sha256: row.get(17)?,
        rails: Vec::new(),
        prompt_tokens: get_u64(row, 18)?,
        completion_tokens: get_u64(row, 19)?,
        reasoning_tokens: get_u64(row, 20)?,
        cached_prompt_tokens: get_u64(row, 21)?,
        cost_usd: row.get(22)?,
        latency_ms: row.get(23)?,
        error: row.get(24)?,
        end_user: row.get(25)?,
    })
}
