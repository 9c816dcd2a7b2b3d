//! What the commands share at the command-line edge: the pipeline file (the built-in default,
//! `--config FILE` or `SURGEGUARD_CONFIG`), where output goes, the async runtime, and the stop
//! signals.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::config::load::{DEFAULT_PIPELINE, load_file, load_str};
use crate::config::secrets;

/// The environment variable that names the pipeline file when `--config` does not.
pub const CONFIG_ENV: &str = "SURGEGUARD_CONFIG";

/// The pipeline a command runs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArg {
    /// The pipeline TOML file (default: $SURGEGUARD_CONFIG if set, else the built-in default
    /// pipeline, which `surgeguard config print-default` writes out).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file to read: `--config`, else `$SURGEGUARD_CONFIG`; `None` for the built-in default.
    pub fn path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
    }

    /// The pipeline, loaded and validated; its errors have the file's secret values redacted. The
    /// loaded config's secret values are remembered, so that the error `main` prints last loses
    /// them, whichever client it comes from.
    pub fn load(&self) -> anyhow::Result<Arc<Config>> {
        let cfg = match self.path() {
            Some(path) => load_file(&path).map_err(|e| anyhow::anyhow!("{}", secrets::redact_for_file(&e.to_string(), &path)))?,
            None => load_str(DEFAULT_PIPELINE, "the built-in default pipeline").map_err(|e| anyhow::anyhow!("{e}"))?,
        };
        secrets::remember(secrets::config_secrets(&cfg));
        Ok(Arc::new(cfg))
    }
}

/// Where `--out` sends output: the file, or stdout when absent or `-`.
pub fn output(out: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match out {
        Some(p) if p != Path::new("-") => Box::new(BufWriter::new(File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        _ => Box::new(BufWriter::new(io::stdout().lock())),
    })
}

/// The async runtime of a command that needs one.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// Completes on SIGINT or SIGTERM. The SIGTERM handler is installed at once, not when the future
/// is first polled: a SIGTERM during start-up (before the event loop waits on it) then stops the
/// service cleanly once it runs, instead of killing it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => tracing::info!("SIGTERM: shutting down"),
        }
    }
}
