//! `examples/own-project` as a team has it: a crate of its own (its own
//! workspace and lock file, datamig by path), built outside this workspace; its
//! binary runs its migration and its job on each database, and its own test
//! (datamig's harness) passes against each.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::{mysql_server, postgres_server, to_run, Db, Project};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/own-project")
}

/// `cargo` on the example, in a target directory of its own (this build's is
/// locked while its tests run), at low priority: the other tests keep a core.
fn cargo(args: &[&str]) -> Command {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/own-project");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19", &cargo])
        .args(args)
        .arg("--manifest-path")
        .arg(example().join("Cargo.toml"))
        // --locked: the example's Cargo.lock is what a team would commit; a
        // dependency datamig adds shows up here as a lock to refresh.
        .arg("--locked")
        .env("CARGO_TARGET_DIR", target)
        .env_remove("DATAMIG_TEST_DATABASE_URL")
        .env_remove("RUSTFLAGS");
    cmd
}

/// The example's binary, built once.
fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = cargo(&["test", "--no-run"]).output().expect("cargo");
        let run = to_run(out);
        assert_eq!(
            run.code, 0,
            "examples/own-project does not build on its own (if its Cargo.lock is out of date: \
             `cargo update --workspace --manifest-path examples/own-project/Cargo.toml`):\n{run:?}"
        );
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/own-project/debug/datamig")
    })
}

/// One test for the three databases, one after another: while the example
/// builds, a test waiting for it would hold one of the suite's threads.
#[test]
fn the_own_project_example_builds_outside_the_workspace_and_runs_its_job_on_each_database() {
    for kind in [Db::Sqlite, Db::Postgres, Db::MySql] {
        let bin = built();
        let p = Project::new(kind);
        for entry in std::fs::read_dir(example().join("migrations")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(
                &path,
                p.path().join("migrations").join(path.file_name().unwrap()),
            )
            .unwrap();
        }
        let up = to_run(
            p.command_of(bin, &["schema", "upgrade", "head"])
                .output()
                .unwrap(),
        );
        assert_eq!(up.code, 0, "{up:?}");
        let jobs = to_run(p.command_of(bin, &["jobs"]).output().unwrap());
        assert!(jobs.stdout.contains("backfill_display_names"), "{jobs:?}");
        let run = to_run(
            p.command_of(bin, &["run", "backfill_display_names"])
                .output()
                .unwrap(),
        );
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            run.stdout.starts_with("completed run 1 of backfill_display_names: 5 rows in 1 batches (4 changed, 1 rejected)"),
            "{run:?}"
        );
        assert_eq!(
            p.db.query("SELECT display_name FROM customers WHERE id = 1"),
            vec![vec!["Ada Lovelace".to_string()]]
        );
        assert_eq!(
            p.db.scalar("SELECT count(*) FROM customers WHERE display_name IS NULL"),
            1
        );

        // The project's own test, with datamig's harness, on this database.
        let mut test = cargo(&["test"]);
        match kind {
            Db::Sqlite => {}
            Db::Postgres => {
                test.env("DATAMIG_TEST_DATABASE_URL", postgres_server());
            }
            Db::MySql => {
                test.env("DATAMIG_TEST_DATABASE_URL", mysql_server());
            }
        }
        let tested = to_run(test.output().unwrap());
        assert_eq!(tested.code, 0, "{tested:?}");
        assert!(
            tested
                .stdout
                .contains("test fills_every_display_name_once_through_an_interruption ... ok"),
            "{tested:?}"
        );
    }
}
