//! The ccfleet fleet server as a library: `serve` runs every service on an
//! already-bound listener until a shutdown future completes, so the binary and
//! the tests start it the same way.

pub mod api;
pub mod fleet;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ccfleet_proto::pb::{admin_server::AdminServer, agent_server::AgentServer};
use ccfleet_proto::MAX_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::fleet::Fleet;
use crate::store::StoreHandle;

/// Everything `serve` needs besides the listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory holding the server's state (the sled database).
    pub data_dir: PathBuf,
    /// How often agents are asked to send heartbeats.
    pub heartbeat_interval: Duration,
    /// A host whose stream has been silent this long is shown offline and its
    /// stream is closed.
    pub heartbeat_timeout: Duration,
    /// How long a new agent stream may take to send its hello.
    pub hello_timeout: Duration,
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            data_dir,
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Creates the state directory (owner-only) and the database in it. Idempotent.
pub fn init(data_dir: &Path) -> anyhow::Result<()> {
    create_private_dir(data_dir)?;
    store::Store::open(data_dir)
        .and_then(|store| store.flush())
        .with_context(|| format!("cannot initialise the store in {}", data_dir.display()))?;
    Ok(())
}

fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create the data directory {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict the permissions of {}", path.display()))?;
    Ok(())
}

/// Refuses addresses other than loopback: until mutual TLS lands, the server
/// speaks plaintext gRPC, which must never leave the machine.
pub fn check_listen_address(address: SocketAddr) -> anyhow::Result<()> {
    if !address.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {address}: this server version speaks plaintext gRPC, which is only \
             allowed on a loopback address (127.0.0.1 or [::1])"
        );
    }
    Ok(())
}

/// Serves the Agent and Admin services, gRPC health and reflection on
/// `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local_address = listener.local_addr().context("listener has no local address")?;
    check_listen_address(local_address)?;
    init(&config.data_dir)?;
    let store = StoreHandle::open(&config.data_dir)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    let fleet = Arc::new(Fleet::new(config.heartbeat_timeout));

    let sweeper = tokio::spawn(expire_silent_sessions(fleet.clone()));

    let agent = AgentServer::new(api::agent::AgentService {
        store: store.clone(),
        fleet: fleet.clone(),
        heartbeat_interval: config.heartbeat_interval,
        hello_timeout: config.hello_timeout,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServer::new(api::admin::AdminService {
        store: store.clone(),
        fleet: fleet.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServer<api::agent::AgentService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<api::admin::AdminService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ccfleet_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;

    tracing::info!(address = %local_address, data = %config.data_dir.display(), "serving");
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health)
        .add_service(reflection)
        .add_service(agent)
        .add_service(admin)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .context("gRPC server failed");
    sweeper.abort();
    result
}

/// Closes streams of hosts that stopped sending heartbeats.
async fn expire_silent_sessions(fleet: Arc<Fleet>) {
    let period = (fleet.heartbeat_timeout() / 4).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for host_id in fleet.expire_silent() {
            tracing::warn!(host = %host_id, "heartbeat timeout: host is offline");
        }
    }
}
