//! A dry run: the first batches of a job, each in a transaction that is
//! rolled back, with what they would change, how long they took, the run's
//! projected time, and the batch queries that read the whole table.

use serde::Serialize;

use super::{batch, cursor, shape, store, Options};
use crate::db::{db_message, Conn};
use crate::job::{DynJob, ParsedArgs, Plan, Source};
use crate::{Error, Result};

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
    let plan = super::plan(conn, job, args)?;
    super::check_schema(conn, job, &plan).await?;
    let lock = super::job_lock(job);
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
    let limits = batch::Limits::of(&opts.timeouts);
    limits.apply(conn).await?;
    let prep = batch::Prepared::new(conn, plan).await?;
    let arity = shape::arity(&plan.source);
    // Where the next real run would start.
    let mut cursor = match store::latest(conn, job.name()).await? {
        Some(r) if r.state.is_resumable() && r.args == args.canonical && !opts.restart => r
            .position
            .as_deref()
            .and_then(|p| cursor::decode(p, arity).ok()),
        _ => None,
    };
    let from = cursor.as_deref().map_or("the start".to_string(), |c| {
        format!("{} {}", shape::key_name(&plan.source), cursor::display(c))
    });
    let total =
        shape::remaining(conn, plan, &prep, opts.reporting.count, cursor.as_deref()).await?;
    let rows = opts.pace.rows();
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
