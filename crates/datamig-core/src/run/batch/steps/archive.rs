//! The archive file of an archive step: each batch's rows are appended and
//! synced before they are deleted, and the file is cut back to the run's
//! checkpoint whenever a batch rolls back.

use crate::db::{Row, Value};
use crate::{Error, Result};

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
    }
}
