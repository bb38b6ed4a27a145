//! Admin listings in pages, over the real server and CLI: every item exactly
//! once and in order whatever the page size, bad page tokens refused, and the
//! server's in-memory index true after inventory updates, a host removal and
//! a SIGKILL restart.

use ccfleet_proto::pb;
use ccfleet_tests::server::{observed, run_cli, TestAgent, TestServer};
use serde_json::Value;
use tonic::transport::Channel;

type Admin = pb::admin_client::AdminClient<Channel>;

async fn hosts_in_pages(admin: &mut Admin, page_size: u32) -> (Vec<String>, usize) {
    let (mut hosts, mut pages, mut page_token) = (Vec::new(), 0, String::new());
    loop {
        let request = pb::ListHostsRequest { page_size, page_token };
        let response = admin.list_hosts(request).await.unwrap().into_inner();
        assert!(
            page_size == 0 || response.hosts.len() <= page_size as usize,
            "a page is at most page_size"
        );
        hosts.extend(response.hosts.into_iter().map(|host| host.host_id));
        pages += 1;
        page_token = response.next_page_token;
        if page_token.is_empty() {
            return (hosts, pages);
        }
    }
}

async fn apps_in_pages(admin: &mut Admin, recipe: &str, page_size: u32) -> Vec<String> {
    let (mut apps, mut page_token) = (Vec::new(), String::new());
    loop {
        let request = pb::ListAppsRequest {
            recipe: recipe.into(),
            page_size,
            page_token,
        };
        let response = admin.list_apps(request).await.unwrap().into_inner();
        apps.extend(response.apps.into_iter().map(|app| {
            let app_observed = app.app.unwrap();
            format!(
                "{} {} {}",
                app.host_id, app_observed.domain, app_observed.observed_version
            )
        }));
        page_token = response.next_page_token;
        if page_token.is_empty() {
            return apps;
        }
    }
}

/// (version, "host domain") in listing order, every page's groups flattened.
async fn versions_in_pages(admin: &mut Admin, recipe: &str, page_size: u32) -> Vec<(String, String)> {
    let (mut rows, mut page_token) = (Vec::new(), String::new());
    loop {
        let request = pb::RecipeVersionsRequest {
            recipe: recipe.into(),
            page_size,
            page_token,
        };
        let response = admin.recipe_versions(request).await.unwrap().into_inner();
        for group in response.versions {
            for app in group.apps {
                rows.push((
                    group.version.clone(),
                    format!("{} {}", app.host_id, app.app.unwrap().domain),
                ));
            }
        }
        page_token = response.next_page_token;
        if page_token.is_empty() {
            return rows;
        }
    }
}

fn inventory(index: usize) -> Vec<pb::ObservedApp> {
    let ghost = ["1.3.0+6.42.0-alpine", "1.4.0+6.43.0-alpine", "2.0.0+7.0.0"][index % 3];
    let mut apps = vec![
        observed(&format!("blog.h{index}.example"), "ghost", ghost),
        observed(&format!("wiki.h{index}.example"), "hedgedoc", "2.1.0+1.10.0"),
    ];
    if index.is_multiple_of(2) {
        apps.push(observed(&format!("news.h{index}.example"), "ghost", ""));
    }
    apps
}

fn cli_listing(server: &TestServer, args: &[&str]) -> Value {
    server.cli_json(args)
}

/// The CLI's JSON with the fields that change over time (status, last seen)
/// left out, for comparisons across a restart.
fn without_liveness(mut value: Value) -> Value {
    if let Some(items) = value.as_array_mut() {
        for item in items {
            if let Some(object) = item.as_object_mut() {
                object.remove("status");
                object.remove("host_status");
                object.remove("last_seen");
            }
        }
    }
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_through_every_item_once_and_stay_true_across_updates_removal_and_restart() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let server = TestServer::start(&data, &[]);
    let mut agents = Vec::new();
    for index in 0..7 {
        let host = format!("host-{index}");
        agents.push(
            TestAgent::connect(server.channel_for(&host).await, &host, inventory(index))
                .await
                .unwrap(),
        );
    }
    let mut admin = Admin::new(server.channel_as(&server.admin_credential()).await);

    // Hosts: the same list, sorted and without repeats, at every page size.
    let (all_hosts, pages) = hosts_in_pages(&mut admin, 0).await;
    assert_eq!(pages, 1);
    let expected: Vec<String> = (0..7).map(|index| format!("host-{index}")).collect();
    assert_eq!(all_hosts, expected);
    for page_size in [1, 2, 3, 6, 7, 8] {
        let (hosts, pages) = hosts_in_pages(&mut admin, page_size).await;
        assert_eq!(hosts, expected, "page size {page_size}");
        assert_eq!(
            pages,
            7usize.div_ceil(page_size as usize).max(1),
            "page size {page_size}"
        );
    }

    // Apps and versions: paging changes nothing but the number of requests.
    for recipe in ["", "ghost", "hedgedoc", "unknown-recipe"] {
        let whole = apps_in_pages(&mut admin, recipe, 0).await;
        for page_size in [1, 2, 5] {
            assert_eq!(
                apps_in_pages(&mut admin, recipe, page_size).await,
                whole,
                "{recipe:?} by {page_size}"
            );
        }
    }
    let versions = versions_in_pages(&mut admin, "ghost", 0).await;
    let order: Vec<&str> = versions.iter().map(|(version, _)| version.as_str()).collect();
    let mut expected_order = order.clone();
    expected_order.dedup();
    assert_eq!(
        expected_order,
        ["2.0.0+7.0.0", "1.4.0+6.43.0-alpine", "1.3.0+6.42.0-alpine", ""],
        "newest first, unknown last, each version one run"
    );
    assert_eq!(versions.len(), 7 + 4);
    for page_size in [1, 2, 4] {
        assert_eq!(
            versions_in_pages(&mut admin, "ghost", page_size).await,
            versions,
            "by {page_size}"
        );
    }

    // Bad tokens: made up, or from another listing.
    let apps_token = admin
        .list_apps(pb::ListAppsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!apps_token.is_empty());
    for token in ["garbage", "00", apps_token.as_str()] {
        let status = admin
            .list_hosts(pb::ListHostsRequest {
                page_size: 1,
                page_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{token}: {status:?}");
        assert!(status.message().starts_with("page_token: "), "{}", status.message());
    }
    let status = admin
        .recipe_versions(pb::RecipeVersionsRequest {
            recipe: "ghost".into(),
            page_size: 1,
            page_token: apps_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // The CLI follows pages: one item per request prints the same as one request.
    for args in [
        &["hosts"][..],
        &["apps"][..],
        &["apps", "--recipe", "ghost"][..],
        &["versions", "ghost"][..],
    ] {
        let whole = cli_listing(&server, args);
        let mut paged_args = vec!["--page-size", "1"];
        paged_args.extend_from_slice(args);
        assert_eq!(cli_listing(&server, &paged_args), whole, "{args:?}");
    }

    // An inventory update moves an app between version groups.
    agents[0]
        .send_inventory(1, vec![observed("blog.h0.example", "ghost", "2.0.0+7.0.0")])
        .await
        .unwrap();
    let versions = versions_in_pages(&mut admin, "ghost", 2).await;
    assert!(versions.contains(&("2.0.0+7.0.0".into(), "host-0 blog.h0.example".into())));
    assert!(
        !versions.iter().any(|(_, app)| app == "host-0 news.h0.example"),
        "dropped from the inventory"
    );
    assert_eq!(
        apps_in_pages(&mut admin, "hedgedoc", 1).await.len(),
        6,
        "host-0's hedgedoc left with its inventory"
    );

    // Removal forgets the host and its apps in every listing.
    let output = server.cli(&["host", "remove", "host-3"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (hosts, _) = hosts_in_pages(&mut admin, 2).await;
    assert!(!hosts.contains(&"host-3".to_string()));
    assert_eq!(hosts.len(), 6);
    assert!(!apps_in_pages(&mut admin, "", 2)
        .await
        .iter()
        .any(|app| app.starts_with("host-3 ")));
    assert!(!versions_in_pages(&mut admin, "ghost", 3)
        .await
        .iter()
        .any(|(_, app)| app.starts_with("host-3 ")));

    // SIGKILL and restart: the index is rebuilt from the store, equal to before.
    let before: Vec<Value> = [&["hosts"][..], &["apps"][..], &["versions", "ghost"][..]]
        .iter()
        .map(|args| without_liveness(cli_listing(&server, args)))
        .collect();
    server.kill();
    drop(agents);
    let server = TestServer::start(&data, &[]);
    let after: Vec<Value> = [&["hosts"][..], &["apps"][..], &["versions", "ghost"][..]]
        .iter()
        .map(|args| without_liveness(cli_listing(&server, args)))
        .collect();
    assert_eq!(after[0], before[0], "hosts after the restart");
    assert_eq!(after[1], before[1], "apps after the restart");
    // Version groups nest apps; compare them without liveness too.
    let strip = |mut versions: Value| {
        for group in versions["versions"].as_array_mut().unwrap() {
            group["apps"] = without_liveness(group["apps"].take());
        }
        versions
    };
    assert_eq!(
        strip(after[2].clone()),
        strip(before[2].clone()),
        "versions after the restart"
    );
}

/// `ccfleet ARGS` as people read it: its stdout, after checking it exited 0.
fn cli_text(server: &TestServer, args: &[&str]) -> String {
    let output = server.cli(args);
    assert!(
        output.status.success(),
        "ccfleet {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_listings_say_what_to_do_and_tables_fit_100_columns() {
    let directory = tempfile::tempdir().unwrap();
    let server = TestServer::start(&directory.path().join("data"), &[]);
    assert_eq!(
        cli_text(&server, &["hosts"]),
        "no hosts yet: create a join token with `ccfleet token create`\n"
    );

    let mut app = observed("blog.example.org", "ghost", "2.0.0+2.0");
    app.declared_version = "1.0.0+1.0".into();
    app.available_version = "2.1.0+2.1".into();
    app.available_newest = "3.0.0+3.0".into();
    app.drift = vec![format!("a long drift text {}", "x".repeat(300))];
    let _agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![app])
        .await
        .unwrap();
    let unknown = "no host runs recipe nosuch (known recipes: ghost)\n";
    assert_eq!(cli_text(&server, &["versions", "nosuch"]), unknown);
    assert_eq!(cli_text(&server, &["apps", "--recipe", "nosuch"]), unknown);
    assert_eq!(server.cli_json(&["apps", "--recipe", "nosuch"]), serde_json::json!([]));

    // Not a terminal: 100 columns; versions whole, drift cut.
    let table = cli_text(&server, &["apps"]);
    for line in table.lines() {
        assert!(line.chars().count() <= 100, "wider than 100 columns:\n{table}");
    }
    for whole in ["2.0.0+2.0", "1.0.0+1.0", "2.1.0+2.1", "(3.0.0+3.0)", "blog.example.org"] {
        assert!(table.contains(whole), "{whole} broken:\n{table}");
    }
    assert!(table.contains('…') && !table.contains(&"x".repeat(100)), "{table}");
    assert!(
        table.contains("AVAILABLE: newest release in the running major"),
        "{table}"
    );
    let json = server.cli_json(&["apps"]);
    assert_eq!(json[0]["drift"][0].as_str().unwrap().len(), 318);
}

#[test]
fn a_credential_others_can_read_is_a_warning_or_with_strict_an_error_and_a_certificate_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().unwrap();
    let server = TestServer::start(&directory.path().join("data"), &[]);
    let open = directory.path().join("open-credential.toml");
    std::fs::copy(server.admin_credential_path(), &open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();

    let output = run_cli(&server.url(), &open, &["hosts"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("warning: the admin credential") && stderr.contains("open to other users (mode 0644)"),
        "{stderr}"
    );

    let output = run_cli(&server.url(), &open, &["--strict", "hosts"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refused because of --strict"), "{stderr}");

    let certificate = directory.path().join("cert.pem");
    let credential: toml::Value =
        toml::from_str(&std::fs::read_to_string(server.admin_credential_path()).unwrap()).unwrap();
    std::fs::write(&certificate, credential["certificate"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(&certificate, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = run_cli(&server.url(), &certificate, &["hosts"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("this looks like a PEM certificate or key, not a credential file"),
        "{stderr}"
    );
}
