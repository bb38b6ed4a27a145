//! The server's network edge: accepting TCP connections and completing TLS
//! before tonic sees them, with the limits that keep an unauthenticated
//! peer from locking everyone else out (SECURITY.md).
//!
//! - a connection cap derived from the process's file-descriptor limit, with
//!   a reserve that only admin certificates may use, and descriptors kept back
//!   for the store and the process itself;
//! - a TLS handshake deadline, and an idle deadline on every connection: a
//!   peer that sends no byte for that long is dropped (live HTTP/2 clients
//!   answer the server's keepalive pings well within it, so this only closes
//!   connections that finished the handshake and then went silent);
//! - `accept` with backoff when the process runs out of descriptors, instead
//!   of retrying in a tight loop.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::auth::Identity;
use crate::metrics::Metrics;

/// How many connections the edge admits, and how long it waits for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, handshaking ones included.
    pub max_connections: usize,
    /// Of those, how many only admin certificates may take: when the rest are
    /// in use, a new connection is admitted only if it turns out to be an
    /// admin's, so `ccfleet` keeps working during a flood.
    pub admin_reserve: usize,
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Admits only admin certificates (the admin listener): any other
    /// connection is closed right after its handshake.
    pub admins_only: bool,
}

/// The connection cap and admin reserve for a file-descriptor limit: an
/// eighth of the descriptors (at least 32, at most 1024) stays with the
/// process (the store's files, the metrics listener, logs, accept itself),
/// and a twentieth of the rest (2 to 64) is the admins' reserve.
pub fn connection_cap(fd_limit: u64) -> (usize, usize) {
    let fd_limit = fd_limit.min(1 << 24) as usize;
    let kept = (fd_limit / 8).clamp(32, 1024);
    let max_connections = fd_limit.saturating_sub(kept).max(8);
    let admin_reserve = (max_connections / 20).clamp(2, 64);
    (max_connections, admin_reserve)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at 2^20, the
/// kernel's usual `nr_open`) and returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        tracing::warn!("cannot read the file-descriptor limit; assuming 1024");
        return 1024;
    };
    let target = hard.min(1 << 20);
    if soft >= target {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => {
            tracing::info!(from = soft, to = target, "raised the soft file-descriptor limit");
            target
        }
        Err(error) => {
            tracing::warn!(%error, soft, hard, "cannot raise the soft file-descriptor limit");
            soft
        }
    }
}

/// Accept errors that mean "out of descriptors or memory": retrying at
/// once only spins, so the accept loop backs off.
fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == libc_code::EMFILE || code == libc_code::ENFILE || code == libc_code::ENOBUFS || code == libc_code::ENOMEM
    )
}

/// The errno values of `is_resource_exhaustion`, from nix (which wraps libc).
mod libc_code {
    use nix::errno::Errno;
    pub const EMFILE: i32 = Errno::EMFILE as i32;
    pub const ENFILE: i32 = Errno::ENFILE as i32;
    pub const ENOBUFS: i32 = Errno::ENOBUFS as i32;
    pub const ENOMEM: i32 = Errno::ENOMEM as i32;
}

/// The next wait after an exhausted accept: 10 ms, doubling up to 1 s.
pub fn next_backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// A TCP connection that holds its place under the connection cap and fails
/// its reads once the peer has been silent for the idle timeout.
pub struct GuardedStream {
    stream: TcpStream,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    /// Returned to the cap when the connection is dropped.
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl GuardedStream {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, idle_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        GuardedStream {
            stream,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            _permit: permit,
            metrics,
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let deadline = Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Metrics::increment(&this.metrics.connections_idle_closed);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer sent nothing within the idle timeout",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for GuardedStream {
    // The plain TCP info, so that tonic's `Request::peer_certs` finds the
    // TLS peer certificates as it does for its own TLS streams.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.stream.local_addr().ok(),
            remote_addr: self.stream.peer_addr().ok(),
        }
    }
}

/// Whether the first peer certificate names an admin. Only used to decide
/// who may take the reserve; authorisation proper stays in the interceptors.
fn is_admin(stream: &TlsStream<GuardedStream>) -> bool {
    let Some(certificate) = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) else {
        return false;
    };
    matches!(crate::auth::identity_of(certificate.as_ref()), Some(Identity::Admin(_)))
}

/// Connections handed to tonic once their TLS handshake is done.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<Result<TlsStream<GuardedStream>, io::Error>>;

/// Starts the accept loop on `listener`; the loop ends (and the listener is
/// closed) when the returned stream is dropped, which tonic does when it
/// stops accepting at shutdown.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
) -> Incoming {
    let (sender, receiver) = mpsc::channel(64);
    let general = Arc::new(Semaphore::new(limits.max_connections - limits.admin_reserve));
    let reserve = Arc::new(Semaphore::new(limits.admin_reserve));
    metrics.set_connection_pools(general.clone(), reserve.clone(), limits.max_connections);
    tokio::spawn(async move {
        let mut backoff = Duration::ZERO;
        let mut last_warning: Option<Instant> = None;
        let mut warn = |message: &'static str| {
            // At most one warning per second: a flood must not flood the log.
            if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                last_warning = Some(Instant::now());
                tracing::warn!(max_connections = limits.max_connections, "{message}");
            }
        };
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::ZERO;
                    stream
                }
                Err(error) if is_resource_exhaustion(&error) => {
                    Metrics::increment(&metrics.accept_exhausted);
                    warn("out of file descriptors: accepting slower until connections close");
                    backoff = next_backoff(backoff);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    continue;
                }
            };
            let (permit, reserved) = match general.clone().try_acquire_owned() {
                Ok(permit) => (permit, false),
                Err(_) => match reserve.clone().try_acquire_owned() {
                    Ok(permit) => (permit, true),
                    Err(_) => {
                        Metrics::increment(&metrics.connections_refused);
                        warn("connection cap reached: refusing new connections");
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let io = GuardedStream::new(stream, permit, limits.idle_timeout, metrics.clone());
            let (acceptor, sender, metrics) = (acceptor.clone(), sender.clone(), metrics.clone());
            let (handshake_timeout, admins_only) = (limits.handshake_timeout, limits.admins_only);
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        Metrics::increment(&metrics.tls_handshakes_failed);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        Metrics::increment(&metrics.tls_handshakes_failed);
                        return;
                    }
                };
                if (reserved || admins_only) && !is_admin(&stream) {
                    Metrics::increment(&metrics.connections_refused);
                    return;
                }
                let _ = sender.send(Ok(stream)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// A request tonic could not decode (invalid UTF-8 in a string field, a
/// malformed message) is the caller's fault, but tonic's codec answers
/// INTERNAL; this turns such answers into INVALID_ARGUMENT. Unary answers
/// carry the status in their headers; streams are handled where they are
/// read (`api::agent`).
pub fn decode_errors_are_invalid_arguments<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let headers = response.headers_mut();
    let internal = headers.get("grpc-status").is_some_and(|status| status == "13");
    let undecodable = headers
        .get("grpc-message")
        .is_some_and(|message| message.as_bytes().starts_with(b"failed%20to%20decode"));
    if internal && undecodable {
        headers.insert("grpc-status", tonic::codegen::http::HeaderValue::from_static("3"));
    }
    response
}

/// The TLS configuration: the server's certificate (with the CA in its
/// chain), client certificates verified against the CA when given (Enrollment
/// and health work without one; the interceptors refuse such callers
/// elsewhere), HTTP/2 only.
pub fn tls_acceptor(
    certificate_chain_pem: &str,
    private_key_pem: &str,
    ca_certificate_pem: &str,
) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_certificate_pem.as_bytes()) {
        roots
            .add(certificate.context("cannot read the CA certificate")?)
            .context("cannot trust the CA certificate")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("cannot build the client certificate verifier")?;
    let chain = CertificateDer::pem_slice_iter(certificate_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("cannot read the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes()).context("cannot read the server key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot select TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("invalid server certificate or key")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_descriptors_for_the_process_and_a_reserve_for_admins() {
        let cases = [
            (64, (32, 2)),
            (256, (224, 11)),
            (1024, (896, 44)),
            (20_000, (18_976, 64)),
            (1_048_576, (1_047_552, 64)),
            (10, (8, 2)),
        ];
        for (fd_limit, expected) in cases {
            assert_eq!(connection_cap(fd_limit), expected, "fd limit {fd_limit}");
        }
    }

    #[test]
    fn accept_backs_off_from_10_ms_to_1_s() {
        let mut wait = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..9 {
            wait = next_backoff(wait);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[test]
    fn only_descriptor_and_memory_exhaustion_back_off() {
        for (code, backs_off) in [
            (libc_code::EMFILE, true),
            (libc_code::ENFILE, true),
            (libc_code::ENOBUFS, true),
            (libc_code::ENOMEM, true),
            (nix::errno::Errno::ECONNABORTED as i32, false),
        ] {
            assert_eq!(
                is_resource_exhaustion(&io::Error::from_raw_os_error(code)),
                backs_off,
                "{code}"
            );
        }
    }
}
