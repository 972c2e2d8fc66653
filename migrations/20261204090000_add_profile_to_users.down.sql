ALTER TABLE users DROP COLUMN addresses_moved_at;
ALTER TABLE users DROP COLUMN profile;
