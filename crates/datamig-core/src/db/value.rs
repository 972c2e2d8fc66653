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
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::Bool(b) => Some(i64::from(*b)),
            Value::Text(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// Text, or bytes that are UTF-8 (MariaDB reports some catalogue columns as binary).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn into_string(self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s),
            Value::Bytes(b) => String::from_utf8(b).ok(),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
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
