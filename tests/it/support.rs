//! Test support: a temporary project, a fresh database per test, and a way to
//! look into that database that does not go through datamig's own code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;

use sqlx::{Connection, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
    MySql,
}

pub fn postgres_server() -> String {
    std::env::var("DATAMIG_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn mysql_server() -> String {
    std::env::var("DATAMIG_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn with_database(server: &str, name: &str) -> String {
    let mut url = url::Url::parse(server).expect("test server URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A fresh, empty database for one test, dropped at the end.
pub struct TestDb {
    pub kind: Db,
    pub url: String,
    name: String,
    _dir: Option<tempfile::TempDir>,
    /// Whether this handle created the database (and drops it).
    owned: bool,
    /// The server's URL with its maintenance database (PostgreSQL, MariaDB).
    server: String,
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

impl TestDb {
    pub fn new(kind: Db) -> TestDb {
        let server = match kind {
            Db::Postgres => postgres_server(),
            _ => mysql_server(),
        };
        TestDb::on(kind, &server)
    }

    /// A fresh database on the server at `server` (PostgreSQL or MariaDB; SQLite
    /// ignores it).
    pub fn on(kind: Db, server: &str) -> TestDb {
        let server = server.to_string();
        let name = format!("dm_t_{:016x}", rand::random::<u64>());
        match kind {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite:{}", dir.path().join("test.db").display());
                TestDb {
                    kind,
                    url,
                    name,
                    _dir: Some(dir),
                    owned: true,
                    server,
                }
            }
            Db::Postgres | Db::MySql => {
                let sql = format!("CREATE DATABASE {name}");
                block_on(async {
                    match kind {
                        Db::Postgres => {
                            let mut c = sqlx::PgConnection::connect(&server).await.unwrap_or_else(|e| {
                                panic!("PostgreSQL test server at {server} is not reachable ({e}); start it (see README)")
                            });
                            sqlx::raw_sql(&sql)
                                .execute(&mut c)
                                .await
                                .expect("create database");
                        }
                        _ => {
                            let mut c = sqlx::MySqlConnection::connect(&server).await.unwrap_or_else(|e| {
                                panic!("MariaDB test server at {server} is not reachable ({e}); start it (see README)")
                            });
                            sqlx::raw_sql(&sql)
                                .execute(&mut c)
                                .await
                                .expect("create database");
                        }
                    }
                });
                TestDb {
                    kind,
                    url: with_database(&server, &name),
                    name,
                    _dir: None,
                    owned: true,
                    server,
                }
            }
        }
    }

    /// Another handle on the database at `url` (for a thread): it drops nothing.
    pub fn attach(url: &str) -> TestDb {
        let kind = if url.starts_with("postgres") {
            Db::Postgres
        } else if url.starts_with("mysql") {
            Db::MySql
        } else {
            Db::Sqlite
        };
        TestDb {
            kind,
            url: url.to_string(),
            name: String::new(),
            _dir: None,
            owned: false,
            server: String::new(),
        }
    }

    /// Runs `sql` (statements that open a transaction) on a connection of its
    /// own, tells `held`, keeps the transaction open for `hold`, then rolls back.
    pub fn hold(&self, sql: &str, hold: std::time::Duration, held: std::sync::mpsc::Sender<()>) {
        let (url, sql, kind) = (self.url.clone(), sql.to_string(), self.kind);
        block_on(async move {
            macro_rules! hold {
                ($conn:ty) => {{
                    let mut c = <$conn>::connect(&url).await.expect("connect");
                    sqlx::raw_sql(&sql)
                        .execute(&mut c)
                        .await
                        .expect("open the transaction");
                    held.send(()).unwrap();
                    tokio::time::sleep(hold).await;
                    sqlx::raw_sql("ROLLBACK")
                        .execute(&mut c)
                        .await
                        .expect("rollback");
                    c.close().await.unwrap();
                }};
            }
            match kind {
                Db::Sqlite => hold!(sqlx::SqliteConnection),
                Db::Postgres => hold!(sqlx::PgConnection),
                Db::MySql => hold!(sqlx::MySqlConnection),
            }
        });
    }

    /// Holds a snapshot open for `hold` on a connection of its own (what keeps
    /// vacuum, or purge, from cleaning up: `--max-transaction-age` sees it), from
    /// a thread; returns once it is open.
    pub fn hold_a_snapshot(&self, hold: std::time::Duration) -> std::thread::JoinHandle<()> {
        let url = self.url.clone();
        let (held, is_held) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let db = TestDb::attach(&url);
            let begin = if db.kind == Db::Postgres {
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM visits"
            } else {
                "START TRANSACTION WITH CONSISTENT SNAPSHOT; SELECT count(*) FROM visits"
            };
            db.hold(begin, hold, held);
        });
        is_held
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the snapshot opens");
        holder
    }

    /// Rows of a query, every column read as text (NULL as "NULL").
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        // Tests may set up tables before datamig ever opened the SQLite file.
        let url = if self.kind == Db::Sqlite {
            format!("{}?mode=rwc", self.url)
        } else {
            self.url.clone()
        };
        let sql = sql.to_string();
        let kind = self.kind;
        block_on(async move {
            macro_rules! rows {
                ($conn:ty) => {{
                    let mut c = <$conn>::connect(&url).await.expect("connect");
                    let rows = sqlx::raw_sql(&sql)
                        .fetch_all(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                    rows.iter()
                        .map(|r| {
                            (0..r.len())
                                .map(|i| {
                                    r.try_get::<Option<String>, _>(i)
                                        .ok()
                                        .or_else(|| {
                                            r.try_get::<Option<i64>, _>(i)
                                                .ok()
                                                .map(|v| v.map(|v| v.to_string()))
                                        })
                                        .or_else(|| {
                                            r.try_get::<Option<i32>, _>(i)
                                                .ok()
                                                .map(|v| v.map(|v| v.to_string()))
                                        })
                                        .or_else(|| {
                                            r.try_get::<Option<i16>, _>(i)
                                                .ok()
                                                .map(|v| v.map(|v| v.to_string()))
                                        })
                                        .flatten()
                                        .unwrap_or_else(|| "NULL".into())
                                })
                                .collect()
                        })
                        .collect()
                }};
            }
            match kind {
                Db::Sqlite => rows!(sqlx::SqliteConnection),
                Db::Postgres => rows!(sqlx::PgConnection),
                Db::MySql => rows!(sqlx::MySqlConnection),
            }
        })
    }

    pub fn exec(&self, sql: &str) {
        let _ = self.query(sql);
    }

    pub fn scalar(&self, sql: &str) -> i64 {
        let rows = self.query(sql);
        rows[0][0]
            .parse()
            .unwrap_or_else(|_| panic!("{sql} gave {:?}", rows[0][0]))
    }

    /// Inserts ids 1..=n into `table(id, …)`.
    pub fn fill_ids(&self, table: &str, n: i64) {
        let sql = match self.kind {
            Db::Postgres => format!("INSERT INTO {table} (id) SELECT g FROM generate_series(1, {n}) g"),
            Db::MySql => format!("INSERT INTO {table} (id) SELECT seq FROM seq_1_to_{n}"),
            Db::Sqlite => format!(
                "INSERT INTO {table} (id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) SELECT i FROM s"
            ),
        };
        self.exec(&sql);
    }

    pub fn table_exists(&self, table: &str) -> bool {
        if self.kind == Db::Sqlite && !Path::new(self.url.trim_start_matches("sqlite:")).exists() {
            return false;
        }
        let sql = match self.kind {
            Db::Sqlite => format!("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"),
            Db::Postgres => format!(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = '{table}'"
            ),
            Db::MySql => format!(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '{table}'"
            ),
        };
        self.scalar(&sql) > 0
    }

    /// Tables, columns and indexes, sorted: to compare a schema before and after.
    pub fn schema_dump(&self) -> Vec<String> {
        let sql = match self.kind {
            Db::Sqlite => "SELECT m.name || '.' || p.name || ' ' || p.type FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table' UNION ALL SELECT 'index ' || name FROM sqlite_master WHERE type = 'index'"
                .to_string(),
            Db::Postgres => "SELECT table_name || '.' || column_name || ' ' || data_type FROM information_schema.columns \
                 WHERE table_schema = current_schema() UNION ALL SELECT 'index ' || indexname FROM pg_indexes \
                 WHERE schemaname = current_schema()"
                .to_string(),
            Db::MySql => "SELECT CONCAT(TABLE_NAME, '.', COLUMN_NAME, ' ', COLUMN_TYPE) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() UNION ALL SELECT DISTINCT CONCAT('index ', TABLE_NAME, '.', INDEX_NAME) \
                 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()"
                .to_string(),
        };
        let mut rows: Vec<String> = self.query(&sql).into_iter().map(|r| r[0].clone()).collect();
        rows.sort();
        rows
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.kind == Db::Sqlite || !self.owned {
            return;
        }
        let (kind, name, server) = (self.kind, self.name.clone(), self.server.clone());
        // Drop on a thread of its own: this may run inside a test's runtime.
        let _ = std::thread::spawn(move || {
            block_on(async move {
                match kind {
                    Db::Postgres => {
                        if let Ok(mut c) = sqlx::PgConnection::connect(&server).await {
                            let _ = sqlx::raw_sql(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut c)
                            .await;
                        }
                    }
                    _ => {
                        if let Ok(mut c) = sqlx::MySqlConnection::connect(&server).await {
                            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
                                .execute(&mut c)
                                .await;
                        }
                    }
                }
            })
        })
        .join();
    }
}

/// A temporary project directory with a `migrations/` folder and a database.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
}

/// What the binary did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_datamig"))
}

impl Project {
    pub fn new(kind: Db) -> Project {
        Project::with(TestDb::new(kind))
    }

    /// A project on the database `db`.
    pub fn with(db: TestDb) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("migrations")).expect("mkdir");
        Project { dir, db }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies this repository's own migrations (`migrations/`) into the project,
    /// for tests of the shipped jobs.
    pub fn copy_project_migrations(&self) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for entry in std::fs::read_dir(repo).expect("the repository's migrations") {
            let path = entry.expect("a migration file").path();
            let to = self
                .path()
                .join("migrations")
                .join(path.file_name().expect("a file name"));
            std::fs::copy(&path, to).expect("copy a migration");
        }
    }

    /// Writes a migration pair.
    pub fn migration(&self, version: i64, name: &str, up: &str, down: &str) {
        let dir = self.path().join("migrations");
        std::fs::write(dir.join(format!("{version}_{name}.up.sql")), up).expect("write up");
        std::fs::write(dir.join(format!("{version}_{name}.down.sql")), down).expect("write down");
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(&bin(), args)
    }

    /// The command line with the test fixture jobs (`count_visits`, …) registered.
    pub fn fixtures(&self, args: &[&str]) -> Command {
        self.command_of(Path::new(env!("CARGO_BIN_EXE_datamig-fixtures")), args)
    }

    pub fn run_fixtures(&self, args: &[&str]) -> Run {
        to_run(self.fixtures(args).output().expect("run datamig-fixtures"))
    }

    pub fn command_of(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(self.path())
            .env("DATABASE_URL", &self.db.url)
            .env_remove("DATAMIG_ENV")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        to_run(self.command(args).output().expect("run datamig"))
    }

    /// Runs and asserts exit 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, 0, "datamig {args:?} failed:\n{run:?}");
        run
    }

    /// Starts `n` processes at once and waits for them all.
    pub fn run_concurrently(&self, n: usize, args: &[&str]) -> Vec<Run> {
        let children: Vec<_> = (0..n)
            .map(|_| {
                self.command(args)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn datamig")
            })
            .collect();
        children
            .into_iter()
            .map(|c| to_run(c.wait_with_output().expect("wait")))
            .collect()
    }

    pub fn applied_versions(&self) -> Vec<i64> {
        if !self.db.table_exists("datamig_schema_history") {
            return Vec::new();
        }
        self.db
            .query("SELECT version FROM datamig_schema_history ORDER BY version")
            .into_iter()
            .map(|r| r[0].parse().expect("version"))
            .collect()
    }
}

pub fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `$body` once per database, as three tests: `sqlite`, `postgres`, `mariadb`.
#[macro_export]
macro_rules! each_db {
    ($(fn $name:ident($kind:ident: Db) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn body($kind: $crate::support::Db) $body
                #[test]
                fn sqlite() { body($crate::support::Db::Sqlite) }
                #[test]
                fn postgres() { body($crate::support::Db::Postgres) }
                #[test]
                fn mariadb() { body($crate::support::Db::MySql) }
            }
        )*
    };
}

/// Runs `$test` (a function of the database kind) once per server database, as
/// two tests: `$name::postgres` and `$name::mariadb`. For what SQLite has no
/// counterpart of: a server to restart, a replica, row-lock partition claims.
#[macro_export]
macro_rules! each_server {
    ($($name:ident: $test:expr;)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                #[test]
                fn postgres() { ($test)($crate::support::Db::Postgres) }
                #[test]
                fn mariadb() { ($test)($crate::support::Db::MySql) }
            }
        )*
    };
}

pub fn url_parts(url: &str) -> url::Url {
    url::Url::from_str(url).expect("url")
}

/// Whether the scratch database that `schema test` printed is gone.
pub fn scratch_is_gone(db: &TestDb, stdout: &str) -> bool {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("scratch database: "))
        .expect("scratch line");
    let name = line.rsplit('/').next().unwrap_or_default().to_string();
    match db.kind {
        Db::Sqlite => !Path::new(line.trim_start_matches("sqlite:")).exists(),
        Db::Postgres => {
            db.scalar(&format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
            )) == 0
        }
        Db::MySql => {
            db.scalar(&format!(
                "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{name}'"
            )) == 0
        }
    }
}

/// Holds datamig's schema lock from outside datamig while `f` runs, the way a
/// second runner would: the same advisory key, `GET_LOCK` name, or lock file.
pub fn hold_schema_lock<T>(db: &TestDb, f: impl FnOnce() -> T) -> T {
    hold_lock(db, "schema", f)
}

/// Holds datamig's named lock (`schema`, `job.NAME`) while `f` runs.
pub fn hold_lock<T>(db: &TestDb, name: &str, f: impl FnOnce() -> T) -> T {
    match db.kind {
        Db::Sqlite => {
            let path = format!(
                "{}.datamig-schema.lock",
                db.url.trim_start_matches("sqlite:")
            );
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .unwrap();
            file.try_lock().expect("lock file");
            let out = f();
            file.unlock().unwrap();
            out
        }
        Db::Postgres => block_on(async {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(datamig_core::db::lock_key(name))
                .execute(&mut c)
                .await
                .unwrap();
            let out = f();
            c.close().await.unwrap();
            out
        }),
        Db::MySql => block_on(async {
            let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
            let sql = format!(
                "SELECT GET_LOCK({}, 0)",
                datamig_core::db::MYSQL_LOCK_NAME_SQL
            );
            let got: Option<i64> = sqlx::query_scalar(&sql)
                .bind(name)
                .fetch_one(&mut c)
                .await
                .unwrap();
            assert_eq!(got, Some(1));
            let out = f();
            c.close().await.unwrap();
            out
        }),
    }
}

/// Makes the replicas the replica-lag tests watch, if they are missing
/// (`tests/replicas.sh`: a PostgreSQL standby on 5433, a MariaDB primary and
/// replica on 3307 and 3308), once per test process; the script itself waits
/// for another process making them. So the README's test command passes on a
/// fresh machine, with nothing run before it.
pub fn ensure_replicas() {
    static MADE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let made = MADE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/replicas.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}): {}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = made {
        panic!("the replicas for this test could not be made: {e}");
    }
}
