//! `datamig jobs`: the registered data jobs and their arguments.

use anyhow::Result;
use datamig_core::job::Registry;

use crate::output::line;

pub fn run(registry: &Registry) -> Result<()> {
    if registry.is_empty() {
        line("no jobs are registered; add one to the registry in jobs/lib.rs");
        return Ok(());
    }
    // Columns as wide as their widest entry, so that descriptions line up.
    let name_w = registry.iter().map(|j| j.name().len()).max().unwrap_or(0);
    let arg_w = registry
        .iter()
        .flat_map(|j| {
            j.arg_help()
                .iter()
                .map(|(a, _)| a.chars().count() + "=…".chars().count())
        })
        .max()
        .unwrap_or(0);
    for job in registry.iter() {
        line(&format!("{:<name_w$}  {}", job.name(), job.description()));
        for (arg, help) in job.arg_help() {
            line(&format!("    --arg {:<arg_w$}  {help}", format!("{arg}=…")));
        }
    }
    Ok(())
}
