-- The files index_uploads records: one row per file of a directory, by name.
CREATE TABLE uploads (
    name VARCHAR(255) PRIMARY KEY,
    bytes BIGINT NOT NULL,
    sha256 CHAR(64) NOT NULL
);
