//! A worker: the one loop that runs a run's batches, for a run in one worker
//! and for each worker of a partitioned one.
//!
//! ```text
//! worker: take a lane (the whole range, or a claimed partition; see layout)
//!   └ loop: wait at the gate (control) · rate limit
//!           batch: BEGIN · read/bound · step · checkpoint into the lane · COMMIT
//!           report it (the control answers before the next batch)
//!     on a transient error: back off · a new connection if lost (the job lock
//!       again, for the whole range) · read the lane's checkpoint back from the
//!       database, which says where the lane is · again, at half the size after a timeout
//!     nothing left: the lane is finished (made durable, or the partition marked done)
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::batch::{self, Batches, Prepared};
use super::layout::Layout;
use super::pace::Sizer;
use super::partition::{self, Claim, Totals};
use super::shared::{About, Committed, Event, Gate, Shared};
use super::store::{self, RunState};
use super::{backoff, cursor};
use crate::db::{db_message, Conn, Transient, Value};
use crate::job::{Plan, Source};
use crate::{Error, Result};

/// How a worker ended.
pub(super) enum WorkerEnd {
    /// Every partition (or the whole range) is finished.
    AllDone,
    /// Stopped by the control loop.
    Stopped,
    /// The run stopped being `running` elsewhere (cancelled, failed).
    RunEnded,
}

/// Where a worker's batches go and checkpoint.
enum Lane {
    /// The whole key range, checkpointed in the run's row.
    Whole {
        cursor: Option<Vec<Value>>,
        /// Batches done in the run.
        batches: i64,
    },
    /// A partition, checkpointed in its row.
    Part(Claim),
}

impl Lane {
    fn after(&self) -> Option<Vec<Value>> {
        match self {
            Lane::Whole { cursor, .. } => cursor.clone(),
            Lane::Part(claim) => claim.after().map(|k| vec![Value::Int(k)]),
        }
    }

    fn part(&self) -> Option<i64> {
        match self {
            Lane::Whole { .. } => None,
            Lane::Part(claim) => Some(claim.part),
        }
    }

    /// Batches done in the lane.
    fn batches(&self) -> i64 {
        match self {
            Lane::Whole { batches, .. } => *batches,
            Lane::Part(claim) => claim.batches_done,
        }
    }

    /// Moves on past a committed batch.
    fn advance(&mut self, done: &batch::Done) {
        match self {
            Lane::Whole { cursor, batches } => {
                *cursor = Some(done.cursor.clone());
                *batches += 1;
            }
            Lane::Part(claim) => {
                claim.position = done.cursor.first().and_then(Value::as_i64);
                claim.batches_done += 1;
            }
        }
    }
}

/// How a lane ended.
enum LaneEnd {
    Finished,
    /// Another worker holds it now.
    Lost,
    Stopped,
    RunEnded,
}

/// The run's first lane for a run in one worker: where its checkpoint is.
pub(super) struct Start {
    pub cursor: Option<Vec<Value>>,
    pub batches: i64,
}

/// One worker on `conn` (with its batch settings applied here): the whole
/// range from `start`, or, without one, partitions claimed until every one is
/// finished. Returns its connection (for a run in one worker, the one that
/// holds the job lock).
pub(super) async fn work(
    shared: &Shared,
    worker: usize,
    owner: &str,
    mut conn: Conn,
    start: Option<Start>,
) -> (Conn, Result<WorkerEnd>) {
    let result = async {
        shared.limits.apply(&mut conn).await?;
        let mut prep = Prepared::new(&mut conn, &shared.plan).await?;
        if !shared.layout.is_whole() {
            prep = prep.one_thread_per_batch();
        }
        let mut batches = Batches::new(
            &conn,
            &shared.plan,
            prep,
            shared.run_id,
            shared.limits,
            shared.opts.scale.read_ahead(),
        );
        batches.count_from(shared.started);
        if let Some(archive) = shared.archive.lock().ok().and_then(|mut a| a.take()) {
            batches.set_archive(archive);
        }
        // The worker's batch size, learned over its lanes: one halved by a
        // statement timeout stays halved in the next partition.
        let mut sizer = shared.opts.pace.sizer();
        let result = match start {
            Some(start) => {
                let lane = Lane::Whole {
                    cursor: start.cursor,
                    batches: start.batches,
                };
                match run_lane(shared, worker, &mut conn, &mut batches, &mut sizer, lane).await {
                    Ok(LaneEnd::Finished | LaneEnd::Lost) => Ok(WorkerEnd::AllDone),
                    Ok(LaneEnd::Stopped) => Ok(WorkerEnd::Stopped),
                    Ok(LaneEnd::RunEnded) => Ok(WorkerEnd::RunEnded),
                    Err(e) => Err(e),
                }
            }
            None => {
                claim_and_work(shared, worker, owner, &mut conn, &mut batches, &mut sizer).await
            }
        };
        batches.close().await;
        result
    }
    .await;
    (conn, result)
}

/// A worker of a partitioned run: connects (waiting for a server that
/// refuses a connection for a moment), works, and closes its connection.
pub(super) async fn partition_worker(
    shared: &Shared,
    worker: usize,
    owner: &str,
) -> Result<WorkerEnd> {
    let mut attempt = 0;
    let conn = loop {
        match connect(shared).await {
            Ok(conn) => break conn,
            Err(Error::Transient { message, .. }) if attempt < shared.opts.timeouts.max_retries => {
                attempt += 1;
                let wait = backoff(attempt);
                tracing::warn!(
                    "worker {worker} cannot connect ({message}); retrying in {} ms",
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
                if stopping(shared) {
                    return Ok(WorkerEnd::Stopped);
                }
            }
            Err(e) => return Err(e),
        }
    };
    let (conn, result) = work(shared, worker, owner, conn, None).await;
    conn.close().await;
    result
}

async fn connect(shared: &Shared) -> Result<Conn> {
    let mut conn = Conn::connect(&shared.url, &shared.connect)
        .await
        .map_err(|e| Error::Transient {
            message: e.to_string(),
            kind: Transient::ConnectionLost,
        })?;
    shared.limits.apply(&mut conn).await?;
    Ok(conn)
}

/// Waits until the gate lets batches go; false when the workers are to stop.
async fn gate_open(shared: &Shared, waited: &mut Duration) -> bool {
    let mut gate = shared.gate.clone();
    loop {
        let now = gate.borrow_and_update().clone();
        match now {
            Gate::Go => return true,
            Gate::Stop => return false,
            Gate::Wait | Gate::Paused => {
                let at = Instant::now();
                if gate.changed().await.is_err() {
                    return false;
                }
                *waited += at.elapsed();
            }
        }
    }
}

fn stopping(shared: &Shared) -> bool {
    *shared.gate.borrow() == Gate::Stop
}

/// Sleeps `wait`, waking early when the workers are to stop; returns whether they are.
async fn nap(shared: &Shared, wait: Duration) -> bool {
    let mut gate = shared.gate.clone();
    let until = tokio::time::sleep(wait);
    tokio::pin!(until);
    loop {
        if *gate.borrow_and_update() == Gate::Stop {
            return true;
        }
        tokio::select! {
            () = &mut until => return stopping(shared),
            changed = gate.changed() => if changed.is_err() { return true },
        }
    }
}

async fn claim_and_work(
    shared: &Shared,
    worker: usize,
    owner: &str,
    conn: &mut Conn,
    batches: &mut Batches<'_>,
    sizer: &mut Sizer,
) -> Result<WorkerEnd> {
    let Layout::Parts { lease } = &shared.layout else {
        unreachable!("a run in one worker has no partitions to claim");
    };
    let lease_ms = super::ms(*lease);
    let min_split = shared.opts.pace.rows().saturating_mul(2);
    // Failed claims in a row.
    let mut attempt = 0_u32;
    loop {
        if stopping(shared) {
            return Ok(WorkerEnd::Stopped);
        }
        let mut claim = match partition::claim(conn, shared.run_id, owner, lease_ms).await {
            Ok(claim) => claim,
            Err(e) => {
                if !recover(shared, conn, &e, &mut attempt).await? {
                    return Err(e);
                }
                continue;
            }
        };
        attempt = 0;
        if claim.is_none() {
            if let Some((bounds, keys)) = split_bounds(conn, &shared.plan).await {
                claim = partition::split(
                    conn,
                    shared.run_id,
                    owner,
                    lease_ms,
                    bounds,
                    &keys,
                    min_split,
                )
                .await
                // Splitting is an optimisation: a split that fails is tried
                // again at the next look, and the partition goes on meanwhile.
                .unwrap_or_else(|e| {
                    tracing::debug!("could not split a partition: {e}");
                    None
                });
            }
        }
        let Some(claim) = claim else {
            let t = match partition::totals(conn, shared.run_id).await {
                Ok(t) => t,
                Err(e) => {
                    let e = crate::db::error("cannot read datamig_partitions", &e);
                    if !super::alive(conn).await {
                        if let Ok(fresh) = connect(shared).await {
                            drop(std::mem::replace(conn, fresh));
                        }
                        continue;
                    }
                    return Err(e);
                }
            };
            if t.done == t.partitions {
                // Every partition seen done is made durable before the run is
                // completed on it: a server crash may take back the last
                // batches (and finishes) committed asynchronously.
                if let Err(e) = conn.flush_commits().await {
                    let e = Error::Transient {
                        message: format!("making the last batches durable: {}", db_message(&e)),
                        kind: Transient::ConnectionLost,
                    };
                    if !recover(shared, conn, &e, &mut attempt).await? {
                        return Err(e);
                    }
                    continue;
                }
                return Ok(WorkerEnd::AllDone);
            }
            if !running(conn, shared.run_id).await? {
                return Ok(WorkerEnd::RunEnded);
            }
            // Others hold the rest: wait for them to finish, or for a lease to run out.
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        if let Some(from) = &claim.taken_from {
            let about = About {
                worker,
                part: Some(claim.part),
                batch: None,
            };
            let _ = shared.events.send(Event::Message(
                format!(
                    "took over partition {} from {from}, whose lease ran out",
                    claim.part
                ),
                about,
            ));
        }
        let span = context_span!("partition", partition = claim.part);
        batches.set_claim(Some(claim.clone()));
        let worked = run_lane(shared, worker, conn, batches, sizer, Lane::Part(claim));
        let ended = tracing::Instrument::instrument(worked, span).await;
        batches.set_claim(None);
        match ended? {
            LaneEnd::Finished | LaneEnd::Lost => {}
            LaneEnd::Stopped => return Ok(WorkerEnd::Stopped),
            LaneEnd::RunEnded => return Ok(WorkerEnd::RunEnded),
        }
    }
}

/// The key before the smallest and the largest key now (where open-ended
/// partitions are taken to start and end), and the key column to look for the
/// keys left in, for a split.
async fn split_bounds(conn: &mut Conn, plan: &Plan) -> Option<((i64, i64), partition::KeyColumn)> {
    match &plan.source {
        Source::Range { start, end } => Some(((start.saturating_sub(1), *end), None)),
        Source::Table { table, key, .. } => {
            let (t, k) = (conn.quote_ident(table), conn.quote_ident(&key[0]));
            let row = conn
                .fetch_one(&format!("SELECT min({k}), max({k}) FROM {t}"), &[])
                .await
                .ok()?;
            let bounds = (
                row.first()?.as_i64()?.saturating_sub(1),
                row.get(1)?.as_i64()?,
            );
            Some((bounds, Some((t, k))))
        }
        Source::Csv { .. } | Source::Query { .. } | Source::Custom(_) => None,
    }
}

/// After a claim (or a partition's finish) failed: whether it may be tried again (a transient failure,
/// within --max-retries), after a backoff and, for a lost connection, a new one.
async fn recover(shared: &Shared, conn: &mut Conn, e: &Error, attempt: &mut u32) -> Result<bool> {
    let Error::Transient { kind, message } = e else {
        return Ok(false);
    };
    if *attempt >= shared.opts.timeouts.max_retries {
        return Ok(false);
    }
    *attempt += 1;
    let wait = backoff(*attempt);
    tracing::warn!(
        "a partition's bookkeeping failed ({kind}): {message}; retrying in {} ms",
        wait.as_millis()
    );
    tokio::time::sleep(wait).await;
    if *kind == Transient::ConnectionLost || !super::alive(conn).await {
        if let Ok(fresh) = connect(shared).await {
            drop(std::mem::replace(conn, fresh));
        }
    }
    Ok(true)
}

async fn running(conn: &mut Conn, run_id: i64) -> Result<bool> {
    let (state, _, _) = store::poll(conn, run_id)
        .await
        .map_err(|e| crate::db::error("cannot read the run", &e))?;
    Ok(matches!(state, Some(RunState::Running | RunState::Paused)))
}

/// Runs the batches of one lane to its end.
async fn run_lane(
    shared: &Shared,
    worker: usize,
    conn: &mut Conn,
    batches: &mut Batches<'_>,
    sizer: &mut Sizer,
    mut lane: Lane,
) -> Result<LaneEnd> {
    let opts = &shared.opts;
    let mut attempt = 0_u32;
    let mut waited = Duration::ZERO;
    loop {
        if !gate_open(shared, &mut waited).await {
            return Ok(LaneEnd::Stopped);
        }
        if rate_limited(shared, sizer.rows(), &mut waited).await {
            return Ok(LaneEnd::Stopped);
        }
        // Announced before the gate is looked at again: the control records a
        // pause or cancel only when no batch is in flight (see `control`).
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        if *shared.gate.borrow() != Gate::Go {
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let after = lane.after();
        // A batch step's outside work is part of its batch, not of the server's answer.
        let deadline = shared
            .limits
            .deadline()
            .map(|d| d + batches.outside_allowance());
        let next = batches.next(conn, after.as_deref(), sizer.rows());
        let next = match deadline {
            Some(deadline) => tokio::time::timeout(deadline, next)
                .await
                .unwrap_or_else(|_| Err(batch::unanswered(deadline))),
            None => next.await,
        };
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        let about = |lane: &Lane| About {
            worker,
            part: lane.part(),
            batch: Some(lane.batches() + 1),
        };
        // Nothing left: the lane is finished, or, when that fails, it is
        // retried as a batch would be (the lane's checkpoint read back).
        let next = match next {
            Ok(Some(done)) => Ok(done),
            Ok(None) => match finish(conn, &lane).await {
                Ok(()) => return Ok(LaneEnd::Finished),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match next {
            Ok(done) => {
                lane.advance(&done);
                sizer.after_batch(done.counts.rows, done.transaction);
                let (answer, answered) = oneshot::channel();
                let _ = shared.events.send(Event::Batch(
                    Committed {
                        worker,
                        part: lane.part(),
                        number: lane.batches(),
                        counts: done.counts,
                        transaction: done.transaction,
                        bookkeeping: done.bookkeeping,
                        waited: std::mem::take(&mut waited),
                        retries: std::mem::take(&mut attempt),
                        position: cursor::display(&done.cursor),
                    },
                    answer,
                ));
                let _ = answered.await;
                if !opts.pace.sleep.is_zero() {
                    if nap(shared, opts.pace.sleep).await {
                        return Ok(LaneEnd::Stopped);
                    }
                    waited += opts.pace.sleep;
                }
            }
            Err(Error::PartitionLost(_)) => {
                batches.reset();
                if let Lane::Part(claim) = &mut lane {
                    match reread_partition(conn, batches, claim).await? {
                        Some(ended) => return Ok(ended),
                        None => {
                            if !running(conn, shared.run_id).await? {
                                return Ok(LaneEnd::RunEnded);
                            }
                        }
                    }
                }
            }
            Err(Error::Transient { message, kind }) if attempt < opts.timeouts.max_retries => {
                attempt += 1;
                // A batch that ran out of time is tried again at half the size.
                let smaller = if kind == Transient::StatementTimeout {
                    sizer.halve();
                    format!(" at {} rows", sizer.rows())
                } else {
                    String::new()
                };
                let wait = backoff(attempt);
                let which = shared.layout.batch_name(lane.batches() + 1, lane.part());
                let _ = shared.events.send(Event::Message(
                    format!(
                        "{which} ({kind}): {message}; retrying{smaller} in {:.1}s (attempt {attempt} of {})",
                        wait.as_secs_f64(),
                        opts.timeouts.max_retries
                    ),
                    about(&lane),
                ));
                let e = Error::Transient { message, kind };
                if retry(shared, conn, batches, attempt, &e, &mut waited).await? {
                    return Ok(LaneEnd::Stopped);
                }
                if let Some(ended) = reread(shared, worker, conn, batches, &mut lane).await? {
                    return Ok(ended);
                }
            }
            Err(Error::Transient { message, kind }) => {
                let within = lane
                    .part()
                    .map(|p| format!(", in partition {p}"))
                    .unwrap_or_default();
                return Err(Error::JobFailed(format!(
                    "{message} ({kind}; still failing after {} retries{within})",
                    opts.timeouts.max_retries
                )));
            }
            Err(e) => {
                batches.reset();
                if !running(conn, shared.run_id).await.unwrap_or(true) {
                    return Ok(LaneEnd::RunEnded);
                }
                return Err(e);
            }
        }
    }
}

/// Waits for the rate limit before a batch of `rows`; true when the workers
/// are to stop meanwhile. A wait a person notices is shown.
async fn rate_limited(shared: &Shared, rows: i64, waited: &mut Duration) -> bool {
    let limiter = shared.limiter.read().ok().and_then(|l| l.clone());
    let Some(limiter) = limiter else {
        return false;
    };
    let mut shown = false;
    while let Some(wait) = limiter.wait_for(rows) {
        if wait >= Duration::from_secs(1) && !shown {
            shown = true;
            let why = format!("waiting: rate limit {}", limiter.rate());
            let _ = shared.events.send(Event::Waiting(Some(why)));
        }
        let nap_for = wait.min(Duration::from_millis(250));
        let stop = nap(shared, nap_for).await;
        *waited += nap_for;
        if stop {
            return true;
        }
    }
    if shown {
        let _ = shared.events.send(Event::Waiting(None));
    }
    false
}

/// A lane with nothing left: the whole range's last batches are made durable
/// (a server crash must not take them back once the run is reported done);
/// a partition is marked finished.
async fn finish(conn: &mut Conn, lane: &Lane) -> Result<()> {
    match lane {
        Lane::Whole { .. } => conn.flush_commits().await.map_err(|e| Error::Transient {
            message: format!("making the last batches durable: {}", db_message(&e)),
            kind: Transient::ConnectionLost,
        }),
        Lane::Part(claim) => partition::finish(conn, claim).await.map(drop),
    }
}

/// Backs off before retry `attempt` after `e`, and replaces a connection that
/// is lost (taking the job lock again, for the whole range). True when the
/// workers are to stop meanwhile.
async fn retry(
    shared: &Shared,
    conn: &mut Conn,
    batches: &mut Batches<'_>,
    attempt: u32,
    e: &Error,
    waited: &mut Duration,
) -> Result<bool> {
    batches.reset();
    let wait = backoff(attempt);
    if nap(shared, wait).await {
        return Ok(true);
    }
    *waited += wait;
    let lost = matches!(
        e,
        Error::Transient {
            kind: Transient::ConnectionLost,
            ..
        }
    );
    let answers = !lost
        && tokio::time::timeout(
            shared
                .opts
                .timeouts
                .network_timeout
                .max(Duration::from_secs(1)),
            super::alive(conn),
        )
        .await
        .unwrap_or(false);
    if !answers {
        let fresh = match &shared.layout {
            Layout::Whole { lock, .. } => super::reconnect(conn, lock, &shared.limits).await,
            Layout::Parts { .. } => connect(shared)
                .await
                .map(|fresh| drop(std::mem::replace(conn, fresh))),
        };
        match fresh {
            Ok(()) => {}
            // The server is not back yet: the next attempt tries again.
            Err(Error::Transient { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Reads the lane's checkpoint back after a failed batch: the database, not
/// this worker's memory, says where the lane is. `Some` when the worker is
/// done with it.
async fn reread(
    shared: &Shared,
    worker: usize,
    conn: &mut Conn,
    batches: &mut Batches<'_>,
    lane: &mut Lane,
) -> Result<Option<LaneEnd>> {
    match lane {
        Lane::Part(claim) => match reread_partition(conn, batches, claim).await {
            Ok(ended) => Ok(ended),
            // Still failing: the next attempt finds out.
            Err(_) => Ok(None),
        },
        Lane::Whole {
            cursor,
            batches: done,
        } => {
            reread_run(shared, worker, conn, batches, cursor, done).await?;
            Ok(None)
        }
    }
}

/// The run's own checkpoint after a failed batch: a COMMIT cut off by the
/// error may have landed (the database is ahead), or a server crash may have
/// lost the last batches with their checkpoints (PostgreSQL commits them
/// asynchronously: the database is behind, and they are redone).
async fn reread_run(
    shared: &Shared,
    worker: usize,
    conn: &mut Conn,
    batches: &mut Batches<'_>,
    cursor: &mut Option<Vec<Value>>,
    done: &mut i64,
) -> Result<()> {
    let Layout::Whole { arity, .. } = &shared.layout else {
        return Ok(());
    };
    let (name, number) = (&shared.job, shared.run_number);
    match store::latest(conn, name).await {
        Ok(Some(r)) if r.id == shared.run_id && r.batches_done != *done => {
            let position = r.position.as_deref().unwrap_or_default();
            let c = if position.is_empty() {
                None
            } else {
                Some(cursor::decode(position, *arity).map_err(|why| {
                    Error::CorruptCheckpoint(format!(
                        "run {number} of {name}: the checkpoint is unreadable after a retry ({why})"
                    ))
                })?)
            };
            let shown = c.as_deref().map(cursor::display).unwrap_or_default();
            let about = About {
                worker,
                part: None,
                batch: Some(*done + 1),
            };
            let said = if r.batches_done > *done {
                format!(
                    "batch {} had committed before the error; going on after it",
                    r.batches_done
                )
            } else {
                format!(
                    "the database's checkpoint is at batch {} ({}), behind this process's {}: \
                     the batches after it were lost with the server (a crash loses the last \
                     commits together with their checkpoints); doing them again",
                    r.batches_done,
                    shared.layout.at(&shown),
                    *done
                )
            };
            let _ = shared.events.send(Event::Message(said, about));
            let totals = Totals {
                rows_done: r.rows_done,
                rows_changed: r.rows_changed,
                rows_rejected: r.rows_rejected,
                batches_done: r.batches_done,
                ..Totals::default()
            };
            let _ = shared.events.send(Event::Rewound(totals, shown));
            *done = r.batches_done;
            *cursor = c;
            batches.set_archive_committed(r.file_offset);
            Ok(())
        }
        Ok(Some(r)) if r.id == shared.run_id => Ok(()),
        // The run itself was lost with the server: it cannot be, for its
        // start is made durable before its first batch.
        Ok(_) => Err(Error::CorruptCheckpoint(format!(
            "run {number} of {name} is no longer in datamig_runs after the connection was lost; \
             nothing after its last checkpoint is known. Run the job again"
        ))),
        Err(_) => Ok(()), // still failing: the next attempt finds out
    }
}

/// Reads the partition back after a failed or refused batch: `Some` when this
/// worker is done with it (another holds it, or it is finished), else the
/// claim follows the row (its position, a bound lowered by a split).
async fn reread_partition(
    conn: &mut Conn,
    batches: &mut Batches<'_>,
    claim: &mut Claim,
) -> Result<Option<LaneEnd>> {
    match partition::reread(conn, claim).await? {
        Some((owner, hi, position, done))
            if owner.as_deref() == Some(claim.owner.as_str()) && !done =>
        {
            claim.hi = hi;
            claim.position = position;
            batches.set_claim(Some(claim.clone()));
            Ok(None)
        }
        Some((_, _, _, true)) => Ok(Some(LaneEnd::Finished)),
        _ => Ok(Some(LaneEnd::Lost)),
    }
}
