//! A set-based SQL step over an integer range (`{lo}` and `{hi}` in its SQL):
//! the next `rows` integers after the cursor, within the lane's bound.

use super::super::{failed, read::Prepared, Size};
use super::{to_i64, Acted};
use crate::db::{Conn, Value};
use crate::run::batch::Scanned;
use crate::run::store::BatchCounts;
use crate::Result;

/// The batch after `after` of `sql` over `start..=end`; `opening`: the
/// statement begins the batch's transaction.
pub(crate) async fn batch(
    conn: &mut Conn,
    prep: &Prepared,
    sql: &str,
    (start, end): (i64, i64),
    after: Option<&[Value]>,
    size: Size,
    opening: bool,
) -> Result<Option<Acted>> {
    let lo = match after.and_then(|k| k.first()).and_then(Value::as_i64) {
        Some(done) => done.saturating_add(1),
        None => start,
    };
    if lo > end {
        return Ok(None);
    }
    let end = match prep
        .end
        .as_deref()
        .and_then(|e| e.first())
        .and_then(Value::as_i64)
    {
        Some(bound) => bound.min(end),
        None => end,
    };
    if lo > end {
        return Ok(None);
    }
    let hi = lo.saturating_add(size.rows - 1).min(end);
    let sql = sql
        .replace("{lo}", &lo.to_string())
        .replace("{hi}", &hi.to_string());
    let changed = if opening {
        conn.begin_with(&sql, &[]).await
    } else {
        conn.execute(&sql, &[]).await
    }
    .map_err(|e| failed("the batch's statement failed", &e))?;
    let rows = hi - lo + 1;
    Ok(Some(Acted {
        cursor: vec![Value::Int(hi)],
        counts: BatchCounts {
            rows,
            changed: to_i64(changed),
            ..Default::default()
        },
        scanned: Scanned {
            matched: rows,
            ran_out: None,
        },
        file_offset: None,
    }))
}
