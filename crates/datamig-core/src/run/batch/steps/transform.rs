//! A Rust transform: the batch's rows read (under row locks, or ahead on the
//! reader connection and guarded), transformed, and written back in one
//! statement; rows the transform rejects are recorded.

use futures_util::future::BoxFuture;
use rayon::prelude::*;

use super::super::read::{read_rows, Prepared, Read};
use super::super::{failed, Size, Work};
use super::{table_only, to_i64, unsupported, Acted, Cx, Did, StepKind};
use crate::db::{BulkUpdate, Conn, Row, Value};
use crate::job::{Outcome, Source, SourceRow, Transform};
use crate::run::batch::Scanned;
use crate::run::cursor;
use crate::run::store::{self, BatchCounts};
use crate::{Error, Result};

/// `Step::Transform`.
pub(crate) struct TransformStep<'a>(pub &'a dyn Transform);

impl StepKind for TransformStep<'_> {
    fn refuses(&self, source: &Source) -> Option<String> {
        table_only(source)
    }

    fn batch<'a>(&'a self, cx: Cx<'a>) -> BoxFuture<'a, Result<Did>> {
        Box::pin(async move {
            let Cx {
                conn,
                prep,
                run_id,
                work,
                size,
                dry,
                ..
            } = cx;
            match work {
                // Rows read ahead, transformed there: written if unchanged since.
                Work::Guarded(applied) => {
                    if !write(conn, prep, run_id, applied, true, dry).await? {
                        return Ok(Did::Changed);
                    }
                    Ok(Did::Acted(Acted {
                        cursor: applied.cursor.clone(),
                        counts: applied.counts.clone(),
                        scanned: applied.scanned,
                        file_offset: None,
                        locked: None,
                    }))
                }
                Work::Serial { after, upto } => {
                    Ok(batch(conn, prep, run_id, self.0, (after, upto), size, dry)
                        .await?
                        .into())
                }
                Work::Bounded { .. } | Work::Fetched(_) => Err(unsupported("a transform step")),
            }
        })
    }
}

/// The batch after `after` (up to `upto`, when redoing a range), read under
/// row locks, transformed and written.
#[allow(clippy::too_many_arguments)]
async fn batch(
    conn: &mut Conn,
    prep: &Prepared,
    run_id: i64,
    t: &dyn Transform,
    (after, upto): (Option<&[Value]>, Option<&[Value]>),
    size: Size,
    dry: bool,
) -> Result<Option<Acted>> {
    let Some(read) = read_rows(conn, prep, after, upto, size, false).await? else {
        return Ok(None);
    };
    let applied = apply(t, prep, read)?;
    write(conn, prep, run_id, &applied, false, dry).await?;
    Ok(Some(Acted {
        cursor: applied.cursor,
        counts: applied.counts,
        scanned: applied.scanned,
        file_offset: None,
        locked: None,
    }))
}

/// A transform's result for one batch, ready to write.
pub(crate) struct Applied {
    /// Keys, new values, then (read ahead) guard values or the row's locator.
    pub(crate) updates: Vec<Row>,
    pub(crate) rejects: Vec<(String, String)>,
    pub(crate) cursor: Vec<Value>,
    pub(crate) counts: BatchCounts,
    pub(crate) scanned: Scanned,
    pub(crate) lo: Value,
    pub(crate) hi: Value,
}

/// Runs the transform over a batch's rows (over all cores when it is CPU-heavy).
pub(crate) fn apply(transform: &dyn Transform, prep: &Prepared, read: Read) -> Result<Applied> {
    let n_keys = prep.keys.len();
    let names: Vec<String> = prep.keys.iter().chain(&prep.columns).cloned().collect();
    let width = names.len();
    let apply = |row: &Row| {
        transform.apply(&SourceRow {
            names: &names,
            values: &row[..width],
            key_len: n_keys,
        })
    };
    let outcomes: Vec<Outcome> = if transform.cpu_heavy() && prep.spread {
        tokio::task::block_in_place(|| read.rows.par_iter().map(apply).collect())
    } else if transform.cpu_heavy() {
        tokio::task::block_in_place(|| read.rows.iter().map(apply).collect())
    } else {
        read.rows.iter().map(apply).collect()
    };

    let writes = transform.writes().len();
    let mut updates = Vec::with_capacity(outcomes.len());
    let mut rejects = Vec::new();
    for (row, outcome) in read.rows.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Update(values) => {
                if values.len() != writes {
                    return Err(Error::JobFailed(format!(
                        "the transform returned {} value(s) for {writes} written column(s) at key {}",
                        values.len(),
                        cursor::display(&row[..n_keys])
                    )));
                }
                // Keys, the new values in place of the source columns, then the
                // guard values a read ahead added: the row's own vector, reused.
                let mut full = row;
                full.splice(n_keys..width, values);
                updates.push(full);
            }
            Outcome::Skip => {}
            // A row rejected from a read ahead may have changed since; its reason
            // describes the row as it was read.
            Outcome::Reject(reason) => rejects.push((cursor::display(&row[..n_keys]), reason)),
        }
    }
    let counts = BatchCounts {
        rows: read.scanned.matched,
        changed: to_i64(updates.len()),
        rejected: to_i64(rejects.len()),
        elapsed_ms: 0,
    };
    Ok(Applied {
        updates,
        rejects,
        cursor: read.cursor,
        counts,
        scanned: read.scanned,
        lo: read.lo,
        hi: read.hi,
    })
}

/// Writes a transform's result and its rejects. `false` when guarded and a row
/// was not as read (the caller rolls back).
pub(crate) async fn write(
    conn: &mut Conn,
    prep: &Prepared,
    run_id: i64,
    applied: &Applied,
    guarded: bool,
    dry: bool,
) -> Result<bool> {
    if let (Some(bulk), false) = (&prep.bulk, applied.updates.is_empty()) {
        let spec = BulkUpdate {
            lo: applied.lo.clone(),
            hi: applied.hi.clone(),
            guard: if guarded { bulk.guard.clone() } else { None },
            // Rows read ahead carry no locator: it holds only within the
            // transaction that read it.
            locator: if guarded { None } else { bulk.locator.clone() },
            ..bulk.clone()
        };
        let written = conn
            .bulk_update(&spec, &applied.updates)
            .await
            .map_err(|e| failed("writing the batch failed", &e))?;
        if guarded && written != u64::try_from(applied.updates.len()).unwrap_or(u64::MAX) {
            return Ok(false);
        }
    }
    if !applied.rejects.is_empty() && !dry {
        store::reject(conn, run_id, &applied.rejects)
            .await
            .map_err(|e| failed("recording rejected rows failed", &e))?;
    }
    Ok(true)
}
