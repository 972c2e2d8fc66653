//! The guarded bulk write behind read-ahead batches, on each database: a row
//! changed since it was read, or no longer matching the source filter, is not
//! written, and the count of rows written says so.

use datamig_core::config::DatabaseUrl;
use datamig_core::db::{BulkUpdate, Conn, ConnectOptions, Guard, Value};

use crate::each_db;
use crate::support::block_on;
use crate::support::TestDb;

each_db! {
    fn a_guarded_write_skips_rows_changed_since_the_read(kind: Db) {
        let db = TestDb::new(kind);
        db.exec("CREATE TABLE g (id BIGINT NOT NULL PRIMARY KEY, name VARCHAR(50) NOT NULL, flag INT NOT NULL, result VARCHAR(50))");
        db.exec("INSERT INTO g (id, name, flag) VALUES (1, 'Alice', 0), (2, 'Bob', 0), (3, 'Carol', 0), (4, 'Dan', 0)");
        let written = block_on(async {
            let url = DatabaseUrl::parse(&db.url).unwrap();
            let mut conn = Conn::connect(&url, &ConnectOptions::default()).await.unwrap();
            let columns = vec!["name".to_string()];
            let select = conn.guard_select(&columns).join(", ");
            let read = conn
                .fetch(&format!("SELECT id, {select} FROM g ORDER BY id"), &[])
                .await
                .unwrap();
            // After the read: a change of case only (equal under MariaDB's default
            // collation), and a change outside the read columns that leaves the filter.
            conn.execute("UPDATE g SET name = 'BOB' WHERE id = 2", &[]).await.unwrap();
            conn.execute("UPDATE g SET flag = 1 WHERE id = 3", &[]).await.unwrap();
            let types = conn.column_types("g", &columns).await.unwrap();
            let rows: Vec<Vec<Value>> = read
                .into_iter()
                .map(|r| {
                    let mut row = vec![r[0].clone(), Value::Text(format!("done {}", r[0].as_i64().unwrap()))];
                    row.extend(r.into_iter().skip(1));
                    row
                })
                .collect();
            let spec = BulkUpdate {
                table: "g".into(),
                keys: vec!["id".into()],
                sets: vec!["result".into()],
                types: conn.column_types("g", &["id".into(), "result".into()]).await.unwrap(),
                lo: Value::Int(1),
                hi: Value::Int(4),
                guard: Some(Guard {
                    columns,
                    types,
                    filter: Some(("flag = ?".into(), vec![Value::Int(0)])),
                }),
            };
            let written = conn.bulk_update(&spec, &rows).await.unwrap();
            conn.close().await;
            written
        });
        assert_eq!(written, 2);
        assert_eq!(
            db.query("SELECT id, result FROM g ORDER BY id"),
            vec![
                vec!["1".to_string(), "done 1".into()],
                vec!["2".into(), "NULL".into()],
                vec!["3".into(), "NULL".into()],
                vec!["4".into(), "done 4".into()],
            ]
        );
    }
}

/// On PostgreSQL a batch's checkpoint goes with its COMMIT in one round trip; a
/// run that is no longer `running` must still roll the batch back.
#[test]
fn a_checkpoint_sent_with_the_commit_rolls_back_a_run_no_longer_running() {
    let db = TestDb::new(crate::support::Db::Postgres);
    db.exec("CREATE TABLE visits (id BIGINT NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)");
    db.fill_ids("visits", 1000);
    let result = block_on(async {
        let url = DatabaseUrl::parse(&db.url).unwrap();
        let mut conn = Conn::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        conn.ensure_bookkeeping().await.unwrap();
        conn.prepare_for_batches().await.unwrap();
        conn.execute(
            "INSERT INTO datamig_runs (job, args, state, batch_size, started_at, updated_at) \
             VALUES ('j', '{}', 'cancelled', 10, now(), now())",
            &[],
        )
        .await
        .unwrap();
        let counts = datamig_core::run::store::BatchCounts {
            rows: 10,
            changed: 10,
            rejected: 0,
            elapsed_ms: 1,
        };
        let sql = datamig_core::run::store::checkpoint_text(&conn, 1, "[10]", &counts, None)
            .expect("PostgreSQL sends it with the COMMIT");
        conn.begin().await.unwrap();
        conn.execute("UPDATE visits SET hits = 1 WHERE id <= 10", &[])
            .await
            .unwrap();
        let result = conn.script_rows(&format!("{sql}; COMMIT")).await;
        let not_running = result
            .as_ref()
            .err()
            .is_some_and(datamig_core::run::store::not_running);
        conn.rollback().await.unwrap();
        conn.close().await;
        not_running
    });
    assert!(result, "the checkpoint fails as not running");
    assert_eq!(
        db.scalar("SELECT count(*) FROM visits WHERE hits <> 0"),
        0,
        "the batch rolled back"
    );
    assert_eq!(
        db.query("SELECT state, batches_done FROM datamig_runs")[0],
        vec!["cancelled".to_string(), "0".into()]
    );
}

// PostgreSQL sends a batch's BEGIN with its first statement, the parameters
// written out as literals: they must select what the bound parameters select,
// and the statement must run inside the transaction.
each_db! {
    fn a_statement_sent_with_its_begin_matches_as_bound_and_rolls_back(kind: Db) {
        let db = TestDb::new(kind);
        let (float, bytes, ts) = match kind {
            crate::support::Db::Postgres => ("DOUBLE PRECISION", "BYTEA", "TIMESTAMP"),
            crate::support::Db::MySql => ("DOUBLE", "VARBINARY(16)", "DATETIME(6)"),
            crate::support::Db::Sqlite => ("REAL", "BLOB", "TEXT"),
        };
        db.exec(&format!(
            "CREATE TABLE lit (i BIGINT NOT NULL, f {float}, s VARCHAR(50), bin {bytes}, ts {ts}, b BOOLEAN)"
        ));
        let at = chrono::NaiveDate::from_ymd_opt(2026, 3, 4)
            .and_then(|d| d.and_hms_micro_opt(5, 6, 7, 890_000))
            .unwrap();
        let params = vec![
            Value::Int(-42),
            Value::Float(0.1),
            Value::Text("it's a ? and \\ too".into()),
            Value::Bytes(vec![0, 39, 92, 255]),
            Value::Timestamp(at),
            Value::Bool(true),
        ];
        let matching = "i = ? AND f = ? AND s = ? AND bin = ? AND ts = ? AND b = ?";
        let (rolled_back, deleted) = block_on(async {
            let url = DatabaseUrl::parse(&db.url).unwrap();
            let mut conn = Conn::connect(&url, &ConnectOptions::default()).await.unwrap();
            conn.prepare_for_batches().await.unwrap();
            conn.execute("INSERT INTO lit (i, f, s, bin, ts, b) VALUES (?, ?, ?, ?, ?, ?)", &params)
                .await
                .unwrap();
            let delete = format!("DELETE FROM lit WHERE {matching}");
            let rolled_back = conn.begin_with(&delete, &params).await.unwrap();
            conn.rollback().await.unwrap();
            let deleted = conn.begin_with(&delete, &params).await.unwrap();
            conn.commit().await.unwrap();
            conn.close().await;
            (rolled_back, deleted)
        });
        assert_eq!(rolled_back, 1, "the literals match the row the parameters inserted");
        assert_eq!(deleted, 1, "the rollback undid the first delete");
        assert_eq!(db.scalar("SELECT count(*) FROM lit"), 0);
    }
}
