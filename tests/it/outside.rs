//! `verify_emails`, a batch step that calls an HTTP service outside the
//! transaction, against a real local HTTP server (tiny_http) that counts its
//! requests and the idempotency keys it is sent: the database writes exactly
//! once through SIGKILLs, the requests at most once per batch plus what each
//! interruption loses, and a service that stays down stops the run resumable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::demo_jobs::{kill_and_resume, project, seed};
use crate::each_db;

/// A local verification service: every address is valid but those of users
/// whose id ends in 7.
struct Service {
    url: String,
    /// The idempotency key of every request answered, in order.
    keys: Arc<Mutex<Vec<String>>>,
    /// Requests refused with 503 while `down`.
    refused: Arc<Mutex<usize>>,
    down: Arc<AtomicBool>,
}

impl Service {
    fn start() -> Service {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("a local HTTP server");
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let keys = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (k, r, d) = (Arc::clone(&keys), Arc::clone(&refused), Arc::clone(&down));
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                if d.load(Ordering::SeqCst) {
                    *r.lock().unwrap() += 1;
                    let _ = request
                        .respond(tiny_http::Response::from_string("down").with_status_code(503));
                    continue;
                }
                let mut body = String::new();
                request.as_reader().read_to_string(&mut body).unwrap();
                let asked: serde_json::Value = serde_json::from_str(&body).expect("a JSON request");
                let results: Vec<serde_json::Value> = asked["emails"]
                    .as_array()
                    .expect("emails")
                    .iter()
                    .map(|e| {
                        let email = e.as_str().unwrap();
                        serde_json::json!({"email": email, "valid": !email.trim().to_lowercase().contains("7@")})
                    })
                    .collect();
                k.lock().unwrap().push(
                    asked["idempotency_key"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
                let json = serde_json::json!({ "results": results }).to_string();
                let header = "Content-Type: application/json"
                    .parse::<tiny_http::Header>()
                    .unwrap();
                let _ = request.respond(tiny_http::Response::from_string(json).with_header(header));
            }
        });
        Service {
            url: format!("http://127.0.0.1:{port}/verify"),
            keys,
            refused,
            down,
        }
    }
}

each_db! {
    fn verify_emails_writes_each_user_once_and_asks_once_per_batch_through_kills(kind: Db) {
        let p = project(kind);
        let n = 20_000;
        seed(&p, "seed_demo_users", n);
        let service = Service::start();
        let endpoint = format!("endpoint={}", service.url);
        let args = ["run", "verify_emails", "--batch", "200", "--rate", "4000", "--arg", &endpoint];
        let kills = 4;
        let run = kill_and_resume(&p, "verify_emails", &args, kills, 300);
        assert!(run.stdout.contains("users not checked"), "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users WHERE email_checked_at IS NULL"), 0);
        // Seeded addresses end in the user's id (a duplicate's in the id before it, ending in 9).
        let invalid = (1..=n).filter(|i| i % 10 == 7).count();
        assert_eq!(p.db.scalar("SELECT count(*) FROM users WHERE email_valid = 0"), i64::try_from(invalid).unwrap());
        assert_eq!(p.db.scalar("SELECT count(*) FROM users WHERE email_valid = 1"), n - i64::try_from(invalid).unwrap());
        let counts = p.db.query("SELECT rows_done, rows_changed, batches_done FROM datamig_runs WHERE job = 'verify_emails'");
        assert_eq!(counts, vec![vec![n.to_string(), n.to_string(), "100".into()]], "each row written once");
        // Each batch asked at least once, with one key whatever the attempt;
        // beyond that, only what the kills cut short: the batch being written
        // and the one read ahead of it.
        let keys = service.keys.lock().unwrap().clone();
        let mut distinct = keys.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 100, "one key per batch: {distinct:?}");
        assert!(keys.len() <= 100 + 2 * kills, "{} requests for 100 batches and {kills} kills", keys.len());
    }

    fn a_service_that_stays_down_stops_the_run_resumable(kind: Db) {
        let p = project(kind);
        seed(&p, "seed_demo_users", 1_000);
        let service = Service::start();
        service.down.store(true, Ordering::SeqCst);
        // An endpoint with credentials in it.
        let endpoint = format!("endpoint={}", service.url.replace("http://", "http://bot:secretpw@"));
        let args = ["run", "verify_emails", "--batch", "100", "--max-retries", "2", "--arg", &endpoint];
        let stopped = p.run_fixtures(&args);
        assert_ne!(stopped.code, 0, "{stopped:?}");
        assert!(stopped.stderr.contains("503"), "{stopped:?}");
        // The job's own messages mask it, and so do the resume hint and `status`.
        assert!(stopped.stderr.contains("http://bot:***@127.0.0.1:"), "{stopped:?}");
        assert!(stopped.stderr.contains("--arg endpoint=http://bot:***@127.0.0.1:"), "the resume hint: {stopped:?}");
        assert!(!stopped.stdout.contains("secretpw") && !stopped.stderr.contains("secretpw"), "{stopped:?}");
        for status in [p.run_fixtures(&["status", "verify_emails"]), p.run_fixtures(&["status", "verify_emails", "--json"])] {
            assert_eq!(status.code, 0, "{status:?}");
            assert!(status.stdout.contains("bot:***@127.0.0.1"), "{status:?}");
            assert!(!status.stdout.contains("secretpw") && !status.stderr.contains("secretpw"), "{status:?}");
        }
        assert!(stopped.stderr.contains("retrying"), "retried with backoff: {stopped:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users WHERE email_checked_at IS NOT NULL"), 0);
        let refused = *service.refused.lock().unwrap();
        assert!((3..=6).contains(&refused), "the first try and two retries (and a read ahead): {refused}");
        service.down.store(false, Ordering::SeqCst);
        let resumed = p.run_fixtures(&args);
        assert_eq!(resumed.code, 0, "{resumed:?}");
        assert!(resumed.stderr.contains("resuming run 1 of verify_emails"), "{resumed:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM users WHERE email_checked_at IS NULL"), 0);
    }
}
