//! The end of a run whose every batch is done: the checks against their
//! baseline, the run marked completed, the planner's statistics refreshed.
//! A partitioned run is completed by the first of its processes to get here,
//! under the job lock; the others report what it found.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::open::Opened;
use super::store::{self, RunState};
use super::{
    alive, backoff, end_run, job_lock, reconnect, stopped, unbatched_limits, Analyze, CheckResult,
    Observer, Options, Progress, Report, ANALYZE_MIN_ROWS,
};
use crate::db::{db_message, Conn, Value};
use crate::job::{Check, DynJob, Plan};
use crate::{Error, Result};

/// How long a process waits for another's finish under the job lock.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Ends a run whose every batch is done: runs the checks against the baseline,
/// stores them, marks the run completed and refreshes the statistics; a check
/// that does not hold is the error (the run stays completed).
#[allow(clippy::too_many_arguments)]
pub(super) async fn complete(
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
    if let Err(e) = conn
        .set_timeouts(opts.timeouts.lock_timeout, None, None)
        .await
    {
        tracing::warn!("could not lift the statement timeout for the checks: {e}");
    }
    let statistics = Statistics::start(
        conn,
        job,
        plan,
        opts.reporting.analyze,
        progress.rows_changed,
    )
    .await;
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
            opts.timeouts.network_timeout.max(Duration::from_secs(1)),
            alive(conn),
        )
        .await
        .unwrap_or(false);
        if lost && attempt < opts.timeouts.max_retries {
            attempt += 1;
            let wait = backoff(attempt);
            obs.message(&format!(
                "the checks at the end of the run (connection lost): {e}; retrying in {:.1}s (attempt {attempt} of {})",
                wait.as_secs_f64(),
                opts.timeouts.max_retries
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
    report.analyzed = statistics.wait(conn, obs).await;
    verified(job, report)
}

/// The error for a completed run whose checks do not all hold.
pub(super) fn verified(job: &dyn DynJob, report: &Report) -> Result<()> {
    match failed_checks(&report.checks) {
        Some(bad) => Err(Error::VerificationFailed(format!(
            "run {} of {} completed, but {bad}",
            report.run_number,
            job.name()
        ))),
        None => Ok(()),
    }
}

/// Every batch is done: the first process here runs the checks and
/// completes the run, under the job lock (`held`: this process holds it
/// already, a run in one worker); one that comes after reports what it found.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: &Plan,
    opts: &Options,
    opened: &Opened,
    progress: &Progress,
    mut report: Report,
    held: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Report> {
    let lock = super::job_lock(job);
    let started = Instant::now();
    loop {
        while !held && !conn.try_lock(&lock).await? {
            if started.elapsed() > LOCK_WAIT * 10 {
                return Err(Error::AlreadyRunning(format!(
                    "every partition of run {} is done, but another process has held the job lock for \
                     {}s while completing it; `datamig status {}` shows it",
                    opened.number,
                    started.elapsed().as_secs(),
                    job.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Completed by another process already: its checks are the run's.
        let result = match store::find(conn, job.name(), opened.run_id).await {
            Ok(Some(r)) if r.state == RunState::Completed => {
                report.checks = super::stored_checks(&r);
                verified(job, &report)
            }
            Ok(_) => {
                complete(
                    conn,
                    job,
                    plan,
                    opts,
                    progress,
                    &opened.baseline,
                    &mut report,
                    stop,
                    obs,
                )
                .await
            }
            Err(e) => Err(e),
        };
        if !held {
            let _ = conn.unlock(&lock).await;
        }
        match result {
            // The connection was lost while completing, and another process
            // finishing the run took the lock meanwhile: what it found is the run's.
            Err(Error::AlreadyRunning(_)) => continue,
            result => return result.map(|()| report),
        }
    }
}

/// The tables whose planner statistics a run's end refreshes: the job's
/// choice, by the `--analyze` rule (`auto`: when the run changed at least
/// [`ANALYZE_MIN_ROWS`] rows and a tenth of the table's estimated rows).
async fn tables_to_analyze(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: &Plan,
    analyze: Analyze,
    rows_changed: i64,
) -> Vec<String> {
    let tables: Vec<String> = match job.statistics() {
        crate::job::Statistics::Never => Vec::new(),
        crate::job::Statistics::Tables(t) => t.iter().map(|t| t.to_string()).collect(),
        crate::job::Statistics::Source => super::shape::target(plan).into_iter().collect(),
    };
    let mut wanted = Vec::new();
    for table in tables {
        let yes = match analyze {
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
        if yes {
            wanted.push(table);
        }
    }
    wanted
}

/// Refreshes the statistics of `tables` on `conn`: for each, how long it took
/// or why it could not.
async fn analyze_tables(
    conn: &mut Conn,
    tables: Vec<String>,
) -> Vec<(String, std::result::Result<Duration, String>)> {
    let mut done = Vec::new();
    for table in tables {
        let started = Instant::now();
        let result = conn
            .analyze(&table)
            .await
            .map(|()| started.elapsed())
            .map_err(|e| db_message(&e));
        done.push((table, result));
    }
    done
}

/// The statistics of a run's end, refreshed beside its checks: on a
/// connection of its own, in a task, so that the ANALYZE (PostgreSQL: 56 ms
/// for a table of 500,000 rows) overlaps the checks' scans. `None` when there
/// is nothing to refresh, or no second connection (then [`Statistics::wait`]
/// refreshes them on the run's connection).
enum Statistics {
    None,
    Beside(tokio::task::JoinHandle<Vec<(String, std::result::Result<Duration, String>)>>),
    After(Vec<String>),
}

impl Statistics {
    async fn start(
        conn: &mut Conn,
        job: &dyn DynJob,
        plan: &Plan,
        analyze: Analyze,
        rows_changed: i64,
    ) -> Statistics {
        let tables = tables_to_analyze(conn, job, plan, analyze, rows_changed).await;
        if tables.is_empty() {
            return Statistics::None;
        }
        if !conn.shares_database() {
            return Statistics::After(tables);
        }
        match conn.reopen().await {
            Ok(mut side) => Statistics::Beside(tokio::spawn(async move {
                let done = analyze_tables(&mut side, tables).await;
                side.close().await;
                done
            })),
            Err(_) => Statistics::After(tables),
        }
    }

    /// Waits for the refresh (or runs it), says how each went; the tables refreshed.
    async fn wait(self, conn: &mut Conn, obs: &mut dyn Observer) -> Vec<String> {
        let done = match self {
            Statistics::None => Vec::new(),
            Statistics::Beside(task) => task.await.unwrap_or_default(),
            Statistics::After(tables) => analyze_tables(conn, tables).await,
        };
        let mut analyzed = Vec::new();
        for (table, result) in done {
            match result {
                Ok(took) => {
                    obs.message(&format!(
                        "refreshed the planner's statistics of {table} ({} ms)",
                        took.as_millis()
                    ));
                    analyzed.push(table);
                }
                Err(e) => tracing::warn!(
                    "could not refresh the statistics of {table}: {e}; run ANALYZE on it yourself"
                ),
            }
        }
        analyzed
    }
}

/// How many of a run's checks run at once, each on a connection of its own.
const CHECKS_AT_ONCE: usize = 4;

/// Runs the checks (against `baseline`, when given): each its own query,
/// usually a scan of a large table, so they run side by side — the first on
/// `conn`, the others on connections opened like it (up to
/// [`CHECKS_AT_ONCE`]; where one cannot be opened, on those there are).
/// The results are in the checks' order.
pub async fn run_checks(
    conn: &mut Conn,
    checks: &[Check],
    baseline: &[CheckResult],
) -> Result<Vec<CheckResult>> {
    let mut others = Vec::new();
    while conn.shares_database() && others.len() + 1 < checks.len().min(CHECKS_AT_ONCE) {
        match conn.reopen().await {
            Ok(c) => others.push(c),
            Err(e) => {
                tracing::debug!("the checks share fewer connections: {e}");
                break;
            }
        }
    }
    let out = {
        let mut conns: Vec<&mut Conn> = std::iter::once(conn).chain(others.iter_mut()).collect();
        let n = conns.len();
        // Connection i runs checks i, i + n, i + 2n, …
        let lanes = conns.iter_mut().enumerate().map(|(i, c)| async move {
            let mut done = Vec::new();
            for (at, check) in checks.iter().enumerate().skip(i).step_by(n) {
                done.push((at, one_check(c, check, baseline).await?));
            }
            Ok::<_, Error>(done)
        });
        let mut all = Vec::with_capacity(checks.len());
        for lane in futures_util::future::join_all(lanes).await {
            all.extend(lane?);
        }
        all.sort_by_key(|(at, _)| *at);
        all.into_iter().map(|(_, r)| r).collect()
    };
    for c in others {
        c.close().await;
    }
    Ok(out)
}

/// One check's value, against its baseline.
async fn one_check(
    conn: &mut Conn,
    check: &Check,
    baseline: &[CheckResult],
) -> Result<CheckResult> {
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
    Ok(CheckResult {
        name: check.name.clone(),
        expect: check.expect.to_string(),
        before,
        after: Some(value),
        ok: check.expect.holds(before, value),
    })
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
