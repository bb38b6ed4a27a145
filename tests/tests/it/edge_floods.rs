//! The handshake flood against the real binary: plain TCP connections that
//! send nothing and reconnect as soon as they are closed, from several
//! loopback sources, on the main listener (whose general pool is full, so
//! admins depend on their reserve) and on the admin listener at once, while
//! admins call both; and the admin listener refusing any but an admin
//! certificate inside the TLS handshake; and the metrics endpoint answering
//! a scrape while slow clients hold half-sent requests.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccfleet_tests::server::{metric_value, run_cli, scrape_metrics, TestServer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::rustls;

/// At most this many connections per flooding task, so the flood ends even
/// if the stop signal were lost.
const RECONNECTS_PER_TASK: u64 = 200_000;

/// One flooding task: connects from `source` to `target`, sends nothing,
/// waits until the server closes the connection, connects again at once;
/// until `stop` turns true. Returns how many connections it opened.
fn silent_flood_task(
    source: Ipv4Addr,
    target: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut opened = 0;
        while opened < RECONNECTS_PER_TASK && !*stop.borrow() {
            let socket = TcpSocket::new_v4().expect("a socket");
            socket
                .bind(SocketAddr::new(source.into(), 0))
                .expect("a loopback source address");
            let connected = tokio::select! {
                connected = socket.connect(target) => connected,
                _ = stop.changed() => break,
            };
            let Ok(mut stream) = connected else {
                continue;
            };
            opened += 1;
            let mut buffer = [0u8; 64];
            tokio::select! {
                _ = stream.read(&mut buffer) => {}
                _ = stop.changed() => break,
            }
        }
        opened
    })
}

/// Eight loopback sources (127.0.0.2 to 127.0.0.9), `per_source` flooding
/// connections each, against `target`.
fn silent_flood(
    target: SocketAddr,
    per_source: usize,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    let mut tasks = Vec::new();
    for last in 2..10 {
        for _ in 0..per_source {
            tasks.push(silent_flood_task(Ipv4Addr::new(127, 0, 0, last), target, stop.clone()));
        }
    }
    tasks
}

/// A TLS connection from 127.0.0.1 pinned to the server's CA, with the
/// client certificate of `credential` if one is given.
async fn tls_connection(
    server: &TestServer,
    address: SocketAddr,
    credential: Option<&ccfleet_proto::tls::Credential>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let ca = ccfleet_proto::tls::first_certificate_der(&server.admin_credential().ca_certificate).unwrap();
    let verifier = ccfleet_proto::tls::PinnedCaVerifier::new(&ccfleet_proto::tls::fingerprint(&ca));
    let builder = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match credential {
        Some(credential) => {
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(credential.certificate.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(credential.private_key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// Ten `ccfleet hosts` calls against `url`, each of which must succeed
/// within 2 s; returns the slowest.
async fn ten_admin_calls(server: &TestServer, url: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    for call in 1..=10 {
        let (owned_url, credentials) = (url.to_owned(), server.admin_credential_path());
        let started = Instant::now();
        let output = tokio::task::spawn_blocking(move || run_cli(&owned_url, &credentials, &["--json", "hosts"]))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            output.status.success(),
            "call {call} to {url} failed during the flood after {took:?}: {}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            server.log()
        );
        assert!(took < Duration::from_secs(2), "call {call} to {url} took {took:?}");
        slowest = slowest.max(took);
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_locks_no_admin_out_of_either_listener() {
    let dir = tempfile::tempdir().unwrap();
    // Main listener: 60 connections past the handshake (3 kept for admins),
    // 16 handshakes at once, 2 per source.
    let server = TestServer::start(
        &dir.path().join("data"),
        &[
            "--max-connections",
            "60",
            "--admin-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let admin_address = server.admin_address.expect("the admin listener");
    let metrics_address = server.metrics_address.expect("the metrics listener");

    // Fill the main listener's general pool with finished handshakes that
    // then send nothing (the idle timeout, 60 s, outlasts the test): admins
    // on the main listener now depend on the reserve.
    let mut held = Vec::new();
    for _ in 0..57 {
        held.push(
            tls_connection(&server, server.address, None)
                .await
                .expect("a place in the general pool"),
        );
    }
    // The client's side of a handshake ends a moment before the server's.
    ccfleet_tests::wait_for("57 connections admitted", Duration::from_secs(10), || {
        let open = metric_value(&scrape_metrics(metrics_address), "ccfleet_connections_open");
        async move {
            if open == Some(57) {
                Ok(())
            } else {
                Err(format!("{open:?} open"))
            }
        }
    })
    .await;

    // The flood: 80 connections on each listener from 8 sources, each
    // reconnecting as soon as the server closes it.
    let (stop, stopped) = watch::channel(false);
    let mut flood = silent_flood(server.address, 10, &stopped);
    flood.extend(silent_flood(admin_address, 10, &stopped));
    // Wait until the flood has filled the main listener's handshake pool
    // and is being pushed out (without it, the calls below prove nothing).
    ccfleet_tests::wait_for("the flood to fill the handshake pool", Duration::from_secs(20), || {
        let page = scrape_metrics(metrics_address);
        async move {
            let open = metric_value(&page, "ccfleet_handshakes_open").unwrap_or(0);
            let evicted = metric_value(&page, "ccfleet_connections_closed_total{reason=\"evicted\"}").unwrap_or(0);
            if open == 16 && evicted >= 200 {
                Ok(())
            } else {
                Err(format!("{open} handshakes open, {evicted} evicted"))
            }
        }
    })
    .await;

    let slowest_main = ten_admin_calls(&server, &server.url()).await;
    let slowest_admin = ten_admin_calls(&server, &format!("https://{admin_address}")).await;

    let _ = stop.send(true);
    let mut opened = 0;
    for task in flood {
        opened += task.await.unwrap();
    }
    let page = scrape_metrics(metrics_address);
    let evicted = metric_value(&page, "ccfleet_connections_closed_total{reason=\"evicted\"}").unwrap();
    eprintln!(
        "flood: {opened} connections opened, {evicted} handshakes evicted; slowest admin call {slowest_main:?} \
         (main listener), {slowest_admin:?} (admin listener)"
    );
    assert!(opened > 160, "the flood opened only {opened} connections");
    // The general pool was full throughout: admins were served by the reserve.
    assert_eq!(metric_value(&page, "ccfleet_connections_open"), Some(57), "{page}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_refuses_a_host_or_no_certificate_inside_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--admin-listen", "127.0.0.1:0"]);
    let admin_address = server.admin_address.expect("the admin listener");
    let host = server.enroll("web-1").await;
    let admin = server.admin_credential();
    for (who, credential) in [("no certificate", None), ("a host certificate", Some(&host))] {
        // With TLS 1.3 the client may finish its side of the handshake before
        // the server's verdict arrives; the verdict is then the first read.
        let refused = match tls_connection(&server, admin_address, credential).await {
            Err(error) => error,
            Ok(mut stream) => {
                let mut buffer = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
                    .await
                    .expect("the server answers")
                {
                    Err(error) => error,
                    Ok(read) => panic!("{who}: the admin listener let the handshake through (read {read} bytes)"),
                }
            }
        };
        assert!(
            refused.to_string().contains("alert"),
            "{who}: refused by a TLS alert, not {refused}"
        );
    }
    // An admin certificate passes the handshake, and the same certificates
    // work on the main listener.
    tls_connection(&server, admin_address, Some(&admin))
        .await
        .expect("an admin's handshake");
    tls_connection(&server, server.address, Some(&host))
        .await
        .expect("a host's handshake on the main listener");
    tls_connection(&server, server.address, None)
        .await
        .expect("no certificate on the main listener (enrolment, health)");
}

/// One slow metrics client: connects, sends half a request, and holds the
/// connection until the server closes it, then does it again at once; until
/// `stop`. Counts the connections it opened in `opened`.
fn half_request_task(
    target: SocketAddr,
    opened: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        for _ in 0..RECONNECTS_PER_TASK {
            if *stop.borrow() {
                break;
            }
            let connected = tokio::select! {
                connected = TcpStream::connect(target) => connected,
                _ = stop.changed() => break,
            };
            let Ok(mut stream) = connected else {
                continue;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            if stream.write_all(b"GET /metr").await.is_err() {
                continue;
            }
            let mut buffer = [0u8; 64];
            tokio::select! {
                _ = stream.read(&mut buffer) => {}
                _ = stop.changed() => break,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_answers_a_scrape_while_slow_clients_hold_half_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics_address = server.metrics_address.expect("the metrics listener");
    // 64 slow clients: four times the endpoint's 16 places.
    let (stop, stopped) = watch::channel(false);
    let opened = Arc::new(AtomicU64::new(0));
    let slow: Vec<_> = (0..64)
        .map(|_| half_request_task(metrics_address, opened.clone(), stopped.clone()))
        .collect();
    // More connections than the 64 clients: every place is taken and the
    // slow clients are being pushed out and coming back.
    ccfleet_tests::wait_for("the slow clients to be pushed out", Duration::from_secs(10), || {
        let opened = opened.load(Ordering::Relaxed);
        async move {
            if opened > 128 {
                Ok(())
            } else {
                Err(format!("{opened} connections opened"))
            }
        }
    })
    .await;
    let mut slowest = Duration::ZERO;
    for scrape in 1..=10 {
        let started = Instant::now();
        let page = tokio::task::spawn_blocking(move || scrape_metrics(metrics_address))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            page.starts_with("HTTP/1.1 200 OK") && metric_value(&page, "ccfleet_hosts") == Some(0),
            "scrape {scrape} after {took:?}: {page}"
        );
        assert!(took < Duration::from_secs(2), "scrape {scrape} took {took:?}");
        slowest = slowest.max(took);
    }
    let _ = stop.send(true);
    for task in slow {
        task.await.unwrap();
    }
    eprintln!(
        "slow metrics clients opened {} connections; slowest scrape {slowest:?}",
        opened.load(Ordering::Relaxed)
    );
}
