//! The engine's error type: one variant per thing a user can get wrong or meet.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error datamig reports. Messages are lowercase, name the thing, and say
/// what to do; none contains a password (URLs are always shown redacted).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A malformed URL, an unknown `--env`, an unreadable `datamig.toml`.
    #[error("{0}")]
    Config(String),

    /// The database cannot be reached, refused the credentials, or does not exist.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },

    /// A bad argument the command line could not catch (a malformed name, an
    /// unknown version).
    #[error("{0}")]
    Usage(String),

    /// The migration files are inconsistent in themselves or with the database:
    /// a bad name, a missing pair, a duplicate version, an edited applied file.
    #[error("{0}")]
    Invalid(String),

    /// Several problems found by `schema check`, one per line (one alone on
    /// the error's line).
    #[error("{}", problems(.0))]
    Problems(Vec<String>),

    /// `schema check` found migrations not yet applied.
    #[error("{count} migration(s) pending: {names}; run `datamig schema upgrade head` (or pass --allow-pending)")]
    Pending { count: usize, names: String },

    /// A migration's SQL failed. `report` says what was applied before it.
    #[error("{message}")]
    MigrationFailed { message: String },

    /// A migration failed halfway where the database could not roll it back:
    /// what happened, and what the operator does about the dirty record.
    #[error("{message}. {advice}")]
    Dirty { message: String, advice: String },

    /// A migration could not get a lock it needed in time (another session
    /// held it) and was rolled back: the file is fine, running it again is the answer.
    #[error("{0}")]
    MigrationBlocked(String),

    /// The connection to the database was lost during a command that cannot
    /// go on without it (a schema change): running the command again is the answer.
    #[error("{0}")]
    ConnectionLost(String),

    /// Another runner holds the schema lock longer than `--lock-timeout`.
    #[error("{0}")]
    LockTimeout(String),

    /// `schema test` found downs that do not reverse their ups.
    #[error("{0}")]
    SchemaTest(String),

    /// A job needs a migration (or table) that is not there yet.
    #[error("{0}")]
    SchemaNotReady(String),

    /// Another process is running the same job.
    #[error("{0}")]
    AlreadyRunning(String),

    /// A batch failed; the run is saved as failed with everything before it committed.
    #[error("{0}")]
    JobFailed(String),

    /// A batch met a condition that passes: a lock or statement timeout, a
    /// deadlock, a lost connection. The run retries it; once the retries are
    /// spent it fails as [`Error::JobFailed`].
    #[error("{message}")]
    Transient { message: String, kind: Transient },

    /// A partitioned run's batch found its partition taken over or split, or
    /// the run stopped: it rolled back, and its worker finds out which (never
    /// reported to the user as such).
    #[error("{0}")]
    PartitionLost(String),

    /// Stopped by a signal between batches; the run resumes where it stopped.
    #[error("{0}")]
    Interrupted(String),

    /// The job's run is paused by `datamig pause`; `datamig resume` lets it go on.
    #[error("{0}")]
    Paused(String),

    /// Stopped by `datamig cancel` between batches.
    #[error("{0}")]
    Cancelled(String),

    /// More rows were rejected than `--max-errors` allows; the run is saved as failed.
    #[error("{0}")]
    ErrorBudget(String),

    /// A verification check did not hold after the run.
    #[error("{0}")]
    VerificationFailed(String),

    /// datamig's record of a run is unreadable.
    #[error("{0}")]
    CorruptCheckpoint(String),

    /// Reading or writing a project file. The OS's reason is part of the
    /// message and not a `source`, which `{:#}` would print a second time.
    #[error("{action} {}: {reason}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        reason: std::io::Error,
    },

    /// The database user may not do what the command needs (a read-only user, a
    /// read-only replica or file, a missing grant).
    #[error("{0}")]
    Permission(String),

    /// A database error in datamig's own bookkeeping, with what datamig was doing.
    #[error("{context}: {message}")]
    Database { context: String, message: String },
}

fn problems(list: &[String]) -> String {
    match list {
        [one] => one.clone(),
        _ => format!(
            "{} problems found:\n{}",
            list.len(),
            list.iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            reason: source,
        }
    }

    pub(crate) fn db(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Database {
            context: context.into(),
            message: err.to_string(),
        }
    }
}

/// Why a statement failed in a way that trying again can fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// It waited longer than the lock timeout for a row or table lock.
    LockTimeout,
    /// It ran longer than the statement timeout.
    StatementTimeout,
    /// The server chose it as a deadlock's victim, or a serialization failure.
    Deadlock,
    /// The connection was lost: killed from the server, a restart, the network.
    ConnectionLost,
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transient::LockTimeout => "lock timeout",
            Transient::StatementTimeout => "statement timeout",
            Transient::Deadlock => "deadlock",
            Transient::ConnectionLost => "connection lost",
        })
    }
}
