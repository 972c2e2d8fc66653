//! The command line, as clap derive types. Doc comments here are `--help`.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use datamig_core::config::parse_duration;
use datamig_core::run::pace::RateChoice;

/// Batched data migrations: versioned schema steps, and Rust data jobs that run in
/// checkpointed, resumable batches.
#[derive(Debug, Parser)]
#[command(
    name = "datamig",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Database URL: sqlite:FILE, postgres://USER@HOST/DB or mysql://USER@HOST/DB.
    /// Without it: the --env profile of datamig.toml, DATABASE_URL (environment or
    /// .env), datamig.toml's default_env, then sqlite:datamig.db here.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Use this environment's profile from datamig.toml ([env.NAME]).
    #[arg(long, global = true, value_name = "NAME")]
    pub env: Option<String>,

    /// How long to wait for the database to answer a connection: every
    /// connection the command opens (readers, workers, reconnects).
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,

    /// Log format on stderr; RUST_LOG sets the level.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Versioned schema migrations (migrations/<version>_<name>.up.sql / .down.sql).
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// List the registered data jobs, with their arguments.
    Jobs,
    /// Run a data job in checkpointed batches; run it again to resume after any interruption.
    #[command(allow_negative_numbers = true)]
    Run(Box<RunCmd>),
    /// Show runs: state, progress, rate, cursor, times, last error.
    Status {
        /// Only this job's runs, with details of the newest.
        job: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How many runs to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        /// With a job: the newest run's last N batches (default 20): size, time,
        /// rows changed, time waited before each, retries.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "20",
              value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        batches: Option<i64>,
    },
    /// Run a job's verification queries now.
    Verify {
        job: String,
        /// A job argument, KEY=VALUE (repeatable).
        #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        args: Vec<(String, String)>,
    },
    /// Pause a job's run: its process waits at the next batch boundary (or, if none
    /// runs it, `datamig run` leaves it alone) until `datamig resume`.
    Pause { job: String },
    /// Let a paused run go on.
    Resume { job: String },
    /// Stop a job's run at the next batch boundary, for good: it is cancelled, and
    /// running the job again starts a new run.
    Cancel { job: String },
}

#[derive(Debug, Args)]
pub struct RunCmd {
    /// The job's name (`datamig jobs` lists them).
    pub job: String,
    /// Rows per batch: each batch and its checkpoint commit in one transaction.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub batch: i64,
    /// A job argument, KEY=VALUE (repeatable).
    #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub args: Vec<(String, String)>,
    /// Abandon an unfinished run of this job and start over.
    #[arg(long)]
    pub restart: bool,
    /// How to find the progress total: exact count, the planner's estimate, or none.
    #[arg(long, value_enum, default_value_t = CountArg::Exact)]
    pub count: CountArg,
    /// How long a batch waits for a row or table lock before it gives up (and is
    /// retried): set on datamig's sessions, whatever the server's default.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_lock_wait, allow_hyphen_values = true)]
    pub lock_timeout: Duration,
    /// How long one statement of a batch may run ("0" for no limit); a batch that
    /// runs out is retried at half the size. Not enforced on SQLite.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, allow_hyphen_values = true)]
    pub statement_timeout: Duration,
    /// How long past its statement and lock timeouts a batch may wait for the
    /// server before its connection is taken for dead, dropped, and the batch
    /// retried on a new one (a dead network path or a frozen server sends no
    /// error). The server also ends a datamig session left idle inside a batch
    /// that long, releasing its locks. Off with `--statement-timeout 0`.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub network_timeout: Duration,
    /// Pause after each batch, so that other writers get their turn (on SQLite,
    /// where a run otherwise takes the database's lock again at once) and the load
    /// stays low.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration, allow_hyphen_values = true)]
    pub sleep: Duration,
    /// How often a batch that failed transiently (lock or statement timeout,
    /// deadlock, lost connection) is retried, with growing waits, before the run fails.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_retries: u32,
    /// Split the key range into partitions and work on them with N workers, each
    /// with its own connection and cursor (PostgreSQL and MariaDB; the job's key
    /// must be a single integer column). The same
    /// command on other hosts joins the same run; an unfinished partitioned run
    /// is joined by any `datamig run` of the job.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64), help_heading = "Scaling out")]
    pub workers: Option<u16>,
    /// How long a partition stays a runner's without word from it: the partitions
    /// of a runner that died go to the others this long after.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration, help_heading = "Scaling out")]
    pub lease: Duration,
    /// Use one connection: read each batch inside its own transaction instead of
    /// reading the next batch on a second connection while the current one is written.
    #[arg(long)]
    pub no_read_ahead: bool,
    /// Progress display: a bar on a terminal and log lines otherwise (auto), or as chosen.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
    /// Print the run's summary as one JSON object on stdout (for scripts and benchmarks).
    #[arg(long)]
    pub json: bool,
    /// Print nothing but one summary line (and errors): for cron.
    #[arg(long, conflicts_with = "json")]
    pub quiet: bool,
    /// When the invocation ends, however it ends (completed, stopped by its time
    /// window, paused, cancelled, failed, refused as overlapping, unable to
    /// connect), run this shell command with the outcome as one JSON object on
    /// its standard input (for alerting). It does not change datamig's exit code.
    #[arg(long, value_name = "CMD")]
    pub notify_command: Option<String>,
    /// Warn when a batch holds its transaction (its locks) longer than this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warn_batch_time: Option<Duration>,
    /// Warn, once, when the run has taken longer than this (a nightly job
    /// running late); it goes on.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warn_run_time: Option<Duration>,

    /// At most this many rows a second over the whole run (2000, 2000/s,
    /// 120000/m, 500000/h), or batches with b (5b/s). The rate belongs to the
    /// run: resumed, or joined by another process, it keeps its rate without
    /// --rate; a new --rate changes it for every process on it, `none` lifts it.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, help_heading = "Pace")]
    pub rate: Option<RateChoice>,
    /// Adapt the batch size so that each batch takes about this long (--batch is
    /// where it starts; it moves at most 2x per batch).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, help_heading = "Pace")]
    pub target_batch_time: Option<Duration>,
    /// The smallest batch --target-batch-time may choose.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000), help_heading = "Pace")]
    pub batch_min: u64,
    /// The largest batch --target-batch-time may choose.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000), help_heading = "Pace")]
    pub batch_max: u64,
    /// Stop cleanly at a batch boundary after this long, exit 0, and leave the rest
    /// to the next invocation (which continues the same run).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, help_heading = "Time window")]
    pub max_runtime: Option<Duration>,
    /// Stop cleanly at a batch boundary before this time: HH:MM local time (the
    /// next such moment) or 2026-12-02T05:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = datamig_core::run::pace::parse_until, help_heading = "Time window")]
    pub until: Option<Duration>,

    /// Wait while more than this many other sessions are running statements
    /// (PostgreSQL active backends, MariaDB's processlist).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..), help_heading = "Health throttle")]
    pub max_active: Option<i64>,
    /// Wait while another transaction has been open longer than this (it holds
    /// back vacuum on PostgreSQL, purge on MariaDB).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, help_heading = "Health throttle")]
    pub max_transaction_age: Option<Duration>,
    /// Wait while a replica is further behind than this: the standbys of a
    /// PostgreSQL primary, and every --replica.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, help_heading = "Health throttle")]
    pub max_replica_lag: Option<Duration>,
    /// A replica to watch for --max-replica-lag (repeatable; needed on MariaDB).
    #[arg(long = "replica", value_name = "URL", help_heading = "Health throttle")]
    pub replicas: Vec<String>,
    /// A query whose latency is measured before batches: the run waits while it
    /// takes longer than --probe-max.
    #[arg(long, value_name = "SQL", help_heading = "Health throttle")]
    pub probe: Option<String>,
    /// The latency --probe must stay under.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, requires = "probe", help_heading = "Health throttle")]
    pub probe_max: Option<Duration>,

    /// Stop the run (saved as failed, exit 18) once more rows than this have been
    /// rejected; without it, rejected rows never stop a run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..), help_heading = "Errors")]
    pub max_errors: Option<i64>,
    /// Also write the run's rejected rows (key, reason) to this CSV file when the
    /// invocation ends (they are always in datamig_rejects). Checked before the
    /// run starts: it may not be the database, its journal or locks, a migration,
    /// datamig.toml, .env or the job's own files, nor a directory or a FIFO.
    #[arg(long, value_name = "FILE", help_heading = "Errors")]
    pub rejects_file: Option<std::path::PathBuf>,
    /// Refresh the planner's statistics of the tables the job changed: when it
    /// changed many rows (auto), always, or never.
    #[arg(long, value_enum, default_value_t = AnalyzeArg::Auto)]
    pub analyze: AnalyzeArg,
    /// Run the first batches (--dry-run-batches) in transactions that are rolled
    /// back; report what they would change, their timings, the projected total,
    /// and batch queries that do not use an index. Nothing is written.
    #[arg(long)]
    pub dry_run: bool,
    /// How many batches --dry-run runs.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub dry_run_batches: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AnalyzeArg {
    Auto,
    Always,
    Never,
}

fn parse_rate(s: &str) -> Result<RateChoice, String> {
    RateChoice::parse(s)
}

/// A duration above zero.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!(
            "`{s}` is zero; give a duration above zero, e.g. 500ms or 30m"
        )),
        d => Ok(d),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CountArg {
    Exact,
    Estimate,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    Auto,
    Bar,
    Log,
    None,
}

/// A lock wait: a duration above zero (zero would fail every batch that meets a lock).
fn parse_lock_wait(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("a lock timeout must be above zero; write e.g. 5s or 500ms".into()),
        d => Ok(d),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Write a new up/down pair from the template (migrations/template.up.sql if present).
    New {
        /// snake_case, starting with a verb: add_email_to_users, create_orders, …
        name: String,
    },
    /// Apply pending migrations, up to `head` or a version.
    Upgrade {
        /// `head`, or a version such as 20261124093000.
        #[arg(default_value = "head")]
        target: String,
        #[command(flatten)]
        run: RunArgs,
        /// Apply a pending migration even if a newer one is already applied.
        #[arg(long)]
        allow_out_of_order: bool,
    },
    /// Revert applied migrations: to a version (kept), the last N (-N), or all (base).
    #[command(allow_negative_numbers = true)]
    Downgrade {
        /// `base`, `-N`, or a version such as 20261124093000.
        target: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Show the newest applied migration.
    Current,
    /// Show the log of what was applied, reverted and repaired, when and by whom.
    History,
    /// Show every migration: applied, pending, changed since applied, file missing, dirty.
    Status,
    /// For CI: lint names and pairs, compare checksums with the database, fail on pending.
    Check {
        /// Do not fail because migrations are pending.
        #[arg(long)]
        allow_pending: bool,
        /// Check the files only; do not connect.
        #[arg(long)]
        no_database: bool,
    },
    /// Accept edited files' checksums, or resolve a migration that failed halfway.
    Repair {
        /// Say what a dirty migration's state now is, after fixing it by hand.
        #[arg(long, value_enum, value_name = "STATE")]
        dirty: Option<DirtyResolution>,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Prove every down reverses its up, on a scratch database.
    Test {
        /// Where to create the scratch database (default: beside the configured one).
        #[arg(long, value_name = "URL")]
        scratch_url: Option<String>,
        /// Drop the scratch databases that earlier `schema test`s left behind
        /// (killed, or their machine lost), which every `schema test` reports.
        #[arg(long)]
        drop_leftovers: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Print the SQL that would run, in order, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// How long to wait for another runner's schema lock.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DirtyResolution {
    /// All of its changes are in place: record it as applied.
    Applied,
    /// None of its changes are in place: remove its record.
    Reverted,
}
