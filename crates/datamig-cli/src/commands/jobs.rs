//! `datamig jobs`: the registered data jobs.

use anyhow::Result;
use datamig_core::job::Registry;

use crate::output::line;

pub fn run(registry: &Registry) -> Result<()> {
    if registry.is_empty() {
        line("no jobs are registered; add one to the registry in jobs/lib.rs");
        return Ok(());
    }
    let width = registry.iter().map(|j| j.name().len()).max().unwrap_or(0);
    for job in registry.iter() {
        line(&format!("{:width$}  {}", job.name(), job.description()));
    }
    Ok(())
}
