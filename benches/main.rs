//! `datamig-bench`: datamig against the database's own limit, measured in one run.
//!
//! For each database it seeds the tables the shipped jobs use, then times, in the
//! same run and alternating their order round by round, the same change done as
//! one SQL statement (the limit) and as datamig jobs, and prints Markdown tables
//! (BENCHMARKS.md holds a copy of the results with the machine they ran on).
//!
//! ```text
//! cargo build --release && ./target/release/datamig-bench [--db sqlite,postgres,mariadb]
//!     [--rows 1000000] [--rounds 5] [--batch 5000] [--only main,delete,sweep,cpu,growth,floor]
//! ```
//!
//! Jobs run as a user runs them: the release `datamig-fixtures` binary (the
//! project's jobs plus the CPU-heavy fixture), under `/usr/bin/time` for peak RSS,
//! with `--json` for the run's own figures: time spent in batches, the longest
//! batch transaction, and checkpoint time.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use datamig_core::config::{Backend, DatabaseUrl};
use datamig_core::db::{Conn, ConnectOptions};

struct Opts {
    dbs: Vec<Backend>,
    rows: i64,
    rounds: usize,
    batch: i64,
    parts: Vec<String>,
}

fn parse_opts() -> Result<Opts, String> {
    let mut opts = Opts {
        dbs: vec![Backend::Postgres, Backend::MySql, Backend::Sqlite],
        rows: 1_000_000,
        rounds: 5,
        batch: 5000,
        parts: ["main", "delete", "sweep", "cpu", "growth", "workers"]
            .map(String::from)
            .to_vec(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--db" => {
                opts.dbs = value()?
                    .split(',')
                    .map(|d| match d {
                        "sqlite" => Ok(Backend::Sqlite),
                        "postgres" => Ok(Backend::Postgres),
                        "mariadb" | "mysql" => Ok(Backend::MySql),
                        other => Err(format!(
                            "unknown database `{other}`; use sqlite, postgres, mariadb"
                        )),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--rows" => opts.rows = value()?.parse().map_err(|_| "--rows takes a number")?,
            "--rounds" => opts.rounds = value()?.parse().map_err(|_| "--rounds takes a number")?,
            "--batch" => opts.batch = value()?.parse().map_err(|_| "--batch takes a number")?,
            "--only" => opts.parts = value()?.split(',').map(String::from).collect(),
            other => {
                return Err(format!(
                    "unknown flag `{other}`; see the top of benches/main.rs"
                ))
            }
        }
    }
    if opts.rows < 100 || opts.rounds == 0 || opts.batch < 1 {
        return Err("--rows must be at least 100, --rounds and --batch at least 1".into());
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "# datamig-bench: {} rows, batch {}, median of {} round(s), {} cores, {}\n",
        opts.rows,
        opts.batch,
        opts.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    for db in &opts.dbs {
        if let Err(e) = runtime.block_on(bench_database(*db, &opts)) {
            eprintln!("error: {db}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

type Res<T> = Result<T, String>;

/// A fresh `datamig_bench` database (or SQLite file) and a connection to it.
struct Bench {
    backend: Backend,
    url: DatabaseUrl,
    conn: Conn,
    _dir: Option<TempDir>,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server_url(backend: Backend) -> String {
    match backend {
        Backend::Postgres => std::env::var("DATAMIG_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        _ => std::env::var("DATAMIG_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
    }
}

impl Bench {
    async fn new(backend: Backend) -> Res<Bench> {
        let opts = ConnectOptions::default();
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir =
                    std::env::temp_dir().join(format!("datamig-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let url = DatabaseUrl::parse(&format!("sqlite:{}", dir.join("bench.db").display()))
                    .map_err(s)?;
                (url, Some(TempDir(dir)))
            }
            _ => {
                let server = DatabaseUrl::parse(&server_url(backend)).map_err(s)?;
                let mut admin = Conn::connect(&server, &opts).await.map_err(s)?;
                admin
                    .script(&format!("DROP DATABASE IF EXISTS {}", db_name()))
                    .await
                    .map_err(s)?;
                admin
                    .script(&format!("CREATE DATABASE {}", db_name()))
                    .await
                    .map_err(s)?;
                admin.close().await;
                (server.with_database(&db_name()).map_err(s)?, None)
            }
        };
        let conn = Conn::connect(&url, &opts).await.map_err(s)?;
        Ok(Bench {
            backend,
            url,
            conn,
            _dir: dir,
        })
    }

    /// Runs a statement and returns how long it took.
    async fn timed(&mut self, sql: &str) -> Res<Duration> {
        let started = Instant::now();
        self.conn
            .script(sql)
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
        Ok(started.elapsed())
    }

    /// On PostgreSQL, the server's time for one batch's checkpoint, which
    /// travels in the round trip of the batch's COMMIT, so that its cost is
    /// what the server spends planning and executing it: the median of 21
    /// `EXPLAIN ANALYZE`s of the checkpoint datamig sends, each rolled back,
    /// on a `running` row of this database's `datamig_runs`. `None` elsewhere
    /// (there the checkpoint is a statement of its own, timed by the run).
    async fn checkpoint_server_time(&mut self, batch: i64) -> Res<Option<Duration>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let id = self
            .scalar(
                "INSERT INTO datamig_runs (job, args, state, batch_size, started_at, updated_at) \
                 VALUES ('bench_checkpoint', '{}', 'running', 5000, now(), now()) RETURNING id",
            )
            .await?;
        let counts = datamig_core::run::store::BatchCounts {
            rows: batch,
            changed: batch,
            rejected: 0,
            elapsed_ms: 4,
        };
        let sql =
            datamig_core::run::store::checkpoint_text(&self.conn, id, "[500000]", &counts, None)
                .ok_or("PostgreSQL sends the checkpoint as text")?;
        let mut times = Vec::new();
        for _ in 0..21 {
            self.conn.begin().await.map_err(s)?;
            let plan = self
                .conn
                .fetch_one(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), &[])
                .await
                .map_err(s)?;
            self.conn.rollback().await.map_err(s)?;
            let json: serde_json::Value = plan
                .first()
                .and_then(|v| v.clone().into_string())
                .and_then(|t| serde_json::from_str(&t).ok())
                .ok_or("EXPLAIN returned no JSON")?;
            let ms = json[0]["Planning Time"].as_f64().unwrap_or(0.0)
                + json[0]["Execution Time"].as_f64().unwrap_or(0.0);
            times.push(Duration::from_secs_f64(ms / 1000.0));
        }
        self.conn
            .execute("DELETE FROM datamig_runs WHERE id = ?", &[id.into()])
            .await
            .map_err(s)?;
        Ok(Some(median(times)))
    }

    async fn scalar(&mut self, sql: &str) -> Res<i64> {
        let row = self
            .conn
            .fetch_one(sql, &[])
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
        row.first()
            .and_then(|v| v.as_i64())
            .ok_or(format!("{sql}: no integer"))
    }

    /// Makes the planner's statistics current and, on PostgreSQL, reclaims dead rows
    /// and writes out pending WAL, so every measurement starts from the same state
    /// (a checkpoint forced by one method's WAL would otherwise land on the next).
    async fn settle(&mut self, table: &str) -> Res<()> {
        let statements = match self.backend {
            Backend::Postgres => vec![format!("VACUUM ANALYZE {table}"), "CHECKPOINT".into()],
            Backend::MySql => vec![format!("ANALYZE TABLE {table}")],
            Backend::Sqlite => vec![format!("ANALYZE {table}")],
        };
        for sql in statements {
            self.conn
                .script(&sql)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
        }
        Ok(())
    }

    /// Turns PostgreSQL's autovacuum off for the bench tables: `settle` vacuums
    /// between measurements instead. Left on, it starts on whichever method first
    /// commits enough dead rows *while being timed*, which only a batched run does
    /// (the single statement's dead rows appear when it is done), so it lands on
    /// some job runs and not others: ratios moved between 0.66 and 0.92 from one
    /// harness run to the next. The vacuum work is the same for every method.
    async fn no_autovacuum(&mut self, tables: &[&str]) -> Res<()> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        for table in tables {
            let sql = format!("ALTER TABLE {table} SET (autovacuum_enabled = false)");
            self.conn
                .script(&sql)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
        }
        Ok(())
    }

    /// Keeps a copy of `table` as it is now, for [`Bench::restore`].
    async fn keep(&mut self, table: &str) -> Res<()> {
        for sql in [
            format!("DROP TABLE IF EXISTS {table}_seed"),
            format!("CREATE TABLE {table}_seed AS SELECT * FROM {table}"),
        ] {
            self.conn
                .script(&sql)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
        }
        Ok(())
    }

    /// Puts `table` back as [`Bench::keep`] found it, compact, with fresh
    /// statistics. Every measurement starts from this same state: resetting by
    /// UPDATE instead left the heap half free after the first method, so later
    /// methods' updates found room on the same page (cheaper, HOT on PostgreSQL)
    /// and whichever ran first on the compact table paid more.
    async fn restore(&mut self, table: &str) -> Res<()> {
        let empty = match self.backend {
            Backend::Sqlite => format!("DELETE FROM {table}"),
            _ => format!("TRUNCATE TABLE {table}"),
        };
        for sql in [
            empty,
            format!("INSERT INTO {table} SELECT * FROM {table}_seed"),
        ] {
            self.conn
                .script(&sql)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
        }
        self.settle(table).await
    }

    async fn reset_users(&mut self) -> Res<()> {
        self.restore("users").await
    }

    /// Runs the CLI on this database; returns wall time, peak RSS and its `--json` summary.
    fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> Res<JobRun> {
        let bin = sibling("datamig-fixtures")?;
        let time_file =
            std::env::temp_dir().join(format!("datamig-bench-time-{}", std::process::id()));
        let started = Instant::now();
        let out = Command::new("/usr/bin/time")
            .args(["-f", "%M", "-o"])
            .arg(&time_file)
            .arg(&bin)
            .args(args)
            .env("DATABASE_URL", self.url_secret())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .output()
            .map_err(|e| format!("cannot run /usr/bin/time {}: {e}", bin.display()))?;
        let wall = started.elapsed();
        if !out.status.success() {
            return Err(format!(
                "datamig {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let rss_kb: u64 = std::fs::read_to_string(&time_file)
            .ok()
            .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()))
            .unwrap_or(0);
        let summary: serde_json::Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        let ms = |k: &str| Duration::from_millis(summary[k].as_u64().unwrap_or(0));
        Ok(JobRun {
            wall,
            rss_kb,
            batches: ms("elapsed_ms"),
            max_tx: ms("max_batch_ms"),
            p99_tx: ms("batch_p99_ms"),
            bookkeeping: ms("bookkeeping_ms"),
            batches_done: summary["batches"].as_i64().unwrap_or(0),
        })
    }

    fn url_secret(&self) -> String {
        // The bench databases have no passwords; the redacted form is the URL.
        self.url.redacted().to_string()
    }

    fn job(&self, job: &str, batch: i64, extra: &[&str], env: &[(&str, &str)]) -> Res<JobRun> {
        let batch = batch.to_string();
        let mut args = vec![
            "run",
            job,
            "--batch",
            &batch,
            "--restart",
            "--progress",
            "none",
            "--json",
        ];
        args.extend_from_slice(extra);
        self.cli(&args, env)
    }

    fn seed(&self, job: &str, rows: i64, first_id: i64) -> Res<()> {
        let (rows, first) = (format!("rows={rows}"), format!("first_id={first_id}"));
        self.cli(
            &[
                "run", job, "--arg", &rows, "--arg", &first, "--batch", "50000", "--count", "none",
                "--json",
            ],
            &[],
        )
        .map(drop)
    }

    /// The CPU-heavy job's table: a tenth of the `n` users' addresses as
    /// payloads, no digests yet; returns its row count.
    async fn digests(&mut self, n: i64) -> Res<i64> {
        let m = (n / 10).max(100);
        self.conn
            .script("CREATE TABLE IF NOT EXISTS digests (id BIGINT NOT NULL PRIMARY KEY, payload VARCHAR(64) NOT NULL, digest VARCHAR(64))")
            .await
            .map_err(s)?;
        self.no_autovacuum(&["digests"]).await?;
        self.conn.script("DELETE FROM digests").await.map_err(s)?;
        self.conn
            .script(&format!(
                "INSERT INTO digests (id, payload) SELECT id, email FROM users WHERE id <= {m}"
            ))
            .await
            .map_err(s)?;
        Ok(m)
    }

    fn cutoff_sql(&self) -> String {
        let cutoff = (chrono::Utc::now() - chrono::Duration::days(30)).format("%Y-%m-%d %H:%M:%S");
        match self.backend {
            Backend::Postgres => format!("CAST('{cutoff}' AS TIMESTAMP)"),
            Backend::MySql => format!("CAST('{cutoff}' AS DATETIME)"),
            Backend::Sqlite => format!("'{cutoff}'"),
        }
    }
}

/// One database per harness process, so a smoke run and a long run never collide.
fn db_name() -> String {
    format!("datamig_bench_{}", std::process::id())
}

fn s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn sibling(name: &str) -> Res<PathBuf> {
    let exe = std::env::current_exe().map_err(s)?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it (cargo build --release)",
            path.display()
        ))
    }
}

#[derive(Clone, Copy)]
struct JobRun {
    wall: Duration,
    rss_kb: u64,
    /// Time inside the batch loop (the run's own `elapsed_ms`).
    batches: Duration,
    max_tx: Duration,
    /// The 99th percentile of the batch transactions.
    p99_tx: Duration,
    bookkeeping: Duration,
    /// How many batches the run took.
    batches_done: i64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_by(runs: &[JobRun], f: impl Fn(&JobRun) -> Duration) -> Duration {
    median(runs.iter().map(f).collect())
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn rate(rows: i64, d: Duration) -> String {
    #[allow(clippy::cast_precision_loss)] // a rate for a table
    let r = rows as f64 / d.as_secs_f64().max(1e-9);
    format!("{r:.0}")
}

#[allow(clippy::cast_precision_loss)] // a ratio of memory sizes for a table
fn ratio_of(a: u64, b: u64) -> f64 {
    a as f64 / (b.max(1) as f64)
}

fn ratio(limit: Duration, d: Duration) -> String {
    format!("{:.2}", limit.as_secs_f64() / d.as_secs_f64().max(1e-9))
}

/// The floor under any Rust transform of `users` on PostgreSQL: `connections`
/// connections, each over its share of the keys, read 5000 rows, lowercase the
/// addresses in Rust and write them back with the statement datamig sends
/// (`UPDATE … FROM (SELECT unnest(…))` with the row-version guard), each statement
/// its own transaction, with no checkpoint, no validation and no bookkeeping: what
/// datamig's batches cost beyond it is datamig's. Returns the loop's time.
async fn bare_loop(url: &str, rows: i64, connections: i64, batch: i64) -> Res<Duration> {
    use sqlx::{Connection, Row};
    const READ: &str = "SELECT id, email, xmin::text FROM users \
        WHERE email_normalized IS NULL AND id > $1 AND id <= $2 ORDER BY id LIMIT $3";
    const WRITE: &str = "UPDATE users AS t SET email_normalized = v.e FROM (SELECT \
        unnest($1::int8[]) AS id, unnest($2::text[]) AS e, unnest($3::text[]::xid[]) AS x) AS v \
        WHERE t.id = v.id AND t.xmin = v.x AND t.id BETWEEN $4 AND $5";
    async fn share(url: String, lo: i64, hi: i64, batch: i64) -> Result<u64, sqlx::Error> {
        let mut c = sqlx::postgres::PgConnection::connect(&url).await?;
        let (mut after, mut written) = (lo - 1, 0);
        loop {
            let read = sqlx::query(READ)
                .bind(after)
                .bind(hi)
                .bind(batch)
                .fetch_all(&mut c)
                .await?;
            let Some(last) = read.last() else { break };
            let end: i64 = last.try_get(0)?;
            let (mut ids, mut emails, mut versions) = (Vec::new(), Vec::new(), Vec::new());
            for r in &read {
                ids.push(r.try_get::<i64, _>(0)?);
                emails.push(r.try_get::<&str, _>(1)?.trim().to_lowercase());
                versions.push(r.try_get::<String, _>(2)?);
            }
            let query = sqlx::query(WRITE).bind(&ids).bind(&emails).bind(&versions);
            written += query
                .bind(ids[0])
                .bind(end)
                .execute(&mut c)
                .await?
                .rows_affected();
            after = end;
        }
        c.close().await?;
        Ok(written)
    }
    let per = (rows + connections - 1) / connections;
    let started = Instant::now();
    let shares: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(share(url.to_string(), i * per + 1, (i + 1) * per, batch)))
        .collect();
    let mut written = 0;
    for h in shares {
        written += h.await.map_err(s)?.map_err(|e| format!("bare loop: {e}"))?;
    }
    let took = started.elapsed();
    if written != u64::try_from(rows).unwrap_or(0) {
        return Err(format!("bare loop wrote {written} of {rows} rows"));
    }
    Ok(took)
}

/// The write shapes a MariaDB batch could take (issue 20's floor), each a bare
/// keyset loop on sqlx without datamig: read the batch's 5000 rows (`id,
/// email`), lowercase in Rust, write them back in one transaction per batch,
/// with no checkpoint and no read ahead.
#[derive(Clone, Copy, Debug)]
enum MySqlShape {
    ReadOnly,
    /// `UPDATE … JOIN JSON_TABLE(?)` with the guard: what datamig sends.
    JsonTable,
    /// `UPDATE … JOIN (SELECT ? AS id, ? AS e, ? AS o UNION ALL …)` with the guard,
    /// each value cast to its column's type.
    UnionValues,
    /// A temporary table filled by one multi-row `INSERT`, then `UPDATE … JOIN` it.
    TempTable,
    /// `INSERT … ON DUPLICATE KEY UPDATE` with every required column (no guard).
    Upsert,
}

async fn mysql_shape_loop(url: &str, rows: i64, batch: i64, shape: MySqlShape) -> Res<Duration> {
    use sqlx::{Connection, Row};
    let mut c = sqlx::MySqlConnection::connect(url).await.map_err(s)?;
    const READ: &str =
        "SELECT id, email FROM users WHERE email_normalized IS NULL AND id > ? ORDER BY id LIMIT ?";
    if matches!(shape, MySqlShape::TempTable) {
        sqlx::query(
            "CREATE TEMPORARY TABLE datamig_floor (id BIGINT NOT NULL PRIMARY KEY, \
             e VARCHAR(320) NOT NULL, o VARCHAR(320) NOT NULL)",
        )
        .execute(&mut c)
        .await
        .map_err(s)?;
    }
    let started = Instant::now();
    let (mut after, mut seen) = (0_i64, 0_i64);
    loop {
        sqlx::query("BEGIN").execute(&mut c).await.map_err(s)?;
        let batch_rows: Vec<(i64, String)> = sqlx::query(READ)
            .bind(after)
            .bind(batch)
            .fetch_all(&mut c)
            .await
            .map_err(s)?
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(s)?;
        let Some(last) = batch_rows.last().map(|r| r.0) else {
            sqlx::query("COMMIT").execute(&mut c).await.map_err(s)?;
            break;
        };
        let lowered: Vec<String> = batch_rows
            .iter()
            .map(|(_, e)| e.trim().to_lowercase())
            .collect();
        let n = batch_rows.len();
        let written = match shape {
            MySqlShape::ReadOnly => u64::try_from(n).unwrap_or(0),
            MySqlShape::JsonTable => {
                let doc: Vec<(i64, &str, &str)> = batch_rows
                    .iter()
                    .zip(&lowered)
                    .map(|((id, email), low)| (*id, low.as_str(), email.as_str()))
                    .collect();
                sqlx::query(
                    "UPDATE users u JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$[0]', \
                     e VARCHAR(320) PATH '$[1]', o VARCHAR(320) PATH '$[2]')) j ON u.id = j.id \
                     SET u.email_normalized = j.e WHERE u.email = BINARY j.o AND u.email_normalized IS NULL",
                )
                .bind(serde_json::to_string(&doc).map_err(s)?)
                .execute(&mut c)
                .await
                .map_err(s)?
                .rows_affected()
            }
            MySqlShape::UnionValues => {
                let first = "SELECT CAST(? AS SIGNED) AS id, CAST(? AS CHAR(320)) AS e, CAST(? AS CHAR(320)) AS o";
                let rest = " UNION ALL SELECT ?, ?, ?".repeat(n - 1);
                let sql = format!(
                    "UPDATE users u JOIN ({first}{rest}) v ON u.id = v.id \
                     SET u.email_normalized = v.e WHERE u.email = BINARY v.o AND u.email_normalized IS NULL"
                );
                let mut q = sqlx::query(&sql);
                for ((id, email), low) in batch_rows.iter().zip(&lowered) {
                    q = q.bind(*id).bind(low.as_str()).bind(email.as_str());
                }
                q.execute(&mut c).await.map_err(s)?.rows_affected()
            }
            MySqlShape::TempTable => {
                sqlx::query("DELETE FROM datamig_floor")
                    .execute(&mut c)
                    .await
                    .map_err(s)?;
                let sql = format!(
                    "INSERT INTO datamig_floor (id, e, o) VALUES {}",
                    vec!["(?, ?, ?)"; n].join(", ")
                );
                let mut q = sqlx::query(&sql);
                for ((id, email), low) in batch_rows.iter().zip(&lowered) {
                    q = q.bind(*id).bind(low.as_str()).bind(email.as_str());
                }
                q.execute(&mut c).await.map_err(s)?;
                sqlx::query(
                    "UPDATE users u JOIN datamig_floor t ON u.id = t.id \
                     SET u.email_normalized = t.e WHERE u.email = BINARY t.o AND u.email_normalized IS NULL",
                )
                .execute(&mut c)
                .await
                .map_err(s)?
                .rows_affected()
            }
            MySqlShape::Upsert => {
                let sql = format!(
                    "INSERT INTO users (id, email, email_normalized) VALUES {} \
                     ON DUPLICATE KEY UPDATE email_normalized = VALUES(email_normalized)",
                    vec!["(?, ?, ?)"; n].join(", ")
                );
                let mut q = sqlx::query(&sql);
                for ((id, email), low) in batch_rows.iter().zip(&lowered) {
                    q = q.bind(*id).bind(email.as_str()).bind(low.as_str());
                }
                // Each row found and changed counts 2.
                q.execute(&mut c).await.map_err(s)?.rows_affected() / 2
            }
        };
        if written != u64::try_from(n).unwrap_or(0) {
            return Err(format!("{shape:?}: a batch wrote {written} of {n} rows"));
        }
        sqlx::query("COMMIT").execute(&mut c).await.map_err(s)?;
        seen += i64::try_from(n).unwrap_or(0);
        after = last;
    }
    let took = started.elapsed();
    c.close().await.map_err(s)?;
    if seen != rows {
        return Err(format!("{shape:?}: the loop saw {seen} of {rows} rows"));
    }
    Ok(took)
}

/// A database's floor: every write shape's bare loop (`run`) against the
/// single `UPDATE` and `backfill_emails`, alternating round by round.
async fn bench_floor<S, F, Fut>(
    b: &mut Bench,
    opts: &Opts,
    update: &str,
    database: &str,
    shapes: &[S],
    run: F,
) -> Res<()>
where
    S: Copy + std::fmt::Debug,
    F: Fn(String, i64, i64, S) -> Fut,
    Fut: std::future::Future<Output = Res<Duration>>,
{
    let mut limits = Vec::new();
    let mut jobs = Vec::new();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); shapes.len()];
    let url = b.url_secret();
    for round in 0..opts.rounds {
        let mut order: Vec<usize> = (0..shapes.len() + 2).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for which in order {
            b.reset_users().await?;
            match which {
                0 => limits.push(b.timed(update).await?),
                1 => jobs.push(b.job("backfill_emails", opts.batch, &[], &[])?),
                i => {
                    times[i - 2].push(run(url.clone(), opts.rows, opts.batch, shapes[i - 2]).await?)
                }
            }
        }
    }
    let limit = median(limits);
    println!(
        "### Floor: {database} write shapes, {} rows, batch {} (median of {})\n",
        opts.rows, opts.batch, opts.rounds
    );
    println!("| method | time | × statement |\n|---|---|---|");
    println!("| single UPDATE | {} | 1.00 |", secs(limit));
    for (shape, t) in shapes.iter().zip(times) {
        let t = median(t);
        println!(
            "| bare loop, {shape:?} | {} | {} |",
            secs(t),
            ratio(limit, t)
        );
    }
    let wall = median_by(&jobs, |r| r.wall);
    println!(
        "| datamig `backfill_emails` (whole process) | {} | {} |\n",
        secs(wall),
        ratio(limit, wall)
    );
    Ok(())
}

/// The write shapes a SQLite batch could take (issue 20's floor), each a bare
/// keyset loop on sqlx without datamig: read the batch's 5000 rows (key, email),
/// lowercase in Rust, write them back in one transaction per batch, with no
/// checkpoint. `read only` is the loop without its write: what reading alone costs.
#[derive(Clone, Copy, Debug)]
enum SqliteShape {
    ReadOnly,
    /// `UPDATE … FROM (VALUES (?, ?, ?), …)` with the guard: what datamig sends.
    Values,
    /// `UPDATE … FROM json_each(?)`: one parameter, the batch as a JSON document.
    JsonEach,
    /// One `UPDATE … WHERE id = ?` per row, all in one multi-statement query.
    PerRow,
    /// The batch's rows read as one JSON document (`json_group_array`), then `Values`.
    JsonRead,
    /// SQLite's C API directly (rusqlite, what datamig's SQLite driver uses):
    /// the rows read by a prepared statement, written by one prepared
    /// `UPDATE … WHERE id = ?` a row (`PerRowNative`) or one `VALUES` update a
    /// batch (`ValuesNative`).
    PerRowNative,
    ValuesNative,
    /// `PerRowNative` updating each row by its `rowid` (read with the batch)
    /// instead of by its key: one b-tree search a row instead of two, where the
    /// key is not the rowid (`users.id` is `BIGINT PRIMARY KEY`, an index).
    PerRowNativeRowid,
    /// `PerRowNativeRowid` with a 64 MiB page cache instead of SQLite's 2 MiB.
    PerRowNativeRowidCache,
}

/// The bare loop of [`SqliteShape::PerRowNative`] and [`SqliteShape::ValuesNative`].
fn sqlite_native_loop(url: &str, rows: i64, batch: i64, shape: SqliteShape) -> Res<Duration> {
    let path = url.strip_prefix("sqlite:").unwrap_or(url);
    let c = rusqlite::Connection::open(path).map_err(s)?;
    c.busy_timeout(Duration::from_secs(30)).map_err(s)?;
    if matches!(shape, SqliteShape::PerRowNativeRowidCache) {
        c.execute_batch("PRAGMA cache_size = -65536").map_err(s)?;
    }
    let by_rowid = matches!(
        shape,
        SqliteShape::PerRowNativeRowid | SqliteShape::PerRowNativeRowidCache
    );
    let started = Instant::now();
    let (mut after, mut seen) = (0_i64, 0_i64);
    loop {
        c.execute_batch("BEGIN IMMEDIATE").map_err(s)?;
        let batch_rows: Vec<(i64, String, i64)> = {
            let mut st = c
                .prepare_cached(
                    "SELECT id, email, rowid FROM users WHERE email_normalized IS NULL AND id > ? \
                     ORDER BY id LIMIT ?",
                )
                .map_err(s)?;
            let got = st
                .query_map([after, batch], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(s)?
                .collect::<Result<_, _>>()
                .map_err(s)?;
            got
        };
        let Some(last) = batch_rows.last().map(|r| r.0) else {
            c.execute_batch("COMMIT").map_err(s)?;
            break;
        };
        let lowered: Vec<String> = batch_rows
            .iter()
            .map(|(_, e, _)| e.trim().to_lowercase())
            .collect();
        if by_rowid {
            let mut st = c
                .prepare_cached(
                    "UPDATE users SET email_normalized = ?2 WHERE rowid = ?1 AND email IS ?3 \
                     AND email_normalized IS NULL",
                )
                .map_err(s)?;
            for ((_, email, rowid), low) in batch_rows.iter().zip(&lowered) {
                st.execute(rusqlite::params![rowid, low, email])
                    .map_err(s)?;
            }
        } else if matches!(shape, SqliteShape::PerRowNative) {
            let mut st = c
                .prepare_cached(
                    "UPDATE users SET email_normalized = ?2 WHERE id = ?1 AND email IS ?3 \
                     AND email_normalized IS NULL",
                )
                .map_err(s)?;
            for ((id, email, _), low) in batch_rows.iter().zip(&lowered) {
                st.execute(rusqlite::params![id, low, email]).map_err(s)?;
            }
        } else {
            let values = vec!["(?, ?, ?)"; batch_rows.len()].join(", ");
            let sql = format!(
                "UPDATE users SET email_normalized = v.column2 FROM (VALUES {values}) AS v \
                 WHERE users.id = v.column1 AND users.email IS v.column3 AND (email_normalized IS NULL)"
            );
            let mut st = c.prepare_cached(&sql).map_err(s)?;
            let mut i = 1;
            for ((id, email, _), low) in batch_rows.iter().zip(&lowered) {
                st.raw_bind_parameter(i, id).map_err(s)?;
                st.raw_bind_parameter(i + 1, low).map_err(s)?;
                st.raw_bind_parameter(i + 2, email).map_err(s)?;
                i += 3;
            }
            st.raw_execute().map_err(s)?;
        }
        c.execute_batch("COMMIT").map_err(s)?;
        seen += i64::try_from(batch_rows.len()).unwrap_or(0);
        after = last;
    }
    let took = started.elapsed();
    if seen != rows {
        return Err(format!("{shape:?}: the loop saw {seen} of {rows} rows"));
    }
    Ok(took)
}

async fn sqlite_shape_loop(url: &str, rows: i64, batch: i64, shape: SqliteShape) -> Res<Duration> {
    use sqlx::{Connection, Row};
    if matches!(
        shape,
        SqliteShape::PerRowNative
            | SqliteShape::ValuesNative
            | SqliteShape::PerRowNativeRowid
            | SqliteShape::PerRowNativeRowidCache
    ) {
        return sqlite_native_loop(url, rows, batch, shape);
    }
    let path = url.strip_prefix("sqlite:").unwrap_or(url);
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut c = sqlx::SqliteConnection::connect_with(&opts)
        .await
        .map_err(s)?;
    const READ: &str =
        "SELECT id, email FROM users WHERE email_normalized IS NULL AND id > ? ORDER BY id LIMIT ?";
    const READ_JSON: &str = "SELECT json_group_array(json_array(id, email)) FROM \
        (SELECT id, email FROM users WHERE email_normalized IS NULL AND id > ? ORDER BY id LIMIT ?)";
    let started = Instant::now();
    let (mut after, mut seen) = (0_i64, 0_i64);
    loop {
        sqlx::query("BEGIN").execute(&mut c).await.map_err(s)?;
        let batch_rows: Vec<(i64, String)> = match shape {
            SqliteShape::JsonRead => {
                let doc: String = sqlx::query(READ_JSON)
                    .bind(after)
                    .bind(batch)
                    .fetch_one(&mut c)
                    .await
                    .map_err(s)?
                    .try_get(0)
                    .map_err(s)?;
                let parsed: Vec<(i64, String)> = serde_json::from_str(&doc).map_err(s)?;
                parsed
            }
            _ => sqlx::query(READ)
                .bind(after)
                .bind(batch)
                .fetch_all(&mut c)
                .await
                .map_err(s)?
                .iter()
                .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(s)?,
        };
        let Some(last) = batch_rows.last().map(|r| r.0) else {
            sqlx::query("COMMIT").execute(&mut c).await.map_err(s)?;
            break;
        };
        let lowered: Vec<String> = batch_rows
            .iter()
            .map(|(_, e)| e.trim().to_lowercase())
            .collect();
        match shape {
            SqliteShape::ReadOnly
            | SqliteShape::PerRowNative
            | SqliteShape::ValuesNative
            | SqliteShape::PerRowNativeRowid
            | SqliteShape::PerRowNativeRowidCache => {}
            SqliteShape::Values | SqliteShape::JsonRead => {
                let values = vec!["(?, ?, ?)"; batch_rows.len()].join(", ");
                let sql = format!(
                    "UPDATE users SET email_normalized = v.column2 FROM (VALUES {values}) AS v \
                     WHERE users.id = v.column1 AND users.email IS v.column3 AND (email_normalized IS NULL)"
                );
                let mut q = sqlx::query(&sql);
                for ((id, email), low) in batch_rows.iter().zip(&lowered) {
                    q = q.bind(*id).bind(low.as_str()).bind(email.as_str());
                }
                q.execute(&mut c).await.map_err(s)?;
            }
            SqliteShape::JsonEach => {
                let doc: Vec<(i64, &str, &str)> = batch_rows
                    .iter()
                    .zip(&lowered)
                    .map(|((id, email), low)| (*id, low.as_str(), email.as_str()))
                    .collect();
                let doc = serde_json::to_string(&doc).map_err(s)?;
                sqlx::query(
                    "UPDATE users SET email_normalized = j.value ->> 1 FROM json_each(?) AS j \
                     WHERE users.id = j.value ->> 0 AND users.email IS j.value ->> 2 AND (email_normalized IS NULL)",
                )
                .bind(doc)
                .execute(&mut c)
                .await
                .map_err(s)?;
            }
            SqliteShape::PerRow => {
                let one = "UPDATE users SET email_normalized = ? WHERE id = ? AND email IS ? AND email_normalized IS NULL;";
                let sql = one.repeat(batch_rows.len());
                let mut q = sqlx::query(&sql);
                for ((id, email), low) in batch_rows.iter().zip(&lowered) {
                    q = q.bind(low.as_str()).bind(*id).bind(email.as_str());
                }
                q.execute(&mut c).await.map_err(s)?;
            }
        }
        sqlx::query("COMMIT").execute(&mut c).await.map_err(s)?;
        seen += i64::try_from(batch_rows.len()).unwrap_or(0);
        after = last;
    }
    let took = started.elapsed();
    c.close().await.map_err(s)?;
    if seen != rows {
        return Err(format!("{shape:?}: the loop saw {seen} of {rows} rows"));
    }
    Ok(took)
}

/// Throughput at 1, 2 and 4 workers (`--workers`) of the set-based job, the
/// Rust transform and the CPU-heavy transform, against the single statement
/// and the same job without `--workers`, interleaved round by round.
async fn bench_workers(b: &mut Bench, opts: &Opts, update: &str) -> Res<()> {
    let n = opts.rows;
    let m = b.digests(n).await?;
    let configs: [(&str, &[&str]); 4] = [
        ("no --workers", &[]),
        ("--workers 1", &["--workers", "1"]),
        ("--workers 2", &["--workers", "2"]),
        ("--workers 4", &["--workers", "4"]),
    ];
    // The CPU-heavy job twice: as in the CPU section (200 SHA-256 rounds a row,
    // where reading and writing the rows is a third of the work), and heavier
    // (1000 rounds), where the transform is nearly all of it.
    let jobs: [(&str, &[&str], i64); 4] = [
        ("backfill_emails_sql", &[], n),
        ("backfill_emails", &[], n),
        ("digest_payloads", &["--arg", "rounds=200"], m),
        ("digest_payloads", &["--arg", "rounds=1000"], m),
    ];
    let mut limits = Vec::new();
    let mut floors = Vec::new();
    let mut runs: Vec<Vec<Vec<JobRun>>> = vec![vec![Vec::new(); configs.len()]; jobs.len()];
    for round in 0..opts.rounds {
        b.reset_users().await?;
        limits.push(b.timed(update).await?);
        if b.backend == Backend::Postgres {
            b.reset_users().await?;
            floors.push(bare_loop(&b.url_secret(), n, 2, opts.batch).await?);
        }
        for (j, (job, job_args, _)) in jobs.iter().enumerate() {
            let mut order: Vec<usize> = (0..configs.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for c in order {
                if *job == "digest_payloads" {
                    b.conn
                        .script("UPDATE digests SET digest = NULL")
                        .await
                        .map_err(s)?;
                    b.settle("digests").await?;
                } else {
                    b.reset_users().await?;
                }
                let args = [*job_args, configs[c].1].concat();
                runs[j][c].push(b.job(job, opts.batch, &args, &[])?);
            }
        }
    }
    let limit = median(limits);
    println!(
        "### Scaling out: throughput by workers ({n} rows; the CPU-heavy job over {m}; batch {}; median of {} round(s))\n",
        opts.batch, opts.rounds
    );
    println!(
        "One `UPDATE` statement over the {n} rows (the limit): {} s, {} rows/s.\n",
        secs(limit),
        rate(n, limit)
    );
    if !floors.is_empty() {
        let floor = median(floors);
        println!(
            "The floor under a Rust transform (two bare connections reading, lowercasing in \
             Rust and writing back with datamig's statement; no transactions around them, no \
             checkpoints, no validation): {} s, {}× the limit.\n",
            secs(floor),
            ratio(limit, floor)
        );
    }
    println!("| job | workers | time in batches (s) | rows/s | × limit (batches) | × 1 worker | longest transaction (ms) | p99 transaction (ms) |\n|---|---|---|---|---|---|---|---|");
    for (j, (job, job_args, rows)) in jobs.iter().enumerate() {
        let rows = *rows;
        let label = match job_args {
            [_, a] => format!("`{job}` ({})", a.replace('=', " ")),
            _ => format!("`{job}`"),
        };
        let one = median_by(&runs[j][1], |r| r.batches);
        for (c, (name, _)) in configs.iter().enumerate() {
            let t = median_by(&runs[j][c], |r| r.batches);
            let vs_limit = if *job == "digest_payloads" {
                "-".to_string()
            } else {
                ratio(limit, t)
            };
            println!(
                "| {label} | {name} | {} | {} | {vs_limit} | {} | {} | {} |",
                secs(t),
                rate(rows, t),
                ratio(one, t),
                median_by(&runs[j][c], |r| r.max_tx).as_millis(),
                median_by(&runs[j][c], |r| r.p99_tx).as_millis(),
            );
        }
    }
    println!();
    Ok(())
}

/// After a job's table on PostgreSQL: what its checkpoints cost the server, as a
/// share of its batch loop (the table's checkpoints column is an upper bound there).
async fn checkpoint_note(b: &mut Bench, batch: i64, runs: &[JobRun]) -> Res<()> {
    let Some(each) = b.checkpoint_server_time(batch).await? else {
        return Ok(());
    };
    let loop_time = median_by(runs, |r| r.batches);
    let batches = runs.last().map_or(0, |r| r.batches_done);
    #[allow(clippy::cast_precision_loss)] // a share for a table
    let share = 100.0 * each.as_secs_f64() * batches as f64 / loop_time.as_secs_f64().max(1e-9);
    println!(
        "\nCheckpoints server-side (EXPLAIN ANALYZE of the checkpoint sent with each COMMIT, median of 21): \
         {:.3} ms each × {batches} batches = {share:.1}% of the batch loop.\n",
        each.as_secs_f64() * 1000.0
    );
    Ok(())
}

fn job_row(name: &str, rows: i64, limit: Duration, runs: &[JobRun]) -> String {
    let batches = median_by(runs, |r| r.batches);
    let wall = median_by(runs, |r| r.wall);
    let max_tx = median_by(runs, |r| r.max_tx);
    let p99_tx = median_by(runs, |r| r.p99_tx);
    let book = median_by(runs, |r| r.bookkeeping);
    let rss = runs.iter().map(|r| r.rss_kb).max().unwrap_or(0);
    format!(
        "| {name} | {} | {} | {} | {} | **{}** | {} | {} | {} | {:.1}% |",
        secs(batches),
        secs(wall),
        rate(rows, batches),
        ratio(limit, wall),
        ratio(limit, batches),
        max_tx.as_millis(),
        p99_tx.as_millis(),
        rss / 1024,
        100.0 * book.as_secs_f64() / batches.as_secs_f64().max(1e-9)
    )
}

const HEADER: &str = "| method | time in batches (s) | wall (s) | rows/s | × limit (wall) | × limit (batches) | longest transaction (ms) | p99 transaction (ms) | peak RSS (MB) | checkpoints |\n|---|---|---|---|---|---|---|---|---|---|";

fn limit_row(name: &str, rows: i64, d: Duration) -> String {
    format!(
        "| {name} | {} | {} | {} | 1.00 | 1.00 | {} | - | - | - |",
        secs(d),
        secs(d),
        rate(rows, d),
        d.as_millis()
    )
}

async fn bench_database(backend: Backend, opts: &Opts) -> Res<()> {
    let mut b = Bench::new(backend).await?;
    let version = match backend {
        Backend::Postgres => "SELECT current_setting('server_version_num')::bigint",
        Backend::MySql => "SELECT 0",
        Backend::Sqlite => "SELECT 0",
    };
    let _ = b.scalar(version).await;
    println!("## {backend}\n");
    b.cli(&["schema", "upgrade", "head"], &[])
        .map_err(|e| format!("schema: {e}"))?;
    b.no_autovacuum(&["users", "sessions"]).await?;
    let n = opts.rows;
    b.seed("seed_demo_users", n, 1)?;
    b.keep("users").await?;
    let update = "UPDATE users SET email_normalized = lower(trim(email))";
    let want = |p: &str| opts.parts.iter().any(|x| x == p);

    let mut limit_1m = Duration::ZERO;
    let mut transform_1m = Duration::ZERO;
    let mut set_1m = Duration::ZERO;
    // Peak RSS of the set-based and transform jobs at 1M rows, for the growth check.
    let mut rss_1m = (0_u64, 0_u64);
    if want("main") || want("growth") {
        let (mut limits, mut sets, mut transforms) = (Vec::new(), Vec::new(), Vec::new());
        let (mut serial, mut batch_steps) = (Vec::new(), Vec::new());
        // The same work as a batch step (the general job shape), and, on
        // servers, the transform on one connection: what reading ahead gains.
        let methods: &[u8] = if backend == Backend::Sqlite {
            &[0, 1, 2, 4]
        } else {
            &[0, 1, 2, 3, 4]
        };
        for round in 0..opts.rounds {
            // Alternate the order so drift (caches, vacuum) does not favour one method.
            let mut order = methods.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            for which in order {
                b.reset_users().await?;
                match which {
                    0 => limits.push(b.timed(update).await?),
                    1 => sets.push(b.job("backfill_emails_sql", opts.batch, &[], &[])?),
                    2 => transforms.push(b.job("backfill_emails", opts.batch, &[], &[])?),
                    4 => batch_steps.push(b.job("backfill_emails_batch", opts.batch, &[], &[])?),
                    _ => serial.push(b.job(
                        "backfill_emails",
                        opts.batch,
                        &["--no-read-ahead"],
                        &[],
                    )?),
                }
            }
        }
        limit_1m = median(limits);
        set_1m = median_by(&sets, |r| r.batches);
        transform_1m = median_by(&transforms, |r| r.batches);
        rss_1m = (
            sets.iter().map(|r| r.rss_kb).max().unwrap_or(0),
            transforms.iter().map(|r| r.rss_kb).max().unwrap_or(0),
        );
        println!(
            "### Backfill of {n} rows (batch {})\n\n{HEADER}",
            opts.batch
        );
        println!(
            "{}",
            limit_row("one `UPDATE` statement (the limit)", n, limit_1m)
        );
        println!(
            "{}",
            job_row("set-based job (`backfill_emails_sql`)", n, limit_1m, &sets)
        );
        println!(
            "{}",
            job_row(
                "Rust transform (`backfill_emails`)",
                n,
                limit_1m,
                &transforms
            )
        );
        println!(
            "{}",
            job_row(
                "Rust batch step, the same work (`backfill_emails_batch`)",
                n,
                limit_1m,
                &batch_steps
            )
        );
        if !serial.is_empty() {
            println!(
                "{}",
                job_row(
                    "Rust transform, one connection (`--no-read-ahead`)",
                    n,
                    limit_1m,
                    &serial
                )
            );
        }
        checkpoint_note(&mut b, opts.batch, &transforms).await?;
    }

    if want("delete") {
        b.seed("seed_demo_sessions", n, 1)?;
        b.keep("sessions").await?;
        let (mut limits, mut jobs, mut loops) = (Vec::new(), Vec::new(), Vec::new());
        let cutoff = b.cutoff_sql();
        let delete = format!("DELETE FROM sessions WHERE created_at < {cutoff}");
        // On PostgreSQL, also the job's batches as a loop inside the server (no
        // client, no round trips, no checkpoints), committing as the job does
        // (without waiting for the WAL flush): the floor of batching by key. It
        // cuts the keys into as many equal ranges as the job's last run had batches.
        let server_loop = (backend == Backend::Postgres).then_some(|batches: i64| {
            let range = (n + batches - 1) / batches.max(1);
            format!(
                "DO $$ DECLARE lo bigint := 0; BEGIN PERFORM set_config('synchronous_commit', 'off', false); \
                 WHILE lo < {n} LOOP \
                 DELETE FROM sessions WHERE id > lo AND id <= lo + {range} AND created_at < {cutoff}; \
                 COMMIT; lo := lo + {range}; END LOOP; END $$"
            )
        });
        let mut job_batches = (n + opts.batch - 1) / opts.batch;
        // On MariaDB, the tool an operator would pick instead: pt-archiver,
        // purging in bulk deletes of the batch's size, committing each.
        let archiver = match backend {
            Backend::MySql => pt_archiver(&b.url, &cutoff, opts.batch),
            _ => None,
        };
        let methods: &[u8] = match (&server_loop, &archiver) {
            (Some(_), _) => &[0, 1, 2],
            (None, Some(_)) => &[0, 1, 3],
            (None, None) => &[0, 1],
        };
        let mut peers = Vec::new();
        let mut deleted = 0;
        for round in 0..opts.rounds {
            let mut order = methods.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            for which in order {
                b.restore("sessions").await?;
                let before = b.scalar("SELECT count(*) FROM sessions").await?;
                match (which, &server_loop) {
                    (0, _) => limits.push(b.timed(&delete).await?),
                    (1, _) => {
                        let run = b.job(
                            "purge_expired_sessions",
                            opts.batch,
                            &["--arg", "older_than=30d"],
                            &[],
                        )?;
                        job_batches = run.batches_done;
                        jobs.push(run);
                    }
                    (3, _) => {
                        if let Some(archiver) = &archiver {
                            peers.push(run_peer(archiver)?);
                        }
                    }
                    (_, Some(sql)) => {
                        loops.push(b.timed(&sql(job_batches)).await?);
                        b.conn
                            .script("SET synchronous_commit = on")
                            .await
                            .map_err(s)?;
                    }
                    (_, None) => unreachable!("only PostgreSQL runs the server loop"),
                }
                let gone = before - b.scalar("SELECT count(*) FROM sessions").await?;
                if deleted != 0 && gone != deleted {
                    return Err(format!(
                        "method {which} deleted {gone} sessions, the statement {deleted}"
                    ));
                }
                deleted = gone;
            }
        }
        let limit = median(limits);
        println!(
            "### Delete of {deleted} of {n} sessions (older than 30 days, batch {})\n\n{HEADER}",
            opts.batch
        );
        println!(
            "{}",
            limit_row("one `DELETE` statement (the limit)", deleted, limit)
        );
        println!(
            "{}",
            job_row(
                "batched delete (`purge_expired_sessions`)",
                deleted,
                limit,
                &jobs
            )
        );
        if !loops.is_empty() {
            let floor = median(loops);
            println!(
                "| as many key ranges, looped inside the server (PL/pgSQL) | {} | {} | {} | {} | **{}** | - | - | - | - |",
                secs(floor),
                secs(floor),
                rate(deleted, floor),
                ratio(limit, floor),
                ratio(limit, floor)
            );
        }
        if !peers.is_empty() {
            let peer = median(peers);
            println!(
                "| `pt-archiver --purge --bulk-delete --limit {} --commit-each` (whole process) | {} | {} | {} | {} | **{}** | - | - | - | - |",
                opts.batch,
                secs(peer),
                secs(peer),
                rate(deleted, peer),
                ratio(limit, peer),
                ratio(limit, peer)
            );
        } else if backend == Backend::MySql {
            println!("| pt-archiver | not installed (`apt-get install percona-toolkit`) | | | | | | | | |");
        }
        checkpoint_note(&mut b, opts.batch, &jobs).await?;
    }

    if want("sweep") {
        println!(
            "### Batch size: time against the longest transaction (`backfill_emails`, {n} rows)\n"
        );
        println!("| batch | time in batches (s) | rows/s | longest transaction (ms) | p99 transaction (ms) | checkpoints |\n|---|---|---|---|---|---|");
        for batch in [500, 1000, 5000, 20000, 100000] {
            b.reset_users().await?;
            let r = b.job("backfill_emails", batch, &[], &[])?;
            println!(
                "| {batch} | {} | {} | {} | {} | {:.1}% |",
                secs(r.batches),
                rate(n, r.batches),
                r.max_tx.as_millis(),
                r.p99_tx.as_millis(),
                100.0 * r.bookkeeping.as_secs_f64() / r.batches.as_secs_f64().max(1e-9)
            );
        }
        println!();
    }

    if want("cpu") {
        let m = b.digests(n).await?;
        println!("### CPU-heavy transform (`digest_payloads`: 200 rounds of SHA-256 per row, {m} rows)\n");
        println!("| threads | time in batches (s) | rows/s | speed-up |\n|---|---|---|---|");
        let mut one = Duration::ZERO;
        for threads in ["1", "2"] {
            let mut times = Vec::new();
            for _ in 0..opts.rounds {
                b.conn
                    .script("UPDATE digests SET digest = NULL")
                    .await
                    .map_err(s)?;
                times.push(
                    b.job(
                        "digest_payloads",
                        opts.batch,
                        &[],
                        &[("RAYON_NUM_THREADS", threads)],
                    )?
                    .batches,
                );
            }
            let t = median(times);
            if threads == "1" {
                one = t;
            }
            println!(
                "| {threads} | {} | {} | {} |",
                secs(t),
                rate(m, t),
                ratio(one, t)
            );
        }
        println!();
    }

    if want("floor") && backend == Backend::MySql {
        let shapes = [
            MySqlShape::ReadOnly,
            MySqlShape::JsonTable,
            MySqlShape::UnionValues,
            MySqlShape::TempTable,
            MySqlShape::Upsert,
        ];
        bench_floor(&mut b, opts, update, "MariaDB", &shapes, |url, rows, batch, shape| async move {
            mysql_shape_loop(&url, rows, batch, shape).await
        })
        .await?;
    }
    if want("floor") && backend == Backend::Sqlite {
        let shapes = [
            SqliteShape::ReadOnly,
            SqliteShape::Values,
            SqliteShape::JsonEach,
            SqliteShape::PerRow,
            SqliteShape::JsonRead,
            SqliteShape::PerRowNative,
            SqliteShape::ValuesNative,
            SqliteShape::PerRowNativeRowid,
            SqliteShape::PerRowNativeRowidCache,
        ];
        bench_floor(&mut b, opts, update, "SQLite", &shapes, |url, rows, batch, shape| async move {
            sqlite_shape_loop(&url, rows, batch, shape).await
        })
        .await?;
    }
    if want("workers") && backend != Backend::Sqlite {
        bench_workers(&mut b, opts, update).await?;
    }

    if want("growth") {
        b.restore("users").await?;
        b.seed("seed_demo_users", 4 * n, n + 1)?;
        b.keep("users").await?;
        let (mut limits, mut sets, mut transforms) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..opts.rounds.min(3) {
            let mut order = vec![0, 1, 2];
            if round % 2 == 1 {
                order.reverse();
            }
            for which in order {
                b.reset_users().await?;
                match which {
                    0 => limits.push(b.timed(update).await?),
                    1 => sets.push(b.job("backfill_emails_sql", opts.batch, &[], &[])?),
                    _ => transforms.push(b.job("backfill_emails", opts.batch, &[], &[])?),
                }
            }
        }
        let limit = median(limits);
        let five = 5 * n;
        println!(
            "### Growth: {five} rows against {n} (median of {} round(s))\n\n{HEADER}",
            opts.rounds.min(3)
        );
        println!(
            "{}",
            limit_row("one `UPDATE` statement (the limit)", five, limit)
        );
        println!("{}", job_row("set-based job", five, limit, &sets));
        println!("{}", job_row("Rust transform", five, limit, &transforms));
        let peak = |runs: &[JobRun]| runs.iter().map(|r| r.rss_kb).max().unwrap_or(0);
        println!(
            "\nt({five})/t({n}): limit {:.2}, set-based job {:.2}, Rust transform {:.2}; \
             peak RSS {five} against {n}: set-based job {:.2}, Rust transform {:.2}\n",
            limit.as_secs_f64() / limit_1m.as_secs_f64().max(1e-9),
            median_by(&sets, |r| r.batches).as_secs_f64() / set_1m.as_secs_f64().max(1e-9),
            median_by(&transforms, |r| r.batches).as_secs_f64()
                / transform_1m.as_secs_f64().max(1e-9),
            ratio_of(peak(&sets), rss_1m.0),
            ratio_of(peak(&transforms), rss_1m.1),
        );
    }
    let mut b = b;
    b.conn.script("SELECT 1").await.map_err(s)?;
    if backend != Backend::Sqlite {
        let server = DatabaseUrl::parse(&server_url(backend)).map_err(s)?;
        let mut admin = Conn::connect(&server, &ConnectOptions::default())
            .await
            .map_err(s)?;
        let force = if backend == Backend::Postgres {
            " WITH (FORCE)"
        } else {
            ""
        };
        let _ = admin
            .script(&format!("DROP DATABASE IF EXISTS {}{force}", db_name()))
            .await;
        admin.close().await;
    }
    Ok(())
}

/// The `pt-archiver` command that purges the expired sessions of the bench's
/// MariaDB database in bulk deletes of `batch` rows, committing each, as an
/// operator would run it; `None` when the tool is not there and cannot be
/// installed (Debian's `percona-toolkit`, installed here when missing).
fn pt_archiver(url: &DatabaseUrl, cutoff: &str, batch: i64) -> Option<Command> {
    let present = |_: ()| {
        Command::new("pt-archiver")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !present(()) {
        eprintln!("pt-archiver is missing: apt-get install percona-toolkit");
        let installed = Command::new("apt-get")
            .args(["install", "-y", "-q", "percona-toolkit"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed || !present(()) {
            eprintln!("pt-archiver could not be installed; its row is left out");
            return None;
        }
    }
    // mysql://USER@HOST:PORT/DATABASE (the bench's servers have no passwords).
    let text = url.redacted().to_string();
    let rest = text.split_once("://")?.1;
    let (user, rest) = rest.split_once('@').unwrap_or(("root", rest));
    let (host_port, database) = rest.split_once('/')?;
    let database = database.split('?').next()?;
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "3306"));
    let dsn = format!("h={host},P={port},u={user},D={database},t=sessions");
    let mut cmd = Command::new("pt-archiver");
    cmd.args([
        "--source",
        &dsn,
        "--where",
        &format!("created_at < {cutoff}"),
    ])
    .args([
        "--purge",
        "--bulk-delete",
        "--limit",
        &batch.to_string(),
        "--commit-each",
    ])
    // Its default keeps the row with the highest AUTO_INCREMENT value
    // (so that a restart cannot reuse it): the other methods delete it.
    .args(["--no-safe-auto-increment", "--no-check-charset", "--quiet"]);
    Some(cmd)
}

/// Runs a peer tool to its end; its whole process's wall time.
fn run_peer(cmd: &Command) -> Res<Duration> {
    let mut run = Command::new(cmd.get_program());
    run.args(cmd.get_args());
    let started = Instant::now();
    let out = run
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{:?} failed: {}{}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}
