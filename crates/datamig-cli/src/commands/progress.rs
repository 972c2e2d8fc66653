//! Showing a run's progress: an indicatif bar when stderr is a terminal, one log
//! line every few seconds when it is not (cron, CI, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use datamig_core::run::{Observer, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::opt::ProgressArg;

pub struct Display {
    job: String,
    bar: Option<ProgressBar>,
    log: bool,
    last_log: Instant,
    /// `--quiet`: no messages either; the summary line says it all.
    quiet: bool,
    /// Why the run waits, while it waits.
    waiting: Option<String>,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Display {
    pub fn new(job: &str, mode: ProgressArg, quiet: bool) -> Display {
        // A bar would be drawn between JSON events: with --log-format json the
        // progress goes out as log events instead.
        let terminal = std::io::stderr().is_terminal() && !crate::output::is_json();
        let (bar, log) = match mode {
            ProgressArg::Auto if terminal => (true, false),
            ProgressArg::Auto | ProgressArg::Log => (false, true),
            ProgressArg::Bar => (!crate::output::is_json(), crate::output::is_json()),
            ProgressArg::None => (false, false),
        };
        let bar = bar.then(|| {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} rows ({percent}%) {rate} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} rows/s", state.per_sec());
                },
            )
            .progress_chars("=> ");
            pb.set_style(style);
            pb.set_prefix(job.to_string());
            pb
        });
        Display {
            job: job.to_string(),
            bar,
            log,
            last_log: Instant::now(),
            quiet,
            waiting: None,
        }
    }

    fn log_line(&self, p: &Progress) {
        let secs = p.elapsed.as_secs_f64().max(0.001);
        #[allow(clippy::cast_precision_loss)] // a rate for humans
        let rate = p.rows_this_process as f64 / secs;
        let (pct, eta) = match p.total {
            Some(t) if t > 0 => {
                #[allow(clippy::cast_precision_loss)]
                let pct = p.rows_done as f64 * 100.0 / t as f64;
                #[allow(clippy::cast_precision_loss)]
                let left = (t - p.rows_done).max(0) as f64;
                let eta = if rate > 0.0 {
                    format!(", ETA {:.0}s", left / rate)
                } else {
                    String::new()
                };
                (format!("{pct:.1}% ({}/{t} rows)", p.rows_done), eta)
            }
            _ => (format!("{} rows", p.rows_done), String::new()),
        };
        tracing::info!(
            "{}: {pct}, {rate:.0} rows/s{eta}, batch {}, at {}",
            self.job,
            p.batches,
            if p.position.is_empty() {
                "the start"
            } else {
                &p.position
            }
        );
    }
}

impl Observer for Display {
    fn message(&mut self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => crate::output::note(text),
        }
    }

    fn started(&mut self, p: &Progress) {
        if let Some(bar) = &self.bar {
            if let Some(t) = p.total {
                bar.set_length(u64::try_from(t).unwrap_or(0));
            }
            bar.set_position(u64::try_from(p.rows_done).unwrap_or(0));
            bar.reset_eta();
        }
        self.last_log = Instant::now();
    }

    fn batch(&mut self, p: &Progress) {
        if let Some(bar) = &self.bar {
            if let Some(t) = p.total {
                bar.set_length(u64::try_from(t).unwrap_or(0));
            }
            bar.set_position(u64::try_from(p.rows_done).unwrap_or(0));
            bar.set_message(format!("batch {}", p.batches));
        }
        if self.log && self.last_log.elapsed() >= LOG_EVERY {
            self.log_line(p);
            self.last_log = Instant::now();
        }
    }

    fn waiting(&mut self, why: Option<&str>) {
        self.waiting = why.map(str::to_string);
        if let Some(bar) = &self.bar {
            bar.set_message(why.unwrap_or_default().to_string());
        } else if !self.quiet {
            // Why a run stands still is always worth a line (cron mail, logs).
            if let Some(why) = why {
                crate::output::note(&format!("{}: {why}", self.job));
            }
        }
    }

    fn finished(&mut self, p: &Progress) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.log {
            self.log_line(p);
        }
    }
}
