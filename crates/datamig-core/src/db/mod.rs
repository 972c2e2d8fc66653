//! The one place where SQLite, PostgreSQL and MariaDB/MySQL differ.
//!
//! [`Driver`] is the small contract each database implements in its own file
//! (`sqlite.rs`, `postgres.rs`, `mysql.rs`; the two servers' value binding and
//! decoding in `postgres/values.rs` and `mysql/values.rs`, SQLite's C API in
//! `sqlite/native.rs`): connect, run SQL
//! with [`Value`] parameters, lock, introspect. [`Conn`] is a connection to any of them; shared
//! code (migrations, bookkeeping, jobs) talks only to `Conn` and writes its SQL
//! with `?` placeholders, which `Conn` rewrites for PostgreSQL.

mod bookkeeping;
mod bulk;
mod classify;
mod conn;
mod driver;
mod health;
mod mysql;
mod postgres;
mod scratch;
mod sqlite;
mod text;
mod value;

use std::time::Duration;

pub use crate::error::Transient;
pub use bookkeeping::{ADDED_COLUMNS, BOOKKEEPING_TABLES};
pub use bulk::{BulkUpdate, Guard, OnConflict};
pub use classify::db_message;
pub(crate) use classify::{error, failure};
pub use conn::Conn;
pub(crate) use driver::{bind_values, catalogue_lines, decode_rows, explain_json, Driver};
pub(crate) use health::seconds;
pub use health::Health;
pub use scratch::{Leftover, Scratch};
pub use text::{lock_key, MYSQL_LOCK_NAME_SQL};
pub(crate) use text::{quote_with, rows_estimate};
pub use value::{display_key, Row, Value};

/// Values one statement binds at most: below the parameter limits of all
/// three databases (SQLite's 32,766, and 65,535 for the servers).
pub const MAX_PARAMS: usize = 30_000;
/// sqlx reports statements slower than this at [`SLOW_STATEMENT_LOG`]: debug,
/// not its default warning, for a count or a check over a large table rightly
/// takes seconds, and a slow batch has datamig's own warning
/// (`--warn-batch-time`). `RUST_LOG=sqlx=debug` shows them.
pub(crate) const SLOW_STATEMENT: Duration = Duration::from_secs(1);
pub(crate) const SLOW_STATEMENT_LOG: log::LevelFilter = log::LevelFilter::Debug;

/// Options for opening a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// How long to wait for the server to answer.
    pub timeout: Duration,
    /// Shown to the server (PostgreSQL `application_name`) so an operator sees
    /// who holds a lock.
    pub application_name: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            application_name: format!("datamig {}", who_am_i()),
        }
    }
}

/// `user@host pid N`: recorded with every change and shown with locks.
pub fn who_am_i() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{user}@{host} pid {}", std::process::id())
}
