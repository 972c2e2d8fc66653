//! `datamig run`: batches, checkpoints, resume after SIGKILL and SIGTERM,
//! verification, status, and the project's own jobs, on each database.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::each_db;
use crate::support::{to_run, Project, Run};

/// A `visits(id, hits)` table of `n` rows, every `hits` 0.
fn visits(p: &Project, n: i64) {
    p.db.exec("CREATE TABLE visits (id BIGINT NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)");
    p.db.fill_ids("visits", n);
}

/// Every row visited exactly once, and the run's counters say so.
fn assert_each_row_once(p: &Project, n: i64, job: &str) {
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM visits WHERE hits = 0"),
        0,
        "rows lost"
    );
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM visits WHERE hits > 1"),
        0,
        "rows processed twice"
    );
    assert_eq!(p.db.scalar("SELECT count(*) FROM visits"), n);
    let rows = p.db.query(&format!(
        "SELECT state, rows_done, rows_changed FROM datamig_runs WHERE job = '{job}' ORDER BY id DESC"
    ));
    assert_eq!(
        rows[0],
        vec!["completed".to_string(), n.to_string(), n.to_string()],
        "{rows:?}"
    );
}

fn spawn(p: &Project, args: &[&str]) -> Child {
    p.fixtures(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn rows_done(p: &Project) -> i64 {
    if !p.db.table_exists("datamig_runs") {
        return 0;
    }
    p.db.scalar("SELECT coalesce(max(rows_done), 0) FROM datamig_runs")
}

/// Waits until the run has committed at least `rows`, or the child exits.
fn wait_for_progress(p: &Project, child: &mut Child, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_done(p) < rows {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before reaching {rows} rows"
        );
        assert!(Instant::now() < deadline, "no progress within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a run with SIGKILL `kills` times, each at a random moment up to
/// `max_ms` after it has committed its first batch, then lets it finish.
fn kill_and_resume(p: &Project, n: i64, args: &[&str], kills: usize, max_ms: u64) -> Run {
    let mut killed_mid_run = 0;
    for _ in 0..kills {
        let mut child = spawn(p, args);
        let before = rows_done(p);
        // Let it get going, then kill it at a random instant of a batch.
        wait_for_progress(p, &mut child, before + 1);
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % max_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().expect("SIGKILL");
            killed_mid_run += 1;
        }
        let _ = child.wait();
    }
    assert_eq!(killed_mid_run, kills, "every kill must land mid-run");
    assert!(
        rows_done(p) < n,
        "the run must not have finished before the last kill"
    );
    let done = to_run(p.fixtures(args).output().unwrap());
    assert_eq!(done.code, 0, "{done:?}");
    done
}

each_db! {
    fn sigkill_at_random_moments_loses_and_repeats_nothing(kind: Db) {
        let p = Project::new(kind);
        let n = 30_000;
        visits(&p, n);
        let run = kill_and_resume(&p, n, &["run", "count_visits", "--batch", "300", "--arg", "pause_ms=3"], 5, 150);
        assert!(run.stderr.contains("resuming run 1 of count_visits at id "), "{run:?}");
        assert_each_row_once(&p, n, "count_visits");
        assert!(run.stdout.contains("ok    rows visited twice"), "{run:?}");
    }

    fn sigkill_set_based_job_loses_and_repeats_nothing(kind: Db) {
        let p = Project::new(kind);
        let n = 200_000;
        visits(&p, n);
        kill_and_resume(&p, n, &["run", "count_visits_sql", "--batch", "100"], 5, 40);
        assert_each_row_once(&p, n, "count_visits_sql");
    }

    fn sigterm_finishes_the_batch_and_resume_does_only_the_rest(kind: Db) {
        let p = Project::new(kind);
        let n = 20_000;
        visits(&p, n);
        let args = ["run", "count_visits", "--batch", "200", "--arg", "pause_ms=3"];
        let mut child = spawn(&p, &args);
        wait_for_progress(&p, &mut child, 2_000);
        std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        let stopped = to_run(child.wait_with_output().unwrap());
        assert_eq!(stopped.code, 130, "{stopped:?}");
        assert!(stopped.stderr.contains("Resume with: datamig run count_visits --batch 200 --arg pause_ms=3"), "{stopped:?}");
        let state = p.db.query("SELECT state, rows_done FROM datamig_runs");
        assert_eq!(state[0][0], "interrupted");
        let done_before: i64 = state[0][1].parse().unwrap();
        assert!(done_before > 0 && done_before < n, "{state:?}");
        // Everything committed so far is counted exactly: the checkpoint matches the rows.
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), done_before);

        let resumed = p.run_fixtures(&args);
        assert_eq!(resumed.code, 0, "{resumed:?}");
        assert!(resumed.stdout.contains(&format!("{} rows this time", n - done_before)), "only the rest: {resumed:?}");
        assert_each_row_once(&p, n, "count_visits");
    }

    fn composite_keys_page_and_resume(kind: Db) {
        let p = Project::new(kind);
        p.db.exec("CREATE TABLE visits2 (grp VARCHAR(10) NOT NULL, id BIGINT NOT NULL, hits INT NOT NULL DEFAULT 0, PRIMARY KEY (grp, id))");
        p.db.exec("CREATE TABLE nums (id BIGINT NOT NULL PRIMARY KEY)");
        p.db.fill_ids("nums", 700);
        for grp in ["eu", "us", "apac"] {
            p.db.exec(&format!("INSERT INTO visits2 (grp, id) SELECT '{grp}', id FROM nums"));
        }
        let run = p.run_fixtures(&["run", "count_visits_composite", "--batch", "250"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits2 WHERE hits <> 1"), 0);
        assert_eq!(p.db.scalar("SELECT batches_done FROM datamig_runs"), 9);

        // Make it as if the run had been interrupted after key (eu, 350): the rows
        // after it in key order are eu 351-700 and all of us (apac < eu < us).
        p.db.exec("UPDATE visits2 SET hits = 0 WHERE grp = 'us' OR (grp = 'eu' AND id > 350)");
        p.db.exec("UPDATE datamig_runs SET state = 'interrupted', position = '[\"eu\",350]', rows_done = 1050");
        let run = p.run_fixtures(&["run", "count_visits_composite", "--batch", "250"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("resuming run 1 of count_visits_composite at (grp, id) (eu, 350) (50.0%)"), "{run:?}");
        assert!(run.stdout.contains("1050 rows this time"), "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits2 WHERE hits <> 1"), 0);
        assert_eq!(p.db.scalar("SELECT rows_done FROM datamig_runs"), 2100);
    }

    fn a_second_runner_is_refused_and_named(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 20_000);
        let args = ["run", "count_visits", "--batch", "100", "--arg", "pause_ms=5"];
        let mut first = spawn(&p, &args);
        wait_for_progress(&p, &mut first, 100);
        let second = p.run_fixtures(&args);
        assert_eq!(second.code, 12, "{second:?}");
        assert!(second.stderr.contains("count_visits is already running: run 1 by "), "{second:?}");
        assert!(second.stderr.contains(&format!("pid {}", first.id())), "names the process: {second:?}");
        first.kill().unwrap();
        let _ = first.wait();
        // The dead runner's run is resumable at once.
        let resumed = p.run_fixtures(&["run", "count_visits", "--batch", "1000"]);
        assert_eq!(resumed.code, 2, "other arguments are refused: {resumed:?}");
        assert!(resumed.stderr.contains("--restart"), "{resumed:?}");
        let resumed = p.run_fixtures(&args[..4]);
        assert_eq!(resumed.code, 2, "{resumed:?}");
        let resumed = p.run_fixtures(&["run", "count_visits", "--batch", "1000", "--arg", "pause_ms=5"]);
        assert_eq!(resumed.code, 0, "the batch size may change on resume: {resumed:?}");
        assert_each_row_once(&p, 20_000, "count_visits");
    }

    fn concurrent_runners_of_one_job_never_overlap(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 20_000);
        let args = ["run", "count_visits", "--batch", "100", "--arg", "pause_ms=5"];
        let children: Vec<Child> = (0..4).map(|_| spawn(&p, &args)).collect();
        let runs: Vec<Run> = children.into_iter().map(|c| to_run(c.wait_with_output().unwrap())).collect();
        let codes: Vec<i32> = runs.iter().map(|r| r.code).collect();
        assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "exactly one runs: {runs:?}");
        assert_eq!(codes.iter().filter(|c| **c == 12).count(), 3, "the others are refused: {runs:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM datamig_runs"), 1);
        assert_each_row_once(&p, 20_000, "count_visits");
    }

    fn restart_starts_over_deliberately(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 3_000);
        let mut child = spawn(&p, &["run", "count_visits", "--batch", "100", "--arg", "pause_ms=5"]);
        wait_for_progress(&p, &mut child, 100);
        child.kill().unwrap();
        let _ = child.wait();
        p.db.exec("UPDATE visits SET hits = 0");
        let run = p.run_fixtures(&["run", "count_visits", "--batch", "500", "--restart"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("abandoned unfinished run 1"), "{run:?}");
        let states = p.db.query("SELECT id, state FROM datamig_runs ORDER BY id");
        assert_eq!(states, vec![vec!["1".to_string(), "cancelled".into()], vec!["2".into(), "completed".into()]]);
        assert_each_row_once(&p, 3_000, "count_visits");
    }

    fn failed_verification_has_its_own_exit_code(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 1_000);
        p.db.exec("UPDATE visits SET hits = 5 WHERE id <= 3");
        let run = p.run_fixtures(&["run", "count_visits_sql", "--batch", "400"]);
        assert_eq!(run.code, 11, "{run:?}");
        assert!(run.stderr.contains("check `rows visited twice` expected = 0, found 3"), "{run:?}");
        let verify = p.run_fixtures(&["verify", "count_visits_sql"]);
        assert_eq!(verify.code, 11, "{verify:?}");
        p.db.exec("UPDATE visits SET hits = 1 WHERE id <= 3");
        let verify = p.run_fixtures(&["verify", "count_visits_sql"]);
        assert_eq!(verify.code, 0, "{verify:?}");
    }

    fn backfill_emails_end_to_end(kind: Db) {
        let p = Project::new(kind);
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for entry in std::fs::read_dir(repo).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, p.path().join("migrations").join(path.file_name().unwrap())).unwrap();
        }
        // Before the schema is there: refused with the way out, nothing changed.
        let run = p.run(&["run", "backfill_emails"]);
        assert_eq!(run.code, 14, "{run:?}");
        assert!(run.stderr.contains("datamig schema upgrade"), "{run:?}");
        assert!(!p.db.table_exists("datamig_runs"));

        p.ok(&["schema", "upgrade"]);
        p.ok(&["run", "seed_demo_users", "--arg", "rows=5000", "--arg", "invalid_every=100", "--batch", "1000"]);
        let run = p.ok(&["run", "backfill_emails", "--batch", "700"]);
        assert!(run.stdout.contains("5000 rows in 8 batches (4950 changed, 50 rejected)"), "{run:?}");
        assert_eq!(
            p.db.query("SELECT email, email_normalized FROM users WHERE id = 7")[0],
            vec!["  User7@Example.COM ".to_string(), "user7@example.com".into()]
        );
        assert_eq!(p.db.scalar("SELECT count(*) FROM users WHERE email_normalized IS NULL"), 50);
        assert_eq!(p.db.scalar("SELECT count(*) FROM datamig_rejects"), 50);
        let status = p.ok(&["status", "backfill_emails"]);
        assert!(status.stdout.contains("100: no @"), "{status:?}");
        let json = p.ok(&["status", "--json"]);
        let runs: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(runs[0]["job"], "backfill_emails");
        assert_eq!(runs[0]["state"], "completed");
        assert_eq!(runs[0]["rows_rejected"], 50);
        assert_eq!(runs[0]["position"], serde_json::json!([5000]));

        p.ok(&["run", "seed_demo_sessions", "--arg", "rows=6000", "--batch", "2500"]);
        let run = p.ok(&["run", "purge_expired_sessions", "--arg", "older_than=30d", "--batch", "500"]);
        assert!(run.stdout.contains("ok    sessions older than the cutoff"), "{run:?}");
        // Sessions 0-29 days old (plus minutes) stay; 30-59 days old go.
        let left = p.db.scalar("SELECT count(*) FROM sessions");
        assert!((2900..=3100).contains(&left), "{left}");
    }
}

#[test]
fn every_job_file_is_registered_under_its_name() {
    let registry = jobs::registry();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".rs") else {
            continue;
        };
        if stem == "lib" || stem == "main" {
            continue;
        }
        files += 1;
        assert!(
            registry.get(stem).is_some(),
            "jobs/{name} is not registered in jobs::registry() as `{stem}`"
        );
    }
    assert_eq!(
        files,
        registry.len(),
        "every registered job has a file of its own"
    );
}
