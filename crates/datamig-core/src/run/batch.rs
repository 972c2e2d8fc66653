//! One batch: read, transform, write, checkpoint, commit — in one transaction.
//!
//! Table sources are cut into chunks of the next `n` keys after the cursor
//! (`key > cursor ORDER BY key LIMIT n`: an index range, never OFFSET), and the
//! source filter is applied inside the chunk. So every batch costs the same
//! wherever the run is and whatever the planner believes about the filter (with
//! the filter in the paging query, stale statistics made PostgreSQL sort the
//! whole table for every batch). The checkpoint is written in the batch's own
//! transaction: a batch is either wholly done and counted, or not done at all.
//!
//! A Rust transform reads its next batch on a second connection while the
//! current one is transformed and written ([`Batches`]): the server reads and
//! writes at once, on two cores. A row read that way is written only if it is
//! unchanged since the read (PostgreSQL: its `xmin`; elsewhere: the source
//! columns and the filter); if any row changed, the batch rolls back and is
//! redone under row locks, as a batch is when nothing runs ahead.
//!
//! ```text
//! reader:  read 1 ─ read 2 ──────── read 3 ──────── …
//! writer:           transform 1 · BEGIN · write 1 (guarded) · checkpoint · COMMIT ─ transform 2 …
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tokio::task::JoinHandle;

use super::cursor;
use super::store::{self, BatchCounts};
use crate::db::{db_message, BulkUpdate, Conn, ConnectOptions, Guard, Row, Value};
use crate::job::{Filter, Outcome, Plan, Source, SourceRow, Step, Transform};
use crate::{Error, Result};

/// What a batch did.
pub(crate) struct Done {
    pub cursor: Vec<Value>,
    pub counts: BatchCounts,
    /// BEGIN to the end of COMMIT: how long the batch held its locks.
    pub transaction: Duration,
    /// The checkpoint statement: datamig's own overhead in the batch.
    pub bookkeeping: Duration,
}

/// Per-run facts computed once: quoted names, the bulk-update shape.
pub(crate) struct Prepared {
    table: String,
    keys: Vec<String>,
    columns: Vec<String>,
    filter: Option<Filter>,
    bulk: Option<BulkUpdate>,
    /// What a read ahead selects with each row for the guarded write.
    guard_select: Vec<String>,
}

impl Prepared {
    pub async fn new(conn: &mut Conn, plan: &Plan) -> Result<Prepared> {
        let (table, keys, columns, filter) = match &plan.source {
            Source::Table {
                table,
                key,
                columns,
                filter,
            } => (table.clone(), key.clone(), columns.clone(), filter.clone()),
            Source::Range { .. } => Default::default(),
        };
        let bulk = match &plan.step {
            Step::Transform(t) => {
                let sets = t.writes();
                let all: Vec<String> = keys.iter().chain(&sets).chain(&columns).cloned().collect();
                let mut types = conn.column_types(&table, &all).await.map_err(|e| {
                    Error::SchemaNotReady(format!("cannot use table {table}: {}", db_message(&e)))
                })?;
                let column_types = types.split_off(keys.len() + sets.len());
                Some(BulkUpdate {
                    table: table.clone(),
                    keys: keys.clone(),
                    sets,
                    types,
                    lo: Value::Null,
                    hi: Value::Null,
                    guard: Some(Guard {
                        columns: columns.clone(),
                        types: column_types,
                        filter: filter.as_ref().map(|f| (f.sql.clone(), f.params.clone())),
                    }),
                })
            }
            _ => None,
        };
        let guard_select = conn.guard_select(&columns);
        Ok(Prepared {
            table,
            keys,
            columns,
            filter,
            bulk,
            guard_select,
        })
    }

    /// Key range conditions `key > after AND key <= upto`, with the filter when asked.
    fn conditions(
        &self,
        conn: &Conn,
        with_filter: bool,
        after: Option<&[Value]>,
        upto: Option<&[Value]>,
    ) -> (String, Vec<Value>) {
        let mut parts = Vec::new();
        let mut params = Vec::new();
        if let (true, Some(f)) = (with_filter, &self.filter) {
            parts.push(format!("({})", f.sql));
            params.extend(f.params.iter().cloned());
        }
        for (bound, op) in [(after, ">"), (upto, "<=")] {
            if let Some(key) = bound {
                let (sql, order) = conn.compare_keys(&self.keys, op);
                parts.push(sql);
                params.extend(order.into_iter().map(|i| key[i].clone()));
            }
        }
        let sql = if parts.is_empty() {
            "1 = 1".to_string()
        } else {
            parts.join(" AND ")
        };
        (sql, params)
    }

    fn key_list(&self, conn: &Conn) -> String {
        self.keys
            .iter()
            .map(|k| conn.quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Keys left after `after` (all without it): the progress total, in rows visited.
    pub async fn count(&self, conn: &mut Conn, after: Option<&[Value]>) -> Result<i64> {
        let (cond, params) = self.conditions(conn, false, after, None);
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {cond}",
            conn.quote_ident(&self.table)
        );
        let row = conn
            .fetch_one(&sql, &params)
            .await
            .map_err(|e| Error::JobFailed(format!("cannot count the rows: {}", db_message(&e))))?;
        Ok(row.first().and_then(Value::as_i64).unwrap_or(0))
    }
}

/// How a batch ended.
pub(crate) enum Batch {
    /// Committed with its checkpoint.
    Done(Done),
    /// Nothing left after the cursor.
    Empty,
    /// Rows read ahead changed before the guarded write; rolled back.
    Changed,
}

/// What a batch's transaction does.
enum Work<'a> {
    /// Read (under row locks, for a transform), act and checkpoint: the keys
    /// after `after`, `size` of them, or all up to `upto` when redoing a range.
    Serial {
        after: Option<&'a [Value]>,
        upto: Option<&'a [Value]>,
    },
    /// Write a transform's result for rows read ahead, guarded, and checkpoint.
    Guarded(&'a Applied),
    /// Run a SQL or delete step over a key range bounded ahead, and checkpoint.
    Bounded {
        after: Option<&'a [Value]>,
        bound: &'a Bound,
    },
}

/// How long a batch's statements may wait for locks and run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
}

impl Limits {
    /// Sets up a connection's session for batches: the driver's batch settings
    /// and these timeouts, chosen by datamig rather than inherited from the server.
    pub async fn apply(&self, conn: &mut Conn) -> Result<()> {
        conn.prepare_for_batches()
            .await
            .map_err(|e| failed(conn, "cannot prepare the session for batches", &e))?;
        conn.set_timeouts(self.lock_timeout, self.statement_timeout)
            .await
            .map_err(|e| failed(conn, "cannot set the batch timeouts", &e))
    }
}

/// The batches of a run, one after another; see the module's documentation.
pub(crate) struct Batches<'p> {
    plan: &'p Plan,
    prep: Arc<Prepared>,
    run_id: i64,
    limits: Limits,
    /// Whether batches read ahead on a second connection.
    reads_ahead: bool,
    /// The reader connection, when batches read ahead and no read is in flight.
    reader: Option<Conn>,
    /// The read of the next batch, in flight on the reader connection.
    in_flight: Option<JoinHandle<InFlight>>,
}

/// What is read ahead of a batch's transaction.
enum Ahead {
    /// A transform's rows, read and transformed.
    Rows(Applied),
    /// A SQL or delete step's key range.
    Bound(Bound),
}

impl Ahead {
    fn cursor(&self) -> &[Value] {
        match self {
            Ahead::Rows(applied) => &applied.cursor,
            Ahead::Bound(bound) => &bound.last,
        }
    }
}

/// A finished read ahead: the reader connection back, where the read started, what it read.
struct InFlight {
    reader: Conn,
    after: Option<Vec<Value>>,
    size: i64,
    read: Result<Option<Ahead>>,
}

impl<'p> Batches<'p> {
    /// Batches of `plan`; a table source on a server database reads ahead when
    /// `read_ahead` allows (the reader connection opens with the first batch).
    pub fn new(
        conn: &Conn,
        plan: &'p Plan,
        prep: Prepared,
        run_id: i64,
        limits: Limits,
        read_ahead: bool,
    ) -> Batches<'p> {
        let reads_ahead =
            read_ahead && conn.reads_ahead() && matches!(plan.source, Source::Table { .. });
        Batches {
            plan,
            prep: Arc::new(prep),
            run_id,
            limits,
            reads_ahead,
            reader: None,
            in_flight: None,
        }
    }

    /// Drops the read in flight and the reader connection, after an error that
    /// may have broken them; the next batch opens a new one.
    pub fn reset(&mut self) {
        self.in_flight = None;
        self.reader = None;
    }

    /// Runs the batch of `size` keys after `after`; `None` when there is nothing left.
    pub async fn next(
        &mut self,
        conn: &mut Conn,
        after: Option<&[Value]>,
        size: i64,
    ) -> Result<Option<Done>> {
        if self.reads_ahead && self.reader.is_none() && self.in_flight.is_none() {
            let mut reader = Conn::connect(conn.url(), &ConnectOptions::default())
                .await
                .map_err(|e| Error::Transient {
                    message: format!("cannot open the reader connection: {e}"),
                    kind: crate::db::Transient::ConnectionLost,
                })?;
            self.limits.apply(&mut reader).await?;
            self.reader = Some(reader);
        }
        let (reader, read) = match (self.in_flight.take(), self.reader.take()) {
            (Some(handle), _) => {
                let done = handle.await.map_err(|e| {
                    Error::JobFailed(format!("reading ahead stopped unexpectedly: {e}"))
                })?;
                let mut reader = done.reader;
                if done.after.as_deref() == after && done.size == size {
                    (reader, done.read)
                } else {
                    let read =
                        read_ahead(&mut reader, self.transform(), &self.prep, after, size).await;
                    (reader, read)
                }
            }
            (None, Some(mut reader)) => {
                let read = read_ahead(&mut reader, self.transform(), &self.prep, after, size).await;
                (reader, read)
            }
            (None, None) => return self.serial(conn, after, None, size).await,
        };
        let ahead = match read {
            Ok(Some(ahead)) => ahead,
            other => {
                self.reader = Some(reader);
                return other.map(|_| None);
            }
        };
        // Read (and transform) the next batch while this one is written: the
        // task runs on another of the runtime's threads.
        let (prep, from) = (Arc::clone(&self.prep), ahead.cursor().to_vec());
        let transform = self.transform().cloned();
        self.in_flight = Some(tokio::spawn(async move {
            let mut reader = reader;
            let read = read_ahead(&mut reader, transform.as_ref(), &prep, Some(&from), size).await;
            InFlight {
                reader,
                after: Some(from),
                size,
                read,
            }
        }));
        let work = match &ahead {
            Ahead::Rows(applied) => Work::Guarded(applied),
            Ahead::Bound(bound) => Work::Bounded { after, bound },
        };
        let upto = match &work {
            Work::Guarded(applied) => applied.cursor.clone(),
            _ => Vec::new(),
        };
        match run(conn, self.plan, &self.prep, self.run_id, work, size).await? {
            Batch::Done(done) => Ok(Some(done)),
            Batch::Empty => Ok(None),
            Batch::Changed => {
                tracing::debug!(
                    "rows after {} changed since they were read; redoing the batch under row locks",
                    after.map_or("the start".into(), cursor::display)
                );
                self.serial(conn, after, Some(&upto), size).await
            }
        }
    }

    fn transform(&self) -> Option<&Arc<dyn Transform>> {
        match &self.plan.step {
            Step::Transform(t) => Some(t),
            _ => None,
        }
    }

    async fn serial(
        &mut self,
        conn: &mut Conn,
        after: Option<&[Value]>,
        upto: Option<&[Value]>,
        size: i64,
    ) -> Result<Option<Done>> {
        let work = Work::Serial { after, upto };
        match run(conn, self.plan, &self.prep, self.run_id, work, size).await? {
            Batch::Done(done) => Ok(Some(done)),
            Batch::Empty => Ok(None),
            Batch::Changed => unreachable!("a serial batch holds its rows' locks"),
        }
    }

    /// Closes the reader connection, waiting for a read in flight.
    pub async fn close(mut self) {
        if let Some(handle) = self.in_flight.take() {
            if let Ok(done) = handle.await {
                self.reader = Some(done.reader);
            }
        }
        if let Some(reader) = self.reader.take() {
            reader.close().await;
        }
    }
}

/// Runs one batch's transaction.
async fn run(
    conn: &mut Conn,
    plan: &Plan,
    prep: &Prepared,
    run_id: i64,
    work: Work<'_>,
    size: i64,
) -> Result<Batch> {
    let started = Instant::now();
    conn.begin()
        .await
        .map_err(|e| failed(conn, "cannot begin the batch", &e))?;
    let result = body(conn, plan, prep, run_id, work, size, started).await;
    match result {
        Ok(Batch::Done(mut done)) => {
            conn.commit()
                .await
                .map_err(|e| failed(conn, "the batch's commit failed", &e))?;
            done.transaction = started.elapsed();
            Ok(Batch::Done(done))
        }
        Ok(other) => {
            let _ = conn.rollback().await;
            Ok(other)
        }
        Err(e) => {
            let _ = conn.rollback().await;
            Err(e)
        }
    }
}

/// A batch's database error: [`Error::Transient`] when trying again can pass.
fn failed(conn: &Conn, what: &str, e: &sqlx::Error) -> Error {
    let message = format!("{what}: {}", db_message(e));
    match conn.transient(e) {
        Some(kind) => Error::Transient { message, kind },
        None => Error::JobFailed(message),
    }
}

async fn body(
    conn: &mut Conn,
    plan: &Plan,
    prep: &Prepared,
    run_id: i64,
    work: Work<'_>,
    size: i64,
    started: Instant,
) -> Result<Batch> {
    let (cursor, mut counts) = match (work, &plan.source, &plan.step) {
        (Work::Guarded(applied), _, _) => {
            if !write(conn, prep, run_id, applied, true).await? {
                return Ok(Batch::Changed);
            }
            (applied.cursor.clone(), applied.counts.clone())
        }
        (Work::Serial { after, .. }, Source::Range { start, end }, Step::Sql(sql)) => {
            let lo = match after.and_then(|k| k.first()).and_then(Value::as_i64) {
                Some(done) => done.saturating_add(1),
                None => *start,
            };
            if lo > *end {
                return Ok(Batch::Empty);
            }
            let hi = lo.saturating_add(size - 1).min(*end);
            let sql = sql
                .replace("{lo}", &lo.to_string())
                .replace("{hi}", &hi.to_string());
            let changed = conn
                .execute(&sql, &[])
                .await
                .map_err(|e| failed(conn, "the batch's statement failed", &e))?;
            (
                vec![Value::Int(hi)],
                BatchCounts {
                    rows: hi - lo + 1,
                    changed: to_i64(changed),
                    ..Default::default()
                },
            )
        }
        (Work::Serial { .. }, Source::Range { .. }, _) => {
            return Err(Error::Usage("a range source takes only a SQL step".into()))
        }
        (Work::Serial { after, upto }, Source::Table { .. }, Step::Transform(t)) => {
            let Some(read) = read_rows(conn, prep, after, upto, size, false).await? else {
                return Ok(Batch::Empty);
            };
            let applied = apply(t.as_ref(), prep, read, false)?;
            write(conn, prep, run_id, &applied, false).await?;
            (applied.cursor, applied.counts)
        }
        (Work::Serial { after, .. }, Source::Table { .. }, step) => {
            let Some(bound) = bound(conn, prep, after, size).await? else {
                return Ok(Batch::Empty);
            };
            let counts = key_range(conn, prep, step, after, &bound).await?;
            (bound.last, counts)
        }
        (Work::Bounded { after, bound }, _, step) => {
            let counts = key_range(conn, prep, step, after, bound).await?;
            (bound.last.clone(), counts)
        }
    };
    counts.elapsed_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let position = cursor::encode(&cursor).map_err(Error::JobFailed)?;
    let checkpoint_started = Instant::now();
    let moved = store::checkpoint(conn, run_id, &position, &counts)
        .await
        .map_err(|e| failed(conn, "the checkpoint failed", &e))?;
    let bookkeeping = checkpoint_started.elapsed();
    if !moved {
        return Err(Error::JobFailed(format!(
            "run {run_id} is no longer running in datamig_runs (cancelled from elsewhere?); this batch was rolled back"
        )));
    }
    Ok(Batch::Done(Done {
        cursor,
        counts,
        transaction: Duration::ZERO,
        bookkeeping,
    }))
}

/// A SQL or delete step's batch: the keys after the cursor up to `last`.
pub(crate) struct Bound {
    /// The batch's last key: its checkpoint.
    last: Vec<Value>,
    /// Keys in the batch when it was bounded.
    rows: i64,
}

/// Bounds the batch of the next `size` keys after `after` by its last key.
async fn bound(
    conn: &mut Conn,
    prep: &Prepared,
    after: Option<&[Value]>,
    size: i64,
) -> Result<Option<Bound>> {
    let keys = prep.key_list(conn);
    let (cond, params) = prep.conditions(conn, false, after, None);
    let table = conn.quote_ident(&prep.table);
    let chunk = format!("SELECT {keys} FROM {table} WHERE {cond} ORDER BY {keys} LIMIT {size}");
    // One key: max() and count() over the chunk, an index-only scan and an
    // aggregate (a window and a sort cost PostgreSQL 4.5 ms a batch of 5000).
    let sql = if prep.keys.len() == 1 {
        format!("SELECT max({keys}), count(*) FROM ({chunk}) s")
    } else {
        let desc: Vec<String> = prep
            .keys
            .iter()
            .map(|k| format!("{} DESC", conn.quote_ident(k)))
            .collect();
        format!(
            "SELECT {keys}, count(*) OVER () FROM ({chunk}) s ORDER BY {} LIMIT 1",
            desc.join(", ")
        )
    };
    let rows = conn
        .fetch(&sql, &params)
        .await
        .map_err(|e| failed(conn, "reading the batch's bounds failed", &e))?;
    let Some(mut last) = rows.into_iter().next() else {
        return Ok(None);
    };
    let rows = last.pop().and_then(|v| v.as_i64()).unwrap_or(0);
    Ok((rows > 0).then_some(Bound { last, rows }))
}

/// Runs a SQL or delete step over the key range `(after, bound.last]`.
async fn key_range(
    conn: &mut Conn,
    prep: &Prepared,
    step: &Step,
    after: Option<&[Value]>,
    bound: &Bound,
) -> Result<BatchCounts> {
    let (range, params) = prep.conditions(conn, true, after, Some(&bound.last));
    let sql = match step {
        Step::Delete => format!(
            "DELETE FROM {} WHERE {range}",
            conn.quote_ident(&prep.table)
        ),
        Step::Sql(sql) => sql.replace("{batch}", &format!("({range})")),
        Step::Transform(_) => unreachable!("transforms read their rows"),
    };
    let changed = conn
        .execute(&sql, &params)
        .await
        .map_err(|e| failed(conn, "the batch's statement failed", &e))?;
    Ok(BatchCounts {
        rows: bound.rows,
        changed: to_i64(changed),
        ..Default::default()
    })
}

/// What the reader connection reads ahead for the batch after `after`: a
/// transform's rows, transformed, or a SQL or delete step's key range.
async fn read_ahead(
    reader: &mut Conn,
    transform: Option<&Arc<dyn Transform>>,
    prep: &Prepared,
    after: Option<&[Value]>,
    size: i64,
) -> Result<Option<Ahead>> {
    match transform {
        Some(t) => match read_rows(reader, prep, after, None, size, true).await? {
            Some(read) => Ok(Some(Ahead::Rows(apply(t.as_ref(), prep, read, true)?))),
            None => Ok(None),
        },
        None => Ok(bound(reader, prep, after, size).await?.map(Ahead::Bound)),
    }
}

/// A transform batch's rows, read and not yet transformed.
pub(crate) struct Read {
    /// Rows the filter matched: keys, source columns, then (read ahead) guard values.
    rows: Vec<Row>,
    /// The batch's last key: its checkpoint.
    cursor: Vec<Value>,
    /// Keys visited, matched by the filter or not.
    visited: i64,
    /// The first key column's lowest and highest value visited.
    lo: Value,
    hi: Value,
}

/// Reads a transform batch: the next `size` keys after `after`, or every key up to
/// `upto`. Under row locks inside the batch's transaction, or (`ahead`) as a
/// plain read with each row's guard values.
async fn read_rows(
    conn: &mut Conn,
    prep: &Prepared,
    after: Option<&[Value]>,
    upto: Option<&[Value]>,
    size: i64,
    ahead: bool,
) -> Result<Option<Read>> {
    let keys = prep.key_list(conn);
    let mut select: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
    select.extend(prep.columns.iter().map(|c| conn.quote_ident(c)));
    if ahead {
        select.extend(prep.guard_select.iter().cloned());
    }
    // The filter is evaluated per row as a last column, not used to page: the
    // read stays an index range scan of the next `size` keys.
    let mut params = Vec::new();
    if let Some(f) = &prep.filter {
        select.push(format!("CASE WHEN {} THEN 1 ELSE 0 END", f.sql));
        params.extend(f.params.iter().cloned());
    }
    let (cond, key_params) = prep.conditions(conn, false, after, upto);
    params.extend(key_params);
    let limit = match upto {
        Some(_) => String::new(),
        None => format!(" LIMIT {size}"),
    };
    let lock = if ahead { "" } else { conn.for_update() };
    let sql = format!(
        "SELECT {} FROM {} WHERE {cond} ORDER BY {keys}{limit}{lock}",
        select.join(", "),
        conn.quote_ident(&prep.table),
    );
    let mut rows = conn
        .fetch(&sql, &params)
        .await
        .map_err(|e| failed(conn, "reading the batch failed", &e))?;
    let n_keys = prep.keys.len();
    let (cursor, lo, hi) = match (upto, rows.first(), rows.last()) {
        // A redone range ends where it ended when it was read ahead, whatever is in it now.
        (Some(upto), first, last) => (
            upto.to_vec(),
            first.map_or(Value::Null, |r| r[0].clone()),
            last.map_or(Value::Null, |r| r[0].clone()),
        ),
        (None, Some(first), Some(last)) => {
            (last[..n_keys].to_vec(), first[0].clone(), last[0].clone())
        }
        _ => return Ok(None),
    };
    let visited = to_i64(rows.len());
    if prep.filter.is_some() {
        rows.retain_mut(|row| row.pop().and_then(|m| m.as_i64()) == Some(1));
    }
    Ok(Some(Read {
        rows,
        cursor,
        visited,
        lo,
        hi,
    }))
}

/// A transform's result for one batch, ready to write.
pub(crate) struct Applied {
    /// Keys, new values, then (read ahead) guard values.
    updates: Vec<Row>,
    rejects: Vec<(String, String)>,
    cursor: Vec<Value>,
    counts: BatchCounts,
    lo: Value,
    hi: Value,
}

/// Runs the transform over a batch's rows (over all cores when it is CPU-heavy).
fn apply(transform: &dyn Transform, prep: &Prepared, read: Read, ahead: bool) -> Result<Applied> {
    let n_keys = prep.keys.len();
    let names: Vec<String> = prep.keys.iter().chain(&prep.columns).cloned().collect();
    let width = names.len();
    let apply = |row: &Row| {
        transform.apply(&SourceRow {
            names: &names,
            values: &row[..width],
            key_len: n_keys,
        })
    };
    let outcomes: Vec<Outcome> = if transform.cpu_heavy() {
        tokio::task::block_in_place(|| read.rows.par_iter().map(apply).collect())
    } else {
        read.rows.iter().map(apply).collect()
    };

    let writes = transform.writes().len();
    let mut updates = Vec::new();
    let mut rejects = Vec::new();
    for (row, outcome) in read.rows.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Update(values) => {
                if values.len() != writes {
                    return Err(Error::JobFailed(format!(
                        "the transform returned {} value(s) for {writes} written column(s) at key {}",
                        values.len(),
                        cursor::display(&row[..n_keys])
                    )));
                }
                let mut full = Vec::with_capacity(row.len() - width + n_keys + writes);
                full.extend_from_slice(&row[..n_keys]);
                full.extend(values);
                if ahead {
                    full.extend(row.into_iter().skip(width));
                }
                updates.push(full);
            }
            Outcome::Skip => {}
            // A row rejected from a read ahead may have changed since; its reason
            // describes the row as it was read.
            Outcome::Reject(reason) => rejects.push((cursor::display(&row[..n_keys]), reason)),
        }
    }
    let counts = BatchCounts {
        rows: read.visited,
        changed: to_i64(updates.len()),
        rejected: to_i64(rejects.len()),
        elapsed_ms: 0,
    };
    Ok(Applied {
        updates,
        rejects,
        cursor: read.cursor,
        counts,
        lo: read.lo,
        hi: read.hi,
    })
}

/// Writes a transform's result and its rejects. `false` when guarded and a row
/// was not as read (the caller rolls back).
async fn write(
    conn: &mut Conn,
    prep: &Prepared,
    run_id: i64,
    applied: &Applied,
    guarded: bool,
) -> Result<bool> {
    if let (Some(bulk), false) = (&prep.bulk, applied.updates.is_empty()) {
        let spec = BulkUpdate {
            lo: applied.lo.clone(),
            hi: applied.hi.clone(),
            guard: if guarded { bulk.guard.clone() } else { None },
            ..bulk.clone()
        };
        let written = conn
            .bulk_update(&spec, &applied.updates)
            .await
            .map_err(|e| failed(conn, "writing the batch failed", &e))?;
        if guarded && written != u64::try_from(applied.updates.len()).unwrap_or(u64::MAX) {
            return Ok(false);
        }
    }
    if !applied.rejects.is_empty() {
        store::reject(conn, run_id, &applied.rejects)
            .await
            .map_err(|e| failed(conn, "recording rejected rows failed", &e))?;
    }
    Ok(true)
}

fn to_i64<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
