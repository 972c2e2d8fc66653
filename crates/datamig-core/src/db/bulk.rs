//! What a bulk write of a batch's new values needs to know: [`BulkUpdate`],
//! and the [`Guard`] of a write whose rows were read outside its transaction.

use super::Value;

/// A bulk write of new values, keyed by the source key, bounded to the batch's
/// key range (so the planner uses the index: see BENCHMARKS.md).
#[derive(Debug, Clone)]
pub struct BulkUpdate {
    pub table: String,
    pub keys: Vec<String>,
    pub sets: Vec<String>,
    /// SQL types of `keys` then `sets`, where the driver casts (PostgreSQL).
    pub types: Vec<String>,
    /// The first key column's lowest and highest value in the batch.
    pub lo: Value,
    pub hi: Value,
    /// Write a row only if it is as it was read; see [`Guard`].
    pub guard: Option<Guard>,
    /// Each row carries, last (after any guard values), this column's value as
    /// read in the batch's transaction, which finds the row in one search
    /// where its keys need two ([`Conn::row_locator`]: SQLite's rowid behind a
    /// key that is not it). The keys are still compared.
    pub locator: Option<String>,
}

/// For a write whose rows were read outside its transaction (overlapped with the
/// previous batch's write): each row carries, after its keys and new values, the
/// values [`Conn::guard_select`] read with it, and is written only if the row is
/// unchanged since and still matches the source filter. The caller compares the
/// rows written with the rows given and redoes the batch under row locks when
/// they differ.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The source columns the transform read.
    pub columns: Vec<String>,
    /// Their SQL types, from [`Conn::column_types`].
    pub types: Vec<String>,
    /// The source filter (`?` placeholders) and its parameters.
    pub filter: Option<(String, Vec<Value>)>,
}

/// What to do when an inserted row has the unique key of a row already there.
#[derive(Debug, Clone, Copy)]
pub enum OnConflict<'a> {
    /// Fail the statement (and so the batch).
    Fail,
    /// Keep the row that is there, and insert nothing for this one.
    Ignore,
    /// Update these columns of the row that is there with the new values; the
    /// unique key in conflict is `on` (PostgreSQL and SQLite name it; MariaDB
    /// takes any unique key).
    Update {
        on: &'a [&'a str],
        set: &'a [&'a str],
    },
}
