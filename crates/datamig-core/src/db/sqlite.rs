//! SQLite: the embedded default. DDL is transactional; the schema lock is an
//! exclusive lock on a file beside the database, which the operating system
//! releases when the process dies. Statements go through SQLite's C API in
//! this process (`sqlite/native.rs`); a wait for another connection's write
//! lock is this driver's own, asynchronous ([`SqliteConn::run`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{BulkUpdate, ConnectOptions, Driver, Row, Transient, Value};
use crate::config::DatabaseUrl;
use crate::{Error, Result};

mod native;

use native::{blocking, failure};

pub(crate) struct Sqlite;

/// SQLite allows 32 766 parameters a statement; a multi-row statement is split below that.
const MAX_PARAMETERS: usize = 32_000;

/// How long a statement waits for another connection's write lock, until a
/// `PRAGMA busy_timeout` (the lock timeout of `Driver::timeouts`) says otherwise.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct SqliteConn {
    /// In a mutex only so that a `&Conn` may be shared (rusqlite's connection
    /// is `Send`, not `Sync`): every use has `&mut self` and takes it with
    /// [`SqliteConn::db`], which never locks.
    conn: std::sync::Mutex<rusqlite::Connection>,
    /// The database file; `None` for an in-memory database (one process only, no locks needed).
    path: Option<PathBuf>,
    /// Named locks held: exclusive OS locks on `<database>.datamig-<name>.lock`.
    locks: std::collections::HashMap<String, File>,
    /// How long a statement waits for the database's lock: the busy timeout,
    /// waited for here (see [`SqliteConn::run`]), not in SQLite's busy handler.
    busy_wait: Duration,
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
    fn db(&mut self) -> &rusqlite::Connection {
        self.conn
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `work` on the connection; while the database is locked by another
    /// connection (SQLITE_BUSY), waits asynchronously — 1 ms, doubling to 20
    /// ms — and runs it again, for up to the busy timeout. `work` gets a
    /// progress counter that it keeps across attempts, so that statements it
    /// completed are not run twice. `PRAGMA busy_timeout = N` sets the wait.
    async fn run<T>(
        &mut self,
        mut work: impl FnMut(&rusqlite::Connection, &mut usize) -> rusqlite::Result<T>,
    ) -> sqlx::Result<T> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        let mut done = 0;
        loop {
            let db = self.db();
            match blocking(|| work(db, &mut done)) {
                Err(e) if busy(&e) && started.elapsed() < self.busy_wait => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                other => {
                    // A statement here is a function call that never waits on
                    // the runtime: a command's `select!` on a signal (or the
                    // run's control) gets its turn between two statements, as
                    // when each statement was a trip to another thread.
                    tokio::task::yield_now().await;
                    return other.map_err(failure);
                }
            }
        }
    }

    fn lock_path(&self, name: &str) -> Option<PathBuf> {
        let mut s = self.path.clone()?.into_os_string();
        s.push(format!(".datamig-{name}.lock"));
        Some(PathBuf::from(s))
    }
}

/// SQLITE_BUSY, which waiting passes (not SQLITE_BUSY_SNAPSHOT, 517: a read
/// transaction that cannot become a write one, which waiting never mends).
fn busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code & 0xff == 5 && f.extended_code != 517)
}

/// The wait a `PRAGMA busy_timeout = N` statement sets, in milliseconds.
fn busy_pragma(sql: &str) -> Option<Duration> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split(|c: char| c.is_whitespace() || c == '=')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    match words.as_slice() {
        [pragma, name, ms] if pragma == "pragma" && name == "busy_timeout" => {
            ms.parse().ok().map(Duration::from_millis)
        }
        _ => None,
    }
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
        let query = url.expose().split_once('?').map_or("", |(_, q)| q);
        // `sqlite:name?mode=memory` is a memory database by that name.
        let named_memory = path.is_none() && query.contains("mode=memory");
        let target = if named_memory {
            let rest = url.expose().trim_start_matches("sqlite:");
            let name = rest.split_once('?').map_or(rest, |(p, _)| p);
            Some(PathBuf::from(name.strip_prefix("//").unwrap_or(name)))
        } else {
            path.clone()
        };
        // Runners that start together on a file that does not exist yet all set WAL
        // on it; the switch takes the file's lock without the busy handler, so a
        // runner may be told "database is locked" at once: wait as a busy timeout would.
        let started = Instant::now();
        let conn = loop {
            let attempt = blocking(|| {
                let conn = native::open(target.as_deref(), query)?;
                if is_new {
                    // A database datamig creates gets WAL, so jobs and readers do not
                    // block each other; an existing file keeps the journal mode its
                    // owner chose.
                    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
                }
                Ok::<_, rusqlite::Error>(conn)
            });
            match attempt {
                Err(e) if busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other.map_err(failure)?,
            }
        };
        // SQLite opens any file and fails at the first read: read now, so that a
        // file that is not a database (SQLITE_NOTADB) is a connection error, not a
        // failure halfway into a command. Anything else (a peer holding the lock
        // while it creates the file) is left to the commands, which wait for it.
        let mut c = SqliteConn {
            conn: std::sync::Mutex::new(conn),
            path,
            locks: Default::default(),
            busy_wait: BUSY_TIMEOUT,
        };
        if let Err(sqlx::Error::Database(db)) =
            Self::fetch(&mut c, "SELECT count(*) FROM sqlite_master", &[]).await
        {
            if db.code().as_deref() == Some("26") {
                return Err(sqlx::Error::Database(db));
            }
        }
        Ok(c)
    }

    async fn execute(c: &mut SqliteConn, sql: &str, params: &[Value]) -> sqlx::Result<u64> {
        if let Some(wait) = busy_pragma(sql) {
            c.busy_wait = wait;
            return Ok(0);
        }
        c.run(|db, done| native::execute(db, sql, params, done))
            .await
    }

    async fn fetch(c: &mut SqliteConn, sql: &str, params: &[Value]) -> sqlx::Result<Vec<Row>> {
        c.run(|db, _| native::fetch(db, sql, params)).await
    }

    async fn script(c: &mut SqliteConn, sql: &str) -> sqlx::Result<()> {
        Self::script_rows(c, sql).await.map(drop)
    }

    async fn script_rows(c: &mut SqliteConn, sql: &str) -> sqlx::Result<u64> {
        Self::execute(c, sql, &[]).await
    }

    async fn close(c: SqliteConn) {
        let conn = c
            .conn
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = conn.close();
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
        // One prepared `UPDATE … WHERE key = ?` run for each row, inside the
        // batch's transaction: SQLite is a library in this process, so a row's
        // statement is a function call, and this measured faster than one
        // `UPDATE … FROM (VALUES …)` a batch (BENCHMARKS.md, SQLite's floor).
        // Each row's values bind in their order (keys, new values, guard
        // values) by number; the guard filter's own parameters come after.
        let q = |n: &str| Self::quote_ident(n);
        let n_keys = spec.keys.len();
        let guards = spec.guard.as_ref().map_or(0, |g| g.columns.len());
        let width = n_keys + spec.sets.len() + guards;
        let sets: Vec<String> = spec
            .sets
            .iter()
            .enumerate()
            .map(|(j, s)| format!("{} = ?{}", q(s), n_keys + j + 1))
            .collect();
        let mut filter: Vec<String> = spec
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} = ?{}", q(k), i + 1))
            .collect();
        // The row by its locator, read after the rest (its keys still compared).
        let width = match &spec.locator {
            Some(locator) => {
                filter.insert(0, format!("{locator} = ?{}", width + 1));
                width + 1
            }
            None => width,
        };
        let mut tail: Vec<&Value> = Vec::new();
        if let Some(guard) = &spec.guard {
            let first_guard = n_keys + spec.sets.len();
            for (i, col) in guard.columns.iter().enumerate() {
                filter.push(format!("{} IS ?{}", q(col), first_guard + i + 1));
            }
            if let Some((sql, params)) = &guard.filter {
                filter.push(format!("({sql})"));
                tail.extend(params);
            }
        }
        if width + tail.len() > MAX_PARAMETERS {
            return Err(sqlx::Error::InvalidArgument(format!(
                "an update of {width} columns a row is more than SQLite's {MAX_PARAMETERS} parameters"
            )));
        }
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            q(&spec.table),
            sets.join(", "),
            filter.join(" AND ")
        );
        let rows: Vec<&[Value]> = rows.iter().map(|r| &r[..width]).collect();
        c.run(|db, done| native::each(db, &sql, &rows, &tail, done))
            .await
    }

    async fn row_locator(c: &mut SqliteConn, table: &str) -> Option<String> {
        // The rowid, by the first of its names no column of the table takes
        // (a column named `rowid` hides it), where the table has one (not a
        // WITHOUT ROWID table, nor a view). Where the key is the rowid (an
        // INTEGER PRIMARY KEY) the key finds the row as fast already.
        let columns: Vec<String> = Self::fetch(
            c,
            "SELECT lower(name) FROM pragma_table_info(?)",
            &[Value::Text(table.into())],
        )
        .await
        .ok()?
        .into_iter()
        .filter_map(|r| r.into_iter().next().and_then(Value::into_string))
        .collect();
        let name = ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|n| !columns.iter().any(|c| c == n))?;
        let probe = format!("SELECT {name} FROM {} LIMIT 0", Self::quote_ident(table));
        Self::fetch(c, &probe, &[]).await.ok()?;
        Some(name.to_string())
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

    // A derived table's rows are sorted again for the outer ORDER BY.
    const CHUNK_BY_BOUND: bool = true;

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
