//! What a database error means: a missing privilege, a condition that passes
//! if the statement is tried again ([`Transient`], and why), or the database's
//! own words for it, with its code; and connection failures as one line that
//! says what to check, with no password in it.

use super::{mysql, postgres, sqlite, Driver};
use crate::config::{Backend, DatabaseUrl};
use crate::error::Transient;
use crate::Error;

/// Which database a database error came from, by its type.
fn driver_of(db: &(dyn sqlx::error::DatabaseError + 'static)) -> Backend {
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        Backend::Postgres
    } else if db
        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some()
    {
        Backend::MySql
    } else {
        Backend::Sqlite
    }
}

/// `err`, from doing `context`: [`Error::Transient`] where trying again can
/// pass (a lock wait, a deadlock, a lost connection), else as [`error`] says.
pub(crate) fn failure(context: &str, err: &sqlx::Error) -> Error {
    match Transient::of(err) {
        Some(kind) => Error::Transient {
            message: format!("{context}: {}", db_message(err)),
            kind,
        },
        None => error(context, err),
    }
}

/// `err`, from doing `context`, as the engine's error: a missing privilege as
/// [`Error::Permission`] (its own exit code, and what to do), anything else as a
/// database error.
pub(crate) fn error(context: &str, err: &sqlx::Error) -> Error {
    let denied = match err {
        sqlx::Error::Database(db) => match driver_of(db.as_ref()) {
            Backend::Postgres => postgres::Postgres::permission_denied(db.as_ref()),
            Backend::MySql => mysql::MySql::permission_denied(db.as_ref()),
            Backend::Sqlite => sqlite::Sqlite::permission_denied(db.as_ref()),
        },
        _ => false,
    };
    if denied {
        return Error::Permission(format!(
            "{context}: {}. The database user may not do this: datamig creates and writes its own \
             tables (datamig_*) and writes the job's tables; grant that, or connect as a user who may",
            db_message(err)
        ));
    }
    Error::db(context, db_message(err))
}

/// The database's own words for an error, with its code: what users search for.
pub fn db_message(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => match (mysql::error_number(db.as_ref()), db.code()) {
            (Some(number), _) => format!("{} (error {number})", db.message()),
            (None, Some(code)) => format!("{} (code {code})", db.message()),
            (None, None) => db.message().to_string(),
        },
        sqlx::Error::Io(e) => format!("connection lost: {e}"),
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".into(),
        other => other.to_string(),
    }
}

/// Turns a connection failure into one line saying what to check.
pub(super) fn connect_reason(url: &DatabaseUrl, err: &sqlx::Error) -> String {
    let db = url.database_name().unwrap_or_default();
    match err {
        sqlx::Error::Database(e) => {
            // MySQL's SQLSTATEs are too coarse (42000 for a missing database): use its error number.
            let code = mysql::error_number(e.as_ref())
                .map(|n| n.to_string())
                .unwrap_or_else(|| e.code().unwrap_or_default().to_string());
            match code.as_str() {
                // PostgreSQL invalid_password / invalid_authorization_specification; MySQL access denied.
                "28P01" | "28000" | "1045" | "1044" | "1698" => format!(
                    "authentication failed ({}); check the user and password in the URL",
                    e.message()
                ),
                "3D000" | "1049" => {
                    format!("database `{db}` does not exist; create it first or fix the URL")
                }
                _ => db_message(err),
            }
        }
        sqlx::Error::Io(e) => {
            format!("{e}; is the server running, and are the host and port right?")
        }
        sqlx::Error::Tls(e) => format!("TLS failed: {e}; check sslmode / ssl-mode in the URL"),
        sqlx::Error::Configuration(e) => format!(
            "the URL is not valid for the driver: {}",
            redact_text(&e.to_string())
        ),
        other => redact_text(&db_message(other)),
    }
}

/// Driver messages rarely include URLs, but when one does, cut out its userinfo.
fn redact_text(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_inclusive(char::is_whitespace) {
        match (word.find("://"), word.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                out.push_str(&word[..s + 3]);
                out.push_str("***");
                out.push_str(&word[at..]);
            }
            _ => out.push_str(word),
        }
    }
    out
}

impl Transient {
    /// Classifies an error from any connection; `None` when trying again
    /// would fail the same way.
    pub fn of(err: &sqlx::Error) -> Option<Transient> {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::PoolClosed
            | sqlx::Error::PoolTimedOut => Some(Transient::ConnectionLost),
            sqlx::Error::Database(db) => match driver_of(db.as_ref()) {
                Backend::Sqlite => sqlite::Sqlite::transient(db.as_ref()),
                Backend::Postgres => postgres::Postgres::transient(db.as_ref()),
                Backend::MySql => mysql::MySql::transient(db.as_ref()),
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_in_driver_text() {
        assert_eq!(
            redact_text("bad url postgres://u:pw@h/db here"),
            "bad url postgres://***@h/db here"
        );
    }
}
