//! The job authors' harness (`datamig_core::testing`) on this project's own demo
//! jobs, on all three databases: each job run in the test's process, stopped at
//! chosen batches and resumed, every row exactly once.

use datamig_core::testing::TestDb as JobDb;
use jobs::copy_user_email_to_sessions::CopyUserEmailToSessions;
use jobs::move_addresses_to_table::MoveAddressesToTable;
use jobs::seed_demo_sessions::SeedDemoSessions;
use jobs::seed_demo_users::SeedDemoUsers;

use crate::each_db;
use crate::support::{mysql_server, postgres_server, Db};

/// A database of the test's own with this project's migrations applied.
fn migrated(kind: Db) -> JobDb {
    let db = match kind {
        Db::Sqlite => JobDb::sqlite(),
        Db::Postgres => JobDb::beside(&postgres_server()),
        Db::MySql => JobDb::beside(&mysql_server()),
    }
    .expect("a test database");
    db.migrate(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations");
    db
}

each_db! {
    fn move_addresses_to_table_stopped_at_chosen_batches_moves_each_address_once(kind: Db) {
        let db = migrated(kind);
        db.job(&SeedDemoUsers).arg("rows", "3000").run().expect("seeded");
        let job = db.job(&MoveAddressesToTable).batch(100);

        // What the batches done so far moved: the addresses of exactly the
        // users marked moved, and those users a prefix of the key order.
        let consistent = |rows_done: i64, rejected: i64| {
            let marked = db.count("SELECT count(*) FROM users WHERE addresses_moved_at IS NOT NULL").unwrap();
            assert_eq!(marked, rows_done - rejected);
            let ids = db.rows("SELECT id FROM users WHERE addresses_moved_at IS NOT NULL").unwrap();
            let expected: i64 = ids.iter().map(|r| r[0].as_i64().unwrap() % 4).sum();
            assert_eq!(db.count("SELECT count(*) FROM addresses").unwrap(), expected);
            let beyond = db.count(
                "SELECT count(*) FROM users WHERE profile IS NOT NULL AND addresses_moved_at IS NULL \
                 AND id < (SELECT coalesce(max(id), 0) FROM users WHERE addresses_moved_at IS NOT NULL) AND id % 1500 <> 0",
            );
            assert_eq!(beyond.unwrap(), 0, "a user skipped before the checkpoint");
        };

        let first = job.run_batches(3).expect("first part");
        assert_eq!(first.stopped.as_deref(), Some("--max-batches 3"));
        assert_eq!(first.batches, 3);
        assert!(first.rows_done > 0 && first.rows_done <= 300, "{first:?}");
        assert!(first.checks.is_empty(), "checks wait for the end of the run");
        consistent(first.rows_done, 0);

        // Resumed where it stopped, stopped again after one more…
        let second = job.run_batches(1).expect("second part");
        assert!(second.resumed);
        assert_eq!(second.batches, 4);
        assert!(second.rows_this_process > 0 && second.rows_this_process <= 100, "{second:?}");
        assert_eq!(second.rows_done, first.rows_done + second.rows_this_process);
        consistent(second.rows_done, 0);

        // …and run to its end, verified: users 1500 and 3000 have an address without a kind.
        let rest = job.run().expect("the rest");
        assert!(rest.stopped.is_none() && rest.resumed);
        assert_eq!((rest.rows_done, rest.rows_rejected), (1000, 2));
        assert!(rest.checks.iter().all(|c| c.ok), "{:?}", rest.checks);
        consistent(1000, 2);
        let all: i64 = (1..=3000).filter(|id| id % 3 == 0).map(|id| id % 4).sum();
        assert_eq!(db.count("SELECT count(*) FROM addresses").unwrap(), all);
        assert_eq!(db.count("SELECT count(*) FROM datamig_rejects").unwrap(), 2);
    }

    fn copy_user_email_to_sessions_stopped_at_each_of_its_first_batches_fills_each_session_once(kind: Db) {
        let db = migrated(kind);
        db.job(&SeedDemoUsers).arg("rows", "1000").run().expect("users");
        db.job(&SeedDemoSessions).arg("rows", "2000").run().expect("sessions");
        let job = db.job(&CopyUserEmailToSessions).batch(250);
        for batch in 1..=3 {
            let part = job.run_batches(1).expect("one batch");
            assert_eq!(part.batches, batch);
            assert_eq!(
                db.count("SELECT count(*) FROM sessions WHERE user_email IS NOT NULL").unwrap(),
                250 * batch
            );
        }
        let rest = job.run().expect("the rest");
        assert_eq!((rest.rows_done, rest.rows_changed, rest.batches), (2000, 2000, 8));
        assert!(rest.checks.iter().all(|c| c.ok), "{:?}", rest.checks);
        assert_eq!(
            db.count("SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.user_email = u.email").unwrap(),
            2000
        );
        // A run of the finished job is a new run with nothing left to do.
        let again = job.run().expect("again");
        assert_eq!((again.run_number, again.rows_done), (2, 0));
    }
}
