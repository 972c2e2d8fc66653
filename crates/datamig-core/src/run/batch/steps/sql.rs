//! A set-based SQL step: over a table's key range, `{batch}` in its SQL
//! standing for the range and the source filter; over an integer range,
//! `{lo}` and `{hi}` for the batch's first and last number (the next
//! `size.rows` integers after the cursor, within the lane's bound).

use futures_util::future::BoxFuture;

use super::super::read::Prepared;
use super::super::{failed, Scanned, Work};
use super::{key_range, to_i64, unsupported, Acted, Cx, Did, StepKind};
use crate::db::{Conn, Value};
use crate::job::Source;
use crate::run::store::BatchCounts;
use crate::Result;

/// `Step::Sql`.
pub(crate) struct Sql<'a>(pub &'a str);

const NAME: &str = "a SQL step";

/// Where the batch's key range goes in a table source's SQL: `{batch}`, whose
/// keys are qualified with the table's name, or `{batch:alias}`, qualified with
/// the alias the statement gives the table (`UPDATE sessions s … WHERE {batch:s}`).
/// Returns the placeholder as written and its alias.
fn placeholder(sql: &str) -> Option<(&str, Option<&str>)> {
    let start = sql.find("{batch")?;
    let end = start + sql[start..].find('}')? + 1;
    let token = &sql[start..end];
    match token
        .strip_prefix("{batch:")
        .and_then(|t| t.strip_suffix('}'))
    {
        Some(alias)
            if !alias.is_empty() && alias.chars().all(|c| c.is_alphanumeric() || c == '_') =>
        {
            Some((token, Some(alias)))
        }
        Some(_) => None,
        None => (token == "{batch}").then_some((token, None)),
    }
}

impl StepKind for Sql<'_> {
    fn refuses(&self, source: &Source) -> Option<String> {
        let sql = self.0;
        match source {
            Source::Table { .. } if placeholder(sql).is_none() => Some(
                "its SQL step must contain {batch} (or {batch:alias}) where the batch's key range goes"
                    .into(),
            ),
            Source::Table { .. } if sql.matches("{batch").count() > 1 => {
                Some("its SQL step must contain {batch} once".into())
            }
            Source::Table { .. } if sql.contains('?') => {
                Some("its SQL step may not hold `?`: put parameters in the source filter".into())
            }
            Source::Range { .. } if !(sql.contains("{lo}") && sql.contains("{hi}")) => {
                Some("a range source's SQL step must contain {lo} and {hi}".into())
            }
            Source::Csv { .. } => Some("a CSV source takes an import step".into()),
            Source::Query { .. } => Some("a query source takes a batch step".into()),
            Source::Custom(_) => Some("a custom source takes a batch step".into()),
            Source::Table { .. } | Source::Range { .. } => None,
        }
    }

    fn qualifier(&self, conn: &Conn, prep: &Prepared) -> Option<String> {
        match placeholder(self.0) {
            Some((_, Some(alias))) => Some(alias.to_string()),
            _ => Some(conn.quote_ident(&prep.table)),
        }
    }

    fn range_statement(&self, _conn: &Conn, _prep: &Prepared, range: &str) -> Option<String> {
        let (token, _) = placeholder(self.0)?;
        Some(self.0.replace(token, &format!("({range})")))
    }

    fn opens_with_statement(&self, source: &Source, work: &Work<'_>) -> bool {
        matches!(
            (work, source),
            (Work::Bounded { .. }, _) | (Work::Serial { .. }, Source::Range { .. })
        )
    }

    fn batch<'a>(&'a self, cx: Cx<'a>) -> BoxFuture<'a, Result<Did>> {
        Box::pin(async move {
            match (cx.source, &cx.work) {
                (Source::Range { start, end }, Work::Serial { after, .. }) => {
                    let after = *after;
                    numbers(cx, self.0, (*start, *end), after).await
                }
                (Source::Table { .. }, _) => key_range::statement(cx, self, NAME).await,
                _ => Err(unsupported(NAME)),
            }
        })
    }
}

/// The batch after `after` of `sql` over `start..=end`.
async fn numbers<'a>(
    cx: Cx<'a>,
    sql: &'a str,
    (start, end): (i64, i64),
    after: Option<&'a [Value]>,
) -> Result<Did> {
    let Cx {
        conn,
        prep,
        size,
        opening,
        ..
    } = cx;
    let lo = match after.and_then(|k| k.first()).and_then(Value::as_i64) {
        Some(done) => done.saturating_add(1),
        None => start,
    };
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
        return Ok(Did::Nothing);
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
    Ok(Did::Acted(Acted {
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
        locked: None,
    }))
}
