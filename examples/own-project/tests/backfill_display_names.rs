//! The project's job, tested with datamig's harness: on a temporary SQLite file,
//! or on the server DATAMIG_TEST_DATABASE_URL names.

use datamig_core::testing::TestDb;
use own_project::backfill_display_names::BackfillDisplayNames;

#[test]
fn fills_every_display_name_once_through_an_interruption() {
    let db = TestDb::new().unwrap();
    db.migrate(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap();
    let job = db.job(&BackfillDisplayNames).batch(2);

    let first = job.run_batches(1).unwrap();
    assert_eq!(first.rows_done, 2);
    assert_eq!(
        db.count("SELECT count(*) FROM customers WHERE display_name IS NOT NULL")
            .unwrap(),
        2
    );

    let rest = job.run().unwrap();
    assert!(rest.resumed);
    assert_eq!(
        (rest.rows_done, rest.rows_changed, rest.rows_rejected),
        (5, 4, 1)
    );
    assert!(rest.checks.iter().all(|c| c.ok), "{:?}", rest.checks);
    let names = db
        .rows("SELECT display_name FROM customers ORDER BY id")
        .unwrap();
    let names: Vec<Option<&str>> = names.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        [
            Some("Ada Lovelace"),
            Some("Grace Hopper"),
            Some("Alan"),
            None,
            Some("Edsger Dijkstra")
        ]
    );
}
