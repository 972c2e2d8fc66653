//! The schema lock: one runner changes the schema at a time.
//!
//! Every database is polled with a non-blocking try (see each driver for why),
//! backing off from 50 ms to 1 s, until `timeout`. Callers release it on every
//! path; if the process dies, the server (or the OS, for SQLite) releases it.

use std::time::{Duration, Instant};

use crate::db::Conn;
use crate::{Error, Result};

pub async fn acquire(conn: &mut Conn, timeout: Duration) -> Result<()> {
    const NAME: &str = "schema";
    let started = Instant::now();
    let mut wait = Duration::from_millis(50);
    let mut told = false;
    loop {
        if conn.try_lock(NAME).await? {
            return Ok(());
        }
        if !told {
            let holder = conn
                .lock_holder(NAME)
                .await
                .unwrap_or_else(|| "another runner".into());
            tracing::info!("waiting for the schema lock, held by {holder}");
            told = true;
        }
        if started.elapsed() >= timeout {
            let holder = conn
                .lock_holder(NAME)
                .await
                .unwrap_or_else(|| "another runner".into());
            return Err(Error::LockTimeout(format!(
                "the schema lock is held by {holder}; gave up after {} s. Wait for that runner to finish, \
                 or raise --lock-timeout",
                timeout.as_secs_f64().round()
            )));
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 25);
        tokio::time::sleep((wait + jitter).min(timeout.saturating_sub(started.elapsed()) + jitter))
            .await;
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

/// Releases the lock; a failure only means the connection is gone, which
/// released it already.
pub async fn release(conn: &mut Conn) {
    if let Err(e) = conn.unlock("schema").await {
        tracing::warn!(
            "could not release the schema lock cleanly ({e}); closing the connection releases it"
        );
    }
}
