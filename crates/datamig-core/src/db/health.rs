//! [`Health`]: what the health throttle reads from a database (sessions at
//! work, the oldest transaction, replica lag), as each driver measures it.

use std::time::Duration;

use super::Value;

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
