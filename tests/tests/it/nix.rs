//! Nix: every `.nix` file parses; the modules evaluate with the nixpkgs module system.
//!
//! Parsing needs only `nix-instantiate` (Debian's `nix-bin`). The evaluation tests need
//! the nixpkgs module system (`lib.evalModules`): an unmodified nixpkgs.lib snapshot,
//! found at `CCFLEET_NIXPKGS_LIB` or at `../shared/nixpkgs-lib` next to the repository.
//! Without either they fail, saying how to get it. The harness they drive is
//! `nix/tests/default.nix`; its NixOS option types are `nix/tests/nixos.nix`.

mod checks;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_owned()
}

/// Runs `nix-instantiate` with `arguments` in the repository root. A missing program is
/// a failure that says what to install, never a silent pass.
fn run_nix_instantiate(arguments: &[&str]) -> Result<Output> {
    match Command::new("nix-instantiate")
        .args(arguments)
        .current_dir(repository_root())
        .output()
    {
        Ok(output) => Ok(output),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!("nix-instantiate is not installed: install Debian's nix-bin (apt-get install nix-bin) to run the Nix tests")
        }
        Err(error) => Err(error).context("cannot run nix-instantiate"),
    }
}

/// `nix-instantiate` with `arguments`, returning stdout; failing when it fails.
fn nix_instantiate(arguments: &[&str]) -> Result<String> {
    let output = run_nix_instantiate(arguments)?;
    if !output.status.success() {
        bail!(
            "nix-instantiate {} failed ({}):\n{}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout).context("nix-instantiate printed non-UTF-8")
}

fn nix_files(directory: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(directory).with_context(|| format!("cannot list {}", directory.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if path.is_dir() {
            if !matches!(name, "target" | ".git" | "result") {
                nix_files(&path, found)?;
            }
        } else if name.ends_with(".nix") {
            found.push(path);
        }
    }
    Ok(())
}

#[test]
fn every_nix_file_parses() {
    // One clear failure when Nix is missing, rather than one per file.
    nix_instantiate(&["--version"]).unwrap();
    let mut files = Vec::new();
    nix_files(&repository_root(), &mut files).unwrap();
    assert!(
        files.iter().any(|file| file.ends_with("flake.nix")),
        "flake.nix not found among {files:?}"
    );
    let mut failures = Vec::new();
    for file in &files {
        if let Err(error) = nix_instantiate(&["--parse", file.to_str().unwrap()]) {
            failures.push(format!("{}: {error:#}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} .nix files do not parse:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// The nixpkgs.lib snapshot to evaluate with: `CCFLEET_NIXPKGS_LIB`, else
/// `../shared/nixpkgs-lib` next to the repository (for a git worktree, also next to its
/// main checkout). Panics, saying how to get one, when none holds `lib/default.nix`:
/// the evaluation tests never pass without running.
fn nixpkgs_lib() -> PathBuf {
    let candidates = match std::env::var_os("CCFLEET_NIXPKGS_LIB") {
        Some(path) => vec![PathBuf::from(path)],
        None => {
            let root = repository_root();
            let mut candidates = vec![root.join("../shared/nixpkgs-lib")];
            if let Some(main_checkout) = main_checkout_of_worktree(&root) {
                candidates.push(main_checkout.join("../shared/nixpkgs-lib"));
            }
            candidates
        }
    };
    match candidates
        .iter()
        .find(|candidate| candidate.join("lib/default.nix").is_file())
    {
        Some(found) => found.clone(),
        None => panic!(
            "the Nix evaluation tests need the nixpkgs module system, and none of {candidates:?} \
             holds lib/default.nix: put an unmodified nixpkgs.lib snapshot (a checkout of \
             https://github.com/nix-community/nixpkgs.lib, the directory holding lib/default.nix) \
             at ../shared/nixpkgs-lib next to the repository, or point CCFLEET_NIXPKGS_LIB at one"
        ),
    }
}

/// The main checkout of a git worktree (`.git` is then a file naming
/// `<main>/.git/worktrees/<name>`), or `None`.
fn main_checkout_of_worktree(root: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(root.join(".git")).ok()?;
    let git_dir = PathBuf::from(text.strip_prefix("gitdir:")?.trim());
    let common = git_dir.parent()?.parent()?;
    (common.file_name()? == ".git").then(|| common.parent().map(Path::to_owned))?
}

/// `nix/tests` evaluated with `extra` arguments for attribute `attribute`.
fn evaluation_arguments<'a>(lib: &'a str, extra: &[&'a str], attribute: &'a str) -> Vec<&'a str> {
    let mut arguments = vec!["--eval", "--strict", "--json", "nix/tests", "--arg", "nixpkgsLib", lib];
    arguments.extend_from_slice(extra);
    arguments.extend_from_slice(&["-A", attribute]);
    arguments
}

/// Evaluates attribute `attribute` of `nix/tests` to JSON, with its secret files in
/// `secret_dir`.
fn evaluate_with_secrets(secret_dir: &Path, attribute: &str) -> Value {
    let lib = nixpkgs_lib();
    let arguments = evaluation_arguments(
        lib.to_str().unwrap(),
        &["--argstr", "secretDir", secret_dir.to_str().unwrap()],
        attribute,
    );
    serde_json::from_str(&nix_instantiate(&arguments).unwrap()).unwrap()
}

fn evaluate(attribute: &str) -> Value {
    evaluate_with_secrets(Path::new("/run/ccfleet-test-secrets"), attribute)
}

/// The stderr of an evaluation of `attribute` that must fail.
fn evaluation_error(attribute: &str) -> String {
    let lib = nixpkgs_lib();
    let output = run_nix_instantiate(&evaluation_arguments(lib.to_str().unwrap(), &[], attribute)).unwrap();
    assert!(
        !output.status.success(),
        "evaluating {attribute} succeeded, but it must fail: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|item| item.as_str().unwrap().to_owned())
        .collect()
}

/// Runs `ccfleet-agent check-config` on `toml`, returning the normalised JSON.
fn agent_check_config(directory: &Path, toml: &str) -> Value {
    let config_path = directory.join("agent.toml");
    std::fs::write(&config_path, toml).unwrap();
    let output = Command::new(ccfleet_tests::binary("ccfleet-agent"))
        .arg("check-config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "check-config refused the rendered config:\n{}\n--- agent.toml ---\n{toml}",
        String::from_utf8_lossy(&output.stderr),
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn example_host_evaluates_and_its_agent_config_is_accepted() {
    let directory = tempfile::tempdir().unwrap();
    // The secret files nix/tests/example-host.nix declares; check-config requires them.
    for name in ["ghost-db-password", "keycloak-admin"] {
        std::fs::write(directory.path().join(name), "secret").unwrap();
    }
    let example = evaluate_with_secrets(directory.path(), "example");

    assert_eq!(strings(&example["failedAssertions"]), Vec::<String>::new());
    assert_eq!(
        strings(&example["services"]),
        [
            "cc-app-ghost",
            "cc-app-ghost-secrets",
            "cc-app-keycloak",
            "cc-app-keycloak-secrets",
            "cc-app-traefik",
            "cc-app-voice",
            "cc-app-wiki",
            "cc-app-wiki-update",
            "ccfleet-agent",
            "ccfleet-server",
            "swarm-init"
        ]
    );
    assert_eq!(example["timers"]["cc-app-wiki-update"]["OnCalendar"], "Sun 04:00");
    assert_eq!(example["timers"]["cc-app-wiki-update"]["Persistent"], true);
    assert_eq!(example["dockerLiveRestore"], false);
    let mut ports: Vec<u64> = example["firewallTcpPorts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port.as_u64().unwrap())
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [80, 443, 7443, 7444]);
    let server_command = example["server"]["ExecStart"].as_str().unwrap();
    assert!(
        server_command.contains("run --data /var/lib/ccfleet-server --listen '[::]:7443' --admin-listen '[::]:7444'"),
        "{server_command}"
    );
    assert_eq!(example["server"]["LimitNOFILE"], 65536);
    assert!(
        server_command.contains(
            "--metrics-listen 127.0.0.1:9464 --notify-webhook text+https://ntfy.example.org/fleet \
             --notify-webhooks-file %d/notify-webhooks --notify-secret-file %d/notify-secret \
             --audit-retention 365"
        ),
        "{server_command}"
    );
    assert_eq!(
        example["server"]["LoadCredential"],
        json!([
            "notify-webhooks:/run/secrets/ccfleet-webhooks",
            "notify-secret:/run/secrets/ccfleet-webhook-secret"
        ])
    );
    // The server says READY=1 when it answers (readiness::every_first_start_under_load_answers_at_once).
    assert_eq!(
        (&example["server"]["Type"], &example["server"]["NotifyAccess"]),
        (&json!("notify"), &json!("main"))
    );

    let toml = example["agentToml"].as_str().unwrap();
    let config = agent_check_config(directory.path(), toml);
    let apps: Vec<(String, String, String, Value)> = config["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|app| {
            (
                app["domain"].as_str().unwrap().to_owned(),
                app["recipe"].as_str().unwrap().to_owned(),
                app["version"].as_str().unwrap().to_owned(),
                app["health"]["path"].clone(),
            )
        })
        .collect();
    let expected = [
        (
            "blog.example.org",
            "ghost",
            "1.3.0+6.42.0-alpine",
            Value::from("/ghost/api/admin/site/"),
        ),
        (
            "sso.example.org",
            "keycloak",
            "10.1.0+26.0.5",
            Value::from("/realms/master"),
        ),
        ("traefik.example.org", "traefik", "3.0.0+v3.1.2", Value::Null),
        ("voice.example.org", "mumble", "0.2.0+1.5.634", Value::Null),
        ("wiki.example.org", "hedgedoc", "2.1.0+1.10.0", Value::from("/status")),
    ]
    .map(|(domain, recipe, version, path)| (domain.to_owned(), recipe.to_owned(), version.to_owned(), path));
    assert_eq!(apps, expected);
    assert_eq!(config["host"]["id"], "web-1");
    assert_eq!(config["server"]["join_token_file"], "/run/secrets/ccfleet-join-token");
    assert_eq!(
        config["abra"]["binary"],
        "/nix/store/00000000000000000000000000000000-abra/bin/abra"
    );
    let wiki = &config["apps"][4];
    assert_eq!(
        (&wiki["auto_update"], &wiki["schedule"], &wiki["deploy_timeout"]),
        (&Value::from(true), &Value::from("Sun 04:00"), &Value::from("20m"))
    );
    assert_eq!(
        config["apps"][0]["depends_on"],
        json!(["sso.example.org", "traefik.example.org"])
    );
    assert_eq!(config["apps"][2]["depends_on"], json!([]));
    assert_eq!(
        config["apps"][0]["secrets"]["db_password"],
        directory.path().join("ghost-db-password").to_str().unwrap()
    );
}

/// The agent unit signals readiness, restarts on a new package and reloads on a new
/// configuration; abra is on its PATH.
#[test]
fn agent_unit_is_notify_reloads_on_config_and_restarts_on_package() {
    let agent = &evaluate("example")["agentUnit"];
    assert_eq!(
        (&agent["Type"], &agent["NotifyAccess"]),
        (&json!("notify"), &json!("main"))
    );
    assert!(agent["ExecStart"]
        .as_str()
        .unwrap()
        .ends_with("/bin/ccfleet-agent run --config /etc/ccfleet/agent.toml"));
    assert!(agent["ExecReload"]
        .as_str()
        .unwrap()
        .ends_with("/bin/kill -HUP $MAINPID"));
    // A changed package (ExecStart) restarts in one step; a changed config file (the
    // reload trigger, outside the unit text) only reloads.
    assert_eq!(
        (
            &agent["restartIfChanged"],
            &agent["stopIfChanged"],
            &agent["reloadIfChanged"]
        ),
        (&json!(true), &json!(false), &json!(false))
    );
    assert_eq!(agent["reloadTriggers"], json!([agent["configFile"]]));
    assert_eq!(strings(&agent["path"]), ["abra", "git"]);
    assert_eq!(strings(&agent["requires"]), ["docker.service"]);
}

/// What `nixos-rebuild switch` sees: a configuration change (an app's version) changes
/// only the agent unit's reload trigger, so the agent is reloaded; a new ccfleet or abra
/// package changes the unit itself, so the agent (`restartIfChanged`) is restarted and
/// the switch runs the new binary.
#[test]
fn a_switch_reloads_the_agent_for_config_and_restarts_it_for_a_package() {
    let switch = evaluate("agentSwitch");
    assert_eq!(
        switch,
        json!({
            "configChanged": { "unitChanged": false, "reloadTriggersChanged": true },
            "packageChanged": { "unitChanged": true, "reloadTriggersChanged": false },
            "abraChanged": { "unitChanged": true, "reloadTriggersChanged": true },
        })
    );
    let agent = &evaluate("example")["agentUnit"];
    assert_eq!(
        (&agent["restartIfChanged"], &agent["reloadIfChanged"]),
        (&json!(true), &json!(false))
    );
}

/// Every app unit requires and orders after the agent, swarm-init, traefik and its
/// `dependsOn`; traefik itself depends on nothing but the agent and the swarm.
#[test]
fn app_units_require_swarm_traefik_and_their_dependencies() {
    let units = &evaluate("example")["appUnits"];
    let base = ["ccfleet-agent.service", "swarm-init.service"];
    let with_traefik = [&base[..], &["cc-app-traefik.service"]].concat();
    let expected: [(&str, Vec<&str>); 5] = [
        ("cc-app-traefik", base.to_vec()),
        (
            "cc-app-ghost",
            [&base[..], &["cc-app-keycloak.service", "cc-app-traefik.service"]].concat(),
        ),
        ("cc-app-keycloak", with_traefik.clone()),
        ("cc-app-voice", with_traefik.clone()),
        ("cc-app-wiki", with_traefik.clone()),
    ];
    for (unit, dependencies) in expected {
        assert_eq!(strings(&units[unit]["requires"]), dependencies, "{unit}.requires");
        assert_eq!(strings(&units[unit]["after"]), dependencies, "{unit}.after");
        assert!(
            units[unit]["ExecStart"].as_str().unwrap().contains(" apply "),
            "{unit}: {}",
            units[unit]
        );
    }
    // The update and secret-rotation helpers never run at a switch.
    assert_eq!(units["cc-app-wiki-update"]["restartIfChanged"], false);
    assert_eq!(units["cc-app-ghost-secrets"]["restartIfChanged"], false);
}

/// A secret given as a file: a path unit watches it, and a change restarts the app's unit
/// (which runs `apply --wait` again).
#[test]
fn a_changed_secret_file_restarts_the_app_unit() {
    let example = evaluate("example");
    assert_eq!(
        example["paths"]["cc-app-ghost-secrets"],
        json!({
            "wantedBy": ["multi-user.target"],
            "pathConfig": {
                "PathChanged": ["/run/ccfleet-test-secrets/ghost-db-password"],
                "Unit": "cc-app-ghost-secrets.service"
            }
        })
    );
    assert_eq!(
        example["appUnits"]["cc-app-ghost-secrets"]["ExecStart"],
        "/nix/store/00000000000000000000000000000000-systemd/bin/systemctl restart cc-app-ghost.service"
    );
    // Apps without secret files have no watcher.
    let paths: Vec<&String> = example["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, ["cc-app-ghost-secrets", "cc-app-keycloak-secrets"]);
}

/// A secret given by sopsKey becomes a `sops.secrets` entry whose `restartUnits` are the
/// units of every app that uses it, and the agent reads its path.
#[test]
fn sops_secrets_restart_the_apps_that_use_them() {
    let with_sops = evaluate("withSops");
    assert_eq!(strings(&with_sops["failedAssertions"]), Vec::<String>::new());
    assert_eq!(
        with_sops["sopsSecrets"],
        json!({ "ccfleet/wiki/api_token": {
            "key": "wiki/api_token",
            "path": "/run/secrets/ccfleet/wiki/api_token",
            "restartUnits": ["cc-app-keycloak.service", "cc-app-wiki.service"]
        } })
    );
    assert!(with_sops["agentToml"]
        .as_str()
        .unwrap()
        .contains("api_token = \"/run/secrets/ccfleet/wiki/api_token\""));
    // sops-nix restarts these apps; no path unit watches them too.
    assert_eq!(
        strings(&with_sops["paths"]),
        ["cc-app-ghost-secrets", "cc-app-keycloak-secrets"]
    );
}

/// Every hostile value the agent's check-config refuses (and a few Nix-only mistakes)
/// fails exactly one assertion, which names the option to fix.
#[test]
fn each_hostile_declaration_fails_one_assertion_naming_the_option() {
    let cases = evaluate("cases");
    let expected = [
        ("duplicate-domain", "domain \"blog.example.org\" is declared by more than one app: services.coop-cloud.apps.wiki.domain, services.coop-cloud.ghost.domain"),
        ("duplicate-name", "the app name \"ghost\" is declared by more than one of services.coop-cloud.apps.ghost, services.coop-cloud.ghost"),
        ("bad-version", "services.coop-cloud.apps.wiki.version = \"1.2_3\" is not a recipe version"),
        ("bad-version-in-recipe-module", "services.coop-cloud.ghost.version = \"v1.3.0\" is not a recipe version"),
        ("bad-domain", "services.coop-cloud.apps.wiki.domain = \"Wiki.example.org\" may only contain lowercase"),
        ("bad-recipe", "services.coop-cloud.apps.extra.recipe = \"Ghost\" may only contain lowercase"),
        ("health-path-without-slash", "services.coop-cloud.apps.keycloak.healthPath = \"realms/master\" must start with \"/\""),
        ("health-path-with-space", "services.coop-cloud.ghost.healthPath = \"/ghost status\" must not contain whitespace"),
        ("app-without-domain", "services.coop-cloud.apps.extra.domain is not set: every Co-op Cloud app needs its own domain"),
        ("app-without-version", "services.coop-cloud.apps.extra.version is not set: pin the recipe version"),
        ("app-without-recipe", "services.coop-cloud.apps.extra.recipe is not set: name the Co-op Cloud recipe"),
        ("app-name-not-a-unit-name", "services.coop-cloud.apps.\"my blog\": the name \"my blog\" cannot be part of a systemd unit name"),
        ("app-name-clashes-with-units", "services.coop-cloud.apps.wiki-update: the name \"wiki-update\" clashes with the update units of the app \"wiki\""),
        ("app-name-template", "services.coop-cloud.ghost.appName: the name \"blog@1\" cannot be part of a systemd unit name"),
        ("recipe-module-without-domain", "services.coop-cloud.n8n.domain is not set"),
        ("traefik-without-version", "services.coop-cloud.traefik.version is not set"),
        ("server-url-unset", "services.ccfleet-agent.serverUrl is not set: set it to your ccfleet server's URL"),
        ("server-url-plain-http", "services.ccfleet-agent.serverUrl = \"http://fleet.example.org:7443\" uses plain http"),
        ("admin-port-is-the-port", "services.ccfleet-server.adminPort must differ from services.ccfleet-server.port (7443)"),
        ("webhook-plain-http", "services.ccfleet-server.notify.webhooks: \"http://hooks.example.org/x\" must be https://"),
        ("webhook-secret-in-store", "services.ccfleet-server.notify.secretFile must be an absolute path outside the Nix store"),
        ("webhook-secret-without-webhook", "services.ccfleet-server.notify.secretFile is set but there is no webhook"),
        ("host-id-invalid", "services.ccfleet-agent.hostId = \"Web_1\" may only contain lowercase"),
        ("label-key-uppercase", "services.ccfleet-agent.labels: the key \"Site\""),
        ("unknown-dependency", "services.coop-cloud.apps.wiki.dependsOn names \"nextcloud\""),
        ("dependency-cycle", "dependency cycle between services.coop-cloud.ghost, services.coop-cloud.apps.keycloak"),
        ("env-key-lowercase", "services.coop-cloud.apps.wiki.env.smtp_host: the name \"smtp_host\" is not a variable name"),
        ("env-key-reserved", "services.coop-cloud.apps.wiki.env.DOMAIN: the name \"DOMAIN\" is written by abra itself"),
        ("env-value-newline", "services.coop-cloud.apps.wiki.env.MOTD = \"hello\\nDOMAIN=evil.example.org\" must not contain a newline"),
        ("secret-name-invalid", "services.coop-cloud.apps.wiki.secrets.Db-Pass: the name \"Db-Pass\" is not an abra secret name"),
        ("secret-without-file", "services.coop-cloud.apps.wiki.secrets.token needs `file`"),
        ("secret-file-relative", "services.coop-cloud.apps.wiki.secrets.token.file = \"secrets/token\" must be an absolute path"),
        ("secret-in-store", "services.coop-cloud.apps.wiki.secrets.token.file must be an absolute path outside the Nix store"),
        ("secret-sops-path-without-key", "services.coop-cloud.apps.wiki.secrets.token.sopsPath needs `sopsKey`"),
        ("health-timeout-forever", "services.coop-cloud.apps.wiki.healthTimeout = \"forever\" is not a duration"),
        ("deploy-timeout-zero", "services.coop-cloud.apps.wiki.deployTimeout = 0 must be a positive number of seconds"),
        ("accepted-statuses-empty", "services.coop-cloud.apps.wiki.healthAcceptedStatuses (healthOk) is empty"),
        ("schedule-with-newline", "services.coop-cloud.apps.wiki.updateSchedule = \"Sun 04:00\\nOnCalendar=minutely\" contains a control character"),
        ("settings-unknown-key", "services.ccfleet-agent.settings.agent.reconcile_intervall is not a setting of the agent"),
        ("settings-unknown-section", "services.ccfleet-agent.settings.agnet is not a section"),
        ("settings-bad-duration", "services.ccfleet-agent.settings.agent.observe_interval = \"forever\" is not a duration"),
        ("settings-bad-abra-binary", "services.ccfleet-agent.settings.abra.binary = \"bin/abra\" must be a bare program name"),
    ];
    let mut problems = Vec::new();
    for (case, message) in expected {
        let failed = strings(&cases[case]["failedAssertions"]);
        // Exactly one assertion, the one about the bad declaration, and nothing else.
        if failed.len() != 1 || !failed[0].starts_with(message) {
            problems.push(format!(
                "{case}: expected one assertion starting with {message:?}, got {failed:?}"
            ));
        }
    }
    let evaluated: Vec<&String> = cases.as_object().unwrap().keys().collect();
    assert_eq!(evaluated.len(), expected.len(), "cases evaluated: {evaluated:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The seed's usage alone (a recipe module, or one `apps.<name>`) turns on the base and
/// the agent, and each missing required value is an assertion saying what to set; the
/// seed's parameter names work.
#[test]
fn the_seed_interface_enables_the_base_and_names_what_is_missing() {
    let seed = evaluate("seed");
    let missing = [
        "services.ccfleet-agent.serverUrl is not set: set it to your ccfleet server's URL, e.g. \"https://fleet.example.org:7443\".",
        "services.coop-cloud.traefik.domain is not set: every Co-op Cloud app needs its own domain, e.g. \"blog.example.org\".",
        "services.coop-cloud.traefik.version is not set: pin the recipe version to deploy, e.g. \"1.3.0+6.42.0-alpine\" (`abra recipe versions <recipe>` lists them).",
    ];
    assert_eq!(strings(&seed["alone"]["failedAssertions"]), missing);
    assert_eq!(strings(&seed["appAlone"]["failedAssertions"]), missing);
    let own_recipe = &seed["ownRecipe"];
    assert_eq!(strings(&own_recipe["failedAssertions"]), missing);
    assert_eq!(own_recipe["baseEnabled"], true);
    assert_eq!(own_recipe["healthPath"], "/status.php");
    assert_eq!(own_recipe["healthAcceptedStatuses"], json!([200, 302]));

    let complete = &seed["complete"];
    assert_eq!(strings(&complete["failedAssertions"]), Vec::<String>::new());
    assert_eq!(
        strings(&complete["services"]),
        [
            "cc-app-blog",
            "cc-app-blog-update",
            "cc-app-traefik",
            "ccfleet-agent",
            "swarm-init"
        ]
    );
    assert_eq!(strings(&complete["timers"]), ["cc-app-blog-update"]);
    assert_eq!(
        strings(&complete["blogUnit"]["after"]),
        [
            "ccfleet-agent.service",
            "swarm-init.service",
            "cc-app-traefik.service",
            "postgresql.service"
        ]
    );
    assert_eq!(
        complete["sopsSecrets"],
        json!({ "ccfleet/ghost/db": {
            "key": "ghost/db", "path": "/run/secrets/ghost-db", "restartUnits": ["cc-app-blog.service"]
        } })
    );
    let config = agent_config(complete["agentToml"].as_str().unwrap());
    let blog = &config["apps"][0];
    assert_eq!(blog["domain"], "blog.example.org");
    assert_eq!(blog["health"]["accepted_statuses"], json!([200, 301]));
    assert_eq!(blog["health"]["timeout"], "5m");
    assert_eq!(blog["deploy_timeout"], "15m");
    assert_eq!(blog["secrets"]["db_password"], "/run/secrets/ghost-db");
}

/// The agent's own validation of `toml` (check-config without the secret-file checks),
/// normalised as check-config prints it.
fn agent_config(toml: &str) -> Value {
    let config = ccfleet_agent::config::Config::from_toml_str_with_hostname(toml, Path::new("agent.toml"), "web-1")
        .unwrap_or_else(|error| panic!("the agent refuses the rendered config: {error}\n--- agent.toml ---\n{toml}"));
    serde_json::to_value(config).unwrap()
}

/// RFC 42: `settings` is a freeform submodule and the module's own values are defaults,
/// so an operator's values win without a conflict.
#[test]
fn operator_settings_override_the_module_values() {
    let evaluated = evaluate("settingsOverride");
    assert_eq!(strings(&evaluated["failedAssertions"]), Vec::<String>::new());
    let config = agent_config(evaluated["agentToml"].as_str().unwrap());
    assert_eq!(config["server"]["url"], "https://fleet-2.example.org:7443");
    assert_eq!(config["abra"]["binary"], "/opt/abra/bin/abra");
    assert_eq!(config["abra"]["command_timeout"], "30m");
    assert_eq!(config["host"]["labels"], json!({ "site": "hamburg" }));
    // The module's other values are still there.
    assert_eq!(config["host"]["id"], "web-1");
    assert_eq!(config["apps"].as_array().unwrap().len(), 5);
}

/// The harness types NixOS options as NixOS does: typos and invalid values are refused,
/// an operator's extra unit ordering and list-valued settings are merged.
#[test]
fn nixos_option_types_refuse_typos_and_merge_lists() {
    let typo = evaluation_error("strict.typo");
    assert!(
        typo.contains("The option `systemd.services.cc-app-ghost.serviceconfig' does not exist"),
        "{typo}"
    );
    let bad_type = evaluation_error("strict.badType");
    assert!(
        bad_type.contains("Systemd Service field `Type' cannot have value `oneshoot'"),
        "{bad_type}"
    );
    let bad_unit_name = evaluation_error("strict.badUnitName");
    assert!(
        bad_unit_name.contains("systemd.services.cc-app-ghost.after") && bad_unit_name.contains("\"postgresql\""),
        "{bad_unit_name}"
    );
    let merged = evaluate("strict.merged");
    assert_eq!(
        strings(&merged["after"]),
        [
            "postgresql.service",
            "ccfleet-agent.service",
            "swarm-init.service",
            "cc-app-keycloak.service",
            "cc-app-traefik.service"
        ]
    );
}

/// The generated option documentation shows each option's real default.
#[test]
fn option_docs_show_the_true_defaults() {
    assert_eq!(
        evaluate("docs"),
        json!({
            "services.ccfleet-agent.abraPackage": "pkgs.abra",
            "services.ccfleet-agent.enable": "`true` when `services.coop-cloud` is enabled or any `services.coop-cloud.apps.<name>` is declared",
            "services.coop-cloud.apps.<name>.healthPath": "the recipe's health path when `recipe` is one ccfleet ships a module for (e.g. `\"/ghost/api/admin/site/\"` for ghost), else `null`",
            "services.coop-cloud.apps.<name>.stateful": "the recipe's statefulness when `recipe` is one ccfleet ships a module for, else `true`",
            "services.coop-cloud.enable": "`true` when any app is declared (an enabled `apps.<name>` or recipe module)",
            "services.coop-cloud.ghost.appName": "\"ghost\"",
            "services.coop-cloud.ghost.enable": "false",
            "services.coop-cloud.ghost.healthAcceptedStatuses": "[\n  200\n]",
            "services.coop-cloud.ghost.healthPath": "\"/ghost/api/admin/site/\"",
            "services.coop-cloud.ghost.recipe": "\"ghost\"",
            "services.coop-cloud.ghost.stateful": "true",
            "services.coop-cloud.mumble.healthPath": "null",
            "services.coop-cloud.traefik.enable": "config.services.coop-cloud.enable"
        })
    );
}

/// An `apps.<name>` of a recipe ccfleet ships a module for gets the recipe's health path
/// and statefulness, unless the operator sets them; other recipes get the plain defaults.
#[test]
fn apps_of_known_recipes_get_the_recipe_defaults() {
    let evaluated = evaluate("appDefaults");
    assert_eq!(strings(&evaluated["failedAssertions"]), Vec::<String>::new());
    assert_eq!(
        evaluated["apps"],
        json!({
            "blog": { "healthPath": "/ghost/api/admin/site/", "stateful": true },
            "custom": { "healthPath": "/custom", "stateful": false },
            "other": { "healthPath": null, "stateful": true }
        })
    );
}

/// nixosModules.agent alone: an app turns the agent on; the host must provide Docker
/// (without live-restore), and there is no swarm-init to require.
#[test]
fn the_agent_module_alone_asks_for_docker() {
    let alone = evaluate("agentAlone");
    assert_eq!(
        strings(&alone["withoutDocker"]["failedAssertions"]),
        [
            "services.ccfleet-agent needs the Docker Engine: set virtualisation.docker.enable = true (services.coop-cloud.enable does, with a single-node swarm).",
            "services.ccfleet-agent deploys to Docker swarm, which refuses to run with live-restore: set virtualisation.docker.liveRestore = false (services.coop-cloud.enable does)."
        ]
    );
    assert_eq!(strings(&alone["withApp"]["failedAssertions"]), Vec::<String>::new());
    assert_eq!(alone["withApp"]["agentEnabled"], true);
    assert_eq!(strings(&alone["withApp"]["wikiRequires"]), ["ccfleet-agent.service"]);
}

#[test]
fn copy_paste_examples_evaluate_cleanly() {
    let examples = evaluate("examples");
    assert_eq!(examples["app-host"]["failedAssertions"], json!([]));
    assert_eq!(
        strings(&examples["app-host"]["services"]),
        [
            "cc-app-ghost",
            "cc-app-ghost-secrets",
            "cc-app-traefik",
            "cc-app-wiki",
            "cc-app-wiki-update",
            "ccfleet-agent",
            "swarm-init"
        ]
    );
    assert_eq!(examples["server"]["failedAssertions"], json!([]));
    assert_eq!(strings(&examples["server"]["services"]), ["ccfleet-server"]);
}

/// Every recipe of ARCHITECTURE.md's table ("Recipes ccfleet ships modules for") has a module, off by default, with the table's
/// health path and statefulness.
#[test]
fn every_recipe_module_has_its_defaults() {
    let recipes = evaluate("recipes");
    let table: [(&str, Option<&str>); 20] = [
        ("traefik", None),
        ("bluesky-pds", Some("/xrpc/_health")),
        ("cryptpad", Some("/")),
        ("custom-html", Some("/")),
        ("custom-html-tiny", Some("/")),
        ("discourse", Some("/srv/status")),
        ("ghost", Some("/ghost/api/admin/site/")),
        ("hedgedoc", Some("/status")),
        ("immich", Some("/api/server/ping")),
        ("keycloak", Some("/realms/master")),
        ("lasuite-docs", Some("/")),
        ("lasuite-drive", Some("/")),
        ("lasuite-meet", Some("/")),
        ("mailu", Some("/")),
        ("matrix-synapse", Some("/health")),
        ("mattermost-lts", Some("/api/v4/system/ping")),
        ("mumble", None),
        ("n8n", Some("/healthz")),
        ("plausible", Some("/api/health")),
        ("uptime-kuma", Some("/")),
    ];
    let expected: serde_json::Map<String, Value> = table
        .iter()
        .map(|(recipe, health_path)| {
            let module = json!({ "enable": false, "recipe": recipe, "healthPath": health_path, "stateful": true });
            (recipe.to_string(), module)
        })
        .collect();
    assert_eq!(recipes, Value::Object(expected));
}

/// `nix/package.nix` evaluates with the Nix the tests run (Debian's 2.8, older than
/// `lib.fileset` needs): its source is the cargo workspace only.
#[test]
fn the_package_source_evaluates_with_this_nix() {
    let lib = nixpkgs_lib();
    let expression = format!(
        "let lib = import {}/lib; package = import ./nix/package.nix {{ inherit lib; rustPlatform.buildRustPackage = arguments: arguments; \
         stdenv = {{ buildPlatform.canExecute = _: true; hostPlatform = {{}}; }}; installShellFiles = \"installShellFiles\"; }}; \
         in {{ src = \"${{package.src}}\"; inherit (package) pname version postInstall nativeBuildInputs; }}",
        lib.display()
    );
    let output = nix_instantiate(&["--eval", "--strict", "--json", "-E", &expression]).unwrap();
    let package: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(package["pname"], "ccfleet");
    assert_eq!(package["version"], env!("CARGO_PKG_VERSION"));
    // Man pages and completions of all three binaries are installed.
    let post_install = package["postInstall"].as_str().unwrap();
    for part in [
        "for binary in ccfleet ccfleet-agent ccfleet-server",
        "man --out",
        "installManPage",
        "completions bash",
        "completions zsh",
        "completions fish",
    ] {
        assert!(
            post_install.contains(part),
            "{part} missing from postInstall:\n{post_install}"
        );
    }
    assert_eq!(package["nativeBuildInputs"], serde_json::json!(["installShellFiles"]));
    let src = package["src"].as_str().unwrap();
    assert!(
        src.starts_with("/nix/store/") && src.ends_with("-ccfleet-source"),
        "{src}"
    );
}

/// `scripts/fetch-nixpkgs-lib`, run offline from local tarballs: a tarball
/// whose `lib/` tree has the pinned hash is cached and its directory printed
/// (then served from the cache without a download); a changed file is refused
/// with "hash mismatch" and nothing cached; a failed download keeps the clear
/// instruction to clone the library.
#[test]
fn the_nixpkgs_library_is_fetched_only_with_the_pinned_hash() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree/nixpkgs.lib-pinned");
    std::fs::create_dir_all(&tree).unwrap();
    let copied = Command::new("cp")
        .arg("-r")
        .arg(nixpkgs_lib().join("lib"))
        .arg(tree.join("lib"))
        .status()
        .unwrap();
    assert!(copied.success());
    let tarball = |name: &str| {
        let path = work.path().join(name);
        let status = Command::new("tar")
            .arg("-czf")
            .arg(&path)
            .arg("-C")
            .arg(work.path().join("tree"))
            .arg("nixpkgs.lib-pinned")
            .status()
            .unwrap();
        assert!(status.success());
        format!("file://{}", path.display())
    };
    let good = tarball("good.tar.gz");
    let default_nix = tree.join("lib/default.nix");
    let mut text = std::fs::read_to_string(&default_nix).unwrap();
    text.push_str("# changed\n");
    std::fs::write(&default_nix, text).unwrap();
    let bad = tarball("bad.tar.gz");
    let cache = work.path().join("cache");
    let fetch = |url: &str| -> Output {
        Command::new(repository_root().join("scripts/fetch-nixpkgs-lib"))
            .env("CCFLEET_NIXPKGS_LIB_CACHE", &cache)
            .env("CCFLEET_NIXPKGS_LIB_URL", url)
            .output()
            .unwrap()
    };
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    let refused = fetch(&bad);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("hash mismatch") && stderr(&refused).contains("nothing was cached"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "a refused download left something in the cache"
    );

    let missing = format!("file://{}", work.path().join("absent.tar.gz").display());
    let unreachable = fetch(&missing);
    assert!(!unreachable.status.success());
    assert!(
        stderr(&unreachable).contains("cannot download the nixpkgs module library")
            && stderr(&unreachable).contains("clone github:nix-community/nixpkgs.lib"),
        "{}",
        stderr(&unreachable)
    );

    let fetched = fetch(&good);
    assert!(fetched.status.success(), "{}", stderr(&fetched));
    let directory = PathBuf::from(String::from_utf8(fetched.stdout).unwrap().trim_end());
    assert!(
        directory.starts_with(&cache) && directory.join("lib/default.nix").is_file(),
        "{}",
        directory.display()
    );
    // Cached: no download at all, even from a URL that cannot answer.
    let again = fetch(&missing);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        PathBuf::from(String::from_utf8(again.stdout).unwrap().trim_end()),
        directory
    );
}
