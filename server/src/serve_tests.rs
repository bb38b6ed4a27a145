//! `serve` in-process, as mini-redis tests its server: bound to port 0, a
//! real TLS client, an agent stream, and a shutdown future that the test
//! completes.

use std::time::{Duration, Instant};

use ccfleet_proto::pb::{self, admin_client::AdminClient, agent_client::AgentClient, agent_message::Body};
use ccfleet_proto::tls::Credential;
use tokio_stream::wrappers::ReceiverStream;

use super::*;

async fn admin_client(url: &str, credential: &Credential) -> AdminClient<tonic::transport::Channel> {
    let channel = ccfleet_proto::tls::mtls_endpoint(url, credential)
        .unwrap()
        .connect()
        .await
        .expect("connect as admin");
    AdminClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_closes_agent_streams_and_returns_when_the_shutdown_future_completes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let store = open_store(&data).unwrap();
    let initialised = init_store(&store, &data, &url, Duration::from_secs(3600)).unwrap();
    let credential: Credential =
        toml::from_str(&std::fs::read_to_string(initialised.admin_credential.unwrap()).unwrap()).unwrap();
    let mut config = ServerConfig::new(data.clone());
    config.shutdown_timeout = Duration::from_secs(4);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listeners = Listeners {
        main: listener,
        metrics: None,
        admin: None,
    };
    let (ready, answering) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listeners,
        store,
        config,
        async move {
            let _ = stopped.await;
        },
        move || {
            let _ = ready.send(());
        },
    ));
    answering.await.expect("serve calls ready before serving");

    // Enrol a host through the Enrollment service and open its stream.
    let mut admin = admin_client(&url, &credential).await;
    let token = admin
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl_seconds: 60,
            uses: 1,
            labels: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let token: ccfleet_proto::tls::JoinToken = token.parse().unwrap();
    let generated = ccfleet_proto::tls::generate_key_and_request("web-1").unwrap();
    let enrollment_channel = ccfleet_proto::tls::pinned_endpoint(&url, &token.ca_fingerprint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let enrolled = pb::enrollment_client::EnrollmentClient::new(enrollment_channel)
        .enroll(pb::EnrollRequest {
            token: token.to_string(),
            host_id: "web-1".into(),
            csr_pem: generated.csr_pem,
            facts: None,
        })
        .await
        .expect("enrolment")
        .into_inner();
    let host = Credential {
        server: url.clone(),
        ca_certificate: enrolled.ca_certificate_pem,
        certificate: enrolled.certificate_pem,
        private_key: generated.private_key_pem,
    };
    let channel = ccfleet_proto::tls::mtls_endpoint(&url, &host)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (outbound, receiver) = tokio::sync::mpsc::channel(4);
    outbound
        .send(pb::AgentMessage {
            seq: 0,
            body: Some(Body::Hello(pb::Hello {
                host_id: "web-1".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let mut inbound = AgentClient::new(channel)
        .connect(ReceiverStream::new(receiver))
        .await
        .expect("stream opened")
        .into_inner();
    assert!(matches!(
        inbound.message().await.unwrap().unwrap().body,
        Some(pb::server_message::Body::Welcome(_))
    ));

    // Shut down with the stream open: it is told to end, and serve returns.
    let start = Instant::now();
    stop.send(()).unwrap();
    let status = inbound.message().await.expect_err("the server ends the stream");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    let served = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns within its shutdown timeout")
        .unwrap();
    served.expect("serve ends without an error");
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
    drop(outbound);
    drop(admin);

    // The store is closed and flushed: it reopens with the host seen lately.
    let store = store::Store::reopen(&data);
    let host = store.host(&"web-1".parse().unwrap()).unwrap().unwrap();
    assert!(host.last_seen + 10_000 > model::now_millis());
}

/// Polls `health` for the whole server's status until it is `wanted`, or
/// panics after 10 s.
async fn wait_for_health(
    health: &tonic_health::server::HealthService,
    wanted: ServingStatus,
    metrics: &metrics::Metrics,
) {
    use tonic_health::pb::health_server::Health;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == wanted as i32 {
            return;
        }
        assert!(Instant::now() < deadline, "health stayed {status}, wanted {wanted:?}");
        // Poll period; the deadline bounds the wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = metrics;
    }
}

use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_store_turns_health_not_serving_until_it_answers_again() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let store = StoreHandle::open(dir.path()).unwrap();
    let (reporter, _server) = tonic_health::server::health_reporter();
    let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
    let metrics = Arc::new(metrics::Metrics::default());
    let watchdog = tokio::spawn(tasks::watch_store(
        store.clone(),
        reporter,
        metrics.clone(),
        Duration::from_millis(200),
    ));
    wait_for_health(&health, ServingStatus::Serving, &metrics).await;

    // A store request that blocks until the test lets it go, as sled's
    // flush did when a record crossed the blob threshold.
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let stuck = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .read(move |_| {
                    let _ = blocked.recv();
                    Ok(())
                })
                .await
        })
    };
    wait_for_health(&health, ServingStatus::NotServing, &metrics).await;
    assert_eq!(metrics.store_stalled.load(Ordering::Relaxed), 1);
    assert!(metrics
        .render(0, 0, Default::default())
        .contains("ccfleet_store_stalled 1"));

    release.send(()).unwrap();
    stuck.await.unwrap().unwrap();
    wait_for_health(&health, ServingStatus::Serving, &metrics).await;
    assert_eq!(metrics.store_stalled.load(Ordering::Relaxed), 0);
    watchdog.abort();
}
