//! Where the database is, and where the migrations are.
//!
//! Precedence for the database URL, first match wins:
//! `--database-url`, then the `--env` profile of `datamig.toml`, then
//! `DATABASE_URL` (from the environment, else from `.env`), then the
//! `default_env` profile of `datamig.toml`, then `sqlite:datamig.db` in the project.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// The SQLite file used when nothing else names a database.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:datamig.db";
pub const CONFIG_FILE: &str = "datamig.toml";

/// Which database engine a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
            Backend::MySql => "MySQL/MariaDB",
        })
    }
}

/// A parsed database URL. Its `Display` and `Debug` never show the password;
/// only the driver sees the secret, through [`DatabaseUrl::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    secret: String,
    redacted: String,
    backend: Backend,
    /// Query parameters the driver does not take, left out of what it is given
    /// (their values are never shown: a mistyped `passwd=` is a password).
    ignored: Vec<String>,
}

/// A query parameter a driver takes: its spellings, the values it may have
/// (`None`: any), and whether its value is a secret.
struct Param {
    names: &'static [&'static str],
    values: Option<&'static [&'static str]>,
    secret: bool,
}

const fn param(names: &'static [&'static str]) -> Param {
    Param {
        names,
        values: None,
        secret: false,
    }
}

const fn one_of(names: &'static [&'static str], values: &'static [&'static str]) -> Param {
    Param {
        names,
        values: Some(values),
        secret: false,
    }
}

/// What sqlx's PostgreSQL driver reads from a URL's query (it warns about the
/// rest, printing their values, and ignores them).
const POSTGRES_PARAMS: &[Param] = &[
    one_of(
        &["sslmode", "ssl-mode"],
        &[
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ],
    ),
    param(&["sslrootcert", "ssl-root-cert", "ssl-ca"]),
    param(&["sslcert", "ssl-cert"]),
    param(&["sslkey", "ssl-key"]),
    param(&["statement-cache-capacity"]),
    param(&["host"]),
    param(&["hostaddr"]),
    param(&["port"]),
    param(&["dbname"]),
    param(&["user"]),
    Param {
        names: &["password"],
        values: None,
        secret: true,
    },
    param(&["application_name"]),
    param(&["options"]),
];

/// What sqlx's MySQL driver reads (it ignores the rest without a word).
const MYSQL_PARAMS: &[Param] = &[
    one_of(
        &["sslmode", "ssl-mode"],
        &[
            "disabled",
            "preferred",
            "required",
            "verify_ca",
            "verify_identity",
        ],
    ),
    param(&["sslca", "ssl-ca"]),
    param(&["charset"]),
    param(&["collation"]),
    param(&["sslcert", "ssl-cert"]),
    param(&["sslkey", "ssl-key"]),
    param(&["statement-cache-capacity"]),
    param(&["socket"]),
    param(&["timezone", "time-zone"]),
];

/// What datamig's SQLite driver passes to SQLite's URI form (it refuses the rest).
const SQLITE_PARAMS: &[Param] = &[
    one_of(&["mode"], &["ro", "rw", "rwc", "memory"]),
    one_of(&["cache"], &["private", "shared"]),
    one_of(&["immutable"], &["true", "false", "1", "0"]),
    param(&["vfs"]),
];

/// The parameter `key` is, among `known`.
fn known_param<'a>(known: &'a [Param], key: &str) -> Option<&'a Param> {
    known.iter().find(|p| p.names.contains(&key))
}

/// Query pairs, in order.
type Pairs = Vec<(String, String)>;

/// Checks the query of a URL of `backend` against what its driver takes:
/// `(kept, shown, ignored)` — the pairs the driver gets, the pairs as they
/// may be shown (every value that is or may be a secret as `***`), and the
/// keys left out. A known parameter with a value the driver refuses is a
/// configuration error; so is an unknown one on SQLite, whose driver refuses it.
fn check_query(
    backend: Backend,
    pairs: impl Iterator<Item = (String, String)>,
) -> Result<(Pairs, Pairs, Vec<String>)> {
    let known = match backend {
        Backend::Postgres => POSTGRES_PARAMS,
        Backend::MySql => MYSQL_PARAMS,
        Backend::Sqlite => SQLITE_PARAMS,
    };
    let names = || {
        known
            .iter()
            .map(|p| p.names[0])
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (mut kept, mut shown, mut ignored) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in pairs {
        let Some(p) = known_param(known, &key) else {
            if backend == Backend::Sqlite {
                return Err(Error::Config(format!(
                    "the SQLite database URL has a parameter `{key}`, which SQLite does not take \
                     (it takes {}); remove it",
                    names()
                )));
            }
            shown.push((key.clone(), "***".to_string()));
            ignored.push(key);
            continue;
        };
        if let Some(values) = p.values {
            if !values.iter().any(|v| v.eq_ignore_ascii_case(&value)) {
                return Err(Error::Config(format!(
                    "the {backend} database URL's `{key}` is not one of {}; correct it in the URL",
                    values.join(", ")
                )));
            }
        }
        let is_secret = p.secret || key.to_ascii_lowercase().contains("password");
        shown.push((
            key.clone(),
            if is_secret {
                "***".into()
            } else {
                value.clone()
            },
        ));
        kept.push((key, value));
    }
    Ok((kept, shown, ignored))
}

impl DatabaseUrl {
    /// Parses a `sqlite:`, `postgres://` or `mysql://` (`mariadb://`) URL.
    /// Errors never repeat the URL, since it may hold a password.
    pub fn parse(input: &str) -> Result<Self> {
        let input = input.trim();
        if input.is_empty() {
            return Err(Error::Config(
                "the database URL is empty; set --database-url, DATABASE_URL or datamig.toml"
                    .into(),
            ));
        }
        let scheme = input
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Self::parse_sqlite(input),
            "postgres" | "postgresql" => Self::parse_server(input, Backend::Postgres, "postgres"),
            "mysql" | "mariadb" => Self::parse_server(input, Backend::MySql, "mysql"),
            _ => Err(Error::Config(format!(
                "unsupported database URL scheme `{}`; use sqlite:FILE, postgres://USER@HOST/DB or mysql://USER@HOST/DB",
                if scheme.len() > 20 || scheme.contains('@') { "?" } else { &scheme }
            ))),
        }
    }

    fn parse_sqlite(input: &str) -> Result<Self> {
        let rest = &input["sqlite:".len()..];
        let (path_part, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = path_part.strip_prefix("//").unwrap_or(path_part);
        if path.is_empty() {
            return Err(Error::Config(
                "the SQLite URL names no file; write sqlite:path/to/file.db or sqlite::memory:"
                    .into(),
            ));
        }
        let pairs = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()));
        check_query(Backend::Sqlite, pairs)?;
        Ok(Self {
            secret: input.to_string(),
            redacted: input.to_string(),
            backend: Backend::Sqlite,
            ignored: Vec::new(),
        })
    }

    fn parse_server(input: &str, backend: Backend, driver_scheme: &str) -> Result<Self> {
        let example = match backend {
            Backend::Postgres => "postgres://USER:PASSWORD@HOST:5432/DATABASE",
            _ => "mysql://USER:PASSWORD@HOST:3306/DATABASE",
        };
        let mut url = url::Url::parse(input).map_err(|e| {
            Error::Config(format!(
                "malformed {backend} database URL ({e}); expected {example}"
            ))
        })?;
        if url.cannot_be_a_base()
            || (url.host_str().unwrap_or_default().is_empty() && !has_socket_param(&url))
        {
            return Err(Error::Config(format!(
                "the {backend} database URL names no host; expected {example}"
            )));
        }
        if url.scheme() != driver_scheme {
            // `mariadb://` and `postgresql://` are accepted spellings; the driver wants one.
            let rebuilt = format!("{driver_scheme}{}", &input[url.scheme().len()..]);
            url = url::Url::parse(&rebuilt).map_err(|e| {
                Error::Config(format!(
                    "malformed {backend} database URL ({e}); expected {example}"
                ))
            })?;
        }
        let (kept, shown_pairs, ignored) = check_query(
            backend,
            url.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned())),
        )?;
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        if url.query().is_some() {
            // The driver gets only what it takes: the PostgreSQL driver's
            // warning about the rest prints their values.
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
            if shown_pairs.is_empty() {
                shown.set_query(None);
            } else {
                shown.query_pairs_mut().clear().extend_pairs(shown_pairs);
            }
        }
        Ok(Self {
            secret: url.to_string(),
            redacted: shown.to_string(),
            backend,
            ignored,
        })
    }

    /// Query parameters of the URL its driver does not take, which datamig
    /// leaves out (for a warning that names them, never their values).
    pub fn ignored_params(&self) -> &[String] {
        &self.ignored
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL with any password replaced by `***`: safe for every output.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The real URL, for the driver only.
    pub(crate) fn expose(&self) -> &str {
        &self.secret
    }

    /// The database (PostgreSQL, MySQL) this URL names, if any.
    pub fn database_name(&self) -> Option<String> {
        if self.backend == Backend::Sqlite {
            return None;
        }
        let url = url::Url::parse(&self.secret).ok()?;
        let name = url.path().trim_start_matches('/');
        (!name.is_empty()).then(|| percent_decode(name))
    }

    /// The same server and credentials, another database: for scratch databases.
    pub fn with_database(&self, database: &str) -> Result<Self> {
        match self.backend {
            Backend::Sqlite => Self::parse(&format!("sqlite:{database}")),
            _ => {
                let mut url =
                    url::Url::parse(&self.secret).map_err(|e| Error::Config(e.to_string()))?;
                url.set_path(&format!("/{database}"));
                Self::parse(url.as_str())
            }
        }
    }

    /// The file an SQLite URL names, or `None` for `sqlite::memory:` and servers.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        if self.backend != Backend::Sqlite {
            return None;
        }
        let rest = &self.secret["sqlite:".len()..];
        let path = rest.split_once('?').map_or(rest, |(p, _)| p);
        let path = path.strip_prefix("//").unwrap_or(path);
        (path != ":memory:" && !self.secret.contains("mode=memory")).then(|| PathBuf::from(path))
    }
}

fn has_socket_param(url: &url::Url) -> bool {
    url.query_pairs().any(|(k, _)| k == "host" || k == "socket")
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted)
    }
}

/// `datamig.toml`: named environments and project settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the migration files live, relative to the project.
    pub migrations_dir: Option<PathBuf>,
    /// How the migration files are named: `datamig`, or the layout of the
    /// tool a team comes from (`sqlx`, `golang-migrate`, `refinery`, `dbmate`);
    /// without it, each file is read by what its name says.
    pub layout: Option<crate::migrate::Layout>,
    /// The profile used when neither `--env` nor `DATAMIG_ENV` names one.
    pub default_env: Option<String>,
    #[serde(default, rename = "env")]
    pub envs: BTreeMap<String, EnvProfile>,
    /// Health-throttle thresholds for `datamig run`, for every environment.
    #[serde(default)]
    pub throttle: ThrottleConfig,
}

/// One `[env.NAME]` table of `datamig.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvProfile {
    /// The URL itself (keep passwords out of files: prefer `database_url_env`).
    pub database_url: Option<String>,
    /// The name of an environment variable that holds the URL.
    pub database_url_env: Option<String>,
    /// Health-throttle thresholds for this environment (over `[throttle]`).
    #[serde(default)]
    pub throttle: ThrottleConfig,
}

/// `[throttle]` (and `[env.NAME.throttle]`) of `datamig.toml`: the health
/// checks `datamig run` makes before batches. Durations as `10s`, `5m`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    pub max_active: Option<i64>,
    pub max_transaction_age: Option<String>,
    pub max_replica_lag: Option<String>,
    /// Replica URLs, or `env:NAME` to read one from an environment variable
    /// (keep passwords out of files).
    pub replicas: Option<Vec<String>>,
    pub probe: Option<String>,
    pub probe_max: Option<String>,
}

impl ThrottleConfig {
    /// `self` with `over`'s settings where it has them.
    fn overlaid(&self, over: &ThrottleConfig) -> ThrottleConfig {
        ThrottleConfig {
            max_active: over.max_active.or(self.max_active),
            max_transaction_age: over
                .max_transaction_age
                .clone()
                .or_else(|| self.max_transaction_age.clone()),
            max_replica_lag: over
                .max_replica_lag
                .clone()
                .or_else(|| self.max_replica_lag.clone()),
            replicas: over.replicas.clone().or_else(|| self.replicas.clone()),
            probe: over.probe.clone().or_else(|| self.probe.clone()),
            probe_max: over.probe_max.clone().or_else(|| self.probe_max.clone()),
        }
    }
}

/// The throttle settings of [`Settings`], parsed: what `datamig run` starts from.
#[derive(Debug, Clone, Default)]
pub struct ThrottleSettings {
    pub max_active: Option<i64>,
    pub max_transaction_age: Option<std::time::Duration>,
    pub max_replica_lag: Option<std::time::Duration>,
    pub replicas: Vec<DatabaseUrl>,
    pub probe: Option<String>,
    pub probe_max: Option<std::time::Duration>,
}

impl ThrottleConfig {
    fn parse(&self, lookup: &dyn Fn(&str) -> Option<(String, bool)>) -> Result<ThrottleSettings> {
        let duration = |key: &str, v: &Option<String>| -> Result<Option<std::time::Duration>> {
            v.as_deref()
                .map(|text| {
                    parse_duration(text).map_err(|e| {
                        Error::Config(format!("{CONFIG_FILE} is invalid: [throttle] {key}: {e}"))
                    })
                })
                .transpose()
        };
        let mut replicas = Vec::new();
        for entry in self.replicas.iter().flatten() {
            let url = match entry.strip_prefix("env:") {
                Some(var) => lookup(var).map(|(v, _)| v).ok_or_else(|| {
                    Error::Config(format!(
                        "[throttle] replicas reads a URL from ${var}, which is not set"
                    ))
                })?,
                None => entry.clone(),
            };
            replicas.push(DatabaseUrl::parse(&url).map_err(|e| match e {
                Error::Config(m) => {
                    Error::Config(format!("[throttle] replicas of {CONFIG_FILE}: {m}"))
                }
                other => other,
            })?);
        }
        if self.max_active.is_some_and(|n| n < 0) {
            return Err(Error::Config(format!(
                "{CONFIG_FILE} is invalid: [throttle] max_active must be 0 or more"
            )));
        }
        Ok(ThrottleSettings {
            max_active: self.max_active,
            max_transaction_age: duration("max_transaction_age", &self.max_transaction_age)?,
            max_replica_lag: duration("max_replica_lag", &self.max_replica_lag)?,
            replicas,
            probe: self.probe.clone(),
            probe_max: duration("probe_max", &self.probe_max)?,
        })
    }
}

/// What the command line says about where to connect.
#[derive(Debug, Default, Clone)]
pub struct ConfigInputs {
    pub project_dir: PathBuf,
    pub database_url: Option<String>,
    pub env: Option<String>,
}

/// Where the URL came from, so messages can say which knob to turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    Flag,
    Profile(String),
    Environment,
    DotEnv,
    Default,
}

impl fmt::Display for UrlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlSource::Flag => f.write_str("--database-url"),
            UrlSource::Profile(name) => write!(f, "env `{name}` of {CONFIG_FILE}"),
            UrlSource::Environment => f.write_str("DATABASE_URL"),
            UrlSource::DotEnv => f.write_str("DATABASE_URL in .env"),
            UrlSource::Default => f.write_str("the default"),
        }
    }
}

/// The resolved settings every command works from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub project_dir: PathBuf,
    pub database_url: DatabaseUrl,
    pub url_source: UrlSource,
    pub migrations_dir: PathBuf,
    /// How the migration files are named (`layout` in `datamig.toml`).
    pub layout: crate::migrate::Layout,
    /// Health-throttle thresholds from `datamig.toml` (the command line overrides them).
    pub throttle: ThrottleSettings,
}

impl Settings {
    pub fn resolve(inputs: &ConfigInputs) -> Result<Self> {
        let dir = &inputs.project_dir;
        let file = load_config_file(dir)?;
        let dotenv = read_dotenv(dir)?;
        let lookup = |key: &str| -> Option<(String, bool)> {
            std::env::var(key)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (v, false))
                .or_else(|| dotenv.get(key).cloned().map(|v| (v, true)))
        };

        let explicit_env = inputs
            .env
            .clone()
            .or_else(|| lookup("DATAMIG_ENV").map(|(v, _)| v));
        let (raw, source) = if let Some(url) = &inputs.database_url {
            (url.clone(), UrlSource::Flag)
        } else if let Some(name) = &explicit_env {
            (
                profile_url(&file, name, &lookup)?,
                UrlSource::Profile(name.clone()),
            )
        } else if let Some((url, from_dotenv)) = lookup("DATABASE_URL") {
            (
                url,
                if from_dotenv {
                    UrlSource::DotEnv
                } else {
                    UrlSource::Environment
                },
            )
        } else if let Some(name) = &file.default_env {
            (
                profile_url(&file, name, &lookup)?,
                UrlSource::Profile(name.clone()),
            )
        } else {
            (DEFAULT_DATABASE_URL.to_string(), UrlSource::Default)
        };
        let database_url = DatabaseUrl::parse(&raw).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{msg} (the URL came from {source})")),
            other => other,
        })?;
        let migrations_dir = dir.join(
            file.migrations_dir
                .as_deref()
                .unwrap_or(Path::new("migrations")),
        );
        let throttle = match &source {
            UrlSource::Profile(name) => match file.envs.get(name) {
                Some(profile) => file.throttle.overlaid(&profile.throttle),
                None => file.throttle.clone(),
            },
            _ => file.throttle.clone(),
        }
        .parse(&lookup)?;
        Ok(Settings {
            project_dir: dir.clone(),
            database_url,
            url_source: source,
            migrations_dir,
            layout: file.layout.unwrap_or_default(),
            throttle,
        })
    }
}

fn profile_url(
    file: &ConfigFile,
    name: &str,
    lookup: &dyn Fn(&str) -> Option<(String, bool)>,
) -> Result<String> {
    let profile = file.envs.get(name).ok_or_else(|| {
        let known: Vec<&str> = file.envs.keys().map(String::as_str).collect();
        Error::Config(if known.is_empty() {
            format!("unknown env `{name}`: {CONFIG_FILE} defines no [env.*] profiles")
        } else {
            format!(
                "unknown env `{name}`; {CONFIG_FILE} defines: {}",
                known.join(", ")
            )
        })
    })?;
    match (&profile.database_url, &profile.database_url_env) {
        (Some(url), None) => Ok(url.clone()),
        (None, Some(var)) => lookup(var).map(|(v, _)| v).ok_or_else(|| {
            Error::Config(format!(
                "env `{name}` reads the database URL from ${var}, which is not set"
            ))
        }),
        (Some(_), Some(_)) => Err(Error::Config(format!(
            "env `{name}` in {CONFIG_FILE} sets both database_url and database_url_env; keep one"
        ))),
        (None, None) => Err(Error::Config(format!(
            "env `{name}` in {CONFIG_FILE} sets neither database_url nor database_url_env"
        ))),
    }
}

fn load_config_file(dir: &Path) -> Result<ConfigFile> {
    let path = dir.join(CONFIG_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::Config(format!(
            "{CONFIG_FILE} is not UTF-8 text (an invalid byte at offset {}); save it as UTF-8",
            e.utf8_error().valid_up_to()
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        // One line, with where: toml's message runs over several.
        let at = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        });
        let message: Vec<&str> = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        Error::Config(format!(
            "{CONFIG_FILE} is invalid{}: {}",
            at.unwrap_or_default(),
            message.join("; ")
        ))
    })
}

fn read_dotenv(dir: &Path) -> Result<BTreeMap<String, String>> {
    let path = dir.join(".env");
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let iter = dotenvy::from_path_iter(&path)
        .map_err(|e| Error::Config(format!(".env cannot be read: {e}")))?;
    let mut vars = BTreeMap::new();
    for item in iter {
        let (k, v) = item.map_err(|e| {
            // The line itself is not shown: it may hold a password.
            let line = match &e {
                dotenvy::Error::LineParse(text, _) => std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|file| {
                        let first = text.lines().next().unwrap_or_default().trim().to_string();
                        file.lines()
                            .position(|l| !first.is_empty() && l.contains(&first))
                    })
                    .map(|i| format!(" (line {})", i + 1)),
                _ => None,
            };
            Error::Config(format!(
                ".env has a malformed line{}; each line must be KEY=value",
                line.unwrap_or_default()
            ))
        })?;
        vars.insert(k, v);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_shown() {
        let url = DatabaseUrl::parse("postgres://app:s3cret@db.example:5432/app?sslmode=require")
            .unwrap();
        assert_eq!(
            url.redacted(),
            "postgres://app:***@db.example:5432/app?sslmode=require"
        );
        assert!(!format!("{url} {url:?}").contains("s3cret"));
        let url = DatabaseUrl::parse("postgresql://app@db/app?password=hunter2").unwrap();
        assert!(!url.redacted().contains("hunter2"), "{}", url.redacted());
        assert!(url.expose().starts_with("postgres://"));
    }

    #[test]
    fn mariadb_scheme_is_mysql() {
        let url = DatabaseUrl::parse("mariadb://root:pw@127.0.0.1:3306/test").unwrap();
        assert_eq!(url.backend(), Backend::MySql);
        assert_eq!(url.redacted(), "mysql://root:***@127.0.0.1:3306/test");
        assert_eq!(url.database_name().as_deref(), Some("test"));
    }

    #[test]
    fn malformed_urls_do_not_echo_input() {
        for bad in [
            "postgres://u:topsecret@host:notaport/db",
            "http://x:topsecret@y",
            "postgres://",
            "sqlite:",
            "",
        ] {
            let err = DatabaseUrl::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("topsecret"), "{err}");
            assert!(
                matches!(DatabaseUrl::parse(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:data/x.db")
                .unwrap()
                .sqlite_path(),
            Some("data/x.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db")
                .unwrap()
                .sqlite_path(),
            Some("/tmp/x.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite::memory:").unwrap().sqlite_path(),
            None
        );
    }
}

/// `text` with the password of every URL in it (`scheme://user:password@host`)
/// replaced by `***`: for a job's arguments as messages and `datamig status`
/// show them (an `--arg endpoint=http://user:pass@…`).
pub fn hide_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at the path, query, fragment, or where the text
        // around it (JSON, a shell word) goes on.
        let end = after
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | ',' | '}' | ']') || c.is_whitespace()
            })
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(user_end) if authority[..user_end].contains(':') => {
                let colon = authority[..user_end].find(':').unwrap_or(user_end);
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[user_end..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Parses `90s`, `5m`, `1h30m`, `250ms` or a plain number of seconds.
pub fn parse_duration(input: &str) -> std::result::Result<std::time::Duration, String> {
    let s = input.trim();
    let bad = || format!("`{input}` is not a duration; write e.g. 250ms, 30s, 5m, 1h30m or 30d");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let mut total_ms: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total_ms = total_ms
            .checked_add(n.checked_mul(factor).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    let ms = u64::try_from(total_ms).map_err(|_| bad())?;
    Ok(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn passwords_in_urls_are_hidden_wherever_they_are() {
        use super::hide_passwords;
        assert_eq!(
            hide_passwords(r#"{"endpoint":"http://svc:s3cret@host:8080/verify","n":1}"#),
            r#"{"endpoint":"http://svc:***@host:8080/verify","n":1}"#
        );
        assert_eq!(
            hide_passwords("endpoint=https://a:b@c dir=/tmp x=postgres://u@h/d"),
            "endpoint=https://a:***@c dir=/tmp x=postgres://u@h/d"
        );
        assert_eq!(hide_passwords("no url here"), "no url here");
        assert_eq!(hide_passwords("s3://bucket/key"), "s3://bucket/key");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "m", "5x", "-5s", "99999999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
