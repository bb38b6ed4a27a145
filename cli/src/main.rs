//! `ccfleet`: the operator's command line over the server's Admin API.

mod exit;
mod output;
mod settings;

use std::path::PathBuf;
use std::time::Duration;

use ccfleet_proto::pb::{self, admin_client::AdminClient};
use ccfleet_proto::{RecipeName, MAX_MESSAGE_BYTES};
use clap::{Parser, Subcommand};
use tonic::transport::{Channel, Endpoint};

use crate::exit::Failure;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected error (bad config file, server-side failure)
  2  usage error (unknown flag, invalid argument)
  3  the server is unreachable
  4  the server refused the request (invalid input, not found, not allowed)
  5  the server does not support the request (older server version)";

#[derive(Parser)]
#[command(name = "ccfleet", version, about = "Operate a fleet of Co-op Cloud hosts", after_help = EXIT_CODES)]
struct Cli {
    /// Server URL [default: config file `server`, else http://127.0.0.1:7443].
    #[arg(long, global = true, env = "CCFLEET_SERVER")]
    server: Option<String>,
    /// Config file [default: ~/.config/ccfleet/config.toml].
    #[arg(long, global = true, env = "CCFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
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
}

fn main() {
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
    let config_path = cli.config.clone().or_else(settings::default_config_path);
    let config = match &config_path {
        Some(path) => settings::load_config(path).map_err(|error| Failure::Unexpected(format!("{error:#}")))?,
        None => settings::ConfigFile::default(),
    };
    let url = settings::server_url(cli.server.clone(), &config).map_err(|error| Failure::Usage(error.to_string()))?;
    let mut client = connect(&url).await?;
    let failure = |status| Failure::from_status(&url, status);
    let text = match cli.command {
        Command::Hosts => {
            let response = client
                .list_hosts(pb::ListHostsRequest {})
                .await
                .map_err(failure)?
                .into_inner();
            let hosts: Vec<_> = response.hosts.iter().map(output::host).collect();
            render(cli.json, &hosts, || output::hosts_table(&hosts))
        }
        Command::Apps { recipe } => {
            let request = pb::ListAppsRequest {
                recipe: recipe.map(String::from).unwrap_or_default(),
            };
            let response = client.list_apps(request).await.map_err(failure)?.into_inner();
            let apps: Vec<_> = response.apps.iter().map(output::app).collect();
            render(cli.json, &apps, || output::apps_table(&apps))
        }
        Command::Versions { recipe } => {
            let request = pb::RecipeVersionsRequest {
                recipe: recipe.to_string(),
            };
            let response = client.recipe_versions(request).await.map_err(failure)?.into_inner();
            let versions = output::versions(&response);
            render(cli.json, &versions, || output::versions_table(&versions))
        }
    };
    Ok(text)
}

fn render<T: serde::Serialize>(json: bool, value: &T, table: impl FnOnce() -> String) -> String {
    if json {
        // Serialising our own plain structs cannot fail.
        serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
    } else {
        table() + "\n"
    }
}

async fn connect(url: &str) -> Result<AdminClient<Channel>, Failure> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|error| Failure::Usage(format!("invalid server address {url:?}: {error}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = endpoint.connect().await.map_err(|error| {
        Failure::Unreachable(format!(
            "cannot reach the ccfleet server at {url}: {}",
            exit::root_cause(&error)
        ))
    })?;
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}
