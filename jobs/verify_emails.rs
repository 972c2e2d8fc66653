//! `verify_emails`: asks an outside service whether each user's address is
//! deliverable, and records its answer: for the users not yet checked
//! (`email_checked_at IS NULL`), it POSTs the batch's addresses as one JSON
//! request to `--arg endpoint=URL`, outside the transaction:
//!
//! ```json
//! {"idempotency_key": "3-0-1f0c…", "emails": ["user1@example.com", …]}
//! ```
//!
//! and writes `users.email_valid` (1 or 0) and `users.email_checked_at` from
//! its answer, `{"results": [{"email": …, "valid": true|false}, …]}`, inside
//! it. A failed or timed-out request is retried with backoff (`--max-retries`);
//! while the service stays down the run stops, resumable. The database writes
//! are exactly once; the requests at least once per batch — the service sees
//! the same idempotency key for a batch sent again.

use std::collections::HashMap;
use std::time::Duration;

use datamig_core::prelude::*;

pub struct VerifyEmails;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The service's URL (`http://…`).
    pub endpoint: String,
    /// How long one request may take, in seconds (default 10).
    #[serde(default = "ten")]
    pub timeout_s: u64,
}

fn ten() -> u64 {
    10
}

impl Job for VerifyEmails {
    type Args = Args;

    fn name(&self) -> &'static str {
        "verify_emails"
    }

    fn description(&self) -> &'static str {
        "ask an HTTP service whether each user's address is valid, one request per batch, and record its answer"
    }

    fn arg_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("endpoint", "the service's URL; it gets {\"emails\": […]} and answers {\"results\": [{\"email\", \"valid\"}]}"),
            ("timeout_s", "how long one request may take, in seconds (default 10)"),
        ]
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261204090300) // add_email_check_to_users
    }

    fn plan(&self, args: &Args, _ctx: &PlanContext) -> Result<Plan, String> {
        let endpoint = reqwest::Url::parse(&args.endpoint)
            .map_err(|e| format!("endpoint {} is not a URL: {e}", args.endpoint))?;
        if endpoint.scheme() != "http" {
            return Err(format!(
                "endpoint {endpoint}: this build speaks http:// only"
            ));
        }
        if !(1..=600).contains(&args.timeout_s) {
            return Err("timeout_s must be between 1 and 600".into());
        }
        let timeout = Duration::from_secs(args.timeout_s);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Plan {
            source: Source::table("users", "id")
                .columns(&["email"])
                .filter("email_checked_at IS NULL", vec![]),
            step: Step::batch(Verify {
                client,
                shown: without_password(&endpoint),
                endpoint,
                timeout,
            }),
            checks: vec![
                Check::new(
                    "users not checked",
                    "SELECT count(*) FROM users WHERE email_checked_at IS NULL",
                    Expect::Report,
                ),
                Check::new(
                    "addresses found invalid",
                    "SELECT count(*) FROM users WHERE email_valid = 0",
                    Expect::Report,
                ),
            ],
        })
    }
}

/// `url` with its password, if any, masked.
fn without_password(url: &reqwest::Url) -> reqwest::Url {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown
}

struct Verify {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    /// The endpoint as messages show it: without a password it may hold.
    shown: reqwest::Url,
    timeout: Duration,
}

#[derive(serde::Deserialize)]
struct Answer {
    results: Vec<Verdict>,
}

#[derive(serde::Deserialize)]
struct Verdict {
    email: String,
    valid: bool,
}

impl BatchStep for Verify {
    /// The service's verdict per address.
    type Outside = HashMap<String, bool>;

    async fn outside(&self, batch: &Batch) -> Result<HashMap<String, bool>, StepError> {
        let emails: Vec<&str> = batch.rows().filter_map(|r| r.str("email")).collect();
        let body =
            serde_json::json!({"idempotency_key": batch.idempotency_key(), "emails": emails});
        let response = self
            .client
            .post(self.endpoint.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                StepError::retry(format!(
                    "the request to {} failed: {}",
                    self.shown,
                    e.without_url()
                ))
            })?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(StepError::retry(format!(
                "{} answered {status}",
                self.shown
            )));
        }
        if !status.is_success() {
            return Err(StepError::fail(format!("{} answered {status}", self.shown)));
        }
        let answer: Answer = response.json().await.map_err(|e| {
            StepError::retry(format!(
                "{} answered with no results: {}",
                self.shown,
                e.without_url()
            ))
        })?;
        Ok(answer
            .results
            .into_iter()
            .map(|v| (v.email, v.valid))
            .collect())
    }

    async fn write(
        &self,
        batch: &Batch,
        verdicts: &HashMap<String, bool>,
        tx: &mut BatchTx<'_>,
    ) -> Result<(), StepError> {
        let now = Value::Timestamp(
            chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0)
                .unwrap_or_default()
                .naive_utc(),
        );
        let mut rows = Vec::with_capacity(batch.len());
        for row in batch.rows() {
            match row.str("email").and_then(|e| verdicts.get(e)) {
                Some(valid) => rows.push(vec![
                    row.key()[0].clone(),
                    Value::Int(i64::from(*valid)),
                    now.clone(),
                ]),
                None => tx.reject(row.key(), "the service gave no verdict for this address"),
            }
        }
        tx.update(
            "users",
            &["id"],
            &["email_valid", "email_checked_at"],
            &rows,
        )
        .await?;
        Ok(())
    }

    fn outside_timeout(&self) -> Duration {
        self.timeout + Duration::from_secs(5)
    }
}
