//! [`Conn`]: one connection to any of the three databases, dispatching to the
//! driver of its backend. Shared code talks only to `Conn`, with `?`
//! placeholders, which `Conn` rewrites for PostgreSQL.

use std::fmt;
use std::time::Duration;

use super::classify::{connect_reason, error};
use super::driver::inline;
use super::{
    mysql, postgres, sqlite, BulkUpdate, ConnectOptions, Driver, Health, Row, Value, ADDED_COLUMNS,
    BOOKKEEPING_TABLES,
};
use crate::config::{Backend, DatabaseUrl};
use crate::{Error, Result};

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

    /// Whether another connection opened as this one was ([`Conn::reopen`])
    /// sees the same database: not for an SQLite memory database, which is
    /// its connection's own.
    pub fn shares_database(&self) -> bool {
        self.backend() != Backend::Sqlite || self.url.sqlite_path().is_some()
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
        if let Some(script) = self.begin_script(sql, params) {
            return self.script_rows(&script).await;
        }
        self.begin().await?;
        self.execute(sql, params).await
    }

    /// `BEGIN; <sql with its parameters inlined>`, where the driver can inline them.
    fn begin_script(&self, sql: &str, params: &[Value]) -> Option<String> {
        let begin = dispatch_static!(self, D => D::BEGIN);
        let text = dispatch_static!(self, D => inline::<D>(sql, params))?;
        Some(format!("{begin}; {text}"))
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
        if let Some(sql) = dispatch_static!(self, D => D::READ_COMMITTED) {
            self.script(sql).await?;
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
        // Made by the runner that held the lock while this one waited for it?
        // Then no DDL: on SQLite even `CREATE TABLE IF NOT EXISTS` of a table
        // that is there asks for the write lock, and a run that has just
        // started holds it between back-to-back batches, so this runner would
        // wait out the whole run behind it and only then be told it is running
        // (or start a second run after it).
        let result = match self.bookkeeping_complete().await.map_err(creating) {
            Ok(true) => Ok(()),
            Ok(false) => self.create_bookkeeping().await.map_err(creating),
            Err(e) => Err(e),
        };
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
        let sql = dispatch_static!(self, D => D::COLUMN_EXISTS_SQL);
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

    /// Inserts `rows` (values in the order of `columns`) into `table`, in
    /// statements of at most [`MAX_PARAMS`](super::MAX_PARAMS) values, doing
    /// `on_conflict` with a row whose unique key is taken, and returning
    /// `returning`'s columns of each row inserted when asked (`RETURNING`, which
    /// all three databases have for an insert). One `(rows affected, rows
    /// returned)` per statement.
    pub async fn insert_rows(
        &mut self,
        table: &str,
        columns: &[&str],
        types: &[String],
        rows: &[Row],
        on_conflict: super::OnConflict<'_>,
        returning: &[&str],
    ) -> sqlx::Result<Vec<(u64, Vec<Row>)>> {
        use super::OnConflict;
        let quote =
            |names: &[&str]| -> Vec<String> { names.iter().map(|c| self.quote_ident(c)).collect() };
        let names = quote(columns);
        let conflict = match on_conflict {
            OnConflict::Fail => String::new(),
            OnConflict::Ignore => {
                dispatch_static!(self, D => D::on_conflict(&names, &[], &[]))
            }
            OnConflict::Update { on, set } => {
                let (on, set) = (quote(on), quote(set));
                dispatch_static!(self, D => D::on_conflict(&names, &on, &set))
            }
        };
        let returning = if returning.is_empty() {
            String::new()
        } else {
            format!(" RETURNING {}", quote(returning).join(", "))
        };
        let width = columns.len().max(1);
        // Each value as the column's type, where the types are given and the
        // database needs it said ([`Driver::value_mark`]).
        let marks: Vec<String> = (0..width)
            .map(|i| match types.get(i) {
                Some(t) => dispatch_static!(self, D => D::value_mark(t)),
                None => "?".into(),
            })
            .collect();
        let tuple = format!("({})", marks.join(", "));
        let mut out = Vec::new();
        for chunk in rows.chunks((super::MAX_PARAMS / width).max(1)) {
            let sql = format!(
                "INSERT INTO {} ({}) VALUES {}{conflict}{returning}",
                self.quote_ident(table),
                names.join(", "),
                vec![tuple.as_str(); chunk.len()].join(", ")
            );
            let params: Vec<Value> = chunk.iter().flatten().cloned().collect();
            if returning.is_empty() {
                out.push((self.execute(&sql, &params).await?, Vec::new()));
            } else {
                let got = self.fetch(&sql, &params).await?;
                out.push((u64::try_from(got.len()).unwrap_or(u64::MAX), got));
            }
        }
        Ok(out)
    }

    pub async fn bulk_update(&mut self, spec: &BulkUpdate, rows: &[Row]) -> sqlx::Result<u64> {
        dispatch!(self, c => bulk_update(spec, rows))
    }

    /// A column that finds a row of `table` faster than its key, read and used
    /// within one transaction (SQLite's rowid, where the table has one); `None`
    /// on the servers, and where there is none.
    pub async fn row_locator(&mut self, table: &str) -> Option<String> {
        dispatch!(self, c => row_locator(table))
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
    pub async fn health(&mut self) -> sqlx::Result<Health> {
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

    /// A sum (NUMERIC on PostgreSQL, DECIMAL on MariaDB) cast back to an integer.
    pub fn integer(&self, expr: &str) -> String {
        match dispatch_static!(self, D => D::INTEGER_CAST) {
            Some(ty) => format!("CAST({expr} AS {ty})"),
            None => expr.to_string(),
        }
    }

    /// See [`Driver::SINGLE_WRITER`].
    pub fn single_writer(&self) -> bool {
        dispatch_static!(self, D => D::SINGLE_WRITER)
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

    /// See [`Driver::CHUNK_BY_BOUND`].
    pub fn chunks_by_bound(&self) -> bool {
        dispatch_static!(self, D => D::CHUNK_BY_BOUND)
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
    /// `keys OP (?, …)`, each key qualified by `table` (a quoted name or an
    /// alias) when given.
    pub fn compare_keys(
        &self,
        table: Option<&str>,
        keys: &[String],
        marks: &[String],
        op: &str,
    ) -> (String, Vec<usize>) {
        let quoted: Vec<String> = keys
            .iter()
            .map(|k| match table {
                Some(t) => format!("{t}.{}", self.quote_ident(k)),
                None => self.quote_ident(k),
            })
            .collect();
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
        let sql = dispatch_static!(self, D => D::TABLE_EXISTS_SQL);
        let row = self.fetch_one(sql, &[table.into()]).await?;
        Ok(row.first().and_then(Value::as_i64).unwrap_or(0) > 0)
    }

    /// Shared SQL uses `?`; PostgreSQL wants `$1, $2, …`.
    fn placeholders(&self, sql: &str) -> String {
        if !dispatch_static!(self, D => D::NUMBERED_PLACEHOLDERS) || !sql.contains('?') {
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
