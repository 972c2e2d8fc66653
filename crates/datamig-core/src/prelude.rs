//! What a job file imports: `use datamig_core::prelude::*;`.
//!
//! The job API ([`Job`], its [`Plan`] of a [`Source`] and a [`Step`], the
//! [`Transform`] and [`Import`] a step runs, the [`Check`]s that verify it),
//! the values rows carry, and the backend a plan may depend on. The engine's
//! own modules (`run::store`, `run::partition`, `db::Conn`, …) are internals a
//! job never needs.

pub use crate::config::Backend;
pub use crate::db::Value;
pub use crate::job::{
    bounded, Batch, BatchStep, BatchTx, Check, CsvRecord, CustomSource, DurationArg, Expect,
    Filter, Import, Job, NoArgs, OnConflict, Outcome, Page, Plan, PlanContext, Registry, Source,
    SourceRow, Statistics, Step, StepError, Transform,
};
