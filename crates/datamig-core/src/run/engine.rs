//! The engine of a run, once it is found or created ([`super::open`]): its
//! workers and its control run side by side until the run ends, and what
//! ended it is concluded in one place (the checks and the run's completion
//! in [`super::finish`]).
//!
//! ```text
//! engine ─┬ workers ×N (worker.rs): lanes of batches, each committed with its checkpoint
//!         └ control (control.rs): the gate, the run's figures, its history
//!   then: release the partitions · the history · the report · conclude:
//!         completed (checks) · interrupted · paused · cancelled · window closed · failed
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::control::{self, Control, Stopped};
use super::layout::Layout;
use super::open::Opened;
use super::partition::{self, Totals};
use super::shared::{Event, Gate, Shared};
use super::store::RunState;
use super::worker::{self, WorkerEnd};
use super::{
    end_run, history, millis, pace, percent, steer, throttle, BatchTimes, Observer, Options,
    Progress, Report,
};
use crate::db::{who_am_i, Conn};
use crate::job::{DynJob, Plan};
use crate::{Error, Result, Stop};

/// Runs the batches of an opened run with `workers` workers here, laid out
/// as `layout` says, and concludes it. For a run in one worker, `conn` holds
/// the job lock: its worker runs on it, and the control on a new connection.
#[allow(clippy::too_many_arguments)]
pub(super) async fn work(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: Plan,
    opts: &Options,
    mut opened: Opened,
    layout: Layout,
    workers: usize,
    throttle: &mut throttle::Throttle,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Report> {
    let run_id = opened.run_id;
    let plan = Arc::new(plan);
    let started = Instant::now();
    let record = opened.record.as_ref();
    let rate = super::open::settle_rate(
        conn,
        run_id,
        record,
        opts.pace.rate(),
        !layout.is_whole(),
        obs,
    )
    .await?;
    // Wall-clock time of the run: before this process joined, and since.
    let elapsed_before = record.map_or(0, |r| r.elapsed_ms);
    let totals = match &layout {
        Layout::Parts { .. } => partition::totals(conn, run_id)
            .await
            .map_err(|e| crate::db::error("cannot read datamig_partitions", &e))?,
        Layout::Whole { .. } => Totals {
            rows_done: record.map_or(0, |r| r.rows_done),
            rows_changed: record.map_or(0, |r| r.rows_changed),
            rows_rejected: record.map_or(0, |r| r.rows_rejected),
            batches_done: record.map_or(0, |r| r.batches_done),
            ..Totals::default()
        },
    };
    let position = opened
        .start
        .as_ref()
        .and_then(|s| s.cursor.as_deref())
        .map(super::cursor::display)
        .unwrap_or_default();
    let progress = Progress {
        run_id,
        run_number: opened.number,
        rows_done: totals.rows_done,
        total: opened.total,
        batches: totals.batches_done,
        rows_changed: totals.rows_changed,
        rows_rejected: totals.rows_rejected,
        position: layout.position(&totals, &position),
        rows_this_process: 0,
        elapsed: Duration::ZERO,
        max_batch: millis(record.map_or(0, |r| r.max_batch_ms)),
        bookkeeping: millis(record.map_or(0, |r| r.bookkeeping_ms)),
    };
    obs.started(&progress);

    // Closed until the control's first look: no batch before the throttle
    // and the window have had their say.
    let (gate_tx, gate_rx) = watch::channel(Gate::Wait);
    let (events_tx, events) = mpsc::unbounded_channel();
    let largest = opts.pace.largest();
    let shared = Shared {
        plan: Arc::clone(&plan),
        job: job.name().to_string(),
        run_id,
        run_number: opened.number,
        opts: opts.clone(),
        limits: super::batch::Limits::of(&opts.timeouts),
        layout: layout.clone(),
        gate: gate_rx,
        events: events_tx,
        // Its burst is one batch (a second's worth at least): after a long
        // wait the run may not make up for lost time in a rush.
        limiter: std::sync::RwLock::new(rate.map(|r| Arc::new(pace::Limiter::new(r, largest)))),
        in_flight: AtomicUsize::new(0),
        archive: Mutex::new(opened.archive.take()),
        url: conn.url().clone(),
        connect: conn.connect_options().clone(),
        started,
    };
    let me = format!("{} #{:04x}", who_am_i(), rand::random::<u16>());
    let owners: Vec<String> = (1..=workers).map(|i| format!("{me} w{i}")).collect();
    // A run in one worker: the worker keeps the connection that holds the
    // job lock; the control gets one of its own.
    let worker_conn = if layout.is_whole() {
        match control::connection(&shared.url, &shared.connect, opts).await {
            Ok(control) => Some(std::mem::replace(conn, control)),
            Err(e) => {
                let _ = end_run(conn, &progress, RunState::Failed, Some(&e.to_string())).await;
                return Err(e);
            }
        }
    } else {
        None
    };
    let start = opened.start.take();
    // The workers are futures of this task: their reads ahead (and the
    // transforms in them) run as tasks of their own on the runtime's threads.
    let (all_done, workers_done) = tokio::sync::oneshot::channel::<()>();
    let workers_future = async {
        let report = |result: &Result<WorkerEnd>| {
            if let Err(e) = result {
                let _ = shared.events.send(Event::Fatal(e.to_string()));
            }
        };
        let (ends, kept) = match worker_conn {
            Some(c) => {
                let span = context_span!("worker", worker = 1);
                let (c, result) = tracing::Instrument::instrument(
                    worker::work(&shared, 1, &owners[0], c, start),
                    span,
                )
                .await;
                report(&result);
                (vec![result], Some(c))
            }
            None => {
                let ends =
                    futures_util::future::join_all(owners.iter().enumerate().map(|(i, owner)| {
                        let span = context_span!("worker", worker = i + 1);
                        let shared = &shared;
                        tracing::Instrument::instrument(
                            async move {
                                let result = worker::partition_worker(shared, i + 1, owner).await;
                                report(&result);
                                result
                            },
                            span,
                        )
                    }))
                    .await;
                (ends, None)
            }
        };
        let _ = all_done.send(());
        (ends, kept)
    };

    let history_limit = opts.timeouts.network_timeout.max(Duration::from_secs(1));
    let mut control = Control {
        conn: &mut *conn,
        job,
        opts,
        obs: &mut *obs,
        throttle: &mut *throttle,
        stop,
        gate: gate_tx,
        shared: &shared,
        largest_batch: largest,
        rate,
        share: 1.0,
        poller: steer::Poller::new(history_limit),
        owners: &owners,
        started,
        elapsed_before,
        totals,
        own: Totals::default(),
        position,
        progress,
        history: history::History::new(run_id),
        history_limit,
        batch_times: BatchTimes::default(),
        waited: Duration::ZERO,
        stopped: None,
        paused: false,
        throttled: None,
        limited: None,
        warned_run_time: false,
        committed_here: 0,
        looked: false,
        held: false,
        last_batch: Duration::ZERO,
        beat: Instant::now(),
    };
    let ((results, kept), ()) = tokio::join!(workers_future, control.run(events, workers_done));
    // The end of the run needs a live connection (the server may have restarted).
    control.reconnect_if_lost().await;
    if let Layout::Parts { .. } = &layout {
        if let Err(e) = partition::release(control.conn, run_id, &owners).await {
            tracing::warn!("{e}; the partitions go to other runners when their leases run out");
        }
    }
    control.history.flush(control.conn, history_limit).await;
    if let Layout::Parts { .. } = &layout {
        control.publish().await;
    }
    control.show();
    control.obs.waiting(None);
    control.obs.finished(&control.progress);
    let Control {
        totals,
        progress,
        batch_times,
        waited,
        stopped,
        ..
    } = control;
    if let Some(kept) = kept {
        // The run's end is recorded on the connection that holds the job lock.
        drop(std::mem::replace(conn, kept));
        let live = tokio::time::timeout(history_limit, super::alive(conn))
            .await
            .unwrap_or(false);
        if let (false, Layout::Whole { lock, .. }) = (live, &layout) {
            super::reconnect(conn, lock, &super::unbatched_limits(opts)).await?;
        }
    }
    let mut ends = Vec::new();
    let mut error = None;
    for result in results {
        match result {
            Ok(end) => ends.push(end),
            Err(e) => error = error.or(Some(e)),
        }
    }
    let report = Report {
        run_id,
        run_number: opened.number,
        resumed: opened.resumed,
        rows_done: progress.rows_done,
        rows_changed: progress.rows_changed,
        rows_rejected: progress.rows_rejected,
        batches: progress.batches,
        rows_this_process: progress.rows_this_process,
        elapsed: started.elapsed(),
        max_batch: progress.max_batch,
        bookkeeping: progress.bookkeeping,
        batch_times,
        checks: Vec::new(),
        stopped: None,
        rows_left: None,
        waited,
        analyzed: Vec::new(),
        completed_here: false,
    };
    let ended = Ended {
        layout: &layout,
        totals: &totals,
        progress: &progress,
        stopped,
        error,
        all_done: !ends.is_empty() && ends.iter().all(|e| matches!(e, WorkerEnd::AllDone)),
    };
    conclude(conn, job, &plan, opts, &opened, ended, report, stop, obs).await
}

/// How the workers and the control ended.
struct Ended<'a> {
    layout: &'a Layout,
    totals: &'a Totals,
    progress: &'a Progress,
    stopped: Option<Stopped>,
    error: Option<Error>,
    all_done: bool,
}

/// Records how the run ended and says what to do next, or completes it.
#[allow(clippy::too_many_arguments)]
async fn conclude(
    conn: &mut Conn,
    job: &dyn DynJob,
    plan: &Plan,
    opts: &Options,
    opened: &Opened,
    ended: Ended<'_>,
    mut report: Report,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<Report> {
    let Ended {
        layout,
        totals,
        progress,
        ..
    } = ended;
    let others_at_work = totals.leased > 0;
    let name = job.name();
    // Where the run stands, for a stop before its end.
    let partial = || crate::Partial {
        job: name.to_string(),
        run_number: opened.number,
        batches: progress.batches,
        rows_done: progress.rows_done,
        total: opened.total,
        checkpoint: layout.is_whole().then(|| layout.at(&progress.position)),
        progress: layout.progress_text(totals, progress.batches, &progress.position),
        resume: opts.resume_command.clone(),
        percent: percent(progress.rows_done, opened.total),
    };
    let stopped = |why: Stop| {
        Err(Error::RunStopped(Box::new(crate::RunStopped {
            run: partial(),
            why,
        })))
    };
    match (ended.stopped, ended.error) {
        // The job lock went with a lost connection and another process holds
        // it now: the run is that process's, and is left as it is.
        (_, Some(e @ Error::AlreadyRunning(_))) => Err(e),
        (Some(Stopped::Failed(_)), Some(e)) | (None, Some(e)) => {
            let _ = end_run(conn, progress, RunState::Failed, Some(&e.to_string())).await;
            stopped(Stop::Failed(Box::new(e)))
        }
        (Some(Stopped::Failed(why)), None) => {
            let _ = end_run(conn, progress, RunState::Failed, Some(&why)).await;
            Err(Error::JobFailed(format!(
                "run {} of {name} failed: {why}",
                opened.number
            )))
        }
        (Some(Stopped::Cancelled(why)), _) => stopped(Stop::Cancelled(why)),
        (Some(Stopped::ErrorBudget(why)), _) => {
            let _ = end_run(conn, progress, RunState::Failed, Some(&why)).await;
            stopped(Stop::ErrorBudget(why))
        }
        (Some(Stopped::Signal | Stopped::SignalPaused), _) => {
            let state = super::store::latest(conn, name)
                .await
                .ok()
                .flatten()
                .map(|r| r.state);
            let paused = state == Some(RunState::Paused);
            if !others_at_work {
                let state = if paused {
                    RunState::Paused
                } else {
                    RunState::Interrupted
                };
                end_run(conn, progress, state, None).await?;
            }
            stopped(Stop::Interrupted {
                paused,
                others_at_work,
            })
        }
        (Some(Stopped::Window(reason)), _) => {
            if !others_at_work {
                end_run(conn, progress, RunState::Interrupted, None).await?;
            }
            // What is left is done by the next invocation; the checks wait
            // for the end of the run.
            report.rows_left = opened.total.map(|t| (t - progress.rows_done).max(0));
            report.stopped = Some(reason);
            Ok(report)
        }
        (None, None) if ended.all_done => {
            let held = layout.is_whole();
            super::finish::finish(
                conn, job, plan, opts, opened, progress, report, held, stop, obs,
            )
            .await
        }
        (None, None) => ended_elsewhere(conn, job, opened.run_id).await,
    }
}

/// The run stopped being `running` while this process worked on it.
async fn ended_elsewhere(conn: &mut Conn, job: &dyn DynJob, run_id: i64) -> Result<Report> {
    let r = super::store::find(conn, job.name(), run_id).await?;
    let (state, why, number) = r
        .map(|r| (r.state, r.last_error.unwrap_or_default(), r.number))
        .unwrap_or((RunState::Cancelled, "deleted".into(), run_id));
    let name = job.name();
    match state {
        RunState::Cancelled => Err(Error::Cancelled(format!(
            "run {number} of {name} was {why}; every finished batch is committed. Running the job again starts a new run"
        ))),
        s => Err(Error::JobFailed(format!(
            "run {number} of {name} is {s} ({why}), set by another process at work on it; `datamig status {name}` shows it"
        ))),
    }
}
