//! The datamig command line. A project's binary is three lines:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     datamig_cli::main(datamig_core::job::Registry::new())
//! }
//! ```
//!
//! Each subcommand lives in its own module under `commands`; this file parses,
//! dispatches, and maps errors to the exit codes in [`exit`].

mod commands;
pub mod exit;
mod opt;
mod output;

use std::process::ExitCode;

use clap::Parser;
use datamig_core::job::Registry;

pub use opt::Cli;

/// Runs the command line with the jobs in `registry`.
pub fn main(registry: Registry) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // One line: clap's message up to its first blank line, without the usage block.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            output::note(&format!("{} (see --help)", message.join(" ")));
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::from(exit::OK);
        }
    };
    init_logging(cli.global.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::note(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::dispatch(cli, &registry)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => {
            output::note(&format!("error: {err:#}"));
            ExitCode::from(exit::code_for(&err))
        }
    }
}

fn init_logging(format: opt::LogFormat) {
    use tracing_subscriber::EnvFilter;
    output::json_logs(format == opt::LogFormat::Json);
    // What datamig says on stderr (its messages, warnings and the error: see
    // `output`) is shown whatever RUST_LOG selects, as it is in text mode, where
    // it does not go through tracing at all.
    let said = "datamig_cli::output=info"
        .parse()
        .expect("a valid directive");
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,datamig_core=info,datamig_cli=info"))
        .add_directive(said);
    // Colours only for a person at a terminal, never in cron mail or log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| output::Stderr)
        .with_ansi(ansi);
    match format {
        opt::LogFormat::Json => builder.json().init(),
        opt::LogFormat::Text => builder.with_target(false).without_time().init(),
    }
}
