-- Filled by the backfill_emails data job, not here: a schema step stays fast.
ALTER TABLE users ADD COLUMN email_normalized VARCHAR(320);
