//! One batch: read, transform, write, checkpoint, commit — in one transaction.
//!
//! Table sources are cut into chunks of the next `n` keys after the cursor
//! (`key > cursor ORDER BY key LIMIT n`: an index range, never OFFSET), and the
//! source filter is applied inside the chunk. So every batch costs the same
//! wherever the run is and whatever the planner believes about the filter (with
//! the filter in the paging query, stale statistics made PostgreSQL sort the
//! whole table for every batch). The checkpoint is written in the batch's own
//! transaction: a batch is either wholly done and counted, or not done at all.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::cursor;
use super::store::{self, BatchCounts};
use crate::db::{db_message, BulkUpdate, Conn, Value};
use crate::job::{Filter, Outcome, Plan, Source, SourceRow, Step, Transform};
use crate::{Error, Result};

/// What a batch did.
pub(crate) struct Done {
    pub cursor: Vec<Value>,
    pub counts: BatchCounts,
    /// BEGIN to the end of COMMIT: how long the batch held its locks.
    pub transaction: Duration,
    /// The checkpoint statement: datamig's own overhead in the batch.
    pub bookkeeping: Duration,
}

/// Per-run facts computed once: quoted names, the bulk-update shape.
pub(crate) struct Prepared {
    table: String,
    keys: Vec<String>,
    columns: Vec<String>,
    filter: Option<Filter>,
    bulk: Option<BulkUpdate>,
}

impl Prepared {
    pub async fn new(conn: &mut Conn, plan: &Plan) -> Result<Prepared> {
        let (table, keys, columns, filter) = match &plan.source {
            Source::Table {
                table,
                key,
                columns,
                filter,
            } => (table.clone(), key.clone(), columns.clone(), filter.clone()),
            Source::Range { .. } => Default::default(),
        };
        let bulk = match &plan.step {
            Step::Transform(t) => {
                let sets = t.writes();
                let all: Vec<String> = keys.iter().chain(&sets).cloned().collect();
                let types = conn.column_types(&table, &all).await.map_err(|e| {
                    Error::SchemaNotReady(format!("cannot use table {table}: {}", db_message(&e)))
                })?;
                Some(BulkUpdate {
                    table: table.clone(),
                    keys: keys.clone(),
                    sets,
                    types,
                    lo: Value::Null,
                    hi: Value::Null,
                })
            }
            _ => None,
        };
        Ok(Prepared {
            table,
            keys,
            columns,
            filter,
            bulk,
        })
    }

    /// Key range conditions `key > after AND key <= upto`, with the filter when asked.
    fn conditions(
        &self,
        conn: &Conn,
        with_filter: bool,
        after: Option<&[Value]>,
        upto: Option<&[Value]>,
    ) -> (String, Vec<Value>) {
        let mut parts = Vec::new();
        let mut params = Vec::new();
        if let (true, Some(f)) = (with_filter, &self.filter) {
            parts.push(format!("({})", f.sql));
            params.extend(f.params.iter().cloned());
        }
        for (bound, op) in [(after, ">"), (upto, "<=")] {
            if let Some(key) = bound {
                let (sql, order) = conn.compare_keys(&self.keys, op);
                parts.push(sql);
                params.extend(order.into_iter().map(|i| key[i].clone()));
            }
        }
        let sql = if parts.is_empty() {
            "1 = 1".to_string()
        } else {
            parts.join(" AND ")
        };
        (sql, params)
    }

    fn key_list(&self, conn: &Conn) -> String {
        self.keys
            .iter()
            .map(|k| conn.quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Keys left after `after` (all without it): the progress total, in rows visited.
    pub async fn count(&self, conn: &mut Conn, after: Option<&[Value]>) -> Result<i64> {
        let (cond, params) = self.conditions(conn, false, after, None);
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {cond}",
            conn.quote_ident(&self.table)
        );
        let row = conn
            .fetch_one(&sql, &params)
            .await
            .map_err(|e| Error::JobFailed(format!("cannot count the rows: {}", db_message(&e))))?;
        Ok(row.first().and_then(Value::as_i64).unwrap_or(0))
    }
}

/// Runs one batch after `after`; `None` when there is nothing left.
pub(crate) async fn run(
    conn: &mut Conn,
    plan: &Plan,
    prep: &Prepared,
    run_id: i64,
    after: Option<&[Value]>,
    size: i64,
) -> Result<Option<Done>> {
    let started = Instant::now();
    conn.begin()
        .await
        .map_err(|e| failed("cannot begin the batch", &e))?;
    let result = body(conn, plan, prep, run_id, after, size, started).await;
    match result {
        Ok(Some(mut done)) => {
            conn.commit()
                .await
                .map_err(|e| failed("the batch's commit failed", &e))?;
            done.transaction = started.elapsed();
            Ok(Some(done))
        }
        Ok(None) => {
            let _ = conn.rollback().await;
            Ok(None)
        }
        Err(e) => {
            let _ = conn.rollback().await;
            Err(e)
        }
    }
}

fn failed(what: &str, e: &sqlx::Error) -> Error {
    Error::JobFailed(format!("{what}: {}", db_message(e)))
}

async fn body(
    conn: &mut Conn,
    plan: &Plan,
    prep: &Prepared,
    run_id: i64,
    after: Option<&[Value]>,
    size: i64,
    started: Instant,
) -> Result<Option<Done>> {
    let (cursor, mut counts) = match (&plan.source, &plan.step) {
        (Source::Range { start, end }, Step::Sql(sql)) => {
            let lo = match after.and_then(|k| k.first()).and_then(Value::as_i64) {
                Some(done) => done.saturating_add(1),
                None => *start,
            };
            if lo > *end {
                return Ok(None);
            }
            let hi = lo.saturating_add(size - 1).min(*end);
            let sql = sql
                .replace("{lo}", &lo.to_string())
                .replace("{hi}", &hi.to_string());
            let changed = conn
                .execute(&sql, &[])
                .await
                .map_err(|e| failed("the batch's statement failed", &e))?;
            (
                vec![Value::Int(hi)],
                BatchCounts {
                    rows: hi - lo + 1,
                    changed: to_i64(changed),
                    ..Default::default()
                },
            )
        }
        (Source::Range { .. }, _) => {
            return Err(Error::Usage("a range source takes only a SQL step".into()))
        }
        (Source::Table { .. }, Step::Transform(t)) => {
            match transform_batch(conn, t.as_ref(), prep, run_id, after, size).await? {
                Some(done) => done,
                None => return Ok(None),
            }
        }
        (Source::Table { .. }, step) => {
            // Bound the batch by its last key, then act on the key range.
            let keys = prep.key_list(conn);
            let (cond, params) = prep.conditions(conn, false, after, None);
            let table = conn.quote_ident(&prep.table);
            let chunk =
                format!("SELECT {keys} FROM {table} WHERE {cond} ORDER BY {keys} LIMIT {size}");
            // One key: max() and count() over the chunk, an index-only scan and an
            // aggregate (a window and a sort cost PostgreSQL 4.5 ms a batch of 5000).
            let sql = if prep.keys.len() == 1 {
                format!("SELECT max({keys}), count(*) FROM ({chunk}) s")
            } else {
                let desc: Vec<String> = prep
                    .keys
                    .iter()
                    .map(|k| format!("{} DESC", conn.quote_ident(k)))
                    .collect();
                format!(
                    "SELECT {keys}, count(*) OVER () FROM ({chunk}) s ORDER BY {} LIMIT 1",
                    desc.join(", ")
                )
            };
            let rows = conn
                .fetch(&sql, &params)
                .await
                .map_err(|e| failed("reading the batch's bounds failed", &e))?;
            let Some(mut last) = rows.into_iter().next() else {
                return Ok(None);
            };
            let rows_in_batch = last.pop().and_then(|v| v.as_i64()).unwrap_or(0);
            if rows_in_batch == 0 {
                return Ok(None);
            }
            let (range, params) = prep.conditions(conn, true, after, Some(&last));
            let sql = match step {
                Step::Delete => format!(
                    "DELETE FROM {} WHERE {range}",
                    conn.quote_ident(&prep.table)
                ),
                Step::Sql(sql) => sql.replace("{batch}", &format!("({range})")),
                Step::Transform(_) => unreachable!("matched above"),
            };
            let changed = conn
                .execute(&sql, &params)
                .await
                .map_err(|e| failed("the batch's statement failed", &e))?;
            (
                last,
                BatchCounts {
                    rows: rows_in_batch,
                    changed: to_i64(changed),
                    ..Default::default()
                },
            )
        }
    };
    counts.elapsed_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let position = cursor::encode(&cursor).map_err(Error::JobFailed)?;
    let checkpoint_started = Instant::now();
    let moved = store::checkpoint(conn, run_id, &position, &counts)
        .await
        .map_err(|e| failed("the checkpoint failed", &e))?;
    let bookkeeping = checkpoint_started.elapsed();
    if !moved {
        return Err(Error::JobFailed(format!(
            "run {run_id} is no longer running in datamig_runs (cancelled from elsewhere?); this batch was rolled back"
        )));
    }
    Ok(Some(Done {
        cursor,
        counts,
        transaction: Duration::ZERO,
        bookkeeping,
    }))
}

async fn transform_batch(
    conn: &mut Conn,
    transform: &dyn Transform,
    prep: &Prepared,
    run_id: i64,
    after: Option<&[Value]>,
    size: i64,
) -> Result<Option<(Vec<Value>, BatchCounts)>> {
    let keys = prep.key_list(conn);
    let mut select: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
    select.extend(prep.columns.iter().map(|c| conn.quote_ident(c)));
    // The filter is evaluated per row as a last column, not used to page: the
    // read stays an index range scan of the next `size` keys.
    let mut params = Vec::new();
    if let Some(f) = &prep.filter {
        select.push(format!("CASE WHEN {} THEN 1 ELSE 0 END", f.sql));
        params.extend(f.params.iter().cloned());
    }
    let (cond, key_params) = prep.conditions(conn, false, after, None);
    params.extend(key_params);
    let sql = format!(
        "SELECT {} FROM {} WHERE {cond} ORDER BY {keys} LIMIT {size}{}",
        select.join(", "),
        conn.quote_ident(&prep.table),
        conn.for_update()
    );
    let mut rows = conn
        .fetch(&sql, &params)
        .await
        .map_err(|e| failed("reading the batch failed", &e))?;
    let Some(last) = rows.last() else {
        return Ok(None);
    };
    let n_keys = prep.keys.len();
    let cursor: Vec<Value> = last[..n_keys].to_vec();
    let visited = to_i64(rows.len());
    let (lo, hi) = (rows[0][0].clone(), last[0].clone());
    if prep.filter.is_some() {
        rows.retain_mut(|row| row.pop().and_then(|m| m.as_i64()) == Some(1));
    }

    let names: Vec<String> = prep.keys.iter().chain(&prep.columns).cloned().collect();
    let apply = |row: &Vec<Value>| {
        transform.apply(&SourceRow {
            names: &names,
            values: row,
            key_len: n_keys,
        })
    };
    let outcomes: Vec<Outcome> = if transform.cpu_heavy() {
        tokio::task::block_in_place(|| rows.par_iter().map(apply).collect())
    } else {
        rows.iter().map(apply).collect()
    };

    let width = transform.writes().len();
    let mut updates = Vec::new();
    let mut rejects = Vec::new();
    for (row, outcome) in rows.iter().zip(outcomes) {
        match outcome {
            Outcome::Update(values) => {
                if values.len() != width {
                    return Err(Error::JobFailed(format!(
                        "the transform returned {} value(s) for {width} written column(s) at key {}",
                        values.len(),
                        cursor::display(&row[..n_keys])
                    )));
                }
                let mut full = row[..n_keys].to_vec();
                full.extend(values);
                updates.push(full);
            }
            Outcome::Skip => {}
            Outcome::Reject(reason) => rejects.push((cursor::display(&row[..n_keys]), reason)),
        }
    }
    if let (Some(bulk), false) = (&prep.bulk, updates.is_empty()) {
        let spec = BulkUpdate {
            lo,
            hi,
            ..bulk.clone()
        };
        conn.bulk_update(&spec, &updates)
            .await
            .map_err(|e| failed("writing the batch failed", &e))?;
    }
    if !rejects.is_empty() {
        store::reject(conn, run_id, &rejects)
            .await
            .map_err(|e| failed("recording rejected rows failed", &e))?;
    }
    let counts = BatchCounts {
        rows: visited,
        changed: to_i64(updates.len()),
        rejected: to_i64(rejects.len()),
        elapsed_ms: 0,
    };
    Ok(Some((cursor, counts)))
}

fn to_i64<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
