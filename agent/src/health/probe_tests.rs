//! Tests of the HTTP probe against real sockets on 127.0.0.1: a tiny HTTP
//! server that records what it was asked, and an HTTPS one with a
//! self-signed certificate that records the SNI it saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::health::Check;

/// What the test server saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// "GET /health HTTP/1.1"
    request_line: String,
    host: Option<String>,
    /// The TLS server name the client sent, for HTTPS.
    sni: Option<String>,
}

/// How the test server answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// A complete response with this status line and extra headers.
    Status(&'static str, &'static str),
    /// Read the request, then never answer (until the client gives up).
    Never,
}

/// Reads one request head and returns what it said.
async fn read_request(stream: &mut (impl AsyncRead + Unpin), sni: Option<String>) -> Option<Seen> {
    let mut head = Vec::new();
    let mut byte = [0_u8];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let host = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim().to_owned());
    Some(Seen {
        request_line,
        host,
        sni,
    })
}

async fn answer(stream: &mut (impl AsyncWrite + Unpin), answer: Answer) {
    match answer {
        Answer::Status(status, headers) => {
            let response = format!("HTTP/1.1 {status}\r\n{headers}content-length: 2\r\nconnection: close\r\n\r\nok");
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        // The server loop holds the connection open until the client hangs up.
        Answer::Never => {}
    }
}

/// A plain HTTP server on 127.0.0.1:0 answering every request with `reply`.
/// Each request's head is sent on the returned channel.
async fn http_server(reply: Answer) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                if let Some(seen) = read_request(&mut stream, None).await {
                    let _ = sender.send(seen);
                    answer(&mut stream, reply).await;
                    if let Answer::Never = reply {
                        // Park until the client hangs up.
                        let mut buffer = [0_u8; 64];
                        while matches!(stream.read(&mut buffer).await, Ok(read) if read > 0) {}
                    }
                }
            });
        }
    });
    (address, receiver)
}

fn target(address: SocketAddr, scheme: ProbeScheme, accepted: &[u16]) -> ProbeTarget {
    ProbeTarget {
        domain: "blog.example.org".parse().unwrap(),
        path: "/health?deep=1".to_owned(),
        address,
        scheme,
        accepted_statuses: accepted.to_vec(),
        request_timeout: Duration::from_secs(5),
    }
}

fn unhealthy(reason: String) -> Check {
    Check::Unhealthy { reason }
}

#[tokio::test]
async fn accepted_status_is_healthy_and_the_request_names_the_domain() {
    let (address, mut seen) = http_server(Answer::Status("200 OK", "")).await;
    let probe = HttpProbe::new().unwrap();
    let target = target(address, ProbeScheme::Http, &[200, 204]);
    assert_eq!(probe.probe(&target).await, Check::Healthy);
    assert_eq!(
        seen.recv().await.unwrap(),
        Seen {
            request_line: "GET /health?deep=1 HTTP/1.1".to_owned(),
            host: Some(format!("blog.example.org:{}", address.port())),
            sni: None,
        }
    );
    // The client is kept: a second probe of the same target reuses it.
    assert_eq!(probe.probe(&target).await, Check::Healthy);
    assert_eq!(probe.clients.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn status_not_accepted_is_unhealthy_with_the_status() {
    let (address, _seen) = http_server(Answer::Status("503 Service Unavailable", "")).await;
    let probe = HttpProbe::new().unwrap();
    let check = probe.probe(&target(address, ProbeScheme::Http, &[200])).await;
    assert_eq!(
        check,
        unhealthy(format!(
            "GET http://blog.example.org:{}/health?deep=1 answered 503",
            address.port()
        ))
    );
}

#[tokio::test]
async fn redirects_are_not_followed_and_count_only_when_accepted() {
    let (address, mut seen) = http_server(Answer::Status("302 Found", "location: /login\r\n")).await;
    let probe = HttpProbe::new().unwrap();
    let check = probe.probe(&target(address, ProbeScheme::Http, &[200])).await;
    assert_eq!(
        check,
        unhealthy(format!(
            "GET http://blog.example.org:{}/health?deep=1 answered 302",
            address.port()
        ))
    );
    let check = probe.probe(&target(address, ProbeScheme::Http, &[200, 302])).await;
    assert_eq!(check, Check::Healthy);
    // Two probes, two requests, both for the health path: /login was never asked for.
    for _ in 0..2 {
        assert_eq!(seen.recv().await.unwrap().request_line, "GET /health?deep=1 HTTP/1.1");
    }
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn connection_refused_names_the_address() {
    // A port that was just free: bind, note it, close.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let probe = HttpProbe::new().unwrap();
    let check = probe.probe(&target(address, ProbeScheme::Https, &[200])).await;
    assert_eq!(check, unhealthy(format!("connection refused to {address}")));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (address, mut seen) = http_server(Answer::Never).await;
    let probe = HttpProbe::new().unwrap();
    let mut target = target(address, ProbeScheme::Http, &[200]);
    target.request_timeout = Duration::from_millis(300);
    let check = probe.probe(&target).await;
    assert_eq!(
        check,
        unhealthy(format!(
            "GET http://blog.example.org:{}/health?deep=1 timed out after 0.3s",
            address.port()
        ))
    );
    // The request did arrive: it was the answer that never came.
    assert_eq!(seen.recv().await.unwrap().request_line, "GET /health?deep=1 HTTP/1.1");
}

#[tokio::test]
async fn a_path_without_a_leading_slash_is_refused() {
    let probe = HttpProbe::new().unwrap();
    let mut target = target(ProbeTarget::TRAEFIK, ProbeScheme::Https, &[200]);
    target.path = "health".to_owned();
    assert_eq!(
        probe.probe(&target).await,
        unhealthy("health path \"health\" does not start with '/'".to_owned())
    );
}

#[test]
fn urls_name_the_port_only_when_it_is_not_the_default() {
    let domain: Domain = "blog.example.org".parse().unwrap();
    let at = |address: &str, scheme| ProbeTarget {
        address: address.parse().unwrap(),
        scheme,
        ..ProbeTarget::through_traefik(domain.clone(), "/health")
    };
    for (target, url) in [
        (
            ProbeTarget::through_traefik(domain.clone(), "/"),
            "https://blog.example.org/",
        ),
        (
            at("127.0.0.1:443", ProbeScheme::Https),
            "https://blog.example.org/health",
        ),
        (at("127.0.0.1:80", ProbeScheme::Http), "http://blog.example.org/health"),
        (
            at("127.0.0.1:8443", ProbeScheme::Https),
            "https://blog.example.org:8443/health",
        ),
        (
            at("10.0.0.1:443", ProbeScheme::Http),
            "http://blog.example.org:443/health",
        ),
    ] {
        assert_eq!(target.url(), url);
    }
}

/// An HTTPS server on 127.0.0.1:0 with a self-signed certificate for the
/// domain (trusted by nobody), answering 200 and recording the SNI.
async fn https_server(domain: &str) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let certified = rcgen::generate_simple_self_signed(vec![domain.to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                if let Some(seen) = read_request(&mut tls, sni).await {
                    let _ = sender.send(seen);
                    answer(&mut tls, Answer::Status("200 OK", "")).await;
                }
            });
        }
    });
    (address, receiver)
}

#[tokio::test]
async fn https_sends_the_domain_as_sni_and_accepts_an_untrusted_certificate() {
    let (address, mut seen) = https_server("blog.example.org").await;
    let probe = HttpProbe::new().unwrap();
    let check = probe.probe(&target(address, ProbeScheme::Https, &[200])).await;
    assert_eq!(check, Check::Healthy);
    assert_eq!(
        seen.recv().await.unwrap(),
        Seen {
            request_line: "GET /health?deep=1 HTTP/1.1".to_owned(),
            host: Some(format!("blog.example.org:{}", address.port())),
            sni: Some("blog.example.org".to_owned()),
        }
    );
}

#[tokio::test]
async fn https_to_a_plain_http_server_is_unhealthy_with_the_cause() {
    // A server that answers plain HTTP at once, before any handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            answer(&mut stream, Answer::Status("200 OK", "")).await;
        }
    });
    let probe = HttpProbe::new().unwrap();
    let Check::Unhealthy { reason } = probe.probe(&target(address, ProbeScheme::Https, &[200])).await else {
        panic!("a tls handshake with a plain http server cannot succeed");
    };
    let prefix = format!("GET https://blog.example.org:{}/health?deep=1 failed: ", address.port());
    assert!(reason.starts_with(&prefix), "{reason}");
}
