//! This project's data jobs, and the registry the `datamig` binary runs them from.
//!
//! Every job is a type implementing [`datamig_core::job::Job`], in a file of its
//! own in this directory, added to [`registry`] below.

use datamig_core::job::Registry;

/// Every job `datamig run` can run. Add a new job here.
pub fn registry() -> Registry {
    Registry::new()
}
