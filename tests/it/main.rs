//! datamig's integration tests: the built binary, run as a user runs it, against
//! real SQLite files and the PostgreSQL and MariaDB servers on this machine
//! (`DATAMIG_TEST_POSTGRES_URL`, `DATAMIG_TEST_MYSQL_URL` override where).
//! Each test gets a database of its own, so they run in parallel.

mod bad_inputs;
mod batch_step;
mod bench_smoke;
mod crash;
mod demo_jobs;
mod docs;
mod guard;
mod harness;
mod jobs;
mod move_over;
mod operate;
mod outputs;
mod outside;
mod own_project;
mod production;
mod proxy;
mod reliability;
mod schema;
mod server;
mod sqlite_rows;
mod support;
mod values;
mod workers;
