//! `datamig_runs` and `datamig_rejects`: a run's state, cursor and counters.

use crate::db::{who_am_i, Conn, Value};
use crate::{Error, Result};

/// A run's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Held by `datamig pause`: its process waits (or, if none, `run` refuses)
    /// until `datamig resume`.
    Paused,
    Interrupted,
    Completed,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Interrupted => "interrupted",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "interrupted" => RunState::Interrupted,
            "completed" => RunState::Completed,
            "failed" => RunState::Failed,
            "cancelled" => RunState::Cancelled,
            _ => return None,
        })
    }

    /// Whether the run is unfinished: running the job again resumes it (a
    /// paused run once `datamig resume` has released it).
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            RunState::Running | RunState::Paused | RunState::Interrupted | RunState::Failed
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
    /// The row's id, shared by the runs of every job (what datamig's tables
    /// refer to).
    pub id: i64,
    /// Which run of its job this is (1 for its first): how messages name it.
    pub number: i64,
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
    /// A pause, resume or cancel asked for from elsewhere, and by whom.
    pub request: Option<Request>,
    pub request_by: Option<String>,
    /// A file's length that goes with the checkpoint (CSV sources and archives).
    pub file_offset: Option<i64>,
    /// The run's rate limit, as `--rate` takes it (`2000/s`), if it has one.
    pub rate: Option<String>,
}

/// What `datamig pause|resume|cancel` asks of a running run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
    Cancel,
}

impl Request {
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Cancel => "cancel",
        }
    }

    fn parse(s: &str) -> Option<Request> {
        Some(match s {
            "pause" => Request::Pause,
            "resume" => Request::Resume,
            "cancel" => Request::Cancel,
            _ => return None,
        })
    }
}

/// Which run of its job a row is: counted, not stored, so that every run has
/// its number whichever version of datamig recorded it.
const NUMBER: &str = "(SELECT count(*) FROM datamig_runs r2 WHERE r2.job = datamig_runs.job AND r2.id <= datamig_runs.id)";

/// The columns [`parse`] reads; those later versions added read as NULL from
/// a table an earlier version made (until a run completes it), so that reading
/// the runs never needs a change to the database.
async fn columns(conn: &mut Conn) -> sqlx::Result<String> {
    let mut added = Vec::new();
    for column in ["request", "request_by", "file_offset", "rate"] {
        added.push(if conn.column_exists("datamig_runs", column).await? {
            column.to_string()
        } else {
            "NULL".to_string()
        });
    }
    Ok(format!(
        "id, job, args, state, position, rows_done, rows_changed, rows_rejected, batches_done, total_rows, batch_size, \
         elapsed_ms, max_batch_ms, bookkeeping_ms, {}, {}, {}, owner, last_error, verification, {}, {NUMBER}",
        conn.timestamp_text("started_at"),
        conn.timestamp_text("updated_at"),
        conn.timestamp_text("finished_at"),
        added.join(", ")
    ))
}

fn parse(row: Vec<Value>) -> Result<RunRecord> {
    let corrupt = |what: &str| {
        Error::CorruptCheckpoint(format!(
            "datamig_runs has a malformed {what}; fix or delete that row"
        ))
    };
    let number = row.last().and_then(Value::as_i64);
    let mut it = row.into_iter();
    let mut next = || it.next().unwrap_or(Value::Null);
    let id = next().as_i64().ok_or_else(|| corrupt("id"))?;
    let number = number.unwrap_or(id);
    let job = next().into_string().ok_or_else(|| corrupt("job"))?;
    let args = next().into_string().ok_or_else(|| corrupt("args"))?;
    let state_text = next().into_string().unwrap_or_default();
    let state = RunState::parse(&state_text).ok_or_else(|| {
        Error::CorruptCheckpoint(format!(
            "run {number} of {job} has an unknown state `{state_text}`; restart the job with --restart"
        ))
    })?;
    Ok(RunRecord {
        id,
        number,
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
        request: next().into_string().as_deref().and_then(Request::parse),
        request_by: next().into_string(),
        file_offset: next().as_i64(),
        rate: next().into_string(),
    })
}

fn failed(context: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| crate::db::error(context, &e)
}

/// Run `id` of `job`, among its latest runs.
pub async fn find(conn: &mut Conn, job: &str, id: i64) -> Result<Option<RunRecord>> {
    Ok(list(conn, Some(job), 50)
        .await?
        .into_iter()
        .find(|r| r.id == id))
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
    let columns = columns(conn)
        .await
        .map_err(failed("cannot read datamig_runs"))?;
    let sql = format!("SELECT {columns} FROM datamig_runs {filter} ORDER BY id DESC LIMIT {limit}");
    let rows = conn
        .fetch(&sql, &params)
        .await
        .map_err(failed("cannot read datamig_runs"))?;
    rows.into_iter().map(parse).collect()
}

pub async fn latest(conn: &mut Conn, job: &str) -> Result<Option<RunRecord>> {
    Ok(list(conn, Some(job), 1).await?.into_iter().next())
}

/// Inserts a new run in state `running` and returns its id and its number
/// among its job's runs. The job lock is held,
/// so no other runner inserts a run of this job meanwhile.
pub async fn insert(
    conn: &mut Conn,
    job: &str,
    args: &str,
    batch_size: i64,
    total: Option<i64>,
    baseline: &str,
) -> Result<(i64, i64)> {
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
    let id = row
        .first()
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::db("cannot record the run", "no id"))?;
    let row = conn
        .fetch_one(
            "SELECT count(*) FROM datamig_runs WHERE job = ? AND id <= ?",
            &[job.into(), id.into()],
        )
        .await
        .map_err(failed("cannot record the run"))?;
    Ok((id, row.first().and_then(Value::as_i64).unwrap_or(id)))
}

/// Takes a run over for this process: state `running`, new batch size and
/// total, and any request meant for the process before it forgotten.
pub async fn resume(conn: &mut Conn, id: i64, batch_size: i64, total: Option<i64>) -> Result<()> {
    let sql = format!(
        "UPDATE datamig_runs SET state = 'running', owner = ?, batch_size = ?, total_rows = ?, last_error = NULL, \
         request = NULL, request_by = NULL, updated_at = {} WHERE id = ?",
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

/// Ends a run (or pauses it) with a state and, for failures, the error. A
/// request for the run's process is settled with it: whoever asked sees it done.
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
        "UPDATE datamig_runs SET state = ?, last_error = ?, request = NULL, updated_at = {now}, finished_at = {finished} \
         WHERE id = ?"
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

/// Records the length of the run's file (an archive's) that goes with its checkpoint.
pub async fn set_file_offset(conn: &mut Conn, id: i64, offset: i64) -> Result<()> {
    conn.execute(
        "UPDATE datamig_runs SET file_offset = ? WHERE id = ?",
        &[offset.into(), id.into()],
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

/// Asks the process running run `id` to pause, resume or stop. It reads the
/// request between batches ([`poll`]). A cancel is final: a pause or resume
/// arriving while one is pending is refused, rather than replacing it (a pause
/// that overwrote a cancel left the run paused, waiting for a resume).
pub async fn request(conn: &mut Conn, id: i64, request: Request) -> Result<()> {
    let recorded = conn
        .execute(
            "UPDATE datamig_runs SET request = ?, request_by = ? \
             WHERE id = ? AND (request IS NULL OR request <> 'cancel' OR ? = 'cancel')",
            &[
                request.as_str().into(),
                who_am_i().into(),
                id.into(),
                request.as_str().into(),
            ],
        )
        .await
        .map_err(failed("cannot record the request"))?;
    if recorded == 0 {
        let (_, _, by) = poll(conn, id)
            .await
            .map_err(failed("cannot read the run"))?;
        return Err(Error::Usage(format!(
            "run {id} is being cancelled (asked by {}); a {} cannot undo that",
            by.unwrap_or_else(|| "another process".into()),
            request.as_str()
        )));
    }
    Ok(())
}

/// The run's state and any request for it: what a running process checks
/// between batches.
pub async fn poll(
    conn: &mut Conn,
    id: i64,
) -> sqlx::Result<(Option<RunState>, Option<Request>, Option<String>)> {
    let row = conn
        .fetch_one(
            "SELECT state, request, request_by FROM datamig_runs WHERE id = ?",
            &[id.into()],
        )
        .await?;
    let mut it = row.into_iter();
    let state = it
        .next()
        .and_then(Value::into_string)
        .as_deref()
        .and_then(RunState::parse);
    let request = it
        .next()
        .and_then(Value::into_string)
        .as_deref()
        .and_then(Request::parse);
    Ok((state, request, it.next().and_then(Value::into_string)))
}

/// Marks the run paused (or running again) and clears `answered`, the request
/// that asked for it. Returns false, changing nothing, when another request has
/// replaced it meanwhile (a cancel after a pause must not be wiped by the pause's
/// answer): the next poll finds that one.
pub async fn settle_request(
    conn: &mut Conn,
    id: i64,
    state: RunState,
    answered: Request,
) -> Result<bool> {
    let sql = format!(
        "UPDATE datamig_runs SET state = ?, request = NULL, updated_at = {} \
         WHERE id = ? AND (request IS NULL OR request = ?)",
        conn.now_sql()
    );
    conn.execute(
        &sql,
        &[state.as_str().into(), id.into(), answered.as_str().into()],
    )
    .await
    .map(|n| n == 1)
    .map_err(failed("cannot update the run"))
}

/// What one batch adds to a run's counters.
#[derive(Debug, Clone, Default)]
pub struct BatchCounts {
    pub rows: i64,
    pub changed: i64,
    pub rejected: i64,
    pub elapsed_ms: i64,
}

/// The checkpoint: cursor and counters (and, for file sources and archives, the
/// file's length that goes with them), written inside the batch's transaction.
/// Fails if the run is no longer `running` (cancelled or taken over), so the
/// batch rolls back instead of being counted twice.
pub async fn checkpoint(
    conn: &mut Conn,
    id: i64,
    position: &str,
    c: &BatchCounts,
    file_offset: Option<i64>,
) -> sqlx::Result<bool> {
    let sql = format!(
        "UPDATE datamig_runs SET position = ?, rows_done = rows_done + ?, rows_changed = rows_changed + ?, \
         rows_rejected = rows_rejected + ?, batches_done = batches_done + 1, elapsed_ms = elapsed_ms + ?, \
         file_offset = coalesce(?, file_offset), updated_at = {} WHERE id = ? AND state = 'running'",
        conn.now_sql()
    );
    let params = [
        position.into(),
        c.rows.into(),
        c.changed.into(),
        c.rejected.into(),
        c.elapsed_ms.into(),
        file_offset.into(),
        id.into(),
    ];
    Ok(conn.execute(&sql, &params).await? == 1)
}

/// The checkpoint as SQL text with its values written out, for a driver that
/// sends it with the batch's COMMIT ([`Conn::checkpoint_with_commit`]); `None`
/// when it goes the usual way. A run that is no longer `running` makes the
/// statement fail (its `state` would be NULL, which the column refuses), so the
/// COMMIT after it never runs and the batch rolls back, as with [`checkpoint`].
pub fn checkpoint_text(
    conn: &Conn,
    id: i64,
    position: &str,
    c: &BatchCounts,
    file_offset: Option<i64>,
) -> Option<String> {
    if !conn.checkpoint_with_commit() {
        return None;
    }
    let position = conn.text_literal(position)?;
    let offset = file_offset.map_or("NULL".to_string(), |o| o.to_string());
    Some(format!(
        "UPDATE datamig_runs SET state = CASE WHEN state = 'running' THEN state END, position = {position}, \
         rows_done = rows_done + {}, rows_changed = rows_changed + {}, rows_rejected = rows_rejected + {}, \
         batches_done = batches_done + 1, elapsed_ms = elapsed_ms + {}, file_offset = coalesce({offset}, file_offset), \
         updated_at = {} WHERE id = {id}",
        c.rows,
        c.changed,
        c.rejected,
        c.elapsed_ms,
        conn.now_sql()
    ))
}

/// Whether a batch's checkpoint failed because its run is no longer `running`
/// (see [`checkpoint_text`]).
pub fn not_running(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23502")
        && db.message().contains("\"state\""))
}

/// One committed batch, for the run's history (`datamig status <job> --batches`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatchRecord {
    /// The batch's number in its run (in its partition, for a partitioned run), from 1.
    pub batch: i64,
    /// The partition it ran in, for a partitioned run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i64>,
    pub rows: i64,
    pub changed: i64,
    pub rejected: i64,
    /// BEGIN to the end of COMMIT.
    pub ms: i64,
    /// Time spent waiting before it (throttles, rate limit, pause, retry backoff).
    pub waited_ms: i64,
    /// How many times it failed transiently before it committed.
    pub retries: i64,
    /// When it committed: milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Appends committed batches to the run's history, many per statement. Written
/// outside the batches' transactions, a few times a second at most: the history
/// never lengthens a batch's locks, and a crash loses at most its last moments
/// (never a batch's data or its checkpoint).
pub async fn record_batches(
    conn: &mut Conn,
    run_id: i64,
    batches: &[BatchRecord],
) -> sqlx::Result<()> {
    // 9 values a row: 200 rows stay under every database's parameter limit.
    for chunk in batches.chunks(200) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO datamig_batches (run_id, batch, rows_done, rows_changed, rows_rejected, ms, waited_ms, retries, at_ms) \
             VALUES {values}"
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|b| {
                [
                    run_id.into(),
                    stored_number(b).into(),
                    b.rows.into(),
                    b.changed.into(),
                    b.rejected.into(),
                    b.ms.into(),
                    b.waited_ms.into(),
                    b.retries.into(),
                    b.at_ms.into(),
                ]
            })
            .collect();
        conn.execute(&sql, &params).await?;
    }
    Ok(())
}

/// The time the run's recorded batches took in all (their transactions, no
/// waits), if its history has any.
pub async fn batch_ms(conn: &mut Conn, run_id: i64) -> Result<Option<i64>> {
    if !conn
        .table_exists("datamig_batches")
        .await
        .map_err(failed("cannot read datamig_batches"))?
    {
        return Ok(None);
    }
    // A sum is a decimal on PostgreSQL and MariaDB: cast to an integer.
    let sum = conn.integer("sum(ms)");
    let row = conn
        .fetch_one(
            &format!("SELECT {sum} FROM datamig_batches WHERE run_id = ?"),
            &[run_id.into()],
        )
        .await
        .map_err(failed("cannot read datamig_batches"))?;
    Ok(row.first().and_then(Value::as_i64))
}

/// Records the run's rate limit (`None`: it has none).
pub async fn set_rate(conn: &mut Conn, id: i64, rate: Option<&str>) -> Result<()> {
    conn.execute(
        "UPDATE datamig_runs SET rate = ? WHERE id = ?",
        &[rate.into(), id.into()],
    )
    .await
    .map(drop)
    .map_err(failed("cannot record the run's rate"))
}

/// The run's rate limit as recorded now.
pub async fn rate(conn: &mut Conn, id: i64) -> sqlx::Result<Option<String>> {
    let row = conn
        .fetch_one("SELECT rate FROM datamig_runs WHERE id = ?", &[id.into()])
        .await?;
    Ok(row.into_iter().next().and_then(Value::into_string))
}

/// Removes the history records of a single-cursor run's batches after `batch`
/// (they are being done again).
pub async fn forget_batches(conn: &mut Conn, run_id: i64, batch: i64) -> sqlx::Result<()> {
    conn.execute(
        "DELETE FROM datamig_batches WHERE run_id = ? AND batch > ?",
        &[run_id.into(), batch.into()],
    )
    .await
    .map(|_| ())
}

/// A partitioned run's batches are numbered within their partition; stored,
/// the partition goes in the number's upper half, which keeps the key unique.
fn stored_number(b: &BatchRecord) -> i64 {
    match b.partition {
        Some(p) => (p << PARTITION_SHIFT) | (b.batch & ((1 << PARTITION_SHIFT) - 1)),
        None => b.batch,
    }
}

const PARTITION_SHIFT: u32 = 32;

/// The run's last `limit` batches, oldest first.
pub async fn batches(conn: &mut Conn, run_id: i64, limit: i64) -> Result<Vec<BatchRecord>> {
    if !conn
        .table_exists("datamig_batches")
        .await
        .map_err(failed("cannot read datamig_batches"))?
    {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT batch, rows_done, rows_changed, rows_rejected, ms, waited_ms, retries, at_ms FROM datamig_batches \
         WHERE run_id = ? ORDER BY at_ms DESC, batch DESC LIMIT {limit}"
    );
    let rows = conn
        .fetch(&sql, &[run_id.into()])
        .await
        .map_err(failed("cannot read datamig_batches"))?;
    let mut out: Vec<BatchRecord> = rows
        .into_iter()
        .map(|r| {
            let n = |i: usize| r.get(i).and_then(Value::as_i64).unwrap_or(0);
            let stored = n(0);
            let partition = stored >> PARTITION_SHIFT;
            BatchRecord {
                batch: stored & ((1 << PARTITION_SHIFT) - 1),
                partition: (partition > 0).then_some(partition),
                rows: n(1),
                changed: n(2),
                rejected: n(3),
                ms: n(4),
                waited_ms: n(5),
                retries: n(6),
                at_ms: n(7),
            }
        })
        .collect();
    out.reverse();
    Ok(out)
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

/// The rejected rows of a run after reject id `after`, oldest first, at most
/// `limit`, with their ids (for paging through millions).
pub async fn rejects_after(
    conn: &mut Conn,
    run_id: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, String, String)>> {
    let sql = format!(
        "SELECT id, row_key, reason FROM datamig_rejects WHERE run_id = ? AND id > ? ORDER BY id LIMIT {limit}"
    );
    let rows = conn
        .fetch(&sql, &[run_id.into(), after.into()])
        .await
        .map_err(failed("cannot read datamig_rejects"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut it = r.into_iter();
            let id = it.next().and_then(|v| v.as_i64()).unwrap_or(0);
            let key = it.next().and_then(Value::into_string).unwrap_or_default();
            let reason = it.next().and_then(Value::into_string).unwrap_or_default();
            (id, key, reason)
        })
        .collect())
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
    let rows = rejects_after(conn, run_id, 0, limit).await?;
    Ok(rows
        .into_iter()
        .map(|(_, key, reason)| (key, reason))
        .collect())
}
