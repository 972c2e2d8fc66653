//! `backfill_emails_batch`: the work of `backfill_emails` (fill
//! `users.email_normalized` with the trimmed, lowercased address, invalid
//! addresses rejected and left NULL) written as a batch step, the general
//! shape: the step normalises the whole batch before its transaction, and
//! writes it with one bulk update inside it. BENCHMARKS.md measures the two
//! side by side.

use datamig_core::prelude::*;

use crate::backfill_emails::normalize;

pub struct BackfillEmailsBatch;

impl Job for BackfillEmailsBatch {
    type Args = NoArgs;

    fn name(&self) -> &'static str {
        "backfill_emails_batch"
    }

    fn description(&self) -> &'static str {
        "backfill_emails as a batch step: the same result, the general job shape"
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261124090100) // add_email_normalized_to_users
    }

    fn plan(&self, _args: &NoArgs, _ctx: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::table("users", "id").columns(&["email"]).filter("email_normalized IS NULL", vec![]),
            step: Step::batch(NormalizeBatch),
            checks: vec![
                Check::new("users (none added or lost)", "SELECT count(*) FROM users", Expect::Unchanged),
                Check::new(
                    "normalized addresses without @",
                    "SELECT count(*) FROM users WHERE email_normalized IS NOT NULL AND email_normalized NOT LIKE '%@%'",
                    Expect::Zero,
                ),
            ],
        })
    }
}

struct NormalizeBatch;

/// A batch's new values and its rejects, computed before its transaction.
struct Normalized {
    rows: Vec<Vec<Value>>,
    rejects: Vec<(Value, String)>,
}

impl BatchStep for NormalizeBatch {
    type Outside = Normalized;

    /// The work that needs no database, done before the transaction (on the
    /// reader connection's task, while the previous batch is written): as a
    /// transform's is.
    async fn outside(&self, batch: &Batch) -> Result<Normalized, StepError> {
        let mut out = Normalized {
            rows: Vec::with_capacity(batch.len()),
            rejects: Vec::new(),
        };
        for row in batch.rows() {
            let key = row.key()[0].clone();
            match row.text("email") {
                Ok(email) => match normalize(email.unwrap_or_default()) {
                    Ok(email) => out.rows.push(vec![key, Value::Text(email)]),
                    Err(reason) => out.rejects.push((key, reason.into())),
                },
                Err(reason) => out.rejects.push((key, reason)),
            }
        }
        Ok(out)
    }

    async fn write(
        &self,
        _batch: &Batch,
        found: &Normalized,
        tx: &mut BatchTx<'_>,
    ) -> Result<(), StepError> {
        for (key, reason) in &found.rejects {
            tx.reject(std::slice::from_ref(key), reason.clone());
        }
        tx.update("users", &["id"], &["email_normalized"], &found.rows)
            .await?;
        Ok(())
    }
}
