//! `seed_demo_users`: inserts demo users for trying `backfill_emails`, in
//! checkpointed batches over the id range (so it, too, resumes). Every
//! `invalid_every`-th address is not an address, so the backfill has rows to
//! reject; every third user has a profile with addresses for
//! `move_addresses_to_table`; every 250th has the address of the user before
//! it, spelt differently, for `merge_duplicate_users`.

use datamig_core::prelude::*;

pub struct SeedDemoUsers;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    #[serde(default = "million")]
    pub rows: i64,
    #[serde(default = "one")]
    pub first_id: i64,
    #[serde(default = "thousand")]
    pub invalid_every: i64,
}

fn million() -> i64 {
    1_000_000
}
fn one() -> i64 {
    1
}
fn thousand() -> i64 {
    1000
}

/// `SELECT n FROM <the numbers {lo}..={hi}>` on each database.
pub fn numbers(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "SELECT n FROM generate_series({lo}, {hi}) AS g(n)",
        // MariaDB's SEQUENCE engine; a recursive CTE would stop at max_recursive_iterations
        // (1000 on many servers). MySQL 8 has neither this engine nor a usable default.
        Backend::MySql => "SELECT seq AS n FROM seq_{lo}_to_{hi}",
        Backend::Sqlite => "WITH RECURSIVE s(n) AS (SELECT {lo} UNION ALL SELECT n + 1 FROM s WHERE n < {hi}) SELECT n FROM s",
    }
}

/// Seeding again over existing ids inserts only the missing ones.
pub fn insert_ignore(backend: Backend) -> &'static str {
    match backend {
        Backend::MySql => "INSERT IGNORE",
        Backend::Sqlite => "INSERT OR IGNORE",
        Backend::Postgres => "INSERT",
    }
}

pub fn on_conflict_ignore(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => " ON CONFLICT DO NOTHING",
        _ => "",
    }
}

/// User n's profile, for `move_addresses_to_table`: every third user has one,
/// with 0 to 3 addresses (by n mod 4); every 1500th user's one address has no
/// kind, which the job rejects.
pub fn profile(b: Backend) -> String {
    let n = "CAST(n AS CHAR(20))";
    let home = concat(
        b,
        &[
            r#"'{"kind": "home", "line": "'"#,
            n,
            r#"' Main St", "city": "Oslo"}'"#,
        ],
    );
    let work = concat(
        b,
        &[
            r#"'{"kind": "work", "line": "'"#,
            n,
            r#"' Quay", "city": "Bergen"}'"#,
        ],
    );
    let other = concat(
        b,
        &[
            r#"'{"kind": "other", "line": "PO Box '"#,
            n,
            r#"'", "city": "Tromso"}'"#,
        ],
    );
    let kindless = concat(
        b,
        &[r#"'{"line": "'"#, n, r#"' Nowhere", "city": "Oslo"}'"#],
    );
    let list = |items: &[&str]| {
        let mut parts = vec![r#"'{"addresses": ['"#];
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                parts.push("', '");
            }
            parts.push(item);
        }
        parts.push("']}'");
        concat(b, &parts)
    };
    format!(
        "CASE WHEN n % 3 <> 0 THEN NULL WHEN n % 1500 = 0 THEN {} WHEN n % 4 = 0 THEN {} \
         WHEN n % 4 = 1 THEN {} WHEN n % 4 = 2 THEN {} ELSE {} END",
        list(&[&kindless]),
        list(&[]),
        list(&[&home]),
        list(&[&home, &work]),
        list(&[&home, &work, &other])
    )
}

/// `a || b || c` on each database (MariaDB's `||` is OR).
pub fn concat(backend: Backend, parts: &[&str]) -> String {
    match backend {
        Backend::MySql => format!("CONCAT({})", parts.join(", ")),
        _ => parts.join(" || "),
    }
}

impl Job for SeedDemoUsers {
    type Args = Args;

    fn name(&self) -> &'static str {
        "seed_demo_users"
    }

    fn description(&self) -> &'static str {
        "insert demo users (ids first_id.., default 1,000,000 rows) for trying backfill_emails"
    }

    fn arg_help(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("rows", "how many users (default 1000000)"),
            ("first_id", "the first id (default 1)"),
            (
                "invalid_every",
                "every Nth address is invalid (default 1000)",
            ),
        ]
    }

    // A range source names no table: the one it fills is refreshed after seeding.
    fn statistics(&self) -> Statistics {
        Statistics::Tables(&["users"])
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261204090000) // add_profile_to_users
    }

    fn plan(&self, args: &Args, ctx: &PlanContext) -> Result<Plan, String> {
        if !(1..=1_000_000_000).contains(&args.rows) {
            return Err("rows must be between 1 and 1000000000".into());
        }
        if args.first_id < 1 || args.invalid_every < 1 {
            return Err("first_id and invalid_every must be at least 1".into());
        }
        let end = args
            .first_id
            .checked_add(args.rows - 1)
            .ok_or("first_id + rows is too large")?;
        let b = ctx.backend;
        let valid = concat(b, &["'  User'", "CAST(n AS CHAR(20))", "'@Example.COM '"]);
        let invalid = concat(b, &["'not-an-email-'", "CAST(n AS CHAR(20))"]);
        // Every 250th user is the one before it again, by another spelling of
        // the address: a duplicate for merge_duplicate_users.
        let again = concat(b, &["'user'", "CAST(n - 1 AS CHAR(20))", "'@example.com'"]);
        let sql = format!(
            "{} INTO users (id, email, profile) SELECT n, CASE WHEN n % {} = 0 THEN {invalid} \
             WHEN n % 250 = 0 AND n > 1 THEN {again} ELSE {valid} END, {} FROM ({}) AS numbers{}",
            insert_ignore(b),
            args.invalid_every,
            profile(b),
            numbers(b),
            on_conflict_ignore(b)
        );
        Ok(Plan {
            source: Source::Range {
                start: args.first_id,
                end,
            },
            step: Step::Sql(sql),
            checks: vec![Check::new(
                "users",
                "SELECT count(*) FROM users",
                Expect::Report,
            )],
        })
    }
}
