//! `datamig pause|resume|cancel <job>`: steer a run from another terminal or host.

use anyhow::Result;
use datamig_core::job::Registry;
use datamig_core::run::steer::{self, Action};
use datamig_core::run::RunState;

use super::{settings, with_conn};
use crate::opt::GlobalOpts;
use crate::output::line;

pub async fn run(
    global: &GlobalOpts,
    registry: &Registry,
    job: &str,
    action: Action,
) -> Result<()> {
    let job = super::run::find(registry, job)?.name();
    let settings = settings(global)?;
    let done = with_conn(global, &settings, async |conn| {
        Ok(steer::steer(conn, job, action).await?)
    })
    .await?;
    let at = done
        .position
        .as_deref()
        .map(|p| format!(" at {}", p.trim_matches(['[', ']'])))
        .unwrap_or_default();
    let id = done.run_number;
    line(&match (action, done.live, done.answered) {
        (_, true, false) => format!(
            "asked run {id} of {job} to {}; its process has not answered within {}s (it acts between batches; \
             `datamig status {job}` shows when it has)",
            verb(action),
            steer::ANSWER_WAIT.as_secs()
        ),
        (Action::Pause, true, true) => format!(
            "paused run {id} of {job}{at}; its process waits, holding no transaction. \
             `datamig resume {job}` lets it go on"
        ),
        (Action::Pause, false, _) => format!(
            "paused run {id} of {job}{at} (no process runs it): `datamig run {job}` leaves it alone until \
             `datamig resume {job}`"
        ),
        (Action::Resume, true, _) => format!("resumed run {id} of {job}{at}"),
        (Action::Resume, false, _) => format!(
            "released run {id} of {job}{at} (no process runs it): the next `datamig run {job}` resumes it"
        ),
        (Action::Cancel, live, _) => {
            debug_assert!(done.state == RunState::Cancelled || !live);
            format!(
                "cancelled run {id} of {job}{at}; every batch before it is committed. Running the job again \
                 starts a new run"
            )
        }
    });
    Ok(())
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Cancel => "cancel",
    }
}
