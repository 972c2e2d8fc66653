//! Moving over from sqlx-cli, golang-migrate, refinery and dbmate: each tool's
//! migration directory read as it is (hyphens, dots and spaces in names,
//! integer versions, single-file and sectioned migrations), a database the
//! tool migrated taken over with `schema adopt`, and datamig going on from
//! there, on all three databases.
//!
//! sqlx-cli's database is migrated by sqlx itself (its `Migrator`, which
//! `sqlx migrate run` runs). golang-migrate, refinery and dbmate cannot be
//! installed here (neither crates.io nor Debian has them): their bookkeeping
//! tables are reproduced exactly as each tool creates and fills them, per
//! database, from their sources.

use std::str::FromStr;

use sqlx::Connection;

use crate::each_db;
use crate::support::{block_on, Db, Project};

fn write(p: &Project, file: &str, text: &str) {
    std::fs::write(p.path().join("migrations").join(file), text).unwrap();
}

/// The versions in datamig's history.
fn recorded(p: &Project) -> Vec<i64> {
    p.applied_versions()
}

/// sqlx's own migrator over the project's migrations.
fn sqlx_migrate(p: &Project) {
    block_on(async {
        let migrator = sqlx::migrate::Migrator::new(p.path().join("migrations"))
            .await
            .expect("sqlx reads the set");
        match p.db.kind {
            Db::Postgres => {
                let mut c = sqlx::PgConnection::connect(&p.db.url).await.unwrap();
                migrator.run(&mut c).await.expect("sqlx migrates");
            }
            Db::MySql => {
                let mut c = sqlx::MySqlConnection::connect(&p.db.url).await.unwrap();
                migrator.run(&mut c).await.expect("sqlx migrates");
            }
            Db::Sqlite => {
                let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&p.db.url)
                    .unwrap()
                    .create_if_missing(true);
                let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
                migrator.run(&mut c).await.expect("sqlx migrates");
            }
        }
    });
}

each_db! {
    fn a_database_sqlx_migrated_is_adopted_and_datamig_goes_on(kind: Db) {
        let p = Project::new(kind);
        // sqlx-cli's names: a single-file (irreversible) first step, a hyphen,
        // dots, a space; versions that are not timestamps of datamig's form.
        write(&p, "20240401000061_create-users.sql", "CREATE TABLE users (id BIGINT PRIMARY KEY, email VARCHAR(255));\n");
        write(&p, "20240401000062_add.orders.up.sql", "CREATE TABLE orders (id BIGINT PRIMARY KEY, user_id BIGINT);\n");
        write(&p, "20240401000062_add.orders.down.sql", "DROP TABLE orders;\n");
        write(&p, "20240401000063_add name to users.up.sql", "ALTER TABLE users ADD COLUMN name VARCHAR(100);\n");
        write(&p, "20240401000063_add name to users.down.sql", "ALTER TABLE users DROP COLUMN name;\n");
        sqlx_migrate(&p);
        assert_eq!(p.db.scalar("SELECT count(*) FROM _sqlx_migrations"), 3);

        // Not applied again: every command points at adopt.
        let up = p.run(&["schema", "upgrade"]);
        assert_eq!(up.code, 5, "{up:?}");
        assert!(up.stderr.contains("migrated by sqlx (_sqlx_migrations records 3 version(s))"), "{up:?}");
        assert!(up.stderr.contains("`datamig schema adopt --from sqlx`"), "{up:?}");
        let status = p.ok(&["schema", "status"]);
        assert!(status.stdout.contains("note: this database was migrated by sqlx"), "{status:?}");

        let dry = p.ok(&["schema", "adopt", "--from", "sqlx", "--dry-run"]);
        assert!(dry.stdout.contains("would record 20240401000061_create-users as applied"), "{dry:?}");
        assert!(dry.stdout.contains("would record 3 version(s) sqlx applied"), "{dry:?}");
        assert!(recorded(&p).is_empty(), "a dry run records nothing");

        let adopt = p.ok(&["schema", "adopt", "--from", "sqlx"]);
        assert!(adopt.stdout.contains("recorded 3 version(s) sqlx applied, running none; 0 pending"), "{adopt:?}");
        assert_eq!(recorded(&p), vec![20240401000061, 20240401000062, 20240401000063]);
        let again = p.ok(&["schema", "adopt", "--from", "sqlx"]);
        assert!(again.stdout.contains("nothing to adopt: datamig's history records the 3 version(s) already"), "{again:?}");
        assert!(p.ok(&["schema", "status"]).stdout.contains("3 applied, 0 pending"));
        // Old names are a style note, not an error.
        let check = p.ok(&["schema", "check"]);
        assert!(check.stdout.contains("note: 3 migration(s) are not named as datamig names new ones"), "{check:?}");

        // A new datamig migration applies; downgrade goes back to the first reversible step.
        p.migration(20261204130000, "add_phone_to_users", "ALTER TABLE users ADD COLUMN phone VARCHAR(20);\n", "ALTER TABLE users DROP COLUMN phone;\n");
        p.ok(&["schema", "upgrade"]);
        p.ok(&["schema", "downgrade", "20240401000061"]);
        assert_eq!(recorded(&p), vec![20240401000061]);
        assert!(!p.db.table_exists("orders"));
        let refused = p.run(&["schema", "downgrade", "base"]);
        assert_eq!(refused.code, 5, "{refused:?}");
        assert!(refused.stderr.contains("cannot revert 20240401000061_create-users: it is irreversible (it has no down file)"), "{refused:?}");
        assert_eq!(recorded(&p), vec![20240401000061], "nothing reverted");
    }

    fn an_edited_file_or_a_failed_sqlx_record_is_named_and_nothing_recorded(kind: Db) {
        let p = Project::new(kind);
        write(&p, "1_create_users.sql", "CREATE TABLE users (id BIGINT PRIMARY KEY);\n");
        write(&p, "2_create_orders.sql", "CREATE TABLE orders (id BIGINT PRIMARY KEY);\n");
        sqlx_migrate(&p);
        write(&p, "2_create_orders.sql", "CREATE TABLE orders (id BIGINT PRIMARY KEY, n INT);\n");
        let run = p.run(&["schema", "adopt", "--from", "sqlx"]);
        assert_eq!(run.code, 5, "{run:?}");
        assert!(run.stderr.contains("2_create_orders.sql: the file differs from the one sqlx applied"), "{run:?}");
        assert!(recorded(&p).is_empty());
        write(&p, "2_create_orders.sql", "CREATE TABLE orders (id BIGINT PRIMARY KEY);\n");
        p.db.exec("UPDATE _sqlx_migrations SET success = FALSE WHERE version = 2");
        let run = p.run(&["schema", "adopt", "--from", "sqlx"]);
        assert_eq!(run.code, 5, "{run:?}");
        assert!(run.stderr.contains("sqlx-cli recorded 2 (create orders) as failed"), "{run:?}");
        assert!(recorded(&p).is_empty());
        let wrong = p.run(&["schema", "adopt", "--from", "refinery"]);
        assert_eq!(wrong.code, 5, "{wrong:?}");
        assert!(wrong.stderr.contains("there is no refinery_schema_history in this database"), "{wrong:?}");
    }

    fn a_database_golang_migrate_migrated_is_adopted(kind: Db) {
        let p = Project::new(kind);
        write(&p, "000001_create_users.up.sql", "CREATE TABLE users (id BIGINT PRIMARY KEY);\n");
        write(&p, "000001_create_users.down.sql", "DROP TABLE users;\n");
        write(&p, "000002_create-orders.up.sql", "CREATE TABLE orders (id BIGINT PRIMARY KEY);\n");
        write(&p, "000002_create-orders.down.sql", "DROP TABLE orders;\n");
        write(&p, "000003_add_name.up.sql", "ALTER TABLE users ADD COLUMN name VARCHAR(100);\n");
        write(&p, "000003_add_name.down.sql", "ALTER TABLE users DROP COLUMN name;\n");
        // golang-migrate at version 2: its ups run, its table as it makes it.
        p.db.exec("CREATE TABLE users (id BIGINT PRIMARY KEY)");
        p.db.exec("CREATE TABLE orders (id BIGINT PRIMARY KEY)");
        match kind {
            Db::Postgres => p.db.exec("CREATE TABLE IF NOT EXISTS \"schema_migrations\" (version bigint not null primary key, dirty boolean not null)"),
            Db::MySql => p.db.exec("CREATE TABLE IF NOT EXISTS `schema_migrations` (version bigint not null primary key, dirty boolean not null)"),
            Db::Sqlite => {
                p.db.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version uint64,dirty bool)");
                p.db.exec("CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON schema_migrations (version)");
            }
        }
        p.db.exec("INSERT INTO schema_migrations (version, dirty) VALUES (2, TRUE)");
        let dirty = p.run(&["schema", "adopt", "--from", "golang-migrate"]);
        assert_eq!(dirty.code, 5, "{dirty:?}");
        assert!(dirty.stderr.contains("golang-migrate marked version 2 dirty"), "{dirty:?}");
        p.db.exec("UPDATE schema_migrations SET dirty = FALSE");
        let up = p.run(&["schema", "upgrade"]);
        assert!(up.stderr.contains("migrated by golang-migrate"), "{up:?}");
        let adopt = p.ok(&["schema", "adopt", "--from", "golang-migrate"]);
        assert!(adopt.stdout.contains("recorded 2 version(s) golang-migrate applied, running none; 1 pending"), "{adopt:?}");
        assert!(p.ok(&["schema", "status"]).stdout.contains("2 applied, 1 pending"));
        p.ok(&["schema", "upgrade"]);
        assert_eq!(recorded(&p), vec![1, 2, 3]);
        p.ok(&["schema", "downgrade", "base"]);
        assert!(recorded(&p).is_empty() && !p.db.table_exists("users"));
    }

    fn a_database_dbmate_migrated_is_adopted(kind: Db) {
        let p = Project::new(kind);
        write(&p, "20240101000000_create_users.sql", "-- migrate:up\nCREATE TABLE users (id BIGINT PRIMARY KEY);\n\n-- migrate:down\nDROP TABLE users;\n");
        write(&p, "20240102000000_create_orders.sql", "-- migrate:up\nCREATE TABLE orders (id BIGINT PRIMARY KEY);\n-- migrate:down\nDROP TABLE orders;\n");
        write(&p, "20240103000000_seed_admin.sql", "-- migrate:up\nINSERT INTO users (id) VALUES (1);\n-- migrate:down\n");
        p.db.exec("CREATE TABLE users (id BIGINT PRIMARY KEY)");
        p.db.exec("CREATE TABLE orders (id BIGINT PRIMARY KEY)");
        p.db.exec("INSERT INTO users (id) VALUES (1)");
        match kind {
            Db::Postgres => p.db.exec("CREATE TABLE IF NOT EXISTS public.schema_migrations (version character varying(128) NOT NULL PRIMARY KEY)"),
            _ => p.db.exec("create table if not exists schema_migrations (version varchar(128) primary key)"),
        }
        p.db.exec("INSERT INTO schema_migrations (version) VALUES ('20240101000000'), ('20240102000000'), ('20240103000000')");
        let adopt = p.ok(&["schema", "adopt", "--from", "dbmate"]);
        assert!(adopt.stdout.contains("recorded 3 version(s) dbmate applied, running none; 0 pending"), "{adopt:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users"), 1, "nothing ran again");
        // The seed has no down section: the way back stops at it.
        let refused = p.run(&["schema", "downgrade", "-1"]);
        assert_eq!(refused.code, 5, "{refused:?}");
        assert!(refused.stderr.contains("20240103000000_seed_admin: it is irreversible (its file has no down section)"), "{refused:?}");
        p.migration(20261204130000, "add_name_to_users", "ALTER TABLE users ADD COLUMN name VARCHAR(100);\n", "ALTER TABLE users DROP COLUMN name;\n");
        p.ok(&["schema", "upgrade"]);
        p.ok(&["schema", "downgrade", "-1"]);
        assert_eq!(recorded(&p), vec![20240101000000, 20240102000000, 20240103000000]);
    }

    fn a_database_refinery_migrated_is_adopted(kind: Db) {
        let p = Project::new(kind);
        write(&p, "V1__create_users.sql", "CREATE TABLE users (id BIGINT PRIMARY KEY);\n");
        write(&p, "V2__create_orders.sql", "CREATE TABLE orders (id BIGINT PRIMARY KEY);\n");
        p.db.exec("CREATE TABLE users (id BIGINT PRIMARY KEY)");
        p.db.exec("CREATE TABLE orders (id BIGINT PRIMARY KEY)");
        p.db.exec("CREATE TABLE IF NOT EXISTS refinery_schema_history(version INT4 PRIMARY KEY, name VARCHAR(255), applied_on VARCHAR(255), checksum VARCHAR(255))");
        p.db.exec("INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES \
                   (1, 'create_users', '2024-01-01T00:00:00Z', '12937127193791'), (2, 'create_orders', '2024-01-02T00:00:00Z', '9812731927')");
        let adopt = p.ok(&["schema", "adopt", "--from", "refinery"]);
        assert!(adopt.stdout.contains("recorded 2 version(s) refinery applied, running none; 0 pending"), "{adopt:?}");
        p.migration(20261204130000, "add_name_to_users", "ALTER TABLE users ADD COLUMN name VARCHAR(100);\n", "ALTER TABLE users DROP COLUMN name;\n");
        p.ok(&["schema", "upgrade"]);
        p.ok(&["schema", "downgrade", "-1"]);
        let refused = p.run(&["schema", "downgrade", "-1"]);
        assert!(refused.stderr.contains("2_create_orders: it is irreversible (it has no down file)"), "{refused:?}");
    }

    fn schema_test_names_every_asymmetric_migration_in_one_run(kind: Db) {
        let p = Project::new(kind);
        p.migration(20240101000001, "create_a", "CREATE TABLE a (id INT);\n", "DROP TABLE a;\n");
        // Three downs that leave something behind, and one in between that is fine.
        p.migration(20240101000002, "create_b", "CREATE TABLE b (id INT);\n", "SELECT 1;\n");
        p.migration(20240101000003, "create_c", "CREATE TABLE c (id INT);\n", "SELECT 1;\n");
        p.migration(20240101000004, "create_d", "CREATE TABLE d (id INT);\n", "DROP TABLE d;\n");
        p.migration(20240101000005, "create_e", "CREATE TABLE e (id INT);\n", "SELECT 1;\n");
        write(&p, "20240101000006_seed_a.up.sql", "INSERT INTO a (id) VALUES (1);\n");
        write(&p, "20240101000006_seed_a.down.sql", "-- datamig:irreversible the seed is kept\n");
        let run = p.run(&["schema", "test"]);
        assert_eq!(run.code, 10, "{run:?}");
        assert!(run.stderr.contains("3 migration(s) are not reversed by their down file"), "{run:?}");
        for id in ["20240101000002_create_b", "20240101000003_create_c", "20240101000005_create_e"] {
            assert!(run.stderr.contains(&format!("{id}: after up then down")), "{id}: {run:?}");
        }
        assert!(run.stdout.contains("ok   20240101000004_create_d"), "{run:?}");
        assert!(run.stdout.contains("ok   20240101000006_seed_a (irreversible, the seed is kept: its reversal is not tested)"), "{run:?}");
    }
}

#[test]
fn schema_test_passes_a_set_whose_only_differences_are_postgres_rewrites() {
    let p = Project::new(Db::Postgres);
    p.migration(
        20240101000001,
        "create_events",
        "CREATE TABLE events (id INT, at TIMESTAMP DEFAULT now(), email VARCHAR(100));\n",
        "DROP TABLE events;\n",
    );
    // The down puts back the same default, spelled as PostgreSQL keeps the other spelling.
    p.migration(
        20240101000002,
        "drop_default_of_events_at",
        "ALTER TABLE events ALTER COLUMN at DROP DEFAULT;\n",
        "ALTER TABLE events ALTER COLUMN at SET DEFAULT CURRENT_TIMESTAMP;\n",
    );
    let run = p.run(&["schema", "test"]);
    assert_eq!(run.code, 0, "{run:?}");
}

each_db! {
    fn schema_test_creates_its_scratch_database_under_the_name_given(kind: Db) {
        let p = Project::new(kind);
        p.migration(20240101000001, "create_a", "CREATE TABLE a (id INT);\n", "DROP TABLE a;\n");
        let exact = format!("ci_exact_{}", rand::random::<u32>());
        let run = p.ok(&["schema", "test", "--scratch-name", &exact]);
        assert!(run.stdout.contains("scratch database: ") && run.stdout.contains(&exact), "{run:?}");
        let prefixed = p.ok(&["schema", "test", "--scratch-name", "ci_prefix_*"]);
        assert!(prefixed.stdout.contains("ci_prefix_"), "{prefixed:?}");
        if kind != Db::Sqlite {
            // Dropped after: no database of either name is left.
            let left = match kind {
                Db::Postgres => p.db.scalar(&format!("SELECT count(*) FROM pg_database WHERE datname = '{exact}' OR datname LIKE 'ci\\_prefix\\_%'")),
                _ => p.db.scalar(&format!("SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{exact}' OR SCHEMA_NAME LIKE 'ci\\_prefix\\_%'")),
            };
            assert_eq!(left, 0);
        }
        let bad = p.run(&["schema", "test", "--scratch-name", "no; drop"]);
        assert_eq!(bad.code, 2, "{bad:?}");
        assert!(bad.stderr.contains("is not a database name datamig creates"), "{bad:?}");
    }
}

each_db! {
    fn schema_new_writes_in_the_projects_layout_and_the_new_file_runs(kind: Db) {
        for (layout, expected) in [("refinery", "__add_email_to_users.sql"), ("dbmate", "_add_email_to_users.sql")] {
            let p = Project::new(kind);
            std::fs::write(p.path().join("datamig.toml"), format!("layout = \"{layout}\"\n")).unwrap();
            let new = p.ok(&["schema", "new", "add_email_to_users"]);
            assert_eq!(new.stdout.lines().count(), 1, "one file: {new:?}");
            assert!(new.stdout.contains(expected), "{new:?}");
            let file = std::fs::read_dir(p.path().join("migrations")).unwrap().next().unwrap().unwrap().path();
            let text = std::fs::read_to_string(&file).unwrap();
            let text = text.replace("-- migrate:up\n", "-- migrate:up\nCREATE TABLE t (id INT);\n");
            let text = if layout == "refinery" { format!("{text}CREATE TABLE t (id INT);\n") } else { text };
            std::fs::write(&file, text).unwrap();
            p.ok(&["schema", "upgrade"]);
            assert!(p.db.table_exists("t"), "{layout}");
            // A pair is not a file of that layout.
            p.migration(20240101000001, "create_u", "CREATE TABLE u (id INT);\n", "DROP TABLE u;\n");
            let run = p.run(&["schema", "upgrade"]);
            assert_eq!(run.code, 5, "{run:?}");
            assert!(run.stderr.contains(&format!("not a {layout} migration file")), "{run:?}");
        }
    }
}
