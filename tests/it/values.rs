//! Decimals, JSON, PostgreSQL arrays and typed rows, read into a job and written
//! from it, on all three databases: each job run with the job authors' harness.

use std::sync::Arc;

use datamig_core::prelude::*;
use datamig_core::testing::TestDb as JobDb;
use serde::{Deserialize, Serialize};

use crate::each_db;
use crate::support::{mysql_server, postgres_server, Db};

fn empty(kind: Db) -> JobDb {
    match kind {
        Db::Sqlite => JobDb::sqlite(),
        Db::Postgres => JobDb::beside(&postgres_server()),
        Db::MySql => JobDb::beside(&mysql_server()),
    }
    .expect("a test database")
}

/// An exact decimal wider than a double, the same on every database.
const WIDE: &str = "12345678901234567890.0123456789";

/// `items` (a decimal price, JSON attributes, a timestamp) and `item_totals`,
/// which a batch step fills from it.
fn items(kind: Db, n: i64) -> JobDb {
    let db = empty(kind);
    let (decimal, json, timestamp) = match kind {
        Db::Postgres => ("NUMERIC", "JSONB", "TIMESTAMP"),
        Db::MySql => ("DECIMAL", "JSON", "DATETIME(6)"),
        // Decimals as text: SQLite's NUMERIC keeps only what fits a double.
        Db::Sqlite => ("TEXT", "TEXT", "TEXT"),
    };
    db.exec(&format!(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, price {decimal}(30,10) NOT NULL, attrs {json}, \
         seen_at {timestamp}, priced SMALLINT)"
    ))
    .unwrap();
    db.exec(&format!(
        "CREATE TABLE item_totals (item_id BIGINT PRIMARY KEY, total {decimal}(32,10) NOT NULL, \
         summary {json} NOT NULL, seen_at {timestamp} NOT NULL)"
    ))
    .unwrap();
    for id in 1..=n {
        let price = if id == 1 {
            WIDE.to_string()
        } else {
            format!("{id}.25")
        };
        let attrs = format!(r#"{{"color": "c{}", "sizes": [{id}, {}]}}"#, id % 3, id + 1);
        db.exec(&format!(
            "INSERT INTO items (id, price, attrs, seen_at) VALUES ({id}, '{price}', '{attrs}', '2026-12-04 10:00:00')"
        ))
        .unwrap();
    }
    db
}

/// An item as the step reads it: the decimal as its exact text, the JSON as
/// a document (MariaDB's and SQLite's arrive as text, parsed by `row.json`).
#[derive(Deserialize)]
struct Item {
    id: i64,
    price: String,
    seen_at: String,
}

/// A row of `item_totals`, as the step writes it: a decimal, a timestamp and
/// JSON given as Rust values, each taken as its column's type.
#[derive(Serialize)]
struct Total {
    item_id: i64,
    total: String,
    summary: serde_json::Value,
    seen_at: String,
}

#[derive(Serialize)]
struct Priced {
    id: i64,
    priced: i64,
}

struct TotalItems;

impl Job for TotalItems {
    type Args = NoArgs;
    fn name(&self) -> &'static str {
        "total_items"
    }
    fn description(&self) -> &'static str {
        "item_totals from items"
    }
    fn plan(&self, _: &NoArgs, _: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::table("items", "id").columns(&["price", "attrs", "seen_at"]),
            step: Step::batch(Totals),
            checks: vec![],
        })
    }
}

struct Totals;

impl BatchStep for Totals {
    type Outside = ();

    async fn outside(&self, _: &Batch) -> Result<(), StepError> {
        Ok(())
    }

    async fn write(&self, batch: &Batch, _: &(), tx: &mut BatchTx<'_>) -> Result<(), StepError> {
        let items: Vec<Item> = batch.rows_as()?;
        let mut totals = Vec::new();
        for (item, row) in items.iter().zip(batch.rows()) {
            let attrs = row
                .json("attrs")
                .map_err(StepError::fail)?
                .unwrap_or_default();
            // Twice the price, in decimal text: no digit goes through a double.
            let total = double(&item.price);
            totals.push(Total {
                item_id: item.id,
                total,
                summary: serde_json::json!({ "color": attrs["color"], "largest": attrs["sizes"][1] }),
                seen_at: item.seen_at.clone(),
            });
        }
        tx.insert_from("item_totals", &totals, OnConflict::Fail)
            .await?;
        let priced: Vec<Priced> = items
            .iter()
            .map(|i| Priced {
                id: i.id,
                priced: 1,
            })
            .collect();
        tx.update_from("items", &["id"], &priced).await?;
        Ok(())
    }
}

/// `2 × price` for a positive decimal's text, digit by digit.
fn double(price: &str) -> String {
    let digits: Vec<u32> = price.chars().filter_map(|c| c.to_digit(10)).collect();
    let point = price.find('.').map_or(digits.len(), |p| p);
    let mut out = Vec::new();
    let mut carry = 0;
    for d in digits.iter().rev() {
        let v = d * 2 + carry;
        out.push(char::from_digit(v % 10, 10).unwrap());
        carry = v / 10;
    }
    if carry > 0 {
        out.push('1');
    }
    let mut text: String = out.iter().rev().collect();
    let whole = text.len() - (digits.len() - point);
    text.insert(whole, '.');
    text
}

/// Reads `attrs` (JSON) and `price` (a decimal) into the job's own type in a
/// transform, and writes the row back from one.
struct Tag;

impl Transform for Tag {
    fn writes(&self) -> Vec<String> {
        vec!["attrs".into()]
    }
    fn apply(&self, row: &SourceRow<'_>) -> Outcome {
        #[derive(Deserialize)]
        struct In {
            price: String,
        }
        #[derive(Serialize)]
        struct Out {
            attrs: serde_json::Value,
        }
        let read: In = match row.read() {
            Ok(r) => r,
            Err(e) => return Outcome::Reject(e),
        };
        let mut attrs = match row.json("attrs") {
            Ok(Some(a)) => a,
            Ok(None) => serde_json::json!({}),
            Err(e) => return Outcome::Reject(e),
        };
        attrs["price_text"] = read.price.into();
        Outcome::update_from(&Out { attrs }, &self.writes())
    }
}

struct TagItems;

impl Job for TagItems {
    type Args = NoArgs;
    fn name(&self) -> &'static str {
        "tag_items"
    }
    fn description(&self) -> &'static str {
        "attrs.price_text from price"
    }
    fn plan(&self, _: &NoArgs, _: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::table("items", "id").columns(&["price", "attrs"]),
            step: Step::Transform(Arc::new(Tag)),
            checks: vec![],
        })
    }
}

each_db! {
    fn decimals_json_and_typed_rows_go_in_and_out_of_a_job_exactly(kind: Db) {
        let db = items(kind, 50);
        let job = db.job(&TotalItems).batch(20);
        let first = job.run_batches(1).expect("one batch");
        assert_eq!(first.rows_done, 20);
        let rest = job.run().expect("the rest");
        assert_eq!(rest.rows_done, 50);
        assert_eq!(db.count("SELECT count(*) FROM item_totals").unwrap(), 50);
        assert_eq!(db.count("SELECT count(*) FROM items WHERE priced = 1").unwrap(), 50);

        // The wide decimal, doubled, read back with every digit.
        let total = db.value("SELECT total FROM item_totals WHERE item_id = 1").unwrap();
        let seen = db.value("SELECT seen_at FROM item_totals WHERE item_id = 7").unwrap();
        let summary = db.value("SELECT summary FROM item_totals WHERE item_id = 7").unwrap();
        match kind {
            Db::Postgres | Db::MySql => {
                assert_eq!(total, Value::Decimal("24691357802469135780.0246913578".into()));
                let price = db.value("SELECT price FROM items WHERE id = 1").unwrap();
                assert_eq!(price, Value::Decimal(WIDE.into()));
                assert_eq!(db.value("SELECT price FROM items WHERE id = 2").unwrap(), Value::Decimal("2.2500000000".into()));
                assert_eq!(seen, Value::Timestamp(chrono::NaiveDate::from_ymd_opt(2026, 12, 4).unwrap().and_hms_opt(10, 0, 0).unwrap()));
            }
            Db::Sqlite => {
                assert_eq!(total, Value::Text("24691357802469135780.0246913578".into()));
                assert_eq!(seen, Value::Text("2026-12-04 10:00:00".into()));
            }
        }
        let summary = summary.to_json_value().unwrap();
        assert_eq!(summary, serde_json::json!({"color": "c1", "largest": 8}));
        if kind == Db::Postgres {
            assert!(matches!(db.value("SELECT summary FROM item_totals WHERE item_id = 7").unwrap(), Value::Json(_)));
        }

        // A transform reads the row into its own type and writes one back.
        let tagged = db.job(&TagItems).batch(20).run().expect("tagged");
        assert_eq!((tagged.rows_done, tagged.rows_changed, tagged.rows_rejected), (50, 50, 0));
        let attrs = db.value("SELECT attrs FROM items WHERE id = 3").unwrap().to_json_value().unwrap();
        let price_text = match kind {
            Db::Sqlite => "3.25",
            _ => "3.2500000000",
        };
        assert_eq!(attrs, serde_json::json!({"color": "c0", "sizes": [3, 4], "price_text": price_text}));
    }
}

/// `tagged(id, tags text[], sizes int[])` with `n` rows.
fn arrays(n: i64) -> JobDb {
    let db = empty(Db::Postgres);
    db.exec("CREATE TABLE tagged (id BIGINT PRIMARY KEY, tags TEXT[], sizes INT[], tag_count INT)")
        .unwrap();
    db.exec("CREATE TABLE tag_rows (id BIGINT PRIMARY KEY, tags TEXT[] NOT NULL, wide NUMERIC[])")
        .unwrap();
    db.exec(&format!(
        "INSERT INTO tagged (id, tags) SELECT i, ARRAY['t' || i, 'a \"quoted\", {{braced}} \\ one', NULL] FROM generate_series(1, {n}) i"
    ))
    .unwrap();
    db
}

/// Reads a `text[]` as an array and writes an `int[]` back (the bulk update).
struct Sizes;

impl Transform for Sizes {
    fn writes(&self) -> Vec<String> {
        vec!["sizes".into(), "tag_count".into()]
    }
    fn apply(&self, row: &SourceRow<'_>) -> Outcome {
        let Some(Value::Array(tags)) = row.get("tags") else {
            return Outcome::Reject(format!("tags is {:?}", row.get("tags")));
        };
        let sizes: Vec<Value> = tags
            .iter()
            .map(|t| {
                t.as_str()
                    .map_or(Value::Null, |t| Value::Int(i64::try_from(t.len()).unwrap()))
            })
            .collect();
        let count = i64::try_from(tags.iter().filter(|t| !t.is_null()).count()).unwrap();
        Outcome::Update(vec![Value::Array(sizes), Value::Int(count)])
    }
}

struct SizeTags;

impl Job for SizeTags {
    type Args = NoArgs;
    fn name(&self) -> &'static str {
        "size_tags"
    }
    fn description(&self) -> &'static str {
        "sizes from tags"
    }
    fn plan(&self, _: &NoArgs, _: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::table("tagged", "id").columns(&["tags"]),
            step: Step::Transform(Arc::new(Sizes)),
            checks: vec![],
        })
    }
}

/// Inserts arrays (text and numeric) from a batch step.
struct CopyTags;

impl BatchStep for CopyTags {
    type Outside = ();
    async fn outside(&self, _: &Batch) -> Result<(), StepError> {
        Ok(())
    }
    async fn write(&self, batch: &Batch, _: &(), tx: &mut BatchTx<'_>) -> Result<(), StepError> {
        let rows: Vec<Vec<Value>> = batch
            .rows()
            .map(|r| {
                let wide = Value::Array(vec![Value::Decimal(WIDE.into()), Value::Null]);
                vec![
                    r.key()[0].clone(),
                    r.get("tags").cloned().unwrap_or(Value::Null),
                    wide,
                ]
            })
            .collect();
        tx.insert("tag_rows", &["id", "tags", "wide"], &rows, OnConflict::Fail)
            .await?;
        Ok(())
    }
}

struct CopyTagRows;

impl Job for CopyTagRows {
    type Args = NoArgs;
    fn name(&self) -> &'static str {
        "copy_tag_rows"
    }
    fn description(&self) -> &'static str {
        "tag_rows from tagged"
    }
    fn plan(&self, _: &NoArgs, _: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::table("tagged", "id").columns(&["tags"]),
            step: Step::batch(CopyTags),
            checks: vec![],
        })
    }
}

#[test]
fn postgres_arrays_are_read_and_written_as_arrays() {
    let db = arrays(30);
    let sized = db.job(&SizeTags).batch(7).run().expect("sized");
    assert_eq!(
        (sized.rows_done, sized.rows_changed, sized.rows_rejected),
        (30, 30, 0)
    );
    let quoted = r#"a "quoted", {braced} \ one"#;
    assert_eq!(
        db.rows("SELECT tags, sizes, tag_count FROM tagged WHERE id = 12")
            .unwrap(),
        vec![vec![
            Value::Array(vec!["t12".into(), quoted.into(), Value::Null]),
            Value::Array(vec![
                Value::Int(3),
                Value::Int(i64::try_from(quoted.len()).unwrap()),
                Value::Null
            ]),
            Value::Int(2),
        ]]
    );
    let copied = db.job(&CopyTagRows).batch(7).run().expect("copied");
    assert_eq!(copied.rows_done, 30);
    assert_eq!(
        db.count("SELECT count(*) FROM tag_rows r JOIN tagged t USING (id) WHERE r.tags = t.tags")
            .unwrap(),
        30
    );
    assert_eq!(
        db.value("SELECT wide FROM tag_rows WHERE id = 1").unwrap(),
        Value::Array(vec![Value::Decimal(WIDE.into()), Value::Null])
    );
}

#[test]
fn postgres_numerics_read_as_postgres_shows_them() {
    let db = empty(Db::Postgres);
    let values = [
        "0",
        "0.00",
        "-0.001",
        "10000",
        "12.50",
        "100000000000000000000",
        "0.0001",
        "0.00001234",
        "123456789.000000001",
        "-99999999.99",
        "1.5e-7",
        "99990000",
        "-12345678901234567890.0123456789",
    ];
    let list: Vec<String> = values.iter().map(|v| format!("('{v}'::numeric)")).collect();
    let rows = db
        .rows(&format!(
            "SELECT v, ARRAY[v, NULL], v::text FROM (VALUES {}) t(v)",
            list.join(", ")
        ))
        .unwrap();
    assert_eq!(rows.len(), values.len());
    for row in rows {
        let text = row[2].as_str().unwrap().to_string();
        assert_eq!(row[0], Value::Decimal(text.clone()));
        assert_eq!(
            row[1],
            Value::Array(vec![Value::Decimal(text), Value::Null])
        );
    }
}

/// Writes an eight-character code into a `CHAR(8)` column.
struct Code;

impl Transform for Code {
    fn writes(&self) -> Vec<String> {
        vec!["code".into()]
    }
    fn apply(&self, row: &SourceRow<'_>) -> Outcome {
        Outcome::Update(vec![Value::Text(format!(
            "c{:07}",
            row.key()[0].as_i64().unwrap_or_default()
        ))])
    }
}

struct FillCodes;

impl Job for FillCodes {
    type Args = NoArgs;
    fn name(&self) -> &'static str {
        "fill_codes"
    }
    fn description(&self) -> &'static str {
        "codes.code"
    }
    fn plan(&self, _: &NoArgs, _: &PlanContext) -> Result<Plan, String> {
        Ok(Plan {
            source: Source::table("codes", "id"),
            step: Step::Transform(Arc::new(Code)),
            checks: vec![],
        })
    }
}

each_db! {
    fn a_fixed_length_text_column_takes_its_whole_value(kind: Db) {
        // PostgreSQL's `character` without its length is char(1): a write cast
        // to it kept one character of each value.
        let db = empty(kind);
        db.exec("CREATE TABLE codes (id BIGINT PRIMARY KEY, code CHAR(8))").unwrap();
        db.exec("INSERT INTO codes (id) VALUES (1), (2), (3)").unwrap();
        let done = db.job(&FillCodes).run().expect("codes");
        assert_eq!(done.rows_changed, 3);
        assert_eq!(db.value("SELECT code FROM codes WHERE id = 2").unwrap(), Value::Text("c0000002".into()));
    }
}
