//! Applying one migration: its statements in one transaction where the
//! database can roll DDL back (and, on MariaDB, where the file changes only
//! data), else statement by statement under a *dirty* record; every outcome
//! logged in `datamig_schema_log`, every failure classified (transient or
//! not) and said once, with what to do.

use std::time::{Duration, Instant};

use super::{source, split, Dirty, Migration, DIRTY_ADVICE, HISTORY, LOG};
use crate::config::Backend;
use crate::db::{db_message, who_am_i, Conn};
use crate::{Error, Result};

/// How a migration's SQL failed.
pub(super) struct Failure {
    pub(super) message: String,
    /// Statements that had already changed something (and, without a
    /// transaction, stayed): session settings and queries do not count.
    pub(super) statements_done: usize,
    /// Whether trying again can pass: a lost connection, a lock not granted in time.
    pub(super) transient: Option<crate::db::Transient>,
}

impl Failure {
    fn of(message: String, statements_done: usize, e: &sqlx::Error) -> Failure {
        let mut message = message;
        // PostgreSQL refuses some statements inside a transaction block
        // (CREATE INDEX CONCURRENTLY, VACUUM, ALTER TYPE … ADD VALUE before 12).
        if message.contains("cannot run inside a transaction block") {
            message.push_str(&format!(
                " (make `{}` the file's first line to run it outside a transaction)",
                source::NO_TRANSACTION
            ));
        }
        Failure {
            message,
            statements_done,
            transient: crate::db::Transient::of(e),
        }
    }
}

pub(super) fn flavor(backend: Backend) -> split::Flavor {
    match backend {
        Backend::Postgres => split::Flavor::Postgres,
        Backend::MySql => split::Flavor::MySql,
        Backend::Sqlite => split::Flavor::Sqlite,
    }
}

/// Runs one file's SQL. In a transaction: as one script, except on MariaDB,
/// where it goes statement by statement so that a failure names its
/// statement. Outside one: statement by statement, counting how far it got.
pub(super) async fn run_sql(
    conn: &mut Conn,
    sql: &str,
    in_transaction: bool,
) -> std::result::Result<(), Failure> {
    if in_transaction && conn.transactional_ddl() {
        return conn.script(sql).await.map_err(|e| {
            let message = db_message(&e);
            Failure::of(message, 0, &e)
        });
    }
    let statements = split::split(sql, flavor(conn.backend()));
    let total = statements.len();
    // Statements that changed something: a session setting or a query before
    // the failure leaves nothing to repair.
    let mut changed = 0;
    for (n, statement) in statements.into_iter().enumerate() {
        if let Err(e) = conn.script(&statement.sql).await {
            let message = format!(
                "statement {} of {total} (line {}): {}",
                n + 1,
                statement.line,
                db_message(&e)
            );
            return Err(Failure::of(message, changed, &e));
        }
        if !matches!(
            first_word(&statement.sql).as_str(),
            "set" | "select" | "show" | "explain" | "do" | "pragma"
        ) {
            changed += 1;
        }
        crate::crash::reached(crate::crash::Point::MigrationStatement);
    }
    Ok(())
}

/// Whether MariaDB/MySQL can run every statement of `sql` in one transaction
/// and roll it back: data changes and queries, no statement that commits
/// implicitly (DDL, LOCK TABLES, GRANT, …) or ends the transaction itself.
pub(super) fn rolls_back_on_mysql(sql: &str) -> bool {
    const TRANSACTIONAL: &[&str] = &[
        "insert", "update", "delete", "replace", "select", "with", "do",
    ];
    split::split(sql, split::Flavor::MySql)
        .iter()
        .all(|st| TRANSACTIONAL.contains(&first_word(&st.sql).as_str()))
}

/// A statement without the comments before it.
pub(super) fn strip_comments(sql: &str) -> &str {
    let mut rest = sql.trim_start();
    loop {
        if rest.starts_with("--") || rest.starts_with('#') {
            rest = rest.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            return rest;
        }
    }
}

/// A statement's first word, lower-cased, after any comments before it.
pub(super) fn first_word(sql: &str) -> String {
    strip_comments(sql)
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .find(|w| !w.is_empty())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Whether a migration's SQL runs in one transaction with its record: where
/// the database rolls DDL back, and on MariaDB/MySQL for a file of data
/// changes alone; never for a `-- datamig:no-transaction` file.
pub(super) fn in_one_transaction(conn: &Conn, sql: &str, no_transaction: bool) -> bool {
    !no_transaction && (conn.transactional_ddl() || rolls_back_on_mysql(sql))
}

/// Why a file ran statement by statement, for the dirty message.
pub(super) fn why_statement_by_statement(conn: &Conn, no_transaction: bool) -> String {
    if no_transaction {
        format!(
            "the file runs outside a transaction, as its first line `{}` asks",
            source::NO_TRANSACTION
        )
    } else {
        format!(
            "{} commits DDL at once, so a file with DDL runs statement by statement",
            conn.backend()
        )
    }
}

/// The error for a failure that left nothing changed: a lost connection and a
/// lock not granted are not the file's fault, and say to run the command again.
pub(super) fn unchanged_failure(conn: &Conn, what: String, f: &Failure, outcome: &str) -> Error {
    use crate::db::Transient;
    match f.transient {
        Some(Transient::ConnectionLost) => Error::ConnectionLost(format!(
            "{what}: the connection to {} was lost ({}); {outcome}. Run the command again once the server answers",
            conn.url(),
            f.message
        )),
        Some(Transient::LockTimeout | Transient::Deadlock) => Error::MigrationBlocked(format!(
            "{what}: {}; {outcome}. Another session held a lock it needed: the file is fine, run the \
             command again (when that session is done)",
            f.message
        )),
        _ => Error::MigrationFailed {
            message: format!("{what} failed: {}; {outcome}", f.message),
        },
    }
}

/// Records a failed attempt in the log (when, by whom, the statement, the
/// error), in a transaction of its own; a failure to record it is a warning.
pub(super) async fn log_failure(
    conn: &mut Conn,
    action: &str,
    m: &Migration,
    f: &Failure,
    outcome: &str,
) {
    if f.transient == Some(crate::db::Transient::ConnectionLost) {
        return; // nothing to record it on
    }
    let detail = format!("{}; {outcome}", f.message);
    if let Err(e) = write_log(conn, action, m.version, &m.name, &detail).await {
        tracing::warn!(
            "could not record the failure of {} in {LOG}: {}",
            m.id(),
            db_message(&e)
        );
    }
}

pub(super) async fn write_log(
    conn: &mut Conn,
    action: &str,
    version: i64,
    name: &str,
    detail: &str,
) -> sqlx::Result<()> {
    let sql = format!(
        "INSERT INTO {LOG} (at, action, version, name, detail, actor) VALUES ({}, ?, ?, ?, ?, ?)",
        conn.now_sql()
    );
    conn.execute(
        &sql,
        &[
            action.into(),
            version.into(),
            name.into(),
            detail.into(),
            who_am_i().into(),
        ],
    )
    .await
    .map(drop)
}

pub(super) async fn insert_history(
    conn: &mut Conn,
    m: &Migration,
    duration_ms: i64,
    dirty: Dirty,
) -> sqlx::Result<()> {
    let sql = format!(
        "INSERT INTO {HISTORY} (version, name, checksum, applied_at, duration_ms, applied_by, dirty) VALUES (?, ?, ?, {}, ?, ?, ?)",
        conn.now_sql()
    );
    let params = [
        m.version.into(),
        m.name.as_str().into(),
        m.checksum.as_str().into(),
        duration_ms.into(),
        who_am_i().into(),
        dirty.code().into(),
    ];
    conn.execute(&sql, &params).await.map(drop)
}

pub(super) async fn set_dirty(conn: &mut Conn, version: i64, dirty: Dirty) -> sqlx::Result<()> {
    conn.execute(
        &format!("UPDATE {HISTORY} SET dirty = ? WHERE version = ?"),
        &[dirty.code().into(), version.into()],
    )
    .await
    .map(drop)
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn bookkeeping(e: sqlx::Error) -> Error {
    crate::db::error("cannot record the migration in datamig_schema_history", &e)
}

/// Applies one migration and records it: together in one transaction where the
/// database allows, else behind a dirty record.
pub(crate) async fn apply_up(conn: &mut Conn, m: &Migration) -> Result<()> {
    let started = Instant::now();
    let what = format!("migration {}", m.id());
    let no_tx = m.up_no_transaction();
    if in_one_transaction(conn, &m.up, no_tx) {
        conn.begin().await.map_err(bookkeeping)?;
        if let Err(f) = run_sql(conn, &m.up, true).await {
            let _ = conn.rollback().await;
            let outcome = "it was rolled back, nothing changed";
            log_failure(conn, "upgrade failed", m, &f, outcome).await;
            return Err(unchanged_failure(conn, what, &f, outcome));
        }
        let recorded = async {
            insert_history(conn, m, ms(started.elapsed()), Dirty::Clean).await?;
            write_log(conn, "upgrade", m.version, &m.name, "").await?;
            crate::crash::reached(crate::crash::Point::MigrationBeforeCommit);
            conn.commit().await
        };
        if let Err(e) = recorded.await {
            let _ = conn.rollback().await;
            return Err(bookkeeping(e));
        }
        return Ok(());
    }
    insert_history(conn, m, 0, Dirty::Up)
        .await
        .map_err(bookkeeping)?;
    match run_sql(conn, &m.up, false).await {
        Ok(()) => {
            let sql = format!("UPDATE {HISTORY} SET dirty = 0, duration_ms = ?, applied_at = {} WHERE version = ?", conn.now_sql());
            conn.execute(&sql, &[ms(started.elapsed()).into(), m.version.into()])
                .await
                .map_err(bookkeeping)?;
            write_log(conn, "upgrade", m.version, &m.name, "outside a transaction")
                .await
                .map_err(bookkeeping)?;
            Ok(())
        }
        Err(f)
            if f.statements_done == 0
                && f.transient != Some(crate::db::Transient::ConnectionLost) =>
        {
            // Nothing ran, so nothing changed: no dirty record is needed.
            conn.execute(
                &format!("DELETE FROM {HISTORY} WHERE version = ?"),
                &[m.version.into()],
            )
            .await
            .map_err(bookkeeping)?;
            let outcome = "no statement of it had taken effect";
            log_failure(conn, "upgrade failed", m, &f, outcome).await;
            Err(unchanged_failure(conn, what, &f, outcome))
        }
        Err(f) => {
            let outcome = format!(
                "after {} statement(s) had already taken effect ({}); it is recorded as dirty",
                f.statements_done,
                why_statement_by_statement(conn, no_tx)
            );
            log_failure(conn, "upgrade failed", m, &f, &outcome).await;
            let lost = if f.transient == Some(crate::db::Transient::ConnectionLost) {
                " (the connection was lost: how far it got is unknown)"
            } else {
                ""
            };
            Err(Error::Dirty {
                message: format!("{what} failed: {}{lost}, {outcome}", f.message),
                advice: DIRTY_ADVICE.into(),
            })
        }
    }
}

/// Reverts one migration and removes its record, with the same guarantees as [`apply_up`].
pub(crate) async fn apply_down(conn: &mut Conn, m: &Migration) -> Result<()> {
    let what = format!("reverting migration {}", m.id());
    let delete = format!("DELETE FROM {HISTORY} WHERE version = ?");
    let no_tx = m.down_no_transaction();
    if in_one_transaction(conn, &m.down, no_tx) {
        conn.begin().await.map_err(bookkeeping)?;
        if let Err(f) = run_sql(conn, &m.down, true).await {
            let _ = conn.rollback().await;
            let outcome = "it was rolled back, nothing changed";
            log_failure(conn, "downgrade failed", m, &f, outcome).await;
            return Err(unchanged_failure(conn, what, &f, outcome));
        }
        let recorded = async {
            conn.execute(&delete, &[m.version.into()]).await?;
            write_log(conn, "downgrade", m.version, &m.name, "").await?;
            conn.commit().await
        };
        if let Err(e) = recorded.await {
            let _ = conn.rollback().await;
            return Err(bookkeeping(e));
        }
        return Ok(());
    }
    set_dirty(conn, m.version, Dirty::Down)
        .await
        .map_err(bookkeeping)?;
    match run_sql(conn, &m.down, false).await {
        Ok(()) => {
            conn.execute(&delete, &[m.version.into()])
                .await
                .map_err(bookkeeping)?;
            write_log(
                conn,
                "downgrade",
                m.version,
                &m.name,
                "outside a transaction",
            )
            .await
            .map_err(bookkeeping)?;
            Ok(())
        }
        Err(f)
            if f.statements_done == 0
                && f.transient != Some(crate::db::Transient::ConnectionLost) =>
        {
            set_dirty(conn, m.version, Dirty::Clean)
                .await
                .map_err(bookkeeping)?;
            let outcome = "no statement of it had taken effect";
            log_failure(conn, "downgrade failed", m, &f, outcome).await;
            Err(unchanged_failure(conn, what, &f, outcome))
        }
        Err(f) => {
            let outcome = format!(
                "after {} statement(s) had already taken effect ({}); it is recorded as dirty",
                f.statements_done,
                why_statement_by_statement(conn, no_tx)
            );
            log_failure(conn, "downgrade failed", m, &f, &outcome).await;
            Err(Error::Dirty {
                message: format!("{what} failed: {}, {outcome}", f.message),
                advice: DIRTY_ADVICE.into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_changes_roll_back_on_mysql() {
        assert!(rolls_back_on_mysql(
            "INSERT INTO a VALUES (1);\nUPDATE a SET x = 1;\n-- c\nDELETE FROM a;"
        ));
        assert!(!rolls_back_on_mysql(
            "INSERT INTO a VALUES (1);\nCREATE TABLE b (id INT);"
        ));
        assert!(!rolls_back_on_mysql(
            "START TRANSACTION;\nINSERT INTO a VALUES (1);\nCOMMIT;"
        ));
    }
}
