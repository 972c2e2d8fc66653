//! `datamig schema …`: versioned schema migrations.

use anyhow::Result;
use datamig_core::config::DatabaseUrl;
use datamig_core::db::Scratch;
use datamig_core::migrate::{self, source, DownTarget, Resolution, RunOptions, State, UpTarget};
use datamig_core::Error;

use super::{connect_options, settings, with_conn};
use crate::opt::{DirtyResolution, GlobalOpts, SchemaCommand};
use crate::output::line;

pub async fn run(global: &GlobalOpts, cmd: SchemaCommand) -> Result<()> {
    let settings = settings(global)?;
    let dir = &settings.migrations_dir;

    if let SchemaCommand::New { name } = &cmd {
        // In the project's layout, so that the loader takes the new file too.
        for file in source::create_in(dir, name, chrono_now(), settings.layout)? {
            line(&format!(
                "created {}",
                relative(&file, &settings.project_dir)
            ));
        }
        return Ok(());
    }
    // Run from the wrong directory, an upgrade would find nothing to apply and
    // say the database is up to date; a command that acts on the migrations
    // says where it looked instead, before it connects.
    let acts = matches!(
        cmd,
        SchemaCommand::Upgrade { .. }
            | SchemaCommand::Downgrade { .. }
            | SchemaCommand::Adopt { .. }
            | SchemaCommand::Test { .. }
            | SchemaCommand::Check { .. }
    );
    if acts && !dir.is_dir() {
        return Err(Error::Config(format!(
            "there is no migrations directory at {}: run datamig in the project's directory (the one \
             holding migrations/ and datamig.toml), or set migrations_dir in datamig.toml; \
             `datamig schema new NAME` creates it with a first migration",
            dir.display()
        ))
        .into());
    }
    let loaded = source::load_as(dir, settings.layout)?;

    if let SchemaCommand::Check {
        allow_pending,
        no_database,
    } = cmd
    {
        return check(global, &settings, loaded, allow_pending, no_database).await;
    }
    // Style notes are `schema check`'s to report, not every command's.
    let migrations = loaded.into_valid()?;
    let mut out = |text: String| line(&text);

    match cmd {
        SchemaCommand::New { .. } | SchemaCommand::Check { .. } => unreachable!("handled above"),
        SchemaCommand::Test {
            scratch_url,
            scratch_name,
            drop_leftovers,
        } => {
            let url = match scratch_url {
                Some(u) => DatabaseUrl::parse(&u)?,
                None => settings.database_url.clone(),
            };
            let opts = connect_options(global);
            let leftovers = Scratch::leftovers(&url, &opts).await?;
            let names = || {
                leftovers
                    .iter()
                    .map(|l| format!("{} ({})", l.name, l.why))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !leftovers.is_empty() && drop_leftovers {
                Scratch::drop_leftovers(&url, &opts, &leftovers).await?;
                crate::output::note(&format!(
                    "dropped {} scratch database(s) that earlier schema tests left behind: {}",
                    leftovers.len(),
                    names()
                ));
            } else if !leftovers.is_empty() {
                crate::output::note(&format!(
                    "warning: {} scratch database(s) left behind by earlier schema tests that did not end: {}; \
                     `datamig schema test --drop-leftovers` drops them",
                    leftovers.len(),
                    names()
                ));
            }
            let n = migrate::schema_test(
                &url,
                &opts,
                scratch_name.as_deref(),
                &migrations,
                &mut out,
                interrupted(),
            )
            .await?;
            line(&format!("ok: {n} migration(s); each down reverses its up, and each up applies again after its down"));
            Ok(())
        }
        SchemaCommand::Adopt {
            from,
            dry_run,
            lock,
        } => {
            with_conn(global, &settings, async |conn| {
                let done = migrate::adopt(
                    conn,
                    &migrations,
                    from,
                    lock.lock_timeout,
                    dry_run,
                    &mut out,
                )
                .await?;
                let recorded = done.recorded.len();
                let verb = if dry_run { "would record" } else { "recorded" };
                match (recorded, done.already) {
                    (0, 0) => line(&format!(
                        "{} has applied nothing here: nothing to adopt",
                        from.name()
                    )),
                    (0, n) => line(&format!(
                        "nothing to adopt: datamig's history records the {n} version(s) already"
                    )),
                    (n, _) => line(&format!(
                        "{verb} {n} version(s) {} applied, running none; {} pending",
                        from.name(),
                        done.pending
                    )),
                }
                Ok(())
            })
            .await
        }
        SchemaCommand::Upgrade {
            target,
            run,
            allow_out_of_order,
            ignore_other_history,
        } => {
            let target = UpTarget::parse(&target)?;
            let opts = RunOptions {
                lock_timeout: run.lock.lock_timeout,
                dry_run: run.dry_run,
                allow_out_of_order,
                ignore_other_history,
            };
            with_conn(global, &settings, async |conn| {
                let report = migrate::upgrade(conn, &migrations, target, &opts, &mut out).await?;
                if !opts.dry_run {
                    line(&summary(
                        report.done.len(),
                        "applied",
                        "the database is up to date",
                    ));
                }
                Ok(())
            })
            .await
        }
        SchemaCommand::Downgrade { target, run } => {
            let target = DownTarget::parse(&target)?;
            let opts = RunOptions {
                lock_timeout: run.lock.lock_timeout,
                dry_run: run.dry_run,
                ..RunOptions::default()
            };
            with_conn(global, &settings, async |conn| {
                let report = migrate::downgrade(conn, &migrations, target, &opts, &mut out).await?;
                if !opts.dry_run {
                    line(&summary(report.done.len(), "reverted", "nothing to revert"));
                }
                Ok(())
            })
            .await
        }
        SchemaCommand::Current => {
            with_conn(global, &settings, async |conn| {
                let applied = migrate::applied(conn).await?;
                match applied.last() {
                    None => line("base (no migration applied)"),
                    Some(a) => {
                        let dirty = if a.dirty == migrate::Dirty::Clean {
                            ""
                        } else {
                            " (dirty)"
                        };
                        line(&format!("{}_{}{dirty}", a.version, a.name));
                    }
                }
                Ok(())
            })
            .await
        }
        SchemaCommand::History => {
            with_conn(global, &settings, async |conn| {
                let entries = migrate::log(conn).await?;
                if entries.is_empty() {
                    line("no schema changes recorded yet");
                }
                let what = |e: &migrate::LogEntry| match (e.version, &e.name) {
                    (Some(v), Some(n)) => format!("{v}_{n}"),
                    _ => String::new(),
                };
                // Columns as wide as their widest value, so that they line up.
                let at_w = entries.iter().map(|e| e.at.len()).max().unwrap_or(0);
                let action_w = entries.iter().map(|e| e.action.len()).max().unwrap_or(0);
                let what_w = entries.iter().map(|e| what(e).len()).max().unwrap_or(0);
                for e in &entries {
                    let detail = if e.detail.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", e.detail)
                    };
                    line(&format!(
                        "{:<at_w$}  {:<action_w$}  {:<what_w$}  by {}{detail}",
                        e.at,
                        e.action,
                        what(e),
                        e.actor
                    ));
                }
                Ok(())
            })
            .await
        }
        SchemaCommand::Status => {
            with_conn(global, &settings, async |conn| {
                let lines = migrate::status(conn, &migrations).await?;
                if lines.is_empty() && !dir.is_dir() {
                    let at = dir.display();
                    line(&format!(
                        "no migrations: there is no migrations directory at {at}; \
                         `datamig schema new create_my_table` creates it with the first"
                    ));
                    return Ok(());
                }
                print_status(&lines);
                if lines.iter().all(|l| l.applied.is_none()) {
                    if let Some(other) = migrate::foreign(conn).await? {
                        line(&format!("note: {}", other.hint()));
                    }
                }
                Ok(())
            })
            .await
        }
        SchemaCommand::Repair { dirty, lock } => {
            let dirty = dirty.map(|d| match d {
                DirtyResolution::Applied => Resolution::Applied,
                DirtyResolution::Reverted => Resolution::Reverted,
            });
            with_conn(global, &settings, async |conn| {
                let n =
                    migrate::repair(conn, &migrations, dirty, lock.lock_timeout, &mut out).await?;
                line(&if n == 0 {
                    "nothing to repair".to_string()
                } else {
                    format!("repaired {n} migration record(s)")
                });
                Ok(())
            })
            .await
        }
    }
}

fn summary(n: usize, verb: &str, none: &str) -> String {
    if n == 0 {
        none.to_string()
    } else {
        format!("{verb} {n} migration(s)")
    }
}

fn print_status(lines: &[migrate::StatusLine]) {
    if lines.is_empty() {
        line("no migrations yet; `datamig schema new create_my_table` writes the first");
        return;
    }
    let width = lines.iter().map(|l| l.name.len()).max().unwrap_or(4).max(4);
    line(&format!(
        "{:<14}  {:<width$}  {:<30}  APPLIED AT",
        "VERSION", "NAME", "STATE"
    ));
    for l in lines {
        let at = l
            .applied
            .as_ref()
            .map(|a| a.applied_at.as_str())
            .unwrap_or("");
        line(&format!(
            "{:<14}  {:<width$}  {:<30}  {at}",
            l.version,
            l.name,
            l.state.to_string()
        ));
    }
    let count = |s: &dyn Fn(&State) -> bool| lines.iter().filter(|l| s(&l.state)).count();
    let applied = count(&|s| !matches!(s, State::Pending | State::Dirty(_)));
    let pending = count(&|s| matches!(s, State::Pending));
    let dirty = count(&|s| matches!(s, State::Dirty(_)));
    if dirty > 0 {
        line(&format!(
            "{applied} applied, {dirty} dirty (failed halfway: `datamig schema history` shows how; \
             `datamig schema repair --dirty applied|reverted` once fixed by hand), {pending} pending"
        ));
    } else {
        line(&format!("{applied} applied, {pending} pending"));
    }
}

async fn check(
    global: &GlobalOpts,
    settings: &datamig_core::config::Settings,
    loaded: source::Loaded,
    allow_pending: bool,
    no_database: bool,
) -> Result<()> {
    let mut problems: Vec<String> = loaded.errors.clone();
    // Names of another tool's layout run as they are: noted, never an error.
    for lint in &loaded.lints {
        line(&format!("note: {lint}"));
    }
    let total = loaded.migrations.len();
    let mut pending = Vec::new();
    if !no_database {
        with_conn(global, settings, async |conn| {
            let lines = migrate::status(conn, &loaded.migrations).await?;
            let newest_applied = lines.iter().filter(|l| l.applied.is_some()).map(|l| l.version).max();
            for l in &lines {
                let id = format!("{}_{}", l.version, l.name);
                match &l.state {
                    State::Applied => {}
                    State::Pending => {
                        if newest_applied.is_some_and(|n| n > l.version) {
                            problems.push(format!("{id}: pending but older than the newest applied migration (out of order)"));
                        }
                        pending.push(id);
                    }
                    State::Changed => problems.push(format!("{id}: file changed since it was applied (checksum differs)")),
                    State::MissingFile => problems.push(format!("{id}: applied, but its files are missing")),
                    State::Dirty(_) => problems.push(format!("{id}: dirty (failed halfway); see `datamig schema status`")),
                }
            }
            Ok(())
        })
        .await?;
    }
    if !problems.is_empty() {
        return Err(Error::Problems(problems).into());
    }
    if !pending.is_empty() && !allow_pending {
        return Err(Error::Pending {
            count: pending.len(),
            names: pending.join(", "),
        }
        .into());
    }
    let db = if no_database {
        " (files only)".to_string()
    } else {
        format!(", {} pending", pending.len())
    };
    line(&format!("ok: {total} migration(s){db}"));
    Ok(())
}

fn relative(path: &std::path::Path, base: &std::path::Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Completes on Ctrl-C or SIGTERM (never, if neither can be listened for).
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = int => {}
        () = term => {}
    }
}
