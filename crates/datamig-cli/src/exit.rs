//! Exit codes: stable, documented in the README, one per kind of outcome.

use datamig_core::{Error, Stop};

/// Success.
pub const OK: u8 = 0;
/// An unexpected error (a bug, or an I/O failure): the message says what.
pub const FAILURE: u8 = 1;
/// Bad command line: unknown command or flag, malformed value, bad migration name, unknown version.
pub const USAGE: u8 = 2;
/// Bad configuration: malformed database URL, unknown `--env`, invalid `datamig.toml` or `.env`.
pub const CONFIG: u8 = 3;
/// Cannot connect: server unreachable, authentication failed, database missing;
/// or the connection was lost during a schema change (run the command again).
pub const CONNECT: u8 = 4;
/// Migration files are invalid or disagree with the database: bad or duplicate
/// names, a missing up/down file, an applied file edited, an out-of-order migration.
pub const INVALID_MIGRATIONS: u8 = 5;
/// A migration's SQL failed and was rolled back (or had not taken effect), or
/// it waited too long for a lock another session held.
pub const MIGRATION_FAILED: u8 = 6;
/// A migration failed halfway and could not be rolled back: the database is dirty.
pub const DIRTY: u8 = 7;
/// Another runner held the schema lock longer than `--lock-timeout`.
pub const LOCK_TIMEOUT: u8 = 8;
/// `schema check`: migrations are pending.
pub const PENDING: u8 = 9;
/// `schema test`: a down does not reverse its up.
pub const SCHEMA_TEST_FAILED: u8 = 10;

/// `run`: the job completed, but a verification check did not hold.
pub const VERIFICATION_FAILED: u8 = 11;
/// `run`: the same job is already running in another process.
pub const ALREADY_RUNNING: u8 = 12;
/// `run`: a batch failed; the run is saved as failed and resumes where it stopped.
pub const JOB_FAILED: u8 = 13;
/// `run`: the job's migration or table is not there yet (`datamig schema upgrade`).
pub const SCHEMA_NOT_READY: u8 = 14;
/// `run`: datamig's record of the run is corrupt; nothing was changed.
pub const CORRUPT_CHECKPOINT: u8 = 15;
/// `run`: the job's run is paused (`datamig pause`); `datamig resume <job>` releases it.
pub const PAUSED: u8 = 16;
/// `run`: stopped by `datamig cancel` between batches; the run is cancelled.
pub const CANCELLED: u8 = 17;
/// `run`: more rows were rejected than `--max-errors` allows; the run is saved as failed.
pub const ERROR_BUDGET: u8 = 18;
/// The database user lacks a privilege the command needs (named in the message).
pub const PERMISSION: u8 = 19;
/// `run`: stopped by Ctrl-C or SIGTERM between batches; run the same command to resume.
pub const INTERRUPTED: u8 = 130;

/// The exit code for an error, by its kind.
pub fn code_for(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<Error>() {
        Some(err) => code_for_error(err),
        None => FAILURE,
    }
}

/// The exit code for one of datamig's errors.
fn code_for_error(err: &Error) -> u8 {
    match err {
        Error::Usage(_) => USAGE,
        Error::Config(_) => CONFIG,
        Error::Connect { .. } | Error::ConnectionLost(_) => CONNECT,
        Error::Invalid(_) | Error::Problems(_) => INVALID_MIGRATIONS,
        Error::MigrationFailed { .. } | Error::MigrationBlocked(_) => MIGRATION_FAILED,
        Error::Dirty { .. } => DIRTY,
        Error::LockTimeout(_) => LOCK_TIMEOUT,
        Error::Pending { .. } => PENDING,
        Error::SchemaTest(_) => SCHEMA_TEST_FAILED,
        Error::VerificationFailed(_) => VERIFICATION_FAILED,
        Error::AlreadyRunning(_) => ALREADY_RUNNING,
        Error::JobFailed(_) | Error::Transient { .. } | Error::PartitionLost(_) => JOB_FAILED,
        Error::SchemaNotReady(_) => SCHEMA_NOT_READY,
        Error::CorruptCheckpoint(_) => CORRUPT_CHECKPOINT,
        Error::Interrupted(_) => INTERRUPTED,
        Error::Paused(_) => PAUSED,
        Error::Cancelled(_) => CANCELLED,
        Error::ErrorBudget(_) => ERROR_BUDGET,
        Error::SchemaStopped(stopped) => code_for_error(&stopped.cause),
        Error::RunStopped(stopped) => match &stopped.why {
            Stop::Failed(_) => JOB_FAILED,
            Stop::ErrorBudget(_) => ERROR_BUDGET,
            Stop::Interrupted { .. } => INTERRUPTED,
            Stop::Cancelled(_) => CANCELLED,
        },
        Error::Permission(_) => PERMISSION,
        _ => FAILURE,
    }
}

/// Every exit code datamig uses; the README's table lists exactly these (a test checks).
pub const ALL: &[u8] = &[
    OK,
    FAILURE,
    USAGE,
    CONFIG,
    CONNECT,
    INVALID_MIGRATIONS,
    MIGRATION_FAILED,
    DIRTY,
    LOCK_TIMEOUT,
    PENDING,
    SCHEMA_TEST_FAILED,
    VERIFICATION_FAILED,
    ALREADY_RUNNING,
    JOB_FAILED,
    SCHEMA_NOT_READY,
    CORRUPT_CHECKPOINT,
    PAUSED,
    CANCELLED,
    ERROR_BUDGET,
    PERMISSION,
    INTERRUPTED,
];
