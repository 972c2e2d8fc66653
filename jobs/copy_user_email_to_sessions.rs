//! `copy_user_email_to_sessions`: fills `sessions.user_email` from the
//! session's user (`users.email`) — data from a parent table, looked up with
//! one query per batch for all the batch's users (never one per row), and
//! written with one bulk update. A session whose user does not exist is
//! rejected. `copy_user_email_to_sessions_sql` does the same as one set-based
//! statement joining the parent.

use std::collections::HashMap;

use datamig_core::prelude::*;

pub struct CopyUserEmailToSessions;

pub(crate) fn checks() -> Vec<Check> {
    vec![Check::new(
        "sessions whose copy differs from their user's address",
        "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.user_email IS NULL OR s.user_email <> u.email",
        Expect::Zero,
    )]
}

pub(crate) fn source() -> Source {
    Source::table("sessions", "id")
        .columns(&["user_id"])
        .filter("user_email IS NULL", vec![])
}

impl Job for CopyUserEmailToSessions {
    type Args = NoArgs;

    fn name(&self) -> &'static str {
        "copy_user_email_to_sessions"
    }

    fn description(&self) -> &'static str {
        "fill sessions.user_email from the session's user, one lookup query per batch"
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261204090200) // add_user_email_to_sessions
    }

    fn plan(&self, _args: &NoArgs, _ctx: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: source(),
            step: Step::batch(CopyEmail),
            checks: checks(),
        })
    }
}

struct CopyEmail;

impl BatchStep for CopyEmail {
    type Outside = ();

    async fn outside(&self, _batch: &Batch) -> Result<(), StepError> {
        Ok(())
    }

    async fn write(&self, batch: &Batch, _: &(), tx: &mut BatchTx<'_>) -> Result<(), StepError> {
        let mut users: Vec<Value> = batch
            .rows()
            .filter_map(|r| r.get("user_id").cloned())
            .collect();
        users.sort_by_key(|v| v.as_i64());
        users.dedup();
        let emails: HashMap<i64, Value> = tx
            .fetch_in("SELECT id, email FROM users WHERE id IN ({list})", &users)
            .await?
            .into_iter()
            .filter_map(|row| {
                let mut row = row.into_iter();
                let id = row.next()?.as_i64()?;
                Some((id, row.next()?))
            })
            .collect();
        let mut rows = Vec::with_capacity(batch.len());
        for session in batch.rows() {
            let user = session.i64("user_id").unwrap_or_default();
            match emails.get(&user) {
                Some(email) => rows.push(vec![session.key()[0].clone(), email.clone()]),
                None => tx.reject(session.key(), format!("user {user} does not exist")),
            }
        }
        tx.update("sessions", &["id"], &["user_email"], &rows)
            .await?;
        Ok(())
    }
}
