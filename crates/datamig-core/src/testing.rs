//! Testing a job in a plain `#[test]`: a temporary database, seeded, the job run
//! against it, stopped at a chosen batch and resumed, and the rows asserted on —
//! the same engine `datamig run` uses, in the test's own process.
//!
//! [`TestDb::new`] gives a temporary SQLite file, or, when
//! `DATAMIG_TEST_DATABASE_URL` names a PostgreSQL or MariaDB server, a scratch
//! database created on it for this test alone; either is removed when the
//! [`TestDb`] is dropped. A team's CI runs its tests once per database by setting
//! the variable.
//!
//! ```
//! use std::sync::Arc;
//! use datamig_core::prelude::*;
//! use datamig_core::testing::TestDb;
//!
//! /// Lowercases `people.name` into `people.lower`.
//! struct Lowercase;
//!
//! impl Job for Lowercase {
//!     type Args = NoArgs;
//!     fn name(&self) -> &'static str { "lowercase_names" }
//!     fn description(&self) -> &'static str { "people.lower from people.name" }
//!     fn plan(&self, _: &NoArgs, _: &PlanContext) -> Result<Plan, String> {
//!         Ok(Plan {
//!             source: Source::table("people", "id").columns(&["name"]),
//!             step: Step::Transform(Arc::new(ToLower)),
//!             checks: vec![Check::new(
//!                 "people without lower",
//!                 "SELECT count(*) FROM people WHERE lower IS NULL",
//!                 Expect::Zero,
//!             )],
//!         })
//!     }
//! }
//!
//! struct ToLower;
//!
//! impl Transform for ToLower {
//!     fn writes(&self) -> Vec<String> { vec!["lower".into()] }
//!     fn apply(&self, row: &SourceRow<'_>) -> Outcome {
//!         match row.text("name") {
//!             Ok(name) => Outcome::Update(vec![Value::Text(name.unwrap_or_default().to_lowercase())]),
//!             Err(reason) => Outcome::Reject(reason),
//!         }
//!     }
//! }
//!
//! let db = TestDb::new().unwrap();
//! db.exec("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, lower TEXT)").unwrap();
//! for id in 1..=10 {
//!     db.exec(&format!("INSERT INTO people (id, name) VALUES ({id}, 'Name {id}')")).unwrap();
//! }
//! let job = db.job(&Lowercase).batch(3);
//!
//! // Stopped after its second batch, as an interrupted run would be…
//! let first = job.run_batches(2).unwrap();
//! assert_eq!(first.rows_done, 6);
//! assert_eq!(db.count("SELECT count(*) FROM people WHERE lower IS NOT NULL").unwrap(), 6);
//!
//! // …and resumed where it stopped: the checks run at the end.
//! let rest = job.run().unwrap();
//! assert!(rest.resumed);
//! assert_eq!(rest.rows_this_process, 4);
//! assert_eq!(db.count("SELECT count(*) FROM people WHERE lower = 'name 7'").unwrap(), 1);
//! ```

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::{Backend, DatabaseUrl};
use crate::db::{db_message, Conn, ConnectOptions, Row, Scratch, Value};
use crate::job::{DynJob, Job};
use crate::migrate::{self, UpTarget};
use crate::run::{self, Observer, Options, Progress, Report};
use crate::{Error, Result};

/// The variable that points the tests at a server instead of SQLite.
pub const TEST_DATABASE_URL: &str = "DATAMIG_TEST_DATABASE_URL";

/// A database of a test's own, removed when dropped; see the [module](self).
pub struct TestDb {
    // Dropped in this order: the connection, then the database, then the runtime.
    conn: Mutex<Option<Conn>>,
    scratch: Option<Scratch>,
    url: DatabaseUrl,
    rt: tokio::runtime::Runtime,
}

impl TestDb {
    /// A database on the server `DATAMIG_TEST_DATABASE_URL` names, or a
    /// temporary SQLite file when it is unset.
    pub fn new() -> Result<TestDb> {
        match std::env::var(TEST_DATABASE_URL) {
            Ok(url) if !url.trim().is_empty() => TestDb::beside(&url),
            _ => TestDb::sqlite(),
        }
    }

    /// A temporary SQLite file.
    pub fn sqlite() -> Result<TestDb> {
        TestDb::beside("sqlite:datamig-test.db")
    }

    /// A new, empty database beside the one `url` names (on its server; for
    /// SQLite, in a temporary directory), for this test alone.
    pub fn beside(url: &str) -> Result<TestDb> {
        let base = DatabaseUrl::parse(url)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the test's runtime: {e}")))?;
        let opts = ConnectOptions::default();
        let scratch = rt.block_on(Scratch::create(&base, &opts))?;
        let url = scratch.url.clone();
        let conn = rt.block_on(Conn::connect(&url, &opts))?;
        Ok(TestDb {
            conn: Mutex::new(Some(conn)),
            scratch: Some(scratch),
            url,
            rt,
        })
    }

    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    /// The database's URL, as `datamig --database-url` would take it.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    fn with_conn<T>(&self, f: impl AsyncFnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        let mut held = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = held
            .as_mut()
            .ok_or_else(|| Error::Config("the test database is closed".into()))?;
        self.rt.block_on(f(conn))
    }

    /// Runs one statement (or, without parameters, a script of several) and
    /// returns the rows it changed.
    pub fn exec(&self, sql: &str) -> Result<u64> {
        self.exec_with(sql, &[])
    }

    /// Runs one statement with `?`-marked parameters (`$1` on PostgreSQL).
    pub fn exec_with(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.with_conn(async |conn| {
            let done = if params.is_empty() {
                conn.script_rows(sql).await
            } else {
                conn.execute(sql, params).await
            };
            done.map_err(|e| failed(sql, &e))
        })
    }

    /// The rows a query returns.
    pub fn rows(&self, sql: &str) -> Result<Vec<Row>> {
        self.with_conn(async |conn| conn.fetch(sql, &[]).await.map_err(|e| failed(sql, &e)))
    }

    /// The first column of the first row a query returns (`Value::Null` for none).
    pub fn value(&self, sql: &str) -> Result<Value> {
        Ok(self
            .rows(sql)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .unwrap_or(Value::Null))
    }

    /// A count (or any whole number) a query returns.
    pub fn count(&self, sql: &str) -> Result<i64> {
        let v = self.value(sql)?;
        v.as_i64()
            .ok_or_else(|| Error::Invalid(format!("{sql} returned {v:?}, not a whole number")))
    }

    /// Applies every migration in `dir` (a project's `migrations/`), as
    /// `datamig schema upgrade head` does.
    pub fn migrate(&self, dir: impl AsRef<std::path::Path>) -> Result<()> {
        let loaded = migrate::source::load(dir.as_ref())?;
        if !loaded.errors.is_empty() {
            return Err(Error::Problems(loaded.errors));
        }
        self.with_conn(async |conn| {
            let mut quiet = |_: String| {};
            migrate::upgrade(
                conn,
                &loaded.migrations,
                UpTarget::Head,
                &migrate::RunOptions::default(),
                &mut quiet,
            )
            .await
            .map(|_| ())
        })
    }

    /// A job to run against this database, with the command line's defaults.
    pub fn job<'a, J: Job>(&'a self, job: &'a J) -> TestRun<'a> {
        TestRun {
            db: self,
            job,
            args: Vec::new(),
            opts: Options::default(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let conn = self
            .conn
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(conn) = conn {
            self.rt.block_on(conn.close());
        }
        if let Some(scratch) = self.scratch.take() {
            if let Err(e) = self.rt.block_on(scratch.drop_now()) {
                eprintln!("warning: the test database was not removed: {e}");
            }
        }
    }
}

fn failed(sql: &str, e: &sqlx::Error) -> Error {
    Error::Invalid(format!("{sql}: {}", db_message(e)))
}

/// A job with its arguments and options, run against a [`TestDb`] as often as
/// a test likes: each [`run`](TestRun::run) is an invocation of `datamig run`
/// (a new connection, the job lock taken and released), so a second one
/// resumes what the first left.
pub struct TestRun<'a> {
    db: &'a TestDb,
    job: &'a dyn DynJob,
    args: Vec<(String, String)>,
    opts: Options,
}

impl TestRun<'_> {
    /// `--arg key=value`.
    pub fn arg(mut self, key: &str, value: &str) -> Self {
        self.args.push((key.into(), value.into()));
        self
    }

    /// `--batch rows`.
    pub fn batch(mut self, rows: u64) -> Self {
        self.opts.pace.batch_size = rows;
        self
    }

    /// `--workers n` (PostgreSQL and MariaDB).
    pub fn workers(mut self, n: usize) -> Self {
        self.opts.scale.workers = Some(n);
        self
    }

    /// `--sleep`: a pause after each batch.
    pub fn sleep(mut self, pause: Duration) -> Self {
        self.opts.pace.sleep = pause;
        self
    }

    /// Any other option, as the engine takes it.
    pub fn options(mut self, change: impl FnOnce(&mut Options)) -> Self {
        change(&mut self.opts);
        self
    }

    /// Runs (or resumes) the job to its end and verifies it: the report of a
    /// completed run, or the error `datamig run` would exit with (a failed
    /// check is [`Error::VerificationFailed`]).
    pub fn run(&self) -> Result<Report> {
        self.invoke(self.opts.clone())
    }

    /// Runs (or resumes) the job and stops it cleanly once `n` batches have
    /// committed, as `--max-batches n` does: the report says where it stopped
    /// ([`Report::stopped`]), and the next run resumes there.
    pub fn run_batches(&self, n: u64) -> Result<Report> {
        let mut opts = self.opts.clone();
        opts.window.max_batches = Some(n);
        self.invoke(opts)
    }

    /// `--restart`: abandons an unfinished run and starts over.
    pub fn restart(&self) -> Result<Report> {
        let mut opts = self.opts.clone();
        opts.restart = true;
        self.invoke(opts)
    }

    fn invoke(&self, opts: Options) -> Result<Report> {
        let args = self.job.parse_args(&self.args).map_err(Error::Usage)?;
        let url = &self.db.url;
        self.db.rt.block_on(async {
            let mut conn = Conn::connect(url, &ConnectOptions::default()).await?;
            let stop = AtomicBool::new(false);
            let result = run::run(&mut conn, self.job, &args, &opts, &stop, &mut Silent).await;
            conn.close().await;
            result
        })
    }
}

/// A run's progress, not shown: a test asserts on the report instead.
struct Silent;

impl Observer for Silent {
    fn message(&mut self, _: &str) {}
    fn started(&mut self, _: &Progress) {}
    fn batch(&mut self, _: &Progress) {}
    fn finished(&mut self, _: &Progress) {}
}
