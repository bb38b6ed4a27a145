//! The store's own test suite: the typed API, exactly-once events, the recipe
//! index, durability across reopen, format versioning, and a stress run of
//! the server's real write pattern through `StoreHandle`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use ccfleet_proto::RecipeName;

fn host(name: &str) -> HostId {
    name.parse().unwrap()
}

fn app(domain: &str, recipe: &str, version: Option<&str>) -> AppRecord {
    AppRecord {
        declared_version: version.map(|v| v.parse().unwrap()),
        observed_at: 1,
        ..AppRecord::converged(
            domain.parse().unwrap(),
            recipe.parse().unwrap(),
            version.map(|v| v.parse().unwrap()),
        )
    }
}

fn facts() -> HostFactsRecord {
    HostFactsRecord {
        hostname: "web-1".into(),
        os: "NixOS".into(),
        arch: "x86_64".into(),
        docker_version: "28.2.2".into(),
        labels: BTreeMap::from([("site".into(), "berlin".into())]),
    }
}

/// Enrolment creates hosts in the server; these tests start from an
/// enrolled host and then say hello as it.
trait RegisterEnrolled {
    fn register_enrolled(
        &self,
        host_id: &HostId,
        agent_version: &str,
        facts: &HostFactsRecord,
        inventory: &[AppRecord],
        now: UnixMillis,
    ) -> Result<HostRecord, StoreError>;
}

impl RegisterEnrolled for Store {
    fn register_enrolled(
        &self,
        host_id: &HostId,
        agent_version: &str,
        facts: &HostFactsRecord,
        inventory: &[AppRecord],
        now: UnixMillis,
    ) -> Result<HostRecord, StoreError> {
        if self.host(host_id)?.is_none() {
            self.put_host(&HostRecord::new(host_id.clone(), now))?;
        }
        self.register_host(host_id, agent_version, facts, inventory, now)
    }
}

#[test]
fn hello_from_a_host_that_was_never_enrolled_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let error = store
        .register_host(&host("stranger"), "0.1.0", &facts(), &[], 1)
        .unwrap_err();
    assert_eq!(error.to_string(), "host stranger is not registered");
    assert!(store.hosts().unwrap().is_empty());
}

fn listing(store: &Store, recipe: Option<&str>) -> Vec<String> {
    let recipe = recipe.map(|r| r.parse::<RecipeName>().unwrap());
    store
        .apps(recipe.as_ref())
        .unwrap()
        .into_iter()
        .map(|(host, app)| {
            format!(
                "{host} {} {} {}",
                app.domain,
                app.recipe,
                app.observed_version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into())
            )
        })
        .collect()
}

#[test]
fn register_then_replace_inventory_keeps_the_index_true() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let web = host("web-1");
    store
        .register_enrolled(
            &web,
            "0.1.0",
            &facts(),
            &[
                app("blog.example.org", "ghost", Some("1.0.0+5.0")),
                app("wiki.example.org", "hedgedoc", Some("2.0.0+1.9")),
            ],
            10,
        )
        .unwrap();
    assert_eq!(
        listing(&store, Some("ghost")),
        ["web-1 blog.example.org ghost 1.0.0+5.0"]
    );

    // The blog is upgraded, the wiki removed, a new app appears.
    let outcome = store
        .apply_event(
            &web,
            1,
            &AgentEvent::Inventory(vec![
                app("blog.example.org", "ghost", Some("1.1.0+5.1")),
                app("chat.example.org", "matrix-synapse", None),
            ]),
        )
        .unwrap();
    assert_eq!(outcome, EventOutcome::Applied);
    assert_eq!(
        listing(&store, None),
        [
            "web-1 blog.example.org ghost 1.1.0+5.1",
            "web-1 chat.example.org matrix-synapse -"
        ]
    );
    assert_eq!(
        listing(&store, Some("hedgedoc")),
        Vec::<String>::new(),
        "the index forgot the removed app"
    );
    let stored = store.host(&web).unwrap().unwrap();
    assert_eq!((stored.last_seq, stored.app_count, stored.registered_at), (1, 2, 10));
}

#[test]
fn a_recipe_change_of_one_domain_moves_it_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let web = host("web-1");
    store
        .register_enrolled(
            &web,
            "0.1.0",
            &facts(),
            &[app("site.example.org", "custom-html", Some("1.0.0"))],
            1,
        )
        .unwrap();
    store
        .apply_event(
            &web,
            1,
            &AgentEvent::Inventory(vec![app("site.example.org", "custom-html-tiny", Some("1.0.0"))]),
        )
        .unwrap();
    assert_eq!(listing(&store, Some("custom-html")), Vec::<String>::new());
    assert_eq!(
        listing(&store, Some("custom-html-tiny")),
        ["web-1 site.example.org custom-html-tiny 1.0.0"]
    );
}

#[test]
fn events_apply_once_per_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let web = host("web-1");
    store.register_enrolled(&web, "0.1.0", &facts(), &[], 1).unwrap();
    let result = AgentEvent::Result {
        operation_id: "op-1".into(),
        domain: "blog.example.org".parse().unwrap(),
        outcome: OperationOutcomeRecord::Succeeded,
        from_version: Some("1.0.0".parse().unwrap()),
        to_version: Some("1.1.0".parse().unwrap()),
        running_version: Some("1.1.0".parse().unwrap()),
        message: "ok".into(),
    };
    assert_eq!(store.apply_event(&web, 1, &result).unwrap(), EventOutcome::Applied);
    assert_eq!(store.apply_event(&web, 1, &result).unwrap(), EventOutcome::Duplicate);
    // A stale inventory re-sent after a reconnect must not overwrite newer state.
    assert_eq!(
        store
            .apply_event(
                &web,
                1,
                &AgentEvent::Inventory(vec![app("x.example.org", "ghost", None)])
            )
            .unwrap(),
        EventOutcome::Duplicate
    );
    assert_eq!(listing(&store, None), Vec::<String>::new());
    let operation = store.operation(&web, "op-1").unwrap().unwrap();
    assert_eq!(operation.outcome, Some(OperationOutcomeRecord::Succeeded));
}

#[test]
fn events_for_unknown_hosts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let error = store
        .apply_event(&host("ghost-host"), 1, &AgentEvent::Inventory(vec![]))
        .unwrap_err();
    assert_eq!(error.to_string(), "host ghost-host is not registered");
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .register_enrolled(
                &host("web-1"),
                "0.1.0",
                &facts(),
                &[app("blog.example.org", "ghost", Some("1.0.0"))],
                5,
            )
            .unwrap();
        store.flush().unwrap();
    }
    let store = Store::reopen(dir.path());
    assert_eq!(store.hosts().unwrap().len(), 1);
    assert_eq!(store.host(&host("web-1")).unwrap().unwrap().facts, facts());
    assert_eq!(listing(&store, Some("ghost")), ["web-1 blog.example.org ghost 1.0.0"]);
}

#[test]
fn records_of_an_unknown_format_are_reported_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.hosts.insert("web-1", b"\x09{}".to_vec()).unwrap();
    let error = store.host(&host("web-1")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "record in tree hosts has format 9, this build reads format 1"
    );
    store.hosts.insert("web-2", vec![RECORD_FORMAT, b'x']).unwrap();
    assert_eq!(
        store.host(&host("web-2")).unwrap_err().to_string(),
        "cannot decode a record in tree hosts"
    );
}

#[test]
fn an_unchanged_inventory_keeps_observation_times() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let web = host("web-1");
    store
        .register_enrolled(
            &web,
            "0.1.0",
            &facts(),
            &[app("blog.example.org", "ghost", Some("1.0.0"))],
            1,
        )
        .unwrap();
    let mut again = app("blog.example.org", "ghost", Some("1.0.0"));
    again.observed_at = 99;
    store.apply_event(&web, 1, &AgentEvent::Inventory(vec![again])).unwrap();
    assert_eq!(store.host_apps(&web).unwrap()[0].observed_at, 1);
}

/// The server's real write pattern, through the store thread: many hosts
/// connecting, each sending a burst of inventory updates and operation events
/// concurrently, interleaved with admin reads. A hang in sled (ARCHITECTURE.md,
/// "Storage") shows as the watchdog firing; the counts prove nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_of_the_real_write_pattern() {
    const HOSTS: usize = 200;
    const UPDATES_PER_HOST: u64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let handle = StoreHandle::open(dir.path()).unwrap();
    let work = async {
        let mut tasks = Vec::new();
        for index in 0..HOSTS {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                let host_id = host(&format!("host-{index}"));
                let id = host_id.clone();
                handle
                    .write(move |store| store.register_enrolled(&id, "0.1.0", &facts(), &[], 1))
                    .await
                    .unwrap();
                for seq in 1..=UPDATES_PER_HOST {
                    let id = host_id.clone();
                    let version = format!("1.{seq}.0+6.42.0-alpine");
                    let event = if seq % 5 == 0 {
                        AgentEvent::Progress {
                            operation_id: format!("op-{seq}"),
                            domain: "blog.example.org".parse().unwrap(),
                            phase: OperationPhaseRecord::Deploying,
                            message: "x".repeat(1500),
                        }
                    } else {
                        AgentEvent::Inventory(vec![
                            app("blog.example.org", "ghost", Some(&version)),
                            app("chat.example.org", "matrix-synapse", Some("2.0.0+1.100")),
                        ])
                    };
                    handle
                        .write(move |store| store.apply_event(&id, seq, &event))
                        .await
                        .unwrap();
                    if seq % 10 == 0 {
                        handle
                            .read(|store| store.apps(Some(&"ghost".parse().unwrap())))
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .expect("store writes stalled for 120 s: possible sled deadlock (ARCHITECTURE.md, Storage)");
    let hosts = handle.read(|store| store.hosts()).await.unwrap();
    assert_eq!(hosts.len(), HOSTS);
    assert!(hosts.iter().all(|host| host.last_seq == UPDATES_PER_HOST));
    let ghosts = handle
        .read(|store| store.apps(Some(&"ghost".parse().unwrap())))
        .await
        .unwrap();
    assert_eq!(ghosts.len(), HOSTS);
    assert!(ghosts
        .iter()
        .all(|(_, app)| app.observed_version.as_ref().unwrap().to_string() == "1.24.0+6.42.0-alpine"));
    // The thread's counters saw every write, grouped under fewer flushes.
    let stats = handle.stats();
    let writes = (HOSTS as u64) * (1 + UPDATES_PER_HOST);
    assert_eq!(stats.writes, writes, "{stats:?}");
    assert!(stats.reads >= (HOSTS as u64) * (UPDATES_PER_HOST / 10), "{stats:?}");
    assert!(stats.flushes >= 1 && stats.flushes < writes, "{stats:?}");
    assert!(
        stats.write_nanos > 0 && stats.flush_nanos > 0 && stats.queue_nanos > 0,
        "{stats:?}"
    );
}

#[test]
fn removing_a_host_forgets_its_apps_and_operations_and_revokes_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let web = host("web-1");
    store
        .register_enrolled(
            &web,
            "0.1.0",
            &facts(),
            &[app("blog.example.org", "ghost", Some("1.0.0"))],
            1,
        )
        .unwrap();
    store
        .register_enrolled(
            &host("web-2"),
            "0.1.0",
            &facts(),
            &[app("news.example.org", "ghost", Some("1.0.0"))],
            1,
        )
        .unwrap();
    let certificate = |serial: &str, identity: &str| CertificateRecord {
        serial: serial.into(),
        kind: CertificateKind::Host,
        identity: identity.into(),
        issued_at: 1,
        not_after: u64::MAX,
        revoked_at: None,
    };
    store.record_certificate(&certificate("aa", "web-1")).unwrap();
    store.record_certificate(&certificate("bb", "web-2")).unwrap();
    let result = AgentEvent::Result {
        operation_id: "op-1".into(),
        domain: "blog.example.org".parse().unwrap(),
        outcome: OperationOutcomeRecord::Succeeded,
        from_version: None,
        to_version: None,
        running_version: None,
        message: String::new(),
    };
    store.apply_event(&web, 1, &result).unwrap();

    assert_eq!(store.remove_host(&web, 5).unwrap(), Some(vec!["aa".to_string()]));
    assert!(store.host(&web).unwrap().is_none());
    assert_eq!(listing(&store, Some("ghost")), ["web-2 news.example.org ghost 1.0.0"]);
    assert!(store.operation(&web, "op-1").unwrap().is_none());
    assert_eq!(store.revoked_serials(2).unwrap(), ["aa"]);
    assert_eq!(
        store.remove_host(&web, 6).unwrap(),
        None,
        "removing twice finds nothing"
    );
}

#[test]
fn records_over_the_size_limit_are_refused_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let web = host("web-1");
    store.register_enrolled(&web, "1.0", &facts(), &[], 1).unwrap();
    let mut huge = app("blog.example.org", "ghost", None);
    huge.drift = vec!["x".repeat(MAX_RECORD_BYTES)];
    let error = store
        .apply_event(&web, 1, &AgentEvent::Inventory(vec![huge]))
        .unwrap_err();
    assert!(matches!(error, StoreError::TooLarge { .. }), "{error:?}");
    assert_eq!(store.host(&web).unwrap().unwrap().last_seq, 0, "nothing was applied");
    assert!(store.host_apps(&web).unwrap().is_empty());
}

#[test]
fn an_admin_name_with_a_valid_credential_is_not_issued_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let certificate = |serial: &str, not_after: UnixMillis| CertificateRecord {
        serial: serial.into(),
        kind: CertificateKind::Admin,
        identity: "alice".into(),
        issued_at: 1,
        not_after,
        revoked_at: None,
    };
    assert_eq!(
        store.record_admin_certificate(&certificate("01", 1_000), 10).unwrap(),
        Ok(())
    );
    assert_eq!(
        store.record_admin_certificate(&certificate("02", 1_000), 10).unwrap(),
        Err("01".to_owned())
    );
    // Revoked or expired credentials free the name.
    store
        .revoke_certificates_of(CertificateKind::Admin, "alice", 20)
        .unwrap();
    assert_eq!(
        store.record_admin_certificate(&certificate("03", 2_000), 30).unwrap(),
        Ok(())
    );
    assert_eq!(
        store
            .record_admin_certificate(&certificate("04", 5_000), 2_500)
            .unwrap(),
        Ok(())
    );
    assert!(
        store.certificate("02").unwrap().is_none(),
        "the refused one was never recorded"
    );
}

#[test]
fn alerts_are_replaced_cleared_and_removed_with_their_host() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let web = host("web-1");
    store.register_enrolled(&web, "1.0", &facts(), &[], 1).unwrap();
    let alert = |raised_at: UnixMillis, cleared: bool| {
        AgentEvent::Alert(AlertEventRecord {
            domain: "blog.example.org".parse().unwrap(),
            recipe: None,
            from_version: None,
            to_version: None,
            running_version: None,
            outcome: OperationOutcomeRecord::RolledBack,
            severity: AlertSeverityRecord::Warning,
            reason: "unhealthy".into(),
            operation_id: None,
            snapshot_path: String::new(),
            raised_at,
            received_at: raised_at,
            reported_raised_at: None,
            cleared,
        })
    };
    store.apply_event(&web, 1, &alert(5, false)).unwrap();
    store.apply_event(&web, 2, &alert(7, false)).unwrap();
    let alerts = store.alerts(None).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].raised_at, 7, "a newer raise replaces the app's alert");
    assert_eq!(
        store.apply_event(&web, 2, &alert(9, true)).unwrap(),
        EventOutcome::Duplicate
    );
    assert_eq!(store.alerts(Some(&web)).unwrap().len(), 1);
    store.apply_event(&web, 3, &alert(9, true)).unwrap();
    assert!(store.alerts(None).unwrap().is_empty());
    store.apply_event(&web, 4, &alert(11, false)).unwrap();
    store.remove_host(&web, 12).unwrap();
    assert!(store.alerts(None).unwrap().is_empty());
}

#[test]
fn enrolment_spends_a_use_refuses_takeovers_and_allows_a_lost_answer_to_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_token(&TokenRecord {
            id: "t1".into(),
            secret_hash: "hash".into(),
            created_at: 0,
            expires_at: 1_000,
            uses_left: 1,
            revoked: false,
            labels: BTreeMap::from([("site".into(), "berlin".into())]),
        })
        .unwrap();
    let enrolment = |host_id: &str, serial: &str, key: &str, secret: &str| Enrolment {
        token_id: "t1".into(),
        secret_hash: secret.into(),
        host_id: host(host_id),
        facts: facts(),
        certificate: CertificateRecord {
            serial: serial.into(),
            kind: CertificateKind::Host,
            identity: host_id.into(),
            issued_at: 10,
            not_after: 500,
            revoked_at: None,
        },
        public_key: key.into(),
        now: 10,
    };
    let refused = |refusal| Ok(Err(refusal));
    assert_eq!(
        store
            .enrol(&enrolment("web-1", "01", "k1", "wrong"))
            .map_err(|e| e.to_string()),
        refused(EnrolmentRefusal::Token(TokenRefusal::Invalid))
    );
    assert_eq!(store.enrol(&enrolment("web-1", "02", "k1", "hash")).unwrap(), Ok(()));
    let web1 = store.host(&host("web-1")).unwrap().unwrap();
    assert_eq!(web1.labels.get("site").map(String::as_str), Some("berlin"));
    // The use is spent: another host is refused; the same host with another key too.
    assert_eq!(
        store
            .enrol(&enrolment("web-2", "03", "k2", "hash"))
            .map_err(|e| e.to_string()),
        refused(EnrolmentRefusal::Token(TokenRefusal::UsedUp))
    );
    assert_eq!(
        store
            .enrol(&enrolment("web-1", "04", "k9", "hash"))
            .map_err(|e| e.to_string()),
        refused(EnrolmentRefusal::HostExists)
    );
    // The same host, token and key before it ever connected: a retry.
    assert_eq!(store.enrol(&enrolment("web-1", "05", "k1", "hash")).unwrap(), Ok(()));
    assert!(store.certificate("05").unwrap().is_some());
    assert!(store.certificate("04").unwrap().is_none() && store.certificate("03").unwrap().is_none());
    // Once it said hello, the same request is a takeover.
    store.register_host(&host("web-1"), "1.0", &facts(), &[], 20).unwrap();
    assert_eq!(
        store
            .enrol(&enrolment("web-1", "06", "k1", "hash"))
            .map_err(|e| e.to_string()),
        refused(EnrolmentRefusal::HostExists)
    );
}

#[test]
fn operations_list_newest_first_through_the_time_index_which_pruning_and_removal_keep_true() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap().with_operation_quota(3);
    for name in ["web-1", "web-2"] {
        store.register_enrolled(&host(name), "1.0", &facts(), &[], 1).unwrap();
    }
    let write = |host_name: &str, id: &str, domain: &str, at: UnixMillis| {
        let host_record = store.host(&host(host_name)).unwrap().unwrap();
        store
            .write_operation(
                &host_record,
                &OperationRecord {
                    host_id: host(host_name),
                    operation_id: id.into(),
                    domain: domain.parse().unwrap(),
                    phase: OperationPhaseRecord::Deploying,
                    outcome: None,
                    from_version: None,
                    to_version: None,
                    running_version: None,
                    message: String::new(),
                    updated_at: at,
                },
            )
            .unwrap();
    };
    let list = |store: &Store, host_name: Option<&str>, domain: Option<&str>, limit: usize| -> Vec<String> {
        let filter = OperationFilter {
            host_id: host_name.map(host),
            domain: domain.map(|domain| domain.parse().unwrap()),
            limit,
        };
        store
            .operations(&filter)
            .unwrap()
            .iter()
            .map(|operation| {
                format!(
                    "{} {} {}",
                    operation.host_id, operation.operation_id, operation.updated_at
                )
            })
            .collect()
    };
    write("web-1", "a", "a.example.org", 10);
    write("web-2", "b", "b.example.org", 20);
    write("web-1", "c", "b.example.org", 30);
    // An update moves the operation in time, leaving no stale index entry.
    write("web-1", "a", "a.example.org", 40);
    assert_eq!(list(&store, None, None, 10), ["web-1 a 40", "web-1 c 30", "web-2 b 20"]);
    assert_eq!(list(&store, None, None, 2), ["web-1 a 40", "web-1 c 30"]);
    assert_eq!(
        list(&store, None, Some("b.example.org"), 10),
        ["web-1 c 30", "web-2 b 20"]
    );
    assert_eq!(list(&store, Some("web-1"), None, 10), ["web-1 a 40", "web-1 c 30"]);
    assert_eq!(
        list(&store, Some("web-2"), Some("a.example.org"), 10),
        Vec::<String>::new()
    );
    assert_eq!(store.operations_by_time.len(), 3);

    // Quota 3 (+1 slack): four records are kept, the fifth prunes web-1
    // down to its newest three.
    write("web-1", "d", "a.example.org", 50);
    write("web-1", "e", "a.example.org", 60);
    assert_eq!(list(&store, Some("web-1"), None, 10).len(), 4);
    write("web-1", "f", "a.example.org", 65);
    assert_eq!(
        list(&store, Some("web-1"), None, 10),
        ["web-1 f 65", "web-1 e 60", "web-1 d 50"]
    );
    assert_eq!(store.operations_by_time.len(), store.operations.len());

    // Retention, then removal of a host: the index follows.
    assert_eq!(store.prune_operations_before(55).unwrap(), 2);
    assert_eq!(list(&store, None, None, 10), ["web-1 f 65", "web-1 e 60"]);
    store.remove_host(&host("web-1"), 70).unwrap();
    assert!(list(&store, None, None, 10).is_empty());
    assert!(store.operations_by_time.is_empty());

    // A store written before the index existed is indexed when opened.
    write("web-2", "g", "b.example.org", 80);
    store.operations_by_time.clear().unwrap();
    drop(store);
    let store = Store::reopen(dir.path());
    assert_eq!(list(&store, None, None, 10), ["web-2 g 80"]);
}

#[test]
fn a_store_in_use_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path()).unwrap();
    let error = Store::open(dir.path()).err().expect("the second open is refused");
    assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");
    assert!(error.to_string().contains("in use by another process"), "{error}");
}

#[test]
fn alerts_are_held_to_the_quota_paged_in_key_order_and_acknowledged_with_their_audit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let web = host("web-1");
    store
        .register_enrolled(&web, "1.0", &facts(), &[app("listed.example.org", "ghost", None)], 1)
        .unwrap();
    let alert = |domain: &str| {
        AgentEvent::Alert(AlertEventRecord {
            domain: domain.parse().unwrap(),
            recipe: None,
            from_version: None,
            to_version: None,
            running_version: None,
            outcome: OperationOutcomeRecord::RolledBack,
            severity: AlertSeverityRecord::Warning,
            reason: "unhealthy".into(),
            operation_id: Some("op-1".into()),
            snapshot_path: String::new(),
            raised_at: 5,
            received_at: 5,
            reported_raised_at: None,
            cleared: false,
        })
    };
    let slack = crate::model::alerts::ALERT_SLACK;
    for n in 0..slack + 10 {
        let outcome = store
            .apply_event(&web, n as u64 + 1, &alert(&format!("a{n:03}.example.org")))
            .unwrap();
        assert_eq!(
            outcome,
            EventOutcome::Applied,
            "a refused alert is still applied (its seq)"
        );
    }
    store.apply_event(&web, 100, &alert("listed.example.org")).unwrap();
    assert_eq!(store.alerts(None).unwrap().len(), slack + 1);
    assert_eq!(store.gauges().alerts_refused(), 10);
    assert_eq!(store.host(&web).unwrap().unwrap().last_seq, 100);

    // Pages of 5 in key order cover every alert once.
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let filter = AlertFilter {
            host_id: Some(web.clone()),
            all: false,
            after,
            limit: 5,
        };
        let (page, next) = store.alert_page(&filter, 10).unwrap();
        assert!(page.len() <= 5);
        listed.extend(page.into_iter().map(|alert| alert.domain.to_string()));
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    assert_eq!(listed.len(), slack + 1);

    // Acknowledged: out of the open listing, in the audit log; ids are unique.
    let ids: std::collections::BTreeSet<u64> = store.alerts(None).unwrap().iter().map(|alert| alert.id).collect();
    assert_eq!(ids.len(), slack + 1);
    let id = store.alerts(None).unwrap()[0].id;
    let ack = AlertAckRecord {
        by: "alice".into(),
        reason: "known".into(),
        at: 20,
        until: None,
    };
    let entry = AuditRecord {
        at: 20,
        who: "alice".into(),
        action: "alert.ack".into(),
        target: id.to_string(),
        detail: "known".into(),
    };
    assert!(matches!(
        store.acknowledge_alert(id, ack.clone(), &entry, 20).unwrap(),
        AckOutcome::Acknowledged(_)
    ));
    assert_eq!(
        store.acknowledge_alert(9999, ack, &entry, 20).unwrap(),
        AckOutcome::NotFound
    );
    let open = |all| {
        let filter = AlertFilter {
            host_id: None,
            all,
            after: None,
            limit: 1000,
        };
        store.alert_page(&filter, 30).unwrap().0.len()
    };
    assert_eq!((open(false), open(true)), (slack, slack + 1));
    assert_eq!(store.audit(0, 10).unwrap().len(), 1);
}

/// Group commit: a grouped write is answered only after a flush, which
/// waits for its window unless an urgent write (or a stop) comes first.
#[tokio::test]
async fn a_grouped_write_is_answered_after_the_flush_an_urgent_write_brings_forward() {
    let dir = tempfile::tempdir().unwrap();
    let group = GroupCommit {
        window: Duration::from_secs(3600),
        ..GroupCommit::default()
    };
    let handle = StoreHandle::start_with(Store::open(dir.path()).unwrap(), group).unwrap();
    let (durable, answers) = std::sync::mpsc::channel();
    let written = durable.clone();
    handle
        .write_grouped(
            |store| store.register_enrolled(&host("web-1"), "0.1.0", &facts(), &[], 1),
            move |result| written.send(result.map(|_| "first")).unwrap(),
        )
        .unwrap();
    // The write has run (jobs run in order) but is not flushed.
    let flushes_before = handle.stats().flushes;
    assert!(handle.read(|store| store.host(&host("web-1"))).await.unwrap().is_some());
    assert!(answers.try_recv().is_err(), "answered before a flush");
    assert_eq!(handle.stats().flushes, flushes_before);
    handle.write(|_| Ok(())).await.unwrap();
    assert_eq!(
        answers.try_recv().unwrap().unwrap(),
        "first",
        "the urgent flush covered it"
    );
    // One left waiting when the store stops is answered after the last flush.
    handle
        .write_grouped(
            |_| Ok(()),
            move |result| durable.send(result.map(|()| "second")).unwrap(),
        )
        .unwrap();
    handle.close().await;
    assert_eq!(answers.try_recv().unwrap().unwrap(), "second");
    let reopened = Store::reopen(dir.path());
    assert!(
        reopened.host(&host("web-1")).unwrap().is_some(),
        "the grouped write is durable"
    );
}

/// At a steady trickle of grouped writes the flushes are bounded by the
/// window, not by the number of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_of_grouped_writes_are_bounded_by_the_window() {
    const WRITES: u64 = 200;
    let window = Duration::from_millis(20);
    let dir = tempfile::tempdir().unwrap();
    let group = GroupCommit {
        window,
        ..GroupCommit::default()
    };
    let handle = StoreHandle::start_with(Store::open(dir.path()).unwrap(), group).unwrap();
    let id = host("web-1");
    handle
        .write(move |store| store.register_enrolled(&id, "0.1.0", &facts(), &[], 1))
        .await
        .unwrap();
    let (durable, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let before = handle.stats();
    let started = std::time::Instant::now();
    for seq in 1..=WRITES {
        let durable = durable.clone();
        let event = AgentEvent::Inventory(vec![app("blog.example.org", "ghost", Some(&format!("1.{seq}.0")))]);
        handle
            .write_grouped(
                move |store| store.apply_event(&host("web-1"), seq, &event),
                move |outcome| durable.send((seq, outcome.unwrap())).unwrap(),
            )
            .unwrap();
        // A trickle: one write a millisecond (load generation, not a wait
        // for anything).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut answered = Vec::new();
    while answered.len() < WRITES as usize {
        answered.push(answers.recv().await.unwrap());
    }
    let elapsed = started.elapsed();
    let expected: Vec<(u64, EventOutcome)> = (1..=WRITES).map(|seq| (seq, EventOutcome::Applied)).collect();
    assert_eq!(answered, expected, "answered once each, in order");
    let flushes = handle.stats().flushes - before.flushes;
    let bound = elapsed.as_millis() as u64 / window.as_millis() as u64 + 2;
    assert!(
        flushes <= bound,
        "{flushes} flushes for {WRITES} writes over {elapsed:?}: more than one per {window:?} window"
    );
}
