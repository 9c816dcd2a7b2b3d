//! `surgeguard check-config` and `surgeguard config print-default`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::load::{DEFAULT_PIPELINE, load_file};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The pipeline TOML file.
    pub file: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Write the built-in default pipeline (pipelines/default.toml, every key with its default)
    /// to stdout, to start a pipeline file of your own from.
    PrintDefault,
}

/// Validates a pipeline file: 0 when valid, 1 with every error and its key path when not.
pub fn check(args: &CheckArgs) -> ExitCode {
    match load_file(&args.file) {
        Ok(_) => {
            println!("{}: ok", args.file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

pub fn main(command: &ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::PrintDefault => {
            let mut out = std::io::stdout().lock();
            out.write_all(DEFAULT_PIPELINE.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}
