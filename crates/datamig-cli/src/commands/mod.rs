//! One module per subcommand, one dispatch `match`.

mod jobs;
mod progress;
mod run;
mod schema;
mod status;
mod steer;

use anyhow::Result;
use datamig_core::config::{ConfigInputs, Settings};
use datamig_core::db::{Conn, ConnectOptions};
use datamig_core::job::Registry;
use datamig_core::run::steer::Action;

use crate::opt::{Cli, Command, GlobalOpts};

pub async fn dispatch(cli: Cli, registry: &Registry) -> Result<()> {
    match cli.command {
        Command::Schema(cmd) => schema::run(&cli.global, cmd).await,
        Command::Jobs => jobs::run(registry),
        Command::Run(cmd) => run::run(&cli.global, registry, *cmd).await,
        Command::Status {
            job,
            json,
            limit,
            batches,
        } => status::run(&cli.global, registry, job.as_deref(), json, limit, batches).await,
        Command::Verify { job, args } => run::verify(&cli.global, registry, &job, &args).await,
        Command::Pause { job } => steer::run(&cli.global, registry, &job, Action::Pause).await,
        Command::Resume { job } => steer::run(&cli.global, registry, &job, Action::Resume).await,
        Command::Cancel { job } => steer::run(&cli.global, registry, &job, Action::Cancel).await,
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a write that fails (a
            // closed pipe), and output::line does not.
            let mut script = Vec::new();
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "datamig", &mut script);
            crate::output::line(String::from_utf8_lossy(&script).trim_end());
            Ok(())
        }
    }
}

/// The project is the current directory.
pub(crate) fn settings(global: &GlobalOpts) -> Result<Settings> {
    let project_dir = std::env::current_dir()?;
    let inputs = ConfigInputs {
        project_dir,
        database_url: global.database_url.clone(),
        env: global.env.clone(),
    };
    let settings = Settings::resolve(&inputs)?;
    warn_ignored(&settings.database_url);
    Ok(settings)
}

/// Says which of a URL's parameters its driver does not take, never their values.
pub(crate) fn warn_ignored(url: &datamig_core::config::DatabaseUrl) {
    for key in url.ignored_params() {
        crate::output::note(&format!(
            "warning: the {} database URL's parameter `{key}` is not one its driver takes, and is ignored \
             (its value is not shown)",
            url.backend()
        ));
    }
}

pub(crate) fn connect_options(global: &GlobalOpts) -> ConnectOptions {
    ConnectOptions {
        timeout: global.connect_timeout,
        ..ConnectOptions::default()
    }
}

/// Connects, runs `body`, and closes the connection on every path.
pub(crate) async fn with_conn<T>(
    global: &GlobalOpts,
    settings: &Settings,
    body: impl AsyncFnOnce(&mut Conn) -> Result<T>,
) -> Result<T> {
    let mut conn = connect(global, settings).await?;
    let result = body(&mut conn).await;
    conn.close().await;
    result
}

pub(crate) async fn connect(global: &GlobalOpts, settings: &Settings) -> Result<Conn> {
    tracing::debug!(
        "connecting to {} (from {})",
        settings.database_url,
        settings.url_source
    );
    Ok(Conn::connect(&settings.database_url, &connect_options(global)).await?)
}
