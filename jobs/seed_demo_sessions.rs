//! `seed_demo_sessions`: inserts demo sessions spread over the last 60 days (in
//! UTC), for trying `purge_expired_sessions`.

use datamig_core::prelude::*;

use crate::seed_demo_users::{insert_ignore, numbers, on_conflict_ignore};

pub struct SeedDemoSessions;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    #[serde(default = "million")]
    pub rows: i64,
    #[serde(default = "one")]
    pub first_id: i64,
}

fn million() -> i64 {
    1_000_000
}
fn one() -> i64 {
    1
}

impl Job for SeedDemoSessions {
    type Args = Args;

    fn name(&self) -> &'static str {
        "seed_demo_sessions"
    }

    fn description(&self) -> &'static str {
        "insert demo sessions, one per day of age over the last 60 days, for trying purge_expired_sessions"
    }

    fn arg_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("rows", "how many sessions (default 1000000)"),
            ("first_id", "the first id (default 1)"),
        ]
    }

    // A range source names no table: the one it fills is refreshed after seeding.
    fn statistics(&self) -> Statistics {
        Statistics::Tables(&["sessions"])
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261124090200) // create_sessions
    }

    fn plan(&self, args: &Args, ctx: &PlanContext) -> Result<Plan, String> {
        if !(1..=1_000_000_000).contains(&args.rows) || args.first_id < 1 {
            return Err("rows must be between 1 and 1000000000, first_id at least 1".into());
        }
        let end = args
            .first_id
            .checked_add(args.rows - 1)
            .ok_or("first_id + rows is too large")?;
        // Session n is (n mod 60) days and (n mod 1440) minutes old.
        let created = match ctx.backend {
            Backend::Postgres => {
                "(now() AT TIME ZONE 'UTC') - (n % 60) * interval '1 day' - (n % 1440) * interval '1 minute'"
            }
            Backend::MySql => "UTC_TIMESTAMP() - INTERVAL (n % 60) DAY - INTERVAL (n % 1440) MINUTE",
            Backend::Sqlite => "datetime('now', '-' || (n % 60) || ' days', '-' || (n % 1440) || ' minutes')",
        };
        let sql = format!(
            "{} INTO sessions (id, user_id, created_at) SELECT n, n % 1000 + 1, {created} FROM ({}) AS numbers{}",
            insert_ignore(ctx.backend),
            numbers(ctx.backend),
            on_conflict_ignore(ctx.backend)
        );
        Ok(Plan {
            source: Source::Range {
                start: args.first_id,
                end,
            },
            step: Step::Sql(sql),
            checks: vec![Check::new(
                "sessions",
                "SELECT count(*) FROM sessions",
                Expect::Report,
            )],
        })
    }
}
