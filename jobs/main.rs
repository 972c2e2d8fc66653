//! The `datamig` binary: this project's jobs, handed to the datamig command line.

fn main() -> std::process::ExitCode {
    datamig_cli::main(jobs::registry())
}
