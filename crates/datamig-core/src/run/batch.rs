//! One batch: read, transform, write, checkpoint, commit — in one transaction.
//!
//! A batch is the next `n` rows the source selects after the cursor. To find
//! them, a table source scans a chunk of the next keys (`key > cursor ORDER BY
//! key LIMIT k`: an index range, never OFFSET) and applies the source filter
//! inside it, ending the batch at its `n`-th matching row. So every batch costs
//! the same wherever the run is and whatever the planner believes about the
//! filter (with the filter in the paging query, stale statistics made PostgreSQL
//! sort the whole table for every batch). The chunk's size `k` follows what the
//! chunks before it found ([`Density`]), at most [`MAX_SCAN`] times `n`: a
//! purge whose filter matches half the rows scans about `2n` keys for its `n`
//! rows. Where no row lock is taken (reading ahead, and SQLite) the filter is
//! applied over the chunk in the query, which stops at the `n`-th match and
//! returns only matching rows. The checkpoint is written in the batch's own
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
use super::partition::{self, Claim};
use super::store::{self, BatchCounts};
use crate::db::{db_message, BulkUpdate, Conn, Guard, Row, Value};
use crate::job::{Filter, Outcome, Plan, Source, SourceRow, Step, Transform};
use crate::{Error, Result};

/// A batch scans at most this many times its size in keys to find its rows.
pub(crate) const MAX_SCAN: i64 = 20;

/// How big a batch is: `rows` the source selects (rows matching its filter),
/// found among at most `keys` keys after the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    pub rows: i64,
    pub keys: i64,
}

/// What a batch's chunk held: the rows the filter matched, and, when that was
/// fewer than the batch's size, how many keys the chunk had (`None`: the batch
/// found all its rows before the chunk's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    pub matched: i64,
    pub ran_out: Option<i64>,
}

/// Keys per matching row, in thousandths: how large a chunk to scan for a batch.
/// It follows what the chunks found: after a batch that ran out of keys, the
/// density its chunk saw and a quarter to spare (doubling where nothing
/// matched); after one that found all its rows, 2% less, so that a chunk does
/// not stay larger than the filter needs. A larger chunk than needed costs
/// PostgreSQL and SQLite nothing (their scan stops at the batch's last row) and
/// MariaDB a little; one too small costs a second query and a short batch, so
/// the chunk shrinks slowly and grows at once. Between 1 (every key matches)
/// and [`MAX_SCAN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Density(i64);

impl Default for Density {
    fn default() -> Self {
        Density(1000)
    }
}

impl Density {
    pub fn after(self, scanned: Scanned) -> Density {
        let per_mille = match scanned.ran_out {
            None => self.0 * 49 / 50,
            Some(_) if scanned.matched == 0 => self.0.saturating_mul(2),
            Some(keys) => keys.saturating_mul(1250) / scanned.matched,
        };
        Density(per_mille.clamp(1000, MAX_SCAN * 1000))
    }

    /// The size of a batch of `rows` rows (a key is a row without a filter).
    pub fn size(self, rows: i64, filtered: bool) -> Size {
        let keys = if filtered {
            i64::try_from(i128::from(rows) * i128::from(self.0) / 1000).unwrap_or(i64::MAX)
        } else {
            rows
        };
        Size {
            rows,
            keys: keys.max(rows),
        }
    }
}

/// What a batch did.
pub(crate) struct Done {
    pub cursor: Vec<Value>,
    pub counts: BatchCounts,
    /// BEGIN to the end of COMMIT: how long the batch held its locks.
    pub transaction: Duration,
    /// The checkpoint statement: datamig's own overhead in the batch.
    pub bookkeeping: Duration,
    /// What its chunk's scan found, which sizes the next chunk.
    pub scanned: Scanned,
    /// The checkpoint, when it goes to the server with the COMMIT.
    commit_with: Option<String>,
    /// The archive's length once the batch is committed (an archive step).
    file_offset: Option<u64>,
}

/// The CSV file an archive step writes deleted rows to, and its length at the
/// last committed checkpoint: anything after it belongs to a batch that did not
/// commit, and is cut off before the next batch writes.
pub(crate) struct Archive {
    path: std::path::PathBuf,
    committed: u64,
}

impl Archive {
    /// The archive of a run: cut back to `checkpoint` (a resumed run's), or, for
    /// a new run, as it is (with a header line written if it is empty).
    pub fn open(
        path: &std::path::Path,
        header: &[String],
        checkpoint: Option<u64>,
    ) -> Result<Archive> {
        let io = |action: &'static str, e: std::io::Error| Error::io(action, path, e);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io("cannot open the archive", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("cannot read the archive", e))?
            .len();
        let committed = match checkpoint {
            Some(at) if len < at => {
                return Err(Error::CorruptCheckpoint(format!(
                    "the archive {} is {len} bytes, shorter than the {at} its run's checkpoint recorded: rows \
                     that were archived and deleted are missing from it. Restore the file, or start over with \
                     --restart (a new run appends to it)",
                    path.display()
                )))
            }
            Some(at) => at,
            None if len == 0 => {
                let mut w = csv::Writer::from_writer(&file);
                w.write_record(header).map_err(|e| io("cannot write the archive", e.into()))?;
                w.flush().map_err(|e| io("cannot write the archive", e))?;
                drop(w);
                file.sync_data().map_err(|e| io("cannot write the archive", e))?;
                file.metadata().map_err(|e| io("cannot read the archive", e))?.len()
            }
            None => len,
        };
        let archive = Archive {
            path: path.to_path_buf(),
            committed,
        };
        archive.rewind()?;
        Ok(archive)
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Cuts off what a batch that did not commit wrote.
    fn rewind(&self) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| Error::io("cannot open the archive", &self.path, e))?;
        if file.metadata().map(|m| m.len()).unwrap_or(0) > self.committed {
            file.set_len(self.committed)
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io("cannot cut back the archive", &self.path, e))?;
        }
        Ok(())
    }

    /// Appends rows and syncs them to disk; returns the file's new length.
    fn append(&self, rows: &[Row]) -> Result<u64> {
        let io = |e: std::io::Error| Error::io("cannot write the archive", &self.path, e);
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(&file));
        for row in rows {
            w.write_record(row.iter().map(field))
                .map_err(|e| io(e.into()))?;
        }
        w.flush().map_err(io)?;
        drop(w);
        file.sync_data().map_err(io)?;
        file.metadata().map(|m| m.len()).map_err(io)
    }
}

/// A value as a CSV field.
fn field(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(t) => t.clone(),
        Value::Bytes(b) => format!(
            "\\x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
        Value::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
    }
}

/// Per-run facts computed once: quoted names, the bulk-update shape.
#[derive(Clone)]
pub(crate) struct Prepared {
    table: String,
    keys: Vec<String>,
    /// Each key's placeholder where it is compared (a cast for a key read as text).
    key_marks: Vec<String>,
    columns: Vec<String>,
    filter: Option<Filter>,
    bulk: Option<BulkUpdate>,
    /// What a read ahead selects with each row for the guarded write.
    guard_select: Vec<String>,
    /// The last key batches may reach (a partition's upper bound); `None`: the table's end.
    end: Option<Vec<Value>>,
    /// Whether a CPU-heavy transform spreads each batch over all cores (one
    /// cursor), or runs on the thread of its worker (a partitioned run, whose
    /// workers are the parallelism).
    spread: bool,
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
            Source::Range { .. } | Source::Csv { .. } => Default::default(),
        };
        let unusable = |e: sqlx::Error| {
            Error::SchemaNotReady(format!("cannot use table {table}: {}", db_message(&e)))
        };
        let key_types = if keys.is_empty() {
            Vec::new()
        } else {
            conn.column_types(&table, &keys).await.map_err(unusable)?
        };
        let key_marks = key_types.iter().map(|t| conn.key_mark(t)).collect();
        let bulk = match &plan.step {
            Step::Transform(t) => {
                let sets = t.writes();
                let rest: Vec<String> = sets.iter().chain(&columns).cloned().collect();
                let mut types = key_types;
                types.extend(conn.column_types(&table, &rest).await.map_err(unusable)?);
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
            key_marks,
            columns,
            filter,
            bulk,
            guard_select,
            end: None,
            spread: true,
        })
    }

    /// Runs a CPU-heavy transform on the calling worker's thread only.
    pub fn one_thread_per_batch(mut self) -> Prepared {
        self.spread = false;
        self
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
        // A range redone up to `upto` is within the end already.
        let upto = upto.or(self.end.as_deref());
        for (bound, op) in [(after, ">"), (upto, "<=")] {
            if let Some(key) = bound {
                let (sql, order) = conn.compare_keys(&self.keys, &self.key_marks, op);
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

    /// The rows of the batch after `after`: `outer` (names of `inner`'s
    /// columns) of the rows matching the filter, at most `size.rows`, among the
    /// next `size.keys` keys. The chunk's own `ORDER BY … LIMIT` keeps it an
    /// index range scan in key order whatever the planner thinks of the filter,
    /// and the outer `LIMIT` stops the scan at the batch's last row (PostgreSQL
    /// and SQLite run the two as one pipeline; MariaDB fills the chunk first,
    /// which is why its size follows the density). Takes no row locks: a lock on
    /// the chunk makes PostgreSQL lock and sort all of it.
    fn matching(
        &self,
        conn: &Conn,
        filter: &Filter,
        inner: &[String],
        outer: &[String],
        after: Option<&[Value]>,
        size: Size,
    ) -> (String, Vec<Value>) {
        let keys = self.key_list(conn);
        let (cond, key_params) = self.conditions(conn, false, after, None);
        let sql = format!(
            "SELECT {} FROM (SELECT {}, CASE WHEN ({}) THEN 1 ELSE 0 END AS datamig_m FROM {} \
             WHERE {cond} ORDER BY {keys} LIMIT {}) c WHERE datamig_m = 1 ORDER BY {keys} LIMIT {}",
            outer.join(", "),
            inner.join(", "),
            filter.sql,
            conn.quote_ident(&self.table),
            size.keys,
            size.rows
        );
        let mut params = filter.params.clone();
        params.extend(key_params);
        (sql, params)
    }

    /// `(last key…, count)` of the rows of `sql`, which selects the key columns.
    /// One key: max() and count(), an aggregate over an index scan (a window and
    /// a sort cost PostgreSQL 4.5 ms a batch of 5000), but not for a key read as
    /// text (PostgreSQL before 16 has no max() of a `uuid`).
    fn last_of(&self, conn: &Conn, sql: &str) -> String {
        let keys = self.key_list(conn);
        if self.keys.len() == 1 && self.key_marks.first().is_none_or(|m| m == "?") {
            format!("SELECT max({keys}), count(*) FROM ({sql}) s")
        } else {
            format!(
                "SELECT {keys}, count(*) OVER () FROM ({sql}) s ORDER BY {} LIMIT 1",
                self.keys_desc(conn)
            )
        }
    }

    /// The columns an archive holds: the key, then the source's columns.
    pub fn archive_header(&self) -> Vec<String> {
        self.keys.iter().chain(&self.columns).cloned().collect()
    }

    /// `k1 DESC, k2 DESC`: the keys in reverse order, for the last row of a chunk.
    fn keys_desc(&self, conn: &Conn) -> String {
        self.keys
            .iter()
            .map(|k| format!("{} DESC", conn.quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn key_list(&self, conn: &Conn) -> String {
        self.keys
            .iter()
            .map(|k| conn.quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The planner's estimate of [`Prepared::count`], without counting.
    pub async fn estimate(&self, conn: &mut Conn, after: Option<&[Value]>) -> Option<i64> {
        let (cond, params) = self.conditions(conn, true, after, None);
        let sql = format!(
            "SELECT 1 FROM {} WHERE {cond}",
            conn.quote_ident(&self.table)
        );
        conn.estimate(&sql, &params).await.ok().flatten()
    }

    /// Rows the source selects after `after` (all without it): the progress total.
    pub async fn count(&self, conn: &mut Conn, after: Option<&[Value]>) -> Result<i64> {
        let (cond, params) = self.conditions(conn, true, after, None);
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
    /// Read (under row locks, for a transform), act and checkpoint: the batch
    /// after `after`, or every key up to `upto` when redoing a range.
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
    /// See [`Limits::deadline`].
    pub network_timeout: Duration,
}

impl Limits {
    /// Sets up a connection's session for batches: the driver's batch settings
    /// and these timeouts, chosen by datamig rather than inherited from the server.
    /// How long a whole batch may take before its connection is taken for dead:
    /// its statement timeout (a batch's statements run one after another, but a
    /// batch that is not dead ends at the first that runs out), its lock timeout,
    /// and the network's allowance. A socket whose peer went silent (a dead
    /// network path, a frozen server) never returns an error by itself. `None`
    /// without a statement timeout: then no batch is presumed dead.
    pub fn deadline(&self) -> Option<Duration> {
        self.statement_timeout
            .map(|s| s + self.lock_timeout + self.network_timeout)
    }

    pub async fn apply(&self, conn: &mut Conn) -> Result<()> {
        conn.prepare_for_batches()
            .await
            .map_err(|e| failed("cannot prepare the session for batches", &e))?;
        conn.set_timeouts(self.lock_timeout, self.statement_timeout, self.deadline())
            .await
            .map_err(|e| failed("cannot set the batch timeouts", &e))
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
    /// How many keys a chunk scans per row, from what the chunks so far found.
    density: Density,
    /// A dry run: each batch does its work and rolls back, leaving no checkpoint.
    dry: bool,
    /// The archive of an archive step.
    archive: Option<Archive>,
    /// The partition batches work in, for a partitioned run: each checkpoints
    /// into it, and none goes past its upper bound.
    claim: Option<Claim>,
    /// When this process's last batch committed (or its batches began): a
    /// batch's checkpoint adds the time since to the run's time, its waits
    /// before it included, so that the run's speed is the one a user sees.
    since: Instant,
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

    fn scanned(&self) -> Scanned {
        match self {
            Ahead::Rows(applied) => applied.scanned,
            Ahead::Bound(bound) => bound.scanned,
        }
    }
}

/// A finished read ahead: the reader connection back, where the read started, what it read.
struct InFlight {
    reader: Conn,
    after: Option<Vec<Value>>,
    end: Option<Vec<Value>>,
    rows: i64,
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
        Batches::with(plan, prep, run_id, limits, reads_ahead, false)
    }

    /// Batches of a dry run: read and change as a run would, under row locks,
    /// then roll back; nothing is recorded.
    pub fn dry(plan: &'p Plan, prep: Prepared, limits: Limits) -> Batches<'p> {
        Batches::with(plan, prep, 0, limits, false, true)
    }

    fn with(
        plan: &'p Plan,
        prep: Prepared,
        run_id: i64,
        limits: Limits,
        reads_ahead: bool,
        dry: bool,
    ) -> Batches<'p> {
        Batches {
            plan,
            prep: Arc::new(prep),
            run_id,
            limits,
            reads_ahead,
            reader: None,
            in_flight: None,
            density: Density::default(),
            dry,
            archive: None,
            claim: None,
            since: Instant::now(),
        }
    }

    /// Works in `claim` from here on: batches stay within its upper bound and
    /// checkpoint into it. A read in flight for another range is not used.
    pub fn set_claim(&mut self, claim: Option<Claim>) {
        let end = claim
            .as_ref()
            .and_then(|c| c.hi)
            .map(|hi| vec![Value::Int(hi)]);
        if self.prep.end != end {
            Arc::make_mut(&mut self.prep).end = end;
        }
        self.claim = claim;
    }

    /// The archive an archive step writes to.
    pub fn set_archive(&mut self, archive: Archive) {
        self.archive = Some(archive);
    }

    /// After an error, the archive's committed length as the database has it.
    pub fn set_archive_committed(&mut self, offset: Option<i64>) {
        if let (Some(a), Some(o)) = (&mut self.archive, offset) {
            a.committed = u64::try_from(o).unwrap_or(a.committed);
        }
    }

    /// Runs one batch's transaction as this run does its batches; once it has
    /// committed, the archive's committed length moves on with it.
    async fn transact(&mut self, conn: &mut Conn, work: Work<'_>, size: Size) -> Result<Batch> {
        let batch = run(
            conn,
            self.plan,
            &self.prep,
            self.run_id,
            work,
            size,
            self.since,
            self.dry,
            self.archive.as_ref(),
            self.claim.as_ref(),
        )
        .await?;
        if let Batch::Done(done) = &batch {
            self.since = Instant::now();
            if let (Some(a), Some(o)) = (&mut self.archive, done.file_offset) {
                a.committed = o;
            }
        }
        Ok(batch)
    }

    /// The queries a batch of `rows` rows after `after` runs to find its rows,
    /// and (for a SQL or delete step) to act on them up to `upto`, with their
    /// parameters: what a dry run asks EXPLAIN about.
    pub fn queries(
        &self,
        conn: &Conn,
        after: Option<&[Value]>,
        upto: Option<&[Value]>,
        rows: i64,
    ) -> Vec<(String, Vec<Value>)> {
        queries(conn, self.plan, &self.prep, after, upto, self.size(rows))
    }

    /// Drops the read in flight and the reader connection, after an error that
    /// may have broken them; the next batch opens a new one.
    pub fn reset(&mut self) {
        // A read stuck on a dead socket is abandoned, not waited for.
        if let Some(read) = self.in_flight.take() {
            read.abort();
        }
        self.reader = None;
    }

    /// The size of a batch of `rows` rows from here.
    fn size(&self, rows: i64) -> Size {
        self.density.size(rows, self.prep.filter.is_some())
    }

    /// Runs the batch of the next `rows` rows after `after`; `None` when there is nothing left.
    pub async fn next(
        &mut self,
        conn: &mut Conn,
        after: Option<&[Value]>,
        rows: i64,
    ) -> Result<Option<Done>> {
        if self.reads_ahead && self.reader.is_none() && self.in_flight.is_none() {
            let mut reader = conn.reopen().await.map_err(|e| Error::Transient {
                message: format!("cannot open the reader connection: {e}"),
                kind: crate::db::Transient::ConnectionLost,
            })?;
            self.limits.apply(&mut reader).await?;
            self.reader = Some(reader);
        }
        let size = self.size(rows);
        let in_flight = match (self.in_flight.take(), self.reader.take()) {
            (Some(handle), _) => handle,
            (None, Some(reader)) => self.read_ahead(reader, after.map(<[Value]>::to_vec), rows),
            (None, None) => return self.serial(conn, after, None, size).await,
        };
        let mut done = in_flight
            .await
            .map_err(|e| Error::JobFailed(format!("reading ahead stopped unexpectedly: {e}")))?;
        if !(done.after.as_deref() == after && done.rows == rows && done.end == self.prep.end) {
            // Read for another batch (or another partition's bound): read again.
            done = self
                .read_ahead(done.reader, after.map(<[Value]>::to_vec), rows)
                .await
                .map_err(|e| {
                    Error::JobFailed(format!("reading ahead stopped unexpectedly: {e}"))
                })?;
        }
        let (reader, read) = (done.reader, done.read);
        let ahead = match read {
            Ok(Some(ahead)) => ahead,
            other => {
                self.reader = Some(reader);
                return other.map(|_| None);
            }
        };
        self.density = self.density.after(ahead.scanned());
        // Read (and transform) the next batch while this one is written.
        self.in_flight = Some(self.read_ahead(reader, Some(ahead.cursor().to_vec()), rows));
        let work = match &ahead {
            Ahead::Rows(applied) => Work::Guarded(applied),
            Ahead::Bound(bound) => Work::Bounded { after, bound },
        };
        let upto = match &work {
            Work::Guarded(applied) => applied.cursor.clone(),
            _ => Vec::new(),
        };
        match self.transact(conn, work, size).await? {
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

    /// Reads (and transforms) the batch of `rows` rows after `after` on the
    /// reader connection, as a task of its own: on another of the runtime's
    /// threads, whoever awaits it (several workers' transforms run at once).
    fn read_ahead(
        &self,
        mut reader: Conn,
        after: Option<Vec<Value>>,
        rows: i64,
    ) -> JoinHandle<InFlight> {
        let prep = Arc::clone(&self.prep);
        let transform = self.transform().cloned();
        let size = self.size(rows);
        tokio::spawn(async move {
            let read = read_ahead(
                &mut reader,
                transform.as_ref(),
                &prep,
                after.as_deref(),
                size,
            )
            .await;
            InFlight {
                reader,
                after,
                end: prep.end.clone(),
                rows,
                read,
            }
        })
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
        size: Size,
    ) -> Result<Option<Done>> {
        let work = Work::Serial { after, upto };
        match self.transact(conn, work, size).await? {
            Batch::Done(done) => {
                self.density = self.density.after(done.scanned);
                Ok(Some(done))
            }
            Batch::Empty => Ok(None),
            Batch::Changed => unreachable!("a serial batch holds its rows' locks"),
        }
    }

    /// Closes the reader connection, waiting for a read in flight, and cuts the
    /// archive back to what is committed.
    pub async fn close(mut self) {
        if let Some(a) = &self.archive {
            if let Err(e) = a.rewind() {
                tracing::warn!("{e}");
            }
        }
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

/// The error for a batch that had no answer within `deadline`: its connection
/// is lost, as far as the run can tell, and is replaced before a retry.
pub(crate) fn unanswered(deadline: Duration) -> Error {
    Error::Transient {
        message: format!(
            "no answer from the server within {:.0}s (the statement and lock timeouts plus --network-timeout)",
            deadline.as_secs_f64()
        ),
        kind: crate::db::Transient::ConnectionLost,
    }
}

/// Runs one batch's transaction.
#[allow(clippy::too_many_arguments)] // the batch's parts, as `body` takes them
async fn run(
    conn: &mut Conn,
    plan: &Plan,
    prep: &Prepared,
    run_id: i64,
    work: Work<'_>,
    size: Size,
    since: Instant,
    dry: bool,
    archive: Option<&Archive>,
    claim: Option<&Claim>,
) -> Result<Batch> {
    let started = Instant::now();
    let opening = opens_with_statement(conn, plan, &work);
    if !opening {
        conn.begin()
            .await
            .map_err(|e| failed("cannot begin the batch", &e))?;
    }
    crate::crash::reached(crate::crash::Point::BeforeWrite);
    let result = body(
        conn, plan, prep, run_id, work, size, since, dry, archive, claim,
    )
    .await;
    match result {
        Ok(Batch::Done(mut done)) if dry => {
            conn.rollback()
                .await
                .map_err(|e| failed("the dry run's rollback failed", &e))?;
            done.transaction = started.elapsed();
            Ok(Batch::Done(done))
        }
        Ok(Batch::Done(mut done)) => {
            crate::crash::reached(crate::crash::Point::AfterWrite);
            let mut sent_with_commit = None;
            match done.commit_with.take() {
                None => conn
                    .commit()
                    .await
                    .map_err(|e| failed("the batch's commit failed", &e))?,
                Some(checkpoint) => {
                    let sent = Instant::now();
                    let moved = match conn.script_rows(&format!("{checkpoint}; COMMIT")).await {
                        Ok(moved) => moved,
                        Err(e) => {
                            let _ = conn.rollback().await;
                            return Err(if store::not_running(&e) {
                                no_longer_running(run_id)
                            } else if let (true, Some(claim)) = (partition::refused(&e), claim) {
                                partition::lost(claim)
                            } else {
                                failed("the checkpoint and commit failed", &e)
                            });
                        }
                    };
                    if moved != 1 && claim.is_some() {
                        return Err(Error::JobFailed(format!(
                            "a partition of run {run_id} is missing from datamig_partitions (deleted by hand?); \
                             its last batch committed without a checkpoint. Start over with --restart"
                        )));
                    }
                    if moved != 1 {
                        // Its row is gone: the batch committed with nothing to record it.
                        return Err(Error::JobFailed(format!(
                            "run {run_id} is missing from datamig_runs (deleted by hand?); its last batch \
                             committed without a checkpoint. Start over with --restart"
                        )));
                    }
                    sent_with_commit = Some(sent.elapsed());
                }
            }
            crate::crash::reached(crate::crash::Point::AfterCommit);
            done.transaction = started.elapsed();
            if let Some(spent) = sent_with_commit {
                // What the checkpoint adds to the COMMIT's round trip.
                done.bookkeeping = spent.saturating_sub(commit_floor(conn).await);
            }
            Ok(Batch::Done(done))
        }
        // Nothing to do: a batch that begins with its statement has not begun
        // (a ROLLBACK then would draw PostgreSQL's "no transaction in progress").
        Ok(other) if opening => Ok(other),
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

/// Whether the batch's first statement is its write, sent with its BEGIN
/// ([`Conn::begin_with`]): a SQL or delete step over a range known before the
/// transaction.
fn opens_with_statement(conn: &Conn, plan: &Plan, work: &Work<'_>) -> bool {
    conn.begins_with_statement()
        && matches!(
            (work, &plan.source, &plan.step),
            (Work::Bounded { .. }, _, Step::Delete | Step::Sql(_))
                | (Work::Serial { .. }, Source::Range { .. }, Step::Sql(_))
        )
}

fn no_longer_running(run_id: i64) -> Error {
    Error::JobFailed(format!(
        "run {run_id} is no longer running in datamig_runs (cancelled from elsewhere?); this batch was rolled back"
    ))
}

/// The round trip of a bare COMMIT on this connection, measured once (the
/// fastest of three empty transactions): what a checkpoint sent with the COMMIT
/// is counted against.
async fn commit_floor(conn: &mut Conn) -> Duration {
    static FLOOR: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    if let Some(floor) = FLOOR.get() {
        return *floor;
    }
    let mut floor = Duration::MAX;
    for _ in 0..3 {
        if conn.begin().await.is_err() {
            return Duration::ZERO;
        }
        let t = Instant::now();
        if conn.commit().await.is_err() {
            return Duration::ZERO;
        }
        floor = floor.min(t.elapsed());
    }
    *FLOOR.get_or_init(|| floor)
}

/// A batch's database error: [`Error::Transient`] when trying again can pass.
fn failed(what: &str, e: &sqlx::Error) -> Error {
    let message = format!("{what}: {}", db_message(e));
    match crate::db::Transient::of(e) {
        Some(kind) => Error::Transient { message, kind },
        None => Error::JobFailed(message),
    }
}

#[allow(clippy::too_many_arguments)]
async fn body(
    conn: &mut Conn,
    plan: &Plan,
    prep: &Prepared,
    run_id: i64,
    work: Work<'_>,
    size: Size,
    since: Instant,
    dry: bool,
    archive: Option<&Archive>,
    claim: Option<&Claim>,
) -> Result<Batch> {
    let mut file_offset = None;
    let opening = opens_with_statement(conn, plan, &work);
    let (cursor, mut counts, scanned) = match (work, &plan.source, &plan.step) {
        (Work::Guarded(applied), _, _) => {
            if !write(conn, prep, run_id, applied, true, dry).await? {
                return Ok(Batch::Changed);
            }
            (
                applied.cursor.clone(),
                applied.counts.clone(),
                applied.scanned,
            )
        }
        (Work::Serial { after, .. }, Source::Range { start, end }, Step::Sql(sql)) => {
            let lo = match after.and_then(|k| k.first()).and_then(Value::as_i64) {
                Some(done) => done.saturating_add(1),
                None => *start,
            };
            if lo > *end {
                return Ok(Batch::Empty);
            }
            let end = match prep
                .end
                .as_deref()
                .and_then(|e| e.first())
                .and_then(Value::as_i64)
            {
                Some(bound) => bound.min(*end),
                None => *end,
            };
            if lo > end {
                return Ok(Batch::Empty);
            }
            let hi = lo.saturating_add(size.rows - 1).min(end);
            let sql = sql
                .replace("{lo}", &lo.to_string())
                .replace("{hi}", &hi.to_string());
            let changed = if opening {
                conn.begin_with(&sql, &[]).await
            } else {
                conn.execute(&sql, &[]).await
            }
            .map_err(|e| failed("the batch's statement failed", &e))?;
            let rows = hi - lo + 1;
            (
                vec![Value::Int(hi)],
                BatchCounts {
                    rows,
                    changed: to_i64(changed),
                    ..Default::default()
                },
                Scanned {
                    matched: rows,
                    ran_out: None,
                },
            )
        }
        (Work::Serial { .. }, Source::Range { .. }, _) => {
            return Err(Error::Usage("a range source takes only a SQL step".into()))
        }
        (Work::Serial { after, .. }, Source::Csv { path }, Step::Import(import)) => {
            let at = super::csv_source::At::from_cursor(after)?;
            let Some(read) = super::csv_source::read(path, at, size.rows, import.as_ref())? else {
                return Ok(Batch::Empty);
            };
            let changed = insert(conn, &import.table(), &import.columns(), &read.rows).await?;
            if !read.rejects.is_empty() && !dry {
                store::reject(conn, run_id, &read.rejects)
                    .await
                    .map_err(|e| failed("recording rejected records failed", &e))?;
            }
            (
                read.next.cursor(),
                BatchCounts {
                    rows: read.records,
                    changed,
                    rejected: to_i64(read.rejects.len()),
                    elapsed_ms: 0,
                },
                Scanned {
                    matched: read.records,
                    ran_out: None,
                },
            )
        }
        (Work::Serial { .. }, Source::Csv { .. }, _)
        | (Work::Serial { .. }, _, Step::Import(_)) => {
            return Err(Error::Usage(
                "an import step and a CSV source go together".into(),
            ))
        }
        (Work::Serial { after, upto }, Source::Table { .. }, Step::Transform(t)) => {
            let Some(read) = read_rows(conn, prep, after, upto, size, false).await? else {
                return Ok(Batch::Empty);
            };
            let applied = apply(t.as_ref(), prep, read)?;
            write(conn, prep, run_id, &applied, false, dry).await?;
            (applied.cursor, applied.counts, applied.scanned)
        }
        (Work::Serial { after, .. }, Source::Table { .. }, step) => {
            let Some(bound) = bound(conn, prep, after, size).await? else {
                return Ok(Batch::Empty);
            };
            let (counts, offset) =
                key_range(conn, prep, step, after, &bound, archive, dry, opening).await?;
            file_offset = offset;
            (bound.last, counts, bound.scanned)
        }
        (Work::Bounded { after, bound }, _, step) => {
            let (counts, offset) =
                key_range(conn, prep, step, after, bound, archive, dry, opening).await?;
            file_offset = offset;
            (bound.last.clone(), counts, bound.scanned)
        }
    };
    counts.elapsed_ms = i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX);
    if dry {
        return Ok(Batch::Done(Done {
            cursor,
            counts,
            transaction: Duration::ZERO,
            bookkeeping: Duration::ZERO,
            scanned,
            commit_with: None,
            file_offset,
        }));
    }
    if let Some(claim) = claim {
        return partition_checkpoint(conn, claim, cursor, counts, scanned).await;
    }
    let position = cursor::encode(&cursor).map_err(Error::JobFailed)?;
    let offset = file_offset.map(|o| i64::try_from(o).unwrap_or(i64::MAX));
    if let Some(sql) = store::checkpoint_text(conn, run_id, &position, &counts, offset) {
        return Ok(Batch::Done(Done {
            cursor,
            counts,
            transaction: Duration::ZERO,
            bookkeeping: Duration::ZERO,
            scanned,
            commit_with: Some(sql),
            file_offset,
        }));
    }
    let checkpoint_started = Instant::now();
    let moved = store::checkpoint(conn, run_id, &position, &counts, offset)
        .await
        .map_err(|e| failed("the checkpoint failed", &e))?;
    let bookkeeping = checkpoint_started.elapsed();
    if !moved {
        return Err(no_longer_running(run_id));
    }
    Ok(Batch::Done(Done {
        cursor,
        counts,
        transaction: Duration::ZERO,
        bookkeeping,
        scanned,
        commit_with: None,
        file_offset,
    }))
}

/// The checkpoint of a partition's batch: sent with the COMMIT where the driver
/// can, or run here.
async fn partition_checkpoint(
    conn: &mut Conn,
    claim: &Claim,
    cursor: Vec<Value>,
    counts: BatchCounts,
    scanned: Scanned,
) -> Result<Batch> {
    let Some(position) = cursor.first().and_then(Value::as_i64) else {
        return Err(Error::JobFailed(format!(
            "a partitioned run's key must be one integer column; this batch ended at {}",
            cursor::display(&cursor)
        )));
    };
    let mut done = Done {
        cursor,
        counts,
        transaction: Duration::ZERO,
        bookkeeping: Duration::ZERO,
        scanned,
        commit_with: None,
        file_offset: None,
    };
    if let Some(sql) = partition::checkpoint_text(conn, claim, position, &done.counts) {
        done.commit_with = Some(sql);
        return Ok(Batch::Done(done));
    }
    let started = Instant::now();
    let moved = partition::checkpoint(conn, claim, position, &done.counts)
        .await
        .map_err(|e| failed("the checkpoint failed", &e))?;
    done.bookkeeping = started.elapsed();
    if !moved {
        return Err(partition::lost(claim));
    }
    Ok(Batch::Done(done))
}

/// A SQL or delete step's batch: the keys after the cursor up to `last`.
pub(crate) struct Bound {
    /// The batch's last key: its checkpoint.
    last: Vec<Value>,
    /// Keys in the batch when it was bounded, and how many the filter matched.
    scanned: Scanned,
}

/// Bounds the batch after `after` by its last key: the key of its `size.rows`-th
/// row matching the source filter within the next `size.keys` keys, or, when
/// fewer match, the last of those keys.
async fn bound(
    conn: &mut Conn,
    prep: &Prepared,
    after: Option<&[Value]>,
    size: Size,
) -> Result<Option<Bound>> {
    let Some(filter) = &prep.filter else {
        let last = last_key(conn, prep, after, size.rows).await?;
        return Ok(last.map(|(last, keys)| Bound {
            last,
            scanned: Scanned {
                matched: keys,
                ran_out: None,
            },
        }));
    };
    let keys: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
    let (matching, params) = prep.matching(conn, filter, &keys, &keys, after, size);
    let sql = prep.last_of(conn, &matching);
    let rows = conn
        .fetch(&sql, &params)
        .await
        .map_err(|e| failed("reading the batch's bounds failed", &e))?;
    let (last, matched) = split_count(rows.into_iter().next());
    if matched >= size.rows {
        return Ok(Some(Bound {
            last,
            scanned: Scanned {
                matched,
                ran_out: None,
            },
        }));
    }
    // Fewer matches than the batch's size: the batch is the whole chunk.
    let end = last_key(conn, prep, after, size.keys).await?;
    Ok(end.map(|(last, keys)| Bound {
        last,
        scanned: Scanned {
            matched,
            ran_out: Some(keys),
        },
    }))
}

/// A row of `(key…, count)` as the key and the count; an empty key for no rows.
fn split_count(row: Option<Row>) -> (Vec<Value>, i64) {
    let Some(mut row) = row else {
        return (Vec::new(), 0);
    };
    let count = row.pop().and_then(|v| v.as_i64()).unwrap_or(0);
    (row, count)
}

/// The last of the next `limit` keys after `after`, and how many there are;
/// `None` when no key is left. An index-only scan.
async fn last_key(
    conn: &mut Conn,
    prep: &Prepared,
    after: Option<&[Value]>,
    limit: i64,
) -> Result<Option<(Vec<Value>, i64)>> {
    let keys = prep.key_list(conn);
    let (cond, params) = prep.conditions(conn, false, after, None);
    let chunk = format!(
        "SELECT {keys} FROM {} WHERE {cond} ORDER BY {keys} LIMIT {limit}",
        conn.quote_ident(&prep.table)
    );
    let sql = prep.last_of(conn, &chunk);
    let rows = conn
        .fetch(&sql, &params)
        .await
        .map_err(|e| failed("reading the batch's bounds failed", &e))?;
    let (last, count) = split_count(rows.into_iter().next());
    Ok((count > 0 && last.iter().all(|v| !v.is_null())).then_some((last, count)))
}

/// The statements a batch after `after` runs: the one that finds its rows (the
/// read of a transform, the bound of a SQL or delete step) and, for SQL and
/// delete steps, the one that acts on them over `(after, upto]`.
fn queries(
    conn: &Conn,
    plan: &Plan,
    prep: &Prepared,
    after: Option<&[Value]>,
    upto: Option<&[Value]>,
    size: Size,
) -> Vec<(String, Vec<Value>)> {
    if !matches!(plan.source, Source::Table { .. }) {
        return Vec::new();
    }
    let keys: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
    let finding = match (&prep.filter, &plan.step) {
        (Some(filter), Step::Transform(_)) => {
            let mut cols = keys.clone();
            cols.extend(prep.columns.iter().map(|c| conn.quote_ident(c)));
            prep.matching(conn, filter, &cols, &cols, after, size)
        }
        (Some(filter), _) => prep.matching(conn, filter, &keys, &keys, after, size),
        (None, _) => {
            let (cond, params) = prep.conditions(conn, false, after, None);
            (
                format!(
                    "SELECT {} FROM {} WHERE {cond} ORDER BY {} LIMIT {}",
                    keys.join(", "),
                    conn.quote_ident(&prep.table),
                    keys.join(", "),
                    size.rows
                ),
                params,
            )
        }
    };
    let mut out = vec![finding];
    if let (Step::Delete | Step::Archive { .. } | Step::Sql(_), Some(upto)) = (&plan.step, upto) {
        let (range, params) = prep.conditions(conn, true, after, Some(upto));
        let sql = match &plan.step {
            Step::Delete | Step::Archive { .. } => format!(
                "DELETE FROM {} WHERE {range}",
                conn.quote_ident(&prep.table)
            ),
            Step::Sql(sql) => sql.replace("{batch}", &format!("({range})")),
            Step::Transform(_) | Step::Import(_) => unreachable!("matched above"),
        };
        out.push((sql, params));
    }
    out
}

/// Inserts an import's rows, in statements of at most 30,000 values (below the
/// parameter limits of all three databases). Returns the rows inserted.
async fn insert(conn: &mut Conn, table: &str, columns: &[String], rows: &[Row]) -> Result<i64> {
    let width = columns.len().max(1);
    let names: Vec<String> = columns.iter().map(|c| conn.quote_ident(c)).collect();
    let tuple = format!("({})", vec!["?"; width].join(", "));
    let mut inserted = 0_u64;
    for chunk in rows.chunks((30_000 / width).max(1)) {
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            conn.quote_ident(table),
            names.join(", "),
            vec![tuple.as_str(); chunk.len()].join(", ")
        );
        let params: Vec<Value> = chunk.iter().flatten().cloned().collect();
        inserted += conn
            .execute(&sql, &params)
            .await
            .map_err(|e| failed("inserting the batch failed", &e))?;
    }
    Ok(to_i64(inserted))
}

/// Runs a SQL, delete or archive step over the key range `(after, bound.last]`;
/// for an archive, also returns the archive's length with this batch's rows.
/// `opening`: the statement begins the batch's transaction.
#[allow(clippy::too_many_arguments)] // the batch's parts, as `body` has them
async fn key_range(
    conn: &mut Conn,
    prep: &Prepared,
    step: &Step,
    after: Option<&[Value]>,
    bound: &Bound,
    archive: Option<&Archive>,
    dry: bool,
    opening: bool,
) -> Result<(BatchCounts, Option<u64>)> {
    let (range, params) = prep.conditions(conn, true, after, Some(&bound.last));
    let table = conn.quote_ident(&prep.table);
    if let Step::Archive { .. } = step {
        let Some(archive) = archive else {
            return Err(Error::JobFailed(
                "an archive step without its archive".into(),
            ));
        };
        // The rows, locked until the batch commits, then written and synced,
        // then deleted: the DELETE deletes exactly the rows written.
        archive.rewind()?;
        let mut columns: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
        columns.extend(prep.columns.iter().map(|c| conn.quote_ident(c)));
        let select = format!(
            "SELECT {} FROM {table} WHERE {range} ORDER BY {}{}",
            columns.join(", "),
            prep.key_list(conn),
            conn.for_update()
        );
        let rows = fetch_rows(conn, &select, &params).await?;
        let written = if dry || rows.is_empty() {
            None
        } else {
            Some(archive.append(&rows)?)
        };
        let deleted = conn
            .execute(&format!("DELETE FROM {table} WHERE {range}"), &params)
            .await
            .map_err(|e| failed("the batch's delete failed", &e))?;
        if deleted != u64::try_from(rows.len()).unwrap_or(u64::MAX) {
            return Err(Error::JobFailed(format!(
                "the batch archived {} rows but its delete matched {deleted}; it was rolled back",
                rows.len()
            )));
        }
        let counts = BatchCounts {
            rows: bound.scanned.matched,
            changed: to_i64(deleted),
            ..Default::default()
        };
        let offset = if dry {
            None
        } else {
            Some(written.unwrap_or(archive.committed))
        };
        return Ok((counts, offset));
    }
    let sql = match step {
        Step::Delete => format!(
            "DELETE FROM {} WHERE {range}",
            conn.quote_ident(&prep.table)
        ),
        Step::Sql(sql) => sql.replace("{batch}", &format!("({range})")),
        Step::Transform(_) | Step::Import(_) | Step::Archive { .. } => {
            unreachable!("these read their rows")
        }
    };
    let changed = if opening {
        conn.begin_with(&sql, &params).await
    } else {
        conn.execute(&sql, &params).await
    }
    .map_err(|e| failed("the batch's statement failed", &e))?;
    Ok((
        BatchCounts {
            rows: bound.scanned.matched,
            changed: to_i64(changed),
            ..Default::default()
        },
        None,
    ))
}

/// What the reader connection reads ahead for the batch after `after`: a
/// transform's rows, transformed, or a SQL or delete step's key range.
async fn read_ahead(
    reader: &mut Conn,
    transform: Option<&Arc<dyn Transform>>,
    prep: &Prepared,
    after: Option<&[Value]>,
    size: Size,
) -> Result<Option<Ahead>> {
    match transform {
        Some(t) => match read_rows(reader, prep, after, None, size, true).await? {
            Some(read) => Ok(Some(Ahead::Rows(apply(t.as_ref(), prep, read)?))),
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
    /// What the batch's chunk held.
    scanned: Scanned,
    /// The first key column's lowest and highest value among the rows.
    lo: Value,
    hi: Value,
}

/// Reads a transform batch: the rows after `after` up to the `size.rows`-th that
/// the filter matches, among the next `size.keys` keys; or every key up to
/// `upto`. Under row locks inside the batch's transaction, or (`ahead`) as a
/// plain read with each row's guard values.
async fn read_rows(
    conn: &mut Conn,
    prep: &Prepared,
    after: Option<&[Value]>,
    upto: Option<&[Value]>,
    size: Size,
    ahead: bool,
) -> Result<Option<Read>> {
    let mut inner: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
    inner.extend(prep.columns.iter().map(|c| conn.quote_ident(c)));
    let mut outer = inner.clone();
    if ahead {
        for (i, guard) in prep.guard_select.iter().enumerate() {
            inner.push(format!("{guard} AS datamig_g{i}"));
            outer.push(format!("datamig_g{i}"));
        }
    }
    let lock = if ahead { "" } else { conn.for_update() };
    let read = match (&prep.filter, upto) {
        (Some(filter), None) if lock.is_empty() => {
            // Only the matching rows come back; the batch ends at its last, or
            // (fewer than its size in the chunk) at the chunk's last key.
            let (sql, params) = prep.matching(conn, filter, &inner, &outer, after, size);
            let rows = fetch_rows(conn, &sql, &params).await?;
            let matched = to_i64(rows.len());
            let (cursor, scanned) = match rows.last() {
                Some(last) if matched >= size.rows => (
                    last[..prep.keys.len()].to_vec(),
                    Scanned {
                        matched,
                        ran_out: None,
                    },
                ),
                _ => match last_key(conn, prep, after, size.keys).await? {
                    Some((end, keys)) => (
                        end,
                        Scanned {
                            matched,
                            ran_out: Some(keys),
                        },
                    ),
                    None => return Ok(None),
                },
            };
            Read::new(rows, cursor, scanned)
        }
        (filter, _) => {
            // Under row locks (or redoing a range): the chunk's every row, with
            // whether the filter matches it, ended at the batch's last match.
            let mut params = Vec::new();
            if let Some(f) = filter {
                inner.push(format!("CASE WHEN ({}) THEN 1 ELSE 0 END", f.sql));
                params.extend(f.params.iter().cloned());
            }
            let (cond, key_params) = prep.conditions(conn, false, after, upto);
            params.extend(key_params);
            let limit = match (upto, filter) {
                (Some(_), _) => String::new(),
                (None, Some(_)) => format!(" LIMIT {}", size.keys),
                (None, None) => format!(" LIMIT {}", size.rows),
            };
            let sql = format!(
                "SELECT {} FROM {} WHERE {cond} ORDER BY {}{limit}{lock}",
                inner.join(", "),
                conn.quote_ident(&prep.table),
                prep.key_list(conn),
            );
            let mut rows = fetch_rows(conn, &sql, &params).await?;
            let visited = to_i64(rows.len());
            let mut matched = visited;
            if filter.is_some() {
                matched = 0;
                let mut end = rows.len();
                for (i, row) in rows.iter().enumerate() {
                    if row.last().and_then(Value::as_i64) == Some(1) {
                        matched += 1;
                        if upto.is_none() && matched == size.rows {
                            end = i + 1;
                            break;
                        }
                    }
                }
                rows.truncate(end);
            }
            // A redone range ends where it ended when it was read ahead, whatever is in it now.
            let cursor = match (upto, rows.last()) {
                (Some(upto), _) => upto.to_vec(),
                (None, Some(last)) => last[..prep.keys.len()].to_vec(),
                (None, None) => return Ok(None),
            };
            if filter.is_some() {
                rows.retain_mut(|row| row.pop().and_then(|m| m.as_i64()) == Some(1));
            }
            let ran_out = (upto.is_none() && matched < size.rows).then_some(visited);
            Read::new(rows, cursor, Scanned { matched, ran_out })
        }
    };
    Ok(Some(read))
}

async fn fetch_rows(conn: &mut Conn, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    conn.fetch(sql, params)
        .await
        .map_err(|e| failed("reading the batch failed", &e))
}

impl Read {
    fn new(rows: Vec<Row>, cursor: Vec<Value>, scanned: Scanned) -> Read {
        let lo = rows.first().map_or(Value::Null, |r| r[0].clone());
        let hi = rows.last().map_or(Value::Null, |r| r[0].clone());
        Read {
            rows,
            cursor,
            scanned,
            lo,
            hi,
        }
    }
}

/// A transform's result for one batch, ready to write.
pub(crate) struct Applied {
    /// Keys, new values, then (read ahead) guard values.
    updates: Vec<Row>,
    rejects: Vec<(String, String)>,
    cursor: Vec<Value>,
    counts: BatchCounts,
    scanned: Scanned,
    lo: Value,
    hi: Value,
}

/// Runs the transform over a batch's rows (over all cores when it is CPU-heavy).
fn apply(transform: &dyn Transform, prep: &Prepared, read: Read) -> Result<Applied> {
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
    let outcomes: Vec<Outcome> = if transform.cpu_heavy() && prep.spread {
        tokio::task::block_in_place(|| read.rows.par_iter().map(apply).collect())
    } else if transform.cpu_heavy() {
        tokio::task::block_in_place(|| read.rows.iter().map(apply).collect())
    } else {
        read.rows.iter().map(apply).collect()
    };

    let writes = transform.writes().len();
    let mut updates = Vec::with_capacity(outcomes.len());
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
                // Keys, the new values in place of the source columns, then the
                // guard values a read ahead added: the row's own vector, reused.
                let mut full = row;
                full.splice(n_keys..width, values);
                updates.push(full);
            }
            Outcome::Skip => {}
            // A row rejected from a read ahead may have changed since; its reason
            // describes the row as it was read.
            Outcome::Reject(reason) => rejects.push((cursor::display(&row[..n_keys]), reason)),
        }
    }
    let counts = BatchCounts {
        rows: read.scanned.matched,
        changed: to_i64(updates.len()),
        rejected: to_i64(rejects.len()),
        elapsed_ms: 0,
    };
    Ok(Applied {
        updates,
        rejects,
        cursor: read.cursor,
        counts,
        scanned: read.scanned,
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
    dry: bool,
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
            .map_err(|e| failed("writing the batch failed", &e))?;
        if guarded && written != u64::try_from(applied.updates.len()).unwrap_or(u64::MAX) {
            return Ok(false);
        }
    }
    if !applied.rejects.is_empty() && !dry {
        store::reject(conn, run_id, &applied.rejects)
            .await
            .map_err(|e| failed("recording rejected rows failed", &e))?;
    }
    Ok(true)
}

fn to_i64<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{Density, Scanned, MAX_SCAN};

    fn found(matched: i64) -> Scanned {
        Scanned {
            matched,
            ran_out: None,
        }
    }

    fn ran_out(matched: i64, keys: i64) -> Scanned {
        Scanned {
            matched,
            ran_out: Some(keys),
        }
    }

    #[test]
    fn without_a_filter_a_key_is_a_row() {
        let d = Density::default().after(ran_out(10, 5000));
        assert_eq!(d.size(5000, false).keys, 5000);
    }

    #[test]
    fn a_filtered_chunk_follows_what_the_last_one_found() {
        let d = Density::default();
        assert_eq!(
            d.size(5000, true).keys,
            5000,
            "the first chunk guesses every key matches"
        );
        // Half the keys matched: twice as many keys, and a quarter to spare.
        let d = d.after(ran_out(2500, 5000));
        assert_eq!(d.size(5000, true).keys, 12_500);
        // That was enough: the next chunk is a little smaller, never below a key a row.
        let d = d.after(found(5000));
        assert_eq!(d.size(5000, true).keys, 12_250);
        let mut d = d;
        for _ in 0..100 {
            d = d.after(found(5000));
        }
        assert_eq!(d.size(5000, true).keys, 5000);
    }

    #[test]
    fn sparse_and_empty_chunks_grow_but_stay_bounded() {
        let d = Density::default().after(ran_out(0, 5000));
        assert_eq!(d.size(5000, true).keys, 10_000, "nothing matched: double");
        let d = d
            .after(ran_out(0, 10_000))
            .after(ran_out(0, 20_000))
            .after(ran_out(0, 40_000))
            .after(ran_out(0, 80_000));
        assert_eq!(d.size(5000, true).keys, 5000 * MAX_SCAN);
        let d = Density::default().after(ran_out(1, 100_000));
        assert_eq!(d.size(5000, true).keys, 5000 * MAX_SCAN);
        assert_eq!(d.size(i64::MAX / 2, true).keys, i64::MAX);
        assert_eq!(
            Density::default().after(ran_out(0, 1)).size(1, true).keys,
            2
        );
    }
}
