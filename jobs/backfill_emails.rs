//! `backfill_emails`: fills `users.email_normalized` with the trimmed, lowercased
//! address, validated in Rust. An invalid address is never written: the row keeps
//! NULL and is recorded with its reason in `datamig_rejects` (`datamig status
//! backfill_emails` lists them).

use std::sync::Arc;

use datamig_core::prelude::*;

use crate::NoArgs;

pub struct BackfillEmails;

impl Job for BackfillEmails {
    type Args = NoArgs;

    fn name(&self) -> &'static str {
        "backfill_emails"
    }

    fn description(&self) -> &'static str {
        "fill users.email_normalized with the trimmed, lowercased address; invalid addresses are rejected and left NULL"
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261124090100) // add_email_normalized_to_users
    }

    fn plan(&self, _args: &NoArgs, _ctx: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::table("users", "id").columns(&["email"]).filter("email_normalized IS NULL", vec![]),
            step: Step::Transform(Arc::new(Normalize)),
            checks: vec![
                Check::new("users (none added or lost)", "SELECT count(*) FROM users", Expect::Unchanged),
                Check::new(
                    "normalized addresses without @",
                    "SELECT count(*) FROM users WHERE email_normalized IS NOT NULL AND email_normalized NOT LIKE '%@%'",
                    Expect::Zero,
                ),
                Check::new(
                    "users left without one (invalid address)",
                    "SELECT count(*) FROM users WHERE email_normalized IS NULL",
                    Expect::Report,
                ),
            ],
        })
    }
}

struct Normalize;

impl Transform for Normalize {
    fn writes(&self) -> Vec<String> {
        vec!["email_normalized".into()]
    }

    fn apply(&self, row: &SourceRow<'_>) -> Outcome {
        let email = match row.text("email") {
            Ok(email) => email.unwrap_or_default(),
            Err(reason) => return Outcome::Reject(reason),
        };
        match normalize(email) {
            Ok(email) => Outcome::Update(vec![Value::Text(email)]),
            Err(reason) => Outcome::Reject(reason.into()),
        }
    }
}

/// The trimmed, lowercased address, or why it is not one.
pub fn normalize(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("empty address");
    }
    if email.len() > 254 {
        return Err("longer than 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("no @");
    };
    if domain.contains('@') {
        return Err("more than one @");
    }
    if local.is_empty() || local.len() > 64 {
        return Err("the part before @ is empty or longer than 64 characters");
    }
    if !domain.contains('.') || domain.split('.').any(str::is_empty) {
        return Err("the domain is not a dotted name");
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalizes_and_rejects() {
        assert_eq!(
            normalize("  Ada.Lovelace@Example.COM "),
            Ok("ada.lovelace@example.com".into())
        );
        assert_eq!(normalize("not-an-email"), Err("no @"));
        assert_eq!(normalize("a@b@c.d"), Err("more than one @"));
        assert_eq!(normalize("a b@c.d"), Err("contains whitespace"));
        assert_eq!(
            normalize("a@localhost"),
            Err("the domain is not a dotted name")
        );
        assert_eq!(normalize(""), Err("empty address"));
    }
}
