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

    /// A run that stopped before its end, with where it stood and why: a batch
    /// failed, the error budget ran out, a signal, a cancel. Its exit code
    /// follows the reason ([`Stop`]).
    #[error("{0}")]
    RunStopped(Box<RunStopped>),

    /// A schema command (`upgrade`, `downgrade`) that stopped at a migration,
    /// with what it did before: its exit code is its cause's.
    #[error("{0}")]
    SchemaStopped(Box<SchemaStopped>),
}

/// A schema command stopped at a migration: which, why, and what it had done.
#[derive(Debug)]
pub struct SchemaStopped {
    /// The migration it stopped at (`20261124093000_add_email`).
    pub migration: String,
    /// What the command did to each migration: `applied` or `reverted`.
    pub verb: &'static str,
    /// The migrations it did that to before this one, in order.
    pub done: Vec<String>,
    pub cause: Error,
}

impl std::fmt::Display for SchemaStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = self.verb;
        let before = if self.done.is_empty() {
            format!("nothing was {verb} before it")
        } else {
            format!("{verb} before it: {}", self.done.join(", "))
        };
        match &self.cause {
            Error::MigrationFailed { message } => write!(
                f,
                "{message}\n{before}. Fix {} and run the command again",
                self.migration
            ),
            Error::Dirty { message, advice } => write!(f, "{message}\n{before}. {advice}"),
            other => write!(f, "{other}\n{before}"),
        }
    }
}

/// Where a run stood when it stopped before its end: its partial report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Partial {
    pub job: String,
    /// Which run of its job this is (1 for its first).
    pub run_number: i64,
    /// Batches committed, over every invocation of the run.
    pub batches: i64,
    pub rows_done: i64,
    /// The rows the run selects in all, when counted.
    pub total: Option<i64>,
    /// A run in one worker: its last checkpoint (`id 4180000`, `the start`);
    /// a partitioned one: `None`.
    pub checkpoint: Option<String>,
    /// How far it got, in words: `after 12 batches, at id 4180000`, or
    /// `with 12 of 16 partitions done`.
    pub progress: String,
    /// The command that resumes it.
    pub resume: String,
    /// How much of the total is done, when the total is known.
    pub percent: Option<f64>,
}

/// Why a run stopped before its end.
#[derive(Debug)]
pub enum Stop {
    /// A batch failed (after its retries): the run is saved as failed.
    Failed(Box<Error>),
    /// More rows were rejected than `--max-errors` allows: saved as failed.
    ErrorBudget(String),
    /// A signal between batches. `paused`: by `datamig pause`, and it stays
    /// paused; `others_at_work`: other processes go on with the run.
    Interrupted { paused: bool, others_at_work: bool },
    /// `datamig cancel` (`why` says by whom).
    Cancelled(String),
}

/// A run stopped before its end: where it stood, and why.
#[derive(Debug)]
pub struct RunStopped {
    pub run: Partial,
    pub why: Stop,
}

impl std::fmt::Display for RunStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Partial {
            job: name,
            run_number: number,
            batches,
            checkpoint,
            progress,
            resume,
            ..
        } = &self.run;
        match (&self.why, checkpoint) {
            (Stop::Failed(e), Some(at)) => write!(
                f,
                "run {number} of {name} failed at batch {} (at {at}): {e}. The {batches} batches before it \
                 are committed; fix the cause and resume with: {resume}",
                batches + 1
            ),
            (Stop::Failed(e), None) => write!(
                f,
                "run {number} of {name} failed: {e}. Every committed batch is kept (the other runners \
                 of the run stop too); fix the cause and resume with: {resume}"
            ),
            (Stop::ErrorBudget(why), at) => write!(
                f,
                "run {number} of {name} stopped{}: {why}. Every finished batch is committed; `datamig status \
                 {name}` lists the rejected rows. Fix the data or raise --max-errors, then resume with: {resume}",
                at.as_ref().map(|_| format!(" {progress}")).unwrap_or_default()
            ),
            (Stop::Cancelled(why), _) => write!(
                f,
                "run {number} of {name} was {why} {progress}; every finished batch is committed. Running the job \
                 again starts a new run"
            ),
            (
                Stop::Interrupted {
                    paused,
                    others_at_work,
                },
                _,
            ) => {
                let how = if *others_at_work {
                    format!("the run goes on in the other processes at work on it; join them again with: {resume}")
                } else if *paused {
                    format!("it stays paused: `datamig resume {name}`, then resume with: {resume}")
                } else {
                    format!("Resume with: {resume}")
                };
                let percent = self
                    .run
                    .percent
                    .map(|p| format!(" ({p:.1}%)"))
                    .unwrap_or_default();
                write!(
                    f,
                    "interrupted run {number} of {name} {progress}{percent}; every finished batch is committed. {how}"
                )
            }
        }
    }
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
    /// A batch step's call outside the database failed or ran out of time.
    Outside,
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transient::LockTimeout => "lock timeout",
            Transient::StatementTimeout => "statement timeout",
            Transient::Deadlock => "deadlock",
            Transient::ConnectionLost => "connection lost",
            Transient::Outside => "outside call",
        })
    }
}
