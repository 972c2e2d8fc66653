//! Scratch databases for `schema test`: created beside the project's database,
//! dropped when done, and found again when a test that was killed left one.

use super::{db_message, Conn, ConnectOptions, Value};
use crate::config::{Backend, DatabaseUrl};
use crate::{Error, Result};

/// A scratch database on the same server, for `schema test`. Dropped by [`Scratch::drop_now`].
pub struct Scratch {
    pub url: DatabaseUrl,
    admin: Option<Conn>,
    name: String,
    _dir: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A temporary directory removed on drop (for scratch SQLite files).
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What every scratch database's name starts with:
/// `datamig_scratch_<pid>_<unix seconds>_<random>`.
const SCRATCH_PREFIX: &str = "datamig_scratch_";

/// A scratch database left by a `schema test` that did not end (killed, or
/// the machine lost), found by [`Scratch::leftovers`].
#[derive(Debug, Clone)]
pub struct Leftover {
    /// The database's name (a directory's path for SQLite).
    pub name: String,
    /// Why it counts as left behind.
    pub why: String,
}

/// A scratch database no process has used for this long, and that no session
/// is connected to, is one a `schema test` left behind.
const LEFTOVER_AGE: i64 = 600;

/// The pid and creation time in a scratch database's name.
fn scratch_origin(name: &str) -> Option<(u32, i64)> {
    let mut parts = name.strip_prefix(SCRATCH_PREFIX)?.split('_');
    let pid = parts.next()?.parse().ok()?;
    let at = parts.next()?.parse().ok()?;
    Some((pid, at))
}

impl Scratch {
    /// Creates an empty database beside the one `url` names.
    pub async fn create(url: &DatabaseUrl, opts: &ConnectOptions) -> Result<Scratch> {
        Scratch::create_named(url, opts, None).await
    }

    /// [`Scratch::create`] with the name given (`Some("ci_test")`: exactly
    /// that one, which must not exist; `Some("ci_*")`: that prefix, then the
    /// process, time and a random part), for a user allowed to create only
    /// certain names.
    pub async fn create_named(
        url: &DatabaseUrl,
        opts: &ConnectOptions,
        name: Option<&str>,
    ) -> Result<Scratch> {
        let generated = |prefix: &str| {
            format!(
                "{prefix}{}_{}_{:08x}",
                std::process::id(),
                chrono::Utc::now().timestamp(),
                rand::random::<u32>()
            )
        };
        let name = match name {
            None => generated(SCRATCH_PREFIX),
            Some(n) => match n.strip_suffix('*') {
                Some(prefix) => generated(prefix),
                None => n.to_string(),
            },
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Error::Usage(format!(
                "--scratch-name `{name}` is not a database name datamig creates: use letters, digits, _ and - \
                 (and a trailing * for a prefix)"
            )));
        }
        match url.backend() {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
                let file = dir.join("scratch.db");
                let url = DatabaseUrl::parse(&format!("sqlite:{}", file.display()))?;
                Ok(Scratch {
                    url,
                    admin: None,
                    name,
                    _dir: Some(tempfile_dir::TempDir(dir)),
                })
            }
            _ => {
                let mut admin = Conn::connect(url, opts).await?;
                let sql = format!("CREATE DATABASE {}", admin.quote_ident(&name));
                admin.script(&sql).await.map_err(|e| {
                    Error::db(
                        "cannot create a scratch database for the test (the user needs CREATE DATABASE; or pass --scratch-url)",
                        db_message(&e),
                    )
                })?;
                let scratch_url = url.with_database(&name)?;
                Ok(Scratch {
                    url: scratch_url,
                    admin: Some(admin),
                    name,
                    _dir: None,
                })
            }
        }
    }

    /// Scratch databases beside the one `url` names that earlier `schema test`s
    /// left behind: on a server, those no session is connected to and older
    /// than a few minutes (their process may be on another host); for SQLite,
    /// the scratch directories of processes on this machine that are gone.
    pub async fn leftovers(url: &DatabaseUrl, opts: &ConnectOptions) -> Result<Vec<Leftover>> {
        let now = chrono::Utc::now().timestamp();
        let old = |name: &str| scratch_origin(name).is_none_or(|(_, at)| now - at > LEFTOVER_AGE);
        match url.backend() {
            Backend::Sqlite => {
                let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
                    return Ok(Vec::new());
                };
                let mut found = Vec::new();
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(pid) = name
                        .strip_prefix(SCRATCH_PREFIX)
                        .and_then(|rest| rest.split('_').next())
                        .and_then(|pid| pid.parse::<u32>().ok())
                    else {
                        continue;
                    };
                    let gone = cfg!(target_os = "linux")
                        && std::path::Path::new("/proc/self").exists()
                        && !std::path::Path::new(&format!("/proc/{pid}")).exists();
                    if gone && entry.path().join("scratch.db").exists() {
                        found.push(Leftover {
                            name: entry.path().display().to_string(),
                            why: format!("process {pid} is gone"),
                        });
                    }
                }
                found.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(found)
            }
            backend => {
                let mut admin = Conn::connect(url, opts).await?;
                let sql = match backend {
                    Backend::Postgres => format!(
                        "SELECT d.datname FROM pg_database d WHERE d.datname LIKE '{SCRATCH_PREFIX}%' \
                         AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname) \
                         ORDER BY 1"
                    ),
                    _ => format!(
                        "SELECT s.SCHEMA_NAME FROM information_schema.SCHEMATA s WHERE s.SCHEMA_NAME LIKE \
                         '{SCRATCH_PREFIX}%' AND NOT EXISTS (SELECT 1 FROM information_schema.PROCESSLIST p \
                         WHERE p.DB = s.SCHEMA_NAME) ORDER BY 1"
                    ),
                };
                let rows = admin.fetch(&sql, &[]).await;
                admin.close().await;
                // Seeing others' databases is not everyone's privilege: then
                // there is nothing to report.
                let Ok(rows) = rows else {
                    return Ok(Vec::new());
                };
                Ok(rows
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().and_then(Value::into_string))
                    .filter(|name| old(name))
                    .map(|name| Leftover {
                        name,
                        why: "no session uses it".into(),
                    })
                    .collect())
            }
        }
    }

    /// Drops the leftovers [`Scratch::leftovers`] found.
    pub async fn drop_leftovers(
        url: &DatabaseUrl,
        opts: &ConnectOptions,
        leftovers: &[Leftover],
    ) -> Result<()> {
        if url.backend() == Backend::Sqlite {
            for l in leftovers {
                std::fs::remove_dir_all(&l.name)
                    .map_err(|e| Error::io("cannot remove the scratch directory", &l.name, e))?;
            }
            return Ok(());
        }
        let mut admin = Conn::connect(url, opts).await?;
        for l in leftovers {
            let sql = format!("DROP DATABASE IF EXISTS {}", admin.quote_ident(&l.name));
            if let Err(e) = admin.script(&sql).await {
                admin.close().await;
                return Err(Error::db(
                    format!("cannot drop the scratch database {}", l.name),
                    db_message(&e),
                ));
            }
        }
        admin.close().await;
        Ok(())
    }

    /// Drops the scratch database.
    pub async fn drop_now(mut self) -> Result<()> {
        if let Some(mut admin) = self.admin.take() {
            // A statement still running there (a test cut short mid-migration)
            // would hold DROP DATABASE back on MariaDB until it ends: end it.
            if admin.backend() == Backend::MySql {
                let ids = admin
                    .fetch(
                        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
                        &[self.name.as_str().into()],
                    )
                    .await
                    .unwrap_or_default();
                for id in ids.iter().filter_map(|r| r.first().and_then(Value::as_i64)) {
                    let _ = admin.script(&format!("KILL {id}")).await;
                }
            }
            let force = if admin.backend() == Backend::Postgres {
                " WITH (FORCE)"
            } else {
                ""
            };
            let sql = format!(
                "DROP DATABASE IF EXISTS {}{force}",
                admin.quote_ident(&self.name)
            );
            admin
                .script(&sql)
                .await
                .map_err(|e| Error::db("cannot drop the scratch database", db_message(&e)))?;
            admin.close().await;
        }
        Ok(())
    }
}
