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

mod read;
pub(crate) mod steps;
mod txn;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::cursor;
use super::partition::Claim;
use super::store::BatchCounts;
use crate::db::{Conn, Value};
use crate::job::{ErasedStep, Plan, Source, Step};
use crate::{Error, Result};

use read::{bound, finding, read_rows};
pub(crate) use read::{Bound, Prepared};
pub(crate) use steps::archive::Archive;
use steps::batch_step::{fetch, Fetched};
use steps::transform::{apply, Applied};
pub(crate) use txn::failed;
use txn::{run, Txn};

/// A count from the database as the engine's integer.
pub(crate) fn to_i64<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

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
    /// A batch step's batch read under row locks, for its after-commit hook.
    locked: Option<Box<Fetched>>,
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
#[derive(Clone, Copy)]
pub(crate) enum Work<'a> {
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
    /// Check that a batch step's rows, read before the transaction, are
    /// unchanged, write them as the step does, and checkpoint.
    Fetched(&'a Fetched),
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
    /// A batch's limits, as the run's options give them.
    pub fn of(t: &crate::run::Timeouts) -> Limits {
        Limits {
            lock_timeout: t.lock_timeout,
            statement_timeout: t.statement(),
            network_timeout: t.network_timeout,
        }
    }

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
pub(crate) enum Ahead {
    /// A transform's rows, read and transformed.
    Rows(Applied),
    /// A SQL or delete step's key range.
    Bound(Bound),
    /// A batch step's rows, read, and its outside work done.
    Fetched(Fetched),
}

impl Ahead {
    fn cursor(&self) -> &[Value] {
        match self {
            Ahead::Rows(applied) => &applied.cursor,
            Ahead::Bound(bound) => &bound.last,
            Ahead::Fetched(fetched) => &fetched.cursor,
        }
    }

    fn scanned(&self) -> Scanned {
        match self {
            Ahead::Rows(applied) => applied.scanned,
            Ahead::Bound(bound) => bound.scanned,
            Ahead::Fetched(fetched) => fetched.scanned,
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
        let reads_ahead = read_ahead
            && conn.reads_ahead()
            && matches!(plan.source, Source::Table { .. } | Source::Query { .. });
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
        let part = claim.as_ref().map_or(0, |c| c.part);
        if self.prep.end != end || self.prep.part != part {
            let prep = Arc::make_mut(&mut self.prep);
            prep.end = end;
            prep.part = part;
        }
        self.claim = claim;
    }

    /// Counts the first batch's time from `since` (when the process began on
    /// the run), so that the run's time is the one its summary reports.
    pub fn count_from(&mut self, since: Instant) {
        self.since = since;
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
        let txn = Txn {
            plan: self.plan,
            prep: &self.prep,
            run_id: self.run_id,
            since: self.since,
            dry: self.dry,
            archive: self.archive.as_ref(),
            claim: self.claim.as_ref(),
        };
        let batch = run(conn, &txn, work, size).await?;
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
        let mut out = finding(conn, self.plan, &self.prep, after, self.size(rows));
        if let Some(upto) = upto.filter(|_| !out.is_empty()) {
            let step = steps::of(&self.plan.step);
            let table = step.qualifier(conn, &self.prep);
            let (range, params) =
                self.prep
                    .conditions_of(conn, table.as_deref(), true, after, Some(upto));
            if let Some(sql) = step.range_statement(conn, &self.prep, &range) {
                out.push((sql, params));
            }
        }
        out
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
            Ahead::Fetched(fetched) => Work::Fetched(fetched),
        };
        let upto = match &work {
            Work::Guarded(applied) => applied.cursor.clone(),
            _ => Vec::new(),
        };
        match self.transact(conn, work, size).await? {
            Batch::Done(done) => {
                if let Ahead::Fetched(fetched) = &ahead {
                    self.committed(fetched).await;
                }
                Ok(Some(done))
            }
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
        let step = self.plan.step.clone();
        let size = self.size(rows);
        let batch = self.batch_id();
        tokio::spawn(async move {
            let read = read_ahead(&mut reader, &step, &prep, after.as_deref(), size, batch).await;
            InFlight {
                reader,
                after,
                end: prep.end.clone(),
                rows,
                read,
            }
        })
    }

    fn batch_step(&self) -> Option<&Arc<dyn ErasedStep>> {
        match &self.plan.step {
            Step::Batch(step) => Some(&step.0),
            _ => None,
        }
    }

    /// How long a batch may take beyond its statements: a batch step's
    /// outside work (twice: a batch read ahead, and one done again).
    pub fn outside_allowance(&self) -> Duration {
        self.batch_step()
            .map_or(Duration::ZERO, |s| s.outside_timeout() * 2)
    }

    /// What names this run's batches in a batch step's idempotency key: the
    /// run, and the partition (0 without one).
    fn batch_id(&self) -> (i64, i64) {
        (self.run_id, self.prep.part)
    }

    async fn serial(
        &mut self,
        conn: &mut Conn,
        after: Option<&[Value]>,
        upto: Option<&[Value]>,
        size: Size,
    ) -> Result<Option<Done>> {
        if let Some(step) = self.batch_step().cloned() {
            return self.fetched_serial(conn, step.as_ref(), after, size).await;
        }
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

    /// A batch step's batch without a reader connection: read, and its outside
    /// work done, on the batch's own connection before its transaction; read
    /// again if its rows changed before the transaction locked them.
    async fn fetched_serial(
        &mut self,
        conn: &mut Conn,
        step: &dyn ErasedStep,
        after: Option<&[Value]>,
        size: Size,
    ) -> Result<Option<Done>> {
        for _ in 0..CHANGED_TRIES {
            let batch = self.batch_id();
            let Some(fetched) = fetch(conn, &self.prep, step, after, size, batch, false).await?
            else {
                return Ok(None);
            };
            match self.transact(conn, Work::Fetched(&fetched), size).await? {
                Batch::Done(done) => {
                    self.density = self.density.after(done.scanned);
                    self.committed(&fetched).await;
                    return Ok(Some(done));
                }
                Batch::Empty => return Ok(None),
                Batch::Changed => tracing::debug!(
                    "rows after {} changed between their read and the batch's transaction; reading them again",
                    after.map_or("the start".into(), cursor::display)
                ),
            }
        }
        // Rows that keep changing (an application writing just where the run
        // is): this batch reads them under row locks inside its transaction,
        // and does the outside work there, holding the locks meanwhile.
        tracing::debug!(
            "rows after {} changed {CHANGED_TRIES} times between their read and the batch's transaction; \
             doing the batch under row locks",
            after.map_or("the start".into(), cursor::display)
        );
        let work = Work::Serial { after, upto: None };
        match self.transact(conn, work, size).await? {
            Batch::Done(mut done) => {
                self.density = self.density.after(done.scanned);
                if let Some(fetched) = done.locked.take() {
                    self.committed(&fetched).await;
                }
                Ok(Some(done))
            }
            Batch::Empty => Ok(None),
            Batch::Changed => unreachable!("a batch under row locks cannot change"),
        }
    }

    /// After a batch step's batch committed: its hook (not in a dry run).
    async fn committed(&self, fetched: &Fetched) {
        if let (Some(step), false) = (self.batch_step(), self.dry) {
            fetched.after_commit(step.as_ref()).await;
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

/// How often a batch step's batch is read again when its rows keep changing
/// between the read and the transaction, before it is done under row locks.
const CHANGED_TRIES: usize = 3;

/// What the reader connection reads ahead for the batch after `after`: a
/// transform's rows, transformed; a batch step's rows, with its outside work
/// done; or a SQL or delete step's key range.
async fn read_ahead(
    reader: &mut Conn,
    step: &Step,
    prep: &Prepared,
    after: Option<&[Value]>,
    size: Size,
    batch: (i64, i64),
) -> Result<Option<Ahead>> {
    match step {
        Step::Transform(t) => match read_rows(reader, prep, after, None, size, true).await? {
            Some(read) => Ok(Some(Ahead::Rows(apply(t.as_ref(), prep, read)?))),
            None => Ok(None),
        },
        Step::Batch(s) => Ok(fetch(reader, prep, s.0.as_ref(), after, size, batch, false)
            .await?
            .map(Ahead::Fetched)),
        _ => Ok(bound(reader, prep, after, size).await?.map(Ahead::Bound)),
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
