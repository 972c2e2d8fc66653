//! A batch step (`Step::batch`): its writes to several tables commit with the
//! checkpoint exactly once, whatever kills the run, with or without workers;
//! its rows are never written from a stale read; its outside work is done
//! before the transaction. The fixture `count_visits_batch` adds 1 to
//! `visits.hits` and logs each visit in `visit_log`, whose key is the visit.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::each_db;
use crate::jobs::{assert_each_row_once, bump_rows_until_exit, kill_and_resume, spawn, visits};
use crate::support::{to_run, Db, Project};

fn visits_and_log(p: &Project, n: i64) {
    visits(p, n);
    p.db.exec("CREATE TABLE visit_log (visit_id BIGINT NOT NULL PRIMARY KEY, n INT NOT NULL)");
}

fn assert_logged_once(p: &Project, n: i64) {
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM visit_log"),
        n,
        "one log row per visit"
    );
    assert_eq!(
        p.db.scalar("SELECT count(*) FROM visit_log WHERE n <> 1"),
        0
    );
}

each_db! {
    fn sigkill_at_random_moments_writes_every_table_once(kind: Db) {
        let p = Project::new(kind);
        let n = 30_000;
        visits_and_log(&p, n);
        let args = ["run", "count_visits_batch", "--batch", "300", "--arg", "pause_ms=5"];
        let run = kill_and_resume(&p, n, &args, 5, 150);
        assert!(run.stderr.contains("resuming run 1 of count_visits_batch at id "), "{run:?}");
        assert!(run.stdout.contains("ok    visits not logged once"), "{run:?}");
        assert_each_row_once(&p, n, "count_visits_batch");
        assert_logged_once(&p, n);
    }

    fn sigkill_with_two_workers_writes_every_table_once(kind: Db) {
        let p = Project::new(kind);
        let n = 30_000;
        visits_and_log(&p, n);
        let args = ["run", "count_visits_batch", "--batch", "300", "--workers", "2", "--lease", "1s", "--arg", "pause_ms=20"];
        // A partitioned run counts in its partitions: kill at row milestones.
        for milestone in [3_000, 9_000, 15_000] {
            let mut child = spawn(&p, &args);
            let deadline = Instant::now() + Duration::from_secs(60);
            while p.db.scalar("SELECT count(*) FROM visits WHERE hits > 0") < milestone {
                assert!(Instant::now() < deadline, "no progress within 60 s");
                assert!(child.try_wait().unwrap().is_none(), "the run ended before the kill");
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 60));
            child.kill().expect("SIGKILL");
            let _ = child.wait();
        }
        assert!(p.db.scalar("SELECT count(*) FROM visits WHERE hits > 0") < n, "killed mid-run");
        let run = p.run_fixtures(&args);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains("ok    visits not logged once"), "{run:?}");
        assert_each_row_once(&p, n, "count_visits_batch");
        assert_logged_once(&p, n);
    }

    fn application_writes_during_the_outside_work_are_never_overwritten(kind: Db) {
        // The application adds 1000 to rows while the step's outside work runs
        // between its read and its transaction: a batch written from that read
        // would erase the application's write.
        let p = Project::new(kind);
        let n = 20_000;
        visits_and_log(&p, n);
        let mut child = p
            .fixtures(&["run", "count_visits_batch", "--batch", "200", "--arg", "pause_ms=5"])
            .env("RUST_LOG", "datamig_core=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let bumps = bump_rows_until_exit(&p, &mut child, n);
        let run = to_run(child.wait_with_output().unwrap());
        // The checks see the application's +1000s: the run's writes are what is judged here.
        assert!(run.code == 0 || run.code == 11, "{run:?}");
        let total: i64 = bumps.iter().sum();
        assert!(total >= 1, "no application write landed during the run");
        let mut wrong = Vec::new();
        for row in p.db.query("SELECT id, hits FROM visits ORDER BY id") {
            let (id, hits): (usize, i64) = (row[0].parse().unwrap(), row[1].parse().unwrap());
            if hits != 1000 * bumps[id] + 1 {
                wrong.push(format!("id {id}: hits {hits}, expected {}", 1000 * bumps[id] + 1));
            }
        }
        assert!(wrong.is_empty(), "{} rows wrong: {:?}", wrong.len(), &wrong[..wrong.len().min(10)]);
        assert_logged_once(&p, n);
        if kind != Db::Sqlite {
            assert!(
                run.stderr.contains("changed since they were read")
                    || run.stderr.contains("changed between their read and the batch's transaction"),
                "the guard fired: {run:?}"
            );
        }
    }
}

each_db! {
    fn inserts_ignore_or_update_conflicts_and_return_columns_on_every_database(kind: Db) {
        use datamig_core::config::DatabaseUrl;
        use datamig_core::db::{Conn, ConnectOptions, Value};
        use datamig_core::job::OnConflict;
        let p = Project::new(kind);
        p.db.exec("CREATE TABLE kv (id BIGINT NOT NULL PRIMARY KEY, v INT NOT NULL)");
        let row = |id: i64, v: i64| vec![Value::Int(id), Value::Int(v)];
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let url = DatabaseUrl::parse(&p.db.url).unwrap();
            let mut conn = Conn::connect(&url, &ConnectOptions::default()).await.unwrap();
            let cols = ["id", "v"];
            let n = |parts: Vec<(u64, Vec<Vec<Value>>)>| parts.iter().map(|(n, _)| n).sum::<u64>();
            let put = conn.insert_rows("kv", &cols, &[], &[row(1, 1), row(2, 2)], OnConflict::Fail, &[]).await.unwrap();
            assert_eq!(n(put), 2);
            assert!(conn.insert_rows("kv", &cols, &[], &[row(2, 9)], OnConflict::Fail, &[]).await.is_err(), "a duplicate fails");
            conn.insert_rows("kv", &cols, &[], &[row(2, 9), row(3, 3)], OnConflict::Ignore, &[]).await.unwrap();
            let update = OnConflict::Update { on: &["id"], set: &["v"] };
            conn.insert_rows("kv", &cols, &[], &[row(3, 30), row(4, 4)], update, &[]).await.unwrap();
            let back = conn.insert_rows("kv", &cols, &[], &[row(5, 5), row(6, 6)], OnConflict::Fail, &["id", "v"]).await.unwrap();
            let returned: Vec<Vec<Value>> = back.into_iter().flat_map(|(_, rows)| rows).collect();
            assert_eq!(returned, vec![row(5, 5), row(6, 6)]);
            conn.close().await;
        });
        let all = p.db.query("SELECT id, v FROM kv ORDER BY id");
        let want: Vec<Vec<String>> = [(1, 1), (2, 2), (3, 30), (4, 4), (5, 5), (6, 6)]
            .iter()
            .map(|(i, v)| vec![i.to_string(), v.to_string()])
            .collect();
        assert_eq!(all, want, "ignored kept 2, updated 3");
    }
}

each_db! {
    fn updates_by_a_text_key_follow_the_databases_collation(kind: Db) {
        // Mixed case: byte order puts "B" before "a"; a case-insensitive
        // collation (MariaDB's default) or a linguistic one does not.
        let p = Project::new(kind);
        for table in ["tags", "tag_copies"] {
            p.db.exec(&format!("CREATE TABLE {table} (name VARCHAR(20) NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)"));
            let names: Vec<String> = (0..300)
                .map(|i| {
                    let c = char::from(b'a' + u8::try_from(i % 26).unwrap());
                    let c = if i % 2 == 1 { c.to_ascii_uppercase() } else { c };
                    format!("('{c}{i:03}')")
                })
                .collect();
            p.db.exec(&format!("INSERT INTO {table} (name) VALUES {}", names.join(", ")));
        }
        let run = p.run_fixtures(&["run", "touch_tags_batch", "--batch", "40"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(p.db.scalar("SELECT count(*) FROM tags WHERE hits <> 1"), 0);
        assert_eq!(p.db.scalar("SELECT count(*) FROM tag_copies WHERE hits <> 1"), 0, "every row of the other table, by its text key");
    }
}
