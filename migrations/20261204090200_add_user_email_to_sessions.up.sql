-- A copy of the session's user's address, filled by copy_user_email_to_sessions.
ALTER TABLE sessions ADD COLUMN user_email VARCHAR(320);
