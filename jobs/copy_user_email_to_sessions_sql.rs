//! `copy_user_email_to_sessions_sql`: `copy_user_email_to_sessions` as one
//! set-based statement per batch that joins the parent table: `{batch}`'s keys
//! are qualified with the table's name, so `sessions.id` stays apart from
//! `users.id`.

use datamig_core::prelude::*;

use crate::copy_user_email_to_sessions::{checks, source};

pub struct CopyUserEmailToSessionsSql;

impl Job for CopyUserEmailToSessionsSql {
    type Args = NoArgs;

    fn name(&self) -> &'static str {
        "copy_user_email_to_sessions_sql"
    }

    fn description(&self) -> &'static str {
        "copy_user_email_to_sessions as one set-based statement per batch, joining users"
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261204090200) // add_user_email_to_sessions
    }

    fn plan(&self, _args: &NoArgs, ctx: &PlanContext) -> Result<Plan, String> {
        // {batch} is the batch's key range with the table's name on its keys
        // (sessions.id), so it stays unambiguous beside users.id.
        let sql = match ctx.backend {
            Backend::MySql => {
                "UPDATE sessions JOIN users u ON u.id = sessions.user_id SET sessions.user_email = u.email WHERE {batch}"
            }
            Backend::Postgres | Backend::Sqlite => {
                "UPDATE sessions SET user_email = u.email FROM users u WHERE u.id = sessions.user_id AND {batch}"
            }
        };
        Ok(Plan {
            source: source(),
            step: Step::Sql(sql.into()),
            checks: checks(),
        })
    }
}
