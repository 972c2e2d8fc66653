//! [`Driver`]: the contract each database implements in its own file, and
//! the helpers the drivers share (decoding rows, binding values, writing
//! parameters out as literals, catalogue queries, EXPLAIN as JSON).

use std::time::Duration;

use super::{db_message, BulkUpdate, ConnectOptions, Health, Row, Transient, Value};
use crate::config::DatabaseUrl;
use crate::{Error, Result};

/// What each database implements, in its own file. Static dispatch through [`Conn`].
#[allow(async_fn_in_trait)]
pub(crate) trait Driver {
    type Connection: Send;

    /// `count(*)` of the tables named `?` in the current database/schema.
    const TABLE_EXISTS_SQL: &'static str;
    /// `count(*)` of the columns named `?` (the second) of the table named `?`.
    const COLUMN_EXISTS_SQL: &'static str;
    /// Whether placeholders are numbered (`$1, $2, …`, PostgreSQL) rather than `?`.
    const NUMBERED_PLACEHOLDERS: bool = false;
    /// What sets the next transaction to READ COMMITTED where that is not the
    /// default (`None`: it is, or there are no levels to choose).
    const READ_COMMITTED: Option<&'static str> = None;
    /// The integer type a `CAST(… AS …)` of a sum takes (`None`: no cast needed).
    const INTEGER_CAST: Option<&'static str> = Some("BIGINT");
    /// Whether the database has one writer and no other sessions to see (SQLite):
    /// no partitioned runs, no session or transaction throttles.
    const SINGLE_WRITER: bool = false;

    /// Whether DDL is transactional (a failed migration rolls back entirely).
    const TRANSACTIONAL_DDL: bool;
    /// The statement that opens a write transaction.
    const BEGIN: &'static str;
    /// `CREATE TABLE IF NOT EXISTS` statements for datamig's own tables.
    const BOOKKEEPING_DDL: &'static [&'static str];

    async fn connect(
        url: &DatabaseUrl,
        opts: &ConnectOptions,
    ) -> Result<Self::Connection, sqlx::Error>;
    async fn execute(c: &mut Self::Connection, sql: &str, params: &[Value]) -> sqlx::Result<u64>;
    async fn fetch(c: &mut Self::Connection, sql: &str, params: &[Value])
        -> sqlx::Result<Vec<Row>>;
    /// Runs SQL text that may hold several statements, without parameters.
    async fn script(c: &mut Self::Connection, sql: &str) -> sqlx::Result<()>;
    /// As [`Driver::script`], returning the rows its statements changed.
    async fn script_rows(c: &mut Self::Connection, sql: &str) -> sqlx::Result<u64>;
    async fn close(c: Self::Connection);

    /// Tries once to take the named lock (`schema`, `job.NAME`); never blocks.
    /// Held until [`Driver::unlock`] or until the connection (or process) ends.
    async fn try_lock(c: &mut Self::Connection, name: &str) -> Result<bool>;
    async fn unlock(c: &mut Self::Connection, name: &str) -> Result<()>;
    /// Who holds the named lock, for the message when it cannot be had.
    async fn lock_holder(c: &mut Self::Connection, name: &str) -> Option<String>;

    /// Writes new values for a batch of rows in one round trip (or, on SQLite,
    /// one prepared statement in the batch's transaction). Returns rows changed.
    async fn bulk_update(
        c: &mut Self::Connection,
        spec: &BulkUpdate,
        rows: &[Row],
    ) -> sqlx::Result<u64>;
    /// See [`super::Conn::row_locator`]; none by default.
    async fn row_locator(c: &mut Self::Connection, table: &str) -> Option<String> {
        let _ = (c, table);
        None
    }
    /// The SQL type of each column, where the bulk update must cast (PostgreSQL).
    async fn column_types(
        c: &mut Self::Connection,
        table: &str,
        columns: &[String],
    ) -> sqlx::Result<Vec<String>>;
    /// The planner's estimate of how many rows a query returns (from EXPLAIN,
    /// without running it): cheap on huge tables. `None` where there is none.
    async fn estimate(
        c: &mut Self::Connection,
        sql: &str,
        params: &[Value],
    ) -> sqlx::Result<Option<i64>>;

    /// How the plan of `sql` reads `table` in full, without running it (EXPLAIN):
    /// one line per full scan, none when every read of it uses an index.
    async fn full_scans(
        c: &mut Self::Connection,
        sql: &str,
        params: &[Value],
        table: &str,
    ) -> sqlx::Result<Vec<String>>;

    /// What the health throttle compares with its limits (see `run::throttle`, which reads it),
    /// not counting this process's own sessions where the database can tell them.
    async fn health(c: &mut Self::Connection) -> sqlx::Result<Health>;

    /// How far this server, a replica, is behind its primary (`None`: its
    /// replication is stopped); an error when it is not a replica.
    async fn replica_lag(c: &mut Self::Connection) -> sqlx::Result<Option<Duration>>;

    /// Locks the rows a transform reads until the batch commits.
    const FOR_UPDATE: &'static str = " FOR UPDATE";

    /// Whether a batch of rows matching a filter among the next K keys is read
    /// with the chunk's last key found first (`key <= (SELECT max(key) FROM
    /// (the next K keys))`, then the filter over that range in key order),
    /// rather than as the filter over a derived table of the next K rows:
    /// SQLite sorts such a derived table's rows again for the outer `ORDER BY`
    /// (a temporary b-tree of all K), which cost 8 times the read.
    const CHUNK_BY_BOUND: bool = false;

    /// Whether a transform reads its next batch on a second connection while the
    /// current one is written (see `run::batch`).
    const READ_AHEAD: bool = true;

    /// Session settings that bound how long a batch's statement waits for a lock
    /// and how long it may run (`None`: no limit).
    /// The session settings for these timeouts; `idle` is how long the server
    /// lets the session sit idle inside a transaction before ending it (so that
    /// a session whose client vanished mid-batch releases its locks).
    fn timeouts(lock: Duration, statement: Option<Duration>, idle: Option<Duration>)
        -> Vec<String>;

    /// Whether a database error says the user lacks a privilege, or the database
    /// is read-only.
    fn permission_denied(err: &(dyn sqlx::error::DatabaseError + 'static)) -> bool;

    /// Whether a database error passes if the batch is tried again.
    fn transient(err: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<Transient>;

    /// What a read outside the write's transaction selects with each row so that
    /// the write can tell whether the row changed since: a guarded
    /// [`Driver::bulk_update`] takes these values after the keys and new values.
    /// The source columns themselves by default; a row version where there is one.
    fn guard_select(columns: &[String]) -> Vec<String> {
        columns.iter().map(|c| Self::quote_ident(c)).collect()
    }

    /// Session settings for running batches (not schema migrations).
    const BATCH_SESSION: &'static [&'static str] = &[];

    /// SQL that makes every transaction committed before it durable, for a
    /// driver whose [`Driver::BATCH_SESSION`] commits without waiting for that
    /// (PostgreSQL's asynchronous commit); `None` where every commit is durable.
    const FLUSH_COMMITS: Option<&'static str> = None;

    /// Whether a batch's checkpoint goes to the server in one round trip with
    /// its COMMIT, as SQL text with the values written out ([`Driver::text_literal`]).
    const CHECKPOINT_WITH_COMMIT: bool = false;

    /// What follows an `INSERT INTO t (columns) VALUES …` for a row whose
    /// unique key `on` is taken (quoted names): keep the row there (`sets`
    /// empty), or update its `sets` with the new values. PostgreSQL and SQLite
    /// by default; MariaDB has its own form.
    fn on_conflict(columns: &[String], on: &[String], sets: &[String]) -> String {
        let _ = columns;
        let target = if on.is_empty() {
            String::new()
        } else {
            format!(" ({})", on.join(", "))
        };
        if sets.is_empty() {
            return format!(" ON CONFLICT{target} DO NOTHING");
        }
        let updates: Vec<String> = sets.iter().map(|c| format!("{c} = excluded.{c}")).collect();
        format!(" ON CONFLICT{target} DO UPDATE SET {}", updates.join(", "))
    }

    /// A string as an SQL literal, for the drivers that send a checkpoint as text.
    fn text_literal(text: &str) -> Option<String> {
        let _ = text;
        None
    }

    /// A parameter written out as an SQL literal of the type it is bound as, for
    /// the drivers that send a batch's BEGIN with its first statement
    /// ([`Conn::begin_with`]); `None` where it cannot be, or is not done.
    fn literal(value: &Value) -> Option<String> {
        let _ = value;
        None
    }

    /// `keys OP (?, …)` for keyset pagination, and which key value each `?` takes;
    /// `marks[i]` is key `i`'s placeholder ([`Driver::key_mark`]). Row values by
    /// default; MariaDB plans the expanded form better.
    fn compare_keys(keys: &[String], marks: &[String], op: &str) -> (String, Vec<usize>) {
        if keys.len() == 1 {
            return (format!("{} {op} {}", keys[0], marks[0]), vec![0]);
        }
        (
            format!("({}) {op} ({})", keys.join(", "), marks.join(", ")),
            (0..keys.len()).collect(),
        )
    }

    /// The placeholder a key value of a column of SQL type `column_type` is
    /// compared with: `?`, or `?` cast to the column's type where the value
    /// travels as text (a PostgreSQL `uuid` key, read as its text).
    fn key_mark(column_type: &str) -> String {
        let _ = column_type;
        "?".into()
    }

    /// The placeholder a value written to a column of SQL type `column_type`
    /// takes: `?` where the database converts a text value on assignment
    /// (MariaDB, SQLite), a cast to the column's type where it does not
    /// (PostgreSQL: a timestamp, a decimal, a uuid or an enum given as text).
    fn value_mark(column_type: &str) -> String {
        let _ = column_type;
        "?".into()
    }

    /// Refreshes the planner's statistics of a table (its name already quoted).
    fn analyze_sql(table: &str) -> String {
        format!("ANALYZE {table}")
    }

    /// The user schema as sorted lines, one per object (datamig's tables left out).
    async fn snapshot(c: &mut Self::Connection) -> Result<Vec<String>>;
    /// SQL that yields the current UTC time for a timestamp column.
    fn now_sql() -> &'static str;
    /// The server's clock in milliseconds since the Unix epoch, as an SQL
    /// expression: leases are timed by the database, not by the hosts' clocks.
    fn epoch_ms_sql() -> &'static str;
    /// SQL that renders a timestamp column as ISO-8601 text.
    fn timestamp_text(column: &str) -> String;
    fn quote_ident(name: &str) -> String;
}

/// A result's rows as [`Value`]s: each column's kind resolved once, from the
/// first row's columns (`kind`), then every value that is not NULL decoded as
/// its column's kind (`value`, given the row and the column's index). Matching
/// the type by name for every value was a fifth of datamig's CPU in a batch.
pub(crate) fn decode_rows<R, K: Copy>(
    rows: &[R],
    kind: impl Fn(&<R::Database as sqlx::Database>::Column) -> sqlx::Result<K>,
    value: impl Fn(K, &R, usize) -> std::result::Result<Value, sqlx::error::BoxDynError>,
) -> sqlx::Result<Vec<Row>>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
{
    use sqlx::ValueRef as _;
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let kinds = first
        .columns()
        .iter()
        .map(kind)
        .collect::<sqlx::Result<Vec<K>>>()?;
    // Sized up front: a collected iterator of Results grows a batch's vector by
    // doubling, copying it a dozen times (that version cost the client about a
    // fifth more CPU in interleaved runs).
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut values = Vec::with_capacity(kinds.len());
        for (index, k) in kinds.iter().enumerate() {
            if row.try_get_raw(index)?.is_null() {
                values.push(Value::Null);
                continue;
            }
            values.push(
                value(*k, row, index).map_err(|source| sqlx::Error::ColumnDecode {
                    index: index.to_string(),
                    source,
                })?,
            );
        }
        out.push(values);
    }
    Ok(out)
}

/// Binds [`Value`]s to a query of any driver (the types differ, the mapping does not).
macro_rules! bind_values {
    ($query:expr, $params:expr) => {{
        let mut q = $query;
        for p in $params {
            q = match p {
                // A typed NULL: bigint converts to every column type on assignment.
                Value::Null => q.bind(None::<i64>),
                Value::Bool(v) => q.bind(*v),
                Value::Int(v) => q.bind(*v),
                Value::Float(v) => q.bind(*v),
                Value::Text(v) => q.bind(v.as_str()),
                Value::Bytes(v) => q.bind(v.as_slice()),
                Value::Timestamp(v) => q.bind(*v),
                // Decimals, JSON and arrays, as the driver's `bind_other` (in its
                // own file) binds them.
                other => bind_other(q, other),
            };
        }
        q
    }};
}
pub(crate) use bind_values;

/// `sql` with each `?` outside a quoted string replaced by its parameter as a
/// literal ([`Driver::literal`]); `None` when a parameter has none, or the
/// counts of placeholders and parameters differ.
pub(super) fn inline<D: Driver>(sql: &str, params: &[Value]) -> Option<String> {
    let mut values = params.iter();
    let mut out = String::with_capacity(sql.len() + 24 * params.len());
    let mut in_quote = false;
    for ch in sql.chars() {
        match ch {
            '\'' => {
                in_quote = !in_quote;
                out.push(ch);
            }
            '?' if !in_quote => out.push_str(&D::literal(values.next()?)?),
            _ => out.push(ch),
        }
    }
    values.next().is_none().then_some(out)
}

/// Runs catalogue queries that each yield one text column, and collects the lines.
pub(crate) async fn catalogue_lines<D: Driver>(
    c: &mut D::Connection,
    queries: &[String],
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for sql in queries {
        for row in D::fetch(c, sql, &[])
            .await
            .map_err(|e| Error::db("cannot read the schema", db_message(&e)))?
        {
            if let Some(line) = row.into_iter().next().and_then(Value::into_string) {
                lines.push(line);
            }
        }
    }
    Ok(lines)
}

/// Runs `{explain} {sql}` (an EXPLAIN that prints JSON in one cell) and parses
/// that cell; `null` when there is none or it is not JSON.
pub(crate) async fn explain_json<D: Driver>(
    c: &mut D::Connection,
    explain: &str,
    sql: &str,
    params: &[Value],
) -> sqlx::Result<serde_json::Value> {
    let rows = D::fetch(c, &format!("{explain} {sql}"), params).await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .and_then(Value::into_string)
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inlines_parameters_outside_quotes_only() {
        type Pg = crate::db::postgres::Postgres;
        let ts = chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
            .and_then(|d| d.and_hms_micro_opt(3, 4, 5, 6))
            .map(Value::Timestamp);
        let params = [
            Value::Int(-5),
            Value::Text("it's ?".into()),
            Value::Bytes(vec![0, 0xff]),
            Value::Null,
            Value::Float(f64::NEG_INFINITY),
            ts.unwrap_or(Value::Null),
        ];
        assert_eq!(
            inline::<Pg>("a = ? AND b = '?' AND c = ? AND d = ? AND e IS ? AND f = ? AND g = ?", &params)
                .as_deref(),
            Some(
                "a = '-5'::int8 AND b = '?' AND c = 'it''s ?'::text AND d = '\\x00ff'::bytea \
                 AND e IS NULL::int8 AND f = '-Infinity'::float8 AND g = '2026-01-02 03:04:05.000006'::timestamp"
            )
        );
        // Too few or too many parameters, and text PostgreSQL cannot hold.
        assert_eq!(inline::<Pg>("a = ? AND b = ?", &params[..1]), None);
        assert_eq!(inline::<Pg>("a = ?", &params[..2]), None);
        assert_eq!(inline::<Pg>("a = ?", &[Value::Text("\0".into())]), None);
        // The other drivers send parameters apart.
        assert_eq!(
            inline::<crate::db::mysql::MySql>("a = ?", &params[..1]),
            None
        );
    }
}
