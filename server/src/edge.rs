//! The server's network edge: accepting TCP connections and completing TLS
//! before tonic sees them, with the limits that keep an unauthenticated
//! peer from locking everyone else out (SECURITY.md).
//!
//! - connections still in their TLS handshake have a pool of their own
//!   (`handshakes`: bounded, bounded per source, the oldest silent one of the
//!   heaviest sources closed to make room for a newcomer) and a short deadline; a connection takes a
//!   place under the connection cap only once its handshake is done, so a
//!   flood of connections that never finish one cannot lock anyone out;
//! - a connection cap derived from the process's file-descriptor limit, with
//!   a reserve that only admin certificates may use, and descriptors kept back
//!   for the store and the process itself;
//! - on the admin listener, a client certificate naming an admin is required
//!   inside the TLS handshake (`AdminCertificatesOnly`);
//! - an idle deadline on every connection: a
//!   peer that sends no byte for that long is dropped (live HTTP/2 clients
//!   answer the server's keepalive pings well within it, so this only closes
//!   connections that finished the handshake and then went silent);
//! - `accept` with backoff when the process runs out of descriptors, instead
//!   of retrying in a tight loop.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::auth::Identity;
use crate::metrics::Metrics;

pub mod handshakes;
mod tls;

pub use tls::{tls_acceptor, ClientAuth};

pub use handshakes::SharedHandshakePool;
use handshakes::{HandshakePool, Source, Ticket};

/// How many connections the edge admits, and how long it waits for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections past their TLS handshake open at once.
    pub max_connections: usize,
    /// Of those, how many only admin certificates may take: when the rest are
    /// in use, a connection is admitted only if it is an admin's, so
    /// `ccfleet` keeps working during a flood.
    pub admin_reserve: usize,
    /// Connections in their TLS handshake at once (a pool apart from the
    /// above): when it is full, a handshake of the sources holding the most
    /// is closed to make room (`handshakes`).
    pub max_handshakes: usize,
    /// Of those, how many one source (an IPv4 address, an IPv6 /64) may
    /// hold; past it, that source's own oldest handshake makes room.
    pub handshakes_per_source: usize,
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Admits only admin certificates (the admin listener): the TLS
    /// configuration requires one, and any other connection is closed.
    pub admins_only: bool,
}

/// The edge's pools for a file-descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCap {
    pub max_connections: usize,
    pub admin_reserve: usize,
    pub max_handshakes: usize,
}

/// The pools for a file-descriptor limit: an eighth of the descriptors (at
/// least 32, at most 1024) stays with the process (the store's files, the
/// metrics listener, logs, accept itself); of the rest, an eighth (4 to
/// 1024) is for handshakes and the remainder the connection cap, a twentieth
/// of which (2 to 64) is the admins' reserve.
pub fn connection_cap(fd_limit: u64) -> ConnectionCap {
    let fd_limit = fd_limit.min(1 << 24) as usize;
    let kept = (fd_limit / 8).clamp(32, 1024);
    let available = fd_limit.saturating_sub(kept);
    let max_handshakes = (available / 8).clamp(4, 1024);
    let max_connections = available.saturating_sub(max_handshakes).max(8);
    ConnectionCap {
        max_connections,
        admin_reserve: (max_connections / 20).clamp(2, 64),
        max_handshakes,
    }
}

/// The handshake pool for a given connection cap (`--max-connections`): an
/// eighth of it, 16 to 1024.
pub fn handshakes_for(max_connections: usize) -> usize {
    (max_connections / 8).clamp(16, 1024)
}

/// The per-source bound for a handshake pool: an eighth of it, 2 to 64.
pub fn handshakes_per_source_for(max_handshakes: usize) -> usize {
    (max_handshakes / 8).clamp(2, 64)
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

/// A TCP connection that holds its place in the handshake pool until its
/// handshake is done and then its place under the connection cap, and fails
/// its reads once the peer has been silent for the idle timeout.
pub struct GuardedStream {
    stream: TcpStream,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    /// During the handshake: its place in the handshake pool.
    handshake: Option<HandshakePlace>,
    /// After the handshake: returned to the cap when the connection is dropped.
    permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
}

/// A place in the handshake pool, given back when dropped.
struct HandshakePlace {
    pool: SharedHandshakePool,
    ticket: Ticket,
    spoke: bool,
}

impl HandshakePlace {
    fn lock(&self) -> std::sync::MutexGuard<'_, HandshakePool<oneshot::Sender<()>>> {
        // The pool's bookkeeping cannot be left half-done by a panic: a
        // poisoned lock still holds a consistent pool.
        self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for HandshakePlace {
    fn drop(&mut self) {
        let ticket = self.ticket;
        self.lock().finish(ticket);
    }
}

impl GuardedStream {
    fn new(stream: TcpStream, handshake: HandshakePlace, idle_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        GuardedStream {
            stream,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            handshake: Some(handshake),
            permit: None,
            metrics,
        }
    }

    /// The handshake is done: the connection leaves the handshake pool and
    /// holds `permit` under the connection cap instead.
    fn admitted(&mut self, permit: OwnedSemaphorePermit) {
        self.handshake = None;
        self.permit = Some(permit);
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
                    if let Some(place) = this.handshake.as_mut().filter(|place| !place.spoke) {
                        place.spoke = true;
                        let ticket = place.ticket;
                        place.lock().spoke(ticket);
                    }
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

/// A warning logged at most once a second: a flood must not flood the log.
struct RareWarning {
    last: Mutex<Option<Instant>>,
    max_connections: usize,
}

impl RareWarning {
    fn warn(&self, message: &'static str) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(max_connections = self.max_connections, "{message}");
        }
    }
}

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
    let handshakes: SharedHandshakePool = Arc::new(Mutex::new(HandshakePool::new(
        limits.max_handshakes,
        limits.handshakes_per_source,
    )));
    metrics.set_connection_pools(
        general.clone(),
        reserve.clone(),
        limits.max_connections,
        handshakes.clone(),
        limits.max_handshakes,
    );
    let warning = Arc::new(RareWarning {
        last: Mutex::new(None),
        max_connections: limits.max_connections,
    });
    tokio::spawn(async move {
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    backoff = Duration::ZERO;
                    accepted
                }
                Err(error) if is_resource_exhaustion(&error) => {
                    Metrics::increment(&metrics.accept_exhausted);
                    warning.warn("out of file descriptors: accepting slower until connections close");
                    backoff = next_backoff(backoff);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    continue;
                }
            };
            let (close, closed) = oneshot::channel();
            let admission = handshakes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .admit(Source::of(peer.ip()), close);
            if let Some((_, close)) = admission.evicted {
                let _ = close.send(());
                Metrics::increment(&metrics.handshakes_evicted);
                warning.warn("handshake pool full: closing the oldest silent handshakes to make room");
            }
            let place = HandshakePlace {
                pool: handshakes.clone(),
                ticket: admission.ticket,
                spoke: false,
            };
            let _ = stream.set_nodelay(true);
            let io = GuardedStream::new(stream, place, limits.idle_timeout, metrics.clone());
            tokio::spawn(handshake(
                io,
                closed,
                Admission {
                    acceptor: acceptor.clone(),
                    limits: limits.clone(),
                    general: general.clone(),
                    reserve: reserve.clone(),
                    sender: sender.clone(),
                    metrics: metrics.clone(),
                    warning: warning.clone(),
                },
            ));
            // Let the new handshake read its ClientHello before the next
            // accept: a burst of accepts must not push it out of the pool
            // while it is still counted as silent.
            tokio::task::yield_now().await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// What a handshake task needs to admit its connection.
struct Admission {
    acceptor: TlsAcceptor,
    limits: ConnectionLimits,
    general: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    sender: mpsc::Sender<Result<TlsStream<GuardedStream>, io::Error>>,
    metrics: Arc<Metrics>,
    warning: Arc<RareWarning>,
}

/// Runs one TLS handshake (until done, its deadline, or its eviction from
/// the handshake pool), then gives the connection a place under the cap and
/// hands it to tonic, or closes it.
async fn handshake(io: GuardedStream, evicted: oneshot::Receiver<()>, admission: Admission) {
    let Admission {
        acceptor,
        limits,
        general,
        reserve,
        sender,
        metrics,
        warning,
    } = admission;
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io)) => accepted,
        _ = evicted => return,
    };
    let mut stream = match accepted {
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
    let admin = is_admin(&stream);
    let permit = match (admin, limits.admins_only) {
        (false, true) => Err(()),
        (false, false) => general.try_acquire_owned().map_err(|_| ()),
        (true, _) => general
            .try_acquire_owned()
            .or_else(|_| reserve.try_acquire_owned())
            .map_err(|_| ()),
    };
    let Ok(permit) = permit else {
        Metrics::increment(&metrics.connections_refused);
        if !limits.admins_only || admin {
            warning.warn("connection cap reached: refusing new connections");
        }
        return;
    };
    stream.get_mut().0.admitted(permit);
    let _ = sender.send(Ok(stream)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_descriptors_for_the_process_handshakes_and_a_reserve_for_admins() {
        // fd limit: (connections, admin reserve, handshakes)
        let cases = [
            (64, (28, 2, 4)),
            (256, (196, 9, 28)),
            (1024, (784, 39, 112)),
            (20_000, (17_952, 64, 1024)),
            (1_048_576, (1_046_528, 64, 1024)),
            (10, (8, 2, 4)),
        ];
        for (fd_limit, (max_connections, admin_reserve, max_handshakes)) in cases {
            let cap = connection_cap(fd_limit);
            assert_eq!(
                cap,
                ConnectionCap {
                    max_connections,
                    admin_reserve,
                    max_handshakes
                },
                "fd limit {fd_limit}"
            );
        }
    }

    #[test]
    fn an_explicit_cap_derives_the_handshake_pool_and_its_per_source_bound() {
        // --max-connections: (handshakes, per source)
        for (max_connections, expected) in [(2, (16, 2)), (60, (16, 2)), (1000, (125, 15)), (100_000, (1024, 64))] {
            let handshakes = handshakes_for(max_connections);
            assert_eq!(
                (handshakes, handshakes_per_source_for(handshakes)),
                expected,
                "{max_connections}"
            );
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
