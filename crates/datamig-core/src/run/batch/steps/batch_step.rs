//! A batch step ([`crate::job::BatchStep`]): the batch's rows are read
//! without locks and the step's outside work done before the transaction
//! ([`fetch`], on the reader connection ahead of the batch, or on the batch's
//! own before its BEGIN); inside it the rows are locked and checked to be as
//! read ([`unchanged`]: the same guard values a transform's write compares),
//! then the step writes on the batch's connection.
//!
//! ```text
//! fetch:   read rows · outside calls ─────────────┐  (no transaction, no locks)
//! batch:                                          BEGIN · lock + compare · write · checkpoint · COMMIT · after_commit
//! ```

use std::any::Any;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sha2::Digest;

use super::super::read::{fetch_rows, read_rows, Prepared, Read};
use super::super::{failed, Scanned, Size, Work};
use super::{table_only, to_i64, unsupported, Acted, Cx, Did, StepKind};
use crate::db::{Conn, Row, Value};
use crate::job::{AnyCustomSource, Batch, BatchTx, ErasedStep, Source, SourceGuard};
use crate::run::cursor;
use crate::run::store::{self, BatchCounts};
use crate::{Error, Result};

/// `Step::Batch`.
pub(crate) struct BatchStepKind<'a>(pub &'a dyn ErasedStep);

const NAME: &str = "a batch step";

impl StepKind for BatchStepKind<'_> {
    fn refuses(&self, source: &Source) -> Option<String> {
        match source {
            Source::Query { .. } | Source::Custom(_) => None,
            _ => table_only(source),
        }
    }

    fn batch<'a>(&'a self, cx: Cx<'a>) -> BoxFuture<'a, Result<Did>> {
        Box::pin(async move {
            let (conn, prep, run_id, dry) = (cx.conn, cx.prep, cx.run_id, cx.dry);
            match cx.work {
                Work::Fetched(fetched) => {
                    Ok(write(self.0, conn, prep, run_id, dry, fetched, true).await?)
                }
                // Rows that kept changing: read under row locks, and the
                // outside work done inside the transaction.
                Work::Serial { after, .. } => {
                    let batch = (run_id, prep.part);
                    let Some(fetched) =
                        fetch(conn, prep, self.0, after, cx.size, batch, true).await?
                    else {
                        return Ok(Did::Nothing);
                    };
                    match write(self.0, conn, prep, run_id, dry, &fetched, false).await? {
                        Did::Acted(mut acted) => {
                            acted.locked = Some(Box::new(fetched));
                            Ok(Did::Acted(acted))
                        }
                        other => Ok(other),
                    }
                }
                Work::Guarded(_) | Work::Bounded { .. } => Err(unsupported(NAME)),
            }
        })
    }
}

/// The step's writes of a batch, and its rejects. Rows read before the
/// transaction (`guarded`) are checked: those the step updates by the
/// update's guard, the rest by locking and comparing them before the
/// checkpoint; `Did::Changed` if any is not as read.
async fn write(
    step: &dyn ErasedStep,
    conn: &mut Conn,
    prep: &Prepared,
    run_id: i64,
    dry: bool,
    fetched: &Fetched,
    guarded: bool,
) -> Result<Did> {
    let source = match (&prep.guard, guarded) {
        (Some(guard), true) => Some(SourceGuard {
            table: &prep.table,
            keys: &prep.keys,
            guard,
            rows: &fetched.guards,
            covered: vec![false; fetched.guards.len()],
            changed: false,
        }),
        _ => None,
    };
    let mut tx = BatchTx {
        conn,
        changed: None,
        rejects: Vec::new(),
        types: &prep.types,
        source,
    };
    if let Some(outside) = &fetched.outside {
        if let Err(e) = step.write(&fetched.batch, outside.as_ref(), &mut tx).await {
            // Whatever failed after a guarded update found its rows changed
            // was working from a stale read: the batch is done again.
            return match &tx.source {
                Some(source) if source.changed => Ok(Did::Changed),
                _ => Err(e.0),
            };
        }
    }
    let BatchTx {
        conn,
        changed,
        rejects,
        source,
        ..
    } = tx;
    if let Some(source) = &source {
        if source.changed || !unchanged(conn, prep, fetched, &source.covered).await? {
            return Ok(Did::Changed);
        }
    }
    if !rejects.is_empty() && !dry {
        store::reject(conn, run_id, &rejects)
            .await
            .map_err(|e| failed("recording rejected rows failed", &e))?;
    }
    let changed = changed.map_or_else(
        || to_i64(fetched.batch.len().saturating_sub(rejects.len())),
        to_i64,
    );
    Ok(Did::Acted(Acted {
        cursor: fetched.cursor.clone(),
        counts: BatchCounts {
            rows: fetched.scanned.matched,
            changed,
            rejected: to_i64(rejects.len()),
            elapsed_ms: 0,
        },
        scanned: fetched.scanned,
        file_offset: None,
        locked: None,
    }))
}

/// A batch step's batch, read and its outside work done, before its transaction.
pub(crate) struct Fetched {
    /// Where the batch starts (the checkpoint before it) and ends.
    pub(crate) after: Option<Vec<Value>>,
    pub(crate) cursor: Vec<Value>,
    pub(crate) scanned: Scanned,
    /// What the step sees.
    pub(crate) batch: Batch,
    /// Each row's key and the values that tell whether it changed since.
    pub(crate) guards: Vec<Row>,
    /// What the step's outside phase found; `None` for a batch without rows
    /// (its keys matched no row of the filter), which only moves the checkpoint.
    pub(crate) outside: Option<Box<dyn Any + Send + Sync>>,
}

impl Fetched {
    /// Runs the step's hook after the batch committed.
    pub(crate) async fn after_commit(&self, step: &dyn ErasedStep) {
        if let Some(outside) = &self.outside {
            step.after_commit(&self.batch, outside.as_ref()).await;
        }
    }
}

/// Reads the batch of `size` rows after `after` — without row locks, with
/// each row's guard values, or (`locked`) under row locks in the batch's
/// transaction — and does the step's outside work on them.
pub(crate) async fn fetch(
    conn: &mut Conn,
    prep: &Prepared,
    step: &dyn ErasedStep,
    after: Option<&[Value]>,
    size: Size,
    (run_id, part): (i64, i64),
    locked: bool,
) -> Result<Option<Fetched>> {
    let read = match &prep.custom {
        Some(source) => page(source, after, size).await?,
        None => read_rows(conn, prep, after, None, size, !locked).await?,
    };
    let Some(Read {
        rows,
        cursor,
        scanned,
        ..
    }) = read
    else {
        return Ok(None);
    };
    let keys = prep.keys.len();
    let width = keys + prep.columns.len();
    let mut values = Vec::with_capacity(rows.len());
    let mut guards = Vec::with_capacity(rows.len());
    for mut row in rows {
        let mut guard = row.split_off(width);
        guard.splice(0..0, row[..keys].iter().cloned());
        guards.push(guard);
        values.push(row);
    }
    let names: Arc<[String]> = prep.keys.iter().chain(&prep.columns).cloned().collect();
    let batch = Batch {
        names,
        key_len: keys,
        rows: values,
        idempotency_key: idempotency_key(run_id, part, after),
    };
    let outside = if batch.is_empty() {
        None
    } else {
        let limit = step.outside_timeout();
        match tokio::time::timeout(limit, step.outside(&batch)).await {
            Ok(Ok(found)) => Some(found),
            Ok(Err(e)) => return Err(e.0),
            Err(_) => {
                return Err(Error::Transient {
                    message: format!(
                        "the batch step's outside work took longer than {:.1}s",
                        limit.as_secs_f64()
                    ),
                    kind: crate::db::Transient::Outside,
                })
            }
        }
    };
    Ok(Some(Fetched {
        after: after.map(<[Value]>::to_vec),
        cursor,
        scanned,
        batch,
        guards,
        outside,
    }))
}

/// The page of a custom source after `after` (the cursor's JSON text), as a
/// batch's rows: `None` once a page has none.
async fn page(
    source: &AnyCustomSource,
    after: Option<&[Value]>,
    size: Size,
) -> Result<Option<Read>> {
    let after = after.and_then(|a| a.first()).and_then(Value::as_str);
    let limit = usize::try_from(size.rows).unwrap_or(1).max(1);
    let timeout = source.0.page_timeout();
    let page = match tokio::time::timeout(timeout, source.0.page(after, limit)).await {
        Ok(page) => page?,
        Err(_) => {
            return Err(Error::Transient {
                message: format!(
                    "the source's page took longer than {:.1}s",
                    timeout.as_secs_f64()
                ),
                kind: crate::db::Transient::Outside,
            })
        }
    };
    if page.rows.is_empty() {
        return Ok(None);
    }
    let width = source.0.key().len() + source.0.columns().len();
    if let Some(row) = page.rows.iter().find(|r| r.len() != width) {
        return Err(Error::JobFailed(format!(
            "the job's source gave a row of {} values where its key and columns name {width}: {row:?}",
            row.len()
        )));
    }
    let matched = to_i64(page.rows.len());
    Ok(Some(Read {
        rows: page.rows,
        cursor: vec![Value::Text(page.cursor)],
        scanned: Scanned {
            matched,
            ran_out: None,
        },
        lo: Value::Null,
        hi: Value::Null,
    }))
}

/// `<run>-<partition>-<16 hex digits of the batch's start>`: the same for
/// every attempt at a batch.
fn idempotency_key(run_id: i64, part: i64, after: Option<&[Value]>) -> String {
    let start = after.map_or_else(
        || "start".to_string(),
        |a| cursor::encode(a).unwrap_or_else(|_| cursor::display(a)),
    );
    let digest = sha2::Sha256::digest(start.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{run_id}-{part}-{hex}")
}

/// Rows left unwritten that are locked and compared by their keys rather
/// than over the batch's whole range.
const MAX_BY_KEY: usize = 1000;

/// Locks the batch's rows that no guarded update wrote (those not in
/// `covered`) and tells whether the rows the filter matches are the rows
/// read, each unchanged since.
async fn unchanged(
    conn: &mut Conn,
    prep: &Prepared,
    fetched: &Fetched,
    covered: &[bool],
) -> Result<bool> {
    let n_keys = prep.keys.len();
    let open: Vec<&Row> = fetched
        .guards
        .iter()
        .zip(covered)
        .filter(|(_, &c)| !c)
        .map(|(g, _)| g)
        .collect();
    if open.is_empty() {
        // Every row read was written, each as it was read: as for a
        // transform, rows that came into the range since are not the batch's.
        return Ok(true);
    }
    let mut cols: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
    cols.extend(prep.guard_select.iter().cloned());
    let mut params = Vec::new();
    if let Some(f) = &prep.filter {
        cols.push(format!("CASE WHEN ({}) THEN 1 ELSE 0 END", f.sql));
        params.extend(f.params.iter().cloned());
    }
    // A few rows left (those the step rejected or skipped): by their keys.
    // Otherwise, or for a composite key, the batch's whole key range.
    let by_key = prep.key_marks.len() == 1 && open.len() <= MAX_BY_KEY && covered.contains(&true);
    let cond = match prep.key_marks.as_slice() {
        [mark] if by_key => {
            params.extend(open.iter().map(|g| g[0].clone()));
            let list = vec![mark.as_str(); open.len()].join(", ");
            format!("{} IN ({list})", conn.quote_ident(&prep.keys[0]))
        }
        _ => {
            let (cond, key_params) =
                prep.conditions(conn, false, fetched.after.as_deref(), Some(&fetched.cursor));
            params.extend(key_params);
            cond
        }
    };
    let sql = format!(
        "SELECT {} FROM {} WHERE {cond} ORDER BY {}{}",
        cols.join(", "),
        conn.quote_ident(&prep.table),
        prep.key_list(conn),
        conn.for_update()
    );
    let mut now = fetch_rows(conn, &sql, &params).await?;
    if prep.filter.is_some() {
        now.retain_mut(|row| row.pop().and_then(|m| m.as_i64()) == Some(1));
    }
    if !by_key {
        // Over the range: the rows a guarded update wrote were as read (the
        // guard said so); their guard values now are this transaction's own.
        let written: std::collections::HashSet<String> = fetched
            .guards
            .iter()
            .zip(covered)
            .filter(|(_, &c)| c)
            .map(|(g, _)| format!("{:?}", &g[..n_keys]))
            .collect();
        now.retain(|row| !written.contains(&format!("{:?}", &row[..n_keys])));
    }
    Ok(now.len() == open.len() && now.iter().zip(&open).all(|(a, b)| a == *b))
}
