//! PostgreSQL: DDL is transactional; the schema lock is a session advisory lock
//! taken with `pg_try_advisory_lock`, polled, never the blocking form (which
//! deadlocks with `CREATE INDEX CONCURRENTLY` running in a peer).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Column, Connection, PgConnection, Row as _, TypeInfo, ValueRef};

use super::{ConnectOptions, Driver, Row, Value};
use crate::config::DatabaseUrl;
use crate::{Error, Result};

pub(crate) struct Postgres;

/// The advisory lock key: "datamig" in ASCII. Advisory locks are per database.
const LOCK_KEY: i64 = 0x0064_6174_616d_6967;

fn decode(row: &PgRow) -> sqlx::Result<Row> {
    let mut out = Vec::with_capacity(row.columns().len());
    for col in row.columns() {
        let i = col.ordinal();
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        let kind = col.type_info().name().to_string();
        out.push(match kind.as_str() {
            "INT2" => Value::Int(row.try_get::<i16, _>(i)?.into()),
            "INT4" => Value::Int(row.try_get::<i32, _>(i)?.into()),
            "INT8" => Value::Int(row.try_get(i)?),
            "OID" => Value::Int(row.try_get::<sqlx::postgres::types::Oid, _>(i)?.0.into()),
            "BOOL" => Value::Bool(row.try_get(i)?),
            "FLOAT4" => Value::Float(row.try_get::<f32, _>(i)?.into()),
            "FLOAT8" => Value::Float(row.try_get(i)?),
            "BYTEA" => Value::Bytes(row.try_get(i)?),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "UNKNOWN" => {
                Value::Text(row.try_get(i)?)
            }
            other => {
                return Err(sqlx::Error::Decode(
                    format!(
                    "column `{}` has type {other}, which datamig does not read; cast it to text",
                    col.name()
                )
                    .into(),
                ))
            }
        });
    }
    Ok(out)
}

impl Driver for Postgres {
    type Connection = PgConnection;

    const TRANSACTIONAL_DDL: bool = true;
    const BEGIN: &'static str = "BEGIN";
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
    ];

    async fn connect(
        url: &DatabaseUrl,
        opts: &ConnectOptions,
    ) -> Result<PgConnection, sqlx::Error> {
        let options =
            PgConnectOptions::from_str(url.expose())?.application_name(&opts.application_name);
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
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn script(c: &mut PgConnection, sql: &str) -> sqlx::Result<()> {
        sqlx::raw_sql(sql).execute(c).await.map(drop)
    }

    async fn close(c: PgConnection) {
        let _ = c.close().await;
    }

    async fn try_lock(c: &mut PgConnection) -> Result<bool> {
        let row = Self::fetch(
            c,
            "SELECT pg_try_advisory_lock($1)",
            &[Value::Int(LOCK_KEY)],
        )
        .await
        .map_err(|e| Error::db("cannot take the schema lock", super::db_message(&e)))?;
        Ok(matches!(
            row.first().and_then(|r| r.first()),
            Some(Value::Bool(true))
        ))
    }

    async fn unlock(c: &mut PgConnection) -> Result<()> {
        Self::fetch(c, "SELECT pg_advisory_unlock($1)", &[Value::Int(LOCK_KEY)])
            .await
            .map(drop)
            .map_err(|e| Error::db("cannot release the schema lock", super::db_message(&e)))
    }

    async fn lock_holder(c: &mut PgConnection) -> Option<String> {
        // A bigint advisory key is stored as classid (high half) and objid (low half).
        let sql = "SELECT a.pid::bigint, a.application_name, coalesce(host(a.client_addr), 'local socket'),
                          to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                   FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                   WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                     AND l.classid::bigint = $1 AND l.objid::bigint = $2
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";
        let rows = Self::fetch(
            c,
            sql,
            &[
                Value::Int(LOCK_KEY >> 32),
                Value::Int(LOCK_KEY & 0xffff_ffff),
            ],
        )
        .await
        .ok()?;
        let row = rows.into_iter().next()?;
        let text = |i: usize| {
            row.get(i)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        Some(format!(
            "server pid {} ({}, from {}, connected {})",
            text(0),
            text(1),
            text(2),
            text(3)
        ))
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

    fn now_sql() -> &'static str {
        "now()"
    }

    fn timestamp_text(column: &str) -> String {
        format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
    }

    fn quote_ident(name: &str) -> String {
        super::quote_with(name, '"')
    }
}
