-- What an outside service said of each user's address (1 valid, 0 not), and
-- when: filled by verify_emails.
ALTER TABLE users ADD COLUMN email_valid SMALLINT;
ALTER TABLE users ADD COLUMN email_checked_at TIMESTAMP NULL;
