//! The database server crashed mid-run (RELIABILITY.md, "server crash"): a
//! server of the test's own is stopped the way a power cut stops it
//! (PostgreSQL's immediate shutdown, SIGKILL of `mariadbd`) and started again,
//! which recovers from its log. PostgreSQL commits batches asynchronously, so
//! the crash loses its last batches together with their checkpoints: the run
//! that reconnects must go back to the checkpoint the database has, whatever it
//! remembers, and redo them. Every step shape, with one cursor and with workers:
//! nothing lost, nothing twice, and the counters agree with the rows.

use std::time::{Duration, Instant};

use crate::each_server;
use crate::jobs::{assert_each_row_once, spawn, visits};
use crate::server::Server;
use crate::support::{to_run, Db, Project, Run, TestDb};

/// What a crash test runs, and how it checks the result.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Transform,
    Sql,
    Delete,
    Archive,
    Import,
}

/// The rows of each test, and the crashes in its run: the CI scale, or the
/// long run's (`DATAMIG_RELIABILITY=long`, RELIABILITY.md).
fn scale() -> (i64, usize) {
    if std::env::var("DATAMIG_RELIABILITY").as_deref() == Ok("long") {
        (200_000, 8)
    } else {
        (40_000, 2)
    }
}

fn seed(p: &Project, shape: Shape, rows: i64) {
    match shape {
        Shape::Transform | Shape::Sql => visits(p, rows),
        Shape::Delete => {
            p.db.exec("CREATE TABLE flags (id BIGINT NOT NULL PRIMARY KEY, flag INT NOT NULL DEFAULT 1, hits INT NOT NULL DEFAULT 0)");
            p.db.fill_ids("flags", rows);
            p.db.exec("UPDATE flags SET flag = CASE WHEN id % 4 = 0 THEN 0 ELSE 1 END");
        }
        Shape::Archive | Shape::Import => {
            p.copy_project_migrations();
            p.ok(&["schema", "upgrade"]);
            if let Shape::Archive = shape {
                let sessions = format!("rows={}", 2 * rows);
                p.ok(&[
                    "run",
                    "seed_demo_sessions",
                    "--arg",
                    &sessions,
                    "--batch",
                    "5000",
                ]);
            } else {
                let mut csv = String::from("id,email\n");
                for i in 1..=rows {
                    csv.push_str(&format!("{i},user{i}@example.com\n"));
                }
                std::fs::write(p.path().join("users.csv"), csv).unwrap();
            }
        }
    }
}

fn args(shape: Shape) -> Vec<&'static str> {
    let job: &[&str] = match shape {
        Shape::Transform => &["count_visits"],
        Shape::Sql => &["count_visits_sql"],
        Shape::Delete => &["purge_flagged"],
        Shape::Archive => &["purge_expired_sessions", "--arg", "archive=archive.csv"],
        Shape::Import => &["import_users", "--arg", "file=users.csv"],
    };
    [
        &["run"],
        job,
        &["--batch", "500", "--sleep", "20ms", "--progress", "log"],
    ]
    .concat()
}

/// Rows (records, sessions) the run has committed, as the database has it now.
fn committed(p: &Project) -> i64 {
    if !p.db.table_exists("datamig_runs") {
        return 0;
    }
    let run = p
        .db
        .scalar("SELECT coalesce(max(rows_done), 0) FROM datamig_runs WHERE job NOT LIKE 'seed%'");
    // A partitioned run's own figures are published now and then; its
    // partitions' are its checkpoints.
    let parts = if p.db.table_exists("datamig_partitions") {
        let int = if p.db.kind == Db::MySql {
            "SIGNED"
        } else {
            "BIGINT"
        };
        p.db.scalar(&format!(
            "SELECT CAST(coalesce(sum(rows_done), 0) AS {int}) FROM datamig_partitions"
        ))
    } else {
        0
    };
    run.max(parts)
}

fn assert_exactly_once(p: &Project, shape: Shape, rows: i64, before: i64, run: &Run) {
    let runs = |job: &str| {
        p.db.query(&format!(
            "SELECT state, rows_done, rows_changed FROM datamig_runs WHERE job = '{job}' ORDER BY id DESC"
        ))
    };
    match shape {
        Shape::Transform => assert_each_row_once(p, rows, "count_visits"),
        Shape::Sql => assert_each_row_once(p, rows, "count_visits_sql"),
        Shape::Delete => {
            assert_eq!(
                p.db.scalar("SELECT count(*) FROM flags WHERE flag = 1"),
                0,
                "flagged rows left: {run:?}"
            );
            assert_eq!(
                p.db.scalar("SELECT count(*) FROM flags"),
                rows / 4,
                "only flagged rows deleted"
            );
            let deleted = (rows - rows / 4).to_string();
            assert_eq!(
                runs("purge_flagged")[0],
                vec!["completed".to_string(), deleted.clone(), deleted],
                "{run:?}"
            );
        }
        Shape::Archive => {
            let deleted = before - p.db.scalar("SELECT count(*) FROM sessions");
            let text = std::fs::read_to_string(p.path().join("archive.csv")).unwrap();
            let mut ids: Vec<i64> = text
                .lines()
                .skip(1)
                .map(|l| l.split(',').next().unwrap().parse().unwrap())
                .collect();
            let archived = i64::try_from(ids.len()).unwrap();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(
                i64::try_from(ids.len()).unwrap(),
                archived,
                "a session archived twice: {run:?}"
            );
            assert_eq!(
                archived, deleted,
                "every deleted session archived once: {run:?}"
            );
            let d = deleted.to_string();
            assert_eq!(
                runs("purge_expired_sessions")[0],
                vec!["completed".to_string(), d.clone(), d],
                "{run:?}"
            );
        }
        Shape::Import => {
            assert_eq!(
                p.db.scalar("SELECT count(*) FROM users"),
                rows,
                "every record imported: {run:?}"
            );
            let n = rows.to_string();
            assert_eq!(
                runs("import_users")[0],
                vec!["completed".to_string(), n.clone(), n],
                "{run:?}"
            );
        }
    }
}

/// Runs `shape` on a server of its own, crashes the server `crashes` times
/// mid-run, and checks that the run finished with every row exactly once.
fn crashed_mid_run(kind: Db, shape: Shape, workers: &[&str]) {
    let (rows, crashes) = scale();
    let server = Server::start(kind);
    let p = Project::with(TestDb::on(kind, &server.url()));
    seed(&p, shape, rows);
    let before = if let Shape::Archive = shape {
        p.db.scalar("SELECT count(*) FROM sessions")
    } else {
        0
    };
    let args: Vec<&str> = args(shape)
        .into_iter()
        .chain(workers.iter().copied())
        .collect();
    let started = Instant::now();
    let mut child = spawn(&p, &args);
    let mut landed = 0;
    for i in 0..crashes {
        // The crashes spread over the run's first 60% (of the rows of a table
        // of which a delete has three quarters to do), each a random moment
        // after its mark.
        let target =
            rows * 6 / 10 * (1 + i64::try_from(i).unwrap()) / i64::try_from(crashes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while committed(&p) < target && child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no progress before crash {i}");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 100));
        if child.try_wait().unwrap().is_none() {
            server.crash(Duration::from_millis(300));
            landed += 1;
        }
    }
    assert_eq!(landed, crashes, "every crash must land mid-run");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let run = to_run(child.wait_with_output().unwrap());
            panic!("the run did not end after the crashes: {run:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = to_run(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("(connection lost)"),
        "the crash did not meet a batch: {run:?}"
    );
    assert_exactly_once(&p, shape, rows, before, &run);
    let redone = if workers.is_empty() {
        format!(
            ", {} times the database's checkpoint was behind the process's and the lost batches were redone",
            run.stderr.matches("lost with the server").count()
        )
    } else {
        String::new()
    };
    println!(
        "reliability: server crash {kind:?} {shape:?}{}: {rows} rows, {crashes} crashes mid-run{redone}; 0 lost, \
         0 twice ({:.1}s)",
        if workers.is_empty() { "" } else { ", partitioned" },
        started.elapsed().as_secs_f64()
    );
}

each_server! {
    a_server_crash_mid_transform_loses_and_repeats_nothing: |kind| crashed_mid_run(kind, Shape::Transform, &[]);
    a_server_crash_mid_sql_step_loses_and_repeats_nothing: |kind| crashed_mid_run(kind, Shape::Sql, &[]);
    a_server_crash_mid_delete_leaves_nothing_undeleted: |kind| crashed_mid_run(kind, Shape::Delete, &[]);
    a_server_crash_mid_archive_archives_each_row_once: |kind| crashed_mid_run(kind, Shape::Archive, &[]);
    a_server_crash_mid_import_imports_each_record_once: |kind| crashed_mid_run(kind, Shape::Import, &[]);
    a_server_crash_mid_partitioned_transform_loses_and_repeats_nothing: |kind| crashed_mid_run(kind, Shape::Transform, &["--workers", "2", "--lease", "3s"]);
    a_server_crash_mid_partitioned_sql_step_loses_and_repeats_nothing: |kind| crashed_mid_run(kind, Shape::Sql, &["--workers", "2", "--lease", "3s"]);
    a_server_crash_mid_partitioned_delete_leaves_nothing_undeleted: |kind| crashed_mid_run(kind, Shape::Delete, &["--workers", "2", "--lease", "3s"]);
}

/// The server lost in the middle of `schema upgrade` was blamed on the
/// migration (exit 6, "Fix … and run the command again" about a correct file):
/// it is a lost connection (exit 4), and running the command again applies the
/// migration once.
fn server_lost_mid_upgrade(kind: Db) {
    let server = Server::start(kind);
    let p = Project::with(TestDb::on(kind, &server.url()));
    p.migration(
        20261201000018,
        "create_t19",
        "CREATE TABLE t19 (id INT);\n",
        "DROP TABLE t19;\n",
    );
    let slow = match kind {
        Db::Postgres => "INSERT INTO t19 VALUES (1);\nSELECT pg_sleep(10);\n",
        _ => "INSERT INTO t19 VALUES (1);\nDO SLEEP(10);\n",
    };
    p.migration(20261201000019, "insert_t19", slow, "DELETE FROM t19;\n");
    let child = p
        .command(&["schema", "upgrade"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(p.db.table_exists("datamig_schema_history")
        && p.db.scalar("SELECT count(*) FROM datamig_schema_history") == 1)
    {
        assert!(
            Instant::now() < deadline,
            "the first migration was not applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    server.restart(Duration::from_millis(200));
    let run = to_run(child.wait_with_output().unwrap());
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr
            .contains("migration 20261201000019_insert_t19: the connection to"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("Run the command again once the server answers"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("Fix "), "{run:?}");
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM t19"),
        0,
        "rolled back with the connection"
    );
    let fast = match kind {
        Db::Postgres => "INSERT INTO t19 VALUES (1);\nSELECT pg_sleep(0);\n",
        _ => "INSERT INTO t19 VALUES (1);\nDO SLEEP(0);\n",
    };
    // The same file, quicker: its checksum changes, but it was never applied.
    p.migration(20261201000019, "insert_t19", fast, "DELETE FROM t19;\n");
    p.ok(&["schema", "upgrade"]);
    assert_eq!(p.db.scalar("SELECT count(*) FROM t19"), 1);
}

each_server! {
    a_server_lost_mid_upgrade_is_a_connection_error_not_the_migrations_fault: server_lost_mid_upgrade;
}
