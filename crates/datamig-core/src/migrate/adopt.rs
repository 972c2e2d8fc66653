//! `schema adopt --from TOOL`: takes over a database that sqlx-cli,
//! golang-migrate, refinery or dbmate migrated. It reads the tool's own
//! bookkeeping table, checks each version it applied against the files (the
//! tool's checksum where it keeps one), and records them in datamig's history
//! in one transaction, running no migration. A failed or dirty record is
//! refused with its way out.
//!
//! | tool | its table | what a row says |
//! |---|---|---|
//! | sqlx-cli | `_sqlx_migrations` | a version applied, `success`, the SHA-384 of its up file |
//! | golang-migrate | `schema_migrations` (with `dirty`) | one row: every version up to it is applied |
//! | refinery | `refinery_schema_history` | a version applied, its name (its SipHash checksum is not compared) |
//! | dbmate | `schema_migrations` (no `dirty`) | a version applied |

use sha2::{Digest, Sha384};

use super::apply::{insert_history, write_log};
use super::{applied, locked, Dirty, Migration, Out};
use crate::db::{db_message, Conn, Value};
use crate::{Error, Result};

/// A migration tool whose migrated databases datamig takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    Sqlx,
    GolangMigrate,
    Refinery,
    Dbmate,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Sqlx => "sqlx",
            Tool::GolangMigrate => "golang-migrate",
            Tool::Refinery => "refinery",
            Tool::Dbmate => "dbmate",
        }
    }

    /// The tool's bookkeeping table.
    pub fn table(self) -> &'static str {
        match self {
            Tool::Sqlx => "_sqlx_migrations",
            Tool::GolangMigrate | Tool::Dbmate => "schema_migrations",
            Tool::Refinery => "refinery_schema_history",
        }
    }
}

/// Another tool's history found in a database: the tool and how many
/// versions its table records.
#[derive(Debug, Clone)]
pub struct Foreign {
    pub tool: Tool,
    pub versions: i64,
}

impl Foreign {
    /// What to do about it, for a database whose datamig history is empty.
    pub fn hint(&self) -> String {
        format!(
            "this database was migrated by {tool} ({table} records {n} version(s)) and datamig's history is empty: \
             `datamig schema adopt --from {tool}` takes those over without running them (applying them again \
             would fail or apply them twice)",
            tool = self.tool.name(),
            table = self.tool.table(),
            n = self.versions
        )
    }
}

/// Which other tool's history the database holds, if any.
pub async fn foreign(conn: &mut Conn) -> Result<Option<Foreign>> {
    let db = |e: sqlx::Error| Error::db("cannot look for another tool's history", db_message(&e));
    for tool in [Tool::Sqlx, Tool::Refinery, Tool::GolangMigrate] {
        if !conn.table_exists(tool.table()).await.map_err(db)? {
            continue;
        }
        // golang-migrate's and dbmate's tables share a name; golang-migrate's has `dirty`.
        let tool = match tool {
            Tool::GolangMigrate
                if !conn
                    .column_exists(tool.table(), "dirty")
                    .await
                    .map_err(db)? =>
            {
                Tool::Dbmate
            }
            t => t,
        };
        let versions = conn
            .fetch(&format!("SELECT count(*) FROM {}", tool.table()), &[])
            .await
            .map_err(db)?
            .first()
            .and_then(|r| r.first())
            .and_then(Value::as_i64)
            .unwrap_or(0);
        return Ok(Some(Foreign { tool, versions }));
    }
    Ok(None)
}

/// A version the other tool applied, as its table records it.
struct Record {
    version: i64,
    name: Option<String>,
    /// sqlx's SHA-384 of the up file.
    checksum: Option<Vec<u8>>,
}

/// What [`adopt`] recorded (or, dry, would record).
#[derive(Debug, Default)]
pub struct Adopted {
    /// `version_name` of each version recorded now.
    pub recorded: Vec<String>,
    /// Versions datamig's history held already.
    pub already: usize,
    /// Migrations the other tool had not applied: left pending.
    pub pending: usize,
}

/// Takes the versions `tool` applied into datamig's history; see the module.
pub async fn adopt(
    conn: &mut Conn,
    migrations: &[Migration],
    tool: Tool,
    lock_timeout: std::time::Duration,
    dry_run: bool,
    out: Out<'_>,
) -> Result<Adopted> {
    let table = tool.table();
    let db = |e: sqlx::Error| Error::db(format!("cannot read {table}"), db_message(&e));
    if !conn.table_exists(table).await.map_err(db)? {
        return Err(Error::Invalid(format!(
            "there is no {table} in this database, so {} did not migrate it: check --from and the database \
             (`datamig info` shows which one this is)",
            tool.name()
        )));
    }
    let records = read(conn, tool, migrations).await?;
    // Each version the tool applied, with its file, and checked against it.
    let mut adopted: Vec<&Migration> = Vec::new();
    let mut problems = Vec::new();
    for r in &records {
        let Some(m) = migrations.iter().find(|m| m.version == r.version) else {
            problems.push(format!(
                "{} is recorded by {} as applied, but the migrations directory has no file with version {}; \
                 restore it from version control",
                r.name.as_deref().map_or_else(|| r.version.to_string(), |n| format!("{}_{n}", r.version)),
                tool.name(),
                r.version
            ));
            continue;
        };
        if let (Tool::Refinery, Some(name)) = (tool, &r.name) {
            if *name != m.name {
                problems.push(format!(
                    "version {}: refinery applied it as {name}, but its file is {}; rename the file back",
                    r.version,
                    m.up_path.display()
                ));
                continue;
            }
        }
        if let Some(recorded) = &r.checksum {
            // sqlx's checksum is of the file as it was read; a checkout with
            // other line endings is the same file.
            let as_is = Sha384::digest(m.raw.as_bytes());
            let lf = Sha384::digest(super::source::normalize(&m.raw).as_bytes());
            if recorded.as_slice() != as_is.as_slice() && recorded.as_slice() != lf.as_slice() {
                problems.push(format!(
                    "{}: the file differs from the one {} applied (its checksum in {table} is another); \
                     restore the file as it was applied, or, if the database has the edited version, \
                     adopt, then accept it with `datamig schema repair`",
                    m.up_path.display(),
                    tool.name()
                ));
                continue;
            }
        }
        adopted.push(m);
    }
    if !problems.is_empty() {
        return Err(if problems.len() == 1 {
            Error::Invalid(problems.remove(0))
        } else {
            Error::Problems(problems)
        });
    }
    let newest = adopted.iter().map(|m| m.version).max();
    let pending = migrations
        .iter()
        .filter(|m| !adopted.iter().any(|a| a.version == m.version))
        .count();
    if let Some(gap) = migrations.iter().find(|m| {
        newest.is_some_and(|n| m.version < n) && !adopted.iter().any(|a| a.version == m.version)
    }) {
        out(format!(
            "note: {} is older than the newest version {} applied but was not applied by it; it stays pending \
             (`datamig schema upgrade --allow-out-of-order` applies it)",
            gap.id(),
            tool.name()
        ));
    }
    let known: Vec<i64> = applied(conn).await?.iter().map(|a| a.version).collect();
    let new: Vec<&Migration> = adopted
        .iter()
        .copied()
        .filter(|m| !known.contains(&m.version))
        .collect();
    let result = |recorded: Vec<String>| Adopted {
        recorded,
        already: adopted.len() - new.len(),
        pending,
    };
    if dry_run || new.is_empty() {
        for m in &new {
            out(format!("would record {} as applied", m.id()));
        }
        return Ok(result(new.iter().map(|m| m.id()).collect()));
    }
    locked(conn, lock_timeout, async |conn: &mut Conn| {
        conn.ensure_bookkeeping().await?;
        let fail = |e: sqlx::Error| Error::db("cannot record the adopted versions", db_message(&e));
        conn.begin().await.map_err(fail)?;
        let written = async {
            // Re-read under the lock: another runner may have just recorded some.
            let known: Vec<i64> = applied(conn).await?.iter().map(|a| a.version).collect();
            for m in new.iter().filter(|m| !known.contains(&m.version)) {
                insert_history(conn, m, 0, Dirty::Clean)
                    .await
                    .map_err(fail)?;
                let detail = format!("adopted from {} ({table}); not run", tool.name());
                write_log(conn, "adopt", m.version, &m.name, &detail)
                    .await
                    .map_err(fail)?;
            }
            Ok::<(), Error>(())
        }
        .await;
        match written {
            Ok(()) => conn.commit().await.map_err(fail),
            Err(e) => {
                let _ = conn.rollback().await;
                Err(e)
            }
        }
    })
    .await?;
    for m in &new {
        out(format!("recorded {} as applied", m.id()));
    }
    Ok(result(new.iter().map(|m| m.id()).collect()))
}

/// The versions `tool` applied, from its table; a failed or dirty one refused.
async fn read(conn: &mut Conn, tool: Tool, migrations: &[Migration]) -> Result<Vec<Record>> {
    let table = tool.table();
    let db = |e: sqlx::Error| Error::db(format!("cannot read {table}"), db_message(&e));
    let truthy = |v: &Value| match v {
        Value::Bool(b) => *b,
        other => other.as_i64().unwrap_or(0) != 0,
    };
    match tool {
        Tool::Sqlx => {
            let rows = conn
                .fetch(
                    "SELECT version, description, success, checksum FROM _sqlx_migrations ORDER BY version",
                    &[],
                )
                .await
                .map_err(db)?;
            let mut records = Vec::new();
            for row in rows {
                let version = row[0].as_i64().unwrap_or(-1);
                let name = row[1].as_str().unwrap_or_default().to_string();
                if !truthy(&row[2]) {
                    return Err(Error::Invalid(format!(
                        "sqlx-cli recorded {version} ({name}) as failed (success is false in _sqlx_migrations): it \
                         may be half applied. Finish or undo it by hand and delete its row (or run `sqlx migrate run` \
                         until it succeeds), then adopt"
                    )));
                }
                let checksum = match &row[3] {
                    Value::Bytes(b) => Some(b.clone()),
                    _ => None,
                };
                records.push(Record {
                    version,
                    name: Some(name),
                    checksum,
                });
            }
            Ok(records)
        }
        Tool::GolangMigrate => {
            let rows = conn
                .fetch("SELECT version, dirty FROM schema_migrations", &[])
                .await
                .map_err(db)?;
            let Some(row) = rows.into_iter().next() else {
                return Ok(Vec::new());
            };
            let version = row[0].as_i64().unwrap_or(-1);
            if truthy(&row[1]) {
                return Err(Error::Invalid(format!(
                    "golang-migrate marked version {version} dirty (it failed halfway): fix the database by hand, \
                     then `migrate force <the version it is at>`, then adopt"
                )));
            }
            if !migrations.iter().any(|m| m.version == version) {
                return Ok(vec![Record {
                    version,
                    name: None,
                    checksum: None,
                }]);
            }
            // One row: the version the database is at, and so every one before it.
            Ok(migrations
                .iter()
                .filter(|m| m.version <= version)
                .map(|m| Record {
                    version: m.version,
                    name: Some(m.name.clone()),
                    checksum: None,
                })
                .collect())
        }
        Tool::Refinery => {
            let rows = conn
                .fetch(
                    "SELECT version, name FROM refinery_schema_history ORDER BY version",
                    &[],
                )
                .await
                .map_err(db)?;
            Ok(rows
                .into_iter()
                .map(|row| Record {
                    version: row[0].as_i64().unwrap_or(-1),
                    name: row[1].as_str().map(str::to_string),
                    checksum: None,
                })
                .collect())
        }
        Tool::Dbmate => {
            let rows = conn
                .fetch(
                    "SELECT version FROM schema_migrations ORDER BY version",
                    &[],
                )
                .await
                .map_err(db)?;
            let mut records = Vec::new();
            for row in rows {
                let text = row[0].clone().into_string().unwrap_or_default();
                let version = text.trim().parse().map_err(|_| {
                    Error::Invalid(format!(
                        "schema_migrations holds version `{text}`, which is not a number: is it dbmate's? \
                         (golang-migrate's has a `dirty` column)"
                    ))
                })?;
                records.push(Record {
                    version,
                    name: None,
                    checksum: None,
                });
            }
            Ok(records)
        }
    }
}
