//! `schema repair`: a dirty migration resolved by hand, checked against what
//! its up creates (the tables and columns must be there, or gone, as the
//! resolution says) before the record is made clean or removed.

use std::time::Duration;

use super::apply::{bookkeeping, flavor, strip_comments, write_log};
use super::{applied, dirty_error, locked, split, Dirty, Migration, Out, HISTORY};
use crate::config::Backend;
use crate::db::{db_message, Conn};
use crate::{Error, Result};

/// What an operator says a dirty migration's state now is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// All of the migration's changes are in place.
    Applied,
    /// None of them are.
    Reverted,
}

/// Refuses when a migration is recorded dirty: a data job over a half-applied
/// schema is what the dirty record exists to prevent.
pub async fn refuse_dirty(conn: &mut Conn) -> Result<()> {
    match applied(conn)
        .await?
        .iter()
        .find(|a| a.dirty != Dirty::Clean)
    {
        Some(a) => Err(dirty_error(a)),
        None => Ok(()),
    }
}

/// A table or column a migration's up creates, as far as its text says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Created {
    Table(String),
    Column(String, String),
}

/// An identifier as the catalogue holds it: quotes removed; unquoted, folded
/// to lower case where the database folds (PostgreSQL).
fn ident(word: &str, backend: Backend) -> String {
    let quoted = word.starts_with(['"', '`', '[']);
    let bare = word.trim_matches(|c| matches!(c, '"' | '`' | '[' | ']' | '(' | ';' | ','));
    let bare = bare.rsplit('.').next().unwrap_or(bare);
    if !quoted && backend == Backend::Postgres {
        bare.to_ascii_lowercase()
    } else {
        bare.to_string()
    }
}

/// The tables (`CREATE TABLE`) and columns (`ALTER TABLE … ADD [COLUMN]`) the
/// SQL creates, and how many of its statements change data (which no catalogue shows).
fn created_by(sql: &str, backend: Backend) -> (Vec<Created>, usize) {
    let mut created = Vec::new();
    let mut data = 0;
    for st in split::split(sql, flavor(backend)) {
        let start = st.sql.len() - strip_comments(&st.sql).len();
        let words: Vec<&str> = st.sql[start..].split_whitespace().collect();
        let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
        let is = |i: usize, w: &str| lower.get(i).is_some_and(|x| x == w);
        if is(0, "create") {
            let mut i = 1;
            while lower.get(i).is_some_and(|w| {
                matches!(
                    w.as_str(),
                    "temporary" | "temp" | "unlogged" | "or" | "replace"
                )
            }) {
                i += 1;
            }
            if is(i, "table") {
                i += 1;
                if is(i, "if") && is(i + 1, "not") && is(i + 2, "exists") {
                    i += 3;
                }
                if let Some(name) = words.get(i) {
                    let name = name.split('(').next().unwrap_or(name);
                    created.push(Created::Table(ident(name, backend)));
                }
            }
        } else if is(0, "alter") && is(1, "table") {
            let mut i = 2;
            if is(i, "if") && is(i + 1, "exists") {
                i += 2;
            }
            if is(i, "only") {
                i += 1;
            }
            let Some(table) = words.get(i).map(|t| ident(t, backend)) else {
                continue;
            };
            i += 1;
            if is(i, "add") {
                i += 1;
                if is(i, "column") {
                    i += 1;
                }
                if is(i, "if") && is(i + 1, "not") && is(i + 2, "exists") {
                    i += 3;
                }
                let constraint = lower.get(i).is_some_and(|w| {
                    matches!(
                        w.as_str(),
                        "constraint" | "primary" | "unique" | "foreign" | "check" | "index" | "key"
                    )
                });
                if let (Some(column), false) = (words.get(i), constraint) {
                    created.push(Created::Column(table, ident(column, backend)));
                }
            }
        } else if lower
            .first()
            .is_some_and(|w| matches!(w.as_str(), "insert" | "update" | "delete" | "replace"))
        {
            data += 1;
        }
    }
    (created, data)
}

/// Checks what `--dirty applied|reverted` asserts against the catalogue: the
/// tables and columns the migration's up creates exist (applied) or do not
/// (reverted). Returns what cannot be checked, for the operator to confirm.
async fn check_resolution(
    conn: &mut Conn,
    file: Option<&Migration>,
    resolution: Resolution,
) -> Result<Option<String>> {
    let Some(m) = file else {
        return Ok(Some(
            "its files are missing, so nothing of it could be checked".into(),
        ));
    };
    // Whichever way it failed, `applied` means the up's changes are there and
    // `reverted` that they are not.
    let (created, data) = created_by(&m.up, conn.backend());
    let mut wrong = Vec::new();
    for c in &created {
        let (exists, what) = match c {
            Created::Table(t) => (conn.table_exists(t).await, format!("table {t}")),
            Created::Column(t, col) => (
                conn.column_exists(t, col).await,
                format!("column {t}.{col}"),
            ),
        };
        let exists = exists.map_err(|e| Error::db("cannot read the catalogue", db_message(&e)))?;
        match (resolution, exists) {
            (Resolution::Reverted, true) => wrong.push(format!("{what} exists")),
            (Resolution::Applied, false) => wrong.push(format!("{what} does not exist")),
            _ => {}
        }
    }
    if !wrong.is_empty() {
        let (says, other) = match resolution {
            Resolution::Reverted => ("none of its changes are in place", "applied"),
            Resolution::Applied => ("all of its changes are in place", "reverted"),
        };
        return Err(Error::Dirty {
            message: format!(
                "`--dirty {}` says {says}, but the up file of {} creates what the database contradicts: {}",
                if resolution == Resolution::Applied { "applied" } else { "reverted" },
                m.id(),
                wrong.join(", ")
            ),
            advice: format!(
                "Finish or undo the change by hand so that this holds, then run the repair again \
                 (or `--dirty {other}` if that is what is true)"
            ),
        });
    }
    Ok((data > 0).then(|| {
        format!(
            "its {data} data change(s) (INSERT, UPDATE, DELETE) cannot be checked from the catalogue: make sure \
             they are {}",
            if resolution == Resolution::Applied { "in place" } else { "undone" }
        )
    }))
}

/// `schema repair`: accepts edited files' checksums and resolves dirty records,
/// leaving a record in the log of each thing it did.
pub async fn repair(
    conn: &mut Conn,
    migrations: &[Migration],
    dirty: Option<Resolution>,
    lock_timeout: Duration,
    out: Out<'_>,
) -> Result<usize> {
    locked(conn, lock_timeout, async |conn: &mut Conn| {
        let applied = applied(conn).await?;
        let mut fixed = 0;
        for a in &applied {
            let file = migrations.iter().find(|m| m.version == a.version);
            if a.dirty != Dirty::Clean {
                let Some(resolution) = dirty else {
                    return Err(dirty_error(a));
                };
                let unchecked = check_resolution(conn, file, resolution).await?;
                conn.begin().await.map_err(bookkeeping)?;
                let (sql, params, detail) = match resolution {
                    Resolution::Applied => {
                        let checksum = file.map_or(a.checksum.as_str(), |m| m.checksum.as_str());
                        (
                            format!(
                                "UPDATE {HISTORY} SET dirty = 0, checksum = ? WHERE version = ?"
                            ),
                            vec![checksum.into(), a.version.into()],
                            "dirty migration marked applied by the operator",
                        )
                    }
                    Resolution::Reverted => (
                        format!("DELETE FROM {HISTORY} WHERE version = ?"),
                        vec![a.version.into()],
                        "dirty migration marked reverted by the operator",
                    ),
                };
                conn.execute(&sql, &params).await.map_err(bookkeeping)?;
                write_log(conn, "repair", a.version, &a.name, detail)
                    .await
                    .map_err(bookkeeping)?;
                conn.commit().await.map_err(bookkeeping)?;
                out(format!("{}_{}: {detail}", a.version, a.name));
                if let Some(unchecked) = unchecked {
                    out(format!("warning: {}_{}: {unchecked}", a.version, a.name));
                }
                fixed += 1;
                continue;
            }
            if let Some(m) = file.filter(|m| m.checksum != a.checksum) {
                conn.begin().await.map_err(bookkeeping)?;
                conn.execute(
                    &format!("UPDATE {HISTORY} SET checksum = ? WHERE version = ?"),
                    &[m.checksum.as_str().into(), a.version.into()],
                )
                .await
                .map_err(bookkeeping)?;
                let detail = format!(
                    "accepted the edited file: checksum {} -> {}",
                    &a.checksum[..12.min(a.checksum.len())],
                    &m.checksum[..12]
                );
                write_log(conn, "repair", a.version, &a.name, &detail)
                    .await
                    .map_err(bookkeeping)?;
                conn.commit().await.map_err(bookkeeping)?;
                out(format!("{}: {detail}", m.id()));
                fixed += 1;
            }
        }
        if dirty.is_some() && !applied.iter().any(|a| a.dirty != Dirty::Clean) {
            return Err(Error::Usage(
                "no migration is dirty; --dirty is for a migration that failed halfway".into(),
            ));
        }
        Ok(fixed)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_tables_and_columns_an_up_creates() {
        let sql = "CREATE TABLE IF NOT EXISTS \"Orders\" (id INT);\nCREATE TABLE items(id INT);\n\
                   ALTER TABLE users ADD COLUMN email TEXT;\nALTER TABLE users ADD CONSTRAINT c CHECK (id > 0);\n\
                   ALTER TABLE Users ADD phone TEXT;\nINSERT INTO items VALUES (1);\nUPDATE items SET id = 2;\n";
        let (created, data) = created_by(sql, Backend::Postgres);
        assert_eq!(
            created,
            vec![
                Created::Table("Orders".into()),
                Created::Table("items".into()),
                Created::Column("users".into(), "email".into()),
                Created::Column("users".into(), "phone".into()),
            ]
        );
        assert_eq!(data, 2);
    }
}
