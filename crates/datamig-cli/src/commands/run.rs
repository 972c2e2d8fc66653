//! `datamig run <job>` and `datamig verify <job>`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use datamig_core::config::{DatabaseUrl, Settings};
use datamig_core::job::{DynJob, ParsedArgs, Registry};
use datamig_core::run::{self, CheckResult, Options};
use datamig_core::Error;

use super::{settings, with_conn};
use crate::opt::{GlobalOpts, ProgressArg, RunCmd};
use crate::output::line;

pub(crate) fn find<'r>(registry: &'r Registry, name: &str) -> Result<&'r dyn DynJob, Error> {
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

/// The command that resumes this run as it was: this invocation's own command
/// line with every flag that shaped the run (pace, throttles, windows, workers,
/// timeouts, outputs), without `--restart` and `--dry-run`, and safe to print:
/// never a `--database-url` (said in words instead), a replica's password masked.
fn resume_command(global: &GlobalOpts, cmd: &RunCmd) -> String {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    resume_command_from(&argv, cmd.pace.batch_size, global.database_url.is_some())
}

fn resume_command_from(argv: &[String], batch: u64, secret_url: bool) -> String {
    // Flags that take a value as the next argument, when not written `--flag=value`.
    const DROPPED: &[&str] = &["--restart", "--dry-run"];
    const DROPPED_WITH_VALUE: &[&str] = &["--database-url", "--dry-run-batches"];
    let mut parts = vec!["datamig".to_string()];
    let mut has_batch = false;
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg.as_str(), None),
        };
        if DROPPED.contains(&flag) {
            i += 1;
            continue;
        }
        if DROPPED_WITH_VALUE.contains(&flag) {
            i += if inline.is_some() { 1 } else { 2 };
            continue;
        }
        has_batch |= flag == "--batch";
        if flag == "--replica" {
            let value = inline
                .map(str::to_string)
                .or_else(|| argv.get(i + 1).cloned());
            let shown = value
                .as_deref()
                .map(|u| {
                    DatabaseUrl::parse(u)
                        .map_or("<the same URL>".into(), |u| u.redacted().to_string())
                })
                .unwrap_or_default();
            parts.push(format!("--replica {}", quote(&shown)));
            i += if inline.is_some() { 1 } else { 2 };
            continue;
        }
        // A job's argument may be a URL with a password (an HTTP endpoint).
        parts.push(quote(&datamig_core::config::hide_passwords(arg)));
        i += 1;
    }
    if !has_batch {
        // After the job's name: `datamig … run <job> --batch N`.
        if let Some(at) = parts.iter().position(|p| p == "run") {
            parts.insert((at + 2).min(parts.len()), format!("--batch {batch}"));
        }
    }
    if secret_url {
        parts.push("(with the same --database-url)".into());
    }
    parts.join(" ")
}

/// An argument as a shell reads it back.
fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+*".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
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
                crate::output::note("stopping now; the batch in flight is rolled back");
                std::process::exit(i32::from(crate::exit::INTERRUPTED));
            }
            crate::output::note(
                "finishing the batch in flight, then stopping (Ctrl-C again to stop at once)",
            );
        }
    });
}

/// The run's options from the command line, over `datamig.toml`'s throttle
/// settings, checked before anything connects.
fn options(global: &GlobalOpts, cmd: &RunCmd, settings: &Settings) -> Result<Options, Error> {
    let (throttle, warnings) = cmd
        .throttle
        .resolve(&settings.throttle, settings.database_url.backend())?;
    for warning in warnings {
        crate::output::note(&warning);
    }
    let opts = Options {
        pace: cmd.pace.clone(),
        timeouts: cmd.timeouts.clone(),
        scale: cmd.scale.clone(),
        window: cmd.window.clone(),
        reporting: cmd.reporting.clone(),
        throttle,
        restart: cmd.restart,
        resume_command: resume_command(global, cmd),
        protected: datamig_core::output::Protected::new(
            &settings.database_url,
            &settings.project_dir,
            &settings.migrations_dir,
        ),
    };
    opts.validate()?;
    Ok(opts)
}

pub async fn run(global: &GlobalOpts, registry: &Registry, cmd: RunCmd) -> Result<()> {
    let job = find(registry, &cmd.job)?;
    let args = parse_args(job, &cmd.args)?;
    let settings = settings(global)?;
    let opts = options(global, &cmd, &settings)?;
    if cmd.dry_run {
        return dry_run(global, &settings, job, &args, &opts, &cmd).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    install_signal_handlers(stop.clone());
    let progress = if cmd.quiet {
        ProgressArg::None
    } else {
        cmd.progress
    };
    let mut display = super::progress::Display::new(job.name(), progress, cmd.quiet);
    let rejects_file = cmd.reporting.rejects_file.clone();
    let outcome = with_conn(global, &settings, async |conn| {
        // Refuse bad plans before the signal handler or the lock get involved.
        run::plan(conn, job, &args)?;
        let outcome = run::run(conn, job, &args, &opts, &stop, &mut display).await;
        if let Some(path) = &rejects_file {
            // Whatever happened, the file holds what the database holds.
            if let Some(run_id) = match &outcome {
                Ok(report) => Some(report.run_id),
                Err(_) => run::store::latest(conn, job.name())
                    .await
                    .ok()
                    .flatten()
                    .map(|r| r.id),
            } {
                let written = export_rejects(conn, run_id, path).await?;
                if written > 0 && !cmd.quiet {
                    line(&format!(
                        "{written} rejected rows written to {}",
                        path.display()
                    ));
                }
            }
        }
        Ok(outcome)
    })
    .await
    .and_then(|outcome| outcome.map_err(anyhow::Error::from));
    if let Some(command) = &cmd.notify_command {
        notify(command, job.name(), &outcome).await;
    }
    // An error is one `error:` line on stderr (what cron mails), with its exit code.
    let report = outcome?;
    let summary = Summary::of(job.name(), &report);
    if cmd.json {
        line(&summary.json().to_string());
        return Ok(());
    }
    line(&summary.line());
    if cmd.quiet {
        return Ok(());
    }
    line(&summary.timings());
    print_checks(&report.checks);
    if report.rows_rejected > 0 {
        line(&format!(
            "rejected rows are listed by `datamig status {}`",
            job.name()
        ));
    }
    Ok(())
}

/// How long `--notify-command` may take before it is stopped.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `--notify-command` with the invocation's outcome as JSON on its stdin:
/// the run's summary (as `--json` prints it) when it ended without an error,
/// else the job, the state, the error's line and the exit code. A command that
/// fails or hangs is reported on stderr; it never changes the exit code.
async fn notify(command: &str, job: &str, outcome: &Result<run::Report>) {
    let json = match outcome {
        Ok(report) => {
            let mut json = Summary::of(job, report).json();
            json["exit_code"] = 0.into();
            json
        }
        Err(err) => {
            let code = crate::exit::code_for(err);
            let state = match code {
                crate::exit::PAUSED => "paused",
                crate::exit::CANCELLED => "cancelled",
                crate::exit::INTERRUPTED => "interrupted",
                crate::exit::ALREADY_RUNNING => "already_running",
                crate::exit::VERIFICATION_FAILED => "verification_failed",
                _ => "failed",
            };
            let mut json = serde_json::json!({"job": job, "state": state, "error": format!("{err:#}"), "exit_code": code});
            // A run that stopped before its end: where it stood, as data.
            if let Some(Error::RunStopped(stopped)) = err.downcast_ref::<Error>() {
                json["run"] = serde_json::to_value(&stopped.run).unwrap_or_default();
            }
            json
        }
    };
    let spawned = tokio::process::Command::new("sh")
        .args(["-c", command])
        .env("DATAMIG_JOB", job)
        .env("DATAMIG_STATE", json["state"].as_str().unwrap_or(""))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return warn(&format!("--notify-command could not start: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt as _;
        // A command that does not read its input still runs.
        let _ = stdin.write_all(format!("{json}\n").as_bytes()).await;
    }
    match tokio::time::timeout(NOTIFY_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => warn(&format!("--notify-command failed ({status})")),
        Ok(Err(e)) => warn(&format!("--notify-command failed: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            warn(&format!(
                "--notify-command did not finish within {}s; stopped",
                NOTIFY_TIMEOUT.as_secs()
            ));
        }
    }
}

fn warn(message: &str) {
    crate::output::note(&format!("warning: {message}"));
}

/// What a finished invocation says: one line for cron, timings, JSON.
struct Summary<'a> {
    job: &'a str,
    report: &'a run::Report,
}

impl<'a> Summary<'a> {
    fn of(job: &'a str, report: &'a run::Report) -> Summary<'a> {
        Summary { job, report }
    }

    fn rate(&self) -> f64 {
        let secs = self.report.elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // a rate for humans
        if secs > 0.0 {
            self.report.rows_this_process as f64 / secs
        } else {
            0.0
        }
    }

    /// `completed run 3 of purge…: 500000 rows in 101 batches (…); 500000 rows this time in 4.2s, …`
    fn line(&self) -> String {
        let r = self.report;
        let verb = match &r.stopped {
            Some(_) => "stopped",
            None => "completed",
        };
        let mut text = format!(
            "{verb} run {} of {}: {} rows in {} batches ({} changed, {} rejected){}; {} rows this time in {:.1}s, {:.0} rows/s",
            r.run_number,
            self.job,
            r.rows_done,
            r.batches,
            r.rows_changed,
            r.rows_rejected,
            if r.resumed { ", resumed" } else { "" },
            r.rows_this_process,
            r.elapsed.as_secs_f64(),
            self.rate()
        );
        if !r.waited.is_zero() {
            text.push_str(&format!(", {:.1}s of it waiting", r.waited.as_secs_f64()));
        }
        if let Some(reason) = &r.stopped {
            let left = r
                .rows_left
                .map(|n| format!("{n} rows left"))
                .unwrap_or_else(|| "the rest left".into());
            text.push_str(&format!(
                "; {reason} reached at a batch boundary, {left}: the next `datamig run {}` continues run {}",
                self.job, r.run_number
            ));
        }
        text
    }

    fn timings(&self) -> String {
        let r = self.report;
        let spread = match (r.batch_times.percentile(50), r.batch_times.percentile(99)) {
            (Some(p50), Some(p99)) => format!(
                " (this time: median {} ms, 99th percentile {} ms)",
                p50.as_millis(),
                p99.as_millis()
            ),
            _ => String::new(),
        };
        format!(
            "longest batch transaction {} ms{spread}; checkpoints took {} ms in all",
            r.max_batch.as_millis(),
            r.bookkeeping.as_millis()
        )
    }

    fn json(&self) -> serde_json::Value {
        let r = self.report;
        serde_json::json!({
            "run_id": r.run_id, "run_number": r.run_number, "job": self.job, "resumed": r.resumed,
            "state": if r.stopped.is_some() { "interrupted" } else { "completed" },
            "stopped": r.stopped, "rows_left": r.rows_left,
            "rows_done": r.rows_done, "rows_changed": r.rows_changed,
            "rows_rejected": r.rows_rejected, "batches": r.batches,
            "rows_this_process": r.rows_this_process,
            "completed_here": r.completed_here,
            "elapsed_ms": r.elapsed.as_millis(), "max_batch_ms": r.max_batch.as_millis(),
            "bookkeeping_ms": r.bookkeeping.as_millis(), "waited_ms": r.waited.as_millis(),
            "batch_p50_ms": r.batch_times.percentile(50).map(|d| d.as_millis()),
            "batch_p99_ms": r.batch_times.percentile(99).map(|d| d.as_millis()),
            "analyzed": r.analyzed,
            "checks": r.checks,
        })
    }
}

/// Writes every rejected row of the run to `path` as CSV (`key,reason`),
/// replacing the file whole (written beside it, then renamed).
async fn export_rejects(
    conn: &mut datamig_core::db::Conn,
    run_id: i64,
    path: &std::path::Path,
) -> Result<i64, Error> {
    let io = |action: &'static str, p: &std::path::Path, e: std::io::Error| {
        Error::Usage(format!("cannot {action} {}: {e}", p.display()))
    };
    let partial = run::rejects_partial(path);
    let file = std::fs::File::create(&partial).map_err(|e| io("create", &partial, e))?;
    let mut out = csv::Writer::from_writer(std::io::BufWriter::new(file));
    out.write_record(["key", "reason"])
        .map_err(|e| io("write", &partial, e.into()))?;
    let (mut after, mut written) = (0_i64, 0_i64);
    loop {
        let page = run::store::rejects_after(conn, run_id, after, 10_000).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.0;
        for (_, key, reason) in &page {
            out.write_record([key, reason])
                .map_err(|e| io("write", &partial, e.into()))?;
            written += 1;
        }
    }
    out.flush().map_err(|e| io("write", &partial, e))?;
    drop(out);
    std::fs::rename(&partial, path).map_err(|e| io("write", path, e))?;
    Ok(written)
}

async fn dry_run(
    global: &GlobalOpts,
    settings: &Settings,
    job: &dyn DynJob,
    args: &ParsedArgs,
    opts: &Options,
    cmd: &RunCmd,
) -> Result<()> {
    let report = with_conn(global, settings, async |conn| {
        Ok(run::dry_run(conn, job, args, opts, cmd.dry_run_batches).await?)
    })
    .await?;
    if cmd.json {
        line(&serde_json::to_string(&report)?);
        return Ok(());
    }
    line(&format!(
        "dry run of {}: {} batch(es) of up to {} rows from {}, each rolled back; nothing was written",
        report.job,
        report.batches.len(),
        cmd.pace.batch_size,
        report.from
    ));
    for (i, b) in report.batches.iter().enumerate() {
        line(&format!(
            "  batch {}: {} rows, {} would change, {} rejected, {} ms, up to {}",
            i + 1,
            b.rows,
            b.changed,
            b.rejected,
            b.ms,
            b.position
        ));
    }
    if report.batches.is_empty() {
        line("  no rows to process: a run would finish at once");
    }
    match (report.total, report.projected_ms) {
        (Some(total), Some(ms)) => line(&format!(
            "{total} rows to process; at this pace about {} in batches (without waits, rate limits or throttles)",
            human(Duration::from_millis(ms))
        )),
        (Some(total), None) => line(&format!("{total} rows to process")),
        _ => {}
    }
    for w in &report.warnings {
        line(&format!("warning: {w}"));
    }
    Ok(())
}

/// `2h 5m`, `3m 20s`, `4.2s`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_string()).collect()
    }

    #[test]
    fn the_resume_command_is_the_run_as_it_was() {
        let argv = args(&[
            "--env",
            "staging",
            "run",
            "backfill_emails",
            "--rate",
            "10000",
            "--sleep",
            "20ms",
            "--restart",
            "--max-active",
            "8",
            "--replica",
            "postgres://u:secret@r/db",
            "--until=05:00",
            "--workers",
            "2",
            "--probe",
            "SELECT 1 FROM users LIMIT 1",
            "--probe-max",
            "50ms",
            "--arg",
            "older_than=30d",
            "--arg",
            "endpoint=http://svc:s3cret@h/v",
        ]);
        assert_eq!(
            resume_command_from(&argv, 5000, false),
            "datamig --env staging run backfill_emails --batch 5000 --rate 10000 --sleep 20ms --max-active 8 \
             --replica postgres://u:***@r/db --until=05:00 --workers 2 --probe 'SELECT 1 FROM users LIMIT 1' \
             --probe-max 50ms --arg older_than=30d --arg endpoint=http://svc:***@h/v"
        );
        let argv = args(&[
            "--database-url=postgres://a:pw@h/d",
            "run",
            "j",
            "--batch",
            "7",
            "--dry-run",
        ]);
        assert_eq!(
            resume_command_from(&argv, 7, true),
            "datamig run j --batch 7 (with the same --database-url)"
        );
    }
}
