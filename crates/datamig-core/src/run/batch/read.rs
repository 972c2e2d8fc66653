//! Finding a batch: the statements prepared once per run ([`Prepared`]), a
//! transform's rows read (under row locks, or ahead), and a set-based step's
//! bound, the last key of its next `n` matching rows; with the queries a dry
//! run shows EXPLAIN.

use super::to_i64;
use super::{failed, Scanned, Size};
use crate::db::{db_message, BulkUpdate, Conn, Guard, Row, Value};
use crate::job::{Filter, Plan, Source, Step};
use crate::{Error, Result};

/// Per-run facts computed once: quoted names, the bulk-update shape.
#[derive(Clone)]
pub(crate) struct Prepared {
    /// What batches read from: the quoted table, or a query source's query as
    /// a derived table.
    pub(crate) from: String,
    pub(crate) table: String,
    pub(crate) keys: Vec<String>,
    /// Each key's placeholder where it is compared (a cast for a key read as text).
    pub(crate) key_marks: Vec<String>,
    pub(crate) columns: Vec<String>,
    pub(crate) filter: Option<Filter>,
    pub(crate) bulk: Option<BulkUpdate>,
    /// What a read ahead selects with each row for the guarded write.
    pub(crate) guard_select: Vec<String>,
    /// The guard of a batch step's updates of its source rows.
    pub(crate) guard: Option<Guard>,
    /// The last key batches may reach (a partition's upper bound); `None`: the table's end.
    pub(crate) end: Option<Vec<Value>>,
    /// The partition batches work in (0: none), for a batch step's idempotency key.
    pub(crate) part: i64,
    /// Whether a CPU-heavy transform spreads each batch over all cores (one
    /// cursor), or runs on the thread of its worker (a partitioned run, whose
    /// workers are the parallelism).
    pub(crate) spread: bool,
    /// The column types of the tables a batch step updates, once per run.
    pub(crate) types: std::sync::Arc<crate::job::TypeCache>,
    /// A source the job implements: its pages are the batches.
    pub(crate) custom: Option<crate::job::AnyCustomSource>,
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
            Source::Query { key, columns, .. } => {
                (String::new(), key.clone(), columns.clone(), None)
            }
            Source::Custom(source) => (String::new(), source.0.key(), source.0.columns(), None),
            Source::Range { .. } | Source::Csv { .. } => Default::default(),
        };
        // What the batches read from: the table, or the query as a derived table.
        let from = match &plan.source {
            Source::Query { sql, .. } => format!("({sql}) datamig_q"),
            _ => conn.quote_ident(&table),
        };
        // No table behind the rows: nothing to read types from, lock or guard.
        let query = matches!(plan.source, Source::Query { .. } | Source::Custom(_));
        let unusable = |e: sqlx::Error| {
            Error::SchemaNotReady(format!("cannot use table {table}: {}", db_message(&e)))
        };
        let key_types = if keys.is_empty() || query {
            Vec::new()
        } else {
            conn.column_types(&table, &keys).await.map_err(unusable)?
        };
        let key_marks = if query {
            vec!["?".to_string(); keys.len()]
        } else {
            key_types.iter().map(|t| conn.key_mark(t)).collect()
        };
        let bulk = match &plan.step {
            Step::Transform(t) => {
                let sets = t.writes();
                let rest: Vec<String> = sets.iter().chain(&columns).cloned().collect();
                let mut types = key_types;
                types.extend(conn.column_types(&table, &rest).await.map_err(unusable)?);
                let column_types = types.split_off(keys.len() + sets.len());
                Some(BulkUpdate {
                    table: table.clone(),
                    keys: keys.clone(),
                    sets,
                    types,
                    lo: Value::Null,
                    hi: Value::Null,
                    guard: Some(Guard {
                        columns: columns.clone(),
                        types: column_types,
                        filter: filter.as_ref().map(|f| (f.sql.clone(), f.params.clone())),
                    }),
                    locator: conn.row_locator(&table).await,
                })
            }
            _ => None,
        };
        // A batch step's updates of its source rows are guarded as a transform's write is.
        let guard = match &plan.step {
            Step::Batch(_) if !query => Some(Guard {
                columns: columns.clone(),
                types: conn
                    .column_types(&table, &columns)
                    .await
                    .map_err(unusable)?,
                filter: filter.as_ref().map(|f| (f.sql.clone(), f.params.clone())),
            }),
            _ => None,
        };
        // A query's rows are no table's: nothing to guard them by.
        let guard_select = if query {
            Vec::new()
        } else {
            conn.guard_select(&columns)
        };
        Ok(Prepared {
            from,
            table,
            keys,
            key_marks,
            columns,
            filter,
            bulk,
            guard,
            guard_select,
            end: None,
            part: 0,
            spread: true,
            types: Default::default(),
            custom: match &plan.source {
                Source::Custom(source) => Some(source.clone()),
                _ => None,
            },
        })
    }

    /// Runs a CPU-heavy transform on the calling worker's thread only.
    pub fn one_thread_per_batch(mut self) -> Prepared {
        self.spread = false;
        self
    }

    /// Key range conditions `key > after AND key <= upto`, with the filter when asked.
    pub(crate) fn conditions(
        &self,
        conn: &Conn,
        with_filter: bool,
        after: Option<&[Value]>,
        upto: Option<&[Value]>,
    ) -> (String, Vec<Value>) {
        self.conditions_of(conn, None, with_filter, after, upto)
    }

    /// [`Prepared::conditions`] with the keys qualified by `table` (a quoted
    /// name or an alias), for a statement that joins other tables.
    pub(crate) fn conditions_of(
        &self,
        conn: &Conn,
        table: Option<&str>,
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
        // A range redone up to `upto` is within the end already.
        let upto = upto.or(self.end.as_deref());
        for (bound, op) in [(after, ">"), (upto, "<=")] {
            if let Some(key) = bound {
                let (sql, order) = conn.compare_keys(table, &self.keys, &self.key_marks, op);
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

    /// The rows of the batch after `after`: `outer` (names of `inner`'s
    /// columns) of the rows matching the filter, at most `size.rows`, among the
    /// next `size.keys` keys. The chunk's own `ORDER BY … LIMIT` keeps it an
    /// index range scan in key order whatever the planner thinks of the filter,
    /// and the outer `LIMIT` stops the scan at the batch's last row (PostgreSQL
    /// runs the two as one pipeline; MariaDB fills the chunk first, which is why
    /// its size follows the density). SQLite, which would sort the chunk again,
    /// bounds the range by the chunk's last key instead ([`Conn::chunks_by_bound`]).
    /// Takes no row locks: a lock on the chunk makes PostgreSQL lock and sort all of it.
    pub(crate) fn matching(
        &self,
        conn: &Conn,
        filter: &Filter,
        inner: &[String],
        outer: &[String],
        after: Option<&[Value]>,
        size: Size,
    ) -> (String, Vec<Value>) {
        let keys = self.key_list(conn);
        let (cond, key_params) = self.conditions(conn, false, after, None);
        if conn.chunks_by_bound() && self.keys.len() == 1 {
            // The chunk's last key, from the key's index alone, then the
            // filter over the range up to it, in key order.
            let sql = format!(
                "SELECT {} FROM {} WHERE {cond} AND {keys} <= (SELECT max({keys}) FROM \
                 (SELECT {keys} FROM {} WHERE {cond} ORDER BY {keys} LIMIT {}) datamig_b) \
                 AND ({}) ORDER BY {keys} LIMIT {}",
                inner.join(", "),
                self.from,
                self.from,
                size.keys,
                filter.sql,
                size.rows
            );
            let mut params = key_params.clone();
            params.extend(key_params);
            params.extend(filter.params.iter().cloned());
            return (sql, params);
        }
        let sql = format!(
            "SELECT {} FROM (SELECT {}, CASE WHEN ({}) THEN 1 ELSE 0 END AS datamig_m FROM {} \
             WHERE {cond} ORDER BY {keys} LIMIT {}) c WHERE datamig_m = 1 ORDER BY {keys} LIMIT {}",
            outer.join(", "),
            inner.join(", "),
            filter.sql,
            self.from,
            size.keys,
            size.rows
        );
        let mut params = filter.params.clone();
        params.extend(key_params);
        (sql, params)
    }

    /// `(last key…, count)` of the rows of `sql`, which selects the key columns.
    /// One key: max() and count(), an aggregate over an index scan (a window and
    /// a sort cost PostgreSQL 4.5 ms a batch of 5000), but not for a key read as
    /// text (PostgreSQL before 16 has no max() of a `uuid`).
    pub(crate) fn last_of(&self, conn: &Conn, sql: &str) -> String {
        let keys = self.key_list(conn);
        if self.keys.len() == 1 && self.key_marks.first().is_none_or(|m| m == "?") {
            format!("SELECT max({keys}), count(*) FROM ({sql}) s")
        } else {
            format!(
                "SELECT {keys}, count(*) OVER () FROM ({sql}) s ORDER BY {} LIMIT 1",
                self.keys_desc(conn)
            )
        }
    }

    /// The columns an archive holds: the key, then the source's columns.
    pub fn archive_header(&self) -> Vec<String> {
        self.keys.iter().chain(&self.columns).cloned().collect()
    }

    /// `k1 DESC, k2 DESC`: the keys in reverse order, for the last row of a chunk.
    pub(crate) fn keys_desc(&self, conn: &Conn) -> String {
        self.keys
            .iter()
            .map(|k| format!("{} DESC", conn.quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn key_list(&self, conn: &Conn) -> String {
        self.keys
            .iter()
            .map(|k| conn.quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The planner's estimate of [`Prepared::count`], without counting.
    pub async fn estimate(&self, conn: &mut Conn, after: Option<&[Value]>) -> Option<i64> {
        let (cond, params) = self.conditions(conn, true, after, None);
        let sql = format!("SELECT 1 FROM {} WHERE {cond}", self.from);
        conn.estimate(&sql, &params).await.ok().flatten()
    }

    /// Rows the source selects after `after` (all without it): the progress total.
    pub async fn count(&self, conn: &mut Conn, after: Option<&[Value]>) -> Result<i64> {
        let (cond, params) = self.conditions(conn, true, after, None);
        let sql = format!("SELECT count(*) FROM {} WHERE {cond}", self.from);
        let row = conn
            .fetch_one(&sql, &params)
            .await
            .map_err(|e| Error::JobFailed(format!("cannot count the rows: {}", db_message(&e))))?;
        Ok(row.first().and_then(Value::as_i64).unwrap_or(0))
    }
}

/// A SQL or delete step's batch: the keys after the cursor up to `last`.
pub(crate) struct Bound {
    /// The batch's last key: its checkpoint.
    pub(crate) last: Vec<Value>,
    /// Keys in the batch when it was bounded, and how many the filter matched.
    pub(crate) scanned: Scanned,
}

/// Bounds the batch after `after` by its last key: the key of its `size.rows`-th
/// row matching the source filter within the next `size.keys` keys, or, when
/// fewer match, the last of those keys.
pub(crate) async fn bound(
    conn: &mut Conn,
    prep: &Prepared,
    after: Option<&[Value]>,
    size: Size,
) -> Result<Option<Bound>> {
    let Some(filter) = &prep.filter else {
        let last = last_key(conn, prep, after, size.rows).await?;
        return Ok(last.map(|(last, keys)| Bound {
            last,
            scanned: Scanned {
                matched: keys,
                ran_out: None,
            },
        }));
    };
    let keys: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
    let (matching, params) = prep.matching(conn, filter, &keys, &keys, after, size);
    let sql = prep.last_of(conn, &matching);
    let rows = conn
        .fetch(&sql, &params)
        .await
        .map_err(|e| failed("reading the batch's bounds failed", &e))?;
    let (last, matched) = split_count(rows.into_iter().next());
    if matched >= size.rows {
        return Ok(Some(Bound {
            last,
            scanned: Scanned {
                matched,
                ran_out: None,
            },
        }));
    }
    // Fewer matches than the batch's size: the batch is the whole chunk.
    let end = last_key(conn, prep, after, size.keys).await?;
    Ok(end.map(|(last, keys)| Bound {
        last,
        scanned: Scanned {
            matched,
            ran_out: Some(keys),
        },
    }))
}

/// A row of `(key…, count)` as the key and the count; an empty key for no rows.
fn split_count(row: Option<Row>) -> (Vec<Value>, i64) {
    let Some(mut row) = row else {
        return (Vec::new(), 0);
    };
    let count = row.pop().and_then(|v| v.as_i64()).unwrap_or(0);
    (row, count)
}

/// The last of the next `limit` keys after `after`, and how many there are;
/// `None` when no key is left. An index-only scan.
async fn last_key(
    conn: &mut Conn,
    prep: &Prepared,
    after: Option<&[Value]>,
    limit: i64,
) -> Result<Option<(Vec<Value>, i64)>> {
    let keys = prep.key_list(conn);
    let (cond, params) = prep.conditions(conn, false, after, None);
    let chunk = format!(
        "SELECT {keys} FROM {} WHERE {cond} ORDER BY {keys} LIMIT {limit}",
        prep.from
    );
    let sql = prep.last_of(conn, &chunk);
    let rows = conn
        .fetch(&sql, &params)
        .await
        .map_err(|e| failed("reading the batch's bounds failed", &e))?;
    let (last, count) = split_count(rows.into_iter().next());
    Ok((count > 0 && last.iter().all(|v| !v.is_null())).then_some((last, count)))
}

/// The statement that finds the rows of a batch after `after` (the read of a
/// transform, the bound of a key-range step), with its parameters.
pub(crate) fn finding(
    conn: &Conn,
    plan: &Plan,
    prep: &Prepared,
    after: Option<&[Value]>,
    size: Size,
) -> Vec<(String, Vec<Value>)> {
    if !matches!(plan.source, Source::Table { .. } | Source::Query { .. }) {
        // A range has no statement to find, a CSV file or a custom source none to explain.
        return Vec::new();
    }
    let keys: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
    let finding = match (&prep.filter, &plan.step) {
        (Some(filter), Step::Transform(_)) => {
            let mut cols = keys.clone();
            cols.extend(prep.columns.iter().map(|c| conn.quote_ident(c)));
            prep.matching(conn, filter, &cols, &cols, after, size)
        }
        (Some(filter), _) => prep.matching(conn, filter, &keys, &keys, after, size),
        (None, _) => {
            let (cond, params) = prep.conditions(conn, false, after, None);
            (
                format!(
                    "SELECT {} FROM {} WHERE {cond} ORDER BY {} LIMIT {}",
                    keys.join(", "),
                    prep.from,
                    keys.join(", "),
                    size.rows
                ),
                params,
            )
        }
    };
    vec![finding]
}

/// A transform batch's rows, read and not yet transformed.
pub(crate) struct Read {
    /// Rows the filter matched: keys, source columns, then (read ahead) guard
    /// values or (read in the write's transaction) the row's locator.
    pub(crate) rows: Vec<Row>,
    /// The batch's last key: its checkpoint.
    pub(crate) cursor: Vec<Value>,
    /// What the batch's chunk held.
    pub(crate) scanned: Scanned,
    /// The first key column's lowest and highest value among the rows.
    pub(crate) lo: Value,
    pub(crate) hi: Value,
}

/// Reads a transform batch: the rows after `after` up to the `size.rows`-th that
/// the filter matches, among the next `size.keys` keys; or every key up to
/// `upto`. Under row locks inside the batch's transaction, or (`ahead`) as a
/// plain read with each row's guard values.
pub(crate) async fn read_rows(
    conn: &mut Conn,
    prep: &Prepared,
    after: Option<&[Value]>,
    upto: Option<&[Value]>,
    size: Size,
    ahead: bool,
) -> Result<Option<Read>> {
    let mut inner: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
    inner.extend(prep.columns.iter().map(|c| conn.quote_ident(c)));
    let mut outer = inner.clone();
    if ahead {
        for (i, guard) in prep.guard_select.iter().enumerate() {
            inner.push(format!("{guard} AS datamig_g{i}"));
            outer.push(format!("datamig_g{i}"));
        }
    }
    // Read in the write's transaction: each row's locator too, for the update.
    let locator = prep.bulk.as_ref().and_then(|b| b.locator.as_ref());
    if let (false, Some(locator)) = (ahead, locator) {
        inner.push(format!("{locator} AS datamig_loc"));
        outer.push("datamig_loc".into());
    }
    let lock = if ahead { "" } else { conn.for_update() };
    let read = match (&prep.filter, upto) {
        (Some(filter), None) if lock.is_empty() => {
            // Only the matching rows come back; the batch ends at its last, or
            // (fewer than its size in the chunk) at the chunk's last key.
            let (sql, params) = prep.matching(conn, filter, &inner, &outer, after, size);
            let rows = fetch_rows(conn, &sql, &params).await?;
            let matched = to_i64(rows.len());
            let (cursor, scanned) = match rows.last() {
                Some(last) if matched >= size.rows => (
                    last[..prep.keys.len()].to_vec(),
                    Scanned {
                        matched,
                        ran_out: None,
                    },
                ),
                _ => match last_key(conn, prep, after, size.keys).await? {
                    Some((end, keys)) => (
                        end,
                        Scanned {
                            matched,
                            ran_out: Some(keys),
                        },
                    ),
                    None => return Ok(None),
                },
            };
            Read::new(rows, cursor, scanned)
        }
        (filter, _) => {
            // Under row locks (or redoing a range): the chunk's every row, with
            // whether the filter matches it, ended at the batch's last match.
            let mut params = Vec::new();
            if let Some(f) = filter {
                inner.push(format!("CASE WHEN ({}) THEN 1 ELSE 0 END", f.sql));
                params.extend(f.params.iter().cloned());
            }
            let (cond, key_params) = prep.conditions(conn, false, after, upto);
            params.extend(key_params);
            let limit = match (upto, filter) {
                (Some(_), _) => String::new(),
                (None, Some(_)) => format!(" LIMIT {}", size.keys),
                (None, None) => format!(" LIMIT {}", size.rows),
            };
            let sql = format!(
                "SELECT {} FROM {} WHERE {cond} ORDER BY {}{limit}{lock}",
                inner.join(", "),
                prep.from,
                prep.key_list(conn),
            );
            let mut rows = fetch_rows(conn, &sql, &params).await?;
            let visited = to_i64(rows.len());
            let mut matched = visited;
            if filter.is_some() {
                matched = 0;
                let mut end = rows.len();
                for (i, row) in rows.iter().enumerate() {
                    if row.last().and_then(Value::as_i64) == Some(1) {
                        matched += 1;
                        if upto.is_none() && matched == size.rows {
                            end = i + 1;
                            break;
                        }
                    }
                }
                rows.truncate(end);
            }
            // A redone range ends where it ended when it was read ahead, whatever is in it now.
            let cursor = match (upto, rows.last()) {
                (Some(upto), _) => upto.to_vec(),
                (None, Some(last)) => last[..prep.keys.len()].to_vec(),
                (None, None) => return Ok(None),
            };
            if filter.is_some() {
                rows.retain_mut(|row| row.pop().and_then(|m| m.as_i64()) == Some(1));
            }
            let ran_out = (upto.is_none() && matched < size.rows).then_some(visited);
            Read::new(rows, cursor, Scanned { matched, ran_out })
        }
    };
    Ok(Some(read))
}

pub(crate) async fn fetch_rows(conn: &mut Conn, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    conn.fetch(sql, params)
        .await
        .map_err(|e| failed("reading the batch failed", &e))
}

impl Read {
    pub(crate) fn new(rows: Vec<Row>, cursor: Vec<Value>, scanned: Scanned) -> Read {
        let lo = rows.first().map_or(Value::Null, |r| r[0].clone());
        let hi = rows.last().map_or(Value::Null, |r| r[0].clone());
        Read {
            rows,
            cursor,
            scanned,
            lo,
            hi,
        }
    }
}
