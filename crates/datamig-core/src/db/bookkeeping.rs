//! The names of datamig's own tables and the columns later versions added:
//! one list, read by [`super::Conn::ensure_bookkeeping`] and by every check
//! that the tables are complete.

/// Columns added to datamig's tables after their first release: table, column,
/// and its type in a syntax all three databases take. [`Conn::ensure_bookkeeping`]
/// adds those missing from a table an earlier version created; a new table gets
/// them the same way, so each is defined once, here.
pub const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // A pause, resume or cancel asked for by `datamig pause|resume|cancel`.
    ("datamig_runs", "request", "VARCHAR(20)"),
    // Who asked for it, and when.
    ("datamig_runs", "request_by", "VARCHAR(255)"),
    // A file's length matching the checkpoint: a CSV import's read position, an
    // archive's size (a file written past it belongs to a batch that rolled back).
    ("datamig_runs", "file_offset", "BIGINT"),
    // The run's rate limit (`--rate`, as `Rate::canonical` writes it), which
    // every process on the run keeps to.
    ("datamig_runs", "rate", "VARCHAR(40)"),
];

/// datamig's own tables, all created by [`Conn::ensure_bookkeeping`].
pub const BOOKKEEPING_TABLES: &[&str] = &[
    "datamig_schema_history",
    "datamig_schema_log",
    "datamig_runs",
    "datamig_rejects",
    "datamig_batches",
    "datamig_partitions",
];
