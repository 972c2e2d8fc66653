//! The project's `datamig` binary: the datamig command line with this project's jobs.

fn main() -> std::process::ExitCode {
    datamig_cli::main(own_project::registry())
}
