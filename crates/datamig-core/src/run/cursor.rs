//! The checkpoint's cursor: the last key a run finished, stored as a JSON array
//! (`[4180000]`, `["eu", 17]`) so composite and text keys round-trip exactly.

use crate::db::Value;

pub fn encode(key: &[Value]) -> Result<String, String> {
    let items: Result<Vec<serde_json::Value>, String> = key
        .iter()
        .map(|v| match v {
            Value::Int(i) => Ok(serde_json::Value::from(*i)),
            Value::Text(s) => Ok(serde_json::Value::from(s.as_str())),
            Value::Bool(b) => Ok(serde_json::Value::from(*b)),
            Value::Null => Err("a key column holds NULL; keys must be NOT NULL".to_string()),
            Value::Float(_)
            | Value::Bytes(_)
            | Value::Timestamp(_)
            | Value::Decimal(_)
            | Value::Json(_)
            | Value::Array(_) => Err(
                "key columns must be integers or text (floats, bytes, timestamps, decimals, JSON and arrays are not supported as keys)"
                    .to_string(),
            ),
        })
        .collect();
    Ok(serde_json::Value::Array(items?).to_string())
}

/// Decodes a stored cursor for a key of `arity` columns.
pub fn decode(text: &str, arity: usize) -> Result<Vec<Value>, String> {
    let parsed: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let items = parsed.as_array().ok_or("not a JSON array")?;
    if items.len() != arity {
        return Err(format!(
            "it has {} key value(s) where the job's key has {arity}",
            items.len()
        ));
    }
    items
        .iter()
        .map(|v| match v {
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(Value::Int)
                .ok_or_else(|| format!("{n} is not an integer")),
            serde_json::Value::String(s) => Ok(Value::Text(s.clone())),
            serde_json::Value::Bool(b) => Ok(Value::Bool(*b)),
            other => Err(format!("{other} is not a key value")),
        })
        .collect()
}

/// `4180000`, or `(eu, 17)` for a composite key.
pub fn display(key: &[Value]) -> String {
    crate::db::display_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let key = vec![Value::Text("eu \"west\"".into()), Value::Int(-17)];
        assert_eq!(decode(&encode(&key).unwrap(), 2).unwrap(), key);
    }

    #[test]
    fn corrupt_cursors_are_errors_not_panics() {
        for bad in [
            "",
            "{",
            "[1",
            "{\"a\":1}",
            "[1.5]",
            "[null]",
            "[[1]]",
            "[1, 2]",
        ] {
            assert!(decode(bad, 1).is_err(), "{bad}");
        }
        assert!(encode(&[Value::Null]).is_err());
    }
}
