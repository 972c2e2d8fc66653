//! Files datamig writes (`--rejects-file`, an archive step's file): checked
//! before anything runs, so that an output can never be the database, its
//! journal or locks, a migration, the project's settings, or a file the same
//! command reads or writes for another purpose — and so that one that cannot be
//! written (a directory, a FIFO, a read-only place) stops the command at once,
//! not after every batch has committed.

use std::path::{Path, PathBuf};

use crate::config::DatabaseUrl;
use crate::{Error, Result};

/// The files and directories a command's outputs must stay clear of, each with
/// what it is (for the message).
#[derive(Debug, Clone, Default)]
pub struct Protected {
    files: Vec<(PathBuf, String)>,
    dirs: Vec<(PathBuf, String)>,
    /// The SQLite database: its journal, WAL, shared memory and datamig's lock
    /// files beside it are named after it.
    database: Option<PathBuf>,
}

/// `path` made absolute and free of symbolic links as far as it exists: the
/// file itself when it does, else its directory and its name.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let name = path.file_name().map(PathBuf::from).unwrap_or_default();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    dir.canonicalize().unwrap_or(dir).join(name)
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

impl Protected {
    /// What every command protects: the SQLite database at `url` (and the files
    /// named after it), the migrations directory, `datamig.toml` and `.env` in
    /// the project.
    pub fn new(url: &DatabaseUrl, project_dir: &Path, migrations_dir: &Path) -> Protected {
        let mut p = Protected::default();
        p.database(url);
        p.dir(migrations_dir, "the migrations directory");
        p.file(
            &project_dir.join("datamig.toml"),
            "the project's datamig.toml",
        );
        p.file(&project_dir.join(".env"), "the project's .env file");
        p
    }

    /// The database the command works on (a SQLite file; nothing for a server).
    pub fn database(&mut self, url: &DatabaseUrl) {
        self.database = url.sqlite_path().map(|db| resolved(&db));
    }

    /// Adds a file the command reads or writes (an import's CSV file, another output).
    pub fn file(&mut self, path: &Path, what: &str) {
        self.files.push((resolved(path), what.to_string()));
    }

    fn dir(&mut self, path: &Path, what: &str) {
        self.dirs.push((resolved(path), what.to_string()));
    }

    /// What `path` would overwrite that it must not, if anything.
    fn clash(&self, path: &Path) -> Option<String> {
        let target = resolved(path);
        if let Some(db) = &self.database {
            if &target == db || same_file(&target, db) {
                return Some("the SQLite database itself".into());
            }
            let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
                return None;
            };
            let name = name.to_string_lossy();
            if target.parent() == Some(dir) {
                let file = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if let Some(suffix) = file.strip_prefix(name.as_ref()) {
                    if ["-journal", "-wal", "-shm"].contains(&suffix) {
                        return Some(format!("the SQLite database's {}", &suffix[1..]));
                    }
                    if suffix.starts_with(".datamig-") {
                        return Some("one of datamig's lock files for the SQLite database".into());
                    }
                }
            }
        }
        for (file, what) in &self.files {
            if &target == file || same_file(&target, file) {
                return Some(what.clone());
            }
        }
        for (dir, what) in &self.dirs {
            if target.starts_with(dir) {
                return Some(format!("a file in {what}"));
            }
        }
        None
    }

    /// Refuses `path` as the output `flag` names (`--rejects-file`, `--arg
    /// archive=`) when it is a protected file, not a regular file, or cannot be
    /// written where it is. Creates nothing that stays: the check of a new
    /// file's directory writes a probe file there and removes it.
    pub fn check(&self, flag: &str, path: &Path) -> Result<()> {
        let refuse = |why: String| Err(Error::Usage(format!("{flag} {}: {why}", path.display())));
        if path.as_os_str().is_empty() {
            return refuse("an empty path; give the path of a file".into());
        }
        if let Some(what) = self.clash(path) {
            return refuse(format!(
                "that is {what}, which datamig must not overwrite; give another path"
            ));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return refuse("that is a directory; give the path of a file in it".into())
            }
            Ok(m) if !m.is_file() => {
                return refuse(
                    "that is not a regular file (a FIFO, a socket or a device); datamig writes only regular files, give another path"
                        .into(),
                )
            }
            Ok(_) => {
                // Opened for appending and closed at once: nothing is written.
                if let Err(e) = std::fs::OpenOptions::new().append(true).open(path) {
                    return refuse(format!("it cannot be written ({e}); give another path"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return refuse(format!("it cannot be read ({e}); give another path")),
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return refuse("its directory does not exist; create it or give another path".into());
        }
        // The directory must take a new file: the rejects file is written beside
        // its place and renamed, an archive may be created.
        let probe = dir.join(format!(".datamig-probe-{}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => refuse(format!(
                "its directory {} does not take new files ({e}); give another path",
                dir.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(dir: &Path) -> Protected {
        let url = DatabaseUrl::parse(&format!("sqlite:{}", dir.join("app.db").display())).unwrap();
        std::fs::write(dir.join("app.db"), b"").unwrap();
        std::fs::create_dir_all(dir.join("migrations")).unwrap();
        std::fs::write(dir.join("migrations/1_a.up.sql"), b"SELECT 1;").unwrap();
        Protected::new(&url, dir, &dir.join("migrations"))
    }

    #[test]
    fn an_output_may_not_be_the_database_or_anything_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let g = guard(dir.path());
        let refused = |name: &str| {
            g.check("--rejects-file", &dir.path().join(name))
                .unwrap_err()
                .to_string()
        };
        assert!(refused("app.db").contains("the SQLite database itself"));
        assert!(refused("app.db-wal").contains("WAL") || refused("app.db-wal").contains("wal"));
        assert!(refused("app.db-journal").contains("journal"));
        assert!(refused("app.db.datamig-job.x.lock").contains("lock files"));
        assert!(refused("migrations/1_a.up.sql").contains("migrations directory"));
        assert!(refused("migrations/new.csv").contains("migrations directory"));
        assert!(refused("datamig.toml").contains("datamig.toml"));
        assert!(refused("migrations").contains("migrations directory"));
        // Through a relative path with `..` and through a symbolic link.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(refused("sub/../app.db").contains("database itself"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("app.db"), dir.path().join("link.csv"))
                .unwrap();
            assert!(refused("link.csv").contains("database itself"));
            std::fs::hard_link(dir.path().join("app.db"), dir.path().join("hard.csv")).unwrap();
            assert!(refused("hard.csv").contains("database itself"));
        }
        assert!(g
            .check("--rejects-file", &dir.path().join("rejects.csv"))
            .is_ok());
        assert!(
            !dir.path().join("rejects.csv").exists(),
            "the check creates nothing"
        );
    }

    #[test]
    fn an_output_must_be_a_regular_writable_file() {
        let dir = tempfile::tempdir().unwrap();
        let g = guard(dir.path());
        let err = g
            .check("--rejects-file", dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a directory"), "{err}");
        let err = g
            .check("--rejects-file", &dir.path().join("nope/x.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("its directory does not exist"), "{err}");
        #[cfg(unix)]
        {
            let fifo = dir.path().join("fifo");
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(made.success());
            let err = g.check("--arg archive=", &fifo).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
            let err = g
                .check("--arg archive=", Path::new("/dev/null"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
    }
}
