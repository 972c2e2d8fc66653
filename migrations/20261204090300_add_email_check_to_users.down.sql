ALTER TABLE users DROP COLUMN email_checked_at;
ALTER TABLE users DROP COLUMN email_valid;
