//! `schema test`: proves that every down reverses its up, on a scratch database
//! (the "stairway" test of pytest-alembic): for each migration in order, apply
//! it, snapshot the schema, revert it, compare with the schema before it, and
//! apply it again, comparing with the first application.

use crate::db::{Conn, ConnectOptions, Scratch};
use crate::{Error, Result};

use super::{apply_down, apply_up, Migration, Out};

/// Runs the stairway on a fresh database created beside `url`'s, until it is
/// done or `interrupt` completes (Ctrl-C, SIGTERM): either way the scratch
/// database is dropped before this returns.
pub async fn schema_test(
    url: &crate::config::DatabaseUrl,
    opts: &ConnectOptions,
    migrations: &[Migration],
    out: Out<'_>,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<usize> {
    let scratch = Scratch::create(url, opts).await?;
    out(format!("scratch database: {}", scratch.url));
    let result = async {
        let mut conn = Conn::connect(&scratch.url, opts).await?;
        conn.ensure_bookkeeping().await?;
        let result = climb(&mut conn, migrations, out).await;
        conn.close().await;
        result
    };
    let result = tokio::select! {
        result = result => result,
        () = interrupt => Err(Error::Interrupted(
            "schema test interrupted; its scratch database is dropped, nothing else was touched".into(),
        )),
    };
    let dropped = scratch.drop_now().await;
    let problems = result?;
    dropped?;
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

async fn climb(conn: &mut Conn, migrations: &[Migration], out: Out<'_>) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for m in migrations {
        // What went wrong, without the advice for a real database: the
        // scratch one is dropped at the end, there is nothing to repair.
        let step = |what: &str, e: Error| {
            let e = match e {
                Error::Dirty { message, .. } => message,
                e => e.to_string(),
            };
            format!("  {}: {what} failed: {e}", m.id())
        };
        let before = conn.snapshot().await?;
        if let Err(e) = apply_up(conn, m).await {
            problems.push(step("up", e));
            out(format!("FAIL {}", m.id()));
            break;
        }
        let after = conn.snapshot().await?;
        if let Err(e) = apply_down(conn, m).await {
            problems.push(step("down", e));
            out(format!("FAIL {}", m.id()));
            break;
        }
        let reverted = conn.snapshot().await?;
        if reverted != before {
            // Applying it again would only trip over what the down left behind.
            problems.push(format!(
                "  {}: after up then down, the schema differs from before up:\n{}",
                m.id(),
                diff(&before, &reverted)
            ));
            out(format!("FAIL {}", m.id()));
            break;
        }
        if let Err(e) = apply_up(conn, m).await {
            problems.push(step("up again after down", e));
            out(format!("FAIL {}", m.id()));
            break;
        }
        let again = conn.snapshot().await?;
        if again != after {
            problems.push(format!(
                "  {}: up after down gives another schema than the first up:\n{}",
                m.id(),
                diff(&after, &again)
            ));
            out(format!("FAIL {}", m.id()));
            break;
        }
        out(format!("ok   {}", m.id()));
    }
    Ok(problems)
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
