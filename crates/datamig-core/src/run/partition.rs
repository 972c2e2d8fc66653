//! `datamig_partitions`: a partitioned run's key ranges, who works on each, and
//! how far each got. The database is the only coordinator: a worker claims a
//! partition with a row lock (`FOR UPDATE SKIP LOCKED`) and a lease timed by the
//! server's clock, renews the lease while it works, and checkpoints inside each
//! batch's transaction, guarded so that a partition another worker has taken
//! over or split cannot be written past:
//!
//! ```text
//! claim:      BEGIN · SELECT … WHERE not done AND (no owner OR lease expired) FOR UPDATE SKIP LOCKED
//!                   · UPDATE owner, lease · COMMIT
//! checkpoint: UPDATE position, counters, lease WHERE owner = me AND (hi IS NULL OR hi >= position)
//!                   AND the run is running           (in the batch's transaction)
//! split:      BEGIN · the unfinished partition with the most keys left, FOR UPDATE SKIP LOCKED
//!                   · UPDATE hi = mid WHERE position < mid · INSERT (mid, hi] for me · COMMIT
//! ```
//!
//! The checkpoint and a claim or split of the same partition take the same row
//! lock, so they cannot interleave: a batch that commits first moves the
//! position the other then sees; one that comes second finds the owner or the
//! bound changed, and rolls back with its rows. A lease is only about liveness
//! (a dead runner's partition is taken over once it runs out); exactly-once
//! rests on the row lock and the guard.

use crate::db::{Conn, Value};
use crate::{Error, Result};

use super::store::BatchCounts;

/// A partition claimed by a worker.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub run_id: i64,
    pub part: i64,
    pub owner: String,
    pub lease_ms: i64,
    /// Keys after `lo` (`None`: from the first)…
    pub lo: Option<i64>,
    /// …up to and including `hi` (`None`: to the last).
    pub hi: Option<i64>,
    /// The last key done (`None`: none yet).
    pub position: Option<i64>,
    pub batches_done: i64,
    /// Who held it before, when its lease had run out.
    pub taken_from: Option<String>,
}

impl Claim {
    /// Where the partition's next batch starts after.
    pub fn after(&self) -> Option<i64> {
        self.position.or(self.lo)
    }
}

/// A partitioned run's figures, summed over its partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub rows_done: i64,
    pub rows_changed: i64,
    pub rows_rejected: i64,
    pub batches_done: i64,
    pub partitions: i64,
    pub done: i64,
    /// Unfinished partitions whose lease has not run out: workers at work.
    pub leased: i64,
}

/// A failure on datamig's own partition rows: transient (a lock wait, a
/// deadlock, a lost connection) where trying again can pass, so that the
/// worker tries again rather than failing the run.
fn failed(context: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| crate::db::failure(context, &e)
}

/// Splits `(lo, hi]` (`lo`: the key before the first, `hi`: the last) into
/// `n` ranges of equal width; the first is open below and the last above, so
/// that rows inserted outside the range during the run are still visited.
pub(crate) fn cut(lo: i64, hi: i64, n: i64) -> Vec<(Option<i64>, Option<i64>)> {
    let width = i128::from(hi) - i128::from(lo);
    let n = i128::from(n.max(1)).min(width.max(1));
    (0..n)
        .map(|i| {
            let at = |k: i128| i64::try_from(i128::from(lo) + width * k / n).unwrap_or(hi);
            let from = (i > 0).then(|| at(i));
            let to = (i + 1 < n).then(|| at(i + 1));
            (from, to)
        })
        .collect()
}

/// Whether run `run_id` is partitioned.
pub(crate) async fn exists(conn: &mut Conn, run_id: i64) -> Result<bool> {
    let row = conn
        .fetch_one(
            "SELECT count(*) FROM datamig_partitions WHERE run_id = ?",
            &[run_id.into()],
        )
        .await
        .map_err(failed("cannot read datamig_partitions"))?;
    Ok(row.first().and_then(Value::as_i64).unwrap_or(0) > 0)
}

/// What a run did with a single cursor before it went on partitioned: kept as
/// a finished partition 0 over the keys up to `upto`.
#[derive(Debug, Clone)]
pub(crate) struct Prefix {
    pub upto: i64,
    pub rows_done: i64,
    pub rows_changed: i64,
    pub rows_rejected: i64,
    pub batches_done: i64,
}

/// Records the partitions of a new run, or of one going on partitioned after `prefix`.
pub(crate) async fn create(
    conn: &mut Conn,
    run_id: i64,
    ranges: &[(Option<i64>, Option<i64>)],
    prefix: Option<&Prefix>,
) -> Result<()> {
    let mut rows: Vec<[Value; 9]> = Vec::new();
    if let Some(p) = prefix {
        rows.push([
            run_id.into(),
            0.into(),
            Value::Null,
            p.upto.into(),
            1.into(),
            p.rows_done.into(),
            p.rows_changed.into(),
            p.rows_rejected.into(),
            p.batches_done.into(),
        ]);
    }
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        rows.push([
            run_id.into(),
            (i64::try_from(i).unwrap_or(i64::MAX) + 1).into(),
            (*lo).into(),
            (*hi).into(),
            0.into(),
            0.into(),
            0.into(),
            0.into(),
            0.into(),
        ]);
    }
    for chunk in rows.chunks(100) {
        let sql = format!(
            "INSERT INTO datamig_partitions (run_id, part, lo, hi, done, rows_done, rows_changed, rows_rejected, \
             batches_done) VALUES {}",
            vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let params: Vec<Value> = chunk.iter().flatten().cloned().collect();
        conn.execute(&sql, &params)
            .await
            .map_err(failed("cannot record the run's partitions"))?;
    }
    Ok(())
}

const CLAIM_COLUMNS: &str = "part, lo, hi, position, batches_done, owner";

fn claim_of(row: Vec<Value>, run_id: i64, owner: &str, lease_ms: i64) -> Claim {
    let n = |i: usize| row.get(i).and_then(Value::as_i64);
    let previous = row.get(5).and_then(|v| v.as_str().map(str::to_string));
    Claim {
        run_id,
        part: n(0).unwrap_or(0),
        owner: owner.to_string(),
        lease_ms,
        lo: n(1),
        hi: n(2),
        position: n(3),
        batches_done: n(4).unwrap_or(0),
        taken_from: previous.filter(|p| p != owner),
    }
}

/// Claims the first unfinished partition nobody holds (or whose holder's lease
/// ran out) for `owner`; `None` when there is none free.
pub(crate) async fn claim(
    conn: &mut Conn,
    run_id: i64,
    owner: &str,
    lease_ms: i64,
) -> Result<Option<Claim>> {
    let now = conn.epoch_ms_sql();
    // A worker claims only when it holds no partition, so one recorded as its
    // own is one it lost track of: a server crash took back the finish (or the
    // batches) it had committed asynchronously. Its lease is still renewed by
    // this process's heartbeat, so no other worker would ever take it: it takes
    // it back (else the run waits for it forever).
    let select = format!(
        "SELECT {CLAIM_COLUMNS} FROM datamig_partitions WHERE run_id = ? AND done = 0 \
         AND (owner IS NULL OR lease_until < {now} OR owner = ?) ORDER BY part LIMIT 1 FOR UPDATE SKIP LOCKED"
    );
    let context = "cannot claim a partition";
    conn.begin_read_committed().await.map_err(failed(context))?;
    let claimed = async {
        let Some(row) = conn
            .fetch(&select, &[run_id.into(), owner.into()])
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let claim = claim_of(row, run_id, owner, lease_ms);
        take(conn, &claim).await?;
        Ok(Some(claim))
    }
    .await;
    end_transaction(conn, context, claimed).await
}

/// Makes `claim.owner` the partition's owner with a fresh lease.
async fn take(conn: &mut Conn, claim: &Claim) -> sqlx::Result<u64> {
    let sql = format!(
        "UPDATE datamig_partitions SET owner = ?, lease_until = {} + ? WHERE run_id = ? AND part = ?",
        conn.epoch_ms_sql()
    );
    conn.execute(
        &sql,
        &[
            claim.owner.as_str().into(),
            claim.lease_ms.into(),
            claim.run_id.into(),
            claim.part.into(),
        ],
    )
    .await
}

/// Where a split looks for the keys actually left in a partition: the source
/// table and its key (quoted), or `None` for a range source, whose every key is a row.
pub(crate) type KeyColumn = Option<(String, String)>;

/// Splits an unfinished partition with many keys left, and claims its upper
/// half for `owner`: so that the last partition does not run alone while
/// workers stand idle. Of the few partitions with the widest key spans left
/// (open ends taken at `floor` and `top`, the key before the smallest and the
/// largest), the one whose first and last remaining keys are furthest apart is
/// cut halfway between them, if that leaves both halves more than `min_keys`
/// apart. Reading those two keys costs two index lookups, and finds the rows of
/// a partition that an even cut of a sparse key range left crowded at one end.
pub(crate) async fn split(
    conn: &mut Conn,
    run_id: i64,
    owner: &str,
    lease_ms: i64,
    (floor, top): (i64, i64),
    keys: &KeyColumn,
    min_keys: i64,
) -> Result<Option<Claim>> {
    let left = "coalesce(hi, ?) - coalesce(position, lo, ?)";
    let select = format!(
        "SELECT part, lo, hi, position FROM datamig_partitions WHERE run_id = ? AND done = 0 \
         AND {left} > ? ORDER BY {left} DESC LIMIT 4 FOR UPDATE SKIP LOCKED"
    );
    let context = "cannot split a partition";
    conn.begin_read_committed().await.map_err(failed(context))?;
    let split = async {
        let params = [
            run_id.into(),
            top.into(),
            floor.into(),
            min_keys.saturating_mul(2).into(),
            top.into(),
            floor.into(),
        ];
        let candidates = conn.fetch(&select, &params).await?;
        // (part, first key left, last key left, the partition's hi)
        let mut best: Option<(i64, i64, i64, Option<i64>)> = None;
        for row in candidates {
            let n = |i: usize| row.get(i).and_then(Value::as_i64);
            let (part, lo, hi, position) = (n(0).unwrap_or(0), n(1), n(2), n(3));
            let from = position.or(lo).unwrap_or(floor);
            let to = hi.unwrap_or(top);
            let (first, last) = match keys {
                None => (from.saturating_add(1), to),
                Some((table, key)) => {
                    let sql = format!(
                        "SELECT (SELECT min({key}) FROM {table} WHERE {key} > ? AND {key} <= ?), \
                         (SELECT max({key}) FROM {table} WHERE {key} > ? AND {key} <= ?)"
                    );
                    let r = conn
                        .fetch_one(&sql, &[from.into(), to.into(), from.into(), to.into()])
                        .await?;
                    match (r.first().and_then(Value::as_i64), r.get(1).and_then(Value::as_i64)) {
                        (Some(a), Some(b)) => (a, b),
                        _ => continue,
                    }
                }
            };
            if last - first > min_keys.saturating_mul(2)
                && best.is_none_or(|(_, a, b, _)| last - first > b - a)
            {
                best = Some((part, first, last, hi));
            }
        }
        let Some((part, first, last, hi)) = best else {
            return Ok(None);
        };
        let mid = first + (last - first) / 2;
        // The row is locked: its position cannot move past `mid` meanwhile.
        let moved = conn
            .execute(
                "UPDATE datamig_partitions SET hi = ? WHERE run_id = ? AND part = ? AND done = 0 \
                 AND (position IS NULL OR position < ?)",
                &[mid.into(), run_id.into(), part.into(), mid.into()],
            )
            .await?;
        if moved != 1 {
            return Ok(None);
        }
        let next = conn
            .fetch_one(
                "SELECT max(part) + 1 FROM datamig_partitions WHERE run_id = ?",
                &[run_id.into()],
            )
            .await?
            .first()
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let sql = format!(
            "INSERT INTO datamig_partitions (run_id, part, lo, hi, owner, lease_until) VALUES (?, ?, ?, ?, ?, {} + ?)",
            conn.epoch_ms_sql()
        );
        conn.execute(
            &sql,
            &[
                run_id.into(),
                next.into(),
                mid.into(),
                hi.into(),
                owner.into(),
                lease_ms.into(),
            ],
        )
        .await?;
        tracing::debug!(part, new = next, at = mid, "split a partition");
        Ok(Some(Claim {
            run_id,
            part: next,
            owner: owner.to_string(),
            lease_ms,
            lo: Some(mid),
            hi,
            position: None,
            batches_done: 0,
            taken_from: None,
        }))
    }
    .await;
    end_transaction(conn, context, split).await
}

/// Commits the transaction the work `done` ran in, or rolls it back after an
/// error: transient, like the BEGIN's and the COMMIT's, when trying again can
/// pass (a claim cut off by a server restart is retried, not fatal).
async fn end_transaction<T>(conn: &mut Conn, context: &str, done: sqlx::Result<T>) -> Result<T> {
    match done {
        Ok(v) => {
            conn.commit().await.map_err(failed(context))?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.rollback().await;
            Err(failed(context)(e))
        }
    }
}

/// The partition as the database has it now: `(owner, hi, position, done)`.
pub(crate) async fn reread(
    conn: &mut Conn,
    claim: &Claim,
) -> Result<Option<(Option<String>, Option<i64>, Option<i64>, bool)>> {
    let rows = conn
        .fetch(
            "SELECT owner, hi, position, done FROM datamig_partitions WHERE run_id = ? AND part = ?",
            &[claim.run_id.into(), claim.part.into()],
        )
        .await
        .map_err(failed("cannot read datamig_partitions"))?;
    Ok(rows.into_iter().next().map(|r| {
        (
            r.first().and_then(|v| v.as_str().map(str::to_string)),
            r.get(1).and_then(Value::as_i64),
            r.get(2).and_then(Value::as_i64),
            r.get(3).and_then(Value::as_i64) == Some(1),
        )
    }))
}

/// Marks a partition whose range holds nothing more finished, if `claim.owner`
/// still holds it; returns whether it did.
pub(crate) async fn finish(conn: &mut Conn, claim: &Claim) -> Result<bool> {
    conn.execute(
        "UPDATE datamig_partitions SET done = 1, owner = NULL, lease_until = 0 \
         WHERE run_id = ? AND part = ? AND owner = ?",
        &[
            claim.run_id.into(),
            claim.part.into(),
            claim.owner.as_str().into(),
        ],
    )
    .await
    .map(|n| n == 1)
    .map_err(failed("cannot finish a partition"))
}

/// Gives up what `owners` hold, so that another runner may take it at once.
pub(crate) async fn release(conn: &mut Conn, run_id: i64, owners: &[String]) -> Result<()> {
    if owners.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE datamig_partitions SET owner = NULL, lease_until = 0 WHERE run_id = ? AND done = 0 AND owner IN ({})",
        vec!["?"; owners.len()].join(", ")
    );
    let mut params = vec![run_id.into()];
    params.extend(owners.iter().map(|o| Value::from(o.as_str())));
    conn.execute(&sql, &params)
        .await
        .map(drop)
        .map_err(failed("cannot release the partitions"))
}

/// Renews the leases of what `owners` hold.
pub(crate) async fn heartbeat(
    conn: &mut Conn,
    run_id: i64,
    owners: &[String],
    lease_ms: i64,
) -> sqlx::Result<()> {
    if owners.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE datamig_partitions SET lease_until = {} + ? WHERE run_id = ? AND done = 0 AND owner IN ({})",
        conn.epoch_ms_sql(),
        vec!["?"; owners.len()].join(", ")
    );
    let mut params = vec![lease_ms.into(), run_id.into()];
    params.extend(owners.iter().map(|o| Value::from(o.as_str())));
    conn.execute(&sql, &params).await.map(drop)
}

/// The run's figures over all its partitions.
pub(crate) async fn totals(conn: &mut Conn, run_id: i64) -> sqlx::Result<Totals> {
    // A sum is NUMERIC on PostgreSQL and DECIMAL on MariaDB: cast back to an integer.
    let int = |e: &str| conn.integer(&format!("coalesce({e}, 0)"));
    let leased = format!(
        "sum(CASE WHEN done = 0 AND owner IS NOT NULL AND lease_until >= {} THEN 1 ELSE 0 END)",
        conn.epoch_ms_sql()
    );
    let sql = format!(
        "SELECT {}, {}, {}, {}, count(*), {}, {} FROM datamig_partitions WHERE run_id = ?",
        int("sum(rows_done)"),
        int("sum(rows_changed)"),
        int("sum(rows_rejected)"),
        int("sum(batches_done)"),
        int("sum(done)"),
        int(&leased),
    );
    let row = conn.fetch_one(&sql, &[run_id.into()]).await?;
    let n = |i: usize| row.get(i).and_then(Value::as_i64).unwrap_or(0);
    Ok(Totals {
        rows_done: n(0),
        rows_changed: n(1),
        rows_rejected: n(2),
        batches_done: n(3),
        partitions: n(4),
        done: n(5),
        leased: n(6),
    })
}

/// Partitions of run `run_id` at work (held under a current lease): by
/// `owners`, and by anyone.
pub(crate) async fn at_work(
    conn: &mut Conn,
    run_id: i64,
    owners: &[String],
) -> sqlx::Result<(i64, i64)> {
    let sql = format!(
        "SELECT count(CASE WHEN owner IN ({}) THEN 1 END), count(*) FROM datamig_partitions \
         WHERE run_id = ? AND done = 0 AND owner IS NOT NULL AND lease_until >= {}",
        vec!["?"; owners.len().max(1)].join(", "),
        conn.epoch_ms_sql()
    );
    let mut params: Vec<Value> = owners.iter().map(|o| Value::from(o.as_str())).collect();
    if params.is_empty() {
        params.push(Value::Null);
    }
    params.push(run_id.into());
    let row = conn.fetch_one(&sql, &params).await?;
    let n = |i: usize| row.get(i).and_then(Value::as_i64).unwrap_or(0);
    Ok((n(0), n(1)))
}

/// Whether some runner is at work on run `run_id` (holds a current lease).
pub(crate) async fn leased(conn: &mut Conn, run_id: i64) -> Result<bool> {
    if !conn
        .table_exists("datamig_partitions")
        .await
        .map_err(failed("cannot read datamig_partitions"))?
    {
        return Ok(false);
    }
    totals(conn, run_id)
        .await
        .map(|t| t.leased > 0)
        .map_err(failed("cannot read datamig_partitions"))
}

/// Copies the partitions' sums into the run's row, for `datamig status` and
/// whoever reads `datamig_runs`.
pub(crate) async fn publish(
    conn: &mut Conn,
    run_id: i64,
    t: &Totals,
    elapsed_ms: i64,
) -> sqlx::Result<()> {
    let sql = format!(
        "UPDATE datamig_runs SET rows_done = ?, rows_changed = ?, rows_rejected = ?, batches_done = ?, \
         position = ?, elapsed_ms = ?, updated_at = {} WHERE id = ?",
        conn.now_sql()
    );
    conn.execute(
        &sql,
        &[
            t.rows_done.into(),
            t.rows_changed.into(),
            t.rows_rejected.into(),
            t.batches_done.into(),
            Value::Null,
            elapsed_ms.into(),
            run_id.into(),
        ],
    )
    .await
    .map(drop)
}

/// The partitions of a run, for `datamig status`: `(part, lo, hi, position,
/// done, owner, rows_done)`.
pub async fn list(conn: &mut Conn, run_id: i64) -> Result<Vec<PartitionRecord>> {
    if !conn
        .table_exists("datamig_partitions")
        .await
        .map_err(failed("cannot read datamig_partitions"))?
    {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT part, lo, hi, position, done, owner, rows_done, batches_done, \
         CASE WHEN lease_until >= {} THEN 1 ELSE 0 END FROM datamig_partitions WHERE run_id = ? ORDER BY part",
        conn.epoch_ms_sql()
    );
    let rows = conn
        .fetch(&sql, &[run_id.into()])
        .await
        .map_err(failed("cannot read datamig_partitions"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let n = |i: usize| r.get(i).and_then(Value::as_i64);
            PartitionRecord {
                part: n(0).unwrap_or(0),
                lo: n(1),
                hi: n(2),
                position: n(3),
                done: n(4) == Some(1),
                owner: r.get(5).and_then(|v| v.as_str().map(str::to_string)),
                rows_done: n(6).unwrap_or(0),
                batches_done: n(7).unwrap_or(0),
                leased: n(8) == Some(1),
            }
        })
        .collect())
}

/// One partition of a run, as `datamig status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionRecord {
    pub part: i64,
    pub lo: Option<i64>,
    pub hi: Option<i64>,
    pub position: Option<i64>,
    pub done: bool,
    pub owner: Option<String>,
    pub rows_done: i64,
    pub batches_done: i64,
    /// Whether its owner's lease is current (a worker is on it).
    pub leased: bool,
}

/// The checkpoint of a partition's batch, inside the batch's transaction; fails
/// (returns false) when the worker no longer holds the partition, its bound moved
/// below the batch's end (a split), or the run is no longer running.
pub(crate) async fn checkpoint(
    conn: &mut Conn,
    claim: &Claim,
    position: i64,
    c: &BatchCounts,
) -> sqlx::Result<bool> {
    let sql = format!(
        "UPDATE datamig_partitions SET position = ?, rows_done = rows_done + ?, rows_changed = rows_changed + ?, \
         rows_rejected = rows_rejected + ?, batches_done = batches_done + 1, lease_until = {} + ? \
         WHERE run_id = ? AND part = ? AND owner = ? AND (hi IS NULL OR hi >= ?) \
         AND (SELECT state FROM datamig_runs WHERE id = ?) = 'running'",
        conn.epoch_ms_sql()
    );
    let params = [
        position.into(),
        c.rows.into(),
        c.changed.into(),
        c.rejected.into(),
        claim.lease_ms.into(),
        claim.run_id.into(),
        claim.part.into(),
        claim.owner.as_str().into(),
        position.into(),
        claim.run_id.into(),
    ];
    Ok(conn.execute(&sql, &params).await? == 1)
}

/// [`checkpoint`] as SQL text, for a driver that sends it with the COMMIT. A
/// checkpoint that may not go in sets `lease_until` to NULL, which the column
/// refuses: the statement fails, so the COMMIT after it never runs.
pub(crate) fn checkpoint_text(
    conn: &Conn,
    claim: &Claim,
    position: i64,
    c: &BatchCounts,
) -> Option<String> {
    if !conn.checkpoint_with_commit() {
        return None;
    }
    let owner = conn.text_literal(&claim.owner)?;
    Some(format!(
        "UPDATE datamig_partitions SET lease_until = CASE WHEN owner = {owner} AND (hi IS NULL OR hi >= {position}) \
         AND (SELECT state FROM datamig_runs WHERE id = {run}) = 'running' THEN {now} + {lease} END, \
         position = {position}, rows_done = rows_done + {}, rows_changed = rows_changed + {}, \
         rows_rejected = rows_rejected + {}, batches_done = batches_done + 1 WHERE run_id = {run} AND part = {part}",
        c.rows,
        c.changed,
        c.rejected,
        run = claim.run_id,
        part = claim.part,
        now = conn.epoch_ms_sql(),
        lease = claim.lease_ms,
    ))
}

/// Whether a checkpoint sent as [`checkpoint_text`] was refused.
pub(crate) fn refused(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23502")
        && db.message().contains("\"lease_until\""))
}

/// The error of a partition's batch whose checkpoint was refused: the worker
/// finds out why (taken over, split, the run stopped) and goes on from there.
/// Whether `claim`'s partition is no longer as claimed: taken over, split
/// (its upper bound moved), or gone. Asked after a batch failed, so that a
/// batch that ran into rows of another partition (a step's insert of a row
/// that partition's worker inserted first) counts as the partition lost, as
/// its refused checkpoint would have, not as the run's failure.
pub(crate) async fn moved(conn: &mut Conn, claim: &Claim) -> bool {
    let rows = conn
        .fetch(
            "SELECT owner, hi FROM datamig_partitions WHERE run_id = ? AND part = ?",
            &[Value::Int(claim.run_id), Value::Int(claim.part)],
        )
        .await;
    match rows.as_deref() {
        Ok([row]) => {
            row.first().and_then(Value::as_str) != Some(claim.owner.as_str())
                || row.get(1).and_then(Value::as_i64) != claim.hi
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

pub(crate) fn lost(claim: &Claim) -> Error {
    Error::PartitionLost(format!(
        "partition {} of run {} was taken over or split, or the run stopped; the batch was rolled back",
        claim.part, claim.run_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_a_range_into_open_ended_pieces() {
        assert_eq!(
            cut(0, 100, 4),
            vec![
                (None, Some(25)),
                (Some(25), Some(50)),
                (Some(50), Some(75)),
                (Some(75), None)
            ]
        );
        // Never more pieces than keys.
        assert_eq!(cut(10, 12, 8), vec![(None, Some(11)), (Some(11), None)]);
        assert_eq!(cut(5, 5, 3), vec![(None, None)]);
        // The extremes do not overflow.
        let wide = cut(i64::MIN, i64::MAX, 2);
        assert_eq!(wide, vec![(None, Some(-1)), (Some(-1), None)]);
    }
}
