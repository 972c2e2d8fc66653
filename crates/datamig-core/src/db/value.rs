//! [`Value`]: a value going to or from any of the three databases, and
//! [`Row`], a row of them. The one data type every layer above shares.

/// A value going to or coming from the database, whatever the backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// A date and time without a zone, by convention UTC (`TIMESTAMP` on
    /// PostgreSQL, `DATETIME` on MariaDB, `YYYY-MM-DD HH:MM:SS` text on SQLite).
    /// Bind timestamps as this, not as text: PostgreSQL evaluates
    /// `CAST(? AS TIMESTAMP)` of a text parameter again for every row it filters.
    Timestamp(chrono::NaiveDateTime),
    /// An exact decimal, as its text (`12.50`, `-0.000001`): PostgreSQL
    /// `numeric`, MariaDB `DECIMAL`; written to SQLite as text (its `NUMERIC`
    /// affinity converts it). Text, so that no digit is lost and a job parses it
    /// with the decimal crate it uses (`rust_decimal`, `bigdecimal`).
    Decimal(String),
    /// JSON: PostgreSQL `json`/`jsonb` read as it; written to PostgreSQL as
    /// `jsonb`, to MariaDB and SQLite as its text. MariaDB's `JSON` is text to
    /// its clients and reads as [`Value::Text`]: [`Value::to_json_value`] and
    /// `SourceRow::json` parse either.
    Json(serde_json::Value),
    /// A PostgreSQL array (one dimension; elements of one type, or NULL),
    /// read and written as the array. MariaDB and SQLite have none: written there
    /// as a JSON array's text.
    Array(Vec<Value>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::Bool(b) => Some(i64::from(*b)),
            Value::Text(s) | Value::Decimal(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// Text, a decimal's text, or bytes that are UTF-8 (MariaDB reports some
    /// catalogue columns as binary).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Decimal(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn into_string(self) -> Option<String> {
        match self {
            Value::Text(s) | Value::Decimal(s) => Some(s),
            Value::Bytes(b) => String::from_utf8(b).ok(),
            Value::Int(i) => Some(i.to_string()),
            Value::Json(j) => Some(j.to_string()),
            _ => None,
        }
    }

    /// A decimal from its text, checked: `Value::decimal("12.50")`.
    pub fn decimal(text: &str) -> std::result::Result<Value, String> {
        text.trim()
            .parse::<sqlx::types::BigDecimal>()
            .map(|_| Value::Decimal(text.trim().to_string()))
            .map_err(|_| format!("{text:?} is not a decimal number"))
    }

    /// The value as JSON it holds: a [`Value::Json`] as it is, text (MariaDB's
    /// `JSON`, SQLite's) parsed; `Err` says why it is none.
    pub fn to_json_value(&self) -> std::result::Result<serde_json::Value, String> {
        match self {
            Value::Json(j) => Ok(j.clone()),
            Value::Null => Ok(serde_json::Value::Null),
            other => match other.as_str() {
                Some(text) => serde_json::from_str(text).map_err(|e| format!("not JSON: {e}")),
                None => Err(format!("not JSON but {other:?}")),
            },
        }
    }

    /// A JSON value (a field of a job's own row type) as the value written to
    /// its column: null, a boolean, an integer or a float as themselves, a
    /// number beyond `i64` as a decimal, text as text (the column's type reads
    /// a timestamp, a decimal or a uuid from it), an array as an array, an
    /// object as JSON.
    pub fn from_json(json: serde_json::Value) -> Value {
        use serde_json::Value as J;
        match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(b),
            J::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Value::Int(i),
                (None, Some(u)) => Value::Decimal(u.to_string()),
                _ => n.as_f64().map_or(Value::Null, Value::Float),
            },
            J::String(s) => Value::Text(s),
            J::Array(items) => Value::Array(items.into_iter().map(Value::from_json).collect()),
            object @ J::Object(_) => Value::Json(object),
        }
    }

    /// The value as it goes into a column of SQL type `column_type`: an array
    /// into a JSON column is JSON.
    pub(crate) fn fit(self, column_type: &str) -> Value {
        match self {
            Value::Array(_) if column_type.to_ascii_lowercase().contains("json") => {
                Value::Json(self.to_json())
            }
            other => other,
        }
    }

    /// The value as SQL-free text for a database without the type: a JSON
    /// document or array as its JSON text, a decimal as itself.
    pub(crate) fn portable(&self) -> Option<String> {
        match self {
            Value::Json(j) => Some(j.to_string()),
            Value::Array(_) => Some(self.to_json().to_string()),
            Value::Decimal(d) => Some(d.clone()),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as JSON: text and numbers as themselves, bytes as UTF-8 text
    /// where they are (else an array of numbers), a timestamp as
    /// `YYYY-MM-DD HH:MM:SS[.ffffff]`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Text(s) => J::String(s.clone()),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => J::String(s.to_string()),
                Err(_) => J::from(b.clone()),
            },
            Value::Timestamp(t) => J::String(t.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
            // Exact: a JSON number would go through f64 in a job's serde type.
            Value::Decimal(d) => J::String(d.clone()),
            Value::Json(j) => j.clone(),
            Value::Array(items) => J::Array(items.iter().map(Value::to_json).collect()),
        }
    }
}

/// `4180000`, or `(eu, 17)` for a composite key.
pub fn display_key(key: &[Value]) -> String {
    let parts: Vec<String> = key
        .iter()
        .map(|v| match v {
            Value::Text(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        format!("({})", parts.join(", "))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<chrono::NaiveDateTime> for Value {
    fn from(v: chrono::NaiveDateTime) -> Self {
        Value::Timestamp(v)
    }
}
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        Value::Json(v)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::Array(v.into_iter().map(Into::into).collect())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

pub type Row = Vec<Value>;
