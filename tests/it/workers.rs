//! Partitioned runs: `--workers N`, several processes on one run, a runner
//! killed mid-run and its partitions taken over, partitions split so that the
//! last one does not run alone.

use crate::each_server;
use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::jobs::{assert_each_row_once, spawn, visits};
use crate::support::{to_run, Db, Project, Run};

fn output(mut child: Child) -> Run {
    let status = child.wait().expect("wait");
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut stderr);
    }
    Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

/// The rows the run's batches have committed.
fn partition_rows(p: &Project) -> i64 {
    p.db.scalar("SELECT count(*) FROM visits WHERE hits > 0")
}

/// Waits until the run has committed at least `rows`.
fn wait_for_rows(p: &Project, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while partition_rows(p) < rows {
        assert!(Instant::now() < deadline, "no progress within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn partitions(p: &Project) -> (i64, i64) {
    let row = &p
        .db
        .query("SELECT count(*), count(CASE WHEN done = 1 THEN 1 END) FROM datamig_partitions")[0];
    (row[0].parse().unwrap(), row[1].parse().unwrap())
}

/// Waits until each of `children` holds a partition (on a loaded machine the
/// last may take a moment to join the run).
fn wait_until_each_holds_a_partition(p: &Project, children: &[Child]) {
    let holds = |child: &Child| {
        p.db.table_exists("datamig_partitions")
            && p.db.scalar(&format!(
                "SELECT count(*) FROM datamig_partitions WHERE done = 0 AND owner LIKE '% pid {} #%'",
                child.id()
            )) > 0
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !children.iter().all(holds) {
        assert!(
            Instant::now() < deadline,
            "not every process holds a partition after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three processes of two workers each on one run; one is killed with SIGKILL
/// in the middle. The other two take its partitions over once their leases run
/// out, and the run completes with every row visited exactly once.
fn three_processes_one_killed(kind: Db) {
    let p = Project::new(kind);
    let n = 60_000;
    visits(&p, n);
    // About 30 ms a batch: 600 batches over 6 workers take some seconds.
    let args = [
        "run",
        "count_visits",
        "--batch",
        "100",
        "--workers",
        "2",
        "--lease",
        "2s",
        "--arg",
        "pause_ms=30",
        "--progress",
        "log",
    ];
    let mut children: Vec<Child> = (0..3).map(|_| spawn(&p, &args)).collect();
    wait_until_each_holds_a_partition(&p, &children);
    wait_for_rows(&p, n / 5);
    let mut victim = children.remove(1);
    assert!(
        victim.try_wait().unwrap().is_none(),
        "it ended before the kill"
    );
    victim.kill().expect("SIGKILL");
    let _ = victim.wait();
    assert!(partition_rows(&p) < n, "the run finished before the kill");
    let runs: Vec<Run> = children.into_iter().map(output).collect();
    for run in &runs {
        assert_eq!(run.code, 0, "{run:?}");
    }
    let all: String = runs.iter().map(|r| r.stderr.clone()).collect();
    assert!(
        all.contains("whose lease ran out"),
        "no partition was taken over: {all}"
    );
    assert_each_row_once(&p, n, "count_visits");
    let (count, done) = partitions(&p);
    assert_eq!(count, done, "every partition finished");
    // One of them ran the checks and completed the run; both report it.
    for run in &runs {
        assert!(run.stdout.contains("ok    rows visited twice"), "{run:?}");
    }
}

each_server! {
    three_processes_one_killed: three_processes_one_killed;
}

/// Keys bunched at the start of a wide range: the even cut leaves one partition
/// with nearly all the rows, and idle workers split it.
fn the_largest_partition_is_split(kind: Db) {
    let p = Project::new(kind);
    let n = 20_000;
    visits(&p, n);
    p.db.exec("INSERT INTO visits (id, hits) VALUES (1000000000, 0)");
    // A pause after each batch, so that the idle workers find the busy
    // partition still busy: unpaced, its 100 batches took 0.4 s, and on a
    // loaded machine (CI, once) they were done before a worker came to split
    // it. (Not --rate: a rate-limited run's workers do not split.)
    let run = p.run_fixtures(&[
        "run",
        "count_visits_sql",
        "--batch",
        "200",
        "--workers",
        "3",
        "--sleep",
        "5ms",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_each_row_once(&p, n + 1, "count_visits_sql");
    let (count, done) = partitions(&p);
    assert_eq!(count, done);
    assert!(count > 12, "no partition was split: {count} partitions");
    // The first partition, where the rows are, did not do them all alone.
    let first =
        p.db.scalar("SELECT rows_done FROM datamig_partitions WHERE part = 1");
    assert!(first < n * 3 / 4, "partition 1 did {first} of {n} rows");

    // The history has every batch, each numbered within its partition.
    let status = p.run_fixtures(&[
        "status",
        "count_visits_sql",
        "--json",
        "--batches",
        "100000",
    ]);
    assert_eq!(status.code, 0, "{status:?}");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let batches = json[0]["batches"].as_array().unwrap();
    let rows: i64 = batches.iter().map(|b| b["rows"].as_i64().unwrap()).sum();
    assert_eq!(rows, n + 1, "{json}");
    let mut keys: Vec<(i64, i64)> = batches
        .iter()
        .map(|b| {
            (
                b["partition"].as_i64().unwrap(),
                b["batch"].as_i64().unwrap(),
            )
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), batches.len());
    assert_eq!(
        json[0]["partitions"].as_array().unwrap().len(),
        usize::try_from(count).unwrap()
    );
    let text = p.run_fixtures(&["status", "count_visits_sql", "--batches", "3"]);
    assert!(
        text.stdout
            .contains(&format!("partitions  {count} of {count} done, 0 at work")),
        "{text:?}"
    );
}

/// JSON logs carry the run, and every batch's event its partition and figures.
fn json_logs_name_the_partition(kind: Db) {
    let p = Project::new(kind);
    visits(&p, 2000);
    let run = to_run(
        p.fixtures(&[
            "--log-format",
            "json",
            "run",
            "count_visits",
            "--batch",
            "100",
            "--workers",
            "2",
            "--progress",
            "none",
        ])
        .env("RUST_LOG", "datamig_core=debug")
        .output()
        .unwrap(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let committed: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["fields"]["message"] == "batch committed")
        .collect();
    let rows: i64 = committed
        .iter()
        .map(|e| e["fields"]["rows"].as_i64().unwrap())
        .sum();
    assert_eq!(rows, 2000, "{}", run.stderr);
    for e in &committed {
        assert!(e["fields"]["partition"].as_i64().is_some(), "{e}");
        assert!(matches!(e["fields"]["worker"].as_i64(), Some(1 | 2)), "{e}");
        assert!(e["fields"]["transaction_ms"].as_i64().is_some(), "{e}");
        assert_eq!(e["span"]["job"], "count_visits", "{e}");
        assert!(e["span"]["run_id"].as_i64().is_some(), "{e}");
    }
}

each_server! {
    json_logs_name_the_partition: json_logs_name_the_partition;
}

each_server! {
    the_largest_partition_is_split: the_largest_partition_is_split;
}

/// An interrupted partitioned run is resumed partitioned by a plain `datamig
/// run`, and a run begun with one cursor goes on partitioned after its cursor.
fn partitioned_and_single_cursor_runs_resume_each_other(kind: Db) {
    let p = Project::new(kind);
    let n = 20_000;
    visits(&p, n);
    let slow = ["--arg", "pause_ms=20"];
    let child = spawn(
        &p,
        &[
            &["run", "count_visits", "--batch", "200", "--workers", "2"],
            &slow[..],
        ]
        .concat(),
    );
    wait_for_rows(&p, 2000);
    // SIGTERM: the batches in flight finish, the partitions are released.
    sigterm(&child);
    let stopped = output(child);
    assert_eq!(stopped.code, 130, "{stopped:?}");
    assert!(stopped.stderr.contains("interrupted run 1"), "{stopped:?}");
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM datamig_partitions WHERE owner IS NOT NULL"),
        0
    );
    let resumed = p.run_fixtures(&[&["run", "count_visits", "--batch", "200"], &slow[..]].concat());
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(
        resumed
            .stderr
            .contains("is partitioned: joining it with one worker"),
        "{resumed:?}"
    );
    assert_each_row_once(&p, n, "count_visits");

    // Begun with one cursor, interrupted, continued with workers.
    p.db.exec("UPDATE visits SET hits = 0");
    let child = spawn(
        &p,
        &[
            &["run", "count_visits", "--batch", "200", "--restart"],
            &slow[..],
        ]
        .concat(),
    );
    wait_for_rows(&p, 2000);
    sigterm(&child);
    assert_eq!(output(child).code, 130);
    let on = p.run_fixtures(
        &[
            &["run", "count_visits", "--batch", "200", "--workers", "3"],
            &slow[..],
        ]
        .concat(),
    );
    assert_eq!(on.code, 0, "{on:?}");
    assert!(on.stderr.contains("after"), "{on:?}");
    assert_each_row_once(&p, n, "count_visits");
}

fn sigterm(child: &Child) {
    let pid = i32::try_from(child.id()).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

each_server! {
    partitioned_and_single_cursor_runs_resume_each_other: partitioned_and_single_cursor_runs_resume_each_other;
}

#[test]
fn sqlite_runs_one_writer_and_says_so() {
    let p = Project::new(Db::Sqlite);
    let n = 5000;
    visits(&p, n);
    let run = p.run_fixtures(&["run", "count_visits", "--batch", "500", "--workers", "4"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("SQLite has a single writer"), "{run:?}");
    assert_each_row_once(&p, n, "count_visits");
}

crate::each_db! {
    fn a_job_that_cannot_be_partitioned_is_refused(kind: Db) {
        let p = Project::new(kind);
        if kind == Db::Sqlite {
            return; // one writer: --workers does not partition there
        }
        p.db.exec("CREATE TABLE visits2 (grp INT NOT NULL, id BIGINT NOT NULL, hits INT NOT NULL DEFAULT 0, PRIMARY KEY (grp, id))");
        let run = p.run_fixtures(&["run", "count_visits_composite", "--workers", "2"]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("needs a single integer key; the key is (grp, id)"), "{run:?}");
        assert!(run.stderr.contains("Run it without --workers"), "{run:?}");
        assert!(!p.db.table_exists("datamig_runs") || p.db.scalar("SELECT count(*) FROM datamig_runs") == 0);
        // A text key: refused the same way, naming what the key holds; without
        // --workers the same job runs over it.
        p.db.exec("CREATE TABLE tags (name VARCHAR(64) NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)");
        p.db.exec("INSERT INTO tags (name) VALUES ('alpha'), ('beta'), ('gamma')");
        let run = p.run_fixtures(&["run", "touch_tags", "--workers", "2"]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("needs a single integer key; name holds text (its first: alpha)"), "{run:?}");
        assert!(run.stderr.lines().count() == 1, "one line: {run:?}");
        assert!(!p.db.table_exists("datamig_runs") || p.db.scalar("SELECT count(*) FROM datamig_runs") == 0);
        let run = p.run_fixtures(&["run", "touch_tags", "--batch", "2"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM tags WHERE hits = 1"), 3);
    }
}

/// `datamig cancel` stops every process of a partitioned run.
fn cancel_stops_every_process(kind: Db) {
    let p = Project::new(kind);
    let n = 40_000;
    visits(&p, n);
    let args = [
        "run",
        "count_visits",
        "--batch",
        "100",
        "--workers",
        "2",
        "--arg",
        "pause_ms=20",
    ];
    let children: Vec<Child> = (0..2).map(|_| spawn(&p, &args)).collect();
    wait_until_each_holds_a_partition(&p, &children);
    wait_for_rows(&p, 1000);
    let cancel = to_run(p.fixtures(&["cancel", "count_visits"]).output().unwrap());
    assert_eq!(cancel.code, 0, "{cancel:?}");
    for run in children.into_iter().map(output) {
        assert_eq!(run.code, 17, "{run:?}");
    }
    assert_eq!(
        p.db.query("SELECT state FROM datamig_runs")[0][0],
        "cancelled"
    );
    let done = p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1");
    assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits > 1"), 0);
    assert_eq!(
        done,
        p.db.scalar("SELECT rows_done FROM datamig_runs"),
        "the counters match the rows"
    );
}

each_server! {
    cancel_stops_every_process: cancel_stops_every_process;
}

/// `--rate` holds for the run as a whole: two processes on one run share it.
fn two_processes_share_the_rate(kind: Db) {
    let p = Project::new(kind);
    let n = 12_000;
    visits(&p, n);
    let args = [
        "run",
        "count_visits",
        "--batch",
        "100",
        "--workers",
        "1",
        "--rate",
        "2000",
    ];
    let started = Instant::now();
    let children: Vec<Child> = (0..2).map(|_| spawn(&p, &args)).collect();
    for run in children.into_iter().map(output) {
        assert_eq!(run.code, 0, "{run:?}");
    }
    let took = started.elapsed();
    // Each at 2000 rows/s they take 3 s (3.4 s measured with the sharing
    // turned off); sharing 2000 rows/s (once each has seen the other, within a
    // second) about 5 s.
    assert!(took >= Duration::from_millis(4200), "{n} rows in {took:?}");
    assert_each_row_once(&p, n, "count_visits");
}

each_server! {
    two_processes_share_the_rate: two_processes_share_the_rate;
}

/// `datamig pause` holds every process of a partitioned run in place, and
/// `datamig resume` lets them all go on.
fn pause_and_resume_hold_every_process(kind: Db) {
    let p = Project::new(kind);
    let n = 30_000;
    visits(&p, n);
    let args = [
        "run",
        "count_visits",
        "--batch",
        "100",
        "--workers",
        "2",
        "--arg",
        "pause_ms=20",
    ];
    let children: Vec<Child> = (0..2).map(|_| spawn(&p, &args)).collect();
    wait_until_each_holds_a_partition(&p, &children);
    wait_for_rows(&p, 1000);
    let pause = to_run(p.fixtures(&["pause", "count_visits"]).output().unwrap());
    assert_eq!(pause.code, 0, "{pause:?}");
    // Every worker finishes its batch in flight, then nothing moves.
    std::thread::sleep(Duration::from_millis(500));
    let held = partition_rows(&p);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(partition_rows(&p), held, "a process went on while paused");
    assert!(held < n);
    assert_eq!(p.db.query("SELECT state FROM datamig_runs")[0][0], "paused");
    let resume = to_run(p.fixtures(&["resume", "count_visits"]).output().unwrap());
    assert_eq!(resume.code, 0, "{resume:?}");
    for run in children.into_iter().map(output) {
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("resumed"), "{run:?}");
    }
    assert_each_row_once(&p, n, "count_visits");
}

each_server! {
    pause_and_resume_hold_every_process: pause_and_resume_hold_every_process;
}

/// The health throttle holds every worker of every process: a long
/// transaction opened mid-run (`--max-transaction-age 500ms`) stops the
/// batches of two processes until it ends, each says why, and the run
/// finishes once it has, every row once.
fn the_health_throttle_holds_every_process(kind: Db) {
    let p = Project::new(kind);
    let n = 40_000;
    visits(&p, n);
    let args = [
        "run",
        "count_visits",
        "--batch",
        "500",
        "--workers",
        "2",
        "--arg",
        "pause_ms=50",
        "--max-transaction-age",
        "500ms",
        "--progress",
        "log",
        "--json",
    ];
    let children: Vec<Child> = (0..2).map(|_| spawn(&p, &args)).collect();
    wait_until_each_holds_a_partition(&p, &children);
    wait_for_rows(&p, 1_000);
    let holder = p.db.hold_a_snapshot(Duration::from_secs(7));
    // Over its 500 ms, then a check of each control loop, then the batches in
    // flight (up to 300 ms each, more on a loaded machine) commit.
    std::thread::sleep(Duration::from_millis(2500));
    let before = partition_rows(&p);
    std::thread::sleep(Duration::from_millis(2000));
    let after = partition_rows(&p);
    assert!(
        before < n,
        "the run ended before the transaction was old enough"
    );
    assert_eq!(before, after, "no batch while the transaction is open");
    holder.join().unwrap();
    let runs: Vec<Run> = children.into_iter().map(output).collect();
    for run in &runs {
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            run.stderr.contains("waiting: a transaction open for "),
            "each process says why it waits: {run:?}"
        );
    }
    // Both report the completed run; one of them completed it.
    let completed_here: Vec<bool> = runs
        .iter()
        .map(|r| {
            let summary: serde_json::Value =
                serde_json::from_str(r.stdout.lines().last().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"));
            assert_eq!(summary["state"], "completed", "{r:?}");
            summary["completed_here"].as_bool().unwrap()
        })
        .collect();
    assert_eq!(
        completed_here.iter().filter(|c| **c).count(),
        1,
        "{completed_here:?}"
    );
    assert_each_row_once(&p, n, "count_visits");
}

each_server! {
    the_health_throttle_holds_every_process: the_health_throttle_holds_every_process;
}

/// `--max-runtime` with workers: when the budget is spent every worker stops at
/// its batch boundary, the run is left interrupted with exactly its committed
/// batches done, and the next invocation finishes it.
fn a_spent_budget_stops_every_worker(kind: Db) {
    let p = Project::new(kind);
    let n = 40_000;
    visits(&p, n);
    let args = [
        "run",
        "count_visits",
        "--batch",
        "500",
        "--workers",
        "2",
        "--arg",
        "pause_ms=50",
    ];
    let started = Instant::now();
    let mut limited = args.to_vec();
    limited.extend(["--max-runtime", "2s"]);
    let run = p.run_fixtures(&limited);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopped near the budget: {run:?}"
    );
    let first = run.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("stopped run 1 of count_visits: ")
            && first.contains("--max-runtime reached"),
        "{run:?}"
    );
    assert_eq!(
        p.db.query("SELECT state FROM datamig_runs")[0][0],
        "interrupted"
    );
    let done = partition_rows(&p);
    assert!(done > 0 && done < n, "{done} of {n}: {run:?}");
    assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits > 1"), 0);
    let counted: i64 =
        p.db.query("SELECT rows_done FROM datamig_partitions")
            .iter()
            .map(|r| r[0].parse::<i64>().unwrap())
            .sum();
    assert_eq!(
        counted, done,
        "the partitions count exactly the committed batches"
    );
    let rest = p.run_fixtures(&args);
    assert_eq!(rest.code, 0, "{rest:?}");
    assert!(rest.stderr.contains("joining run 1"), "{rest:?}");
    assert_each_row_once(&p, n, "count_visits");
}

each_server! {
    a_spent_budget_stops_every_worker: a_spent_budget_stops_every_worker;
}
