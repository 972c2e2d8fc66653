//! A partitioned run (`--workers N`): the key range cut into partitions in
//! `datamig_partitions`, worked on by N workers in this process, each with its
//! own connection and cursor, and by any other process on any host that runs
//! the same job with `--workers` (see [`super::partition`] for how they share).
//!
//! ```text
//! setup (under the job lock, briefly): find or create the run and its partitions
//! workers ×N: claim a partition (or split the largest) ─ batches in it ─ finish it ─ claim …
//! control:    every 200 ms: signals · pause/cancel requests · time window · health throttle
//!             every second: leases renewed · the partitions' sums copied to the run · progress
//! the end:    (the job lock again) the last process to finish runs the checks and completes the run
//! ```
//!
//! The rate limit is one limiter shared by this process's workers; the health
//! throttle and steering are read by the control loop and hold every worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::batch::{self, Batches, Prepared};
use super::pace::Sizer;
use super::partition::{self, Claim, Prefix, Totals};
use super::store::{self, BatchCounts, BatchRecord, RunRecord, RunState};
use super::{
    backoff, end_run, find_run_record, history, millis, ms, pace, percent, run_checks, steer,
    throttle, BatchTimes, CheckResult, CountMode, Observer, Options, Progress, Report,
};
use crate::db::{db_message, who_am_i, Conn, ConnectOptions, Transient, Value};
use crate::job::{DynJob, ParsedArgs, Plan, Source, Step};
use crate::{Error, Result};

/// How often the control loop looks at signals, requests, the window and the throttle.
const TICK: Duration = Duration::from_millis(200);
/// How often leases are renewed and the run's figures published.
const BEAT: Duration = Duration::from_secs(1);
/// How long a process waits for another's setup or finish under the job lock.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Partitions per worker at the start: enough that uneven ones even out, few
/// enough that claiming stays rare.
const PARTS_PER_WORKER: i64 = 4;

/// What holds the workers between batches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gate {
    Go,
    /// The health throttle, with why.
    Wait,
    Paused,
    Stop,
}

/// Why the control loop stopped the workers.
#[derive(Debug, Clone)]
enum Stopped {
    Signal,
    /// A signal while paused: the run stays paused.
    SignalPaused,
    Cancelled(String),
    Window(String),
    Failed(String),
    /// Rejected rows beyond --max-errors.
    ErrorBudget(String),
}

/// A committed batch, as a worker reports it.
struct Committed {
    /// The worker of this process that ran it, from 1.
    worker: usize,
    part: i64,
    /// The batch's number within its partition.
    number: i64,
    counts: BatchCounts,
    transaction: Duration,
    bookkeeping: Duration,
    /// Time the worker waited before it (throttle, rate limit, pause, retries).
    waited: Duration,
    retries: u32,
    position: i64,
}

/// What a worker tells the control loop.
enum Event {
    Batch(Committed),
    /// Something to say, and the worker, partition and batch it is about (the
    /// fields of its log event).
    Message(String, About),
    /// A worker met an error that ends the run.
    Fatal(String),
}

/// What a worker's message is about.
struct About {
    worker: usize,
    part: i64,
    batch: Option<i64>,
}

/// How a worker ended.
enum WorkerEnd {
    /// Every partition is finished.
    AllDone,
    /// Stopped by the control loop.
    Stopped,
    /// The run stopped being `running` elsewhere (cancelled, failed).
    RunEnded,
}

/// What every worker of this process shares.
struct Shared {
    plan: Arc<Plan>,
    run_id: i64,
    opts: Options,
    limits: batch::Limits,
    lease_ms: i64,
    gate: watch::Receiver<Gate>,
    events: mpsc::UnboundedSender<Event>,
    /// The rate limit, shared by this process's workers: this process's share
    /// of the run's rate, by its part of the workers at work on the run.
    limiter: std::sync::RwLock<Option<Arc<pace::Limiter>>>,
    /// Where and how the run's connections are opened (`--connect-timeout`).
    url: crate::config::DatabaseUrl,
    connect: ConnectOptions,
}

/// Whether this run goes partitioned, and with how many workers here: asked
/// for with `--workers`, or joining an unfinished run that is partitioned.
pub(super) async fn workers_for(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    opts: &Options,
    obs: &mut dyn Observer,
) -> Result<Option<usize>> {
    if conn.single_writer() {
        if opts.workers.is_some_and(|n| n > 1) {
            obs.message(
                "SQLite has a single writer: the run goes on in one worker (--workers needs PostgreSQL or MariaDB)",
            );
        }
        return Ok(None);
    }
    if opts.workers.is_some() {
        return Ok(opts.workers);
    }
    // Read only when complete (created later, when the run's flags have passed):
    // tables an earlier version made lack the columns added since, and a runner
    // starting this moment may be creating them (datamig_partitions there,
    // datamig_runs' later columns not yet: "Unknown column 'request_by'", seen
    // with four runners at once). Either way there is no partitioned run to join.
    if opts.restart
        || !conn
            .bookkeeping_complete()
            .await
            .map_err(|e| crate::db::error("cannot read datamig's tables", &e))?
    {
        return Ok(None);
    }
    match store::latest(conn, job.name()).await? {
        Some(r) if r.state.is_resumable() && r.args == args.canonical => {
            if partition::exists(conn, r.id).await? {
                obs.message(&format!(
                    "run {} of {} is partitioned: joining it with one worker (--workers N for more)",
                    r.number,
                    job.name()
                ));
                Ok(Some(1))
            } else {
                Ok(None)
            }
        }
        _ => Ok(None),
    }
}

/// The one integer key a partitioned run splits, or why the job cannot be.
fn key_of(job: &dyn DynJob, plan: &Plan) -> Result<Option<(String, String)>> {
    let refuse = |why: String| Err(Error::Usage(format!("job {}: {why}", job.name())));
    match (&plan.source, &plan.step) {
        (Source::Csv { .. }, _) => {
            refuse("a CSV import reads one file in order and runs in one worker; drop --workers".into())
        }
        (_, Step::Archive { .. }) => refuse(
            "an archive step appends to one file in key order and runs in one worker; drop --workers".into(),
        ),
        (Source::Table { key, .. }, _) if key.len() != 1 => refuse(format!(
            "--workers cuts the key range into partitions, which needs a single integer key; the key is ({}). \
             Run it without --workers: one cursor takes any key",
            key.join(", ")
        )),
        (Source::Table { table, key, .. }, _) => Ok(Some((table.clone(), key[0].clone()))),
        (Source::Range { .. }, _) => Ok(None),
    }
}

/// The smallest and largest key: `(key before the first, last key)` for cutting.
async fn key_span(conn: &mut Conn, job: &dyn DynJob, plan: &Plan) -> Result<Option<(i64, i64)>> {
    match (&plan.source, key_of(job, plan)?) {
        (Source::Range { start, end }, _) => Ok(Some((start.saturating_sub(1), *end))),
        (_, Some((table, key))) => {
            let sql = format!(
                "SELECT min({k}), max({k}) FROM {t}",
                k = conn.quote_ident(&key),
                t = conn.quote_ident(&table)
            );
            let row = conn.fetch_one(&sql, &[]).await.map_err(|e| {
                Error::JobFailed(format!("cannot read the key range: {}", db_message(&e)))
            })?;
            match (row.first(), row.get(1)) {
                (Some(Value::Int(lo)), Some(Value::Int(hi))) => Ok(Some((lo.saturating_sub(1), *hi))),
                (Some(Value::Null), _) | (None, _) => Ok(None),
                (Some(other), _) => Err(Error::Usage(format!(
                    "job {}: --workers cuts the key range into partitions, which needs a single integer key; \
                     {key} holds {} (its first: {}). Run it without --workers: one cursor takes any key",
                    job.name(),
                    match other {
                        Value::Text(_) => "text",
                        Value::Bytes(_) => "bytes",
                        Value::Float(_) => "floating-point numbers",
                        Value::Timestamp(_) => "timestamps",
                        Value::Bool(_) => "booleans",
                        Value::Int(_) | Value::Null => "values that are not integers",
                    },
                    super::cursor::display(std::slice::from_ref(other))
                ))),
            }
        }
        (_, None) => Ok(None),
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
        Source::Csv { .. } => None,
    }
}

/// Takes the job lock for setup or the finish; another process's setup or
/// finish is waited for, a single-cursor run holding it is not.
async fn lock_briefly(conn: &mut Conn, job: &dyn DynJob, lock: &str) -> Result<()> {
    let started = Instant::now();
    while !conn.try_lock(lock).await? {
        let plain_running = match store::latest(conn, job.name()).await? {
            Some(r) if r.state == RunState::Running => !partition::exists(conn, r.id).await?,
            _ => false,
        };
        if plain_running || started.elapsed() > LOCK_WAIT {
            let holder = conn
                .lock_holder(lock)
                .await
                .unwrap_or_else(|| "another process".into());
            return Err(Error::AlreadyRunning(format!(
                "job {} is already running in one worker, by {holder}: a run started without --workers \
                 cannot be joined; wait for it, or stop it (Ctrl-C or SIGTERM) and run this again to go on with workers",
                job.name()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The run this process works on, found or created under the job lock.
struct Joined {
    run_id: i64,
    /// Which run of its job it is: how messages name it.
    number: i64,
    resumed: bool,
    baseline: Vec<CheckResult>,
    total: Option<i64>,
    record: Option<RunRecord>,
}

impl Joined {
    fn resuming(r: RunRecord) -> Joined {
        Joined {
            run_id: r.id,
            number: r.number,
            resumed: true,
            baseline: super::stored_checks(&r),
            total: r.total_rows,
            record: Some(r),
        }
    }
}

async fn join(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    plan: &Plan,
    opts: &Options,
    workers: usize,
    obs: &mut dyn Observer,
) -> Result<Joined> {
    let batch_size = i64::try_from(opts.batch_size).unwrap_or(i64::MAX);
    // Read first: a key that is not an integer is refused before an unfinished
    // run is touched (abandoned by --restart, say).
    let span = key_span(conn, job, plan).await?;
    let found = find_run_record(conn, job, args, opts, obs).await?;
    let parts = PARTS_PER_WORKER * i64::try_from(workers).unwrap_or(1);
    match found {
        Some(r) if partition::exists(conn, r.id).await? => {
            if r.state != RunState::Running {
                store::resume(conn, r.id, batch_size, r.total_rows).await?;
            }
            let t = partition::totals(conn, r.id)
                .await
                .map_err(|e| crate::db::error("cannot read datamig_partitions", &e))?;
            tracing::Span::current().record("run_id", r.id);
            obs.message(&format!(
                "joining run {} of {} with {workers} worker(s): {} of {} partitions done{}",
                r.number,
                job.name(),
                t.done,
                t.partitions,
                percent(t.rows_done, r.total_rows)
                    .map(|p| format!(", {p:.1}%"))
                    .unwrap_or_default()
            ));
            Ok(Joined::resuming(r))
        }
        Some(r) => {
            // Begun with one cursor: what it did becomes a finished partition 0,
            // and the keys after its cursor are cut for the workers.
            let upto = match r.position.as_deref() {
                None => None,
                Some(text) => super::cursor::decode(text, 1)
                    .ok()
                    .and_then(|c| c.first().and_then(Value::as_i64))
                    .map(Some)
                    .ok_or_else(|| {
                        Error::CorruptCheckpoint(format!(
                            "run {} of {} has a checkpoint that is not one integer key ({text}); run it \
                             without --workers, or start over with --restart",
                            r.number,
                            job.name()
                        ))
                    })?,
            };
            let ranges = match (span, upto) {
                (Some((_, hi)), Some(at)) => partition::cut(at, hi.max(at), parts)
                    .into_iter()
                    .map(|(lo, hi)| (lo.or(Some(at)), hi))
                    .collect(),
                (Some((lo, hi)), None) => partition::cut(lo, hi, parts),
                (None, at) => vec![(at, None)],
            };
            let prefix = upto.map(|at| Prefix {
                upto: at,
                rows_done: r.rows_done,
                rows_changed: r.rows_changed,
                rows_rejected: r.rows_rejected,
                batches_done: r.batches_done,
            });
            partition::create(conn, r.id, &ranges, prefix.as_ref()).await?;
            store::resume(conn, r.id, batch_size, r.total_rows).await?;
            conn.flush_commits()
                .await
                .map_err(|e| crate::db::error("cannot record the run's partitions", &e))?;
            tracing::Span::current().record("run_id", r.id);
            obs.message(&format!(
                "going on with run {} of {} in {} partitions after {} done in one worker",
                r.number,
                job.name(),
                ranges.len(),
                r.rows_done
            ));
            Ok(Joined::resuming(r))
        }
        None => {
            let prep = Prepared::new(conn, plan).await?;
            let total = match (&plan.source, opts.count) {
                (_, CountMode::None) => None,
                (Source::Range { start, end }, _) => Some(end - start + 1),
                (_, CountMode::Estimate) => match prep.estimate(conn, None).await {
                    Some(n) => Some(n),
                    None => Some(prep.count(conn, None).await?),
                },
                (_, CountMode::Exact) => Some(prep.count(conn, None).await?),
            };
            let baseline = run_checks(conn, &plan.checks, &[]).await?;
            let json = serde_json::to_string(&baseline).unwrap_or_default();
            let ranges = match span {
                Some((lo, hi)) => partition::cut(lo, hi, parts),
                None => vec![(None, None)],
            };
            // The run and its partitions appear together: a process that finds
            // the run finds it partitioned.
            let begin = |e: sqlx::Error| crate::db::error("cannot record the run", &e);
            conn.begin().await.map_err(begin)?;
            let created = async {
                let (id, number) =
                    store::insert(conn, job.name(), &args.canonical, batch_size, total, &json)
                        .await?;
                partition::create(conn, id, &ranges, None).await?;
                Ok::<_, Error>((id, number))
            }
            .await;
            let (id, number) = match created {
                Ok(id) => {
                    conn.commit().await.map_err(begin)?;
                    conn.flush_commits().await.map_err(begin)?;
                    id
                }
                Err(e) => {
                    let _ = conn.rollback().await;
                    return Err(e);
                }
            };
            let of = total.map(|t| format!(" over {t} rows")).unwrap_or_default();
            tracing::Span::current().record("run_id", id);
            obs.message(&format!(
                "starting run {number} of {}{of} in {} partitions, {workers} worker(s) here",
                job.name(),
                ranges.len()
            ));
            Ok(Joined {
                run_id: id,
                number,
                resumed: false,
                baseline,
                total,
                record: None,
            })
        }
    }
}

/// Runs (or joins) a partitioned run of `job` with `workers` workers here.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    plan: Plan,
    opts: &Options,
    workers: usize,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Report> {
    key_of(job, &plan)?;
    let (mut throttle, _) = super::prepare_run(conn, opts).await?;
    let lock = super::job_lock(job);
    lock_briefly(conn, job, &lock).await?;
    let joined = join(conn, job, args, &plan, opts, workers, obs).await;
    let _ = conn.unlock(&lock).await;
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            throttle.close().await;
            return Err(e);
        }
    };
    let result = work(
        conn,
        job,
        plan,
        opts,
        workers,
        &joined,
        &mut throttle,
        stop,
        obs,
    )
    .await;
    throttle.close().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn work(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: Plan,
    opts: &Options,
    workers: usize,
    joined: &Joined,
    throttle: &mut throttle::Throttle,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Report> {
    let run_id = joined.run_id;
    let plan = Arc::new(plan);
    let started = Instant::now();
    let record = joined.record.as_ref();
    let rate = super::settle_rate(conn, run_id, record, opts.rate, true, obs).await?;
    // Wall-clock time of the run: before this process joined, and since.
    let elapsed_before = record.map_or(0, |r| r.elapsed_ms);
    let totals = partition::totals(conn, run_id)
        .await
        .map_err(|e| crate::db::error("cannot read datamig_partitions", &e))?;
    let progress = Progress {
        run_id,
        run_number: joined.number,
        rows_done: totals.rows_done,
        total: joined.total,
        batches: totals.batches_done,
        rows_changed: totals.rows_changed,
        rows_rejected: totals.rows_rejected,
        position: partitions_text(&totals),
        rows_this_process: 0,
        elapsed: Duration::ZERO,
        max_batch: millis(record.map_or(0, |r| r.max_batch_ms)),
        bookkeeping: millis(record.map_or(0, |r| r.bookkeeping_ms)),
    };
    obs.started(&progress);

    let lease = opts.lease.max(Duration::from_millis(500));
    let (gate_tx, gate_rx) = watch::channel(Gate::Go);
    let (events_tx, events) = mpsc::unbounded_channel();
    let largest = match opts.target_batch_time {
        Some(_) => opts.batch_max.max(opts.batch_size),
        None => opts.batch_size,
    };
    let shared = Arc::new(Shared {
        plan: Arc::clone(&plan),
        run_id,
        opts: opts.clone(),
        limits: batch::Limits {
            lock_timeout: opts.lock_timeout,
            statement_timeout: opts.statement_timeout,
            network_timeout: opts.network_timeout,
        },
        lease_ms: ms(lease),
        gate: gate_rx,
        events: events_tx,
        limiter: std::sync::RwLock::new(rate.map(|r| Arc::new(pace::Limiter::new(r, largest)))),
        url: conn.url().clone(),
        connect: conn.connect_options().clone(),
    });
    let me = format!("{} #{:04x}", who_am_i(), rand::random::<u16>());
    let owners: Vec<String> = (1..=workers).map(|i| format!("{me} w{i}")).collect();
    // The workers are futures of this task: their reads ahead (and the
    // transforms in them) run as tasks of their own on the runtime's threads.
    let (all_done, workers_done) = tokio::sync::oneshot::channel::<()>();
    let workers_future = async {
        let ends = futures_util::future::join_all(owners.iter().enumerate().map(|(i, owner)| {
            let span = context_span!("worker", worker = i + 1);
            let shared = &shared;
            tracing::Instrument::instrument(
                async move {
                    let result = worker(shared, i + 1, owner).await;
                    if let Err(e) = &result {
                        let _ = shared.events.send(Event::Fatal(e.to_string()));
                    }
                    result
                },
                span,
            )
        }))
        .await;
        let _ = all_done.send(());
        ends
    };

    let mut control = Control {
        conn,
        job,
        opts,
        obs,
        throttle,
        stop,
        gate: gate_tx,
        shared: &shared,
        largest_batch: largest,
        rate,
        share: 1.0,
        poller: steer::Poller::new(opts.network_timeout.max(Duration::from_secs(1))),
        owners: &owners,
        lease,
        started,
        elapsed_before,
        totals,
        own: Totals::default(),
        progress,
        history: history::History::new(run_id, Duration::ZERO),
        history_limit: opts.network_timeout.max(Duration::from_secs(1)),
        batch_times: BatchTimes::default(),
        waited: Duration::ZERO,
        stopped: None,
        paused: false,
        throttled: None,
        warned_run_time: false,
        last_batch: Duration::ZERO,
        beat: Instant::now(),
    };
    let (results, ()) = tokio::join!(workers_future, control.run(events, workers_done));
    // The end of the run needs a live connection (the server may have restarted).
    control.reconnect_if_lost().await;
    let Control {
        conn,
        obs,
        mut totals,
        mut own,
        mut progress,
        mut history,
        history_limit,
        batch_times,
        waited,
        stopped,
        ..
    } = control;
    let mut ends = Vec::new();
    let mut error = None;
    for result in results {
        match result {
            Ok(end) => ends.push(end),
            Err(e) => error = error.or(Some(e)),
        }
    }
    obs.waiting(None);
    if let Err(e) = partition::release(conn, run_id, &owners).await {
        tracing::warn!("{e}; the partitions go to other runners when their leases run out");
    }
    history.flush(conn, history_limit).await;
    if let Ok(t) = partition::totals(conn, run_id).await {
        totals = t;
        own = Totals::default();
        let elapsed = elapsed_before + ms(started.elapsed());
        if let Err(e) = partition::publish(conn, run_id, &totals, elapsed).await {
            tracing::warn!("could not update the run's figures: {}", db_message(&e));
        }
    }
    show(&mut progress, &totals, &own, started);
    obs.finished(&progress);
    let mut report = Report {
        run_id,
        run_number: joined.number,
        resumed: joined.resumed,
        rows_done: progress.rows_done,
        rows_changed: progress.rows_changed,
        rows_rejected: progress.rows_rejected,
        batches: progress.batches,
        rows_this_process: progress.rows_this_process,
        elapsed: started.elapsed(),
        max_batch: progress.max_batch,
        bookkeeping: progress.bookkeeping,
        batch_times,
        checks: Vec::new(),
        stopped: None,
        rows_left: None,
        waited,
        analyzed: Vec::new(),
        completed_here: false,
    };
    let others_at_work = totals.leased > 0;
    let number = joined.number;
    let resume = &opts.resume_command;
    let name = job.name();
    match (stopped, error) {
        (Some(Stopped::Failed(_)), Some(e)) | (None, Some(e)) => {
            let _ = end_run(conn, &progress, RunState::Failed, Some(&e.to_string())).await;
            Err(Error::JobFailed(format!(
                "run {number} of {name} failed: {e}. Every committed batch is kept (the other runners of \
                 the run stop too); fix the cause and resume with: {resume}"
            )))
        }
        (Some(Stopped::Failed(why)), None) => {
            let _ = end_run(conn, &progress, RunState::Failed, Some(&why)).await;
            Err(Error::JobFailed(format!("run {number} of {name} failed: {why}")))
        }
        (Some(Stopped::Cancelled(why)), _) => Err(Error::Cancelled(format!(
            "run {number} of {name} was {why} with {}; every finished batch is committed. Running the job \
             again starts a new run",
            partitions_text(&totals)
        ))),
        (Some(Stopped::ErrorBudget(why)), _) => {
            let _ = end_run(conn, &progress, RunState::Failed, Some(&why)).await;
            Err(Error::ErrorBudget(format!(
                "run {number} of {name} stopped: {why}. Every finished batch is committed; `datamig status {name}` \
                 lists the rejected rows. Fix the data or raise --max-errors, then resume with: {resume}"
            )))
        }
        (Some(Stopped::Signal | Stopped::SignalPaused), _) => {
            let state = store::latest(conn, name).await.ok().flatten().map(|r| r.state);
            let paused = state == Some(RunState::Paused);
            if !others_at_work && !paused {
                let _ = end_run(conn, &progress, RunState::Interrupted, None).await;
            }
            let how = if others_at_work {
                format!("the run goes on in the other processes at work on it; join them again with: {resume}")
            } else if paused {
                format!("it stays paused: `datamig resume {name}`, then resume with: {resume}")
            } else {
                format!("Resume with: {resume}")
            };
            Err(Error::Interrupted(format!(
                "interrupted run {number} of {name} with {}{}; every finished batch is committed. {how}",
                partitions_text(&totals),
                percent(totals.rows_done, joined.total)
                    .map(|p| format!(" ({p:.1}%)"))
                    .unwrap_or_default()
            )))
        }
        (Some(Stopped::Window(reason)), _) => {
            if !others_at_work {
                let _ = end_run(conn, &progress, RunState::Interrupted, None).await;
            }
            report.rows_left = joined.total.map(|t| (t - totals.rows_done).max(0));
            report.stopped = Some(reason);
            Ok(report)
        }
        (None, None) if ends.iter().all(|e| matches!(e, WorkerEnd::AllDone)) => {
            finish(conn, job, &plan, opts, joined, &progress, report, stop, obs).await
        }
        (None, None) => ended_elsewhere(conn, job, run_id).await,
    }
}

/// The control loop of a partitioned run's process: it reads the workers'
/// reports, and, on a timer, signals, steering requests, the time window and
/// the health throttle (holding or stopping the workers through the gate),
/// renews the leases, and publishes the run's figures.
struct Control<'a> {
    conn: &'a mut Conn,
    job: &'a dyn DynJob,
    opts: &'a Options,
    obs: &'a mut dyn Observer,
    throttle: &'a mut throttle::Throttle,
    stop: &'a AtomicBool,
    gate: watch::Sender<Gate>,
    shared: &'a Shared,
    /// The largest batch a worker may ask the rate limiter for.
    largest_batch: u64,
    /// The run's rate limit, as last read from its record: a process that
    /// joins with another `--rate` changes it for every process.
    rate: Option<pace::Rate>,
    /// This process's share of the run's rate limit.
    share: f64,
    poller: steer::Poller,
    owners: &'a [String],
    lease: Duration,
    started: Instant,
    /// The run's wall-clock time before this process joined it.
    elapsed_before: i64,
    /// The run's figures as last read from its partitions…
    totals: Totals,
    /// …and what this process's workers have done since.
    own: Totals,
    progress: Progress,
    history: history::History,
    history_limit: Duration,
    batch_times: BatchTimes,
    waited: Duration,
    stopped: Option<Stopped>,
    paused: bool,
    /// Why the health throttle holds the workers, while it does.
    throttled: Option<String>,
    warned_run_time: bool,
    last_batch: Duration,
    /// When the leases were last renewed.
    beat: Instant,
}

impl Control<'_> {
    /// Runs until every worker has ended and its last report is read.
    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut workers_done: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut finishing = false;
        loop {
            tokio::select! {
                _ = &mut workers_done, if !finishing => {
                    // Take what the workers sent last, then stop.
                    finishing = true;
                    events.close();
                }
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                _ = tick.tick() => {
                    // A control connection gone silent (a dead network path)
                    // must not stop the loop: it is replaced. (A slow probe
                    // of the health throttle's is given its time.)
                    let limit = self.opts.lock_timeout + self.history_limit + self.throttle.limit();
                    if tokio::time::timeout(limit, self.on_tick()).await.is_err() {
                        tracing::warn!("the control connection did not answer within {}s; replacing it", limit.as_secs());
                        self.replace_connection().await;
                    }
                }
            }
        }
    }

    /// Opens, holds or (for good) closes the gate the workers wait at.
    fn set_gate(&self, g: Gate) {
        self.gate.send_if_modified(|now| {
            let changed = *now != g && *now != Gate::Stop;
            if changed {
                *now = g;
            }
            changed
        });
    }

    fn stop_with(&mut self, why: Stopped) {
        if self.stopped.is_none() {
            self.stopped = Some(why);
        }
        self.set_gate(Gate::Stop);
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Batch(b) => self.committed(&b),
            Event::Message(
                m,
                About {
                    worker,
                    part,
                    batch,
                },
            ) => {
                let span = match batch {
                    Some(batch) => context_span!("batch", worker, partition = part, batch),
                    None => context_span!("partition", worker, partition = part),
                };
                span.in_scope(|| self.obs.message(&m));
            }
            Event::Fatal(why) => self.stop_with(Stopped::Failed(why)),
        }
    }

    fn committed(&mut self, b: &Committed) {
        let c = &b.counts;
        self.own.rows_done += c.rows;
        self.own.rows_changed += c.changed;
        self.own.rows_rejected += c.rejected;
        self.own.batches_done += 1;
        let p = &mut self.progress;
        p.rows_this_process += c.rows;
        p.max_batch = p.max_batch.max(b.transaction);
        p.bookkeeping += b.bookkeeping;
        self.batch_times.record(b.transaction);
        self.last_batch = b.transaction;
        self.waited += b.waited;
        self.history.push(BatchRecord {
            batch: b.number,
            partition: Some(b.part),
            rows: c.rows,
            changed: c.changed,
            rejected: c.rejected,
            ms: ms(b.transaction),
            waited_ms: ms(b.waited),
            retries: i64::from(b.retries),
            at_ms: chrono::Utc::now().timestamp_millis(),
        });
        tracing::debug!(
            worker = b.worker,
            partition = b.part,
            batch = b.number,
            rows = c.rows,
            changed = c.changed,
            rejected = c.rejected,
            transaction_ms = ms(b.transaction),
            retries = b.retries,
            position = b.position,
            "batch committed"
        );
        if let Some(max) = self.opts.warn_batch_time.filter(|max| b.transaction > *max) {
            let span = context_span!(
                "batch",
                worker = b.worker,
                partition = b.part,
                batch = b.number,
                transaction_ms = ms(b.transaction)
            );
            span.in_scope(|| {
                self.obs.message(&format!(
                    "warning: batch {} of partition {} held its transaction {} ms, more than --warn-batch-time {} ms",
                    b.number,
                    b.part,
                    b.transaction.as_millis(),
                    max.as_millis()
                ))
            });
        }
        show(&mut self.progress, &self.totals, &self.own, self.started);
        self.obs.batch(&self.progress);
    }

    async fn on_tick(&mut self) {
        if self.stopped.is_some() {
            return self.set_gate(Gate::Stop);
        }
        if self.stop.load(Ordering::SeqCst) {
            let why = if self.paused {
                Stopped::SignalPaused
            } else {
                Stopped::Signal
            };
            return self.stop_with(why);
        }
        if let Err(e) = self.steer().await {
            if self.connection_answers().await {
                return self.stop_with(Stopped::Failed(e.to_string()));
            }
            // Lost with the connection: looked at again on a new one next tick.
            tracing::warn!("could not act on the run's requests: {e}");
            self.replace_connection().await;
        }
        if self.stopped.is_some() {
            return;
        }
        if self.paused {
            self.waited += TICK;
        } else {
            if let Some(window) = &self.opts.window {
                if window.closes_before(self.last_batch) {
                    return self.stop_with(Stopped::Window(window.reason.to_string()));
                }
            }
            match self.throttle.check(self.conn).await {
                Ok(why) if why != self.throttled => {
                    let shown = why.as_deref().map(|w| format!("waiting: {w}"));
                    self.obs.waiting(shown.as_deref());
                    self.set_gate(if why.is_some() { Gate::Wait } else { Gate::Go });
                    self.throttled = why;
                }
                Ok(_) => {}
                // The health is unknown: the workers wait until it is known again.
                Err(Error::Transient { message, kind }) => {
                    let why =
                        format!("the database's health cannot be checked ({kind}: {message})");
                    if self.throttled.as_ref() != Some(&why) {
                        self.obs.waiting(Some(&format!("waiting: {why}")));
                        self.set_gate(Gate::Wait);
                        self.throttled = Some(why);
                    }
                    self.reconnect_if_lost().await;
                }
                Err(e) => return self.stop_with(Stopped::Failed(e.to_string())),
            }
        }
        if self.beat.elapsed() >= BEAT.min(self.lease / 3) {
            self.beat = Instant::now();
            // Bounded as a whole: on a connection gone silent it would wait forever.
            let limit = self.history_limit;
            if tokio::time::timeout(limit, self.heartbeat()).await.is_err() {
                tracing::warn!(
                    "the control connection did not answer the heartbeat within {:.1}s; replacing it",
                    limit.as_secs_f64()
                );
                self.replace_connection().await;
            }
        }
    }

    /// Acts on a pause, resume or cancel asked for from elsewhere.
    async fn steer(&mut self) -> Result<()> {
        let run_id = self.progress.run_id;
        let name = self.job.name();
        match self.poller.poll(self.conn, run_id, self.paused).await? {
            steer::Polled::Cancel(by) => {
                match store::poll(self.conn, run_id).await {
                    // Completed by another process: the workers end by themselves.
                    Ok((Some(RunState::Completed), _, _)) => return Ok(()),
                    // Cancelled already (by another process of the run, or by hand).
                    Ok((Some(RunState::Cancelled), None, _)) => {}
                    _ => {
                        // The run's state stops every other process's workers too.
                        let why = format!("cancelled by {by}");
                        end_run(self.conn, &self.progress, RunState::Cancelled, Some(&why)).await?;
                    }
                }
                self.stop_with(Stopped::Cancelled(format!("cancelled by {by}")));
            }
            steer::Polled::Pause(by)
                if !self.paused
                    && store::settle_request(
                        self.conn,
                        run_id,
                        RunState::Paused,
                        store::Request::Pause,
                    )
                    .await? =>
            {
                self.paused = true;
                self.obs.message(&format!(
                    "paused by {by}; `datamig resume {name}` lets it go on, `datamig cancel {name}` stops it"
                ));
                self.obs.waiting(Some("paused"));
                self.set_gate(Gate::Paused);
            }
            steer::Polled::Resume(by)
                if self.paused
                    && store::settle_request(
                        self.conn,
                        run_id,
                        RunState::Running,
                        store::Request::Resume,
                    )
                    .await? =>
            {
                self.resumed(&format!("resumed by {by}"));
            }
            // Resumed by another process of the run.
            steer::Polled::Go if self.paused => self.resumed("resumed"),
            steer::Polled::Unanswered => self.reconnect_if_lost().await,
            _ => {}
        }
        Ok(())
    }

    fn resumed(&mut self, how: &str) {
        self.paused = false;
        self.obs.message(how);
        self.obs.waiting(None);
        // The throttle decides again at the next tick.
        self.throttled = None;
        self.set_gate(Gate::Go);
    }

    /// Renews the leases, publishes the run's figures, writes the history, and
    /// checks the error budget and the run-time warning.
    async fn heartbeat(&mut self) {
        let run_id = self.progress.run_id;
        if let Err(e) = partition::heartbeat(self.conn, run_id, self.owners, ms(self.lease)).await {
            tracing::warn!("could not renew the partitions' leases: {}", db_message(&e));
            self.reconnect_if_lost().await;
        }
        self.publish().await;
        self.share_rate().await;
        self.obs.batch(&self.progress);
        self.history.flush(self.conn, self.history_limit).await;
        if let Some(max) = self
            .opts
            .max_errors
            .filter(|max| self.progress.rows_rejected > *max)
        {
            let why = format!(
                "{} rows rejected, more than --max-errors {max} allows",
                self.progress.rows_rejected
            );
            self.stop_with(Stopped::ErrorBudget(why));
        }
        let took = self.started.elapsed();
        if let Some(max) = self
            .opts
            .warn_run_time
            .filter(|max| !self.warned_run_time && took > *max)
        {
            self.warned_run_time = true;
            self.obs.message(&format!(
                "warning: the run has taken {:.0}s, more than --warn-run-time {:.0}s, and has {}",
                took.as_secs_f64(),
                max.as_secs_f64(),
                partitions_text(&self.totals)
            ));
        }
    }

    /// Replaces the control connection if it is lost (a server restart): the
    /// leases, the run's figures and its end need one.
    async fn reconnect_if_lost(&mut self) {
        if !self.connection_answers().await {
            tracing::warn!(
                "the control connection does not answer within {:.1}s; replacing it",
                self.history_limit.as_secs_f64()
            );
            self.replace_connection().await;
        }
    }

    /// Whether the control connection still answers (within the network timeout).
    async fn connection_answers(&mut self) -> bool {
        tokio::time::timeout(self.history_limit, super::alive(self.conn))
            .await
            .unwrap_or(false)
    }

    /// Opens a new control connection in place of the old one (dropped, not
    /// closed: a graceful close waits on a silent server).
    async fn replace_connection(&mut self) {
        match control_connection(&self.shared.url, &self.shared.connect, self.opts).await {
            Ok(fresh) => {
                drop(std::mem::replace(self.conn, fresh));
                tracing::info!("reconnected the control connection");
            }
            Err(e) => {
                tracing::warn!("the control connection is lost, and reconnecting failed: {e}")
            }
        }
    }

    /// Gives this process its share of the run's rate limit: its part of the
    /// partitions at work, so that the rate holds for the run as a whole
    /// however many processes on however many hosts work on it.
    async fn share_rate(&mut self) {
        let run_id = self.progress.run_id;
        // Bounded, as every look on the control connection is: a silent one
        // is replaced elsewhere, and the rate read again next time.
        let read = tokio::time::timeout(self.history_limit, store::rate(self.conn, run_id)).await;
        if let Ok(Ok(recorded)) = read {
            let recorded = recorded.as_deref().and_then(|r| pace::Rate::parse(r).ok());
            if recorded != self.rate {
                self.rate = recorded;
                self.share = f64::NAN; // differs from any share: the limiter is made anew
                match recorded {
                    Some(r) => tracing::info!(
                        "the run's rate limit is {r} now (set by another process on it)"
                    ),
                    None => {
                        tracing::info!("the run's rate limit was lifted (by another process on it)")
                    }
                }
                if recorded.is_none() {
                    if let Ok(mut l) = self.shared.limiter.write() {
                        *l = None;
                    }
                }
            }
        }
        let Some(rate) = self.rate else { return };
        let Ok((mine, all)) = partition::at_work(self.conn, run_id, self.owners).await else {
            return;
        };
        #[allow(clippy::cast_precision_loss)] // a share of a few hundred workers
        let share = if all > 0 && mine > 0 {
            mine as f64 / all as f64
        } else {
            1.0
        };
        if (share - self.share).abs() < 0.05 {
            return;
        }
        self.share = share;
        let limiter = Arc::new(pace::Limiter::new(rate.share(share), self.largest_batch));
        if let Ok(mut l) = self.shared.limiter.write() {
            *l = Some(limiter);
        }
        tracing::info!(share, "this process's share of the rate limit changed");
    }

    /// Reads the run's figures from its partitions and copies them to its row.
    async fn publish(&mut self) {
        let run_id = self.progress.run_id;
        if let Ok(t) = partition::totals(self.conn, run_id).await {
            self.totals = t;
            self.own = Totals::default();
            let elapsed = self.elapsed_before + ms(self.started.elapsed());
            if let Err(e) = partition::publish(self.conn, run_id, &self.totals, elapsed).await {
                tracing::debug!("could not update the run's figures: {}", db_message(&e));
            }
        }
        show(&mut self.progress, &self.totals, &self.own, self.started);
    }
}

/// A connection for the control loop: lock waits bounded, statements not
/// (the checks at the end may rightly take long).
async fn control_connection(
    url: &crate::config::DatabaseUrl,
    connect: &ConnectOptions,
    opts: &Options,
) -> Result<Conn> {
    let mut conn = Conn::connect(url, connect).await?;
    super::unbatched_limits(opts).apply(&mut conn).await?;
    Ok(conn)
}

/// The run stopped being `running` while this process worked on it.
async fn ended_elsewhere(conn: &mut Conn, job: &dyn DynJob, run_id: i64) -> Result<Report> {
    let r = store::list(conn, Some(job.name()), 50)
        .await?
        .into_iter()
        .find(|r| r.id == run_id);
    let (state, why, number) = r
        .map(|r| (r.state, r.last_error.unwrap_or_default(), r.number))
        .unwrap_or((RunState::Cancelled, "deleted".into(), run_id));
    let name = job.name();
    match state {
        RunState::Cancelled => Err(Error::Cancelled(format!(
            "run {number} of {name} was {why}; every finished batch is committed. Running the job again starts a new run"
        ))),
        s => Err(Error::JobFailed(format!(
            "run {number} of {name} is {s} ({why}), set by another process at work on it; `datamig status {name}` shows it"
        ))),
    }
}

/// Every partition is finished: the first process here runs the checks and
/// completes the run; one that comes after reports what it found.
#[allow(clippy::too_many_arguments)]
async fn finish(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: &Plan,
    opts: &Options,
    joined: &Joined,
    progress: &Progress,
    mut report: Report,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Report> {
    let lock = super::job_lock(job);
    let started = Instant::now();
    loop {
        while !conn.try_lock(&lock).await? {
            if started.elapsed() > LOCK_WAIT * 10 {
                return Err(Error::AlreadyRunning(format!(
                    "every partition of run {} is done, but another process has held the job lock for \
                     {}s while completing it; `datamig status {}` shows it",
                    joined.number,
                    started.elapsed().as_secs(),
                    job.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let result = finish_locked(
            conn,
            job,
            plan,
            opts,
            joined,
            progress,
            &mut report,
            stop,
            obs,
        )
        .await;
        let _ = conn.unlock(&lock).await;
        match result {
            // The connection was lost while completing, and another process
            // finishing the run took the lock meanwhile: what it found is the run's.
            Err(Error::AlreadyRunning(_)) => continue,
            result => return result.map(|()| report),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish_locked(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: &Plan,
    opts: &Options,
    joined: &Joined,
    progress: &Progress,
    report: &mut Report,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<()> {
    let run_id = joined.run_id;
    let now = store::list(conn, Some(job.name()), 50)
        .await?
        .into_iter()
        .find(|r| r.id == run_id);
    if let Some(r) = now.filter(|r| r.state == RunState::Completed) {
        // Another process completed it: its checks are the run's.
        report.checks = super::stored_checks(&r);
        return super::verified(job, report);
    }
    if let Err(e) = conn.set_timeouts(opts.lock_timeout, None, None).await {
        tracing::warn!("could not lift the statement timeout for the checks: {e}");
    }
    super::complete(
        conn,
        job,
        plan,
        opts,
        progress,
        &joined.baseline,
        report,
        stop,
        obs,
    )
    .await
}

/// `12 of 16 partitions done, 4 at work` (by every process on the run).
fn partitions_text(t: &Totals) -> String {
    let done = format!("{} of {} partitions done", t.done, t.partitions);
    if t.leased > 0 {
        format!("{done}, {} at work", t.leased)
    } else {
        done
    }
}

/// The progress shown: the run's figures as last read, plus this process's since.
fn show(progress: &mut Progress, totals: &Totals, own: &Totals, started: Instant) {
    // A batch counted in both (committed before the sums were read, reported
    // after) makes this an overestimate for a second: never past the total.
    progress.rows_done = totals.rows_done + own.rows_done;
    if let Some(t) = progress.total {
        progress.rows_done = progress.rows_done.min(t.max(totals.rows_done));
    }
    progress.rows_changed = totals.rows_changed + own.rows_changed;
    progress.rows_rejected = totals.rows_rejected + own.rows_rejected;
    progress.batches = totals.batches_done + own.batches_done;
    progress.position = partitions_text(totals);
    progress.elapsed = started.elapsed();
    if let Some(t) = progress.total.as_mut() {
        *t = (*t).max(totals.rows_done);
    }
}

/// One worker: claims partitions and runs their batches until every partition
/// is finished or the control loop stops it.
async fn worker(shared: &Shared, worker: usize, owner: &str) -> Result<WorkerEnd> {
    // A server that refuses a connection for a moment (too many at once, a
    // restart) is waited for, as a batch that lost its connection would be.
    let mut attempt = 0;
    let mut conn = loop {
        match connect(shared).await {
            Ok(conn) => break conn,
            Err(Error::Transient { message, .. }) if attempt < shared.opts.max_retries => {
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
    let prep = Prepared::new(&mut conn, &shared.plan)
        .await?
        .one_thread_per_batch();
    let mut batches = Batches::new(
        &conn,
        &shared.plan,
        prep,
        shared.run_id,
        shared.limits,
        shared.opts.read_ahead,
    );
    let result = claim_and_work(shared, worker, owner, &mut conn, &mut batches).await;
    batches.close().await;
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

async fn claim_and_work(
    shared: &Shared,
    worker: usize,
    owner: &str,
    conn: &mut Conn,
    batches: &mut Batches<'_>,
) -> Result<WorkerEnd> {
    let min_split = i64::try_from(shared.opts.batch_size.saturating_mul(2)).unwrap_or(i64::MAX);
    // The worker's batch size, learned over its partitions: one halved by a
    // statement timeout stays halved in the next partition.
    let mut sizer = super::sizer(&shared.opts);
    // Failed claims in a row.
    let mut attempt = 0_u32;
    loop {
        if stopping(shared) {
            return Ok(WorkerEnd::Stopped);
        }
        let mut claim = match partition::claim(conn, shared.run_id, owner, shared.lease_ms).await {
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
                    shared.lease_ms,
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
                part: claim.part,
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
        let worked = in_partition(shared, worker, conn, batches, &mut sizer, claim);
        match tracing::Instrument::instrument(worked, span).await? {
            InPartition::Finished | InPartition::Lost => {}
            InPartition::Stopped => return Ok(WorkerEnd::Stopped),
            InPartition::RunEnded => return Ok(WorkerEnd::RunEnded),
        }
    }
}

/// After a claim (or a partition's finish) failed: whether it may be tried again (a transient failure,
/// within --max-retries), after a backoff and, for a lost connection, a new one.
async fn recover(shared: &Shared, conn: &mut Conn, e: &Error, attempt: &mut u32) -> Result<bool> {
    let Error::Transient { kind, message } = e else {
        return Ok(false);
    };
    if *attempt >= shared.opts.max_retries {
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

enum InPartition {
    Finished,
    /// Another worker holds it now.
    Lost,
    Stopped,
    RunEnded,
}

async fn running(conn: &mut Conn, run_id: i64) -> Result<bool> {
    let (state, _, _) = store::poll(conn, run_id)
        .await
        .map_err(|e| crate::db::error("cannot read the run", &e))?;
    Ok(matches!(state, Some(RunState::Running | RunState::Paused)))
}

/// Runs the batches of one partition.
async fn in_partition(
    shared: &Shared,
    worker: usize,
    conn: &mut Conn,
    batches: &mut Batches<'_>,
    sizer: &mut Sizer,
    mut claim: Claim,
) -> Result<InPartition> {
    let opts = &shared.opts;
    let mut number = claim.batches_done;
    batches.set_claim(Some(claim.clone()));
    let mut attempt = 0_u32;
    let mut waited = Duration::ZERO;
    loop {
        if !gate_open(shared, &mut waited).await {
            batches.set_claim(None);
            return Ok(InPartition::Stopped);
        }
        let limiter = shared.limiter.read().ok().and_then(|l| l.clone());
        if let Some(limiter) = limiter {
            while let Some(wait) = limiter.wait_for(sizer.rows()) {
                let nap = wait.min(Duration::from_millis(250));
                tokio::time::sleep(nap).await;
                waited += nap;
                if stopping(shared) {
                    return Ok(InPartition::Stopped);
                }
            }
        }
        let after = claim.after().map(|k| vec![Value::Int(k)]);
        let next = batches.next(conn, after.as_deref(), sizer.rows());
        let next = match shared.limits.deadline() {
            Some(deadline) => tokio::time::timeout(deadline, next)
                .await
                .unwrap_or_else(|_| Err(batch::unanswered(deadline))),
            None => next.await,
        };
        match next {
            Ok(None) => match partition::finish(conn, &claim).await {
                Ok(_) => {
                    batches.set_claim(None);
                    return Ok(InPartition::Finished);
                }
                // The next look finds the partition empty again, and finishes it.
                Err(e) if recover(shared, conn, &e, &mut attempt).await? => {}
                Err(e) => return Err(e),
            },
            Ok(Some(done)) => {
                let position = done
                    .cursor
                    .first()
                    .and_then(Value::as_i64)
                    .unwrap_or_default();
                claim.position = Some(position);
                number += 1;
                sizer.after_batch(done.counts.rows, done.transaction);
                let _ = shared.events.send(Event::Batch(Committed {
                    worker,
                    part: claim.part,
                    number,
                    counts: done.counts,
                    transaction: done.transaction,
                    bookkeeping: done.bookkeeping,
                    waited: std::mem::take(&mut waited),
                    retries: std::mem::take(&mut attempt),
                    position,
                }));
                if !opts.sleep.is_zero() {
                    tokio::time::sleep(opts.sleep).await;
                    waited += opts.sleep;
                }
            }
            Err(Error::PartitionLost(_)) => {
                batches.reset();
                match reread(conn, batches, &mut claim).await? {
                    Some(ended) => return Ok(ended),
                    None => {
                        if !running(conn, shared.run_id).await? {
                            return Ok(InPartition::RunEnded);
                        }
                    }
                }
            }
            Err(Error::Transient { message, kind }) if attempt < opts.max_retries => {
                attempt += 1;
                // As without workers: a batch that ran out of time is tried again at half the size.
                let smaller = if kind == Transient::StatementTimeout {
                    sizer.halve();
                    format!(" at {} rows", sizer.rows())
                } else {
                    String::new()
                };
                let wait = backoff(attempt);
                let about = About {
                    worker,
                    part: claim.part,
                    batch: Some(number + 1),
                };
                let _ = shared.events.send(Event::Message(
                    format!(
                        "batch {} of partition {} ({kind}): {message}; retrying{smaller} in {:.1}s (attempt {attempt} of {})",
                        number + 1,
                        claim.part,
                        wait.as_secs_f64(),
                        opts.max_retries
                    ),
                    about,
                ));
                batches.reset();
                tokio::time::sleep(wait).await;
                waited += wait;
                if kind == Transient::ConnectionLost || !super::alive(conn).await {
                    match connect(shared).await {
                        Ok(fresh) => drop(std::mem::replace(conn, fresh)),
                        Err(_) => continue, // the server is not back yet: another attempt
                    }
                }
                // A COMMIT cut off by the error may have landed: the partition's
                // row, not this worker's memory, says where it is.
                match reread(conn, batches, &mut claim).await {
                    Ok(Some(ended)) => return Ok(ended),
                    Ok(None) => {}
                    Err(_) => continue,
                }
            }
            Err(Error::Transient { message, kind }) => {
                return Err(Error::JobFailed(format!(
                    "{message} ({kind}; still failing after {} retries, in partition {})",
                    opts.max_retries, claim.part
                )))
            }
            Err(e) => {
                batches.reset();
                if !running(conn, shared.run_id).await.unwrap_or(true) {
                    return Ok(InPartition::RunEnded);
                }
                return Err(e);
            }
        }
    }
}

/// Reads the partition back after a failed or refused batch: `Some` when this
/// worker is done with it (another holds it, or it is finished), else the
/// claim follows the row (its position, a bound lowered by a split).
async fn reread(
    conn: &mut Conn,
    batches: &mut Batches<'_>,
    claim: &mut Claim,
) -> Result<Option<InPartition>> {
    match partition::reread(conn, claim).await? {
        Some((owner, hi, position, done))
            if owner.as_deref() == Some(claim.owner.as_str()) && !done =>
        {
            claim.hi = hi;
            claim.position = position;
            batches.set_claim(Some(claim.clone()));
            Ok(None)
        }
        Some((_, _, _, true)) => {
            batches.set_claim(None);
            Ok(Some(InPartition::Finished))
        }
        _ => {
            batches.set_claim(None);
            Ok(Some(InPartition::Lost))
        }
    }
}
