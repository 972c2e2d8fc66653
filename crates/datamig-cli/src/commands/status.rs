//! `datamig status [<job>] [--json]`: runs with state, progress, rate, cursor, times.

use std::time::Duration;

use anyhow::Result;
use datamig_core::run::{partition, store, CheckResult, RunRecord, RunState};
use serde_json::json;

use super::{settings, with_conn};
use crate::opt::GlobalOpts;
use crate::output::line;

/// A run whose last checkpoint is older than this is probably not running any more.
const STALE_SECS: i64 = 120;

fn age_secs(timestamp: &str) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(timestamp, "%Y-%m-%dT%H:%M:%SZ").ok()?;
    Some((chrono::Utc::now().naive_utc() - t).num_seconds())
}

/// The run's state as a user needs it: an unfinished run says whether a
/// process works on it (`at_work`: who, as the job lock or the partitions'
/// leases say), and how to go on when none does.
fn state_text(r: &RunRecord, at_work: Option<&Option<String>>) -> String {
    match (r.state, at_work) {
        (RunState::Running, Some(None)) => format!(
            "running, but no process works on it (it was killed or lost its connection); `datamig run {}` \
             resumes it",
            r.job
        ),
        (RunState::Running, Some(Some(who))) => format!("running, by {who}"),
        (RunState::Paused, Some(Some(who))) => format!("paused, its process waiting ({who})"),
        (RunState::Paused, Some(None)) => format!(
            "paused, with no process waiting: `datamig resume {}` releases it, then `datamig run {}` resumes it",
            r.job, r.job
        ),
        (RunState::Running, None) => match age_secs(&r.updated_at) {
            Some(age) if age > STALE_SECS => format!(
                "running? (no checkpoint for {age}s: the process may be gone; running the job again resumes it)"
            ),
            _ => "running".into(),
        },
        (state, _) => state.to_string(),
    }
}

/// The first word of a state's text, for the table.
fn short_state(text: &str) -> &str {
    text.split([' ', ',']).next().unwrap_or_default()
}

fn percent(r: &RunRecord) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)] // a percentage for humans
    r.total_rows
        .filter(|t| *t > 0)
        .map(|t| r.rows_done as f64 * 100.0 / t as f64)
}

/// Rows a second over `ms`.
fn per_second(rows: i64, ms: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // a rate for humans
    if ms > 0 {
        rows as f64 * 1000.0 / ms as f64
    } else {
        0.0
    }
}

/// The run's speed as its summary has it: over the time its processes spent
/// on it, waits (throttles, the rate limit, pauses, `--sleep`) included.
fn rate(r: &RunRecord) -> f64 {
    per_second(r.rows_done, r.elapsed_ms)
}

/// The cursor as a user reads it: `4180000`, `(eu, 17)`.
fn position(r: &RunRecord) -> String {
    let values = r
        .position
        .as_deref()
        .and_then(|p| serde_json::from_str::<Vec<serde_json::Value>>(p).ok());
    match values.as_deref() {
        None => "-".into(),
        Some([one]) => one.as_str().map_or_else(|| one.to_string(), str::to_string),
        Some(many) => format!(
            "({})",
            many.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// When a batch committed, as UTC text.
fn at_text(at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms).map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

pub async fn run(
    global: &GlobalOpts,
    registry: &datamig_core::job::Registry,
    job: Option<&str>,
    json: bool,
    limit: i64,
    batches: Option<i64>,
) -> Result<()> {
    if batches.is_some() && job.is_none() {
        return Err(datamig_core::Error::Usage(
            "--batches shows one run's batches: name the job, as in `datamig status <job> --batches`".into(),
        )
        .into());
    }
    if let Some(name) = job {
        // An unknown job is refused as `run` refuses it (a typo said "no runs yet").
        super::run::find(registry, name)?;
    }
    let settings = settings(global)?;
    with_conn(global, &settings, async |conn| {
        let runs = store::list(conn, job, limit).await?;
        // Whether a process works on each job's newest unfinished run.
        let mut at_work = std::collections::HashMap::new();
        for r in &runs {
            if matches!(r.state, RunState::Running | RunState::Paused) && !at_work.contains_key(&r.job) {
                at_work.insert(r.job.clone(), (r.id, datamig_core::run::at_work(conn, &r.job, r).await?));
            }
        }
        let working = |r: &RunRecord| at_work.get(&r.job).filter(|(id, _)| *id == r.id).map(|(_, w)| w);
        let batch_ms = match runs.first() {
            Some(r) if job.is_some() => store::batch_ms(conn, r.id).await?,
            _ => None,
        };
        let history = match (batches, runs.first()) {
            (Some(n), Some(r)) => store::batches(conn, r.id, n).await?,
            _ => Vec::new(),
        };
        // A partitioned run's partitions: where each is, and who works on it.
        let parts = match (job, runs.first()) {
            (Some(_), Some(r)) => partition::list(conn, r.id).await?,
            _ => Vec::new(),
        };
        if json {
            let mut items: Vec<serde_json::Value> = runs
                .iter()
                .map(|r| {
                    json!({
                        "id": r.id, "number": r.number, "job": r.job, "args": serde_json::from_str::<serde_json::Value>(&datamig_core::config::hide_passwords(&r.args)).unwrap_or_default(),
                        "state": r.state.as_str(), "rows_done": r.rows_done, "total_rows": r.total_rows,
                        "percent": percent(r), "rows_changed": r.rows_changed, "rows_rejected": r.rows_rejected,
                        "batches_done": r.batches_done, "batch_size": r.batch_size, "rows_per_second": rate(r),
                        "state_text": state_text(r, working(r)),
                        "at_work": working(r).cloned(),
                        "elapsed_ms": r.elapsed_ms, "max_batch_ms": r.max_batch_ms, "bookkeeping_ms": r.bookkeeping_ms,
                        "position": r.position.as_deref().and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok()),
                        "started_at": r.started_at, "updated_at": r.updated_at, "finished_at": r.finished_at,
                        "owner": r.owner, "last_error": r.last_error,
                        "request": r.request.map(|q| q.as_str()), "request_by": r.request_by,
                        "verification": r.verification.as_deref().and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok()),
                    })
                })
                .collect();
            if let (Some(ms), Some(first)) = (batch_ms, items.first_mut()) {
                // Inside its batches only: no waits, no time between batches.
                first["batch_ms"] = ms.into();
                first["rows_per_second_in_batches"] = per_second(runs[0].rows_done, ms).into();
            }
            if let (Some(_), Some(first)) = (batches, items.first_mut()) {
                first["batches"] = serde_json::to_value(&history)?;
            }
            if let (false, Some(first)) = (parts.is_empty(), items.first_mut()) {
                first["partitions"] = serde_json::to_value(&parts)?;
            }
            line(&serde_json::to_string_pretty(&items)?);
            return Ok(());
        }
        if runs.is_empty() {
            line(&match job {
                Some(j) => format!("no runs of {j} yet"),
                None => "no runs yet".to_string(),
            });
            return Ok(());
        }
        line(&format!(
            "{:>5}  {:<24}  {:<11}  {:>7}  {:>12}  {:>9}  {:<14}  {:<20}  LAST ERROR",
            "RUN", "JOB", "STATE", "DONE", "ROWS", "ROWS/S", "AT", "UPDATED"
        ));
        for r in &runs {
            let state = state_text(r, working(r));
            let short_state = short_state(&state);
            line(&format!(
                "{:>5}  {:<24}  {:<11}  {:>7}  {:>12}  {:>9.0}  {:<14}  {:<20}  {}",
                r.number,
                r.job,
                short_state,
                percent(r).map_or("-".into(), |p| format!("{p:.1}%")),
                r.rows_done,
                rate(r),
                position(r),
                r.updated_at,
                r.last_error.as_deref().unwrap_or("").lines().next().unwrap_or("")
            ));
        }
        if let (Some(_), Some(r)) = (job, runs.first()) {
            line("");
            line(&format!("run {}: {}", r.number, state_text(r, working(r))));
            line(&format!("  arguments   {}", datamig_core::config::hide_passwords(&r.args)));
            line(&format!("  started     {} by {}", r.started_at, r.owner.as_deref().unwrap_or("?")));
            if let Some(f) = &r.finished_at {
                line(&format!("  finished    {f}"));
            }
            line(&format!(
                "  rows        {} done of {}, {} changed, {} rejected, {} batches of {}",
                r.rows_done,
                r.total_rows.map_or("?".into(), |t| t.to_string()),
                r.rows_changed,
                r.rows_rejected,
                r.batches_done,
                r.batch_size
            ));
            let mut speed = format!(
                "  speed       {:.0} rows/s over {:.1}s (waits and pauses included)",
                rate(r),
                Duration::from_millis(u64::try_from(r.elapsed_ms).unwrap_or(0)).as_secs_f64()
            );
            if let Some(ms) = batch_ms {
                speed.push_str(&format!("; {:.0} rows/s inside its batches ({:.1}s)", per_second(r.rows_done, ms), Duration::from_millis(u64::try_from(ms).unwrap_or(0)).as_secs_f64()));
            }
            line(&speed);
            if let Some(rate) = &r.rate {
                line(&format!("  rate limit  {rate} (the run's own: every process on it keeps to it)"));
            }
            if !parts.is_empty() {
                let done = parts.iter().filter(|p| p.done).count();
                let at_work: Vec<&partition::PartitionRecord> = parts.iter().filter(|p| !p.done && p.leased).collect();
                line(&format!(
                    "  partitions  {done} of {} done, {} at work{}",
                    parts.len(),
                    at_work.len(),
                    if at_work.is_empty() { String::new() } else { ":" .into() }
                ));
                for p in at_work {
                    line(&format!(
                        "    {:>4}  ({}, {}]  at {}  {} rows  by {}",
                        p.part,
                        p.lo.map_or("start".into(), |k| k.to_string()),
                        p.hi.map_or("end".into(), |k| k.to_string()),
                        p.position.map_or("-".into(), |k| k.to_string()),
                        p.rows_done,
                        p.owner.as_deref().unwrap_or("?")
                    ));
                }
            }
            if let Some(e) = &r.last_error {
                line(&format!("  last error  {e}"));
            }
            if let Some(request) = r.request {
                line(&format!(
                    "  asked to {} by {}; its process acts on it at the next batch boundary",
                    request.as_str(),
                    r.request_by.as_deref().unwrap_or("?")
                ));
            }
            if let Some(checks) = r.verification.as_deref().and_then(|v| serde_json::from_str::<Vec<CheckResult>>(v).ok()) {
                if r.state == RunState::Completed {
                    super::run::print_checks(&checks);
                } else {
                    // Until the run completes these are its baseline, not a verdict.
                    line("checks before the run (its baseline; they are run again at its end):");
                    for c in &checks {
                        line(&format!("  {:<30}  {:>10}  expect {}", c.name, c.before.map_or("-".into(), |v| v.to_string()), c.expect));
                    }
                }
            }
            if batches.is_some() {
                line(&format!("last {} batches of run {}:", history.len(), r.number));
                line(&format!(
                    "  {:>9}  {:>7}  {:>8}  {:>8}  {:>8}  {:>8}  {:>10}  {:>7}  COMMITTED",
                    "PARTITION", "BATCH", "ROWS", "CHANGED", "REJECTED", "MS", "WAITED MS", "RETRIES"
                ));
                for b in &history {
                    line(&format!(
                        "  {:>9}  {:>7}  {:>8}  {:>8}  {:>8}  {:>8}  {:>10}  {:>7}  {}",
                        b.partition.map_or("-".into(), |p| p.to_string()),
                        b.batch, b.rows, b.changed, b.rejected, b.ms, b.waited_ms, b.retries, at_text(b.at_ms)
                    ));
                }
            }
            let rejects = store::rejects(conn, r.id, 20).await?;
            if !rejects.is_empty() {
                line(&format!("rejected rows (first {} of {}):", rejects.len(), r.rows_rejected));
                for (key, reason) in rejects {
                    line(&format!("  {key}: {reason}"));
                }
            }
        }
        Ok(())
    })
    .await
}
