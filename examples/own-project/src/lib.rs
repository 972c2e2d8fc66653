//! This project's data jobs, and the registry its `datamig` binary runs them from.

pub mod backfill_display_names;

use datamig_core::job::Registry;

/// Every job `datamig run` can run. Add a new job here.
pub fn registry() -> Registry {
    Registry::new().with(backfill_display_names::BackfillDisplayNames)
}
