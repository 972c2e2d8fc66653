//! A delete step: the batch's rows (those the source filter matches in its
//! key range) deleted by one statement.

use futures_util::future::BoxFuture;

use super::super::read::Prepared;
use super::super::Work;
use super::{key_range, table_only, Cx, Did, StepKind};
use crate::db::Conn;
use crate::job::Source;
use crate::Result;

/// `Step::Delete`.
pub(crate) struct Delete;

impl StepKind for Delete {
    fn refuses(&self, source: &Source) -> Option<String> {
        table_only(source)
    }

    fn range_statement(&self, conn: &Conn, prep: &Prepared, range: &str) -> Option<String> {
        Some(delete_statement(conn, prep, range))
    }

    fn opens_with_statement(&self, _source: &Source, work: &Work<'_>) -> bool {
        matches!(work, Work::Bounded { .. })
    }

    fn batch<'a>(&'a self, cx: Cx<'a>) -> BoxFuture<'a, Result<Did>> {
        Box::pin(key_range::statement(cx, self, "a delete step"))
    }
}

/// `DELETE FROM table WHERE range`.
pub(crate) fn delete_statement(conn: &Conn, prep: &Prepared, range: &str) -> String {
    format!(
        "DELETE FROM {} WHERE {range}",
        conn.quote_ident(&prep.table)
    )
}
