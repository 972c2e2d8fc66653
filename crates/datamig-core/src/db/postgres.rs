//! PostgreSQL: DDL is transactional; the schema lock is a session advisory lock
//! taken with `pg_try_advisory_lock`, polled, never the blocking form (which
//! deadlocks with `CREATE INDEX CONCURRENTLY` running in a peer).

use std::fmt::Write as _;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection, PgConnection};

use super::{BulkUpdate, ConnectOptions, Driver, Row, Transient, Value};
use crate::config::DatabaseUrl;
use crate::{Error, Result};

mod values;

use values::{bind_other, decode_all, Array};

pub(crate) struct Postgres;

/// A table name, schema-qualified or not, quoted part by part.
fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|p| super::quote_with(p, '"'))
        .collect::<Vec<_>>()
        .join(".")
}

impl Driver for Postgres {
    type Connection = PgConnection;
    const TABLE_EXISTS_SQL: &'static str = "SELECT count(*) FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = ?";
    const COLUMN_EXISTS_SQL: &'static str = "SELECT count(*) FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = ? AND column_name = ?";
    const NUMBERED_PLACEHOLDERS: bool = true;

    const TRANSACTIONAL_DDL: bool = true;
    const BEGIN: &'static str = "BEGIN";

    // A batch's commit need not wait for the WAL flush: if the server crashes before
    // the flush, the batch and its checkpoint are lost together and the resumed run
    // redoes the batch. Exactly-once holds; only the last moments are redone.
    // standard_conforming_strings: a checkpoint sent as text quotes by doubling
    // `'` alone (the default since 9.1; set so that no server setting changes it).
    const BATCH_SESSION: &'static [&'static str] = &[
        "SET synchronous_commit = off",
        "SET standard_conforming_strings = on",
    ];

    // A transaction of its own that commits synchronously: its commit waits for
    // the WAL to be flushed up to its commit record, and so for every earlier
    // (asynchronous) commit too. txid_current() gives it an id, without which
    // it would write no commit record and wait for nothing.
    const FLUSH_COMMITS: Option<&'static str> =
        Some("BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT");

    // A delete batch of 5000 rows takes under 4 ms here; a round trip of its own
    // made the checkpoint 5% of it. Sent with the COMMIT, it costs its execution.
    const CHECKPOINT_WITH_COMMIT: bool = true;

    fn text_literal(text: &str) -> Option<String> {
        // PostgreSQL text cannot hold NUL; with standard_conforming_strings,
        // doubling the quote is all the escaping a literal needs.
        (!text.contains('\0')).then(|| format!("'{}'", text.replace('\'', "''")))
    }

    /// Typed as `bind_values!` binds it, so that a statement plans and compares
    /// the same with the literal as with the parameter.
    fn literal(value: &Value) -> Option<String> {
        Some(match value {
            Value::Null => "NULL::int8".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => format!("'{i}'::int8"),
            Value::Float(f) if f.is_nan() => "'NaN'::float8".into(),
            Value::Float(f) if f.is_infinite() => {
                format!("'{}Infinity'::float8", if *f < 0.0 { "-" } else { "" })
            }
            Value::Float(f) => format!("'{f}'::float8"),
            Value::Text(t) => format!("{}::text", Self::text_literal(t)?),
            Value::Bytes(b) => {
                let mut hex = String::with_capacity(b.len() * 2 + 14);
                hex.push_str("'\\x");
                for byte in b {
                    let _ = write!(hex, "{byte:02x}");
                }
                hex.push_str("'::bytea");
                hex
            }
            Value::Timestamp(t) => format!("'{}'::timestamp", t.format("%Y-%m-%d %H:%M:%S%.f")),
            Value::Decimal(d) => format!("{}::numeric", Self::text_literal(d)?),
            Value::Json(j) => format!("{}::jsonb", Self::text_literal(&j.to_string())?),
            Value::Array(_) => return None,
        })
    }

    fn timeouts(
        lock: std::time::Duration,
        statement: Option<std::time::Duration>,
        idle: Option<std::time::Duration>,
    ) -> Vec<String> {
        // 0 turns a timeout off; a set one is at least 1 ms.
        let ms = |d: std::time::Duration| d.as_millis().max(1);
        vec![
            format!("SET lock_timeout = {}", ms(lock)),
            format!("SET statement_timeout = {}", statement.map_or(0, ms)),
            format!(
                "SET idle_in_transaction_session_timeout = {}",
                idle.map_or(0, ms)
            ),
            // And idle outside one (PostgreSQL 14+): a session whose client is gone
            // would otherwise keep the job's advisory lock until TCP gives up on it.
            format!(
                "DO $$ BEGIN IF current_setting('server_version_num')::int >= 140000 THEN \
                 PERFORM set_config('idle_session_timeout', '{}', false); END IF; END $$",
                idle.map_or(0, ms)
            ),
        ]
    }

    fn permission_denied(err: &(dyn sqlx::error::DatabaseError + 'static)) -> bool {
        // insufficient_privilege; read_only_sql_transaction (a standby, or
        // default_transaction_read_only).
        matches!(err.code().as_deref(), Some("42501" | "25006"))
    }

    fn transient(err: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<Transient> {
        // SQLSTATEs: https://www.postgresql.org/docs/15/errcodes-appendix.html
        match err.code()?.as_ref() {
            "55P03" => Some(Transient::LockTimeout),
            "57014" => Some(Transient::StatementTimeout),
            "40001" | "40P01" => Some(Transient::Deadlock),
            // Terminated by an administrator or a shutdown, or the connection broke;
            // or ended by the idle timeouts datamig sets (25P03, 57P05: a session left
            // idle past the batch deadline, by a long --sleep or a pause).
            "57P01" | "57P02" | "57P03" | "57P05" | "25P03" | "08000" | "08003" | "08006"
            | "08001" | "08004" => Some(Transient::ConnectionLost),
            _ => None,
        }
    }

    /// datamig binds integers, text, booleans, floats, bytes and timestamps as
    /// themselves; a key of another type (`uuid`, say) is read as text, and its
    /// text cast back to the column's type where the key is compared.
    fn value_mark(column_type: &str) -> String {
        if column_type.is_empty() {
            "?".into()
        } else {
            format!("CAST(? AS {column_type})")
        }
    }

    fn key_mark(column_type: &str) -> String {
        match column_type {
            "smallint"
            | "integer"
            | "bigint"
            | "oid"
            | "boolean"
            | "real"
            | "double precision"
            | "bytea"
            | "text"
            | "character varying"
            | "character"
            | "bpchar"
            | "name"
            | "timestamp without time zone"
            | "timestamp with time zone" => "?".into(),
            other => format!("CAST(? AS {other})"),
        }
    }

    /// `xmin` changes with every write to a row, whichever columns it touched (a
    /// filter column the transform does not read included); frozen rows keep it.
    fn guard_select(_columns: &[String]) -> Vec<String> {
        vec!["xmin::text".into()]
    }
    const BOOKKEEPING_DDL: &'static [&'static str] = &[
        "CREATE TABLE IF NOT EXISTS datamig_schema_history (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL,
            duration_ms BIGINT NOT NULL DEFAULT 0,
            applied_by TEXT NOT NULL,
            dirty SMALLINT NOT NULL DEFAULT 0
        )",
        "CREATE TABLE IF NOT EXISTS datamig_schema_log (
            id BIGSERIAL PRIMARY KEY,
            at TIMESTAMPTZ NOT NULL,
            action TEXT NOT NULL,
            version BIGINT,
            name TEXT,
            detail TEXT,
            actor TEXT NOT NULL
        )",
        "CREATE TABLE IF NOT EXISTS datamig_runs (
            id BIGSERIAL PRIMARY KEY,
            job TEXT NOT NULL,
            args TEXT NOT NULL,
            state TEXT NOT NULL,
            position TEXT,
            rows_done BIGINT NOT NULL DEFAULT 0,
            rows_changed BIGINT NOT NULL DEFAULT 0,
            rows_rejected BIGINT NOT NULL DEFAULT 0,
            batches_done BIGINT NOT NULL DEFAULT 0,
            total_rows BIGINT,
            batch_size BIGINT NOT NULL,
            elapsed_ms BIGINT NOT NULL DEFAULT 0,
            max_batch_ms BIGINT NOT NULL DEFAULT 0,
            bookkeeping_ms BIGINT NOT NULL DEFAULT 0,
            started_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            owner TEXT,
            last_error TEXT,
            verification TEXT
        )",
        "CREATE INDEX IF NOT EXISTS datamig_runs_job ON datamig_runs (job, id)",
        "CREATE TABLE IF NOT EXISTS datamig_rejects (
            id BIGSERIAL PRIMARY KEY,
            run_id BIGINT NOT NULL,
            row_key TEXT NOT NULL,
            reason TEXT NOT NULL,
            at TIMESTAMPTZ NOT NULL
        )",
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
        )",
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
        )",
    ];

    async fn connect(
        url: &DatabaseUrl,
        opts: &ConnectOptions,
    ) -> Result<PgConnection, sqlx::Error> {
        // A custom plan for every statement: a batch's key range must be planned with
        // its real bounds (a generic plan guesses their selectivity); planning costs
        // microseconds against a batch's milliseconds.
        let options = PgConnectOptions::from_str(url.expose())?
            .application_name(&opts.application_name)
            .options([("plan_cache_mode", "force_custom_plan")])
            .log_slow_statements(super::SLOW_STATEMENT_LOG, super::SLOW_STATEMENT);
        PgConnection::connect_with(&options).await
    }

    async fn execute(c: &mut PgConnection, sql: &str, params: &[Value]) -> sqlx::Result<u64> {
        Ok(super::bind_values!(sqlx::query(sql), params)
            .execute(c)
            .await?
            .rows_affected())
    }

    async fn fetch(c: &mut PgConnection, sql: &str, params: &[Value]) -> sqlx::Result<Vec<Row>> {
        super::bind_values!(sqlx::query(sql), params)
            .fetch_all(c)
            .await
            .and_then(|rows| decode_all(&rows))
    }

    async fn script(c: &mut PgConnection, sql: &str) -> sqlx::Result<()> {
        sqlx::Executor::execute(&mut *c, sqlx::raw_sql(sql))
            .await
            .map(drop)
    }

    async fn script_rows(c: &mut PgConnection, sql: &str) -> sqlx::Result<u64> {
        Ok(sqlx::Executor::execute(&mut *c, sqlx::raw_sql(sql))
            .await?
            .rows_affected())
    }

    async fn close(c: PgConnection) {
        let _ = c.close().await;
    }

    // Advisory locks are per database, so the key needs no database name in it.
    async fn try_lock(c: &mut PgConnection, name: &str) -> Result<bool> {
        let row = Self::fetch(
            c,
            "SELECT pg_try_advisory_lock($1)",
            &[Value::Int(super::lock_key(name))],
        )
        .await
        .map_err(|e| {
            Error::db(
                format!("cannot take the {name} lock"),
                super::db_message(&e),
            )
        })?;
        Ok(matches!(
            row.first().and_then(|r| r.first()),
            Some(Value::Bool(true))
        ))
    }

    async fn unlock(c: &mut PgConnection, name: &str) -> Result<()> {
        Self::fetch(
            c,
            "SELECT pg_advisory_unlock($1)",
            &[Value::Int(super::lock_key(name))],
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

    async fn lock_holder(c: &mut PgConnection, name: &str) -> Option<String> {
        // A bigint advisory key is stored as classid (high half) and objid (low half), both unsigned.
        let key = super::lock_key(name);
        let sql = "SELECT a.pid::bigint, a.application_name, coalesce(host(a.client_addr), 'local socket'),
                          to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                   FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                   WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                     AND l.classid::bigint = $1 AND l.objid::bigint = $2
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";
        let params = [
            Value::Int((key >> 32) & 0xffff_ffff),
            Value::Int(key & 0xffff_ffff),
        ];
        let rows = Self::fetch(c, sql, &params).await.ok()?;
        let row = rows.into_iter().next()?;
        let text = |i: usize| {
            row.get(i)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        let pid = row
            .first()
            .and_then(Value::as_i64)
            .map_or("?".to_string(), |p| p.to_string());
        Some(format!(
            "server pid {pid} ({}, from {}, connected {})",
            text(1),
            text(2),
            text(3)
        ))
    }

    async fn bulk_update(
        c: &mut PgConnection,
        spec: &BulkUpdate,
        rows: &[Row],
    ) -> sqlx::Result<u64> {
        // UPDATE … FROM (SELECT unnest(arrays)): one statement, one round trip. The explicit
        // key range keeps PostgreSQL on the index (without it, it scans the table).
        let q = |n: &str| Self::quote_ident(n);
        let version = "datamig_row_version".to_string();
        let mut names: Vec<&String> = spec.keys.iter().chain(&spec.sets).collect();
        if spec.guard.is_some() {
            names.push(&version);
        }
        let arrays: Vec<Array> = (0..names.len())
            .map(|i| Array::of(rows.iter().map(|r| &r[i])))
            .collect();
        let cast = |i: usize| match spec.types.get(i).filter(|t| !t.is_empty()) {
            Some(t) => format!("::{t}"),
            None => String::new(),
        };
        let sets: Vec<String> = spec
            .sets
            .iter()
            .enumerate()
            .map(|(j, s)| format!("{} = v.{}{}", q(s), q(s), cast(spec.keys.len() + j)))
            .collect();
        // unnest in the select list (a ProjectSet, streamed) rather than in FROM (a
        // Function Scan, which first copies every row into a tuplestore); the row
        // versions' text becomes xid once, as an array, not at each probe of the
        // join. Together about 1 ms of a 16 ms update of 5000 rows (EXPLAIN ANALYZE).
        let unnest: Vec<String> = arrays
            .iter()
            .zip(&names)
            .enumerate()
            .map(|(i, (a, name))| {
                let xid = if **name == version { "::xid[]" } else { "" };
                format!("unnest(${}::{}[]{xid}) AS {}", i + 1, a.sql_type(), q(name))
            })
            .collect();
        let mut join: Vec<String> = spec
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} = v.{}{}", q(k), q(k), cast(i)))
            .collect();
        if spec.guard.is_some() {
            join.push(format!("t.xmin = v.{version}"));
        }
        let n = arrays.len();
        // The bounds as the key's type, like the keys in the join (a uuid key's
        // bounds are its text).
        let bound = cast(0);
        let sql = format!(
            "UPDATE {} AS t SET {} FROM (SELECT {}) AS v WHERE {} AND t.{} BETWEEN ${}{bound} AND ${}{bound}",
            quote_name(&spec.table),
            sets.join(", "),
            unnest.join(", "),
            join.join(" AND "),
            q(&spec.keys[0]),
            n + 1,
            n + 2
        );
        let mut query = sqlx::query(&sql);
        for a in arrays {
            query = a.bind_to(query);
        }
        let bounds = [spec.lo.clone(), spec.hi.clone()];
        let query = super::bind_values!(query, &bounds);
        Ok(query.execute(c).await?.rows_affected())
    }

    async fn column_types(
        c: &mut PgConnection,
        table: &str,
        columns: &[String],
    ) -> sqlx::Result<Vec<String>> {
        // The type without its modifier (`character varying`, not `(320)`): an
        // explicit cast to varchar(n) or char(n) cuts a longer value short without
        // a word, where the assignment to the column refuses it.
        let mut types = Vec::with_capacity(columns.len());
        for col in columns {
            let rows = Self::fetch(
                c,
                "SELECT format_type(a.atttypid, NULL) FROM pg_attribute a
                 WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped",
                &[quote_name(table).into(), col.as_str().into()],
            )
            .await?;
            // `character` and `bit` without their length are char(1) and bit(1):
            // a cast to them cuts a value to one character. Their unbounded forms.
            let ty = rows
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
                .and_then(Value::into_string)
                .map(|t| match t.as_str() {
                    "character" => "bpchar".to_string(),
                    "character[]" => "bpchar[]".to_string(),
                    "bit" => "bit varying".to_string(),
                    "bit[]" => "bit varying[]".to_string(),
                    _ => t,
                });
            types.push(ty.ok_or_else(|| {
                sqlx::Error::Protocol(format!("column `{col}` of table `{table}` does not exist"))
            })?);
        }
        Ok(types)
    }

    async fn estimate(
        c: &mut PgConnection,
        sql: &str,
        params: &[Value],
    ) -> sqlx::Result<Option<i64>> {
        let plan = super::explain_json::<Self>(c, "EXPLAIN (FORMAT JSON)", sql, params).await?;
        Ok(plan[0]["Plan"]["Plan Rows"]
            .as_f64()
            .and_then(super::rows_estimate))
    }

    async fn full_scans(
        c: &mut PgConnection,
        sql: &str,
        params: &[Value],
        table: &str,
    ) -> sqlx::Result<Vec<String>> {
        fn walk(node: &serde_json::Value, table: &str, out: &mut Vec<String>) {
            if node["Node Type"] == "Seq Scan" && node["Relation Name"] == table {
                out.push(format!("a sequential scan of {table} (Seq Scan)"));
            }
            if let Some(children) = node["Plans"].as_array() {
                for child in children {
                    walk(child, table, out);
                }
            }
        }
        let plan = super::explain_json::<Self>(c, "EXPLAIN (FORMAT JSON)", sql, params).await?;
        let bare = table.rsplit('.').next().unwrap_or(table);
        let mut out = Vec::new();
        walk(&plan[0]["Plan"], bare, &mut out);
        Ok(out)
    }

    async fn health(c: &mut PgConnection) -> sqlx::Result<super::Health> {
        // This process's sessions share its application_name: its writer, its reader.
        // replay_lag is the lag measured when the standby last replayed new WAL; it
        // stays at that figure for a while after the standby has caught up, so a
        // standby that has replayed all there is counts as not behind. (And a stalled
        // standby shows the lag of before the stall: `--replica` measures it exactly.)
        let sql = "SELECT
              (SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND backend_type = 'client backend'
                 AND application_name <> current_setting('application_name')),
              (SELECT extract(epoch FROM max(now() - xact_start))::float8 FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)
                   AND application_name <> current_setting('application_name')),
              (SELECT extract(epoch FROM max(replay_lag))::float8 FROM pg_stat_replication
                 WHERE replay_lsn < pg_current_wal_lsn())";
        let row = Self::fetch(c, sql, &[])
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        Ok(super::Health {
            active_sessions: row.first().and_then(Value::as_i64).unwrap_or(0),
            oldest_transaction: super::seconds(row.get(1)),
            replica_lag: super::seconds(row.get(2)),
        })
    }

    async fn replica_lag(c: &mut PgConnection) -> sqlx::Result<Option<std::time::Duration>> {
        // Behind by the age of the last transaction replayed, while WAL it has received
        // waits for replay; none when it has replayed all it has (an idle primary sends
        // no transactions, and the last one's age says nothing), or nothing yet.
        let sql = "SELECT pg_is_in_recovery(),
                          CASE WHEN coalesce(pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(), true)
                               THEN coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 0)
                               ELSE 0 END";
        let row = Self::fetch(c, sql, &[])
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        match row.first() {
            Some(Value::Bool(true)) => Ok(super::seconds(row.get(1))),
            _ => Err(sqlx::Error::Protocol(
                "not a standby (pg_is_in_recovery() is false)".into(),
            )),
        }
    }

    async fn snapshot(c: &mut PgConnection) -> Result<Vec<String>> {
        const MINE: &str = "NOT LIKE 'datamig\\_%'";
        let queries = [
            format!(
                "SELECT 'table ' || table_name || ' ' || table_type FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name {MINE}"
            ),
            format!(
                "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
                    || coalesce('(' || character_maximum_length || ')', '')
                    || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END
                    || coalesce(' default ' || column_default, '')
                 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name {MINE}"
            ),
            format!(
                "SELECT 'index ' || indexname || ': ' || indexdef FROM pg_indexes
                 WHERE schemaname = current_schema() AND tablename {MINE}"
            ),
            format!(
                "SELECT 'constraint ' || conrelid::regclass::text || '.' || conname || ': ' || pg_get_constraintdef(oid)
                 FROM pg_constraint WHERE connamespace = current_schema()::regnamespace AND conrelid <> 0
                   AND conrelid::regclass::text {MINE}"
            ),
            "SELECT 'view ' || table_name || ': ' || view_definition FROM information_schema.views
             WHERE table_schema = current_schema()"
                .to_string(),
            format!(
                "SELECT 'sequence ' || sequence_name FROM information_schema.sequences
                 WHERE sequence_schema = current_schema() AND sequence_name {MINE}"
            ),
            "SELECT 'trigger ' || event_object_table || '.' || trigger_name || ' ' || action_timing || ' ' || event_manipulation
             FROM information_schema.triggers WHERE trigger_schema = current_schema()"
                .to_string(),
            "SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
             FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace"
                .to_string(),
            "SELECT 'type ' || t.typname || ' enum (' || string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder) || ')'
             FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
             WHERE t.typnamespace = current_schema()::regnamespace GROUP BY t.typname"
                .to_string(),
        ];
        super::catalogue_lines::<Self>(c, &queries).await
    }

    fn epoch_ms_sql() -> &'static str {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    }

    fn now_sql() -> &'static str {
        "now()"
    }

    fn timestamp_text(column: &str) -> String {
        format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
    }

    fn quote_ident(name: &str) -> String {
        quote_name(name)
    }
}
