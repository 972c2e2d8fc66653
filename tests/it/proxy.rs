//! A TCP proxy on loopback for fault tests: it forwards to a database server,
//! and on command adds latency, resets every open connection, or blackholes
//! them (keeps the sockets open and forwards nothing, as a dead network path or
//! a frozen server does). New connections after a fault are forwarded normally.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One proxied connection: both sockets, and whether it is blackholed.
struct Link {
    client: TcpStream,
    server: TcpStream,
    dead: Arc<AtomicBool>,
}

pub struct Proxy {
    pub port: u16,
    links: Arc<Mutex<Vec<Link>>>,
    latency_ms: Arc<AtomicU64>,
    /// New connections are accepted and then answered with silence.
    silent: Arc<AtomicBool>,
    /// Faults injected, for the test's report.
    pub faults: AtomicU64,
}

impl Proxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream` (host:port).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let latency_ms = Arc::new(AtomicU64::new(0));
        let silent = Arc::new(AtomicBool::new(false));
        let (upstream, accepted, latency, quiet) = (
            upstream.to_string(),
            links.clone(),
            latency_ms.clone(),
            silent.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let dead = Arc::new(AtomicBool::new(quiet.load(Ordering::SeqCst)));
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    let (dead, latency) = (dead.clone(), latency.clone());
                    std::thread::spawn(move || pump(from, to, &dead, &latency));
                }
                accepted.lock().unwrap().push(Link {
                    client: client.try_clone().unwrap(),
                    server: server.try_clone().unwrap(),
                    dead,
                });
            }
        });
        Proxy {
            port,
            links,
            latency_ms,
            silent,
            faults: AtomicU64::new(0),
        }
    }

    /// Delays every chunk forwarded, each way, by `ms`.
    pub fn set_latency(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Closes every open connection at once, both ways (the client reads EOF or
    /// a reset mid-statement; the server sees its client gone).
    pub fn reset_all(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            let _ = link.client.shutdown(Shutdown::Both);
            let _ = link.server.shutdown(Shutdown::Both);
        }
        self.faults.fetch_add(1, Ordering::SeqCst);
    }

    /// From now on, accepts new connections and forwards nothing on them (a
    /// server that takes the TCP connection and never answers).
    pub fn silence_new_connections(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    /// Stops forwarding on every open connection, keeping the sockets open:
    /// neither side gets an error, only silence.
    pub fn blackhole_all(&self) {
        for link in self.links.lock().unwrap().iter() {
            link.dead.store(true, Ordering::SeqCst);
        }
        self.faults.fetch_add(1, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes; once `dead`, reads and drops.
fn pump(mut from: TcpStream, mut to: TcpStream, dead: &AtomicBool, latency: &AtomicU64) {
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if dead.load(Ordering::SeqCst) {
            continue;
        }
        let ms = latency.load(Ordering::Relaxed);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    if !dead.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}
