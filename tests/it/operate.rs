//! Operating a run: time windows, one-line summaries for cron, rate limits,
//! pause/resume/cancel from another process, dry runs, the error budget, and
//! statistics after a run, on each database.

use crate::each_server;
use std::time::{Duration, Instant};

use crate::each_db;
use crate::jobs::{assert_each_row_once, rows_done, spawn, visits, wait_for_progress};
use crate::support::block_on;
use crate::support::{to_run, Db, Project, Run};

fn summary(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.stdout.lines().last().expect("a summary line"))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

fn state(p: &Project) -> String {
    p.db.query("SELECT state FROM datamig_runs ORDER BY id DESC")[0][0].clone()
}

/// The project's migrations, seeded with `rows` users (every `invalid_every`-th invalid).
fn users(p: &Project, rows: i64, invalid_every: i64) {
    p.copy_project_migrations();
    p.ok(&["schema", "upgrade"]);
    let rows = format!("rows={rows}");
    let invalid = format!("invalid_every={invalid_every}");
    p.ok(&[
        "run",
        "seed_demo_users",
        "--arg",
        &rows,
        "--arg",
        &invalid,
        "--batch",
        "5000",
        "--analyze",
        "never",
    ]);
}

each_db! {
    fn max_runtime_stops_at_a_batch_boundary_and_the_next_run_continues(kind: Db) {
        let p = Project::new(kind);
        // 300 batches of at least 6 ms: longer than the budget on any machine.
        let n = 60_000;
        visits(&p, n);
        let args = ["run", "count_visits", "--batch", "200", "--arg", "pause_ms=3"];
        let mut limited = args.to_vec();
        limited.extend(["--max-runtime", "1s"]);
        let started = Instant::now();
        let run = p.run_fixtures(&limited);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "stopped near the budget: {run:?}");
        let first = run.stdout.lines().next().unwrap();
        assert!(first.starts_with("stopped run 1 of count_visits: "), "{run:?}");
        assert!(first.contains("--max-runtime reached at a batch boundary"), "{run:?}");
        assert!(first.contains("rows left: the next `datamig run count_visits` continues run 1"), "{run:?}");
        assert_eq!(state(&p), "interrupted");
        let done = rows_done(&p);
        assert!(done > 0 && done < n, "{done}");
        // Exactly the committed batches are done, nothing more.
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), done);
        let rest = p.run_fixtures(&args);
        assert_eq!(rest.code, 0, "{rest:?}");
        assert!(rest.stdout.contains(&format!("{} rows this time", n - done)), "{rest:?}");
        assert_each_row_once(&p, n, "count_visits");
    }

    fn max_batches_stops_after_exactly_that_many_batches_and_the_next_run_continues(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 2_000);
        let args = ["run", "count_visits", "--batch", "100"];
        let mut canary = args.to_vec();
        canary.extend(["--max-batches", "3"]);
        let run = p.run_fixtures(&canary);
        assert_eq!(run.code, 0, "{run:?}");
        let first = run.stdout.lines().next().unwrap();
        assert!(first.starts_with("stopped run 1 of count_visits: 300 rows in 3 batches"), "{run:?}");
        assert!(first.contains("--max-batches 3 reached at a batch boundary, 1700 rows left"), "{run:?}");
        assert_eq!(state(&p), "interrupted");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), 300);
        let more = p.run_fixtures(&canary);
        assert!(more.stdout.starts_with("stopped run 1 of count_visits: 600 rows in 6 batches"), "{more:?}");
        let rest = p.run_fixtures(&args);
        assert_eq!(rest.code, 0, "{rest:?}");
        assert!(rest.stdout.contains("1400 rows this time"), "{rest:?}");
        assert_each_row_once(&p, 2_000, "count_visits");
        let zero = p.run_fixtures(&["run", "count_visits", "--max-batches", "0"]);
        assert_eq!(zero.code, 2, "{zero:?}");
        assert!(zero.stderr.contains("--max-batches"), "{zero:?}");
    }

    fn quiet_prints_one_summary_line(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 2_000);
        let run = p.run_fixtures(&["run", "count_visits", "--batch", "500", "--quiet"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
        assert!(run.stdout.starts_with("completed run 1 of count_visits: 2000 rows in 4 batches"), "{run:?}");
        assert!(run.stderr.trim().is_empty(), "nothing but the summary: {run:?}");
        // A failure is one line too, on stderr, with its exit code.
        let again = p.run_fixtures(&["run", "count_visits", "--batch", "0", "--quiet"]);
        assert_eq!(again.code, 2, "{again:?}");
        assert_eq!(again.stderr.trim().lines().count(), 1, "{again:?}");
    }

    fn a_rate_limit_holds_over_the_run(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 3_000);
        let run = p.run_fixtures(&["run", "count_visits", "--batch", "100", "--rate", "1500", "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        let s = summary(&run);
        let secs = s["elapsed_ms"].as_f64().unwrap() / 1000.0;
        let rate = 3000.0 / secs;
        assert!((1350.0..=1650.0).contains(&rate), "{rate:.0} rows/s against 1500 (±10%): {s}");
        assert!(s["waited_ms"].as_u64().unwrap() > 1000, "{s}");
        assert_each_row_once(&p, 3_000, "count_visits");
    }

    fn an_adaptive_batch_moves_toward_its_target_time(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 20_000);
        // Each row costs the transform about 3 ms / 100 rows: 0.03 ms a row. At
        // 60 ms a batch that is about 2000 rows; starting from 100 it grows by at
        // most twice a batch.
        let run = p.run_fixtures(&[
            "run", "count_visits", "--batch", "100", "--arg", "pause_ms=3",
            "--target-batch-time", "60ms", "--batch-min", "50", "--batch-max", "5000", "--json",
        ]);
        assert_eq!(run.code, 0, "{run:?}");
        let s = summary(&run);
        let batches = s["batches"].as_i64().unwrap();
        // Fixed batches of 100 would take 200.
        assert!(batches < 60, "{batches} batches: {s}");
        assert_each_row_once(&p, 20_000, "count_visits");
    }

    fn pause_resume_and_cancel_steer_a_live_run(kind: Db) {
        let p = Project::new(kind);
        let n = 40_000;
        visits(&p, n);
        // SQLite has one writer: without a pause between batches the run takes the
        // lock again at once and the request cannot be written (README).
        let mut args = vec!["run", "count_visits", "--batch", "100", "--arg", "pause_ms=5", "--arg", "unchecked=true"];
        if kind == Db::Sqlite {
            args.extend(["--sleep", "20ms"]);
        }
        let mut child = spawn(&p, &args);
        wait_for_progress(&p, &mut child, 500);
        let paused = p.run_fixtures(&["pause", "count_visits"]);
        assert_eq!(paused.code, 0, "{paused:?}");
        assert!(paused.stdout.starts_with("paused run 1 of count_visits at "), "{paused:?}");
        assert_eq!(state(&p), "paused");
        let held = rows_done(&p);
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(rows_done(&p), held, "a paused run does no batches");
        assert!(child.try_wait().unwrap().is_none(), "its process waits");
        // A second pause, and a second runner, are told what is going on.
        let twice = p.run_fixtures(&["pause", "count_visits"]);
        assert_eq!(twice.code, 2, "{twice:?}");
        assert!(twice.stderr.contains("is paused already"), "{twice:?}");
        let other = p.run_fixtures(&args);
        assert_eq!(other.code, 12, "{other:?}");
        assert!(other.stderr.contains("paused by "), "{other:?}");

        let resumed = p.run_fixtures(&["resume", "count_visits"]);
        assert_eq!(resumed.code, 0, "{resumed:?}");
        assert!(resumed.stdout.starts_with("resumed run 1 of count_visits"), "{resumed:?}");
        assert_eq!(state(&p), "running");
        wait_for_progress(&p, &mut child, held + 300);

        let cancelled = p.run_fixtures(&["cancel", "count_visits"]);
        assert_eq!(cancelled.code, 0, "{cancelled:?}");
        assert!(cancelled.stdout.starts_with("cancelled run 1 of count_visits"), "{cancelled:?}");
        let run = to_run(child.wait_with_output().unwrap());
        assert_eq!(run.code, 17, "{run:?}");
        assert!(run.stderr.contains("paused by "), "it said so: {run:?}");
        assert!(run.stderr.contains("was cancelled by "), "{run:?}");
        assert_eq!(state(&p), "cancelled");
        let done = rows_done(&p);
        assert!(done < n, "stopped early");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), done, "every committed batch, once");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits > 1"), 0);
        // Running the job again starts a new run.
        let again = p.run_fixtures(&["run", "count_visits", "--batch", "1000", "--arg", "unchecked=true"]);
        assert_eq!(again.code, 0, "{again:?}");
        assert!(again.stderr.contains("starting run 2 of count_visits"), "{again:?}");
    }

    fn a_paused_run_without_a_process_keeps_cron_off_until_resumed(kind: Db) {
        let p = Project::new(kind);
        let n = 20_000;
        visits(&p, n);
        let args = ["run", "count_visits", "--batch", "100", "--arg", "pause_ms=5"];
        let mut child = spawn(&p, &args);
        wait_for_progress(&p, &mut child, 300);
        child.kill().unwrap();
        let _ = child.wait();
        // The server drops the dead session's lock once it sees the socket close.
        wait_until_unlocked(&p, "job.count_visits");
        let paused = p.run_fixtures(&["pause", "count_visits"]);
        assert!(paused.stdout.contains("(no process runs it)"), "{paused:?}");
        assert_eq!(state(&p), "paused");
        let refused = p.run_fixtures(&args);
        assert_eq!(refused.code, 16, "{refused:?}");
        assert!(refused.stderr.contains("`datamig resume count_visits` releases it"), "{refused:?}");
        let released = p.run_fixtures(&["resume", "count_visits"]);
        assert_eq!(released.code, 0, "{released:?}");
        assert!(released.stdout.contains("the next `datamig run count_visits` resumes it"), "{released:?}");
        let done = p.run_fixtures(&args);
        assert_eq!(done.code, 0, "{done:?}");
        assert!(done.stderr.contains("resuming run 1 of count_visits"), "{done:?}");
        assert_each_row_once(&p, n, "count_visits");
        let none = p.run_fixtures(&["cancel", "count_visits"]);
        assert_eq!(none.code, 2, "nothing unfinished: {none:?}");
        assert!(none.stderr.contains("has no unfinished run to cancel"), "{none:?}");
    }

    fn a_dry_run_reports_and_changes_nothing(kind: Db) {
        let p = Project::new(kind);
        // Large enough that a batch of 1000 is a small range: the planner's index choice.
        visits(&p, 50_000);
        let run = p.run_fixtures(&["run", "count_visits_sql", "--batch", "1000", "--dry-run"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.starts_with("dry run of count_visits_sql: 3 batch(es) of up to 1000 rows from the start"), "{run:?}");
        assert!(run.stdout.contains("  batch 1: 1000 rows, 1000 would change, 0 rejected, "), "{run:?}");
        assert!(run.stdout.contains("50000 rows to process; at this pace about "), "{run:?}");
        assert!(!run.stdout.contains("warning:"), "the key is indexed: {run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits <> 0"), 0, "nothing changed");
        assert!(!p.db.table_exists("datamig_runs"), "not even datamig's own tables");
        // PostgreSQL warned "there is no transaction in progress" on every dry run.
        assert!(!run.stderr.contains("WARN"), "{run:?}");
        let json = p.run_fixtures(&["run", "count_visits", "--batch", "700", "--dry-run", "--dry-run-batches", "2", "--json"]);
        assert!(!json.stderr.contains("WARN"), "{json:?}");
        let s = summary(&json);
        assert_eq!(s["batches"].as_array().unwrap().len(), 2, "{s}");
        assert_eq!(s["batches"][1]["position"], "1400", "{s}");
        assert_eq!(s["total"], 50_000, "{s}");

        // A key without an index: each batch reads the whole table, and the dry run says so.
        p.db.exec("CREATE TABLE loose (id BIGINT NOT NULL, hits INT NOT NULL DEFAULT 0)");
        p.db.fill_ids("loose", 20_000);
        let loose = p.run_fixtures(&["run", "touch_loose", "--batch", "500", "--dry-run"]);
        assert_eq!(loose.code, 0, "{loose:?}");
        assert!(loose.stdout.contains("warning: a batch query makes a "), "{loose:?}");
        assert!(loose.stdout.contains("of loose"), "{loose:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM loose WHERE hits <> 0"), 0);
    }

    fn the_error_budget_stops_a_run_and_rejects_go_to_a_file(kind: Db) {
        let p = Project::new(kind);
        users(&p, 2_000, 10);
        let file = p.path().join("rejects.csv");
        let run = p.run(&["run", "backfill_emails", "--batch", "100", "--max-errors", "25", "--rejects-file", file.to_str().unwrap()]);
        assert_eq!(run.code, 18, "{run:?}");
        assert!(run.stderr.contains("rows rejected, more than --max-errors 25 allows"), "{run:?}");
        assert_eq!(state(&p), "failed");
        let rejected = p.db.scalar("SELECT rows_rejected FROM datamig_runs WHERE job = 'backfill_emails'");
        assert!((26..=35).contains(&rejected), "stopped at the batch that went over: {rejected}");
        let csv = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "key,reason");
        assert_eq!(i64::try_from(lines.len() - 1).unwrap(), rejected, "{csv}");
        assert!(lines[1].starts_with("10,"), "{csv}");
        // Resuming with the same budget is refused at once, nothing changed.
        let again = p.run(&["run", "backfill_emails", "--batch", "100", "--max-errors", "25"]);
        assert_eq!(again.code, 18, "{again:?}");
        assert!(again.stderr.contains("nothing was changed"), "{again:?}");
        // A larger budget lets it finish; the file holds every rejected row.
        let done = p.run(&["run", "backfill_emails", "--batch", "100", "--max-errors", "1000", "--rejects-file", file.to_str().unwrap()]);
        assert_eq!(done.code, 0, "{done:?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 201);
    }

    fn statistics_are_refreshed_after_a_run_that_changed_many_rows(kind: Db) {
        let p = Project::new(kind);
        users(&p, 3_000, 1000);
        let run = p.run(&["run", "backfill_emails", "--batch", "1000", "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(summary(&run)["analyzed"], serde_json::json!(["users"]), "{run:?}");
        // MariaDB keeps persistent statistics of every InnoDB table, so there is no
        // trace to tell its ANALYZE from the server's own recalculation.
        match kind {
            Db::Postgres => assert!(p.db.scalar("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'users'") >= 1),
            Db::Sqlite => assert!(p.db.scalar("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'users'") >= 1),
            Db::MySql => {}
        }
        // Never, when told so; and a run that changes little does not.
        p.db.exec("UPDATE users SET email_normalized = NULL WHERE id <= 50");
        let few = p.run(&["run", "backfill_emails", "--batch", "1000", "--json"]);
        assert_eq!(summary(&few)["analyzed"], serde_json::json!([]), "{few:?}");
        p.db.exec("UPDATE users SET email_normalized = NULL");
        let never = p.run(&["run", "backfill_emails", "--batch", "1000", "--analyze", "never", "--json"]);
        assert_eq!(summary(&never)["analyzed"], serde_json::json!([]), "{never:?}");
    }

    fn bad_production_flags_are_refused(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 10);
        let cases: &[(&[&str], &str)] = &[
            (&["--rate", "0"], "a rate of 0 would never run a batch"),
            (&["--rate", "fast"], "is not a rate"),
            (&["--until", "25:00"], "is not a time"),
            (&["--until", "2000-01-01T00:00:00Z"], "has passed"),
            (&["--max-runtime", "0"], "is zero"),
            (&["--target-batch-time", "1s", "--batch-min", "500", "--batch-max", "100"], "--batch-min 500 is above --batch-max 100"),
            (&["--probe", "SELECT 1"], "--probe needs --probe-max"),
            (&["--replica", "postgres://u:secretpw@127.0.0.1:1/x"], "--replica is watched for --max-replica-lag"),
            (&["--max-active", "-1"], "--max-active"),
            (&["--rejects-file", "no/such/dir/r.csv"], "its directory does not exist"),
            (&["--probe", "SELECT FROM nowhere_at_all", "--probe-max", "50ms"], "--probe does not run"),
        ];
        for (flags, says) in cases {
            let mut args = vec!["run", "count_visits"];
            args.extend_from_slice(flags);
            let run = p.run_fixtures(&args);
            assert_eq!(run.code, 2, "{flags:?}: {run:?}");
            assert_eq!(run.stderr.trim().lines().count(), 1, "{flags:?}: {run:?}");
            assert!(run.stderr.contains(says), "{flags:?}: {run:?}");
            assert!(!run.all().contains("secretpw"), "{run:?}");
        }
        assert!(!p.db.table_exists("datamig_runs"));
    }
}

/// Sessions on the server that run a statement for `secs` each, from threads.
fn busy_sessions(p: &Project, n: usize, secs: u64) -> Vec<std::thread::JoinHandle<()>> {
    let sql = match p.db.kind {
        Db::Postgres => format!("SELECT pg_sleep({secs})"),
        _ => format!("SELECT SLEEP({secs})"),
    };
    (0..n)
        .map(|_| {
            let (url, sql) = (p.db.url.clone(), sql.clone());
            std::thread::spawn(move || {
                let db = crate::support::TestDb::attach(&url);
                db.exec(&sql);
            })
        })
        .collect()
}

/// Until no session holds datamig's named lock (the server drops a dead one's lock
/// when it notices the closed socket).
fn wait_until_unlocked(p: &Project, name: &str) {
    let sql = match p.db.kind {
        Db::Sqlite => return, // the OS drops a dead process's file lock at once
        Db::Postgres => format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid::bigint = {}",
            datamig_core::db::lock_key(name) & 0xffff_ffff
        ),
        Db::MySql => format!(
            "SELECT IS_USED_LOCK({}) IS NOT NULL",
            datamig_core::db::MYSQL_LOCK_NAME_SQL.replace('?', &format!("'{name}'"))
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.db.scalar(&sql) > 0 {
        assert!(
            Instant::now() < deadline,
            "the dead runner's lock was not released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn throttled_by_active_sessions(kind: Db) {
    let p = Project::new(kind);
    visits(&p, 2_000);
    // The count is server-wide, as the load is: 25 sessions keep it above 20
    // whatever the tests beside this one do, and none leave it there after.
    let busy = busy_sessions(&p, 25, 3);
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    let run = p.run_fixtures(&[
        "run",
        "count_visits",
        "--batch",
        "200",
        "--max-active",
        "20",
        "--progress",
        "log",
        "--json",
    ]);
    for b in busy {
        b.join().unwrap();
    }
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("other sessions running statements (--max-active 20)"),
        "{run:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited for them: {run:?}"
    );
    assert!(
        summary(&run)["waited_ms"].as_u64().unwrap() >= 1000,
        "{run:?}"
    );
    assert_each_row_once(&p, 2_000, "count_visits");
}

fn throttled_by_a_long_transaction(kind: Db) {
    let p = Project::new(kind);
    visits(&p, 2_000);
    let holder = p.db.hold_a_snapshot(Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(1200));
    let run = p.run_fixtures(&[
        "run",
        "count_visits",
        "--batch",
        "200",
        "--max-transaction-age",
        "500ms",
        "--progress",
        "log",
        "--json",
    ]);
    holder.join().unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("waiting: a transaction open for "),
        "{run:?}"
    );
    assert!(
        summary(&run)["waited_ms"].as_u64().unwrap() >= 1000,
        "{run:?}"
    );
    assert_each_row_once(&p, 2_000, "count_visits");
}

each_server! {
    throttled_by_active_sessions: throttled_by_active_sessions;
}

each_server! {
    throttled_by_a_long_transaction: throttled_by_a_long_transaction;
}

each_db! {
    fn throttled_by_a_slow_probe_query(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 2_000);
        p.db.exec("CREATE TABLE probe_delay (n BIGINT NOT NULL)");
        // A probe that is slow while probe_delay says so: a sleep on the servers,
        // a long count on SQLite.
        let (slow, fast, probe) = match kind {
            Db::Postgres => ("300", "0", "SELECT pg_sleep(n / 1000.0) FROM probe_delay"),
            Db::MySql => ("300", "0", "SELECT SLEEP(n / 1000) FROM probe_delay"),
            Db::Sqlite => ("3000000", "1", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < (SELECT n FROM probe_delay)) SELECT count(*) FROM c"),
        };
        p.db.exec(&format!("INSERT INTO probe_delay (n) VALUES ({slow})"));
        let mut child = p
            .fixtures(&["run", "count_visits", "--batch", "200", "--probe", probe, "--probe-max", "100ms", "--progress", "log", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The probe is tried once before the run starts; then, once the run is
        // recorded, it is slow for longer than one probe takes (SQLite's count
        // takes seconds in a debug build): the first look before any batch is slow.
        let begun = std::time::Instant::now();
        while !(p.db.table_exists("datamig_runs") && p.db.scalar("SELECT count(*) FROM datamig_runs") > 0) {
            if begun.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("the run never began");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(5));
        let while_slow = rows_done(&p);
        // Made fast before anything is asserted: a failed assertion must not
        // leave the run waiting on a slow probe forever.
        p.db.exec(&format!("UPDATE probe_delay SET n = {fast}"));
        let run = to_run(child.wait_with_output().unwrap());
        assert_eq!(while_slow, 0, "no batch while the probe is slow: {run:?}");
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("waiting: the probe query took "), "{run:?}");
        assert!(run.stderr.contains("(--probe-max 100 ms)"), "{run:?}");
        assert!(summary(&run)["waited_ms"].as_u64().unwrap() >= 1500, "{run:?}");
        assert_each_row_once(&p, 2_000, "count_visits");
    }
}

each_db! {
    fn a_csv_import_killed_and_resumed_inserts_every_record_once(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
        p.ok(&["schema", "upgrade"]);
        // Records 1..=3000 on lines 2..=3001, every 500th with a malformed id; then
        // a record with a field too many, one that is not UTF-8, one whose quoted
        // field spans two lines, and a last one.
        let mut csv = b"id,email\n".to_vec();
        for i in 1..=3000 {
            if i % 500 == 0 {
                csv.extend(format!("x{i},user{i}@example.com\n").bytes());
            } else {
                csv.extend(format!("{i},user{i}@example.com\n").bytes());
            }
        }
        csv.extend(b"3001,a@b.c,extra\n");
        csv.extend(b"3002,\xff\xfe@x.y\n");
        csv.extend(b"3003,\"multi\nline@x.y\"\n");
        csv.extend(b"3004,last@x.y\n");
        std::fs::write(p.path().join("users.csv"), &csv).unwrap();
        let args = ["run", "import_users", "--arg", "file=users.csv", "--batch", "100", "--sleep", "5ms"];
        let mut killed = 0;
        for _ in 0..3 {
            let mut child = spawn(&p, &args);
            let before = rows_done(&p);
            wait_for_progress(&p, &mut child, before + 1);
            std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 60));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                killed += 1;
            }
            let _ = child.wait();
        }
        assert_eq!(killed, 3, "every kill lands mid-run");
        let file = p.path().join("rejects.csv");
        let done = p.run_fixtures(&[&args[..], &["--rejects-file", file.to_str().unwrap()]].concat());
        assert_eq!(done.code, 0, "{done:?}");
        assert!(done.stderr.contains("resuming run 1 of import_users at (records, byte, line) "), "{done:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users"), 2996, "every valid record");
        assert_eq!(p.db.scalar("SELECT count(DISTINCT id) FROM users"), 2996, "none twice");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users WHERE id % 500 = 0 AND id <= 3000"), 0);
        assert_eq!(p.db.query("SELECT email FROM users WHERE id = 3003")[0][0], "multi\nline@x.y");
        let runs = p.db.query("SELECT rows_done, rows_changed, rows_rejected FROM datamig_runs WHERE job = 'import_users'");
        assert_eq!(runs, vec![vec!["3004".to_string(), "2996".into(), "8".into()]]);
        let rejects = std::fs::read_to_string(&file).unwrap();
        for line in [501, 1001, 1501, 2001, 2501, 3001] {
            assert!(rejects.contains(&format!("line {line},id `x{}` is not a positive number", line - 1)), "{rejects}");
        }
        assert!(rejects.contains("line 3002,3 fields where the header has 2"), "{rejects}");
        assert!(rejects.contains("line 3003,not UTF-8"), "{rejects}");
        assert_eq!(p.db.query("SELECT email FROM users WHERE id = 3004")[0][0], "last@x.y", "lines after a two-line record");
        // A missing file is one clear error, nothing changed.
        let missing = p.run(&["run", "import_users", "--arg", "file=nope.csv", "--restart"]);
        assert_eq!(missing.code, 2, "{missing:?}");
        assert!(missing.stderr.contains("there is no file nope.csv"), "{missing:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users"), 2996);
    }
}

each_db! {
    fn an_archiving_purge_killed_and_resumed_archives_every_deleted_row_once(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
        p.ok(&["schema", "upgrade"]);
        p.ok(&["run", "seed_demo_sessions", "--arg", "rows=12000", "--batch", "5000"]);
        let before = p.db.scalar("SELECT count(*) FROM sessions");
        let args = ["run", "purge_expired_sessions", "--arg", "archive=archive.csv", "--batch", "200", "--sleep", "5ms"];
        let mut killed = 0;
        let purged = |p: &Project| {
            p.db.scalar("SELECT coalesce(max(rows_done), 0) FROM datamig_runs WHERE job = 'purge_expired_sessions'")
        };
        for _ in 0..3 {
            let mut child = spawn(&p, &args);
            let done = purged(&p);
            let deadline = Instant::now() + Duration::from_secs(30);
            while purged(&p) <= done && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "no progress");
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 40));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                killed += 1;
            }
            let _ = child.wait();
        }
        assert_eq!(killed, 3, "every kill lands mid-run");
        let run = p.run_fixtures(&args);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains("ok    sessions older than the cutoff"), "{run:?}");
        let deleted = before - p.db.scalar("SELECT count(*) FROM sessions");
        assert!(deleted > 5000, "{deleted}");
        let text = std::fs::read_to_string(p.path().join("archive.csv")).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("id,user_id,created_at"));
        let mut ids: Vec<i64> = lines.map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
        assert_eq!(i64::try_from(ids.len()).unwrap(), deleted, "every deleted row archived, none twice");
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(i64::try_from(ids.len()).unwrap(), deleted, "no row archived twice");
        let left = p.db.query(&format!(
            "SELECT count(*) FROM sessions WHERE id IN ({})",
            ids.iter().take(500).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        ));
        assert_eq!(left[0][0], "0", "archived rows are gone from the table");
        // An archive that lost rows is refused, nothing changed.
        std::fs::write(p.path().join("archive.csv"), "id,user_id,created_at\n").unwrap();
        p.db.exec("UPDATE datamig_runs SET state = 'interrupted' WHERE job = 'purge_expired_sessions'");
        let refused = p.run_fixtures(&args);
        assert_eq!(refused.code, 15, "{refused:?}");
        assert!(refused.stderr.contains("rows that were archived and deleted are missing from it"), "{refused:?}");
    }
}

/// `--replica` naming a server that is not a replica stops the run before it
/// starts, nothing changed, the URL shown without its password.
fn a_replica_that_is_not_one_is_refused(kind: Db) {
    let p = Project::new(kind);
    visits(&p, 100);
    let mut url = crate::support::url_parts(&p.db.url);
    // PostgreSQL trusts local connections whatever the password: show it is hidden.
    if kind == Db::Postgres {
        url.set_password(Some("secretpw")).unwrap();
    }
    let run = p.run_fixtures(&[
        "run",
        "count_visits",
        "--max-replica-lag",
        "5s",
        "--replica",
        url.as_str(),
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("is not a replica"), "{run:?}");
    assert!(!run.all().contains("secretpw"), "{run:?}");
    assert!(
        !p.db.table_exists("datamig_runs") || p.db.scalar("SELECT count(*) FROM datamig_runs") == 0
    );
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM visits WHERE hits <> 0"),
        0
    );
}

each_server! {
    a_replica_that_is_not_one_is_refused: a_replica_that_is_not_one_is_refused;
}

/// The PostgreSQL standby `tests/replicas.sh` keeps on 127.0.0.1:5433, streaming from the
/// test server: the same databases, read-only.
fn standby_server() -> String {
    std::env::var("DATAMIG_TEST_STANDBY_URL").unwrap_or_else(|_| {
        crate::support::ensure_replicas();
        "postgres://postgres@127.0.0.1:5433/test".into()
    })
}

/// The test database on a replica (`url`), once replication has brought it
/// there with all `rows` rows of `visits`: a handle on it.
fn copy_on_replica(url: &str, rows: i64) -> crate::support::TestDb {
    for _ in 0..100 {
        // Until the database exists there, connecting to it fails.
        let copied = std::panic::catch_unwind(|| {
            let db = crate::support::TestDb::attach(url);
            (db.scalar("SELECT count(*) FROM visits") == rows).then_some(db)
        });
        if let Ok(Some(db)) = copied {
            return db;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let shown = crate::support::url_parts(url);
    panic!("the replica at {shown} did not copy the test database within 10 s (tests/replicas.sh makes it)");
}

/// Resumes the standby's replay when the test ends, whatever happens in it.
struct ReplayPaused(crate::support::TestDb);

impl Drop for ReplayPaused {
    fn drop(&mut self) {
        self.0.exec("SELECT pg_wal_replay_resume()");
    }
}

/// A standby whose replay is paused falls behind as the primary commits: a run
/// watching it with `--replica` and `--max-replica-lag` waits, saying why, and
/// finishes once the standby catches up. The primary's own view of its
/// standbys (`pg_stat_replication`) is watched too, without `--replica`.
#[test]
fn throttled_by_a_lagging_standby_postgres() {
    let p = Project::new(Db::Postgres);
    visits(&p, 2_000);
    let mut standby = crate::support::url_parts(&standby_server());
    standby.set_path(&format!(
        "/{}",
        crate::support::url_parts(&p.db.url)
            .path()
            .trim_start_matches('/')
    ));
    // The new database reaches the standby by replay.
    let replica = copy_on_replica(standby.as_str(), 2_000);
    replica.exec("SELECT pg_wal_replay_pause()");
    let paused = ReplayPaused(replica);
    // Committed on the primary, not replayed: the standby falls behind.
    p.db.exec("CREATE TABLE lag_marker (n INT)");
    std::thread::sleep(Duration::from_millis(1500));
    let child = p
        .fixtures(&[
            "run",
            "count_visits",
            "--batch",
            "500",
            "--max-replica-lag",
            "1s",
            "--progress",
            "log",
            "--json",
            "--replica",
            standby.as_str(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let done_while_behind = rows_done(&p);
    paused.0.exec("SELECT pg_wal_replay_resume()");
    let run = to_run(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        done_while_behind, 0,
        "no batch while the standby is behind: {run:?}"
    );
    assert!(
        run.stderr
            .contains("replica postgres://postgres@127.0.0.1:5433/dm_t_"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(" behind (--max-replica-lag 1.0s)"),
        "{run:?}"
    );
    assert!(
        summary(&run)["waited_ms"].as_u64().unwrap() >= 2_000,
        "{run:?}"
    );
    assert_each_row_once(&p, 2_000, "count_visits");
    // Caught up, the primary's pg_stat_replication still shows the lag it last
    // measured (seconds, from the stall) for a while: it must not hold a run back.
    p.db.exec("UPDATE visits SET hits = 0");
    let run = p.run_fixtures(&[
        "run",
        "count_visits_sql",
        "--batch",
        "500",
        "--max-replica-lag",
        "1s",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        summary(&run)["waited_ms"].as_u64().unwrap() < 2_000,
        "{run:?}"
    );
    drop(paused);
    let runs =
        p.db.scalar("SELECT count(*) FROM datamig_runs WHERE state = 'completed'");
    assert_eq!(runs, 2);
}

/// The MariaDB pair `tests/replicas.sh` keeps for this test: a primary with its binary log
/// on 127.0.0.1:3307, and its replica on 3308.
fn mariadb_pair() -> (String, String) {
    let var = |name: &str, default: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            crate::support::ensure_replicas();
            default.into()
        })
    };
    (
        var(
            "DATAMIG_TEST_MYSQL_PRIMARY_URL",
            "mysql://root@127.0.0.1:3307/mysql",
        ),
        var(
            "DATAMIG_TEST_MYSQL_REPLICA_URL",
            "mysql://root@127.0.0.1:3308/mysql",
        ),
    )
}

/// Starts the replica's SQL thread again when the test ends, whatever happens.
struct SqlThreadStopped(crate::support::TestDb);

impl Drop for SqlThreadStopped {
    fn drop(&mut self) {
        self.0.exec("START SLAVE SQL_THREAD");
    }
}

/// A MariaDB replica whose SQL thread waits on a row lock falls behind as the
/// run's batches commit on the primary: the run waits while
/// `Seconds_Behind_Master` is over `--max-replica-lag`, saying why, and goes on
/// when the replica catches up. A replica whose SQL thread is stopped reports no
/// lag: it counts as not replicating, and the run waits for it too.
#[test]
fn throttled_by_a_lagging_replica_mariadb() {
    let (primary, replica_server) = mariadb_pair();
    let p = Project::with(crate::support::TestDb::on(Db::MySql, &primary));
    visits(&p, 3_000);
    let mut replica_url = crate::support::url_parts(&replica_server);
    replica_url.set_path(crate::support::url_parts(&p.db.url).path());
    let replica = copy_on_replica(replica_url.as_str(), 3_000);

    // The replica's SQL thread will wait on these row locks for 5 s.
    let (held_tx, held) = std::sync::mpsc::channel();
    let locker = {
        let url = replica_url.to_string();
        std::thread::spawn(move || {
            crate::support::TestDb::attach(&url).hold(
                "BEGIN; SELECT id FROM visits FOR UPDATE",
                Duration::from_secs(5),
                held_tx,
            );
        })
    };
    held.recv().unwrap();
    let started = Instant::now();
    let run = p.run_fixtures(&[
        "run",
        "count_visits",
        "--batch",
        "100",
        "--sleep",
        "100ms",
        "--max-replica-lag",
        "1s",
        "--replica",
        replica_url.as_str(),
        "--progress",
        "log",
        "--json",
    ]);
    locker.join().unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("waiting: replica mysql://root@127.0.0.1:3308/dm_t_"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(" behind (--max-replica-lag 1.0s)"),
        "{run:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "it waited for the replica: {run:?}"
    );
    assert!(
        summary(&run)["waited_ms"].as_u64().unwrap() >= 1_000,
        "{run:?}"
    );
    assert_each_row_once(&p, 3_000, "count_visits");

    // A stopped SQL thread: no lag to report, so not replicating.
    replica.exec("STOP SLAVE SQL_THREAD");
    let stopped = SqlThreadStopped(replica);
    p.db.exec("UPDATE visits SET hits = 0");
    let child = p
        .fixtures(&[
            "run",
            "count_visits_sql",
            "--batch",
            "500",
            "--max-replica-lag",
            "1s",
            "--replica",
            replica_url.as_str(),
            "--progress",
            "log",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let done_while_stopped =
        p.db.scalar("SELECT coalesce(max(rows_done), 0) FROM datamig_runs WHERE state = 'running'");
    drop(stopped);
    let run = to_run(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        done_while_stopped, 0,
        "no batch while the replica is stopped: {run:?}"
    );
    assert!(run.stderr.contains("3308/dm_t_"), "{run:?}");
    assert!(run.stderr.contains(" is not replicating"), "{run:?}");
}

each_db! {
    // Found by the steering race in reliability.rs: a pause that arrived after a
    // cancel replaced it, and the run sat paused instead of stopping.
    fn a_pause_cannot_override_a_pending_cancel(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 100);
        let run = p.run_fixtures(&["run", "count_visits", "--max-runtime", "1ms", "--batch", "10"]);
        assert_eq!(run.code, 0, "{run:?}");
        let id = p.db.scalar("SELECT max(id) FROM datamig_runs");
        p.db.exec(&format!("UPDATE datamig_runs SET state = 'running', request = 'cancel', request_by = 'op@host pid 1' WHERE id = {id}"));
        let refused = block_on(async {
            let url = datamig_core::config::DatabaseUrl::parse(&p.db.url).unwrap();
            let mut conn = datamig_core::db::Conn::connect(&url, &datamig_core::db::ConnectOptions::default()).await.unwrap();
            let pause = datamig_core::run::store::request(&mut conn, id, datamig_core::run::store::Request::Pause).await;
            let cancel = datamig_core::run::store::request(&mut conn, id, datamig_core::run::store::Request::Cancel).await;
            conn.close().await;
            (pause.map_err(|e| e.to_string()), cancel.is_ok())
        });
        let message = refused.0.expect_err("the pause is refused");
        assert!(message.contains("is being cancelled (asked by op@host pid 1)"), "{message}");
        assert!(refused.1, "a second cancel is accepted");
        assert_eq!(p.db.query(&format!("SELECT request FROM datamig_runs WHERE id = {id}"))[0][0], "cancel");
    }
}

/// A session idle past the batch deadline (here: a --sleep longer than it) is
/// ended by the server, as datamig asked (idle_session_timeout, wait_timeout):
/// the next batch finds it gone, reconnects, and the run finishes exactly once.
fn a_session_ended_for_idling_past_the_deadline_is_replaced(kind: Db) {
    let p = Project::new(kind);
    visits(&p, 300);
    let run = p.run_fixtures(&[
        "run",
        "count_visits",
        "--batch",
        "100",
        "--sleep",
        "4500ms",
        "--statement-timeout",
        "1s",
        "--lock-timeout",
        "1s",
        "--network-timeout",
        "1s",
        "--progress",
        "log",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("(connection lost)"),
        "the idle session was ended: {run:?}"
    );
    assert_each_row_once(&p, 300, "count_visits");
}

each_server! {
    a_session_ended_for_idling_past_the_deadline_is_replaced: a_session_ended_for_idling_past_the_deadline_is_replaced;
}

each_db! {
    fn notify_command_gets_the_outcome_as_json_however_the_run_ends(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 300);
        let out = p.path().join("notified.json");
        let notify = format!("cat > '{}'; echo \"$DATAMIG_JOB $DATAMIG_STATE\" >> '{}.env'", out.display(), out.display());
        let read = || -> serde_json::Value {
            serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap()
        };
        // Completed.
        let run = p.run_fixtures(&["run", "count_visits", "--batch", "100", "--notify-command", &notify]);
        assert_eq!(run.code, 0, "{run:?}");
        let json = read();
        assert_eq!(json["state"], "completed", "{json}");
        assert_eq!(json["exit_code"], 0, "{json}");
        assert_eq!(json["rows_done"], 300, "{json}");
        // Failed before it could start: the job's table is not there.
        p.db.exec("DROP TABLE visits");
        let run = p.run_fixtures(&["run", "count_visits", "--notify-command", &notify]);
        assert_eq!(run.code, 14, "{run:?}");
        let json = read();
        assert_eq!(json["state"], "failed", "{json}");
        assert_eq!(json["exit_code"], 14, "{json}");
        assert!(json["error"].as_str().unwrap().contains("visits"), "{json}");
        // Cannot connect: the alert that matters at night; no password in it.
        let unreachable = match kind {
            Db::Sqlite => "sqlite:/nonexistent-dir/x.db".to_string(),
            Db::Postgres => "postgres://app:secretpw@127.0.0.1:1/db".into(),
            Db::MySql => "mysql://app:secretpw@127.0.0.1:1/db".into(),
        };
        let run = p.run_fixtures(&["--database-url", &unreachable, "run", "count_visits", "--notify-command", &notify]);
        assert_eq!(run.code, 4, "{run:?}");
        let json = read();
        assert_eq!(json["exit_code"], 4, "{json}");
        assert!(!json.to_string().contains("secretpw"), "{json}");
        let env = std::fs::read_to_string(format!("{}.env", out.display())).unwrap();
        assert_eq!(env, "count_visits completed\ncount_visits failed\ncount_visits failed\n");
        // A failing notify command is reported and changes nothing else.
        p.db.exec("CREATE TABLE visits (id BIGINT NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)");
        p.db.fill_ids("visits", 10);
        let run = p.run_fixtures(&["run", "count_visits", "--restart", "--notify-command", "exit 3"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("warning: --notify-command failed (exit status: 3)"), "{run:?}");
        // Failed halfway: the error line says where the run stands, and the
        // outcome carries it as data.
        p.db.exec("DROP TABLE visits");
        p.db.exec("CREATE TABLE visits (id BIGINT NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0, CHECK (id < 150 OR hits = 0))");
        p.db.fill_ids("visits", 300);
        let run = p.run_fixtures(&["run", "count_visits", "--batch", "100", "--notify-command", &notify]);
        assert_eq!(run.code, 13, "{run:?}");
        assert!(run.stderr.contains("run 3 of count_visits failed at batch 2 (at id 100): "), "{run:?}");
        assert!(
            run.stderr.contains("The 1 batches before it are committed; fix the cause and resume with: datamig run count_visits --batch 100"),
            "{run:?}"
        );
        let json = read();
        assert_eq!(json["state"], "failed", "{json}");
        assert_eq!(json["exit_code"], 13, "{json}");
        assert_eq!(json["run"]["run_number"], 3, "{json}");
        assert_eq!(json["run"]["batches"], 1, "{json}");
        assert_eq!(json["run"]["rows_done"], 100, "{json}");
        assert_eq!(json["run"]["total"], 300, "{json}");
        assert_eq!(json["run"]["checkpoint"], "id 100", "{json}");
        assert!(json["run"]["resume"].as_str().unwrap().starts_with("datamig run count_visits --batch 100"), "{json}");
    }
}

each_db! {
    fn slow_batches_and_a_long_run_are_warned_about(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 300);
        let run = p.run_fixtures(&["run", "count_visits", "--batch", "100", "--warn-batch-time", "0ms", "--warn-run-time", "0s", "--progress", "log"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(run.stderr.matches("more than --warn-batch-time 0 ms").count(), 3, "one per batch: {run:?}");
        assert_eq!(run.stderr.matches("warning: the run has taken").count(), 1, "once: {run:?}");
        p.db.exec("UPDATE visits SET hits = 0");
        let quiet = p.run_fixtures(&["run", "count_visits_sql", "--batch", "100", "--warn-batch-time", "1h", "--warn-run-time", "1h", "--progress", "log"]);
        assert_eq!(quiet.code, 0, "{quiet:?}");
        assert!(!quiet.stderr.contains("warning:"), "{quiet:?}");
    }
}

each_db! {
    fn the_run_history_records_every_batch(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 1_000);
        let run = p.run_fixtures(&["run", "count_visits", "--batch", "100", "--rate", "2000"]);
        assert_eq!(run.code, 0, "{run:?}");
        let status = p.run_fixtures(&["status", "count_visits", "--json", "--batches", "50"]);
        assert_eq!(status.code, 0, "{status:?}");
        let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        let batches = json[0]["batches"].as_array().unwrap();
        let numbers: Vec<i64> = batches.iter().map(|b| b["batch"].as_i64().unwrap()).collect();
        assert_eq!(numbers, (1..=10).collect::<Vec<_>>(), "{json}");
        assert_eq!(batches.iter().map(|b| b["rows"].as_i64().unwrap()).sum::<i64>(), 1_000);
        assert_eq!(batches.iter().map(|b| b["changed"].as_i64().unwrap()).sum::<i64>(), 1_000);
        // --rate 2000 at 100 rows a batch: the limiter held most batches back.
        let waited: i64 = batches.iter().map(|b| b["waited_ms"].as_i64().unwrap()).sum();
        assert!(waited >= 200, "{json}");
        assert!(batches.iter().all(|b| b["at_ms"].as_i64().unwrap() > 1_700_000_000_000), "{json}");
        let text = p.run_fixtures(&["status", "count_visits", "--batches", "3"]);
        assert_eq!(text.code, 0, "{text:?}");
        assert!(text.stdout.contains("last 3 batches of run 1:"), "{text:?}");
        let section = text.stdout.split("last 3 batches of run 1:").nth(1).unwrap();
        assert_eq!(section.lines().filter(|l| l.trim_end().ends_with('Z')).count(), 3, "{text:?}");
        let refused = p.run_fixtures(&["status", "--batches"]);
        assert_eq!(refused.code, 2, "{refused:?}");
    }
}

each_db! {
    fn json_logs_carry_the_run_and_each_batchs_figures(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 300);
        let out = p
            .fixtures(&[
                "--log-format", "json", "run", "count_visits", "--batch", "100", "--progress", "bar",
                "--warn-batch-time", "1ms", "--arg", "pause_ms=5",
            ])
            .env("RUST_LOG", "datamig_core=debug")
            .output()
            .unwrap();
        let run = to_run(out);
        assert_eq!(run.code, 0, "{run:?}");
        // Every line on stderr is an event (no bar, no plain message between them).
        let events: Vec<serde_json::Value> = run
            .stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let said = |level: &str, text: &str| {
            events.iter().any(|e| {
                e["level"] == level && e["fields"]["message"].as_str().is_some_and(|m| m.contains(text))
            })
        };
        assert!(said("INFO", "starting run 1 of count_visits"), "{run:?}");
        assert!(said("WARN", "held its transaction"), "{run:?}");
        let batches: Vec<&serde_json::Value> = events.iter().filter(|e| e["fields"]["message"] == "batch committed").collect();
        assert_eq!(batches.len(), 3, "{run:?}");
        for (i, e) in batches.iter().enumerate() {
            assert_eq!(e["span"]["job"], "count_visits", "{e}");
            assert_eq!(e["span"]["run_id"], 1, "{e}");
            assert_eq!(e["fields"]["batch"], i64::try_from(i).unwrap() + 1, "{e}");
            assert_eq!(e["fields"]["rows"], 100, "{e}");
            assert!(e["fields"]["transaction_ms"].is_u64(), "{e}");
        }
        // With RUST_LOG at warn (cron's, the benchmarks'), the warnings still name
        // their run, job, batch and time, in the spans they were said in; on the
        // servers, with workers, their worker and partition too.
        p.db.exec("UPDATE visits SET hits = 0");
        let mut args = vec![
            "--log-format", "json", "run", "count_visits", "--batch", "100", "--restart", "--warn-batch-time", "1ms",
            "--arg", "pause_ms=5",
        ];
        if kind != Db::Sqlite {
            args.extend(["--workers", "2"]);
        }
        let out = p.fixtures(&args).env("RUST_LOG", "warn").output().unwrap();
        let run = to_run(out);
        assert_eq!(run.code, 0, "{run:?}");
        let warnings: Vec<serde_json::Value> = run
            .stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .filter(|e: &serde_json::Value| e["level"] == "WARN")
            .collect();
        assert!(!warnings.is_empty(), "{run:?}");
        for e in &warnings {
            let spans = e["spans"].as_array().unwrap_or_else(|| panic!("no spans: {e}"));
            assert_eq!(spans[0]["name"], "run", "{e}");
            assert_eq!(spans[0]["job"], "count_visits", "{e}");
            assert_eq!(spans[0]["run_id"], 2, "{e}");
            let batch = &e["span"];
            assert_eq!(batch["name"], "batch", "{e}");
            let message = e["fields"]["message"].as_str().unwrap();
            assert!(message.contains(&format!("held its transaction {} ms", batch["transaction_ms"])), "{e}");
            assert!(message.starts_with(&format!("batch {} ", batch["batch"])), "{e}");
            if kind == Db::Sqlite {
                assert!(batch["partition"].is_null(), "{e}");
            } else {
                assert!(batch["worker"].is_u64(), "{e}");
                assert!(message.contains(&format!(" of partition {} ", batch["partition"])), "{e}");
            }
        }
        // The error of a refused invocation is an event too, with its exit code.
        let refused = p.run_fixtures(&["--log-format", "json", "run", "no_such_job"]);
        assert_eq!(refused.code, 2, "{refused:?}");
        let line: serde_json::Value = serde_json::from_str(refused.stderr.trim()).unwrap_or_else(|e| panic!("{e}: {refused:?}"));
        assert_eq!(line["level"], "ERROR", "{refused:?}");
        assert!(line["fields"]["message"].as_str().unwrap().starts_with("unknown job `no_such_job`"), "{refused:?}");
    }
}

/// The connection to a watched replica breaks mid-run (every connection to it
/// reset through a proxy): the run waits, saying the replica's lag is unknown,
/// connects to it again at the next check and finishes. It neither fails the
/// run nor writes on without knowing the lag.
fn replica_lost_mid_run(p: &Project, replica_url: &str, rows: i64) {
    let replica = crate::support::url_parts(replica_url);
    let proxy = crate::proxy::Proxy::start(&format!("127.0.0.1:{}", replica.port().unwrap()));
    let mut through = replica.clone();
    through.set_port(Some(proxy.port)).unwrap();
    let mut child = p
        .fixtures(&[
            "run",
            "count_visits",
            "--batch",
            "100",
            "--sleep",
            "50ms",
            "--max-replica-lag",
            "30s",
            "--replica",
            through.as_str(),
            "--progress",
            "log",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_progress(p, &mut child, 500);
    proxy.reset_all();
    let run = to_run(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("cannot be read, so its lag is unknown"),
        "the reset did not meet a replica check: {run:?}"
    );
    assert_each_row_once(p, rows, "count_visits");
}

#[test]
fn replica_lost_mid_run_postgres() {
    let p = Project::new(Db::Postgres);
    visits(&p, 3_000);
    let mut standby = crate::support::url_parts(&standby_server());
    standby.set_path(crate::support::url_parts(&p.db.url).path());
    copy_on_replica(standby.as_str(), 3_000);
    replica_lost_mid_run(&p, standby.as_str(), 3_000);
}

#[test]
fn replica_lost_mid_run_mariadb() {
    let (primary, replica_server) = mariadb_pair();
    let p = Project::with(crate::support::TestDb::on(Db::MySql, &primary));
    visits(&p, 3_000);
    let mut replica_url = crate::support::url_parts(&replica_server);
    replica_url.set_path(crate::support::url_parts(&p.db.url).path());
    copy_on_replica(replica_url.as_str(), 3_000);
    replica_lost_mid_run(&p, replica_url.as_str(), 3_000);
}

each_db! {
    // An unterminated quote made the csv crate read the rest of the file as one
    // field: the import said "over 6 rows", rejected line 7 as too long, and
    // never imported the 15 valid records after it (exit 0).
    fn an_unterminated_quote_in_a_csv_import_rejects_its_record_and_imports_the_rest(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
        p.ok(&["schema", "upgrade"]);
        let mut csv = String::from("id,email\n");
        for i in 1..=5 {
            csv.push_str(&format!("{i},user{i}@example.com\n"));
        }
        csv.push_str("300100,\"unterminated\n");
        for i in 6..=19 {
            csv.push_str(&format!("{i},user{i}@example.com\n"));
        }
        // A legitimate field over two lines, after it; and a last line open too.
        csv.push_str("20,\"two\nlines@example.com\"\n21,\"open at the end\n");
        std::fs::write(p.path().join("users.csv"), &csv).unwrap();
        let file = p.path().join("rejects.csv");
        let run = p.run(&["run", "import_users", "--arg", "file=users.csv", "--batch", "4", "--rejects-file", file.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("over 22 rows"), "the total counts every record: {run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users"), 20, "{run:?}");
        assert_eq!(p.db.query("SELECT email FROM users WHERE id = 20")[0][0], "two\nlines@example.com");
        let runs = p.db.query("SELECT rows_done, rows_changed, rows_rejected FROM datamig_runs WHERE job = 'import_users'");
        assert_eq!(runs, vec![vec!["22".to_string(), "20".into(), "2".into()]], "{run:?}");
        let rejects = std::fs::read_to_string(&file).unwrap();
        assert!(rejects.contains("line 7,\"malformed CSV: the quoted field that opens at byte 116 is not closed where a field ends"), "{rejects}");
        assert!(rejects.contains("line 24,\"malformed CSV: the quoted field that opens at byte 460 is never closed"), "{rejects}");
    }
}

/// The rows the run committed in its busiest second, from its batch history.
fn busiest_second(p: &Project) -> i64 {
    let rows =
        p.db.query("SELECT at_ms, rows_done FROM datamig_batches ORDER BY at_ms");
    let batches: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect();
    batches
        .iter()
        .map(|(at, _)| {
            batches
                .iter()
                .filter(|(t, _)| (*at..at + 1000).contains(t))
                .map(|(_, n)| n)
                .sum()
        })
        .max()
        .unwrap_or(0)
}

each_db! {
    // After a pause (or any wait), a run with --rate committed a second's worth
    // of batches at once: a wait banked credit.
    fn a_rate_limit_stays_within_one_batch_of_its_rate_right_after_a_pause(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 3_000);
        let mut args = vec!["run", "count_visits", "--batch", "100", "--rate", "1000", "--arg", "unchecked=true"];
        if kind == Db::Sqlite {
            args.extend(["--sleep", "5ms"]); // room for the pause request's write
        }
        let mut child = spawn(&p, &args);
        wait_for_progress(&p, &mut child, 500);
        assert_eq!(p.run_fixtures(&["pause", "count_visits"]).code, 0);
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(p.run_fixtures(&["resume", "count_visits"]).code, 0);
        let run = to_run(child.wait_with_output().unwrap());
        assert_eq!(run.code, 0, "{run:?}");
        let busiest = busiest_second(&p);
        assert!(busiest <= 1100, "{busiest} rows in one second at --rate 1000 --batch 100: {run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), 3_000);
    }

    // The resume hint left out --rate and every other flag that shaped the run.
    fn the_resume_hint_is_the_command_that_shaped_the_run(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 20_000);
        let args = [
            "run", "count_visits", "--batch", "200", "--arg", "pause_ms=3", "--rate", "10000", "--sleep", "5ms",
            "--max-runtime", "30m", "--lock-timeout", "3s",
        ];
        let mut child = spawn(&p, &args);
        wait_for_progress(&p, &mut child, 1_000);
        std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        let stopped = to_run(child.wait_with_output().unwrap());
        assert_eq!(stopped.code, 130, "{stopped:?}");
        assert!(
            stopped.stderr.contains(
                "Resume with: datamig run count_visits --batch 200 --arg pause_ms=3 --rate 10000 --sleep 5ms \
                 --max-runtime 30m --lock-timeout 3s"
            ),
            "{stopped:?}"
        );
        // The run keeps its rate when resumed without --rate, and says so.
        let resumed = p.run_fixtures(&["run", "count_visits", "--batch", "200", "--arg", "pause_ms=3"]);
        assert_eq!(resumed.code, 0, "{resumed:?}");
        assert!(resumed.stderr.contains("going on at the run's rate limit of 10000 rows/s"), "{resumed:?}");
    }
}

/// A second process that joined a partitioned run without --rate was not
/// limited (31k rows/s beside a first with --rate 15000): the run's rate is
/// the run's, and every process that joins keeps to it.
fn a_process_joining_without_rate_keeps_the_runs_rate(kind: Db) {
    let p = Project::new(kind);
    let n = 12_000;
    visits(&p, n);
    let started = Instant::now();
    let first = spawn(
        &p,
        &[
            "run",
            "count_visits",
            "--batch",
            "100",
            "--workers",
            "1",
            "--rate",
            "2000",
            "--arg",
            "unchecked=true",
        ],
    );
    let mut first = first;
    wait_for_progress(&p, &mut first, 1);
    let second = to_run(
        p.fixtures(&[
            "run",
            "count_visits",
            "--batch",
            "100",
            "--workers",
            "1",
            "--arg",
            "unchecked=true",
        ])
        .output()
        .unwrap(),
    );
    let first = to_run(first.wait_with_output().unwrap());
    let took = started.elapsed();
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        second
            .stderr
            .contains("going on at the run's rate limit of 2000 rows/s for every process on it"),
        "{second:?}"
    );
    // 12000 rows at 2000 rows/s: about 6 s, whatever joins.
    assert!(
        took >= Duration::from_millis(5000),
        "{n} rows at --rate 2000 took {took:?}"
    );
    assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), n);
}

crate::each_server! {
    a_process_joining_without_rate_keeps_the_runs_rate: a_process_joining_without_rate_keeps_the_runs_rate;
}

each_db! {
    // A run whose process died showed as `running`, with `ok` verification
    // lines (its baseline), and nothing said that no process held it.
    fn status_tells_a_live_run_from_one_whose_process_is_gone(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 20_000);
        let mut child = spawn(&p, &["run", "count_visits", "--batch", "200", "--arg", "pause_ms=3"]);
        wait_for_progress(&p, &mut child, 1_000);
        let live = p.run_fixtures(&["status", "count_visits"]);
        assert_eq!(live.code, 0, "{live:?}");
        assert!(live.stdout.contains("run 1: running, by "), "{live:?}");
        child.kill().unwrap();
        let _ = child.wait();
        let dead = p.run_fixtures(&["status", "count_visits"]);
        assert_eq!(dead.code, 0, "{dead:?}");
        assert!(
            dead.stdout.contains("run 1: running, but no process works on it (it was killed or lost its connection); `datamig run count_visits` resumes it"),
            "{dead:?}"
        );
        assert!(!dead.stdout.contains("verification:"), "a baseline is no verdict: {dead:?}");
        assert!(dead.stdout.contains("checks before the run (its baseline"), "{dead:?}");
        let json: serde_json::Value = serde_json::from_str(&p.run_fixtures(&["status", "count_visits", "--json"]).stdout).unwrap();
        assert_eq!(json[0]["at_work"], serde_json::Value::Null, "{json}");
        assert!(json[0]["state_text"].as_str().unwrap().contains("no process works on it"), "{json}");
        // An unknown job is refused, as `run` refuses it.
        let unknown = p.run_fixtures(&["status", "nosuchjob"]);
        assert_eq!(unknown.code, 2, "{unknown:?}");
        assert!(unknown.stderr.contains("unknown job `nosuchjob`"), "{unknown:?}");
    }

    // `status` said 7618 rows/s where the run's summary said 378788: it left
    // out the time the run waited. Both, named for what they are.
    fn status_reports_the_runs_speed_as_its_summary_does_and_inside_batches(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 2_000);
        let run = p.run_fixtures(&["run", "count_visits", "--batch", "100", "--sleep", "50ms", "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        let summary = summary(&run);
        let seen = 2000.0 / (summary["elapsed_ms"].as_f64().unwrap() / 1000.0);
        let json: serde_json::Value = serde_json::from_str(&p.run_fixtures(&["status", "count_visits", "--json"]).stdout).unwrap();
        let overall = json[0]["rows_per_second"].as_f64().unwrap();
        assert!((overall / seen - 1.0).abs() < 0.25, "status {overall:.0} rows/s, the summary {seen:.0}: {json}");
        let inside = json[0]["rows_per_second_in_batches"].as_f64().unwrap();
        assert!(inside > overall * 2.0, "inside batches {inside:.0}, over the run {overall:.0}: {json}");
        let text = p.run_fixtures(&["status", "count_visits"]).stdout;
        assert!(text.contains("(waits and pauses included)") && text.contains("inside its batches"), "{text}");
    }
}
