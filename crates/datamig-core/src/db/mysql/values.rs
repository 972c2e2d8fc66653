//! MariaDB/MySQL values: how a [`Value`] is bound (a decimal, JSON or an
//! array as text), how a result column is decoded into one, and a batch's rows
//! as the JSON documents a `JSON_TABLE` bulk update reads.

use sqlx::mysql::MySqlRow;
use sqlx::{Column, Row as _, TypeInfo};

use crate::db::{BulkUpdate, Row, Value};

pub(super) type Query<'q> = sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>;

/// A decimal, JSON or an array, which this database has no parameter type
/// for: bound as text (a decimal's digits, JSON's text, an array as a JSON
/// array), which the column's type converts on assignment.
pub(super) fn bind_other<'q>(q: Query<'q>, v: &'q Value) -> Query<'q> {
    q.bind(v.portable())
}

/// How a result column becomes a [`Value`], resolved once per result from its type.
#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Int1,
    Int2,
    Int4,
    Int8,
    Unsigned,
    Float4,
    Float8,
    DateTime,
    Timestamp,
    Date,
    Bytes,
    /// DECIMAL, which the server sends as its text in both protocols.
    Decimal,
    /// MySQL's JSON (MariaDB's is LONGTEXT to a client, and reads as text).
    Json,
    /// Text; bytes when they are not UTF-8.
    Text,
}

impl Kind {
    fn of(col: &sqlx::mysql::MySqlColumn) -> Kind {
        match col.type_info().name() {
            "BOOLEAN" => Kind::Bool,
            "TINYINT" => Kind::Int1,
            "SMALLINT" => Kind::Int2,
            "INT" | "MEDIUMINT" => Kind::Int4,
            "BIGINT" => Kind::Int8,
            "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED"
            | "BIGINT UNSIGNED" => Kind::Unsigned,
            "FLOAT" => Kind::Float4,
            "DOUBLE" => Kind::Float8,
            "DATETIME" => Kind::DateTime,
            "TIMESTAMP" => Kind::Timestamp,
            "DATE" => Kind::Date,
            "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BINARY" | "VARBINARY" => Kind::Bytes,
            "DECIMAL" => Kind::Decimal,
            "JSON" => Kind::Json,
            _ => Kind::Text,
        }
    }
}

/// The rows of a result as [`Value`]s ([`super::decode_rows`]).
pub(super) fn decode_all(rows: &[MySqlRow]) -> sqlx::Result<Vec<Row>> {
    fn get<'r, T: sqlx::Decode<'r, sqlx::MySql>>(
        raw: sqlx::mysql::MySqlValueRef<'r>,
    ) -> std::result::Result<T, sqlx::error::BoxDynError> {
        T::decode(raw)
    }
    crate::db::decode_rows(
        rows,
        |c| Ok(Kind::of(c)),
        |kind, row, index| {
            let raw = row.try_get_raw(index)?;
            match kind {
                Kind::Bool => get::<bool>(raw).map(Value::Bool),
                Kind::Int1 => get::<i8>(raw).map(|v| Value::Int(v.into())),
                Kind::Int2 => get::<i16>(raw).map(|v| Value::Int(v.into())),
                Kind::Int4 => get::<i32>(raw).map(|v| Value::Int(v.into())),
                Kind::Int8 => get::<i64>(raw).map(Value::Int),
                Kind::Unsigned => get::<u64>(raw).and_then(|v| Ok(Value::Int(i64::try_from(v)?))),
                Kind::Float4 => get::<f32>(raw).map(|v| Value::Float(v.into())),
                Kind::Float8 => get::<f64>(raw).map(Value::Float),
                Kind::DateTime => get::<chrono::NaiveDateTime>(raw).map(Value::Timestamp),
                // TIMESTAMP comes in the session's time zone; sqlx reads it as UTC.
                Kind::Timestamp => get::<chrono::DateTime<chrono::Utc>>(raw)
                    .map(|t| Value::Timestamp(t.naive_utc())),
                Kind::Date => get::<chrono::NaiveDate>(raw).map(|d| Value::Text(d.to_string())),
                Kind::Bytes => get::<Vec<u8>>(raw).map(Value::Bytes),
                Kind::Decimal => get::<&str>(raw).map(|d| Value::Decimal(d.to_owned())),
                Kind::Json => get::<&str>(raw).map(|text| {
                    serde_json::from_str(text)
                        .map_or_else(|_| Value::Text(text.to_owned()), Value::Json)
                }),
                Kind::Text => match get::<&str>(raw) {
                    Ok(text) => Ok(Value::Text(text.to_owned())),
                    Err(_) => get::<Vec<u8>>(row.try_get_raw(index)?).map(Value::Bytes),
                },
            }
        },
    )
}

/// The most JSON a bulk update sends in one statement: well under the server's
/// default `max_allowed_packet` (16 MiB).
pub(super) const MAX_JSON_DOCUMENT: usize = 4 << 20;

/// The `JSON_TABLE` column type each of a bulk update's values (keys, new
/// values, guard values) travels as, or `None` when one cannot go that way.
/// Keys keep their integer type, so that the join uses the primary key; the
/// rest are numbers or text, converted by the assignment as a bound value is
/// (strict mode still refuses what does not fit). Text keys, bytes and
/// spatial types take the other way.
pub(super) fn json_table_types(spec: &BulkUpdate) -> Option<Vec<&'static str>> {
    let n_keys = spec.keys.len();
    let guard_types = spec
        .guard
        .as_ref()
        .map(|g| g.types.as_slice())
        .unwrap_or_default();
    let all = spec.types.iter().chain(guard_types);
    let mut out = Vec::new();
    for (i, t) in all.enumerate() {
        let t = t.to_ascii_lowercase();
        let integer = matches!(
            t.as_str(),
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint"
        );
        out.push(match t.as_str() {
            _ if integer => "BIGINT",
            _ if i < n_keys => return None,
            "float" | "double" | "real" => "DOUBLE",
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "decimal"
            | "numeric" | "date" | "datetime" | "timestamp" | "time" | "year" | "enum" | "set" => {
                "LONGTEXT"
            }
            _ => return None,
        });
    }
    (out.len() == n_keys + spec.sets.len() + guard_types.len()).then_some(out)
}

/// The rows' first values (one for each of `types`, the `JSON_TABLE` column
/// types) as JSON arrays of arrays, in documents of at most about
/// [`MAX_JSON_DOCUMENT`] bytes; `None` if a value has no exact JSON form (bytes,
/// a NaN or an infinity) or is not a number where a number column takes it
/// (`JSON_TABLE` would read text there as 0 where a bound value is refused).
pub(super) fn json_documents(rows: &[Row], types: &[&str]) -> Option<Vec<String>> {
    use std::fmt::Write as _;
    let mut docs = Vec::new();
    let mut doc = String::new();
    for row in rows {
        doc.push(if doc.is_empty() { '[' } else { ',' });
        doc.push('[');
        for (j, (v, ty)) in row.iter().zip(types).enumerate() {
            if j > 0 {
                doc.push(',');
            }
            let number = matches!(v, Value::Null | Value::Int(_) | Value::Bool(_))
                || (*ty == "DOUBLE" && matches!(v, Value::Float(_)));
            if *ty != "LONGTEXT" && !number {
                return None;
            }
            match v {
                Value::Null => doc.push_str("null"),
                Value::Int(n) => {
                    let _ = write!(doc, "{n}");
                }
                Value::Bool(b) => doc.push(if *b { '1' } else { '0' }),
                // `{:?}` is the shortest form that reads back as the same double.
                Value::Float(f) if f.is_finite() => {
                    let _ = write!(doc, "{f:?}");
                }
                Value::Text(t) => json_string(&mut doc, t),
                Value::Timestamp(t) => json_string(&mut doc, &timestamp_text(t)),
                Value::Decimal(_)
                | Value::Json(_)
                | Value::Array(_)
                | Value::Float(_)
                | Value::Bytes(_) => return None,
            }
        }
        doc.push(']');
        if doc.len() >= MAX_JSON_DOCUMENT {
            doc.push(']');
            docs.push(std::mem::take(&mut doc));
        }
    }
    if !doc.is_empty() {
        doc.push(']');
        docs.push(doc);
    }
    Some(docs)
}

/// A timestamp as MariaDB reads it from text, to the microsecond.
pub(super) fn timestamp_text(t: &chrono::NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// `text` as a JSON string.
fn json_string(out: &mut String, text: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::{json_documents, MAX_JSON_DOCUMENT};
    use crate::db::Value;

    #[test]
    fn rows_become_json_documents_that_read_back_as_the_values() {
        let at = chrono::NaiveDate::from_ymd_opt(2026, 3, 4)
            .and_then(|d| d.and_hms_micro_opt(5, 6, 7, 8))
            .unwrap();
        let rows = vec![vec![
            Value::Int(i64::MIN),
            Value::Float(0.1),
            Value::Text("a \"q\" \\ \t\n\u{1} ☃".into()),
            Value::Timestamp(at),
            Value::Bool(true),
            Value::Null,
            Value::Text("not sent".into()),
        ]];
        let types = [
            "BIGINT", "DOUBLE", "LONGTEXT", "LONGTEXT", "BIGINT", "LONGTEXT",
        ];
        let docs = json_documents(&rows, &types).unwrap();
        assert_eq!(docs.len(), 1);
        let parsed: serde_json::Value = serde_json::from_str(&docs[0]).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([[
                i64::MIN,
                0.1,
                "a \"q\" \\ \t\n\u{1} ☃",
                "2026-03-04 05:06:07.000008",
                1,
                null
            ]])
        );
    }

    #[test]
    fn large_batches_are_cut_into_documents_below_the_limit() {
        let rows: Vec<Vec<Value>> = (0..20_000)
            .map(|i| vec![Value::Int(i), Value::Text("x".repeat(500))])
            .collect();
        let docs = json_documents(&rows, &["BIGINT", "LONGTEXT"]).unwrap();
        assert!(docs.len() > 1, "{} documents", docs.len());
        let mut seen = 0;
        for doc in &docs {
            assert!(doc.len() < MAX_JSON_DOCUMENT + 1024, "{}", doc.len());
            let parsed: Vec<(i64, String)> = serde_json::from_str(doc).unwrap();
            for (id, _) in parsed {
                assert_eq!(id, seen, "in order, each row once");
                seen += 1;
            }
        }
        assert_eq!(seen, 20_000);
    }

    #[test]
    fn values_without_an_exact_json_form_take_the_other_way() {
        let types = ["BIGINT", "LONGTEXT"];
        assert!(json_documents(&[vec![Value::Int(1), Value::Bytes(vec![0])]], &types).is_none());
        assert!(json_documents(&[vec![Value::Int(1), Value::Float(f64::NAN)]], &types).is_none());
        assert!(
            json_documents(&[vec![Value::Int(1), Value::Float(f64::INFINITY)]], &types).is_none()
        );
        // Text for a number column: refused by the column, not read as 0.
        let numbers = ["BIGINT", "BIGINT", "DOUBLE"];
        let row = |v: Value| vec![Value::Int(1), v, Value::Float(1.5)];
        assert!(json_documents(&[row(Value::Text("abc".into()))], &numbers).is_none());
        assert!(json_documents(&[row(Value::Float(2.5))], &numbers).is_none());
        assert!(json_documents(&[row(Value::Int(2))], &numbers).is_some());
    }
}
