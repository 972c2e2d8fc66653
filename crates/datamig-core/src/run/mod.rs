//! Running a data job: keyset batches, each committed together with its
//! checkpoint; resumable after any interruption; verified at the end.
//!
//! ```text
//! run ─ take the job lock ─ find or create the run ─ baseline checks
//!     └ loop: BEGIN · read/bound batch · transform · bulk write · checkpoint · COMMIT
//!     └ after checks ─ completed
//! ```
//!
//! Exactly-once holds where a batch only writes the database that holds the
//! checkpoint: killed at any instant, a batch is either committed with its
//! checkpoint or rolled back with it.

mod batch;
pub mod cursor;
pub mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use store::{RunRecord, RunState};

use crate::db::{db_message, Conn, ConnectOptions, Transient, Value};
use crate::job::{Check, DynJob, ParsedArgs, Plan, PlanContext, Source, Step};
use crate::{migrate, Error, Result};

/// The largest batch datamig accepts: beyond it, one transaction holds locks for seconds.
pub const MAX_BATCH: u64 = 1_000_000;

/// How the progress total is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountMode {
    /// `SELECT count(*)` of the rows the source selects: exact, slow on huge tables.
    Exact,
    /// The planner's estimate of that count, from EXPLAIN (exact on SQLite,
    /// whose planner gives none).
    Estimate,
    /// No total: progress shows rows and rate, no percentage or ETA.
    None,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub batch_size: u64,
    /// Abandon an unfinished run and start over.
    pub restart: bool,
    pub count: CountMode,
    /// Read the next batch on a second connection while the current one is
    /// written (server databases; see `batch`).
    pub read_ahead: bool,
    /// How long a batch waits for a lock before it fails (and is retried).
    pub lock_timeout: Duration,
    /// How long a batch's statement may run (`None`: no limit); a batch that
    /// runs out is retried at half the size.
    pub statement_timeout: Option<Duration>,
    /// How often a batch that failed transiently (a timeout, a deadlock, a lost
    /// connection) is retried before the run fails.
    pub max_retries: u32,
    /// A pause after each batch.
    pub sleep: Duration,
    /// The command that resumes this run, for the messages that need it.
    pub resume_command: String,
}

/// What the progress display is told.
#[derive(Debug, Clone)]
pub struct Progress {
    pub run_id: i64,
    pub rows_done: i64,
    pub total: Option<i64>,
    pub batches: i64,
    pub rows_changed: i64,
    pub rows_rejected: i64,
    /// The last key done, for display.
    pub position: String,
    /// Rows done by this process (for its rate).
    pub rows_this_process: i64,
    pub elapsed: Duration,
    /// The longest batch transaction so far, over every invocation of the run.
    pub max_batch: Duration,
    /// Checkpoint time so far, over every invocation of the run.
    pub bookkeeping: Duration,
}

/// Receives a run's progress: a bar on a terminal, log lines elsewhere.
pub trait Observer: Send {
    fn message(&mut self, text: &str);
    fn started(&mut self, progress: &Progress);
    fn batch(&mut self, progress: &Progress);
    fn finished(&mut self, progress: &Progress);
}

/// A check's result, stored with the run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub expect: String,
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub ok: bool,
}

/// This process's batch transaction times, for percentiles: 1 ms buckets up to
/// 10 s (longer batches count in the last), so memory stays fixed however long the run.
#[derive(Debug, Clone)]
pub struct BatchTimes {
    buckets: Vec<u64>,
    count: u64,
}

impl Default for BatchTimes {
    fn default() -> Self {
        Self {
            buckets: vec![0; 10_001],
            count: 0,
        }
    }
}

impl BatchTimes {
    pub fn record(&mut self, d: Duration) {
        let ms = usize::try_from(d.as_millis()).unwrap_or(usize::MAX);
        let last = self.buckets.len() - 1;
        self.buckets[ms.min(last)] += 1;
        self.count += 1;
    }

    /// The `p`th percentile (nearest rank), to the millisecond below; `None` before any batch.
    pub fn percentile(&self, p: u64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = (self.count * p.min(100)).div_ceil(100).max(1);
        let mut seen = 0;
        for (ms, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)));
            }
        }
        None
    }
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub run_id: i64,
    pub resumed: bool,
    pub rows_done: i64,
    pub rows_changed: i64,
    pub rows_rejected: i64,
    pub batches: i64,
    /// Rows done by this process (less than `rows_done` when resumed).
    pub rows_this_process: i64,
    pub elapsed: Duration,
    pub max_batch: Duration,
    pub bookkeeping: Duration,
    /// This process's batch transaction times.
    pub batch_times: BatchTimes,
    pub checks: Vec<CheckResult>,
}

/// The plan for `job` with `args` on this connection's database, checked for
/// mistakes that would otherwise surface halfway through a run.
pub fn plan(conn: &Conn, job: &dyn DynJob, args: &ParsedArgs) -> Result<Plan> {
    let plan = job
        .plan(
            args,
            &PlanContext {
                backend: conn.backend(),
            },
        )
        .map_err(Error::Usage)?;
    let bad = |m: String| {
        Err(Error::Usage(format!(
            "job {} is misdefined: {m}",
            job.name()
        )))
    };
    match (&plan.source, &plan.step) {
        (Source::Table { key, .. }, _) if key.is_empty() => {
            return bad("its source has no key columns".into())
        }
        (Source::Table { .. }, Step::Sql(sql)) if !sql.contains("{batch}") => {
            return bad("its SQL step must contain {batch} where the batch's key range goes".into())
        }
        (Source::Table { .. }, Step::Sql(sql)) if sql.matches("{batch}").count() > 1 => {
            return bad("its SQL step must contain {batch} once".into())
        }
        (Source::Table { .. }, Step::Sql(sql)) if sql.contains('?') => {
            return bad("its SQL step may not hold `?`: put parameters in the source filter".into())
        }
        (Source::Range { .. }, Step::Sql(sql))
            if !(sql.contains("{lo}") && sql.contains("{hi}")) =>
        {
            return bad("a range source's SQL step must contain {lo} and {hi}".into())
        }
        (Source::Range { .. }, Step::Transform(_) | Step::Delete) => {
            return bad("a range source takes a SQL step".into())
        }
        (Source::Range { start, end }, _) if start > end => {
            return bad(format!("its range {start}..={end} is empty"))
        }
        _ => {}
    }
    Ok(plan)
}

/// Refuses to run when the job's migration is not applied or its table is missing.
pub async fn check_schema(conn: &mut Conn, job: &dyn DynJob, plan: &Plan) -> Result<()> {
    if let Some(version) = job.requires_migration() {
        let applied = migrate::applied(conn).await?;
        if !applied
            .iter()
            .any(|a| a.version == version && a.dirty == migrate::Dirty::Clean)
        {
            return Err(Error::SchemaNotReady(format!(
                "job {} needs migration {version}, which is not applied to {}; run `datamig schema upgrade` first",
                job.name(),
                conn.url()
            )));
        }
    }
    if let Source::Table { table, .. } = &plan.source {
        let bare = table.rsplit('.').next().unwrap_or(table);
        let exists = conn
            .table_exists(bare)
            .await
            .map_err(|e| Error::db("cannot read the catalogue", db_message(&e)))?;
        if !exists {
            return Err(Error::SchemaNotReady(format!(
                "job {} works on table {table}, which does not exist in {}; run `datamig schema upgrade` first",
                job.name(),
                conn.url()
            )));
        }
    }
    Ok(())
}

fn job_lock(job: &dyn DynJob) -> String {
    format!("job.{}", job.name())
}

/// How long a new run waits for the lock of a run whose process has died.
const DEAD_HOLDER_GRACE: Duration = Duration::from_secs(30);

/// Whether `owner` (as written by [`who_am_i`](crate::db::who_am_i)) names a
/// process on this machine that no longer exists. Only Linux can tell; elsewhere
/// a holder is taken to be alive.
fn died_here(owner: &str) -> bool {
    let Some((who, pid)) = owner.rsplit_once(" pid ") else {
        return false;
    };
    let ours = gethostname::gethostname().to_string_lossy().into_owned();
    let same_host = who.rsplit_once('@').is_some_and(|(_, host)| host == ours);
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    same_host
        && pid != std::process::id()
        && cfg!(target_os = "linux")
        && std::path::Path::new("/proc/self").exists()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs (or resumes) a job to the end, or until `stop` is set between batches.
pub async fn run(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    opts: &Options,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Report> {
    if opts.batch_size == 0 || opts.batch_size > MAX_BATCH {
        return Err(Error::Usage(format!(
            "--batch must be between 1 and {MAX_BATCH}"
        )));
    }
    let plan = plan(conn, job, args)?;
    check_schema(conn, job, &plan).await?;
    let lock = job_lock(job);
    let mut waited = Duration::ZERO;
    while !conn.try_lock(&lock).await? {
        let holder = match store::latest(conn, job.name()).await.ok().flatten() {
            Some(r) if r.state == RunState::Running => {
                let owner = r.owner.unwrap_or_default();
                // A run killed on this machine a moment ago: the server drops its
                // lock once it notices the closed connection. Wait for that rather
                // than refuse a resume typed right after the kill.
                if died_here(&owner) && waited < DEAD_HOLDER_GRACE {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    waited += Duration::from_millis(100);
                    continue;
                }
                format!("run {} by {owner} (last checkpoint {})", r.id, r.updated_at)
            }
            _ => conn
                .lock_holder(&lock)
                .await
                .unwrap_or_else(|| "another process".into()),
        };
        return Err(Error::AlreadyRunning(format!(
            "job {} is already running: {holder}; wait for it, or stop it (Ctrl-C or SIGTERM) and run this again to resume",
            job.name()
        )));
    }
    let result = run_locked(conn, job, args, &plan, opts, stop, obs).await;
    if let Err(e) = conn.unlock(&lock).await {
        tracing::warn!(
            "could not release the job lock cleanly ({e}); closing the connection releases it"
        );
    }
    result
}

async fn run_locked(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    plan: &Plan,
    opts: &Options,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Report> {
    conn.ensure_bookkeeping().await?;
    // Lock waits are bounded from here on; statement time only inside the batch
    // loop (a count or a check over a huge table may rightly take long).
    let limits = batch::Limits {
        lock_timeout: opts.lock_timeout,
        statement_timeout: None,
    };
    limits
        .apply(conn)
        .await
        .map_err(|e| Error::db("cannot prepare the session for batches", e.to_string()))?;
    let prep = batch::Prepared::new(conn, plan).await?;
    let batch_size = i64::try_from(opts.batch_size).unwrap_or(i64::MAX);
    let arity = match &plan.source {
        Source::Table { key, .. } => key.len(),
        Source::Range { .. } => 1,
    };

    let previous = store::latest(conn, job.name())
        .await?
        .filter(|r| r.state.is_resumable());
    let (record, mut cursor, resumed) = match previous {
        Some(r) if opts.restart => {
            store::set_state(conn, r.id, RunState::Cancelled, Some("abandoned by --restart")).await?;
            obs.message(&format!("abandoned unfinished run {} of {}; starting over", r.id, job.name()));
            (None, None, false)
        }
        Some(r) if r.args != args.canonical => {
            return Err(Error::Usage(format!(
                "run {} of {} is unfinished with other arguments ({}); run it with those arguments to resume it, \
                 or pass --restart to abandon it",
                r.id,
                job.name(),
                r.args
            )))
        }
        Some(r) => {
            let cursor = match &r.position {
                None => None,
                Some(text) => Some(cursor::decode(text, arity).map_err(|why| {
                    Error::CorruptCheckpoint(format!(
                        "run {} of {} has a corrupt checkpoint in datamig_runs.position ({why}); \
                         nothing was changed. Fix that row, or start over with --restart",
                        r.id,
                        job.name()
                    ))
                })?),
            };
            (Some(r), cursor, true)
        }
        None => (None, None, false),
    };

    let rows_before = record.as_ref().map_or(0, |r| r.rows_done);
    let total = match (&plan.source, opts.count) {
        (_, CountMode::None) => None,
        (Source::Range { start, end }, _) => Some(end - start + 1),
        (Source::Table { .. }, CountMode::Estimate) => {
            match prep.estimate(conn, cursor.as_deref()).await {
                Some(n) => Some(rows_before + n),
                None => Some(rows_before + prep.count(conn, cursor.as_deref()).await?),
            }
        }
        (Source::Table { .. }, CountMode::Exact) => {
            Some(rows_before + prep.count(conn, cursor.as_deref()).await?)
        }
    };

    let (run_id, baseline) = match &record {
        Some(r) => {
            store::resume(conn, r.id, batch_size, total).await?;
            let at = cursor.as_deref().map_or("the start".to_string(), |c| {
                format!("{} {}", key_name(plan), cursor::display(c))
            });
            let pct = percent(r.rows_done, total)
                .map(|p| format!(" ({p:.1}%)"))
                .unwrap_or_default();
            obs.message(&format!(
                "resuming run {} of {} at {at}{pct}",
                r.id,
                job.name()
            ));
            let baseline: Vec<CheckResult> = r
                .verification
                .as_deref()
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default();
            (r.id, baseline)
        }
        None => {
            let baseline = run_checks(conn, &plan.checks, &[]).await?;
            let json = serde_json::to_string(&baseline).unwrap_or_default();
            let id =
                store::insert(conn, job.name(), &args.canonical, batch_size, total, &json).await?;
            let of = total.map(|t| format!(" over {t} rows")).unwrap_or_default();
            obs.message(&format!("starting run {id} of {}{of}", job.name()));
            (id, baseline)
        }
    };

    let started = Instant::now();
    let mut progress = Progress {
        run_id,
        rows_done: rows_before,
        total,
        batches: record.as_ref().map_or(0, |r| r.batches_done),
        rows_changed: record.as_ref().map_or(0, |r| r.rows_changed),
        rows_rejected: record.as_ref().map_or(0, |r| r.rows_rejected),
        position: cursor.as_deref().map(cursor::display).unwrap_or_default(),
        rows_this_process: 0,
        elapsed: Duration::ZERO,
        max_batch: millis(record.as_ref().map_or(0, |r| r.max_batch_ms)),
        bookkeeping: millis(record.as_ref().map_or(0, |r| r.bookkeeping_ms)),
    };
    obs.started(&progress);

    let mut batch_times = BatchTimes::default();
    let limits = batch::Limits {
        statement_timeout: opts.statement_timeout,
        ..limits
    };
    if let Err(e) = limits.apply(conn).await {
        let _ = end_run(conn, &progress, RunState::Failed, Some(&e.to_string())).await;
        return Err(e);
    }
    let mut batches = batch::Batches::new(conn, plan, prep, run_id, limits, opts.read_ahead);
    // Retries of the batch at hand, and its size (halved after a statement timeout).
    let (mut attempt, mut size) = (0_u32, batch_size);
    let looped = loop {
        if stop.load(Ordering::SeqCst) {
            if let Err(e) = end_run(conn, &progress, RunState::Interrupted, None).await {
                break Err(e);
            }
            obs.finished(&progress);
            let pct = percent(progress.rows_done, total)
                .map(|p| format!(" ({p:.1}%)"))
                .unwrap_or_default();
            break Err(Error::Interrupted(format!(
                "interrupted run {run_id} of {} after {} batches, at {}{pct}; every finished batch is committed. \
                 Resume with: {}",
                job.name(),
                progress.batches,
                at(plan, &progress.position),
                opts.resume_command
            )));
        }
        match batches.next(conn, cursor.as_deref(), size).await {
            Ok(None) => break Ok(()),
            Ok(Some(done)) => {
                (attempt, size) = (0, batch_size);
                progress.rows_done += done.counts.rows;
                progress.rows_this_process += done.counts.rows;
                progress.rows_changed += done.counts.changed;
                progress.rows_rejected += done.counts.rejected;
                progress.batches += 1;
                progress.position = cursor::display(&done.cursor);
                progress.elapsed = started.elapsed();
                progress.max_batch = progress.max_batch.max(done.transaction);
                batch_times.record(done.transaction);
                progress.bookkeeping += done.bookkeeping;
                if let Some(t) = progress.total.as_mut() {
                    *t = (*t).max(progress.rows_done);
                }
                cursor = Some(done.cursor);
                obs.batch(&progress);
                if !opts.sleep.is_zero() {
                    pause(opts.sleep, stop).await;
                }
            }
            Err(Error::Transient { message, kind }) if attempt < opts.max_retries => {
                attempt += 1;
                if kind == Transient::StatementTimeout {
                    size = (size / 2).max(1);
                }
                let wait = backoff(attempt);
                let smaller = if kind == Transient::StatementTimeout {
                    format!(" at {size} rows")
                } else {
                    String::new()
                };
                obs.message(&format!(
                    "batch {} ({kind}): {message}; retrying{smaller} in {:.1}s (attempt {attempt} of {})",
                    progress.batches + 1,
                    wait.as_secs_f64(),
                    opts.max_retries
                ));
                batches.reset();
                if pause(wait, stop).await {
                    continue; // the loop's stop check ends the run
                }
                if kind == Transient::ConnectionLost || !alive(conn).await {
                    if let Err(e) = reconnect(conn, &job_lock(job), &limits).await {
                        match e {
                            // The server is not back yet: count it as another attempt.
                            Error::Transient { .. } => continue,
                            e => break Err(e),
                        }
                    }
                }
                // A COMMIT cut off by the error may have landed: the checkpoint in
                // the database, not this process's memory, says where the run is.
                match store::latest(conn, job.name()).await {
                    Ok(Some(r)) if r.id == run_id && r.rows_done > progress.rows_done => {
                        let position = r.position.as_deref().unwrap_or_default();
                        match cursor::decode(position, arity) {
                            Ok(c) => {
                                obs.message(&format!(
                                    "batch {} had committed before the error; going on after it",
                                    r.batches_done
                                ));
                                progress.rows_this_process += r.rows_done - progress.rows_done;
                                progress.rows_done = r.rows_done;
                                progress.rows_changed = r.rows_changed;
                                progress.rows_rejected = r.rows_rejected;
                                progress.batches = r.batches_done;
                                progress.position = cursor::display(&c);
                                cursor = Some(c);
                            }
                            Err(why) => {
                                break Err(Error::CorruptCheckpoint(format!(
                                    "run {run_id} of {}: the checkpoint is unreadable after a retry ({why})",
                                    job.name()
                                )))
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => continue, // still failing: the next attempt finds out
                }
            }
            Err(e) => {
                let e = match e {
                    Error::Transient { message, kind } => Error::JobFailed(format!(
                        "{message} ({kind}; still failing after {} retries)",
                        opts.max_retries
                    )),
                    e => e,
                };
                // The batch's error is the one to report, even if recording it fails too.
                let _ = end_run(conn, &progress, RunState::Failed, Some(&e.to_string())).await;
                obs.finished(&progress);
                break Err(Error::JobFailed(format!(
                    "run {run_id} of {} failed at batch {} (at {}): {e}. The {} batches before it are \
                     committed; fix the cause and resume with: {}",
                    job.name(),
                    progress.batches + 1,
                    at(plan, &progress.position),
                    progress.batches,
                    opts.resume_command
                )));
            }
        }
    };
    batches.close().await;
    looped?;
    if let Err(e) = conn.set_timeouts(opts.lock_timeout, None).await {
        tracing::warn!("could not lift the statement timeout for the checks: {e}");
    }
    progress.elapsed = started.elapsed();
    obs.finished(&progress);

    let checks = match run_checks(conn, &plan.checks, &baseline).await {
        Ok(checks) => checks,
        Err(e) => {
            // Every batch is done; running the job again re-runs only the checks.
            let _ = end_run(conn, &progress, RunState::Failed, Some(&e.to_string())).await;
            return Err(e);
        }
    };
    store::set_verification(
        conn,
        run_id,
        &serde_json::to_string(&checks).unwrap_or_default(),
    )
    .await?;
    end_run(conn, &progress, RunState::Completed, None).await?;
    let report = Report {
        run_id,
        resumed,
        rows_done: progress.rows_done,
        rows_changed: progress.rows_changed,
        rows_rejected: progress.rows_rejected,
        batches: progress.batches,
        rows_this_process: progress.rows_this_process,
        elapsed: progress.elapsed,
        max_batch: progress.max_batch,
        bookkeeping: progress.bookkeeping,
        batch_times,
        checks,
    };
    if let Some(bad) = failed_checks(&report.checks) {
        return Err(Error::VerificationFailed(format!(
            "run {run_id} of {} completed, but {bad}",
            job.name()
        )));
    }
    Ok(report)
}

/// How long to wait before retry `attempt` (1, 2, …): doubling from 100 ms up
/// to 10 s, each wait drawn between half and all of that (so that runs that
/// failed together do not retry together).
fn backoff(attempt: u32) -> Duration {
    let full = Duration::from_millis(100)
        .saturating_mul(1 << attempt.saturating_sub(1).min(10))
        .min(Duration::from_secs(10));
    full.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// Sleeps `wait`, waking early when `stop` is set; returns whether it was.
async fn pause(wait: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(100))).await;
    }
    stop.load(Ordering::SeqCst)
}

/// Whether a connection still answers.
async fn alive(conn: &mut Conn) -> bool {
    conn.fetch_one("SELECT 1", &[]).await.is_ok()
}

/// Replaces a lost batch connection: a new session with the batch settings,
/// and the job lock again (it ended with the old session). Another process
/// that took the job meanwhile wins, and this run stops.
async fn reconnect(conn: &mut Conn, lock: &str, limits: &batch::Limits) -> Result<()> {
    let fresh = Conn::connect(conn.url(), &ConnectOptions::default())
        .await
        .map_err(|e| Error::Transient {
            message: e.to_string(),
            kind: Transient::ConnectionLost,
        })?;
    std::mem::replace(conn, fresh).close().await;
    limits.apply(conn).await?;
    // The old session's lock goes when its server process ends, a moment after.
    for _ in 0..50 {
        if conn.try_lock(lock).await? {
            tracing::info!("reconnected, and holding the job lock again");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::AlreadyRunning(format!(
        "lost the database connection, and with it the job lock ({lock}); another process holds it now, \
         so this one stops here (every committed batch is kept)"
    )))
}

/// Records how a run ended, with its timing figures.
async fn end_run(
    conn: &mut Conn,
    progress: &Progress,
    state: RunState,
    error: Option<&str>,
) -> Result<()> {
    let id = progress.run_id;
    store::set_timings(conn, id, ms(progress.max_batch), ms(progress.bookkeeping)).await?;
    store::set_state(conn, id, state, error).await
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// `id 4180000`, or `the start` before the first batch.
fn at(plan: &Plan, position: &str) -> String {
    if position.is_empty() {
        "the start".into()
    } else {
        format!("{} {position}", key_name(plan))
    }
}

/// `id`, or `(a, b)` for a composite key.
fn key_name(plan: &Plan) -> String {
    match &plan.source {
        Source::Table { key, .. } if key.len() == 1 => key[0].clone(),
        Source::Table { key, .. } => format!("({})", key.join(", ")),
        Source::Range { .. } => "record".into(),
    }
}

fn percent(done: i64, total: Option<i64>) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)] // a percentage needs no exactness
    total
        .filter(|t| *t > 0)
        .map(|t| done as f64 * 100.0 / t as f64)
}

/// Runs the checks; `baseline` gives the `before` values (empty for the baseline itself).
pub async fn run_checks(
    conn: &mut Conn,
    checks: &[Check],
    baseline: &[CheckResult],
) -> Result<Vec<CheckResult>> {
    let mut out = Vec::with_capacity(checks.len());
    for check in checks {
        let row = conn
            .fetch_one(&check.sql, &check.params)
            .await
            .map_err(|e| {
                Error::VerificationFailed(format!(
                    "check `{}` could not run: {}",
                    check.name,
                    db_message(&e)
                ))
            })?;
        let value = row.first().and_then(Value::as_i64).ok_or_else(|| {
            Error::VerificationFailed(format!("check `{}` must return one integer", check.name))
        })?;
        // The baseline's own `before` is its value; later runs compare with it.
        let before = if baseline.is_empty() {
            Some(value)
        } else {
            baseline
                .iter()
                .find(|b| b.name == check.name)
                .and_then(|b| b.before)
        };
        out.push(CheckResult {
            name: check.name.clone(),
            expect: check.expect.to_string(),
            before,
            after: Some(value),
            ok: check.expect.holds(before, value),
        });
    }
    Ok(out)
}

/// `check X: expected = 0, found 12` for each failed check, or `None`.
pub fn failed_checks(results: &[CheckResult]) -> Option<String> {
    let bad: Vec<String> = results
        .iter()
        .filter(|c| !c.ok)
        .map(|c| {
            let found = c.after.map_or("nothing".to_string(), |v| v.to_string());
            let before = c
                .before
                .map(|b| format!(" (before the run: {b})"))
                .unwrap_or_default();
            format!(
                "check `{}` expected {}, found {found}{before}",
                c.name, c.expect
            )
        })
        .collect();
    (!bad.is_empty()).then(|| bad.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_holder_is_recognised_only_on_this_machine() {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        // Beyond any pid_max, so no such process.
        assert!(died_here(&format!("ann@{host} pid 4294967295")));
        assert!(!died_here(&crate::db::who_am_i()), "this process is alive");
        assert!(!died_here("ann@elsewhere.example pid 4294967295"));
        assert!(!died_here("garbage"));
        assert!(!died_here(&format!("ann@{host} pid x")));
    }

    #[test]
    fn batch_time_percentiles() {
        let mut t = BatchTimes::default();
        assert_eq!(t.percentile(50), None);
        for ms in 1..=100 {
            t.record(Duration::from_millis(ms));
        }
        t.record(Duration::from_secs(60));
        assert_eq!(t.percentile(50), Some(Duration::from_millis(51)));
        assert_eq!(t.percentile(99), Some(Duration::from_millis(100)));
        // Beyond 10 s everything counts in the last bucket.
        assert_eq!(t.percentile(100), Some(Duration::from_millis(10_000)));
    }
}
