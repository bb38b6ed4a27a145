//! `ccfleet-agent`: thin command-line front end over the `ccfleet_agent` library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ccfleet_agent::config::Config;
use ccfleet_agent::control::{self, Request, Response};
use ccfleet_agent::{daemon, identity};
use clap::{Parser, Subcommand};

const DEFAULT_CONFIG: &str = "/etc/ccfleet/agent.toml";

/// The agent's part of the exit-code table all three binaries share (README.md).
const EXIT_CODES: &str = "\
Exit codes (the same table as ccfleet's):
  0  success
  1  unexpected error (an app failed with --wait, cannot write a file, ...)
  2  usage or configuration error (invalid argument, invalid agent.toml)
  3  the running agent cannot be reached (its control socket)";

/// The ccfleet host agent.
#[derive(Debug, Parser)]
#[command(name = "ccfleet-agent", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a shell completion script, e.g. `ccfleet-agent completions bash`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or with --out write one page per subcommand into a directory.
    Man {
        /// Directory for ccfleet-agent.1, ccfleet-agent-run.1, ...
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the shape of every abra command line the agent runs, one a line (read by
    /// scripts/check-abra).
    #[command(hide = true)]
    AbraCommands,
    /// Run the agent: enrol if needed, reconcile the declared apps, report to the server.
    Run {
        /// The agent's TOML configuration.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file (including that secret files are readable) and print it,
    /// normalised with every default filled in, as JSON. Warns (exit 0) when the local abra
    /// does not know a declared recipe or version, naming the nearest ones.
    CheckConfig {
        /// The agent's TOML configuration, e.g. /etc/ccfleet/agent.toml.
        file: PathBuf,
    },
    /// Enrol this host with the server using a join token, and store its identity.
    Enroll {
        /// The server, e.g. https://fleet.example.org:7443.
        #[arg(long)]
        server: String,
        /// File holding the join token (`ccfleet token create`).
        #[arg(long)]
        token_file: PathBuf,
        /// The agent's state directory (the identity goes to <data>/identity.toml).
        #[arg(long, default_value = "/var/lib/ccfleet-agent")]
        data: PathBuf,
        /// The host id to enrol as [default: the hostname, lowercased].
        #[arg(long)]
        host_id: Option<ccfleet_proto::HostId>,
    },
    /// Ask the running agent to converge now; with --wait, fail if an app fails.
    Apply {
        /// One app (its domain); all apps when omitted.
        app: Option<String>,
        /// Wait for the result and exit non-zero with the reason if an app failed.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long (the agent goes on), e.g. "30m".
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// With --wait: print progress lines on stderr (the default on a terminal).
        #[arg(long)]
        progress: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Ask the running agent for an app's scheduled update (run by its systemd timer).
    Update {
        /// The app's domain.
        app: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Run the health-gated upgrade transaction for one app: snapshot (stateful apps), upgrade,
    /// health gate, rollback with restore when unhealthy. With --wait, exits non-zero unless it
    /// succeeded.
    Upgrade {
        /// The app's domain.
        app: String,
        /// The version to move to (older versions too: an explicit rollback); default: the
        /// newest available version within the running major.
        #[arg(long)]
        to: Option<String>,
        /// Allow a change of the recipe's major version.
        #[arg(long)]
        major: bool,
        /// Wait for the outcome (otherwise the operation runs in the background).
        #[arg(long)]
        wait: bool,
        /// Print the operation's report as JSON (implies --wait); progress goes to stderr as
        /// JSON lines (`{"progress": "..."}`).
        #[arg(long)]
        json: bool,
        /// Print progress while waiting (the default with --wait or --json; kept for symmetry
        /// with `apply`): a line when the phase or Docker's picture changes, otherwise a short
        /// "still waiting" line at most every 30 s.
        #[arg(long)]
        progress: bool,
        /// Make the request idempotent: with an id used before, the recorded result is
        /// returned and nothing runs again.
        #[arg(long)]
        operation_id: Option<String>,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Show each app's declared and observed state, and the link to the server.
    Status {
        /// Print the full status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
}

#[derive(Debug, clap::Args)]
struct SocketArgs {
    /// The agent's configuration, to find its control socket.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The control socket, overriding the configuration's.
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl SocketArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        Ok(Config::load(&self.config)?.agent.control_socket)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    ccfleet_proto::tls::install_crypto_provider();
    let cli = Cli::parse();
    let result = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(dispatch(cli.command)),
        Err(error) => Err(anyhow::Error::new(error).context("cannot start the async runtime")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One problem per line, each marked, so a long list stays readable.
            for line in format!("{error:#}").lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(exit_code(&error))
        }
    }
}

/// A command line that cannot be carried out as written (exit 2, as clap's
/// own usage errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// The exit code for a failure: the table `ccfleet --help` and README.md
/// ("Exit codes") give for all three binaries. 2: usage or configuration
/// error; 3: the running agent cannot be reached; 1: anything else.
fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<Usage>().is_some() || error.downcast_ref::<ccfleet_agent::config::ConfigError>().is_some() {
        2
    } else if error.downcast_ref::<control::Unreachable>().is_some() {
        3
    } else {
        1
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "ccfleet-agent", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out: None } => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .context("cannot print the man page"),
        Command::Man { out: Some(out) } => clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &out)
            .with_context(|| format!("cannot write the man pages into {}", out.display())),
        Command::AbraCommands => {
            for shape in ccfleet_agent::abra::COMMAND_SHAPES {
                println!("{shape}");
            }
            Ok(())
        }
        Command::Run { config } => daemon::run(&config).await,
        Command::CheckConfig { file } => check_config(&file),
        Command::Enroll {
            server,
            token_file,
            data,
            host_id,
        } => enroll(&server, &token_file, &data, host_id).await,
        Command::Apply {
            app,
            wait,
            timeout,
            progress,
            socket,
        } => {
            use std::io::IsTerminal;
            let progress = wait && (progress || std::io::stderr().is_terminal());
            let request = Request::Apply { app, wait, progress };
            // The whole wait is bounded, the agent's lock on a busy app included.
            let response =
                control::call_with_progress(&socket.path()?, &request, timeout, &mut |line| eprintln!("... {line}"))
                    .await?;
            print_outcomes(&response)
        }
        Command::Update { app, socket } => {
            let response = control::call(&socket.path()?, &Request::Update { app }, Duration::from_secs(3600)).await?;
            print_outcomes(&response)
        }
        Command::Upgrade {
            app,
            to,
            major,
            wait,
            json,
            progress,
            operation_id,
            socket,
        } => {
            // Refused here already, before the agent is asked anything.
            if let Some(Err(reason)) = operation_id.as_deref().map(ccfleet_agent::upgrade::check_operation_id) {
                return Err(Usage(format!("--operation-id: {reason}")).into());
            }
            let request = Request::Upgrade {
                app,
                to,
                major,
                wait: wait || json || progress,
                operation_id,
                // A wait is never silent, on a terminal or not (a timer's log, a script).
                progress: wait || json || progress,
            };
            let response =
                control::call_with_progress(&socket.path()?, &request, Duration::from_secs(6 * 3600), &mut |line| {
                    if json {
                        eprintln!("{}", serde_json::json!({ "progress": line }));
                    } else {
                        eprintln!("... {line}");
                    }
                })
                .await?;
            if json {
                let report = response.operation.clone().unwrap_or(serde_json::Value::Null);
                println!("{}", serde_json::to_string_pretty(&report)?);
                if !response.ok {
                    anyhow::bail!("{}", response.message);
                }
                return Ok(());
            }
            print_outcomes(&response)
        }
        Command::Status { json, socket } => {
            // Status is a question about now: a missing or refused socket is
            // the answer ("not running"), not something to wait out.
            let response = control::call_with_patience(
                &socket.path()?,
                &Request::Status,
                control::STATUS_CONNECT_PATIENCE,
                Duration::from_secs(30),
            )
            .await?;
            let status = response.status.context("the agent sent no status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
    }
}

fn print_outcomes(response: &Response) -> anyhow::Result<()> {
    for app in &response.apps {
        println!(
            "{}: {}{}",
            app.domain,
            if app.ok { "" } else { "FAILED: " },
            app.message
        );
    }
    if !response.ok {
        anyhow::bail!("{}", response.message);
    }
    if response.apps.is_empty() {
        println!("{}", response.message);
    }
    Ok(())
}

async fn enroll(
    server: &str,
    token_file: &Path,
    data: &Path,
    host_id: Option<ccfleet_proto::HostId>,
) -> anyhow::Result<()> {
    if let Some(existing) = identity::load(data)? {
        anyhow::bail!(
            "{} already holds an identity for {}; remove it first to enrol again",
            identity::identity_path(data).display(),
            existing.server
        );
    }
    let host_id = match host_id {
        Some(host_id) => host_id,
        None => ccfleet_proto::system_hostname()
            .parse()
            .context("the hostname is not a valid host id; pass --host-id")?,
    };
    let token = identity::read_token(token_file)?;
    let facts = ccfleet_proto::pb::HostFacts {
        hostname: host_id.to_string(),
        arch: std::env::consts::ARCH.to_owned(),
        ..Default::default()
    };
    let credential = identity::enroll(server, &token, &host_id, facts, data).await?;
    identity::store(data, &credential)?;
    println!(
        "enrolled as {host_id}; identity stored in {} (valid until {})",
        identity::identity_path(data).display(),
        humantime::format_rfc3339_seconds(credential.not_after()?)
    );
    Ok(())
}

fn check_config(file: &Path) -> anyhow::Result<()> {
    let config = daemon::load_config(file)?;
    // Likely typos, as warnings (exit 0): abra may not have fetched the recipe yet.
    for warning in ccfleet_agent::abra::hints::hints(&config.abra, &config.apps) {
        eprintln!("warning: {warning}");
    }
    let json = serde_json::to_string_pretty(&config).context("cannot render the configuration as JSON")?;
    println!("{json}");
    Ok(())
}
