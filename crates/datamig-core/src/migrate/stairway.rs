//! `schema test`: proves that every down reverses its up, on a scratch database
//! (the "stairway" test of pytest-alembic): for each migration in order, apply
//! it, snapshot the schema, revert it, compare with the schema before it, and
//! apply it again, comparing with the first application.
//!
//! A migration whose down does not reverse its up is reported, and the climb
//! goes on from the state its up leaves (a new scratch database with the ups
//! so far applied), so that one run names every asymmetric migration of the
//! set. An irreversible migration is applied and its reversal not tried.

use crate::db::{Conn, ConnectOptions, Scratch};
use crate::{Error, Result};

use super::{apply_down, apply_up, Migration, Out};

/// Runs the stairway on a fresh database created beside `url`'s, until it is
/// done or `interrupt` completes (Ctrl-C, SIGTERM): either way every scratch
/// database is dropped before this returns.
pub async fn schema_test(
    url: &crate::config::DatabaseUrl,
    opts: &ConnectOptions,
    scratch_name: Option<&str>,
    migrations: &[Migration],
    out: Out<'_>,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<usize> {
    let mut problems = Vec::new();
    tokio::pin!(interrupt);
    let mut from = 0;
    while from < migrations.len() {
        let scratch = Scratch::create_named(url, opts, scratch_name).await?;
        if from == 0 {
            out(format!("scratch database: {}", scratch.url));
        } else {
            out(format!(
                "going on from {} on a new scratch database",
                migrations[from - 1].id()
            ));
        }
        let climb = async {
            let mut conn = Conn::connect(&scratch.url, opts).await?;
            conn.ensure_bookkeeping().await?;
            let result = climb(&mut conn, migrations, from, out).await;
            conn.close().await;
            result
        };
        // Interrupted or not, the scratch database is dropped before anything is said.
        let climbed = tokio::select! {
            result = climb => Some(result),
            () = &mut interrupt => None,
        };
        let dropped = scratch.drop_now().await;
        let Some(stop) = climbed else {
            dropped?;
            return Err(Error::Interrupted(
                "schema test interrupted; its scratch database is dropped, nothing else was touched".into(),
            ));
        };
        let stop = stop?;
        dropped?;
        match stop {
            Stop::Done => break,
            Stop::Asymmetric { at, problem } => {
                problems.push(problem);
                from = at + 1;
            }
            Stop::Broken { problem } => {
                problems.push(problem);
                break;
            }
        }
    }
    if problems.is_empty() {
        Ok(migrations.len())
    } else {
        Err(Error::SchemaTest(format!(
            "{} migration(s) are not reversed by their down file:\n{}",
            problems.len(),
            problems.join("\n")
        )))
    }
}

/// Where a climb stopped.
enum Stop {
    /// Every migration passed.
    Done,
    /// The down of migration `at` does not reverse its up: the climb can go
    /// on from the state its up leaves.
    Asymmetric { at: usize, problem: String },
    /// A migration's up failed: nothing after it can be tried.
    Broken { problem: String },
}

/// Applies `migrations[..from]` (the climb so far), then climbs from `from`.
async fn climb(
    conn: &mut Conn,
    migrations: &[Migration],
    from: usize,
    out: Out<'_>,
) -> Result<Stop> {
    // What went wrong, without the advice for a real database: the scratch
    // one is dropped at the end, there is nothing to repair.
    let failed = |m: &Migration, what: &str, e: Error| {
        let e = match e {
            Error::Dirty { message, .. } => message,
            e => e.to_string(),
        };
        format!("  {}: {what} failed: {e}", m.id())
    };
    for m in &migrations[..from] {
        if let Err(e) = apply_up(conn, m).await {
            return Ok(Stop::Broken {
                problem: failed(m, "up (applied again to go on past an earlier failure)", e),
            });
        }
    }
    for (at, m) in migrations.iter().enumerate().skip(from) {
        let asymmetric = |problem: String| Stop::Asymmetric { at, problem };
        let before = conn.snapshot().await?;
        if let Err(e) = apply_up(conn, m).await {
            out(format!("FAIL {}", m.id()));
            return Ok(Stop::Broken {
                problem: failed(m, "up", e),
            });
        }
        if let Some(why) = &m.irreversible {
            // Nothing to reverse: the climb goes on from its up.
            out(format!(
                "ok   {} (irreversible, {why}: its reversal is not tested)",
                m.id()
            ));
            continue;
        }
        let after = conn.snapshot().await?;
        if let Err(e) = apply_down(conn, m).await {
            out(format!("FAIL {}", m.id()));
            return Ok(asymmetric(failed(m, "down", e)));
        }
        let reverted = conn.snapshot().await?;
        if !same(&reverted, &before) {
            // Applying it again would only trip over what the down left behind.
            out(format!("FAIL {}", m.id()));
            return Ok(asymmetric(format!(
                "  {}: after up then down, the schema differs from before up:\n{}",
                m.id(),
                diff(&before, &reverted)
            )));
        }
        if let Err(e) = apply_up(conn, m).await {
            out(format!("FAIL {}", m.id()));
            return Ok(asymmetric(failed(m, "up again after down", e)));
        }
        let again = conn.snapshot().await?;
        if !same(&again, &after) {
            out(format!("FAIL {}", m.id()));
            return Ok(asymmetric(format!(
                "  {}: up after down gives another schema than the first up:\n{}",
                m.id(),
                diff(&after, &again)
            )));
        }
        out(format!("ok   {}", m.id()));
    }
    Ok(Stop::Done)
}

/// Whether two snapshots describe the same schema, PostgreSQL's own rewrites
/// of equivalent SQL aside ([`canonical`]).
fn same(a: &[String], b: &[String]) -> bool {
    let canon = |s: &[String]| {
        let mut lines: Vec<String> = s.iter().map(|l| canonical(l)).collect();
        lines.sort();
        lines
    };
    canon(a) == canon(b)
}

/// A snapshot line with the spellings PostgreSQL gives the same thing made
/// one: `CURRENT_TIMESTAMP` is `now()`, and a cast of a column to the type it
/// already has after a type's round trip (`(email)::text`) is the column.
fn canonical(line: &str) -> String {
    let mut out = line.replace("CURRENT_TIMESTAMP", "now()");
    for ty in ["text", "character varying", "bigint", "integer"] {
        let cast = format!(")::{ty}");
        while let Some(at) = out.find(&cast) {
            // `(name)::type` → `name`, for a plain name only.
            let Some(open) = out[..at].rfind('(') else {
                break;
            };
            let inner = &out[open + 1..at];
            if inner.is_empty()
                || !inner
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '"')
            {
                break;
            }
            out = format!("{}{}{}", &out[..open], inner, &out[at + cast.len()..]);
        }
    }
    out
}

/// Lines only in `expected` (-) and only in `actual` (+).
fn diff(expected: &[String], actual: &[String]) -> String {
    let mut lines = Vec::new();
    for l in expected.iter().filter(|l| !actual.contains(l)) {
        lines.push(format!("      - {l}"));
    }
    for l in actual.iter().filter(|l| !expected.contains(l)) {
        lines.push(format!("      + {l}"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_rewrites_of_the_same_schema_are_the_same() {
        let a = vec!["column t.at timestamp DEFAULT CURRENT_TIMESTAMP".to_string()];
        let b = vec!["column t.at timestamp DEFAULT now()".to_string()];
        assert!(same(&a, &b));
        let a = vec!["index t_i ON t USING btree (lower((email)::text))".to_string()];
        let b = vec!["index t_i ON t USING btree (lower(email))".to_string()];
        assert!(same(&a, &b));
        let a = vec!["column t.n integer".to_string()];
        let b = vec!["column t.n bigint".to_string()];
        assert!(!same(&a, &b));
    }
}
