//! SQLite through its C API (rusqlite), on the calling thread: opening a file,
//! running statements with [`Value`] parameters, decoding rows, and SQLite's
//! errors as the `sqlx::Error` the rest of the database layer classifies.
//!
//! Not sqlx's SQLite driver: it runs each connection on a worker thread and
//! hands every row of a result over a channel, which cost more than the whole
//! single `UPDATE` (reading 1M rows in batches of 5000: 1.24 s through sqlx,
//! 0.25 s here; BENCHMARKS.md). SQLite is a library in this process: a
//! statement is a function call, and a batch's rows are read where they are.
//!
//! A call that may wait (for the database's lock, up to the busy timeout) runs
//! under [`blocking`], so that it never holds up the other tasks of the runtime.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, Statement};

use crate::db::{Row, Value};

/// Runs `f` (a statement's work: it never waits for a lock) without holding up
/// the runtime's other tasks: on a multi-threaded runtime the worker thread
/// hands its tasks to another first; elsewhere (a test's single-threaded
/// runtime, plain threads) it just runs.
pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// An SQLite error as a database error: its extended result code (what the
/// classification reads: 5 busy, 6 locked, 8 read-only, 2067 a unique key …)
/// and SQLite's own message.
#[derive(Debug)]
struct SqliteFailure {
    code: i32,
    message: String,
}

impl std::fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for SqliteFailure {}

impl sqlx::error::DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use sqlx::error::ErrorKind;
        match self.code {
            // SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY, _FOREIGNKEY, _NOTNULL, _CHECK.
            2067 | 1555 => ErrorKind::UniqueViolation,
            787 => ErrorKind::ForeignKeyViolation,
            1299 => ErrorKind::NotNullViolation,
            275 => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// A rusqlite error as the database layer's error type.
pub(super) fn failure(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(err, message) => {
            sqlx::Error::Database(Box::new(SqliteFailure {
                code: err.extended_code,
                message: message.unwrap_or_else(|| err.to_string()),
            }))
        }
        other => sqlx::Error::InvalidArgument(other.to_string()),
    }
}

/// Opens the file (or memory database) an `sqlite:` URL names, with its
/// `mode`, `cache`, `immutable` and `vfs` parameters, as SQLite's own URI
/// form reads them; a missing file is made (unless `mode` says otherwise).
pub(super) fn open(path: Option<&Path>, query: &str) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match path {
        None if query.is_empty() => Connection::open_in_memory_with_flags(flags)?,
        None => Connection::open_with_flags(format!("file::memory:?{query}"), flags)?,
        Some(path) => {
            let mut uri = String::from("file:");
            for ch in path.to_string_lossy().chars() {
                match ch {
                    '?' => uri.push_str("%3f"),
                    '#' => uri.push_str("%23"),
                    '%' => uri.push_str("%25"),
                    c => uri.push(c),
                }
            }
            if !query.is_empty() {
                uri.push('?');
                uri.push_str(query);
            }
            Connection::open_with_flags(uri, flags)?
        }
    };
    conn.busy_timeout(Duration::ZERO)?;
    // What sqlx set, kept so that a database behaves as it did: foreign keys
    // enforced. And as many prepared statements as sqlx kept.
    conn.execute_batch("PRAGMA foreign_keys = ON")?;
    conn.set_prepared_statement_cache_capacity(100);
    Ok(conn)
}

/// A [`Value`] as SQLite takes it: a boolean as 0/1, a timestamp as the text
/// `YYYY-MM-DD HH:MM:SS[.fff]` (as sqlx wrote it), a decimal, JSON or an
/// array as text (a decimal's digits, JSON's text, an array as a JSON array),
/// which the column's affinity converts on assignment.
struct Param<'a>(&'a Value);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Bool(b) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(i64::from(*b))),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Float(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::Timestamp(t) => ToSqlOutput::Owned(rusqlite::types::Value::Text(
                t.format("%F %T%.f").to_string(),
            )),
            other => ToSqlOutput::Owned(rusqlite::types::Value::Text(
                other.portable().unwrap_or_default(),
            )),
        })
    }
}

/// Binds `params` to the statement's placeholders in order, from the first.
fn bind<'p>(
    st: &mut Statement<'_>,
    params: impl Iterator<Item = &'p Value>,
) -> rusqlite::Result<()> {
    for (i, p) in params.enumerate() {
        st.raw_bind_parameter(i + 1, Param(p))?;
    }
    Ok(())
}

/// A row's value as read: by its storage class, as sqlx decoded it. Text
/// that is not UTF-8 (SQLite stores whatever bytes it is given as TEXT) is
/// passed on as bytes, for the transform to see (and perhaps reject), not a
/// batch that fails for good.
fn decode(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_string()),
            Err(_) => Value::Bytes(t.to_vec()),
        },
    }
}

/// Whether `sql` may hold more than one statement: SQLite needs a `;` between
/// two, so text without one (or with one only at its end) is one statement and
/// can be prepared once and kept. Text with one anywhere else takes the
/// statement-by-statement path, which is right for one statement too.
fn single(sql: &str) -> bool {
    let body = sql.trim_end().trim_end_matches(';');
    !body.contains(';')
}

/// Reports a statement slower than [`super::super::SLOW_STATEMENT`], as sqlx did.
fn timed<T>(sql: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    if took >= super::super::SLOW_STATEMENT {
        tracing::debug!(
            elapsed_secs = took.as_secs_f64(),
            "slow statement: {}",
            sql.chars().take(200).collect::<String>()
        );
    }
    out
}

/// Runs one prepared statement to its end with `params`; its rows are
/// dropped. Returns the rows it changed (none for a statement that only reads).
fn run_to_end<'p>(
    st: &mut Statement<'_>,
    conn: &Connection,
    params: impl Iterator<Item = &'p Value>,
) -> rusqlite::Result<u64> {
    bind(st, params)?;
    let readonly = st.readonly();
    let mut rows = st.raw_query();
    while rows.next()?.is_some() {}
    Ok(if readonly { 0 } else { conn.changes() })
}

/// Runs `sql` (one statement or several, each taking its placeholders' count
/// of `params` in turn) and returns the rows the statements changed. `done`
/// counts the statements that ran to their end: a call that failed on a busy
/// database is called again with it, and goes on from the statement that failed.
pub(super) fn execute(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    done: &mut usize,
) -> rusqlite::Result<u64> {
    timed(sql, || {
        if single(sql) {
            let mut st = conn.prepare_cached(sql)?;
            return run_to_end(&mut st, conn, params.iter());
        }
        let mut rest = params.iter();
        let mut changed = 0;
        let mut batch = rusqlite::Batch::new(conn, sql);
        let mut at = 0;
        while let Some(mut st) = batch.next()? {
            let n = st.parameter_count();
            let mine = rest.by_ref().take(n);
            if at >= *done {
                changed += run_to_end(&mut st, conn, mine)?;
                *done += 1;
            } else {
                mine.for_each(drop);
            }
            at += 1;
        }
        Ok(changed)
    })
}

/// The rows of `sql`, decoded (the last statement's, where there are several).
pub(super) fn fetch(conn: &Connection, sql: &str, params: &[Value]) -> rusqlite::Result<Vec<Row>> {
    fn read(st: &mut Statement<'_>) -> rusqlite::Result<Vec<Row>> {
        let width = st.column_count();
        let mut out = Vec::new();
        let mut rows = st.raw_query();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(decode(row.get_ref(i)?));
            }
            out.push(values);
        }
        Ok(out)
    }
    timed(sql, || {
        if single(sql) {
            let mut st = conn.prepare_cached(sql)?;
            bind(&mut st, params.iter())?;
            return read(&mut st);
        }
        let mut rest = params.iter();
        let mut out = Vec::new();
        let mut batch = rusqlite::Batch::new(conn, sql);
        while let Some(mut st) = batch.next()? {
            let n = st.parameter_count();
            bind(&mut st, rest.by_ref().take(n))?;
            out = read(&mut st)?;
        }
        Ok(out)
    })
}

/// Runs one prepared statement once per row of `rows`, each row's values
/// (then `tail`) bound in order: a batch's bulk update, inside its transaction.
/// Returns the rows changed in all; `done` counts the rows whose statement
/// ran, as [`execute`]'s does its statements.
pub(super) fn each(
    conn: &Connection,
    sql: &str,
    rows: &[&[Value]],
    tail: &[&Value],
    done: &mut usize,
) -> rusqlite::Result<u64> {
    timed(sql, || {
        let mut st = conn.prepare_cached(sql)?;
        let mut changed = 0;
        for row in rows.iter().skip(*done) {
            bind(&mut st, row.iter().chain(tail.iter().copied()))?;
            changed += u64::try_from(st.raw_execute()?).unwrap_or(0);
            *done += 1;
        }
        Ok(changed)
    })
}
