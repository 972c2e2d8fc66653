//! One batch's transaction: BEGIN (or the step's statement with it), the
//! step's body, the checkpoint (with the COMMIT in one round trip where the
//! driver can), COMMIT; rolled back on any error, and for a dry run.

use std::time::{Duration, Instant};

use super::read::Prepared;
use super::steps::archive::Archive;
use super::steps::{self, Acted, Cx, Did, StepKind};
use super::{Batch, Done, Size, Work};
use crate::db::{db_message, Conn, Value};
use crate::job::Plan;
use crate::run::cursor;
use crate::run::partition::{self, Claim};
use crate::run::store;
use crate::{Error, Result};

/// What a batch's transaction works with, besides its work and size.
pub(crate) struct Txn<'a> {
    pub plan: &'a Plan,
    pub prep: &'a Prepared,
    pub run_id: i64,
    /// When the run's previous batch committed: the batch's checkpoint adds
    /// the time since to the run's time.
    pub since: Instant,
    /// A dry run: the batch does its work and rolls back, leaving no checkpoint.
    pub dry: bool,
    pub archive: Option<&'a Archive>,
    /// The partition the batch checkpoints into, in a partitioned run.
    pub claim: Option<&'a Claim>,
}

/// Runs one batch's transaction.
pub(crate) async fn run(conn: &mut Conn, t: &Txn<'_>, work: Work<'_>, size: Size) -> Result<Batch> {
    let Txn {
        plan,
        run_id,
        dry,
        claim,
        ..
    } = *t;
    let started = Instant::now();
    let step = steps::of(&plan.step);
    // A batch whose first statement is its write sends it with its BEGIN.
    let opening = conn.begins_with_statement() && step.opens_with_statement(&plan.source, &work);
    if !opening {
        conn.begin()
            .await
            .map_err(|e| failed("cannot begin the batch", &e))?;
    }
    crate::crash::reached(crate::crash::Point::BeforeWrite);
    let result = body(conn, t, step.as_ref(), work, size, opening).await;
    match result {
        Ok(Batch::Done(mut done)) if dry => {
            conn.rollback()
                .await
                .map_err(|e| failed("the dry run's rollback failed", &e))?;
            done.transaction = started.elapsed();
            Ok(Batch::Done(done))
        }
        Ok(Batch::Done(mut done)) => {
            crate::crash::reached(crate::crash::Point::AfterWrite);
            let mut sent_with_commit = None;
            match done.commit_with.take() {
                None => conn
                    .commit()
                    .await
                    .map_err(|e| failed("the batch's commit failed", &e))?,
                Some(checkpoint) => {
                    let sent = Instant::now();
                    let moved = match conn.script_rows(&format!("{checkpoint}; COMMIT")).await {
                        Ok(moved) => moved,
                        Err(e) => {
                            let _ = conn.rollback().await;
                            return Err(if store::not_running(&e) {
                                no_longer_running(run_id)
                            } else if let (true, Some(claim)) = (partition::refused(&e), claim) {
                                partition::lost(claim)
                            } else {
                                failed("the checkpoint and commit failed", &e)
                            });
                        }
                    };
                    if moved != 1 && claim.is_some() {
                        return Err(Error::JobFailed(format!(
                            "a partition of run {run_id} is missing from datamig_partitions (deleted by hand?); \
                             its last batch committed without a checkpoint. Start over with --restart"
                        )));
                    }
                    if moved != 1 {
                        // Its row is gone: the batch committed with nothing to record it.
                        return Err(Error::JobFailed(format!(
                            "run {run_id} is missing from datamig_runs (deleted by hand?); its last batch \
                             committed without a checkpoint. Start over with --restart"
                        )));
                    }
                    sent_with_commit = Some(sent.elapsed());
                }
            }
            crate::crash::reached(crate::crash::Point::AfterCommit);
            done.transaction = started.elapsed();
            if let Some(spent) = sent_with_commit {
                // What the checkpoint adds to the COMMIT's round trip.
                done.bookkeeping = spent.saturating_sub(commit_floor(conn).await);
            }
            Ok(Batch::Done(done))
        }
        // Nothing to do: a batch that begins with its statement has not begun
        // (a ROLLBACK then would draw PostgreSQL's "no transaction in progress").
        Ok(other) if opening => Ok(other),
        Ok(other) => {
            let _ = conn.rollback().await;
            Ok(other)
        }
        Err(e) => {
            let _ = conn.rollback().await;
            match claim {
                Some(claim)
                    if !matches!(e, Error::Transient { .. } | Error::PartitionLost(_))
                        && partition::moved(conn, claim).await =>
                {
                    Err(partition::lost(claim))
                }
                _ => Err(e),
            }
        }
    }
}

fn no_longer_running(run_id: i64) -> Error {
    Error::JobFailed(format!(
        "run {run_id} is no longer running in datamig_runs (cancelled from elsewhere?); this batch was rolled back"
    ))
}

/// The round trip of a bare COMMIT on this connection, measured once (the
/// fastest of three empty transactions): what a checkpoint sent with the COMMIT
/// is counted against.
async fn commit_floor(conn: &mut Conn) -> Duration {
    static FLOOR: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    if let Some(floor) = FLOOR.get() {
        return *floor;
    }
    let mut floor = Duration::MAX;
    for _ in 0..3 {
        if conn.begin().await.is_err() {
            return Duration::ZERO;
        }
        let t = Instant::now();
        if conn.commit().await.is_err() {
            return Duration::ZERO;
        }
        floor = floor.min(t.elapsed());
    }
    *FLOOR.get_or_init(|| floor)
}

/// A batch's database error: [`Error::Transient`] when trying again can pass.
pub(crate) fn failed(what: &str, e: &sqlx::Error) -> Error {
    let message = format!("{what}: {}", db_message(e));
    match crate::db::Transient::of(e) {
        Some(kind) => Error::Transient { message, kind },
        None => Error::JobFailed(message),
    }
}

/// The batch's step and checkpoint, inside its transaction.
async fn body(
    conn: &mut Conn,
    t: &Txn<'_>,
    step: &dyn StepKind,
    work: Work<'_>,
    size: Size,
    opening: bool,
) -> Result<Batch> {
    let Txn {
        plan,
        prep,
        run_id,
        since,
        dry,
        archive,
        claim,
    } = *t;
    let cx = Cx {
        conn: &mut *conn,
        prep,
        source: &plan.source,
        run_id,
        work,
        size,
        archive,
        dry,
        opening,
    };
    let acted = match step.batch(cx).await? {
        Did::Acted(acted) => acted,
        Did::Nothing => return Ok(Batch::Empty),
        Did::Changed => return Ok(Batch::Changed),
    };
    let Acted {
        cursor,
        mut counts,
        scanned,
        file_offset,
        locked,
    } = acted;
    counts.elapsed_ms = i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX);
    let done = Done {
        cursor,
        counts,
        transaction: Duration::ZERO,
        bookkeeping: Duration::ZERO,
        scanned,
        commit_with: None,
        file_offset,
        locked,
    };
    if dry {
        return Ok(Batch::Done(done));
    }
    if let Some(claim) = claim {
        return partition_checkpoint(conn, claim, done).await;
    }
    let position = cursor::encode(&done.cursor).map_err(Error::JobFailed)?;
    let offset = done
        .file_offset
        .map(|o| i64::try_from(o).unwrap_or(i64::MAX));
    if let Some(sql) = store::checkpoint_text(conn, run_id, &position, &done.counts, offset) {
        return Ok(Batch::Done(Done {
            commit_with: Some(sql),
            ..done
        }));
    }
    let checkpoint_started = Instant::now();
    let moved = store::checkpoint(conn, run_id, &position, &done.counts, offset)
        .await
        .map_err(|e| failed("the checkpoint failed", &e))?;
    let bookkeeping = checkpoint_started.elapsed();
    if !moved {
        return Err(no_longer_running(run_id));
    }
    Ok(Batch::Done(Done {
        bookkeeping,
        ..done
    }))
}

/// The checkpoint of a partition's batch: sent with the COMMIT where the driver
/// can, or run here.
async fn partition_checkpoint(conn: &mut Conn, claim: &Claim, mut done: Done) -> Result<Batch> {
    let Some(position) = done.cursor.first().and_then(Value::as_i64) else {
        return Err(Error::JobFailed(format!(
            "a partitioned run's key must be one integer column; this batch ended at {}",
            cursor::display(&done.cursor)
        )));
    };
    if let Some(sql) = partition::checkpoint_text(conn, claim, position, &done.counts) {
        done.commit_with = Some(sql);
        return Ok(Batch::Done(done));
    }
    let started = Instant::now();
    let moved = partition::checkpoint(conn, claim, position, &done.counts)
        .await
        .map_err(|e| failed("the checkpoint failed", &e))?;
    done.bookkeeping = started.elapsed();
    if !moved {
        return Err(partition::lost(claim));
    }
    Ok(Batch::Done(done))
}
