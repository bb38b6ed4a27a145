//! `ccfleet-agent`: thin command-line front end over the `ccfleet_agent` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ccfleet_agent::config::Config;
use clap::{Parser, Subcommand};

/// The ccfleet host agent.
#[derive(Debug, Parser)]
#[command(name = "ccfleet-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file (including that secret files are readable) and print it,
    /// normalised with every default filled in, as JSON.
    CheckConfig {
        /// The agent's TOML configuration, e.g. /etc/ccfleet/agent.toml.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One problem per line, each marked, so a long list stays readable.
            for line in format!("{error:#}").lines() {
                eprintln!("error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    config.validate_files(file)?;
    let json = serde_json::to_string_pretty(&config).context("cannot render the configuration as JSON")?;
    println!("{json}");
    Ok(())
}
