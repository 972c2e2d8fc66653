//! The datamig engine: everything datamig does, without the command line.
//!
//! - [`config`] finds the database: `--database-url`, `datamig.toml` profiles,
//!   `DATABASE_URL` (and `.env`), or the embedded SQLite default.
//! - [`db`] is the one place where SQLite, PostgreSQL and MariaDB/MySQL differ:
//!   connecting, locking, quoting, introspection. Everything else is shared.
//! - [`migrate`] holds schema steps: versioned `up`/`down` SQL files, applied,
//!   reverted and tracked in datamig's own history table under a database lock.
//! - [`job`] holds the data-job API and the explicit registry a project builds.
//! - [`output`] keeps the files datamig writes clear of the ones it must not
//!   overwrite.
//! - [`prelude`] is what a job file imports.
//! - [`run`] runs a job: keyset batches, each committed with its checkpoint,
//!   resumable after any interruption, verified at the end.
//! - [`testing`] runs a job against a temporary database in a plain `#[test]`,
//!   stops it at a chosen batch and resumes it.
//!
//! Errors are [`Error`]; each variant names the thing that went wrong and what to
//! do, and the CLI maps each to a documented exit code.

pub mod config;
mod crash;
pub mod db;
mod error;
pub mod job;
pub mod migrate;
pub mod output;
pub mod prelude;
pub mod run;
pub mod testing;

pub use error::{Error, Partial, Result, RunStopped, SchemaStopped, Stop};
