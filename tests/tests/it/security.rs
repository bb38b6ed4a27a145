//! Identity and mutual TLS against the real server: every refusal has a
//! clear reason and changes nothing that is stored.

use std::time::{Duration, SystemTime};

use ccfleet_proto::pb::{self, admin_client::AdminClient, agent_client::AgentClient};
use ccfleet_proto::tls::{Credential, JoinToken};
use ccfleet_tests::server::{enroll, enroll_with_key, observed, run_cli, TestAgent, TestServer};
use ccfleet_tests::{error_chain, wait_for};
use serde_json::Value;

fn host_ids(server: &TestServer) -> Vec<String> {
    server
        .cli_json(&["hosts"])
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host_id"].as_str().unwrap().to_owned())
        .collect()
}

fn uses_left(server: &TestServer, token: &str) -> u64 {
    let id = token.parse::<JoinToken>().unwrap().id;
    let tokens = server.cli_json(&["token", "ls"]);
    tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("token listed")["uses_left"]
        .as_u64()
        .unwrap()
}

async fn refused_enrolment(server: &TestServer, token: &str, host: &str) -> tonic::Status {
    match enroll(&server.url(), token, host).await {
        Ok(_) => panic!("enrolment with a bad token succeeded"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_refused_when_expired_used_up_revoked_or_forged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);

    // Used up: one use, two hosts.
    let token = server.create_token(&["--uses", "1", "--label", "site=berlin"]);
    enroll(&server.url(), &token, "web-1")
        .await
        .expect("the first use works");
    let status = refused_enrolment(&server, &token, "web-2").await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().starts_with("the join token has no uses left"),
        "{status:?}"
    );

    // Revoked.
    let token = server.create_token(&["--uses", "5"]);
    let id = token.parse::<JoinToken>().unwrap().id;
    assert!(server.cli(&["token", "revoke", &id]).status.success());
    let status = refused_enrolment(&server, &token, "web-3").await;
    assert_eq!(status.message(), "the join token has been revoked");
    assert_eq!(uses_left(&server, &token), 5);

    // Expired: the server judges expiry by the real clock, so real time must
    // pass; the test polls the wall clock (bounded) until the expiry is behind it.
    let created: Value =
        serde_json::from_slice(&server.cli(&["--json", "token", "create", "--ttl", "1s"]).stdout).unwrap();
    let expired_token = created["token"].as_str().unwrap().to_owned();
    let expires_at = humantime::parse_rfc3339(created["info"]["expires_at"].as_str().unwrap()).unwrap();
    wait_for("the token's expiry", Duration::from_secs(10), || async move {
        if SystemTime::now() > expires_at + Duration::from_secs(1) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    let status = refused_enrolment(&server, &expired_token, "web-4").await;
    assert!(status.message().starts_with("the join token has expired"), "{status:?}");

    // Forged: the right CA, an invented id and secret; and a real id with a wrong secret.
    let real: JoinToken = server.create_token(&["--uses", "3"]).parse().unwrap();
    let invented = JoinToken::generate(&real.ca_fingerprint);
    let status = refused_enrolment(&server, &invented.to_string(), "web-5").await;
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::Unauthenticated, "invalid join token")
    );
    let wrong_secret = JoinToken {
        secret: invented.secret.clone(),
        ..real.clone()
    };
    let status = refused_enrolment(&server, &wrong_secret.to_string(), "web-5").await;
    assert_eq!(status.message(), "invalid join token");
    assert_eq!(uses_left(&server, &real.to_string()), 3, "refusals spend no use");

    // A token whose text is not a token at all.
    let status = refused_enrolment(&server, "ccf1.not-a-token", "web-6").await;
    assert!(status.message().starts_with("malformed join token"), "{status:?}");

    assert_eq!(host_ids(&server), ["web-1"], "only the one good enrolment is stored");
    let hosts = server.cli_json(&["hosts"]);
    assert_eq!(
        hosts[0]["labels"]["site"], "berlin",
        "the token's labels reach the host"
    );
    assert!(hosts[0]["certificate_not_after"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_pins_the_ca_from_its_token_before_sending_anything() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let impostor = TestServer::start(&dir.path().join("impostor"), &[]);
    // A token for the real fleet, used against another server: the pin fails
    // in the TLS handshake, so the token never reaches the impostor.
    let token = server.create_token(&["--uses", "1"]);
    let status = refused_enrolment(&impostor, &token, "web-1").await;
    assert!(
        status.message().contains("does not match the join token's fingerprint"),
        "{status:?}"
    );
    assert!(host_ids(&impostor).is_empty());
    assert_eq!(uses_left(&server, &token), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_only_open_their_own_doors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);

    // A host certificate calling the Admin service.
    let mut admin_as_host = AdminClient::new(server.channel_for("web-1").await);
    let status = admin_as_host
        .list_hosts(pb::ListHostsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "host web-1 may not use the Admin service; it needs an admin certificate"
    );

    // An admin certificate calling the Agent service.
    let admin_channel = server.channel_as(&server.admin_credential()).await;
    let status = TestAgent::connect(admin_channel, "web-1", vec![])
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status
            .message()
            .starts_with("admin admin may not use the Agent service"),
        "{status:?}"
    );

    // Host A reporting as host B.
    server.channel_for("web-2").await;
    let status = TestAgent::connect(
        server.channel_for("web-1").await,
        "web-2",
        vec![observed("a.coop.example", "ghost", "1.0.0")],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "this certificate belongs to host web-1; it may not report as host web-2"
    );
    assert!(
        server.log().contains("refused: a host reported as another"),
        "the attempt is logged"
    );

    // No certificate at all, on the Agent and Admin services.
    let anonymous = server.anonymous_channel().await;
    let status = AdminClient::new(anonymous.clone())
        .list_hosts(pb::ListHostsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = AgentClient::new(anonymous)
        .renew(pb::RenewRequest { csr_pem: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let apps = server.cli_json(&["apps"]);
    assert_eq!(apps.as_array().unwrap().len(), 0, "nothing reached the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_host_is_cut_off_and_needs_an_explicit_new_enrolment() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let mut agent = TestAgent::connect(
        server.channel_for("web-1").await,
        "web-1",
        vec![observed("a.coop.example", "ghost", "1.0.0")],
    )
    .await
    .unwrap();

    // Enrolling the same id again is refused while the host exists.
    let token = server.create_token(&["--uses", "2"]);
    let status = refused_enrolment(&server, &token, "web-1").await;
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    assert!(status.message().contains("ccfleet host remove web-1"), "{status:?}");

    let removed = server.cli(&["host", "remove", "web-1"]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert_eq!(
        String::from_utf8_lossy(&removed.stdout).trim(),
        "removed host web-1; revoked 1 certificate(s)"
    );
    // The open stream is closed by the server.
    let ended = agent.inbound.message().await;
    assert!(matches!(ended, Err(_) | Ok(None)), "{ended:?}");
    // The next connection with the old certificate is refused.
    let status = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "this certificate has been revoked");
    assert!(host_ids(&server).is_empty());
    assert_eq!(
        server.cli_json(&["apps"]).as_array().unwrap().len(),
        0,
        "its apps are forgotten too"
    );

    // Removing it was the explicit decision: now the id can enrol again.
    enroll(&server.url(), &token, "web-1")
        .await
        .expect("re-enrolment after removal");
    let again = server.cli(&["host", "remove", "nope"]);
    assert_eq!(again.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&again.stderr).contains("there is no host nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificates_plaintext_and_oversized_messages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let other = TestServer::start(&dir.path().join("other"), &[]);

    // A client certificate from another CA, presented while trusting our CA:
    // the server ends the handshake; the refusal shows on the first call.
    let foreign = Credential {
        ca_certificate: server.admin_credential().ca_certificate,
        ..other.admin_credential()
    };
    let error = match ccfleet_proto::tls::mtls_endpoint(&server.url(), &foreign)
        .unwrap()
        .connect()
        .await
    {
        Err(error) => error_chain(&error),
        Ok(channel) => refused_call(AdminClient::new(channel).list_hosts(pb::ListHostsRequest::default())).await,
    };
    // Another fleet's CA has the same name but not the same key: rustls
    // refuses the signature during the handshake. With TLS 1.3 the client
    // may consider its handshake done before the alert arrives; it then
    // sees the connection closed instead. Never an answer from a service.
    assert_refused_in_handshake(&error, &server, "invalid peer certificate: BadSignature").await;
    let local = foreign.check().unwrap_err().to_string();
    assert!(
        local.contains("was not issued by the CA in the same file"),
        "the local check sees it too: {local}"
    );

    // The CLI checks its credential first and says what is wrong.
    let path = dir.path().join("foreign.toml");
    std::fs::write(&path, toml::to_string(&foreign).unwrap()).unwrap();
    let output = run_cli(&server.url(), &path, &["hosts"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("was not issued by the CA in the same file (is it from another fleet?)"),
        "{stderr}"
    );

    // Plaintext gRPC to the TLS port.
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{}", server.address)).unwrap();
    let result = match plaintext.connect().await {
        Err(error) => Err(error_chain(&error)),
        Ok(channel) => AdminClient::new(channel)
            .list_hosts(pb::ListHostsRequest::default())
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
    };
    let error = result.expect_err("a plaintext call succeeded");
    assert!(
        error.contains("h2 protocol error") || error.contains("connection") || error.contains("transport error"),
        "{error}"
    );

    // An enrolment larger than the service's 64 KiB limit, without a certificate.
    let mut enrollment = pb::enrollment_client::EnrollmentClient::new(server.anonymous_channel().await);
    let status = enrollment
        .enroll(pb::EnrollRequest {
            token: "x".repeat(100 * 1024),
            host_id: "web-1".into(),
            csr_pem: String::new(),
            facts: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(host_ids(&server).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_admins_can_be_issued_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let bob = dir.path().join("bob.toml");
    let issued = server.cli(&["admin", "issue", "bob", "--out", bob.to_str().unwrap()]);
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&bob).unwrap().permissions().mode() & 0o777, 0o600);
    let as_bob = run_cli(&server.url(), &bob, &["--json", "hosts"]);
    assert!(as_bob.status.success(), "{}", String::from_utf8_lossy(&as_bob.stderr));

    // Never overwrite a credential file.
    let again = server.cli(&["admin", "issue", "bob", "--out", bob.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));

    let revoked = server.cli(&["admin", "revoke", "bob"]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let as_bob = run_cli(&server.url(), &bob, &["hosts"]);
    assert_eq!(as_bob.status.code(), Some(4));
    assert_eq!(
        String::from_utf8_lossy(&as_bob.stderr).trim(),
        "error: the server refused the request: this certificate has been revoked"
    );

    // An admin cannot lock themselves out.
    let own = server.cli(&["admin", "revoke", "admin"]);
    assert_eq!(own.status.code(), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_certificates_renew_over_mtls_and_expired_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--host-certificate-lifetime", "4s"]);
    let token = server.create_token(&["--uses", "1"]);
    let credential = enroll(&server.url(), &token, "web-1").await.unwrap();
    let (_, first_expiry) = ccfleet_proto::tls::certificate_validity(&credential.certificate).unwrap();

    // Renewal over the existing mTLS connection: no token involved.
    let channel = server.channel_as(&credential).await;
    let fresh = ccfleet_proto::tls::generate_key_and_request("web-1").unwrap();
    let renewed = AgentClient::new(channel)
        .renew(pb::RenewRequest { csr_pem: fresh.csr_pem })
        .await
        .unwrap()
        .into_inner();
    let renewed = Credential {
        certificate: renewed.certificate_pem,
        private_key: fresh.private_key_pem,
        ..credential.clone()
    };
    let serial = |pem: &str| {
        let der = ccfleet_proto::tls::first_certificate_der(pem).unwrap();
        hex_serial(&der)
    };
    assert_ne!(serial(&renewed.certificate), serial(&credential.certificate));
    let (_, renewed_expiry) = ccfleet_proto::tls::certificate_validity(&renewed.certificate).unwrap();
    assert!(renewed_expiry >= first_expiry);

    // A renewal request carrying a garbage CSR is refused with the reason.
    let status = AgentClient::new(server.channel_as(&renewed).await)
        .renew(pb::RenewRequest {
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("certificate request"), "{status:?}");

    // Once the first certificate has expired, it is refused. TLS checks
    // validity against the real clock, so this polls the wall clock (bounded)
    // until the expiry is behind it.
    wait_for(
        "the first certificate's expiry",
        Duration::from_secs(15),
        || async move {
            if SystemTime::now() > first_expiry + Duration::from_secs(1) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    )
    .await;
    let refused = match ccfleet_proto::tls::mtls_endpoint(&server.url(), &credential)
        .unwrap()
        .connect()
        .await
    {
        Err(error) => error_chain(&error),
        Ok(channel) => refused_call(TestAgent::connect(channel, "web-1", vec![])).await,
    };
    // rustls refuses it in the handshake; with TLS 1.3 the client may see the
    // alert, or only the connection closed after its own handshake finished.
    assert_refused_in_handshake(&refused, &server, "invalid peer certificate: certificate expired").await;
}

fn hex_serial(der: &[u8]) -> String {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).unwrap();
    certificate.raw_serial_as_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_whose_answer_was_lost_can_be_retried_with_the_same_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let token = server.create_token(&["--uses", "1"]);
    let key = ccfleet_proto::tls::generate_key_and_request("web-1").unwrap();
    let url = server.url();
    let retry = || enroll_with_key(&url, &token, "web-1", &key.private_key_pem, &key.csr_pem);

    // The first answer is "lost": the agent retries with the same token and key.
    retry().await.expect("first enrolment");
    let credential = retry().await.expect("the retry gets a certificate for the same key");
    assert_eq!(uses_left(&server, &token), 0, "the retry spent no second use");

    // Another key under the same id and token is a takeover attempt.
    let status = refused_enrolment(&server, &token, "web-1").await;
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");

    // Once the host has connected, the retry window is closed.
    TestAgent::connect(server.channel_as(&credential).await, "web-1", vec![])
        .await
        .unwrap();
    let status = retry().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert_eq!(host_ids(&server), ["web-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_cut_off_on_its_open_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--host-certificate-lifetime", "3s"]);
    let token = server.create_token(&["--uses", "1"]);
    let credential = enroll(&server.url(), &token, "web-1").await.unwrap();
    let (_, expiry) = ccfleet_proto::tls::certificate_validity(&credential.certificate).unwrap();
    // One connection, opened while the certificate is valid, kept open.
    let channel = server.channel_as(&credential).await;
    let mut agent = TestAgent::connect(channel.clone(), "web-1", vec![]).await.unwrap();

    // The stream ends at expiry, with the reason, though the agent is live.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                message = agent.inbound.message() => break message,
                _ = ticker.tick() => agent.heartbeat().await,
            }
        }
    })
    .await
    .expect("the stream ends at expiry");
    let status = ended.expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("the host certificate expired during the stream"),
        "{status:?}"
    );
    assert!(
        SystemTime::now() + Duration::from_secs(1) >= expiry,
        "cut before expiry"
    );

    // Calls on the same, still open connection are refused, Renew included.
    let fresh = ccfleet_proto::tls::generate_key_and_request("web-1").unwrap();
    let status = AgentClient::new(channel.clone())
        .renew(pb::RenewRequest { csr_pem: fresh.csr_pem })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with("this certificate has expired"),
        "{status:?}"
    );
    let status = TestAgent::connect(channel, "web-1", vec![])
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_from_a_host_never_reaches_the_admins_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let clear = "\u{1b}[2J\u{1b}[H";
    let clipboard = "\u{1b}]52;c;cm0gLXJmIH4=\u{7}";
    let title = "\u{1b}]0;owned\u{9c}";
    let mut app = observed("blog.coop.example", "ghost", "1.3.0+6.42.0-alpine");
    app.drift = vec![
        format!("{clear}web-9 blog converged{clipboard}"),
        "line\nbreak\u{202e}".into(),
    ];
    let hello = pb::Hello {
        host_id: "web-1".into(),
        facts: Some(pb::HostFacts {
            hostname: format!("web-1{title}"),
            os: "NixOS".into(),
            arch: "x86_64".into(),
            docker_version: "28".into(),
            labels: [("site".to_string(), format!("berlin{clipboard}"))].into(),
        }),
        agent_version: format!("0.1.0{clear}"),
        inventory: Some(pb::Inventory { apps: vec![app] }),
    };
    TestAgent::connect_with(
        server.channel_for("web-1").await,
        pb::AgentMessage {
            seq: 0,
            body: Some(pb::agent_message::Body::Hello(hello)),
        },
        "web-1",
    )
    .await
    .expect("hello accepted, text cleaned");

    for command in [&["hosts"][..], &["apps"], &["versions", "ghost"]] {
        let output = server.cli(command);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let table = String::from_utf8(output.stdout).unwrap();
        let controls: Vec<char> = table
            .chars()
            .filter(|c| (c.is_control() && *c != '\n') || *c == '\u{202e}')
            .collect();
        assert!(
            controls.is_empty(),
            "ccfleet {command:?} printed {controls:?}:\n{table}"
        );
    }
    let hosts = server.cli_json(&["hosts"]);
    assert_eq!(hosts[0]["agent_version"], "0.1.0[2J[H");
    assert_eq!(hosts[0]["hostname"], "web-1]0;owned");
    assert_eq!(hosts[0]["host_labels"]["site"], "berlin]52;c;cm0gLXJmIH4=");
    let apps = server.cli_json(&["apps"]);
    assert_eq!(
        apps[0]["drift"],
        serde_json::json!(["[2J[Hweb-9 blog converged]52;c;cm0gLXJmIH4=", "line break"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_an_admin_gave_win_over_labels_the_host_reports() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let token = server.create_token(&["--uses", "1", "--label", "site=berlin", "--label", "tier=gold"]);
    let credential = enroll(&server.url(), &token, "web-1").await.unwrap();
    // The test agent reports `site=test` about itself.
    let _agent = TestAgent::connect(server.channel_as(&credential).await, "web-1", vec![])
        .await
        .unwrap();
    let hosts = server.cli_json(&["hosts"]);
    assert_eq!(
        hosts[0]["labels"],
        serde_json::json!({"site": "berlin", "tier": "gold"})
    );
    assert_eq!(
        hosts[0]["token_labels"],
        serde_json::json!({"site": "berlin", "tier": "gold"})
    );
    assert_eq!(hosts[0]["host_labels"], serde_json::json!({"site": "test"}));
    let table = String::from_utf8(server.cli(&["hosts"]).stdout).unwrap();
    assert!(table.contains("site=berlin") && !table.contains("site=test"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_name_that_holds_a_valid_credential_cannot_be_issued_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let bob = dir.path().join("bob.toml");
    assert!(server
        .cli(&["admin", "issue", "bob", "--out", bob.to_str().unwrap()])
        .status
        .success());

    // Bob takes over the first admin's name: refused, nothing written.
    let stolen = dir.path().join("stolen.toml");
    let output = run_cli(
        &server.url(),
        &bob,
        &["admin", "issue", "admin", "--out", stolen.to_str().unwrap()],
    );
    assert_eq!(
        output.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .starts_with("error: the server refused the request: admin admin already has a valid credential (serial "),
        "{stderr}"
    );
    assert!(
        stderr.contains("another admin must revoke it first (`ccfleet admin revoke admin`)"),
        "{stderr}"
    );
    assert!(!stolen.exists());

    // Admin names are their own kind of name, with their own message.
    let output = server.cli(&[
        "admin",
        "issue",
        "Bob",
        "--out",
        dir.path().join("b.toml").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "invalid admin name \"Bob\": uppercase character 'B' at position 0 is not allowed: names are lowercase"
        ),
        "{stderr}"
    );

    // A name is issued again once its credential is revoked.
    assert!(server.cli(&["admin", "revoke", "bob"]).status.success());
    let again = dir.path().join("bob-again.toml");
    let output = server.cli(&["admin", "issue", "bob", "--out", again.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(run_cli(&server.url(), &again, &["hosts"]).status.success());
}

/// A client certificate refused by rustls during the TLS handshake: the
/// client sees a transport error (with TLS 1.3 it may consider its own
/// handshake done, and then sees the alert, or only the connection closed or
/// a broken pipe), never an answer from a service; the server logs `reason`.
/// The error of the first call on a channel whose handshake the server
/// refused. Under TLS 1.3 the client finishes its side first; the call then
/// fails when the connection closes, or, when the channel never notices the
/// close, waits forever (seen once in a CI run, with no socket left between
/// the two): after 10 s that is "no answer within 10 s". Still never an
/// answer from a service; the server's log line is what proves the refusal.
async fn refused_call<T>(call: impl std::future::Future<Output = Result<T, tonic::Status>>) -> String {
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Err(status)) => status.to_string(),
        Ok(Ok(_)) => panic!("a call over a refused handshake was answered"),
        Err(_) => "no answer within 10 s".to_owned(),
    }
}

async fn assert_refused_in_handshake(client_error: &str, server: &TestServer, reason: &str) {
    assert!(
        client_error.contains("received fatal alert")
            || client_error.contains("connection closed")
            || client_error.contains("broken pipe")
            || client_error.contains("no answer within"),
        "{client_error}"
    );
    // The server logs after it has sent its alert: wait for the line.
    let line = format!("TLS handshake failed error={reason}");
    wait_for(
        "the server to log the handshake refusal",
        Duration::from_secs(5),
        || {
            let log = server.log();
            let found = log.contains(&line);
            async move {
                if found {
                    Ok(())
                } else {
                    Err(log)
                }
            }
        },
    )
    .await;
}

/// The actions of `ccfleet audit --limit LIMIT`, as "action target".
fn audit_actions(server: &TestServer, limit: &str) -> Vec<String> {
    server
        .cli_json(&["audit", "--limit", limit])
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            format!(
                "{} {}",
                entry["action"].as_str().unwrap(),
                entry["target"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_admin_actions_cannot_flush_a_host_removal_out_of_the_audit_log() {
    const TOKENS: usize = 10_100;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = TestServer::start(&data, &[]);
    server.enroll("web-1").await;
    server.enroll("web-2").await;
    let removed = server.cli(&["host", "remove", "web-1"]);
    assert!(removed.status.success(), "{removed:?}");

    // 10,100 token creations, 16 at a time over one admin connection.
    let client = AdminClient::new(server.channel_as(&server.admin_credential()).await);
    let mut creations = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut client = client.clone();
        creations.spawn(async move {
            for _ in (worker..TOKENS).step_by(16) {
                let request = pb::CreateJoinTokenRequest {
                    ttl_seconds: 3600,
                    uses: 1,
                    labels: Default::default(),
                };
                client.create_join_token(request).await.expect("token created");
            }
        });
    }
    while let Some(done) = creations.join_next().await {
        done.unwrap();
    }
    let removed = server.cli(&["host", "remove", "web-2"]);
    assert!(removed.status.success(), "{removed:?}");
    let newest = audit_actions(&server, "10000");
    assert_eq!(newest.len(), 10_000);
    assert_eq!(newest[0], "host.remove web-2");

    // Every entry is still stored, the first removal included: read the
    // store the server wrote, once it has stopped.
    let (status, _) = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let store = ccfleet_server::store::Store::open_when_released(|| ccfleet_server::store::Store::open(&data)).unwrap();
    let entries = store.audit(0, usize::MAX).unwrap();
    let count = |action: &str, target: Option<&str>| {
        entries
            .iter()
            .filter(|entry| entry.action == action && target.is_none_or(|target| entry.target == target))
            .count()
    };
    assert_eq!(count("token.create", None), TOKENS + 2, "two tokens enrolled the hosts");
    assert_eq!(count("host.remove", Some("web-1")), 1);
    assert_eq!(count("host.remove", Some("web-2")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_log_refuses_admin_actions_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--audit-max-entries", "3"]);
    // The host's enrolment token is the first entry.
    let mut agent = TestAgent::connect(
        server.channel_for("web-1").await,
        "web-1",
        vec![observed("blog.coop.example", "ghost", "1.3.0")],
    )
    .await
    .unwrap();
    agent
        .send(pb::AgentMessage {
            seq: 1,
            body: Some(pb::agent_message::Body::Alert(pb::AlertEvent {
                domain: "blog.coop.example".into(),
                outcome: pb::OperationOutcome::RolledBack as i32,
                severity: pb::AlertSeverity::Warning as i32,
                reason: "health check failed".into(),
                operation_id: "op-1".into(),
                ..Default::default()
            })),
        })
        .await;
    assert_eq!(agent.next_ack().await.unwrap(), 1);
    let alert_id = server.cli_json(&["alerts"])[0]["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let created = server.cli(&["token", "create"]);
        assert!(created.status.success(), "{created:?}");
    }
    assert_eq!(audit_actions(&server, "100").len(), 3);
    let tokens_before = server.cli_json(&["token", "ls"]);

    // Full: each action is refused with the flag's name, and nothing changed.
    for args in [
        vec!["token", "create"],
        vec!["host", "remove", "web-1"],
        vec!["alerts", "ack", alert_id.as_str(), "--reason", "known"],
        vec!["admin", "revoke", "nobody"],
    ] {
        let output = server.cli(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(stderr.contains("--audit-max-entries"), "{args:?}: {stderr}");
    }
    assert_eq!(server.cli_json(&["token", "ls"]), tokens_before);
    assert_eq!(host_ids(&server), ["web-1"]);
    assert_eq!(server.cli_json(&["alerts"])[0]["state"], "open");
    assert_eq!(audit_actions(&server, "100").len(), 3);
}
