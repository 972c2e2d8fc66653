//! An import step: the next records of a CSV file after the cursor (its
//! record count, byte offset and line), inserted into the job's table; records
//! that do not parse are rejected with their line.

use std::path::Path;

use futures_util::future::BoxFuture;

use super::super::{failed, Size, Work};
use super::{to_i64, unsupported, Acted, Cx, Did, StepKind};
use crate::db::{Conn, Row, Value};
use crate::job::{Import, OnConflict, Source};
use crate::run::batch::Scanned;
use crate::run::store::{self, BatchCounts};
use crate::Result;

/// `Step::Import`.
pub(crate) struct ImportStep<'a>(pub &'a dyn Import);

const NAME: &str = "an import step";

impl StepKind for ImportStep<'_> {
    fn refuses(&self, source: &Source) -> Option<String> {
        match source {
            Source::Csv { .. } => None,
            Source::Table { .. }
            | Source::Range { .. }
            | Source::Query { .. }
            | Source::Custom(_) => Some("an import step reads a CSV source".into()),
        }
    }

    fn one_worker(&self) -> Option<&'static str> {
        Some("a CSV import reads one file in order and runs in one worker; drop --workers")
    }

    fn changes(&self, _source: &Source) -> Option<String> {
        Some(self.0.table())
    }

    fn batch<'a>(&'a self, cx: Cx<'a>) -> BoxFuture<'a, Result<Did>> {
        Box::pin(async move {
            let (Source::Csv { path }, Work::Serial { after, .. }) = (cx.source, &cx.work) else {
                return Err(unsupported(NAME));
            };
            let after = *after;
            let (conn, run_id, size, dry) = (cx.conn, cx.run_id, cx.size, cx.dry);
            Ok(batch(conn, run_id, path, self.0, after, size, dry)
                .await?
                .into())
        })
    }
}

/// The batch of `size.rows` records of `path` after `after`.
async fn batch(
    conn: &mut Conn,
    run_id: i64,
    path: &Path,
    import: &dyn Import,
    after: Option<&[Value]>,
    size: Size,
    dry: bool,
) -> Result<Option<Acted>> {
    let at = crate::run::csv_source::At::from_cursor(after)?;
    let Some(read) = crate::run::csv_source::read(path, at, size.rows, import)? else {
        return Ok(None);
    };
    let changed = insert(conn, &import.table(), &import.columns(), &read.rows).await?;
    if !read.rejects.is_empty() && !dry {
        store::reject(conn, run_id, &read.rejects)
            .await
            .map_err(|e| failed("recording rejected records failed", &e))?;
    }
    Ok(Some(Acted {
        cursor: read.next.cursor(),
        counts: BatchCounts {
            rows: read.records,
            changed,
            rejected: to_i64(read.rejects.len()),
            elapsed_ms: 0,
        },
        scanned: Scanned {
            matched: read.records,
            ran_out: None,
        },
        file_offset: None,
        locked: None,
    }))
}

/// Inserts an import's rows. Returns the rows inserted.
async fn insert(conn: &mut Conn, table: &str, columns: &[String], rows: &[Row]) -> Result<i64> {
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let parts = conn
        .insert_rows(table, &columns, &[], rows, OnConflict::Fail, &[])
        .await
        .map_err(|e| failed("inserting the batch failed", &e))?;
    Ok(to_i64(parts.iter().map(|(n, _)| n).sum::<u64>()))
}
