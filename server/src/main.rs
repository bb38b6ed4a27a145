//! `ccfleet-server`: parses the command line, sets up tracing, calls the library.
//!
//! Exit codes (README.md, "Exit codes"): 0 success; 1 the server cannot start
//! or stopped on an error; 2 a usage or configuration error, whether clap
//! refuses a flag or a value is refused after parsing ([`Usage`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ccfleet_proto::ServerUrl;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ccfleet-server", version, about = "ccfleet fleet server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing `Run` would only obscure the clap derive.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Print a shell completion script, e.g. `ccfleet-server completions bash`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or with --out write one page per subcommand into a directory.
    Man {
        /// Directory for ccfleet-server.1, ccfleet-server-run.1, ...
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Create the state directory, database, CA and first admin credential.
    Init {
        /// State directory (created owner-only).
        #[arg(long, default_value = "./ccfleet-data", env = "CCFLEET_DATA")]
        data: PathBuf,
        /// The URL clients will use to reach the server, written into the
        /// first admin credential.
        #[arg(long, default_value = "https://127.0.0.1:7443")]
        public_url: ServerUrl,
    },
    /// Run the server (initialises the state directory on first use).
    Run {
        /// State directory.
        #[arg(long, default_value = "./ccfleet-data", env = "CCFLEET_DATA")]
        data: PathBuf,
        /// Address to listen on (TLS); port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:7443", env = "CCFLEET_LISTEN")]
        listen: SocketAddr,
        /// Extra DNS name or IP address for the server certificate (repeatable);
        /// localhost, the loopback addresses and the hostname are always included.
        #[arg(long = "san", value_name = "NAME")]
        server_names: Vec<String>,
        /// URL written into the first admin credential if this run initialises
        /// the state directory [default: https://<listen address>].
        #[arg(long)]
        public_url: Option<ServerUrl>,
        /// Serve Prometheus metrics (plain HTTP, `GET /metrics`) on this loopback address.
        #[arg(long, env = "CCFLEET_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Also serve the Admin service (with health and reflection) on this
        /// address (TLS), to admin certificates only: `ccfleet` pointed here
        /// gets in while thousands of agents queue on --listen, e.g. after a
        /// restart. The same server certificate; port 0 picks a free port.
        #[arg(long, env = "CCFLEET_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
        /// Lifetime of host certificates; agents renew at two thirds of it.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        host_certificate_lifetime: Duration,
        /// How often agents send heartbeats.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        heartbeat_interval: Duration,
        /// Silence after which a host is shown offline.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        heartbeat_timeout: Duration,
        /// Operation records kept per host; the oldest beyond it are pruned.
        #[arg(long, default_value_t = ccfleet_server::store::DEFAULT_OPERATION_QUOTA)]
        operation_quota: usize,
        /// Operation records older than this are pruned.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        operation_retention: Duration,
        /// Audit entries older than this many days are pruned (hourly); none
        /// is removed earlier, whatever the count.
        #[arg(long, value_name = "DAYS", default_value_t = ccfleet_server::store::DEFAULT_AUDIT_RETENTION_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        audit_retention: u32,
        /// Audit entries kept at most: once reached, admin actions are refused
        /// (never an older entry evicted) until entries age out.
        #[arg(long, default_value_t = ccfleet_server::store::DEFAULT_AUDIT_MAX_ENTRIES as u64,
              value_parser = clap::value_parser!(u64).range(1..))]
        audit_max_entries: u64,
        #[command(flatten)]
        limits: Limits,
        #[command(flatten)]
        notify: NotifyArgs,
    },
}

/// Notifications (README.md, "Notifications").
#[derive(clap::Args)]
struct NotifyArgs {
    /// Post each alert that opens, escalates or resolves and each rollout
    /// that halts or completes to this webhook (repeatable): https://, or
    /// http:// to a loopback address; prefix text+ to post one line of plain
    /// text instead of the JSON body (ntfy and similar).
    #[arg(long = "notify-webhook", value_name = "URL")]
    webhooks: Vec<ccfleet_server::notify::Destination>,
    /// Read more webhooks from this file, one per line (blank lines and
    /// lines starting with # are skipped): URLs that carry a token stay out
    /// of the command line and the process list.
    #[arg(long = "notify-webhooks-file", value_name = "FILE")]
    webhooks_file: Option<PathBuf>,
    /// Sign each webhook body with HMAC-SHA256 under the key in this file
    /// (its bytes, without a trailing newline), sent as
    /// `X-Ccfleet-Signature: sha256=<hex>`.
    #[arg(long = "notify-secret-file", value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Notifications kept undelivered at most; past it the oldest are
    /// dropped (counted in ccfleet_notifications_dropped_total, and logged).
    #[arg(long = "notify-queue-limit", default_value_t = ccfleet_server::store::DEFAULT_NOTIFICATION_LIMIT as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    queue_limit: u64,
    /// Longest wait between two attempts to reach a webhook (the wait starts
    /// at 1s and doubles).
    #[arg(long = "notify-max-retry-delay", default_value = "5m", value_parser = humantime::parse_duration)]
    max_retry_delay: Duration,
}

impl NotifyArgs {
    fn config(self) -> anyhow::Result<ccfleet_server::notify::NotifyConfig> {
        use ccfleet_server::notify::{Destination, NotifyConfig, Secret};
        let mut config = NotifyConfig::new();
        config.destinations = self.webhooks;
        if let Some(path) = &self.webhooks_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the webhooks file {}", path.display()))?;
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let destination: Destination = line
                    .parse()
                    .with_context(|| format!("{} line {}", path.display(), number + 1))?;
                config.destinations.push(destination);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for destination in &config.destinations {
            if !seen.insert(destination.id.clone()) {
                anyhow::bail!("webhook {destination} is given twice");
            }
        }
        if let Some(path) = &self.secret_file {
            config.secret = Some(Secret::read(path)?);
            if config.destinations.is_empty() {
                anyhow::bail!(
                    "--notify-secret-file is given but no webhook (--notify-webhook or --notify-webhooks-file)"
                );
            }
        }
        config.queue_limit = self.queue_limit as usize;
        if self.max_retry_delay < Duration::from_secs(1) {
            anyhow::bail!("--notify-max-retry-delay must be at least 1s");
        }
        config.max_retry_delay = self.max_retry_delay;
        Ok(config)
    }
}

/// The network edge's limits (README.md, "Limits").
#[derive(clap::Args)]
struct Limits {
    /// On SIGTERM/SIGINT: how long connections get to end before the server
    /// closes them, writes last-seen times and exits.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// Connections past their TLS handshake open at once [default: derived
    /// from the file-descriptor limit, which is raised to its hard limit at
    /// start].
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=1_000_000))]
    max_connections: Option<u64>,
    /// Connections in their TLS handshake at once, a pool apart; when full,
    /// the oldest silent handshake of the sources holding the most is closed
    /// to make room [default: an eighth of the connection cap, 16 to 1024].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_handshakes: Option<u64>,
    /// Handshakes one source (IPv4 address, IPv6 /64) may hold at once
    /// [default: an eighth of --max-handshakes, 2 to 64].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    handshakes_per_source: Option<u64>,
    /// A TLS handshake must finish within this.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed (also the
    /// HTTP/2 preface timeout); must be longer than --keepalive-interval.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Ping a connection that has been quiet this long.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    keepalive_interval: Duration,
    /// Close a connection whose ping is not answered within this.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    keepalive_timeout: Duration,
    /// HTTP/2 streams (calls) one connection may have open at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_concurrent_streams: u32,
    /// A store request running longer than this turns gRPC health NOT_SERVING.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    store_stall_threshold: Duration,
    /// Group commit: an agent's event waits at most this long for the flush
    /// that makes it durable (and for its acknowledgement), so that one flush
    /// covers many events; 0s flushes as soon as the queue is drained.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    commit_window: Duration,
}

/// A command-line value refused after clap parsed it (a combination of flags,
/// a file a flag names, an address): the process exits 2, as for the values
/// clap refuses itself.
#[derive(Debug)]
struct Usage(anyhow::Error);

impl std::fmt::Display for Usage {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:#}", self.0)
    }
}

impl std::error::Error for Usage {}

/// Marks an error found while checking the command line as a [`Usage`] error.
fn usage<T>(result: anyhow::Result<T>) -> anyhow::Result<T> {
    result.map_err(|error| Usage(error).into())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            exit_code(&error)
        }
    }
}

/// 2 for a usage or configuration error, 1 for anything else.
fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error.is::<Usage>() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "ccfleet-server", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out: None } => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .context("cannot print the man page"),
        Command::Man { out: Some(out) } => clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &out)
            .with_context(|| format!("cannot write the man pages into {}", out.display())),
        Command::Init { data, public_url } => {
            let initialised = ccfleet_server::init(&data, public_url.as_str(), ADMIN_LIFETIME)?;
            report_init(&data, &initialised);
            Ok(())
        }
        Command::Run {
            data,
            listen,
            server_names,
            public_url,
            metrics_listen,
            admin_listen,
            host_certificate_lifetime,
            heartbeat_interval,
            heartbeat_timeout,
            operation_quota,
            operation_retention,
            audit_retention,
            audit_max_entries,
            limits,
            notify,
        } => {
            let notify = usage(notify.config())?;
            usage(check_run_flags(
                &limits,
                metrics_listen,
                (heartbeat_interval, heartbeat_timeout),
                host_certificate_lifetime,
            ))?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(listen))
                .with_context(|| format!("cannot listen on {listen}"))?;
            let address = listener.local_addr()?;
            // Initialised after binding, so that a credential made for port 0
            // names the real port. The store is opened here, once for the
            // whole process and off the async runtime, and handed to `serve`.
            let public_url = public_url.map_or_else(|| format!("https://{address}"), String::from);
            let store = ccfleet_server::open_store(&data)?;
            let initialised = ccfleet_server::init_store(&store, &data, &public_url, ADMIN_LIFETIME)?;
            if initialised.created || initialised.admin_credential.is_some() {
                report_init(&data, &initialised);
            }
            runtime.block_on(async move {
                let metrics_listener = match metrics_listen {
                    Some(metrics_address) => {
                        let metrics_listener = tokio::net::TcpListener::bind(metrics_address)
                            .await
                            .with_context(|| format!("cannot serve metrics on {metrics_address}"))?;
                        // Printed before the "listening on" line, which is last.
                        println!("metrics on {}", metrics_listener.local_addr()?);
                        Some(metrics_listener)
                    }
                    None => None,
                };
                let admin_listener = match admin_listen {
                    Some(admin_address) => {
                        let admin_listener = tokio::net::TcpListener::bind(admin_address)
                            .await
                            .with_context(|| format!("cannot listen for admins on {admin_address}"))?;
                        println!("admin on {}", admin_listener.local_addr()?);
                        Some(admin_listener)
                    }
                    None => None,
                };
                let mut config = ccfleet_server::ServerConfig::new(data);
                config.heartbeat_interval = heartbeat_interval;
                config.heartbeat_timeout = heartbeat_timeout;
                config.host_certificate_lifetime = host_certificate_lifetime;
                config.operation_quota = operation_quota;
                config.operation_retention = operation_retention;
                config.audit_retention = Duration::from_secs(u64::from(audit_retention) * 24 * 3600);
                config.audit_max_entries = audit_max_entries as usize;
                config.shutdown_timeout = limits.shutdown_timeout;
                config.max_connections = limits.max_connections.map(|value| value as usize);
                config.max_handshakes = limits.max_handshakes.map(|value| value as usize);
                config.handshakes_per_source = limits.handshakes_per_source.map(|value| value as usize);
                config.handshake_timeout = limits.handshake_timeout;
                config.idle_timeout = limits.idle_timeout;
                config.keepalive_interval = limits.keepalive_interval;
                config.keepalive_timeout = limits.keepalive_timeout;
                config.max_concurrent_streams = limits.max_concurrent_streams;
                config.store_stall_threshold = limits.store_stall_threshold;
                config.group_commit.window = limits.commit_window;
                config.server_names.extend(server_names);
                config.notify = notify;
                let listeners = ccfleet_server::Listeners {
                    main: listener,
                    metrics: metrics_listener,
                    admin: admin_listener,
                };
                ccfleet_server::serve(listeners, store, config, shutdown_signal(), move || ready(address)).await
            })
        }
    }
}

/// The checks of `run`'s flags that clap cannot make alone: how values relate
/// to each other, and the metrics address.
fn check_run_flags(
    limits: &Limits,
    metrics_listen: Option<SocketAddr>,
    (heartbeat_interval, heartbeat_timeout): (Duration, Duration),
    host_certificate_lifetime: Duration,
) -> anyhow::Result<()> {
    if limits.idle_timeout <= limits.keepalive_interval {
        anyhow::bail!(
            "--idle-timeout ({:?}) must be longer than --keepalive-interval ({:?}), or idle but live clients are cut",
            limits.idle_timeout,
            limits.keepalive_interval
        );
    }
    if let Some(address) = metrics_listen {
        ccfleet_server::metrics::check_address(address)?;
    }
    if heartbeat_timeout <= heartbeat_interval {
        anyhow::bail!("--heartbeat-timeout ({heartbeat_timeout:?}) must be longer than --heartbeat-interval ({heartbeat_interval:?})");
    }
    if limits.commit_window > Duration::from_secs(60) {
        anyhow::bail!("--commit-window must be at most 60s: events wait that long for their acknowledgement");
    }
    if host_certificate_lifetime < Duration::from_secs(3) {
        anyhow::bail!("--host-certificate-lifetime must be at least 3s");
    }
    Ok(())
}

/// Called by `serve` once the server can answer (store open, rollouts
/// resumed, services built): prints the address, which tests and scripts
/// read (nothing is printed on stdout after it), and tells systemd
/// (`Type=notify`) that the server is ready. Nothing is sent when
/// `NOTIFY_SOCKET` is unset.
fn ready(address: std::net::SocketAddr) {
    println!("listening on {address}");
    if let Err(error) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(%error, "cannot tell systemd that the server is ready");
    }
}

const ADMIN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Tells the operator what `init` made; on stderr, so that stdout stays
/// machine-readable (`listening on ADDR`).
fn report_init(data: &std::path::Path, initialised: &ccfleet_server::Initialised) {
    match &initialised.admin_credential {
        Some(credential) => eprintln!(
            "initialised {}: CA fingerprint {}\nfirst admin credential: {} \
             (copy it to ~/.config/ccfleet/credentials.toml, or pass --credentials)",
            data.display(),
            initialised.ca_fingerprint,
            credential.display()
        ),
        None => eprintln!(
            "{} is already initialised (CA fingerprint {})",
            data.display(),
            initialised.ca_fingerprint
        ),
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
    tracing::info!("stop signal received");
}
