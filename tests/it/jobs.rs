//! `datamig run`: batches, checkpoints, resume after SIGKILL and SIGTERM,
//! verification, status, and the project's own jobs, on each database.

use std::io::Read as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::each_db;
use crate::support::{to_run, Db, Project, Run};

/// A `visits(id, hits)` table of `n` rows, every `hits` 0.
pub(crate) fn visits(p: &Project, n: i64) {
    p.db.exec("CREATE TABLE visits (id BIGINT NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)");
    p.db.fill_ids("visits", n);
}

/// Every row visited exactly once, and the run's counters say so.
pub(crate) fn assert_each_row_once(p: &Project, n: i64, job: &str) {
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

pub(crate) fn spawn(p: &Project, args: &[&str]) -> Child {
    p.fixtures(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

pub(crate) fn rows_done(p: &Project) -> i64 {
    if !p.db.table_exists("datamig_runs") {
        return 0;
    }
    p.db.scalar("SELECT coalesce(max(rows_done), 0) FROM datamig_runs")
}

/// Waits until the run has committed at least `rows`, or the child exits.
pub(crate) fn wait_for_progress(p: &Project, child: &mut Child, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_done(p) < rows {
        if child.try_wait().unwrap().is_some() {
            let mut out = String::new();
            for stream in [
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read>),
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read>),
            ]
            .into_iter()
            .flatten()
            {
                let mut stream = stream;
                let _ = stream.read_to_string(&mut out);
            }
            panic!("the run ended before reaching {rows} rows: {out}");
        }
        assert!(Instant::now() < deadline, "no progress within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a run with SIGKILL `kills` times, each at a random moment up to
/// `max_ms` after it has committed its first batch, then lets it finish.
pub(crate) fn kill_and_resume(
    p: &Project,
    n: i64,
    args: &[&str],
    kills: usize,
    max_ms: u64,
) -> Run {
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

/// Adds 1000 to rows of `visits` until `child` exits, half of them just ahead of
/// the run's checkpoint (where rows are read but not yet written); returns how
/// often each id was changed.
pub(crate) fn bump_rows_until_exit(p: &Project, child: &mut Child, n: i64) -> Vec<i64> {
    use datamig_core::config::DatabaseUrl;
    use datamig_core::db::{Conn, ConnectOptions, Value};
    let mut bumps = vec![0_i64; usize::try_from(n).unwrap() + 1];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = DatabaseUrl::parse(&p.db.url).unwrap();
        let mut conn = Conn::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        let mut i = 0_u64;
        while child.try_wait().unwrap().is_none() {
            i += 1;
            let position = conn
                .fetch(
                    "SELECT position FROM datamig_runs WHERE state = 'running'",
                    &[],
                )
                .await
                .ok()
                .and_then(|rows| rows.into_iter().next())
                .and_then(|row| row.into_iter().next())
                .and_then(|v| {
                    v.as_str()
                        .map(|s| s.trim_matches(['[', ']']).parse::<i64>().unwrap_or(0))
                });
            let id = match position {
                Some(at) if i.is_multiple_of(2) => {
                    (at + 1 + (rand::random::<i64>().rem_euclid(400))).min(n)
                }
                _ => 1 + rand::random::<i64>().rem_euclid(n),
            };
            let changed = conn
                .execute(
                    "UPDATE visits SET hits = hits + 1000 WHERE id = ?",
                    &[Value::Int(id)],
                )
                .await
                .unwrap();
            if changed == 1 {
                bumps[usize::try_from(id).unwrap()] += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        conn.close().await;
    });
    bumps
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
        // Slow enough (200 batches of 20 ms) that the last of the four processes
        // starts while the first still runs, even on a loaded machine: one that
        // started after it finished would begin a second run, legitimately (seen
        // once in a full suite run with 5 ms batches).
        let args = ["run", "count_visits", "--batch", "100", "--arg", "pause_ms=20"];
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

    fn concurrent_writes_are_never_overwritten(kind: Db) {
        // The application adds 1000 to rows while count_visits adds 1 to each: a
        // batch written from a stale read would erase an application write.
        let p = Project::new(kind);
        let n = 20_000;
        visits(&p, n);
        let mut child = p
            .fixtures(&["run", "count_visits", "--batch", "200", "--arg", "pause_ms=5", "--arg", "unchecked=true"])
            .env("RUST_LOG", "datamig_core=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let bumps = bump_rows_until_exit(&p, &mut child, n);
        let run = to_run(child.wait_with_output().unwrap());
        assert_eq!(run.code, 0, "{run:?}");
        let total: i64 = bumps.iter().sum();
        // SQLite serialises every writer: the application's writes land between
        // batches, and few do while a run takes the lock again right after each commit.
        let least = if kind == Db::Sqlite { 1 } else { 50 };
        assert!(total >= least, "only {total} application writes landed during the run");
        let mut wrong = Vec::new();
        for row in p.db.query("SELECT id, hits FROM visits ORDER BY id") {
            let (id, hits): (usize, i64) = (row[0].parse().unwrap(), row[1].parse().unwrap());
            if hits != 1000 * bumps[id] + 1 {
                wrong.push(format!("id {id}: hits {hits}, expected {}", 1000 * bumps[id] + 1));
            }
        }
        assert!(wrong.is_empty(), "{} rows wrong: {:?}", wrong.len(), &wrong[..wrong.len().min(10)]);
        if kind != Db::Sqlite {
            // The guard did fire: rows changed between a read ahead and its write.
            assert!(run.stderr.contains("redoing the batch under row locks"), "{run:?}");
        }
    }

    fn a_batch_is_n_rows_of_the_source_not_n_keys(kind: Db) {
        // 30,000 keys: the first 10,000 all flagged, the next 10,000 none, the
        // last 10,000 one in 50. 10,200 rows match the jobs' filter.
        let p = Project::new(kind);
        p.db.exec("CREATE TABLE flags (id BIGINT NOT NULL PRIMARY KEY, flag INT NOT NULL DEFAULT 0, hits INT NOT NULL DEFAULT 0)");
        p.db.fill_ids("flags", 30_000);
        p.db.exec("UPDATE flags SET flag = 1 WHERE id <= 10000 OR (id > 20000 AND id % 50 = 0)");
        let summary = |run: &Run| -> serde_json::Value {
            assert_eq!(run.code, 0, "{run:?}");
            serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap()
        };
        // Batches of 500 keys would take 60; batches of 500 rows take 21 for the
        // dense part and a few growing chunks over the empty and the sparse ones.
        for read in [&[][..], &["--no-read-ahead"][..]] {
            p.db.exec("UPDATE flags SET hits = 0");
            let mut args = vec!["run", "touch_flagged", "--batch", "500", "--json"];
            args.extend_from_slice(read);
            let s = summary(&p.run_fixtures(&args));
            assert_eq!(s["rows_done"], 10_200, "{read:?}: {s}");
            assert_eq!(s["rows_changed"], 10_200, "{read:?}: {s}");
            let batches = s["batches"].as_i64().unwrap();
            assert!((21..=32).contains(&batches), "{read:?}: {batches} batches: {s}");
            assert_eq!(p.db.scalar("SELECT count(*) FROM flags WHERE flag = 1 AND hits = 1"), 10_200, "{read:?}");
            assert_eq!(p.db.scalar("SELECT count(*) FROM flags WHERE hits <> flag"), 0, "{read:?}");
        }
        let run = p.run_fixtures(&["run", "purge_flagged", "--batch", "500", "--count", "estimate", "--json"]);
        let s = summary(&run);
        assert_eq!(s["rows_changed"], 10_200, "{s}");
        assert!((21..=32).contains(&s["batches"].as_i64().unwrap()), "{s}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM flags"), 19_800);
        assert_eq!(p.db.scalar("SELECT count(*) FROM flags WHERE flag = 1"), 0);
    }

    fn backfill_emails_end_to_end(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
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

        let seeded = p.ok(&["run", "seed_demo_sessions", "--arg", "rows=6000", "--batch", "2500", "--json"]);
        let summary: serde_json::Value = serde_json::from_str(&seeded.stdout).unwrap();
        assert_eq!(summary["batches"], 3, "{summary}");
        let (p50, p99, max) = (&summary["batch_p50_ms"], &summary["batch_p99_ms"], &summary["max_batch_ms"]);
        assert!(p50.as_u64().unwrap() <= p99.as_u64().unwrap() && p99.as_u64().unwrap() <= max.as_u64().unwrap(), "{summary}");
        let run = p.ok(&["run", "purge_expired_sessions", "--arg", "older_than=30d", "--batch", "500"]);
        assert!(run.stdout.contains("ok    sessions older than the cutoff"), "{run:?}");
        assert!(run.stdout.contains("longest batch transaction "), "{run:?}");
        assert!(run.stdout.contains("99th percentile"), "{run:?}");
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

each_db! {
    fn text_keys_with_quotes_and_backslashes_checkpoint_and_resume(kind: Db) {
        // The checkpoint holds the last key; on PostgreSQL it is sent as an SQL
        // literal with the COMMIT, so a key with quotes must survive that.
        let p = Project::new(kind);
        p.db.exec("CREATE TABLE visits2 (grp VARCHAR(10) NOT NULL, id BIGINT NOT NULL, hits INT NOT NULL DEFAULT 0, PRIMARY KEY (grp, id))");
        p.db.exec("CREATE TABLE nums (id BIGINT NOT NULL PRIMARY KEY)");
        p.db.fill_ids("nums", 300);
        for grp in ["a''b", "c\\\\d", "e''''f"] {
            // SQL text: a'b, c\d (c\\d where backslashes escape), e''f.
            let grp = if kind == Db::MySql { grp.to_string() } else { grp.replace("\\\\", "\\") };
            p.db.exec(&format!("INSERT INTO visits2 (grp, id) SELECT '{grp}', id FROM nums"));
        }
        assert_eq!(p.db.scalar("SELECT count(DISTINCT grp) FROM visits2"), 3);
        let run = p.run_fixtures(&["run", "count_visits_composite", "--batch", "70"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits2 WHERE hits <> 1"), 0);
        let position = p.db.query("SELECT position FROM datamig_runs")[0][0].clone();
        let cursor: serde_json::Value = serde_json::from_str(&position).unwrap();
        let last = cursor[0].as_str().unwrap();
        assert!(last.contains('\'') || last.contains('\\'), "the last key is a quoted one: {position}");
        // Resume from a checkpoint inside the quoted keys: exactly the rest is done.
        let mid = p.db.query("SELECT grp FROM visits2 ORDER BY grp, id LIMIT 1 OFFSET 400")[0][0].clone();
        let json = serde_json::to_string(&serde_json::json!([mid, 100])).unwrap();
        p.db.exec(&format!(
            "UPDATE visits2 SET hits = 0 WHERE grp > '{m}' OR (grp = '{m}' AND id > 100)",
            m = if kind == Db::MySql { mid.replace('\\', "\\\\").replace('\'', "''") } else { mid.replace('\'', "''") }
        ));
        let left = p.db.scalar("SELECT count(*) FROM visits2 WHERE hits = 0");
        assert_eq!(left, 500, "the rows after ({mid}, 100)");
        let escaped = if kind == Db::MySql { json.replace('\\', "\\\\").replace('\'', "''") } else { json.replace('\'', "''") };
        p.db.exec(&format!("UPDATE datamig_runs SET state = 'interrupted', position = '{escaped}', rows_done = 400"));
        let resumed = p.run_fixtures(&["run", "count_visits_composite", "--batch", "70"]);
        assert_eq!(resumed.code, 0, "{resumed:?}");
        assert!(resumed.stdout.contains("500 rows this time"), "{resumed:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits2 WHERE hits <> 1"), 0);
    }
}

each_db! {
    // A range job's last, empty batch rolled back a transaction that a batch
    // beginning with its statement had never begun: PostgreSQL answered with a
    // WARN line ("there is no transaction in progress") in every such run.
    fn a_range_job_ends_without_a_stray_rollback(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
        p.ok(&["schema", "upgrade"]);
        let run = p.run(&["run", "seed_demo_users", "--arg", "rows=2000", "--batch", "500"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(!run.stderr.contains("WARN"), "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users"), 2000);
    }
}

/// A PostgreSQL table keyed by `uuid` (read as its text, compared through a cast
/// back): a transform killed after its fifth commit resumes after the last
/// committed key and visits every row once; a filtered transform and a delete
/// over the same key find their batches' ends without `max()`, which PostgreSQL
/// before 16 does not have for `uuid`.
#[test]
fn a_table_keyed_by_uuid_is_processed_and_resumed_on_postgres() {
    let p = Project::new(Db::Postgres);
    p.db.exec("CREATE TABLE tags (name UUID NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)");
    p.db.exec("INSERT INTO tags (name) SELECT gen_random_uuid() FROM generate_series(1, 2000)");
    let args = ["run", "touch_tags", "--batch", "100"];
    let killed = to_run(
        p.fixtures(&args)
            .env("DATAMIG_CRASH_AT", "after_commit:5")
            .output()
            .unwrap(),
    );
    assert_ne!(killed.code, 0, "{killed:?}");
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM tags WHERE hits = 1"),
        500,
        "five batches committed"
    );
    let resumed = p.run_fixtures(&args);
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert!(
        resumed
            .stderr
            .contains("resuming run 1 of touch_tags at name "),
        "{resumed:?}"
    );
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM tags WHERE hits = 1"),
        2000,
        "{resumed:?}"
    );

    p.db.exec("CREATE TABLE flags (id UUID NOT NULL PRIMARY KEY, flag INT NOT NULL, hits INT NOT NULL DEFAULT 0)");
    p.db.exec("INSERT INTO flags (id, flag) SELECT gen_random_uuid(), i % 3 FROM generate_series(1, 3000) i");
    let touched = p.run_fixtures(&["run", "touch_flagged", "--batch", "100"]);
    assert_eq!(touched.code, 0, "{touched:?}");
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM flags WHERE hits = 1"),
        1000,
        "{touched:?}"
    );
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM flags WHERE hits <> (flag = 1)::int"),
        0
    );
    let purged = p.run_fixtures(&["run", "purge_flagged", "--batch", "100"]);
    assert_eq!(purged.code, 0, "{purged:?}");
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM flags WHERE flag = 1"),
        0,
        "{purged:?}"
    );
    assert_eq!(p.db.scalar("SELECT count(*) FROM flags"), 2000);
}

// datamig_runs as an earlier datamig left it, without the columns added since
// (and so, for a moment, as a runner creating the tables leaves it for another
// starting beside it): a run adds them before it reads the table.
each_db! {
    fn a_run_completes_tables_an_earlier_version_made(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 300);
        let first = p.run_fixtures(&["run", "count_visits", "--batch", "100"]);
        assert_eq!(first.code, 0, "{first:?}");
        for column in ["request_by", "file_offset"] {
            p.db.exec(&format!("ALTER TABLE datamig_runs DROP COLUMN {column}"));
        }
        p.db.exec("UPDATE visits SET hits = 0");
        let run = p.run_fixtures(&["run", "count_visits", "--batch", "100"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits <> 1"), 0, "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM datamig_runs WHERE file_offset IS NULL AND request_by IS NULL"), 2);
    }
}

each_db! {
    fn a_closed_stderr_or_stdout_neither_panics_nor_leaves_the_run_running(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 3000);
        // As `datamig run … 2>&1 | head -1`: the reader of both streams goes
        // away at once, so every later write to them meets a closed pipe.
        for extra in [&["--progress", "log"][..], &["--log-format", "json"][..], &["--json"][..]] {
            p.db.exec("UPDATE visits SET hits = 0");
            let mut args = vec!["run", "count_visits", "--batch", "100"];
            if extra[0] == "--log-format" {
                args.splice(0..0, extra.iter().copied());
            } else {
                args.extend(extra.iter().copied());
            }
            let mut child = p
                .fixtures(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stdout.take());
            drop(child.stderr.take());
            let status = child.wait().unwrap();
            assert_eq!(status.code(), Some(0), "{args:?}: {status:?}");
            let state = p.db.query("SELECT state FROM datamig_runs ORDER BY id DESC");
            assert_eq!(state[0][0], "completed", "{args:?}");
        }
    }
}

/// One SQLite row whose TEXT is not UTF-8 failed every batch that read it
/// ("error occurred while decoding column 1", no key named), so a transform
/// could never get past it. Only SQLite stores such text: PostgreSQL and
/// MariaDB check the encoding of what they are given.
#[test]
fn a_sqlite_row_that_is_not_utf8_is_rejected_and_the_transform_goes_on() {
    let p = Project::new(Db::Sqlite);
    p.copy_project_migrations();
    p.ok(&["schema", "upgrade"]);
    p.ok(&["run", "seed_demo_users", "--arg", "rows=3000"]);
    p.db.exec("UPDATE users SET email = CAST(X'41FF40782E79' AS TEXT) WHERE id = 1500");
    let run = p.ok(&[
        "run",
        "backfill_emails",
        "--batch",
        "500",
        "--max-errors",
        "1000",
    ]);
    let left =
        p.db.scalar("SELECT count(*) FROM users WHERE email_normalized IS NULL AND id > 1500");
    let rejects = p.db.query("SELECT row_key, reason FROM datamig_rejects");
    assert!(
        rejects.contains(&vec![
            "1500".to_string(),
            "email is not UTF-8 text (invalid byte at offset 1)".into()
        ]),
        "{rejects:?} {run:?}"
    );
    // Every row after it was processed as well (the seed's own invalid
    // addresses are rejected too, and stay NULL).
    let invalid_after = rejects
        .iter()
        .filter(|r| r[0].parse::<i64>().unwrap() > 1500)
        .count();
    assert_eq!(left, i64::try_from(invalid_after).unwrap(), "{run:?}");
    // The bytes are as they were.
    assert_eq!(
        p.db.query("SELECT hex(email) FROM users WHERE id = 1500")[0][0],
        "41FF40782E79"
    );
}

/// datamig's SQLite lock files (`<database>.datamig-schema.lock`,
/// `-bookkeeping.lock`, `-job.<job>.lock`) stayed behind after every command.
#[test]
fn sqlite_lock_files_are_removed_when_released() {
    let p = Project::new(Db::Sqlite);
    p.copy_project_migrations();
    p.ok(&["schema", "upgrade"]);
    p.ok(&["run", "seed_demo_users", "--arg", "rows=500"]);
    p.ok(&["run", "backfill_emails"]);
    let db = std::path::PathBuf::from(p.db.url.trim_start_matches("sqlite:"));
    let dir = db.parent().unwrap();
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".datamig-"))
        .collect();
    assert!(left.is_empty(), "lock files left behind: {left:?}");
}

/// `--max-active` and `--max-transaction-age` watch a server's sessions: on
/// SQLite they were accepted and did nothing.
#[test]
fn sqlite_refuses_the_throttles_that_watch_a_servers_sessions() {
    let p = Project::new(Db::Sqlite);
    visits(&p, 100);
    for flag in [
        &["--max-active", "4"][..],
        &["--max-transaction-age", "1m"],
        &[
            "--max-replica-lag",
            "10s",
            "--replica",
            "postgres://r@127.0.0.1/x",
        ],
    ] {
        let args: Vec<&str> = ["run", "count_visits"]
            .iter()
            .chain(flag)
            .copied()
            .collect();
        let run = p.run_fixtures(&args);
        assert_eq!(run.code, 2, "{flag:?}: {run:?}");
        assert!(
            run.stderr.contains(&format!(
                "{} watches a server's sessions or replicas, which SQLite does not have",
                flag[0]
            )),
            "{run:?}"
        );
    }
    assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits > 0"), 0);
    // In datamig.toml (shared with the server environments), a warning, and the run goes on.
    std::fs::write(
        p.path().join("datamig.toml"),
        "[throttle]\nmax_active = 4\n",
    )
    .unwrap();
    let run = p.run_fixtures(&["run", "count_visits"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("datamig.toml's throttle setting max_active does nothing on SQLite"),
        "{run:?}"
    );
}

each_db! {
    // Run numbers were shared across jobs, so a project's first backfill was
    // "run 2" (the seed was run 1).
    fn runs_are_numbered_per_job(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
        p.ok(&["schema", "upgrade"]);
        let seed = p.ok(&["run", "seed_demo_users", "--arg", "rows=300"]);
        assert!(seed.stderr.contains("starting run 1 of seed_demo_users"), "{seed:?}");
        let backfill = p.ok(&["run", "backfill_emails", "--json"]);
        assert!(backfill.stderr.contains("starting run 1 of backfill_emails"), "{backfill:?}");
        let summary: serde_json::Value = serde_json::from_str(backfill.stdout.trim()).unwrap();
        assert_eq!(summary["run_number"], 1, "{summary}");
        assert_eq!(summary["run_id"], 2, "the row's id stays what datamig's tables refer to: {summary}");
        let again = p.ok(&["run", "backfill_emails"]);
        assert!(again.stderr.contains("starting run 2 of backfill_emails"), "{again:?}");
        assert!(again.stdout.contains("completed run 2 of backfill_emails"), "{again:?}");
        let status = p.ok(&["status", "backfill_emails"]).stdout;
        assert!(status.contains("run 2: completed"), "{status}");
        // `datamig jobs` lines its descriptions up.
        let jobs = p.ok(&["jobs"]).stdout;
        let starts: Vec<usize> = jobs
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(|l| l.find("  ").unwrap() + l[l.find("  ").unwrap()..].len() - l[l.find("  ").unwrap()..].trim_start().len())
            .collect();
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{jobs}");
    }
}
