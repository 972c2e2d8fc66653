//! Schema steps: versioned `up`/`down` SQL files, applied, reverted and tracked.
//!
//! Every change to the schema happens under the schema lock ([`lock`]), after the
//! applied set has been re-read, and each migration is recorded in
//! `datamig_schema_history` in the same transaction that runs it. Where the
//! database cannot roll DDL back (MariaDB/MySQL), or a file opts out with
//! `-- datamig:no-transaction`, the record is written first as *dirty* and made
//! clean once every statement has run: a failure halfway is never silently
//! skipped and never half-recorded.

pub mod lock;
pub mod source;
pub mod split;
mod stairway;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::Backend;
use crate::db::{db_message, who_am_i, Conn, Value};
use crate::{Error, Result};
pub use source::{Migration, VERBS};
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
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(60),
            dry_run: false,
            allow_out_of_order: false,
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
    Ok(plan)
}

/// A failure, with what was done before it: the partial report.
fn with_partial_report(err: Error, report: &Report, verb: &str, failed: &Migration) -> Error {
    let before = if report.done.is_empty() {
        format!("nothing was {verb} before it")
    } else {
        format!("{verb} before it: {}", report.done.join(", "))
    };
    match err {
        Error::MigrationFailed { message } => Error::MigrationFailed {
            message: format!(
                "{message}\n{before}. Fix {} and run the command again",
                failed.id()
            ),
        },
        Error::MigrationBlocked(message) => Error::MigrationBlocked(format!("{message}\n{before}")),
        Error::ConnectionLost(message) => Error::ConnectionLost(format!("{message}\n{before}")),
        Error::Dirty { message, advice } => Error::Dirty {
            message: format!("{message}\n{before}"),
            advice,
        },
        other => other,
    }
}

/// How a migration's SQL failed.
struct Failure {
    message: String,
    /// Statements that had already changed something (and, without a
    /// transaction, stayed): session settings and queries do not count.
    statements_done: usize,
    /// Whether trying again can pass: a lost connection, a lock not granted in time.
    transient: Option<crate::db::Transient>,
}

impl Failure {
    fn of(message: String, statements_done: usize, e: &sqlx::Error) -> Failure {
        let mut message = message;
        // PostgreSQL refuses some statements inside a transaction block
        // (CREATE INDEX CONCURRENTLY, VACUUM, ALTER TYPE … ADD VALUE before 12).
        if message.contains("cannot run inside a transaction block") {
            message.push_str(&format!(
                " (make `{}` the file's first line to run it outside a transaction)",
                source::NO_TRANSACTION
            ));
        }
        Failure {
            message,
            statements_done,
            transient: crate::db::Transient::of(e),
        }
    }
}

fn flavor(backend: Backend) -> split::Flavor {
    match backend {
        Backend::Postgres => split::Flavor::Postgres,
        Backend::MySql => split::Flavor::MySql,
        Backend::Sqlite => split::Flavor::Sqlite,
    }
}

/// Runs one file's SQL. In a transaction: as one script, except on MariaDB,
/// where it goes statement by statement so that a failure names its
/// statement. Outside one: statement by statement, counting how far it got.
async fn run_sql(
    conn: &mut Conn,
    sql: &str,
    in_transaction: bool,
) -> std::result::Result<(), Failure> {
    if in_transaction && conn.transactional_ddl() {
        return conn.script(sql).await.map_err(|e| {
            let message = db_message(&e);
            Failure::of(message, 0, &e)
        });
    }
    let statements = split::split(sql, flavor(conn.backend()));
    let total = statements.len();
    // Statements that changed something: a session setting or a query before
    // the failure leaves nothing to repair.
    let mut changed = 0;
    for (n, statement) in statements.into_iter().enumerate() {
        if let Err(e) = conn.script(&statement.sql).await {
            let message = format!(
                "statement {} of {total} (line {}): {}",
                n + 1,
                statement.line,
                db_message(&e)
            );
            return Err(Failure::of(message, changed, &e));
        }
        if !matches!(
            first_word(&statement.sql).as_str(),
            "set" | "select" | "show" | "explain" | "do" | "pragma"
        ) {
            changed += 1;
        }
        crate::crash::reached(crate::crash::Point::MigrationStatement);
    }
    Ok(())
}

/// Whether MariaDB/MySQL can run every statement of `sql` in one transaction
/// and roll it back: data changes and queries, no statement that commits
/// implicitly (DDL, LOCK TABLES, GRANT, …) or ends the transaction itself.
fn rolls_back_on_mysql(sql: &str) -> bool {
    const TRANSACTIONAL: &[&str] = &[
        "insert", "update", "delete", "replace", "select", "with", "do",
    ];
    split::split(sql, split::Flavor::MySql)
        .iter()
        .all(|st| TRANSACTIONAL.contains(&first_word(&st.sql).as_str()))
}

/// A statement without the comments before it.
fn strip_comments(sql: &str) -> &str {
    let mut rest = sql.trim_start();
    loop {
        if rest.starts_with("--") || rest.starts_with('#') {
            rest = rest.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            return rest;
        }
    }
}

/// A statement's first word, lower-cased, after any comments before it.
fn first_word(sql: &str) -> String {
    strip_comments(sql)
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .find(|w| !w.is_empty())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Whether a migration's SQL runs in one transaction with its record: where
/// the database rolls DDL back, and on MariaDB/MySQL for a file of data
/// changes alone; never for a `-- datamig:no-transaction` file.
fn in_one_transaction(conn: &Conn, sql: &str, no_transaction: bool) -> bool {
    !no_transaction && (conn.transactional_ddl() || rolls_back_on_mysql(sql))
}

/// Why a file ran statement by statement, for the dirty message.
fn why_statement_by_statement(conn: &Conn, no_transaction: bool) -> String {
    if no_transaction {
        format!(
            "the file runs outside a transaction, as its first line `{}` asks",
            source::NO_TRANSACTION
        )
    } else {
        format!(
            "{} commits DDL at once, so a file with DDL runs statement by statement",
            conn.backend()
        )
    }
}

/// The error for a failure that left nothing changed: a lost connection and a
/// lock not granted are not the file's fault, and say to run the command again.
fn unchanged_failure(conn: &Conn, what: String, f: &Failure, outcome: &str) -> Error {
    use crate::db::Transient;
    match f.transient {
        Some(Transient::ConnectionLost) => Error::ConnectionLost(format!(
            "{what}: the connection to {} was lost ({}); {outcome}. Run the command again once the server answers",
            conn.url(),
            f.message
        )),
        Some(Transient::LockTimeout | Transient::Deadlock) => Error::MigrationBlocked(format!(
            "{what}: {}; {outcome}. Another session held a lock it needed: the file is fine, run the \
             command again (when that session is done)",
            f.message
        )),
        _ => Error::MigrationFailed {
            message: format!("{what} failed: {}; {outcome}", f.message),
        },
    }
}

/// Records a failed attempt in the log (when, by whom, the statement, the
/// error), in a transaction of its own; a failure to record it is a warning.
async fn log_failure(conn: &mut Conn, action: &str, m: &Migration, f: &Failure, outcome: &str) {
    if f.transient == Some(crate::db::Transient::ConnectionLost) {
        return; // nothing to record it on
    }
    let detail = format!("{}; {outcome}", f.message);
    if let Err(e) = write_log(conn, action, m.version, &m.name, &detail).await {
        tracing::warn!(
            "could not record the failure of {} in {LOG}: {}",
            m.id(),
            db_message(&e)
        );
    }
}

async fn write_log(
    conn: &mut Conn,
    action: &str,
    version: i64,
    name: &str,
    detail: &str,
) -> sqlx::Result<()> {
    let sql = format!(
        "INSERT INTO {LOG} (at, action, version, name, detail, actor) VALUES ({}, ?, ?, ?, ?, ?)",
        conn.now_sql()
    );
    conn.execute(
        &sql,
        &[
            action.into(),
            version.into(),
            name.into(),
            detail.into(),
            who_am_i().into(),
        ],
    )
    .await
    .map(drop)
}

async fn insert_history(
    conn: &mut Conn,
    m: &Migration,
    duration_ms: i64,
    dirty: Dirty,
) -> sqlx::Result<()> {
    let sql = format!(
        "INSERT INTO {HISTORY} (version, name, checksum, applied_at, duration_ms, applied_by, dirty) VALUES (?, ?, ?, {}, ?, ?, ?)",
        conn.now_sql()
    );
    let params = [
        m.version.into(),
        m.name.as_str().into(),
        m.checksum.as_str().into(),
        duration_ms.into(),
        who_am_i().into(),
        dirty.code().into(),
    ];
    conn.execute(&sql, &params).await.map(drop)
}

async fn set_dirty(conn: &mut Conn, version: i64, dirty: Dirty) -> sqlx::Result<()> {
    conn.execute(
        &format!("UPDATE {HISTORY} SET dirty = ? WHERE version = ?"),
        &[dirty.code().into(), version.into()],
    )
    .await
    .map(drop)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn bookkeeping(e: sqlx::Error) -> Error {
    crate::db::error("cannot record the migration in datamig_schema_history", &e)
}

/// Applies one migration and records it: together in one transaction where the
/// database allows, else behind a dirty record.
pub(crate) async fn apply_up(conn: &mut Conn, m: &Migration) -> Result<()> {
    let started = Instant::now();
    let what = format!("migration {}", m.id());
    let no_tx = m.up_no_transaction();
    if in_one_transaction(conn, &m.up, no_tx) {
        conn.begin().await.map_err(bookkeeping)?;
        if let Err(f) = run_sql(conn, &m.up, true).await {
            let _ = conn.rollback().await;
            let outcome = "it was rolled back, nothing changed";
            log_failure(conn, "upgrade failed", m, &f, outcome).await;
            return Err(unchanged_failure(conn, what, &f, outcome));
        }
        let recorded = async {
            insert_history(conn, m, ms(started.elapsed()), Dirty::Clean).await?;
            write_log(conn, "upgrade", m.version, &m.name, "").await?;
            crate::crash::reached(crate::crash::Point::MigrationBeforeCommit);
            conn.commit().await
        };
        if let Err(e) = recorded.await {
            let _ = conn.rollback().await;
            return Err(bookkeeping(e));
        }
        return Ok(());
    }
    insert_history(conn, m, 0, Dirty::Up)
        .await
        .map_err(bookkeeping)?;
    match run_sql(conn, &m.up, false).await {
        Ok(()) => {
            let sql = format!("UPDATE {HISTORY} SET dirty = 0, duration_ms = ?, applied_at = {} WHERE version = ?", conn.now_sql());
            conn.execute(&sql, &[ms(started.elapsed()).into(), m.version.into()])
                .await
                .map_err(bookkeeping)?;
            write_log(conn, "upgrade", m.version, &m.name, "outside a transaction")
                .await
                .map_err(bookkeeping)?;
            Ok(())
        }
        Err(f)
            if f.statements_done == 0
                && f.transient != Some(crate::db::Transient::ConnectionLost) =>
        {
            // Nothing ran, so nothing changed: no dirty record is needed.
            conn.execute(
                &format!("DELETE FROM {HISTORY} WHERE version = ?"),
                &[m.version.into()],
            )
            .await
            .map_err(bookkeeping)?;
            let outcome = "no statement of it had taken effect";
            log_failure(conn, "upgrade failed", m, &f, outcome).await;
            Err(unchanged_failure(conn, what, &f, outcome))
        }
        Err(f) => {
            let outcome = format!(
                "after {} statement(s) had already taken effect ({}); it is recorded as dirty",
                f.statements_done,
                why_statement_by_statement(conn, no_tx)
            );
            log_failure(conn, "upgrade failed", m, &f, &outcome).await;
            let lost = if f.transient == Some(crate::db::Transient::ConnectionLost) {
                " (the connection was lost: how far it got is unknown)"
            } else {
                ""
            };
            Err(Error::Dirty {
                message: format!("{what} failed: {}{lost}, {outcome}", f.message),
                advice: DIRTY_ADVICE.into(),
            })
        }
    }
}

/// Reverts one migration and removes its record, with the same guarantees as [`apply_up`].
pub(crate) async fn apply_down(conn: &mut Conn, m: &Migration) -> Result<()> {
    let what = format!("reverting migration {}", m.id());
    let delete = format!("DELETE FROM {HISTORY} WHERE version = ?");
    let no_tx = m.down_no_transaction();
    if in_one_transaction(conn, &m.down, no_tx) {
        conn.begin().await.map_err(bookkeeping)?;
        if let Err(f) = run_sql(conn, &m.down, true).await {
            let _ = conn.rollback().await;
            let outcome = "it was rolled back, nothing changed";
            log_failure(conn, "downgrade failed", m, &f, outcome).await;
            return Err(unchanged_failure(conn, what, &f, outcome));
        }
        let recorded = async {
            conn.execute(&delete, &[m.version.into()]).await?;
            write_log(conn, "downgrade", m.version, &m.name, "").await?;
            conn.commit().await
        };
        if let Err(e) = recorded.await {
            let _ = conn.rollback().await;
            return Err(bookkeeping(e));
        }
        return Ok(());
    }
    set_dirty(conn, m.version, Dirty::Down)
        .await
        .map_err(bookkeeping)?;
    match run_sql(conn, &m.down, false).await {
        Ok(()) => {
            conn.execute(&delete, &[m.version.into()])
                .await
                .map_err(bookkeeping)?;
            write_log(
                conn,
                "downgrade",
                m.version,
                &m.name,
                "outside a transaction",
            )
            .await
            .map_err(bookkeeping)?;
            Ok(())
        }
        Err(f)
            if f.statements_done == 0
                && f.transient != Some(crate::db::Transient::ConnectionLost) =>
        {
            set_dirty(conn, m.version, Dirty::Clean)
                .await
                .map_err(bookkeeping)?;
            let outcome = "no statement of it had taken effect";
            log_failure(conn, "downgrade failed", m, &f, outcome).await;
            Err(unchanged_failure(conn, what, &f, outcome))
        }
        Err(f) => {
            let outcome = format!(
                "after {} statement(s) had already taken effect ({}); it is recorded as dirty",
                f.statements_done,
                why_statement_by_statement(conn, no_tx)
            );
            log_failure(conn, "downgrade failed", m, &f, &outcome).await;
            Err(Error::Dirty {
                message: format!("{what} failed: {}, {outcome}", f.message),
                advice: DIRTY_ADVICE.into(),
            })
        }
    }
}

/// What an operator says a dirty migration's state now is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// All of the migration's changes are in place.
    Applied,
    /// None of them are.
    Reverted,
}

/// Refuses when a migration is recorded dirty: a data job over a half-applied
/// schema is what the dirty record exists to prevent.
pub async fn refuse_dirty(conn: &mut Conn) -> Result<()> {
    match applied(conn)
        .await?
        .iter()
        .find(|a| a.dirty != Dirty::Clean)
    {
        Some(a) => Err(dirty_error(a)),
        None => Ok(()),
    }
}

/// A table or column a migration's up creates, as far as its text says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Created {
    Table(String),
    Column(String, String),
}

/// An identifier as the catalogue holds it: quotes removed; unquoted, folded
/// to lower case where the database folds (PostgreSQL).
fn ident(word: &str, backend: Backend) -> String {
    let quoted = word.starts_with(['"', '`', '[']);
    let bare = word.trim_matches(|c| matches!(c, '"' | '`' | '[' | ']' | '(' | ';' | ','));
    let bare = bare.rsplit('.').next().unwrap_or(bare);
    if !quoted && backend == Backend::Postgres {
        bare.to_ascii_lowercase()
    } else {
        bare.to_string()
    }
}

/// The tables (`CREATE TABLE`) and columns (`ALTER TABLE … ADD [COLUMN]`) the
/// SQL creates, and how many of its statements change data (which no catalogue shows).
fn created_by(sql: &str, backend: Backend) -> (Vec<Created>, usize) {
    let mut created = Vec::new();
    let mut data = 0;
    for st in split::split(sql, flavor(backend)) {
        let start = st.sql.len() - strip_comments(&st.sql).len();
        let words: Vec<&str> = st.sql[start..].split_whitespace().collect();
        let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
        let is = |i: usize, w: &str| lower.get(i).is_some_and(|x| x == w);
        if is(0, "create") {
            let mut i = 1;
            while lower.get(i).is_some_and(|w| {
                matches!(
                    w.as_str(),
                    "temporary" | "temp" | "unlogged" | "or" | "replace"
                )
            }) {
                i += 1;
            }
            if is(i, "table") {
                i += 1;
                if is(i, "if") && is(i + 1, "not") && is(i + 2, "exists") {
                    i += 3;
                }
                if let Some(name) = words.get(i) {
                    let name = name.split('(').next().unwrap_or(name);
                    created.push(Created::Table(ident(name, backend)));
                }
            }
        } else if is(0, "alter") && is(1, "table") {
            let mut i = 2;
            if is(i, "if") && is(i + 1, "exists") {
                i += 2;
            }
            if is(i, "only") {
                i += 1;
            }
            let Some(table) = words.get(i).map(|t| ident(t, backend)) else {
                continue;
            };
            i += 1;
            if is(i, "add") {
                i += 1;
                if is(i, "column") {
                    i += 1;
                }
                if is(i, "if") && is(i + 1, "not") && is(i + 2, "exists") {
                    i += 3;
                }
                let constraint = lower.get(i).is_some_and(|w| {
                    matches!(
                        w.as_str(),
                        "constraint" | "primary" | "unique" | "foreign" | "check" | "index" | "key"
                    )
                });
                if let (Some(column), false) = (words.get(i), constraint) {
                    created.push(Created::Column(table, ident(column, backend)));
                }
            }
        } else if lower
            .first()
            .is_some_and(|w| matches!(w.as_str(), "insert" | "update" | "delete" | "replace"))
        {
            data += 1;
        }
    }
    (created, data)
}

/// Checks what `--dirty applied|reverted` asserts against the catalogue: the
/// tables and columns the migration's up creates exist (applied) or do not
/// (reverted). Returns what cannot be checked, for the operator to confirm.
async fn check_resolution(
    conn: &mut Conn,
    file: Option<&Migration>,
    resolution: Resolution,
) -> Result<Option<String>> {
    let Some(m) = file else {
        return Ok(Some(
            "its files are missing, so nothing of it could be checked".into(),
        ));
    };
    // Whichever way it failed, `applied` means the up's changes are there and
    // `reverted` that they are not.
    let (created, data) = created_by(&m.up, conn.backend());
    let mut wrong = Vec::new();
    for c in &created {
        let (exists, what) = match c {
            Created::Table(t) => (conn.table_exists(t).await, format!("table {t}")),
            Created::Column(t, col) => (
                conn.column_exists(t, col).await,
                format!("column {t}.{col}"),
            ),
        };
        let exists = exists.map_err(|e| Error::db("cannot read the catalogue", db_message(&e)))?;
        match (resolution, exists) {
            (Resolution::Reverted, true) => wrong.push(format!("{what} exists")),
            (Resolution::Applied, false) => wrong.push(format!("{what} does not exist")),
            _ => {}
        }
    }
    if !wrong.is_empty() {
        let (says, other) = match resolution {
            Resolution::Reverted => ("none of its changes are in place", "applied"),
            Resolution::Applied => ("all of its changes are in place", "reverted"),
        };
        return Err(Error::Dirty {
            message: format!(
                "`--dirty {}` says {says}, but the up file of {} creates what the database contradicts: {}",
                if resolution == Resolution::Applied { "applied" } else { "reverted" },
                m.id(),
                wrong.join(", ")
            ),
            advice: format!(
                "Finish or undo the change by hand so that this holds, then run the repair again \
                 (or `--dirty {other}` if that is what is true)"
            ),
        });
    }
    Ok((data > 0).then(|| {
        format!(
            "its {data} data change(s) (INSERT, UPDATE, DELETE) cannot be checked from the catalogue: make sure \
             they are {}",
            if resolution == Resolution::Applied { "in place" } else { "undone" }
        )
    }))
}

/// `schema repair`: accepts edited files' checksums and resolves dirty records,
/// leaving a record in the log of each thing it did.
pub async fn repair(
    conn: &mut Conn,
    migrations: &[Migration],
    dirty: Option<Resolution>,
    lock_timeout: Duration,
    out: Out<'_>,
) -> Result<usize> {
    locked(conn, lock_timeout, async |conn: &mut Conn| {
        let applied = applied(conn).await?;
        let mut fixed = 0;
        for a in &applied {
            let file = migrations.iter().find(|m| m.version == a.version);
            if a.dirty != Dirty::Clean {
                let Some(resolution) = dirty else {
                    return Err(dirty_error(a));
                };
                let unchecked = check_resolution(conn, file, resolution).await?;
                conn.begin().await.map_err(bookkeeping)?;
                let (sql, params, detail) = match resolution {
                    Resolution::Applied => {
                        let checksum = file.map_or(a.checksum.as_str(), |m| m.checksum.as_str());
                        (
                            format!(
                                "UPDATE {HISTORY} SET dirty = 0, checksum = ? WHERE version = ?"
                            ),
                            vec![checksum.into(), a.version.into()],
                            "dirty migration marked applied by the operator",
                        )
                    }
                    Resolution::Reverted => (
                        format!("DELETE FROM {HISTORY} WHERE version = ?"),
                        vec![a.version.into()],
                        "dirty migration marked reverted by the operator",
                    ),
                };
                conn.execute(&sql, &params).await.map_err(bookkeeping)?;
                write_log(conn, "repair", a.version, &a.name, detail)
                    .await
                    .map_err(bookkeeping)?;
                conn.commit().await.map_err(bookkeeping)?;
                out(format!("{}_{}: {detail}", a.version, a.name));
                if let Some(unchecked) = unchecked {
                    out(format!("warning: {}_{}: {unchecked}", a.version, a.name));
                }
                fixed += 1;
                continue;
            }
            if let Some(m) = file.filter(|m| m.checksum != a.checksum) {
                conn.begin().await.map_err(bookkeeping)?;
                conn.execute(
                    &format!("UPDATE {HISTORY} SET checksum = ? WHERE version = ?"),
                    &[m.checksum.as_str().into(), a.version.into()],
                )
                .await
                .map_err(bookkeeping)?;
                let detail = format!(
                    "accepted the edited file: checksum {} -> {}",
                    &a.checksum[..12.min(a.checksum.len())],
                    &m.checksum[..12]
                );
                write_log(conn, "repair", a.version, &a.name, &detail)
                    .await
                    .map_err(bookkeeping)?;
                conn.commit().await.map_err(bookkeeping)?;
                out(format!("{}: {detail}", m.id()));
                fixed += 1;
            }
        }
        if dirty.is_some() && !applied.iter().any(|a| a.dirty != Dirty::Clean) {
            return Err(Error::Usage(
                "no migration is dirty; --dirty is for a migration that failed halfway".into(),
            ));
        }
        Ok(fixed)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_tables_and_columns_an_up_creates() {
        let sql = "CREATE TABLE IF NOT EXISTS \"Orders\" (id INT);\nCREATE TABLE items(id INT);\n\
                   ALTER TABLE users ADD COLUMN email TEXT;\nALTER TABLE users ADD CONSTRAINT c CHECK (id > 0);\n\
                   ALTER TABLE Users ADD phone TEXT;\nINSERT INTO items VALUES (1);\nUPDATE items SET id = 2;\n";
        let (created, data) = created_by(sql, Backend::Postgres);
        assert_eq!(
            created,
            vec![
                Created::Table("Orders".into()),
                Created::Table("items".into()),
                Created::Column("users".into(), "email".into()),
                Created::Column("users".into(), "phone".into()),
            ]
        );
        assert_eq!(data, 2);
    }

    #[test]
    fn only_data_changes_roll_back_on_mysql() {
        assert!(rolls_back_on_mysql(
            "INSERT INTO a VALUES (1);\nUPDATE a SET x = 1;\n-- c\nDELETE FROM a;"
        ));
        assert!(!rolls_back_on_mysql(
            "INSERT INTO a VALUES (1);\nCREATE TABLE b (id INT);"
        ));
        assert!(!rolls_back_on_mysql(
            "START TRANSACTION;\nINSERT INTO a VALUES (1);\nCOMMIT;"
        ));
    }
}
