//! How fast a run goes: a rate limit over the whole run, a batch size that
//! adapts to a target batch time, and the time window a run must end in.
//!
//! All three are decided between batches, when no transaction is open: a run
//! never waits while it holds a lock.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A rate limit: rows (or batches) per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub amount: u32,
    pub per: Duration,
    pub unit: RateUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    Rows,
    Batches,
}

impl Rate {
    /// This rate's share `share` (0 < share <= 1): what one of several runners
    /// sharing a run's rate may use.
    pub fn share(self, share: f64) -> Rate {
        let share = share.clamp(1e-3, 1.0);
        Rate {
            per: self.per.div_f64(share),
            ..self
        }
    }

    /// Parses `2000` (rows a second), `2000/s`, `120000/m`, `500000/h`, or
    /// `5b/s`, `30b/m` (batches).
    pub fn parse(input: &str) -> Result<Rate, String> {
        let bad = || {
            format!(
                "`{input}` is not a rate; write rows per second (2000, 2000/s), per minute \
                 (120000/m) or per hour (500000/h), or batches with b (5b/s); `none` lifts a run's rate"
            )
        };
        let s = input.trim();
        let (count, per) = match s.split_once('/') {
            Some((count, per)) => (count.trim(), per.trim()),
            None => (s, "s"),
        };
        let per = match per {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let (count, unit) = match count.strip_suffix('b') {
            Some(n) => (n, RateUnit::Batches),
            None => (count, RateUnit::Rows),
        };
        let amount: u32 = count.parse().map_err(|_| bad())?;
        if amount == 0 {
            return Err(format!(
                "a rate of 0 would never run a batch; give a rate above zero, or leave --rate out ({input})"
            ));
        }
        Ok(Rate { amount, per, unit })
    }
}

impl Rate {
    /// The rate as [`Rate::parse`] reads it back (`2000/s`, `5b/m`): how a run
    /// records it.
    pub fn canonical(&self) -> String {
        let per = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        let b = if self.unit == RateUnit::Batches {
            "b"
        } else {
            ""
        };
        format!("{}{b}/{per}", self.amount)
    }
}

/// What `--rate` says of a run's rate limit, which belongs to the run (it is
/// recorded with it, and every process on the run keeps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateChoice {
    /// No `--rate`: the run's own rate (none for a new run).
    #[default]
    Keep,
    /// `--rate R`: the run's rate from now on, for every process on it.
    Set(Rate),
    /// `--rate none`: lift the run's rate.
    Lift,
}

impl RateChoice {
    /// Parses `--rate`: a rate, or `none`.
    pub fn parse(input: &str) -> Result<RateChoice, String> {
        if input.trim().eq_ignore_ascii_case("none") {
            return Ok(RateChoice::Lift);
        }
        Rate::parse(input).map(RateChoice::Set)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        let unit = match self.unit {
            RateUnit::Rows => " rows",
            RateUnit::Batches => " batches",
        };
        write!(f, "{}{unit}/{per}", self.amount)
    }
}

/// Holds a run to its rate. Before each batch the run takes the batch's rows
/// (or one batch) from a GCRA limiter; the limiter starts empty, and holds at
/// most one batch's worth of credit, so that the run is never more than one
/// batch ahead of the rate — right after a long wait (a throttle, a pause) too:
/// a wait banks no credit. Shared by every worker of a run.
pub struct Limiter {
    limiter: DefaultDirectRateLimiter,
    rate: Rate,
    burst: NonZeroU32,
}

impl Limiter {
    /// A limiter for `rate` whose batches are at most `max_batch` rows.
    pub fn new(rate: Rate, max_batch: u64) -> Limiter {
        // The burst holds the largest request (one batch) and no more: a burst of
        // a period's worth let a run that had waited 3 s commit five batches
        // within 30 ms. A run slower than its rate loses nothing by it: it
        // never waits then.
        let largest = match rate.unit {
            RateUnit::Rows => u32::try_from(max_batch).unwrap_or(u32::MAX),
            RateUnit::Batches => 1,
        };
        let burst = NonZeroU32::new(largest.max(1)).unwrap_or(NonZeroU32::MIN);
        let period = rate.per / rate.amount;
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let limiter = RateLimiter::direct(quota);
        // Start empty: take the whole burst now (the limiter starts full).
        let _ = limiter.check_n(burst);
        Limiter {
            limiter,
            rate,
            burst,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// How long the run must wait before a batch of `rows` rows; `None` when it
    /// may go now (the rows are then taken).
    pub fn wait_for(&self, rows: i64) -> Option<Duration> {
        let cells = match self.rate.unit {
            RateUnit::Rows => u32::try_from(rows.max(1)).unwrap_or(u32::MAX),
            RateUnit::Batches => 1,
        };
        let cells = NonZeroU32::new(cells.min(self.burst.get())).unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_n(cells) {
            Ok(Ok(())) => None,
            Ok(Err(not_until)) => Some(not_until.wait_time_from(DefaultClock::default().now())),
            // Cannot happen: requests are capped at the burst.
            Err(_) => Some(Duration::from_millis(10)),
        }
    }
}

/// The batch size: fixed, or adapted so that a batch takes about a target time.
#[derive(Debug, Clone)]
pub struct Sizer {
    current: i64,
    adaptive: Option<Adaptive>,
}

#[derive(Debug, Clone)]
struct Adaptive {
    target: Duration,
    min: i64,
    max: i64,
    /// Rows per second, smoothed over the batches so far.
    rows_per_sec: Option<f64>,
}

/// A batch grows or shrinks by at most this factor from one to the next.
pub const MAX_STEP: i64 = 2;

impl Sizer {
    pub fn fixed(rows: i64) -> Sizer {
        Sizer {
            current: rows,
            adaptive: None,
        }
    }

    /// Starts at `start` rows and adapts within `min..=max` so that a batch's
    /// transaction takes about `target`.
    pub fn adaptive(start: i64, target: Duration, min: i64, max: i64) -> Sizer {
        Sizer {
            current: start.clamp(min, max),
            adaptive: Some(Adaptive {
                target,
                min,
                max,
                rows_per_sec: None,
            }),
        }
    }

    pub fn rows(&self) -> i64 {
        self.current
    }

    /// After a batch that acted on `rows` rows in `took`: the next batch's size
    /// follows the smoothed rate (weights 3:1 for the past, as pt-online-schema-change
    /// does), never more than [`MAX_STEP`] times larger or smaller than this one.
    pub fn after_batch(&mut self, rows: i64, took: Duration) {
        let Some(a) = &mut self.adaptive else {
            return;
        };
        if rows <= 0 || took.is_zero() {
            return;
        }
        #[allow(clippy::cast_precision_loss)] // a rate, for sizing
        let rate = rows as f64 / took.as_secs_f64();
        let smoothed = a.rows_per_sec.map_or(rate, |r| 0.75 * r + 0.25 * rate);
        a.rows_per_sec = Some(smoothed);
        let wanted = round(smoothed * a.target.as_secs_f64());
        self.current = wanted
            .clamp(
                self.current / MAX_STEP,
                self.current.saturating_mul(MAX_STEP),
            )
            .clamp(a.min, a.max);
    }

    /// After a batch that ran out of time (a statement timeout): half the size.
    pub fn halve(&mut self) {
        let floor = self.adaptive.as_ref().map_or(1, |a| a.min).max(1);
        self.current = (self.current / 2).max(floor).max(1);
        if let Some(a) = &mut self.adaptive {
            // Forget the rate that led to the timeout.
            a.rows_per_sec = None;
        }
    }
}

fn round(v: f64) -> i64 {
    // A batch size from a rate: any fraction is noise.
    #[allow(clippy::cast_possible_truncation)]
    if v.is_finite() {
        v.round().clamp(1.0, 9.0e18) as i64
    } else {
        1
    }
}

/// When a run must stop: the earlier of `--max-runtime` after its start and `--until`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub deadline: Instant,
    /// What to tell the user: `--max-runtime 30m` or `--until 05:00`.
    pub reason: &'static str,
}

impl Window {
    /// Whether a batch taking about `next` would end past the deadline.
    pub fn closes_before(&self, next: Duration) -> bool {
        Instant::now() + next >= self.deadline
    }
}

/// The next moment of `HH:MM` local time (today, or tomorrow if it has passed),
/// or an RFC 3339 instant (`2026-12-02T05:00:00Z`), as a deadline from now.
pub fn parse_until(input: &str) -> Result<Duration, String> {
    use chrono::{Local, NaiveTime, TimeZone};
    let s = input.trim();
    let bad = || {
        format!(
            "`{input}` is not a time; write HH:MM (local time, the next such moment), \
             or an instant like 2026-12-02T05:00:00Z"
        )
    };
    let now = chrono::Utc::now();
    let target = if let Ok(t) = NaiveTime::parse_from_str(s, "%H:%M") {
        let local_now = now.with_timezone(&Local);
        let today = local_now.date_naive().and_time(t);
        let mut when = Local
            .from_local_datetime(&today)
            .earliest()
            .ok_or_else(bad)?;
        if when <= local_now {
            let tomorrow = today + chrono::Duration::days(1);
            when = Local
                .from_local_datetime(&tomorrow)
                .earliest()
                .ok_or_else(bad)?;
        }
        when.with_timezone(&chrono::Utc)
    } else {
        chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|_| bad())?
            .with_timezone(&chrono::Utc)
    };
    let left = target - now;
    if left <= chrono::Duration::zero() {
        return Err(format!(
            "--until {input} has passed; give a time in the future"
        ));
    }
    left.to_std().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let r = Rate::parse("2000").unwrap();
        assert_eq!(
            (r.amount, r.per, r.unit),
            (2000, Duration::from_secs(1), RateUnit::Rows)
        );
        assert_eq!(
            Rate::parse("120000/m").unwrap().per,
            Duration::from_secs(60)
        );
        let b = Rate::parse("5b/s").unwrap();
        assert_eq!((b.amount, b.unit), (5, RateUnit::Batches));
        assert_eq!(b.to_string(), "5 batches/s");
        for bad in ["", "fast", "0", "-5", "5/d", "2000/", "b/s", "99999999999"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_limiter_starts_empty_and_paces() {
        let l = Limiter::new(Rate::parse("1000").unwrap(), 100);
        // 100 rows at 1000 rows/s: about 100 ms away, not at once.
        let wait = l.wait_for(100).expect("must wait");
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
    }

    #[test]
    fn a_wait_banks_no_credit() {
        let l = Limiter::new(Rate::parse("1000").unwrap(), 100);
        // A long wait: far more than a second's worth of rows is "owed".
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(l.wait_for(100), None, "one batch may go at once");
        let wait = l.wait_for(100).expect("the second must wait its turn");
        assert!(wait > Duration::from_millis(50), "{wait:?}");
    }

    #[test]
    fn the_size_follows_the_target_within_bounds() {
        let mut s = Sizer::adaptive(1000, Duration::from_millis(500), 100, 10_000);
        // 1000 rows in 100 ms: 10,000 rows/s, 5000 for 500 ms, but at most twice as many.
        s.after_batch(1000, Duration::from_millis(100));
        assert_eq!(s.rows(), 2000);
        s.after_batch(2000, Duration::from_millis(200));
        assert_eq!(s.rows(), 4000);
        s.after_batch(4000, Duration::from_millis(400));
        assert_eq!(s.rows(), 5000);
        // Then the database slows down tenfold: the smoothed rate (3:1 for the
        // past) falls to 7750 rows/s, 3875 rows for 500 ms; never below half a step.
        s.after_batch(5000, Duration::from_secs(5));
        assert_eq!(s.rows(), 3875);
        s.after_batch(3875, Duration::from_secs(40));
        assert!(
            (3875 / 2..3875).contains(&s.rows()),
            "shrinks, at most halved: {}",
            s.rows()
        );
        for _ in 0..20 {
            let rows = s.rows();
            s.after_batch(rows, Duration::from_millis(u64::try_from(rows).unwrap()));
        }
        assert!(
            (495..=515).contains(&s.rows()),
            "1000 rows/s for 500 ms: {}",
            s.rows()
        );
        // Bounds hold.
        for _ in 0..20 {
            s.after_batch(s.rows(), Duration::from_secs(60));
        }
        assert_eq!(s.rows(), 100);
        s.halve();
        assert_eq!(s.rows(), 100, "not below the minimum");
        let mut f = Sizer::fixed(5000);
        f.after_batch(5000, Duration::from_secs(9));
        assert_eq!(f.rows(), 5000);
        f.halve();
        assert_eq!(f.rows(), 2500);
    }

    #[test]
    fn until_is_the_next_such_moment() {
        let d = parse_until("00:00").unwrap();
        assert!(d <= Duration::from_secs(24 * 3600));
        assert!(parse_until("25:00").is_err());
        assert!(parse_until("2000-01-01T00:00:00Z").is_err(), "in the past");
        assert!(parse_until("2999-01-01T00:00:00Z").is_ok());
        assert!(parse_until("soon").is_err());
    }
}
