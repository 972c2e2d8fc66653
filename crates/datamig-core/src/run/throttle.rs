//! Health throttling: the run's control checks, before the first batch and
//! every 200 ms, that the database is not under stress, and holds the batches
//! while it is. What is checked, and how, differs by database
//! ([`crate::db::Health`]); the thresholds are the user's.
//!
//! - sessions running a statement (PostgreSQL active backends, MariaDB
//!   `Threads_running`), not counting the run's own;
//! - the oldest open transaction (on PostgreSQL, one holding a snapshot holds
//!   back vacuum; on MariaDB, purge);
//! - replication lag: of the standbys a PostgreSQL primary streams to, and of
//!   each `--replica` the run connects to;
//! - a probe query of the user's, timed: the run backs off when real users
//!   would feel it.
//!
//! Every check has a time limit. One that cannot be made on the run's
//! connection (lost, or silent past the limit) is a [`Error::Transient`]: the
//! run replaces the connection as after a failed batch. A replica that cannot
//! be read makes the run wait (its lag is unknown) and is reconnected at the
//! next check.

use std::time::{Duration, Instant};

use crate::config::DatabaseUrl;
use crate::db::{db_message, Conn, ConnectOptions, Transient};
use crate::{Error, Result};

/// The thresholds (each optional) and what to probe.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// At most this many other sessions running a statement.
    pub max_active: Option<i64>,
    /// No other transaction open longer than this.
    pub max_transaction_age: Option<Duration>,
    /// No replica further behind than this.
    pub max_replica_lag: Option<Duration>,
    /// Replicas to check the lag of, by connecting to them.
    pub replicas: Vec<DatabaseUrl>,
    /// A query of the user's whose latency must stay under the limit.
    pub probe: Option<(String, Duration)>,
}

/// The health throttle's flags (`datamig run`'s "Health throttle" group), over
/// `datamig.toml`'s `[throttle]`: [`Flags::resolve`] makes the [`Limits`].
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Flags {
    /// Wait while more than this many other sessions are running statements
    /// (PostgreSQL active backends, MariaDB's processlist).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..), help_heading = "Health throttle")]
    pub max_active: Option<i64>,
    /// Wait while another transaction has been open longer than this (it holds
    /// back vacuum on PostgreSQL, purge on MariaDB).
    #[arg(long, value_name = "DURATION", value_parser = super::positive_duration, help_heading = "Health throttle")]
    pub max_transaction_age: Option<Duration>,
    /// Wait while a replica is further behind than this: the standbys of a
    /// PostgreSQL primary, and every --replica.
    #[arg(long, value_name = "DURATION", value_parser = super::positive_duration, help_heading = "Health throttle")]
    pub max_replica_lag: Option<Duration>,
    /// A replica to watch for --max-replica-lag (repeatable; needed on MariaDB).
    #[arg(long = "replica", value_name = "URL", help_heading = "Health throttle")]
    pub replicas: Vec<String>,
    /// A query whose latency is measured before batches: the run waits while it
    /// takes longer than --probe-max.
    #[arg(long, value_name = "SQL", help_heading = "Health throttle")]
    pub probe: Option<String>,
    /// The latency --probe must stay under.
    #[arg(long, value_name = "DURATION", value_parser = super::positive_duration, requires = "probe", help_heading = "Health throttle")]
    pub probe_max: Option<Duration>,
}

impl Flags {
    /// The limits these flags set over `file` (`datamig.toml`'s `[throttle]`),
    /// for a run on `backend`, with a warning for each file setting left out.
    /// On SQLite the server throttles have nothing to watch: a flag is
    /// refused (when the run starts), a file setting (shared with the server
    /// environments) is left out with a warning.
    pub fn resolve(
        &self,
        file: &crate::config::ThrottleSettings,
        backend: crate::config::Backend,
    ) -> Result<(Limits, Vec<String>)> {
        let mut file = file.clone();
        let mut warnings = Vec::new();
        if backend == crate::config::Backend::Sqlite {
            for (key, set) in [
                ("max_active", file.max_active.take().is_some()),
                (
                    "max_transaction_age",
                    file.max_transaction_age.take().is_some(),
                ),
                ("max_replica_lag", file.max_replica_lag.take().is_some()),
            ] {
                if set {
                    warnings.push(format!(
                        "warning: datamig.toml's throttle setting {key} does nothing on SQLite (no sessions or \
                         replicas to watch); it is left out"
                    ));
                }
            }
            file.replicas.clear();
        }
        let replicas = if self.replicas.is_empty() {
            file.replicas
        } else {
            self.replicas
                .iter()
                .map(|u| DatabaseUrl::parse(u))
                .collect::<Result<_, _>>()?
        };
        let probe = self.probe.clone().or(file.probe);
        let limits = Limits {
            max_active: self.max_active.or(file.max_active),
            max_transaction_age: self.max_transaction_age.or(file.max_transaction_age),
            max_replica_lag: self.max_replica_lag.or(file.max_replica_lag),
            replicas,
            probe: match (probe, self.probe_max.or(file.probe_max)) {
                (Some(sql), Some(max)) => Some((sql, max)),
                (Some(_), None) => {
                    return Err(Error::Usage(
                        "--probe needs --probe-max, the latency it must stay under (e.g. --probe-max 50ms)"
                            .into(),
                    ))
                }
                (None, _) => None,
            },
        };
        if !limits.replicas.is_empty() && limits.max_replica_lag.is_none() {
            return Err(Error::Usage(
                "--replica is watched for --max-replica-lag; give that too (e.g. --max-replica-lag 10s)"
                    .into(),
            ));
        }
        Ok((limits, warnings))
    }
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.max_active.is_none()
            && self.max_transaction_age.is_none()
            && self.max_replica_lag.is_none()
            && self.probe.is_none()
    }
}

/// Checks are made before a batch, but at most this often: on a batch of a few
/// milliseconds, every batch would double its cost.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// A run's throttle: its limits, its replica connections, and when it last looked.
pub struct Throttle {
    limits: Limits,
    /// One per `--replica`; `None` while lost (reconnected at the next check).
    replicas: Vec<Option<Conn>>,
    connect: ConnectOptions,
    /// How long a check may go unanswered.
    limit: Duration,
    last_check: Option<Instant>,
    /// Why the run waited last time, while it still waits.
    waiting: Option<String>,
}

impl Throttle {
    /// Connects to the replicas to watch, and tries the probe once on `conn`. A
    /// replica that cannot be reached, or a probe that does not run, is an error
    /// now, before the run is touched, rather than a failed run later.
    /// A check unanswered for `network_timeout` (at least a second) beyond the
    /// probe's own limit counts as a lost connection.
    pub async fn new(
        limits: Limits,
        opts: &ConnectOptions,
        network_timeout: Duration,
        conn: &mut Conn,
    ) -> Result<Throttle> {
        // SQLite has one writer and no sessions to count or long transactions
        // of others to see: those throttles would never hold a run back.
        if conn.single_writer() {
            for (flag, given) in [
                ("--max-active", limits.max_active.is_some()),
                (
                    "--max-transaction-age",
                    limits.max_transaction_age.is_some(),
                ),
                ("--max-replica-lag", limits.max_replica_lag.is_some()),
            ] {
                if given {
                    return Err(Error::Usage(format!(
                        "{flag} watches a server's sessions or replicas, which SQLite does not have (one \
                         process writes at a time): it would never hold the run back; drop it (from \
                         datamig.toml's [throttle] too), or use --probe or --rate"
                    )));
                }
            }
        }
        if let Some((sql, _)) = &limits.probe {
            if let Err(e) = conn.execute(sql, &[]).await {
                return Err(Error::Usage(format!(
                    "--probe does not run: {}; give a query that runs on this database",
                    db_message(&e)
                )));
            }
        }
        let mut replicas = Vec::new();
        for url in &limits.replicas {
            let mut conn = Conn::connect(url, opts).await?;
            if conn.replica_lag().await.is_err() {
                let e = Error::Usage(format!(
                    "--replica {} is not a replica (it reports no replication status); \
                     name a server that replicates from this one",
                    url.redacted()
                ));
                conn.close().await;
                return Err(e);
            }
            replicas.push(Some(conn));
        }
        let limit = network_timeout.max(Duration::from_secs(1))
            + limits
                .probe
                .as_ref()
                .map_or(Duration::ZERO, |(_, max)| *max);
        Ok(Throttle {
            limits,
            replicas,
            connect: opts.clone(),
            limit,
            last_check: None,
            waiting: None,
        })
    }

    /// How long one check may go unanswered before it counts as a lost connection.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// `Some(why)` when the run must wait before its next batch. Between
    /// checks, the last answer stands while the run waits, and `None` otherwise.
    pub async fn check(&mut self, conn: &mut Conn) -> Result<Option<String>> {
        if self.limits.is_empty() {
            return Ok(None);
        }
        if let Some(at) = self.last_check {
            if at.elapsed() < CHECK_EVERY {
                return Ok(self.waiting.clone());
            }
        }
        // Counted from the end of a check: a slow probe is not run back to
        // back (on SQLite, a reader that never lets go starves the writers).
        let checked = self.reasons(conn).await;
        self.last_check = Some(Instant::now());
        self.waiting = checked?;
        Ok(self.waiting.clone())
    }

    async fn reasons(&mut self, conn: &mut Conn) -> Result<Option<String>> {
        let limit = self.limit;
        let mut why = Vec::new();
        let l = &self.limits;
        if l.max_active.is_some() || l.max_transaction_age.is_some() || l.max_replica_lag.is_some()
        {
            let health = tokio::time::timeout(limit, conn.health()).await;
            let health = answered("the database's load", limit, health)?;
            if let Some(max) = l.max_active {
                if health.active_sessions > max {
                    why.push(format!(
                        "{} other sessions running statements (--max-active {max})",
                        health.active_sessions
                    ));
                }
            }
            if let (Some(max), Some(age)) = (l.max_transaction_age, health.oldest_transaction) {
                if age > max {
                    why.push(format!(
                        "a transaction open for {} (--max-transaction-age {})",
                        secs(age),
                        secs(max)
                    ));
                }
            }
            if let (Some(max), Some(lag)) = (l.max_replica_lag, health.replica_lag) {
                if lag > max {
                    why.push(format!(
                        "a standby {} behind (--max-replica-lag {})",
                        secs(lag),
                        secs(max)
                    ));
                }
            }
        }
        if let Some(max) = l.max_replica_lag {
            for (url, replica) in l.replicas.iter().zip(&mut self.replicas) {
                let lag = match replica_lag(url, replica, &self.connect, limit).await {
                    Ok(lag) => lag,
                    Err(e) => {
                        why.push(format!(
                            "replica {} cannot be read, so its lag is unknown ({e})",
                            url.redacted()
                        ));
                        continue;
                    }
                };
                match lag {
                    Some(lag) if lag > max => why.push(format!(
                        "replica {} {} behind (--max-replica-lag {})",
                        url.redacted(),
                        secs(lag),
                        secs(max)
                    )),
                    // A replica whose replication stopped has no lag to report.
                    None => why.push(format!("replica {} is not replicating", url.redacted())),
                    _ => {}
                }
            }
        }
        if let Some((sql, max)) = &l.probe {
            let started = Instant::now();
            // Its rows do not matter (and `pg_sleep` returns void): only its time.
            let ran = tokio::time::timeout(limit, conn.execute(sql, &[])).await;
            answered("the probe query", limit, ran)?;
            let took = started.elapsed();
            if took > *max {
                why.push(format!(
                    "the probe query took {} ms (--probe-max {} ms)",
                    took.as_millis(),
                    max.as_millis()
                ));
            }
        }
        Ok((!why.is_empty()).then(|| why.join("; ")))
    }

    pub async fn close(self) {
        for replica in self.replicas.into_iter().flatten() {
            replica.close().await;
        }
    }
}

/// A check's result on the run's control connection: silence past `limit` or a lost
/// connection is [`Error::Transient`] (the run replaces the connection); any
/// other error stops the run.
fn answered<T>(
    what: &str,
    limit: Duration,
    result: std::result::Result<sqlx::Result<T>, tokio::time::error::Elapsed>,
) -> Result<T> {
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(match Transient::of(&e) {
            Some(kind) => Error::Transient {
                message: format!("cannot check {what}: {}", db_message(&e)),
                kind,
            },
            None => Error::JobFailed(format!("cannot check {what}: {}", db_message(&e))),
        }),
        Err(_) => Err(Error::Transient {
            message: format!("cannot check {what}: no answer within {}", secs(limit)),
            kind: Transient::ConnectionLost,
        }),
    }
}

/// A replica's lag, through its connection, which is opened again first if it
/// was lost; a connection that fails or goes silent is dropped (not closed: a
/// graceful close waits on a silent server) and opened again next time.
async fn replica_lag(
    url: &DatabaseUrl,
    replica: &mut Option<Conn>,
    connect: &ConnectOptions,
    limit: Duration,
) -> std::result::Result<Option<Duration>, String> {
    if replica.is_none() {
        match tokio::time::timeout(limit, Conn::connect(url, connect)).await {
            Ok(Ok(conn)) => *replica = Some(conn),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer to connecting within {}", secs(limit))),
        }
    }
    let conn = replica.as_mut().expect("connected above");
    match tokio::time::timeout(limit, conn.replica_lag()).await {
        Ok(Ok(lag)) => Ok(lag),
        Ok(Err(e)) => {
            *replica = None;
            Err(db_message(&e))
        }
        Err(_) => {
            *replica = None;
            Err(format!("no answer within {}", secs(limit)))
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
