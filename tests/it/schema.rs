//! `datamig schema …` on each database, as a user runs it.

use crate::each_db;
use crate::support::{to_run, Db, Project};

const V1: i64 = 20260101000000;
const V2: i64 = 20260102000000;
const V3: i64 = 20260103000000;

fn drop_index(kind: Db, index: &str, table: &str) -> String {
    match kind {
        Db::MySql => format!("DROP INDEX {index} ON {table};"),
        _ => format!("DROP INDEX {index};"),
    }
}

fn sleep_sql(kind: Db) -> &'static str {
    match kind {
        Db::Postgres => "SELECT pg_sleep(0.3);",
        Db::MySql => "SELECT SLEEP(0.3);",
        // No sleep in SQLite: count to a million instead.
        Db::Sqlite => "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) SELECT count(*) FROM c;",
    }
}

/// Three ordinary steps: a table, a column with an index, a second table.
fn standard_migrations(p: &Project) {
    let kind = p.db.kind;
    p.migration(
        V1,
        "create_users",
        "CREATE TABLE users (id BIGINT PRIMARY KEY, email VARCHAR(255) NOT NULL);\n",
        "DROP TABLE users;\n",
    );
    p.migration(
        V2,
        "add_email_normalized_to_users",
        "ALTER TABLE users ADD COLUMN email_normalized VARCHAR(255);\nCREATE INDEX users_email_normalized ON users (email_normalized);\n",
        &format!("{}\nALTER TABLE users DROP COLUMN email_normalized;\n", drop_index(kind, "users_email_normalized", "users")),
    );
    p.migration(
        V3,
        "create_sessions",
        "CREATE TABLE sessions (id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, created_at BIGINT NOT NULL);\n",
        "DROP TABLE sessions;\n",
    );
}

each_db! {
    fn upgrade_downgrade_round_trip(kind: Db) {
        let p = Project::new(kind);
        standard_migrations(&p);
        let run = p.ok(&["schema", "upgrade", "head"]);
        assert!(run.stdout.contains("applied 3 migration(s)"), "{run:?}");
        assert_eq!(p.applied_versions(), vec![V1, V2, V3]);
        let first = p.db.schema_dump();
        assert!(first.iter().any(|l| l.starts_with("users.email_normalized")), "{first:?}");

        let status = p.ok(&["schema", "status"]);
        assert!(status.stdout.contains("3 applied, 0 pending"), "{status:?}");
        assert!(p.ok(&["schema", "current"]).stdout.contains(&format!("{V3}_create_sessions")));

        p.ok(&["schema", "downgrade", "-1"]);
        assert_eq!(p.applied_versions(), vec![V1, V2]);
        assert!(!p.db.table_exists("sessions"));
        p.ok(&["schema", "downgrade", &V1.to_string()]);
        assert_eq!(p.applied_versions(), vec![V1]);
        p.ok(&["schema", "downgrade", "base"]);
        assert_eq!(p.applied_versions(), Vec::<i64>::new());
        assert!(!p.db.table_exists("users"));
        assert!(p.ok(&["schema", "current"]).stdout.contains("base"));

        p.ok(&["schema", "upgrade", &V2.to_string()]);
        assert_eq!(p.applied_versions(), vec![V1, V2]);
        p.ok(&["schema", "upgrade"]);
        assert_eq!(p.db.schema_dump(), first, "downgrade base + upgrade head must give the same schema");

        let history = p.ok(&["schema", "history"]);
        assert_eq!(history.stdout.matches("upgrade ").count(), 6, "{history:?}");
        assert_eq!(history.stdout.matches("downgrade ").count(), 3, "{history:?}");
        // Who and how long are recorded with each migration.
        let rows = p.db.query("SELECT applied_by, duration_ms FROM datamig_schema_history");
        assert!(rows.iter().all(|r| r[0].contains("pid ") && r[1].parse::<i64>().is_ok()), "{rows:?}");
    }

    fn eight_concurrent_upgrades_apply_each_migration_once(kind: Db) {
        let p = Project::new(kind);
        p.migration(V1, "create_counter", "CREATE TABLE counter (n INT NOT NULL);\n", "DROP TABLE counter;\n");
        p.migration(
            V2,
            "insert_counter_row",
            &format!("INSERT INTO counter (n) VALUES (1);\n{}\n", sleep_sql(kind)),
            "DELETE FROM counter;\n",
        );
        p.migration(V3, "create_other", "CREATE TABLE other (id INT);\n", "DROP TABLE other;\n");
        for run in p.run_concurrently(8, &["schema", "upgrade", "head"]) {
            assert_eq!(run.code, 0, "{run:?}");
        }
        assert_eq!(p.applied_versions(), vec![V1, V2, V3]);
        assert_eq!(p.db.scalar("SELECT count(*) FROM counter"), 1, "the insert migration ran more than once");
        assert_eq!(p.db.scalar("SELECT count(*) FROM datamig_schema_log WHERE action = 'upgrade'"), 3);
    }

    fn edited_applied_migration_is_refused_until_repaired(kind: Db) {
        let p = Project::new(kind);
        standard_migrations(&p);
        p.ok(&["schema", "upgrade", &V2.to_string()]);
        let up = p.path().join(format!("migrations/{V1}_create_users.up.sql"));
        let original = std::fs::read_to_string(&up).unwrap();

        // A BOM and CRLF line endings are not an edit.
        std::fs::write(&up, format!("\u{feff}{}", original.replace('\n', "\r\n"))).unwrap();
        p.ok(&["schema", "check", "--allow-pending"]);

        std::fs::write(&up, original.replace("VARCHAR(255)", "VARCHAR(320)")).unwrap();
        let run = p.run(&["schema", "upgrade"]);
        assert_eq!(run.code, 5, "{run:?}");
        assert!(run.stderr.contains("has changed") && run.stderr.contains("schema repair"), "{run:?}");
        assert_eq!(p.applied_versions(), vec![V1, V2], "nothing may be applied past an edited migration");
        assert!(!p.db.table_exists("sessions"));
        assert!(p.ok(&["schema", "status"]).stdout.contains("changed since applied"));
        assert_eq!(p.run(&["schema", "check", "--allow-pending"]).code, 5);

        let repair = p.ok(&["schema", "repair"]);
        assert!(repair.stdout.contains("accepted the edited file"), "{repair:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM datamig_schema_log WHERE action = 'repair'"), 1);
        p.ok(&["schema", "upgrade"]);
        assert_eq!(p.applied_versions(), vec![V1, V2, V3]);
        assert!(p.ok(&["schema", "repair"]).stdout.contains("nothing to repair"));
    }

    fn failing_migration_rolls_back_or_is_marked_dirty(kind: Db) {
        let p = Project::new(kind);
        p.migration(V1, "create_users", "CREATE TABLE users (id BIGINT PRIMARY KEY);\n", "DROP TABLE users;\n");
        p.migration(
            V2,
            "create_broken",
            "CREATE TABLE broken (id INT);\nINSERT INTO no_such_table VALUES (1);\n",
            "DROP TABLE broken;\n",
        );
        let run = p.run(&["schema", "upgrade"]);
        assert!(run.stderr.contains(&format!("{V2}_create_broken")), "{run:?}");
        assert!(run.stderr.contains(&format!("{V1}_create_users")), "the partial report names what was applied: {run:?}");
        if kind == Db::MySql {
            // DDL commits implicitly: the table stays, and the record says so.
            assert_eq!(run.code, 7, "{run:?}");
            assert!(p.db.table_exists("broken"));
            assert!(p.ok(&["schema", "status"]).stdout.contains("dirty"));
            let again = p.run(&["schema", "upgrade"]);
            assert_eq!(again.code, 7, "a dirty database must be refused: {again:?}");
            assert!(again.stderr.contains("--dirty reverted"), "{again:?}");
            assert_eq!(p.run(&["schema", "downgrade", "base"]).code, 7);
            // The operator undoes it by hand and says so.
            p.db.exec("DROP TABLE broken");
            p.ok(&["schema", "repair", "--dirty", "reverted"]);
        } else {
            assert_eq!(run.code, 6, "{run:?}");
            assert!(run.stderr.contains("rolled back"), "{run:?}");
            assert!(!p.db.table_exists("broken"), "a failed migration must leave no trace");
        }
        assert_eq!(p.applied_versions(), vec![V1]);
        p.migration(V2, "create_broken", "CREATE TABLE broken (id INT);\n", "DROP TABLE broken;\n");
        p.ok(&["schema", "upgrade"]);
        assert_eq!(p.applied_versions(), vec![V1, V2]);

        // A migration whose first statement fails changed nothing, on every database.
        p.migration(V3, "insert_nothing", "INSERT INTO no_such_table VALUES (1);\n", "SELECT 1;\n");
        let run = p.run(&["schema", "upgrade"]);
        assert_eq!(run.code, 6, "{run:?}");
        assert_eq!(p.applied_versions(), vec![V1, V2]);
        assert!(!p.ok(&["schema", "status"]).stdout.contains("dirty"));
    }

    fn dry_run_prints_sql_and_changes_nothing(kind: Db) {
        let p = Project::new(kind);
        standard_migrations(&p);
        let run = p.ok(&["schema", "upgrade", "--dry-run"]);
        assert!(run.stdout.contains(&format!("-- {V1}_create_users (up)\nCREATE TABLE users")), "{run:?}");
        let order: Vec<usize> = [V1, V2, V3].iter().map(|v| run.stdout.find(&v.to_string()).unwrap()).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {run:?}");
        assert!(!p.db.table_exists("users"));
        assert!(!p.db.table_exists("datamig_schema_history"), "dry run must not even create datamig's tables");

        p.ok(&["schema", "upgrade"]);
        let run = p.ok(&["schema", "downgrade", "-2", "--dry-run"]);
        assert!(run.stdout.find(&V3.to_string()) < run.stdout.find(&V2.to_string()), "newest first: {run:?}");
        assert!(!run.stdout.contains(&format!("{V1}_")), "{run:?}");
        assert_eq!(p.applied_versions(), vec![V1, V2, V3]);
    }

    fn out_of_order_migration_is_refused(kind: Db) {
        let p = Project::new(kind);
        p.migration(V2, "create_b", "CREATE TABLE b (id INT);\n", "DROP TABLE b;\n");
        p.ok(&["schema", "upgrade"]);
        p.migration(V1, "create_a", "CREATE TABLE a (id INT);\n", "DROP TABLE a;\n");
        let run = p.run(&["schema", "upgrade"]);
        assert_eq!(run.code, 5, "{run:?}");
        assert!(run.stderr.contains(&format!("{V1}_create_a")) && run.stderr.contains(&format!("{V2}_create_b")), "{run:?}");
        assert!(!p.db.table_exists("a"));
        assert_eq!(p.run(&["schema", "check"]).code, 5);
        p.ok(&["schema", "upgrade", "--allow-out-of-order"]);
        assert_eq!(p.applied_versions(), vec![V1, V2]);
    }

    fn check_fails_on_pending_unless_allowed(kind: Db) {
        let p = Project::new(kind);
        standard_migrations(&p);
        let run = p.run(&["schema", "check"]);
        assert_eq!(run.code, 9, "{run:?}");
        assert!(run.stderr.contains("3 migration(s) pending"), "{run:?}");
        p.ok(&["schema", "check", "--allow-pending"]);
        p.ok(&["schema", "upgrade"]);
        assert!(p.ok(&["schema", "check"]).stdout.contains("ok: 3 migration(s), 0 pending"));
        // A file that is not a migration name.
        std::fs::write(p.path().join("migrations/add_things.sql"), "SELECT 1;").unwrap();
        let run = p.run(&["schema", "check"]);
        assert_eq!(run.code, 5, "{run:?}");
        assert!(run.stderr.contains("add_things.sql"), "{run:?}");
    }

    fn schema_test_finds_a_down_that_does_not_reverse_its_up(kind: Db) {
        let p = Project::new(kind);
        standard_migrations(&p);
        let run = p.ok(&["schema", "test"]);
        assert!(run.stdout.contains("ok: 3 migration(s)"), "{run:?}");
        assert!(!p.db.table_exists("datamig_schema_history"), "schema test must not touch the real database");

        // This down forgets the index.
        p.migration(
            V2,
            "add_email_normalized_to_users",
            "ALTER TABLE users ADD COLUMN email_normalized VARCHAR(255);\nCREATE INDEX users_email_normalized ON users (email_normalized);\nCREATE INDEX users_email ON users (email);\n",
            &format!("{}\nALTER TABLE users DROP COLUMN email_normalized;\n", drop_index(kind, "users_email_normalized", "users")),
        );
        let run = p.run(&["schema", "test"]);
        assert_eq!(run.code, 10, "{run:?}");
        assert!(run.stderr.contains(&format!("{V2}_add_email_normalized_to_users")), "{run:?}");
        assert!(run.stderr.contains("+ index") && run.stderr.contains("users_email"), "{run:?}");
        assert!(crate::support::scratch_is_gone(&p.db, &run.stdout), "the scratch database is dropped: {run:?}");
    }

    fn lock_held_elsewhere_times_out_and_names_the_holder(kind: Db) {
        let p = Project::new(kind);
        standard_migrations(&p);
        let run = crate::support::hold_schema_lock(&p.db, || p.run(&["schema", "upgrade", "--lock-timeout", "1s"]));
        assert_eq!(run.code, 8, "{run:?}");
        assert!(run.stderr.contains("held by"), "{run:?}");
        if kind == Db::Postgres {
            // It said `server pid ?`: the pid was read as text.
            let pid = run.stderr.split("server pid ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("");
            assert!(!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()), "{run:?}");
        }
        assert_eq!(p.applied_versions(), Vec::<i64>::new());
        assert!(!p.db.table_exists("users"));
        // Released: it goes through.
        p.ok(&["schema", "upgrade", "--lock-timeout", "1s"]);
    }

    fn new_writes_a_pair_from_the_template(kind: Db) {
        let p = Project::new(kind);
        let run = p.ok(&["schema", "new", "create_orders"]);
        assert_eq!(run.stdout.matches("created migrations/").count(), 2, "{run:?}");
        std::fs::write(p.path().join("migrations/template.up.sql"), "-- up of {name} ({version})\nSELECT 1;\n").unwrap();
        std::fs::write(p.path().join("migrations/template.down.sql"), "-- down of {name}\nSELECT 1;\n").unwrap();
        p.ok(&["schema", "new", "add_total_to_orders"]);
        let files: Vec<String> = std::fs::read_dir(p.path().join("migrations"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files.iter().filter(|f| f.ends_with(".up.sql") && !f.starts_with("template")).count(), 2, "{files:?}");
        let up = files.iter().find(|f| f.ends_with("_add_total_to_orders.up.sql")).unwrap();
        let text = std::fs::read_to_string(p.path().join("migrations").join(up)).unwrap();
        assert!(text.starts_with("-- up of add_total_to_orders (2"), "{text}");
        // The default template holds only comments: refused until it is written.
        let unedited = p.run(&["schema", "upgrade"]);
        assert_eq!(unedited.code, 5, "{unedited:?}");
        assert!(unedited.stderr.contains("_create_orders.up.sql: holds no SQL statement"), "{unedited:?}");
        let first = files.iter().find(|f| f.ends_with("_create_orders.up.sql")).unwrap();
        let path = p.path().join("migrations").join(first);
        let template = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{template}CREATE TABLE orders (id INT);\n")).unwrap();
        p.ok(&["schema", "upgrade"]);
        assert_eq!(p.applied_versions().len(), 2);
    }
}

#[test]
fn postgres_no_transaction_migration_runs_create_index_concurrently() {
    let p = Project::new(Db::Postgres);
    p.migration(
        V1,
        "create_users",
        "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT);\n",
        "DROP TABLE users;\n",
    );
    p.migration(
        V2,
        "index_users_email",
        "-- datamig:no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);\nCREATE INDEX CONCURRENTLY users_email_lower ON users (lower(email));\n",
        "-- datamig:no-transaction\nDROP INDEX CONCURRENTLY users_email;\nDROP INDEX CONCURRENTLY users_email_lower;\n",
    );
    p.ok(&["schema", "upgrade"]);
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM pg_indexes WHERE tablename = 'users'"),
        3
    );
    p.ok(&["schema", "downgrade", "-1"]);
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM pg_indexes WHERE tablename = 'users'"),
        1
    );
}

#[test]
fn config_file_profiles_and_dotenv_pick_the_database() {
    let p = Project::new(Db::Sqlite);
    standard_migrations(&p);
    let other = p.path().join("other.db");
    std::fs::write(
        p.path().join("datamig.toml"),
        format!(
            "[env.staging]\ndatabase_url = \"sqlite:{}\"\n",
            other.display()
        ),
    )
    .unwrap();
    p.ok(&["--env", "staging", "schema", "upgrade"]);
    assert!(other.exists());
    assert!(!p.db.table_exists("users"), "--env wins over DATABASE_URL");
    let run = p.run(&["--env", "production", "schema", "status"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("staging"),
        "lists the known envs: {run:?}"
    );

    // .env is read when DATABASE_URL is not set.
    let dotenv_db = p.path().join("dotenv.db");
    std::fs::write(
        p.path().join(".env"),
        format!("DATABASE_URL=sqlite:{}\n", dotenv_db.display()),
    )
    .unwrap();
    let out = p
        .command(&["schema", "upgrade"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", to_run(out));
    assert!(dotenv_db.exists());
}

each_db! {
    fn repository_migrations_apply_and_reverse(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
        p.ok(&["schema", "check", "--no-database"]);
        p.ok(&["schema", "test"]);
        p.ok(&["schema", "upgrade"]);
        assert!(p.db.table_exists("users") && p.db.table_exists("sessions"));
        p.ok(&["schema", "check"]);
    }
}

/// The blocking `pg_advisory_lock` deadlocks with a peer's `CREATE INDEX
/// CONCURRENTLY` (the index build waits for the waiter's snapshot); the polled
/// `pg_try_advisory_lock` must not.
#[test]
fn postgres_waiting_runners_do_not_deadlock_create_index_concurrently() {
    let p = Project::new(Db::Postgres);
    p.migration(
        V1,
        "create_users",
        "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT);\nINSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 200000) g;\n",
        "DROP TABLE users;\n",
    );
    p.migration(
        V2,
        "index_users_email",
        "-- datamig:no-transaction\nCREATE INDEX CONCURRENTLY users_email ON users (email);\n",
        "-- datamig:no-transaction\nDROP INDEX CONCURRENTLY users_email;\n",
    );
    p.ok(&["schema", "upgrade", &V1.to_string()]);
    for run in p.run_concurrently(4, &["schema", "upgrade", "--lock-timeout", "60s"]) {
        assert_eq!(run.code, 0, "{run:?}");
    }
    assert_eq!(p.applied_versions(), vec![V1, V2]);
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM pg_indexes WHERE indexname = 'users_email'"),
        1
    );
}

/// A migration that takes a few seconds to apply, on each database.
fn slow_up(kind: Db) -> &'static str {
    match kind {
        Db::Postgres => "CREATE TABLE slow (id INT);\nSELECT pg_sleep(5);\n",
        Db::MySql => "CREATE TABLE slow (id INT);\nDO SLEEP(5);\n",
        Db::Sqlite => {
            "CREATE TABLE slow (id INT);\nWITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30000000) \
             INSERT INTO slow SELECT count(*) FROM c;\n"
        }
    }
}

each_db! {
    // An interrupted `schema test` (SIGTERM, Ctrl-C) left its scratch database
    // (or, for SQLite, its scratch directory) behind.
    fn an_interrupted_schema_test_drops_its_scratch_database(kind: Db) {
        use std::io::BufRead as _;
        let p = Project::new(kind);
        p.migration(V1, "create_slow", slow_up(kind), "DROP TABLE slow;\n");
        for signal in ["-TERM", "-INT"] {
            let mut child = p
                .command(&["schema", "test"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut first = String::new();
            stdout.read_line(&mut first).unwrap();
            assert!(first.starts_with("scratch database: "), "{first}");
            std::thread::sleep(std::time::Duration::from_millis(500));
            std::process::Command::new("kill").arg(signal).arg(child.id().to_string()).status().unwrap();
            let run = crate::support::to_run(child.wait_with_output().unwrap());
            assert_eq!(run.code, 130, "{signal}: {run:?}");
            assert!(run.stderr.contains("schema test interrupted; its scratch database is dropped"), "{run:?}");
            assert!(crate::support::scratch_is_gone(&p.db, &first), "{signal}: the scratch database is left behind");
        }
    }

    // Scratch databases that a killed `schema test` left are reported by the
    // next one, and dropped with --drop-leftovers.
    fn scratch_databases_left_behind_are_reported_and_dropped_on_request(kind: Db) {
        let p = Project::new(kind);
        p.migration(V1, "create_users", "CREATE TABLE users (id INT);\n", "DROP TABLE users;\n");
        // As a process killed long ago left it: pid 4294967 is beyond Linux's pid_max.
        let name = format!("datamig_scratch_4294967_1000000000_{:08x}", rand::random::<u32>());
        let dir = std::env::temp_dir().join(&name);
        match kind {
            Db::Sqlite => {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("scratch.db"), b"").unwrap();
            }
            _ => p.db.exec(&format!("CREATE DATABASE {name}")),
        }
        let run = p.ok(&["schema", "test"]);
        assert!(run.stderr.contains("left behind by earlier schema tests that did not end"), "{run:?}");
        assert!(run.stderr.contains(&name), "{run:?}");
        assert!(run.stderr.contains("`datamig schema test --drop-leftovers` drops them"), "{run:?}");
        let run = p.ok(&["schema", "test", "--drop-leftovers"]);
        assert!(run.stderr.contains("dropped ") && run.stderr.contains(&name), "{run:?}");
        let exists = match kind {
            Db::Sqlite => dir.exists(),
            Db::Postgres => p.db.scalar(&format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")) > 0,
            Db::MySql => p.db.scalar(&format!("SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{name}'")) > 0,
        };
        assert!(!exists, "{name} is still there");
    }
}

each_db! {
    // The failed attempt that left a migration dirty was in neither the
    // history nor the log, `schema status` counted it as applied, and `datamig
    // run` went ahead over the half-applied schema.
    fn a_dirty_migration_is_logged_counted_and_stops_data_jobs(kind: Db) {
        let p = Project::new(kind);
        p.copy_project_migrations();
        p.ok(&["schema", "upgrade"]);
        p.ok(&["run", "seed_demo_users", "--arg", "rows=100"]);
        // On MariaDB the CREATE commits at once and the file is left dirty; on
        // the others it rolls back, and the failure is logged all the same.
        p.migration(20261231000000, "create_broken", "CREATE TABLE broken (id INT);\nINSERT INTO no_such_table VALUES (1);\n", "DROP TABLE broken;\n");
        let run = p.run(&["schema", "upgrade"]);
        let history = p.ok(&["schema", "history"]).stdout;
        assert!(history.contains("upgrade failed") && history.contains("create_broken"), "{history}");
        assert!(history.contains("statement 2 of 2 (line 2)") || kind != Db::MySql, "{history}");
        assert!(history.to_lowercase().contains("no_such_table"), "{history}");
        let log = p.db.query("SELECT action, actor FROM datamig_schema_log WHERE action = 'upgrade failed'");
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(log[0][1].contains(" pid "), "by whom: {log:?}");
        // The history's columns line up: every line's `by` is at one place.
        let at: Vec<usize> = history.lines().map(|l| l.find(" by ").unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] == w[1]), "{history}");
        if kind != Db::MySql {
            assert_eq!(run.code, 6, "{run:?}");
            return;
        }
        assert_eq!(run.code, 7, "{run:?}");
        assert!(run.stderr.contains("MySQL/MariaDB commits DDL at once, so a file with DDL runs statement by statement"), "{run:?}");
        let status = p.ok(&["schema", "status"]).stdout;
        assert!(status.contains("8 applied, 1 dirty"), "{status}");
        let job = p.run(&["run", "backfill_emails"]);
        assert_eq!(job.code, 7, "{job:?}");
        assert!(job.stderr.contains("create_broken failed halfway"), "{job:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users WHERE email_normalized IS NOT NULL"), 0, "the job ran");
        // `--dirty reverted` says nothing of it is in place: the table it made is.
        let repair = p.run(&["schema", "repair", "--dirty", "reverted"]);
        assert_eq!(repair.code, 7, "{repair:?}");
        assert!(repair.stderr.contains("table broken exists"), "{repair:?}");
        p.db.exec("DROP TABLE broken");
        p.ok(&["schema", "repair", "--dirty", "reverted"]);
        p.ok(&["run", "backfill_emails"]);
    }

    // A no-transaction file that failed at its second statement said "this
    // database cannot roll DDL back" on PostgreSQL and SQLite, which can.
    fn a_no_transaction_file_that_fails_halfway_says_why_it_ran_outside_one(kind: Db) {
        let p = Project::new(kind);
        p.migration(V1, "create_users", "-- datamig:no-transaction\nCREATE TABLE users (id INT);\nINSERT INTO no_such_table VALUES (1);\n", "DROP TABLE users;\n");
        let run = p.run(&["schema", "upgrade"]);
        assert_eq!(run.code, 7, "{run:?}");
        assert!(run.stderr.contains("the file runs outside a transaction, as its first line `-- datamig:no-transaction` asks"), "{run:?}");
        assert!(!run.stderr.contains("cannot roll DDL back"), "{run:?}");
    }

    // A schema test whose migration fails printed no FAIL line, and on MariaDB
    // advised `schema repair` for the scratch database it had dropped.
    fn a_failing_migration_in_schema_test_gets_a_fail_line_and_no_repair_advice(kind: Db) {
        let p = Project::new(kind);
        p.migration(V1, "create_users", "CREATE TABLE users (id INT);\nINSERT INTO no_such_table VALUES (1);\n", "DROP TABLE users;\n");
        let run = p.run(&["schema", "test"]);
        assert_eq!(run.code, 10, "{run:?}");
        assert!(run.stdout.contains(&format!("FAIL {V1}_create_users")), "{run:?}");
        assert!(!run.all().contains("schema repair"), "{run:?}");
        assert!(crate::support::scratch_is_gone(&p.db, &run.stdout), "{run:?}");
    }
}

/// A MariaDB migration of data changes alone ran outside a transaction, so a
/// failure at its second statement left the first committed (and the file
/// dirty); sqlx-cli rolls the same file back.
#[test]
fn a_mariadb_migration_without_ddl_runs_in_one_transaction_and_rolls_back() {
    let p = Project::new(Db::MySql);
    p.migration(
        V1,
        "create_keep",
        "CREATE TABLE e2_keep (id INT);\n",
        "DROP TABLE e2_keep;\n",
    );
    p.migration(
        V2,
        "insert_keep",
        "INSERT INTO e2_keep VALUES (42);\nINSERT INTO e2_missing VALUES (1);\n",
        "DELETE FROM e2_keep;\n",
    );
    let run = p.run(&["schema", "upgrade"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains("it was rolled back, nothing changed"),
        "{run:?}"
    );
    assert!(run.stderr.contains("statement 2 of 2"), "{run:?}");
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM e2_keep"),
        0,
        "the first INSERT stayed"
    );
    assert_eq!(p.applied_versions(), vec![V1]);
    assert!(!p.ok(&["schema", "status"]).stdout.contains("dirty"));
    p.migration(
        V2,
        "insert_keep",
        "INSERT INTO e2_keep VALUES (42);\n",
        "DELETE FROM e2_keep;\n",
    );
    p.ok(&["schema", "upgrade"]);
    assert_eq!(p.db.scalar("SELECT count(*) FROM e2_keep"), 1);
}

/// PostgreSQL's `CREATE INDEX CONCURRENTLY` in a transaction fails; the
/// message now says how to run it outside one.
#[test]
fn create_index_concurrently_in_a_transaction_points_at_no_transaction() {
    let p = Project::new(Db::Postgres);
    p.migration(
        V1,
        "create_users",
        "CREATE TABLE users (id INT);\n",
        "DROP TABLE users;\n",
    );
    p.migration(
        V2,
        "index_users",
        "CREATE INDEX CONCURRENTLY users_id ON users (id);\n",
        "DROP INDEX users_id;\n",
    );
    let run = p.run(&["schema", "upgrade"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr
            .contains("make `-- datamig:no-transaction` the file's first line"),
        "{run:?}"
    );
}

// A migration that waited too long for a lock was blamed on its file ("Fix …
// and run the command again"), where waiting and retrying is the answer. (On
// SQLite a migration waits for the writer up to its busy timeout, 30 s: there
// is no lock timeout of its own to run out yet.)
fn a_migration_blocked_by_a_lock_says_to_run_again_not_to_fix_the_file(kind: Db) {
    let p = Project::new(kind);
    p.migration(
        V1,
        "create_users",
        "CREATE TABLE users (id INT);\n",
        "DROP TABLE users;\n",
    );
    p.ok(&["schema", "upgrade"]);
    let (set, alter) = match kind {
        Db::Postgres => (
            "SET lock_timeout = '300ms';\n",
            "ALTER TABLE users ADD COLUMN email TEXT;\n",
        ),
        Db::MySql => (
            "SET SESSION lock_wait_timeout = 1;\n",
            "ALTER TABLE users ADD COLUMN email TEXT;\n",
        ),
        Db::Sqlite => unreachable!("servers only"),
    };
    p.migration(
        V2,
        "add_email_to_users",
        &format!("{set}{alter}"),
        "ALTER TABLE users DROP COLUMN email;\n",
    );
    let hold = match kind {
        Db::Sqlite => unreachable!("servers only"),
        Db::Postgres => "BEGIN; SELECT * FROM users",
        Db::MySql => "BEGIN; SELECT * FROM users",
    };
    let (held, is_held) = std::sync::mpsc::channel();
    let db = crate::support::TestDb::attach(&p.db.url);
    let holder = std::thread::spawn(move || db.hold(hold, std::time::Duration::from_secs(8), held));
    is_held.recv().unwrap();
    let run = p.run(&["schema", "upgrade"]);
    holder.join().unwrap();
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains(
            "Another session held a lock it needed: the file is fine, run the command again"
        ),
        "{run:?}"
    );
    assert!(!run.stderr.contains("Fix "), "{run:?}");
    p.ok(&["schema", "upgrade"]);
}

crate::each_server! {
    a_migration_blocked_by_a_lock_says_to_run_again_not_to_fix_the_file: a_migration_blocked_by_a_lock_says_to_run_again_not_to_fix_the_file;
}
