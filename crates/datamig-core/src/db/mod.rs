//! The one place where SQLite, PostgreSQL and MariaDB/MySQL differ.
//!
//! [`Driver`] is the small contract each database implements in its own file
//! (`sqlite.rs`, `postgres.rs`, `mysql.rs`): connect, run SQL with [`Value`]
//! parameters, lock, introspect. [`Conn`] is a connection to any of them; shared
//! code (migrations, bookkeeping, jobs) talks only to `Conn` and writes its SQL
//! with `?` placeholders, which `Conn` rewrites for PostgreSQL.

mod mysql;
mod postgres;
mod sqlite;

use std::fmt;
use std::time::Duration;

use crate::config::{Backend, DatabaseUrl};
use crate::{Error, Result};

/// A value going to or coming from the database, whatever the backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// A date and time without a zone, by convention UTC (`TIMESTAMP` on
    /// PostgreSQL, `DATETIME` on MariaDB, `YYYY-MM-DD HH:MM:SS` text on SQLite).
    /// Bind timestamps as this, not as text: PostgreSQL evaluates
    /// `CAST(? AS TIMESTAMP)` of a text parameter again for every row it filters.
    Timestamp(chrono::NaiveDateTime),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::Bool(b) => Some(i64::from(*b)),
            Value::Text(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// Text, or bytes that are UTF-8 (MariaDB reports some catalogue columns as binary).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn into_string(self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s),
            Value::Bytes(b) => String::from_utf8(b).ok(),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<chrono::NaiveDateTime> for Value {
    fn from(v: chrono::NaiveDateTime) -> Self {
        Value::Timestamp(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

pub type Row = Vec<Value>;

/// sqlx reports statements slower than this at [`SLOW_STATEMENT_LOG`]: debug,
/// not its default warning, for a count or a check over a large table rightly
/// takes seconds, and a slow batch has datamig's own warning
/// (`--warn-batch-time`). `RUST_LOG=sqlx=debug` shows them.
pub(crate) const SLOW_STATEMENT: Duration = Duration::from_secs(1);
pub(crate) const SLOW_STATEMENT_LOG: log::LevelFilter = log::LevelFilter::Debug;

/// Options for opening a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// How long to wait for the server to answer.
    pub timeout: Duration,
    /// Shown to the server (PostgreSQL `application_name`) so an operator sees
    /// who holds a lock.
    pub application_name: String,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            application_name: format!("datamig {}", who_am_i()),
        }
    }
}

/// `user@host pid N`: recorded with every change and shown with locks.
pub fn who_am_i() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{user}@{host} pid {}", std::process::id())
}

/// What each database implements, in its own file. Static dispatch through [`Conn`].
#[allow(async_fn_in_trait)]
pub(crate) trait Driver {
    type Connection: Send;

    /// Whether DDL is transactional (a failed migration rolls back entirely).
    const TRANSACTIONAL_DDL: bool;
    /// The statement that opens a write transaction.
    const BEGIN: &'static str;
    /// `CREATE TABLE IF NOT EXISTS` statements for datamig's own tables.
    const BOOKKEEPING_DDL: &'static [&'static str];

    async fn connect(
        url: &DatabaseUrl,
        opts: &ConnectOptions,
    ) -> Result<Self::Connection, sqlx::Error>;
    async fn execute(c: &mut Self::Connection, sql: &str, params: &[Value]) -> sqlx::Result<u64>;
    async fn fetch(c: &mut Self::Connection, sql: &str, params: &[Value])
        -> sqlx::Result<Vec<Row>>;
    /// Runs SQL text that may hold several statements, without parameters.
    async fn script(c: &mut Self::Connection, sql: &str) -> sqlx::Result<()>;
    /// As [`Driver::script`], returning the rows its statements changed.
    async fn script_rows(c: &mut Self::Connection, sql: &str) -> sqlx::Result<u64>;
    async fn close(c: Self::Connection);

    /// Tries once to take the named lock (`schema`, `job.NAME`); never blocks.
    /// Held until [`Driver::unlock`] or until the connection (or process) ends.
    async fn try_lock(c: &mut Self::Connection, name: &str) -> Result<bool>;
    async fn unlock(c: &mut Self::Connection, name: &str) -> Result<()>;
    /// Who holds the named lock, for the message when it cannot be had.
    async fn lock_holder(c: &mut Self::Connection, name: &str) -> Option<String>;

    /// Writes new values for a batch of rows in one round trip (or, on SQLite,
    /// one prepared statement in the batch's transaction). Returns rows changed.
    async fn bulk_update(
        c: &mut Self::Connection,
        spec: &BulkUpdate,
        rows: &[Row],
    ) -> sqlx::Result<u64>;
    /// The SQL type of each column, where the bulk update must cast (PostgreSQL).
    async fn column_types(
        c: &mut Self::Connection,
        table: &str,
        columns: &[String],
    ) -> sqlx::Result<Vec<String>>;
    /// The planner's estimate of how many rows a query returns (from EXPLAIN,
    /// without running it): cheap on huge tables. `None` where there is none.
    async fn estimate(
        c: &mut Self::Connection,
        sql: &str,
        params: &[Value],
    ) -> sqlx::Result<Option<i64>>;

    /// How the plan of `sql` reads `table` in full, without running it (EXPLAIN):
    /// one line per full scan, none when every read of it uses an index.
    async fn full_scans(
        c: &mut Self::Connection,
        sql: &str,
        params: &[Value],
        table: &str,
    ) -> sqlx::Result<Vec<String>>;

    /// What the health throttle compares with its limits (see `run::throttle`),
    /// not counting this process's own sessions where the database can tell them.
    async fn health(c: &mut Self::Connection) -> sqlx::Result<crate::run::throttle::Health>;

    /// How far this server, a replica, is behind its primary (`None`: its
    /// replication is stopped); an error when it is not a replica.
    async fn replica_lag(c: &mut Self::Connection) -> sqlx::Result<Option<Duration>>;

    /// Locks the rows a transform reads until the batch commits.
    const FOR_UPDATE: &'static str = " FOR UPDATE";

    /// Whether a transform reads its next batch on a second connection while the
    /// current one is written (see `run::batch`).
    const READ_AHEAD: bool = true;

    /// Session settings that bound how long a batch's statement waits for a lock
    /// and how long it may run (`None`: no limit).
    /// The session settings for these timeouts; `idle` is how long the server
    /// lets the session sit idle inside a transaction before ending it (so that
    /// a session whose client vanished mid-batch releases its locks).
    fn timeouts(lock: Duration, statement: Option<Duration>, idle: Option<Duration>)
        -> Vec<String>;

    /// Whether a database error says the user lacks a privilege, or the database
    /// is read-only.
    fn permission_denied(err: &(dyn sqlx::error::DatabaseError + 'static)) -> bool;

    /// Whether a database error passes if the batch is tried again.
    fn transient(err: &(dyn sqlx::error::DatabaseError + 'static)) -> Option<Transient>;

    /// What a read outside the write's transaction selects with each row so that
    /// the write can tell whether the row changed since: a guarded
    /// [`Driver::bulk_update`] takes these values after the keys and new values.
    /// The source columns themselves by default; a row version where there is one.
    fn guard_select(columns: &[String]) -> Vec<String> {
        columns.iter().map(|c| Self::quote_ident(c)).collect()
    }

    /// Session settings for running batches (not schema migrations).
    const BATCH_SESSION: &'static [&'static str] = &[];

    /// SQL that makes every transaction committed before it durable, for a
    /// driver whose [`Driver::BATCH_SESSION`] commits without waiting for that
    /// (PostgreSQL's asynchronous commit); `None` where every commit is durable.
    const FLUSH_COMMITS: Option<&'static str> = None;

    /// Whether a batch's checkpoint goes to the server in one round trip with
    /// its COMMIT, as SQL text with the values written out ([`Driver::text_literal`]).
    const CHECKPOINT_WITH_COMMIT: bool = false;

    /// A string as an SQL literal, for the drivers that send a checkpoint as text.
    fn text_literal(text: &str) -> Option<String> {
        let _ = text;
        None
    }

    /// A parameter written out as an SQL literal of the type it is bound as, for
    /// the drivers that send a batch's BEGIN with its first statement
    /// ([`Conn::begin_with`]); `None` where it cannot be, or is not done.
    fn literal(value: &Value) -> Option<String> {
        let _ = value;
        None
    }

    /// `keys OP (?, …)` for keyset pagination, and which key value each `?` takes;
    /// `marks[i]` is key `i`'s placeholder ([`Driver::key_mark`]). Row values by
    /// default; MariaDB plans the expanded form better.
    fn compare_keys(keys: &[String], marks: &[String], op: &str) -> (String, Vec<usize>) {
        if keys.len() == 1 {
            return (format!("{} {op} {}", keys[0], marks[0]), vec![0]);
        }
        (
            format!("({}) {op} ({})", keys.join(", "), marks.join(", ")),
            (0..keys.len()).collect(),
        )
    }

    /// The placeholder a key value of a column of SQL type `column_type` is
    /// compared with: `?`, or `?` cast to the column's type where the value
    /// travels as text (a PostgreSQL `uuid` key, read as its text).
    fn key_mark(column_type: &str) -> String {
        let _ = column_type;
        "?".into()
    }

    /// Refreshes the planner's statistics of a table (its name already quoted).
    fn analyze_sql(table: &str) -> String {
        format!("ANALYZE {table}")
    }

    /// The user schema as sorted lines, one per object (datamig's tables left out).
    async fn snapshot(c: &mut Self::Connection) -> Result<Vec<String>>;
    /// SQL that yields the current UTC time for a timestamp column.
    fn now_sql() -> &'static str;
    /// The server's clock in milliseconds since the Unix epoch, as an SQL
    /// expression: leases are timed by the database, not by the hosts' clocks.
    fn epoch_ms_sql() -> &'static str;
    /// SQL that renders a timestamp column as ISO-8601 text.
    fn timestamp_text(column: &str) -> String;
    fn quote_ident(name: &str) -> String;
}

/// A result's rows as [`Value`]s: each column's kind resolved once, from the
/// first row's columns (`kind`), then every value that is not NULL decoded as
/// its column's kind (`value`, given the row and the column's index). Matching
/// the type by name for every value was a fifth of datamig's CPU in a batch.
pub(crate) fn decode_rows<R, K: Copy>(
    rows: &[R],
    kind: impl Fn(&<R::Database as sqlx::Database>::Column) -> sqlx::Result<K>,
    value: impl Fn(K, &R, usize) -> std::result::Result<Value, sqlx::error::BoxDynError>,
) -> sqlx::Result<Vec<Row>>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
{
    use sqlx::ValueRef as _;
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let kinds = first
        .columns()
        .iter()
        .map(kind)
        .collect::<sqlx::Result<Vec<K>>>()?;
    // Sized up front: a collected iterator of Results grows a batch's vector by
    // doubling, copying it a dozen times (that version cost the client about a
    // fifth more CPU in interleaved runs).
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut values = Vec::with_capacity(kinds.len());
        for (index, k) in kinds.iter().enumerate() {
            if row.try_get_raw(index)?.is_null() {
                values.push(Value::Null);
                continue;
            }
            values.push(
                value(*k, row, index).map_err(|source| sqlx::Error::ColumnDecode {
                    index: index.to_string(),
                    source,
                })?,
            );
        }
        out.push(values);
    }
    Ok(out)
}

/// Binds [`Value`]s to a query of any driver (the types differ, the mapping does not).
macro_rules! bind_values {
    ($query:expr, $params:expr) => {{
        let mut q = $query;
        for p in $params {
            q = match p {
                // A typed NULL: bigint converts to every column type on assignment.
                Value::Null => q.bind(None::<i64>),
                Value::Bool(v) => q.bind(*v),
                Value::Int(v) => q.bind(*v),
                Value::Float(v) => q.bind(*v),
                Value::Text(v) => q.bind(v.as_str()),
                Value::Bytes(v) => q.bind(v.as_slice()),
                Value::Timestamp(v) => q.bind(*v),
            };
        }
        q
    }};
}
pub(crate) use bind_values;

/// `sql` with each `?` outside a quoted string replaced by its parameter as a
/// literal ([`Driver::literal`]); `None` when a parameter has none, or the
/// counts of placeholders and parameters differ.
fn inline<D: Driver>(sql: &str, params: &[Value]) -> Option<String> {
    let mut values = params.iter();
    let mut out = String::with_capacity(sql.len() + 24 * params.len());
    let mut in_quote = false;
    for ch in sql.chars() {
        match ch {
            '\'' => {
                in_quote = !in_quote;
                out.push(ch);
            }
            '?' if !in_quote => out.push_str(&D::literal(values.next()?)?),
            _ => out.push(ch),
        }
    }
    values.next().is_none().then_some(out)
}

/// `err`, from doing `context`, as the engine's error: a missing privilege as
/// [`Error::Permission`] (its own exit code, and what to do), anything else as a
/// database error.
pub(crate) fn error(context: &str, err: &sqlx::Error) -> Error {
    let denied = match err {
        sqlx::Error::Database(db) => {
            let db = db.as_ref();
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                postgres::Postgres::permission_denied(db)
            } else if db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some()
            {
                mysql::MySql::permission_denied(db)
            } else {
                sqlite::Sqlite::permission_denied(db)
            }
        }
        _ => false,
    };
    if denied {
        return Error::Permission(format!(
            "{context}: {}. The database user may not do this: datamig creates and writes its own \
             tables (datamig_*) and writes the job's tables; grant that, or connect as a user who may",
            db_message(err)
        ));
    }
    Error::db(context, db_message(err))
}

/// Runs catalogue queries that each yield one text column, and collects the lines.
pub(crate) async fn catalogue_lines<D: Driver>(
    c: &mut D::Connection,
    queries: &[String],
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for sql in queries {
        for row in D::fetch(c, sql, &[])
            .await
            .map_err(|e| Error::db("cannot read the schema", db_message(&e)))?
        {
            if let Some(line) = row.into_iter().next().and_then(Value::into_string) {
                lines.push(line);
            }
        }
    }
    Ok(lines)
}

/// Columns added to datamig's tables after their first release: table, column,
/// and its type in a syntax all three databases take. [`Conn::ensure_bookkeeping`]
/// adds those missing from a table an earlier version created; a new table gets
/// them the same way, so each is defined once, here.
pub const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // A pause, resume or cancel asked for by `datamig pause|resume|cancel`.
    ("datamig_runs", "request", "VARCHAR(20)"),
    // Who asked for it, and when.
    ("datamig_runs", "request_by", "VARCHAR(255)"),
    // A file's length matching the checkpoint: a CSV import's read position, an
    // archive's size (a file written past it belongs to a batch that rolled back).
    ("datamig_runs", "file_offset", "BIGINT"),
    // The run's rate limit (`--rate`, as `Rate::canonical` writes it), which
    // every process on the run keeps to.
    ("datamig_runs", "rate", "VARCHAR(40)"),
];

/// Runs `{explain} {sql}` (an EXPLAIN that prints JSON in one cell) and parses
/// that cell; `null` when there is none or it is not JSON.
pub(crate) async fn explain_json<D: Driver>(
    c: &mut D::Connection,
    explain: &str,
    sql: &str,
    params: &[Value],
) -> sqlx::Result<serde_json::Value> {
    let rows = D::fetch(c, &format!("{explain} {sql}"), params).await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .and_then(Value::into_string)
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default())
}

/// datamig's own tables, all created by [`Conn::ensure_bookkeeping`].
pub const BOOKKEEPING_TABLES: &[&str] = &[
    "datamig_schema_history",
    "datamig_schema_log",
    "datamig_runs",
    "datamig_rejects",
    "datamig_batches",
    "datamig_partitions",
];

enum Inner {
    Sqlite(sqlite::SqliteConn),
    Postgres(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
}

/// A dedicated connection to any of the three databases.
pub struct Conn {
    inner: Inner,
    url: DatabaseUrl,
    /// How it was opened: every other connection a command opens (a reader,
    /// workers, a reconnect) is opened the same way, through [`Conn::reopen`].
    opts: ConnectOptions,
}

macro_rules! dispatch {
    ($self:expr, $c:ident => $call:ident ( $($arg:expr),* )) => {
        match &mut $self.inner {
            Inner::Sqlite($c) => sqlite::Sqlite::$call($c, $($arg),*).await,
            Inner::Postgres($c) => postgres::Postgres::$call($c, $($arg),*).await,
            Inner::MySql($c) => mysql::MySql::$call($c, $($arg),*).await,
        }
    };
}

macro_rules! dispatch_static {
    ($self:expr, $driver:ident => $e:expr) => {
        match &$self.inner {
            Inner::Sqlite(_) => {
                type $driver = sqlite::Sqlite;
                $e
            }
            Inner::Postgres(_) => {
                type $driver = postgres::Postgres;
                $e
            }
            Inner::MySql(_) => {
                type $driver = mysql::MySql;
                $e
            }
        }
    };
}

impl Conn {
    /// Opens a connection, turning every failure into one line that says what
    /// to check, with the URL redacted.
    pub async fn connect(url: &DatabaseUrl, opts: &ConnectOptions) -> Result<Conn> {
        let fail = |reason: String| Error::Connect {
            url: url.redacted().to_string(),
            reason,
        };
        let attempt = async {
            Ok::<_, sqlx::Error>(match url.backend() {
                Backend::Sqlite => Inner::Sqlite(sqlite::Sqlite::connect(url, opts).await?),
                Backend::Postgres => Inner::Postgres(postgres::Postgres::connect(url, opts).await?),
                Backend::MySql => Inner::MySql(mysql::MySql::connect(url, opts).await?),
            })
        };
        let inner = tokio::time::timeout(opts.timeout, attempt)
            .await
            .map_err(|_| {
                let t = opts.timeout;
                let within = if t.subsec_millis() == 0 {
                    format!("{}s", t.as_secs())
                } else {
                    format!("{}ms", t.as_millis())
                };
                fail(format!(
                    "no answer within {within}; is the server running and reachable? (--connect-timeout raises the limit)"
                ))
            })?
            .map_err(|e| fail(connect_reason(url, &e)))?;
        Ok(Conn {
            inner,
            url: url.clone(),
            opts: opts.clone(),
        })
    }

    /// Another connection to the same database, opened as this one was (the
    /// command line's `--connect-timeout` and all): the one connection factory
    /// of a command.
    pub async fn reopen(&self) -> Result<Conn> {
        Conn::connect(&self.url, &self.opts).await
    }

    /// How this connection was opened.
    pub fn connect_options(&self) -> &ConnectOptions {
        &self.opts
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> sqlx::Result<u64> {
        let sql = self.placeholders(sql);
        dispatch!(self, c => execute(&sql, params))
    }

    pub async fn fetch(&mut self, sql: &str, params: &[Value]) -> sqlx::Result<Vec<Row>> {
        let sql = self.placeholders(sql);
        dispatch!(self, c => fetch(&sql, params))
    }

    pub async fn fetch_one(&mut self, sql: &str, params: &[Value]) -> sqlx::Result<Row> {
        self.fetch(sql, params)
            .await?
            .into_iter()
            .next()
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Runs SQL text that may hold several statements (a migration file).
    pub async fn script(&mut self, sql: &str) -> sqlx::Result<()> {
        dispatch!(self, c => script(sql))
    }

    /// See [`Driver::script_rows`].
    pub async fn script_rows(&mut self, sql: &str) -> sqlx::Result<u64> {
        dispatch!(self, c => script_rows(sql))
    }

    /// See [`Driver::CHECKPOINT_WITH_COMMIT`].
    pub fn checkpoint_with_commit(&self) -> bool {
        dispatch_static!(self, D => D::CHECKPOINT_WITH_COMMIT)
    }

    /// See [`Driver::text_literal`].
    pub fn text_literal(&self, text: &str) -> Option<String> {
        dispatch_static!(self, D => D::text_literal(text))
    }

    /// Begins a transaction whose first statement is `sql`, and runs it: in one
    /// round trip where the driver can write the parameters out as literals
    /// ([`Driver::literal`]), otherwise BEGIN, then the statement. Returns the
    /// rows it affected. A delete batch is three round trips (BEGIN, DELETE,
    /// checkpoint with COMMIT) without this, and two with it.
    pub async fn begin_with(&mut self, sql: &str, params: &[Value]) -> sqlx::Result<u64> {
        let begin = dispatch_static!(self, D => D::BEGIN);
        if let Some(text) = dispatch_static!(self, D => inline::<D>(sql, params)) {
            return self.script_rows(&format!("{begin}; {text}")).await;
        }
        self.begin().await?;
        self.execute(sql, params).await
    }

    /// Whether [`Conn::begin_with`] saves a round trip on this connection.
    pub fn begins_with_statement(&self) -> bool {
        dispatch_static!(self, D => D::literal(&Value::Null)).is_some()
    }

    pub async fn begin(&mut self) -> sqlx::Result<()> {
        let begin = dispatch_static!(self, D => D::BEGIN);
        self.script(begin).await
    }

    /// BEGIN of a short transaction over datamig's own rows at READ COMMITTED:
    /// PostgreSQL's default, while MariaDB's REPEATABLE READ would take gap locks
    /// on the rows a locking read passes, making claims and splits of a run's
    /// partitions wait on each other.
    pub async fn begin_read_committed(&mut self) -> sqlx::Result<()> {
        if self.backend() == Backend::MySql {
            self.script("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .await?;
        }
        self.begin().await
    }

    pub async fn commit(&mut self) -> sqlx::Result<()> {
        self.script("COMMIT").await
    }

    pub async fn rollback(&mut self) -> sqlx::Result<()> {
        self.script("ROLLBACK").await
    }

    pub async fn close(self) {
        match self.inner {
            Inner::Sqlite(c) => sqlite::Sqlite::close(c).await,
            Inner::Postgres(c) => postgres::Postgres::close(c).await,
            Inner::MySql(c) => mysql::MySql::close(c).await,
        }
    }

    pub fn transactional_ddl(&self) -> bool {
        dispatch_static!(self, D => D::TRANSACTIONAL_DDL)
    }

    pub fn now_sql(&self) -> &'static str {
        dispatch_static!(self, D => D::now_sql())
    }

    pub fn epoch_ms_sql(&self) -> &'static str {
        dispatch_static!(self, D => D::epoch_ms_sql())
    }

    pub fn timestamp_text(&self, column: &str) -> String {
        dispatch_static!(self, D => D::timestamp_text(column))
    }

    pub fn quote_ident(&self, name: &str) -> String {
        dispatch_static!(self, D => D::quote_ident(name))
    }

    /// Creates datamig's own tables if they are not there, and adds the columns
    /// later versions added ([`ADDED_COLUMNS`]) to tables an earlier one made.
    ///
    /// Two runners creating them at once can collide even with `IF NOT EXISTS`
    /// (PostgreSQL's catalogue race), so creation happens under a lock of its own.
    pub async fn ensure_bookkeeping(&mut self) -> Result<()> {
        let creating = |e: sqlx::Error| error("cannot create datamig's tables", &e);
        if self.bookkeeping_complete().await.map_err(creating)? {
            return Ok(());
        }
        let started = std::time::Instant::now();
        while !self.try_lock("bookkeeping").await? {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(Error::LockTimeout(
                    "another runner is creating datamig's tables and has not finished in 30 s"
                        .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let result = self.create_bookkeeping().await.map_err(creating);
        self.unlock("bookkeeping").await?;
        result
    }

    /// Whether datamig's tables are all there, with every column this version reads.
    pub async fn bookkeeping_complete(&mut self) -> sqlx::Result<bool> {
        for table in BOOKKEEPING_TABLES {
            if !self.table_exists(table).await? {
                return Ok(false);
            }
        }
        for (table, column, _) in ADDED_COLUMNS {
            if !self.column_exists(table, column).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn create_bookkeeping(&mut self) -> sqlx::Result<()> {
        let ddl = dispatch_static!(self, D => D::BOOKKEEPING_DDL);
        for statement in ddl {
            self.script(statement).await?;
        }
        for (table, column, ty) in ADDED_COLUMNS {
            if !self.column_exists(table, column).await? {
                self.script(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                    .await?;
            }
        }
        Ok(())
    }

    /// Whether `table` in the current database/schema has `column`.
    pub async fn column_exists(&mut self, table: &str, column: &str) -> sqlx::Result<bool> {
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT count(*) FROM pragma_table_info(?) WHERE name = ?",
            Backend::Postgres => {
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() \
                 AND table_name = ? AND column_name = ?"
            }
            Backend::MySql => {
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
                 AND table_name = ? AND column_name = ?"
            }
        };
        let row = self.fetch_one(sql, &[table.into(), column.into()]).await?;
        Ok(row.first().and_then(Value::as_i64).unwrap_or(0) > 0)
    }

    pub(crate) async fn try_lock(&mut self, name: &str) -> Result<bool> {
        dispatch!(self, c => try_lock(name))
    }

    pub(crate) async fn unlock(&mut self, name: &str) -> Result<()> {
        dispatch!(self, c => unlock(name))
    }

    pub(crate) async fn lock_holder(&mut self, name: &str) -> Option<String> {
        dispatch!(self, c => lock_holder(name))
    }

    pub async fn bulk_update(&mut self, spec: &BulkUpdate, rows: &[Row]) -> sqlx::Result<u64> {
        dispatch!(self, c => bulk_update(spec, rows))
    }

    pub async fn column_types(
        &mut self,
        table: &str,
        columns: &[String],
    ) -> sqlx::Result<Vec<String>> {
        dispatch!(self, c => column_types(table, columns))
    }

    /// See [`Driver::estimate`].
    pub async fn estimate(&mut self, sql: &str, params: &[Value]) -> sqlx::Result<Option<i64>> {
        let sql = self.placeholders(sql);
        dispatch!(self, c => estimate(&sql, params))
    }

    /// Refreshes the planner's statistics of `table`.
    pub async fn analyze(&mut self, table: &str) -> sqlx::Result<()> {
        let sql = dispatch_static!(self, D => D::analyze_sql(&D::quote_ident(table)));
        self.script(&sql).await
    }

    /// See [`Driver::full_scans`].
    pub async fn full_scans(
        &mut self,
        sql: &str,
        params: &[Value],
        table: &str,
    ) -> sqlx::Result<Vec<String>> {
        let sql = self.placeholders(sql);
        dispatch!(self, c => full_scans(&sql, params, table))
    }

    /// See [`Driver::health`].
    pub async fn health(&mut self) -> sqlx::Result<crate::run::throttle::Health> {
        dispatch!(self, c => health())
    }

    /// See [`Driver::replica_lag`].
    pub async fn replica_lag(&mut self) -> sqlx::Result<Option<Duration>> {
        dispatch!(self, c => replica_lag())
    }

    /// Bounds lock waits and (with `statement`) statement time for this session.
    pub async fn set_timeouts(
        &mut self,
        lock: Duration,
        statement: Option<Duration>,
        idle: Option<Duration>,
    ) -> sqlx::Result<()> {
        let statements = dispatch_static!(self, D => D::timeouts(lock, statement, idle));
        for sql in statements {
            self.script(&sql).await?;
        }
        Ok(())
    }

    /// See [`Transient::of`].
    pub fn transient(&self, err: &sqlx::Error) -> Option<Transient> {
        Transient::of(self.backend(), err)
    }

    /// Applies the driver's session settings for running batches.
    pub async fn prepare_for_batches(&mut self) -> sqlx::Result<()> {
        let statements = dispatch_static!(self, D => D::BATCH_SESSION);
        for sql in statements {
            self.script(sql).await?;
        }
        Ok(())
    }

    /// Makes every commit before it durable ([`Driver::FLUSH_COMMITS`]): sent
    /// before datamig reports a state (a run started, ended) that a server
    /// crash must not take back.
    pub async fn flush_commits(&mut self) -> sqlx::Result<()> {
        match dispatch_static!(self, D => D::FLUSH_COMMITS) {
            Some(sql) => self.script(sql).await,
            None => Ok(()),
        }
    }

    pub fn for_update(&self) -> &'static str {
        dispatch_static!(self, D => D::FOR_UPDATE)
    }

    /// See [`Driver::READ_AHEAD`].
    pub fn reads_ahead(&self) -> bool {
        dispatch_static!(self, D => D::READ_AHEAD)
    }

    /// See [`Driver::guard_select`].
    pub fn guard_select(&self, columns: &[String]) -> Vec<String> {
        dispatch_static!(self, D => D::guard_select(columns))
    }

    /// `keys OP (?, …)` with quoted key columns; see [`Driver::compare_keys`].
    pub fn compare_keys(
        &self,
        keys: &[String],
        marks: &[String],
        op: &str,
    ) -> (String, Vec<usize>) {
        let quoted: Vec<String> = keys.iter().map(|k| self.quote_ident(k)).collect();
        dispatch_static!(self, D => D::compare_keys(&quoted, marks, op))
    }

    /// See [`Driver::key_mark`].
    pub fn key_mark(&self, column_type: &str) -> String {
        dispatch_static!(self, D => D::key_mark(column_type))
    }

    /// The user schema as sorted lines, for comparing before and after.
    pub async fn snapshot(&mut self) -> Result<Vec<String>> {
        let mut lines = dispatch!(self, c => snapshot())?;
        lines.sort();
        Ok(lines)
    }

    /// Whether a table exists in the current database/schema.
    pub async fn table_exists(&mut self, table: &str) -> sqlx::Result<bool> {
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
            Backend::Postgres => {
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?"
            }
            Backend::MySql => {
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?"
            }
        };
        let row = self.fetch_one(sql, &[table.into()]).await?;
        Ok(row.first().and_then(Value::as_i64).unwrap_or(0) > 0)
    }

    /// Shared SQL uses `?`; PostgreSQL wants `$1, $2, …`.
    fn placeholders(&self, sql: &str) -> String {
        if self.backend() != Backend::Postgres || !sql.contains('?') {
            return sql.to_string();
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let (mut n, mut in_quote) = (0, false);
        for ch in sql.chars() {
            match ch {
                '\'' => {
                    in_quote = !in_quote;
                    out.push(ch);
                }
                '?' if !in_quote => {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                }
                _ => out.push(ch),
            }
        }
        out
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Conn({})", self.url)
    }
}

/// Why a statement failed in a way that trying again can fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// It waited longer than the lock timeout for a row or table lock.
    LockTimeout,
    /// It ran longer than the statement timeout.
    StatementTimeout,
    /// The server chose it as a deadlock's victim, or a serialization failure.
    Deadlock,
    /// The connection was lost: killed from the server, a restart, the network.
    ConnectionLost,
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transient::LockTimeout => "lock timeout",
            Transient::StatementTimeout => "statement timeout",
            Transient::Deadlock => "deadlock",
            Transient::ConnectionLost => "connection lost",
        })
    }
}

impl Transient {
    /// Classifies an error from a `backend` connection; `None` when trying again
    /// would fail the same way.
    pub fn of(backend: Backend, err: &sqlx::Error) -> Option<Transient> {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::PoolClosed
            | sqlx::Error::PoolTimedOut => Some(Transient::ConnectionLost),
            sqlx::Error::Database(db) => match backend {
                Backend::Sqlite => sqlite::Sqlite::transient(db.as_ref()),
                Backend::Postgres => postgres::Postgres::transient(db.as_ref()),
                Backend::MySql => mysql::MySql::transient(db.as_ref()),
            },
            _ => None,
        }
    }
}

/// A bulk write of new values, keyed by the source key, bounded to the batch's
/// key range (so the planner uses the index: see BENCHMARKS.md).
#[derive(Debug, Clone)]
pub struct BulkUpdate {
    pub table: String,
    pub keys: Vec<String>,
    pub sets: Vec<String>,
    /// SQL types of `keys` then `sets`, where the driver casts (PostgreSQL).
    pub types: Vec<String>,
    /// The first key column's lowest and highest value in the batch.
    pub lo: Value,
    pub hi: Value,
    /// Write a row only if it is as it was read; see [`Guard`].
    pub guard: Option<Guard>,
}

/// For a write whose rows were read outside its transaction (overlapped with the
/// previous batch's write): each row carries, after its keys and new values, the
/// values [`Conn::guard_select`] read with it, and is written only if the row is
/// unchanged since and still matches the source filter. The caller compares the
/// rows written with the rows given and redoes the batch under row locks when
/// they differ.
#[derive(Debug, Clone)]
pub struct Guard {
    /// The source columns the transform read.
    pub columns: Vec<String>,
    /// Their SQL types, from [`Conn::column_types`].
    pub types: Vec<String>,
    /// The source filter (`?` placeholders) and its parameters.
    pub filter: Option<(String, Vec<Value>)>,
}

/// A planner's row estimate (a float in EXPLAIN's output) as a row count.
pub(crate) fn rows_estimate(value: f64) -> Option<i64> {
    // EXPLAIN's figures are guesses: rounding one loses nothing.
    #[allow(clippy::cast_possible_truncation)]
    (0.0..9.0e18).contains(&value).then(|| value.round() as i64)
}

/// A stable 64-bit key for a named lock (PostgreSQL advisory locks).
pub fn lock_key(name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("datamig:{name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// The server-wide `GET_LOCK` name for a named lock in the current database (MariaDB/MySQL).
pub const MYSQL_LOCK_NAME_SQL: &str =
    "CONCAT('datamig.', LEFT(SHA2(CONCAT(IFNULL(DATABASE(), ''), '/', ?), 256), 40))";

/// The database's own words for an error, with its code: what users search for.
pub fn db_message(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => match (mysql::error_number(db.as_ref()), db.code()) {
            (Some(number), _) => format!("{} (error {number})", db.message()),
            (None, Some(code)) => format!("{} (code {code})", db.message()),
            (None, None) => db.message().to_string(),
        },
        sqlx::Error::Io(e) => format!("connection lost: {e}"),
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".into(),
        other => other.to_string(),
    }
}

/// Turns a connection failure into one line saying what to check.
fn connect_reason(url: &DatabaseUrl, err: &sqlx::Error) -> String {
    let db = url.database_name().unwrap_or_default();
    match err {
        sqlx::Error::Database(e) => {
            // MySQL's SQLSTATEs are too coarse (42000 for a missing database): use its error number.
            let code = mysql::error_number(e.as_ref())
                .map(|n| n.to_string())
                .unwrap_or_else(|| e.code().unwrap_or_default().to_string());
            match code.as_str() {
                // PostgreSQL invalid_password / invalid_authorization_specification; MySQL access denied.
                "28P01" | "28000" | "1045" | "1044" | "1698" => format!(
                    "authentication failed ({}); check the user and password in the URL",
                    e.message()
                ),
                "3D000" | "1049" => {
                    format!("database `{db}` does not exist; create it first or fix the URL")
                }
                _ => db_message(err),
            }
        }
        sqlx::Error::Io(e) => {
            format!("{e}; is the server running, and are the host and port right?")
        }
        sqlx::Error::Tls(e) => format!("TLS failed: {e}; check sslmode / ssl-mode in the URL"),
        sqlx::Error::Configuration(e) => format!(
            "the URL is not valid for the driver: {}",
            redact_text(&e.to_string())
        ),
        other => redact_text(&db_message(other)),
    }
}

/// Driver messages rarely include URLs, but when one does, cut out its userinfo.
fn redact_text(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_inclusive(char::is_whitespace) {
        match (word.find("://"), word.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                out.push_str(&word[..s + 3]);
                out.push_str("***");
                out.push_str(&word[at..]);
            }
            _ => out.push_str(word),
        }
    }
    out
}

/// Quotes an identifier with the given quote character, doubling it inside.
pub(crate) fn quote_with(name: &str, q: char) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push(q);
    for ch in name.chars() {
        if ch == q {
            s.push(q);
        }
        s.push(ch);
    }
    s.push(q);
    s
}

/// A scratch database on the same server, for `schema test`. Dropped by [`Scratch::drop_now`].
pub struct Scratch {
    pub url: DatabaseUrl,
    admin: Option<Conn>,
    name: String,
    _dir: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A temporary directory removed on drop (for scratch SQLite files).
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What every scratch database's name starts with:
/// `datamig_scratch_<pid>_<unix seconds>_<random>`.
const SCRATCH_PREFIX: &str = "datamig_scratch_";

/// A scratch database left by a `schema test` that did not end (killed, or
/// the machine lost), found by [`Scratch::leftovers`].
#[derive(Debug, Clone)]
pub struct Leftover {
    /// The database's name (a directory's path for SQLite).
    pub name: String,
    /// Why it counts as left behind.
    pub why: String,
}

/// A scratch database no process has used for this long, and that no session
/// is connected to, is one a `schema test` left behind.
const LEFTOVER_AGE: i64 = 600;

/// The pid and creation time in a scratch database's name.
fn scratch_origin(name: &str) -> Option<(u32, i64)> {
    let mut parts = name.strip_prefix(SCRATCH_PREFIX)?.split('_');
    let pid = parts.next()?.parse().ok()?;
    let at = parts.next()?.parse().ok()?;
    Some((pid, at))
}

impl Scratch {
    /// Creates an empty database beside the one `url` names.
    pub async fn create(url: &DatabaseUrl, opts: &ConnectOptions) -> Result<Scratch> {
        let name = format!(
            "{SCRATCH_PREFIX}{}_{}_{:08x}",
            std::process::id(),
            chrono::Utc::now().timestamp(),
            rand::random::<u32>()
        );
        match url.backend() {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
                let file = dir.join("scratch.db");
                let url = DatabaseUrl::parse(&format!("sqlite:{}", file.display()))?;
                Ok(Scratch {
                    url,
                    admin: None,
                    name,
                    _dir: Some(tempfile_dir::TempDir(dir)),
                })
            }
            _ => {
                let mut admin = Conn::connect(url, opts).await?;
                let sql = format!("CREATE DATABASE {}", admin.quote_ident(&name));
                admin.script(&sql).await.map_err(|e| {
                    Error::db(
                        "cannot create a scratch database for the test (the user needs CREATE DATABASE; or pass --scratch-url)",
                        db_message(&e),
                    )
                })?;
                let scratch_url = url.with_database(&name)?;
                Ok(Scratch {
                    url: scratch_url,
                    admin: Some(admin),
                    name,
                    _dir: None,
                })
            }
        }
    }

    /// Scratch databases beside the one `url` names that earlier `schema test`s
    /// left behind: on a server, those no session is connected to and older
    /// than a few minutes (their process may be on another host); for SQLite,
    /// the scratch directories of processes on this machine that are gone.
    pub async fn leftovers(url: &DatabaseUrl, opts: &ConnectOptions) -> Result<Vec<Leftover>> {
        let now = chrono::Utc::now().timestamp();
        let old = |name: &str| scratch_origin(name).is_none_or(|(_, at)| now - at > LEFTOVER_AGE);
        match url.backend() {
            Backend::Sqlite => {
                let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
                    return Ok(Vec::new());
                };
                let mut found = Vec::new();
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(pid) = name
                        .strip_prefix(SCRATCH_PREFIX)
                        .and_then(|rest| rest.split('_').next())
                        .and_then(|pid| pid.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    let gone = cfg!(target_os = "linux")
                        && std::path::Path::new("/proc/self").exists()
                        && !std::path::Path::new(&format!("/proc/{pid}")).exists();
                    if gone && entry.path().join("scratch.db").exists() {
                        found.push(Leftover {
                            name: entry.path().display().to_string(),
                            why: format!("process {pid} is gone"),
                        });
                    }
                }
                found.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(found)
            }
            backend => {
                let mut admin = Conn::connect(url, opts).await?;
                let sql = match backend {
                    Backend::Postgres => format!(
                        "SELECT d.datname FROM pg_database d WHERE d.datname LIKE '{SCRATCH_PREFIX}%' \
                         AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname) \
                         ORDER BY 1"
                    ),
                    _ => format!(
                        "SELECT s.SCHEMA_NAME FROM information_schema.SCHEMATA s WHERE s.SCHEMA_NAME LIKE \
                         '{SCRATCH_PREFIX}%' AND NOT EXISTS (SELECT 1 FROM information_schema.PROCESSLIST p \
                         WHERE p.DB = s.SCHEMA_NAME) ORDER BY 1"
                    ),
                };
                let rows = admin.fetch(&sql, &[]).await;
                admin.close().await;
                // Seeing others' databases is not everyone's privilege: then
                // there is nothing to report.
                let Ok(rows) = rows else {
                    return Ok(Vec::new());
                };
                Ok(rows
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().and_then(Value::into_string))
                    .filter(|name| old(name))
                    .map(|name| Leftover {
                        name,
                        why: "no session uses it".into(),
                    })
                    .collect())
            }
        }
    }

    /// Drops the leftovers [`Scratch::leftovers`] found.
    pub async fn drop_leftovers(
        url: &DatabaseUrl,
        opts: &ConnectOptions,
        leftovers: &[Leftover],
    ) -> Result<()> {
        if url.backend() == Backend::Sqlite {
            for l in leftovers {
                std::fs::remove_dir_all(&l.name)
                    .map_err(|e| Error::io("cannot remove the scratch directory", &l.name, e))?;
            }
            return Ok(());
        }
        let mut admin = Conn::connect(url, opts).await?;
        for l in leftovers {
            let sql = format!("DROP DATABASE IF EXISTS {}", admin.quote_ident(&l.name));
            if let Err(e) = admin.script(&sql).await {
                admin.close().await;
                return Err(Error::db(
                    format!("cannot drop the scratch database {}", l.name),
                    db_message(&e),
                ));
            }
        }
        admin.close().await;
        Ok(())
    }

    /// Drops the scratch database.
    pub async fn drop_now(mut self) -> Result<()> {
        if let Some(mut admin) = self.admin.take() {
            // A statement still running there (a test cut short mid-migration)
            // would hold DROP DATABASE back on MariaDB until it ends: end it.
            if admin.backend() == Backend::MySql {
                let ids = admin
                    .fetch(
                        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
                        &[self.name.as_str().into()],
                    )
                    .await
                    .unwrap_or_default();
                for id in ids.iter().filter_map(|r| r.first().and_then(Value::as_i64)) {
                    let _ = admin.script(&format!("KILL {id}")).await;
                }
            }
            let force = if admin.backend() == Backend::Postgres {
                " WITH (FORCE)"
            } else {
                ""
            };
            let sql = format!(
                "DROP DATABASE IF EXISTS {}{force}",
                admin.quote_ident(&self.name)
            );
            admin
                .script(&sql)
                .await
                .map_err(|e| Error::db("cannot drop the scratch database", db_message(&e)))?;
            admin.close().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_in_driver_text() {
        assert_eq!(
            redact_text("bad url postgres://u:pw@h/db here"),
            "bad url postgres://***@h/db here"
        );
    }

    #[test]
    fn inlines_parameters_outside_quotes_only() {
        type Pg = postgres::Postgres;
        let ts = chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
            .and_then(|d| d.and_hms_micro_opt(3, 4, 5, 6))
            .map(Value::Timestamp);
        let params = [
            Value::Int(-5),
            Value::Text("it's ?".into()),
            Value::Bytes(vec![0, 0xff]),
            Value::Null,
            Value::Float(f64::NEG_INFINITY),
            ts.unwrap_or(Value::Null),
        ];
        assert_eq!(
            inline::<Pg>("a = ? AND b = '?' AND c = ? AND d = ? AND e IS ? AND f = ? AND g = ?", &params)
                .as_deref(),
            Some(
                "a = '-5'::int8 AND b = '?' AND c = 'it''s ?'::text AND d = '\\x00ff'::bytea \
                 AND e IS NULL::int8 AND f = '-Infinity'::float8 AND g = '2026-01-02 03:04:05.000006'::timestamp"
            )
        );
        // Too few or too many parameters, and text PostgreSQL cannot hold.
        assert_eq!(inline::<Pg>("a = ? AND b = ?", &params[..1]), None);
        assert_eq!(inline::<Pg>("a = ?", &params[..2]), None);
        assert_eq!(inline::<Pg>("a = ?", &[Value::Text("\0".into())]), None);
        // The other drivers send parameters apart.
        assert_eq!(inline::<mysql::MySql>("a = ?", &params[..1]), None);
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_with("a\"b", '"'), "\"a\"\"b\"");
        assert_eq!(quote_with("t`x", '`'), "`t``x`");
    }
}
