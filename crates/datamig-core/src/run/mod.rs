//! Running a data job: keyset batches, each committed together with its
//! checkpoint; resumable after any interruption; verified at the end.
//!
//! ```text
//! run ─ take the job lock ─ find or create the run ─ baseline checks
//!     └ loop: between batches (no transaction open): signals · pause/cancel
//!             requests · time window · health throttle · rate limit
//!             then BEGIN · read/bound batch · transform · bulk write · checkpoint · COMMIT
//!     └ after checks ─ statistics ─ completed
//! ```
//!
//! Exactly-once holds where a batch only writes the database that holds the
//! checkpoint: killed at any instant, a batch is either committed with its
//! checkpoint or rolled back with it.

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
mod csv_source;
pub mod cursor;
mod history;
pub mod pace;
pub mod partition;
pub mod steer;
pub mod store;
pub mod throttle;
mod workers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use store::{RunRecord, RunState};

use crate::db::{db_message, Conn, Transient, Value};
use crate::job::{Check, DynJob, ParsedArgs, Plan, PlanContext, Source, Step};
use crate::{migrate, Error, Result};

/// The most workers one process runs (each holds one or two connections).
pub const MAX_WORKERS: usize = 64;

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
    /// How long past its statement and lock timeouts a batch may go unanswered
    /// before its connection counts as dead (a blackholed socket never errors).
    pub network_timeout: Duration,
    /// Warn when a batch's transaction takes longer than this.
    pub warn_batch_time: Option<Duration>,
    /// Warn (once) when the run has taken longer than this.
    pub warn_run_time: Option<Duration>,
    /// How often a batch that failed transiently (a timeout, a deadlock, a lost
    /// connection) is retried before the run fails.
    pub max_retries: u32,
    /// A pause after each batch.
    pub sleep: Duration,
    /// The command that resumes this run, for the messages that need it.
    pub resume_command: String,
    /// Rows (or batches) per second, over the whole run: the run's rate, kept
    /// with it, or a new one for it (`--rate`), or none (`--rate none`).
    pub rate: pace::RateChoice,
    /// Adapt the batch size so that a batch takes about this long, within
    /// `batch_min..=batch_max` (`batch_size` is where it starts).
    pub target_batch_time: Option<Duration>,
    pub batch_min: u64,
    pub batch_max: u64,
    /// Stop at a batch boundary before this moment (`--max-runtime`, `--until`).
    pub window: Option<pace::Window>,
    /// Wait before a batch while the database is under stress.
    pub throttle: throttle::Limits,
    /// Stop the run once more rows than this are rejected.
    pub max_errors: Option<i64>,
    /// When to refresh the planner's statistics after the run.
    pub analyze: Analyze,
    /// A partitioned run with this many workers in this process (`--workers`);
    /// `None`: one cursor, unless the unfinished run is partitioned already.
    pub workers: Option<usize>,
    /// How long a partition stays a worker's without word from it: a runner
    /// that died loses its partitions to the others this long after.
    pub lease: Duration,
    /// The file the run's rejected rows are written to at its end
    /// (`--rejects-file`; the caller writes it): checked before the run starts.
    pub rejects_file: Option<std::path::PathBuf>,
    /// Files an output of the run must not be (the project's migrations and
    /// settings); the database and the job's own files are added to them.
    pub protected: crate::output::Protected,
}

impl Options {
    /// The options of a plain run of `batch_size` rows a batch, as the command
    /// line's defaults have them.
    pub fn new(batch_size: u64) -> Options {
        Options {
            batch_size,
            restart: false,
            count: CountMode::Exact,
            read_ahead: true,
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(300)),
            network_timeout: Duration::from_secs(30),
            warn_batch_time: None,
            warn_run_time: None,
            max_retries: 10,
            sleep: Duration::ZERO,
            resume_command: String::new(),
            rate: pace::RateChoice::Keep,
            target_batch_time: None,
            batch_min: 1,
            batch_max: MAX_BATCH,
            window: None,
            throttle: throttle::Limits::default(),
            max_errors: None,
            analyze: Analyze::Auto,
            workers: None,
            lease: Duration::from_secs(30),
            rejects_file: None,
            protected: crate::output::Protected::default(),
        }
    }
}

/// When a run refreshes the planner's statistics of the tables it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Analyze {
    /// When it changed many rows: [`ANALYZE_MIN_ROWS`] and a tenth of the table.
    Auto,
    Always,
    Never,
}

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
        (Source::Range { .. }, Step::Transform(_) | Step::Delete | Step::Archive { .. }) => {
            return bad("a range source takes a SQL step".into())
        }
        (Source::Csv { .. }, Step::Archive { .. }) => {
            return bad("an archive step deletes from a table source".into())
        }
        (Source::Range { start, end }, _) if start > end => {
            return bad(format!("its range {start}..={end} is empty"))
        }
        (Source::Csv { .. }, step) if !matches!(step, Step::Import(_)) => {
            return bad("a CSV source takes an import step".into())
        }
        (Source::Table { .. } | Source::Range { .. }, Step::Import(_)) => {
            return bad("an import step reads a CSV source".into())
        }
        (Source::Csv { path }, _) if !path.is_file() => {
            return Err(Error::Usage(format!(
                "job {}: there is no file {}; give the path of the CSV file to import",
                job.name(),
                path.display()
            )))
        }
        _ => {}
    }
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
    if let Some(file) = &opts.rejects_file {
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
    let target = match (&plan.source, &plan.step) {
        (Source::Table { table, .. }, _) => Some(table.clone()),
        (Source::Csv { .. }, Step::Import(import)) => Some(import.table()),
        _ => None,
    };
    if let Some(table) = &target {
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
    if opts.batch_size == 0 || opts.batch_size > MAX_BATCH {
        return Err(Error::Usage(format!(
            "--batch must be between 1 and {MAX_BATCH}"
        )));
    }
    let plan = plan(conn, job, args)?;
    check_outputs(conn, &plan, opts)?;
    check_schema(conn, job, &plan).await?;
    if let Some(n) = workers::workers_for(conn, job, args, opts, obs).await? {
        if n == 0 || n > MAX_WORKERS {
            return Err(Error::Usage(format!(
                "--workers must be between 1 and {MAX_WORKERS}"
            )));
        }
        let span = context_span!("run", job = job.name(), run_id = tracing::field::Empty);
        return tracing::Instrument::instrument(
            workers::run(conn, job, args, plan, opts, n, stop, obs),
            span,
        )
        .await;
    }
    let lock = job_lock(job);
    let mut waited = Duration::ZERO;
    while !conn.try_lock(&lock).await? {
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
                .lock_holder(&lock)
                .await
                .unwrap_or_else(|| "another process".into()),
        };
        return Err(Error::AlreadyRunning(format!(
            "job {} is already running: {holder}; wait for it, or stop it (Ctrl-C or SIGTERM) and run this again to resume",
            job.name()
        )));
    }
    // Every event of the run carries its job and run id (`--log-format json`).
    let span = context_span!("run", job = job.name(), run_id = tracing::field::Empty);
    let result =
        tracing::Instrument::instrument(run_locked(conn, job, args, &plan, opts, stop, obs), span)
            .await;
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
    let (mut throttle, limits) = prepare_run(conn, opts).await?;
    let prep = batch::Prepared::new(conn, plan).await?;
    let batch_size = i64::try_from(opts.batch_size).unwrap_or(i64::MAX);
    let arity = match &plan.source {
        Source::Table { key, .. } => key.len(),
        Source::Range { .. } => 1,
        Source::Csv { .. } => 3,
    };
    let (record, mut cursor, resumed) = find_run(conn, job, args, opts, arity, obs).await?;
    if let (Some(max), Some(r)) = (opts.max_errors, &record) {
        if r.rows_rejected > max {
            return Err(Error::ErrorBudget(format!(
                "run {} of {} has {} rejected rows, more than --max-errors {max} allows; nothing was \
                 changed. Fix the data (`datamig status {}` lists the rows) and raise --max-errors, \
                 or start over with --restart",
                r.number,
                job.name(),
                r.rows_rejected,
                job.name()
            )));
        }
    }
    // An archive is opened (and cut back to the run's checkpoint) before the run
    // is touched: one that lost rows stops the command with nothing changed.
    let archive = match &plan.step {
        Step::Archive { file } => Some(batch::Archive::open(
            file,
            &prep.archive_header(),
            record
                .as_ref()
                .and_then(|r| r.file_offset)
                .and_then(|o| u64::try_from(o).ok()),
        )?),
        _ => None,
    };

    let rows_before = record.as_ref().map_or(0, |r| r.rows_done);
    let total = match (&plan.source, opts.count) {
        (_, CountMode::None) => None,
        (Source::Range { start, end }, _) => Some(end - start + 1),
        (Source::Csv { path }, _) => {
            let at = csv_source::At::from_cursor(cursor.as_deref())?;
            Some(rows_before + csv_source::count(path, at)?)
        }
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

    let (run_id, run_no, baseline) = match &record {
        Some(r) => {
            store::resume(conn, r.id, batch_size, total).await?;
            let at = cursor.as_deref().map_or("the start".to_string(), |c| {
                format!("{} {}", key_name(plan), cursor::display(c))
            });
            let pct = percent(r.rows_done, total)
                .map(|p| format!(" ({p:.1}%)"))
                .unwrap_or_default();
            tracing::Span::current().record("run_id", r.id);
            obs.message(&format!(
                "resuming run {} of {} at {at}{pct}",
                r.number,
                job.name()
            ));
            (r.id, r.number, stored_checks(r))
        }
        None => {
            // A signal during the baseline (a slow check) stops the command
            // before the run exists.
            let baseline = tokio::select! {
                checks = run_checks(conn, &plan.checks, &[]) => checks?,
                () = stopped(stop) => {
                    return Err(Error::Interrupted(format!(
                        "interrupted while the checks of {} took their baseline, before its run began; \
                         nothing was changed",
                        job.name()
                    )))
                }
            };
            let json = serde_json::to_string(&baseline).unwrap_or_default();
            let (id, number) =
                store::insert(conn, job.name(), &args.canonical, batch_size, total, &json).await?;
            let of = total.map(|t| format!(" over {t} rows")).unwrap_or_default();
            tracing::Span::current().record("run_id", id);
            obs.message(&format!("starting run {number} of {}{of}", job.name()));
            (id, number, baseline)
        }
    };

    let started = Instant::now();
    let mut progress = Progress {
        run_id,
        run_number: run_no,
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
        throttle.close().await;
        return Err(e);
    }
    let mut batches = batch::Batches::new(conn, plan, prep, run_id, limits, opts.read_ahead);
    if let Some(archive) = archive {
        // Where the archive ends now is where the run's rows start.
        store::set_file_offset(
            conn,
            run_id,
            i64::try_from(archive.committed()).unwrap_or(i64::MAX),
        )
        .await?;
        batches.set_archive(archive);
    }
    // The run's record (and the archive's start) outlive a server crash: after
    // one, the checkpoint the database has is where the run goes on.
    conn.flush_commits()
        .await
        .map_err(|e| crate::db::error("cannot record the run", &e))?;
    let mut sizer = sizer(opts);
    let rate = settle_rate(conn, run_id, record.as_ref(), opts.rate, false, obs).await?;
    let limiter = rate.map(|r| {
        // Its burst is one batch (a second's worth at least): after a long
        // wait the run may not make up for lost time in a rush.
        let largest = match opts.target_batch_time {
            Some(_) => opts.batch_max.max(opts.batch_size),
            None => opts.batch_size,
        };
        pace::Limiter::new(r, largest)
    });
    let mut poller = steer::Poller::new(opts.network_timeout.max(Duration::from_secs(1)));
    let mut waits = Waits::default();
    let mut history = history::History::new(run_id, waits.total);
    let history_limit = opts.network_timeout.max(Duration::from_secs(1));
    // Retries of the batch at hand.
    let mut attempt = 0_u32;
    let mut last_batch = Duration::ZERO;
    let mut warned_run_time = false;
    let looped: Result<Option<String>> = loop {
        if stop.load(Ordering::SeqCst) {
            break Err(
                interrupted(conn, job, plan, opts, &progress, RunState::Interrupted, obs).await,
            );
        }
        // A connection lost or silent while looking between batches fails the
        // next batch: it is retried on a new connection as if the batch had.
        let mut unchecked = None;
        match between_batches(
            conn,
            job,
            opts,
            &progress,
            stop,
            obs,
            &mut poller,
            &mut throttle,
            limiter.as_ref(),
            &sizer,
            last_batch,
            &mut waits,
        )
        .await
        {
            Ok(Between::Go) => {}
            Err(e @ Error::Transient { .. }) => unchecked = Some(e),
            Ok(Between::Wait) => continue,
            Ok(Between::StopPaused) => {
                break Err(
                    interrupted(conn, job, plan, opts, &progress, RunState::Paused, obs).await,
                )
            }
            Ok(Between::Cancelled(by)) => {
                let why = format!("cancelled by {by}");
                if let Err(e) = end_run(conn, &progress, RunState::Cancelled, Some(&why)).await {
                    break Err(e);
                }
                obs.finished(&progress);
                break Err(Error::Cancelled(format!(
                    "run {run_no} of {} was {why} after {} batches, at {}; every finished batch is \
                     committed. Running the job again starts a new run",
                    job.name(),
                    progress.batches,
                    at(plan, &progress.position)
                )));
            }
            Ok(Between::WindowClosed(reason)) => {
                if let Err(e) = end_run(conn, &progress, RunState::Interrupted, None).await {
                    break Err(e);
                }
                break Ok(Some(reason));
            }
            Err(e) => {
                let _ = end_run(conn, &progress, RunState::Failed, Some(&e.to_string())).await;
                break Err(e);
            }
        }
        let next = match unchecked {
            Some(e) => Err(e),
            None => {
                let next = batches.next(conn, cursor.as_deref(), sizer.rows());
                match limits.deadline() {
                    Some(deadline) => tokio::time::timeout(deadline, next)
                        .await
                        .unwrap_or_else(|_| Err(batch::unanswered(deadline))),
                    None => next.await,
                }
            }
        };
        // The last batch is in: it and every batch before it are made durable
        // before the run is reported done, or redone after a crash.
        let next = match next {
            Ok(None) => conn
                .flush_commits()
                .await
                .map(|()| None)
                .map_err(|e| Error::Transient {
                    message: format!("making the last batches durable: {}", db_message(&e)),
                    kind: Transient::ConnectionLost,
                }),
            other => other,
        };
        match next {
            Ok(None) => break Ok(None),
            Ok(Some(done)) => {
                let retries = attempt;
                attempt = 0;
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
                last_batch = done.transaction;
                sizer.after_batch(done.counts.rows, done.transaction);
                history.committed(
                    progress.batches,
                    &done.counts,
                    done.transaction,
                    waits.total,
                    retries,
                );
                tracing::debug!(
                    batch = progress.batches,
                    rows = done.counts.rows,
                    changed = done.counts.changed,
                    rejected = done.counts.rejected,
                    transaction_ms = u64::try_from(done.transaction.as_millis()).unwrap_or(u64::MAX),
                    retries,
                    position = %progress.position,
                    "batch committed"
                );
                history.flush_if_due(conn, history_limit).await;
                if let Some(max) = opts.warn_batch_time.filter(|max| done.transaction > *max) {
                    let ms = u64::try_from(done.transaction.as_millis()).unwrap_or(u64::MAX);
                    let span =
                        context_span!("batch", batch = progress.batches, transaction_ms = ms);
                    span.in_scope(|| {
                        obs.message(&format!(
                            "warning: batch {} held its transaction {ms} ms, more than --warn-batch-time {} ms",
                            progress.batches,
                            max.as_millis()
                        ))
                    });
                }
                if let Some(max) = opts
                    .warn_run_time
                    .filter(|max| !warned_run_time && started.elapsed() > *max)
                {
                    warned_run_time = true;
                    obs.message(&format!(
                        "warning: the run has taken {:.0}s, more than --warn-run-time {:.0}s, and is at {}",
                        started.elapsed().as_secs_f64(),
                        max.as_secs_f64(),
                        at(plan, &progress.position)
                    ));
                }
                obs.batch(&progress);
                if let Some(max) = opts.max_errors {
                    if progress.rows_rejected > max {
                        let why = format!(
                            "{} rows rejected, more than --max-errors {max} allows",
                            progress.rows_rejected
                        );
                        let _ = end_run(conn, &progress, RunState::Failed, Some(&why)).await;
                        obs.finished(&progress);
                        break Err(Error::ErrorBudget(format!(
                            "run {run_no} of {} stopped after {} batches, at {}: {why}. Every finished \
                             batch is committed; `datamig status {}` lists the rejected rows. Fix the \
                             data or raise --max-errors, then resume with: {}",
                            job.name(),
                            progress.batches,
                            at(plan, &progress.position),
                            job.name(),
                            opts.resume_command
                        )));
                    }
                }
                if !opts.sleep.is_zero() {
                    pause(opts.sleep, stop).await;
                }
            }
            Err(Error::Transient { message, kind }) if attempt < opts.max_retries => {
                attempt += 1;
                if kind == Transient::StatementTimeout {
                    sizer.halve();
                }
                let wait = backoff(attempt);
                let smaller = if kind == Transient::StatementTimeout {
                    format!(" at {} rows", sizer.rows())
                } else {
                    String::new()
                };
                let span = context_span!("batch", batch = progress.batches + 1);
                span.in_scope(|| {
                    obs.message(&format!(
                        "batch {} ({kind}): {message}; retrying{smaller} in {:.1}s (attempt {attempt} of {})",
                        progress.batches + 1,
                        wait.as_secs_f64(),
                        opts.max_retries
                    ))
                });
                batches.reset();
                if pause(wait, stop).await {
                    continue; // the loop's stop check ends the run
                }
                let answers = kind != Transient::ConnectionLost
                    && tokio::time::timeout(history_limit, alive(conn))
                        .await
                        .unwrap_or(false);
                if !answers {
                    if let Err(e) = reconnect(conn, &job_lock(job), &limits).await {
                        match e {
                            // The server is not back yet: count it as another attempt.
                            Error::Transient { .. } => continue,
                            e => break Err(e),
                        }
                    }
                    poller.look_next_time();
                }
                // The checkpoint in the database, not this process's memory, says
                // where the run is: a COMMIT cut off by the error may have landed
                // (the database is ahead), or a server crash may have lost the last
                // batches with their checkpoints (PostgreSQL commits them
                // asynchronously: the database is behind, and they are redone).
                match store::latest(conn, job.name()).await {
                    Ok(Some(r)) if r.id == run_id && r.batches_done != progress.batches => {
                        let position = r.position.as_deref().unwrap_or_default();
                        let c = if position.is_empty() {
                            Ok(None)
                        } else {
                            cursor::decode(position, arity).map(Some)
                        };
                        match c {
                            Ok(c) => {
                                if r.batches_done > progress.batches {
                                    obs.message(&format!(
                                        "batch {} had committed before the error; going on after it",
                                        r.batches_done
                                    ));
                                } else {
                                    obs.message(&format!(
                                        "the database's checkpoint is at batch {} ({}), behind this process's {}: \
                                         the batches after it were lost with the server (a crash loses the last \
                                         commits together with their checkpoints); doing them again",
                                        r.batches_done,
                                        at(plan, &c.as_deref().map(cursor::display).unwrap_or_default()),
                                        progress.batches
                                    ));
                                }
                                progress.rows_this_process += r.rows_done - progress.rows_done;
                                progress.rows_done = r.rows_done;
                                progress.rows_changed = r.rows_changed;
                                progress.rows_rejected = r.rows_rejected;
                                progress.batches = r.batches_done;
                                progress.position =
                                    c.as_deref().map(cursor::display).unwrap_or_default();
                                history.rewind(r.batches_done);
                                cursor = c;
                                batches.set_archive_committed(r.file_offset);
                            }
                            Err(why) => {
                                break Err(Error::CorruptCheckpoint(format!(
                                    "run {run_no} of {}: the checkpoint is unreadable after a retry ({why})",
                                    job.name()
                                )))
                            }
                        }
                    }
                    Ok(Some(r)) if r.id == run_id => {}
                    // The run itself was lost with the server: it cannot be,
                    // for its start is made durable before its first batch.
                    Ok(_) => {
                        break Err(Error::CorruptCheckpoint(format!(
                            "run {run_no} of {} is no longer in datamig_runs after the connection was lost; \
                             nothing after its last checkpoint is known. Run the job again",
                            job.name()
                        )))
                    }
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
                    "run {run_no} of {} failed at batch {} (at {}): {e}. The {} batches before it are \
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
    throttle.close().await;
    obs.waiting(None);
    // The loop may end on a connection the server has since ended (idle past the
    // batch deadline in a last --sleep, or lost as the last batch committed): the
    // history, the checks and the run's record need a live one.
    let live = tokio::time::timeout(history_limit, alive(conn))
        .await
        .unwrap_or(false);
    if !live && looped.is_ok() {
        reconnect(conn, &job_lock(job), &limits).await?;
    }
    history.flush(conn, history_limit).await;
    let stopped = looped?;
    if let Err(e) = conn.set_timeouts(opts.lock_timeout, None, None).await {
        tracing::warn!("could not lift the statement timeout for the checks: {e}");
    }
    progress.elapsed = started.elapsed();
    obs.finished(&progress);
    let mut report = Report {
        run_id,
        run_number: run_no,
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
        checks: Vec::new(),
        stopped: None,
        rows_left: None,
        waited: waits.total,
        analyzed: Vec::new(),
        completed_here: false,
    };
    if let Some(reason) = stopped {
        // The window closed: what is left is done by the next invocation; the
        // checks wait for the end of the run.
        report.rows_left = progress.total.map(|t| (t - progress.rows_done).max(0));
        report.stopped = Some(reason);
        return Ok(report);
    }

    complete(
        conn,
        job,
        plan,
        opts,
        &progress,
        &baseline,
        &mut report,
        stop,
        obs,
    )
    .await?;
    Ok(report)
}

/// Completes when `stop` is set (a signal), looking every 50 ms.
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ends a run whose every batch is done: runs the checks against the baseline,
/// stores them, marks the run completed and refreshes the statistics; a check
/// that does not hold is the error (the run stays completed).
#[allow(clippy::too_many_arguments)]
async fn complete(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: &Plan,
    opts: &Options,
    progress: &Progress,
    baseline: &[CheckResult],
    report: &mut Report,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<()> {
    // The checks and the run's end are read-only or overwrite what they set, so
    // a connection lost among them (a server restart) is replaced and they run
    // again, as a batch would.
    let mut attempt = 0;
    let checks = loop {
        let ended = async {
            let checks = run_checks(conn, &plan.checks, baseline).await?;
            store::set_verification(
                conn,
                progress.run_id,
                &serde_json::to_string(&checks).unwrap_or_default(),
            )
            .await?;
            end_run(conn, progress, RunState::Completed, None).await?;
            Ok::<_, Error>(checks)
        };
        // A signal cuts the checks short (they may take minutes over a large
        // table): every batch is done, and running the job again runs only them.
        let ended = tokio::select! {
            ended = ended => ended,
            () = stopped(stop) => {
                // The connection was cut off mid-query: the run is recorded
                // on a new one.
                let fresh = conn.reopen().await?;
                drop(std::mem::replace(conn, fresh));
                end_run(conn, progress, RunState::Interrupted, None).await?;
                obs.finished(progress);
                return Err(Error::Interrupted(format!(
                    "interrupted run {} of {} during its checks, after its last batch; every batch is \
                     committed, and running the job again runs only the checks. Resume with: {}",
                    progress.run_number,
                    job.name(),
                    opts.resume_command
                )));
            }
        };
        let e = match ended {
            Ok(checks) => break checks,
            Err(e) => e,
        };
        let lost = !tokio::time::timeout(
            opts.network_timeout.max(Duration::from_secs(1)),
            alive(conn),
        )
        .await
        .unwrap_or(false);
        if lost && attempt < opts.max_retries {
            attempt += 1;
            let wait = backoff(attempt);
            obs.message(&format!(
                "the checks at the end of the run (connection lost): {e}; retrying in {:.1}s (attempt {attempt} of {})",
                wait.as_secs_f64(),
                opts.max_retries
            ));
            tokio::time::sleep(wait).await;
            match reconnect(conn, &job_lock(job), &unbatched_limits(opts)).await {
                Ok(()) | Err(Error::Transient { .. }) => continue,
                Err(other) => return Err(other),
            }
        }
        // Every batch is done; running the job again re-runs only the checks.
        let _ = end_run(conn, progress, RunState::Failed, Some(&e.to_string())).await;
        return Err(e);
    };
    report.checks = checks;
    report.completed_here = true;
    report.analyzed =
        refresh_statistics(conn, job, plan, opts.analyze, progress.rows_changed, obs).await;
    verified(job, report)
}

/// The error for a completed run whose checks do not all hold.
fn verified(job: &dyn DynJob, report: &Report) -> Result<()> {
    match failed_checks(&report.checks) {
        Some(bad) => Err(Error::VerificationFailed(format!(
            "run {} of {} completed, but {bad}",
            report.run_number,
            job.name()
        ))),
        None => Ok(()),
    }
}

/// The run's rate limit from now on, recorded with the run: `--rate` sets it
/// (for every process on a partitioned run), `--rate none` lifts it, and
/// without either the run keeps the one it has. Says so when it changes or is kept.
async fn settle_rate(
    conn: &mut Conn,
    run_id: i64,
    record: Option<&RunRecord>,
    choice: pace::RateChoice,
    partitioned: bool,
    obs: &mut dyn Observer,
) -> Result<Option<pace::Rate>> {
    let had = record
        .and_then(|r| r.rate.as_deref())
        .and_then(|r| pace::Rate::parse(r).ok());
    let everyone = if partitioned {
        " for every process on it"
    } else {
        ""
    };
    let rate = match choice {
        pace::RateChoice::Keep => {
            if let (Some(r), Some(_)) = (had, record) {
                obs.message(&format!(
                    "going on at the run's rate limit of {r}{everyone} (--rate changes it, --rate none lifts it)"
                ));
            }
            return Ok(had);
        }
        pace::RateChoice::Set(r) => Some(r),
        pace::RateChoice::Lift => None,
    };
    if rate != had {
        store::set_rate(conn, run_id, rate.map(|r| r.canonical()).as_deref()).await?;
        match (had, rate) {
            (Some(old), Some(new)) => obs.message(&format!(
                "the run's rate limit is {new} from now on{everyone} (it was {old})"
            )),
            (Some(old), None) => obs.message(&format!(
                "the run's rate limit of {old} is lifted{everyone}"
            )),
            _ => {}
        }
    }
    Ok(rate)
}

/// What every run does first: connects to the replicas to watch and tries the
/// probe before anything is written (one that fails stops the command with
/// nothing changed), makes datamig's tables, and bounds the session's lock
/// waits (statement time only inside the batch loop: a count or a check over a
/// huge table may rightly take long).
async fn prepare_run(
    conn: &mut Conn,
    opts: &Options,
) -> Result<(throttle::Throttle, batch::Limits)> {
    let throttle = throttle::Throttle::new(
        opts.throttle.clone(),
        &conn.connect_options().clone(),
        opts.network_timeout,
        conn,
    )
    .await?;
    conn.ensure_bookkeeping().await?;
    let limits = unbatched_limits(opts);
    limits
        .apply(conn)
        .await
        .map_err(|e| Error::db("cannot prepare the session for batches", e.to_string()))?;
    Ok((throttle, limits))
}

/// A session's limits outside the batch loop: lock waits and silence bounded,
/// statements not (a count or a check over a huge table may rightly take long).
fn unbatched_limits(opts: &Options) -> batch::Limits {
    batch::Limits {
        lock_timeout: opts.lock_timeout,
        statement_timeout: None,
        network_timeout: opts.network_timeout,
    }
}

/// The batch sizer `opts` ask for: fixed at `--batch`, or adaptive to
/// `--target-batch-time` within `--batch-min` and `--batch-max`.
fn sizer(opts: &Options) -> pace::Sizer {
    let batch_size = i64::try_from(opts.batch_size).unwrap_or(i64::MAX);
    match opts.target_batch_time {
        Some(target) => pace::Sizer::adaptive(
            batch_size,
            target,
            i64::try_from(opts.batch_min).unwrap_or(1),
            i64::try_from(opts.batch_max).unwrap_or(i64::MAX),
        ),
        None => pace::Sizer::fixed(batch_size),
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

/// One batch of a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct DryBatch {
    /// Rows the source selected for the batch.
    pub rows: i64,
    /// Rows its change would have changed (deleted, updated), rolled back.
    pub changed: i64,
    pub rejected: i64,
    /// Its transaction, up to the rollback.
    pub ms: u64,
    /// Where it ended.
    pub position: String,
}

/// What a dry run found.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub job: String,
    pub batches: Vec<DryBatch>,
    /// The rows the source selects (from where a run would start), if counted.
    pub total: Option<i64>,
    /// The whole run's time in batches, at the dry batches' pace.
    pub projected_ms: Option<u64>,
    /// Queries a batch runs that read the table in full (EXPLAIN).
    pub warnings: Vec<String>,
    /// Where the dry batches started: an unfinished run's checkpoint, or the start.
    pub from: String,
}

/// Runs the first `batches` batches of `job` (from an unfinished run's
/// checkpoint, if it has one with these arguments), each in a transaction
/// that is rolled back, and reports what they would change, how long they
/// took, the run's projected time, and the batch queries that do not use an
/// index. Nothing is written, datamig's own tables included; the job lock is
/// held meanwhile so that a real run does not overlap it.
pub async fn dry_run(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    opts: &Options,
    batches: u32,
) -> Result<DryRun> {
    let plan = plan(conn, job, args)?;
    check_schema(conn, job, &plan).await?;
    let lock = job_lock(job);
    if !conn.try_lock(&lock).await? {
        return Err(Error::AlreadyRunning(format!(
            "job {} is running in another process; a dry run would read beside it (`datamig status {}`)",
            job.name(),
            job.name()
        )));
    }
    // Each dry batch rolls its own transaction back, on every path; a ROLLBACK
    // here drew PostgreSQL's "there is no transaction in progress" warning.
    let result = dry_run_locked(conn, job, args, &plan, opts, batches).await;
    if let Err(e) = conn.unlock(&lock).await {
        tracing::warn!("could not release the job lock cleanly ({e})");
    }
    result
}

async fn dry_run_locked(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    plan: &Plan,
    opts: &Options,
    batches: u32,
) -> Result<DryRun> {
    let limits = batch::Limits {
        lock_timeout: opts.lock_timeout,
        statement_timeout: opts.statement_timeout,
        network_timeout: opts.network_timeout,
    };
    limits.apply(conn).await?;
    let prep = batch::Prepared::new(conn, plan).await?;
    let arity = match &plan.source {
        Source::Table { key, .. } => key.len(),
        Source::Range { .. } => 1,
        Source::Csv { .. } => 3,
    };
    // Where the next real run would start.
    let mut cursor = match store::latest(conn, job.name()).await? {
        Some(r) if r.state.is_resumable() && r.args == args.canonical && !opts.restart => r
            .position
            .as_deref()
            .and_then(|p| cursor::decode(p, arity).ok()),
        _ => None,
    };
    let from = cursor.as_deref().map_or("the start".to_string(), |c| {
        format!("{} {}", key_name(plan), cursor::display(c))
    });
    let total = match (&plan.source, opts.count) {
        (_, CountMode::None) => None,
        (Source::Range { start, end }, _) => {
            let done = cursor
                .as_deref()
                .and_then(|c| c.first())
                .and_then(Value::as_i64)
                .map_or(0, |c| c - start + 1);
            Some(end - start + 1 - done)
        }
        (Source::Csv { path }, _) => Some(csv_source::count(
            path,
            csv_source::At::from_cursor(cursor.as_deref())?,
        )?),
        (Source::Table { .. }, CountMode::Estimate) => {
            match prep.estimate(conn, cursor.as_deref()).await {
                Some(n) => Some(n),
                None => Some(prep.count(conn, cursor.as_deref()).await?),
            }
        }
        (Source::Table { .. }, CountMode::Exact) => {
            Some(prep.count(conn, cursor.as_deref()).await?)
        }
    };
    let rows = i64::try_from(opts.batch_size).unwrap_or(i64::MAX);
    let mut dry = batch::Batches::dry(plan, prep, limits);
    let mut done = Vec::new();
    let mut ranges = Vec::new();
    for _ in 0..batches {
        let before = cursor.clone();
        let Some(batch) = dry.next(conn, cursor.as_deref(), rows).await? else {
            break;
        };
        done.push(DryBatch {
            rows: batch.counts.rows,
            changed: batch.counts.changed,
            rejected: batch.counts.rejected,
            ms: u64::try_from(batch.transaction.as_millis()).unwrap_or(u64::MAX),
            position: cursor::display(&batch.cursor),
        });
        ranges.push((before, batch.cursor.clone()));
        cursor = Some(batch.cursor);
    }
    // The queries of the last dry batch (its real range), as the planner sees them.
    let mut warnings = Vec::new();
    if let (Some((after, upto)), Source::Table { table, .. }) = (ranges.last(), &plan.source) {
        for (sql, params) in dry.queries(conn, after.as_deref(), Some(upto), rows) {
            match conn.full_scans(&sql, &params, table).await {
                Ok(scans) => warnings.extend(scans.into_iter().map(|scan| {
                    format!(
                        "a batch query makes {scan}: each batch reads the whole table (on a small \
                         table the planner may rightly prefer that; on a large one, index the key): {sql}"
                    )
                })),
                Err(e) => warnings.push(format!(
                    "could not EXPLAIN a batch query ({}): {sql}",
                    db_message(&e)
                )),
            }
        }
    }
    let (rows_done, ms): (i64, u64) = done.iter().fold((0, 0), |(r, m), b| (r + b.rows, m + b.ms));
    let projected_ms = match (total, rows_done > 0) {
        (Some(total), true) => {
            let per_row = u128::from(ms.max(1)) * 1000 / u128::try_from(rows_done).unwrap_or(1);
            let all = per_row * u128::try_from(total.max(0)).unwrap_or(0) / 1000;
            Some(u64::try_from(all).unwrap_or(u64::MAX))
        }
        _ => None,
    };
    dry.close().await;
    Ok(DryRun {
        job: job.name().to_string(),
        batches: done,
        total,
        projected_ms,
        warnings,
        from,
    })
}

/// Finds the run to resume, or decides to start one: `(record, cursor, resumed)`.
async fn find_run(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    opts: &Options,
    arity: usize,
    obs: &mut dyn Observer,
) -> Result<(Option<RunRecord>, Option<Vec<Value>>, bool)> {
    match find_run_record(conn, job, args, opts, obs).await? {
        Some(r) => {
            let cursor = match &r.position {
                None => None,
                Some(text) => Some(cursor::decode(text, arity).map_err(|why| {
                    Error::CorruptCheckpoint(format!(
                        "run {} of {} has a corrupt checkpoint in datamig_runs.position ({why}); \
                         nothing was changed. Fix that row, or start over with --restart",
                        r.number,
                        job.name()
                    ))
                })?),
            };
            Ok((Some(r), cursor, true))
        }
        None => Ok((None, None, false)),
    }
}

/// The unfinished run to resume, or `None` to start one (abandoning the
/// unfinished one with `--restart`); refuses a paused run and one begun with
/// other arguments.
async fn find_run_record(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    opts: &Options,
    obs: &mut dyn Observer,
) -> Result<Option<RunRecord>> {
    let previous = store::latest(conn, job.name())
        .await?
        .filter(|r| r.state.is_resumable());
    match previous {
        Some(r) if opts.restart => {
            store::set_state(conn, r.id, RunState::Cancelled, Some("abandoned by --restart")).await?;
            obs.message(&format!(
                "abandoned unfinished run {} of {}; starting over",
                r.number,
                job.name()
            ));
            Ok(None)
        }
        Some(r) if r.state == RunState::Paused => Err(Error::Paused(format!(
            "run {} of {} is paused (by {}); `datamig resume {}` releases it, then run this again \
             (or --restart abandons it)",
            r.number,
            job.name(),
            r.request_by.as_deref().unwrap_or("someone"),
            job.name()
        ))),
        Some(r) if r.args != args.canonical => Err(Error::Usage(format!(
            "run {} of {} is unfinished with other arguments ({}); run it with those arguments to resume it, \
             or pass --restart to abandon it",
            r.number,
            job.name(),
            r.args
        ))),
        other => Ok(other),
    }
}

/// What the run does before its next batch.
enum Between {
    /// Run the batch.
    Go,
    /// Look again (it waited for a throttle, the rate, or a pause).
    Wait,
    /// Stopped by a signal while paused: the run stays paused.
    StopPaused,
    /// `datamig cancel`, from whom.
    Cancelled(String),
    /// The time window closed, with what to tell the user.
    WindowClosed(String),
}

/// Time the run spent waiting, and what it last said about it.
#[derive(Default)]
struct Waits {
    total: Duration,
    why: Option<String>,
}

impl Waits {
    fn wait(&mut self, obs: &mut dyn Observer, why: String, took: Duration) {
        if self.why.as_deref() != Some(why.as_str()) {
            obs.waiting(Some(&why));
            self.why = Some(why);
        }
        self.total += took;
    }

    fn go(&mut self, obs: &mut dyn Observer) {
        if self.why.take().is_some() {
            obs.waiting(None);
        }
    }
}

/// Decides, with no transaction open, whether the next batch may start: a
/// pause or cancel asked for from elsewhere, the time window, the database's
/// health, and the rate limit, in that order.
#[allow(clippy::too_many_arguments)]
async fn between_batches(
    conn: &mut Conn,
    job: &dyn DynJob,
    opts: &Options,
    progress: &Progress,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
    poller: &mut steer::Poller,
    throttle: &mut throttle::Throttle,
    limiter: Option<&pace::Limiter>,
    sizer: &pace::Sizer,
    last_batch: Duration,
    waits: &mut Waits,
) -> Result<Between> {
    let limit = poller.limit();
    match poller.poll(conn, progress.run_id, false).await? {
        // Unanswered: the next batch finds the connection dead and retries.
        steer::Polled::Go | steer::Polled::Unanswered => {}
        // A resume while running: one whose answer was lost with a connection
        // leaves the run marked paused, which no batch may checkpoint.
        steer::Polled::Resume(by) => {
            let settled = settle(
                conn,
                limit,
                progress.run_id,
                RunState::Running,
                store::Request::Resume,
            )
            .await;
            if settled? {
                obs.message(&format!("resumed by {by}"));
                obs.waiting(None);
            }
        }
        steer::Polled::Cancel(by) => return Ok(Between::Cancelled(by)),
        steer::Polled::Pause(by) => {
            let settled = settle(
                conn,
                limit,
                progress.run_id,
                RunState::Paused,
                store::Request::Pause,
            )
            .await;
            if !settled? {
                return Ok(Between::Wait); // a cancel came after the pause
            }
            obs.message(&format!(
                "paused by {by} at {}; `datamig resume {name}` lets it go on, `datamig cancel {name}` stops it",
                if progress.position.is_empty() { "the start" } else { &progress.position },
                name = job.name()
            ));
            let paused = Instant::now();
            obs.waiting(Some("paused"));
            loop {
                if pause(Duration::from_millis(200), stop).await {
                    waits.total += paused.elapsed();
                    return Ok(Between::StopPaused);
                }
                match poller.poll(conn, progress.run_id, true).await? {
                    // A paused run must still hear its resume: a new connection.
                    steer::Polled::Unanswered => {
                        waits.total += paused.elapsed();
                        return Err(Error::Transient {
                            message: format!(
                                "while paused, the run's requests cannot be read (no answer within {})",
                                seconds(limit)
                            ),
                            kind: Transient::ConnectionLost,
                        });
                    }
                    steer::Polled::Resume(by) => {
                        let settled = settle(
                            conn,
                            limit,
                            progress.run_id,
                            RunState::Running,
                            store::Request::Resume,
                        )
                        .await;
                        if !settled? {
                            continue; // a cancel came after the resume
                        }
                        obs.message(&format!("resumed by {by}"));
                        obs.waiting(None);
                        waits.total += paused.elapsed();
                        return Ok(Between::Wait);
                    }
                    steer::Polled::Cancel(by) => {
                        waits.total += paused.elapsed();
                        return Ok(Between::Cancelled(by));
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(window) = &opts.window {
        if window.closes_before(last_batch) {
            return Ok(Between::WindowClosed(window.reason.to_string()));
        }
    }
    let checking = Instant::now();
    if let Some(why) = throttle.check(conn).await? {
        let nap = throttle::CHECK_EVERY;
        // The check's own time (a slow probe) is time the run stood still too.
        waits.wait(obs, format!("waiting: {why}"), checking.elapsed() + nap);
        pause(nap, stop).await;
        return Ok(Between::Wait);
    }
    if let Some(limiter) = limiter {
        if let Some(wait) = limiter.wait_for(sizer.rows()) {
            let nap = wait.min(Duration::from_millis(250));
            // Say so only when the wait is one a person notices.
            if wait >= Duration::from_secs(1) {
                waits.wait(obs, format!("waiting: rate limit {}", limiter.rate()), nap);
            } else {
                waits.total += nap;
            }
            pause(nap, stop).await;
            return Ok(Between::Wait);
        }
    }
    waits.go(obs);
    Ok(Between::Go)
}

/// Answers a pause or resume request ([`store::settle_request`]) between
/// batches, bounded by `limit` as [`answered`] says.
async fn settle(
    conn: &mut Conn,
    limit: Duration,
    run_id: i64,
    state: RunState,
    request: store::Request,
) -> Result<bool> {
    let settled =
        tokio::time::timeout(limit, store::settle_request(conn, run_id, state, request)).await;
    answered(conn, limit, settled).await
}

/// A write between batches, bounded by `limit`: silence, or an error on a
/// connection that no longer answers, is [`Error::Transient`], so that the run
/// replaces the connection and goes on as after a failed batch.
async fn answered<T>(
    conn: &mut Conn,
    limit: Duration,
    result: std::result::Result<Result<T>, tokio::time::error::Elapsed>,
) -> Result<T> {
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if tokio::time::timeout(limit, alive(conn))
                .await
                .unwrap_or(false)
            {
                Err(e)
            } else {
                Err(Error::Transient {
                    message: e.to_string(),
                    kind: Transient::ConnectionLost,
                })
            }
        }
        Err(_) => Err(Error::Transient {
            message: format!(
                "the run's record: no answer from the server within {}",
                seconds(limit)
            ),
            kind: Transient::ConnectionLost,
        }),
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Ends the run on a signal (`state` stays `paused` for a run stopped while
/// paused) and says how to go on.
async fn interrupted(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: &Plan,
    opts: &Options,
    progress: &Progress,
    state: RunState,
    obs: &mut dyn Observer,
) -> Error {
    if let Err(e) = end_run(conn, progress, state, None).await {
        return e;
    }
    obs.finished(progress);
    let pct = percent(progress.rows_done, progress.total)
        .map(|p| format!(" ({p:.1}%)"))
        .unwrap_or_default();
    let how = if state == RunState::Paused {
        format!(
            "it stays paused: `datamig resume {}`, then resume with: {}",
            job.name(),
            opts.resume_command
        )
    } else {
        format!("Resume with: {}", opts.resume_command)
    };
    Error::Interrupted(format!(
        "interrupted run {} of {} after {} batches, at {}{pct}; every finished batch is committed. {how}",
        progress.run_number,
        job.name(),
        progress.batches,
        at(plan, &progress.position),
    ))
}

/// Refreshes the planner's statistics of the tables the job changed, when
/// `analyze` says so; returns the tables done. A failure is a warning: the
/// run itself succeeded.
async fn refresh_statistics(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: &Plan,
    analyze: Analyze,
    rows_changed: i64,
    obs: &mut dyn Observer,
) -> Vec<String> {
    let tables: Vec<String> = match (job.statistics(), &plan.source) {
        (crate::job::Statistics::Never, _) => Vec::new(),
        (crate::job::Statistics::Tables(t), _) => t.iter().map(|t| t.to_string()).collect(),
        (crate::job::Statistics::Source, Source::Table { table, .. }) => vec![table.clone()],
        (crate::job::Statistics::Source, Source::Range { .. }) => Vec::new(),
        (crate::job::Statistics::Source, Source::Csv { .. }) => match &plan.step {
            Step::Import(import) => vec![import.table()],
            _ => Vec::new(),
        },
    };
    let mut done = Vec::new();
    for table in tables {
        let wanted = match analyze {
            Analyze::Never => false,
            Analyze::Always => true,
            Analyze::Auto => {
                rows_changed >= ANALYZE_MIN_ROWS && {
                    let sql = format!("SELECT 1 FROM {}", conn.quote_ident(&table));
                    // Without an estimate (SQLite), the row floor decides.
                    let rows = conn.estimate(&sql, &[]).await.ok().flatten();
                    rows.is_none_or(|n| rows_changed.saturating_mul(10) >= n)
                }
            }
        };
        if !wanted {
            continue;
        }
        let started = Instant::now();
        match conn.analyze(&table).await {
            Ok(()) => {
                obs.message(&format!(
                    "refreshed the planner's statistics of {table} ({} ms)",
                    started.elapsed().as_millis()
                ));
                done.push(table);
            }
            Err(e) => tracing::warn!(
                "could not refresh the statistics of {table}: {}; run ANALYZE on it yourself",
                db_message(&e)
            ),
        }
    }
    done
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
        Source::Csv { .. } => "(records, byte, line)".into(),
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
