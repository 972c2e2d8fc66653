//! `import_users`: inserts users from a CSV file (`--arg file=users.csv`, a
//! header line `id,email`), checkpointed by record: an interrupted import
//! resumes after its last committed batch, with no user twice and none lost.
//! A record with a malformed id or an empty address, or one that is not
//! well-formed CSV, is rejected with its line number and the import goes on
//! (`--max-errors` bounds how many; `--rejects-file` writes them out).

use std::path::PathBuf;
use std::sync::Arc;

use datamig_core::prelude::*;

pub struct ImportUsers;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The CSV file to import.
    pub file: PathBuf,
}

impl Job for ImportUsers {
    type Args = Args;

    fn name(&self) -> &'static str {
        "import_users"
    }

    fn description(&self) -> &'static str {
        "insert users from a CSV file with the columns id,email; malformed records are rejected with their line"
    }

    fn arg_help(&self) -> &'static [(&'static str, &'static str)] {
        &[("file", "the CSV file, with a header line id,email")]
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261124090000) // create_users
    }

    fn plan(&self, args: &Args, _ctx: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::Csv {
                path: args.file.clone(),
            },
            step: Step::Import(Arc::new(UsersCsv)),
            checks: vec![Check::new(
                "users",
                "SELECT count(*) FROM users",
                Expect::Report,
            )],
        })
    }
}

struct UsersCsv;

impl Import for UsersCsv {
    fn table(&self) -> String {
        "users".into()
    }

    fn columns(&self) -> Vec<String> {
        vec!["id".into(), "email".into()]
    }

    fn row(&self, record: &CsvRecord<'_>) -> Result<Vec<Value>, String> {
        let id = record.required("id")?;
        let id: i64 = id
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("id `{id}` is not a positive number"))?;
        let email = record.required("email")?;
        if email.len() > 320 {
            return Err("email is longer than 320 characters".into());
        }
        Ok(vec![Value::Int(id), Value::Text(email.to_string())])
    }
}
