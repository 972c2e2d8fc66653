//! The demo jobs in `jobs/` as a user runs them: on the project's own
//! migrations and seeded data, killed (SIGKILL) at random moments and resumed,
//! on all three databases; every row exactly once.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::each_db;
use crate::jobs::spawn;
use crate::support::{to_run, Db, Project, Run};

/// A project on `kind` with this repository's migrations applied.
pub(crate) fn project(kind: Db) -> Project {
    let p = Project::new(kind);
    p.copy_project_migrations();
    let up = p.run(&["schema", "upgrade", "head"]);
    assert_eq!(up.code, 0, "{up:?}");
    p
}

pub(crate) fn seed(p: &Project, job: &str, rows: i64) {
    let run = p.run(&["run", job, "--arg", &format!("rows={rows}")]);
    assert_eq!(run.code, 0, "{run:?}");
}

/// Rows the latest run of `job` has committed.
fn job_rows(p: &Project, job: &str) -> i64 {
    p.db.scalar(&format!(
        "SELECT coalesce(max(rows_done), 0) FROM datamig_runs WHERE job = '{job}'"
    ))
}

/// Starts `args` (a run of `job`) `kills` times, each killed at a random
/// moment up to `max_ms` after its first committed batch, then runs it to the
/// end; returns that last run.
pub(crate) fn kill_and_resume(
    p: &Project,
    job: &str,
    args: &[&str],
    kills: usize,
    max_ms: u64,
) -> Run {
    for _ in 0..kills {
        let mut child: Child = spawn(p, args);
        let before = job_rows(p, job);
        let deadline = Instant::now() + Duration::from_secs(60);
        while job_rows(p, job) <= before {
            assert!(Instant::now() < deadline, "no progress within 60 s");
            if let Some(status) = child.try_wait().unwrap() {
                let out = to_run(child.wait_with_output().unwrap());
                panic!("the run ended ({status}) before the kill: {out:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % max_ms));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }
    let done = p.run_fixtures(args);
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stderr.contains(&format!("resuming run 1 of {job}")),
        "{done:?}"
    );
    done
}

/// The addresses `seed_demo_users` gives users 1..=n (see its `profile`), and
/// the users whose profile `move_addresses_to_table` rejects.
fn seeded_addresses(n: i64) -> (i64, i64) {
    let (mut addresses, mut rejected) = (0, 0);
    for id in (1..=n).filter(|id| id % 3 == 0) {
        if id % 1500 == 0 {
            rejected += 1;
        } else {
            addresses += id % 4;
        }
    }
    (addresses, rejected)
}

each_db! {
    fn move_addresses_to_table_moves_each_address_once_through_kills(kind: Db) {
        let p = project(kind);
        let n = 30_000;
        seed(&p, "seed_demo_users", n);
        let args = ["run", "move_addresses_to_table", "--batch", "100", "--rate", "3000"];
        let run = kill_and_resume(&p, "move_addresses_to_table", &args, 4, 300);
        assert!(run.stdout.contains("ok    addresses of users not marked moved"), "{run:?}");
        let (addresses, rejected) = seeded_addresses(n);
        assert_eq!(p.db.scalar("SELECT count(*) FROM addresses"), addresses);
        assert_eq!(
            p.db.scalar("SELECT count(*) FROM users WHERE addresses_moved_at IS NOT NULL"),
            n / 3 - rejected
        );
        // Each moved address is its user's (the seeded lines name the user),
        // with the id its position in the profile gives it.
        for row in p.db.query("SELECT id, user_id, kind, line FROM addresses") {
            let (id, user): (i64, i64) = (row[0].parse().unwrap(), row[1].parse().unwrap());
            assert!(row[3].contains(&user.to_string()), "{row:?}");
            let position = ["home", "work", "other"].iter().position(|k| *k == row[2]).unwrap();
            assert_eq!(id, user * 10 + i64::try_from(position).unwrap(), "{row:?}");
        }
        // Rejects too are recorded once: a killed batch's rejects went with it.
        let rejects = p.db.query("SELECT reason, count(*) FROM datamig_rejects GROUP BY reason");
        assert_eq!(rejects, vec![vec!["address 1 has no kind".to_string(), rejected.to_string()]]);
        let counts = p.db.query("SELECT rows_done, rows_changed, rows_rejected FROM datamig_runs WHERE job = 'move_addresses_to_table'");
        assert_eq!(counts, vec![vec![(n / 3).to_string(), (n / 3 - rejected).to_string(), rejected.to_string()]]);
    }

    fn copy_user_email_to_sessions_fills_each_session_once_through_kills(kind: Db) {
        let p = project(kind);
        seed(&p, "seed_demo_users", 2_000);
        seed(&p, "seed_demo_sessions", 30_000);
        p.db.exec("INSERT INTO sessions (id, user_id, created_at) VALUES (30001, 999999, CURRENT_TIMESTAMP)");
        let args = ["run", "copy_user_email_to_sessions", "--batch", "200", "--rate", "9000"];
        let run = kill_and_resume(&p, "copy_user_email_to_sessions", &args, 4, 300);
        assert!(run.stdout.contains("ok    sessions whose copy differs"), "{run:?}");
        assert_eq!(
            p.db.scalar("SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.user_email = u.email"),
            30_000
        );
        let rejects = p.db.query("SELECT row_key, reason FROM datamig_rejects");
        assert_eq!(rejects, vec![vec!["30001".to_string(), "user 999999 does not exist".into()]]);
        let counts = p.db.query("SELECT rows_done, rows_changed FROM datamig_runs WHERE job = 'copy_user_email_to_sessions'");
        assert_eq!(counts, vec![vec!["30001".to_string(), "30000".into()]]);
    }

    fn copy_user_email_to_sessions_sql_joins_the_parent_through_kills(kind: Db) {
        let p = project(kind);
        seed(&p, "seed_demo_users", 2_000);
        seed(&p, "seed_demo_sessions", 30_000);
        let args = ["run", "copy_user_email_to_sessions_sql", "--batch", "200", "--rate", "9000"];
        let run = kill_and_resume(&p, "copy_user_email_to_sessions_sql", &args, 4, 300);
        assert!(run.stdout.contains("ok    sessions whose copy differs"), "{run:?}");
        assert_eq!(
            p.db.scalar("SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.user_email = u.email"),
            30_000
        );
        let counts = p.db.query("SELECT rows_done, rows_changed FROM datamig_runs WHERE job = 'copy_user_email_to_sessions_sql'");
        assert_eq!(counts, vec![vec!["30000".to_string(), "30000".into()]]);
    }

    fn merge_duplicate_users_over_a_query_source_merges_each_group_once_through_kills(kind: Db) {
        let p = project(kind);
        let n = 30_000;
        seed(&p, "seed_demo_users", n);
        let backfill = p.run(&["run", "backfill_emails"]);
        assert_eq!(backfill.code, 0, "{backfill:?}");
        // One session per user, its id the user's plus 100000.
        p.db.exec("INSERT INTO sessions (id, user_id, created_at) SELECT id + 100000, id, CURRENT_TIMESTAMP FROM users");
        // Every 250th user (not the invalid 1000th) duplicates the one before it.
        let groups = (1..=n).filter(|i| i % 250 == 0 && i % 1000 != 0).count();
        let groups = i64::try_from(groups).unwrap();
        let args = ["run", "merge_duplicate_users", "--batch", "1", "--rate", "30"];
        let run = kill_and_resume(&p, "merge_duplicate_users", &args, 3, 300);
        assert!(run.stdout.contains("ok    addresses shared by several users"), "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users"), n - groups);
        assert_eq!(p.db.scalar("SELECT count(*) FROM sessions"), n);
        assert_eq!(
            p.db.scalar("SELECT count(*) FROM sessions s WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id)"),
            0
        );
        // Exactly the duplicates' sessions moved, each to the user before it.
        assert_eq!(p.db.scalar("SELECT count(*) FROM sessions WHERE user_id <> id - 100000"), groups);
        assert_eq!(p.db.scalar("SELECT count(*) FROM sessions WHERE user_id <> id - 100000 AND user_id <> id - 100001"), 0);
        let counts = p.db.query("SELECT rows_done, rows_changed FROM datamig_runs WHERE job = 'merge_duplicate_users'");
        assert_eq!(counts, vec![vec![groups.to_string(), groups.to_string()]]);
    }

    fn index_uploads_over_a_custom_source_records_each_file_once_through_kills(kind: Db) {
        use sha2::Digest;
        let p = project(kind);
        let dir = p.path().join("uploads");
        std::fs::create_dir(&dir).unwrap();
        let n = 6_000;
        for i in 1..=n {
            std::fs::write(dir.join(format!("f{i:05}.txt")), format!("file {i}\n")).unwrap();
        }
        std::fs::create_dir(dir.join("a-directory")).unwrap();
        let dir_arg = format!("dir={}", dir.display());
        let args = ["run", "index_uploads", "--arg", &dir_arg, "--batch", "50", "--rate", "1500"];
        let run = kill_and_resume(&p, "index_uploads", &args, 4, 300);
        assert!(run.stdout.contains("uploads recorded"), "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM uploads"), n);
        // Each page's files once: every committed batch inserted each of its files, none twice.
        let counts = p.db.query("SELECT rows_done, rows_changed FROM datamig_runs WHERE job = 'index_uploads'");
        assert_eq!(counts, vec![vec![n.to_string(), n.to_string()]]);
        let sha: String = sha2::Sha256::digest(b"file 42\n").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            p.db.query("SELECT bytes, sha256 FROM uploads WHERE name = 'f00042.txt'"),
            vec![vec!["8".to_string(), sha]]
        );
        // The cursor the checkpoint kept is the last file's name.
        let at = p.db.query("SELECT position FROM datamig_runs WHERE job = 'index_uploads'");
        assert!(at[0][0].contains("f06000.txt"), "{at:?}");
        // Run again over the same directory: a new run, every file already there.
        let again = p.run(&["run", "index_uploads", "--arg", &dir_arg, "--batch", "1000"]);
        assert_eq!(again.code, 0, "{again:?}");
        assert!(again.stdout.starts_with("completed run 2 of index_uploads: 6000 rows in 6 batches (0 changed"), "{again:?}");
    }

    fn a_custom_source_takes_a_batch_step_and_one_worker(kind: Db) {
        let p = project(kind);
        let dir = p.path().join("uploads");
        std::fs::create_dir(&dir).unwrap();
        let dir_arg = format!("dir={}", dir.display());
        let run = p.run(&["run", "index_uploads", "--arg", &dir_arg, "--workers", "2"]);
        if kind == Db::Sqlite {
            assert_eq!(run.code, 0, "{run:?}");
            return;
        }
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("a custom source is read page after page and runs in one worker; drop --workers"), "{run:?}");
    }

    fn a_query_source_runs_in_one_worker(kind: Db) {
        let p = project(kind);
        seed(&p, "seed_demo_users", 100);
        let run = p.run(&["run", "merge_duplicate_users", "--workers", "2"]);
        if kind == Db::Sqlite {
            // One writer: --workers is set aside before the source is asked.
            assert_eq!(run.code, 0, "{run:?}");
            assert!(run.stderr.contains("SQLite has a single writer"), "{run:?}");
            return;
        }
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("a query source is read in one key order and runs in one worker; drop --workers"), "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM datamig_runs WHERE job = 'merge_duplicate_users'"), 0);
    }
}
