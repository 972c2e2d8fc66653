//! Health throttling: before a batch, the run checks that the database is not
//! under stress, and waits while it is. What is checked, and how, differs by
//! database ([`crate::db::Health`]); the thresholds are the user's.
//!
//! - sessions running a statement (PostgreSQL active backends, MariaDB
//!   `Threads_running`), not counting the run's own;
//! - the oldest open transaction (on PostgreSQL, one holding a snapshot holds
//!   back vacuum; on MariaDB, purge);
//! - replication lag: of the standbys a PostgreSQL primary streams to, and of
//!   each `--replica` the run connects to;
//! - a probe query of the user's, timed: the run backs off when real users
//!   would feel it.

use std::time::{Duration, Instant};

use crate::config::DatabaseUrl;
use crate::db::{db_message, Conn, ConnectOptions, Value};
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
    replicas: Vec<Conn>,
    last_check: Option<Instant>,
    /// Why the run waited last time, while it still waits.
    waiting: Option<String>,
}

impl Throttle {
    /// Connects to the replicas to watch, and tries the probe once on `conn`. A
    /// replica that cannot be reached, or a probe that does not run, is an error
    /// now, before the run is touched, rather than a failed run later.
    pub async fn new(limits: Limits, opts: &ConnectOptions, conn: &mut Conn) -> Result<Throttle> {
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
            replicas.push(conn);
        }
        Ok(Throttle {
            limits,
            replicas,
            last_check: None,
            waiting: None,
        })
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
        self.last_check = Some(Instant::now());
        self.waiting = self.reasons(conn).await?;
        Ok(self.waiting.clone())
    }

    async fn reasons(&mut self, conn: &mut Conn) -> Result<Option<String>> {
        let failed = |what: &str, e: sqlx::Error| {
            Error::JobFailed(format!("cannot check {what}: {}", db_message(&e)))
        };
        let mut why = Vec::new();
        let l = &self.limits;
        if l.max_active.is_some() || l.max_transaction_age.is_some() || l.max_replica_lag.is_some()
        {
            let health = conn
                .health()
                .await
                .map_err(|e| failed("the database's load", e))?;
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
                let lag = replica
                    .replica_lag()
                    .await
                    .map_err(|e| failed(&format!("replica {}", url.redacted()), e))?;
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
            conn.execute(sql, &[])
                .await
                .map_err(|e| failed("the probe query", e))?;
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
        for replica in self.replicas {
            replica.close().await;
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// What [`Conn::health`] reads: the numbers the checks compare.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub active_sessions: i64,
    pub oldest_transaction: Option<Duration>,
    /// The furthest behind of the standbys a primary streams to (PostgreSQL).
    pub replica_lag: Option<Duration>,
}

/// Seconds as a [`Value`] from a catalogue query, as a duration.
pub(crate) fn seconds(v: Option<&Value>) -> Option<Duration> {
    let secs = match v? {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        other => other.as_str().and_then(|s| s.parse::<f64>().ok()),
    }?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}
