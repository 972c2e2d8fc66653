//! Each step's batch body, a file of its own: what a batch does inside its
//! transaction once its rows (or its key range) are known. [`super::txn`]
//! calls the one a batch's source and step name; each returns what it did as
//! an [`Acted`], or `None` when nothing was left.
//!
//! | step | file |
//! |---|---|
//! | a Rust transform of a table's rows | `transform.rs` |
//! | set-based SQL, delete and archive over a key range | `key_range.rs` (the archive's file: `archive.rs`) |
//! | set-based SQL over an integer range | `range.rs` |
//! | an import of a CSV file | `import.rs` |

pub(crate) mod archive;
pub(crate) mod import;
pub(crate) mod key_range;
pub(crate) mod range;
pub(crate) mod transform;

use super::Scanned;
use crate::db::Value;
use crate::run::store::BatchCounts;

/// What a step's batch did, before its checkpoint.
pub(crate) struct Acted {
    /// Where the batch ended: its checkpoint.
    pub cursor: Vec<Value>,
    pub counts: BatchCounts,
    pub scanned: Scanned,
    /// An archive's length with this batch's rows.
    pub file_offset: Option<u64>,
}

/// A count from the database as the engine's integer.
pub(crate) fn to_i64<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
