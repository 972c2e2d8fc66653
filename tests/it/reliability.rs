//! The reliability battery (issue 6; figures in RELIABILITY.md): SIGKILL at
//! random moments and at named crash points, of runs and of schema upgrades;
//! concurrent runners; steering racing a run. Nothing may be lost or done twice.
//!
//! The CI scale runs in the test suite. `DATAMIG_RELIABILITY=long` gives the long
//! run (1M rows, 50 random kills, 100 rounds of 8 upgrade runners):
//!
//! ```text
//! DATAMIG_RELIABILITY=long cargo test --release --test it -- reliability:: crash:: --nocapture
//! ```
//!
//! Each test prints one `reliability:` line with what it did, for RELIABILITY.md.

use crate::each_server;
use std::time::{Duration, Instant};

use crate::each_db;
use crate::jobs::{assert_each_row_once, rows_done, spawn, visits, wait_for_progress};
use crate::support::{to_run, Db, Project, Run};

/// How hard the battery pushes.
struct Scale {
    rows: i64,
    random_kills: usize,
    upgrade_rounds: usize,
    races: usize,
}

fn scale() -> Scale {
    if std::env::var("DATAMIG_RELIABILITY").as_deref() == Ok("long") {
        Scale {
            rows: 1_000_000,
            random_kills: 50,
            upgrade_rounds: 100,
            races: 20,
        }
    } else {
        Scale {
            rows: 200_000,
            random_kills: 5,
            upgrade_rounds: 20,
            races: 3,
        }
    }
}

/// Whether the process ended by SIGKILL.
fn was_killed(run: &Run) -> bool {
    run.code == -1
}

fn name(kind: Db) -> &'static str {
    match kind {
        Db::Sqlite => "sqlite",
        Db::Postgres => "postgres",
        Db::MySql => "mariadb",
    }
}

each_db! {
    fn sigkill_at_random_moments_and_at_crash_points_loses_and_repeats_nothing(kind: Db) {
        let s = scale();
        let p = Project::new(kind);
        visits(&p, s.rows);
        let batch = (s.rows / 200).to_string();
        let args = ["run", "count_visits", "--batch", &batch, "--progress", "none"];
        let started = Instant::now();
        // Random moments: after the run has committed something, within about
        // two batches of it.
        let mut kills = 0;
        for _ in 0..s.random_kills {
            let mut child = spawn(&p, &args);
            let before = rows_done(&p);
            wait_for_progress(&p, &mut child, before + 1);
            std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 40));
            if child.try_wait().unwrap().is_none() {
                child.kill().expect("SIGKILL");
                kills += 1;
            }
            let _ = child.wait();
        }
        // Named points, each at a batch drawn from the next few.
        let mut points = 0;
        for point in ["before_write", "after_write", "after_commit"] {
            let at = format!("{point}:{}", 1 + rand::random::<u32>() % 4);
            let before = rows_done(&p);
            let run = to_run(p.fixtures(&args).env("DATAMIG_CRASH_AT", &at).output().unwrap());
            assert!(was_killed(&run), "{at}: {run:?}");
            points += 1;
            let after = rows_done(&p);
            // The kill lands inside a batch: what it had not committed is not counted.
            assert!(after >= before, "{at}: the committed work stays");
            assert_eq!(
                p.db.scalar("SELECT count(*) FROM visits WHERE hits > 0"),
                after,
                "{at}: exactly the committed batches' rows were visited"
            );
        }
        assert!(rows_done(&p) < s.rows, "the run must not have finished before the last kill");
        let done = to_run(p.fixtures(&args).output().unwrap());
        assert_eq!(done.code, 0, "{done:?}");
        assert_each_row_once(&p, s.rows, "count_visits");
        println!(
            "reliability: crash {}: {} rows, {kills} random SIGKILLs + {points} at crash points, \
             0 rows lost, 0 visited twice ({:.1}s)",
            name(kind),
            s.rows,
            started.elapsed().as_secs_f64()
        );
    }

    fn a_schema_upgrade_killed_mid_migration_applies_nothing_twice(kind: Db) {
        let p = Project::new(kind);
        p.migration(V1, "create_a", "CREATE TABLE a (id INT);\n", "DROP TABLE a;\n");
        p.migration(V2, "create_b_and_c", "CREATE TABLE b (id INT);\nINSERT INTO b (id) VALUES (1);\nCREATE TABLE c (id INT);\n", "DROP TABLE c;\nDROP TABLE b;\n");
        p.migration(V3, "create_d", "CREATE TABLE d (id INT);\n", "DROP TABLE d;\n");
        let mut kills = 0;
        if kind != Db::MySql {
            // In a transaction: killed before its COMMIT, none of it stays.
            let run = to_run(p.command(&["schema", "upgrade"]).env("DATAMIG_CRASH_AT", "migration_before_commit:2").output().unwrap());
            assert!(was_killed(&run), "{run:?}");
            kills += 1;
            assert_eq!(p.applied_versions(), vec![V1]);
            assert!(!p.db.table_exists("b"), "the killed migration's changes rolled back");
            let run = p.run(&["schema", "upgrade"]);
            assert_eq!(run.code, 0, "{run:?}");
            assert_eq!(p.applied_versions(), vec![V1, V2, V3]);
            assert_eq!(p.db.scalar("SELECT count(*) FROM b"), 1, "applied once");
            p.ok(&["schema", "downgrade", "base"]);
            // Statement by statement, as every migration runs on MariaDB.
            for v in [V1, V2, V3] {
                let up = p.path().join(format!("migrations/{v}_{}.up.sql", match v { V1 => "create_a", V2 => "create_b_and_c", _ => "create_d" }));
                let sql = std::fs::read_to_string(&up).unwrap();
                std::fs::write(&up, format!("-- datamig:no-transaction\n{sql}")).unwrap();
            }
        }
        // Killed after the first statement of the second migration (the second
        // statement the process runs): it stays recorded as dirty, and nothing
        // runs until an operator says how it ended.
        let run = to_run(p.command(&["schema", "upgrade"]).env("DATAMIG_CRASH_AT", "migration_statement:2").output().unwrap());
        assert!(was_killed(&run), "{run:?}");
        kills += 1;
        let run = p.run(&["schema", "upgrade"]);
        assert_eq!(run.code, 7, "{run:?}");
        assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
        assert!(run.stderr.contains("dirty"), "{run:?}");
        assert!(!p.db.table_exists("d"), "nothing after the dirty migration ran");
        // The operator undoes the half (table b) and says so.
        p.db.exec("DROP TABLE b");
        let repaired = p.run(&["schema", "repair", "--dirty", "reverted"]);
        assert_eq!(repaired.code, 0, "{repaired:?}");
        let run = p.run(&["schema", "upgrade"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(p.applied_versions(), vec![V1, V2, V3]);
        assert_eq!(p.db.scalar("SELECT count(*) FROM b"), 1, "applied once");
        println!("reliability: schema kill {}: {kills} SIGKILLs mid-migration, no migration applied twice or half-recorded", name(kind));
    }

    fn eight_upgrade_runners_round_after_round_apply_each_migration_once(kind: Db) {
        let s = scale();
        let p = Project::new(kind);
        p.migration(V1, "create_counter", "CREATE TABLE counter (n INT NOT NULL);\n", "DROP TABLE counter;\n");
        p.migration(V2, "insert_counter_row", "INSERT INTO counter (n) VALUES (1);\n", "DELETE FROM counter;\n");
        p.migration(V3, "create_other", "CREATE TABLE other (id INT);\n", "DROP TABLE other;\n");
        let started = Instant::now();
        for round in 0..s.upgrade_rounds {
            for run in p.run_concurrently(8, &["schema", "upgrade", "head"]) {
                assert_eq!(run.code, 0, "round {round}: {run:?}");
            }
            assert_eq!(p.applied_versions(), vec![V1, V2, V3], "round {round}");
            assert_eq!(p.db.scalar("SELECT count(*) FROM counter"), 1, "round {round}: the insert ran more than once");
            let upgrades = p.db.scalar("SELECT count(*) FROM datamig_schema_log WHERE action = 'upgrade'");
            assert_eq!(upgrades, 3 * (i64::try_from(round).unwrap() + 1), "round {round}");
            p.ok(&["schema", "downgrade", "base"]);
        }
        println!(
            "reliability: upgrade runners {}: {} rounds of 8 concurrent `schema upgrade`, each migration applied once per round ({:.1}s)",
            name(kind),
            s.upgrade_rounds,
            started.elapsed().as_secs_f64()
        );
    }

    fn pause_and_cancel_racing_a_run_leave_it_consistent(kind: Db) {
        let s = scale();
        let p = Project::new(kind);
        let n = 20_000;
        visits(&p, n);
        // SQLite has one writer: the steering request needs the gap a sleep leaves.
        let args = ["run", "count_visits", "--batch", "200", "--sleep", "5ms", "--progress", "none"];
        let mut outcomes = Vec::new();
        for race in 0..s.races {
            p.db.exec("UPDATE visits SET hits = 0");
            // The last race's run goes, so that the wait below is for this one's
            // first batch (its rows_done would let the steering in before this
            // run exists, and a cancel then finds nothing to cancel).
            if race > 0 {
                p.db.exec("DELETE FROM datamig_runs");
            }
            let mut child = spawn(&p, &["run", "count_visits", "--batch", "200", "--sleep", "5ms", "--progress", "none", "--restart"]);
            wait_for_progress(&p, &mut child, 1);
            // Pause and cancel from two threads at once, at a random moment.
            let delay = Duration::from_millis(rand::random::<u64>() % 50);
            let steer = |cmd: &'static str| {
                let mut command = p.fixtures(&[cmd, "count_visits"]);
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    to_run(command.output().unwrap())
                })
            };
            if race % 2 == 1 {
                // A pause alone: the live process waits, its work consistent, until resumed.
                let pause = steer("pause").join().unwrap();
                if pause.code == 0 {
                    assert!(child.try_wait().unwrap().is_none(), "paused in place: {pause:?}");
                    let done = p.db.scalar("SELECT rows_done FROM datamig_runs ORDER BY id DESC LIMIT 1");
                    assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), done, "race {race}");
                    let resumed = p.run_fixtures(&["resume", "count_visits"]);
                    assert_eq!(resumed.code, 0, "{resumed:?}");
                }
                let run = to_run(child.wait_with_output().unwrap());
                assert_eq!(run.code, 0, "race {race}: {run:?}\npause: {pause:?}");
                assert_each_row_once(&p, n, "count_visits");
                outcomes.push(if pause.code == 0 { 16 } else { 0 });
                continue;
            }
            let (pause, cancel) = (steer("pause"), steer("cancel"));
            let (pause, cancel) = (pause.join().unwrap(), cancel.join().unwrap());
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("race {race}: the run is still going 20 s after pause and cancel\npause: {pause:?}\ncancel: {cancel:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let run = to_run(child.wait_with_output().unwrap());
            // A steering command either landed or said why not; the run ended
            // paused (16), cancelled (17), or done (0) if it won the race.
            for steered in [&pause, &cancel] {
                assert!(!steered.all().contains("panicked"), "{steered:?}");
                assert!(steered.code == 0 || steered.stderr.trim().lines().count() == 1, "{steered:?}");
            }
            assert!([0, 16, 17].contains(&run.code), "race {race}: {run:?}\npause: {pause:?}\ncancel: {cancel:?}");
            let state = p.db.query("SELECT state, rows_done FROM datamig_runs ORDER BY id DESC")[0].clone();
            let done: i64 = state[1].parse().unwrap();
            assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits > 1"), 0, "race {race}");
            assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), done, "race {race}: {state:?}");
            if run.code == 16 {
                // Paused: resumed, it finishes the rest exactly once.
                let resumed = p.run_fixtures(&["resume", "count_visits"]);
                assert_eq!(resumed.code, 0, "{resumed:?}");
                let rest = to_run(p.fixtures(&args).output().unwrap());
                assert_eq!(rest.code, 0, "{rest:?}");
                assert_each_row_once(&p, n, "count_visits");
            }
            outcomes.push(run.code);
        }
        println!("reliability: steering races {}: {} races of pause and cancel against a run, outcomes {outcomes:?} (0 done, 16 paused in place then resumed, 17 cancelled), state consistent each time", name(kind), s.races);
    }
}

const V1: i64 = 20260101000000;
const V2: i64 = 20260102000000;
const V3: i64 = 20260103000000;

/// The test server's URL with its traffic sent through `proxy`.
fn through(p: &Project, proxy: &crate::proxy::Proxy) -> String {
    let mut url = crate::support::url_parts(&p.db.url);
    url.set_port(Some(proxy.port)).unwrap();
    url.to_string()
}

/// `datamig-fixtures ARGS` with its traffic to the server sent to `url` (a proxy's).
fn spawn_through(p: &Project, url: &str, args: &[&str]) -> std::process::Child {
    p.fixtures(args)
        .env("DATABASE_URL", url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to end; after 90 s it is killed and the test fails with
/// `hangs` and what the run printed.
fn ended(mut child: std::process::Child, hangs: &str) -> Run {
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let run = to_run(child.wait_with_output().unwrap());
            panic!("{hangs}: {run:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    to_run(child.wait_with_output().unwrap())
}

/// Latency, connection resets and a blackholed connection, between datamig and
/// the server, mid-run: every run finishes, nothing lost or doubled, and a
/// silent socket ends in a timeout and a retry, never a hang.
fn faults_through_a_proxy(kind: Db) {
    let p = Project::new(kind);
    let n = 30_000;
    visits(&p, n);
    let server = crate::support::url_parts(&p.db.url);
    let proxy = crate::proxy::Proxy::start(&format!("127.0.0.1:{}", server.port().unwrap()));
    let url = through(&p, &proxy);
    let run_args = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "count_visits",
            "--batch",
            "500",
            "--arg",
            "pause_ms=5",
            "--progress",
            "log",
            "--restart",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let through_proxy = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_through(&p, &url, &args)
    };

    // Latency on every packet: slower, still right.
    proxy.set_latency(1);
    let run = to_run(through_proxy(&run_args(&[])).wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert_each_row_once(&p, n, "count_visits");
    proxy.set_latency(0);

    // Every connection reset, three times in one run.
    // (Each phase starts a new run: the old ones' records go, so that
    // rows_done is this run's.)
    p.db.exec("UPDATE visits SET hits = 0");
    p.db.exec("DELETE FROM datamig_runs");
    let mut child = through_proxy(&run_args(&[]));
    for _ in 0..3 {
        let before = rows_done(&p);
        wait_for_progress(&p, &mut child, before + 1);
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 30));
        proxy.reset_all();
    }
    let run = to_run(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("connection lost"), "{run:?}");
    assert_each_row_once(&p, n, "count_visits");

    // Silence: the connections stay open and nothing comes back.
    p.db.exec("UPDATE visits SET hits = 0");
    p.db.exec("DELETE FROM datamig_runs");
    let started = Instant::now();
    let mut child = through_proxy(&run_args(&[
        "--statement-timeout",
        "2s",
        "--lock-timeout",
        "1s",
        "--network-timeout",
        "2s",
    ]));
    wait_for_progress(&p, &mut child, 1);
    proxy.blackhole_all();
    let run = ended(child, "the run hangs on a blackholed connection");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("no answer from the server within 5s"),
        "{run:?}"
    );
    assert_each_row_once(&p, n, "count_visits");
    let blackholed = started.elapsed();

    // Silence between batches (mostly asleep, so the connections go silent
    // while the run looks at its requests): the look gives up, the next batch
    // finds the connection dead.
    p.db.exec("UPDATE visits SET hits = 0");
    p.db.exec("DELETE FROM datamig_runs");
    let mut child = through_proxy(&run_args(&[
        "--statement-timeout",
        "2s",
        "--lock-timeout",
        "1s",
        "--network-timeout",
        "2s",
        "--sleep",
        "300ms",
    ]));
    wait_for_progress(&p, &mut child, 1);
    std::thread::sleep(Duration::from_millis(100));
    proxy.blackhole_all();
    let run = ended(
        child,
        "the run hangs on a connection blackholed between batches",
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_each_row_once(&p, n, "count_visits");
    println!(
        "reliability: network faults {}: {} faults through a TCP proxy (latency, 3 resets, a blackhole) in 3 runs of {n} rows, \
         0 rows lost, 0 visited twice; the blackholed run took {:.1}s; a run blackholed between batches finished too",
        name(kind),
        proxy.faults.load(std::sync::atomic::Ordering::SeqCst) + 1,
        blackholed.as_secs_f64()
    );
}

each_server! {
    faults_through_a_proxy: faults_through_a_proxy;
}

/// Silence between batches with the health throttle on: its checks (and the
/// look at the run's requests), on the run's control connection, meet a
/// blackholed connection, give up after the network timeout, and the run goes
/// on over new connections: no hang, every row exactly once.
fn silence_during_the_health_checks(kind: Db, workers: &[&str]) {
    let p = Project::new(kind);
    let n = 20_000;
    visits(&p, n);
    let server = crate::support::url_parts(&p.db.url);
    let proxy = crate::proxy::Proxy::start(&format!("127.0.0.1:{}", server.port().unwrap()));
    let url = through(&p, &proxy);
    let mut args = vec![
        "run",
        "count_visits",
        "--batch",
        "500",
        "--progress",
        "log",
        "--statement-timeout",
        "2s",
        "--lock-timeout",
        "1s",
        "--network-timeout",
        "2s",
        // Always met; checked by the run's control, on its own connection.
        "--max-active",
        "1000",
        // Mostly asleep between batches, so the silence meets the checks.
        "--sleep",
        "300ms",
    ];
    args.extend_from_slice(workers);
    let mut child = spawn_through(&p, &url, &args);
    wait_for_progress(&p, &mut child, 1);
    std::thread::sleep(Duration::from_millis(100));
    proxy.blackhole_all();
    let run = ended(
        child,
        "the run hangs on a connection blackholed during its health checks",
    );
    assert_eq!(run.code, 0, "{run:?}");
    // The health checks run on the control connection, with one worker or many.
    assert!(
        run.stderr
            .contains("the control connection does not answer")
            || run.stderr.contains("the control connection did not answer"),
        "the silence did not meet the control connection: {run:?}"
    );
    assert_each_row_once(&p, n, "count_visits");
}

each_server! {
    silence_during_the_health_checks: |kind| silence_during_the_health_checks(kind, &[]);
}

each_server! {
    silence_during_a_partitioned_runs_health_checks: |kind| silence_during_the_health_checks(kind, &["--workers", "2", "--lease", "5s"]);
}

/// A paused run whose connections go silent while it waits: it cannot hear a
/// resume on them, so it gives up on them after the network timeout and
/// connects again; the resume, sent meanwhile, reaches it and the run finishes.
fn silence_while_paused(kind: Db, workers: &[&str]) {
    let p = Project::new(kind);
    let n = 20_000;
    visits(&p, n);
    let server = crate::support::url_parts(&p.db.url);
    let proxy = crate::proxy::Proxy::start(&format!("127.0.0.1:{}", server.port().unwrap()));
    let url = through(&p, &proxy);
    let mut args = vec![
        "run",
        "count_visits",
        "--batch",
        "200",
        "--arg",
        "pause_ms=20",
        "--progress",
        "log",
        "--statement-timeout",
        "2s",
        "--lock-timeout",
        "1s",
        "--network-timeout",
        "2s",
    ];
    args.extend_from_slice(workers);
    let mut child = spawn_through(&p, &url, &args);
    wait_for_progress(&p, &mut child, 1);
    let paused = p.run_fixtures(&["pause", "count_visits"]);
    assert_eq!(paused.code, 0, "{paused:?}");
    // Until this process has answered (its batches stopped), then silence.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.db.query("SELECT state FROM datamig_runs")[0][0] != "paused" {
        assert!(Instant::now() < deadline, "the run did not pause");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    proxy.blackhole_all();
    std::thread::sleep(Duration::from_secs(1));
    let resumed = p.run_fixtures(&["resume", "count_visits"]);
    if resumed.code != 0 {
        child.kill().unwrap();
        panic!(
            "{resumed:?}\nthe run: {:?}",
            to_run(child.wait_with_output().unwrap())
        );
    }
    let run = ended(
        child,
        "the paused run never heard its resume over a silent connection",
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("resumed"), "{run:?}");
    assert_each_row_once(&p, n, "count_visits");
}

each_server! {
    silence_while_paused: |kind| silence_while_paused(kind, &[]);
}

each_server! {
    silence_while_a_partitioned_run_is_paused: |kind| silence_while_paused(kind, &["--workers", "2", "--lease", "5s"]);
}

/// The database server restarted mid-run (a test's own server, so the shared
/// ones stay up): the run waits, reconnects and finishes, nothing lost or doubled.
fn server_restarted_mid_run(kind: Db, workers: &[&str]) {
    let server = crate::server::Server::start(kind);
    let p = Project::with(crate::support::TestDb::on(kind, &server.url()));
    let n = 30_000;
    visits(&p, n);
    let started = Instant::now();
    let mut child = spawn(
        &p,
        &[
            "run",
            "count_visits",
            "--batch",
            "500",
            "--arg",
            // Slow enough (≈6 s of batches) that both restarts meet batches,
            // with two workers too.
            "pause_ms=20",
            "--progress",
            "log",
        ]
        .iter()
        .chain(workers)
        .copied()
        .collect::<Vec<_>>(),
    );
    let mut restarts = 0;
    for _ in 0..2 {
        let before = rows_done(&p);
        wait_for_progress(&p, &mut child, before + 1);
        server.restart(Duration::from_millis(500));
        restarts += 1;
    }
    let run = ended(child, "the run did not finish after the restarts");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("(connection lost)"), "{run:?}");
    assert_each_row_once(&p, n, "count_visits");
    println!(
        "reliability: server restart {}{}: {restarts} restarts of the server mid-run ({n} rows), the run reconnected \
         and finished, 0 rows lost, 0 visited twice ({:.1}s)",
        name(kind),
        if workers.is_empty() { "" } else { ", partitioned" },
        started.elapsed().as_secs_f64()
    );
}

each_server! {
    server_restarted_mid_run: |kind| server_restarted_mid_run(kind, &[]);
}

each_server! {
    server_restarted_mid_partitioned_run: |kind| server_restarted_mid_run(kind, &["--workers", "2", "--lease", "3s"]);
}

/// The server restarted while the run's checks run, after its last batch: the
/// run reconnects, runs the checks again and completes (exit 0), instead of
/// failing a run whose every row is done.
fn server_restarted_during_the_checks(kind: Db, workers: &[&str]) {
    let server = crate::server::Server::start(kind);
    let p = Project::with(crate::support::TestDb::on(kind, &server.url()));
    let n = 5_000;
    visits(&p, n);
    let mut child = spawn(
        &p,
        &[
            "run",
            "count_visits",
            "--batch",
            "500",
            "--arg",
            "check_ms=4000",
            "--progress",
            "log",
        ]
        .iter()
        .chain(workers)
        .copied()
        .collect::<Vec<_>>(),
    );
    // Every row visited: the run is at its checks (the slow one sleeps 4 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.db.scalar("SELECT count(*) FROM visits WHERE hits = 0") > 0 {
        assert!(
            Instant::now() < deadline,
            "the run's batches did not finish"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{:?}",
            to_run(child.wait_with_output().unwrap())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    server.restart(Duration::from_millis(500));
    let run = to_run(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("the checks at the end of the run (connection lost)"),
        "the restart did not meet the checks: {run:?}"
    );
    assert_each_row_once(&p, n, "count_visits");
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM datamig_runs WHERE state = 'completed'"),
        1,
        "{run:?}"
    );
}

each_server! {
    server_restarted_during_the_checks: |kind| server_restarted_during_the_checks(kind, &[]);
}

each_server! {
    server_restarted_during_a_partitioned_runs_checks: |kind| server_restarted_during_the_checks(kind, &["--workers", "2"]);
}

/// What a refused command must not have changed: the data, and datamig's tables.
fn fingerprint(p: &Project) -> Vec<String> {
    let mut out = vec![
        format!(
            "visits {:?}",
            p.db.query("SELECT count(*), sum(hits) FROM visits")
        ),
        format!("users {}", p.db.scalar("SELECT count(*) FROM users")),
    ];
    for table in [
        "datamig_runs",
        "datamig_rejects",
        "datamig_schema_history",
        "datamig_schema_log",
    ] {
        out.push(if p.db.table_exists(table) {
            format!(
                "{table} {}",
                p.db.scalar(&format!("SELECT count(*) FROM {table}"))
            )
        } else {
            format!("{table} absent")
        });
    }
    out
}

/// A user of the test database who may read and nothing else.
fn read_only_url(p: &Project) -> String {
    let mut url = crate::support::url_parts(&p.db.url);
    let user = format!("dm_ro{:08x}", rand::random::<u32>());
    match p.db.kind {
        Db::Sqlite => return format!("{}?mode=ro", p.db.url),
        Db::Postgres => {
            p.db.exec(&format!("CREATE ROLE {user} LOGIN"));
            p.db.exec(&format!(
                "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {user}"
            ));
        }
        Db::MySql => {
            let db = url.path().trim_start_matches('/').to_string();
            for host in ["%", "localhost"] {
                p.db.exec(&format!(
                    "CREATE USER '{user}'@'{host}' IDENTIFIED BY 'ropw'"
                ));
                p.db.exec(&format!("GRANT SELECT ON {db}.* TO '{user}'@'{host}'"));
            }
            url.set_password(Some("ropw")).unwrap();
        }
    }
    url.set_username(&user).unwrap();
    url.to_string()
}

each_db! {
    fn bad_inputs_get_one_clear_line_a_documented_code_and_change_nothing(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
        p.ok(&["schema", "upgrade"]);
        visits(&p, 100);
        let dir = p.path().to_path_buf();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path.display().to_string()
        };
        let secret_url = |url: &str| {
            let mut u = crate::support::url_parts(url);
            if kind != Db::Sqlite {
                u.set_password(Some("secretpw")).unwrap();
            }
            u.to_string()
        };
        let unreachable = match kind {
            Db::Sqlite => "sqlite:/nonexistent-dir/x.db".to_string(),
            Db::Postgres => "postgres://app:secretpw@127.0.0.1:1/db".into(),
            Db::MySql => "mysql://app:secretpw@127.0.0.1:1/db".into(),
        };
        // A database that does not exist; for SQLite, a file that is not one.
        let no_such_db = if kind == Db::Sqlite {
            format!("sqlite:{}", file("not-a-database.db", b"hello, this is text\n".repeat(100).as_slice()))
        } else {
            let mut u = crate::support::url_parts(&p.db.url);
            u.set_path("/no_such_database_datamig");
            u.to_string()
        };
        let bad_csv_header = file("latin1.csv", b"id,e\xe9mail\n1,a@example.com\n");
        let binary = file("binary.csv", &[0xff, 0xfe, 0x00, 0x01, 0x02]);
        let empty = file("empty.csv", b"");
        let read_only = read_only_url(&p);
        let fifo = dir.join("archive.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let fifo = format!("archive={}", fifo.display());
        // A URL parameter the driver refuses, beside one whose value is a secret.
        let bad_param = {
            let mut u = crate::support::url_parts(&p.db.url);
            u.set_query(Some(if kind == Db::Sqlite { "passwd=secretpw" } else { "x=secretpw&sslmode=bogus" }));
            u.to_string()
        };
        let bad_param_says = if kind == Db::Sqlite { "parameter `passwd`, which SQLite does not take" } else { "`sslmode` is not one of" };
        let up = dir.join("migrations").join(
            std::fs::read_dir(dir.join("migrations")).unwrap().map(|e| e.unwrap().file_name()).find(|n| n.to_string_lossy().ends_with(".up.sql")).unwrap(),
        );
        let up = up.display().to_string();
        let database = if kind == Db::Sqlite { p.db.url.trim_start_matches("sqlite:").to_string() } else { dir.join("datamig.toml").display().to_string() };
        let database_says = if kind == Db::Sqlite { "the SQLite database itself" } else { "datamig.toml" };

        // (arguments, expected code, what the line must say)
        let cases: Vec<(Vec<String>, i32, &str)> = vec![
            // Output paths and special files (each refused before anything runs).
            (s(&["run", "count_visits", "--rejects-file", &database]), 2, database_says),
            (s(&["run", "count_visits", "--rejects-file", &up]), 2, "the migrations directory"),
            (s(&["run", "count_visits", "--rejects-file", &dir.display().to_string()]), 2, "that is a directory"),
            (s(&["run", "count_visits", "--rejects-file", "/proc/datamig-rejects.csv"]), 2, "does not take new files"),
            (s(&["run", "purge_expired_sessions", "--arg", &fifo]), 2, "not a regular file"),
            (s(&["run", "purge_expired_sessions", "--arg", "archive=/dev/null"]), 2, "not a regular file"),
            // Hostile connection parameters.
            (s(&["--database-url", &bad_param, "schema", "status"]), 3, bad_param_says),
            (s(&["--connect-timeout", "0s", "schema", "status"]), 2, "`0s` is zero"),
            (s(&["status", "no_such_job"]), 2, "unknown job `no_such_job`"),
            (s(&["run", "seed_demo_users", "--arg", "rows=abc"]), 2, "invalid --arg rows=abc"),
            // Unknown names.
            (s(&["run", "no_such_job"]), 2, "unknown job `no_such_job`"),
            (s(&["verify", "no_such_job"]), 2, "unknown job `no_such_job`"),
            (s(&["pause", "no_such_job"]), 2, "unknown job `no_such_job`"),
            (s(&["schema", "upgrade", "20991231235959"]), 2, "no migration with version 20991231235959"),
            (s(&["schema", "downgrade", "20991231235959"]), 2, "20991231235959"),
            (s(&["schema", "upgrade", "tomorrow"]), 2, "`tomorrow` is not a target"),
            (s(&["schema", "downgrade", "-0"]), 2, "not a step count"),
            (s(&["schema", "downgrade", "-99"]), 2, "only 8 applied"),
            (s(&["schema", "frobnicate"]), 2, "frobnicate"),
            (s(&["schema", "new", "Add Users Email"]), 2, "did you mean"),
            (s(&["resume", "count_visits"]), 2, "no unfinished run"),
            // URLs and credentials.
            (s(&["--database-url", "postgres://app:secretpw@127.0.0.1:notaport/db", "schema", "status"]), 3, "URL"),
            (s(&["--database-url", "mysql://app:secretpw@[bad/db", "schema", "status"]), 3, "URL"),
            (s(&["--database-url", "http://app:secretpw@x/db", "schema", "status"]), 3, "unsupported database URL scheme `http`"),
            (s(&["--database-url", "", "schema", "status"]), 3, "URL"),
            (s(&["--database-url", &unreachable, "schema", "status"]), 4, "cannot connect to"),
            (s(&["--database-url", &secret_url(&no_such_db), "run", "count_visits"]), 4, ""),
            (s(&["--env", "staging", "schema", "status"]), 3, "unknown env `staging`"),
            // Absurd numbers.
            (s(&["run", "count_visits", "--batch", "0"]), 2, "--batch 0 is out of range"),
            (s(&["run", "count_visits", "--batch", "1000000000000"]), 2, "--batch"),
            (s(&["run", "count_visits", "--batch", "-1"]), 2, "--batch"),
            (s(&["run", "count_visits", "--rate", "0"]), 2, "--rate"),
            (s(&["run", "count_visits", "--rate", "-100"]), 2, "--rate"),
            (s(&["run", "count_visits", "--max-runtime", "99999999999999999999999s"]), 2, "--max-runtime"),
            // Durations no clock can add (they panicked once).
            (s(&["run", "count_visits", "--max-runtime", "18446744073709551615"]), 2, "is too far away; give at most 366d"),
            (s(&["run", "count_visits", "--statement-timeout", "18446744073709551615"]), 2, "--statement-timeout 18446744073709551615s is too long"),
            (s(&["run", "count_visits", "--lease", "18446744073709551615", "--workers", "2"]), 2, "--lease 18446744073709551615s is too long"),
            (s(&["run", "count_visits", "--until", "25:00"]), 2, "--until"),
            (s(&["run", "count_visits", "--sleep", "forever"]), 2, "--sleep"),
            (s(&["run", "count_visits", "--lock-timeout", "-1s"]), 2, "--lock-timeout"),
            (s(&["run", "count_visits", "--max-errors", "-1"]), 2, "--max-errors"),
            (s(&["run", "count_visits", "--max-retries", "99999999999"]), 2, "--max-retries"),
            (s(&["run", "count_visits", "--batch-min", "500", "--batch-max", "10", "--target-batch-time", "1s"]), 2, "--batch-min"),
            (s(&["status", "--limit", "0"]), 2, "0 is not in 1..=10000"),
            // Hostile --arg values and names.
            (s(&["run", "count_visits", "--arg", "pause_ms=1; DROP TABLE visits"]), 2, "invalid --arg pause_ms=1; DROP TABLE visits for job count_visits"),
            (s(&["run", "count_visits", "--arg", "x'); DROP TABLE visits; --=1"]), 2, "unknown field"),
            (s(&["run", "count_visits", "--arg", "pause_ms=99999999999999999999999"]), 2, "invalid --arg"),
            (s(&["run", "purge_expired_sessions", "--arg", "older_than=30d' OR '1'='1"]), 2, "is not a duration"),
            (s(&["run", "count_visits", "--arg", "pause_ms"]), 2, "is not KEY=VALUE"),
            (s(&["run", "count_visits", "--arg", "=5"]), 2, ""),
            (s(&["run", "seed_demo_users", "--arg", "rows=99999999999999"]), 2, "rows must be between"),
            // CSV files.
            (s(&["run", "import_users", "--arg", "file=/nonexistent/users.csv"]), 2, "/nonexistent/users.csv"),
            (s(&["run", "import_users", "--arg", &format!("file={bad_csv_header}")]), 2, "not UTF-8"),
            (s(&["run", "import_users", "--arg", &format!("file={binary}")]), 2, "binary.csv"),
            (s(&["run", "import_users", "--arg", &format!("file={empty}")]), 2, "empty.csv"),
            (s(&["run", "import_users", "--arg", &format!("file={}", dir.display())]), 2, ""),
            // Refused before a read-only user could fail halfway.
            (s(&["--database-url", &read_only, "run", "count_visits"]), 19, "The database user may not do this"),
        ];
        let tried = cases.len();
        assert!(tried >= 54, "{tried} cases");
        for (args, code, says) in cases {
            let before = fingerprint(&p);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = to_run(p.fixtures(&argv).output().unwrap());
            let lines: Vec<&str> = run.stderr.trim().lines().collect();
            assert_eq!(run.code, code, "{args:?}: {run:?}");
            assert_eq!(lines.len(), 1, "{args:?}: one line: {run:?}");
            assert!(lines[0].starts_with("error: "), "{args:?}: {run:?}");
            assert!(lines[0].contains(says), "{args:?}: expected {says:?}: {run:?}");
            assert!(!run.all().contains("secretpw") && !run.all().contains("ropw@"), "{args:?}: a password in {run:?}");
            assert!(!run.all().contains("panicked"), "{args:?}: {run:?}");
            assert_eq!(fingerprint(&p), before, "{args:?} changed the database: {run:?}");
        }
        println!("reliability: bad inputs {}: {tried} refused, each with one line, its exit code, no password, no change", name(kind));
    }
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_string()).collect()
}

/// Three processes of two workers on one partitioned run; again and again one
/// of them, chosen at random, is SIGKILLed at a random moment and another
/// started in its place. The survivors take the dead one's partitions over
/// when its leases run out, and the run completes with every row once.
fn partitioned_runners_killed_at_random(kind: Db) {
    let s = scale();
    let p = Project::new(kind);
    // About 20 ms a batch of 100: the run lasts long enough for the kills.
    let n = s.rows * 3 / 20;
    visits(&p, n);
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
        "pause_ms=20",
        "--progress",
        "none",
    ];
    let started = Instant::now();
    let mut children: Vec<std::process::Child> = (0..3).map(|_| spawn(&p, &args)).collect();
    wait_for_progress(&p, &mut children[0], 1);
    let mut kills = 0;
    while kills < s.random_kills {
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 300));
        let victim = rand::random::<usize>() % children.len();
        if children[victim].try_wait().unwrap().is_some() {
            break; // the run finished: the kills so far are what it took
        }
        children[victim].kill().expect("SIGKILL");
        let _ = children[victim].wait();
        kills += 1;
        children[victim] = spawn(&p, &args);
    }
    assert!(
        kills >= s.random_kills.min(3),
        "only {kills} kills landed mid-run"
    );
    for child in children {
        let run = to_run(child.wait_with_output().unwrap());
        assert_eq!(run.code, 0, "{run:?}");
    }
    assert_each_row_once(&p, n, "count_visits");
    let taken = p.db.scalar("SELECT count(*) FROM datamig_partitions");
    println!(
        "reliability: partitioned kills {}: 3 processes × 2 workers on one run of {n} rows, {kills} random \
         SIGKILLs (each replaced by a new process), {taken} partitions in the end, 0 rows lost, 0 visited \
         twice ({:.1}s)",
        name(kind),
        started.elapsed().as_secs_f64()
    );
}

each_server! {
    partitioned_runners_killed_at_random: partitioned_runners_killed_at_random;
}

/// `--connect-timeout` reached only a command's first connection: the reader,
/// the workers and every reconnect waited the default 10 s for a server that
/// takes the TCP connection and never answers, while the message told users to
/// raise `--connect-timeout`. Through a proxy that goes silent for new
/// connections, a run with `--connect-timeout 1s --max-retries 3` says every
/// connection it tried waited 1 s, and gives up in seconds, not minutes.
fn connect_timeout_reaches_every_connection(kind: Db, workers: &[&str]) {
    let p = Project::new(kind);
    visits(&p, 50_000);
    let upstream = {
        let u = crate::support::url_parts(&p.db.url);
        format!("{}:{}", u.host_str().unwrap(), u.port().unwrap())
    };
    let proxy = crate::proxy::Proxy::start(&upstream);
    let url = through(&p, &proxy);
    let args: Vec<&str> = [
        "--connect-timeout",
        "1s",
        "run",
        "count_visits",
        "--batch",
        "100",
        "--arg",
        "pause_ms=5",
        "--max-retries",
        "3",
    ]
    .iter()
    .chain(workers)
    .copied()
    .collect();
    let mut child = spawn_through(&p, &url, &args);
    wait_for_progress(&p, &mut child, 500);
    proxy.silence_new_connections();
    let cut = Instant::now();
    proxy.reset_all();
    let run = ended(child, "the run did not give up on a silent server");
    let took = cut.elapsed();
    assert_ne!(run.code, 0, "{run:?}");
    // Every connection it opened waited 1 s, none the default 10 s (the old
    // code's reader and reconnects did); the time is loose, for a loaded machine.
    assert!(run.stderr.contains("no answer within 1s"), "{run:?}");
    assert!(!run.stderr.contains("no answer within 10s"), "{run:?}");
    assert!(
        took < Duration::from_secs(60),
        "the reconnects took {took:?}: {run:?}"
    );
}

each_server! {
    connect_timeout_reaches_every_reconnect: |kind| connect_timeout_reaches_every_connection(kind, &[]);
    connect_timeout_reaches_every_workers_connection: |kind| connect_timeout_reaches_every_connection(kind, &["--workers", "2"]);
}

/// SQL that takes a few seconds, on each database (SQLite counts instead).
fn slow_sql(kind: Db) -> &'static str {
    match kind {
        Db::Postgres => "SELECT pg_sleep(6);\n",
        Db::MySql => "DO SLEEP(6);\n",
        Db::Sqlite => {
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 40000000) SELECT count(*) FROM c;\n"
        }
    }
}

/// Sends SIGTERM to `child` after `after`, and waits for it to end (failing
/// the test if it has not within 20 s): what it printed, and how long it took
/// to end after the signal.
fn terminated(child: std::process::Child, after: Duration) -> (Run, Duration) {
    terminated_when(child, || {
        std::thread::sleep(after);
        true
    })
}

/// As [`terminated`], once `ready` says so (it is asked until it does, for 60 s).
fn terminated_when(mut child: std::process::Child, ready: impl Fn() -> bool) -> (Run, Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "never ready for the signal");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "it ended before the signal"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let sent = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if sent.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!(
                "SIGTERM went unanswered: {:?}",
                to_run(child.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = sent.elapsed();
    (to_run(child.wait_with_output().unwrap()), took)
}

each_db! {
    // Signals during every command (RELIABILITY.md): SIGTERM in the middle of
    // a migration, a downgrade, a schema test, a run and the checks ends the
    // process promptly, leaves nothing half-done, and the next command works.
    fn sigterm_during_every_command_ends_it_and_leaves_nothing_half_done(kind: Db) {
        let p = Project::new(kind);
        let started = Instant::now();
        p.migration(20261201000001, "create_t", "CREATE TABLE t (id INT);\n", "DROP TABLE t;\n");
        p.ok(&["schema", "upgrade"]);
        // A migration of data changes alone: every database rolls it back.
        p.migration(20261201000002, "insert_t", &format!("INSERT INTO t VALUES (1);\n{}", slow_sql(kind)), "DELETE FROM t;\n");
        let spawn_cmd = |args: &[&str]| {
            p.fixtures(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut said = Vec::new();
        let (run, took) = terminated(spawn_cmd(&["schema", "upgrade"]), Duration::from_millis(700));
        assert!(!run.all().contains("panicked"), "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM t"), 0, "half a migration stayed: {run:?}");
        assert_eq!(p.applied_versions(), vec![20261201000001], "{run:?}");
        said.push(format!("upgrade {took:?}"));
        // The schema lock went with the process: the next upgrade applies it once.
        p.migration(20261201000002, "insert_t", "INSERT INTO t VALUES (1);\n", "DELETE FROM t;\n");
        p.ok(&["schema", "upgrade"]);
        assert_eq!(p.db.scalar("SELECT count(*) FROM t"), 1);
        // A downgrade whose down is slow.
        p.migration(20261201000002, "insert_t", "INSERT INTO t VALUES (1);\n", &format!("DELETE FROM t;\n{}", slow_sql(kind)));
        p.ok(&["schema", "repair"]); // the edited down does not change the up's checksum; nothing to do
        let (run, took) = terminated(spawn_cmd(&["schema", "downgrade", "-1"]), Duration::from_millis(700));
        assert!(!run.all().contains("panicked"), "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM t"), 1, "half a downgrade stayed: {run:?}");
        assert_eq!(p.applied_versions(), vec![20261201000001, 20261201000002], "{run:?}");
        said.push(format!("downgrade {took:?}"));
        // schema test: its scratch database is dropped (exit 130).
        let (run, took) = terminated(spawn_cmd(&["schema", "test"]), Duration::from_millis(700));
        assert_eq!(run.code, 130, "{run:?}");
        said.push(format!("schema test {took:?}"));
        // A run: the batch in flight commits, exit 130, and it resumes.
        visits(&p, 20_000);
        let (run, took) = terminated(spawn_cmd(&["run", "count_visits", "--batch", "200", "--arg", "pause_ms=5"]), Duration::from_millis(700));
        assert_eq!(run.code, 130, "{run:?}");
        said.push(format!("run {took:?}"));
        let done = p.run_fixtures(&["run", "count_visits", "--batch", "200", "--arg", "pause_ms=5"]);
        assert_eq!(done.code, 0, "{done:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), 20_000, "{done:?}");
        // During its checks (slow on the servers): they are cut short, exit 130,
        // and running the job again runs only them.
        if kind != Db::Sqlite {
            p.db.exec("UPDATE visits SET hits = 0");
            let args = ["run", "count_visits", "--batch", "5000", "--arg", "check_ms=5000"];
            // Once every row is done: the run is at its checks.
            let (run, took) = terminated_when(spawn_cmd(&args), || {
                p.db.scalar("SELECT count(*) FROM visits WHERE hits = 0") == 0
            });
            assert_eq!(run.code, 130, "{run:?}");
            assert!(run.stderr.contains("during its checks, after its last batch"), "{run:?}");
            assert!(took < Duration::from_secs(3), "the checks went on for {took:?} after SIGTERM");
            said.push(format!("checks {took:?}"));
            let checked = p.run_fixtures(&args);
            assert_eq!(checked.code, 0, "{checked:?}");
            assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), 20_000, "{checked:?}");
        }
        println!(
            "reliability: signals {}: SIGTERM during an upgrade, a downgrade, a schema test, a run{}; each ended \
             (after {}), nothing half-done, the next command worked ({:.1}s)",
            name(kind),
            if kind == Db::Sqlite { "" } else { " and its checks" },
            said.join(", "),
            started.elapsed().as_secs_f64()
        );
    }
}
