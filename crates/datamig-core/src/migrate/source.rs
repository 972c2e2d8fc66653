//! Migration files on disk: names, pairs, checksums and templates, in datamig's
//! own layout and in those of the tools teams come from ([`Layout`]): sqlx-cli,
//! golang-migrate, refinery and dbmate, each read as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The first line that makes a file run outside a transaction.
pub const NO_TRANSACTION: &str = "-- datamig:no-transaction";

/// sqlx-cli's first line for the same.
const SQLX_NO_TRANSACTION: &str = "-- no-transaction";

/// A down file that says the step cannot be undone: `-- datamig:irreversible <why>`.
pub const IRREVERSIBLE: &str = "-- datamig:irreversible";

/// How a project's migration files are named: datamig's own, or the layout of
/// the tool a team comes from, read as it is (`layout` in `datamig.toml`;
/// without it, each file is read by what its name says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Every layout below, each file by its name.
    #[default]
    Auto,
    /// `<YYYYMMDDHHMMSS>_<verb>_….up.sql` and `.down.sql`: what `schema new` writes.
    Datamig,
    /// sqlx-cli: `<int>_<description>.up.sql` / `.down.sql`, or one
    /// `<int>_<description>.sql` without a down (irreversible).
    Sqlx,
    /// golang-migrate: `<int>_<name>.up.sql` / `.down.sql`.
    GolangMigrate,
    /// refinery: `V<int>__<name>.sql` (and `U<int>__<name>.sql`), without downs.
    Refinery,
    /// dbmate: one `<version>_<name>.sql` with `-- migrate:up` and `-- migrate:down` sections.
    Dbmate,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Auto => "auto",
            Layout::Datamig => "datamig",
            Layout::Sqlx => "sqlx",
            Layout::GolangMigrate => "golang-migrate",
            Layout::Refinery => "refinery",
            Layout::Dbmate => "dbmate",
        }
    }

    /// Whether a file of `kind` belongs to this layout.
    fn takes(self, kind: FileKind) -> bool {
        match self {
            Layout::Auto => true,
            Layout::Datamig | Layout::GolangMigrate => kind == FileKind::Half,
            Layout::Sqlx => matches!(kind, FileKind::Half | FileKind::Single),
            Layout::Refinery => kind == FileKind::Refinery,
            Layout::Dbmate => kind == FileKind::Sections,
        }
    }

    /// What this layout's file names look like, for a message.
    fn pattern(self) -> &'static str {
        match self {
            Layout::Auto | Layout::Datamig => {
                "YYYYMMDDHHMMSS_name.up.sql / .down.sql (`datamig schema new NAME` writes a correct pair)"
            }
            Layout::Sqlx => "<version>_<description>.sql, or .up.sql / .down.sql",
            Layout::GolangMigrate => "<version>_<name>.up.sql / .down.sql",
            Layout::Refinery => "V<version>__<name>.sql",
            Layout::Dbmate => "<version>_<name>.sql with -- migrate:up and -- migrate:down",
        }
    }
}

/// What a migration file is, by its name (and, for a single file, its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// One half of a pair: `.up.sql` or `.down.sql`.
    Half,
    /// A single `.sql` without sections: an up without a down (sqlx).
    Single,
    /// A single file with dbmate's `-- migrate:up` / `-- migrate:down` sections.
    Sections,
    /// refinery's `V<n>__name.sql`.
    Refinery,
}

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

/// One schema step: an `up` file and its `down` file (or the two sections of one file).
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
    /// Why the step cannot be reverted, when it cannot: it has no down (a
    /// sqlx single file, refinery, an empty dbmate down), or its down says
    /// `-- datamig:irreversible <why>`. Applied as any other; `downgrade`
    /// across it refuses, `schema test` does not try its reversal.
    pub irreversible: Option<String>,
    /// The file's text as it is on disk (the up file, or the single file):
    /// what another tool's checksum was taken of.
    pub raw: String,
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
        .is_some_and(|l| l.trim() == NO_TRANSACTION || l.trim() == SQLX_NO_TRANSACTION)
}

/// Why a down file says its step cannot be undone, if it says so.
fn irreversible_reason(down: &str) -> Option<String> {
    down.lines().find_map(|l| {
        let why = l.trim().strip_prefix(IRREVERSIBLE)?;
        let why = why.trim();
        Some(if why.is_empty() {
            "its down file says it is irreversible".to_string()
        } else {
            why.to_string()
        })
    })
}

/// dbmate's `-- migrate:up` and `-- migrate:down` sections of a file, each
/// marked to run outside a transaction where dbmate's `transaction:false`
/// says so; `None` without an up section.
fn sections(text: &str) -> Option<(String, String)> {
    let mut up: Option<(Vec<&str>, bool)> = None;
    let mut down: Option<(Vec<&str>, bool)> = None;
    let mut in_down = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("-- migrate:up") {
            up = Some((Vec::new(), !rest.contains("transaction:false")));
            in_down = false;
        } else if let Some(rest) = t.strip_prefix("-- migrate:down") {
            down = Some((Vec::new(), !rest.contains("transaction:false")));
            in_down = true;
        } else if in_down {
            if let Some((lines, _)) = &mut down {
                lines.push(line);
            }
        } else if let Some((lines, _)) = &mut up {
            lines.push(line);
        }
    }
    let section = |(lines, in_tx): (Vec<&str>, bool)| {
        let body = lines.join("\n").trim().to_string();
        match (in_tx, body.is_empty()) {
            (_, true) => String::new(),
            (true, false) => format!("{body}\n"),
            (false, false) => format!("{NO_TRANSACTION}\n{body}\n"),
        }
    };
    Some((section(up?), down.map(section).unwrap_or_default()))
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
    /// As it is on disk.
    raw: String,
}

/// Reads `dir`, in any layout. A missing directory is an empty set.
pub fn load(dir: &Path) -> Result<Loaded> {
    load_as(dir, Layout::Auto)
}

/// Reads `dir` as `layout` names its files.
pub fn load_as(dir: &Path, layout: Layout) -> Result<Loaded> {
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
    // Migrations named otherwise than datamig names new ones, once each.
    let mut style: BTreeMap<i64, String> = BTreeMap::new();
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
        let Some((version, name, part)) = parse_file_name(&file_name) else {
            loaded.errors.push(format!(
                "{shown}: not a migration file name; expected {}",
                layout.pattern()
            ));
            continue;
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                loaded.errors.push(unreadable(&shown, &path, &e));
                broken.insert((version, part != Part::Down));
                continue;
            }
        };
        let Ok(raw) = String::from_utf8(bytes) else {
            loaded
                .errors
                .push(format!("{shown}: is not UTF-8 text; save it as UTF-8"));
            broken.insert((version, part != Part::Down));
            continue;
        };
        // No database takes a NUL inside SQL text: PostgreSQL rejects the
        // message, SQLite's parser never returns.
        if let Some(at) = raw.bytes().position(|b| b == 0) {
            loaded.errors.push(format!(
                "{shown}: holds a NUL byte at offset {at}, which no database accepts in SQL; remove it \
                 (a file saved as UTF-16, or binary, shows this: save it as UTF-8 text)"
            ));
            broken.insert((version, part != Part::Down));
            continue;
        }
        let text = normalize(&raw);
        let split = match part {
            Part::Whole { refinery } => {
                let sections = (!refinery).then(|| sections(&text)).flatten();
                let kind = match (&sections, refinery) {
                    (_, true) => FileKind::Refinery,
                    (Some(_), _) => FileKind::Sections,
                    (None, _) => FileKind::Single,
                };
                if !layout.takes(kind) {
                    loaded.errors.push(format!(
                        "{shown}: not a {} migration file; expected {}",
                        layout.name(),
                        layout.pattern()
                    ));
                    continue;
                }
                Some(match sections {
                    Some((up, down)) => (up, Some(down)),
                    None => (text.clone(), None),
                })
            }
            Part::Up | Part::Down if !layout.takes(FileKind::Half) => {
                loaded.errors.push(format!(
                    "{shown}: not a {} migration file; expected {}",
                    layout.name(),
                    layout.pattern()
                ));
                continue;
            }
            Part::Up | Part::Down => None,
        };
        // datamig's own naming, for new files: a style note for old ones.
        if !is_timestamp(version) || validate_name(&name).is_err() {
            style
                .entry(version)
                .or_insert_with(|| format!("{version}_{name}"));
        }
        match split {
            // One file, both halves: the down is the file's down section (none: irreversible).
            Some((up, down)) => {
                if let Some(down) = down {
                    downs.entry(version).or_default().push(Half {
                        name: name.clone(),
                        path: path.clone(),
                        text: down,
                        raw: raw.clone(),
                    });
                }
                ups.entry(version).or_default().push(Half {
                    name,
                    path,
                    text: up,
                    raw,
                });
            }
            None => {
                let half = Half {
                    name,
                    path,
                    text,
                    raw,
                };
                if part == Part::Up {
                    ups.entry(version).or_default().push(half)
                } else {
                    downs.entry(version).or_default().push(half)
                }
            }
        }
    }
    if !style.is_empty() {
        let shown: Vec<&str> = style.values().take(3).map(String::as_str).collect();
        let more = style.len().saturating_sub(shown.len());
        loaded.lints.push(format!(
            "{} migration(s) are not named as datamig names new ones (a UTC timestamp YYYYMMDDHHMMSS, \
             then a snake_case name that starts with a verb): {}{}. They run as they are; `datamig schema new` \
             names the next one",
            style.len(),
            shown.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        ));
    }

    let versions: std::collections::BTreeSet<i64> =
        ups.keys().chain(downs.keys()).copied().collect();
    for version in versions {
        let up = ups.remove(&version).unwrap_or_default();
        let down = downs.remove(&version).unwrap_or_default();
        let mut names: Vec<&str> = up.iter().chain(&down).map(|h| h.name.as_str()).collect();
        names.dedup();
        let mut paths: Vec<&PathBuf> = up.iter().chain(&down).map(|h| &h.path).collect();
        paths.dedup();
        if up.len() > 1 || down.len() > 1 || names.len() > 1 {
            let files: Vec<String> = paths.iter().map(|p| display(p, dir)).collect();
            loaded.errors.push(format!(
                "duplicate version {version}: {}; give one of them a new version (rename the files)",
                files.join(", ")
            ));
            continue;
        }
        let (up, down) = (up.into_iter().next(), down.into_iter().next());
        match up {
            Some(up) => {
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
                // No down, or a down with no statement: the step cannot be undone.
                // Without a down (a single file, an empty dbmate down section),
                // or with one that says so, the step cannot be undone.
                let (down_text, down_path, irreversible) = match down {
                    Some(d) if d.path == up.path && d.text.trim().is_empty() => (
                        d.text,
                        d.path,
                        Some("its file has no down section".to_string()),
                    ),
                    Some(d) => {
                        let why = irreversible_reason(&d.text);
                        (d.text, d.path, why)
                    }
                    None => (
                        String::new(),
                        PathBuf::new(),
                        Some("it has no down file".to_string()),
                    ),
                };
                loaded.migrations.push(Migration {
                    version,
                    checksum: checksum(&up.text),
                    name: up.name,
                    up: up.text,
                    down: down_text,
                    up_path: up.path,
                    down_path,
                    irreversible,
                    raw: up.raw,
                });
            }
            None if broken.contains(&(version, true)) => {}
            None => {
                if let Some(down) = down {
                    loaded.errors.push(format!(
                        "{}: has no up file; write {} or remove the down file",
                        display(&down.path, dir),
                        display(
                            &down
                                .path
                                .with_file_name(format!("{version}_{}.up.sql", down.name)),
                            dir
                        )
                    ));
                }
            }
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

/// Which part of a migration a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Up,
    Down,
    /// A single file: an up without a down (sqlx, refinery), or dbmate's sections.
    Whole {
        refinery: bool,
    },
}

/// `20261124093000_add_email.up.sql` → (20261124093000, "add_email", Up);
/// `1_init.sql` → (1, "init", Whole); `V2__add-users.sql` → (2, "add-users", Whole).
/// Any integer version, any description after the first `_`.
pub fn parse_file_name(file_name: &str) -> Option<(i64, String, Part)> {
    let (stem, part) = if let Some(s) = file_name.strip_suffix(".up.sql") {
        (s, Part::Up)
    } else if let Some(s) = file_name.strip_suffix(".down.sql") {
        (s, Part::Down)
    } else {
        (
            file_name.strip_suffix(".sql")?,
            Part::Whole { refinery: false },
        )
    };
    // refinery: V<n>__name (U<n>__name for its unversioned kind).
    if let (Part::Whole { .. }, Some(rest)) = (part, stem.strip_prefix(['V', 'U'])) {
        if let Some((version, name)) = rest.split_once("__") {
            if !version.is_empty()
                && version.bytes().all(|b| b.is_ascii_digit())
                && !name.is_empty()
            {
                return Some((
                    version.parse().ok()?,
                    name.to_string(),
                    Part::Whole { refinery: true },
                ));
            }
        }
    }
    let (version, name) = stem.split_once('_')?;
    if version.is_empty()
        || !version.bytes().all(|b| b.is_ascii_digit())
        || name.is_empty()
        || name.len() > 200
    {
        return None;
    }
    Some((version.parse().ok()?, name.to_string(), part))
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

/// Writes a new migration into `dir` (from `template.up.sql` /
/// `template.down.sql` there when the project has them) as `layout` has them: the up/down pair, or, for
/// refinery, one `V<version>__<name>.sql` (refinery has no downs), or, for
/// dbmate, one `<version>_<name>.sql` with its up and down sections. The
/// version is the current UTC time and the name must follow datamig's rules
/// whatever the layout. Returns the files written.
pub fn create_in(
    dir: &Path,
    name: &str,
    now: chrono::DateTime<chrono::Utc>,
    layout: Layout,
) -> Result<Vec<PathBuf>> {
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
                        let file = e.file_name().to_string_lossy().into_owned();
                        file.starts_with(&format!("{v}_"))
                            || file.starts_with(&format!("V{v}__"))
                            || file.starts_with(&format!("U{v}__"))
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
    let (up, down) = (template("up", DEFAULT_UP)?, template("down", DEFAULT_DOWN)?);
    let files: Vec<(PathBuf, String)> = match layout {
        Layout::Refinery => vec![(dir.join(format!("V{version}__{name}.sql")), up)],
        Layout::Dbmate => vec![(
            dir.join(format!("{version}_{name}.sql")),
            format!("-- migrate:up\n{up}\n-- migrate:down\n{down}"),
        )],
        Layout::Auto | Layout::Datamig | Layout::Sqlx | Layout::GolangMigrate => vec![
            (dir.join(format!("{version}_{name}.up.sql")), up),
            (dir.join(format!("{version}_{name}.down.sql")), down),
        ],
    };
    for (path, text) in &files {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(|e| Error::io("cannot write", path, e))?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
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
    fn parses_the_file_names_of_every_layout() {
        assert_eq!(
            parse_file_name("20261124093000_add_email.up.sql"),
            Some((20261124093000, "add_email".into(), Part::Up))
        );
        assert_eq!(
            parse_file_name("20261124093000_add_email.down.sql").map(|p| p.2),
            Some(Part::Down)
        );
        // sqlx and golang-migrate: any integer, any description.
        assert_eq!(
            parse_file_name("20240401000061_add-users.table.up.sql"),
            Some((20240401000061, "add-users.table".into(), Part::Up))
        );
        assert_eq!(
            parse_file_name("1_init.sql"),
            Some((1, "init".into(), Part::Whole { refinery: false }))
        );
        assert_eq!(
            parse_file_name("000002_Add Users.down.sql").map(|p| (p.0, p.1)),
            Some((2, "Add Users".into()))
        );
        // refinery.
        assert_eq!(
            parse_file_name("V3__create_users.sql"),
            Some((3, "create_users".into(), Part::Whole { refinery: true }))
        );
        assert_eq!(parse_file_name("add_email.up.sql"), None);
        assert_eq!(parse_file_name("_add.up.sql"), None);
        assert_eq!(parse_file_name("1_.sql"), None);
        assert_eq!(parse_file_name("99999999999999999999_big.sql"), None);
    }

    #[test]
    fn dbmate_sections_become_the_up_and_the_down() {
        let (up, down) =
            sections("-- migrate:up\nCREATE TABLE a (id INT);\n\n-- migrate:down\nDROP TABLE a;\n")
                .unwrap();
        assert_eq!(
            (up.as_str(), down.as_str()),
            ("CREATE TABLE a (id INT);\n", "DROP TABLE a;\n")
        );
        let (up, down) = sections("-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY i ON a (id);\n-- migrate:down\n").unwrap();
        assert_eq!(
            up,
            format!("{NO_TRANSACTION}\nCREATE INDEX CONCURRENTLY i ON a (id);\n")
        );
        assert_eq!(down, "");
        assert!(sections("CREATE TABLE a (id INT);").is_none());
    }
}
