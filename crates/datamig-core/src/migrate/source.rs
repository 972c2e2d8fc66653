//! Migration files on disk: names, pairs, checksums and templates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The first line that makes a file run outside a transaction.
pub const NO_TRANSACTION: &str = "-- datamig:no-transaction";

/// Verbs a migration name may start with: the name says what the step does.
pub const VERBS: &[&str] = &[
    "add",
    "alter",
    "archive",
    "backfill",
    "change",
    "convert",
    "copy",
    "create",
    "deduplicate",
    "delete",
    "disable",
    "drop",
    "enable",
    "extend",
    "fix",
    "grant",
    "index",
    "insert",
    "make",
    "merge",
    "migrate",
    "modify",
    "move",
    "normalize",
    "partition",
    "populate",
    "reindex",
    "remove",
    "rename",
    "replace",
    "restore",
    "revoke",
    "seed",
    "set",
    "split",
    "truncate",
    "update",
    "widen",
];

/// One schema step: an `up` file and its `down` file.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    /// The `up` SQL, with BOM removed and line endings made `\n`.
    pub up: String,
    pub down: String,
    pub up_path: PathBuf,
    pub down_path: PathBuf,
    /// SHA-256 of the normalised `up` SQL, so CRLF or a BOM never counts as an edit.
    pub checksum: String,
}

impl Migration {
    /// `20261124093000_add_email`: how messages name a migration.
    pub fn id(&self) -> String {
        format!("{}_{}", self.version, self.name)
    }

    pub fn up_no_transaction(&self) -> bool {
        first_line_is_no_transaction(&self.up)
    }

    pub fn down_no_transaction(&self) -> bool {
        first_line_is_no_transaction(&self.down)
    }
}

fn first_line_is_no_transaction(sql: &str) -> bool {
    sql.lines()
        .next()
        .is_some_and(|l| l.trim() == NO_TRANSACTION)
}

/// Removes a UTF-8 BOM and makes every line ending `\n`.
pub fn normalize(text: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.replace("\r\n", "\n").replace('\r', "\n")
}

pub fn checksum(normalized: &str) -> String {
    let digest = Sha256::digest(normalized.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The migrations in a directory, with every problem found (each one line).
#[derive(Debug, Default)]
pub struct Loaded {
    pub migrations: Vec<Migration>,
    /// Problems that make the set unusable: nothing may run while any is present.
    pub errors: Vec<String>,
    /// Style problems `schema check` reports; other commands go on.
    pub lints: Vec<String>,
}

struct Half {
    name: String,
    path: PathBuf,
    text: String,
}

/// Reads `dir`. A missing directory is an empty set.
pub fn load(dir: &Path) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(loaded),
        Err(e) => return Err(Error::io("cannot read the migrations directory", dir, e)),
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();

    let mut ups: BTreeMap<i64, Vec<Half>> = BTreeMap::new();
    let mut downs: BTreeMap<i64, Vec<Half>> = BTreeMap::new();
    // Files that are there but could not be used (their problem is reported):
    // their other half is not reported as missing its partner.
    let mut broken: std::collections::BTreeSet<(i64, bool)> = Default::default();
    for path in files {
        let Some(file_name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !file_name.ends_with(".sql")
            || file_name.starts_with('.')
            || file_name.starts_with("template.")
        {
            continue;
        }
        let shown = display(&path, dir);
        let Some((version, name, is_up)) = parse_file_name(&file_name) else {
            loaded.errors.push(format!(
                "{shown}: not a migration file name; expected YYYYMMDDHHMMSS_name.up.sql / .down.sql \
                 (`datamig schema new NAME` writes a correct pair)"
            ));
            continue;
        };
        if !is_timestamp(version) {
            // Once for the pair, not once for each of its files.
            let problem = format!(
                "{}: version {version} is not a valid UTC timestamp YYYYMMDDHHMMSS",
                display(&path.with_file_name(format!("{version}_{name}.*.sql")), dir)
            );
            if !loaded.errors.contains(&problem) {
                loaded.errors.push(problem);
            }
            continue;
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                loaded.errors.push(unreadable(&shown, &path, &e));
                broken.insert((version, is_up));
                continue;
            }
        };
        let Ok(text) = String::from_utf8(bytes) else {
            loaded
                .errors
                .push(format!("{shown}: is not UTF-8 text; save it as UTF-8"));
            broken.insert((version, is_up));
            continue;
        };
        // No database takes a NUL inside SQL text: PostgreSQL rejects the
        // message, SQLite's parser never returns.
        if let Some(at) = text.bytes().position(|b| b == 0) {
            loaded.errors.push(format!(
                "{shown}: holds a NUL byte at offset {at}, which no database accepts in SQL; remove it \
                 (a file saved as UTF-16, or binary, shows this: save it as UTF-8 text)"
            ));
            broken.insert((version, is_up));
            continue;
        }
        if let Err(msg) = validate_name(&name) {
            loaded.lints.push(format!("{shown}: {msg}"));
        }
        let half = Half {
            name,
            path,
            text: normalize(&text),
        };
        if is_up {
            ups.entry(version).or_default().push(half)
        } else {
            downs.entry(version).or_default().push(half)
        }
    }

    let versions: std::collections::BTreeSet<i64> =
        ups.keys().chain(downs.keys()).copied().collect();
    for version in versions {
        let up = ups.remove(&version).unwrap_or_default();
        let down = downs.remove(&version).unwrap_or_default();
        let mut names: Vec<&str> = up.iter().chain(&down).map(|h| h.name.as_str()).collect();
        names.dedup();
        if up.len() > 1 || down.len() > 1 || names.len() > 1 {
            let files: Vec<String> = up
                .iter()
                .chain(&down)
                .map(|h| display(&h.path, dir))
                .collect();
            loaded.errors.push(format!(
                "duplicate version {version}: {}; give one of them a new version (rename the files)",
                files.join(", ")
            ));
            continue;
        }
        match (up.into_iter().next(), down.into_iter().next()) {
            (Some(up), Some(down)) => {
                if !super::split::has_statement(&up.text) {
                    let what = if up.text.trim().is_empty() {
                        "is empty"
                    } else {
                        "holds no SQL statement, only comments (an unedited template?)"
                    };
                    loaded.errors.push(format!(
                        "{}: {what}; write the schema change in it, or remove the pair",
                        display(&up.path, dir)
                    ));
                    continue;
                }
                loaded.migrations.push(Migration {
                    version,
                    checksum: checksum(&up.text),
                    name: up.name,
                    up: up.text,
                    down: down.text,
                    up_path: up.path,
                    down_path: down.path,
                });
            }
            (Some(_), None) | (None, Some(_))
                if broken.contains(&(version, false)) || broken.contains(&(version, true)) => {}
            (Some(up), None) => loaded.errors.push(format!(
                "{}: has no down file; write {} (a comment alone if the step cannot be undone)",
                display(&up.path, dir),
                display(
                    &up.path
                        .with_file_name(format!("{version}_{}.down.sql", up.name)),
                    dir
                )
            )),
            (None, Some(down)) => loaded.errors.push(format!(
                "{}: has no up file; write {} or remove the down file",
                display(&down.path, dir),
                display(
                    &down
                        .path
                        .with_file_name(format!("{version}_{}.up.sql", down.name)),
                    dir
                )
            )),
            (None, None) => {}
        }
    }
    Ok(loaded)
}

impl Loaded {
    /// The migrations, or the problems as one error when there are any.
    pub fn into_valid(self) -> Result<Vec<Migration>> {
        match self.errors.len() {
            0 => Ok(self.migrations),
            1 => Err(Error::Invalid(
                self.errors.into_iter().next().unwrap_or_default(),
            )),
            _ => Err(Error::Problems(self.errors)),
        }
    }
}

/// Whether `version` is a real UTC time `YYYYMMDDHHMMSS`: chrono reads second
/// 60 as a leap second, which no clock writes into a version.
fn is_timestamp(version: i64) -> bool {
    chrono::NaiveDateTime::parse_from_str(&version.to_string(), "%Y%m%d%H%M%S").is_ok()
        && version % 100 < 60
}

/// The problem of a migration file that cannot be read: a directory, a
/// dangling symbolic link, a missing permission.
fn unreadable(shown: &str, path: &Path, e: &std::io::Error) -> String {
    if path.is_dir() {
        format!("{shown}: is a directory, not a file; remove it or give it another name")
    } else if path.symlink_metadata().is_ok() && !path.exists() {
        format!(
            "{shown}: is a symbolic link to nothing; point it at the migration file or remove it"
        )
    } else {
        format!("{shown}: cannot be read ({e}); make it readable")
    }
}

fn display(path: &Path, dir: &Path) -> String {
    let base = dir.file_name().map(PathBuf::from).unwrap_or_default();
    path.strip_prefix(dir)
        .map(|p| base.join(p))
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// `20261124093000_add_email.up.sql` → (20261124093000, "add_email", true).
pub fn parse_file_name(file_name: &str) -> Option<(i64, String, bool)> {
    let (stem, is_up) = if let Some(s) = file_name.strip_suffix(".up.sql") {
        (s, true)
    } else {
        (file_name.strip_suffix(".down.sql")?, false)
    };
    let (version, name) = stem.split_once('_')?;
    if version.len() != 14 || !version.bytes().all(|b| b.is_ascii_digit()) || !is_snake_case(name) {
        return None;
    }
    Some((version.parse().ok()?, name.to_string(), is_up))
}

fn is_snake_case(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.ends_with('_')
        && !name.contains("__")
}

/// Checks a new migration's name; the error says what is wrong and suggests a name.
pub fn validate_name(name: &str) -> std::result::Result<(), String> {
    let snake = to_snake_case(name);
    let verbs = || VERBS.join(", ");
    if !is_snake_case(name) {
        return Err(if snake.is_empty() {
            format!("`{name}` is not a valid migration name; use snake_case that starts with a verb, e.g. add_email_to_users")
        } else if starts_with_verb(&snake) {
            format!("`{name}` is not snake_case; did you mean `{snake}`?")
        } else {
            format!("`{name}` is not snake_case and does not start with a verb; did you mean `add_{snake}` or `create_{snake}`?")
        });
    }
    if !starts_with_verb(name) {
        return Err(format!(
            "`{name}` does not start with a verb saying what the step does; did you mean `add_{name}`? (verbs: {})",
            verbs()
        ));
    }
    Ok(())
}

fn starts_with_verb(name: &str) -> bool {
    let first = name.split('_').next().unwrap_or_default();
    VERBS.contains(&first)
}

fn to_snake_case(name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for ch in name.trim().chars() {
        if ch.is_ascii_alphanumeric() {
            if ch.is_ascii_uppercase() && prev_lower {
                out.push('_');
            }
            prev_lower = ch.is_ascii_lowercase() || ch.is_ascii_digit();
            out.push(ch.to_ascii_lowercase());
        } else {
            if !out.ends_with('_') && !out.is_empty() {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    let out = out.trim_matches('_').to_string();
    match out.chars().next() {
        Some(c) if c.is_ascii_digit() => format!("m_{out}"),
        _ => out,
    }
}

const DEFAULT_UP: &str = "-- {name}: the schema change.\n\
-- Created {created}. `datamig schema upgrade` runs this file and records it in one\n\
-- transaction (on MariaDB/MySQL, DDL commits on its own: keep one DDL statement per file\n\
-- where you can). To run outside a transaction (CREATE INDEX CONCURRENTLY), make the\n\
-- first line of this file: -- datamig:no-transaction\n\n";
const DEFAULT_DOWN: &str =
    "-- {name}: undo exactly what the up file did, so that `datamig schema test` passes.\n\n";

/// Writes `<version>_<name>.up.sql` and `.down.sql` into `dir`, from
/// `template.up.sql` / `template.down.sql` there when the project has them.
pub fn create(
    dir: &Path,
    name: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(PathBuf, PathBuf)> {
    validate_name(name).map_err(Error::Usage)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    let existing: Vec<i64> = load(dir)?.migrations.iter().map(|m| m.version).collect();
    let mut when = now;
    // Two `schema new` in one second must not share a version.
    let version = loop {
        let v: i64 = when
            .format("%Y%m%d%H%M%S")
            .to_string()
            .parse()
            .unwrap_or_default();
        let taken = existing.contains(&v)
            || std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten().any(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("{v}_"))
                    })
                })
                .unwrap_or(false);
        if !taken {
            break v;
        }
        when += chrono::Duration::seconds(1);
    };
    let template = |kind: &str, default: &str| -> Result<String> {
        let path = dir.join(format!("template.{kind}.sql"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => default.to_string(),
            Err(e) => return Err(Error::io("cannot read the template", path, e)),
        };
        Ok(text
            .replace("{name}", name)
            .replace("{version}", &version.to_string())
            .replace(
                "{created}",
                &now.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            ))
    };
    let up = dir.join(format!("{version}_{name}.up.sql"));
    let down = dir.join(format!("{version}_{name}.down.sql"));
    for (path, text) in [
        (&up, template("up", DEFAULT_UP)?),
        (&down, template("down", DEFAULT_DOWN)?),
    ] {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(|e| Error::io("cannot write", path, e))?;
    }
    Ok((up, down))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_ignores_bom_and_line_endings() {
        let unix = normalize("CREATE TABLE a (x INT);\nSELECT 1;\n");
        let dos = normalize("\u{feff}CREATE TABLE a (x INT);\r\nSELECT 1;\r\n");
        assert_eq!(checksum(&unix), checksum(&dos));
        assert_ne!(
            checksum(&unix),
            checksum(&normalize("CREATE TABLE a (x BIGINT);\n"))
        );
    }

    #[test]
    fn names_must_be_snake_case_verbs() {
        assert!(validate_name("add_email_to_users").is_ok());
        assert!(validate_name("AddEmailToUsers")
            .unwrap_err()
            .contains("`add_email_to_users`"));
        assert!(validate_name("users_email")
            .unwrap_err()
            .contains("`add_users_email`"));
        assert!(validate_name("").is_err());
        assert!(validate_name("add__x").is_err());
    }

    #[test]
    fn parses_file_names() {
        assert_eq!(
            parse_file_name("20261124093000_add_email.up.sql"),
            Some((20261124093000, "add_email".into(), true))
        );
        assert_eq!(
            parse_file_name("20261124093000_add_email.down.sql").map(|p| p.2),
            Some(false)
        );
        assert_eq!(parse_file_name("2026112409300_add_email.up.sql"), None);
        assert_eq!(parse_file_name("20261124093000_Add.up.sql"), None);
        assert_eq!(parse_file_name("20261124093000_add.sql"), None);
    }
}
