//! Data jobs: the trait a project implements in `jobs/`, and the explicit
//! registry it hands to the CLI (`Registry::new().with(MyJob)`), so that every
//! job a binary can run is visible in one place.
//!
//! A job says what rows it visits (its [`Source`]), what it does to one batch of
//! them (its [`Step`]: a Rust [`Transform`], a set-based SQL statement, or a
//! delete), and how to verify the result ([`Check`]s). The engine ([`crate::run`])
//! does the batching, checkpointing, resuming and progress.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Backend;
use crate::db::Value;

mod batch;
mod custom;
pub use batch::{bounded, Batch, BatchStep, BatchTx, OnConflict, StepError};
pub(crate) use batch::{ErasedStep, SourceGuard, TypeCache};
pub use custom::{AnyCustomSource, CustomSource, Page};

/// A data job. `Args` are its `--arg key=value` arguments, typed with serde:
/// unknown keys and malformed values are refused before anything runs.
pub trait Job: Send + Sync + 'static {
    type Args: DeserializeOwned + Serialize + Send + Sync + 'static;

    /// The name `datamig run NAME` uses: snake_case, unique in the registry.
    fn name(&self) -> &'static str;
    /// One line for `datamig jobs`.
    fn description(&self) -> &'static str;
    /// `(argument, help)` pairs for `datamig jobs`.
    fn arg_help(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// The migration version this job needs applied (its columns exist from then on).
    fn requires_migration(&self) -> Option<i64> {
        None
    }
    /// What to do, for these arguments on this database. An `Err` is a message
    /// about the arguments, shown as a usage error.
    fn plan(&self, args: &Self::Args, ctx: &PlanContext) -> Result<Plan, String>;
    /// Which tables' planner statistics datamig refreshes after a run that
    /// changed many rows (`--analyze` decides when): the source table by default.
    fn statistics(&self) -> Statistics {
        Statistics::Source
    }
}

/// The tables whose statistics a run refreshes (`ANALYZE`) when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistics {
    /// The source's table (none for a range source).
    Source,
    /// These tables: for a job that writes elsewhere than its source (a seeding
    /// job's range source inserts into a table).
    Tables(&'static [&'static str]),
    /// None.
    Never,
}

/// What a job's plan may depend on: which database it runs on.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext {
    pub backend: Backend,
}

/// A job's plan: where its rows come from, what it does with a batch, how to check it.
pub struct Plan {
    pub source: Source,
    pub step: Step,
    pub checks: Vec<Check>,
}

/// The rows a job visits, in key order.
#[derive(Debug, Clone)]
pub enum Source {
    /// Rows of a table, by an indexed key (single-column or composite), with an
    /// optional filter. Visited with keyset pagination: never OFFSET.
    Table {
        table: String,
        /// Key columns, in index order. The cursor is the last key done.
        key: Vec<String>,
        /// Columns a [`Transform`] reads (besides the key).
        columns: Vec<String>,
        /// A predicate over the table, with `?` placeholders for `params`: the rows
        /// the job acts on. Applied within each batch's key range. Every `?` outside a string literal is a
        /// placeholder (datamig numbers them for PostgreSQL), so PostgreSQL's `?`
        /// JSON operators must be written as functions (`jsonb_exists`).
        filter: Option<Filter>,
    },
    /// The numbers `start..=end`, for jobs that generate rows (seeding). The cursor
    /// is the last number done; a [`Step::Sql`] sees the batch as `{lo}` and `{hi}`.
    Range { start: i64, end: i64 },
    /// The rows of a query (a join, a `GROUP BY … HAVING`, a view), visited in
    /// the order of `key`, columns of its output that identify a row: each
    /// batch is `SELECT … FROM (sql) WHERE key > cursor ORDER BY key LIMIT n`,
    /// never OFFSET. For a [`Step::Batch`]. Its rows are not locked or
    /// guarded (a query's row is no table's row): the step's writes commit
    /// with the checkpoint, exactly once, and should check inside the
    /// transaction what they rely on (lock the rows they change).
    Query {
        sql: String,
        /// Output columns, in order: the cursor is the last key done.
        key: Vec<String>,
        /// Other output columns the step reads.
        columns: Vec<String>,
    },
    /// The records of a CSV file whose first line names its columns, in file
    /// order, for a [`Step::Import`]. The cursor is the last record done with
    /// the byte offset and line where the next begins, so an interrupted import
    /// resumes exactly after its last committed batch: no record twice, none lost.
    Csv { path: std::path::PathBuf },
    /// Rows from anywhere, a page per batch, for a [`Step::Batch`]: a source
    /// the job implements ([`CustomSource`]), whose cursor the checkpoint
    /// keeps. In one worker.
    Custom(AnyCustomSource),
}

impl Source {
    /// A table by its primary key `id`.
    pub fn table(table: &str, key: &str) -> Source {
        Source::Table {
            table: table.into(),
            key: vec![key.into()],
            columns: Vec::new(),
            filter: None,
        }
    }

    /// The rows of `sql`, in the order of its output columns `key`; see
    /// [`Source::Query`].
    pub fn query(sql: &str, key: &[&str]) -> Source {
        Source::Query {
            sql: sql.into(),
            key: key.iter().map(|k| k.to_string()).collect(),
            columns: Vec::new(),
        }
    }

    /// A source the job implements; see [`CustomSource`].
    pub fn custom(source: impl CustomSource) -> Source {
        Source::Custom(AnyCustomSource(Arc::new(source)))
    }

    /// Adds columns for the transform or step to read.
    #[must_use]
    pub fn columns(mut self, cols: &[&str]) -> Source {
        if let Source::Table { columns, .. } | Source::Query { columns, .. } = &mut self {
            columns.extend(cols.iter().map(|c| c.to_string()));
        }
        self
    }

    /// Restricts the rows the source selects: a batch is the next `--batch` rows
    /// that match. The run still pages through the keys in order (each batch is
    /// an index range scan, whatever the planner thinks of the filter), scanning
    /// at most 20 times the batch size in keys for one batch; keys outside the
    /// filter are passed over. Bind times as [`Value::Timestamp`], not text.
    #[must_use]
    pub fn filter(mut self, sql: &str, params: Vec<Value>) -> Source {
        if let Source::Table { filter, .. } = &mut self {
            *filter = Some(Filter {
                sql: sql.into(),
                params,
            });
        }
        self
    }
}

#[derive(Debug, Clone)]
pub struct Filter {
    pub sql: String,
    pub params: Vec<Value>,
}

/// What a job does with one batch. Its writes and the checkpoint commit together.
#[derive(Clone)]
pub enum Step {
    /// Read the batch's rows, compute new values in Rust, write them back with one
    /// bulk statement (never one per row).
    Transform(Arc<dyn Transform>),
    /// A set-based statement. For a table source, `{batch}` expands to the
    /// batch's key range and the source filter: `UPDATE users SET x = lower(email) WHERE {batch}`.
    /// For a range source, `{lo}` and `{hi}` are the batch's first and last number.
    Sql(String),
    /// Delete the batch's rows (those matching the source filter).
    Delete,
    /// Write the batch's rows (the source's key and columns) to a CSV file, then
    /// delete them. Each batch's rows are appended and synced before its DELETE,
    /// and its checkpoint records the file's length: before each batch, and when
    /// a run resumes, the file is cut back to the last committed length, so the
    /// archive holds every deleted row exactly once however the run is stopped.
    Archive { file: std::path::PathBuf },
    /// Insert a row for each record of a CSV source, in one statement per batch;
    /// a record the import rejects, or that is not well-formed CSV, is recorded
    /// with its line number (`datamig_rejects`, `--rejects-file`) and the import
    /// goes on, within `--max-errors`.
    Import(Arc<dyn Import>),
    /// The job's own async Rust over each batch's rows: work outside the
    /// database first (at least once), then any writes inside the batch's
    /// transaction (exactly once, with the checkpoint). See [`BatchStep`].
    Batch(AnyBatchStep),
}

impl Step {
    /// A [`BatchStep`] as a plan's step.
    pub fn batch(step: impl BatchStep) -> Step {
        Step::Batch(AnyBatchStep(Arc::new(step)))
    }
}

/// A [`BatchStep`] in a [`Step::Batch`]; made by [`Step::batch`].
#[derive(Clone)]
pub struct AnyBatchStep(pub(crate) Arc<dyn ErasedStep>);

/// Turns a CSV record into a row to insert.
pub trait Import: Send + Sync + 'static {
    /// The table the rows go into.
    fn table(&self) -> String;
    /// Its columns, in the order of [`Import::row`]'s values.
    fn columns(&self) -> Vec<String>;
    /// The row for one record, or why the record is rejected.
    fn row(&self, record: &CsvRecord<'_>) -> Result<Vec<Value>, String>;
}

/// One CSV record as an import sees it: its fields by the header's names.
pub struct CsvRecord<'a> {
    pub(crate) headers: &'a [String],
    pub(crate) fields: &'a [String],
    /// The line it starts on (the header is line 1).
    pub line: u64,
}

impl CsvRecord<'_> {
    pub fn get(&self, column: &str) -> Option<&str> {
        self.headers
            .iter()
            .position(|h| h == column)
            .and_then(|i| self.fields.get(i))
            .map(String::as_str)
    }

    /// The field, or a reason to reject the record if it is missing or empty.
    pub fn required(&self, column: &str) -> Result<&str, String> {
        match self.get(column).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("`{column}` is empty")),
        }
    }
}

/// A Rust transform: one row in, one [`Outcome`] out. With `cpu_heavy`, a batch's
/// rows are spread over all cores (rayon) while the database waits.
pub trait Transform: Send + Sync + 'static {
    /// The columns it writes, in the order of [`Outcome::Update`]'s values.
    fn writes(&self) -> Vec<String>;
    fn apply(&self, row: &SourceRow<'_>) -> Outcome;
    fn cpu_heavy(&self) -> bool {
        false
    }
}

/// What a transform decided for one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Write these values (one per column in [`Transform::writes`]).
    Update(Vec<Value>),
    /// Leave the row as it is.
    Skip,
    /// Leave the row as it is, and record it with this reason in `datamig_rejects`.
    Reject(String),
}

/// One source row as a transform sees it: its key and its columns, by name.
pub struct SourceRow<'a> {
    pub(crate) names: &'a [String],
    pub(crate) values: &'a [Value],
    pub(crate) key_len: usize,
}

impl<'a> SourceRow<'a> {
    pub fn key(&self) -> &'a [Value] {
        let values: &'a [Value] = self.values;
        &values[..self.key_len]
    }

    pub fn get(&self, column: &str) -> Option<&'a Value> {
        let values: &'a [Value] = self.values;
        self.names
            .iter()
            .position(|n| n == column)
            .map(|i| &values[i])
    }

    /// The column as text: `None` when it is NULL, absent, or not text (a
    /// SQLite TEXT value that is not UTF-8 reads as [`Value::Bytes`]; see
    /// [`SourceRow::text`] to tell these apart).
    pub fn str(&self, column: &str) -> Option<&'a str> {
        self.get(column).and_then(Value::as_str)
    }

    /// The column as text, `Ok(None)` for NULL, and an error saying why for a
    /// value that is not UTF-8 text — ready for [`Outcome::Reject`].
    pub fn text(&self, column: &str) -> Result<Option<&'a str>, String> {
        match self.get(column) {
            None => Err(format!("the row has no column {column}")),
            Some(Value::Null) => Ok(None),
            Some(Value::Bytes(b)) => match std::str::from_utf8(b) {
                Ok(text) => Ok(Some(text)),
                Err(e) => Err(format!(
                    "{column} is not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                )),
            },
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| format!("{column} is not text")),
        }
    }

    pub fn i64(&self, column: &str) -> Option<i64> {
        self.get(column).and_then(Value::as_i64)
    }

    /// The column as JSON: a PostgreSQL `json`/`jsonb` as it was read, text
    /// (MariaDB's `JSON`, SQLite's) parsed; `Ok(None)` for NULL, an error
    /// saying why for a value that is not JSON — ready for [`Outcome::Reject`].
    pub fn json(&self, column: &str) -> Result<Option<serde_json::Value>, String> {
        match self.get(column) {
            None => Err(format!("the row has no column {column}")),
            Some(Value::Null) => Ok(None),
            Some(v) => v
                .to_json_value()
                .map(Some)
                .map_err(|e| format!("{column} is {e}")),
        }
    }

    /// The row (its key and columns, by name) as the job's own
    /// `#[derive(Deserialize)]` type: NULL reads as `None`, a timestamp as
    /// `YYYY-MM-DD HH:MM:SS` text, a decimal as its exact text, JSON as itself.
    pub fn read<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let object: serde_json::Map<String, serde_json::Value> = self
            .names
            .iter()
            .zip(self.values)
            .map(|(name, value)| (name.clone(), value.to_json()))
            .collect();
        serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| format!("cannot read the row as {}: {e}", std::any::type_name::<T>()))
    }
}

impl Outcome {
    /// Writes the fields of the job's own `#[derive(Serialize)]` value named
    /// by `columns` (the transform's [`Transform::writes`], in its order): a
    /// field missing is a reject.
    pub fn update_from<T: serde::Serialize>(value: &T, columns: &[String]) -> Outcome {
        match fields_of(value).and_then(|object| values_by_name::<T>(&object, columns.iter())) {
            Ok(values) => Outcome::Update(values),
            Err(reason) => Outcome::Reject(reason),
        }
    }
}

/// The job's own value as its named fields (serde), or why it has none.
pub(crate) fn fields_of<T: serde::Serialize>(
    value: &T,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!(
            "{} is written as {other}, not as a row of named fields",
            std::any::type_name::<T>()
        )),
        Err(e) => Err(format!("cannot write the row: {e}")),
    }
}

/// The values of `names` among a value's fields ([`Value::from_json`]), in
/// that order; a field missing is named.
pub(crate) fn values_by_name<'n, T>(
    object: &serde_json::Map<String, serde_json::Value>,
    names: impl Iterator<Item = &'n String>,
) -> Result<Vec<Value>, String> {
    names
        .map(|name| {
            object
                .get(name)
                .map(|v| Value::from_json(v.clone()))
                .ok_or_else(|| format!("{} has no field {name}", std::any::type_name::<T>()))
        })
        .collect()
}

/// A verification query, run before the run (baseline) and after it.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// Yields one integer: `SELECT count(*) FROM users WHERE …`. `?` marks `params`,
    /// as in a source filter.
    pub sql: String,
    pub params: Vec<Value>,
    pub expect: Expect,
}

impl Check {
    pub fn new(name: &str, sql: &str, expect: Expect) -> Check {
        Check {
            name: name.into(),
            sql: sql.into(),
            params: Vec::new(),
            expect,
        }
    }

    #[must_use]
    pub fn params(mut self, params: Vec<Value>) -> Check {
        self.params = params;
        self
    }
}

/// What a check's value must be after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Zero,
    Equals(i64),
    AtMost(i64),
    /// The same as before the run (a row count that must not move).
    Unchanged,
    /// Shown, never fails.
    Report,
}

impl Expect {
    pub fn holds(self, before: Option<i64>, after: i64) -> bool {
        match self {
            Expect::Zero => after == 0,
            Expect::Equals(n) => after == n,
            Expect::AtMost(n) => after <= n,
            Expect::Unchanged => before.is_none_or(|b| b == after),
            Expect::Report => true,
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Zero => f.write_str("= 0"),
            Expect::Equals(n) => write!(f, "= {n}"),
            Expect::AtMost(n) => write!(f, "<= {n}"),
            Expect::Unchanged => f.write_str("unchanged"),
            Expect::Report => f.write_str("(report)"),
        }
    }
}

/// Parsed, validated arguments: the typed value and its canonical JSON, which
/// identifies a run (the same job with the same arguments resumes it).
pub struct ParsedArgs {
    pub canonical: String,
    value: Box<dyn Any + Send + Sync>,
}

/// The object-safe face of a [`Job`], for the registry.
pub trait DynJob: Send + Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn arg_help(&self) -> &'static [(&'static str, &'static str)];
    fn requires_migration(&self) -> Option<i64>;
    /// Parses `key=value` pairs; the error says which argument is wrong and what it takes.
    fn parse_args(&self, pairs: &[(String, String)]) -> Result<ParsedArgs, String>;
    fn plan(&self, args: &ParsedArgs, ctx: &PlanContext) -> Result<Plan, String>;
    fn statistics(&self) -> Statistics;
}

impl<J: Job> DynJob for J {
    fn name(&self) -> &'static str {
        Job::name(self)
    }
    fn description(&self) -> &'static str {
        Job::description(self)
    }
    fn arg_help(&self) -> &'static [(&'static str, &'static str)] {
        Job::arg_help(self)
    }
    fn requires_migration(&self) -> Option<i64> {
        Job::requires_migration(self)
    }

    fn parse_args(&self, pairs: &[(String, String)]) -> Result<ParsedArgs, String> {
        let mut seen = std::collections::BTreeSet::new();
        for (k, _) in pairs {
            if !seen.insert(k) {
                return Err(format!("--arg {k} is given twice"));
            }
        }
        let encoded = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        // Through serde_path_to_error, so that a bad value names its argument
        // (serde_urlencoded alone said "invalid digit found in string").
        let deserializer =
            serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(encoded.as_bytes()));
        let args: J::Args = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let what = match pairs.iter().find(|(k, _)| *k == field) {
                Some((k, v)) => format!("invalid --arg {k}={v} for job {}", Job::name(self)),
                None => format!("invalid --arg for job {}", Job::name(self)),
            };
            let e = e
                .inner()
                .to_string()
                .replace("invalid digit found in string", "not a whole number");
            let takes = if self.arg_help().is_empty() {
                "it takes no arguments".to_string()
            } else {
                format!(
                    "it takes: {}",
                    self.arg_help()
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            format!("{what}: {e}; {takes}")
        })?;
        let canonical = serde_json::to_string(&args).map_err(|e| e.to_string())?;
        Ok(ParsedArgs {
            canonical,
            value: Box::new(args),
        })
    }

    fn plan(&self, args: &ParsedArgs, ctx: &PlanContext) -> Result<Plan, String> {
        let args = args
            .value
            .downcast_ref::<J::Args>()
            .ok_or("arguments of another job")?;
        Job::plan(self, args, ctx)
    }

    fn statistics(&self) -> Statistics {
        Job::statistics(self)
    }
}

/// The jobs a binary knows, by name.
#[derive(Default)]
pub struct Registry {
    jobs: BTreeMap<&'static str, Box<dyn DynJob>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job. Two jobs with one name are a programming error, caught at start-up.
    #[must_use]
    pub fn with(mut self, job: impl Job) -> Self {
        let name = Job::name(&job);
        assert!(
            self.jobs.insert(name, Box::new(job)).is_none(),
            "two jobs are registered under the name `{name}`; job names must be unique"
        );
        self
    }

    pub fn get(&self, name: &str) -> Option<&dyn DynJob> {
        self.jobs.get(name).map(|j| j.as_ref())
    }

    /// Jobs in name order.
    pub fn iter(&self) -> impl Iterator<Item = &dyn DynJob> {
        self.jobs.values().map(|j| j.as_ref())
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// The arguments of a job that takes none: any `--arg` is refused.
#[derive(Debug, Default, Clone, Copy, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// A duration argument: `30d`, `12h`, `90m` (serde reads it from `--arg k=30d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub std::time::Duration);

impl<'de> serde::Deserialize<'de> for DurationArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::config::parse_duration(&s)
            .map(DurationArg)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for DurationArg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", self.0.as_secs()))
    }
}
