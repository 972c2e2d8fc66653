//! Named crash points, for the reliability suite (`tests/it/reliability.rs`):
//! with `DATAMIG_CRASH_AT=POINT:N` in its environment, the process kills itself
//! with SIGKILL the `N`-th time it reaches `POINT`, so that a test can stop a run
//! at an exact place in a batch or a migration, not just at a random moment.
//! Without the variable a crash point is one relaxed atomic load.
//!
//! | point | where |
//! |---|---|
//! | `before_write` | a batch's transaction is open, nothing of the batch written |
//! | `after_write` | the batch written (and its checkpoint, except on PostgreSQL, where it goes with the COMMIT), the COMMIT not sent |
//! | `after_commit` | the batch committed, the next one not begun |
//! | `migration_statement` | a migration run statement by statement: after a statement |
//! | `migration_before_commit` | a migration in a transaction: run and recorded, not committed |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A place where a test may have the process killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    BeforeWrite,
    AfterWrite,
    AfterCommit,
    MigrationStatement,
    MigrationBeforeCommit,
}

impl Point {
    const ALL: [(Point, &'static str); 5] = [
        (Point::BeforeWrite, "before_write"),
        (Point::AfterWrite, "after_write"),
        (Point::AfterCommit, "after_commit"),
        (Point::MigrationStatement, "migration_statement"),
        (Point::MigrationBeforeCommit, "migration_before_commit"),
    ];
}

/// `POINT:N` as a point and a count from 1; `None` for anything else.
fn parse(spec: &str) -> Option<(Point, u64)> {
    let (name, n) = spec.split_once(':')?;
    let point = Point::ALL.iter().find(|(_, s)| *s == name)?.0;
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    Some((point, n))
}

static CRASH_AT: OnceLock<Option<(Point, u64)>> = OnceLock::new();
static REACHED: AtomicU64 = AtomicU64::new(0);

/// Kills the process here if `DATAMIG_CRASH_AT` names this point and this is
/// the `N`-th time it is reached.
pub fn reached(point: Point) {
    let at = CRASH_AT.get_or_init(|| {
        let spec = std::env::var("DATAMIG_CRASH_AT").ok()?;
        let parsed = parse(&spec);
        if parsed.is_none() {
            tracing::warn!("DATAMIG_CRASH_AT={spec:?} is not POINT:N; ignored");
        }
        parsed
    });
    if let Some((p, n)) = *at {
        if p == point && REACHED.fetch_add(1, Ordering::Relaxed) + 1 == n {
            kill_self();
        }
    }
}

/// SIGKILL, as an operator's `kill -9` or the OOM killer would send it: no
/// destructor runs, nothing is flushed, the server sees the sockets close.
fn kill_self() -> ! {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    // `kill` missing: die as abruptly.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_and_counts() {
        assert_eq!(parse("after_write:3"), Some((Point::AfterWrite, 3)));
        assert_eq!(
            parse("migration_statement:1"),
            Some((Point::MigrationStatement, 1))
        );
        for bad in [
            "",
            "after_write",
            "after_write:0",
            "after_write:-1",
            "nowhere:2",
            ":2",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
