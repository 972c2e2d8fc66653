//! What the key-range steps (set-based SQL over a table, delete, archive)
//! share: the batch's key range `(cursor, last]`, bounded ahead on the reader
//! connection or found now (see `read.rs`), and its one statement over it
//! with the source filter.

use super::super::failed;
use super::super::read::{bound, Bound, Prepared};
use super::super::{Size, Work};
use super::{to_i64, unsupported, Acted, Cx, Did, StepKind};
use crate::db::{Conn, Value};
use crate::run::store::BatchCounts;
use crate::Result;

/// A batch's key range: bounded ahead of its transaction, or found in it.
pub(crate) enum Range<'a> {
    Ahead(&'a Bound),
    Found(Bound),
}

impl Range<'_> {
    pub(crate) fn bound(&self) -> &Bound {
        match self {
            Range::Ahead(b) => b,
            Range::Found(b) => b,
        }
    }
}

/// The key range of the batch `work` names: where it starts after, and its
/// bound; `None` when no row is left. `step` names the step in a bug's message.
pub(crate) async fn find<'a>(
    conn: &mut Conn,
    prep: &Prepared,
    work: Work<'a>,
    size: Size,
    step: &'static str,
) -> Result<Option<(Option<&'a [Value]>, Range<'a>)>> {
    match work {
        Work::Bounded { after, bound } => Ok(Some((after, Range::Ahead(bound)))),
        Work::Serial { after, .. } => Ok(bound(conn, prep, after, size)
            .await?
            .map(|b| (after, Range::Found(b)))),
        Work::Guarded(_) | Work::Fetched(_) => Err(unsupported(step)),
    }
}

/// Runs `step`'s statement over the batch's key range.
pub(crate) async fn statement<'a, S: StepKind>(
    cx: Cx<'a>,
    step: &'a S,
    name: &'static str,
) -> Result<Did> {
    let Cx {
        conn,
        prep,
        work,
        size,
        opening,
        ..
    } = cx;
    let Some((after, range)) = find(conn, prep, work, size, name).await? else {
        return Ok(Did::Nothing);
    };
    let bound = range.bound();
    let table = step.qualifier(conn, prep);
    let (condition, params) =
        prep.conditions_of(conn, table.as_deref(), true, after, Some(&bound.last));
    let Some(sql) = step.range_statement(conn, prep, &condition) else {
        return Err(unsupported(name));
    };
    let changed = if opening {
        conn.begin_with(&sql, &params).await
    } else {
        conn.execute(&sql, &params).await
    }
    .map_err(|e| failed("the batch's statement failed", &e))?;
    Ok(Did::Acted(Acted {
        cursor: bound.last.clone(),
        counts: BatchCounts {
            rows: bound.scanned.matched,
            changed: to_i64(changed),
            ..Default::default()
        },
        scanned: bound.scanned,
        file_offset: None,
        locked: None,
    }))
}
