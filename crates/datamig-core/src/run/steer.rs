//! Steering a run from another terminal or host: `datamig pause|resume|cancel`.
//!
//! A live run's process holds the job's lock, so the command knows whether a
//! process is there to ask. If one is, the command records a request on the run
//! (`datamig_runs.request`), which the process reads between batches
//! ([`Poller`]) and acts on: it pauses in place (no transaction open, the job
//! lock kept), resumes, or stops with the run cancelled. If none is, the command
//! changes the run's record itself: a paused run is not resumed by `datamig run`
//! (a nightly cron stays off it) until `datamig resume` releases it.

use std::time::{Duration, Instant};

use super::store::{self, Request, RunRecord, RunState};
use crate::db::{db_message, Conn};
use crate::{Error, Result};

/// What `datamig pause|resume|cancel` may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

/// What a steering command did.
#[derive(Debug, Clone)]
pub struct Steered {
    pub run_id: i64,
    /// Which run of its job it is: how messages name it.
    pub run_number: i64,
    /// The run's state afterwards (as far as the command saw it).
    pub state: RunState,
    /// Whether a live process was asked (and answered within the wait).
    pub live: bool,
    /// Whether the live process answered within the wait.
    pub answered: bool,
    /// Where the run is, for the message.
    pub position: Option<String>,
}

/// How long a steering command waits for a live process to act on its request.
pub const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Pauses, resumes or cancels the newest unfinished run of `job`.
pub async fn steer(conn: &mut Conn, job: &str, action: Action) -> Result<Steered> {
    let verb = match action {
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Cancel => "cancel",
    };
    let run = store::latest(conn, job)
        .await?
        .filter(|r| r.state.is_resumable())
        .ok_or_else(|| {
            Error::Usage(format!(
                "job {job} has no unfinished run to {verb}; `datamig status {job}` shows its runs"
            ))
        })?;
    let lock = super::job_lock_name(job);
    let mut live = !conn.try_lock(&lock).await?;
    // A partitioned run's workers hold leases on its partitions, not the job lock.
    if !live && super::partition::leased(conn, run.id).await? {
        let _ = conn.unlock(&lock).await;
        live = true;
    }
    if !live {
        // No process runs it: change the record, under the job's lock.
        let result = steer_record(conn, job, &run, action).await;
        let _ = conn.unlock(&lock).await;
        return result;
    }
    match (action, run.state) {
        (Action::Resume, RunState::Running) => {
            return Err(Error::Usage(format!(
                "run {} of {job} is running, not paused; nothing to resume",
                run.number
            )))
        }
        (Action::Pause, RunState::Paused) => {
            return Err(Error::Usage(format!(
                "run {} of {job} is paused already; `datamig resume {job}` lets it go on",
                run.number
            )))
        }
        _ => {}
    }
    let request = match action {
        Action::Pause => Request::Pause,
        Action::Resume => Request::Resume,
        Action::Cancel => Request::Cancel,
    };
    store::request(conn, run.id, request).await?;
    let wanted = match action {
        Action::Pause => RunState::Paused,
        Action::Resume => RunState::Running,
        Action::Cancel => RunState::Cancelled,
    };
    let started = Instant::now();
    while started.elapsed() < ANSWER_WAIT {
        let (state, pending, _) = store::poll(conn, run.id)
            .await
            .map_err(|e| Error::db("cannot read the run", db_message(&e)))?;
        if let Some(ended) = state.filter(|s| *s != wanted && !s.is_resumable()) {
            // Another command's cancel, or the run's last batch, came first.
            return Err(Error::Usage(format!(
                "run {} of {job} ended {ended} before its process could {verb}; `datamig status {job}` shows it",
                run.number
            )));
        }
        if state == Some(wanted) && pending.is_none() {
            let now = store::latest(conn, job).await?;
            return Ok(Steered {
                run_id: run.id,
                run_number: run.number,
                state: wanted,
                live: true,
                answered: true,
                position: now.and_then(|r| r.position),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Steered {
        run_id: run.id,
        run_number: run.number,
        state: run.state,
        live: true,
        answered: false,
        position: run.position,
    })
}

async fn steer_record(
    conn: &mut Conn,
    job: &str,
    run: &RunRecord,
    action: Action,
) -> Result<Steered> {
    let state = match (action, run.state) {
        (Action::Pause, RunState::Paused) => {
            return Err(Error::Usage(format!(
                "run {} of {job} is paused already; `datamig resume {job}` releases it",
                run.number
            )))
        }
        (Action::Resume, s) if s != RunState::Paused => {
            return Err(Error::Usage(format!(
                "run {} of {job} is {s}, not paused; `datamig run {job}` resumes it",
                run.number
            )))
        }
        (Action::Pause, _) => RunState::Paused,
        // Released: the next `datamig run` resumes it.
        (Action::Resume, _) => RunState::Interrupted,
        (Action::Cancel, _) => RunState::Cancelled,
    };
    let note = match action {
        Action::Cancel => Some(format!("cancelled by {}", crate::db::who_am_i())),
        _ => None,
    };
    store::set_state(conn, run.id, state, note.as_deref()).await?;
    Ok(Steered {
        run_id: run.id,
        run_number: run.number,
        state,
        live: false,
        answered: false,
        position: run.position.clone(),
    })
}

/// What a running process found between batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Polled {
    Go,
    /// The look went unanswered (a lost or silent connection): nothing is known.
    Unanswered,
    Pause(String),
    Resume(String),
    Cancel(String),
}

/// Reads the run's requests between batches, at most every [`Poller::EVERY`]:
/// a batch of a few milliseconds should not pay a query for every batch.
pub(crate) struct Poller {
    last: Option<Instant>,
    /// How long a look may go unanswered: a connection gone silent between
    /// batches must not hold the run (the next batch's deadline finds it dead).
    limit: Duration,
}

impl Poller {
    pub const EVERY: Duration = Duration::from_millis(100);

    pub fn new(limit: Duration) -> Poller {
        Poller { last: None, limit }
    }

    /// Makes the next [`Poller::poll`] look, however recent the last look (after
    /// a new connection: a request may have gone unanswered on the old one).
    pub fn look_next_time(&mut self) {
        self.last = None;
    }

    /// Whether it is time to look (always, with `now`).
    pub async fn poll(&mut self, conn: &mut Conn, run_id: i64, now: bool) -> Result<Polled> {
        if !now && self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return Ok(Polled::Go);
        }
        self.last = Some(Instant::now());
        let polled = tokio::time::timeout(self.limit, store::poll(conn, run_id)).await;
        let (state, request, by) = match polled {
            Ok(Ok(found)) => found,
            Err(_) => {
                tracing::debug!(
                    "no answer to the look at the run's requests within {:?}",
                    self.limit
                );
                return Ok(Polled::Unanswered);
            }
            Ok(Err(e)) => {
                tracing::debug!("could not read the run's requests: {}", db_message(&e));
                return Ok(Polled::Unanswered);
            }
        };
        let by = by.unwrap_or_else(|| "another process".into());
        Ok(match (request, state) {
            (Some(Request::Cancel), _) => Polled::Cancel(by),
            // Cancelled or failed from outside, by hand: stop as for a cancel.
            (_, Some(RunState::Cancelled | RunState::Completed)) => Polled::Cancel(by),
            (Some(Request::Pause), _) => Polled::Pause(by),
            (Some(Request::Resume), _) => Polled::Resume(by),
            (None, Some(RunState::Paused)) => Polled::Pause(by),
            _ => Polled::Go,
        })
    }
}
