//! Schema steps: versioned `up`/`down` SQL files, applied, reverted and tracked.
//!
//! Every change to the schema happens under the schema lock ([`lock`]), after the
//! applied set has been re-read, and each migration is recorded in
//! `datamig_schema_history` in the same transaction that runs it. Where the
//! database cannot roll DDL back (MariaDB/MySQL), or a file opts out with
//! `-- datamig:no-transaction`, the record is written first as *dirty* and made
//! clean once every statement has run: a failure halfway is never silently
//! skipped and never half-recorded.

mod adopt;
mod apply;
pub mod lock;
mod repair;
pub mod source;
pub mod split;
mod stairway;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::db::{db_message, Conn, Value};
use crate::{Error, Result};
pub use adopt::{adopt, foreign, Adopted, Foreign, Tool};
pub(crate) use apply::{apply_down, apply_up};
pub use repair::{refuse_dirty, repair, Resolution};
pub use source::{Layout, Migration, VERBS};
pub use stairway::schema_test;

const HISTORY: &str = "datamig_schema_history";
const LOG: &str = "datamig_schema_log";

/// A history row: one applied (or dirty) migration.
#[derive(Debug, Clone)]
pub struct Applied {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    pub applied_at: String,
    pub duration_ms: i64,
    pub applied_by: String,
    pub dirty: Dirty,
}

/// Whether a migration failed halfway, and in which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dirty {
    Clean,
    /// Failed while being applied: some of its statements may have run.
    Up,
    /// Failed while being reverted: some of its down statements may have run.
    Down,
}

impl Dirty {
    fn code(self) -> i64 {
        match self {
            Dirty::Clean => 0,
            Dirty::Up => 1,
            Dirty::Down => 2,
        }
    }
    fn from_code(code: i64) -> Self {
        match code {
            0 => Dirty::Clean,
            2 => Dirty::Down,
            _ => Dirty::Up,
        }
    }
}

/// How a migration stands, for `schema status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Applied,
    Pending,
    /// Applied, but the file was edited since.
    Changed,
    /// Applied, but its files are gone.
    MissingFile,
    Dirty(Dirty),
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Applied => "applied",
            State::Pending => "pending",
            State::Changed => "changed since applied",
            State::MissingFile => "applied, file missing",
            State::Dirty(Dirty::Down) => "dirty (failed while reverting)",
            State::Dirty(_) => "dirty (failed while applying)",
        })
    }
}

#[derive(Debug, Clone)]
pub struct StatusLine {
    pub version: i64,
    pub name: String,
    pub state: State,
    pub applied: Option<Applied>,
}

/// One row of `datamig_schema_log`.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub at: String,
    pub action: String,
    pub version: Option<i64>,
    pub name: Option<String>,
    pub detail: String,
    pub actor: String,
}

/// Where `upgrade` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpTarget {
    Head,
    Version(i64),
}

/// Where `downgrade` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownTarget {
    Base,
    /// Revert the last N applied.
    Steps(usize),
    /// Revert everything applied after this version.
    Version(i64),
}

impl UpTarget {
    pub fn parse(s: &str) -> Result<Self> {
        if s == "head" {
            return Ok(UpTarget::Head);
        }
        parse_version(s).map(UpTarget::Version).ok_or_else(|| {
            Error::Usage(format!(
                "`{s}` is not a target; use `head` or a version such as 20261124093000"
            ))
        })
    }
}

impl DownTarget {
    pub fn parse(s: &str) -> Result<Self> {
        if s == "base" {
            return Ok(DownTarget::Base);
        }
        if let Some(n) = s.strip_prefix('-') {
            return match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(DownTarget::Steps(n)),
                _ => Err(Error::Usage(format!(
                    "`{s}` is not a step count; use -1, -2, …"
                ))),
            };
        }
        parse_version(s).map(DownTarget::Version).ok_or_else(|| {
            Error::Usage(format!("`{s}` is not a target; use `base`, -N (the last N) or a version such as 20261124093000"))
        })
    }
}

/// A version, or a migration id `<version>_<name>`.
fn parse_version(s: &str) -> Option<i64> {
    let digits = s.split('_').next()?;
    (digits.len() == 14 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// What `upgrade`/`downgrade` do besides their target.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub lock_timeout: Duration,
    pub dry_run: bool,
    pub allow_out_of_order: bool,
    /// Apply although datamig's history is empty and another tool's is there.
    pub ignore_other_history: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(60),
            dry_run: false,
            allow_out_of_order: false,
            ignore_other_history: false,
        }
    }
}

/// A line for the user, as work happens.
pub type Out<'a> = &'a mut (dyn FnMut(String) + Send);

/// Reads the history; an absent table is an empty history.
pub async fn applied(conn: &mut Conn) -> Result<Vec<Applied>> {
    if !conn
        .table_exists(HISTORY)
        .await
        .map_err(|e| Error::db("cannot read the schema history", db_message(&e)))?
    {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT version, name, checksum, {}, duration_ms, applied_by, dirty FROM {HISTORY} ORDER BY version",
        conn.timestamp_text("applied_at")
    );
    let rows = conn
        .fetch(&sql, &[])
        .await
        .map_err(|e| Error::db("cannot read the schema history", db_message(&e)))?;
    rows.into_iter()
        .map(|row| {
            let mut it = row.into_iter();
            let mut next = || it.next().unwrap_or(Value::Null);
            let corrupt =
                || Error::Invalid(format!("{HISTORY} has a malformed row; repair it by hand"));
            Ok(Applied {
                version: next().as_i64().ok_or_else(corrupt)?,
                name: next().into_string().unwrap_or_default(),
                checksum: next().into_string().unwrap_or_default(),
                applied_at: next().into_string().unwrap_or_default(),
                duration_ms: next().as_i64().unwrap_or(0),
                applied_by: next().into_string().unwrap_or_default(),
                dirty: Dirty::from_code(next().as_i64().unwrap_or(0)),
            })
        })
        .collect()
}

/// The state of every migration, in files or in the history.
pub async fn status(conn: &mut Conn, migrations: &[Migration]) -> Result<Vec<StatusLine>> {
    let applied: BTreeMap<i64, Applied> = applied(conn)
        .await?
        .into_iter()
        .map(|a| (a.version, a))
        .collect();
    let files: BTreeMap<i64, &Migration> = migrations.iter().map(|m| (m.version, m)).collect();
    let versions: std::collections::BTreeSet<i64> =
        applied.keys().chain(files.keys()).copied().collect();
    Ok(versions
        .into_iter()
        .map(|v| {
            let file = files.get(&v);
            let row = applied.get(&v).cloned();
            let state = match (&row, file) {
                (Some(a), _) if a.dirty != Dirty::Clean => State::Dirty(a.dirty),
                (Some(_), None) => State::MissingFile,
                (Some(a), Some(m)) if a.checksum != m.checksum => State::Changed,
                (Some(_), Some(_)) => State::Applied,
                (None, _) => State::Pending,
            };
            let name = file
                .map(|m| m.name.clone())
                .or_else(|| row.as_ref().map(|a| a.name.clone()))
                .unwrap_or_default();
            StatusLine {
                version: v,
                name,
                state,
                applied: row,
            }
        })
        .collect())
}

pub async fn log(conn: &mut Conn) -> Result<Vec<LogEntry>> {
    if !conn
        .table_exists(LOG)
        .await
        .map_err(|e| Error::db("cannot read the schema log", db_message(&e)))?
    {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {}, action, version, name, detail, actor FROM {LOG} ORDER BY id",
        conn.timestamp_text("at")
    );
    let rows = conn
        .fetch(&sql, &[])
        .await
        .map_err(|e| Error::db("cannot read the schema log", db_message(&e)))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut it = row.into_iter();
            let mut next = || it.next().unwrap_or(Value::Null);
            LogEntry {
                at: next().into_string().unwrap_or_default(),
                action: next().into_string().unwrap_or_default(),
                version: next().as_i64(),
                name: next().into_string(),
                detail: next().into_string().unwrap_or_default(),
                actor: next().into_string().unwrap_or_default(),
            }
        })
        .collect())
}

fn dirty_error(a: &Applied) -> Error {
    let what = if a.dirty == Dirty::Down {
        "reverted"
    } else {
        "applied"
    };
    Error::Dirty {
        message: format!(
            "migration {}_{} failed halfway while being {what} (by {}), and the database could not roll it back, \
             so the schema may be partly changed",
            a.version, a.name, a.applied_by
        ),
        advice: DIRTY_ADVICE.into(),
    }
}

/// What an operator does about a dirty migration.
const DIRTY_ADVICE: &str = "Inspect the schema and finish or undo the change by hand, then run \
     `datamig schema repair --dirty applied` if all of the migration's changes are now in place, or \
     `datamig schema repair --dirty reverted` if none are (`datamig schema history` shows the failure)";

fn changed_error(changed: &[(&Applied, &Migration)]) -> Error {
    let list: Vec<String> = changed
        .iter()
        .map(|(a, m)| format!("{} (applied {})", m.up_path.display(), a.applied_at))
        .collect();
    Error::Invalid(format!(
        "migration {} was applied but its file has changed since (checksum differs){}; restore the file, \
         or run `datamig schema repair` to accept the edit",
        list.join(", "),
        if list.len() > 1 { " — all of them" } else { "" }
    ))
}

/// Runs `body` under the schema lock, releasing it on every path.
async fn locked<T>(
    conn: &mut Conn,
    timeout: Duration,
    body: impl for<'c> AsyncFnOnce(&'c mut Conn) -> Result<T>,
) -> Result<T> {
    lock::acquire(conn, timeout).await?;
    let result = body(conn).await;
    lock::release(conn).await;
    result
}

/// What `upgrade` and `downgrade` did.
#[derive(Debug, Default)]
pub struct Report {
    /// Migrations applied or reverted, in order.
    pub done: Vec<String>,
}

/// `schema upgrade`: applies pending migrations up to `target`.
pub async fn upgrade(
    conn: &mut Conn,
    migrations: &[Migration],
    target: UpTarget,
    opts: &RunOptions,
    out: Out<'_>,
) -> Result<Report> {
    if let UpTarget::Version(v) = target {
        if !migrations.iter().any(|m| m.version == v) {
            return Err(unknown_version(v));
        }
    }
    // A database another tool migrated is taken over, not migrated again.
    if !opts.ignore_other_history && applied(conn).await?.is_empty() {
        if let Some(other) = foreign(conn).await? {
            return Err(Error::Invalid(format!(
                "{}; nothing was applied (if that table is not this project's: --ignore-other-history)",
                other.hint()
            )));
        }
    }
    if opts.dry_run {
        // Reads only: no lock, no bookkeeping tables created.
        let applied = applied(conn).await?;
        let plan = plan_upgrade(&applied, migrations, target, opts)?;
        for m in &plan {
            out(format!(
                "-- {} (up){}\n{}",
                m.id(),
                no_tx_note(m.up_no_transaction()),
                m.up.trim_end()
            ));
        }
        if plan.is_empty() {
            out("-- nothing to apply: the database is up to date".into());
        }
        return Ok(Report::default());
    }
    locked(conn, opts.lock_timeout, async |conn: &mut Conn| {
        // Re-read under the lock: another runner may have just applied some.
        let applied = applied(conn).await?;
        let plan = plan_upgrade(&applied, migrations, target, opts)?;
        if !plan.is_empty() {
            conn.ensure_bookkeeping().await?;
        }
        let mut report = Report::default();
        for m in plan {
            let started = Instant::now();
            out(format!("applying {}", m.id()));
            if let Err(e) = apply_up(conn, m).await {
                return Err(with_partial_report(e, &report, "applied", m));
            }
            report.done.push(m.id());
            out(format!(
                "applied {} ({} ms)",
                m.id(),
                started.elapsed().as_millis()
            ));
        }
        Ok(report)
    })
    .await
}

fn no_tx_note(no_tx: bool) -> &'static str {
    if no_tx {
        ", outside a transaction"
    } else {
        ""
    }
}

fn unknown_version(v: i64) -> Error {
    Error::Usage(format!(
        "there is no migration with version {v} in the migrations directory; `datamig schema status` lists them"
    ))
}

fn plan_upgrade<'m>(
    applied: &[Applied],
    migrations: &'m [Migration],
    target: UpTarget,
    opts: &RunOptions,
) -> Result<Vec<&'m Migration>> {
    if let Some(a) = applied.iter().find(|a| a.dirty != Dirty::Clean) {
        return Err(dirty_error(a));
    }
    let by_version: BTreeMap<i64, &Applied> = applied.iter().map(|a| (a.version, a)).collect();
    let changed: Vec<(&Applied, &Migration)> = migrations
        .iter()
        .filter_map(|m| {
            by_version
                .get(&m.version)
                .filter(|a| a.checksum != m.checksum)
                .map(|a| (*a, m))
        })
        .collect();
    if !changed.is_empty() {
        return Err(changed_error(&changed));
    }
    for a in applied {
        if !migrations.iter().any(|m| m.version == a.version) {
            tracing::warn!(
                "migration {}_{} is recorded as applied but its files are missing; restore them from version control",
                a.version,
                a.name
            );
        }
    }
    let limit = match target {
        UpTarget::Head => i64::MAX,
        UpTarget::Version(v) => v,
    };
    let pending: Vec<&Migration> = migrations
        .iter()
        .filter(|m| m.version <= limit && !by_version.contains_key(&m.version))
        .collect();
    if !opts.allow_out_of_order {
        if let Some(newest) = applied.iter().max_by_key(|a| a.version) {
            if let Some(old) = pending.iter().find(|m| m.version < newest.version) {
                return Err(Error::Invalid(format!(
                    "migration {} is older than {}_{}, which is already applied (two branches merged?); give it a \
                     version newer than {} (rename both files), or pass --allow-out-of-order",
                    old.up_path.display(),
                    newest.version,
                    newest.name,
                    newest.version
                )));
            }
        }
    }
    Ok(pending)
}

/// `schema downgrade`: reverts applied migrations down to `target`.
pub async fn downgrade(
    conn: &mut Conn,
    migrations: &[Migration],
    target: DownTarget,
    opts: &RunOptions,
    out: Out<'_>,
) -> Result<Report> {
    if let DownTarget::Version(v) = target {
        if !migrations.iter().any(|m| m.version == v) {
            return Err(unknown_version(v));
        }
    }
    if opts.dry_run {
        let applied = applied(conn).await?;
        let plan = plan_downgrade(&applied, migrations, target)?;
        for m in &plan {
            out(format!(
                "-- {} (down){}\n{}",
                m.id(),
                no_tx_note(m.down_no_transaction()),
                m.down.trim_end()
            ));
        }
        if plan.is_empty() {
            out("-- nothing to revert".into());
        }
        return Ok(Report::default());
    }
    locked(conn, opts.lock_timeout, async |conn: &mut Conn| {
        let applied = applied(conn).await?;
        let plan = plan_downgrade(&applied, migrations, target)?;
        let mut report = Report::default();
        for m in plan {
            let started = Instant::now();
            out(format!("reverting {}", m.id()));
            if let Err(e) = apply_down(conn, m).await {
                return Err(with_partial_report(e, &report, "reverted", m));
            }
            report.done.push(m.id());
            out(format!(
                "reverted {} ({} ms)",
                m.id(),
                started.elapsed().as_millis()
            ));
        }
        Ok(report)
    })
    .await
}

fn plan_downgrade<'m>(
    applied: &[Applied],
    migrations: &'m [Migration],
    target: DownTarget,
) -> Result<Vec<&'m Migration>> {
    if let Some(a) = applied.iter().find(|a| a.dirty != Dirty::Clean) {
        return Err(dirty_error(a));
    }
    let mut newest_first: Vec<&Applied> = applied.iter().collect();
    newest_first.sort_by_key(|a| std::cmp::Reverse(a.version));
    let chosen: Vec<&Applied> = match target {
        DownTarget::Base => newest_first,
        DownTarget::Version(v) => newest_first.into_iter().filter(|a| a.version > v).collect(),
        DownTarget::Steps(n) => {
            if n > newest_first.len() {
                return Err(Error::Usage(format!(
                    "cannot revert {n} migration(s): only {} applied; use `base` to revert them all",
                    newest_first.len()
                )));
            }
            newest_first.into_iter().take(n).collect()
        }
    };
    let mut plan = Vec::new();
    let mut changed = Vec::new();
    for a in chosen {
        let Some(m) = migrations.iter().find(|m| m.version == a.version) else {
            return Err(Error::Invalid(format!(
                "cannot revert {}_{}: its files are missing from the migrations directory; restore them from version control",
                a.version, a.name
            )));
        };
        if m.checksum != a.checksum {
            changed.push((a, m));
        }
        plan.push(m);
    }
    if !changed.is_empty() {
        return Err(changed_error(&changed));
    }
    // Nothing is reverted when the way back crosses a step that cannot be undone.
    if let Some(m) = plan.iter().find(|m| m.irreversible.is_some()) {
        let why = m.irreversible.as_deref().unwrap_or_default();
        return Err(Error::Invalid(format!(
            "cannot revert {}: it is irreversible ({why}); nothing was reverted. Downgrade to it at the lowest \
             (`datamig schema downgrade {}`), or give it a down file that undoes it",
            m.id(),
            m.version
        )));
    }
    Ok(plan)
}

/// A failure, with what was done before it: the partial report.
fn with_partial_report(
    err: Error,
    report: &Report,
    verb: &'static str,
    failed: &Migration,
) -> Error {
    match err {
        cause @ (Error::MigrationFailed { .. }
        | Error::MigrationBlocked(_)
        | Error::ConnectionLost(_)
        | Error::Dirty { .. }) => Error::SchemaStopped(Box::new(crate::SchemaStopped {
            migration: failed.id(),
            verb,
            done: report.done.clone(),
            cause,
        })),
        other => other,
    }
}
