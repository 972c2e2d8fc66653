//! Finding or creating the run a process works on, before any batch: the
//! unfinished run to resume (refusing a paused one and one begun with other
//! arguments), or a new one with its total and its checks' baseline; for a
//! partitioned run, its partitions, cut from the key range (or from what is
//! left after a run begun in one worker). What is opened is made durable
//! before the first batch: a server crash cannot take the run back.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::batch::{self, Archive, Prepared};
use super::partition::{self, Prefix};
use super::store::{self, RunRecord, RunState};
use super::worker::Start;
use super::{
    cursor, pace, percent, run_checks, shape, stopped, stored_checks, throttle, unbatched_limits,
    CheckResult, Observer, Options,
};
use crate::db::{db_message, Conn, Value};
use crate::job::{DynJob, ParsedArgs, Plan, Source, Step};
use crate::{Error, Result};

/// The run a process works on, found or created.
pub(super) struct Opened {
    pub run_id: i64,
    /// Which run of its job it is: how messages name it.
    pub number: i64,
    pub resumed: bool,
    pub baseline: Vec<CheckResult>,
    pub total: Option<i64>,
    pub record: Option<RunRecord>,
    /// Where a run in one worker goes on.
    pub start: Option<Start>,
    /// An archive step's file, opened and cut back to the run's checkpoint.
    pub archive: Option<Archive>,
}

/// How long a process waits for another's setup under the job lock.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Partitions per worker at the start: enough that uneven ones even out, few
/// enough that claiming stays rare.
const PARTS_PER_WORKER: i64 = 4;

/// What every run does first: connects to the replicas to watch and tries the
/// probe before anything is written (one that fails stops the command with
/// nothing changed), makes datamig's tables, and bounds the session's lock
/// waits (statement time only inside the batch loop: a count or a check over a
/// huge table may rightly take long).
pub(super) async fn prepare(conn: &mut Conn, opts: &Options) -> Result<throttle::Throttle> {
    let throttle = throttle::Throttle::new(
        opts.throttle.clone(),
        &conn.connect_options().clone(),
        opts.timeouts.network_timeout,
        conn,
    )
    .await?;
    conn.ensure_bookkeeping().await?;
    unbatched_limits(opts)
        .apply(conn)
        .await
        .map_err(|e| Error::db("cannot prepare the session for batches", e.to_string()))?;
    Ok(throttle)
}

/// A new run's total (the rows its source selects, unless `--no-count`) and
/// its checks' baseline, taken side by side — each is usually a scan of a
/// large table: the count on `conn`, the checks on connections of their own
/// (one by one on `conn` after the count where none can be opened). A signal
/// stops them before the run exists.
async fn total_and_baseline(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: &Plan,
    prep: &Prepared,
    opts: &Options,
    stop: &AtomicBool,
) -> Result<(Option<i64>, Vec<CheckResult>)> {
    let mut side = match (plan.checks.is_empty(), conn.shares_database()) {
        (false, true) => conn.reopen().await.ok(),
        _ => None,
    };
    let taken = async {
        match side.as_mut() {
            Some(side) => {
                let (total, baseline) = tokio::join!(
                    shape::remaining(conn, plan, prep, opts.reporting.count, None),
                    run_checks(side, &plan.checks, &[])
                );
                Ok::<_, Error>((total?, baseline?))
            }
            None => {
                let total = shape::remaining(conn, plan, prep, opts.reporting.count, None).await?;
                Ok((total, run_checks(conn, &plan.checks, &[]).await?))
            }
        }
    };
    let taken = tokio::select! {
        taken = taken => taken?,
        () = stopped(stop) => {
            return Err(Error::Interrupted(format!(
                "interrupted while the checks of {} took their baseline, before its run began; \
                 nothing was changed",
                job.name()
            )))
        }
    };
    if let Some(side) = side {
        side.close().await;
    }
    Ok(taken)
}

/// Opens the run for one worker over the whole key range, on the connection
/// that holds the job lock.
pub(super) async fn whole(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    plan: &Plan,
    opts: &Options,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Opened> {
    let prep = Prepared::new(conn, plan).await?;
    let batch_size = opts.pace.rows();
    let (record, cursor) = find_run(conn, job, args, opts, shape::arity(&plan.source), obs).await?;
    if let (Some(max), Some(r)) = (opts.reporting.max_errors, &record) {
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

    let key = shape::key_name(&plan.source);
    let opened = match record {
        Some(r) => {
            let left = shape::remaining(conn, plan, &prep, opts.reporting.count, cursor.as_deref())
                .await?;
            let total = left.map(|n| r.rows_done + n);
            store::resume(conn, r.id, batch_size, total).await?;
            let at = cursor.as_deref().map_or("the start".to_string(), |c| {
                format!("{key} {}", cursor::display(c))
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
            Opened {
                run_id: r.id,
                number: r.number,
                resumed: true,
                baseline: stored_checks(&r),
                total,
                start: Some(Start {
                    cursor,
                    batches: r.batches_done,
                }),
                record: Some(r),
                archive: None,
            }
        }
        None => {
            let (total, baseline) = total_and_baseline(conn, job, plan, &prep, opts, stop).await?;
            let json = serde_json::to_string(&baseline).unwrap_or_default();
            let (id, number) =
                store::insert(conn, job.name(), &args.canonical, batch_size, total, &json).await?;
            let of = total.map(|t| format!(" over {t} rows")).unwrap_or_default();
            tracing::Span::current().record("run_id", id);
            obs.message(&format!("starting run {number} of {}{of}", job.name()));
            Opened {
                run_id: id,
                number,
                resumed: false,
                baseline,
                total,
                start: Some(Start {
                    cursor: None,
                    batches: 0,
                }),
                record: None,
                archive: None,
            }
        }
    };
    let archive = match archive {
        Some(archive) => {
            // Where the archive ends now is where the run's rows start.
            let end = i64::try_from(archive.committed()).unwrap_or(i64::MAX);
            store::set_file_offset(conn, opened.run_id, end).await?;
            Some(archive)
        }
        None => None,
    };
    // The run's record (and the archive's start) outlive a server crash: after
    // one, the checkpoint the database has is where the run goes on.
    conn.flush_commits()
        .await
        .map_err(|e| crate::db::error("cannot record the run", &e))?;
    Ok(Opened { archive, ..opened })
}

/// Finds or creates a partitioned run under the job lock, held briefly.
#[allow(clippy::too_many_arguments)]
pub(super) async fn parts(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    plan: &Plan,
    opts: &Options,
    workers: usize,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Opened> {
    shape::partition_key(job.name(), plan)?;
    let lock = super::job_lock(job);
    lock_briefly(conn, job, &lock).await?;
    let joined = async {
        let batch_size = opts.pace.rows();
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
                Ok(resuming(r))
            }
            Some(r) => {
                // Begun with one cursor: what it did becomes a finished partition 0,
                // and the keys after its cursor are cut for the workers.
                let upto = match r.position.as_deref() {
                    None => None,
                    Some(text) => cursor::decode(text, 1)
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
                Ok(resuming(r))
            }
            None => {
                let prep = Prepared::new(conn, plan).await?;
                let (total, baseline) =
                    total_and_baseline(conn, job, plan, &prep, opts, stop).await?;
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
                Ok(Opened {
                    run_id: id,
                    number,
                    resumed: false,
                    baseline,
                    total,
                    record: None,
                    start: None,
                    archive: None,
                })
            }
        }
    }
    .await;
    let _ = conn.unlock(&lock).await;
    joined
}

fn resuming(r: RunRecord) -> Opened {
    Opened {
        run_id: r.id,
        number: r.number,
        resumed: true,
        baseline: stored_checks(&r),
        total: r.total_rows,
        record: Some(r),
        start: None,
        archive: None,
    }
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
        if opts.scale.workers.is_some_and(|n| n > 1) {
            obs.message(
                "SQLite has a single writer: the run goes on in one worker (--workers needs PostgreSQL or MariaDB)",
            );
        }
        return Ok(None);
    }
    if opts.scale.workers.is_some() {
        return Ok(opts.scale.workers);
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

/// The smallest and largest key: `(key before the first, last key)` for cutting.
async fn key_span(conn: &mut Conn, job: &dyn DynJob, plan: &Plan) -> Result<Option<(i64, i64)>> {
    match (&plan.source, shape::partition_key(job.name(), plan)?) {
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
                        Value::Decimal(_) => "decimals",
                        Value::Json(_) => "JSON",
                        Value::Array(_) => "arrays",
                        Value::Int(_) | Value::Null => "values that are not integers",
                    },
                    cursor::display(std::slice::from_ref(other))
                ))),
            }
        }
        (_, None) => Ok(None),
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

/// The run's rate limit from now on, recorded with the run: `--rate` sets it
/// (for every process on a partitioned run), `--rate none` lifts it, and
/// without either the run keeps the one it has. Says so when it changes or is kept.
pub(super) async fn settle_rate(
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

/// Finds the run to resume, or decides to start one: `(record, cursor)`.
async fn find_run(
    conn: &mut Conn,
    job: &dyn DynJob,
    args: &ParsedArgs,
    opts: &Options,
    arity: usize,
    obs: &mut dyn Observer,
) -> Result<(Option<RunRecord>, Option<Vec<Value>>)> {
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
            Ok((Some(r), cursor))
        }
        None => Ok((None, None)),
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
