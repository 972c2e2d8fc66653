//! Data jobs: the trait a project implements in `jobs/`, and the explicit
//! registry it hands to the CLI (`Registry::new().with(MyJob)`), so that every
//! job a binary can run is visible in one place.

use std::collections::BTreeMap;

/// A data job. The batch API (source, transform, verification) grows on this trait.
pub trait Job: Send + Sync + 'static {
    /// The name `datamig run NAME` uses: snake_case, unique in the registry.
    fn name(&self) -> &'static str;
    /// One line for `datamig jobs`.
    fn description(&self) -> &'static str;
}

/// The jobs a binary knows, by name.
#[derive(Default)]
pub struct Registry {
    jobs: BTreeMap<&'static str, Box<dyn Job>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job. Two jobs with one name are a programming error, caught at start-up.
    #[must_use]
    pub fn with(mut self, job: impl Job) -> Self {
        let name = job.name();
        assert!(
            self.jobs.insert(name, Box::new(job)).is_none(),
            "two jobs are registered under the name `{name}`; job names must be unique"
        );
        self
    }

    pub fn get(&self, name: &str) -> Option<&dyn Job> {
        self.jobs.get(name).map(|j| j.as_ref())
    }

    /// Jobs in name order.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Job> {
        self.jobs.values().map(|j| j.as_ref())
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}
