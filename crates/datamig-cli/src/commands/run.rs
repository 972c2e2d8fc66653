//! `datamig run <job>` and `datamig verify <job>`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use datamig_core::job::{DynJob, ParsedArgs, Registry};
use datamig_core::run::{self, CheckResult, CountMode, Options};
use datamig_core::Error;

use super::{settings, with_conn};
use crate::opt::{CountArg, GlobalOpts, RunCmd};
use crate::output::line;

fn find<'r>(registry: &'r Registry, name: &str) -> Result<&'r dyn DynJob, Error> {
    registry.get(name).ok_or_else(|| {
        let known: Vec<&str> = registry.iter().map(|j| j.name()).collect();
        Error::Usage(if known.is_empty() {
            format!("unknown job `{name}`: no jobs are registered")
        } else {
            format!(
                "unknown job `{name}`; `datamig jobs` lists them: {}",
                known.join(", ")
            )
        })
    })
}

fn parse_args(job: &dyn DynJob, pairs: &[(String, String)]) -> Result<ParsedArgs, Error> {
    job.parse_args(pairs).map_err(Error::Usage)
}

/// The command that resumes this run, safe to print: never a `--database-url`.
fn resume_command(global: &GlobalOpts, cmd: &RunCmd) -> String {
    let mut parts = vec!["datamig".to_string()];
    if let Some(env) = &global.env {
        parts.push(format!("--env {env}"));
    }
    parts.push(format!("run {} --batch {}", cmd.job, cmd.batch));
    for (k, v) in &cmd.args {
        parts.push(format!("--arg {k}={v}"));
    }
    if global.database_url.is_some() {
        parts.push("(with the same --database-url)".into());
    }
    parts.join(" ")
}

/// Ctrl-C or SIGTERM: finish the batch in flight, checkpoint, stop. Twice: stop now.
fn install_signal_handlers(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("stopping now; the batch in flight is rolled back");
                std::process::exit(i32::from(crate::exit::INTERRUPTED));
            }
            eprintln!(
                "finishing the batch in flight, then stopping (Ctrl-C again to stop at once)"
            );
        }
    });
}

pub async fn run(global: &GlobalOpts, registry: &Registry, cmd: RunCmd) -> Result<()> {
    let cmd_json = cmd.json;
    let job = find(registry, &cmd.job)?;
    let args = parse_args(job, &cmd.args)?;
    let settings = settings(global)?;
    let opts = Options {
        batch_size: u64::try_from(cmd.batch).unwrap_or(0),
        restart: cmd.restart,
        read_ahead: !cmd.no_read_ahead,
        lock_timeout: cmd.lock_timeout,
        statement_timeout: (!cmd.statement_timeout.is_zero()).then_some(cmd.statement_timeout),
        max_retries: cmd.max_retries,
        sleep: cmd.sleep,
        count: match cmd.count {
            CountArg::Exact => CountMode::Exact,
            CountArg::Estimate => CountMode::Estimate,
            CountArg::None => CountMode::None,
        },
        resume_command: resume_command(global, &cmd),
    };
    let stop = Arc::new(AtomicBool::new(false));
    install_signal_handlers(stop.clone());
    let mut display = super::progress::Display::new(job.name(), cmd.progress);
    let report = with_conn(global, &settings, async |conn| {
        // Refuse bad plans before the signal handler or the lock get involved.
        run::plan(conn, job, &args)?;
        Ok(run::run(conn, job, &args, &opts, &stop, &mut display).await?)
    })
    .await?;
    let secs = report.elapsed.as_secs_f64();
    #[allow(clippy::cast_precision_loss)] // a rate for humans
    let rate = if secs > 0.0 {
        report.rows_this_process as f64 / secs
    } else {
        0.0
    };
    let (p50, p99) = (
        report.batch_times.percentile(50),
        report.batch_times.percentile(99),
    );
    if cmd_json {
        let summary = serde_json::json!({
            "run_id": report.run_id, "job": job.name(), "resumed": report.resumed,
            "rows_done": report.rows_done, "rows_changed": report.rows_changed,
            "rows_rejected": report.rows_rejected, "batches": report.batches,
            "rows_this_process": report.rows_this_process,
            "elapsed_ms": report.elapsed.as_millis(), "max_batch_ms": report.max_batch.as_millis(),
            "bookkeeping_ms": report.bookkeeping.as_millis(),
            "batch_p50_ms": p50.map(|d| d.as_millis()), "batch_p99_ms": p99.map(|d| d.as_millis()),
            "checks": report.checks,
        });
        line(&summary.to_string());
        return Ok(());
    }
    line(&format!(
        "completed run {} of {}: {} rows in {} batches ({} changed, {} rejected){}; {} rows this time in {:.1}s, {:.0} rows/s",
        report.run_id,
        job.name(),
        report.rows_done,
        report.batches,
        report.rows_changed,
        report.rows_rejected,
        if report.resumed { ", resumed" } else { "" },
        report.rows_this_process,
        secs,
        rate
    ));
    let spread = match (p50, p99) {
        (Some(p50), Some(p99)) => format!(
            " (this time: median {} ms, 99th percentile {} ms)",
            p50.as_millis(),
            p99.as_millis()
        ),
        _ => String::new(),
    };
    line(&format!(
        "longest batch transaction {} ms{spread}; checkpoints took {} ms in all",
        report.max_batch.as_millis(),
        report.bookkeeping.as_millis()
    ));
    print_checks(&report.checks);
    if report.rows_rejected > 0 {
        line(&format!(
            "rejected rows are listed by `datamig status {}`",
            job.name()
        ));
    }
    Ok(())
}

pub fn print_checks(checks: &[CheckResult]) {
    if checks.is_empty() {
        return;
    }
    line("verification:");
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in checks {
        let value = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        line(&format!(
            "  {}  {:width$}  before {:>10}  after {:>10}  expect {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            value(c.before),
            value(c.after),
            c.expect
        ));
    }
}

pub async fn verify(
    global: &GlobalOpts,
    registry: &Registry,
    name: &str,
    pairs: &[(String, String)],
) -> Result<()> {
    let job = find(registry, name)?;
    let args = parse_args(job, pairs)?;
    let settings = settings(global)?;
    with_conn(global, &settings, async |conn| {
        let plan = run::plan(conn, job, &args)?;
        run::check_schema(conn, job, &plan).await?;
        let latest = run::store::latest(conn, job.name()).await?;
        let baseline: Vec<CheckResult> = latest
            .as_ref()
            .and_then(|r| r.verification.as_deref())
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        if plan.checks.is_empty() {
            line(&format!("job {} has no verification checks", job.name()));
            return Ok(());
        }
        let results = run::run_checks(conn, &plan.checks, &baseline).await?;
        print_checks(&results);
        match run::failed_checks(&results) {
            Some(bad) => Err(Error::VerificationFailed(bad).into()),
            None => Ok(()),
        }
    })
    .await
}
