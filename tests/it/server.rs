//! A database server of a test's own, to restart mid-run without disturbing the
//! tests that share the machine's servers: PostgreSQL from `initdb` (run as the
//! `postgres` user, as initdb refuses root), MariaDB from `mariadb-install-db`.
//! Both listen on a free loopback port, with a data directory in /tmp that is
//! removed when the server is dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::Db;

pub struct Server {
    pub kind: Db,
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// The MariaDB server's process (PostgreSQL's is pg_ctl's to manage).
    child: std::sync::Mutex<Option<std::process::Child>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Server {
    pub fn start(kind: Db) -> Server {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("datamig-server-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bin = match kind {
            Db::Postgres => {
                let bin = std::fs::read_dir("/usr/lib/postgresql")
                    .expect("PostgreSQL's binaries in /usr/lib/postgresql")
                    .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .find(|b| b.join("initdb").exists())
                    .expect("initdb under /usr/lib/postgresql/*/bin");
                run(Command::new("chown").args(["postgres:postgres"]).arg(&dir));
                run(Command::new("runuser")
                    .current_dir("/")
                    .args(["-u", "postgres", "--"])
                    .arg(bin.join("initdb"))
                    .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                    .arg(dir.join("data")));
                bin
            }
            Db::MySql => {
                run(Command::new("chown").args(["mysql:mysql"]).arg(&dir));
                run(Command::new("mariadb-install-db")
                    .args([
                        "--user=mysql",
                        "--auth-root-authentication-method=normal",
                        "--skip-test-db",
                    ])
                    .arg(format!("--datadir={}", dir.join("data").display())));
                PathBuf::from("/usr/sbin")
            }
            Db::Sqlite => panic!("SQLite has no server"),
        };
        let server = Server {
            kind,
            port,
            dir,
            bin,
            child: std::sync::Mutex::default(),
        };
        server.up();
        server
    }

    /// The server's URL with its maintenance database.
    pub fn url(&self) -> String {
        match self.kind {
            Db::Postgres => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            _ => format!("mysql://root@127.0.0.1:{}/mysql", self.port),
        }
    }

    fn up(&self) {
        match self.kind {
            Db::Postgres => run(Command::new("runuser")
                .current_dir("/")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-o")
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=32MB",
                    self.port,
                    self.dir.display()
                ))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "start"])
                .stdout(Stdio::null())),
            _ => {
                let data = self.dir.join("data");
                let child = Command::new(self.bin.join("mariadbd"))
                    .arg("--no-defaults")
                    .arg("--user=mysql")
                    .arg(format!("--datadir={}", data.display()))
                    .arg(format!("--port={}", self.port))
                    .arg("--bind-address=127.0.0.1")
                    .arg(format!(
                        "--socket={}",
                        self.dir.join("mysqld.sock").display()
                    ))
                    .arg(format!(
                        "--pid-file={}",
                        self.dir.join("mysqld.pid").display()
                    ))
                    .arg(format!(
                        "--log-error={}",
                        self.dir.join("error.log").display()
                    ))
                    .arg("--innodb-buffer-pool-size=32M")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start mariadbd");
                *self.child.lock().unwrap() = Some(child);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test's own {:?} server did not start",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&self) {
        match self.kind {
            Db::Postgres => {
                let _ = Command::new("runuser")
                    .current_dir("/")
                    .args(["-u", "postgres", "--"])
                    .arg(self.bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(self.dir.join("data"))
                    .args(["-m", "fast", "-w", "stop"])
                    .stdout(Stdio::null())
                    .status();
            }
            _ => {
                // SIGTERM: MariaDB's normal shutdown, sessions ended.
                if let Some(mut child) = self.child.lock().unwrap().take() {
                    let _ = Command::new("kill").arg(child.id().to_string()).status();
                    let _ = child.wait();
                }
            }
        }
    }

    /// Stops the server (fast shutdown: sessions are ended, transactions rolled
    /// back), keeps it down for `down_for`, and starts it again.
    pub fn restart(&self, down_for: Duration) {
        self.down();
        std::thread::sleep(down_for);
        self.up();
    }

    /// Crashes the server, keeps it down for `down_for`, and starts it again,
    /// which recovers from its log: PostgreSQL by an immediate shutdown (every
    /// process ends at once, no checkpoint; WAL not yet written out, as an
    /// asynchronous commit leaves it, is lost as in a power cut), MariaDB by
    /// SIGKILL of `mariadbd`.
    pub fn crash(&self, down_for: Duration) {
        match self.kind {
            Db::Postgres => {
                let _ = Command::new("runuser")
                    .current_dir("/")
                    .args(["-u", "postgres", "--"])
                    .arg(self.bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(self.dir.join("data"))
                    .args(["-m", "immediate", "-w", "stop"])
                    .stdout(Stdio::null())
                    .status();
            }
            _ => {
                if let Some(mut child) = self.child.lock().unwrap().take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        std::thread::sleep(down_for);
        self.up();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
