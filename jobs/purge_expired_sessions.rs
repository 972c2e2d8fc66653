//! `purge_expired_sessions`: deletes sessions older than `--arg older_than=30d`,
//! in batches bounded by the primary key (never `ORDER BY … LIMIT` on the date,
//! which re-sorts the remaining rows on every batch). With `--arg
//! archive=sessions.csv` it writes each batch's sessions to the CSV file before
//! deleting them: the file holds every deleted session exactly once.

use chrono::Timelike;
use datamig_core::prelude::*;

pub struct PurgeExpiredSessions;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// Sessions created longer ago than this are deleted.
    #[serde(default = "thirty_days")]
    pub older_than: DurationArg,
    /// Write the deleted sessions to this CSV file first (each exactly once).
    // Left out when absent, so that a run without one keeps the arguments it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<std::path::PathBuf>,
}

fn thirty_days() -> DurationArg {
    DurationArg(std::time::Duration::from_secs(30 * 86_400))
}

impl Job for PurgeExpiredSessions {
    type Args = Args;

    fn name(&self) -> &'static str {
        "purge_expired_sessions"
    }

    fn description(&self) -> &'static str {
        "delete sessions older than older_than (default 30d), in batches"
    }

    fn arg_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            (
                "older_than",
                "age of the sessions to delete, e.g. 30d, 12h (default 30d)",
            ),
            (
                "archive",
                "a CSV file to write the deleted sessions to before deleting them",
            ),
        ]
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261124090200) // create_sessions
    }

    fn plan(&self, args: &Args, _ctx: &PlanContext) -> Result<Plan, String> {
        if args.older_than.0.as_secs() < 60 {
            return Err("older_than must be at least 1m; it would delete every session".into());
        }
        let age = chrono::Duration::from_std(args.older_than.0)
            .map_err(|_| "older_than is too large".to_string())?;
        // Bound as a timestamp, never as text: PostgreSQL would parse a text
        // cutoff again for every row it compares (measured: twice the batch's time).
        let cutoff = chrono::Utc::now()
            .naive_utc()
            .checked_sub_signed(age)
            .ok_or("older_than is too large")?
            .with_nanosecond(0)
            .ok_or("older_than is too large")?;
        let older = "created_at < ?";
        Ok(Plan {
            source: Source::table("sessions", "id")
                .columns(&["user_id", "created_at"])
                .filter(older, vec![cutoff.into()]),
            step: match &args.archive {
                Some(file) => Step::Archive { file: file.clone() },
                None => Step::Delete,
            },
            checks: vec![Check::new(
                "sessions older than the cutoff",
                &format!("SELECT count(*) FROM sessions WHERE {older}"),
                Expect::Zero,
            )
            .params(vec![cutoff.into()])],
        })
    }
}
