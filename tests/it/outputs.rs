//! Files datamig writes (RELIABILITY.md, "output paths" and "special files"):
//! `--rejects-file` and an archive step's file may never be the database, its
//! journal or locks, a migration, the project's settings, the job's input or
//! each other, and one that cannot be written (a directory, a FIFO, a place
//! that takes no new files) is refused before the first batch, not after the
//! last: one line, exit 2, nothing changed.

use crate::each_db;
use crate::jobs::visits;
use crate::support::{Db, Project, Run};

/// Refused with one line naming `says`, exit 2, and no run recorded.
fn assert_refused_unchanged(p: &Project, run: &Run, says: &str) {
    assert_eq!(run.code, 2, "{run:?}");
    let lines: Vec<&str> = run.stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "one line: {run:?}");
    assert!(lines[0].starts_with("error: "), "{run:?}");
    assert!(lines[0].contains(says), "expected {says:?}: {run:?}");
    let runs = if p.db.table_exists("datamig_runs") {
        p.db.scalar("SELECT count(*) FROM datamig_runs WHERE job NOT LIKE 'seed%'")
    } else {
        0
    };
    assert_eq!(runs, 0, "a run was recorded: {run:?}");
}

fn sqlite_file(p: &Project) -> String {
    p.db.url.trim_start_matches("sqlite:").to_string()
}

each_db! {
    fn a_rejects_file_naming_the_database_or_a_migration_is_refused_and_nothing_is_overwritten(kind: Db) {
        let p = Project::new(kind);
        visits(&p, 300);
        p.migration(20260101000000, "create_things", "CREATE TABLE things (id INT);\n", "DROP TABLE things;\n");
        let up = p.path().join("migrations/20260101000000_create_things.up.sql");
        std::fs::write(p.path().join("datamig.toml"), "").unwrap();
        let mut cases = vec![
            (up.display().to_string(), "the migrations directory"),
            ("migrations/new.csv".to_string(), "the migrations directory"),
            ("datamig.toml".to_string(), "datamig.toml"),
        ];
        if kind == Db::Sqlite {
            let db = sqlite_file(&p);
            cases.push((db.clone(), "the SQLite database itself"));
            cases.push((format!("{db}-journal"), "journal"));
            cases.push((format!("{db}-wal"), "wal"));
            cases.push((format!("{db}.datamig-job.count_visits.lock"), "lock files"));
            // Through `..` and through a symbolic link.
            std::fs::create_dir(p.path().join("sub")).unwrap();
            let name = std::path::Path::new(&db).file_name().unwrap().to_string_lossy().into_owned();
            let dir = std::path::Path::new(&db).parent().unwrap().to_path_buf();
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            cases.push((dir.join("sub/..").join(&name).display().to_string(), "the SQLite database itself"));
            std::os::unix::fs::symlink(&db, p.path().join("link.csv")).unwrap();
            cases.push(("link.csv".to_string(), "the SQLite database itself"));
        }
        let before = std::fs::read(&up).unwrap();
        for (file, says) in cases {
            let run = p.run_fixtures(&["run", "count_visits", "--rejects-file", &file]);
            assert_refused_unchanged(&p, &run, says);
        }
        assert_eq!(std::fs::read(&up).unwrap(), before, "the migration was overwritten");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 0"), 300);
        // The database still opens and answers.
        let ok = p.run_fixtures(&["run", "count_visits", "--rejects-file", "rejects.csv"]);
        assert_eq!(ok.code, 0, "{ok:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits = 1"), 300);
    }

    fn an_archive_naming_the_database_the_rejects_file_or_the_import_is_refused(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
        p.ok(&["schema", "upgrade"]);
        p.ok(&["run", "seed_demo_sessions", "--arg", "rows=2000", "--batch", "1000"]);
        let sessions = p.db.scalar("SELECT count(*) FROM sessions");
        if kind == Db::Sqlite {
            let arg = format!("archive={}", sqlite_file(&p));
            let run = p.run(&["run", "purge_expired_sessions", "--arg", &arg]);
            assert_refused_unchanged(&p, &run, "the archive file");
            assert!(run.stderr.contains("the SQLite database itself"), "{run:?}");
        }
        let run = p.run(&["run", "purge_expired_sessions", "--arg", "archive=same.csv", "--rejects-file", "same.csv"]);
        assert_refused_unchanged(&p, &run, "the job's archive");
        let run = p.run(&["run", "purge_expired_sessions", "--arg", "archive=migrations/x.csv"]);
        assert_refused_unchanged(&p, &run, "the migrations directory");
        assert_eq!(p.db.scalar("SELECT count(*) FROM sessions"), sessions, "nothing deleted");
        std::fs::write(p.path().join("users.csv"), "id,email\n1,a@b.c\n").unwrap();
        let run = p.run(&["run", "import_users", "--arg", "file=users.csv", "--rejects-file", "users.csv"]);
        assert_refused_unchanged(&p, &run, "the CSV file the job imports");
        assert_eq!(std::fs::read_to_string(p.path().join("users.csv")).unwrap(), "id,email\n1,a@b.c\n");
    }

    fn an_unwritable_rejects_file_or_a_fifo_archive_is_refused_before_the_first_batch(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
        p.ok(&["schema", "upgrade"]);
        p.ok(&["run", "seed_demo_sessions", "--arg", "rows=2000", "--batch", "1000"]);
        let sessions = p.db.scalar("SELECT count(*) FROM sessions");
        std::fs::create_dir(p.path().join("adir")).unwrap();
        let fifo = p.path().join("fifo.csv");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // A directory; a place that takes no new files, even for root; a FIFO
        // (whose open() would block, deaf to SIGTERM); a device.
        for (flag, value, says) in [
            ("--rejects-file", "adir".to_string(), "is a directory"),
            ("--rejects-file", "/proc/datamig-rejects.csv".to_string(), "does not take new files"),
            ("--rejects-file", fifo.display().to_string(), "not a regular file"),
            ("--arg", format!("archive={}", fifo.display()), "not a regular file"),
            ("--arg", "archive=/dev/null".to_string(), "not a regular file"),
            ("--arg", "archive=adir".to_string(), "is a directory"),
        ] {
            let started = std::time::Instant::now();
            let run = p.run(&["run", "purge_expired_sessions", flag, &value]);
            assert_refused_unchanged(&p, &run, says);
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "{run:?}");
        }
        assert_eq!(p.db.scalar("SELECT count(*) FROM sessions"), sessions, "nothing deleted");
    }
}
