//! `datamig_runs` and `datamig_rejects`: a run's state, cursor and counters.

use crate::db::{db_message, who_am_i, Conn, Value};
use crate::{Error, Result};

/// A run's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Interrupted,
    Completed,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Interrupted => "interrupted",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunState::Running,
            "interrupted" => RunState::Interrupted,
            "completed" => RunState::Completed,
            "failed" => RunState::Failed,
            "cancelled" => RunState::Cancelled,
            _ => return None,
        })
    }

    /// Whether running the job again resumes this run.
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            RunState::Running | RunState::Interrupted | RunState::Failed
        )
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `datamig_runs`.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub args: String,
    pub state: RunState,
    /// The encoded cursor: a JSON array of the last key done; `None` before the first batch.
    pub position: Option<String>,
    pub rows_done: i64,
    pub rows_changed: i64,
    pub rows_rejected: i64,
    pub batches_done: i64,
    pub total_rows: Option<i64>,
    pub batch_size: i64,
    pub elapsed_ms: i64,
    /// The longest batch transaction (BEGIN to COMMIT): how long locks were held.
    pub max_batch_ms: i64,
    /// Time spent writing checkpoints and rejects: datamig's own overhead.
    pub bookkeeping_ms: i64,
    pub started_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    pub owner: Option<String>,
    pub last_error: Option<String>,
    pub verification: Option<String>,
}

fn columns(conn: &Conn) -> String {
    format!(
        "id, job, args, state, position, rows_done, rows_changed, rows_rejected, batches_done, total_rows, batch_size, \
         elapsed_ms, max_batch_ms, bookkeeping_ms, {}, {}, {}, owner, last_error, verification",
        conn.timestamp_text("started_at"),
        conn.timestamp_text("updated_at"),
        conn.timestamp_text("finished_at"),
    )
}

fn parse(row: Vec<Value>) -> Result<RunRecord> {
    let mut it = row.into_iter();
    let mut next = || it.next().unwrap_or(Value::Null);
    let corrupt = |what: &str| {
        Error::CorruptCheckpoint(format!(
            "datamig_runs has a malformed {what}; fix or delete that row"
        ))
    };
    let id = next().as_i64().ok_or_else(|| corrupt("id"))?;
    let job = next().into_string().ok_or_else(|| corrupt("job"))?;
    let args = next().into_string().ok_or_else(|| corrupt("args"))?;
    let state_text = next().into_string().unwrap_or_default();
    let state = RunState::parse(&state_text).ok_or_else(|| {
        Error::CorruptCheckpoint(format!(
            "run {id} of {job} has an unknown state `{state_text}`; restart the job with --restart"
        ))
    })?;
    Ok(RunRecord {
        id,
        job,
        args,
        state,
        position: next().into_string(),
        rows_done: next().as_i64().unwrap_or(0),
        rows_changed: next().as_i64().unwrap_or(0),
        rows_rejected: next().as_i64().unwrap_or(0),
        batches_done: next().as_i64().unwrap_or(0),
        total_rows: next().as_i64(),
        batch_size: next().as_i64().unwrap_or(0),
        elapsed_ms: next().as_i64().unwrap_or(0),
        max_batch_ms: next().as_i64().unwrap_or(0),
        bookkeeping_ms: next().as_i64().unwrap_or(0),
        started_at: next().into_string().unwrap_or_default(),
        updated_at: next().into_string().unwrap_or_default(),
        finished_at: next().into_string(),
        owner: next().into_string(),
        last_error: next().into_string(),
        verification: next().into_string(),
    })
}

fn failed(context: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| Error::db(context, db_message(&e))
}

/// The runs of a job (or of all jobs), newest first.
pub async fn list(conn: &mut Conn, job: Option<&str>, limit: i64) -> Result<Vec<RunRecord>> {
    if !conn
        .table_exists("datamig_runs")
        .await
        .map_err(failed("cannot read datamig_runs"))?
    {
        return Ok(Vec::new());
    }
    let (filter, params) = match job {
        Some(j) => ("WHERE job = ?", vec![Value::from(j)]),
        None => ("", vec![]),
    };
    let sql = format!(
        "SELECT {} FROM datamig_runs {filter} ORDER BY id DESC LIMIT {limit}",
        columns(conn)
    );
    let rows = conn
        .fetch(&sql, &params)
        .await
        .map_err(failed("cannot read datamig_runs"))?;
    rows.into_iter().map(parse).collect()
}

pub async fn latest(conn: &mut Conn, job: &str) -> Result<Option<RunRecord>> {
    Ok(list(conn, Some(job), 1).await?.into_iter().next())
}

/// Inserts a new run in state `running` and returns its id. The job lock is held,
/// so no other runner inserts a run of this job meanwhile.
pub async fn insert(
    conn: &mut Conn,
    job: &str,
    args: &str,
    batch_size: i64,
    total: Option<i64>,
    baseline: &str,
) -> Result<i64> {
    // The baseline goes in with the run: a run without one would compare its
    // `unchanged` checks with nothing.
    let now = conn.now_sql();
    let sql = format!(
        "INSERT INTO datamig_runs (job, args, state, batch_size, total_rows, started_at, updated_at, owner, verification) \
         VALUES (?, ?, 'running', ?, ?, {now}, {now}, ?, ?)"
    );
    let params = [
        job.into(),
        args.into(),
        batch_size.into(),
        total.into(),
        who_am_i().into(),
        baseline.into(),
    ];
    conn.execute(&sql, &params)
        .await
        .map_err(failed("cannot record the run"))?;
    let row = conn
        .fetch_one(
            "SELECT max(id) FROM datamig_runs WHERE job = ?",
            &[job.into()],
        )
        .await
        .map_err(failed("cannot record the run"))?;
    row.first()
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::db("cannot record the run", "no id"))
}

/// Takes a run over for this process: state `running`, new batch size and total.
pub async fn resume(conn: &mut Conn, id: i64, batch_size: i64, total: Option<i64>) -> Result<()> {
    let sql = format!(
        "UPDATE datamig_runs SET state = 'running', owner = ?, batch_size = ?, total_rows = ?, last_error = NULL, \
         updated_at = {} WHERE id = ?",
        conn.now_sql()
    );
    conn.execute(
        &sql,
        &[
            who_am_i().into(),
            batch_size.into(),
            total.into(),
            id.into(),
        ],
    )
    .await
    .map(drop)
    .map_err(failed("cannot update the run"))
}

/// Ends a run (or pauses it) with a state and, for failures, the error.
pub async fn set_state(
    conn: &mut Conn,
    id: i64,
    state: RunState,
    error: Option<&str>,
) -> Result<()> {
    let now = conn.now_sql();
    let finished = if matches!(state, RunState::Completed | RunState::Cancelled) {
        now
    } else {
        "NULL"
    };
    let sql = format!(
        "UPDATE datamig_runs SET state = ?, last_error = ?, updated_at = {now}, finished_at = {finished} WHERE id = ?"
    );
    conn.execute(
        &sql,
        &[
            state.as_str().into(),
            error.map(str::to_string).into(),
            id.into(),
        ],
    )
    .await
    .map(drop)
    .map_err(failed("cannot update the run"))
}

/// Stores the run's timing figures (kept across invocations by the caller).
pub async fn set_timings(
    conn: &mut Conn,
    id: i64,
    max_batch_ms: i64,
    bookkeeping_ms: i64,
) -> Result<()> {
    conn.execute(
        "UPDATE datamig_runs SET max_batch_ms = ?, bookkeeping_ms = ? WHERE id = ?",
        &[max_batch_ms.into(), bookkeeping_ms.into(), id.into()],
    )
    .await
    .map(drop)
    .map_err(failed("cannot store the run's timings"))
}

pub async fn set_verification(conn: &mut Conn, id: i64, json: &str) -> Result<()> {
    conn.execute(
        "UPDATE datamig_runs SET verification = ? WHERE id = ?",
        &[json.into(), id.into()],
    )
    .await
    .map(drop)
    .map_err(failed("cannot store the verification"))
}

/// What one batch adds to a run's counters.
#[derive(Debug, Clone, Default)]
pub struct BatchCounts {
    pub rows: i64,
    pub changed: i64,
    pub rejected: i64,
    pub elapsed_ms: i64,
}

/// The checkpoint: cursor and counters, written inside the batch's transaction.
/// Fails if the run is no longer `running` (cancelled or taken over), so the
/// batch rolls back instead of being counted twice.
pub async fn checkpoint(
    conn: &mut Conn,
    id: i64,
    position: &str,
    c: &BatchCounts,
) -> sqlx::Result<bool> {
    let sql = format!(
        "UPDATE datamig_runs SET position = ?, rows_done = rows_done + ?, rows_changed = rows_changed + ?, \
         rows_rejected = rows_rejected + ?, batches_done = batches_done + 1, elapsed_ms = elapsed_ms + ?, \
         updated_at = {} WHERE id = ? AND state = 'running'",
        conn.now_sql()
    );
    let params = [
        position.into(),
        c.rows.into(),
        c.changed.into(),
        c.rejected.into(),
        c.elapsed_ms.into(),
        id.into(),
    ];
    Ok(conn.execute(&sql, &params).await? == 1)
}

/// Records rejected rows (inside the batch's transaction).
pub async fn reject(
    conn: &mut Conn,
    run_id: i64,
    rejects: &[(String, String)],
) -> sqlx::Result<()> {
    // A few hundred rows per statement keeps every database under its parameter limit.
    for chunk in rejects.chunks(200) {
        let now = conn.now_sql();
        let values = vec![format!("(?, ?, ?, {now})"); chunk.len()].join(", ");
        let sql =
            format!("INSERT INTO datamig_rejects (run_id, row_key, reason, at) VALUES {values}");
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|(k, r)| [run_id.into(), k.as_str().into(), r.as_str().into()])
            .collect();
        conn.execute(&sql, &params).await?;
    }
    Ok(())
}

/// The rejected rows of a run, oldest first, at most `limit`.
pub async fn rejects(conn: &mut Conn, run_id: i64, limit: i64) -> Result<Vec<(String, String)>> {
    if !conn
        .table_exists("datamig_rejects")
        .await
        .map_err(failed("cannot read datamig_rejects"))?
    {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT row_key, reason FROM datamig_rejects WHERE run_id = ? ORDER BY id LIMIT {limit}"
    );
    let rows = conn
        .fetch(&sql, &[run_id.into()])
        .await
        .map_err(failed("cannot read datamig_rejects"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut it = r.into_iter();
            let key = it.next().and_then(Value::into_string).unwrap_or_default();
            let reason = it.next().and_then(Value::into_string).unwrap_or_default();
            (key, reason)
        })
        .collect())
}
