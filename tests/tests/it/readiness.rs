//! Ready means ready: when `ccfleet-server run` prints `listening on`, it
//! answers, even on a fresh data directory on a loaded machine.

use std::time::Duration;

use ccfleet_proto::pb::{self, admin_client::AdminClient};
use ccfleet_tests::load::CpuLoad;
use ccfleet_tests::server::TestServer;

const STARTS: usize = 50;

/// The server once opened its store in `init`, dropped it and opened it again
/// to serve; under load sled still held its directory lock and the server
/// died with "in use by another process" after it had printed its address.
/// Now it opens the store once and prints only when it can answer: each of
/// 50 first starts under `stress-ng --cpu 2` answers a call that reads the
/// store, at the first connection attempt, and stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_first_start_under_load_answers_at_once() {
    let _load = CpuLoad::start(2);
    let dir = tempfile::tempdir().unwrap();
    for start in 0..STARTS {
        let data = dir.path().join(format!("data-{start}"));
        let mut server = TestServer::start(&data, &[]);
        let channel = ccfleet_proto::tls::mtls_endpoint(&server.url(), &server.admin_credential())
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "start {start}: no connection after `listening on`: {}; its log:\n{}",
                    ccfleet_tests::error_chain(&error),
                    server.log()
                )
            });
        // Join tokens are read on the store thread: the store is open.
        let tokens = AdminClient::new(channel)
            .list_join_tokens(pb::ListJoinTokensRequest {})
            .await
            .unwrap_or_else(|status| panic!("start {start}: {status}; its log:\n{}", server.log()))
            .into_inner()
            .tokens;
        assert!(
            tokens.is_empty(),
            "start {start}: a fresh server lists tokens {tokens:?}"
        );
        let (status, _) = server.terminate(Duration::from_secs(60));
        assert!(
            status.success(),
            "start {start}: the server exited with {status}; its log:\n{}",
            server.log()
        );
    }
}

/// `Type=notify`: the server says READY=1 to systemd after it printed its
/// address, and at that moment it answers a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_tells_systemd_it_is_ready_when_it_answers() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut child = std::process::Command::new(ccfleet_tests::binary("ccfleet-server"))
        .args(["run", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut message = [0u8; 64];
    let received = notify.recv(&mut message);
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let answered = async {
        let address = line.trim().strip_prefix("listening on ")?.to_owned();
        let credential: ccfleet_proto::tls::Credential =
            toml::from_str(&std::fs::read_to_string(data.join("admin-credential.toml")).ok()?).ok()?;
        let channel = ccfleet_proto::tls::mtls_endpoint(&format!("https://{address}"), &credential)
            .ok()?
            .connect()
            .await
            .ok()?;
        AdminClient::new(channel)
            .list_join_tokens(pb::ListJoinTokensRequest {})
            .await
            .ok()
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let length = received.expect("READY=1 within 60 s");
    assert_eq!(String::from_utf8_lossy(&message[..length]).trim_end(), "READY=1");
    assert!(line.starts_with("listening on "), "the first line was {line:?}");
    assert!(answered.is_some(), "the server did not answer once it was ready");
}
