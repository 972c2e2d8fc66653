//! Splits a migration file into statements, for the databases and modes where
//! statements must be sent one by one: MariaDB/MySQL (to know how far a failed
//! migration got) and `-- datamig:no-transaction` files (PostgreSQL runs a
//! multi-statement string as one implicit transaction).
//!
//! It understands quotes, comments, PostgreSQL dollar quoting, the mysql client's
//! `DELIMITER` lines, and `BEGIN … END` bodies of triggers and routines.

/// One statement and the line of the file it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub line: usize,
}

/// Which lexical rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `$tag$…$tag$` quoting.
    Postgres,
    /// Backslash escapes in strings, `#` comments, `DELIMITER` lines.
    MySql,
    Sqlite,
}

/// Whether `sql` holds any statement, not just comments and blank lines.
pub fn has_statement(sql: &str) -> bool {
    !split(sql, Flavor::Postgres).is_empty()
}

pub fn split(sql: &str, flavor: Flavor) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut delimiter = ";".to_string();
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    let mut line = 1;
    let mut current = String::new();
    let mut start_line = 1;
    let mut at_line_start = true;
    let mut has_code = false;

    let flush =
        |current: &mut String, has_code: &mut bool, out: &mut Vec<Statement>, start_line: usize| {
            let text = current.trim();
            if *has_code && !text.is_empty() {
                out.push(Statement {
                    sql: text.to_string(),
                    line: start_line,
                });
            }
            current.clear();
            *has_code = false;
        };

    while i < chars.len() {
        let c = chars[i];
        // `DELIMITER //` on a line of its own, as the mysql client reads it.
        if flavor == Flavor::MySql && at_line_start && !has_code {
            let rest: String = chars[i..].iter().take_while(|&&ch| ch != '\n').collect();
            let trimmed = rest.trim();
            // `get`: the line's 10th byte may fall inside a character.
            if trimmed.len() > 10
                && trimmed
                    .get(..10)
                    .is_some_and(|p| p.eq_ignore_ascii_case("delimiter "))
            {
                delimiter = trimmed[10..].trim().to_string();
                i += rest.chars().count();
                continue;
            }
        }
        if c == '\n' {
            line += 1;
            at_line_start = true;
            current.push(c);
            i += 1;
            continue;
        }
        if !c.is_whitespace() {
            at_line_start = false;
        }
        // Comments.
        let line_comment =
            (c == '-' && chars.get(i + 1) == Some(&'-')) || (flavor == Flavor::MySql && c == '#');
        if line_comment {
            while i < chars.len() && chars[i] != '\n' {
                current.push(chars[i]);
                i += 1;
            }
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'*') {
            current.push_str("/*");
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                if chars[i] == '\n' {
                    line += 1;
                }
                current.push(chars[i]);
                i += 1;
            }
            if i < chars.len() {
                current.push_str("*/");
                i += 2;
            }
            continue;
        }
        if !has_code && !c.is_whitespace() {
            has_code = true;
            start_line = line;
        }
        // Quoted strings and identifiers.
        if c == '\'' || c == '"' || c == '`' {
            current.push(c);
            i += 1;
            while i < chars.len() {
                let ch = chars[i];
                current.push(ch);
                i += 1;
                if ch == '\n' {
                    line += 1;
                }
                if ch == '\\' && flavor == Flavor::MySql && c != '`' && i < chars.len() {
                    current.push(chars[i]);
                    i += 1;
                    continue;
                }
                if ch == c {
                    if chars.get(i) == Some(&c) {
                        current.push(c);
                        i += 1;
                        continue;
                    }
                    break;
                }
            }
            continue;
        }
        // PostgreSQL dollar quoting: $$…$$ or $tag$…$tag$.
        if c == '$' && flavor == Flavor::Postgres {
            if let Some(tag) = dollar_tag(&chars[i..]) {
                let tag_chars: Vec<char> = tag.chars().collect();
                current.push_str(&tag);
                i += tag_chars.len();
                while i < chars.len() && !chars[i..].starts_with(&tag_chars) {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    current.push(chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    current.push_str(&tag);
                    i += tag_chars.len();
                }
                continue;
            }
        }
        // The delimiter ends a statement, unless inside a trigger or routine body.
        let delim: Vec<char> = delimiter.chars().collect();
        if chars[i..].starts_with(&delim) && block_depth(&current) == 0 {
            i += delim.len();
            flush(&mut current, &mut has_code, &mut out, start_line);
            continue;
        }
        current.push(c);
        i += 1;
    }
    flush(&mut current, &mut has_code, &mut out, start_line);
    out
}

fn dollar_tag(chars: &[char]) -> Option<String> {
    let mut tag = String::from("$");
    for (n, &ch) in chars.iter().enumerate().skip(1) {
        if ch == '$' {
            tag.push('$');
            return Some(tag);
        }
        if !(ch.is_alphanumeric() || ch == '_') || (n == 1 && ch.is_ascii_digit()) {
            return None;
        }
        tag.push(ch);
    }
    None
}

/// How many `BEGIN`/`CASE` blocks are open in a `CREATE TRIGGER|PROCEDURE|FUNCTION|EVENT`
/// statement so far; 0 for every other statement.
fn block_depth(statement: &str) -> i32 {
    let words: Vec<String> = words_outside_quotes(statement);
    let is_body = words.first().is_some_and(|w| w == "CREATE")
        && words
            .iter()
            .take(8)
            .any(|w| matches!(w.as_str(), "TRIGGER" | "PROCEDURE" | "FUNCTION" | "EVENT"));
    if !is_body {
        return 0;
    }
    let mut depth = 0;
    let mut n = 0;
    while n < words.len() {
        match words[n].as_str() {
            "BEGIN" | "CASE" => depth += 1,
            "END" => match words.get(n + 1).map(String::as_str) {
                Some("IF" | "LOOP" | "WHILE" | "REPEAT") => n += 1,
                Some("CASE") => {
                    depth -= 1;
                    n += 1;
                }
                _ => depth -= 1,
            },
            _ => {}
        }
        n += 1;
    }
    depth
}

fn words_outside_quotes(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => quote = Some(c),
            '-' if chars.peek() == Some(&'-') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            c if c.is_alphanumeric() || c == '_' => {
                word.push(c.to_ascii_uppercase());
                continue;
            }
            _ => {}
        }
        if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by tests/fuzz: a MariaDB file whose line had a multi-byte character
    // across its 10th byte panicked the splitter (a byte slice of the line).
    #[test]
    fn a_multibyte_character_at_the_delimiter_check_does_not_panic() {
        let statements = split("'aa  a®🌀", Flavor::MySql);
        assert_eq!(statements.len(), 1);
        let statements = split("DELIMITER //\nSELECT 'ü' //\n", Flavor::MySql);
        assert_eq!(statements[0].sql, "SELECT 'ü'");
    }

    fn sqls(text: &str, flavor: Flavor) -> Vec<String> {
        split(text, flavor).into_iter().map(|s| s.sql).collect()
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let text = "-- header; not a statement\nCREATE TABLE a (x TEXT DEFAULT ';');\n/* c; */ INSERT INTO a VALUES ('it''s; ok');\n";
        let got = split(text, Flavor::Sqlite);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].line, 2);
        assert_eq!(got[1].sql, "/* c; */ INSERT INTO a VALUES ('it''s; ok')");
    }

    #[test]
    fn postgres_dollar_quotes() {
        let text = "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql;\nSELECT 1;";
        assert_eq!(sqls(text, Flavor::Postgres).len(), 2);
    }

    #[test]
    fn mysql_delimiter_and_backslashes() {
        let text = "INSERT INTO t VALUES ('a\\';b');\nDELIMITER //\nCREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END//\nDELIMITER ;\nSELECT 3;";
        let got = sqls(text, Flavor::MySql);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[1].starts_with("CREATE PROCEDURE"));
    }

    #[test]
    fn trigger_bodies_stay_whole() {
        let text = "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE b SET n = CASE WHEN 1 THEN 2 END; INSERT INTO c VALUES (1); END;\nSELECT 1;";
        let got = sqls(text, Flavor::Sqlite);
        assert_eq!(got.len(), 2, "{got:?}");
        let mysql = "CREATE PROCEDURE p() BEGIN IF 1 THEN SELECT 1; END IF; END;\nSELECT 2;";
        assert_eq!(sqls(mysql, Flavor::MySql).len(), 2);
    }

    #[test]
    fn comment_only_file_has_no_statements() {
        assert!(split("-- nothing here\n/* still nothing; */\n", Flavor::Postgres).is_empty());
    }
}
