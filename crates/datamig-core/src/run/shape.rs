//! What a job's Source × Step combination means, decided in one place: whether
//! the plan is well formed, how many values its checkpoint holds and what they
//! are called, how many rows are left to do, which table it changes, and what
//! key a partitioned run splits. What depends on the step alone is asked of
//! the step's own file (`batch/steps/`, through [`steps::of`]).

use crate::db::Conn;
use crate::job::{Plan, Source};
use crate::run::batch::{steps, Prepared};
use crate::run::{csv_source, CountMode};
use crate::{Error, Result};

/// Refuses a plan whose source and step do not go together, or that cannot
/// run as written: before anything runs, not halfway through.
pub(crate) fn check(job: &str, plan: &Plan) -> Result<()> {
    let bad = |m: String| Err(Error::Usage(format!("job {job} is misdefined: {m}")));
    match &plan.source {
        Source::Table { key, .. } | Source::Query { key, .. } if key.is_empty() => {
            return bad("its source has no key columns".into())
        }
        Source::Range { start, end } if start > end => {
            return bad(format!("its range {start}..={end} is empty"))
        }
        _ => {}
    }
    if let Some(why) = steps::of(&plan.step).refuses(&plan.source) {
        return bad(why);
    }
    if let Source::Csv { path } = &plan.source {
        if !path.is_file() {
            return Err(Error::Usage(format!(
                "job {job}: there is no file {}; give the path of the CSV file to import",
                path.display()
            )));
        }
    }
    Ok(())
}

/// How many values a checkpoint of `source` holds.
pub(crate) fn arity(source: &Source) -> usize {
    match source {
        Source::Table { key, .. } | Source::Query { key, .. } => key.len(),
        Source::Range { .. } | Source::Custom(_) => 1,
        Source::Csv { .. } => 3,
    }
}

/// What a checkpoint of `source` is called in messages: `id`, or `(a, b)`
/// for a composite key.
pub(crate) fn key_name(source: &Source) -> String {
    match source {
        Source::Table { key, .. } | Source::Query { key, .. } if key.len() == 1 => key[0].clone(),
        Source::Table { key, .. } | Source::Query { key, .. } => format!("({})", key.join(", ")),
        Source::Range { .. } => "record".into(),
        Source::Csv { .. } => "(records, byte, line)".into(),
        Source::Custom(_) => "cursor".into(),
    }
}

/// The table the job changes: it must exist before a run, and its statistics
/// are refreshed after one.
pub(crate) fn target(plan: &Plan) -> Option<String> {
    steps::of(&plan.step).changes(&plan.source)
}

/// The rows the source selects after `cursor`, counted as `count` asks
/// (`None` without a count).
pub(crate) async fn remaining(
    conn: &mut Conn,
    plan: &Plan,
    prep: &Prepared,
    count: CountMode,
    cursor: Option<&[crate::db::Value]>,
) -> Result<Option<i64>> {
    Ok(match (&plan.source, count) {
        (_, CountMode::None) => None,
        (Source::Range { start, end }, _) => {
            let done = cursor
                .and_then(|c| c.first())
                .and_then(crate::db::Value::as_i64)
                .map_or(0, |c| c - start + 1);
            Some(end - start + 1 - done)
        }
        (Source::Csv { path }, _) => Some(csv_source::count(
            path,
            csv_source::At::from_cursor(cursor)?,
        )?),
        (Source::Table { .. } | Source::Query { .. }, CountMode::Estimate) => {
            match prep.estimate(conn, cursor).await {
                Some(n) => Some(n),
                None => Some(prep.count(conn, cursor).await?),
            }
        }
        (Source::Table { .. } | Source::Query { .. }, CountMode::Exact) => {
            Some(prep.count(conn, cursor).await?)
        }
        (Source::Custom(source), _) => {
            let after = cursor
                .and_then(|c| c.first())
                .and_then(crate::db::Value::as_str);
            source.0.remaining(after).await?
        }
    })
}

/// The one integer key column a partitioned run splits, as `(table, key)`
/// (`None` for a range source, whose numbers are split as they are), or why
/// the job must run in one worker.
pub(crate) fn partition_key(job: &str, plan: &Plan) -> Result<Option<(String, String)>> {
    let refuse = |why: String| Err(Error::Usage(format!("job {job}: {why}")));
    if let Some(why) = steps::of(&plan.step).one_worker() {
        return refuse(why.into());
    }
    match &plan.source {
        Source::Table { key, .. } if key.len() != 1 => refuse(format!(
            "--workers cuts the key range into partitions, which needs a single integer key; the key is ({}). \
             Run it without --workers: one cursor takes any key",
            key.join(", ")
        )),
        Source::Table { table, key, .. } => Ok(Some((table.clone(), key[0].clone()))),
        Source::Range { .. } => Ok(None),
        Source::Csv { .. } => refuse(
            "a CSV import reads one file in order and runs in one worker; drop --workers".into(),
        ),
        Source::Query { .. } => refuse(
            "a query source is read in one key order and runs in one worker; drop --workers".into(),
        ),
        Source::Custom(_) => refuse(
            "a custom source is read page after page and runs in one worker; drop --workers".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::db::Value;
    use crate::job::{CsvRecord, Import, Outcome, SourceRow, Step, Transform};

    struct Lower;
    impl Transform for Lower {
        fn writes(&self) -> Vec<String> {
            vec!["email".into()]
        }
        fn apply(&self, _row: &SourceRow<'_>) -> Outcome {
            Outcome::Skip
        }
    }

    struct Users;
    impl Import for Users {
        fn table(&self) -> String {
            "users".into()
        }
        fn columns(&self) -> Vec<String> {
            vec!["email".into()]
        }
        fn row(&self, _record: &CsvRecord<'_>) -> std::result::Result<Vec<Value>, String> {
            Ok(vec![Value::Null])
        }
    }

    fn plan(source: Source, step: Step) -> Plan {
        Plan {
            source,
            step,
            checks: Vec::new(),
        }
    }

    fn table() -> Source {
        Source::table("users", "id")
    }

    fn csv(path: &std::path::Path) -> Source {
        Source::Csv {
            path: path.to_path_buf(),
        }
    }

    fn steps(dir: &std::path::Path) -> Vec<(&'static str, Step)> {
        vec![
            ("transform", Step::Transform(Arc::new(Lower))),
            (
                "sql",
                Step::Sql("UPDATE users SET n = 1 WHERE {batch}".into()),
            ),
            (
                "range sql",
                Step::Sql("INSERT INTO t SELECT {lo}, {hi}".into()),
            ),
            ("delete", Step::Delete),
            (
                "archive",
                Step::Archive {
                    file: dir.join("a.csv"),
                },
            ),
            ("import", Step::Import(Arc::new(Users))),
            ("batch", Step::batch(Nothing)),
        ]
    }

    /// A batch step that does nothing.
    struct Nothing;

    impl crate::job::BatchStep for Nothing {
        type Outside = ();
        async fn outside(&self, _: &crate::job::Batch) -> Result<(), crate::job::StepError> {
            Ok(())
        }
        async fn write(
            &self,
            _: &crate::job::Batch,
            _: &(),
            _: &mut crate::job::BatchTx<'_>,
        ) -> Result<(), crate::job::StepError> {
            Ok(())
        }
    }

    /// The message for `source` × `step`, `None` when the plan is accepted.
    fn refusal(source: &Source, step: Step) -> Option<String> {
        match check("j", &plan(source.clone(), step)) {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    #[test]
    fn every_source_takes_exactly_its_steps() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.csv");
        std::fs::write(&file, "email\n").unwrap();
        let range = Source::Range { start: 1, end: 10 };
        let accepted = |source: &Source| -> Vec<&str> {
            steps(dir.path())
                .into_iter()
                .filter(|(_, step)| refusal(source, step.clone()).is_none())
                .map(|(name, _)| name)
                .collect()
        };
        assert_eq!(
            accepted(&table()),
            ["transform", "sql", "delete", "archive", "batch"]
        );
        assert_eq!(accepted(&range), ["range sql"]);
        let query = Source::query("SELECT a, count(*) AS n FROM t GROUP BY a", &["a"]);
        assert_eq!(accepted(&query), ["batch"]);
        assert_eq!(
            refusal(&query, Step::Delete).as_deref(),
            Some("job j is misdefined: a query source takes a batch step")
        );
        assert_eq!(accepted(&csv(&file)), ["import"]);

        let said = |source: &Source, i: usize| refusal(source, steps(dir.path())[i].1.clone());
        assert_eq!(
            said(&table(), 2).as_deref(),
            Some("job j is misdefined: its SQL step must contain {batch} (or {batch:alias}) where the batch's key range goes")
        );
        assert_eq!(
            said(&table(), 5).as_deref(),
            Some("job j is misdefined: an import step reads a CSV source")
        );
        assert_eq!(
            said(&range, 1).as_deref(),
            Some("job j is misdefined: a range source's SQL step must contain {lo} and {hi}")
        );
        for i in [0, 3, 4] {
            assert_eq!(
                said(&range, i).as_deref(),
                Some("job j is misdefined: a range source takes a SQL step")
            );
        }
        assert_eq!(
            said(&csv(&file), 4).as_deref(),
            Some("job j is misdefined: an archive step deletes from a table source")
        );
        for i in [0, 1, 3] {
            assert_eq!(
                said(&csv(&file), i).as_deref(),
                Some("job j is misdefined: a CSV source takes an import step")
            );
        }
    }

    #[test]
    fn malformed_sources_and_sql_are_refused() {
        let refused = |source: Source, step: Step| refusal(&source, step).unwrap();
        let sql = |s: &str| Step::Sql(s.into());
        let keyless = Source::Table {
            table: "t".into(),
            key: Vec::new(),
            columns: Vec::new(),
            filter: None,
        };
        assert!(refused(keyless, Step::Delete).ends_with("its source has no key columns"));
        assert!(refused(Source::Range { start: 5, end: 4 }, sql("{lo}{hi}"))
            .ends_with("its range 5..=4 is empty"));
        assert!(
            refused(table(), sql("DELETE FROM t WHERE {batch} OR {batch}"))
                .ends_with("its SQL step must contain {batch} once")
        );
        assert!(
            refused(table(), sql("DELETE FROM t WHERE {batch} AND x = ?"))
                .ends_with("put parameters in the source filter")
        );
        let missing = refused(
            csv(std::path::Path::new("/nonexistent/in.csv")),
            Step::Import(Arc::new(Users)),
        );
        assert_eq!(
            missing,
            "job j: there is no file /nonexistent/in.csv; give the path of the CSV file to import"
        );
    }

    #[test]
    fn what_a_shape_changes_and_how_it_is_partitioned() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.csv");
        assert_eq!(
            target(&plan(table(), Step::Delete)).as_deref(),
            Some("users")
        );
        assert_eq!(
            target(&plan(csv(&file), Step::Import(Arc::new(Users)))).as_deref(),
            Some("users")
        );
        assert_eq!(
            target(&plan(
                Source::Range { start: 1, end: 2 },
                Step::Sql("{lo}{hi}".into())
            )),
            None
        );

        let key = |source: Source, step: Step| partition_key("j", &plan(source, step));
        assert_eq!(
            key(table(), Step::Delete).unwrap(),
            Some(("users".to_string(), "id".to_string()))
        );
        assert_eq!(
            key(
                Source::Range { start: 1, end: 9 },
                Step::Sql("{lo}{hi}".into())
            )
            .unwrap(),
            None
        );
        let refused = |r: Result<Option<(String, String)>>| r.unwrap_err().to_string();
        assert!(refused(key(table(), Step::Archive { file: file.clone() }))
            .contains("an archive step appends to one file in key order"));
        assert!(refused(key(csv(&file), Step::Import(Arc::new(Users))))
            .contains("a CSV import reads one file in order"));
        let composite = Source::Table {
            table: "t".into(),
            key: vec!["a".into(), "b".into()],
            columns: Vec::new(),
            filter: None,
        };
        assert!(refused(key(composite.clone(), Step::Delete)).contains("the key is (a, b)"));
        assert_eq!(arity(&composite), 2);
        assert_eq!(key_name(&composite), "(a, b)");
        assert_eq!(arity(&csv(&file)), 3);
    }
}
