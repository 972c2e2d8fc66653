//! `merge_duplicate_users`: users that share a normalised address are one
//! person: keep the lowest id, point the others' sessions at it, delete the
//! others. Over a query source — the groups, `GROUP BY email_normalized
//! HAVING count(*) > 1`, keyed by the address — one set of groups per batch.
//! Run `backfill_emails` first: it fills `email_normalized`. (On a large
//! table, an index on `users.email_normalized` keeps each batch's query short.)

use std::collections::BTreeMap;

use datamig_core::prelude::*;

pub struct MergeDuplicateUsers;

impl Job for MergeDuplicateUsers {
    type Args = NoArgs;

    fn name(&self) -> &'static str {
        "merge_duplicate_users"
    }

    fn description(&self) -> &'static str {
        "merge users that share a normalised address into the lowest id, moving their sessions"
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261124090200) // create_sessions
    }

    fn plan(&self, _args: &NoArgs, _ctx: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::query(
                "SELECT email_normalized, count(*) AS users FROM users \
                 WHERE email_normalized IS NOT NULL GROUP BY email_normalized HAVING count(*) > 1",
                &["email_normalized"],
            )
            .columns(&["users"]),
            step: Step::batch(Merge),
            checks: vec![
                Check::new(
                    "addresses shared by several users",
                    "SELECT count(*) FROM (SELECT email_normalized FROM users WHERE email_normalized IS NOT NULL \
                     GROUP BY email_normalized HAVING count(*) > 1) d",
                    Expect::Zero,
                ),
                Check::new(
                    "sessions (none lost)",
                    "SELECT count(*) FROM sessions",
                    Expect::Unchanged,
                ),
                Check::new(
                    "sessions whose user is gone",
                    "SELECT count(*) FROM sessions s WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id)",
                    Expect::Unchanged,
                ),
            ],
        })
    }
}

struct Merge;

impl BatchStep for Merge {
    type Outside = ();

    async fn outside(&self, _batch: &Batch) -> Result<(), StepError> {
        Ok(())
    }

    async fn write(&self, batch: &Batch, _: &(), tx: &mut BatchTx<'_>) -> Result<(), StepError> {
        // The groups' users as they are now, locked: a query source's rows are
        // not locked for the step, so it reads again what it changes.
        let emails: Vec<Value> = batch.keys().map(|k| k[0].clone()).collect();
        let lock = if tx.backend() == Backend::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        let rows = tx
            .fetch_in(
                &format!("SELECT email_normalized, id FROM users WHERE email_normalized IN ({{list}}) ORDER BY id{lock}"),
                &emails,
            )
            .await?;
        let mut groups: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for row in rows {
            if let (Some(email), Some(id)) = (row[0].as_str(), row[1].as_i64()) {
                groups.entry(email.to_string()).or_default().push(id);
            }
        }
        // Each user that goes, with the one it becomes.
        let moves: Vec<(i64, i64)> = groups
            .values()
            .filter_map(|ids| ids.split_first())
            .flat_map(|(keep, others)| others.iter().map(move |o| (*o, *keep)))
            .collect();
        for chunk in moves.chunks(5_000) {
            let cases = vec!["WHEN ? THEN ?"; chunk.len()].join(" ");
            let list = vec!["?"; chunk.len()].join(", ");
            let mut params: Vec<Value> = chunk
                .iter()
                .flat_map(|(o, k)| [Value::Int(*o), Value::Int(*k)])
                .collect();
            params.extend(chunk.iter().map(|(o, _)| Value::Int(*o)));
            tx.execute(&format!("UPDATE sessions SET user_id = CASE user_id {cases} END WHERE user_id IN ({list})"), &params)
                .await?;
            let ids: Vec<Value> = chunk.iter().map(|(o, _)| Value::Int(*o)).collect();
            tx.execute(&format!("DELETE FROM users WHERE id IN ({list})"), &ids)
                .await?;
        }
        tx.set_changed(u64::try_from(moves.len()).unwrap_or(u64::MAX));
        Ok(())
    }
}
