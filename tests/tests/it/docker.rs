//! The agent against the real Docker Engine, through the abra test double.
//!
//! Every test drives the agent library (`Reconciler`) with the double as its
//! abra; the double really deploys the fixture recipe on the local swarm, so
//! every state and version asserted here was read back from Docker.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ccfleet_agent::abra::Abra;
use ccfleet_agent::config::{AbraConfig, AppConfig, Config};
use ccfleet_agent::docker::Docker;
use ccfleet_agent::reconcile::{AppState, ObservedApp, ReconcileAction, ReconcileErrorKind, Reconciler};
use ccfleet_agent::upgrade::model::Outcome;
use ccfleet_proto::{CoopVersion, Domain, RecipeName};
use ccfleet_tests::docker::{
    abra_double, deployed_version_of_stack, docker, DockerTest, FIXTURE_RECIPE, V1_0, V1_1, V1_2_BROKEN, V2_0,
};
use ccfleet_tests::wait_for;

/// One `[[app]]` table of the fixture recipe.
fn app_toml(domain: &str, version: &str, extra: &str) -> String {
    format!(
        "[[app]]\ndomain = \"{domain}\"\nrecipe = \"{FIXTURE_RECIPE}\"\nversion = \"{version}\"\n\
         deploy_timeout = \"90s\"\n{extra}\n"
    )
}

fn config(test: &DockerTest, apps: &str) -> Config {
    Config::from_toml_str_with_hostname(&test.agent_config(apps), Path::new("agent.toml"), "docker-test")
        .unwrap_or_else(|error| panic!("test config refused: {error}"))
}

async fn reconciler(config: &Config) -> Reconciler {
    let docker = Docker::connect()
        .await
        .unwrap_or_else(|error| panic!("the Docker tests need the Docker Engine: {error}"));
    Reconciler::from_config(config, docker).with_poll_interval(Duration::from_millis(250))
}

fn app<'a>(config: &'a Config, domain: &str) -> &'a AppConfig {
    config.apps.iter().find(|app| app.domain.as_str() == domain).unwrap()
}

fn with_version(app: &AppConfig, version: &str) -> AppConfig {
    AppConfig {
        version: version.parse().unwrap(),
        ..app.clone()
    }
}

/// The environment of the app's main service as Docker runs it (JSON list).
fn service_env(domain: &str) -> String {
    let stack = domain.replace('.', "_");
    let output = docker(&[
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
        &format!("{stack}_app"),
    ]);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// (domain, state, observed version, drift) for compact assertions.
fn brief(observed: &ObservedApp) -> (String, AppState, Option<String>, Vec<String>) {
    (
        observed.domain.to_string(),
        observed.state,
        observed.observed_version.as_ref().map(ToString::to_string),
        observed.drift.clone(),
    )
}

#[tokio::test]
async fn stacks_are_named_as_abra_names_them_cut_to_45_or_stack_name() {
    let mut test = DockerTest::new("stk");
    // Longer than 45 characters once `.` becomes `_`: abra cuts the stack name.
    let long = test.domain("a-label-that-makes-the-stack-name-long");
    let named = test.domain("named");
    let stack_name = test.stack("own");
    let config = config(
        &test,
        &format!(
            "{}{}",
            app_toml(&long, V1_0, ""),
            app_toml(&named, V1_0, &format!("[app.env]\nSTACK_NAME = \"{stack_name}\"\n"))
        ),
    );
    let cut: String = long.replace('.', "_").chars().take(45).collect();
    assert!(long.len() > 45, "{long}");
    let reconciler = reconciler(&config).await;
    for domain in [&long, &named] {
        let declared = app(&config, domain);
        reconciler.reconcile_app(declared).await.unwrap();
        // Observed through the stack abra made: converged, at its version.
        assert_eq!(
            brief(&reconciler.observe(declared).await),
            (domain.clone(), AppState::Converged, Some(V1_0.to_owned()), vec![])
        );
    }
    assert_eq!(deployed_version_of_stack(&cut).as_deref(), Some(V1_0));
    assert_eq!(deployed_version_of_stack(&stack_name).as_deref(), Some(V1_0));
    assert_eq!(deployed_version_of_stack(&named.replace('.', "_")), None);
}

#[tokio::test]
async fn two_apps_converge_and_are_observed_at_their_versions() {
    let mut test = DockerTest::new("two");
    let first = test.domain("a");
    let second = test.domain("b");
    let secret_file = test.path().join("api_key");
    std::fs::write(&secret_file, "from-a-file").unwrap();
    let apps = app_toml(&first, V1_0, "")
        + &app_toml(
            &second,
            V1_1,
            &format!(
                "depends_on = [\"{first}\"]\nenv = {{ GREETING = \"hello\" }}\nsecrets = {{ api_key = {:?} }}",
                secret_file.display().to_string()
            ),
        );
    let config = config(&test, &apps);
    let reconciler = reconciler(&config).await;

    let results = reconciler.reconcile_all().await;
    let summaries: Vec<(String, String)> = results
        .iter()
        .map(|(domain, result)| {
            let summary = match result {
                Ok(outcome) => outcome.summary(),
                Err(error) => panic!("{error}"),
            };
            (domain.to_string(), summary)
        })
        .collect();
    assert_eq!(
        summaries,
        [
            // The recipe's api_key is not declared for the first app: abra generates it.
            (
                first.clone(),
                format!("created, generated the other secrets, deployed {V1_0}")
            ),
            (
                second.clone(),
                format!("created, wrote env keys GREETING, inserted secrets api_key, deployed {V1_1}")
            ),
        ]
    );

    let observed: Vec<_> = reconciler.observe_all().await.iter().map(brief).collect();
    assert_eq!(
        observed,
        [
            (first.clone(), AppState::Converged, Some(V1_0.to_owned()), vec![]),
            (second.clone(), AppState::Converged, Some(V1_1.to_owned()), vec![]),
        ]
    );
    let all = reconciler.observe_all().await;
    assert_eq!((all[1].running_replicas, all[1].desired_replicas), (1, 1));

    // The secret came from the file, with the version the recipe's env names.
    let stack = second.replace('.', "_");
    let secret = docker(&[
        "secret",
        "inspect",
        "--format",
        "{{.Spec.Name}}",
        &format!("{stack}_api_key_v1"),
    ]);
    assert!(secret.status.success(), "{secret:?}");

    // A second pass changes nothing.
    let again: Vec<Vec<ReconcileAction>> = reconciler
        .reconcile_all()
        .await
        .into_iter()
        .map(|(_, result)| result.unwrap().actions)
        .collect();
    assert_eq!(
        again,
        [
            vec![ReconcileAction::AlreadyConverged],
            vec![ReconcileAction::AlreadyConverged]
        ]
    );
}

#[tokio::test]
async fn concurrent_reconciles_of_one_app_run_one_at_a_time() {
    let mut test = DockerTest::new("lock");
    let domain = test.domain("app");
    let config = config(&test, &app_toml(&domain, V1_1, ""));
    let reconciler = reconciler(&config).await;
    let declared = app(&config, &domain);
    let (first, second) = tokio::join!(reconciler.reconcile_app(declared), reconciler.reconcile_app(declared));
    let mut summaries = [first.unwrap().summary(), second.unwrap().summary()];
    summaries.sort();
    assert_eq!(
        summaries,
        [
            "already converged".to_owned(),
            format!("created, generated the other secrets, deployed {V1_1}")
        ]
    );
    let creations = test
        .abra_log()
        .iter()
        .filter(|line| line.starts_with("app new"))
        .count();
    assert_eq!(creations, 1);
}

#[tokio::test]
async fn a_raised_declared_version_goes_through_the_transaction_and_a_lowered_one_never_downgrades() {
    let mut test = DockerTest::new("move");
    let domain = test.domain("app");
    let text = test.agent_config_with(
        "min_healthy_time = \"1s\"\n",
        &app_toml(&domain, V1_0, "stateful = false"),
    );
    let config = Config::from_toml_str_with_hostname(&text, Path::new("agent.toml"), "docker-test").unwrap();
    let reconciler = reconciler(&config).await;
    let declared = app(&config, &domain);
    reconciler.reconcile_app(declared).await.unwrap();

    let newer = with_version(declared, V1_1);
    let before = reconciler.observe(&newer).await;
    assert_eq!(before.drift, [format!("declared {V1_1}, running {V1_0}")]);
    let upgraded = reconciler.reconcile_app(&newer).await.unwrap();
    assert_eq!(
        upgraded.actions,
        [ReconcileAction::Upgraded {
            from: V1_0.parse().unwrap(),
            to: V1_1.parse().unwrap()
        }]
    );
    assert_eq!(
        brief(&reconciler.observe(&newer).await),
        (domain.clone(), AppState::Converged, Some(V1_1.to_owned()), vec![])
    );

    // A major pin is held: majors need allow_major (README.md, "How pins, autoUpdate and rollouts combine").
    let major = reconciler
        .reconcile_app(&with_version(declared, V2_0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            major.kind,
            ReconcileErrorKind::UpgradeNotApplied {
                outcome: Outcome::Held,
                ..
            }
        ),
        "{major}"
    );

    // A lowered declaration never downgrades: it is drift, not a rollback.
    let lowered = reconciler.reconcile_app(declared).await.unwrap();
    assert_eq!(lowered.actions, [ReconcileAction::AlreadyConverged]);
    assert_eq!(
        brief(&reconciler.observe(declared).await),
        (
            domain.clone(),
            AppState::Converged,
            Some(V1_1.to_owned()),
            vec![format!("declared {V1_0}, running {V1_1}")]
        )
    );
    // abra wrote the deployed version back into TYPE=.
    let env = std::fs::read_to_string(test.env_file(&domain)).unwrap();
    assert!(env.contains(&format!("TYPE={FIXTURE_RECIPE}:{V1_1}\n")), "{env}");
    let moves: Vec<String> = test
        .abra_log()
        .into_iter()
        .filter(|line| line.starts_with("app upgrade") || line.starts_with("app rollback"))
        .collect();
    assert_eq!(moves, [format!("app upgrade -n -c -o {domain} {V1_1}")]);
}

#[tokio::test]
async fn a_missing_app_is_reported_not_deployed_with_drift() {
    let mut test = DockerTest::new("missing");
    let domain = test.domain("absent");
    let config = config(&test, &app_toml(&domain, V1_0, ""));
    let reconciler = reconciler(&config).await;
    let observed = reconciler.observe_all().await;
    assert_eq!(
        observed.iter().map(brief).collect::<Vec<_>>(),
        [(domain, AppState::NotDeployed, None, vec!["not deployed".to_owned()])]
    );
    assert_eq!(observed[0].declared_version, Some(V1_0.parse().unwrap()));
    assert!(test.abra_log().is_empty(), "observing must not run abra");
}

#[tokio::test]
async fn keys_written_by_abra_or_the_recipe_survive_owned_env_writes() {
    let mut test = DockerTest::new("env");
    let domain = test.domain("app");
    let first = config(&test, &app_toml(&domain, V1_0, "env = { GREETING = \"hello\" }"));
    let reconciler = reconciler(&first).await;
    reconciler.reconcile_app(app(&first, &domain)).await.unwrap();

    // What abra or an operator's recipe step adds behind the agent's back.
    let env_path = test.env_file(&domain);
    let mut text = std::fs::read_to_string(&env_path).unwrap();
    text.push_str("ADDED_BY_ABRA=keep-me\n");
    std::fs::write(&env_path, text).unwrap();

    let second = config(
        &test,
        &app_toml(&domain, V1_0, "env = { GREETING = \"bonjour\", MOTTO = \"two words\" }"),
    );
    let outcome = reconciler.reconcile_app(app(&second, &domain)).await.unwrap();
    assert_eq!(
        outcome.summary(),
        format!("wrote env keys GREETING, MOTTO, redeployed {V1_0} (env keys changed)")
    );
    let env = std::fs::read_to_string(&env_path).unwrap();
    for line in [
        format!("TYPE={FIXTURE_RECIPE}:{V1_0}"),
        format!("DOMAIN={domain}"),
        "RECIPE_SAMPLE_KEY=from-the-sample".to_owned(),
        "#GREETING=hello".to_owned(),
        "SECRET_API_KEY_VERSION=v1".to_owned(),
        "ADDED_BY_ABRA=keep-me".to_owned(),
        "GREETING=bonjour".to_owned(),
        "MOTTO='two words'".to_owned(),
    ] {
        assert!(
            env.lines().any(|existing| existing == line),
            "{line:?} missing from:\n{env}"
        );
    }
    assert_eq!(
        env.matches("GREETING=").count(),
        2,
        "one live assignment, one sample comment:\n{env}"
    );

    // The redeploy really reached the swarm: the service runs with the new value.
    let spec_env = service_env(&domain);
    assert!(spec_env.contains("\"GREETING=bonjour\""), "{spec_env}");
}

#[tokio::test]
async fn a_redeploy_that_failed_is_owed_until_it_succeeds() {
    let mut test = DockerTest::new("owed");
    let domain = test.domain("app");
    let first = config(&test, &app_toml(&domain, V1_0, "env = { GREETING = \"hello\" }"));
    let reconciler = reconciler(&first).await;
    reconciler.reconcile_app(app(&first, &domain)).await.unwrap();

    // The env key changes, and the redeploy that should apply it fails.
    let second = config(&test, &app_toml(&domain, V1_0, "env = { GREETING = \"bonjour\" }"));
    std::fs::write(test.abra_dir().join("fail-next-deploy"), "").unwrap();
    let error = reconciler.reconcile_app(app(&second, &domain)).await.unwrap_err();
    assert!(error.to_string().contains("deploy failed on purpose"), "{error}");

    // The env file already holds the new value; the next reconcile must still
    // redeploy instead of taking the running stack for converged.
    let outcome = reconciler.reconcile_app(app(&second, &domain)).await.unwrap();
    assert_eq!(outcome.summary(), format!("redeployed {V1_0} (env keys changed)"));
    let spec_env = service_env(&domain);
    assert!(spec_env.contains("\"GREETING=bonjour\""), "{spec_env}");
    // Paid: a further reconcile has nothing to do.
    let outcome = reconciler.reconcile_app(app(&second, &domain)).await.unwrap();
    assert_eq!(outcome.summary(), "already converged");
}

#[tokio::test]
async fn the_failing_health_version_is_observed_degraded() {
    let mut test = DockerTest::new("broken");
    let domain = test.domain("app");
    let apps = app_toml(&domain, V1_2_BROKEN, "").replace("deploy_timeout = \"90s\"", "deploy_timeout = \"8s\"");
    let config = config(&test, &apps);
    let reconciler = reconciler(&config).await;
    let declared = app(&config, &domain);

    let error = reconciler.reconcile_app(declared).await.unwrap_err();
    assert!(matches!(error.kind, ReconcileErrorKind::NotConverged { .. }), "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("{domain}: not converged at {V1_2_BROKEN} within 8s: ")),
        "{error}"
    );
    assert_eq!(
        error.actions,
        [
            ReconcileAction::Created,
            ReconcileAction::SecretsGenerated,
            ReconcileAction::Deployed {
                version: V1_2_BROKEN.parse().unwrap()
            }
        ]
    );

    let degraded = wait_for(
        "the broken release to be observed degraded",
        Duration::from_secs(60),
        || async {
            let observed = reconciler.observe(declared).await;
            if observed.state == AppState::Degraded {
                Ok(observed)
            } else {
                Err(observed.summary())
            }
        },
    )
    .await;
    assert_eq!(degraded.observed_version, Some(V1_2_BROKEN.parse().unwrap()));
    assert_eq!((degraded.running_replicas, degraded.desired_replicas), (0, 1));
    assert!(
        degraded
            .drift
            .iter()
            .any(|reason| reason.starts_with("not converged: 0/1 replicas (")),
        "{:?}",
        degraded.drift
    );
}

#[tokio::test]
async fn a_failed_dependency_skips_its_dependents_and_abra_output_is_kept() {
    let mut test = DockerTest::new("deps");
    let base = test.domain("base");
    let dependent = test.domain("dependent");
    // The fixture recipe has no 9.9.9: the double's `app new` refuses it.
    let apps = app_toml(&base, "9.9.9+9", "") + &app_toml(&dependent, V1_0, &format!("depends_on = [\"{base}\"]"));
    let config = config(&test, &apps);
    let reconciler = reconciler(&config).await;
    let results = reconciler.reconcile_all().await;
    let messages: Vec<(String, String)> = results
        .iter()
        .map(|(domain, result)| (domain.to_string(), result.as_ref().unwrap_err().to_string()))
        .collect();
    let abra_failure = format!(
        "{base}: cannot create the app (abra app new): `{} app new -n --server default --domain {base} {FIXTURE_RECIPE} 9.9.9+9` \
         failed (exit code 1): abra-double: recipe {FIXTURE_RECIPE} has no version 9.9.9+9 in {} \
         (abra recipe fetch {FIXTURE_RECIPE})",
        abra_double().display(),
        test.abra_dir().join("recipes").join(FIXTURE_RECIPE).display()
    );
    assert_eq!(messages[0], (base.clone(), abra_failure.clone()));
    assert_eq!(
        messages[1],
        (
            dependent.clone(),
            format!(
                "{dependent}: skipped: it depends on {base}, which failed: {}",
                abra_failure.trim_start_matches(&format!("{base}: "))
            )
        )
    );
    assert_eq!(
        results[0].1.as_ref().unwrap_err().abra_output().unwrap().exit_code,
        Some(1)
    );
    assert!(!test.abra_log().iter().any(|line| line.contains(&dependent)));
}

#[test]
fn the_abra_double_refuses_command_lines_outside_abra_md() {
    let test = DockerTest::new("refuse");
    let abra_dir = test.abra_dir();
    let run = |arguments: &[&str]| {
        let output = Command::new(abra_double())
            .args(arguments)
            .env("ABRA_DIR", &abra_dir)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        )
    };
    assert_eq!(run(&["server", "add", "--local"]).0, Some(0));
    let refused = |arguments: &[&str]| {
        let (code, stderr) = run(arguments);
        assert_eq!(code, Some(1), "{arguments:?} was accepted");
        let expected = format!("abra-double: unsupported command line: abra {}", arguments.join(" "));
        assert!(stderr.starts_with(expected.trim_end()), "{stderr}");
    };
    refused(&["app", "deploy", "-n", "x.example.org", V1_0]); // missing -c
    refused(&["app", "deploy", "x.example.org", V1_0, "-n", "-c"]); // flags after the arguments
    refused(&["app", "deploy", "-n", "-c", "x.example.org", V1_0, "-f"]);
    refused(&["app", "deploy", "-n", "-c", "--chaos", "x.example.org", V1_0]);
    refused(&["app", "upgrade", "x.example.org", V1_1]); // no -n -c
    refused(&["app", "new", "-n", "--domain", "x.example.org", FIXTURE_RECIPE, V1_0]); // no --server
    refused(&["app", "secret", "generate", "-n", "x.example.org"]); // no --all
    refused(&[
        "app",
        "secret",
        "insert",
        "x.example.org",
        "a",
        "v1",
        "/dev/null",
        "-f",
        "-n",
    ]);
    refused(&["app", "undeploy", "x.example.org"]);
    refused(&["app", "undeploy", "x.example.org", "-n"]);
    refused(&["app", "remove", "-n", "x.example.org"]);
    refused(&["server", "add", "remote.example.org"]);
    refused(&["recipe", "versions", FIXTURE_RECIPE]); // its table is never read
    refused(&["recipe", "fetch"]);
    refused(&["upgrade"]);
    refused(&[]);
    // Well-formed but wrong: refused with abra-like reasons, non-zero too.
    assert_eq!(
        run(&["app", "deploy", "-n", "-c", "x.example.org", V1_0]),
        (
            Some(1),
            format!(
                "abra-double: app x.example.org does not exist (no x.example.org.env under {}/servers)",
                abra_dir.display()
            )
        )
    );
    assert_eq!(
        run(&[
            "app",
            "new",
            "-n",
            "--server",
            "default",
            "--domain",
            "x.example.org",
            "no-such-recipe"
        ]),
        (Some(1), "abra-double: unknown recipe no-such-recipe".to_owned())
    );
    assert_eq!(run(&["--version"]), (Some(0), String::new()));
}

/// The release versions the fixture recipe ships, oldest first: what
/// `available_versions` must find after the double's `recipe fetch`.
fn fixture_versions() -> Vec<CoopVersion> {
    let directory = ccfleet_tests::docker::fixtures_dir()
        .join("recipes")
        .join(FIXTURE_RECIPE)
        .join("versions");
    let mut versions: Vec<CoopVersion> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap().parse().unwrap())
        .collect();
    versions.sort();
    versions
}

#[tokio::test]
async fn available_versions_come_from_the_tags_the_double_fetches() {
    let test = DockerTest::new("versions");
    let config = config(&test, "");
    let abra = Abra::new(&config.abra);
    let recipe: RecipeName = FIXTURE_RECIPE.parse().unwrap();
    std::fs::create_dir_all(test.abra_dir()).unwrap();

    // A first fetch clones: the tags land in packed-refs.
    assert_eq!(abra.available_versions(&recipe).await.unwrap(), fixture_versions());
    let git = test.abra_dir().join("recipes").join(FIXTURE_RECIPE).join(".git");
    let packed = std::fs::read_to_string(git.join("packed-refs")).unwrap();
    assert_eq!(
        packed.matches(" refs/tags/").count(),
        fixture_versions().len(),
        "{packed}"
    );

    // A tag the checkout lacks comes back as a loose ref on the next fetch:
    // the agent's `git fetch --tags` (the double's `recipe fetch`, like
    // abra's, leaves an existing checkout as it is).
    let newest = fixture_versions().last().unwrap().to_string();
    let without_newest: String = packed
        .lines()
        .filter(|line| !line.ends_with(&format!(" refs/tags/{newest}")))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(git.join("packed-refs"), without_newest).unwrap();
    assert_eq!(abra.available_versions(&recipe).await.unwrap(), fixture_versions());
    assert!(git.join("refs").join("tags").join(&newest).is_file());

    // Without a checkout, the catalogue the fetch wrote answers alone.
    std::fs::remove_dir_all(&git).unwrap();
    let offline = Abra::new(&AbraConfig {
        binary: "/nonexistent/abra".into(),
        ..config.abra.clone()
    });
    assert_eq!(offline.available_versions(&recipe).await.unwrap(), fixture_versions());
    assert_eq!(
        test.abra_log(),
        [
            format!("recipe fetch {FIXTURE_RECIPE}"),
            format!("recipe fetch {FIXTURE_RECIPE}")
        ]
    );
}

/// Removes a Docker volume when dropped, so that a failed test leaves none.
struct VolumeGuard(String);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let _ = docker(&["volume", "rm", "--force", &self.0]);
    }
}

/// Removes a Docker container when dropped, so that a failed test leaves none.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", &self.0]);
    }
}

/// A container of the stack that was created but not started yet (a task's
/// container between creation and start) counts: it may start during a copy.
#[tokio::test]
async fn a_created_container_of_a_stack_counts_as_running() {
    let mut test = DockerTest::new("created");
    let stack = test.domain("app").replace('.', "_");
    let docker_api = Docker::connect().await.unwrap();
    assert_eq!(docker_api.running_containers(&stack).await.unwrap(), 0);
    let container = ContainerGuard(format!("{stack}_task"));
    let created = docker(&[
        "create",
        "--name",
        &container.0,
        "--label",
        &format!("com.docker.stack.namespace={stack}"),
        "ccfleet-fixture-web:1.0.0",
    ]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    assert_eq!(docker_api.running_containers(&stack).await.unwrap(), 1);
}

#[tokio::test]
async fn the_double_deploys_like_abra_and_undeploy_keeps_volumes_and_secrets() {
    let mut test = DockerTest::new("likeabra");
    let domain = test.domain("app");
    let stack = domain.replace('.', "_");
    let config = config(&test, "");
    let abra = Abra::new(&config.abra);
    let docker_api = Docker::connect().await.unwrap();
    let recipe: RecipeName = FIXTURE_RECIPE.parse().unwrap();
    let parsed_domain: Domain = domain.parse().unwrap();
    let version: CoopVersion = V1_0.parse().unwrap();

    abra.ensure_server().await.unwrap();
    abra.app_new(&recipe, &version, &parsed_domain).await.unwrap();
    // The version label must come from abra, not from the recipe: take it
    // out of the checkout's compose file. Like abra, the double checks out
    // the release's tag before it deploys, so the change is committed and
    // the checkout's tag moved onto it.
    let checkout = test.abra_dir().join("recipes").join(FIXTURE_RECIPE);
    let compose = checkout.join("compose.yml");
    let text = std::fs::read_to_string(&compose).unwrap();
    let without_label: String = text
        .lines()
        .filter(|line| !line.contains("coop-cloud."))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(text, without_label, "the fixture compose file carried the label");
    std::fs::write(&compose, without_label).unwrap();
    for arguments in [
        vec!["commit", "-q", "-a", "-m", "no version label"],
        vec!["tag", "-f", V1_0],
    ] {
        let output = std::process::Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@ccfleet.invalid", "-C"])
            .arg(&checkout)
            .args(&arguments)
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {arguments:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let secret_file = test.path().join("api_key");
    std::fs::write(&secret_file, "from-a-file").unwrap();
    abra.secret_insert(&recipe, &parsed_domain, "api_key", "v1", &secret_file)
        .await
        .unwrap();
    abra.deploy(&recipe, &parsed_domain, &version, false).await.unwrap();
    let observed = docker_api.observe_stack(&stack).await.unwrap();
    assert_eq!(observed.version_label(), Some(V1_0));

    // A service of the stack that the compose file does not name survives a
    // redeploy: abra deploys without pruning.
    let extra = format!("{stack}_extra");
    let created = docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        &extra,
        "--label",
        &format!("com.docker.stack.namespace={stack}"),
        "--container-label",
        &format!("com.docker.stack.namespace={stack}"),
        "ccfleet-fixture-web:1.0.0",
    ]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    abra.deploy(&recipe, &parsed_domain, &version, true).await.unwrap();
    let observed = docker_api.observe_stack(&stack).await.unwrap();
    assert!(observed.services.contains_key(&extra), "{:?}", observed.services.keys());

    // A volume of the stack, as a recipe's named volume would be.
    let volume = VolumeGuard(format!("{stack}_data"));
    let made = docker(&[
        "volume",
        "create",
        "--label",
        &format!("com.docker.stack.namespace={stack}"),
        &volume.0,
    ]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    abra.undeploy(&recipe, &parsed_domain).await.unwrap();
    assert!(docker_api.observe_stack(&stack).await.unwrap().services.is_empty());
    wait_for("the stack's containers to stop", Duration::from_secs(60), || async {
        match docker_api.running_containers(&stack).await.unwrap() {
            0 => Ok(()),
            running => Err(format!("{running} containers still running")),
        }
    })
    .await;
    let volumes = docker_api.stack_volumes(&stack).await.unwrap();
    assert_eq!(
        volumes.iter().map(|volume| volume.name.as_str()).collect::<Vec<_>>(),
        [volume.0.as_str()]
    );
    assert_eq!(volumes[0].driver, "local");
    assert!(volumes[0].mountpoint.is_absolute(), "{volumes:?}");
    assert!(docker_api.secret_exists(&format!("{stack}_api_key_v1")).await.unwrap());
    assert!(!docker_api.secret_exists(&format!("{stack}_api_key_v")).await.unwrap());
    assert!(docker_api.stack_volumes(&format!("{stack}x")).await.unwrap().is_empty());
    let log = test.abra_log();
    assert_eq!(log.last().unwrap(), &format!("app undeploy -n {domain}"));
}

#[tokio::test]
async fn the_secrets_set_up_are_those_the_recipe_declares() {
    let mut test = DockerTest::new("declared");
    let plain = test.domain("a");
    let extra = test.domain("b");
    let refused = test.domain("c");
    let smtp_password = test.path().join("smtp_password");
    let unknown_token = test.path().join("unknown_token");
    std::fs::write(&smtp_password, "from-a-file").unwrap();
    std::fs::write(&unknown_token, "also-from-a-file").unwrap();
    let smtp = format!("smtp_password = {:?}", smtp_password.display().to_string());
    let apps = app_toml(&plain, V1_0, &format!("secrets = {{ {smtp} }}"))
        + &app_toml(
            &extra,
            V1_0,
            "env = { COMPOSE_FILE = \"compose.yml:compose.extra.yml\" }",
        )
        + &app_toml(
            &refused,
            V1_0,
            &format!(
                "secrets = {{ {smtp}, unknown_token = {:?} }}",
                unknown_token.display().to_string()
            ),
        );
    let config = config(&test, &apps);
    let reconciler = reconciler(&config).await;
    let docker_api = Docker::connect().await.unwrap();
    let secrets = |domain: &str| {
        let stack = domain.replace('.', "_");
        let docker_api = docker_api.clone();
        async move {
            let mut found = Vec::new();
            for name in ["api_key", "smtp_password", "extra_token", "unknown_token"] {
                if docker_api.secret_exists(&format!("{stack}_{name}_v1")).await.unwrap() {
                    found.push(name);
                }
            }
            found
        }
    };

    // The recipe's compose.yml declares api_key and smtp_password; the latter
    // is `generate=false` (the operator's file), and compose.extra.yml, which
    // declares extra_token, is not selected.
    let outcome = reconciler.reconcile_app(app(&config, &plain)).await.unwrap();
    assert_eq!(
        outcome.summary(),
        format!("created, inserted secrets smtp_password, generated the other secrets, deployed {V1_0}")
    );
    assert_eq!(secrets(&plain).await, ["api_key", "smtp_password"]);

    // COMPOSE_FILE selects compose.extra.yml too: its secret is generated;
    // smtp_password is still not.
    let outcome = reconciler.reconcile_app(app(&config, &extra)).await.unwrap();
    assert_eq!(
        outcome.summary(),
        format!("created, wrote env keys COMPOSE_FILE, generated the other secrets, deployed {V1_0}")
    );
    assert_eq!(secrets(&extra).await, ["api_key", "extra_token"]);

    // A declared secret the recipe names no version for: refused before
    // anything is inserted, naming the secret and the recipe.
    let error = reconciler.reconcile_app(app(&config, &refused)).await.unwrap_err();
    assert!(
        matches!(error.kind, ReconcileErrorKind::SecretUndeclared { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "recipe {FIXTURE_RECIPE} declares no secret unknown_token (SECRET_UNKNOWN_TOKEN_VERSION)"
        )),
        "{message}"
    );
    assert!(secrets(&refused).await.is_empty());
    assert!(
        !test
            .abra_log()
            .iter()
            .any(|line| line.starts_with("app secret") && line.contains(&refused)),
        "{:?}",
        test.abra_log()
    );
}

#[tokio::test]
async fn a_secret_set_up_that_failed_half_way_succeeds_when_retried() {
    let mut test = DockerTest::new("secretretry");
    let domain = test.domain("app");
    let stack = domain.replace('.', "_");
    let api_key = test.path().join("api_key");
    let smtp_password = test.path().join("smtp_password");
    std::fs::write(&api_key, "from-a-file").unwrap();
    std::fs::write(&smtp_password, "also-from-a-file").unwrap();
    let config = config(
        &test,
        &app_toml(
            &domain,
            V1_0,
            &format!(
                "secrets = {{ api_key = {:?}, smtp_password = {:?} }}",
                api_key.display().to_string(),
                smtp_password.display().to_string()
            ),
        ),
    );
    let reconciler = reconciler(&config).await;
    let declared = app(&config, &domain);

    // The second secret's file vanishes after the configuration was checked
    // (a secrets manager that has not decrypted it yet): abra inserts the
    // first secret, then fails on the second.
    std::fs::remove_file(&smtp_password).unwrap();
    let error = reconciler.reconcile_app(declared).await.unwrap_err().to_string();
    assert!(
        error.contains("insert secret smtp_password (abra app secret insert)") && error.contains("does not exist"),
        "{error}"
    );
    let docker_api = Docker::connect().await.unwrap();
    assert!(docker_api.secret_exists(&format!("{stack}_api_key_v1")).await.unwrap());

    // The file is back: the retry skips the secret that exists (Docker would
    // refuse it again) and finishes the set-up.
    std::fs::write(&smtp_password, "also-from-a-file").unwrap();
    let outcome = reconciler.reconcile_app(declared).await.unwrap();
    assert_eq!(
        outcome.summary(),
        format!("inserted secrets api_key, smtp_password, deployed {V1_0}")
    );
    assert!(docker_api
        .secret_exists(&format!("{stack}_smtp_password_v1"))
        .await
        .unwrap());
    let inserts: Vec<String> = test
        .abra_log()
        .into_iter()
        .filter(|line| line.starts_with("app secret insert"))
        .collect();
    assert_eq!(
        inserts,
        [
            format!("app secret insert -n -f {domain} api_key v1 {}", api_key.display()),
            format!(
                "app secret insert -n -f {domain} smtp_password v1 {}",
                smtp_password.display()
            ),
            format!(
                "app secret insert -n -f {domain} smtp_password v1 {}",
                smtp_password.display()
            ),
        ]
    );
}
