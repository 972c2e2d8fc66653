//! The run's history: one record per committed batch (size, time, rows changed,
//! time waited for throttles before it, retries), kept in `datamig_batches` for
//! `datamig status <job> --batches`. Records are buffered and written by the
//! run's control on its own connection, once a second, outside the batches'
//! transactions: the history never lengthens a batch's locks, and a crash
//! loses at most its last second, never a batch's data or its checkpoint.

use std::time::Duration;

use super::store::{self, BatchRecord};
use crate::db::Conn;

pub(crate) struct History {
    run_id: i64,
    pending: Vec<BatchRecord>,
    /// Records past this batch are to be removed from the table: their batches
    /// were lost with the server and are being done again.
    rewound_to: Option<i64>,
}

impl History {
    pub fn new(run_id: i64) -> History {
        History {
            run_id,
            pending: Vec::new(),
            rewound_to: None,
        }
    }

    /// Forgets the batches after `batch`: the database's checkpoint is behind
    /// them (a server crash lost them), so they are done again under the same
    /// numbers. Those already written are removed at the next flush.
    pub fn rewind(&mut self, batch: i64) {
        self.pending.retain(|r| r.batch <= batch);
        self.rewound_to = Some(self.rewound_to.map_or(batch, |b| b.min(batch)));
    }

    /// Notes a committed batch, as its worker reported it.
    pub fn push(&mut self, record: BatchRecord) {
        self.pending.push(record);
    }

    /// Writes the buffered records, within `limit` (a dead connection must not
    /// hold the run up). A failure is a warning: the history is a record of the
    /// run, not part of its work, and those records are dropped.
    pub async fn flush(&mut self, conn: &mut Conn, limit: Duration) {
        if let Some(batch) = self.rewound_to {
            match tokio::time::timeout(limit, store::forget_batches(conn, self.run_id, batch)).await
            {
                Ok(Ok(())) => self.rewound_to = None,
                // Tried again at the next flush; the new records wait for it.
                _ => return,
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.pending);
        match tokio::time::timeout(limit, store::record_batches(conn, self.run_id, &records)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                "could not record {} batches in datamig_batches: {}",
                records.len(),
                crate::db::db_message(&e)
            ),
            Err(_) => tracing::warn!(
                "could not record {} batches in datamig_batches: no answer within {}s",
                records.len(),
                limit.as_secs()
            ),
        }
    }
}
