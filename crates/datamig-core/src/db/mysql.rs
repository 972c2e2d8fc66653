//! MariaDB and MySQL: DDL commits implicitly, so a migration that fails halfway
//! cannot be rolled back and is recorded as dirty. The schema lock is `GET_LOCK`
//! with a zero timeout, polled, and its result checked for 1 (with -1 MariaDB
//! 10.11 answers NULL at once and locks nothing).

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlRow};
use sqlx::{Column, ConnectOptions as _, Connection, MySqlConnection, Row as _, TypeInfo};

use super::{BulkUpdate, ConnectOptions, Driver, Row, Transient, Value};
use crate::config::DatabaseUrl;
use crate::{Error, Result};

type Query<'q> = sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>;

/// A decimal, JSON or an array, which this database has no parameter type
/// for: bound as text (a decimal's digits, JSON's text, an array as a JSON
/// array), which the column's type converts on assignment.
fn bind_other<'q>(q: Query<'q>, v: &'q Value) -> Query<'q> {
    q.bind(v.portable())
}

pub(crate) struct MySql;

/// MySQL's own error number (1045, 1146, …), which users search for.
pub(crate) fn error_number(err: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    err.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number())
}

/// The first `"table"` object of an `EXPLAIN FORMAT=JSON` plan (MariaDB nests
/// it in `nested_loop`, MySQL puts it under `query_block`).
fn first_table(plan: &serde_json::Value) -> Option<&serde_json::Value> {
    match plan {
        serde_json::Value::Object(map) => map
            .get("table")
            .or_else(|| map.values().find_map(first_table)),
        serde_json::Value::Array(items) => items.iter().find_map(first_table),
        _ => None,
    }
}

/// Lock names are server-wide, so the lock is named after the database too.
const LOCK_NAME: &str = super::MYSQL_LOCK_NAME_SQL;

/// MySQL allows 65 535 placeholders a statement; a bulk update is split below that.
const MAX_PLACEHOLDERS: usize = 60_000;

fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|p| super::quote_with(p, '`'))
        .collect::<Vec<_>>()
        .join(".")
}
/// How a result column becomes a [`Value`], resolved once per result from its type.
#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Int1,
    Int2,
    Int4,
    Int8,
    Unsigned,
    Float4,
    Float8,
    DateTime,
    Timestamp,
    Date,
    Bytes,
    /// DECIMAL, which the server sends as its text in both protocols.
    Decimal,
    /// MySQL's JSON (MariaDB's is LONGTEXT to a client, and reads as text).
    Json,
    /// Text; bytes when they are not UTF-8.
    Text,
}

impl Kind {
    fn of(col: &sqlx::mysql::MySqlColumn) -> Kind {
        match col.type_info().name() {
            "BOOLEAN" => Kind::Bool,
            "TINYINT" => Kind::Int1,
            "SMALLINT" => Kind::Int2,
            "INT" | "MEDIUMINT" => Kind::Int4,
            "BIGINT" => Kind::Int8,
            "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED"
            | "BIGINT UNSIGNED" => Kind::Unsigned,
            "FLOAT" => Kind::Float4,
            "DOUBLE" => Kind::Float8,
            "DATETIME" => Kind::DateTime,
            "TIMESTAMP" => Kind::Timestamp,
            "DATE" => Kind::Date,
            "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BINARY" | "VARBINARY" => Kind::Bytes,
            "DECIMAL" => Kind::Decimal,
            "JSON" => Kind::Json,
            _ => Kind::Text,
        }
    }
}

/// The rows of a result as [`Value`]s ([`super::decode_rows`]).
fn decode_all(rows: &[MySqlRow]) -> sqlx::Result<Vec<Row>> {
    fn get<'r, T: sqlx::Decode<'r, sqlx::MySql>>(
        raw: sqlx::mysql::MySqlValueRef<'r>,
    ) -> std::result::Result<T, sqlx::error::BoxDynError> {
        T::decode(raw)
    }
    super::decode_rows(
        rows,
        |c| Ok(Kind::of(c)),
        |kind, row, index| {
            let raw = row.try_get_raw(index)?;
            match kind {
                Kind::Bool => get::<bool>(raw).map(Value::Bool),
                Kind::Int1 => get::<i8>(raw).map(|v| Value::Int(v.into())),
                Kind::Int2 => get::<i16>(raw).map(|v| Value::Int(v.into())),
                Kind::Int4 => get::<i32>(raw).map(|v| Value::Int(v.into())),
                Kind::Int8 => get::<i64>(raw).map(Value::Int),
                Kind::Unsigned => get::<u64>(raw).and_then(|v| Ok(Value::Int(i64::try_from(v)?))),
                Kind::Float4 => get::<f32>(raw).map(|v| Value::Float(v.into())),
                Kind::Float8 => get::<f64>(raw).map(Value::Float),
                Kind::DateTime => get::<chrono::NaiveDateTime>(raw).map(Value::Timestamp),
                // TIMESTAMP comes in the session's time zone; sqlx reads it as UTC.
                Kind::Timestamp => get::<chrono::DateTime<chrono::Utc>>(raw)
                    .map(|t| Value::Timestamp(t.naive_utc())),
                Kind::Date => get::<chrono::NaiveDate>(raw).map(|d| Value::Text(d.to_string())),
                Kind::Bytes => get::<Vec<u8>>(raw).map(Value::Bytes),
                Kind::Decimal => get::<&str>(raw).map(|d| Value::Decimal(d.to_owned())),
                Kind::Json => get::<&str>(raw).map(|text| {
                    serde_json::from_str(text)
                        .map_or_else(|_| Value::Text(text.to_owned()), Value::Json)
                }),
                Kind::Text => match get::<&str>(raw) {
                    Ok(text) => Ok(Value::Text(text.to_owned())),
                    Err(_) => get::<Vec<u8>>(row.try_get_raw(index)?).map(Value::Bytes),
                },
            }
        },
    )
}

impl Driver for MySql {
    type Connection = MySqlConnection;
    const TABLE_EXISTS_SQL: &'static str = "SELECT count(*) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = ?";
    const COLUMN_EXISTS_SQL: &'static str = "SELECT count(*) FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ?";
    // REPEATABLE READ, the default, takes gap locks on the rows a locking read passes.
    const READ_COMMITTED: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED");
    const INTEGER_CAST: Option<&'static str> = Some("SIGNED");

    const TRANSACTIONAL_DDL: bool = false;
    const BEGIN: &'static str = "BEGIN";
    const BOOKKEEPING_DDL: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS datamig_schema_history (
            version BIGINT NOT NULL PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            checksum CHAR(64) NOT NULL,
            applied_at DATETIME(6) NOT NULL,
            duration_ms BIGINT NOT NULL DEFAULT 0,
            applied_by VARCHAR(255) NOT NULL,
            dirty SMALLINT NOT NULL DEFAULT 0
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE IF NOT EXISTS datamig_schema_log (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            at DATETIME(6) NOT NULL,
            action VARCHAR(32) NOT NULL,
            version BIGINT NULL,
            name VARCHAR(255) NULL,
            detail TEXT NULL,
            actor VARCHAR(255) NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE IF NOT EXISTS datamig_runs (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            job VARCHAR(200) NOT NULL,
            args TEXT NOT NULL,
            state VARCHAR(20) NOT NULL,
            position TEXT NULL,
            rows_done BIGINT NOT NULL DEFAULT 0,
            rows_changed BIGINT NOT NULL DEFAULT 0,
            rows_rejected BIGINT NOT NULL DEFAULT 0,
            batches_done BIGINT NOT NULL DEFAULT 0,
            total_rows BIGINT NULL,
            batch_size BIGINT NOT NULL,
            elapsed_ms BIGINT NOT NULL DEFAULT 0,
            max_batch_ms BIGINT NOT NULL DEFAULT 0,
            bookkeeping_ms BIGINT NOT NULL DEFAULT 0,
            started_at DATETIME(6) NOT NULL,
            updated_at DATETIME(6) NOT NULL,
            finished_at DATETIME(6) NULL,
            owner VARCHAR(255) NULL,
            last_error TEXT NULL,
            verification TEXT NULL,
            INDEX datamig_runs_job (job, id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE IF NOT EXISTS datamig_rejects (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            run_id BIGINT NOT NULL,
            row_key TEXT NOT NULL,
            reason TEXT NOT NULL,
            at DATETIME(6) NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE IF NOT EXISTS datamig_batches (
            run_id BIGINT NOT NULL,
            batch BIGINT NOT NULL,
            rows_done BIGINT NOT NULL,
            rows_changed BIGINT NOT NULL,
            rows_rejected BIGINT NOT NULL,
            ms BIGINT NOT NULL,
            waited_ms BIGINT NOT NULL,
            retries BIGINT NOT NULL,
            at_ms BIGINT NOT NULL,
            PRIMARY KEY (run_id, batch)
        ) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS datamig_partitions (
            run_id BIGINT NOT NULL,
            part BIGINT NOT NULL,
            lo BIGINT,
            hi BIGINT,
            position BIGINT,
            done SMALLINT NOT NULL DEFAULT 0,
            owner VARCHAR(255),
            lease_until BIGINT NOT NULL DEFAULT 0,
            rows_done BIGINT NOT NULL DEFAULT 0,
            rows_changed BIGINT NOT NULL DEFAULT 0,
            rows_rejected BIGINT NOT NULL DEFAULT 0,
            batches_done BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, part)
        ) ENGINE=InnoDB",
    ];

    async fn connect(
        url: &DatabaseUrl,
        _opts: &ConnectOptions,
    ) -> Result<MySqlConnection, sqlx::Error> {
        // Keep the server's own SQL mode and time zone: a migration must behave as
        // it does in the mysql client (sqlx would otherwise turn `||` into CONCAT).
        let options = MySqlConnectOptions::from_str(url.expose())?
            .pipes_as_concat(false)
            .no_engine_substitution(false)
            .timezone(None)
            .log_slow_statements(super::SLOW_STATEMENT_LOG, super::SLOW_STATEMENT);
        MySqlConnection::connect_with(&options).await
    }

    async fn execute(c: &mut MySqlConnection, sql: &str, params: &[Value]) -> sqlx::Result<u64> {
        Ok(super::bind_values!(sqlx::query(sql), params)
            .execute(c)
            .await?
            .rows_affected())
    }

    async fn fetch(c: &mut MySqlConnection, sql: &str, params: &[Value]) -> sqlx::Result<Vec<Row>> {
        super::bind_values!(sqlx::query(sql), params)
            .fetch_all(c)
            .await
            .and_then(|rows| decode_all(&rows))
    }

    async fn script(c: &mut MySqlConnection, sql: &str) -> sqlx::Result<()> {
        sqlx::Executor::execute(&mut *c, sqlx::raw_sql(sql))
            .await
            .map(drop)
    }

    async fn script_rows(c: &mut MySqlConnection, sql: &str) -> sqlx::Result<u64> {
        Ok(sqlx::Executor::execute(&mut *c, sqlx::raw_sql(sql))
            .await?
            .rows_affected())
    }

    async fn close(c: MySqlConnection) {
        let _ = c.close().await;
    }

    async fn try_lock(c: &mut MySqlConnection, name: &str) -> Result<bool> {
        let rows = Self::fetch(
            c,
            &format!("SELECT GET_LOCK({LOCK_NAME}, 0)"),
            &[name.into()],
        )
        .await
        .map_err(|e| {
            Error::db(
                format!("cannot take the {name} lock"),
                super::db_message(&e),
            )
        })?;
        match rows.first().and_then(|r| r.first()) {
            Some(Value::Int(1)) => Ok(true),
            Some(Value::Int(0)) => Ok(false),
            _ => Err(Error::db(
                format!("cannot take the {name} lock"),
                "GET_LOCK returned NULL (server error)",
            )),
        }
    }

    async fn unlock(c: &mut MySqlConnection, name: &str) -> Result<()> {
        Self::fetch(
            c,
            &format!("SELECT RELEASE_LOCK({LOCK_NAME})"),
            &[name.into()],
        )
        .await
        .map(drop)
        .map_err(|e| {
            Error::db(
                format!("cannot release the {name} lock"),
                super::db_message(&e),
            )
        })
    }

    async fn lock_holder(c: &mut MySqlConnection, name: &str) -> Option<String> {
        let sql = format!(
            "SELECT p.ID, p.USER, p.HOST, p.TIME FROM information_schema.PROCESSLIST p WHERE p.ID = IS_USED_LOCK({LOCK_NAME})"
        );
        let rows = Self::fetch(c, &sql, &[name.into()]).await.ok()?;
        let row = rows.into_iter().next()?;
        let text = |i: usize| {
            row.get(i)
                .cloned()
                .and_then(Value::into_string)
                .unwrap_or_else(|| "?".into())
        };
        Some(format!(
            "connection {} ({}@{}, connected {} s ago)",
            text(0),
            text(1),
            text(2),
            text(3)
        ))
    }

    fn timeouts(
        lock: std::time::Duration,
        statement: Option<std::time::Duration>,
        idle: Option<std::time::Duration>,
    ) -> Vec<String> {
        // InnoDB row locks and metadata locks wait whole seconds (at least 1);
        // max_statement_time takes fractions, 0 is no limit.
        let lock_secs = lock.as_secs_f64().ceil().max(1.0);
        vec![
            format!("SET SESSION innodb_lock_wait_timeout = {lock_secs:.0}"),
            format!("SET SESSION lock_wait_timeout = {lock_secs:.0}"),
            format!(
                "SET SESSION max_statement_time = {:.3}",
                statement.map_or(0.0, |d| d.as_secs_f64().max(0.001))
            ),
            // MariaDB 10.3+: whole seconds, 0 is no limit.
            format!(
                "SET SESSION idle_transaction_timeout = {:.0}",
                idle.map_or(0.0, |d| d.as_secs_f64().ceil().max(1.0))
            ),
        ]
        .into_iter()
        // And idle outside one: a session whose client is gone would otherwise keep
        // the job's named lock for wait_timeout (8 hours by default).
        .chain(idle.map(|d| {
            format!(
                "SET SESSION wait_timeout = {:.0}",
                d.as_secs_f64().ceil().max(1.0)
            )
        }))
        .collect()
    }

    fn permission_denied(err: &(dyn sqlx::error::DatabaseError + 'static)) -> bool {
        // The MariaDB error numbers: 1044 database, 1142 table, 1143 column and
        // 1227 privilege denied; 1290 --read-only (a replica).
        matches!(error_number(err), Some(1044 | 1142 | 1143 | 1227 | 1290))
    }

    fn transient(err: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<Transient> {
        match error_number(err)? {
            1205 => Some(Transient::LockTimeout),
            // MariaDB's max_statement_time, MySQL's max_execution_time.
            1969 | 3024 => Some(Transient::StatementTimeout),
            1213 => Some(Transient::Deadlock),
            // Killed (KILL), server shutdown, gone away, lost during a query.
            1927 | 1053 | 2006 | 2013 => Some(Transient::ConnectionLost),
            _ => None,
        }
    }

    async fn bulk_update(
        c: &mut MySqlConnection,
        spec: &BulkUpdate,
        rows: &[Row],
    ) -> sqlx::Result<u64> {
        // The new values as a derived table `v` (columns c0, c1, … so that a
        // guard's filter names only the table's columns) joined on the key.
        let q = |n: &str| super::quote_with(n, '`');
        let n_keys = spec.keys.len();
        let guards = spec.guard.as_ref().map_or(0, |g| g.columns.len());
        let width = n_keys + spec.sets.len() + guards;
        let join: Vec<String> = spec
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} = v.c{i}", q(k)))
            .collect();
        let sets: Vec<String> = spec
            .sets
            .iter()
            .enumerate()
            .map(|(j, s)| format!("t.{} = v.c{}", q(s), n_keys + j))
            .collect();
        let mut conditions = vec![format!("t.{} BETWEEN ? AND ?", q(&spec.keys[0]))];
        let mut tail = vec![&spec.lo, &spec.hi];
        if let Some(guard) = &spec.guard {
            let first_guard = n_keys + spec.sets.len();
            for (i, col) in guard.columns.iter().enumerate() {
                // Text compares as bytes: under a case-insensitive collation `<=>`
                // would take a change from 'A' to 'a' for no change.
                let textual = guard.types.get(i).is_some_and(|t| {
                    let t = t.to_ascii_lowercase();
                    t.contains("char") || t.contains("text") || t == "enum" || t == "set"
                });
                let v = format!("v.c{}", first_guard + i);
                conditions.push(if textual {
                    format!("BINARY t.{} <=> BINARY {v}", q(col))
                } else {
                    format!("t.{} <=> {v}", q(col))
                });
            }
            if let Some((sql, params)) = &guard.filter {
                conditions.push(format!("({sql})"));
                tail.extend(params);
            }
        }
        let update = |values: &str| {
            format!(
                "UPDATE {} AS t JOIN {values} AS v ON {} SET {} WHERE {}",
                quote_name(&spec.table),
                join.join(" AND "),
                sets.join(", "),
                conditions.join(" AND ")
            )
        };
        let mut changed = 0;
        if let Some(types) = json_table_types(spec) {
            // One JSON document a statement: parsed by the server in a fraction
            // of the time a UNION ALL of one-row SELECTs takes (BENCHMARKS.md).
            let columns = types
                .iter()
                .enumerate()
                .map(|(i, t)| format!("c{i} {t} PATH '$[{i}]' ERROR ON ERROR"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = update(&format!("JSON_TABLE(?, '$[*]' COLUMNS({columns}))"));
            if let Some(documents) = json_documents(rows, &types) {
                for doc in documents {
                    let doc = Value::Text(doc);
                    let params: Vec<&Value> =
                        std::iter::once(&doc).chain(tail.iter().copied()).collect();
                    let query = super::bind_values!(sqlx::query(&sql), params);
                    changed += query.execute(&mut *c).await?.rows_affected();
                }
                return Ok(changed);
            }
        }
        // Values JSON cannot carry as they are (bytes, a NaN): one-row SELECTs,
        // one statement per chunk of rows that fits MySQL's placeholder limit.
        let first = (0..width)
            .map(|i| format!("? AS c{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rest = vec!["?"; width].join(", ");
        for chunk in rows.chunks((MAX_PLACEHOLDERS.saturating_sub(tail.len()) / width).max(1)) {
            let mut values = format!("(SELECT {first}");
            for _ in 1..chunk.len() {
                values.push_str(" UNION ALL SELECT ");
                values.push_str(&rest);
            }
            values.push(')');
            let sql = update(&values);
            // A timestamp goes as its text: bound as a DATETIME, MariaDB gives the
            // derived table's column room for whole seconds only ("Data too long"
            // for one with microseconds).
            let values: Vec<Value> = chunk
                .iter()
                .flat_map(|r| &r[..width])
                .map(|v| match v {
                    Value::Timestamp(t) => Value::Text(timestamp_text(t)),
                    v => v.clone(),
                })
                .collect();
            let params: Vec<&Value> = values.iter().chain(tail.iter().copied()).collect();
            let query = super::bind_values!(sqlx::query(&sql), params);
            changed += query.execute(&mut *c).await?.rows_affected();
        }
        Ok(changed)
    }

    async fn column_types(
        c: &mut MySqlConnection,
        table: &str,
        columns: &[String],
    ) -> sqlx::Result<Vec<String>> {
        // The bulk update needs no casts (the join and SET convert on assignment);
        // a guard compares text columns as bytes.
        let name = table.rsplit('.').next().unwrap_or(table);
        let mut types = Vec::with_capacity(columns.len());
        for col in columns {
            let rows = Self::fetch(
                c,
                "SELECT DATA_TYPE FROM information_schema.COLUMNS
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
                &[name.into(), col.as_str().into()],
            )
            .await?;
            let ty = rows
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
                .and_then(Value::into_string);
            types.push(ty.ok_or_else(|| {
                sqlx::Error::Protocol(format!("column `{col}` of table `{table}` does not exist"))
            })?);
        }
        Ok(types)
    }

    async fn estimate(
        c: &mut MySqlConnection,
        sql: &str,
        params: &[Value],
    ) -> sqlx::Result<Option<i64>> {
        let plan = super::explain_json::<Self>(c, "EXPLAIN FORMAT=JSON", sql, params).await?;
        Ok(first_table(&plan).and_then(|table| {
            // The rows the planner expects to read, and the share its filter keeps:
            // `rows` on MariaDB, `rows_examined_per_scan` on MySQL; `filtered` a
            // number on MariaDB, a string on MySQL.
            let number = |v: &serde_json::Value| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            };
            let rows =
                number(&table["rows"]).or_else(|| number(&table["rows_examined_per_scan"]))?;
            let filtered = number(&table["filtered"]).unwrap_or(100.0);
            super::rows_estimate(rows * filtered / 100.0)
        }))
    }

    async fn full_scans(
        c: &mut MySqlConnection,
        sql: &str,
        params: &[Value],
        table: &str,
    ) -> sqlx::Result<Vec<String>> {
        fn walk(v: &serde_json::Value, table: &str, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(t) = map.get("table") {
                        if t["table_name"] == table && t["access_type"] == "ALL" {
                            out.push(format!("a full scan of {table} (access type ALL)"));
                        }
                    }
                    for child in map.values() {
                        walk(child, table, out);
                    }
                }
                serde_json::Value::Array(items) => {
                    for item in items {
                        walk(item, table, out);
                    }
                }
                _ => {}
            }
        }
        let plan = super::explain_json::<Self>(c, "EXPLAIN FORMAT=JSON", sql, params).await?;
        let bare = table.rsplit('.').next().unwrap_or(table);
        let mut out = Vec::new();
        walk(&plan, bare, &mut out);
        out.dedup();
        Ok(out)
    }

    async fn health(c: &mut MySqlConnection) -> sqlx::Result<super::Health> {
        // Sessions running a statement, as Threads_running counts them, without
        // this one (MariaDB cannot tell this process's reader from others).
        let sql = "SELECT
              (SELECT count(*) FROM information_schema.PROCESSLIST
                 WHERE COMMAND NOT IN ('Sleep', 'Daemon', 'Binlog Dump', 'Binlog Dump GTID')
                   AND USER <> 'system user' AND ID <> CONNECTION_ID()),
              (SELECT max(TIMESTAMPDIFF(SECOND, trx_started, NOW())) FROM information_schema.INNODB_TRX
                 WHERE trx_mysql_thread_id <> CONNECTION_ID())";
        let row = Self::fetch(c, sql, &[])
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        Ok(super::Health {
            active_sessions: row.first().and_then(Value::as_i64).unwrap_or(0),
            oldest_transaction: super::seconds(row.get(1)),
            // A primary does not know how far its replicas are: --replica names them.
            replica_lag: None,
        })
    }

    async fn replica_lag(c: &mut MySqlConnection) -> sqlx::Result<Option<std::time::Duration>> {
        // SHOW SLAVE STATUS: MariaDB before 10.5 and MySQL before 8.0.22 know no other spelling.
        let rows = sqlx::query("SHOW SLAVE STATUS").fetch_all(&mut *c).await?;
        let Some(row) = rows.first() else {
            return Err(sqlx::Error::Protocol(
                "not a replica (SHOW SLAVE STATUS is empty)".into(),
            ));
        };
        let lag: Option<u64> = row
            .try_get_unchecked::<Option<u64>, _>("Seconds_Behind_Master")
            .ok()
            .flatten();
        Ok(lag.map(std::time::Duration::from_secs))
    }

    fn on_conflict(columns: &[String], _on: &[String], sets: &[String]) -> String {
        // Not INSERT IGNORE, which would also turn a bad value or a missing
        // parent into a warning: a no-op update of the row that is there.
        // MariaDB takes any unique key; `on` cannot be named.
        match sets.first() {
            None => {
                let first = columns.first().map_or("", String::as_str);
                format!(" ON DUPLICATE KEY UPDATE {first} = {first}")
            }
            Some(_) => {
                let updates: Vec<String> =
                    sets.iter().map(|c| format!("{c} = VALUES({c})")).collect();
                format!(" ON DUPLICATE KEY UPDATE {}", updates.join(", "))
            }
        }
    }

    fn compare_keys(keys: &[String], marks: &[String], op: &str) -> (String, Vec<usize>) {
        // (a, b) > (?, ?) written out as a > ? OR (a = ? AND b > ?), which MariaDB
        // turns into an index range; it does not for row values.
        if keys.len() == 1 {
            return (format!("{} {op} {}", keys[0], marks[0]), vec![0]);
        }
        let strict = op.trim_end_matches('=');
        let mut terms = Vec::new();
        let mut order = Vec::new();
        for i in 0..keys.len() {
            let mut parts: Vec<String> = (0..i)
                .map(|j| format!("{} = {}", keys[j], marks[j]))
                .collect();
            order.extend(0..i);
            let last_op = if i + 1 == keys.len() { op } else { strict };
            parts.push(format!("{} {last_op} {}", keys[i], marks[i]));
            order.push(i);
            terms.push(format!("({})", parts.join(" AND ")));
        }
        (format!("({})", terms.join(" OR ")), order)
    }

    async fn snapshot(c: &mut MySqlConnection) -> Result<Vec<String>> {
        const WHERE: &str = "TABLE_SCHEMA = DATABASE() AND TABLE_NAME NOT LIKE 'datamig\\_%'";
        let queries = [
            format!("SELECT CONCAT('table ', TABLE_NAME, ' ', TABLE_TYPE) FROM information_schema.TABLES WHERE {WHERE}"),
            format!(
                "SELECT CONCAT('column ', TABLE_NAME, '.', COLUMN_NAME, ' ', COLUMN_TYPE,
                        IF(IS_NULLABLE = 'NO', ' not null', ''), IFNULL(CONCAT(' default ', COLUMN_DEFAULT), ''),
                        IF(EXTRA <> '', CONCAT(' ', EXTRA), ''))
                 FROM information_schema.COLUMNS WHERE {WHERE}"
            ),
            format!(
                "SELECT CONCAT('index ', TABLE_NAME, '.', INDEX_NAME, IF(NON_UNIQUE = 0, ' unique', ''), ' (',
                        GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX SEPARATOR ', '), ')')
                 FROM information_schema.STATISTICS WHERE {WHERE} GROUP BY TABLE_NAME, INDEX_NAME, NON_UNIQUE"
            ),
            "SELECT CONCAT('foreign key ', TABLE_NAME, '.', CONSTRAINT_NAME, ' -> ', REFERENCED_TABLE_NAME,
                    ' on delete ', DELETE_RULE, ' on update ', UPDATE_RULE)
             FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()"
                .to_string(),
            "SELECT CONCAT('check ', TABLE_NAME, '.', CONSTRAINT_NAME, ': ', CHECK_CLAUSE)
             FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()"
                .to_string(),
            "SELECT CONCAT('view ', TABLE_NAME, ': ', VIEW_DEFINITION) FROM information_schema.VIEWS
             WHERE TABLE_SCHEMA = DATABASE()"
                .to_string(),
            "SELECT CONCAT('trigger ', EVENT_OBJECT_TABLE, '.', TRIGGER_NAME, ' ', ACTION_TIMING, ' ', EVENT_MANIPULATION)
             FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
                .to_string(),
            "SELECT CONCAT(LOWER(ROUTINE_TYPE), ' ', ROUTINE_NAME) FROM information_schema.ROUTINES
             WHERE ROUTINE_SCHEMA = DATABASE()"
                .to_string(),
        ];
        super::catalogue_lines::<Self>(c, &queries).await
    }

    fn analyze_sql(table: &str) -> String {
        format!("ANALYZE TABLE {table}")
    }

    fn epoch_ms_sql() -> &'static str {
        "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"
    }

    fn now_sql() -> &'static str {
        "UTC_TIMESTAMP(6)"
    }

    fn timestamp_text(column: &str) -> String {
        format!("DATE_FORMAT({column}, '%Y-%m-%dT%H:%i:%sZ')")
    }

    fn quote_ident(name: &str) -> String {
        quote_name(name)
    }
}

/// The most JSON a bulk update sends in one statement: well under the server's
/// default `max_allowed_packet` (16 MiB).
const MAX_JSON_DOCUMENT: usize = 4 << 20;

/// The `JSON_TABLE` column type each of a bulk update's values (keys, new
/// values, guard values) travels as, or `None` when one cannot go that way.
/// Keys keep their integer type, so that the join uses the primary key; the
/// rest are numbers or text, converted by the assignment as a bound value is
/// (strict mode still refuses what does not fit). Text keys, bytes and
/// spatial types take the other way.
fn json_table_types(spec: &BulkUpdate) -> Option<Vec<&'static str>> {
    let n_keys = spec.keys.len();
    let guard_types = spec
        .guard
        .as_ref()
        .map(|g| g.types.as_slice())
        .unwrap_or_default();
    let all = spec.types.iter().chain(guard_types);
    let mut out = Vec::new();
    for (i, t) in all.enumerate() {
        let t = t.to_ascii_lowercase();
        let integer = matches!(
            t.as_str(),
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint"
        );
        out.push(match t.as_str() {
            _ if integer => "BIGINT",
            _ if i < n_keys => return None,
            "float" | "double" | "real" => "DOUBLE",
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "decimal"
            | "numeric" | "date" | "datetime" | "timestamp" | "time" | "year" | "enum" | "set" => {
                "LONGTEXT"
            }
            _ => return None,
        });
    }
    (out.len() == n_keys + spec.sets.len() + guard_types.len()).then_some(out)
}

/// The rows' first values (one for each of `types`, the `JSON_TABLE` column
/// types) as JSON arrays of arrays, in documents of at most about
/// [`MAX_JSON_DOCUMENT`] bytes; `None` if a value has no exact JSON form (bytes,
/// a NaN or an infinity) or is not a number where a number column takes it
/// (`JSON_TABLE` would read text there as 0 where a bound value is refused).
fn json_documents(rows: &[Row], types: &[&str]) -> Option<Vec<String>> {
    use std::fmt::Write as _;
    let mut docs = Vec::new();
    let mut doc = String::new();
    for row in rows {
        doc.push(if doc.is_empty() { '[' } else { ',' });
        doc.push('[');
        for (j, (v, ty)) in row.iter().zip(types).enumerate() {
            if j > 0 {
                doc.push(',');
            }
            let number = matches!(v, Value::Null | Value::Int(_) | Value::Bool(_))
                || (*ty == "DOUBLE" && matches!(v, Value::Float(_)));
            if *ty != "LONGTEXT" && !number {
                return None;
            }
            match v {
                Value::Null => doc.push_str("null"),
                Value::Int(n) => {
                    let _ = write!(doc, "{n}");
                }
                Value::Bool(b) => doc.push(if *b { '1' } else { '0' }),
                // `{:?}` is the shortest form that reads back as the same double.
                Value::Float(f) if f.is_finite() => {
                    let _ = write!(doc, "{f:?}");
                }
                Value::Text(t) => json_string(&mut doc, t),
                Value::Timestamp(t) => json_string(&mut doc, &timestamp_text(t)),
                Value::Decimal(_)
                | Value::Json(_)
                | Value::Array(_)
                | Value::Float(_)
                | Value::Bytes(_) => return None,
            }
        }
        doc.push(']');
        if doc.len() >= MAX_JSON_DOCUMENT {
            doc.push(']');
            docs.push(std::mem::take(&mut doc));
        }
    }
    if !doc.is_empty() {
        doc.push(']');
        docs.push(doc);
    }
    Some(docs)
}

/// A timestamp as MariaDB reads it from text, to the microsecond.
fn timestamp_text(t: &chrono::NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// `text` as a JSON string.
fn json_string(out: &mut String, text: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::{json_documents, MAX_JSON_DOCUMENT};
    use crate::db::Value;

    #[test]
    fn rows_become_json_documents_that_read_back_as_the_values() {
        let at = chrono::NaiveDate::from_ymd_opt(2026, 3, 4)
            .and_then(|d| d.and_hms_micro_opt(5, 6, 7, 8))
            .unwrap();
        let rows = vec![vec![
            Value::Int(i64::MIN),
            Value::Float(0.1),
            Value::Text("a \"q\" \\ \t\n\u{1} ☃".into()),
            Value::Timestamp(at),
            Value::Bool(true),
            Value::Null,
            Value::Text("not sent".into()),
        ]];
        let types = [
            "BIGINT", "DOUBLE", "LONGTEXT", "LONGTEXT", "BIGINT", "LONGTEXT",
        ];
        let docs = json_documents(&rows, &types).unwrap();
        assert_eq!(docs.len(), 1);
        let parsed: serde_json::Value = serde_json::from_str(&docs[0]).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([[
                i64::MIN,
                0.1,
                "a \"q\" \\ \t\n\u{1} ☃",
                "2026-03-04 05:06:07.000008",
                1,
                null
            ]])
        );
    }

    #[test]
    fn large_batches_are_cut_into_documents_below_the_limit() {
        let rows: Vec<Vec<Value>> = (0..20_000)
            .map(|i| vec![Value::Int(i), Value::Text("x".repeat(500))])
            .collect();
        let docs = json_documents(&rows, &["BIGINT", "LONGTEXT"]).unwrap();
        assert!(docs.len() > 1, "{} documents", docs.len());
        let mut seen = 0;
        for doc in &docs {
            assert!(doc.len() < MAX_JSON_DOCUMENT + 1024, "{}", doc.len());
            let parsed: Vec<(i64, String)> = serde_json::from_str(doc).unwrap();
            for (id, _) in parsed {
                assert_eq!(id, seen, "in order, each row once");
                seen += 1;
            }
        }
        assert_eq!(seen, 20_000);
    }

    #[test]
    fn values_without_an_exact_json_form_take_the_other_way() {
        let types = ["BIGINT", "LONGTEXT"];
        assert!(json_documents(&[vec![Value::Int(1), Value::Bytes(vec![0])]], &types).is_none());
        assert!(json_documents(&[vec![Value::Int(1), Value::Float(f64::NAN)]], &types).is_none());
        assert!(
            json_documents(&[vec![Value::Int(1), Value::Float(f64::INFINITY)]], &types).is_none()
        );
        // Text for a number column: refused by the column, not read as 0.
        let numbers = ["BIGINT", "BIGINT", "DOUBLE"];
        let row = |v: Value| vec![Value::Int(1), v, Value::Float(1.5)];
        assert!(json_documents(&[row(Value::Text("abc".into()))], &numbers).is_none());
        assert!(json_documents(&[row(Value::Float(2.5))], &numbers).is_none());
        assert!(json_documents(&[row(Value::Int(2))], &numbers).is_some());
    }
}
