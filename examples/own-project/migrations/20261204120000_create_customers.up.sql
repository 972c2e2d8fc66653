-- The example's table, with a few customers for backfill_display_names to fill.
CREATE TABLE customers (
    id BIGINT PRIMARY KEY,
    first_name VARCHAR(100),
    last_name VARCHAR(100),
    display_name VARCHAR(201)
);

INSERT INTO customers (id, first_name, last_name) VALUES
    (1, ' ada ', 'LOVELACE'),
    (2, 'grace', 'hopper'),
    (3, 'Alan', NULL),
    (4, NULL, NULL),
    (5, 'edsger', 'dijkstra');
