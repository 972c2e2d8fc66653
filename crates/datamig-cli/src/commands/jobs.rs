//! `datamig jobs`: the registered data jobs and their arguments.

use anyhow::Result;
use datamig_core::job::Registry;

use crate::output::line;

pub fn run(registry: &Registry) -> Result<()> {
    if registry.is_empty() {
        line("no jobs are registered; add one to the registry in jobs/lib.rs");
        return Ok(());
    }
    for job in registry.iter() {
        line(&format!("{}  {}", job.name(), job.description()));
        for (arg, help) in job.arg_help() {
            line(&format!("    --arg {arg}=…  {help}"));
        }
    }
    Ok(())
}
