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
