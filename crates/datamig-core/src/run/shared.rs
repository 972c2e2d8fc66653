//! What a run's control and its workers share: the gate the control holds
//! them at, what they report to it, and the run's settings, limiter and
//! connections every worker of this process uses.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::batch::{self, Archive};
use super::layout::Layout;
use super::partition::Totals;
use super::store::BatchCounts;
use super::{pace, Options};
use crate::db::ConnectOptions;
use crate::job::Plan;

/// What holds the workers between batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Gate {
    Go,
    /// The health throttle, or a request waiting for the batches in flight.
    Wait,
    Paused,
    Stop,
}

/// A committed batch, as a worker reports it.
pub(super) struct Committed {
    /// The worker of this process that ran it, from 1.
    pub worker: usize,
    /// Its partition, in a partitioned run.
    pub part: Option<i64>,
    /// The batch's number in its run (in its partition, for a partitioned run).
    pub number: i64,
    pub counts: BatchCounts,
    pub transaction: Duration,
    pub bookkeeping: Duration,
    /// Time the worker waited before it (throttle, rate limit, pause, retries).
    pub waited: Duration,
    pub retries: u32,
    /// Where it ended, for display.
    pub position: String,
}

/// What a worker tells the control loop.
pub(super) enum Event {
    /// A committed batch; the worker waits for the answer before its next
    /// batch, so that a stop the batch calls for (the error budget, the
    /// window) holds before another begins.
    Batch(Committed, oneshot::Sender<()>),
    /// Something to say, and the worker, partition and batch it is about (the
    /// fields of its log event).
    Message(String, About),
    /// The worker waits for the rate limit (`Some`, why), or goes on (`None`).
    Waiting(Option<String>),
    /// The database's checkpoint is not where the worker's was (a COMMIT cut
    /// off by an error landed, or a server crash took the last ones back):
    /// the run's figures as the database has them.
    Rewound(Totals, String),
    /// A worker met an error that ends the run.
    Fatal(String),
}

/// What a worker's message is about.
pub(super) struct About {
    pub worker: usize,
    pub part: Option<i64>,
    pub batch: Option<i64>,
}

/// What every worker of this process shares.
pub(super) struct Shared {
    pub plan: Arc<Plan>,
    pub job: String,
    pub run_id: i64,
    pub run_number: i64,
    pub opts: Options,
    pub limits: batch::Limits,
    pub layout: Layout,
    pub gate: watch::Receiver<Gate>,
    pub events: mpsc::UnboundedSender<Event>,
    /// The rate limit, shared by this process's workers: this process's share
    /// of the run's rate, by its part of the workers at work on the run.
    pub limiter: std::sync::RwLock<Option<Arc<pace::Limiter>>>,
    /// Batches this process's workers have begun and not ended.
    pub in_flight: AtomicUsize,
    /// An archive step's file, opened (and cut back) before the run began.
    pub archive: Mutex<Option<Archive>>,
    /// Where and how the run's connections are opened (`--connect-timeout`).
    pub url: crate::config::DatabaseUrl,
    pub connect: ConnectOptions,
    /// When this process began on the run: its first batch's time counts
    /// from here, as the run's summary does.
    pub started: Instant,
}
