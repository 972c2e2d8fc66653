//! SQLite finds a transform's rows by their rowid when the key is not the rowid
//! (a `BIGINT PRIMARY KEY` is an index beside it), read in the batch's own
//! transaction: every table shape gets each row written once, and exactly its
//! own value — with the rowid hidden behind a column named `rowid`, without
//! one (WITHOUT ROWID), with a composite or a text key, and with a filter.

use std::sync::Arc;

use datamig_core::prelude::*;
use datamig_core::testing::TestDb;

/// Upper-cases `name` into `out` for the rows of `table` whose `out` is NULL.
struct Upper {
    name: &'static str,
    table: &'static str,
    key: &'static [&'static str],
}

impl Job for Upper {
    type Args = NoArgs;

    fn name(&self) -> &'static str {
        self.name
    }

    fn description(&self) -> &'static str {
        "upper-cases name into out"
    }

    fn plan(&self, _args: &NoArgs, _ctx: &PlanContext) -> Result<Plan, String> {
        let mut source = Source::table(self.table, self.key[0]);
        if let Source::Table { key, .. } = &mut source {
            *key = self.key.iter().map(|k| k.to_string()).collect();
        }
        Ok(Plan {
            source: source.columns(&["name"]).filter("out IS NULL", vec![]),
            step: Step::Transform(Arc::new(UpperName)),
            checks: vec![],
        })
    }
}

struct UpperName;

impl Transform for UpperName {
    fn writes(&self) -> Vec<String> {
        vec!["out".into()]
    }

    fn apply(&self, row: &SourceRow<'_>) -> Outcome {
        match row.text("name") {
            Ok(Some(name)) => Outcome::Update(vec![Value::Text(name.to_uppercase())]),
            Ok(None) => Outcome::Skip,
            Err(reason) => Outcome::Reject(reason),
        }
    }
}

/// Runs the job in batches of 7 over `rows` rows made by `fill`, then checks
/// that every row holds its own name upper-cased.
fn each_row_its_own(db: &TestDb, job: &Upper, rows: i64) {
    let report = db.job(job).batch(7).run().expect("the run");
    assert_eq!(report.rows_done, rows, "{report:?}");
    assert_eq!(report.rows_changed, rows, "{report:?}");
    let table = job.table;
    let wrong = db
        .count(&format!(
            "SELECT count(*) FROM {table} WHERE out IS NOT upper(name)"
        ))
        .unwrap();
    assert_eq!(wrong, 0, "{table}: rows written with another row's value");
}

#[test]
fn a_transform_finds_each_row_by_its_rowid_or_by_its_key() {
    let db = TestDb::sqlite().expect("a database");
    // The key an index beside the rowid, with rowids out of the key's order
    // (rows inserted in reverse), some keys far apart.
    db.exec("CREATE TABLE big (id BIGINT NOT NULL PRIMARY KEY, name TEXT, out TEXT)")
        .unwrap();
    db.exec(
        "WITH RECURSIVE s(i) AS (SELECT 100 UNION ALL SELECT i - 1 FROM s WHERE i > 1) \
         INSERT INTO big (id, name) SELECT i * 1000, 'big ' || i FROM s",
    )
    .unwrap();
    each_row_its_own(
        &db,
        &Upper {
            name: "upper_big",
            table: "big",
            key: &["id"],
        },
        100,
    );

    // A column named rowid hides the rowid: its values are not the rows' rowids.
    db.exec(
        "CREATE TABLE named (id BIGINT NOT NULL PRIMARY KEY, rowid INTEGER, name TEXT, out TEXT)",
    )
    .unwrap();
    db.exec(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50) \
         INSERT INTO named (id, rowid, name) SELECT i, 51 - i, 'named ' || i FROM s",
    )
    .unwrap();
    each_row_its_own(
        &db,
        &Upper {
            name: "upper_named",
            table: "named",
            key: &["id"],
        },
        50,
    );
    assert_eq!(
        db.count("SELECT count(*) FROM named WHERE rowid <> 51 - id")
            .unwrap(),
        0,
        "the column named rowid was written"
    );

    // No rowid at all, a text key.
    db.exec("CREATE TABLE wr (k TEXT NOT NULL PRIMARY KEY, name TEXT, out TEXT) WITHOUT ROWID")
        .unwrap();
    db.exec(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 40) \
         INSERT INTO wr (k, name) SELECT printf('k%03d', i), 'wr ' || i FROM s",
    )
    .unwrap();
    each_row_its_own(
        &db,
        &Upper {
            name: "upper_wr",
            table: "wr",
            key: &["k"],
        },
        40,
    );

    // A composite key; rows the filter passes over stay as they are.
    db.exec(
        "CREATE TABLE pairs (a BIGINT NOT NULL, b BIGINT NOT NULL, name TEXT, out TEXT, PRIMARY KEY (a, b))",
    )
    .unwrap();
    db.exec(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 60) \
         INSERT INTO pairs (a, b, name, out) SELECT i % 5, i, 'pair ' || i, \
         CASE WHEN i % 4 = 0 THEN 'kept' END FROM s",
    )
    .unwrap();
    let report = db
        .job(&Upper {
            name: "upper_pairs",
            table: "pairs",
            key: &["a", "b"],
        })
        .batch(7)
        .run()
        .expect("the run");
    assert_eq!(
        (report.rows_done, report.rows_changed),
        (45, 45),
        "{report:?}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pairs WHERE out = 'kept'")
            .unwrap(),
        15
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pairs WHERE out <> 'kept' AND out IS NOT upper(name)")
            .unwrap(),
        0
    );
}
