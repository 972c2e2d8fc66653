//! PostgreSQL values: how a [`Value`] is bound (a decimal as `numeric`, JSON as
//! `jsonb`, arrays as typed arrays, a batch's column as an array for `unnest`)
//! and how a result column is decoded into one (`numeric` at its own scale,
//! `uuid` as text, arrays element by element).

use std::borrow::Cow;
use std::fmt::Write as _;

use sqlx::postgres::PgRow;
use sqlx::{Column, Row as _, TypeInfo};

use crate::db::{Row, Value};

pub(super) type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// A decimal as `numeric`, JSON as `jsonb` (which a `json` or text column takes
/// on assignment), an array as the array type of its elements.
pub(super) fn bind_other<'q>(q: Query<'q>, v: &'q Value) -> Query<'q> {
    match v {
        Value::Decimal(d) => q.bind(d.parse::<sqlx::types::BigDecimal>().ok()),
        Value::Json(j) => q.bind(sqlx::types::Json(j)),
        Value::Array(items) => Array::of(items.iter()).bind_to(q),
        other => q.bind(other.clone().into_string()),
    }
}

/// A column of a batch as a typed array, for `unnest`, borrowing the rows' text
/// and bytes (a copy of each would be made only to be encoded and dropped).
pub(super) enum Array<'a> {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Text(Vec<Option<Cow<'a, str>>>),
    Bytes(Vec<Option<&'a [u8]>>),
    Timestamp(Vec<Option<chrono::NaiveDateTime>>),
    Decimal(Vec<Option<sqlx::types::BigDecimal>>),
}

impl<'a> Array<'a> {
    /// The narrowest array type that holds every value; text when they are mixed.
    pub(super) fn of(values: impl Iterator<Item = &'a Value> + Clone) -> Array<'a> {
        let kinds: std::collections::BTreeSet<u8> = values
            .clone()
            .filter_map(|v| match v {
                Value::Null => None,
                Value::Int(_) => Some(0),
                Value::Float(_) => Some(1),
                Value::Bool(_) => Some(2),
                Value::Text(_) => Some(3),
                Value::Bytes(_) => Some(4),
                Value::Timestamp(_) => Some(5),
                Value::Decimal(_) => Some(6),
                // As text, cast to the column's type where it is known.
                Value::Json(_) | Value::Array(_) => Some(3),
            })
            .collect();
        let only = if kinds.len() == 1 {
            kinds.first().copied()
        } else {
            None
        };
        match only {
            Some(0) => Array::Int(values.map(Value::as_i64).collect()),
            Some(1) => Array::Float(
                values
                    .map(|v| {
                        if let Value::Float(f) = v {
                            Some(*f)
                        } else {
                            None
                        }
                    })
                    .collect(),
            ),
            Some(2) => Array::Bool(
                values
                    .map(|v| {
                        if let Value::Bool(b) = v {
                            Some(*b)
                        } else {
                            None
                        }
                    })
                    .collect(),
            ),
            Some(4) => Array::Bytes(
                values
                    .map(|v| {
                        if let Value::Bytes(b) = v {
                            Some(b.as_slice())
                        } else {
                            None
                        }
                    })
                    .collect(),
            ),
            Some(5) => Array::Timestamp(
                values
                    .map(|v| {
                        if let Value::Timestamp(t) = v {
                            Some(*t)
                        } else {
                            None
                        }
                    })
                    .collect(),
            ),
            Some(6) => Array::Decimal(
                values
                    .map(|v| match v {
                        Value::Decimal(d) => d.parse().ok(),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => Array::Text(
                values
                    .map(|v| match v {
                        Value::Null => None,
                        Value::Text(t) => Some(Cow::Borrowed(t.as_str())),
                        Value::Array(items) => Some(Cow::Owned(array_literal(items))),
                        Value::Float(f) => Some(Cow::Owned(f.to_string())),
                        Value::Bool(b) => Some(Cow::Owned(b.to_string())),
                        Value::Timestamp(t) => {
                            Some(Cow::Owned(t.format("%Y-%m-%d %H:%M:%S%.f").to_string()))
                        }
                        other => other.clone().into_string().map(Cow::Owned),
                    })
                    .collect(),
            ),
        }
    }

    pub(super) fn sql_type(&self) -> &'static str {
        match self {
            Array::Int(_) => "int8",
            Array::Float(_) => "float8",
            Array::Bool(_) => "bool",
            Array::Text(_) => "text",
            Array::Bytes(_) => "bytea",
            Array::Timestamp(_) => "timestamp",
            Array::Decimal(_) => "numeric",
        }
    }

    pub(super) fn bind_to(self, q: Query<'a>) -> Query<'a> {
        match self {
            Array::Int(v) => q.bind(v),
            Array::Float(v) => q.bind(v),
            Array::Bool(v) => q.bind(v),
            Array::Text(v) => q.bind(v),
            Array::Bytes(v) => q.bind(v),
            Array::Timestamp(v) => q.bind(v),
            Array::Decimal(v) => q.bind(v),
        }
    }
}

/// An array's text as PostgreSQL reads it (`{1,NULL,"a \"b\""}`): for an array
/// among values of other types, sent as text and cast to the column's type.
fn array_literal(items: &[Value]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(inner) => out.push_str(&array_literal(inner)),
            other => {
                let text = match other {
                    Value::Float(f) => f.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
                    Value::Bytes(b) => {
                        let mut hex = String::from("\\x");
                        for byte in b {
                            let _ = write!(hex, "{byte:02x}");
                        }
                        hex
                    }
                    v => v.clone().into_string().unwrap_or_default(),
                };
                out.push('"');
                for c in text.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    out
}

/// How a result column becomes a [`Value`], resolved once per result from its type.
#[derive(Clone, Copy)]
enum Kind {
    Int2,
    Int4,
    Int8,
    Oid,
    Bool,
    Float4,
    Float8,
    Bytes,
    Timestamp,
    TimestampTz,
    Text,
    /// A `uuid`, read as its canonical text (and compared as a key through a
    /// cast back: [`Driver::key_mark`]).
    Uuid,
    Numeric,
    Json,
    /// A one-dimensional array of elements of this kind.
    Array(Element),
}

/// The element types of the arrays datamig reads.
#[derive(Clone, Copy)]
enum Element {
    Int2,
    Int4,
    Int8,
    Bool,
    Float4,
    Float8,
    Text,
    Numeric,
    Timestamp,
    Bytes,
}

impl Kind {
    fn of(col: &sqlx::postgres::PgColumn) -> sqlx::Result<Kind> {
        Ok(match col.type_info().name() {
            "INT2" => Kind::Int2,
            "INT4" => Kind::Int4,
            "INT8" => Kind::Int8,
            "OID" => Kind::Oid,
            "BOOL" => Kind::Bool,
            "FLOAT4" => Kind::Float4,
            "FLOAT8" => Kind::Float8,
            "BYTEA" => Kind::Bytes,
            "TIMESTAMP" => Kind::Timestamp,
            "TIMESTAMPTZ" => Kind::TimestampTz,
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "UNKNOWN" => Kind::Text,
            "UUID" => Kind::Uuid,
            "NUMERIC" => Kind::Numeric,
            "JSON" | "JSONB" => Kind::Json,
            "INT2[]" => Kind::Array(Element::Int2),
            "INT4[]" => Kind::Array(Element::Int4),
            "INT8[]" => Kind::Array(Element::Int8),
            "BOOL[]" => Kind::Array(Element::Bool),
            "FLOAT4[]" => Kind::Array(Element::Float4),
            "FLOAT8[]" => Kind::Array(Element::Float8),
            "TEXT[]" | "VARCHAR[]" | "BPCHAR[]" | "NAME[]" => Kind::Array(Element::Text),
            "NUMERIC[]" => Kind::Array(Element::Numeric),
            "TIMESTAMP[]" => Kind::Array(Element::Timestamp),
            "BYTEA[]" => Kind::Array(Element::Bytes),
            other => {
                return Err(sqlx::Error::Decode(
                    format!(
                    "column `{}` has type {other}, which datamig does not read; cast it to text",
                    col.name()
                )
                    .into(),
                ))
            }
        })
    }
}

/// The rows of a result as [`Value`]s, each value decoded as its column's kind
/// without sqlx's per-value type check ([`super::decode_rows`]).
pub(super) fn decode_all(rows: &[PgRow]) -> sqlx::Result<Vec<Row>> {
    fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres>>(
        raw: sqlx::postgres::PgValueRef<'r>,
    ) -> std::result::Result<T, sqlx::error::BoxDynError> {
        T::decode(raw)
    }
    crate::db::decode_rows(rows, Kind::of, |kind, row, index| {
        let raw = row.try_get_raw(index)?;
        match kind {
            Kind::Int2 => get::<i16>(raw).map(|v| Value::Int(v.into())),
            Kind::Int4 => get::<i32>(raw).map(|v| Value::Int(v.into())),
            Kind::Int8 => get::<i64>(raw).map(Value::Int),
            Kind::Oid => get::<sqlx::postgres::types::Oid>(raw).map(|v| Value::Int(v.0.into())),
            Kind::Bool => get::<bool>(raw).map(Value::Bool),
            Kind::Float4 => get::<f32>(raw).map(|v| Value::Float(v.into())),
            Kind::Float8 => get::<f64>(raw).map(Value::Float),
            Kind::Bytes => get::<Vec<u8>>(raw).map(Value::Bytes),
            Kind::Timestamp => get::<chrono::NaiveDateTime>(raw).map(Value::Timestamp),
            Kind::TimestampTz => {
                get::<chrono::DateTime<chrono::Utc>>(raw).map(|t| Value::Timestamp(t.naive_utc()))
            }
            Kind::Text => get::<&str>(raw).map(|t| Value::Text(t.to_owned())),
            Kind::Uuid => uuid_text(raw).map(Value::Text),
            Kind::Numeric => numeric_text(raw).map(Value::Decimal),
            Kind::Json => {
                get::<sqlx::types::Json<serde_json::Value>>(raw).map(|j| Value::Json(j.0))
            }
            Kind::Array(element) => array(raw, element).map(Value::Array),
        }
    })
}

/// A `numeric` as PostgreSQL shows it: its digits at the value's own scale
/// (`12.50` stays `12.50`; sqlx's decimal has the scale of its base-10000
/// digits, `12.5000`).
fn numeric_text(
    raw: sqlx::postgres::PgValueRef<'_>,
) -> std::result::Result<String, sqlx::error::BoxDynError> {
    if raw.format() == sqlx::postgres::PgValueFormat::Text {
        return <&str as sqlx::Decode<sqlx::Postgres>>::decode(raw).map(str::to_owned);
    }
    let bytes = <&[u8] as sqlx::Decode<sqlx::Postgres>>::decode(raw.clone())?;
    numeric_from_binary(bytes)
}

/// The binary `numeric` (ndigits, weight, sign, dscale, then base-10000 digits).
fn numeric_from_binary(bytes: &[u8]) -> std::result::Result<String, sqlx::error::BoxDynError> {
    let word = |i: usize| -> std::result::Result<u16, sqlx::error::BoxDynError> {
        bytes
            .get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a numeric cut short".into())
    };
    let (ndigits, weight, sign, dscale) = (word(0)?, word(2)?.cast_signed(), word(4)?, word(6)?);
    if sign == 0xC000 {
        return Err("NaN, which a decimal cannot hold".into());
    }
    if sign == 0xD000 || sign == 0xF000 {
        return Err("an infinite numeric, which a decimal cannot hold".into());
    }
    let mut integer = String::new();
    let mut fraction = String::new();
    for i in 0..usize::from(ndigits) {
        let digit = word(8 + 2 * i)?;
        let position = i64::from(weight) - i64::try_from(i).unwrap_or(i64::MAX);
        if position >= 0 {
            if integer.is_empty() {
                integer = digit.to_string();
            } else {
                integer.push_str(&format!("{digit:04}"));
            }
        } else {
            if fraction.is_empty() && position < -1 {
                // Base-10000 zeros between the point and the first digit given.
                for _ in 0..(-position - 1) {
                    fraction.push_str("0000");
                }
            }
            fraction.push_str(&format!("{digit:04}"));
        }
    }
    // Zero groups after the last digit given, up to the point.
    let given = i64::from(ndigits);
    if given > 0 && i64::from(weight) >= given {
        for _ in 0..(i64::from(weight) - given + 1) {
            integer.push_str("0000");
        }
    }
    if integer.is_empty() {
        integer.push('0');
    }
    let scale = usize::from(dscale);
    fraction.truncate(scale);
    while fraction.len() < scale {
        fraction.push('0');
    }
    let sign = if sign == 0x4000 { "-" } else { "" };
    Ok(if scale == 0 {
        format!("{sign}{integer}")
    } else {
        format!("{sign}{integer}.{fraction}")
    })
}

/// A `numeric[]`'s elements, each at its own scale.
fn numeric_array(
    raw: sqlx::postgres::PgValueRef<'_>,
) -> std::result::Result<Vec<Value>, sqlx::error::BoxDynError> {
    if raw.format() == sqlx::postgres::PgValueFormat::Text {
        // Only a simple query gives text; datamig's are prepared (binary).
        return Err("a numeric[] in text form".into());
    }
    // The binary array: ndim, has-null flag, element oid, then per dimension
    // (length, lower bound), then each element as (length or -1, bytes).
    let bytes = <&[u8] as sqlx::Decode<sqlx::Postgres>>::decode(raw)?;
    let int = |i: usize| -> std::result::Result<i32, sqlx::error::BoxDynError> {
        bytes
            .get(i..i + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "a numeric[] cut short".into())
    };
    let ndim = int(0)?;
    if ndim == 0 {
        return Ok(Vec::new());
    }
    if ndim != 1 {
        return Err(format!("a numeric array of {ndim} dimensions").into());
    }
    let len = usize::try_from(int(12)?)?;
    let mut at = 20;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let n = int(at)?;
        at += 4;
        if n < 0 {
            out.push(Value::Null);
            continue;
        }
        let n = usize::try_from(n)?;
        let item = bytes.get(at..at + n).ok_or("a numeric[] cut short")?;
        out.push(Value::Decimal(numeric_from_binary(item)?));
        at += n;
    }
    Ok(out)
}

/// A one-dimensional array's elements as [`Value`]s.
fn array(
    raw: sqlx::postgres::PgValueRef<'_>,
    element: Element,
) -> std::result::Result<Vec<Value>, sqlx::error::BoxDynError> {
    fn each<T>(
        raw: sqlx::postgres::PgValueRef<'_>,
        to: impl Fn(T) -> Value,
    ) -> std::result::Result<Vec<Value>, sqlx::error::BoxDynError>
    where
        T: for<'a> sqlx::Decode<'a, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + sqlx::postgres::PgHasArrayType,
    {
        let items = <Vec<Option<T>> as sqlx::Decode<sqlx::Postgres>>::decode(raw)?;
        Ok(items
            .into_iter()
            .map(|v| v.map_or(Value::Null, &to))
            .collect())
    }
    match element {
        Element::Int2 => each::<i16>(raw, |v| Value::Int(v.into())),
        Element::Int4 => each::<i32>(raw, |v| Value::Int(v.into())),
        Element::Int8 => each::<i64>(raw, Value::Int),
        Element::Bool => each::<bool>(raw, Value::Bool),
        Element::Float4 => each::<f32>(raw, |v| Value::Float(v.into())),
        Element::Float8 => each::<f64>(raw, Value::Float),
        Element::Text => each::<String>(raw, Value::Text),
        Element::Numeric => numeric_array(raw),
        Element::Timestamp => each::<chrono::NaiveDateTime>(raw, Value::Timestamp),
        Element::Bytes => each::<Vec<u8>>(raw, Value::Bytes),
    }
}

/// A `uuid` value as its canonical text: `00000000-0000-0000-0000-000000000001`.
fn uuid_text(
    raw: sqlx::postgres::PgValueRef<'_>,
) -> std::result::Result<String, sqlx::error::BoxDynError> {
    if raw.format() == sqlx::postgres::PgValueFormat::Text {
        return <&str as sqlx::Decode<sqlx::Postgres>>::decode(raw).map(str::to_owned);
    }
    let bytes = <&[u8] as sqlx::Decode<sqlx::Postgres>>::decode(raw)?;
    if bytes.len() != 16 {
        return Err(format!("a uuid of {} bytes", bytes.len()).into());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(char::from(HEX[usize::from(b >> 4)]));
        text.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Ok(text)
}
