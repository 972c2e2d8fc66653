//! SQL as text, with no I/O: quoting identifiers, names of locks, and a
//! planner's estimate as a row count.

/// A planner's row estimate (a float in EXPLAIN's output) as a row count.
pub(crate) fn rows_estimate(value: f64) -> Option<i64> {
    // EXPLAIN's figures are guesses: rounding one loses nothing.
    #[allow(clippy::cast_possible_truncation)]
    (0.0..9.0e18).contains(&value).then(|| value.round() as i64)
}

/// A stable 64-bit key for a named lock (PostgreSQL advisory locks).
pub fn lock_key(name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("datamig:{name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// The server-wide `GET_LOCK` name for a named lock in the current database (MariaDB/MySQL).
pub const MYSQL_LOCK_NAME_SQL: &str =
    "CONCAT('datamig.', LEFT(SHA2(CONCAT(IFNULL(DATABASE(), ''), '/', ?), 256), 40))";

/// Quotes an identifier with the given quote character, doubling it inside.
pub(crate) fn quote_with(name: &str, q: char) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push(q);
    for ch in name.chars() {
        if ch == q {
            s.push(q);
        }
        s.push(ch);
    }
    s.push(q);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_with("a\"b", '"'), "\"a\"\"b\"");
        assert_eq!(quote_with("t`x", '`'), "`t``x`");
    }
}
