//! `backfill_emails_sql`: the set-based twin of `backfill_emails`. The same change
//! as the single statement `UPDATE users SET email_normalized = lower(trim(email))`,
//! done batch by batch over the primary key. It trusts SQL's trim and lower and
//! validates nothing: prefer `backfill_emails` unless every address is known good.

use datamig_core::prelude::*;

use crate::NoArgs;

pub struct BackfillEmailsSql;

impl Job for BackfillEmailsSql {
    type Args = NoArgs;

    fn name(&self) -> &'static str {
        "backfill_emails_sql"
    }

    fn description(&self) -> &'static str {
        "fill users.email_normalized with lower(trim(email)) in SQL, batch by batch (no validation)"
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261124090100) // add_email_normalized_to_users
    }

    fn plan(&self, _args: &NoArgs, _ctx: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::table("users", "id").filter("email_normalized IS NULL", vec![]),
            step: Step::Sql(
                "UPDATE users SET email_normalized = lower(trim(email)) WHERE {batch}".into(),
            ),
            checks: vec![
                Check::new(
                    "users (none added or lost)",
                    "SELECT count(*) FROM users",
                    Expect::Unchanged,
                ),
                Check::new(
                    "users left without a normalized address",
                    "SELECT count(*) FROM users WHERE email_normalized IS NULL",
                    Expect::Zero,
                ),
            ],
        })
    }
}
