//! Fuzzing, with proptest, of everything datamig parses from outside: migration
//! files (names, statement splitting, loading), stored cursors, durations,
//! rates and windows, database URLs, schema targets, and `--arg` values for
//! every shipped job. The property for each is the same: any input gets a value
//! or an error, never a panic; where a value must survive a round trip, it does.
//!
//! The case count comes from `PROPTEST_CASES` (proptest's own variable; 256 in
//! CI); RELIABILITY.md gives the long run's count and command.

use datamig_core::config::{parse_duration, DatabaseUrl};
use datamig_core::db::Value;
use datamig_core::migrate::split::{split, Flavor};
use datamig_core::migrate::{source, DownTarget, UpTarget};
use datamig_core::run::{cursor, pace};
use proptest::prelude::*;

/// Text that looks like what the parsers meet: SQL-ish, quote- and
/// comment-heavy, with Unicode, NULs, BOMs and CRLFs mixed in.
fn sqlish() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("`".to_string()),
        Just("$$".to_string()),
        Just("$tag$".to_string()),
        Just("--".to_string()),
        Just("/*".to_string()),
        Just("*/".to_string()),
        Just(";".to_string()),
        Just("\\".to_string()),
        Just("\r\n".to_string()),
        Just("\n".to_string()),
        Just("\u{feff}".to_string()),
        Just("\0".to_string()),
        Just("DELIMITER //".to_string()),
        Just("BEGIN".to_string()),
        Just("END".to_string()),
        Just("CREATE TRIGGER t".to_string()),
        Just("CASE".to_string()),
        Just("-- datamig:no-transaction\n".to_string()),
        "[a-zA-Z0-9 (),.=_]{0,12}",
        any::<String>(),
    ];
    prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn splitting_sql_never_panics_and_keeps_the_text(sql in sqlish()) {
        for flavor in [Flavor::Postgres, Flavor::MySql, Flavor::Sqlite] {
            let statements = split(&sql, flavor);
            for s in &statements {
                prop_assert!(s.line >= 1);
                prop_assert!(!s.sql.trim().is_empty(), "an empty statement from {sql:?}");
            }
        }
    }

    #[test]
    fn migration_file_names_never_panic(name in prop_oneof![
        "[0-9]{0,16}_[a-z_]{0,20}\\.(up|down)\\.sql",
        "[0-9]{14}_[A-Za-z0-9 _.-]{0,20}\\.(up|down|sideways)\\.(sql|txt)",
        any::<String>(),
    ]) {
        if let Some((version, migration, _up)) = source::parse_file_name(&name) {
            prop_assert!(version >= 0);
            prop_assert!(name.contains(&migration));
        }
        let _ = source::validate_name(&name);
        let normalized = source::normalize(&name);
        prop_assert_eq!(source::checksum(&normalized), source::checksum(&source::normalize(&normalized)));
    }

    #[test]
    fn loading_a_directory_of_arbitrary_files_never_panics(
        files in prop::collection::vec(("[0-9]{1,15}_[a-z_]{1,10}\\.(up|down)\\.sql|[a-z]{1,8}(\\.[a-z]{1,3})?", prop::collection::vec(any::<u8>(), 0..200)), 0..6)
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let _ = source::load(dir.path());
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_an_error(
        key in prop::collection::vec(prop_oneof![
            any::<i64>().prop_map(Value::Int),
            any::<String>().prop_map(Value::Text),
            any::<bool>().prop_map(Value::Bool),
        ], 1..4),
        garbage in any::<String>(),
        arity in 0_usize..5,
    ) {
        let text = cursor::encode(&key).unwrap();
        prop_assert_eq!(cursor::decode(&text, key.len()).unwrap(), key.clone());
        let _ = cursor::decode(&garbage, arity);
        let _ = cursor::display(&key);
    }

    #[test]
    fn durations_rates_and_windows_never_panic(text in prop_oneof![
        "[0-9]{0,25}(ms|s|m|h|d|w|us|ns|)",
        "-?[0-9]{0,6}\\.?[0-9]{0,4} ?(ms|s|m|h|d)?",
        "[0-9]{0,3}:[0-9]{0,3}(:[0-9]{0,3})?",
        "[0-9]{0,20}(/s|/m|/h| rows/s| batches/s|)",
        any::<String>(),
    ]) {
        if let Ok(d) = parse_duration(&text) {
            // What parses prints back as something that parses to the same.
            if d.as_millis() < 1_000_000_000_000 {
                prop_assert_eq!(parse_duration(&format!("{}ms", d.as_millis())).ok().map(|x| x.as_millis()), Some(d.as_millis()));
            }
        }
        let _ = pace::Rate::parse(&text);
        let _ = pace::parse_until(&text);
        let _ = UpTarget::parse(&text);
        let _ = DownTarget::parse(&text);
    }

    #[test]
    fn database_urls_never_panic_or_echo_a_password(
        scheme in "(postgres|postgresql|mysql|mariadb|sqlite|http|)",
        rest in "[a-z:@/.?=&%0-9\\[\\]-]{0,40}",
    ) {
        let url = format!("{scheme}://u:hunter2pw@{rest}");
        if let Err(e) = DatabaseUrl::parse(&url) {
            prop_assert!(!e.to_string().contains("hunter2pw"), "{e}");
        } else if let Some(parsed) = DatabaseUrl::parse(&url).ok().filter(|_| scheme != "sqlite") {
            // (A SQLite URL is a file name: `u:hunter2pw@` there is part of a path.)
            prop_assert!(!parsed.to_string().contains("hunter2pw"));
            let debug = format!("{parsed:?}");
            prop_assert!(!debug.contains("hunter2pw"));
        }
    }

    #[test]
    fn job_arguments_never_panic(
        job in prop::sample::select(jobs::registry().iter().map(|j| j.name()).collect::<Vec<_>>()),
        pairs in prop::collection::vec((
            prop_oneof!["(older_than|archive|file|rows|batch|table|x)", any::<String>()],
            prop_oneof![
                "[0-9]{0,25}(d|h|m|s|)",
                Just("1d; DROP TABLE users".to_string()),
                Just("'); DELETE FROM users; --".to_string()),
                Just("../../etc/passwd".to_string()),
                any::<String>(),
            ],
        ), 0..4),
    ) {
        let registry = jobs::registry();
        let job = registry.get(job).unwrap();
        let _ = job.parse_args(&pairs);
    }
}
