//! CSV sources: a batch is the next records of the file after the cursor,
//! `[records done, byte offset, line]` of where the next record begins. The
//! file is opened for each batch and read from that offset, so a batch's
//! checkpoint says exactly where the next one starts, whatever happened since.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::db::{Row, Value};
use crate::job::{CsvRecord, Import};
use crate::{Error, Result};

/// Where the next record begins: the cursor of a CSV source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At {
    pub records: i64,
    pub byte: u64,
    pub line: u64,
}

impl At {
    pub fn from_cursor(cursor: Option<&[Value]>) -> Result<Option<At>> {
        let Some(c) = cursor else {
            return Ok(None);
        };
        match c {
            [r, b, l] => match (r.as_i64(), b.as_i64(), l.as_i64()) {
                (Some(records), Some(byte), Some(line))
                    if records >= 0 && byte >= 0 && line >= 1 =>
                {
                    Ok(Some(At {
                        records,
                        byte: u64::try_from(byte).unwrap_or(0),
                        line: u64::try_from(line).unwrap_or(1),
                    }))
                }
                _ => Err(corrupt()),
            },
            _ => Err(corrupt()),
        }
    }

    pub fn cursor(&self) -> Vec<Value> {
        vec![
            Value::Int(self.records),
            Value::Int(i64::try_from(self.byte).unwrap_or(i64::MAX)),
            Value::Int(i64::try_from(self.line).unwrap_or(i64::MAX)),
        ]
    }
}

fn corrupt() -> Error {
    Error::CorruptCheckpoint(
        "a CSV run's checkpoint is not [records, byte offset, line]; start over with --restart"
            .into(),
    )
}

fn open(path: &Path) -> Result<csv::Reader<BufReader<File>>> {
    let file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        // Records with the wrong number of fields are rejected one by one, below.
        .flexible(true)
        .from_reader(BufReader::new(file)))
}

fn headers(rdr: &mut csv::Reader<BufReader<File>>, path: &Path) -> Result<Vec<String>> {
    let headers = rdr.byte_headers().map_err(|e| {
        Error::Usage(format!(
            "{}: cannot read its header line: {e}",
            path.display()
        ))
    })?;
    if headers.is_empty() {
        // Most likely the wrong file, or one still being written: refuse it,
        // rather than import nothing and report success.
        return Err(Error::Usage(format!(
            "{} is empty: an import file starts with its header line",
            path.display()
        )));
    }
    headers
        .iter()
        .map(|h| {
            std::str::from_utf8(h)
                .map(|s| s.trim().to_string())
                .map_err(|_| {
                    Error::Usage(format!(
                        "{}: its header line is not UTF-8; save the file as UTF-8",
                        path.display()
                    ))
                })
        })
        .collect()
}

/// The records of a file after `at` (all of them without it): the progress total.
pub(crate) fn count(path: &Path, at: Option<At>) -> Result<i64> {
    let mut rdr = open(path)?;
    headers(&mut rdr, path)?;
    if let Some(at) = at {
        seek(&mut rdr, at)?;
    }
    let mut record = csv::ByteRecord::new();
    let mut n = 0_i64;
    loop {
        match rdr.read_byte_record(&mut record) {
            Ok(true) => n += 1,
            Ok(false) => return Ok(n),
            // A malformed record is still a record: it will be rejected.
            Err(e) if e.is_io_error() => {
                return Err(Error::Usage(format!("{}: {e}", path.display())))
            }
            Err(_) => n += 1,
        }
    }
}

fn seek(rdr: &mut csv::Reader<BufReader<File>>, at: At) -> Result<()> {
    let mut pos = csv::Position::new();
    pos.set_byte(at.byte)
        .set_line(at.line)
        .set_record(u64::try_from(at.records).unwrap_or(0));
    rdr.seek(pos)
        .map_err(|e| Error::JobFailed(format!("cannot seek in the CSV file: {e}")))
}

/// One batch read from a CSV file.
pub(crate) struct Batch {
    /// Rows to insert, one per accepted record.
    pub rows: Vec<Row>,
    /// `(line N, reason)` of each rejected record.
    pub rejects: Vec<(String, String)>,
    /// Records read (accepted or not).
    pub records: i64,
    /// Where the next batch starts.
    pub next: At,
}

/// Reads up to `size` records after `at` (the first record without it) and
/// turns them into rows; `None` at the end of the file.
pub(crate) fn read(
    path: &Path,
    at: Option<At>,
    size: i64,
    import: &dyn Import,
) -> Result<Option<Batch>> {
    let mut rdr = open(path)?;
    let names = headers(&mut rdr, path)?;
    let mut next = match at {
        Some(at) => {
            seek(&mut rdr, at)?;
            at
        }
        None => {
            let p = rdr.position();
            At {
                records: 0,
                byte: p.byte(),
                line: p.line(),
            }
        }
    };
    let columns = import.columns().len();
    let (mut rows, mut rejects, mut records) = (Vec::new(), Vec::new(), 0_i64);
    let mut record = csv::ByteRecord::new();
    while records < size {
        let line = next.line;
        let read = rdr.read_byte_record(&mut record);
        let p = rdr.position();
        match read {
            Ok(false) => break,
            Err(e) if e.is_io_error() => {
                return Err(Error::JobFailed(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
            Err(e) => rejects.push((format!("line {line}"), format!("malformed CSV: {e}"))),
            Ok(true) => {
                let fields: std::result::Result<Vec<String>, _> = record
                    .iter()
                    .map(|f| std::str::from_utf8(f).map(str::to_string))
                    .collect();
                match fields {
                    Err(_) => rejects.push((
                        format!("line {line}"),
                        "not UTF-8: save the file as UTF-8".into(),
                    )),
                    Ok(fields) if fields.len() != names.len() => rejects.push((
                        format!("line {line}"),
                        format!(
                            "{} fields where the header has {}",
                            fields.len(),
                            names.len()
                        ),
                    )),
                    Ok(fields) => {
                        let r = CsvRecord {
                            headers: &names,
                            fields: &fields,
                            line,
                        };
                        match import.row(&r) {
                            Ok(values) if values.len() == columns => rows.push(values),
                            Ok(values) => {
                                return Err(Error::JobFailed(format!(
                                    "the import returned {} value(s) for {columns} column(s) at line {line}",
                                    values.len()
                                )))
                            }
                            Err(reason) => rejects.push((format!("line {line}"), reason)),
                        }
                    }
                }
            }
        }
        records += 1;
        next = At {
            records: next.records + 1,
            byte: p.byte(),
            line: p.line(),
        };
    }
    Ok((records > 0).then_some(Batch {
        rows,
        rejects,
        records,
        next,
    }))
}
