//! An archive step: the batch's rows are read under row locks, appended to
//! the archive file and synced, then deleted — the DELETE deletes exactly the
//! rows written — and the file is cut back to the run's checkpoint whenever a
//! batch rolls back.

use futures_util::future::BoxFuture;

use super::super::read::{fetch_rows, Prepared};
use super::super::{failed, Work};
use super::delete::delete_statement;
use super::{key_range, to_i64, unsupported, Acted, Cx, Did, StepKind};
use crate::db::{Conn, Row, Value};
use crate::job::Source;
use crate::run::store::BatchCounts;
use crate::{Error, Result};

/// `Step::Archive`.
pub(crate) struct ArchiveStep;

const NAME: &str = "an archive step";

impl StepKind for ArchiveStep {
    fn refuses(&self, source: &Source) -> Option<String> {
        match source {
            Source::Table { .. } => None,
            Source::Range { .. } => Some("a range source takes a SQL step".into()),
            Source::Csv { .. } => Some("an archive step deletes from a table source".into()),
            Source::Query { .. } => Some("a query source takes a batch step".into()),
            Source::Custom(_) => Some("a custom source takes a batch step".into()),
        }
    }

    fn one_worker(&self) -> Option<&'static str> {
        Some("an archive step appends to one file in key order and runs in one worker; drop --workers")
    }

    /// Its DELETE: the statement a dry run asks the planner about.
    fn range_statement(&self, conn: &Conn, prep: &Prepared, range: &str) -> Option<String> {
        Some(delete_statement(conn, prep, range))
    }

    fn batch<'a>(&'a self, cx: Cx<'a>) -> BoxFuture<'a, Result<Did>> {
        Box::pin(batch(cx))
    }
}

/// Archives and deletes the batch's key range; the archive's length with its
/// rows is the batch's file offset.
async fn batch(cx: Cx<'_>) -> Result<Did> {
    let Cx {
        conn,
        prep,
        work,
        size,
        archive,
        dry,
        ..
    } = cx;
    if matches!(work, Work::Guarded(_)) {
        return Err(unsupported(NAME));
    }
    let Some(archive) = archive else {
        return Err(Error::JobFailed(
            "an archive step without its archive".into(),
        ));
    };
    let Some((after, range)) = key_range::find(conn, prep, work, size, NAME).await? else {
        return Ok(Did::Nothing);
    };
    let bound = range.bound();
    let (range, params) = prep.conditions(conn, true, after, Some(&bound.last));
    let table = conn.quote_ident(&prep.table);
    // The rows, locked until the batch commits, then written and synced,
    // then deleted: the DELETE deletes exactly the rows written.
    archive.rewind()?;
    let mut columns: Vec<String> = prep.keys.iter().map(|k| conn.quote_ident(k)).collect();
    columns.extend(prep.columns.iter().map(|c| conn.quote_ident(c)));
    let select = format!(
        "SELECT {} FROM {table} WHERE {range} ORDER BY {}{}",
        columns.join(", "),
        prep.key_list(conn),
        conn.for_update()
    );
    let rows = fetch_rows(conn, &select, &params).await?;
    let written = if dry || rows.is_empty() {
        None
    } else {
        Some(archive.append(&rows)?)
    };
    let deleted = conn
        .execute(&delete_statement(conn, prep, &range), &params)
        .await
        .map_err(|e| failed("the batch's delete failed", &e))?;
    if deleted != u64::try_from(rows.len()).unwrap_or(u64::MAX) {
        return Err(Error::JobFailed(format!(
            "the batch archived {} rows but its delete matched {deleted}; it was rolled back",
            rows.len()
        )));
    }
    Ok(Did::Acted(Acted {
        cursor: bound.last.clone(),
        counts: BatchCounts {
            rows: bound.scanned.matched,
            changed: to_i64(deleted),
            ..Default::default()
        },
        scanned: bound.scanned,
        file_offset: if dry {
            None
        } else {
            Some(written.unwrap_or(archive.committed))
        },
        locked: None,
    }))
}

/// The CSV file an archive step writes deleted rows to, and its length at the
/// last committed checkpoint: anything after it belongs to a batch that did not
/// commit, and is cut off before the next batch writes.
pub(crate) struct Archive {
    pub(crate) path: std::path::PathBuf,
    pub(crate) committed: u64,
}

impl Archive {
    /// The archive of a run: cut back to `checkpoint` (a resumed run's), or, for
    /// a new run, as it is (with a header line written if it is empty).
    pub fn open(
        path: &std::path::Path,
        header: &[String],
        checkpoint: Option<u64>,
    ) -> Result<Archive> {
        let io = |action: &'static str, e: std::io::Error| Error::io(action, path, e);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io("cannot open the archive", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("cannot read the archive", e))?
            .len();
        let committed = match checkpoint {
            Some(at) if len < at => {
                return Err(Error::CorruptCheckpoint(format!(
                    "the archive {} is {len} bytes, shorter than the {at} its run's checkpoint recorded: rows \
                     that were archived and deleted are missing from it. Restore the file, or start over with \
                     --restart (a new run appends to it)",
                    path.display()
                )))
            }
            Some(at) => at,
            None if len == 0 => {
                let mut w = csv::Writer::from_writer(&file);
                w.write_record(header).map_err(|e| io("cannot write the archive", e.into()))?;
                w.flush().map_err(|e| io("cannot write the archive", e))?;
                drop(w);
                file.sync_data().map_err(|e| io("cannot write the archive", e))?;
                file.metadata().map_err(|e| io("cannot read the archive", e))?.len()
            }
            None => len,
        };
        let archive = Archive {
            path: path.to_path_buf(),
            committed,
        };
        archive.rewind()?;
        Ok(archive)
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Cuts off what a batch that did not commit wrote.
    pub(crate) fn rewind(&self) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| Error::io("cannot open the archive", &self.path, e))?;
        if file.metadata().map(|m| m.len()).unwrap_or(0) > self.committed {
            file.set_len(self.committed)
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io("cannot cut back the archive", &self.path, e))?;
        }
        Ok(())
    }

    /// Appends rows and syncs them to disk; returns the file's new length.
    pub(crate) fn append(&self, rows: &[Row]) -> Result<u64> {
        let io = |e: std::io::Error| Error::io("cannot write the archive", &self.path, e);
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(&file));
        for row in rows {
            w.write_record(row.iter().map(field))
                .map_err(|e| io(e.into()))?;
        }
        w.flush().map_err(io)?;
        drop(w);
        file.sync_data().map_err(io)?;
        file.metadata().map(|m| m.len()).map_err(io)
    }
}

/// A value as a CSV field.
fn field(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(t) => t.clone(),
        Value::Bytes(b) => format!(
            "\\x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
        Value::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
        Value::Decimal(d) => d.clone(),
        Value::Json(j) => j.to_string(),
        Value::Array(_) => v.to_json().to_string(),
    }
}
