-- The profile JSON (text, on every database) that move_addresses_to_table
-- reads, and when its addresses were moved.
ALTER TABLE users ADD COLUMN profile TEXT;
ALTER TABLE users ADD COLUMN addresses_moved_at TIMESTAMP NULL;
