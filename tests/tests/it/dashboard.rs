//! `ccfleet dashboard` end to end: the real server, simulated agents and a
//! test agent, the real dashboard process, and headless Chromium over
//! WebDriver. Each page shows what `ccfleet --json` shows; a rollout started
//! from the CLI advances on its page without a reload and is paused from it;
//! requests without the token, from another Host or another origin are
//! refused. Screenshots land in `target/dashboard-screenshots/`.

use std::process::Output;
use std::time::Duration;

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_tests::browser::{screenshot_directory, Browser};
use ccfleet_tests::dashboard::TestDashboard;
use ccfleet_tests::server::{observed, run_cli, TestAgent, TestServer};
use ccfleet_tests::simulated::{Behaviour, SimulatedAgent};
use ccfleet_tests::wait_for;
use fantoccini::Locator;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// The CLI on a blocking thread, so agents keep running meanwhile.
async fn cli(server: &TestServer, args: &[&str]) -> Output {
    let (url, credentials) = (server.url(), server.admin_credential_path());
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&url, &credentials, &args)
    })
    .await
    .unwrap()
}

async fn cli_json(server: &TestServer, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = cli(server, &all).await;
    assert!(
        output.status.success(),
        "ccfleet {all:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("ccfleet --json prints JSON")
}

/// A host with a ghost app whose upgrade was rolled back: an alert with a
/// snapshot and an operation record, as the real agent reports them.
async fn host_with_an_alert(server: &TestServer) -> TestAgent {
    let mut agent = TestAgent::connect(
        server.channel_for("blog-host").await,
        "blog-host",
        vec![observed("blog.coop.example", "ghost", "1.3.0+6.42.0")],
    )
    .await
    .unwrap();
    let events = [
        Body::Result(pb::OperationResult {
            operation_id: "op-7".into(),
            domain: "blog.coop.example".into(),
            outcome: pb::OperationOutcome::RolledBack as i32,
            from_version: "1.3.0+6.42.0".into(),
            to_version: "1.4.0+6.43.0".into(),
            running_version: "1.3.0+6.42.0".into(),
            message: "health gate failed: GET /ghost/api/admin/site/ answered 502".into(),
        }),
        Body::Alert(pb::AlertEvent {
            domain: "blog.coop.example".into(),
            recipe: "ghost".into(),
            from_version: "1.3.0+6.42.0".into(),
            to_version: "1.4.0+6.43.0".into(),
            running_version: "1.3.0+6.42.0".into(),
            outcome: pb::OperationOutcome::RolledBack as i32,
            severity: pb::AlertSeverity::Warning as i32,
            reason: "health gate failed: GET /ghost/api/admin/site/ answered 502".into(),
            operation_id: "op-7".into(),
            snapshot_path: "/var/lib/ccfleet-agent/snapshots/blog.coop.example/op-7".into(),
            raised_at: Some(prost_types_now()),
            cleared: false,
        }),
    ];
    for (index, body) in events.into_iter().enumerate() {
        let seq = index as u64 + 2;
        agent.send(pb::AgentMessage { seq, body: Some(body) }).await;
        assert_eq!(agent.next_ack().await.expect("event acknowledged"), seq);
    }
    agent
}

fn prost_types_now() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: 0,
    }
}

async fn attribute(browser: &Browser, selector: &str, name: &str) -> Result<String, String> {
    let element = browser
        .client
        .find(Locator::Css(selector))
        .await
        .map_err(|error| format!("no {selector}: {error}"))?;
    element
        .attr(name)
        .await
        .map_err(|error| error.to_string())?
        .ok_or_else(|| format!("{selector} has no {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_show_the_fleet_and_a_rollout_is_followed_and_paused_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--heartbeat-timeout", "10m"]);
    let mut agents = Vec::new();
    for index in 0..4 {
        let host_id = format!("web-{index}");
        let credential = server.enroll(&host_id).await;
        // The canary is quick; the later hosts take long enough for the page to pause the rollout.
        let behaviour = Behaviour {
            delay: Duration::from_secs(if index == 0 { 2 } else { 15 }),
            available_version: "1.1.0".into(),
            ..Behaviour::default()
        };
        agents.push(SimulatedAgent::start(
            server.url(),
            credential,
            &host_id,
            "fixture",
            "1.0.0",
            behaviour,
        ));
    }
    let _blog = host_with_an_alert(&server).await;
    wait_for("five hosts online with their apps", DEADLINE, || async {
        let apps = cli_json(&server, &["apps"]).await;
        let count = apps.as_array().unwrap().len();
        if count == 5 {
            Ok(())
        } else {
            Err(format!("{count} apps"))
        }
    })
    .await;

    let mut dashboard = TestDashboard::start(&server.url(), &server.admin_credential_path(), &[]);
    let browser = Browser::start(1280, 900).await;
    let shots = screenshot_directory();

    // The address with the token signs the browser in and drops the token from the address bar.
    browser.client.goto(&dashboard.url).await.unwrap();
    let address = browser.client.current_url().await.unwrap();
    assert_eq!(address.as_str(), format!("{}/", dashboard.origin));

    // Overview: every host with its status and app count, the totals.
    let hosts = cli_json(&server, &["hosts"]).await;
    let hosts = hosts.as_array().unwrap();
    assert_eq!(browser.text("#hosts-total").await.unwrap(), hosts.len().to_string());
    for host in hosts {
        let id = host["host_id"].as_str().unwrap();
        let row = format!("#hosts tr[data-host='{id}']");
        assert_eq!(
            browser.text(&format!("{row} [data-field=status]")).await.unwrap(),
            host["status"].as_str().unwrap(),
            "{id}"
        );
        assert_eq!(
            browser.text(&format!("{row} [data-field=app_count]")).await.unwrap(),
            host["app_count"].to_string(),
            "{id}"
        );
        if let Some(seen) = host["last_seen"].as_str() {
            let shown = attribute(&browser, &format!("{row} [data-field=last_seen]"), "datetime")
                .await
                .unwrap();
            assert!(
                !shown.is_empty() && shown.len() == seen.len(),
                "{id}: {shown} vs {seen}"
            );
        }
    }
    assert_eq!(browser.text("#alerts-total").await.unwrap(), "1");
    let chart = attribute(&browser, "figure.chart[data-recipe=fixture] svg", "aria-label")
        .await
        .unwrap();
    assert_eq!(chart, "versions of fixture");
    let versions = cli_json(&server, &["versions", "fixture"]).await;
    let running = versions["versions"][0]["apps"].as_array().unwrap().len();
    assert_eq!(
        browser
            .text("figure.chart[data-recipe=fixture] .bar-count")
            .await
            .unwrap(),
        running.to_string()
    );
    browser.screenshot(&shots, "overview").await;

    // The version matrix: every app's running version in its cell, coloured by state.
    browser
        .client
        .goto(&format!("{}/matrix", dashboard.origin))
        .await
        .unwrap();
    let apps = cli_json(&server, &["apps"]).await;
    for app in apps.as_array().unwrap() {
        let domain = app["domain"].as_str().unwrap();
        let cell = format!("#host-{} a[data-domain='{domain}']", app["host_id"].as_str().unwrap());
        let text = browser.text(&format!("{cell} .version")).await.unwrap();
        assert_eq!(text, app["version"].as_str().unwrap(), "{domain}");
    }
    assert_eq!(
        attribute(&browser, "a[data-domain='blog.coop.example']", "data-state")
            .await
            .unwrap(),
        "failing",
        "a rolled-back upgrade colours the cell"
    );
    assert_eq!(
        browser
            .text("a[data-domain='app.web-0.example.org'] .newer")
            .await
            .unwrap(),
        "→ 1.1.0"
    );
    browser.screenshot(&shots, "matrix").await;

    // Paginated as ListApps is: two apps a page, the "Next page" link carries the page token.
    browser
        .client
        .goto(&format!("{}/matrix?page_size=2", dashboard.origin))
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let cells = browser
            .client
            .find_all(Locator::Css("#matrix a[data-domain]"))
            .await
            .unwrap();
        assert!(cells.len() <= 2, "{} cells on a page of 2", cells.len());
        for cell in cells {
            seen.push(cell.attr("data-domain").await.unwrap().unwrap());
        }
        match browser.client.find(Locator::Css("a[rel=next]")).await {
            Ok(next) => next.click().await.unwrap(),
            Err(_) => break,
        }
    }
    let mut expected: Vec<String> = apps
        .as_array()
        .unwrap()
        .iter()
        .map(|app| app["domain"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected, "every app once over the pages");
    browser
        .client
        .goto(&format!("{}/matrix", dashboard.origin))
        .await
        .unwrap();

    // App detail: versions, the alert with its snapshot, the operation.
    browser
        .client
        .find(Locator::Css("a[data-domain='blog.coop.example']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(browser.text("#running-version").await.unwrap(), "1.3.0+6.42.0");
    assert_eq!(
        browser.text("#snapshot").await.unwrap(),
        "/var/lib/ccfleet-agent/snapshots/blog.coop.example/op-7"
    );
    let operations = cli_json(&server, &["operations", "--app", "blog.coop.example"]).await;
    let operation_id = operations[0]["operation_id"].as_str().unwrap();
    assert!(browser.text("#operations").await.unwrap().contains(operation_id));
    browser.screenshot(&shots, "app").await;

    // Alerts: what `ccfleet alerts` lists.
    browser
        .client
        .goto(&format!("{}/alerts", dashboard.origin))
        .await
        .unwrap();
    let alerts = cli_json(&server, &["alerts"]).await;
    for alert in alerts.as_array().unwrap() {
        let row = format!(
            "#alerts tr[data-host='{}'][data-domain='{}']",
            alert["host_id"].as_str().unwrap(),
            alert["domain"].as_str().unwrap()
        );
        let text = browser.text(&row).await.unwrap();
        assert!(text.contains(alert["reason"].as_str().unwrap()), "{text}");
        assert!(text.contains(alert["outcome"].as_str().unwrap()), "{text}");
    }
    browser.screenshot(&shots, "alerts").await;

    // A rollout started from the CLI appears in the list ...
    let started = cli_json(
        &server,
        &["upgrade", "fixture", "--to", "1.1.0", "--canary", "1", "--batch", "1"],
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    browser
        .client
        .goto(&format!("{}/rollouts", dashboard.origin))
        .await
        .unwrap();
    let state = browser
        .text(&format!("#rollouts tr[data-rollout='{id}'] [data-field=state]"))
        .await
        .unwrap();
    assert_eq!(state, "running");
    browser.screenshot(&shots, "rollouts").await;

    // ... and advances on its page without a reload: a mark left in the page survives.
    browser
        .client
        .find(Locator::LinkText(&id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .client
        .execute("window.dashboardTestMark = 'same page'; return null;", vec![])
        .await
        .unwrap();
    // The live part is replaced as events arrive: a read may meet a replaced element and is tried again.
    let done_now = || async {
        browser
            .text("#done")
            .await?
            .parse::<u64>()
            .map_err(|error| format!("{error}"))
    };
    let first_done: u64 = wait_for("the live page's count", DEADLINE, done_now).await;
    wait_for("a host done on the live page", DEADLINE, || async {
        let done = done_now().await?;
        if done > first_done {
            Ok(())
        } else {
            Err(format!("{done} done"))
        }
    })
    .await;
    let mark = browser
        .client
        .execute("return window.dashboardTestMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, Value::String("same page".into()), "the page was reloaded");
    browser.screenshot(&shots, "rollout").await;

    // Pausing from the page: a confirmation, then the rollout is paused and audited.
    // The button is in the live part, which an event may replace between finding and clicking.
    wait_for("a click on Pause", DEADLINE, || async {
        let button = browser
            .client
            .find(Locator::Css("#action-pause"))
            .await
            .map_err(|error| error.to_string())?;
        button.click().await.map_err(|error| error.to_string())
    })
    .await;
    browser
        .client
        .find(Locator::Css("#reason"))
        .await
        .unwrap()
        .send_keys("checking the canary by hand")
        .await
        .unwrap();
    browser.screenshot(&shots, "confirm").await;
    browser
        .client
        .find(Locator::Css("#confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the rollout paused (CLI)", DEADLINE, || async {
        let rollout = cli_json(&server, &["rollout", "show", &id]).await;
        if rollout["state"] == "paused" {
            Ok(())
        } else {
            Err(format!("{}", rollout["state"]))
        }
    })
    .await;
    wait_for("the page to say paused", DEADLINE, || async {
        let state = attribute(&browser, "#rollout-state", "data-state").await?;
        if state == "paused" {
            Ok(())
        } else {
            Err(state)
        }
    })
    .await;
    // The live page shows each host's state as `ccfleet rollout show` does.
    wait_for("the page's hosts as the CLI shows them", DEADLINE, || async {
        let rollout = cli_json(&server, &["rollout", "show", &id]).await;
        for host in rollout["hosts"].as_array().unwrap() {
            let host_id = host["host_id"].as_str().unwrap();
            let shown = browser
                .text(&format!("#rollout tr[data-host='{host_id}'] [data-field=outcome]"))
                .await?;
            if shown != host["outcome"].as_str().unwrap() {
                return Err(format!("{host_id}: page {shown}, CLI {}", host["outcome"]));
            }
        }
        Ok(())
    })
    .await;
    let audit = cli_json(&server, &["audit"]).await;
    let pause = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["action"] == "rollout.pause")
        .unwrap_or_else(|| panic!("no rollout.pause in {audit:#}"));
    assert_eq!(pause["target"], id.as_str());
    assert_eq!(pause["who"], "admin");
    assert!(
        pause["detail"]
            .as_str()
            .unwrap()
            .contains("checking the canary by hand"),
        "{pause}"
    );
    browser
        .client
        .goto(&format!("{}/audit", dashboard.origin))
        .await
        .unwrap();
    assert!(browser.text("#audit").await.unwrap().contains("rollout.pause"));
    browser.screenshot(&shots, "audit").await;

    // Pages other than a rollout's refresh in place: an action taken from the CLI appears
    // in the audit page without a reload.
    browser
        .client
        .execute("window.dashboardTestMark = 'audit page'; return null;", vec![])
        .await
        .unwrap();
    let resumed = cli(&server, &["rollout", "resume", &id, "--reason", "resumed from the cli"]).await;
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    wait_for("the CLI's resume on the audit page", DEADLINE, || async {
        let table = browser.text("#audit").await?;
        if table.contains("rollout.resume") {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    let mark = browser
        .client
        .execute("return window.dashboardTestMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, Value::String("audit page".into()), "the audit page was reloaded");

    // Phone-sized: the matrix still reads.
    browser.client.set_window_size(400, 860).await.unwrap();
    browser
        .client
        .goto(&format!("{}/rollouts/{id}", dashboard.origin))
        .await
        .unwrap();
    browser.screenshot(&shots, "rollout-phone").await;

    // Ctrl-C stops the dashboard cleanly, with a live stream open.
    let status = dashboard.interrupt(Duration::from_secs(10));
    assert!(
        status.is_some_and(|status| status.success()),
        "the dashboard did not exit 0 within 10 s of SIGINT: {status:?}"
    );
    browser.close().await;
    for agent in agents {
        agent.stop().await;
    }
}

/// A plain HTTP client that follows no redirects and keeps no cookies.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_refuses_requests_without_the_token_from_other_hosts_and_other_origins() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);

    let refused = cli(&server, &["dashboard", "--listen", "192.0.2.1:0"]).await;
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is not a loopback address"), "{stderr}");

    let dashboard = TestDashboard::start(&server.url(), &server.admin_credential_path(), &[]);
    let client = http();
    let origin = &dashboard.origin;
    let pages = [
        "/",
        "/matrix",
        "/hosts/web-1/apps/blog.example.org",
        "/rollouts",
        "/rollouts/r1",
        "/rollouts/r1/events",
        "/rollouts/r1/do/pause",
        "/alerts",
        "/audit",
        "/assets/dashboard.js",
    ];
    for page in pages {
        let answer = client.get(format!("{origin}{page}")).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 401, "GET {page} without the token");
        let wrong = client.get(format!("{origin}{page}?token=0000")).send().await.unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "GET {page} with a wrong token");
    }
    for action in ["pause", "resume", "promote", "abort"] {
        let answer = client
            .post(format!("{origin}/rollouts/r1/do/{action}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("csrf=x&reason=y")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 401, "POST {action} without the token");
    }

    // The token signs in: a cookie that scripts cannot read and other sites do not send.
    let signed_in = client.get(&dashboard.url).send().await.unwrap();
    assert_eq!(signed_in.status().as_u16(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = client
        .get(format!("{origin}/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("script-src 'self'"),
        "{policy}"
    );
    assert_eq!(page.headers()["referrer-policy"], "same-origin");

    // DNS rebinding: the right cookie under another name for this address is refused.
    let port = origin.rsplit(':').next().unwrap();
    let rebound = client
        .get(format!("{origin}/"))
        .header("host", format!("attacker.example:{port}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 400);

    // A cross-origin POST, even one that carries the cookie, is refused; so is one without the CSRF token.
    let form = "reason=from+elsewhere";
    let cross = client
        .post(format!("{origin}/rollouts/r1/do/abort"))
        .header("cookie", &cookie)
        .header("origin", "http://attacker.example")
        .header("sec-fetch-site", "cross-site")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf=guess&{form}"))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status().as_u16(), 403);
    assert!(cross.text().await.unwrap().contains("cross-origin request refused"));
    let no_csrf = client
        .post(format!("{origin}/rollouts/r1/do/abort"))
        .header("cookie", &cookie)
        .header("origin", origin.as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status().as_u16(), 403);
    assert!(no_csrf.text().await.unwrap().contains("CSRF"));
    let audit = cli_json(&server, &["audit"]).await;
    assert!(
        !audit
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["action"] == "rollout.abort"),
        "{audit:#}"
    );
}
