//! `backfill_display_names`: fills `customers.display_name` from the first and
//! last names, in Rust; a customer without either is rejected (left NULL, listed
//! by `datamig status backfill_display_names`).

use std::sync::Arc;

use datamig_core::prelude::*;

pub struct BackfillDisplayNames;

impl Job for BackfillDisplayNames {
    type Args = NoArgs;

    fn name(&self) -> &'static str {
        "backfill_display_names"
    }

    fn description(&self) -> &'static str {
        "fill customers.display_name from the first and last names"
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261204120000) // create_customers
    }

    fn plan(&self, _args: &NoArgs, _ctx: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::table("customers", "id")
                .columns(&["first_name", "last_name"])
                .filter("display_name IS NULL", vec![]),
            step: Step::Transform(Arc::new(DisplayName)),
            checks: vec![
                Check::new(
                    "customers (none added or lost)",
                    "SELECT count(*) FROM customers",
                    Expect::Unchanged,
                ),
                Check::new(
                    "customers left without a display name (no name at all)",
                    "SELECT count(*) FROM customers WHERE display_name IS NULL",
                    Expect::Report,
                ),
            ],
        })
    }
}

struct DisplayName;

/// The columns it reads, as the job's own type.
#[derive(serde::Deserialize)]
struct Names {
    first_name: Option<String>,
    last_name: Option<String>,
}

impl Transform for DisplayName {
    fn writes(&self) -> Vec<String> {
        vec!["display_name".into()]
    }

    fn apply(&self, row: &SourceRow<'_>) -> Outcome {
        let names: Names = match row.read() {
            Ok(names) => names,
            Err(reason) => return Outcome::Reject(reason),
        };
        match display_name(names.first_name.as_deref(), names.last_name.as_deref()) {
            Some(name) => Outcome::Update(vec![Value::Text(name)]),
            None => Outcome::Reject("no first or last name".into()),
        }
    }
}

/// `Ada Lovelace` from `" ada "` and `"LOVELACE"`; `None` without any name.
pub fn display_name(first: Option<&str>, last: Option<&str>) -> Option<String> {
    let title = |s: &str| {
        let s = s.trim().to_lowercase();
        let mut chars = s.chars();
        chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect::<String>())
    };
    let parts: Vec<String> = [first, last]
        .into_iter()
        .flatten()
        .filter_map(title)
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}
