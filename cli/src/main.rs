//! `ccfleet`: the operator's command line over the server's Admin API.

mod exit;
mod output;
mod rollout;
mod settings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ccfleet_proto::pb::{self, admin_client::AdminClient};
use ccfleet_proto::tls::Credential;
use ccfleet_proto::{AdminName, Domain, HostId, RecipeName, MAX_MESSAGE_BYTES};
use clap::{Parser, Subcommand};
use tonic::transport::Channel;

use crate::exit::Failure;
use crate::output::render;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected error (server-side failure, cannot write a file)
  2  usage error (unknown flag, invalid argument, unusable config or credential file)
  3  the server is unreachable (or the TLS handshake failed)
  4  the server refused the request (invalid input, not found, not allowed)
  5  the server does not support the request (older server version)
  6  --follow: the rollout halted
  7  --follow: the rollout was aborted
  8  upgrade: no host had anything to do (each skipped or already at the target; the reasons are printed)

An empty listing is a success (0); the table says what to do next (for example
`ccfleet hosts` on a new fleet, or a recipe no host runs).";

#[derive(Parser)]
#[command(name = "ccfleet", version, about = "Operate a fleet of Co-op Cloud hosts", after_help = EXIT_CODES)]
struct Cli {
    /// Server URL [default: config file, else the credential's, else https://127.0.0.1:7443].
    #[arg(long, global = true, help_heading = "Global options", env = "CCFLEET_SERVER")]
    server: Option<String>,
    /// Admin credential file [default: config file `credentials`, else ~/.config/ccfleet/credentials.toml].
    #[arg(long, global = true, help_heading = "Global options", env = "CCFLEET_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Config file [default: ~/.config/ccfleet/config.toml].
    #[arg(long, global = true, help_heading = "Global options", env = "CCFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Refuse an admin credential file that its group or others can read (else a warning).
    #[arg(long, global = true, help_heading = "Global options")]
    strict: bool,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    /// Items per request for listings the CLI pages through (hosts, apps,
    /// versions, alerts); 0 for the server's default. For tests and diagnosis.
    #[arg(long, global = true, default_value_t = 0, hide = true)]
    page_size: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every host with its status, agent version and app count.
    Hosts,
    /// List every app on every host, with observed and declared versions.
    Apps {
        /// Only apps of this recipe.
        #[arg(long)]
        recipe: Option<RecipeName>,
    },
    /// Show which hosts run which version of a recipe, newest first.
    Versions {
        /// The recipe, e.g. `ghost`.
        recipe: RecipeName,
    },
    /// List open alerts (failed, rolled-back and held upgrades), newest first;
    /// `ccfleet alerts ack ID` silences one.
    #[command(args_conflicts_with_subcommands = true)]
    Alerts {
        /// Only alerts of this host.
        #[arg(long)]
        host: Option<HostId>,
        /// Also acknowledged and recently resolved (7 days) alerts.
        #[arg(long)]
        all: bool,
        #[command(subcommand)]
        command: Option<AlertsCommand>,
    },
    /// List the operations hosts reported (reconciles, upgrades, rollbacks), newest first.
    Operations {
        /// Only operations of this host.
        #[arg(long)]
        host: Option<HostId>,
        /// Only operations on this app (its domain).
        #[arg(long)]
        app: Option<Domain>,
        /// At most this many (1 to 10000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Manage hosts.
    #[command(subcommand)]
    Host(HostCommand),
    /// Manage join tokens for enrolling hosts.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage admin credentials.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Upgrade a recipe across the fleet in waves: canary, then batches, halting on failures.
    #[command(after_help = rollout::UPGRADE_HELP)]
    Upgrade(rollout::UpgradeArgs),
    /// List, show, follow, pause, resume, promote or abort rollouts.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Show the audit log of admin actions (who, what, when), newest first.
    Audit(rollout::AuditArgs),
    /// Serve the fleet dashboard, a web view of the fleet, on this machine
    /// (loopback, a per-run token in the printed address) until Ctrl-C.
    Dashboard(ccfleet::dashboard::DashboardArgs),
    /// Print a shell completion script, e.g. `ccfleet completions bash > /etc/bash_completion.d/ccfleet`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `ccfleet man > ccfleet.1`; with --out, write one page per
    /// subcommand (ccfleet.1, ccfleet-upgrade.1, ccfleet-rollout-show.1, ...) into a directory.
    Man {
        /// Directory for the pages.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// Acknowledge an alert: it leaves `ccfleet alerts` and sends no
    /// notification until it expires or its app fails again (another
    /// operation, another target or a higher severity); the app's next
    /// success still resolves it. Recorded in the audit log.
    Ack {
        /// The alert's id (the ID column of `ccfleet alerts`).
        id: String,
        /// Why it may stay quiet (required; in the audit log).
        #[arg(long)]
        reason: String,
        /// For how long, e.g. 24h or 7d (at most 90 days) [default: until the app fails again or recovers].
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Forget a host and revoke its certificates; its next connection is refused.
    Remove {
        /// The host id.
        host_id: HostId,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token and print it (shown once; the server keeps a hash).
    Create {
        /// How long the token can be used, e.g. 1h, 2d (at most 31 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many hosts may enrol with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Label for hosts enrolled with this token, as key=value (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List join tokens (ids, expiry, uses left; never the secrets).
    Ls,
    /// Revoke a join token by id.
    Revoke {
        /// The token id (16 hex digits, as in `token ls`).
        id: String,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Make a credential for another admin: a key generated here, signed by the server.
    Issue {
        /// The admin's name (lowercase letters, digits, '-' and '.').
        name: AdminName,
        /// Where to write the credential (created owner-only; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke every credential of an admin.
    Revoke {
        /// The admin's name.
        name: AdminName,
    },
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("label {text:?} must be KEY=VALUE"))?;
    Ok((key.to_owned(), value.to_owned()))
}

fn main() {
    ccfleet_proto::tls::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => Failure::Unexpected(format!("cannot start the async runtime: {error}")).exit(),
    };
    match runtime.block_on(run(cli)) {
        Ok(text) => print!("{text}"),
        Err(failure) => failure.exit(),
    }
}

async fn run(cli: Cli) -> Result<String, Failure> {
    // These two need neither a server nor a credential.
    match &cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                *shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "ccfleet",
                &mut script,
            );
            return Ok(String::from_utf8_lossy(&script).into_owned());
        }
        Command::Man { out: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut page)
                .map_err(|error| Failure::Unexpected(format!("cannot render the man page: {error}")))?;
            return Ok(String::from_utf8_lossy(&page).into_owned());
        }
        Command::Man { out: Some(out) } => {
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), out).map_err(|error| {
                Failure::Unexpected(format!("cannot write the man pages into {}: {error}", out.display()))
            })?;
            return Ok(String::new());
        }
        _ => {}
    }
    let usage = |error: anyhow::Error| Failure::Usage(format!("{error:#}"));
    let config_path = cli.config.clone().or_else(settings::default_config_path);
    let config = match &config_path {
        Some(path) => settings::load_config(path).map_err(usage)?,
        None => settings::ConfigFile::default(),
    };
    let settings::LoadedCredential {
        path: credential_path,
        credential,
        warnings,
    } = settings::load_credential(cli.credentials.clone(), &config, cli.strict).map_err(usage)?;
    for warning in warnings {
        eprintln!("warning: {}", output::printable(&warning));
    }
    credential
        .check()
        .map_err(|error| Failure::Usage(format!("unusable credential {}: {error}", credential_path.display())))?;
    let url = settings::server_url(cli.server.clone(), &config, Some(&credential.server)).map_err(usage)?;
    let mut client = connect(&url, &credential).await?;
    let failure = |status| Failure::from_status(&url, status);
    let json = cli.json;
    let text = match cli.command {
        // Listings arrive in pages; the CLI follows them to the end.
        Command::Hosts => {
            let mut hosts = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = pb::ListHostsRequest {
                    page_size: cli.page_size,
                    page_token,
                };
                let response = client.list_hosts(request).await.map_err(failure)?.into_inner();
                hosts.extend(response.hosts.iter().map(output::host));
                page_token = response.next_page_token;
                if page_token.is_empty() {
                    break;
                }
            }
            render(json, &hosts, || output::hosts_table(&hosts))
        }
        Command::Apps { recipe } => {
            let mut apps = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = pb::ListAppsRequest {
                    recipe: recipe.as_ref().map(ToString::to_string).unwrap_or_default(),
                    page_size: cli.page_size,
                    page_token,
                };
                let response = client.list_apps(request).await.map_err(failure)?.into_inner();
                apps.extend(response.apps.iter().map(output::app));
                page_token = response.next_page_token;
                if page_token.is_empty() {
                    break;
                }
            }
            match recipe {
                Some(recipe) if apps.is_empty() && !json => {
                    let known = known_recipes(&mut client, cli.page_size, failure).await?;
                    output::no_such_recipe(recipe.as_str(), &known) + "\n"
                }
                _ => render(json, &apps, || output::apps_table(&apps)),
            }
        }
        Command::Versions { recipe } => {
            let mut all = pb::RecipeVersionsResponse::default();
            let mut page_token = String::new();
            loop {
                let request = pb::RecipeVersionsRequest {
                    recipe: recipe.to_string(),
                    page_size: cli.page_size,
                    page_token,
                };
                let response = client.recipe_versions(request).await.map_err(failure)?.into_inner();
                page_token = response.next_page_token.clone();
                output::append_version_page(&mut all, response);
                if page_token.is_empty() {
                    break;
                }
            }
            let versions = output::versions(&all);
            if versions.versions.is_empty() && !json {
                let known = known_recipes(&mut client, cli.page_size, failure).await?;
                output::no_such_recipe(recipe.as_str(), &known) + "\n"
            } else {
                render(json, &versions, || output::versions_table(&versions))
            }
        }
        Command::Alerts {
            command: Some(AlertsCommand::Ack { id, reason, duration }),
            ..
        } => {
            let request = pb::AcknowledgeAlertRequest {
                id,
                reason,
                for_seconds: duration.map_or(0, |duration| duration.as_secs().max(1)),
            };
            let alert = output::alert(&client.acknowledge_alert(request).await.map_err(failure)?.into_inner());
            render(json, &alert, || {
                format!(
                    "acknowledged alert {} ({} on {}) until {}",
                    alert.id,
                    alert.domain,
                    alert.host_id,
                    alert
                        .acknowledged_until
                        .as_deref()
                        .unwrap_or("the app fails again or recovers")
                )
            })
        }
        Command::Alerts {
            host,
            all,
            command: None,
        } => {
            let mut alerts = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = pb::ListAlertsRequest {
                    host_id: host.as_ref().map(ToString::to_string).unwrap_or_default(),
                    all,
                    page_size: cli.page_size,
                    page_token,
                };
                let response = client.list_alerts(request).await.map_err(failure)?.into_inner();
                alerts.extend(response.alerts);
                page_token = response.next_page_token;
                if page_token.is_empty() {
                    break;
                }
            }
            output::sort_alerts(&mut alerts);
            let alerts: Vec<_> = alerts.iter().map(output::alert).collect();
            render(json, &alerts, || output::alerts_table(&alerts, all))
        }
        Command::Operations { host, app, limit } => {
            let request = pb::ListOperationsRequest {
                host_id: host.map(String::from).unwrap_or_default(),
                domain: app.map(|domain| domain.to_string()).unwrap_or_default(),
                limit,
            };
            let response = client.list_operations(request).await.map_err(failure)?.into_inner();
            let operations: Vec<_> = response.operations.iter().map(output::operation).collect();
            render(json, &operations, || output::operations_table(&operations))
        }
        Command::Host(HostCommand::Remove { host_id }) => {
            let request = pb::RemoveHostRequest {
                host_id: host_id.to_string(),
            };
            let response = client.remove_host(request).await.map_err(failure)?.into_inner();
            let result =
                serde_json::json!({"host_id": host_id.as_str(), "revoked_certificates": response.revoked_certificates});
            render(json, &result, || {
                format!(
                    "removed host {host_id}; revoked {} certificate(s)",
                    response.revoked_certificates
                )
            })
        }
        Command::Token(TokenCommand::Create { ttl, uses, labels }) => {
            let request = pb::CreateJoinTokenRequest {
                ttl_seconds: ttl.as_secs().max(1),
                uses,
                labels: labels.into_iter().collect::<HashMap<_, _>>(),
            };
            let response = client.create_join_token(request).await.map_err(failure)?.into_inner();
            let info = output::token(&response.info.unwrap_or_default());
            let result = serde_json::json!({"token": response.token, "info": info});
            // The token alone on stdout, so `ccfleet token create > token` works.
            render(json, &result, || response.token.clone())
        }
        Command::Token(TokenCommand::Ls) => {
            let response = client
                .list_join_tokens(pb::ListJoinTokensRequest {})
                .await
                .map_err(failure)?
                .into_inner();
            let tokens: Vec<_> = response.tokens.iter().map(output::token).collect();
            render(json, &tokens, || output::tokens_table(&tokens))
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            client
                .revoke_join_token(pb::RevokeJoinTokenRequest { id: id.clone() })
                .await
                .map_err(failure)?;
            render(json, &serde_json::json!({"revoked": id}), || {
                format!("revoked join token {id}")
            })
        }
        Command::Admin(AdminCommand::Issue { name, out }) => {
            issue_admin(&mut client, &url, &name, &out, failure).await?;
            render(
                json,
                &serde_json::json!({"name": name.as_str(), "credential": out}),
                || format!("wrote the credential of admin {name} to {}", out.display()),
            )
        }
        Command::Upgrade(args) => rollout::upgrade(&mut client, args, json, failure).await?,
        Command::Rollout(command) => rollout::rollout(&mut client, command, json, failure).await?,
        Command::Audit(args) => rollout::audit(&mut client, args, json, failure).await?,
        Command::Dashboard(args) => {
            ccfleet::dashboard::check_listen(args.listen, args.allow_remote)
                .map_err(|error| Failure::Usage(error.to_string()))?;
            ccfleet::dashboard::run(client, url.clone(), args)
                .await
                .map_err(|error| Failure::Unexpected(format!("{error:#}")))?;
            String::new()
        }
        Command::Completions { .. } | Command::Man { .. } => unreachable!("answered before connecting"),
        Command::Admin(AdminCommand::Revoke { name }) => {
            let request = pb::RevokeAdminCredentialRequest { name: name.to_string() };
            let response = client
                .revoke_admin_credential(request)
                .await
                .map_err(failure)?
                .into_inner();
            render(
                json,
                &serde_json::json!({"name": name.as_str(), "revoked": response.revoked}),
                || format!("revoked {} credential(s) of admin {name}", response.revoked),
            )
        }
    };
    Ok(text)
}

/// The recipes some host runs, for the hint when a listing names another.
async fn known_recipes(
    client: &mut AdminClient<Channel>,
    page_size: u32,
    failure: impl Fn(tonic::Status) -> Failure,
) -> Result<std::collections::BTreeSet<String>, Failure> {
    let mut recipes = std::collections::BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListAppsRequest {
            recipe: String::new(),
            page_size,
            page_token,
        };
        let response = client.list_apps(request).await.map_err(&failure)?.into_inner();
        recipes.extend(
            response
                .apps
                .into_iter()
                .filter_map(|app| app.app)
                .map(|app| app.recipe),
        );
        page_token = response.next_page_token;
        if page_token.is_empty() {
            return Ok(recipes);
        }
    }
}

async fn issue_admin(
    client: &mut AdminClient<Channel>,
    url: &str,
    name: &AdminName,
    out: &Path,
    failure: impl Fn(tonic::Status) -> Failure,
) -> Result<(), Failure> {
    if out.exists() {
        return Err(Failure::Usage(format!(
            "{} already exists; choose another --out",
            out.display()
        )));
    }
    let generated = ccfleet_proto::tls::generate_key_and_request(name.as_str())
        .map_err(|error| Failure::Unexpected(error.to_string()))?;
    let request = pb::IssueAdminCredentialRequest {
        name: name.to_string(),
        csr_pem: generated.csr_pem,
    };
    let response = client
        .issue_admin_credential(request)
        .await
        .map_err(failure)?
        .into_inner();
    let credential = Credential {
        server: url.to_owned(),
        ca_certificate: response.ca_certificate_pem,
        certificate: response.certificate_pem,
        private_key: generated.private_key_pem,
    };
    let text = toml::to_string(&credential).map_err(|error| Failure::Unexpected(error.to_string()))?;
    write_private(out, &text).map_err(|error| Failure::Unexpected(format!("cannot write {}: {error}", out.display())))
}

/// Owner-only, never replacing an existing file, and whole or absent after a crash.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    ccfleet_proto::fsutil::write_new_atomic(path, text.as_bytes(), 0o600)
}

async fn connect(url: &str, credential: &Credential) -> Result<AdminClient<Channel>, Failure> {
    let endpoint = ccfleet_proto::tls::mtls_endpoint(url, credential)
        .map_err(|error| Failure::Usage(error.to_string()))?
        .timeout(Duration::from_secs(30));
    let channel = endpoint.connect().await.map_err(|error| {
        Failure::Unreachable(format!(
            "cannot reach the ccfleet server at {url}: {}",
            exit::root_cause(&error)
        ))
    })?;
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(ccfleet_proto::MAX_ADMIN_RESPONSE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}
