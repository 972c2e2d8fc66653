//! Bad inputs: each gets one clear line, its documented exit code, no change to
//! the database, and never a password in the output.

use crate::each_db;
use crate::support::{Db, Project, Run};

const V1: i64 = 20260101000000;

/// One line on stderr starting with `error:`, the expected code, no secret, no change.
fn assert_refused(p: &Project, run: &Run, code: i32, says: &str) {
    assert_eq!(run.code, code, "{run:?}");
    let lines: Vec<&str> = run.stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "one line: {run:?}");
    assert!(lines[0].starts_with("error: "), "{run:?}");
    assert!(lines[0].contains(says), "expected {says:?} in {run:?}");
    assert!(!run.all().contains("secretpw"), "password leaked: {run:?}");
    assert!(!run.all().contains("panicked"), "{run:?}");
    assert!(
        !p.db.table_exists("datamig_schema_history"),
        "the database was changed: {run:?}"
    );
    assert!(
        !p.db.table_exists("users"),
        "the database was changed: {run:?}"
    );
}

fn simple(p: &Project) {
    p.migration(
        V1,
        "create_users",
        "CREATE TABLE users (id INT);\n",
        "DROP TABLE users;\n",
    );
}

/// A URL to the same server whose password is wrong (or, under PostgreSQL's trust
/// authentication on the test machine, whose role does not exist).
fn wrong_credentials(p: &Project) -> String {
    let mut url = crate::support::url_parts(&p.db.url);
    match p.db.kind {
        Db::Sqlite => "sqlite:/nonexistent-dir/x.db".to_string(),
        Db::Postgres => {
            url.set_username("no_such_role_datamig").unwrap();
            url.set_password(Some("secretpw")).unwrap();
            url.to_string()
        }
        Db::MySql => {
            let user = format!("dm_u{:08x}", rand::random::<u32>());
            p.db.exec(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'rightpw'"));
            p.db.exec(&format!(
                "CREATE USER '{user}'@'localhost' IDENTIFIED BY 'rightpw'"
            ));
            url.set_username(&user).unwrap();
            url.set_password(Some("secretpw")).unwrap();
            url.to_string()
        }
    }
}

each_db! {
    fn unknown_version(kind: Db) {
        let p = Project::new(kind);
        simple(&p);
        let run = p.run(&["schema", "upgrade", "20991231235959"]);
        assert_refused(&p, &run, 2, "no migration with version 20991231235959");
        let run = p.run(&["schema", "upgrade", "latest"]);
        assert_refused(&p, &run, 2, "`latest` is not a target");
        let run = p.run(&["schema", "downgrade", "-0"]);
        assert_refused(&p, &run, 2, "not a step count");
        let run = p.run(&["schema", "downgrade", "-3"]);
        assert_refused(&p, &run, 2, "only 0 applied");
    }

    fn malformed_migration_name(kind: Db) {
        let p = Project::new(kind);
        let run = p.run(&["schema", "new", "Users Email"]);
        assert_refused(&p, &run, 2, "did you mean `add_users_email`");
        let run = p.run(&["schema", "new", "users_email"]);
        assert_refused(&p, &run, 2, "does not start with a verb");
        assert_eq!(std::fs::read_dir(p.path().join("migrations")).unwrap().count(), 0, "no file written");
    }

    fn an_up_without_a_down_is_applied_and_never_reverted(kind: Db) {
        let p = Project::new(kind);
        std::fs::write(p.path().join(format!("migrations/{V1}_create_users.up.sql")), "CREATE TABLE users (id INT);").unwrap();
        p.ok(&["schema", "upgrade"]);
        let run = p.run(&["schema", "downgrade", "base"]);
        assert_eq!(run.code, 5, "{run:?}");
        assert!(run.stderr.contains("it is irreversible (it has no down file); nothing was reverted"), "{run:?}");
        assert!(p.db.table_exists("users"));
    }

    fn duplicate_version(kind: Db) {
        let p = Project::new(kind);
        simple(&p);
        p.migration(V1, "create_orders", "CREATE TABLE orders (id INT);\n", "DROP TABLE orders;\n");
        let run = p.run(&["schema", "upgrade"]);
        assert_refused(&p, &run, 5, &format!("duplicate version {V1}"));
    }

    fn malformed_url(kind: Db) {
        let p = Project::new(kind);
        simple(&p);
        let url = match kind {
            Db::Sqlite => "sqlite:",
            Db::Postgres => "postgres://app:secretpw@127.0.0.1:notaport/db",
            Db::MySql => "mysql://app:secretpw@[bad/db",
        };
        let run = p.run(&["--database-url", url, "schema", "upgrade"]);
        assert_refused(&p, &run, 3, "URL");
        let run = p.run(&["--database-url", "http://app:secretpw@x/db", "schema", "status"]);
        assert_refused(&p, &run, 3, "unsupported database URL scheme `http`");
    }

    fn unreachable_database(kind: Db) {
        let p = Project::new(kind);
        simple(&p);
        let url = match kind {
            Db::Sqlite => "sqlite:/nonexistent-dir/x.db".to_string(),
            Db::Postgres => "postgres://app:secretpw@127.0.0.1:1/db".to_string(),
            Db::MySql => "mysql://app:secretpw@127.0.0.1:1/db".to_string(),
        };
        let run = p.run(&["--database-url", &url, "schema", "upgrade"]);
        assert_refused(&p, &run, 4, "cannot connect to");
        if kind != Db::Sqlite {
            assert!(run.stderr.contains(":***@"), "the URL is shown redacted: {run:?}");
            let mut missing = crate::support::url_parts(&p.db.url);
            missing.set_path("/no_such_database_datamig");
            let run = p.run(&["--database-url", missing.as_str(), "schema", "upgrade"]);
            assert_refused(&p, &run, 4, "does not exist");
        }
    }

    fn wrong_password(kind: Db) {
        let p = Project::new(kind);
        simple(&p);
        let url = wrong_credentials(&p);
        let run = p.run(&["--database-url", &url, "schema", "upgrade"]);
        if kind == Db::MySql {
            let user = crate::support::url_parts(&url).username().to_string();
            p.db.exec(&format!("DROP USER '{user}'@'%', '{user}'@'localhost'"));
        }
        let says = if kind == Db::Sqlite { "cannot connect" } else { "authentication failed" };
        assert_refused(&p, &run, 4, says);
    }

    fn unknown_env(kind: Db) {
        let p = Project::new(kind);
        simple(&p);
        let run = p.run(&["--env", "staging", "schema", "upgrade"]);
        assert_refused(&p, &run, 3, "unknown env `staging`");
        std::fs::write(p.path().join("datamig.toml"), "[env.prod]\ndatabse_url = \"x\"\n").unwrap();
        let run = p.run(&["schema", "upgrade"]);
        assert_refused(&p, &run, 3, "datamig.toml is invalid");
    }
}

fn assert_one_line(run: &Run, code: i32, says: &str) {
    assert_eq!(run.code, code, "{run:?}");
    let lines: Vec<&str> = run.stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "one line: {run:?}");
    assert!(lines[0].starts_with("error: "), "{run:?}");
    assert!(lines[0].contains(says), "expected {says:?} in {run:?}");
    assert!(!run.all().contains("panicked"), "{run:?}");
}

each_db! {
    fn bad_run_arguments_change_nothing(kind: Db) {
        let p = Project::new(kind);
        p.db.exec("CREATE TABLE visits (id BIGINT NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)");
        p.db.fill_ids("visits", 100);
        let cases: &[(&[&str], i32, &str)] = &[
            (&["run", "nope"], 2, "unknown job `nope`; `datamig jobs` lists them"),
            (&["run", "count_visits", "--batch", "0"], 2, "--batch 0 is out of range; give between 1 and 1000000 rows"),
            (&["run", "count_visits", "--batch", "-5"], 2, "--batch"),
            (&["run", "count_visits", "--batch", "99999999"], 2, "--batch 99999999 is out of range"),
            (&["run", "count_visits", "--batch", "lots"], 2, "invalid digit"),
            (&["run", "count_visits", "--arg", "bogus=1"], 2, "unknown field `bogus`"),
            (&["run", "count_visits", "--arg", "pause_ms"], 2, "`pause_ms` is not KEY=VALUE"),
            (&["run", "count_visits", "--arg", "pause_ms=soon"], 2, "invalid --arg pause_ms=soon for job count_visits: not a whole number"),
            (&["run", "count_visits", "--arg", "pause_ms=1", "--arg", "pause_ms=2"], 2, "--arg pause_ms is given twice"),
            (&["run", "count_visits_sql", "--arg", "x=1"], 2, "it takes no arguments"),
            (&["run", "purge_expired_sessions", "--arg", "older_than=1d; DROP TABLE visits"], 2, "is not a duration"),
            (&["run", "seed_demo_users", "--arg", "rows=-5"], 2, "rows must be between 1 and 1000000000"),
            (&["run", "count_visits", "--count", "approx"], 2, "invalid value 'approx'"),
            (&["verify", "nope"], 2, "unknown job `nope`"),
            (&["status", "--limit", "0"], 2, "0 is not in 1..=10000"),
        ];
        for (args, code, says) in cases {
            let run = p.run_fixtures(args);
            assert_one_line(&run, *code, says);
            assert!(!p.db.table_exists("datamig_runs"), "{args:?} changed the database");
            assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits <> 0"), 0, "{args:?}");
        }
    }

    fn corrupt_checkpoint_is_refused_without_change(kind: Db) {
        let p = Project::new(kind);
        p.db.exec("CREATE TABLE visits (id BIGINT NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)");
        p.db.fill_ids("visits", 500);
        let run = p.run_fixtures(&["run", "count_visits_sql", "--batch", "200"]);
        assert_eq!(run.code, 0, "{run:?}");
        for corrupt in ["garbage", "[1, 2]", "[1.5]", "{}"] {
            p.db.exec(&format!("UPDATE datamig_runs SET state = 'interrupted', position = '{corrupt}'"));
            let run = p.run_fixtures(&["run", "count_visits_sql", "--batch", "200"]);
            assert_one_line(&run, 15, "has a corrupt checkpoint in datamig_runs.position");
            assert!(run.stderr.contains("--restart"), "{run:?}");
            assert_eq!(p.db.scalar("SELECT count(*) FROM visits WHERE hits <> 1"), 0, "nothing may change");
            assert_eq!(p.db.query("SELECT position FROM datamig_runs")[0][0], corrupt);
        }
        p.db.exec("UPDATE datamig_runs SET state = 'exploded'");
        let run = p.run_fixtures(&["run", "count_visits_sql"]);
        assert_one_line(&run, 15, "unknown state `exploded`");
    }
}

each_db! {
    // Run outside the project (no migrations/ where it looks), an upgrade would
    // find nothing to apply and report the database up to date: it says where it
    // looked instead, with the configuration's exit code, before connecting.
    fn no_migrations_directory(kind: Db) {
        let p = Project::new(kind);
        std::fs::remove_dir(p.path().join("migrations")).expect("rmdir");
        for args in [
            &["schema", "upgrade", "head"][..],
            &["schema", "downgrade", "base"],
            &["schema", "check"],
        ] {
            let run = p.run(args);
            assert_refused(&p, &run, 3, "there is no migrations directory at");
            assert!(run.stderr.contains("migrations_dir in datamig.toml"), "{run:?}");
        }
        // Status only reads: it says the same, and succeeds.
        let run = p.run(&["schema", "status"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains("there is no migrations directory at"), "{run:?}");
    }
}

each_db! {
    // A NUL byte hung SQLite's parser for good (schema upgrade and schema test
    // spun at full CPU holding the schema lock), PostgreSQL failed with "invalid
    // message format", and `schema check --no-database` called the file fine.
    fn a_nul_byte_in_a_migration_is_refused_by_the_loader_naming_the_offset(kind: Db) {
        let p = Project::new(kind);
        p.migration(V1, "create_users", "CREATE TABLE users (id INT);\0\n", "DROP TABLE users;\n");
        for args in [
            &["schema", "upgrade"][..],
            &["schema", "test"],
            &["schema", "check"],
            &["schema", "check", "--no-database"],
            &["schema", "upgrade", "--dry-run"],
        ] {
            let mut child = p.command(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{args:?} hangs on a NUL byte");
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let run = crate::support::to_run(child.wait_with_output().unwrap());
            assert_refused(&p, &run, 5, &format!("migrations/{V1}_create_users.up.sql: holds a NUL byte at offset 28"));
        }
    }

    // An up file that is a directory, or a link to nothing, exited 1 and
    // printed the OS's message twice.
    fn an_up_file_that_is_a_directory_or_a_dangling_link_is_an_invalid_migration(kind: Db) {
        let p = Project::new(kind);
        let dir = p.path().join("migrations");
        std::fs::create_dir(dir.join(format!("{V1}_create_users.up.sql"))).unwrap();
        std::fs::write(dir.join(format!("{V1}_create_users.down.sql")), "DROP TABLE users;\n").unwrap();
        let run = p.run(&["schema", "upgrade"]);
        assert_refused(&p, &run, 5, "is a directory, not a file");
        std::fs::remove_dir(dir.join(format!("{V1}_create_users.up.sql"))).unwrap();
        std::os::unix::fs::symlink("/nonexistent/up.sql", dir.join(format!("{V1}_create_users.up.sql"))).unwrap();
        let run = p.run(&["schema", "upgrade"]);
        assert_refused(&p, &run, 5, "is a symbolic link to nothing");
    }

    // An unedited template (comments only) passed `schema check` and was
    // applied as a no-op; only a 0-byte file was flagged, as a style note.
    fn an_up_file_without_a_statement_is_refused_by_check_and_upgrade(kind: Db) {
        let p = Project::new(kind);
        p.ok(&["schema", "new", "create_things"]);
        for args in [&["schema", "check", "--no-database"][..], &["schema", "upgrade"]] {
            let run = p.run(args);
            assert_refused(&p, &run, 5, "holds no SQL statement, only comments (an unedited template?)");
        }
        for f in std::fs::read_dir(p.path().join("migrations")).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        p.migration(V1, "create_users", "", "DROP TABLE users;\n");
        let run = p.run(&["schema", "upgrade"]);
        assert_refused(&p, &run, 5, "is empty; write the schema change in it");
    }

    fn a_version_that_is_no_timestamp_runs_with_a_style_note(kind: Db) {
        // Any integer is a version (sqlx's and golang-migrate's are); at second
        // 60 it is no UTC timestamp, which datamig's own names are.
        let p = Project::new(kind);
        p.migration(20240101000060, "create_users", "CREATE TABLE users (id INT);\n", "DROP TABLE users;\n");
        let up = p.ok(&["schema", "upgrade"]);
        assert!(!up.stderr.contains("not named"), "no note on every command: {up:?}");
        let check = p.ok(&["schema", "check"]);
        assert!(check.stdout.contains("note: 1 migration(s) are not named as datamig names new ones"), "{check:?}");
    }
}

each_db! {
    // The PostgreSQL driver's warning about a parameter it does not know
    // printed its value (`?sslpassword=S3cret` in text and JSON logs), and a
    // mistyped `?passwd=S3cret` reached datamig's own `error:` line.
    fn a_secret_in_a_url_parameter_is_never_shown(kind: Db) {
        let p = Project::new(kind);
        simple(&p);
        let mut url = crate::support::url_parts(&p.db.url);
        let secret_params = if kind == Db::Sqlite {
            vec!["passwd=S3cret"]
        } else {
            vec!["sslpassword=S3cret", "passwd=S3cret", "password=S3cret", "x=S3cret&sslmode=bogus"]
        };
        for query in secret_params {
            url.set_query(Some(query));
            for format in ["text", "json"] {
                let run = p.run(&["--log-format", format, "--database-url", url.as_str(), "schema", "status"]);
                assert!(!run.all().contains("S3cret"), "{query} ({format}): {run:?}");
                assert!(!run.all().contains("panicked"), "{run:?}");
                if query.contains("bogus") {
                    assert_eq!(run.code, 3, "{run:?}");
                    assert!(run.stderr.contains("`sslmode` is not one of"), "{run:?}");
                } else if kind == Db::Sqlite {
                    assert_eq!(run.code, 3, "{run:?}");
                    assert!(run.stderr.contains("parameter `passwd`, which SQLite does not take"), "{run:?}");
                } else if query.starts_with("password") {
                    assert_eq!(run.code, 0, "{run:?}");
                } else {
                    assert_eq!(run.code, 0, "{run:?}");
                    assert!(run.stderr.contains("is not one its driver takes, and is ignored (its value is not shown)"), "{run:?}");
                }
            }
            // The error line of a failed connection shows the URL masked.
            let mut gone = url.clone();
            if kind != Db::Sqlite && !query.contains("bogus") {
                gone.set_path("/no_such_database_datamig");
                let run = p.run(&["--database-url", gone.as_str(), "schema", "status"]);
                assert!(!run.all().contains("S3cret"), "{run:?}");
                assert!(run.stderr.contains("=***"), "{run:?}");
            }
        }
        assert!(!p.db.table_exists("users"), "nothing was applied");
    }
}

each_db! {
    // A datamig.toml that is not UTF-8 exited 1 (the README says 3); a TOML
    // syntax error took two lines and a .env error named no line;
    // `--connect-timeout 0s` exited 4 where `--max-runtime 0s` exits 2.
    fn bad_settings_files_and_a_zero_connect_timeout_are_one_line_with_their_code(kind: Db) {
        let p = Project::new(kind);
        simple(&p);
        let toml = p.path().join("datamig.toml");
        std::fs::write(&toml, b"\xff\xfe").unwrap();
        let run = p.run(&["schema", "upgrade"]);
        assert_refused(&p, &run, 3, "datamig.toml is not UTF-8 text");
        std::fs::write(&toml, "default_env = \"x\"\n[env.x\ndatabase_url = 1\n").unwrap();
        let run = p.run(&["schema", "upgrade"]);
        assert_refused(&p, &run, 3, "datamig.toml is invalid at line 2, column 7");
        std::fs::remove_file(&toml).unwrap();
        std::fs::write(p.path().join(".env"), "A=1\nB C=secretpw\n").unwrap();
        let run = p.run(&["schema", "upgrade"]);
        assert_refused(&p, &run, 3, ".env has a malformed line (line 2)");
        std::fs::remove_file(p.path().join(".env")).unwrap();
        let run = p.run(&["--connect-timeout", "0s", "schema", "upgrade"]);
        assert_refused(&p, &run, 2, "`0s` is zero");
        let run = p.run(&["--connect-timeout", "0s", "schema", "status"]);
        assert_eq!(run.code, 2, "{run:?}");
    }
}
