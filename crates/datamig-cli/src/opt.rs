//! The command line, as clap derive types. Doc comments here are `--help`.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use datamig_core::config::parse_duration;
use datamig_core::run;

/// Batched data migrations: versioned schema steps, and Rust data jobs that run in
/// checkpointed, resumable batches.
#[derive(Debug, Parser)]
#[command(
    name = "datamig",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = "Examples:
  datamig schema new add_email_to_users      write a migration pair in migrations/
  datamig schema upgrade                     apply what is pending
  datamig jobs                               the data jobs this binary knows
  datamig run backfill_emails --batch 5000   run one; killed, run it again: it resumes
  datamig status backfill_emails             where its run stands
  datamig --env production schema status     the same against datamig.toml's [env.production]"
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
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = run::positive_duration)]
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
    #[command(
        allow_negative_numbers = true,
        after_help = "Examples:
  datamig run backfill_emails --batch 5000                 run, or resume, the job
  datamig run backfill_emails --dry-run                    what its first batches would do, changing nothing
  datamig run backfill_emails --max-batches 3              a canary: three batches, then stop (resumable)
  datamig run purge_expired_sessions --arg older_than=30d --until 05:00 --quiet
  datamig run backfill_emails --workers 4 --rate 20000     partitioned, at most 20000 rows/s"
    )]
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
    /// Print a completion script for a shell: bash, zsh, fish, powershell or elvish.
    #[command(after_help = "Examples:
  datamig completions bash > ~/.local/share/bash-completion/completions/datamig
  datamig completions zsh > \"${fpath[1]}/_datamig\"
  datamig completions fish > ~/.config/fish/completions/datamig.fish")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct RunCmd {
    /// The job's name (`datamig jobs` lists them).
    pub job: String,
    /// A job argument, KEY=VALUE (repeatable).
    #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub args: Vec<(String, String)>,
    /// Abandon an unfinished run of this job and start over.
    #[arg(long)]
    pub restart: bool,
    // The engine's own groups (datamig_core::run::options): declared there, once.
    #[command(flatten)]
    pub pace: run::Pace,
    #[command(flatten)]
    pub timeouts: run::Timeouts,
    #[command(flatten)]
    pub scale: run::Scale,
    #[command(flatten)]
    pub window: run::TimeWindow,
    #[command(flatten)]
    pub throttle: run::throttle::Flags,
    #[command(flatten)]
    pub reporting: run::Reporting,
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
    /// Run the first batches (--dry-run-batches) in transactions that are rolled
    /// back; report what they would change, their timings, the projected total,
    /// and batch queries that do not use an index. Nothing is written.
    #[arg(long)]
    pub dry_run: bool,
    /// How many batches --dry-run runs.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub dry_run_batches: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    Auto,
    Bar,
    Log,
    None,
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
    #[command(after_help = "Examples:
  datamig schema upgrade                    everything pending
  datamig schema upgrade --dry-run          the SQL it would run, in order
  datamig schema upgrade 20261124093000     up to that version")]
    Upgrade {
        /// `head`, or a version such as 20261124093000.
        #[arg(default_value = "head")]
        target: String,
        #[command(flatten)]
        run: RunArgs,
        /// Apply a pending migration even if a newer one is already applied.
        #[arg(long)]
        allow_out_of_order: bool,
        /// Apply every migration although the database holds another tool's
        /// history (which `schema adopt` takes over instead): for a table of that
        /// name that is not this project's.
        #[arg(long)]
        ignore_other_history: bool,
    },
    /// Take over a database that sqlx-cli, golang-migrate, refinery or dbmate
    /// migrated: record the versions it applied in datamig's history, running none.
    #[command(after_help = "Examples:
  datamig schema adopt --from sqlx --dry-run    what it would record
  datamig schema adopt --from sqlx              record it; then `datamig schema status`")]
    Adopt {
        /// The tool whose bookkeeping table to read.
        #[arg(long, value_enum, value_name = "TOOL")]
        from: datamig_core::migrate::Tool,
        /// Say what would be recorded, and record nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        lock: LockArgs,
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
        /// The scratch database's name, exactly (it must not exist), or a prefix
        /// with a trailing * (default: datamig_scratch_<pid>_<time>_<random>): for a
        /// user allowed to create only certain names.
        #[arg(long, value_name = "NAME")]
        scratch_name: Option<String>,
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
