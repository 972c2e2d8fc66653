//! This project's data jobs, and the registry the `datamig` binary runs them from.
//!
//! Each job is a type implementing [`datamig_core::job::Job`] in a file of its
//! own, named after the job (`backfill_emails.rs` holds `backfill_emails`), and
//! added to [`registry`] below. A test checks that every file here is registered.

pub mod backfill_emails;
pub mod backfill_emails_batch;
pub mod backfill_emails_sql;
pub mod copy_user_email_to_sessions;
pub mod copy_user_email_to_sessions_sql;
pub mod import_users;
pub mod index_uploads;
pub mod merge_duplicate_users;
pub mod move_addresses_to_table;
pub mod purge_expired_sessions;
pub mod seed_demo_sessions;
pub mod seed_demo_users;
pub mod verify_emails;

use datamig_core::job::Registry;

/// Every job `datamig run` can run. Add a new job here.
pub fn registry() -> Registry {
    Registry::new()
        .with(backfill_emails::BackfillEmails)
        .with(backfill_emails_batch::BackfillEmailsBatch)
        .with(backfill_emails_sql::BackfillEmailsSql)
        .with(copy_user_email_to_sessions::CopyUserEmailToSessions)
        .with(copy_user_email_to_sessions_sql::CopyUserEmailToSessionsSql)
        .with(import_users::ImportUsers)
        .with(index_uploads::IndexUploads)
        .with(merge_duplicate_users::MergeDuplicateUsers)
        .with(move_addresses_to_table::MoveAddressesToTable)
        .with(purge_expired_sessions::PurgeExpiredSessions)
        .with(seed_demo_sessions::SeedDemoSessions)
        .with(seed_demo_users::SeedDemoUsers)
        .with(verify_emails::VerifyEmails)
}

/// For jobs that take no `--arg`: the engine's own (`datamig_core::job::NoArgs`).
pub use datamig_core::job::NoArgs;
