//! MariaDB and MySQL: DDL commits implicitly, so a migration that fails halfway
//! cannot be rolled back and is recorded as dirty. The schema lock is `GET_LOCK`
//! with a zero timeout, polled, and its result checked for 1 (with -1 MariaDB
//! 10.11 answers NULL at once and locks nothing).

use std::str::FromStr;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions as _, Connection, MySqlConnection, Row as _};

use super::{BulkUpdate, ConnectOptions, Driver, Row, Transient, Value};
use crate::config::DatabaseUrl;
use crate::{Error, Result};

mod values;

use values::{bind_other, decode_all, json_documents, json_table_types, timestamp_text};

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
