//! Running a job against a live database: lock and statement timeouts set by
//! datamig, transient errors retried with backoff, a killed connection replaced.

use crate::each_server;
use std::time::Duration;

use datamig_core::config::DatabaseUrl;
use datamig_core::db::{Conn, ConnectOptions};

use crate::each_db;
use crate::jobs::{assert_each_row_once, spawn, visits, wait_for_progress};
use crate::support::block_on;
use crate::support::{to_run, Db, Project};

/// Holds a lock the run will need, from another connection, for `hold`: row
/// `id` of `visits` on a server, the whole database on SQLite.
fn hold_row_lock(p: &Project, id: i64, hold: Duration) -> std::thread::JoinHandle<()> {
    let url = DatabaseUrl::parse(&p.db.url).unwrap();
    let kind = p.db.kind;
    let (taken, is_taken) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        block_on(async {
            let mut conn = Conn::connect(&url, &ConnectOptions::default())
                .await
                .unwrap();
            conn.begin().await.unwrap();
            if kind == Db::Sqlite {
                // BEGIN IMMEDIATE: the database's write lock.
                conn.execute("UPDATE visits SET hits = hits WHERE id = ?", &[id.into()])
                    .await
                    .unwrap();
            } else {
                conn.fetch(
                    "SELECT hits FROM visits WHERE id = ? FOR UPDATE",
                    &[id.into()],
                )
                .await
                .unwrap();
            }
            taken.send(()).unwrap();
            tokio::time::sleep(hold).await;
            conn.commit().await.unwrap();
            conn.close().await;
        });
    });
    is_taken
        .recv_timeout(Duration::from_secs(60))
        .expect("the lock was not taken");
    holder
}

/// A batch that runs out of its statement timeout is rolled back and tried again
/// at half the size, with or without workers, until it fits; every row once.
fn a_batch_out_of_time_is_retried_at_half_the_size(kind: Db, workers: usize) {
    let p = Project::new(kind);
    let n = 1600;
    visits(&p, n);
    // 200 rows take 0.8 s, over the 600 ms timeout; 100 take 0.4 s, with room
    // for a loaded machine.
    let mut args = vec![
        "--log-format",
        "json",
        "run",
        "count_visits_sql",
        "--batch",
        "200",
        "--arg",
        "row_ms=4",
        "--statement-timeout",
        "600ms",
        "--json",
    ];
    let workers_arg = workers.to_string();
    if workers > 0 {
        args.extend(["--workers", &workers_arg]);
    }
    let run = p.run_fixtures(&args);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("(statement timeout)"), "{run:?}");
    assert!(run.stderr.contains("; retrying at 100 rows in "), "{run:?}");
    let summary: serde_json::Value =
        serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap();
    // Each worker times out once (twice, on a loaded machine), then keeps the
    // smaller size in its next partitions: not once in each of its 8 partitions.
    let timeouts = run.stderr.matches("(statement timeout)").count();
    assert!(
        timeouts <= 2 * workers.max(1),
        "{timeouts} timeouts: {run:?}"
    );
    // Each retry's event names its batch (and with workers, its worker and
    // partition) as fields of the batch's span.
    for line in run
        .stderr
        .lines()
        .filter(|l| l.contains("(statement timeout)"))
    {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let message = event["fields"]["message"].as_str().unwrap();
        let at = &event["span"];
        assert_eq!(at["name"], "batch", "{event}");
        assert!(
            message.starts_with(&format!("batch {} ", at["batch"])),
            "{event}"
        );
        if workers > 0 {
            assert!(
                message.contains(&format!(" of partition {} ", at["partition"])),
                "{event}"
            );
            assert!(at["worker"].is_u64(), "{event}");
        }
    }
    assert_eq!(summary["rows_done"], n, "{summary}");
    assert!(summary["batches"].as_i64().unwrap() >= n / 100, "{summary}");
    assert_each_row_once(&p, n, "count_visits_sql");
}

each_server! {
    a_batch_out_of_time_is_retried_at_half_the_size: |kind| a_batch_out_of_time_is_retried_at_half_the_size(kind, 0);
}

each_server! {
    a_partitioned_batch_out_of_time_is_retried_at_half_the_size:
        |kind| a_batch_out_of_time_is_retried_at_half_the_size(kind, 2);
}

each_db! {
    fn a_locked_row_times_out_and_the_batch_is_retried(kind: Db) {
        let p = Project::new(kind);
        let n = 3000;
        visits(&p, n);
        // The pause after each batch lets the lock holder in on SQLite, where the
        // run would otherwise take the database's lock again at once.
        let args = ["run", "count_visits", "--batch", "100", "--arg", "pause_ms=20", "--lock-timeout", "1s", "--sleep", "50ms", "--json"];
        let mut child = spawn(&p, &args);
        wait_for_progress(&p, &mut child, 100);
        let hold = Duration::from_secs(4);
        let started = std::time::Instant::now();
        let holder = hold_row_lock(&p, n - 50, hold);
        let run = to_run(child.wait_with_output().unwrap());
        holder.join().unwrap();
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("(lock timeout)"), "{run:?}");
        assert!(run.stderr.contains("retrying in"), "{run:?}");
        // It finished after the lock was released, and no committed batch held
        // on for anything like the 4 s the lock was held.
        assert!(started.elapsed() >= hold, "{run:?}");
        let summary: serde_json::Value = serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap();
        assert!(summary["max_batch_ms"].as_u64().unwrap() < 1500, "{summary}");
        assert_each_row_once(&p, n, "count_visits");
    }

    fn bad_timeouts_are_refused(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 10);
        for (flag, value) in [("--lock-timeout", "0"), ("--lock-timeout", "soon"), ("--statement-timeout", "-1s"), ("--max-retries", "-1"), ("--sleep", "1 minute")] {
            let run = p.run_fixtures(&["run", "count_visits", flag, value]);
            assert_eq!(run.code, 2, "{flag} {value}: {run:?}");
            assert_eq!(run.stderr.trim().lines().count(), 1, "{flag} {value}: {run:?}");
            assert!(run.stderr.contains(flag), "{flag} {value}: {run:?}");
        }
        assert!(!p.db.table_exists("datamig_runs"));
    }
}

/// Kills the run's sessions from the server mid-run: it reconnects, takes its
/// job lock again, and finishes with every row processed once.
fn killed_connection(kind: Db) {
    let p = Project::new(kind);
    let n = 20_000;
    visits(&p, n);
    let mut child = spawn(
        &p,
        &[
            "run",
            "count_visits",
            "--batch",
            "200",
            "--arg",
            "pause_ms=5",
        ],
    );
    wait_for_progress(&p, &mut child, 4000);
    let kill = match kind {
        Db::Postgres => {
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'datamig%'"
                .to_string()
        }
        _ => {
            // The session that holds the job's named lock: the run's writer.
            let lock = datamig_core::db::MYSQL_LOCK_NAME_SQL.replace('?', "'job.count_visits'");
            let id = p.db.scalar(&format!("SELECT IS_USED_LOCK({lock})"));
            format!("KILL {id}")
        }
    };
    p.db.exec(&kill);
    let run = to_run(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("(connection lost)"), "{run:?}");
    assert_each_row_once(&p, n, "count_visits");
}

each_server! {
    killed_connection: killed_connection;
}
