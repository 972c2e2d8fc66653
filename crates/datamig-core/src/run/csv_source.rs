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

/// The file's records one by one, as the `csv` crate reads them, except a
/// record whose quoted field is never closed: the crate reads such a field to
/// the end of the file, so that one bad record swallows every record after
/// it. Here it ends at the end of its line, is reported malformed, and the
/// records after it are read as they are.
struct Records {
    rdr: csv::Reader<BufReader<File>>,
    /// The file again, to look at a record's raw bytes.
    raw: File,
    len: u64,
    /// Where the next record begins.
    at: At,
}

/// What [`Records::next`] read.
enum Next {
    End,
    /// A record (in the caller's buffer), or why it is malformed.
    Record(std::result::Result<(), String>),
}

impl Records {
    fn open(path: &Path, at: Option<At>) -> Result<(Records, Vec<String>)> {
        let mut rdr = open(path)?;
        let names = headers(&mut rdr, path)?;
        let at = match at {
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
        let raw = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        let len = raw
            .metadata()
            .map_err(|e| Error::io("cannot read", path, e))?
            .len();
        Ok((Records { rdr, raw, len, at }, names))
    }

    /// Reads the next record into `record`; `self.at` moves past it.
    fn next(&mut self, record: &mut csv::ByteRecord, path: &Path) -> Result<Next> {
        let start = self.at;
        let read = self.rdr.read_byte_record(record);
        let p = self.rdr.position().clone();
        let read = match read {
            Ok(false) => return Ok(Next::End),
            Err(e) if e.is_io_error() => {
                return Err(Error::JobFailed(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
            Err(e) => Err(format!("malformed CSV: {e}")),
            Ok(true) => Ok(()),
        };
        // Only a record that ran over several lines, or to the end of the file,
        // can hold an unclosed quote: look at its bytes then.
        if p.line() > start.line + 1 || p.byte() >= self.len {
            if let Some((why, line_end)) = self.unclosed_quote(start.byte, p.byte(), path)? {
                self.at = At {
                    records: start.records + 1,
                    byte: line_end,
                    line: start.line + 1,
                };
                seek(&mut self.rdr, self.at)?;
                return Ok(Next::Record(Err(format!(
                    "malformed CSV: {why}; the record is taken to end with its line, and the next line \
                     is read as the next record"
                ))));
            }
        }
        self.at = At {
            records: start.records + 1,
            byte: p.byte(),
            line: p.line(),
        };
        Ok(Next::Record(read))
    }

    /// Checks the record's bytes `from..to` as RFC 4180 has them: a quoted
    /// field ends at a lone `"` that a delimiter, a line end or the end of the
    /// file follows. The `csv` crate reads on past a quote that does not close
    /// that way, across lines, taking the records after it into one field.
    /// Returns what is wrong and where the record's first line ends.
    fn unclosed_quote(&mut self, from: u64, to: u64, path: &Path) -> Result<Option<(String, u64)>> {
        use std::io::{Read as _, Seek as _};
        let io = |e| Error::io("cannot read", path, e);
        self.raw.seek(std::io::SeekFrom::Start(from)).map_err(io)?;
        let mut bytes = Vec::new();
        (&mut self.raw)
            .take(to - from)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let at = |i: usize| from + u64::try_from(i).unwrap_or(0);
        let line_end = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(to, |i| at(i) + 1);
        let mut i = 0;
        let mut field_start = true;
        while i < bytes.len() {
            match bytes[i] {
                b'"' if field_start => {
                    let opens = i;
                    i += 1;
                    loop {
                        match bytes.get(i) {
                            None => {
                                return Ok(Some((
                                    format!(
                                        "the quoted field that opens at byte {} is never closed",
                                        at(opens)
                                    ),
                                    line_end,
                                )))
                            }
                            Some(b'"') if bytes.get(i + 1) == Some(&b'"') => i += 2,
                            Some(b'"') => break,
                            Some(_) => i += 1,
                        }
                    }
                    // The closing quote must end the field.
                    match bytes.get(i + 1) {
                        None | Some(b',' | b'\r' | b'\n') => {}
                        Some(_) => {
                            return Ok(Some((
                                format!(
                                    "the quoted field that opens at byte {} is not closed where a field \
                                     ends (a quote at byte {} has text after it)",
                                    at(opens),
                                    at(i)
                                ),
                                line_end,
                            )))
                        }
                    }
                    i += 1;
                    field_start = false;
                }
                b',' => {
                    field_start = true;
                    i += 1;
                }
                b'\n' => return Ok(None), // the record's end
                _ => {
                    field_start = false;
                    i += 1;
                }
            }
        }
        Ok(None)
    }
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
    let (mut records, _) = Records::open(path, at)?;
    let mut record = csv::ByteRecord::new();
    let mut n = 0_i64;
    // A malformed record is still a record: it will be rejected.
    while let Next::Record(_) = records.next(&mut record, path)? {
        n += 1;
    }
    Ok(n)
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
    let (mut file, names) = Records::open(path, at)?;
    let columns = import.columns().len();
    let (mut rows, mut rejects, mut records) = (Vec::new(), Vec::new(), 0_i64);
    let mut record = csv::ByteRecord::new();
    while records < size {
        let line = file.at.line;
        match file.next(&mut record, path)? {
            Next::End => break,
            Next::Record(Err(why)) => rejects.push((format!("line {line}"), why)),
            Next::Record(Ok(())) => {
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
    }
    let next = file.at;
    Ok((records > 0).then_some(Batch {
        rows,
        rejects,
        records,
        next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Any;

    impl Import for Any {
        fn table(&self) -> String {
            "t".into()
        }
        fn columns(&self) -> Vec<String> {
            vec!["a".into()]
        }
        fn row(&self, record: &CsvRecord<'_>) -> std::result::Result<Vec<Value>, String> {
            Ok(vec![Value::Text(record.required("a")?.to_string())])
        }
    }

    /// Whatever the bytes, the records read in batches (imported or rejected)
    /// are as many as the progress count says, and the batches end.
    #[test]
    fn every_record_is_read_once_whatever_the_quotes() {
        let pieces: &[&str] = &["x", "\"", "\"\"", ",", "\n", "\r\n", "y z", "\"q\"", "é"];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        for seed in 0..400_u64 {
            let mut text = String::from("a,b\n");
            let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            for _ in 0..(seed % 40) {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(pieces[usize::try_from(state >> 33).unwrap() % pieces.len()]);
            }
            std::fs::write(&path, &text).unwrap();
            let total = count(&path, None).unwrap();
            let (mut at, mut seen, mut batches) = (None, 0, 0);
            while let Some(b) = read(&path, at, 1 + i64::try_from(seed % 3).unwrap(), &Any).unwrap()
            {
                assert_eq!(
                    b.records,
                    i64::try_from(b.rows.len() + b.rejects.len()).unwrap()
                );
                seen += b.records;
                at = Some(b.next);
                batches += 1;
                assert!(batches < 1000, "{text:?}: no end");
            }
            assert_eq!(seen, total, "{text:?}");
        }
    }
}
