//! The between-batch control of a run, one for every run however many workers
//! it has: it reads the workers' reports, and, on a timer, signals, pause,
//! resume and cancel requests, the time window and the health throttle,
//! holding or stopping the workers through one [`Gate`]; it keeps the run's
//! figures, its history, the error budget and the warnings, and (for a
//! partitioned run) renews the leases and shares the rate limit.
//!
//! ```text
//! workers ──Event::Batch──▶ control ──▶ progress · history · error budget · window
//!         ◀──────Gate────── control ◀── every 200 ms: signal · requests · window · throttle
//!                                       every second: leases · figures · rate share · history
//! ```
//!
//! It runs on a connection of its own (lock waits bounded, statements not), so
//! that a slow batch never delays a pause, and a lost control connection is
//! replaced without touching a batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::layout::Layout;
use super::partition::{self, Totals};
use super::shared::{About, Committed, Event, Gate, Shared};
use super::store::{self, BatchRecord, RunState};
use super::{history, ms, pace, steer, throttle, BatchTimes, Observer, Options, Progress};
use crate::db::{db_message, Conn, ConnectOptions};
use crate::job::DynJob;
use crate::{Error, Result};

/// How often the control loop looks at signals, requests, the window and the throttle.
const TICK: Duration = Duration::from_millis(200);
/// How often leases are renewed and the run's figures published.
const BEAT: Duration = Duration::from_secs(1);

/// Why the control loop stopped the workers.
#[derive(Debug, Clone)]
pub(super) enum Stopped {
    Signal,
    /// A signal while paused: the run stays paused.
    SignalPaused,
    Cancelled(String),
    Window(String),
    Failed(String),
    /// Rejected rows beyond --max-errors.
    ErrorBudget(String),
}

/// The control loop's state; see the module's documentation.
pub(super) struct Control<'a> {
    pub conn: &'a mut Conn,
    pub job: &'a dyn DynJob,
    pub opts: &'a Options,
    pub obs: &'a mut dyn Observer,
    pub throttle: &'a mut throttle::Throttle,
    pub stop: &'a AtomicBool,
    pub gate: watch::Sender<Gate>,
    pub shared: &'a Shared,
    /// The largest batch a worker may ask the rate limiter for.
    pub largest_batch: u64,
    /// The run's rate limit, as last read from its record: a process that
    /// joins with another `--rate` changes it for every process.
    pub rate: Option<pace::Rate>,
    /// This process's share of the run's rate limit.
    pub share: f64,
    pub poller: steer::Poller,
    /// This process's workers' names, as partition owners.
    pub owners: &'a [String],
    pub started: Instant,
    /// The run's wall-clock time before this process joined it.
    pub elapsed_before: i64,
    /// The run's figures as last read (from its partitions, or its record)…
    pub totals: Totals,
    /// …and what this process's workers have done since.
    pub own: Totals,
    /// The last key done, for a run in one worker.
    pub position: String,
    pub progress: Progress,
    pub history: history::History,
    pub history_limit: Duration,
    pub batch_times: BatchTimes,
    pub waited: Duration,
    pub stopped: Option<Stopped>,
    pub paused: bool,
    /// Why the health throttle holds the workers, while it does.
    pub throttled: Option<String>,
    /// Why the rate limit holds a worker, while it does.
    pub limited: Option<String>,
    pub warned_run_time: bool,
    /// Batches this process's workers have committed, for --max-batches.
    pub committed_here: u64,
    /// Whether the first look (signals, requests, window, health) is done:
    /// the gate opens for the first batch only after it.
    pub looked: bool,
    /// Whether the workers are held for a request until no batch is in flight.
    pub held: bool,
    pub last_batch: Duration,
    /// When the leases were last renewed.
    pub beat: Instant,
}

impl Control<'_> {
    /// Runs until every worker has ended and its last report is read.
    pub async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut workers_done: oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut finishing = false;
        loop {
            tokio::select! {
                _ = &mut workers_done, if !finishing => {
                    // Take what the workers sent last, then stop.
                    finishing = true;
                    events.close();
                }
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                _ = tick.tick() => {
                    // A control connection gone silent (a dead network path)
                    // must not stop the loop: it is replaced. (A slow probe
                    // of the health throttle's is given its time.)
                    let limit = self.opts.timeouts.lock_timeout + self.history_limit + self.throttle.limit();
                    if tokio::time::timeout(limit, self.on_tick()).await.is_err() {
                        tracing::warn!("the control connection did not answer within {}s; replacing it", limit.as_secs());
                        self.replace_connection().await;
                    }
                }
            }
        }
    }

    /// Opens, holds or (for good) closes the gate the workers wait at.
    fn set_gate(&self, g: Gate) {
        self.gate.send_if_modified(|now| {
            let changed = *now != g && *now != Gate::Stop;
            if changed {
                *now = g;
            }
            changed
        });
    }

    fn stop_with(&mut self, why: Stopped) {
        if self.stopped.is_none() {
            self.stopped = Some(why);
        }
        self.set_gate(Gate::Stop);
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Batch(b, answer) => {
                self.committed(&b);
                let _ = answer.send(());
            }
            Event::Message(
                m,
                About {
                    worker,
                    part,
                    batch,
                },
            ) => {
                let span = match (part, batch) {
                    (Some(part), Some(batch)) => {
                        context_span!("batch", worker, partition = part, batch)
                    }
                    (Some(part), None) => context_span!("partition", worker, partition = part),
                    (None, batch) => context_span!("batch", worker, batch),
                };
                span.in_scope(|| self.obs.message(&m));
            }
            Event::Waiting(why) => {
                if why != self.limited && self.throttled.is_none() && !self.paused {
                    self.obs.waiting(why.as_deref());
                }
                self.limited = why;
            }
            Event::Rewound(totals, position) => {
                // What this process did past the database's checkpoint is done again.
                self.progress.rows_this_process += totals.rows_done - self.progress.rows_done;
                self.history.rewind(totals.batches_done);
                self.totals = totals;
                self.own = Totals::default();
                self.position = position;
                self.show();
            }
            Event::Fatal(why) => self.stop_with(Stopped::Failed(why)),
        }
    }

    fn committed(&mut self, b: &Committed) {
        let c = &b.counts;
        self.own.rows_done += c.rows;
        self.own.rows_changed += c.changed;
        self.own.rows_rejected += c.rejected;
        self.own.batches_done += 1;
        self.position.clone_from(&b.position);
        let p = &mut self.progress;
        p.rows_this_process += c.rows;
        p.max_batch = p.max_batch.max(b.transaction);
        p.bookkeeping += b.bookkeeping;
        self.batch_times.record(b.transaction);
        self.last_batch = b.transaction;
        self.waited += b.waited;
        self.history.push(BatchRecord {
            batch: b.number,
            partition: b.part,
            rows: c.rows,
            changed: c.changed,
            rejected: c.rejected,
            ms: ms(b.transaction),
            waited_ms: ms(b.waited),
            retries: i64::from(b.retries),
            at_ms: chrono::Utc::now().timestamp_millis(),
        });
        tracing::debug!(
            worker = b.worker,
            partition = b.part,
            batch = b.number,
            rows = c.rows,
            changed = c.changed,
            rejected = c.rejected,
            transaction_ms = ms(b.transaction),
            retries = b.retries,
            position = %b.position,
            "batch committed"
        );
        if let Some(max) = self
            .opts
            .reporting
            .warn_batch_time
            .filter(|max| b.transaction > *max)
        {
            let span = context_span!(
                "batch",
                worker = b.worker,
                partition = b.part,
                batch = b.number,
                transaction_ms = ms(b.transaction)
            );
            let which = self.shared.layout.batch_name(b.number, b.part);
            span.in_scope(|| {
                self.obs.message(&format!(
                    "warning: {which} held its transaction {} ms, more than --warn-batch-time {} ms",
                    b.transaction.as_millis(),
                    max.as_millis()
                ))
            });
        }
        self.show();
        self.obs.batch(&self.progress);
        self.budget();
        self.warn_run_time();
        // The window is looked at after every batch, as before every one: a
        // batch must not begin that the window cannot hold.
        if let Some(window) = &self.opts.window.window() {
            if window.closes_before(self.last_batch) {
                self.stop_with(Stopped::Window(window.reason.to_string()));
            }
        }
        self.committed_here += 1;
        if let Some(max) = self.opts.window.max_batches {
            if self.committed_here >= max {
                self.stop_with(Stopped::Window(format!("--max-batches {max}")));
            }
        }
    }

    /// Stops the run once more rows are rejected than `--max-errors` allows.
    fn budget(&mut self) {
        if let Some(max) = self
            .opts
            .reporting
            .max_errors
            .filter(|max| self.progress.rows_rejected > *max)
        {
            let why = format!(
                "{} rows rejected, more than --max-errors {max} allows",
                self.progress.rows_rejected
            );
            self.stop_with(Stopped::ErrorBudget(why));
        }
    }

    async fn on_tick(&mut self) {
        if self.stopped.is_some() {
            return self.set_gate(Gate::Stop);
        }
        if self.stop.load(Ordering::SeqCst) {
            let why = if self.paused {
                Stopped::SignalPaused
            } else {
                Stopped::Signal
            };
            return self.stop_with(why);
        }
        if let Err(e) = self.steer().await {
            if self.connection_answers().await {
                return self.stop_with(Stopped::Failed(e.to_string()));
            }
            // Lost with the connection: looked at again on a new one next tick.
            tracing::warn!("could not act on the run's requests: {e}");
            self.replace_connection().await;
        }
        if self.stopped.is_some() {
            return;
        }
        if self.paused {
            self.waited += TICK;
        } else {
            if let Some(window) = &self.opts.window.window() {
                if window.closes_before(self.last_batch) {
                    return self.stop_with(Stopped::Window(window.reason.to_string()));
                }
            }
            self.check_health().await;
        }
        if !self.looked {
            self.looked = true;
            if self.stopped.is_none() && !self.paused && self.throttled.is_none() {
                self.set_gate(Gate::Go);
            }
        }
        if self.beat.elapsed() >= BEAT.min(self.shared.layout.lease() / 3) {
            self.beat = Instant::now();
            // Bounded as a whole: on a connection gone silent it would wait forever.
            let limit = self.history_limit;
            if tokio::time::timeout(limit, self.heartbeat()).await.is_err() {
                tracing::warn!(
                    "the control connection did not answer the heartbeat within {:.1}s; replacing it",
                    limit.as_secs_f64()
                );
                self.replace_connection().await;
            }
        }
    }

    /// The health throttle: holds the workers while the database is under
    /// stress, and while its health cannot be read.
    async fn check_health(&mut self) {
        match self.throttle.check(self.conn).await {
            Ok(why) if why != self.throttled => {
                let shown = why.as_deref().map(|w| format!("waiting: {w}"));
                self.obs.waiting(shown.as_deref());
                self.set_gate(if why.is_some() { Gate::Wait } else { Gate::Go });
                self.throttled = why;
            }
            Ok(_) => {}
            // The health is unknown: the workers wait until it is known again.
            Err(Error::Transient { message, kind }) => {
                let why = format!("the database's health cannot be checked ({kind}: {message})");
                if self.throttled.as_ref() != Some(&why) {
                    self.obs.waiting(Some(&format!("waiting: {why}")));
                    self.set_gate(Gate::Wait);
                    self.throttled = Some(why);
                }
                self.reconnect_if_lost().await;
            }
            Err(e) => self.stop_with(Stopped::Failed(e.to_string())),
        }
    }

    /// Whether a request that changes the run's state must wait: in a run in
    /// one worker, a batch's checkpoint holds only while the run is `running`,
    /// so a pause or cancel is recorded when no batch is in flight (the
    /// workers are held at the gate meanwhile). A partition's checkpoint does
    /// not depend on the run's state.
    fn batches_in_flight(&self) -> bool {
        self.shared.layout.is_whole() && self.shared.in_flight.load(Ordering::SeqCst) > 0
    }

    /// Acts on a pause, resume or cancel asked for from elsewhere.
    async fn steer(&mut self) -> Result<()> {
        let run_id = self.progress.run_id;
        let name = self.job.name();
        let polled = self.poller.poll(self.conn, run_id, self.paused).await?;
        if matches!(polled, steer::Polled::Cancel(_) | steer::Polled::Pause(_))
            && !self.paused
            && self.shared.layout.is_whole()
        {
            // Held first, then looked at: a worker announces its batch before
            // it looks at the gate again.
            self.set_gate(Gate::Wait);
            self.held = true;
            if self.batches_in_flight() {
                self.poller.look_next_time();
                return Ok(());
            }
        }
        match polled {
            steer::Polled::Cancel(by) => {
                match store::poll(self.conn, run_id).await {
                    // Completed by another process: the workers end by themselves.
                    Ok((Some(RunState::Completed), _, _)) => return Ok(()),
                    // Cancelled already (by another process of the run, or by hand).
                    Ok((Some(RunState::Cancelled), None, _)) => {}
                    _ => {
                        // The run's state stops every other process's workers too.
                        let why = format!("cancelled by {by}");
                        super::end_run(self.conn, &self.progress, RunState::Cancelled, Some(&why))
                            .await?;
                    }
                }
                self.stop_with(Stopped::Cancelled(format!("cancelled by {by}")));
            }
            steer::Polled::Pause(by)
                if !self.paused
                    && store::settle_request(
                        self.conn,
                        run_id,
                        RunState::Paused,
                        store::Request::Pause,
                    )
                    .await? =>
            {
                self.paused = true;
                let at = self.shared.layout.pause_position(&self.position);
                self.obs.message(&format!(
                    "paused by {by}{at}; `datamig resume {name}` lets it go on, `datamig cancel {name}` stops it"
                ));
                self.obs.waiting(Some("paused"));
                self.set_gate(Gate::Paused);
            }
            steer::Polled::Resume(by)
                if self.paused
                    && store::settle_request(
                        self.conn,
                        run_id,
                        RunState::Running,
                        store::Request::Resume,
                    )
                    .await? =>
            {
                self.resumed(&format!("resumed by {by}"));
            }
            // A resume while running: one whose answer was lost with a
            // connection leaves the run marked paused, which no batch may
            // checkpoint.
            steer::Polled::Resume(_)
                if !self.paused
                    && store::settle_request(
                        self.conn,
                        run_id,
                        RunState::Running,
                        store::Request::Resume,
                    )
                    .await? => {}
            // Resumed by another process of the run.
            steer::Polled::Go if self.paused => self.resumed("resumed"),
            steer::Polled::Unanswered => self.reconnect_if_lost().await,
            _ => {}
        }
        // A request the workers were held for is answered (or withdrawn).
        if self.held && !self.paused && self.stopped.is_none() {
            self.held = false;
            if self.throttled.is_none() && self.looked {
                self.set_gate(Gate::Go);
            }
        }
        Ok(())
    }

    fn resumed(&mut self, how: &str) {
        self.paused = false;
        self.obs.message(how);
        self.obs.waiting(None);
        // The throttle decides again at the next tick.
        self.throttled = None;
        self.set_gate(Gate::Go);
    }

    /// Renews the leases, publishes the run's figures, shares the rate,
    /// writes the history, and checks the error budget and the run-time warning.
    async fn heartbeat(&mut self) {
        let run_id = self.progress.run_id;
        if let Layout::Parts { lease, .. } = &self.shared.layout {
            if let Err(e) = partition::heartbeat(self.conn, run_id, self.owners, ms(*lease)).await {
                tracing::warn!("could not renew the partitions' leases: {}", db_message(&e));
                self.reconnect_if_lost().await;
            }
            self.publish().await;
        }
        self.share_rate().await;
        self.obs.batch(&self.progress);
        self.history.flush(self.conn, self.history_limit).await;
        self.budget();
        self.warn_run_time();
    }

    /// Warns, once, when the run has taken longer than `--warn-run-time`.
    fn warn_run_time(&mut self) {
        let took = self.started.elapsed();
        if let Some(max) = self
            .opts
            .reporting
            .warn_run_time
            .filter(|max| !self.warned_run_time && took > *max)
        {
            self.warned_run_time = true;
            let at = self.shared.layout.whereabouts(&self.totals, &self.position);
            self.obs.message(&format!(
                "warning: the run has taken {:.0}s, more than --warn-run-time {:.0}s, and {at}",
                took.as_secs_f64(),
                max.as_secs_f64(),
            ));
        }
    }

    /// Replaces the control connection if it is lost (a server restart): the
    /// leases, the run's figures and its end need one.
    pub async fn reconnect_if_lost(&mut self) {
        if !self.connection_answers().await {
            tracing::warn!(
                "the control connection does not answer within {:.1}s; replacing it",
                self.history_limit.as_secs_f64()
            );
            self.replace_connection().await;
        }
    }

    /// Whether the control connection still answers (within the network timeout).
    async fn connection_answers(&mut self) -> bool {
        tokio::time::timeout(self.history_limit, super::alive(self.conn))
            .await
            .unwrap_or(false)
    }

    /// Opens a new control connection in place of the old one (dropped, not
    /// closed: a graceful close waits on a silent server).
    async fn replace_connection(&mut self) {
        match connection(&self.shared.url, &self.shared.connect, self.opts).await {
            Ok(fresh) => {
                drop(std::mem::replace(self.conn, fresh));
                self.poller.look_next_time();
                tracing::info!("reconnected the control connection");
            }
            Err(e) => {
                tracing::warn!("the control connection is lost, and reconnecting failed: {e}")
            }
        }
    }

    /// Gives this process its share of the run's rate limit: its part of the
    /// partitions at work, so that the rate holds for the run as a whole
    /// however many processes on however many hosts work on it.
    async fn share_rate(&mut self) {
        let run_id = self.progress.run_id;
        // Bounded, as every look on the control connection is: a silent one
        // is replaced elsewhere, and the rate read again next time.
        let read = tokio::time::timeout(self.history_limit, store::rate(self.conn, run_id)).await;
        if let Ok(Ok(recorded)) = read {
            let recorded = recorded.as_deref().and_then(|r| pace::Rate::parse(r).ok());
            if recorded != self.rate {
                self.rate = recorded;
                self.share = f64::NAN; // differs from any share: the limiter is made anew
                match recorded {
                    Some(r) => tracing::info!(
                        "the run's rate limit is {r} now (set by another process on it)"
                    ),
                    None => {
                        tracing::info!("the run's rate limit was lifted (by another process on it)")
                    }
                }
                if recorded.is_none() {
                    if let Ok(mut l) = self.shared.limiter.write() {
                        *l = None;
                    }
                }
            }
        }
        let Some(rate) = self.rate else { return };
        let share = match &self.shared.layout {
            Layout::Whole { .. } => 1.0,
            Layout::Parts { .. } => {
                let Ok((mine, all)) = partition::at_work(self.conn, run_id, self.owners).await
                else {
                    return;
                };
                #[allow(clippy::cast_precision_loss)] // a share of a few hundred workers
                if all > 0 && mine > 0 {
                    mine as f64 / all as f64
                } else {
                    1.0
                }
            }
        };
        if (share - self.share).abs() < 0.05 {
            return;
        }
        self.share = share;
        let limiter = Arc::new(pace::Limiter::new(rate.share(share), self.largest_batch));
        if let Ok(mut l) = self.shared.limiter.write() {
            *l = Some(limiter);
        }
        tracing::info!(share, "this process's share of the rate limit changed");
    }

    /// Reads the run's figures from its partitions and copies them to its row.
    pub async fn publish(&mut self) {
        let run_id = self.progress.run_id;
        if let Ok(t) = partition::totals(self.conn, run_id).await {
            self.totals = t;
            self.own = Totals::default();
            let elapsed = self.elapsed_before + ms(self.started.elapsed());
            if let Err(e) = partition::publish(self.conn, run_id, &self.totals, elapsed).await {
                tracing::debug!("could not update the run's figures: {}", db_message(&e));
            }
        }
        self.show();
    }

    /// The progress shown: the run's figures as last read, plus this process's since.
    pub fn show(&mut self) {
        let (progress, totals, own) = (&mut self.progress, &self.totals, &self.own);
        // A batch counted in both (committed before the sums were read, reported
        // after) makes this an overestimate for a second: never past the total.
        progress.rows_done = totals.rows_done + own.rows_done;
        if let Some(t) = progress.total.as_mut() {
            if self.shared.layout.is_whole() {
                // Counted once: a total that was an estimate grows to what is done.
                *t = (*t).max(progress.rows_done);
            } else {
                progress.rows_done = progress.rows_done.min((*t).max(totals.rows_done));
                *t = (*t).max(totals.rows_done);
            }
        }
        progress.rows_changed = totals.rows_changed + own.rows_changed;
        progress.rows_rejected = totals.rows_rejected + own.rows_rejected;
        progress.batches = totals.batches_done + own.batches_done;
        progress.position = self.shared.layout.position(totals, &self.position);
        progress.elapsed = self.started.elapsed();
    }
}

/// A connection for the control loop: lock waits bounded, statements not
/// (the checks at the end may rightly take long).
pub(super) async fn connection(
    url: &crate::config::DatabaseUrl,
    connect: &ConnectOptions,
    opts: &Options,
) -> Result<Conn> {
    let mut conn = Conn::connect(url, connect).await?;
    super::unbatched_limits(opts).apply(&mut conn).await?;
    Ok(conn)
}
