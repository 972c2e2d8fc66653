//! `index_uploads`: records each file of a directory (`--arg dir=PATH`) in
//! `uploads(name, bytes, sha256)`. Its source is the job's own
//! ([`CustomSource`]): the directory's files in name order, a page per batch,
//! the last file name the cursor the checkpoint keeps — as a listing of object
//! storage or an API's pages would be. Each batch hashes its files outside the
//! transaction and inserts their rows inside it, exactly once: a file already
//! recorded (a rerun over the same directory) is left as it is.

use std::path::PathBuf;

use datamig_core::prelude::*;
use sha2::Digest;

pub struct IndexUploads;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The directory whose files are recorded.
    pub dir: PathBuf,
}

impl Job for IndexUploads {
    type Args = Args;

    fn name(&self) -> &'static str {
        "index_uploads"
    }

    fn description(&self) -> &'static str {
        "record each file of a directory (name, size, SHA-256) in uploads, over a source of the job's own"
    }

    fn arg_help(&self) -> &'static [(&'static str, &'static str)] {
        &[("dir", "the directory whose files are recorded")]
    }

    fn requires_migration(&self) -> Option<i64> {
        Some(20261204090400) // create_uploads
    }

    fn plan(&self, args: &Args, _ctx: &PlanContext) -> Result<Plan, String> {
        if !args.dir.is_dir() {
            return Err(format!("{} is not a directory", args.dir.display()));
        }
        Ok(Plan {
            source: Source::custom(Files {
                dir: args.dir.clone(),
            }),
            step: Step::batch(Record {
                dir: args.dir.clone(),
            }),
            checks: vec![Check::new(
                "uploads recorded",
                "SELECT count(*) FROM uploads",
                Expect::Report,
            )],
        })
    }
}

/// A directory's files, in name order: the cursor is the last name given.
struct Files {
    dir: PathBuf,
}

impl Files {
    /// The names of the directory's files after `after`, in order.
    fn after(&self, after: Option<&String>) -> Result<Vec<(String, u64)>, StepError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| StepError::retry(format!("cannot list {}: {e}", self.dir.display())))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                StepError::retry(format!("cannot list {}: {e}", self.dir.display()))
            })?;
            let meta = entry
                .metadata()
                .map_err(|e| StepError::retry(e.to_string()))?;
            // A name that is not UTF-8 cannot be a key: such files are left out.
            if let (true, Some(name)) = (meta.is_file(), entry.file_name().to_str()) {
                if after.is_none_or(|a| name > a.as_str()) {
                    files.push((name.to_string(), meta.len()));
                }
            }
        }
        files.sort();
        Ok(files)
    }
}

impl CustomSource for Files {
    type Cursor = String;

    fn key(&self) -> Vec<String> {
        vec!["name".into()]
    }

    fn columns(&self) -> Vec<String> {
        vec!["bytes".into()]
    }

    async fn page(&self, after: Option<&String>, limit: usize) -> Result<Page<String>, StepError> {
        let mut files = self.after(after)?;
        files.truncate(limit);
        let cursor = files
            .last()
            .map(|(name, _)| name.clone())
            .or_else(|| after.cloned())
            .unwrap_or_default();
        let rows = files
            .into_iter()
            .map(|(name, bytes)| {
                vec![
                    Value::Text(name),
                    Value::Int(i64::try_from(bytes).unwrap_or(i64::MAX)),
                ]
            })
            .collect();
        Ok(Page { rows, cursor })
    }

    async fn remaining(&self, after: Option<&String>) -> Option<i64> {
        self.after(after)
            .ok()
            .and_then(|f| i64::try_from(f.len()).ok())
    }
}

/// Each batch's files hashed outside the transaction, their rows inserted in it.
struct Record {
    dir: PathBuf,
}

/// A row of `uploads`, as the step writes it.
#[derive(serde::Serialize)]
struct Upload {
    name: String,
    bytes: i64,
    sha256: String,
}

impl BatchStep for Record {
    type Outside = Vec<Upload>;

    async fn outside(&self, batch: &Batch) -> Result<Vec<Upload>, StepError> {
        let mut uploads = Vec::with_capacity(batch.len());
        for row in batch.rows() {
            let name = row.str("name").unwrap_or_default().to_string();
            let content = tokio::fs::read(self.dir.join(&name))
                .await
                .map_err(|e| StepError::retry(format!("cannot read {name}: {e}")))?;
            let sha256 = sha2::Sha256::digest(&content)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            uploads.push(Upload {
                name,
                bytes: row.i64("bytes").unwrap_or_default(),
                sha256,
            });
        }
        Ok(uploads)
    }

    async fn write(
        &self,
        _batch: &Batch,
        uploads: &Vec<Upload>,
        tx: &mut BatchTx<'_>,
    ) -> Result<(), StepError> {
        // A file already recorded (a run again over the same directory) is
        // left as it is, and not counted as changed: one query for the batch.
        let names: Vec<Value> = uploads
            .iter()
            .map(|u| Value::Text(u.name.clone()))
            .collect();
        let known: std::collections::HashSet<String> = tx
            .fetch_in("SELECT name FROM uploads WHERE name IN ({list})", &names)
            .await?
            .into_iter()
            .filter_map(|row| row.into_iter().next().and_then(Value::into_string))
            .collect();
        let new: Vec<&Upload> = uploads
            .iter()
            .filter(|u| !known.contains(&u.name))
            .collect();
        // Not OnConflict::Ignore: a file inserted twice would be a bug, and fails.
        let recorded = tx.insert_from("uploads", &new, OnConflict::Fail).await?;
        tx.set_changed(recorded);
        Ok(())
    }
}
