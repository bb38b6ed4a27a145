//! The ccfleet fleet server as a library: `serve` runs every service on an
//! already-bound listener until a shutdown future completes, so the binary and
//! the tests start it the same way.
//!
//! (Just over 600 lines: `serve` wires every service, listener and background
//! task in one place, with the configuration it reads.)

pub mod api;
pub mod auth;
pub mod edge;
pub mod fleet;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod rollout;
pub mod store;
mod tasks;

#[cfg(test)]
mod serve_tests;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ccfleet_proto::pb::{admin_server::AdminServer, agent_server::AgentServer, enrollment_server::EnrollmentServer};
use ccfleet_proto::MAX_MESSAGE_BYTES;
use tonic::service::interceptor::InterceptedService;

use crate::auth::ca::CertificateAuthority;
use crate::auth::Revocations;
use tokio::net::TcpListener;

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
    /// DNS names and IP addresses the server's certificate is made for (it is
    /// made anew at every start; clients pin the CA, not this certificate).
    pub server_names: Vec<String>,
    /// Lifetime of host certificates; agents renew at two thirds of it.
    pub host_certificate_lifetime: Duration,
    /// Lifetime of admin certificates.
    pub admin_certificate_lifetime: Duration,
    /// Operation records kept per host; the oldest beyond it are pruned.
    pub operation_quota: usize,
    /// Operation records older than this are pruned (at start and hourly).
    pub operation_retention: Duration,
    /// Audit entries are pruned past this age (hourly); at most `audit_max_entries` are kept,
    /// past which admin actions are refused.
    pub audit_retention: Duration,
    pub audit_max_entries: usize,
    /// On shutdown, how long agent streams and other connections get to end
    /// before the server closes them and exits.
    pub shutdown_timeout: Duration,
    /// Connections past their TLS handshake open at once; `None` derives it
    /// from the file-descriptor limit (`edge::connection_cap`), after raising
    /// the soft limit.
    pub max_connections: Option<usize>,
    /// Connections in their TLS handshake at once; `None` derives it from
    /// the connection cap.
    pub max_handshakes: Option<usize>,
    /// Handshakes one source may hold at once; `None` derives it from
    /// `max_handshakes`.
    pub handshakes_per_source: Option<usize>,
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed (this is the
    /// HTTP/2 preface timeout too). Must exceed `keepalive_interval`.
    pub idle_timeout: Duration,
    /// The server pings a connection that has been quiet this long ...
    pub keepalive_interval: Duration,
    /// ... and closes it if the ping is not answered within this.
    pub keepalive_timeout: Duration,
    /// HTTP/2 streams (calls) one connection may have open at once; also the
    /// per-connection concurrency limit.
    pub max_concurrent_streams: u32,
    /// A store request running longer than this marks the server
    /// NOT_SERVING in gRPC health until it finishes.
    pub store_stall_threshold: Duration,
    /// Group commit of the agents' events: how long an event may wait for
    /// its flush, and how many wait at most.
    pub group_commit: store::GroupCommit,
    /// Webhooks, their signing secret and the notification queue's bounds.
    pub notify: notify::NotifyConfig,
}

/// Names every server certificate carries: the loopback names and this
/// machine's hostname.
pub fn default_server_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let hostname = ccfleet_proto::system_hostname();
    if hostname.parse::<ccfleet_proto::HostId>().is_ok() && !names.contains(&hostname) {
        names.push(hostname);
    }
    names
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            data_dir,
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            server_names: default_server_names(),
            host_certificate_lifetime: Duration::from_secs(7 * 24 * 3600),
            admin_certificate_lifetime: Duration::from_secs(365 * 24 * 3600),
            operation_quota: store::DEFAULT_OPERATION_QUOTA,
            operation_retention: Duration::from_secs(90 * 24 * 3600),
            audit_retention: Duration::from_secs(u64::from(store::DEFAULT_AUDIT_RETENTION_DAYS) * 24 * 3600),
            audit_max_entries: store::DEFAULT_AUDIT_MAX_ENTRIES,
            shutdown_timeout: Duration::from_secs(10),
            max_connections: None,
            max_handshakes: None,
            handshakes_per_source: None,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 32,
            store_stall_threshold: Duration::from_secs(10),
            group_commit: store::GroupCommit::default(),
            notify: notify::NotifyConfig::new(),
        }
    }
}

/// File in the state directory holding the first admin credential.
pub const FIRST_ADMIN_CREDENTIAL: &str = "admin-credential.toml";

/// What `init` did.
#[derive(Debug)]
pub struct Initialised {
    /// False when the state directory already held a CA.
    pub created: bool,
    /// Where a first admin credential was written, if one was: after a new
    /// CA, or when no valid admin certificate was recorded.
    pub admin_credential: Option<PathBuf>,
    pub ca_fingerprint: String,
}

/// Creates the state directory (owner-only), the database, the CA and a
/// first admin credential for `server_url`. Does nothing to a directory that
/// already holds a CA. For `ccfleet-server init`; `run` opens the store with
/// [`open_store`] and initialises it with [`init_store`], so that the
/// process opens it once (sled releases its directory lock a moment after a
/// drop, so opening it again at once could find it taken).
pub fn init(data_dir: &Path, server_url: &str, admin_lifetime: Duration) -> anyhow::Result<Initialised> {
    let store = open_store(data_dir)?;
    init_store(&store, data_dir, server_url, admin_lifetime)
}

/// Creates the state directory (owner-only) if needed and opens (or
/// creates) the database in it.
pub fn open_store(data_dir: &Path) -> anyhow::Result<store::Store> {
    create_private_dir(data_dir)?;
    store::Store::open(data_dir)
        .and_then(|store| store.flush().map(|()| store))
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))
}

/// [`init`] on a store already open: creates the CA and a first admin
/// credential when they are missing.
pub fn init_store(
    store: &store::Store,
    data_dir: &Path,
    server_url: &str,
    admin_lifetime: Duration,
) -> anyhow::Result<Initialised> {
    let created = !CertificateAuthority::exists(data_dir);
    let authority = if created {
        CertificateAuthority::create(data_dir).context("cannot create the CA")?
    } else {
        CertificateAuthority::load(data_dir)?
    };
    // A first admin credential is (re)issued whenever no valid admin
    // certificate is recorded: after a fresh CA, after an `init` that died
    // half-way, or to recover when every admin credential is lost, expired or
    // revoked (which needs access to this directory, i.e. the server itself).
    let now = model::now_millis();
    let has_admin = store.certificates()?.iter().any(|certificate| {
        certificate.kind == model::CertificateKind::Admin
            && certificate.revoked_at.is_none()
            && certificate.not_after > now
    });
    if has_admin {
        return Ok(Initialised {
            created,
            admin_credential: None,
            ca_fingerprint: authority.fingerprint(),
        });
    }
    let admin = auth::Identity::Admin("admin".parse().expect("a valid admin name"));
    let (issued, private_key) = authority.issue_client_certificate(&admin, admin_lifetime)?;
    let credential = ccfleet_proto::tls::Credential {
        server: server_url.to_owned(),
        ca_certificate: authority.certificate_pem().to_owned(),
        certificate: issued.certificate_pem.clone(),
        private_key,
    };
    let path = data_dir.join(FIRST_ADMIN_CREDENTIAL);
    auth::ca::write_secret_file(
        &path,
        &toml::to_string(&credential).context("cannot encode the credential")?,
    )?;
    store.record_certificate(&model::CertificateRecord {
        serial: issued.serial,
        kind: model::CertificateKind::Admin,
        identity: "admin".into(),
        issued_at: model::now_millis(),
        not_after: api::enrollment::millis(issued.not_after),
        revoked_at: None,
    })?;
    store.flush()?;
    Ok(Initialised {
        created,
        admin_credential: Some(path),
        ca_fingerprint: authority.fingerprint(),
    })
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

/// An enrolment carries a token, a host id, facts and a small CSR: 64 KiB
/// is generous, and a caller without a certificate gets no more.
const ENROLLMENT_MESSAGE_BYTES: usize = 64 * 1024;

/// The sockets `serve` answers on, bound by the caller.
pub struct Listeners {
    /// Agents, enrolment and admins (TLS).
    pub main: TcpListener,
    /// Prometheus metrics (plain HTTP, loopback only), if any.
    pub metrics: Option<TcpListener>,
    /// Admins only (TLS), if any.
    pub admin: Option<TcpListener>,
}

/// Serves the Agent and Admin services, gRPC health and reflection on
/// `listeners.main` until `shutdown` completes; the Admin service, health
/// and reflection also on `listeners.admin`, for admin certificates only, so
/// that `ccfleet` gets in while thousands of agents queue on the main one.
///
/// `store` is the one open of the database for the whole process (see
/// [`open_store`]); it moves to the store thread before anything reads it.
/// `ready` is called once the server can answer: store open, revocations
/// loaded, rollouts resumed, every service built and the listeners about to
/// be polled (they are bound, so connections made from then on queue until
/// they are accepted). `ccfleet-server run` prints `listening on` and tells
/// systemd it is ready there.
pub async fn serve(
    listeners: Listeners,
    store: store::Store,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce() + Send,
) -> anyhow::Result<()> {
    let Listeners {
        main: listener,
        metrics: metrics_listener,
        admin: admin_listener,
    } = listeners;
    ccfleet_proto::tls::install_crypto_provider();
    let local_address = listener.local_addr().context("listener has no local address")?;
    let authority = Arc::new(CertificateAuthority::load(&config.data_dir).with_context(|| {
        format!(
            "cannot load the CA from {} (run `ccfleet-server init` first)",
            config.data_dir.display()
        )
    })?);
    let mut store = store
        .with_operation_quota(config.operation_quota)
        .with_audit_max_entries(config.audit_max_entries);
    let destination_ids = config
        .notify
        .destinations
        .iter()
        .map(|destination| destination.id.clone());
    store
        .configure_notifications(destination_ids.collect(), config.notify.queue_limit)
        .with_context(|| format!("cannot set up the notification queue in {}", config.data_dir.display()))?;
    let store = StoreHandle::start_with(store, config.group_commit)
        .with_context(|| format!("cannot start the store thread for {}", config.data_dir.display()))?;
    let revocations = Revocations::new(store.read(|store| store.revoked_serials(model::now_millis())).await?);
    let fleet = Arc::new(Fleet::new(config.heartbeat_timeout));
    let rollouts = rollout::RolloutEngine::start(store.clone(), fleet.clone())
        .await
        .context("cannot resume the stored rollouts")?;
    let (server_certificate, server_key) = authority.issue_server_certificate(&config.server_names)?;
    let acceptor = edge::tls_acceptor(
        &server_certificate,
        &server_key,
        authority.certificate_pem(),
        edge::ClientAuth::Optional,
    )?;
    let admin_acceptor = edge::tls_acceptor(
        &server_certificate,
        &server_key,
        authority.certificate_pem(),
        edge::ClientAuth::AdminRequired,
    )?;
    let limits = connection_limits(&config);
    tracing::info!(
        max_connections = limits.max_connections,
        admin_reserve = limits.admin_reserve,
        max_handshakes = limits.max_handshakes,
        handshakes_per_source = limits.handshakes_per_source,
        "connection limits"
    );

    let sweeper = tokio::spawn(tasks::expire_silent_sessions(fleet.clone()));
    let pruner = tokio::spawn(tasks::prune_old_operations(store.clone(), config.operation_retention));
    let record_pruner = tokio::spawn(tasks::prune_audit_and_alerts(store.clone(), config.audit_retention));
    let metrics = Arc::new(metrics::Metrics::default());
    // Webhook delivery runs on tasks of its own: a slow or dead receiver
    // holds up nothing but its own queue.
    let deliveries = notify::deliver::start(&config.notify, &store, &metrics)?;
    let incoming = edge::incoming(listener, acceptor.clone(), limits, metrics.clone());
    let admin_limits = edge::ConnectionLimits {
        max_connections: ADMIN_LISTENER_CONNECTIONS,
        admin_reserve: 1,
        max_handshakes: ADMIN_LISTENER_HANDSHAKES,
        handshakes_per_source: edge::handshakes_per_source_for(ADMIN_LISTENER_HANDSHAKES),
        admins_only: true,
        ..connection_limits(&config)
    };
    let metrics_task = match metrics_listener {
        Some(metrics_listener) => {
            metrics::check_address(metrics_listener.local_addr()?)?;
            Some(tokio::spawn(metrics::serve(
                metrics_listener,
                metrics.clone(),
                fleet.clone(),
                store.clone(),
            )))
        }
        None => None,
    };

    let agent = AgentServer::new(api::agent::AgentService {
        store: store.clone(),
        fleet: fleet.clone(),
        heartbeat_interval: config.heartbeat_interval,
        hello_timeout: config.hello_timeout,
        authority: authority.clone(),
        host_certificate_lifetime: config.host_certificate_lifetime,
        metrics: metrics.clone(),
        rollouts: rollouts.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let agent = InterceptedService::new(agent, auth::require_host(revocations.clone()));
    let admin = AdminServer::new(api::admin::AdminService {
        store: store.clone(),
        fleet: fleet.clone(),
        authority: authority.clone(),
        revocations: revocations.clone(),
        admin_certificate_lifetime: config.admin_certificate_lifetime,
        rollouts: rollouts.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(ccfleet_proto::MAX_ADMIN_RESPONSE_BYTES);
    let admin = InterceptedService::new(admin, auth::require_admin(revocations.clone()));
    let enrollment = EnrollmentServer::new(api::enrollment::EnrollmentService {
        store: store.clone(),
        authority: authority.clone(),
        host_certificate_lifetime: config.host_certificate_lifetime,
        metrics: metrics.clone(),
    })
    .max_decoding_message_size(ENROLLMENT_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServer<api::agent::AgentService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<api::admin::AdminService>>()
        .await;
    health_reporter
        .set_serving::<EnrollmentServer<api::enrollment::EnrollmentService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ccfleet_proto::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the reflection service")
            .map(|reflection| InterceptedService::new(reflection, auth::require_admin(revocations.clone())))
    };

    // The admin listener: Admin, health and reflection only, on a thread and
    // runtime of its own, so that its accepts, handshakes and calls never
    // queue behind the agents' tasks (a reconnect storm fills the main
    // runtime with thousands of handshakes). It stops accepting when the
    // shutdown starts, like the main listener.
    let (admin_stop, admin_stopped) = tokio::sync::watch::channel(false);
    let admin_thread = match admin_listener {
        Some(admin_listener) => {
            let admin_listener = admin_listener
                .into_std()
                .context("cannot hand the admin listener to its thread")?;
            let mut admin_stopped = admin_stopped.clone();
            let (acceptor, metrics) = (admin_acceptor, metrics.clone());
            let router = grpc_server(&config)
                .add_service(health.clone())
                .add_service(reflection()?)
                .add_service(admin.clone());
            let thread = std::thread::Builder::new()
                .name("ccfleet-admin".into())
                .spawn(move || {
                    let served = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start the admin listener's runtime")
                        .and_then(|runtime| {
                            runtime.block_on(async move {
                                let listener = TcpListener::from_std(admin_listener)?;
                                let incoming = edge::incoming(listener, acceptor, admin_limits, metrics);
                                router
                                    .serve_with_incoming_shutdown(incoming, async move {
                                        let _ = admin_stopped.wait_for(|stopped| *stopped).await;
                                    })
                                    .await
                                    .context("the admin listener failed")
                            })
                        });
                    // Nobody joins this thread: say what went wrong here.
                    if let Err(error) = served {
                        tracing::error!(error = %format!("{error:#}"), "the admin listener stopped");
                    }
                })
                .context("cannot start the admin listener's thread")?;
            Some(thread)
        }
        None => None,
    };
    let reflection = reflection()?;

    let watchdog = tokio::spawn(tasks::watch_store(
        store.clone(),
        health_reporter.clone(),
        metrics.clone(),
        config.store_stall_threshold,
    ));

    // Shutdown: stop accepting (tonic), tell every agent stream to end (the
    // agents reconnect with backoff), let connections drain, then write
    // last-seen times and close the store, all within the shutdown timeout.
    // A store that failed (sled refuses every write after an I/O error such
    // as a full disk) stops the server the same way, and `serve` returns the
    // error, so that the service manager starts it again (NixOS: Restart=
    // on-failure): a fresh open recovers, and what was not flushed was never
    // acknowledged, so agents re-send it.
    let started = Arc::new(tokio::sync::Notify::new());
    let (closed_hosts_sender, closed_hosts) = tokio::sync::oneshot::channel();
    let store_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let signal = {
        let (fleet, started, store, store_failure) =
            (fleet.clone(), started.clone(), store.clone(), store_failure.clone());
        async move {
            tokio::select! {
                () = shutdown => {}
                message = store.failed() => {
                    tracing::error!(
                        error = %message,
                        "the store cannot write: stopping; start the server again once the cause (a full disk?) is fixed; \
                         nothing acknowledged is lost"
                    );
                    *store_failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(message);
                }
            }
            let _ = admin_stop.send(true);
            let hosts = fleet.close_all();
            tracing::info!(streams = hosts.len(), "shutting down: closing agent streams");
            let _ = closed_hosts_sender.send(hosts);
            started.notify_one();
        }
    };
    tracing::info!(address = %local_address, data = %config.data_dir.display(), "serving");
    let server = grpc_server(&config)
        .add_service(health)
        .add_service(reflection)
        .add_service(agent)
        .add_service(admin)
        .add_service(enrollment)
        .serve_with_incoming_shutdown(incoming, signal);
    // The shutdown timeout is shared: half for connections to drain, 15 %
    // each to write last-seen times and to close the store, and a fifth
    // left for the process to drop what remains and exit.
    let drain = config.shutdown_timeout.mul_f32(0.5);
    let store_budget = config.shutdown_timeout.mul_f32(0.15);
    ready();
    let result = tokio::select! {
        result = server => result.context("gRPC server failed"),
        () = async {
            started.notified().await;
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!(?drain, "connections still open at the shutdown timeout: closing them");
            Ok(())
        }
    };
    // The admin listener stopped accepting with the shutdown signal; its
    // thread ends with its last connection, or with the process.
    drop(admin_thread);
    sweeper.abort();
    pruner.abort();
    record_pruner.abort();
    watchdog.abort();
    for delivery in deliveries {
        delivery.abort();
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Ok(hosts) = closed_hosts.await {
        let writer = store.clone();
        let written = tokio::time::timeout(store_budget, async move {
            let now = model::now_millis();
            writer
                .write(move |store| {
                    for host_id in &hosts {
                        if let Some(mut host) = store.host(host_id)? {
                            host.last_seen = host.last_seen.max(now);
                            store.put_host(&host)?;
                        }
                    }
                    Ok(())
                })
                .await
        })
        .await;
        match written {
            Ok(Ok(())) => tracing::info!("store flushed; stopped"),
            Ok(Err(error)) => tracing::error!(%error, "cannot write last-seen times at shutdown"),
            Err(_) => tracing::error!("the store did not finish within the shutdown timeout"),
        }
    }
    // Bounded too: a store stuck in sled must not keep the process alive.
    if tokio::time::timeout(store_budget, store.close()).await.is_err() {
        tracing::error!("the store thread did not stop; exiting without it");
    }
    let failure = store_failure
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(message) = failure {
        anyhow::bail!(
            "the store in {} failed to write ({message}); the server stopped: start it again once the cause (a full disk?) is fixed",
            config.data_dir.display()
        );
    }
    result
}

/// Answers as the edge rewrites them (`edge::decode_errors_are_invalid_arguments`).
type DecodeErrorLayer = tower::util::MapResponseLayer<
    fn(tonic::codegen::http::Response<tonic::body::Body>) -> tonic::codegen::http::Response<tonic::body::Body>,
>;

/// The tonic server every listener runs: the HTTP/2 limits of the
/// configuration, and decode errors answered as INVALID_ARGUMENT.
fn grpc_server(
    config: &ServerConfig,
) -> tonic::transport::Server<tower::layer::util::Stack<DecodeErrorLayer, tower::layer::util::Identity>> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .concurrency_limit_per_connection(config.max_concurrent_streams as usize)
        .http2_max_header_list_size(Some(16 * 1024))
        .layer(tower::util::MapResponseLayer::new(
            edge::decode_errors_are_invalid_arguments::<tonic::body::Body> as fn(_) -> _,
        ))
}

/// The edge's limits from the configuration, deriving the connection cap
/// from the (raised) file-descriptor limit unless it was given.
fn connection_limits(config: &ServerConfig) -> edge::ConnectionLimits {
    let cap = match config.max_connections {
        Some(max_connections) => {
            let max_connections = max_connections.max(2);
            edge::ConnectionCap {
                max_connections,
                admin_reserve: (max_connections / 20).clamp(1, 64),
                max_handshakes: edge::handshakes_for(max_connections),
            }
        }
        None => edge::connection_cap(edge::raise_fd_limit()),
    };
    let max_handshakes = config.max_handshakes.unwrap_or(cap.max_handshakes).max(1);
    edge::ConnectionLimits {
        max_connections: cap.max_connections,
        admin_reserve: cap.admin_reserve,
        max_handshakes,
        handshakes_per_source: config
            .handshakes_per_source
            .unwrap_or_else(|| edge::handshakes_per_source_for(max_handshakes))
            .clamp(1, max_handshakes),
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
        admins_only: false,
    }
}

/// Connections the admin listener takes at once: admins only, so a few.
const ADMIN_LISTENER_CONNECTIONS: usize = 64;

/// Handshakes the admin listener runs at once (8 per source): a flood of
/// connections that never finish one is pushed out by each newcomer.
const ADMIN_LISTENER_HANDSHAKES: usize = 64;
