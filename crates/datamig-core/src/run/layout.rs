//! How a run's key range is laid out for its workers, and where their
//! checkpoints go: the whole range in one worker, checkpointed in the run's
//! row of `datamig_runs` (any key, any source, under the job lock), or
//! partitions of an integer key range in `datamig_partitions`, shared by any
//! number of workers and processes (see [`super::partition`]). The loop that
//! runs the batches is the same for both; this is what their messages and
//! bookkeeping differ in.

use std::time::Duration;

use super::partition::Totals;

/// See the module's documentation.
#[derive(Debug, Clone)]
pub(super) enum Layout {
    /// One worker over the whole key range.
    Whole {
        /// The job lock, held by the worker's connection (taken again after a reconnect).
        lock: String,
        /// How many values a checkpoint holds.
        arity: usize,
        /// How the key is named in messages: `id`, `(a, b)`.
        key: String,
    },
    /// Partitions, claimed under leases.
    Parts {
        /// How long a partition stays a worker's without word from it.
        lease: Duration,
    },
}

impl Layout {
    pub fn is_whole(&self) -> bool {
        matches!(self, Layout::Whole { .. })
    }

    /// The lease a heartbeat renews (a third of it apart); a whole-range run
    /// has none, and beats every second.
    pub fn lease(&self) -> Duration {
        match self {
            Layout::Whole { .. } => Duration::from_secs(3),
            Layout::Parts { lease } => *lease,
        }
    }

    /// `batch 12`, or `batch 12 of partition 3`.
    pub fn batch_name(&self, number: i64, part: Option<i64>) -> String {
        match part {
            Some(part) => format!("batch {number} of partition {part}"),
            None => format!("batch {number}"),
        }
    }

    /// What the progress shows as where the run is.
    pub fn position(&self, totals: &Totals, last: &str) -> String {
        match self {
            Layout::Whole { .. } => last.to_string(),
            Layout::Parts { .. } => partitions_text(totals),
        }
    }

    /// ` at id 4180000` for a pause message (a partitioned run is at many places).
    pub fn pause_position(&self, last: &str) -> String {
        match self {
            Layout::Whole { .. } if last.is_empty() => " at the start".into(),
            Layout::Whole { .. } => format!(" at {last}"),
            Layout::Parts { .. } => String::new(),
        }
    }

    /// `is at id 4180000`, or `has 12 of 16 partitions done`.
    pub fn whereabouts(&self, totals: &Totals, last: &str) -> String {
        match self {
            Layout::Whole { .. } => format!("is at {}", self.at(last)),
            Layout::Parts { .. } => format!("has {}", partitions_text(totals)),
        }
    }

    /// `id 4180000`, or `the start` before the first batch.
    pub fn at(&self, last: &str) -> String {
        match self {
            Layout::Whole { .. } if last.is_empty() => "the start".into(),
            Layout::Whole { key, .. } => format!("{key} {last}"),
            Layout::Parts { .. } => last.to_string(),
        }
    }

    /// How far a stopped run got: `after 12 batches, at id 4180000`, or `with
    /// 12 of 16 partitions done`.
    pub fn progress_text(&self, totals: &Totals, batches: i64, last: &str) -> String {
        match self {
            Layout::Whole { .. } => format!("after {batches} batches, at {}", self.at(last)),
            Layout::Parts { .. } => format!("with {}", partitions_text(totals)),
        }
    }
}

/// `12 of 16 partitions done, 4 at work` (by every process on the run).
pub(super) fn partitions_text(t: &Totals) -> String {
    let done = format!("{} of {} partitions done", t.done, t.partitions);
    if t.leased > 0 {
        format!("{done}, {} at work", t.leased)
    } else {
        done
    }
}
