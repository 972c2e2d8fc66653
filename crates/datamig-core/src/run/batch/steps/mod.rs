//! Each step, a file of its own behind one small interface, [`StepKind`]:
//! which sources it takes, whether it can be split among workers, what table
//! it changes, and its batch body — what a batch does inside its transaction
//! once its rows (or its key range) are known. [`of`] is the one place a
//! [`Step`] meets its file.
//!
//! | step | file |
//! |---|---|
//! | a Rust transform of a table's rows | `transform.rs` |
//! | set-based SQL over a key range or an integer range | `sql.rs` |
//! | a delete over a key range | `delete.rs` |
//! | an archive (rows to a file, then deleted) | `archive.rs` |
//! | an import of a CSV file | `import.rs` |
//! | a job's own async Rust over a batch's rows | `batch_step.rs` |
//!
//! `key_range.rs` holds what the key-range steps share: finding the batch's
//! range and running one statement over it.
//!
//! A new step is its variant in [`Step`] (the job API), its file here, and its
//! line in [`of`]; the executor, the plan's validation and the partitioning
//! ask it through [`StepKind`].

pub(crate) mod archive;
pub(crate) mod batch_step;
pub(crate) mod delete;
pub(crate) mod import;
pub(crate) mod key_range;
pub(crate) mod sql;
pub(crate) mod transform;

use futures_util::future::BoxFuture;

use super::read::Prepared;
pub(crate) use super::to_i64;
use super::{Scanned, Size, Work};
use crate::db::{Conn, Value};
use crate::job::{Source, Step};
use crate::run::store::BatchCounts;
use crate::Result;

/// The step's file for `step`: the registration of every step.
pub(crate) fn of(step: &Step) -> Box<dyn StepKind + '_> {
    match step {
        Step::Transform(t) => Box::new(transform::TransformStep(t.as_ref())),
        Step::Sql(sql) => Box::new(sql::Sql(sql)),
        Step::Delete => Box::new(delete::Delete),
        Step::Archive { .. } => Box::new(archive::ArchiveStep),
        Step::Import(import) => Box::new(import::ImportStep(import.as_ref())),
        Step::Batch(step) => Box::new(batch_step::BatchStepKind(step.0.as_ref())),
    }
}

/// What a step is to the engine.
pub(crate) trait StepKind: Send + Sync {
    /// Why the step cannot work on `source`, if it cannot (the plan is refused).
    fn refuses(&self, source: &Source) -> Option<String>;

    /// Why the step must run in one worker, if it must (`--workers` is refused).
    fn one_worker(&self) -> Option<&'static str> {
        None
    }

    /// The table whose rows the step changes: its statistics are refreshed
    /// after the run, and it must exist before the run starts.
    fn changes(&self, source: &Source) -> Option<String> {
        match source {
            Source::Table { table, .. } => Some(table.clone()),
            Source::Range { .. }
            | Source::Csv { .. }
            | Source::Query { .. }
            | Source::Custom(_) => None,
        }
    }

    /// The one statement over a batch's key range `range` (a SQL condition),
    /// for a step that acts by one such statement: what the batch runs, and
    /// what a dry run asks the planner about.
    fn range_statement(&self, _conn: &Conn, _prep: &Prepared, _range: &str) -> Option<String> {
        None
    }

    /// What the keys in [`StepKind::range_statement`]'s range are qualified
    /// with (a quoted table name or an alias), for a statement that joins;
    /// `None`: bare column names.
    fn qualifier(&self, _conn: &Conn, _prep: &Prepared) -> Option<String> {
        None
    }

    /// Whether the batch's statement is its first, sent with its BEGIN
    /// ([`Conn::begin_with`]): known before the transaction, it needs no read.
    fn opens_with_statement(&self, _source: &Source, _work: &Work<'_>) -> bool {
        false
    }

    /// The batch's work inside its transaction, before its checkpoint.
    fn batch<'a>(&'a self, cx: Cx<'a>) -> BoxFuture<'a, Result<Did>>;
}

/// What a step's batch works with.
pub(crate) struct Cx<'a> {
    pub conn: &'a mut Conn,
    pub prep: &'a Prepared,
    pub source: &'a Source,
    pub run_id: i64,
    pub work: Work<'a>,
    pub size: Size,
    /// The archive of an archive step.
    pub archive: Option<&'a archive::Archive>,
    /// A dry run: the batch is rolled back, and records nothing of its own.
    pub dry: bool,
    /// The step's statement begins the batch's transaction.
    pub opening: bool,
}

/// How a step's batch went.
pub(crate) enum Did {
    Acted(Acted),
    /// Nothing was left after the cursor.
    Nothing,
    /// Rows read ahead changed before the guarded write: roll back and redo.
    Changed,
}

impl From<Option<Acted>> for Did {
    fn from(acted: Option<Acted>) -> Did {
        acted.map_or(Did::Nothing, Did::Acted)
    }
}

/// What a step's batch did, before its checkpoint.
pub(crate) struct Acted {
    /// Where the batch ended: its checkpoint.
    pub cursor: Vec<Value>,
    pub counts: BatchCounts,
    pub scanned: Scanned,
    /// An archive's length with this batch's rows.
    pub file_offset: Option<u64>,
    /// A batch step's batch read under row locks in its transaction: for its
    /// after-commit hook.
    pub locked: Option<Box<batch_step::Fetched>>,
}

/// Why a step that works on a table's rows cannot take `source`.
pub(crate) fn table_only(source: &Source) -> Option<String> {
    match source {
        Source::Table { .. } => None,
        Source::Range { .. } => Some("a range source takes a SQL step".into()),
        Source::Csv { .. } => Some("a CSV source takes an import step".into()),
        Source::Query { .. } => Some("a query source takes a batch step".into()),
        Source::Custom(_) => Some("a custom source takes a batch step".into()),
    }
}

/// A step's batch body for a source or work it does not take: the plan's
/// validation refuses these before a run, so reaching one is a bug.
pub(crate) fn unsupported(step: &str) -> crate::Error {
    crate::Error::JobFailed(format!(
        "{step} was given a batch it does not take (a source or a read ahead of another step); \
         this is a bug in datamig"
    ))
}
