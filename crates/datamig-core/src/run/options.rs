//! What a run is asked to do, in groups. Each group is both the engine's
//! struct and a clap argument group that `datamig run` flattens into its
//! command line, so a flag is declared once, parsed once into the engine's
//! units, and checked once ([`Options::validate`]) whether it came from the
//! command line or from a program that builds its own [`Options`].
//! `Default` for each group is what the command line gives without its flags
//! (a test holds the two together).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use super::pace::{self, RateChoice};
use super::{throttle, MAX_BATCH, MAX_WORKERS};
use crate::config::parse_duration;
use crate::{Error, Result};

/// How fast a run goes: the size of its batches and the pauses between them.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct Pace {
    /// Rows per batch: each batch and its checkpoint commit in one transaction.
    #[arg(long = "batch", value_name = "N", default_value_t = 1000)]
    pub batch_size: u64,
    /// Pause after each batch, so that other writers get their turn (on SQLite,
    /// where a run otherwise takes the database's lock again at once) and the load
    /// stays low.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration, allow_hyphen_values = true)]
    pub sleep: Duration,
    /// At most this many rows a second over the whole run (2000, 2000/s,
    /// 120000/m, 500000/h), or batches with b (5b/s). The rate belongs to the
    /// run: resumed, or joined by another process, it keeps its rate without
    /// --rate; a new --rate changes it for every process on it, `none` lifts it.
    #[arg(long, value_name = "RATE", value_parser = RateChoice::parse, help_heading = "Pace")]
    pub rate: Option<RateChoice>,
    /// Adapt the batch size so that each batch takes about this long (--batch is
    /// where it starts; it moves at most 2x per batch).
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, help_heading = "Pace")]
    pub target_batch_time: Option<Duration>,
    /// The smallest batch --target-batch-time may choose.
    #[arg(long, value_name = "N", default_value_t = 100, help_heading = "Pace")]
    pub batch_min: u64,
    /// The largest batch --target-batch-time may choose.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        help_heading = "Pace"
    )]
    pub batch_max: u64,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            batch_size: 1000,
            sleep: Duration::ZERO,
            rate: None,
            target_batch_time: None,
            batch_min: 100,
            batch_max: 100_000,
        }
    }
}

impl Pace {
    /// What the run's rate becomes: kept, set or lifted.
    pub fn rate(&self) -> RateChoice {
        self.rate.unwrap_or_default()
    }

    /// The batch sizer these ask for: fixed at `--batch`, or adaptive to
    /// `--target-batch-time` within `--batch-min` and `--batch-max`.
    pub(crate) fn sizer(&self) -> pace::Sizer {
        let rows = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        match self.target_batch_time {
            Some(target) => pace::Sizer::adaptive(
                rows(self.batch_size),
                target,
                rows(self.batch_min),
                rows(self.batch_max),
            ),
            None => pace::Sizer::fixed(rows(self.batch_size)),
        }
    }

    /// The first batch's size, as the engine counts rows.
    pub(crate) fn rows(&self) -> i64 {
        i64::try_from(self.batch_size).unwrap_or(i64::MAX)
    }

    /// The largest batch the run may take.
    pub(crate) fn largest(&self) -> u64 {
        match self.target_batch_time {
            Some(_) => self.batch_max.max(self.batch_size),
            None => self.batch_size,
        }
    }

    fn validate(&self) -> Result<()> {
        at_most("--sleep", self.sleep)?;
        if let Some(t) = self.target_batch_time {
            at_most("--target-batch-time", t)?;
        }
        let within = |flag: &str, n: u64| {
            if (1..=MAX_BATCH).contains(&n) {
                Ok(())
            } else {
                Err(Error::Usage(format!(
                    "{flag} {n} is out of range; give between 1 and {MAX_BATCH} rows"
                )))
            }
        };
        within("--batch", self.batch_size)?;
        within("--batch-min", self.batch_min)?;
        within("--batch-max", self.batch_max)?;
        if self.target_batch_time.is_some() && self.batch_min > self.batch_max {
            return Err(Error::Usage(format!(
                "--batch-min {} is above --batch-max {}; give a range that holds a batch",
                self.batch_min, self.batch_max
            )));
        }
        Ok(())
    }
}

/// How long a batch may wait and run, and how often it is tried again.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct Timeouts {
    /// How long a batch waits for a row or table lock before it gives up (and is
    /// retried): set on datamig's sessions, whatever the server's default.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = lock_wait, allow_hyphen_values = true)]
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
    /// How often a batch that failed transiently (lock or statement timeout,
    /// deadlock, lost connection) is retried, with growing waits, before the run fails.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_retries: u32,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(300),
            network_timeout: Duration::from_secs(30),
            max_retries: 10,
        }
    }
}

impl Timeouts {
    fn validate(&self) -> Result<()> {
        at_most("--lock-timeout", self.lock_timeout)?;
        at_most("--statement-timeout", self.statement_timeout)?;
        at_most("--network-timeout", self.network_timeout)
    }

    /// The statement timeout, `None` for none (`--statement-timeout 0`).
    pub fn statement(&self) -> Option<Duration> {
        (!self.statement_timeout.is_zero()).then_some(self.statement_timeout)
    }
}

/// How a run is spread: over several workers and processes, or one
/// connection per process.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct Scale {
    /// Split the key range into partitions and work on them with N workers, each
    /// with its own connection and cursor (PostgreSQL and MariaDB; the job's key
    /// must be a single integer column). The same
    /// command on other hosts joins the same run; an unfinished partitioned run
    /// is joined by any `datamig run` of the job.
    #[arg(long, value_name = "N", help_heading = "Scaling out")]
    pub workers: Option<usize>,
    /// How long a partition stays a runner's without word from it: the partitions
    /// of a runner that died go to the others this long after.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = positive_duration, help_heading = "Scaling out")]
    pub lease: Duration,
    /// Use one connection: read each batch inside its own transaction instead of
    /// reading the next batch on a second connection while the current one is written.
    #[arg(long)]
    pub no_read_ahead: bool,
}

impl Default for Scale {
    fn default() -> Scale {
        Scale {
            workers: None,
            lease: Duration::from_secs(30),
            no_read_ahead: false,
        }
    }
}

impl Scale {
    /// Whether the next batch is read on a second connection while one is written.
    pub fn read_ahead(&self) -> bool {
        !self.no_read_ahead
    }

    fn validate(&self) -> Result<()> {
        at_most("--lease", self.lease)?;
        match self.workers {
            Some(n) if n == 0 || n > MAX_WORKERS => Err(Error::Usage(format!(
                "--workers {n} is out of range; give between 1 and {MAX_WORKERS}"
            ))),
            _ => Ok(()),
        }
    }
}

/// When a run stops by itself, at a batch boundary, leaving the rest to the
/// next invocation: its deadlines, fixed when the command line is read.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct TimeWindow {
    /// Stop cleanly at a batch boundary after this long, exit 0, and leave the rest
    /// to the next invocation (which continues the same run).
    #[arg(long = "max-runtime", value_name = "DURATION", value_parser = from_now, help_heading = "Time window")]
    pub max_runtime: Option<Instant>,
    /// Stop cleanly at a batch boundary before this time: HH:MM local time (the
    /// next such moment) or 2026-12-02T05:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = until, help_heading = "Time window")]
    pub until: Option<Instant>,
    /// Stop cleanly once this invocation has committed N batches, exit 0, and leave
    /// the rest to the next invocation: a canary run of a few batches to look at
    /// before the rest, or a test that interrupts a job at a chosen batch. (With
    /// --workers, the batches other workers have in flight then still commit.)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Time window")]
    pub max_batches: Option<u64>,
}

impl TimeWindow {
    /// The window that closes first, with the flag that set it.
    pub fn window(&self) -> Option<pace::Window> {
        let windows = [
            self.max_runtime.map(|deadline| pace::Window {
                deadline,
                reason: "--max-runtime",
            }),
            self.until.map(|deadline| pace::Window {
                deadline,
                reason: "--until",
            }),
        ];
        windows.into_iter().flatten().min_by_key(|w| w.deadline)
    }
}

/// How the progress total is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum CountMode {
    /// `SELECT count(*)` of the rows the source selects: exact, slow on huge tables.
    #[default]
    Exact,
    /// The planner's estimate of that count, from EXPLAIN (exact on SQLite,
    /// whose planner gives none).
    Estimate,
    /// No total: progress shows rows and rate, no percentage or ETA.
    None,
}

/// When a run refreshes the planner's statistics of the tables it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Analyze {
    /// When it changed many rows: at least 1000 (`ANALYZE_MIN_ROWS`) and a tenth of the table
    #[default]
    Auto,
    /// After every run that completes
    Always,
    /// Leave it to the server's own statistics collection
    Never,
}

/// What a run counts, warns about, records and refuses along the way.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct Reporting {
    /// How to find the progress total: exact count, the planner's estimate, or none.
    #[arg(long, value_enum, default_value_t = CountMode::Exact)]
    pub count: CountMode,
    /// Warn when a batch holds its transaction (its locks) longer than this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warn_batch_time: Option<Duration>,
    /// Warn, once, when the run has taken longer than this (a nightly job
    /// running late); it goes on.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warn_run_time: Option<Duration>,
    /// Stop the run (saved as failed, exit 18) once more rows than this have been
    /// rejected; without it, rejected rows never stop a run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..), help_heading = "Errors")]
    pub max_errors: Option<i64>,
    /// Also write the run's rejected rows (key, reason) to this CSV file when the
    /// invocation ends (they are always in datamig_rejects). Checked before the
    /// run starts: it may not be the database, its journal or locks, a migration,
    /// datamig.toml, .env or the job's own files, nor a directory or a FIFO.
    #[arg(long, value_name = "FILE", help_heading = "Errors")]
    pub rejects_file: Option<PathBuf>,
    /// Refresh the planner's statistics of the tables the job changed: when it
    /// changed many rows (auto), always, or never.
    #[arg(long, value_enum, default_value_t = Analyze::Auto)]
    pub analyze: Analyze,
}

/// Everything a run is told.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub pace: Pace,
    pub timeouts: Timeouts,
    pub scale: Scale,
    pub window: TimeWindow,
    pub reporting: Reporting,
    /// Wait before a batch while the database is under stress.
    pub throttle: throttle::Limits,
    /// Abandon an unfinished run and start over.
    pub restart: bool,
    /// The command that resumes this run, for the messages that need it.
    pub resume_command: String,
    /// Files an output of the run must not be (the project's migrations and
    /// settings); the database and the job's own files are added to them.
    pub protected: crate::output::Protected,
}

impl Options {
    /// The options of a plain run of `batch_size` rows a batch, as the command
    /// line's defaults have them.
    pub fn new(batch_size: u64) -> Options {
        Options {
            pace: Pace {
                batch_size,
                ..Pace::default()
            },
            ..Options::default()
        }
    }

    /// Refuses options no run can take: checked once, before anything runs
    /// (`datamig run` checks them before it connects).
    pub fn validate(&self) -> Result<()> {
        self.pace.validate()?;
        self.timeouts.validate()?;
        self.scale.validate()
    }
}

/// The longest wait or timeout a run takes: beyond it, adding one to a clock
/// overflows, and no batch or pause is meant to last longer.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

fn at_most(flag: &str, d: Duration) -> Result<()> {
    if d > MAX_DURATION {
        return Err(Error::Usage(format!(
            "{flag} {}s is too long; give at most 366d",
            d.as_secs()
        )));
    }
    Ok(())
}

/// A duration above zero.
pub fn positive_duration(s: &str) -> std::result::Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!(
            "`{s}` is zero; give a duration above zero, e.g. 500ms or 30m"
        )),
        d => Ok(d),
    }
}

/// A lock wait: a duration above zero (zero would fail every batch that meets a lock).
fn lock_wait(s: &str) -> std::result::Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("a lock timeout must be above zero; write e.g. 5s or 500ms".into()),
        d => Ok(d),
    }
}

/// `--max-runtime`: a duration above zero, as the moment it ends.
fn from_now(s: &str) -> std::result::Result<Instant, String> {
    deadline(s, positive_duration(s)?)
}

/// `--until`: a time of day or an instant, as the moment it comes.
fn until(s: &str) -> std::result::Result<Instant, String> {
    deadline(s, pace::parse_until(s)?)
}

fn deadline(s: &str, d: Duration) -> std::result::Result<Instant, String> {
    Instant::now()
        .checked_add(d)
        .filter(|_| d <= MAX_DURATION)
        .ok_or_else(|| format!("`{s}` is too far away; give at most 366d"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        pace: Pace,
        #[command(flatten)]
        timeouts: Timeouts,
        #[command(flatten)]
        scale: Scale,
        #[command(flatten)]
        window: TimeWindow,
        #[command(flatten)]
        reporting: Reporting,
    }

    #[test]
    fn the_defaults_are_the_command_lines() {
        let flags = Flags::try_parse_from(["datamig"]).unwrap();
        assert_eq!(flags.pace, Pace::default());
        assert_eq!(flags.timeouts, Timeouts::default());
        assert_eq!(flags.scale, Scale::default());
        assert_eq!(flags.window, TimeWindow::default());
        assert_eq!(flags.reporting, Reporting::default());
    }

    #[test]
    fn flags_arrive_in_the_engines_units_and_are_checked_once() {
        let flags = Flags::try_parse_from([
            "datamig",
            "--batch",
            "5000",
            "--statement-timeout",
            "0",
            "--max-runtime",
            "1ms",
            "--until",
            "23:59",
            "--workers",
            "3",
        ])
        .unwrap();
        assert_eq!(flags.pace.rows(), 5000);
        assert_eq!(flags.timeouts.statement(), None);
        assert_eq!(flags.scale.workers, Some(3));
        // The window that closes first is the one a run stops at.
        assert_eq!(
            flags.window.window().map(|w| w.reason),
            Some("--max-runtime")
        );

        let refused = |o: Options| o.validate().unwrap_err().to_string();
        assert_eq!(
            refused(Options::new(0)),
            "--batch 0 is out of range; give between 1 and 1000000 rows"
        );
        let mut o = Options::new(10);
        o.pace.target_batch_time = Some(Duration::from_secs(1));
        o.pace.batch_min = 500;
        o.pace.batch_max = 100;
        assert_eq!(
            refused(o),
            "--batch-min 500 is above --batch-max 100; give a range that holds a batch"
        );
        let mut o = Options::new(10);
        o.scale.workers = Some(65);
        assert!(refused(o).starts_with("--workers 65 is out of range"));
        // Durations a clock cannot hold are refused, not a panic at the first batch.
        let mut o = Options::new(10);
        o.timeouts.statement_timeout = Duration::from_secs(u64::MAX);
        assert_eq!(
            refused(o),
            "--statement-timeout 18446744073709551615s is too long; give at most 366d"
        );
        for far in [
            ["datamig", "--max-runtime", "18446744073709551615"],
            ["datamig", "--until", "2999-01-01T00:00:00Z"],
        ] {
            let said = Flags::try_parse_from(far).err().map(|e| e.to_string());
            assert!(
                said.is_some_and(|s| s.contains("is too far away; give at most 366d")),
                "{far:?}"
            );
        }
        assert!(Options::new(1000).validate().is_ok());
    }
}
