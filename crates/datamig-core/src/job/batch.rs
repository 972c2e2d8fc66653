//! A batch step: a job's own async Rust over a whole batch, with the batch's
//! transaction. See [`BatchStep`].

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::SourceRow;
use crate::config::Backend;
pub use crate::db::OnConflict;
use crate::db::{BulkUpdate, Conn, Row, Value};
use crate::Error;

/// A job's work on one batch of rows, in Rust, in three phases:
///
/// 1. [`outside`](BatchStep::outside), before the batch's transaction: calls to
///    anything that is not the database (an HTTP service, object storage,
///    another database), and any work that needs no database (parsing,
///    computing new values: on a server database it runs while the previous
///    batch is written, as a transform does). No row is locked meanwhile. It
///    runs **at least once**
///    per batch: a batch that is retried (a transient error, the rows changed
///    since they were read) or redone after an interruption calls it again,
///    with the same [`Batch::idempotency_key`], so pass that key to the outside
///    system and let it recognise the repeat.
/// 2. [`write`](BatchStep::write), inside the batch's transaction, on the
///    batch's connection: any SQL the step needs ([`BatchTx`]). These writes
///    commit with the batch's checkpoint: **exactly once**, whatever stops the
///    run. Before it, datamig has locked the batch's rows and checked that they
///    are as they were read (else the batch is read and done again).
/// 3. [`after_commit`](BatchStep::after_commit), once the batch has committed:
///    side effects that must follow the commit (a cache to purge, a message to
///    send). At most once per committed batch, and not at all if the process
///    dies between the commit and the call.
///
/// The engine reads the batch's rows (the source's key and columns, in key
/// order), and does the batching, checkpointing, retries, throttling and
/// progress as for any step. `Outside` is what the first phase hands to the
/// second: `()` for a step that calls nothing outside.
///
/// ```
/// use datamig_core::prelude::*;
///
/// struct Normalize;
///
/// impl BatchStep for Normalize {
///     type Outside = ();
///
///     async fn outside(&self, _batch: &Batch) -> Result<(), StepError> {
///         Ok(())
///     }
///
///     async fn write(&self, batch: &Batch, _: &(), tx: &mut BatchTx<'_>) -> Result<(), StepError> {
///         let mut rows = Vec::new();
///         for row in batch.rows() {
///             match row.str("email").map(|e| e.trim().to_lowercase()) {
///                 Some(email) if email.contains('@') => rows.push(vec![row.key()[0].clone(), email.into()]),
///                 _ => tx.reject(row.key(), "no address"),
///             }
///         }
///         tx.update("users", &["id"], &["email_normalized"], &rows).await?;
///         Ok(())
///     }
/// }
///
/// let step = Step::batch(Normalize);
/// # let _ = step;
/// ```
pub trait BatchStep: Send + Sync + 'static {
    /// What [`outside`](BatchStep::outside) found, for [`write`](BatchStep::write).
    type Outside: Send + Sync + 'static;

    /// Work outside the database, before the batch's transaction; at least
    /// once per batch. A [`StepError::retry`] (or running out of
    /// [`outside_timeout`](BatchStep::outside_timeout)) is retried after a
    /// backoff, within `--max-retries`; then the run stops, resumable.
    fn outside(
        &self,
        batch: &Batch,
    ) -> impl Future<Output = Result<Self::Outside, StepError>> + Send;

    /// The batch's writes, inside its transaction; they commit with the
    /// checkpoint, exactly once.
    fn write(
        &self,
        batch: &Batch,
        outside: &Self::Outside,
        tx: &mut BatchTx<'_>,
    ) -> impl Future<Output = Result<(), StepError>> + Send;

    /// Runs once the batch has committed. A failure here cannot undo the
    /// batch: log it.
    fn after_commit(
        &self,
        _batch: &Batch,
        _outside: &Self::Outside,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// How long one batch's [`outside`](BatchStep::outside) may take before it
    /// is abandoned and retried.
    fn outside_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// Why a batch step's phase failed: worth trying again (the service is down
/// for a moment, a timeout), or not (the data is wrong: the run stops).
#[derive(Debug)]
pub struct StepError(pub(crate) Error);

impl StepError {
    /// A failure that trying again can fix: the batch is retried after a
    /// backoff, within `--max-retries`.
    pub fn retry(message: impl Into<String>) -> StepError {
        StepError(Error::Transient {
            message: message.into(),
            kind: crate::db::Transient::Outside,
        })
    }

    /// A failure that stops the run (resumable once the cause is fixed).
    pub fn fail(message: impl Into<String>) -> StepError {
        StepError(Error::JobFailed(message.into()))
    }

    /// Whether the batch will be tried again.
    pub fn is_retried(&self) -> bool {
        matches!(self.0, Error::Transient { .. })
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StepError {}

impl From<Error> for StepError {
    fn from(e: Error) -> StepError {
        StepError(e)
    }
}

impl From<serde_json::Error> for StepError {
    fn from(e: serde_json::Error) -> StepError {
        StepError::fail(e.to_string())
    }
}

/// Runs `calls` with at most `limit` at once, each within `timeout`, and
/// returns their results in the order given: the bounded concurrency a batch
/// step's [`outside`](BatchStep::outside) phase uses for many calls. A call
/// that runs out of time is a [`StepError::retry`].
pub async fn bounded<T, F>(
    limit: usize,
    timeout: Duration,
    calls: impl IntoIterator<Item = F>,
) -> Result<Vec<T>, StepError>
where
    F: Future<Output = Result<T, StepError>> + Send,
{
    let stream = futures_util::stream::iter(calls.into_iter().map(|call| async move {
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StepError::retry(format!(
                "an outside call took longer than {:.1}s",
                timeout.as_secs_f64()
            ))),
        }
    }));
    let results: Vec<Result<T, StepError>> = stream.buffered(limit.max(1)).collect().await;
    results.into_iter().collect()
}

/// One batch as a [`BatchStep`] sees it: its rows (the source's key, then its
/// columns), in key order, and a key that names the batch across retries.
pub struct Batch {
    pub(crate) names: Arc<[String]>,
    pub(crate) key_len: usize,
    pub(crate) rows: Vec<Row>,
    pub(crate) idempotency_key: String,
}

impl Batch {
    /// The batch's rows, each readable by column name as a transform's are.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = SourceRow<'_>> + '_ {
        self.rows.iter().map(|values| SourceRow {
            names: &self.names,
            values,
            key_len: self.key_len,
        })
    }

    /// The rows as values: the key's columns, then the source's columns.
    pub fn values(&self) -> &[Row] {
        &self.rows
    }

    /// The names of [`Batch::values`]' columns.
    pub fn columns(&self) -> &[String] {
        &self.names
    }

    /// Each row's key.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &[Value]> + '_ {
        self.rows.iter().map(|r| &r[..self.key_len])
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The same for every attempt at this batch, in this run: its run, its
    /// partition and where it starts, as `"<run>-<partition>-<16 hex digits>"`.
    /// A batch redone after an interruption starts at the same checkpoint and
    /// has the same key (its end may differ, if the batch size changed).
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }

    /// The rows as the job's own type, by column name (serde): a column that
    /// is NULL reads as `None`, a timestamp as `YYYY-MM-DD HH:MM:SS` text.
    pub fn rows_as<T: DeserializeOwned>(&self) -> Result<Vec<T>, StepError> {
        self.rows()
            .map(|row| {
                row.read().map_err(|e| {
                    StepError::fail(format!("at key {}: {e}", crate::db::display_key(row.key())))
                })
            })
            .collect()
    }
}

/// The batch's transaction, for a [`BatchStep`]'s writes. Statements take `?`
/// placeholders on every database (datamig numbers them for PostgreSQL); the
/// bulk writes are one statement per batch (per 30,000 values), the same fast
/// paths the engine's own steps use.
pub struct BatchTx<'c> {
    pub(crate) conn: &'c mut Conn,
    pub(crate) changed: Option<u64>,
    pub(crate) rejects: Vec<(String, String)>,
    pub(crate) types: &'c TypeCache,
    /// The batch's rows as read before the transaction, when they were: an
    /// update of them is written only where a row is unchanged since.
    pub(crate) source: Option<SourceGuard<'c>>,
}

/// What guards a batch step's updates of its own source rows, read before
/// the transaction: each is written only if the row is as it was read (its
/// guard values, as a transform's write compares them). The engine checks the
/// rows no update covered before the checkpoint.
pub(crate) struct SourceGuard<'c> {
    pub table: &'c str,
    pub keys: &'c [String],
    pub guard: &'c crate::db::Guard,
    /// Each row read: its key, then its guard values; in key order.
    pub rows: &'c [Row],
    /// Which of `rows` a guarded update wrote.
    pub covered: Vec<bool>,
    /// A guarded update found a row changed since it was read.
    pub changed: bool,
}

impl SourceGuard<'_> {
    /// The index in `rows` of each key (the first `n_keys` values of each of
    /// `of`): found walking both in order where `of` follows the batch's order
    /// (as a step's rows usually do), else by a lookup.
    fn positions(&self, of: &[Row], n_keys: usize) -> Result<Vec<usize>, StepError> {
        let mut found = Vec::with_capacity(of.len());
        let mut next = 0;
        let mut by_key: Option<HashMap<String, usize>> = None;
        for row in of {
            let key = &row[..n_keys];
            // In order, the next row is usually the one; out of order, the
            // lookup serves every row from then on.
            let in_order = match by_key {
                Some(_) => None,
                None => self.rows[next.min(self.rows.len())..]
                    .iter()
                    .position(|r| &r[..n_keys] == key),
            };
            let at = match in_order {
                Some(i) => next + i,
                None => {
                    let map = by_key.get_or_insert_with(|| {
                        self.rows
                            .iter()
                            .enumerate()
                            .map(|(i, r)| (format!("{:?}", &r[..n_keys]), i))
                            .collect()
                    });
                    *map.get(&format!("{key:?}")).ok_or_else(|| {
                        StepError::fail(format!(
                            "the batch step updated the row at key {}, which is not in its batch; \
                             update other rows of the source table with execute()",
                            crate::db::display_key(key)
                        ))
                    })?
                }
            };
            next = at + 1;
            found.push(at);
        }
        Ok(found)
    }
}

impl BatchTx<'_> {
    /// The database the batch runs on, for the rare statement that differs.
    pub fn backend(&self) -> Backend {
        self.conn.backend()
    }

    /// Runs one statement; returns the rows it changed.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StepError> {
        self.conn
            .execute(sql, params)
            .await
            .map_err(|e| failed("a statement of the batch step failed", &e))
    }

    /// How many of the batch's rows the step changed, for the run's counts
    /// (`changed` in its summary and history). Without it, every row of the
    /// batch that the step did not [`reject`](BatchTx::reject) counts as changed.
    pub fn set_changed(&mut self, rows: u64) {
        self.changed = Some(rows);
    }

    /// Runs a query; returns its rows.
    pub async fn fetch(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StepError> {
        self.conn
            .fetch(sql, params)
            .await
            .map_err(|e| failed("a query of the batch step failed", &e))
    }

    /// Runs a query whose `{list}` stands for a list of placeholders, one per
    /// value of `values`, in as few statements as the databases' parameter
    /// limits allow: one query per batch for related rows, never one per row.
    /// `SELECT id, email FROM users WHERE id IN ({list})`.
    pub async fn fetch_in(&mut self, sql: &str, values: &[Value]) -> Result<Vec<Row>, StepError> {
        if !sql.contains("{list}") {
            return Err(StepError::fail(
                "fetch_in's query must contain {list} where the values go",
            ));
        }
        let mut rows = Vec::new();
        for chunk in values.chunks(crate::db::MAX_PARAMS) {
            let list = vec!["?"; chunk.len()].join(", ");
            rows.extend(self.fetch(&sql.replace("{list}", &list), chunk).await?);
        }
        Ok(rows)
    }

    /// Inserts `rows` (values in the order of `columns`) into `table`, in one
    /// statement per 30,000 values; returns the rows inserted (or updated; on
    /// MariaDB, [`OnConflict::Ignore`] counts the rows it left as they were
    /// too, as its no-op update matched them).
    /// A value is taken as its column's type: a timestamp, a decimal, a uuid
    /// or an enum may be given as text.
    pub async fn insert(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Row],
        on_conflict: OnConflict<'_>,
    ) -> Result<u64, StepError> {
        let n = self
            .insert_rows(table, columns, rows, on_conflict, &[])
            .await?;
        Ok(n.iter().map(|(n, _)| n).sum())
    }

    async fn insert_rows(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Row],
        on_conflict: OnConflict<'_>,
        returning: &[&str],
    ) -> Result<Vec<(u64, Vec<Row>)>, StepError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = columns.iter().map(ToString::to_string).collect();
        let types = self
            .types
            .of(self.conn, table, &names)
            .await
            .map_err(StepError)?;
        let rows = fit(rows, &types);
        self.conn
            .insert_rows(table, columns, &types, &rows, on_conflict, returning)
            .await
            .map_err(|e| failed(&format!("inserting into {table} failed"), &e))
    }

    /// Inserts the job's own rows (any `#[derive(Serialize)]` type, a column
    /// per field) as [`BatchTx::insert`] does.
    pub async fn insert_from<T: Serialize>(
        &mut self,
        table: &str,
        rows: &[T],
        on_conflict: OnConflict<'_>,
    ) -> Result<u64, StepError> {
        let (columns, values) = typed_rows(rows, &[])?;
        let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        self.insert(table, &columns, &values, on_conflict).await
    }

    /// Updates `table` from the job's own rows (a column per field): `key`
    /// names the fields that find each row, the others are set, as
    /// [`BatchTx::update`] does.
    pub async fn update_from<T: Serialize>(
        &mut self,
        table: &str,
        key: &[&str],
        rows: &[T],
    ) -> Result<u64, StepError> {
        let (columns, values) = typed_rows(rows, key)?;
        let types = self
            .types
            .of(self.conn, table, &columns)
            .await
            .map_err(StepError)?;
        let values = fit(&values, &types).into_owned();
        let set: Vec<&str> = columns[key.len()..].iter().map(String::as_str).collect();
        self.update(table, key, &set, &values).await
    }

    /// Inserts as [`BatchTx::insert`] does and returns `returning`'s columns
    /// of each row inserted (`RETURNING`, which all three databases have for
    /// an insert): the generated ids of the new rows, say.
    pub async fn insert_returning(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &[Row],
        on_conflict: OnConflict<'_>,
        returning: &[&str],
    ) -> Result<Vec<Row>, StepError> {
        if returning.is_empty() {
            return Err(StepError::fail("insert_returning needs a column to return"));
        }
        let parts = self
            .insert_rows(table, columns, rows, on_conflict, returning)
            .await?;
        let mut out = Vec::new();
        for (_, rows) in parts {
            out.extend(rows);
        }
        Ok(out)
    }

    /// Updates `table`'s rows: each of `rows` is the values of `key`'s columns,
    /// then the new values of `set`'s columns; one statement for the batch
    /// (`UPDATE … FROM` the rows as a table). Returns the rows updated.
    pub async fn update(
        &mut self,
        table: &str,
        key: &[&str],
        set: &[&str],
        rows: &[Row],
    ) -> Result<u64, StepError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let spec = self
            .types
            .bulk_update(self.conn, table, key, set)
            .await
            .map_err(StepError)?;
        let own = self.source.as_ref().is_some_and(|s| {
            s.table == table
                && s.keys.len() == key.len()
                && s.keys.iter().zip(key).all(|(a, b)| a == b)
        });
        if let (true, Some(source)) = (own, self.source.as_mut()) {
            // The batch's own first and last keys, in the database's order.
            let first = |r: Option<&Row>| r.and_then(|r| r.first()).cloned();
            let (lo, hi) = (first(source.rows.first()), first(source.rows.last()));
            let spec = BulkUpdate {
                lo: lo.unwrap_or(Value::Null),
                hi: hi.unwrap_or(Value::Null),
                ..spec
            };
            return guarded_update(self.conn, source, spec, rows, key.len()).await;
        }
        // The update is bounded by its rows' lowest and highest first key, as
        // the database orders them: integers compare alike everywhere; text
        // (a collation) is asked of the database.
        let (lo, hi) = match int_bounds(rows) {
            Some(bounds) => bounds,
            None => self.db_bounds(table, key[0], rows).await?,
        };
        let spec = BulkUpdate { lo, hi, ..spec };
        self.conn
            .bulk_update(&spec, rows)
            .await
            .map_err(|e| failed(&format!("updating {table} failed"), &e))
    }

    /// The lowest and highest of `rows`' first values as `table`'s column
    /// `key` orders them (its collation), for a key that is not an integer.
    async fn db_bounds(
        &mut self,
        table: &str,
        key: &str,
        rows: &[Row],
    ) -> Result<(Value, Value), StepError> {
        let values: Vec<Value> = rows.iter().filter_map(|r| r.first().cloned()).collect();
        if values.len() > crate::db::MAX_PARAMS {
            return Err(StepError::fail(format!(
                "update() of {table} by a key that is not an integer takes at most {} rows a call",
                crate::db::MAX_PARAMS
            )));
        }
        let k = self.conn.quote_ident(key);
        let sql = format!(
            "SELECT min({k}), max({k}) FROM {} WHERE {k} IN ({})",
            self.conn.quote_ident(table),
            vec!["?"; values.len()].join(", ")
        );
        let row = self
            .fetch(&sql, &values)
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        let mut row = row.into_iter();
        Ok((
            row.next().unwrap_or(Value::Null),
            row.next().unwrap_or(Value::Null),
        ))
    }

    /// Records the row at `key` as rejected with `reason` (`datamig_rejects`,
    /// `datamig status`), with the batch.
    pub fn reject(&mut self, key: &[Value], reason: impl Into<String>) {
        self.rejects
            .push((crate::db::display_key(key), reason.into()));
    }

    /// The batch's connection itself, for what the methods above do not cover.
    /// Its transaction is the batch's: never commit or roll it back here.
    pub fn conn(&mut self) -> &mut Conn {
        self.conn
    }
}

/// An update of the batch's own rows, read before the transaction: each row
/// written only if unchanged since, as a transform's write is. A row that is
/// not as read is not written, and the batch is rolled back and done again.
async fn guarded_update(
    conn: &mut Conn,
    source: &mut SourceGuard<'_>,
    spec: BulkUpdate,
    rows: &[Row],
    n_keys: usize,
) -> Result<u64, StepError> {
    let at = source.positions(rows, n_keys)?;
    let guarded: Vec<Row> = rows
        .iter()
        .zip(&at)
        .map(|(row, &i)| {
            let mut full = Vec::with_capacity(row.len() + source.rows[i].len() - n_keys);
            full.extend(row.iter().cloned());
            full.extend(source.rows[i][n_keys..].iter().cloned());
            full
        })
        .collect();
    let spec = BulkUpdate {
        guard: Some(source.guard.clone()),
        ..spec
    };
    let written = conn
        .bulk_update(&spec, &guarded)
        .await
        .map_err(|e| failed(&format!("updating {} failed", spec.table), &e))?;
    if written != u64::try_from(guarded.len()).unwrap_or(u64::MAX) {
        // Stop the step here: what it would write next was computed from
        // rows that are not as read. The batch is rolled back and done again.
        source.changed = true;
        return Err(StepError::retry(format!(
            "rows of {} changed since they were read",
            spec.table
        )));
    }
    for i in at {
        source.covered[i] = true;
    }
    Ok(written)
}

/// The lowest and highest value of the rows' first column.
fn int_bounds(rows: &[Row]) -> Option<(Value, Value)> {
    let mut ints = rows.iter().map(|r| match r.first() {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    });
    let first = ints.next()??;
    let (mut lo, mut hi) = (first, first);
    for i in ints {
        let i = i?;
        lo = lo.min(i);
        hi = hi.max(i);
    }
    Some((Value::Int(lo), Value::Int(hi)))
}

fn failed(what: &str, e: &sqlx::Error) -> StepError {
    StepError(crate::db::failure(what, e))
}

/// `rows` as their columns' SQL `types` take them ([`Value::fit`]): copied
/// only when a value needs it (an array into a JSON column).
fn fit<'r>(rows: &'r [Row], types: &[String]) -> std::borrow::Cow<'r, [Row]> {
    if !rows.iter().flatten().any(|v| matches!(v, Value::Array(_))) {
        return std::borrow::Cow::Borrowed(rows);
    }
    std::borrow::Cow::Owned(
        rows.iter()
            .map(|r| r.iter().zip(types).map(|(v, t)| v.clone().fit(t)).collect())
            .collect(),
    )
}

/// The job's rows as columns (`first` first, then the other fields in their
/// order) and rows of values ([`crate::db::Value::from_json`]).
fn typed_rows<T: Serialize>(
    rows: &[T],
    first: &[&str],
) -> Result<(Vec<String>, Vec<Row>), StepError> {
    let mut columns: Option<Vec<String>> = None;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let object = super::fields_of(row).map_err(StepError::fail)?;
        let names = columns.get_or_insert_with(|| {
            let mut names: Vec<String> = first.iter().map(ToString::to_string).collect();
            names.extend(
                object
                    .keys()
                    .filter(|k| !first.contains(&k.as_str()))
                    .cloned(),
            );
            names
        });
        out.push(super::values_by_name::<T>(&object, names.iter()).map_err(StepError::fail)?);
    }
    Ok((columns.unwrap_or_default(), out))
}

/// The column types of the tables a batch step updates, looked up once per
/// run rather than once per batch.
#[derive(Default)]
pub(crate) struct TypeCache(Mutex<HashMap<TableColumns, Vec<String>>>);

/// A table and some of its columns.
type TableColumns = (String, Vec<String>);

impl TypeCache {
    /// The SQL types of `names` in `table`.
    async fn of(
        &self,
        conn: &mut Conn,
        table: &str,
        names: &[String],
    ) -> Result<Vec<String>, Error> {
        let id = (table.to_string(), names.to_vec());
        if let Some(types) = self.0.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(types);
        }
        let types = conn
            .column_types(table, names)
            .await
            .map_err(|e| crate::db::failure(&format!("cannot read the columns of {table}"), &e))?;
        if let Ok(mut m) = self.0.lock() {
            m.insert(id, types.clone());
        }
        Ok(types)
    }

    /// The bulk update of `set` by `key` in `table` (its bounds left unset).
    async fn bulk_update(
        &self,
        conn: &mut Conn,
        table: &str,
        key: &[&str],
        set: &[&str],
    ) -> Result<BulkUpdate, Error> {
        let names: Vec<String> = key.iter().chain(set).map(ToString::to_string).collect();
        let types = self.of(conn, table, &names).await?;
        Ok(BulkUpdate {
            table: table.to_string(),
            keys: names[..key.len()].to_vec(),
            sets: names[key.len()..].to_vec(),
            types,
            lo: Value::Null,
            hi: Value::Null,
            guard: None,
            locator: None,
        })
    }
}

/// A [`BatchStep`] with its `Outside` type erased, for [`super::Step::Batch`].
pub(crate) trait ErasedStep: Send + Sync {
    fn outside<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Box<dyn Any + Send + Sync>, StepError>>;
    fn write<'a>(
        &'a self,
        batch: &'a Batch,
        outside: &'a (dyn Any + Send + Sync),
        tx: &'a mut BatchTx<'_>,
    ) -> BoxFuture<'a, Result<(), StepError>>;
    fn after_commit<'a>(
        &'a self,
        batch: &'a Batch,
        outside: &'a (dyn Any + Send + Sync),
    ) -> BoxFuture<'a, ()>;
    fn outside_timeout(&self) -> Duration;
}

impl<S: BatchStep> ErasedStep for S {
    fn outside<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> BoxFuture<'a, Result<Box<dyn Any + Send + Sync>, StepError>> {
        BatchStep::outside(self, batch)
            .map(|r| r.map(|o| Box::new(o) as Box<dyn Any + Send + Sync>))
            .boxed()
    }

    fn write<'a>(
        &'a self,
        batch: &'a Batch,
        outside: &'a (dyn Any + Send + Sync),
        tx: &'a mut BatchTx<'_>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        match outside.downcast_ref::<S::Outside>() {
            Some(outside) => BatchStep::write(self, batch, outside, tx).boxed(),
            None => async { Err(StepError::fail("a batch step was handed another step's outside results; this is a bug in datamig")) }.boxed(),
        }
    }

    fn after_commit<'a>(
        &'a self,
        batch: &'a Batch,
        outside: &'a (dyn Any + Send + Sync),
    ) -> BoxFuture<'a, ()> {
        match outside.downcast_ref::<S::Outside>() {
            Some(outside) => BatchStep::after_commit(self, batch, outside).boxed(),
            None => async {}.boxed(),
        }
    }

    fn outside_timeout(&self) -> Duration {
        BatchStep::outside_timeout(self)
    }
}
