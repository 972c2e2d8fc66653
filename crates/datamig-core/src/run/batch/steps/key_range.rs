//! Set-based SQL, delete and archive steps: one statement over the batch's
//! key range `(cursor, bound]` and the source filter, bounded before (see
//! `read.rs`). An archive's rows are read under row locks, written to its
//! file and synced, then deleted: the delete deletes exactly the rows written.

use super::super::failed;
use super::super::read::{fetch_rows, Bound, Prepared};
use super::archive::Archive;
use super::{to_i64, Acted};
use crate::db::{Conn, Value};
use crate::job::Step;
use crate::run::store::BatchCounts;
use crate::{Error, Result};

/// Runs a SQL, delete or archive step over the key range `(after, bound.last]`;
/// for an archive, also the archive's length with this batch's rows.
/// `opening`: the statement begins the batch's transaction.
#[allow(clippy::too_many_arguments)] // the batch's parts, as `body` has them
pub(crate) async fn batch(
    conn: &mut Conn,
    prep: &Prepared,
    step: &Step,
    after: Option<&[Value]>,
    bound: &Bound,
    archive: Option<&Archive>,
    dry: bool,
    opening: bool,
) -> Result<Acted> {
    let (range, params) = prep.conditions(conn, true, after, Some(&bound.last));
    let table = conn.quote_ident(&prep.table);
    if let Step::Archive { .. } = step {
        let Some(archive) = archive else {
            return Err(Error::JobFailed(
                "an archive step without its archive".into(),
            ));
        };
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
            .execute(&format!("DELETE FROM {table} WHERE {range}"), &params)
            .await
            .map_err(|e| failed("the batch's delete failed", &e))?;
        if deleted != u64::try_from(rows.len()).unwrap_or(u64::MAX) {
            return Err(Error::JobFailed(format!(
                "the batch archived {} rows but its delete matched {deleted}; it was rolled back",
                rows.len()
            )));
        }
        let counts = BatchCounts {
            rows: bound.scanned.matched,
            changed: to_i64(deleted),
            ..Default::default()
        };
        let offset = if dry {
            None
        } else {
            Some(written.unwrap_or(archive.committed))
        };
        return Ok(Acted {
            cursor: bound.last.clone(),
            counts,
            scanned: bound.scanned,
            file_offset: offset,
        });
    }
    let sql = match step {
        Step::Delete => format!(
            "DELETE FROM {} WHERE {range}",
            conn.quote_ident(&prep.table)
        ),
        Step::Sql(sql) => sql.replace("{batch}", &format!("({range})")),
        Step::Transform(_) | Step::Import(_) | Step::Archive { .. } => {
            unreachable!("these read their rows")
        }
    };
    let changed = if opening {
        conn.begin_with(&sql, &params).await
    } else {
        conn.execute(&sql, &params).await
    }
    .map_err(|e| failed("the batch's statement failed", &e))?;
    Ok(Acted {
        cursor: bound.last.clone(),
        counts: BatchCounts {
            rows: bound.scanned.matched,
            changed: to_i64(changed),
            ..Default::default()
        },
        scanned: bound.scanned,
        file_offset: None,
    })
}
