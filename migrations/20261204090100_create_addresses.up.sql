-- One row per address of a user, moved out of users.profile by
-- move_addresses_to_table. A user has at most one address of each kind.
CREATE TABLE addresses (
    id BIGINT NOT NULL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    kind VARCHAR(20) NOT NULL,
    line VARCHAR(200) NOT NULL,
    city VARCHAR(100) NOT NULL,
    UNIQUE (user_id, kind)
);
