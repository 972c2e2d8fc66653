//! SQLite: the embedded default. DDL is transactional; the schema lock is an
//! exclusive lock on a file beside the database, which the operating system
//! releases when the process dies.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow};
use sqlx::{
    Column, ConnectOptions as _, Connection, Row as _, SqliteConnection, TypeInfo, ValueRef,
};

use super::{BulkUpdate, ConnectOptions, Driver, Row, Transient, Value};
use crate::config::DatabaseUrl;
use crate::{Error, Result};

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// A decimal, JSON or an array, which this database has no parameter type
/// for: bound as text (a decimal's digits, JSON's text, an array as a JSON
/// array), which the column's type converts on assignment.
fn bind_other<'q>(q: Query<'q>, v: &'q Value) -> Query<'q> {
    q.bind(v.portable())
}

pub(crate) struct Sqlite;

/// SQLite allows 32 766 parameters a statement; a bulk update is split below that.
const MAX_PARAMETERS: usize = 32_000;

pub(crate) struct SqliteConn {
    conn: SqliteConnection,
    /// The database file; `None` for an in-memory database (one process only, no locks needed).
    path: Option<PathBuf>,
    /// Named locks held: exclusive OS locks on `<database>.datamig-<name>.lock`.
    locks: std::collections::HashMap<String, File>,
}

/// Whether the open `file` is the one `path` names now.
#[cfg(unix)]
fn same_file(file: &File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &std::path::Path) -> bool {
    path.exists()
}

impl SqliteConn {
    fn lock_path(&self, name: &str) -> Option<PathBuf> {
        let mut s = self.path.clone()?.into_os_string();
        s.push(format!(".datamig-{name}.lock"));
        Some(PathBuf::from(s))
    }
}

fn decode(row: &SqliteRow) -> sqlx::Result<Row> {
    let mut out = Vec::with_capacity(row.columns().len());
    for col in row.columns() {
        let i = col.ordinal();
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        let kind = raw.type_info().name().to_string();
        out.push(match kind.as_str() {
            "INTEGER" | "INT" | "BIGINT" | "BOOLEAN" => Value::Int(row.try_get_unchecked(i)?),
            "REAL" | "FLOAT" | "DOUBLE" => Value::Float(row.try_get_unchecked(i)?),
            "BLOB" => Value::Bytes(row.try_get_unchecked(i)?),
            // SQLite stores whatever bytes it is given as TEXT: those that are
            // not UTF-8 are passed on as they are (a transform sees bytes, and
            // may reject the row), not a batch that fails for good.
            _ => {
                let bytes: Vec<u8> = row.try_get_unchecked(i)?;
                match String::from_utf8(bytes) {
                    Ok(text) => Value::Text(text),
                    Err(e) => Value::Bytes(e.into_bytes()),
                }
            }
        });
    }
    Ok(out)
}

impl Driver for Sqlite {
    type Connection = SqliteConn;
    const TABLE_EXISTS_SQL: &'static str =
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?";
    const COLUMN_EXISTS_SQL: &'static str =
        "SELECT count(*) FROM pragma_table_info(?) WHERE name = ?";
    const INTEGER_CAST: Option<&'static str> = None;
    const SINGLE_WRITER: bool = true;

    const TRANSACTIONAL_DDL: bool = true;
    // IMMEDIATE takes the write lock at once, so two writers never deadlock on upgrade.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const BOOKKEEPING_DDL: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS datamig_schema_history (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TEXT NOT NULL,
            duration_ms INTEGER NOT NULL DEFAULT 0,
            applied_by TEXT NOT NULL,
            dirty INTEGER NOT NULL DEFAULT 0
        )",
        "CREATE TABLE IF NOT EXISTS datamig_schema_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            version INTEGER,
            name TEXT,
            detail TEXT,
            actor TEXT NOT NULL
        )",
        "CREATE TABLE IF NOT EXISTS datamig_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job TEXT NOT NULL,
            args TEXT NOT NULL,
            state TEXT NOT NULL,
            position TEXT,
            rows_done INTEGER NOT NULL DEFAULT 0,
            rows_changed INTEGER NOT NULL DEFAULT 0,
            rows_rejected INTEGER NOT NULL DEFAULT 0,
            batches_done INTEGER NOT NULL DEFAULT 0,
            total_rows INTEGER,
            batch_size INTEGER NOT NULL,
            elapsed_ms INTEGER NOT NULL DEFAULT 0,
            max_batch_ms INTEGER NOT NULL DEFAULT 0,
            bookkeeping_ms INTEGER NOT NULL DEFAULT 0,
            started_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            finished_at TEXT,
            owner TEXT,
            last_error TEXT,
            verification TEXT
        )",
        "CREATE INDEX IF NOT EXISTS datamig_runs_job ON datamig_runs (job, id)",
        "CREATE TABLE IF NOT EXISTS datamig_rejects (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL,
            row_key TEXT NOT NULL,
            reason TEXT NOT NULL,
            at TEXT NOT NULL
        )",
        "CREATE TABLE IF NOT EXISTS datamig_batches (
            run_id INTEGER NOT NULL,
            batch INTEGER NOT NULL,
            rows_done INTEGER NOT NULL,
            rows_changed INTEGER NOT NULL,
            rows_rejected INTEGER NOT NULL,
            ms INTEGER NOT NULL,
            waited_ms INTEGER NOT NULL,
            retries INTEGER NOT NULL,
            at_ms INTEGER NOT NULL,
            PRIMARY KEY (run_id, batch)
        )",
        "CREATE TABLE IF NOT EXISTS datamig_partitions (
            run_id INTEGER NOT NULL,
            part INTEGER NOT NULL,
            lo INTEGER,
            hi INTEGER,
            position INTEGER,
            done INTEGER NOT NULL DEFAULT 0,
            owner TEXT,
            lease_until INTEGER NOT NULL DEFAULT 0,
            rows_done INTEGER NOT NULL DEFAULT 0,
            rows_changed INTEGER NOT NULL DEFAULT 0,
            rows_rejected INTEGER NOT NULL DEFAULT 0,
            batches_done INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, part)
        )",
    ];

    async fn connect(url: &DatabaseUrl, _opts: &ConnectOptions) -> Result<SqliteConn, sqlx::Error> {
        let path = url.sqlite_path();
        let is_new = path.as_ref().is_some_and(|p| !p.exists());
        let mut options = SqliteConnectOptions::from_str(url.expose())?
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::from_secs(30))
            .log_slow_statements(super::SLOW_STATEMENT_LOG, super::SLOW_STATEMENT);
        if is_new {
            // A database datamig creates gets WAL, so jobs and readers do not block
            // each other; an existing file keeps the journal mode its owner chose.
            options = options.journal_mode(SqliteJournalMode::Wal);
        }
        // Runners that start together on a file that does not exist yet all set WAL
        // on it; the switch takes the file's lock without the busy handler, so a
        // runner may be told "database is locked" at once: wait as a busy timeout would.
        let started = std::time::Instant::now();
        let mut conn = loop {
            match SqliteConnection::connect_with(&options).await {
                Err(sqlx::Error::Database(db))
                    if db.code().is_some_and(|c| c == "5" || c == "6")
                        && started.elapsed() < std::time::Duration::from_secs(30) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => break other?,
            }
        };
        // SQLite opens any file and fails at the first read: read now, so that a
        // file that is not a database (SQLITE_NOTADB) is a connection error, not a
        // failure halfway into a command. Anything else (a peer holding the lock
        // while it creates the file) is left to the commands, which wait for it.
        if let Err(e) = sqlx::query("SELECT count(*) FROM sqlite_master")
            .fetch_one(&mut conn)
            .await
        {
            if let sqlx::Error::Database(db) = &e {
                if db.code().as_deref() == Some("26") {
                    return Err(e);
                }
            }
        }
        Ok(SqliteConn {
            conn,
            path,
            locks: Default::default(),
        })
    }

    async fn execute(c: &mut SqliteConn, sql: &str, params: &[Value]) -> sqlx::Result<u64> {
        Ok(super::bind_values!(sqlx::query(sql), params)
            .execute(&mut c.conn)
            .await?
            .rows_affected())
    }

    async fn fetch(c: &mut SqliteConn, sql: &str, params: &[Value]) -> sqlx::Result<Vec<Row>> {
        super::bind_values!(sqlx::query(sql), params)
            .fetch_all(&mut c.conn)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn script(c: &mut SqliteConn, sql: &str) -> sqlx::Result<()> {
        sqlx::Executor::execute(&mut c.conn, sqlx::raw_sql(sql))
            .await
            .map(drop)
    }

    async fn script_rows(c: &mut SqliteConn, sql: &str) -> sqlx::Result<u64> {
        // Through `Executor` rather than `RawSql::execute`, whose generic
        // executor made the futures awaiting this one fail their `Send` proof.
        Ok(sqlx::Executor::execute(&mut c.conn, sqlx::raw_sql(sql))
            .await?
            .rows_affected())
    }

    async fn close(c: SqliteConn) {
        let _ = c.conn.close().await;
    }

    async fn try_lock(c: &mut SqliteConn, name: &str) -> Result<bool> {
        let Some(path) = c.lock_path(name) else {
            return Ok(true);
        };
        // The holder removes the file when it lets go (see `unlock`): a process
        // that opened it before that and then got its lock holds a lock on a
        // file that is gone, so the lock counts only when the path still names
        // the file locked. Else it opens the path again.
        for _ in 0..100 {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("cannot open the lock file", &path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io("cannot lock", &path, e))
                }
            }
            if !same_file(&file, &path) {
                continue;
            }
            // Say who holds it, for the runner that has to wait.
            let holder = format!(
                "{} since {}",
                super::who_am_i(),
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
            );
            let _ = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(holder.as_bytes()));
            c.locks.insert(name.to_string(), file);
            return Ok(true);
        }
        Ok(false)
    }

    async fn unlock(c: &mut SqliteConn, name: &str) -> Result<()> {
        if let Some(file) = c.locks.remove(name) {
            // Removed while still locked, so that no lock file stays behind
            // (`try_lock` tells a removed file from the one at the path).
            if let Some(path) = c.lock_path(name) {
                let _ = std::fs::remove_file(path);
            }
            let _ = file.unlock();
        }
        Ok(())
    }

    async fn lock_holder(c: &mut SqliteConn, name: &str) -> Option<String> {
        let mut text = String::new();
        let mut file = File::open(c.lock_path(name)?).ok()?;
        // A holder that died (SIGKILL) left its name in the file, but the OS
        // released its lock: only a file that is locked has a holder.
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                return None;
            }
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(_)) => return None,
        }
        file.read_to_string(&mut text).ok()?;
        (!text.is_empty()).then_some(text)
    }

    async fn bulk_update(c: &mut SqliteConn, spec: &BulkUpdate, rows: &[Row]) -> sqlx::Result<u64> {
        // One `UPDATE … FROM (VALUES …)` per chunk of rows. Even in-process, one
        // statement per row cost more than the work itself (measured 0.06× the
        // single statement at 1M rows: each statement is a trip to sqlx's worker thread).
        let q = |n: &str| Self::quote_ident(n);
        let table = q(&spec.table);
        let n_keys = spec.keys.len();
        let guards = spec.guard.as_ref().map_or(0, |g| g.columns.len());
        let width = n_keys + spec.sets.len() + guards;
        let sets: Vec<String> = spec
            .sets
            .iter()
            .enumerate()
            .map(|(j, s)| format!("{} = v.column{}", q(s), n_keys + j + 1))
            .collect();
        let mut join: Vec<String> = spec
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{table}.{} = v.column{}", q(k), i + 1))
            .collect();
        let mut tail: Vec<&Value> = Vec::new();
        if let Some(guard) = &spec.guard {
            let first_guard = n_keys + spec.sets.len();
            for (i, col) in guard.columns.iter().enumerate() {
                join.push(format!(
                    "{table}.{} IS v.column{}",
                    q(col),
                    first_guard + i + 1
                ));
            }
            if let Some((sql, params)) = &guard.filter {
                join.push(format!("({sql})"));
                tail.extend(params);
            }
        }
        let tuple = format!("({})", vec!["?"; width].join(", "));
        let mut changed = 0;
        for chunk in rows.chunks((MAX_PARAMETERS.saturating_sub(tail.len()) / width).max(1)) {
            let values = vec![tuple.as_str(); chunk.len()].join(", ");
            let sql = format!(
                "UPDATE {table} SET {} FROM (VALUES {values}) AS v WHERE {}",
                sets.join(", "),
                join.join(" AND ")
            );
            let params = chunk
                .iter()
                .flat_map(|r| &r[..width])
                .chain(tail.iter().copied());
            changed += super::bind_values!(sqlx::query(&sql), params)
                .execute(&mut c.conn)
                .await?
                .rows_affected();
        }
        Ok(changed)
    }

    async fn column_types(
        _c: &mut SqliteConn,
        _table: &str,
        columns: &[String],
    ) -> sqlx::Result<Vec<String>> {
        Ok(vec![String::new(); columns.len()])
    }

    async fn estimate(
        _c: &mut SqliteConn,
        _sql: &str,
        _params: &[Value],
    ) -> sqlx::Result<Option<i64>> {
        // SQLite's planner gives no row estimate; counting a local table is the estimate.
        Ok(None)
    }

    // BEGIN IMMEDIATE already holds the database's write lock for the batch.
    const FOR_UPDATE: &'static str = "";

    fn timeouts(
        lock: std::time::Duration,
        _statement: Option<std::time::Duration>,
        _idle: Option<std::time::Duration>,
    ) -> Vec<String> {
        // SQLite has no statement timeout; waiting for the database's lock is
        // the busy timeout.
        vec![format!("PRAGMA busy_timeout = {}", lock.as_millis().max(1))]
    }

    fn permission_denied(err: &(dyn sqlx::error::DatabaseError + 'static)) -> bool {
        // SQLITE_READONLY (a file opened read-only, or not writable), SQLITE_PERM
        // and SQLITE_AUTH, with their extended codes.
        let code: i64 = err.code().and_then(|c| c.parse().ok()).unwrap_or(0);
        matches!(code & 0xff, 3 | 8 | 23)
    }

    fn transient(err: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<Transient> {
        // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes.
        let code: i64 = err.code()?.parse().ok()?;
        matches!(code & 0xff, 5 | 6).then_some(Transient::LockTimeout)
    }

    // One writer at a time, in this process: reading the next batch on a second
    // connection measured no faster (BENCHMARKS.md), so batches read in their own
    // transaction.
    const READ_AHEAD: bool = false;

    async fn full_scans(
        c: &mut SqliteConn,
        sql: &str,
        params: &[Value],
        table: &str,
    ) -> sqlx::Result<Vec<String>> {
        // EXPLAIN QUERY PLAN's detail: `SCAN t` reads t in full; `SEARCH t USING …`
        // and `SCAN t USING [COVERING] INDEX …` go by an index.
        let rows = Self::fetch(c, &format!("EXPLAIN QUERY PLAN {sql}"), params).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().nth(3).and_then(Value::into_string))
            .filter(|detail| {
                detail == &format!("SCAN {table}")
                    || detail.starts_with(&format!("SCAN {table} ")) && !detail.contains(" USING ")
            })
            .map(|detail| format!("a full scan of {table} ({detail})"))
            .collect())
    }

    async fn health(_c: &mut SqliteConn) -> sqlx::Result<super::Health> {
        // An embedded database has no other sessions to count and no replicas.
        Ok(super::Health::default())
    }

    async fn replica_lag(_c: &mut SqliteConn) -> sqlx::Result<Option<std::time::Duration>> {
        Err(sqlx::Error::Protocol("SQLite has no replicas".into()))
    }

    async fn snapshot(c: &mut SqliteConn) -> Result<Vec<String>> {
        const USER_TABLES: &str = "m.name NOT LIKE 'datamig\\_%' ESCAPE '\\' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'";
        let queries = [
            format!("SELECT m.type || ' ' || m.name FROM sqlite_master m WHERE m.type = 'table' AND {USER_TABLES}"),
            format!(
                "SELECT 'column ' || m.name || '.' || p.name || ' ' || p.type
                    || CASE WHEN p.\"notnull\" THEN ' not null' ELSE '' END
                    || coalesce(' default ' || p.dflt_value, '')
                    || CASE WHEN p.pk > 0 THEN ' primary key ' || p.pk ELSE '' END
                 FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table' AND {USER_TABLES}"
            ),
            format!(
                "SELECT 'foreign key ' || m.name || '.' || f.\"from\" || ' -> ' || f.\"table\" || '.' || coalesce(f.\"to\", '?')
                    || ' on delete ' || f.on_delete
                 FROM sqlite_master m, pragma_foreign_key_list(m.name) f WHERE m.type = 'table' AND {USER_TABLES}"
            ),
            format!(
                "SELECT m.type || ' ' || m.name || ' on ' || m.tbl_name || ': ' || coalesce(m.sql, '(automatic)')
                 FROM sqlite_master m WHERE m.type IN ('index', 'view', 'trigger') AND {USER_TABLES}"
            ),
        ];
        super::catalogue_lines::<Self>(c, &queries).await
    }

    fn analyze_sql(table: &str) -> String {
        // A sample, not a full scan of a table that may be large: SQLite's own
        // advice for applications that run ANALYZE.
        format!("PRAGMA analysis_limit = 1000; ANALYZE {table}")
    }

    fn epoch_ms_sql() -> &'static str {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    }

    fn now_sql() -> &'static str {
        "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')"
    }

    fn timestamp_text(column: &str) -> String {
        column.to_string()
    }

    fn quote_ident(name: &str) -> String {
        super::quote_with(name, '"')
    }
}
