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
                locator: None,
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

// A bulk write carries every kind of value exactly: MariaDB sends the rows as one
// JSON document (`JSON_TABLE`) unless a value has no JSON form (bytes), when it
// takes one-row SELECTs; both ways, and the other databases', write the same.
each_db! {
    fn a_bulk_write_carries_every_kind_of_value_exactly(kind: Db) {
        let db = TestDb::new(kind);
        let (float, bytes, ts, dec, text) = match kind {
            crate::support::Db::Postgres => ("DOUBLE PRECISION", "BYTEA", "TIMESTAMP", "NUMERIC(12,4)", "TEXT"),
            crate::support::Db::MySql => ("DOUBLE", "VARBINARY(16)", "DATETIME(6)", "DECIMAL(12,4)", "TEXT"),
            crate::support::Db::Sqlite => ("REAL", "BLOB", "TEXT", "TEXT", "TEXT"),
        };
        db.exec(&format!(
            "CREATE TABLE kinds (id BIGINT NOT NULL PRIMARY KEY, i INT, f {float}, s VARCHAR(50), t {text}, \
             d {dec}, ts {ts}, b BOOLEAN, bin {bytes})"
        ));
        db.exec("INSERT INTO kinds (id) VALUES (1), (2), (3), (4)");
        let at = chrono::NaiveDate::from_ymd_opt(2026, 3, 4)
            .and_then(|d| d.and_hms_micro_opt(5, 6, 7, 890_123))
            .unwrap();
        let text = "it's \"quoted\", a \\ backslash, a\ttab, a\nnewline, \u{1} and ☃ é";
        // Without bytes (MariaDB: as JSON), then with them (one-row SELECTs).
        let sets = |with_bytes: bool| {
            let mut s: Vec<String> = ["i", "f", "s", "t", "d", "ts", "b"].iter().map(|c| c.to_string()).collect();
            if with_bytes {
                s.push("bin".into());
            }
            s
        };
        let row = |id: i64, with_bytes: bool| {
            let mut r = vec![
                Value::Int(id),
                Value::Int(-2_147_483_648),
                Value::Float(0.1 + f64::from(u8::try_from(id).unwrap())),
                Value::Text(format!("{id}: {}", &text[..10])),
                Value::Text(text.into()),
                Value::Text("-12345678.9012".into()),
                Value::Timestamp(at),
                Value::Bool(id % 2 == 0),
            ];
            if with_bytes {
                r.push(Value::Bytes(vec![0, 39, 92, 255]));
            }
            r
        };
        let nulls = |id: i64| {
            let mut r = vec![Value::Int(id)];
            r.extend(std::iter::repeat_n(Value::Null, 7));
            r
        };
        block_on(async {
            let url = DatabaseUrl::parse(&db.url).unwrap();
            let mut conn = Conn::connect(&url, &ConnectOptions::default()).await.unwrap();
            for (ids, with_bytes) in [((1, 2), false), ((3, 4), true)] {
                let mut columns = vec!["id".to_string()];
                columns.extend(sets(with_bytes));
                let spec = BulkUpdate {
                    table: "kinds".into(),
                    keys: vec!["id".into()],
                    sets: sets(with_bytes),
                    types: conn.column_types("kinds", &columns).await.unwrap(),
                    lo: Value::Int(ids.0),
                    hi: Value::Int(ids.1),
                    guard: None,
                    locator: None,
                };
                let mut second = nulls(ids.1);
                if with_bytes {
                    second.push(Value::Bytes(Vec::new()));
                }
                let written = conn.bulk_update(&spec, &[row(ids.0, with_bytes), second]).await.unwrap();
                assert_eq!(written, 2);
            }
            let d = match kind {
                crate::support::Db::Postgres => "CAST(d AS TEXT)",
                crate::support::Db::MySql => "CAST(d AS CHAR)",
                crate::support::Db::Sqlite => "d",
            };
            let read = conn
                .fetch(&format!("SELECT id, i, f, s, t, {d}, ts, b, bin FROM kinds ORDER BY id"), &[])
                .await
                .unwrap();
            conn.close().await;
            for r in &read {
                let id = r[0].as_i64().unwrap();
                if id % 2 == 1 {
                    assert_eq!(r[1].as_i64(), Some(-2_147_483_648), "{r:?}");
                    assert!(matches!(r[2], Value::Float(f) if f == 0.1 + f64::from(u8::try_from(id).unwrap())), "{r:?}");
                    assert_eq!(r[3].as_str(), Some(format!("{id}: {}", &text[..10]).as_str()), "{r:?}");
                    assert_eq!(r[4].as_str(), Some(text), "{r:?}");
                    let d = match &r[5] {
                        Value::Float(f) => format!("{f:.4}"),
                        other => other.as_str().map(str::to_string).unwrap_or_else(|| format!("{other:?}")),
                    };
                    assert_eq!(d, "-12345678.9012", "{r:?}");
                    match &r[6] {
                        Value::Timestamp(t) => assert_eq!(*t, at, "{r:?}"),
                        Value::Text(t) => assert!(t.starts_with("2026-03-04 05:06:07.890123"), "{r:?}"),
                        other => panic!("{other:?}"),
                    }
                    assert!(matches!(r[7], Value::Bool(false) | Value::Int(0)), "{r:?}");
                } else {
                    assert!(r[1..8].iter().all(|v| *v == Value::Null), "{r:?}");
                }
            }
            assert_eq!(read[2][8], Value::Bytes(vec![0, 39, 92, 255]), "{:?}", read[2]);
            assert_eq!(read[3][8], Value::Bytes(Vec::new()), "{:?}", read[3]);
        });
    }
}

// A new value that does not fit its column is refused, never cut short, read
// as 0 or written as NULL (MariaDB's JSON_TABLE reads text as 0 in a number
// column, and would make a failed conversion NULL without ERROR ON ERROR).
#[test]
fn a_bulk_write_refuses_a_value_that_does_not_fit_its_column() {
    for kind in [crate::support::Db::Postgres, crate::support::Db::MySql] {
        let db = TestDb::new(kind);
        db.exec("CREATE TABLE short (id BIGINT NOT NULL PRIMARY KEY, s VARCHAR(5), n INT)");
        db.exec("INSERT INTO short (id, s, n) VALUES (1, 'a', 7)");
        for (column, value) in [
            ("s", Value::Text("much too long".into())),
            ("n", Value::Text("abc".into())),
        ] {
            let refused = block_on(async {
                let url = DatabaseUrl::parse(&db.url).unwrap();
                let mut conn = Conn::connect(&url, &ConnectOptions::default())
                    .await
                    .unwrap();
                let spec = BulkUpdate {
                    table: "short".into(),
                    keys: vec!["id".into()],
                    sets: vec![column.into()],
                    types: conn
                        .column_types("short", &["id".into(), column.into()])
                        .await
                        .unwrap(),
                    lo: Value::Int(1),
                    hi: Value::Int(1),
                    guard: None,
                    locator: None,
                };
                let refused = conn
                    .bulk_update(&spec, &[vec![Value::Int(1), value]])
                    .await
                    .is_err();
                conn.close().await;
                refused
            });
            assert!(refused, "{kind:?} {column}");
        }
        assert_eq!(
            db.query("SELECT s, n FROM short")[0],
            vec!["a".to_string(), "7".into()],
            "{kind:?}"
        );
    }
}

// A read decodes every kind of column it accepts into the value it holds, and
// names a column of a kind it does not read (each column's kind is looked up
// once per result, so the first row decides for every other).
#[test]
fn a_read_decodes_every_kind_of_column_and_names_one_it_cannot() {
    for kind in [crate::support::Db::Postgres, crate::support::Db::MySql] {
        let db = TestDb::new(kind);
        let (select, unreadable) = match kind {
            crate::support::Db::Postgres => (
                "SELECT CAST(-3 AS SMALLINT), CAST(-4 AS INT), CAST(5 AS BIGINT), CAST(6 AS OID), TRUE, \
                 CAST(1.5 AS REAL), CAST(2.25 AS DOUBLE PRECISION), CAST('\\x00ff' AS BYTEA), \
                 TIMESTAMP '2026-03-04 05:06:07.25', TIMESTAMPTZ '2026-03-04 05:06:07+02', \
                 CAST('é' AS VARCHAR(3)), CAST('{\"a\":1}' AS JSON), CAST(NULL AS TEXT), \
                 CAST('0123abcd-0000-4000-8000-00000000ff01' AS UUID)",
                "SELECT CAST('(1,2)' AS POINT) AS spot",
            ),
            _ => (
                "SELECT CAST(-3 AS SIGNED) AS a, CAST(-4 AS INT), CAST(5 AS UNSIGNED), 6, TRUE, \
                 CAST(1.5 AS FLOAT), CAST(2.25 AS DOUBLE), CAST(X'00ff' AS BINARY(2)), \
                 CAST('2026-03-04 05:06:07.25' AS DATETIME(2)), CAST('2026-03-05' AS DATE), \
                 'é', CAST(12.50 AS DECIMAL(5,2)), NULL",
                "",
            ),
        };
        block_on(async {
            let url = DatabaseUrl::parse(&db.url).unwrap();
            let mut conn = Conn::connect(&url, &ConnectOptions::default())
                .await
                .unwrap();
            // Two rows: the second decodes with the kinds the first row's columns set.
            let rows = conn
                .fetch(&format!("{select} UNION ALL {select}"), &[])
                .await
                .unwrap();
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[0], rows[1]);
            let r = &rows[0];
            let at = chrono::NaiveDate::from_ymd_opt(2026, 3, 4)
                .and_then(|d| d.and_hms_milli_opt(5, 6, 7, 250))
                .unwrap();
            match kind {
                crate::support::Db::Postgres => {
                    assert_eq!(
                        r[..8],
                        [
                            Value::Int(-3),
                            Value::Int(-4),
                            Value::Int(5),
                            Value::Int(6),
                            Value::Bool(true),
                            Value::Float(1.5),
                            Value::Float(2.25),
                            Value::Bytes(vec![0, 255]),
                        ]
                    );
                    assert_eq!(r[8], Value::Timestamp(at));
                    // 05:06:07+02 is 03:06:07 UTC.
                    let utc = chrono::NaiveDate::from_ymd_opt(2026, 3, 4)
                        .and_then(|d| d.and_hms_opt(3, 6, 7))
                        .unwrap();
                    assert_eq!(r[9], Value::Timestamp(utc));
                    assert_eq!(r[10], Value::Text("é".into()));
                    assert_eq!(r[11], Value::Json(serde_json::json!({"a": 1})));
                    assert_eq!(r[12], Value::Null);
                    // A uuid as its canonical text, from the binary form.
                    assert_eq!(
                        r[13],
                        Value::Text("0123abcd-0000-4000-8000-00000000ff01".into())
                    );
                    let err = conn.fetch(unreadable, &[]).await.unwrap_err().to_string();
                    assert!(
                        err.contains("column `spot` has type POINT")
                            && err.contains("cast it to text"),
                        "{err}"
                    );
                }
                _ => {
                    assert_eq!(
                        r[..7],
                        [
                            Value::Int(-3),
                            Value::Int(-4),
                            Value::Int(5),
                            Value::Int(6),
                            Value::Int(1),
                            Value::Float(1.5),
                            Value::Float(2.25),
                        ]
                    );
                    assert_eq!(r[7], Value::Bytes(vec![0, 255]));
                    assert_eq!(r[8], Value::Timestamp(at));
                    assert_eq!(r[9], Value::Text("2026-03-05".into()));
                    assert_eq!(r[10], Value::Text("é".into()));
                    assert_eq!(r[11], Value::Decimal("12.50".into()));
                    assert_eq!(r[12], Value::Null);
                }
            }
            conn.close().await;
        });
    }
}
