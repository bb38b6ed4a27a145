//! `ccfleet-server`: parses the command line, sets up tracing, calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ccfleet-server", version, about = "ccfleet fleet server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the state directory and database.
    Init {
        /// State directory (created owner-only).
        #[arg(long, default_value = "./ccfleet-data", env = "CCFLEET_DATA")]
        data: PathBuf,
    },
    /// Run the server (initialises the state directory on first use).
    Run {
        /// State directory.
        #[arg(long, default_value = "./ccfleet-data", env = "CCFLEET_DATA")]
        data: PathBuf,
        /// Address to listen on; port 0 picks a free port. Loopback only in this version.
        #[arg(long, default_value = "127.0.0.1:7443", env = "CCFLEET_LISTEN")]
        listen: SocketAddr,
        /// How often agents send heartbeats.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        heartbeat_interval: Duration,
        /// Silence after which a host is shown offline.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        heartbeat_timeout: Duration,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Init { data } => {
            ccfleet_server::init(&data)?;
            println!("initialised {}", data.display());
            Ok(())
        }
        Command::Run {
            data,
            listen,
            heartbeat_interval,
            heartbeat_timeout,
        } => {
            if heartbeat_timeout <= heartbeat_interval {
                anyhow::bail!("--heartbeat-timeout ({heartbeat_timeout:?}) must be longer than --heartbeat-interval ({heartbeat_interval:?})");
            }
            ccfleet_server::check_listen_address(listen)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let address = listener.local_addr()?;
                // Tests and scripts read this line to learn the port.
                println!("listening on {address}");
                let mut config = ccfleet_server::ServerConfig::new(data);
                config.heartbeat_interval = heartbeat_interval;
                config.heartbeat_timeout = heartbeat_timeout;
                ccfleet_server::serve(listener, config, shutdown_signal()).await
            })
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}
