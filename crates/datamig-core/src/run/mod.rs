//! Running a data job: keyset batches, each committed together with its
//! checkpoint; resumable after any interruption; verified at the end. One
//! engine for a run in one worker and for a partitioned one (`--workers`):
//! they differ only in how the key range is laid out ([`layout`]) and where
//! the checkpoints go, never in the loop that runs the batches.
//!
//! ```text
//! run (this file): plan · outputs · schema checks · layout: one worker (job lock held) or partitions
//!   options.rs  what the run is told, in groups: the CLI's flags, checked once
//!   shape.rs    what the job's Source × Step means: validation, arity, rows left, target, partition key
//!   open.rs     find or create the run: total, baseline checks, partitions; made durable
//!   engine.rs   the workers and the control side by side, then conclude:
//!     worker.rs   ×N: lane (whole range | claimed partition) → gate → rate → batch → report
//!     batch/      one batch: BEGIN · read or bound · step (batch/steps/, one file each) · checkpoint · COMMIT
//!     control.rs  signals · requests · window · throttle · figures · history · leases
//!   finish.rs   the checks against the baseline · completed · statistics
//! ```
//!
//! Exactly-once holds where a batch only writes the database that holds the
//! checkpoint: killed at any instant, a batch is either committed with its
//! checkpoint or rolled back with it. See `crates/datamig-core/ARCHITECTURE.md`.

/// A span that gives its fields (run id, job, partition, batch, …) to every event
/// in it. Its level only decides whether it is recorded at all: at ERROR it is,
/// whatever `RUST_LOG` selects, so the warnings and messages datamig always
/// shows carry them too (`--log-format json`).
macro_rules! context_span {
    ($name:literal, $($fields:tt)*) => {
        tracing::span!(tracing::Level::ERROR, $name, $($fields)*)
    };
}

mod batch;
mod control;
mod csv_source;
pub mod cursor;
mod dry;
mod engine;
mod finish;
mod history;
mod layout;
mod open;
mod options;
pub mod pace;
// A partitioned run's bookkeeping: internal like `store` (`status` lists it).
#[doc(hidden)]
pub mod partition;
mod shape;
mod shared;
pub mod steer;
// datamig's bookkeeping of runs: an internal the CLI and the project's own
// tests reach into, not an API for a team's project (hidden from the docs).
#[doc(hidden)]
pub mod store;
pub mod throttle;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use dry::{dry_run, DryBatch, DryRun};
pub use finish::{failed_checks, run_checks};
pub use options::{
    positive_duration, Analyze, CountMode, Options, Pace, Reporting, Scale, TimeWindow, Timeouts,
};
pub use store::{RunRecord, RunState};

use layout::Layout;

use crate::db::{db_message, Conn, Transient};
use crate::job::{DynJob, ParsedArgs, Plan, PlanContext, Source, Step};
use crate::{migrate, Error, Result};

/// The most workers one process runs (each holds one or two connections).
pub const MAX_WORKERS: usize = 64;

/// The largest batch datamig accepts: beyond it, one transaction holds locks for seconds.
pub const MAX_BATCH: u64 = 1_000_000;

/// `Analyze::Auto` refreshes statistics after a run that changed at least this
/// many rows, and at least a tenth of the table (PostgreSQL's autovacuum waits
/// for a tenth too, and may run long after).
pub const ANALYZE_MIN_ROWS: i64 = 1000;

/// What the progress display is told.
#[derive(Debug, Clone)]
pub struct Progress {
    pub run_id: i64,
    /// Which run of its job this is: how messages name it.
    pub run_number: i64,
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
    /// The run waits before its next batch, and why (a throttle, the rate
    /// limit, a pause); `None` when it goes on.
    fn waiting(&mut self, _why: Option<&str>) {}
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
    /// Which run of its job this is (1 for its first): how messages name it.
    pub run_number: i64,
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
    /// Why the run stopped before its end (its time window closed); `None`
    /// when it completed.
    pub stopped: Option<String>,
    /// The rows the source still selects, when it stopped early and the total is known.
    pub rows_left: Option<i64>,
    /// Time spent waiting for throttles and the rate limit, and paused.
    pub waited: Duration,
    /// Tables whose statistics were refreshed after the run.
    pub analyzed: Vec<String>,
    /// Whether this process ran the checks and marked the run completed: of
    /// several processes on one run, exactly one (the others report its result).
    pub completed_here: bool,
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
    shape::check(job.name(), &plan)?;
    Ok(plan)
}

/// Refuses a run whose output files (an archive, `--rejects-file`) would
/// overwrite the database, its journal or locks, a migration, the project's
/// settings, the job's input or each other, or cannot be written: before
/// anything runs, not after the batches.
pub fn check_outputs(conn: &Conn, plan: &Plan, opts: &Options) -> Result<()> {
    let mut guard = opts.protected.clone();
    guard.database(conn.url());
    if let Source::Csv { path } = &plan.source {
        guard.file(path, "the CSV file the job imports");
    }
    if let Step::Archive { file } = &plan.step {
        guard.check("the archive file", file)?;
        guard.file(file, "the job's archive");
    }
    if let Some(file) = &opts.reporting.rejects_file {
        guard.check("--rejects-file", file)?;
        // It is written beside its place, then renamed over it.
        guard.check("--rejects-file", &rejects_partial(file))?;
    }
    Ok(())
}

/// Where `--rejects-file` is written before it is renamed into place.
pub fn rejects_partial(file: &std::path::Path) -> std::path::PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    std::path::PathBuf::from(name)
}

/// Refuses to run when a migration is dirty, or the job's migration is not
/// applied or its table is missing.
pub async fn check_schema(conn: &mut Conn, job: &dyn DynJob, plan: &Plan) -> Result<()> {
    migrate::refuse_dirty(conn).await?;
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
    if let Some(table) = &shape::target(plan) {
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
    job_lock_name(job.name())
}

/// The named lock a process holds while it runs `job`.
pub(crate) fn job_lock_name(job: &str) -> String {
    format!("job.{job}")
}

/// Who works on an unfinished run of `job` now: the process holding the job
/// lock (one cursor), or the workers whose partition leases are current (a
/// partitioned run); `None` when nobody does — its process is gone.
pub async fn at_work(conn: &mut Conn, job: &str, run: &RunRecord) -> Result<Option<String>> {
    let parts = partition::list(conn, run.id).await?;
    if !parts.is_empty() {
        let mut owners: Vec<String> = parts
            .iter()
            .filter(|p| p.leased && !p.done)
            .filter_map(|p| p.owner.clone())
            .collect();
        owners.sort();
        owners.dedup();
        return Ok((!owners.is_empty()).then(|| owners.join(", ")));
    }
    Ok(conn.lock_holder(&job_lock_name(job)).await)
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
    opts.validate()?;
    let plan = plan(conn, job, args)?;
    check_outputs(conn, &plan, opts)?;
    check_schema(conn, job, &plan).await?;
    let workers = open::workers_for(conn, job, args, opts, obs).await?;
    if workers.is_some_and(|n| n == 0 || n > MAX_WORKERS) {
        return Err(Error::Usage(format!(
            "--workers must be between 1 and {MAX_WORKERS}"
        )));
    }
    // Every event of the run carries its job and run id (`--log-format json`).
    let span = context_span!("run", job = job.name(), run_id = tracing::field::Empty);
    let mut throttle = open::prepare(conn, opts).await?;
    // A run in one worker holds the job lock throughout; a partitioned one
    // takes it only to find or create the run, and to complete it.
    let (layout, n) = match workers {
        Some(n) => (
            Layout::Parts {
                lease: opts.scale.lease.max(Duration::from_millis(500)),
            },
            n,
        ),
        None => {
            let lock = job_lock(job);
            if let Err(e) = take_job_lock(conn, job, &lock).await {
                throttle.close().await;
                return Err(e);
            }
            let layout = Layout::Whole {
                lock,
                arity: shape::arity(&plan.source),
                key: shape::key_name(&plan.source),
            };
            (layout, 1)
        }
    };
    let worked = async {
        let opened = match &layout {
            Layout::Parts { .. } => open::parts(conn, job, args, &plan, opts, n, stop, obs).await?,
            Layout::Whole { .. } => open::whole(conn, job, args, &plan, opts, stop, obs).await?,
        };
        let layout = layout.clone();
        engine::work(
            conn,
            job,
            plan,
            opts,
            opened,
            layout,
            n,
            &mut throttle,
            stop,
            obs,
        )
        .await
    };
    let result = tracing::Instrument::instrument(worked, span).await;
    if let Layout::Whole { lock, .. } = &layout {
        if let Err(e) = conn.unlock(lock).await {
            tracing::warn!(
                "could not release the job lock cleanly ({e}); closing the connection releases it"
            );
        }
    }
    throttle.close().await;
    result
}

/// Takes the job lock for a run in one worker, or says who holds it.
async fn take_job_lock(conn: &mut Conn, job: &dyn DynJob, lock: &str) -> Result<()> {
    let mut waited = Duration::ZERO;
    while !conn.try_lock(lock).await? {
        let latest = store::latest(conn, job.name()).await.ok().flatten();
        // A run whose process ended on this machine a moment ago (killed, or
        // stopped during a check the server still runs): the server drops its
        // lock once it notices the closed connection, or the statement ends.
        // Wait for that rather than refuse a resume typed right after.
        if latest
            .as_ref()
            .and_then(|r| r.owner.as_deref())
            .is_some_and(died_here)
            && waited < DEAD_HOLDER_GRACE
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
            continue;
        }
        let holder = match latest {
            Some(r) if matches!(r.state, RunState::Running | RunState::Paused) => {
                let owner = r.owner.unwrap_or_default();
                let paused = if r.state == RunState::Paused {
                    format!(
                        ", paused by {}",
                        r.request_by.as_deref().unwrap_or("someone")
                    )
                } else {
                    String::new()
                };
                format!(
                    "run {} by {owner} (last checkpoint {}{paused})",
                    r.number, r.updated_at
                )
            }
            _ => conn
                .lock_holder(lock)
                .await
                .unwrap_or_else(|| "another process".into()),
        };
        return Err(Error::AlreadyRunning(format!(
            "job {} is already running: {holder}; wait for it, or stop it (Ctrl-C or SIGTERM) and run this again to resume",
            job.name()
        )));
    }
    Ok(())
}

/// Completes when `stop` is set (a signal), looking every 50 ms.
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session's limits outside the batch loop: lock waits and silence bounded,
/// statements not (a count or a check over a huge table may rightly take long).
fn unbatched_limits(opts: &Options) -> batch::Limits {
    batch::Limits {
        statement_timeout: None,
        ..batch::Limits::of(&opts.timeouts)
    }
}

/// The checks stored with a run: their values before it while it runs (the
/// baseline), their results once it has completed.
fn stored_checks(r: &RunRecord) -> Vec<CheckResult> {
    r.verification
        .as_deref()
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
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

/// Whether a connection still answers.
async fn alive(conn: &mut Conn) -> bool {
    conn.fetch_one("SELECT 1", &[]).await.is_ok()
}

/// Replaces a lost batch connection: a new session with the batch settings,
/// and the job lock again (it ended with the old session). Another process
/// that took the job meanwhile wins, and this run stops.
async fn reconnect(conn: &mut Conn, lock: &str, limits: &batch::Limits) -> Result<()> {
    let fresh = conn.reopen().await.map_err(|e| Error::Transient {
        message: e.to_string(),
        kind: Transient::ConnectionLost,
    })?;
    // Dropped, not closed: a graceful close waits for a server that may never
    // answer (a blackholed socket hung the run here).
    drop(std::mem::replace(conn, fresh));
    limits.apply(conn).await?;
    // The old session's lock goes when its server process ends: a moment after a
    // connection the server saw close, or, for one whose client went silent, when
    // the server's idle timeouts for it (set to the batch deadline) end it.
    let until = Instant::now()
        + limits
            .deadline()
            .unwrap_or_default()
            .max(Duration::from_secs(5));
    while Instant::now() < until {
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
    store::set_state(conn, id, state, error).await?;
    // What the command reports from here on must outlive a server crash.
    conn.flush_commits()
        .await
        .map_err(|e| crate::db::error("cannot record how the run ended", &e))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn percent(done: i64, total: Option<i64>) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)] // a percentage needs no exactness
    total
        .filter(|t| *t > 0)
        .map(|t| done as f64 * 100.0 / t as f64)
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
