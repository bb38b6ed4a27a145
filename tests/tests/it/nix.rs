//! Nix: every `.nix` file parses; the modules evaluate with the nixpkgs module system.
//!
//! Parsing needs only `nix-instantiate` (Debian's `nix-bin`). The evaluation tests
//! need the nixpkgs module system, which they take from a checkout of
//! `nix-community/nixpkgs.lib` named by `CCFLEET_NIXPKGS_LIB`; without it they say
//! loudly that they did not run. The harness they drive is `nix/tests/default.nix`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_owned()
}

/// Runs `nix-instantiate` with `arguments`, returning stdout; a missing program is a
/// failure that says what to install, never a silent pass.
fn nix_instantiate(arguments: &[&str]) -> Result<String> {
    let output = match Command::new("nix-instantiate")
        .args(arguments)
        .current_dir(repository_root())
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!("nix-instantiate is not installed: install Debian's nix-bin (apt-get install nix-bin) to run the Nix tests")
        }
        Err(error) => return Err(error).context("cannot run nix-instantiate"),
    };
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

/// The nixpkgs.lib checkout to evaluate with, or `None` after saying loudly that the
/// evaluation tests did not run.
fn nixpkgs_lib(test: &str) -> Option<PathBuf> {
    let reason = match std::env::var_os("CCFLEET_NIXPKGS_LIB") {
        None => "CCFLEET_NIXPKGS_LIB is not set".to_owned(),
        Some(path) if Path::new(&path).join("lib/default.nix").is_file() => return Some(PathBuf::from(path)),
        Some(path) => format!(
            "CCFLEET_NIXPKGS_LIB={} has no lib/default.nix",
            Path::new(&path).display()
        ),
    };
    // Written to the stderr stream itself, not through `eprintln!`, which the test
    // harness captures and hides for passing tests.
    let banner = format!(
        "\n!!!!!!!!!!\nNIX EVALUATION TESTS DID NOT RUN ({test}): {reason}.\n\
         set CCFLEET_NIXPKGS_LIB to a checkout of https://github.com/nix-community/nixpkgs.lib \
         (the directory holding lib/default.nix)\n!!!!!!!!!!\n"
    );
    let _ = std::io::stderr().write_all(banner.as_bytes());
    None
}

/// Evaluates attribute `attribute` of `nix/tests` to JSON.
fn evaluate(nixpkgs_lib: &Path, secret_dir: &Path, attribute: &str) -> Value {
    let output = nix_instantiate(&[
        "--eval",
        "--strict",
        "--json",
        "nix/tests",
        "--arg",
        "nixpkgsLib",
        nixpkgs_lib.to_str().unwrap(),
        "--argstr",
        "secretDir",
        secret_dir.to_str().unwrap(),
        "-A",
        attribute,
    ])
    .unwrap();
    serde_json::from_str(&output).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn example_host_evaluates_and_its_agent_config_is_accepted() {
    let Some(lib) = nixpkgs_lib("example host") else { return };
    let directory = tempfile::tempdir().unwrap();
    // The secret files nix/tests/example-host.nix declares; check-config requires them.
    for name in ["ghost-db-password", "keycloak-admin"] {
        std::fs::write(directory.path().join(name), "secret").unwrap();
    }
    let example = evaluate(&lib, directory.path(), "example");

    assert_eq!(strings(&example["failedAssertions"]), Vec::<String>::new());
    assert_eq!(
        strings(&example["services"]),
        [
            "cc-app-ghost",
            "cc-app-keycloak",
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
    assert_eq!(example["agentRestartIfChanged"], false);
    assert_eq!(example["dockerLiveRestore"], false);
    assert!(example["agentExecStart"]
        .as_str()
        .unwrap()
        .ends_with("/bin/ccfleet-agent run --config /etc/ccfleet/agent.toml"));
    assert!(example["appUnits"]["cc-app-ghost"]["ExecStart"]
        .as_str()
        .unwrap()
        .ends_with("apply blog.example.org --wait"));
    // Traefik first, then explicit ordering.
    assert_eq!(
        strings(&example["appUnits"]["cc-app-ghost"]["after"]),
        [
            "ccfleet-agent.service",
            "cc-app-keycloak.service",
            "cc-app-traefik.service"
        ]
    );
    let mut ports: Vec<u64> = example["firewallTcpPorts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port.as_u64().unwrap())
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [80, 443, 7443]);
    assert!(example["serverExecStart"]
        .as_str()
        .unwrap()
        .contains("run --data /var/lib/ccfleet-server --listen"));

    let config_path = directory.path().join("agent.toml");
    std::fs::write(&config_path, example["agentToml"].as_str().unwrap()).unwrap();
    let output = Command::new(ccfleet_tests::binary("ccfleet-agent"))
        .arg("check-config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "check-config refused the rendered config:\n{}\n--- agent.toml ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        example["agentToml"].as_str().unwrap()
    );
    let config: Value = serde_json::from_slice(&output.stdout).unwrap();
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
    let wiki = &config["apps"][4];
    assert_eq!(
        (&wiki["auto_update"], &wiki["schedule"]),
        (&Value::from(true), &Value::from("Sun 04:00"))
    );
    assert_eq!(
        config["apps"][0]["depends_on"],
        serde_json::json!(["sso.example.org", "traefik.example.org"])
    );
    assert_eq!(config["apps"][2]["depends_on"], serde_json::json!([]));
    assert_eq!(
        config["apps"][0]["secrets"]["db_password"],
        directory.path().join("ghost-db-password").to_str().unwrap()
    );
}

#[test]
fn each_assertion_fires_for_its_bad_declaration() {
    let Some(lib) = nixpkgs_lib("assertions") else { return };
    let cases = evaluate(&lib, Path::new("/run/unused"), "cases");
    let expected = [
        ("duplicate-domain", "domain \"blog.example.org\" is declared by more than one app: services.coop-cloud.ghost.domain, services.coop-cloud.apps.wiki.domain"),
        ("bad-version", "services.coop-cloud.apps.wiki.version = \"1.2_3\" is not a recipe version"),
        ("bad-version-in-recipe-module", "services.coop-cloud.ghost.version = \"v1.3.0\" is not a recipe version"),
        ("health-path-without-slash", "services.coop-cloud.apps.keycloak.healthPath = \"realms/master\" must start with \"/\""),
        ("app-without-domain", "services.coop-cloud.apps.extra.domain is not set"),
        ("recipe-module-without-domain", "services.coop-cloud.n8n.domain is not set"),
        ("unknown-dependency", "services.coop-cloud.apps.wiki.dependsOn names \"nextcloud\""),
        ("secret-without-file", "services.coop-cloud.apps.wiki.secrets.token needs `file`"),
        ("secret-in-store", "services.coop-cloud.apps.wiki.secrets.token.file must be an absolute path outside the Nix store"),
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

#[test]
fn sops_key_becomes_a_sops_secret_when_sops_nix_is_imported() {
    let Some(lib) = nixpkgs_lib("sops") else { return };
    let with_sops = evaluate(&lib, Path::new("/run/unused"), "withSops");
    assert_eq!(strings(&with_sops["failedAssertions"]), Vec::<String>::new());
    assert_eq!(
        with_sops["sopsSecrets"],
        serde_json::json!({ "ccfleet/wiki/api_token": { "key": "wiki/api_token", "path": "/run/secrets/ccfleet/wiki/api_token" } })
    );
    assert!(with_sops["agentToml"]
        .as_str()
        .unwrap()
        .contains("api_token = \"/run/secrets/ccfleet/wiki/api_token\""));
}

#[test]
fn copy_paste_examples_evaluate_cleanly() {
    let Some(lib) = nixpkgs_lib("examples") else { return };
    let examples = evaluate(&lib, Path::new("/run/unused"), "examples");
    assert_eq!(examples["app-host"]["failedAssertions"], serde_json::json!([]));
    assert_eq!(
        strings(&examples["app-host"]["services"]),
        [
            "cc-app-ghost",
            "cc-app-traefik",
            "cc-app-wiki",
            "cc-app-wiki-update",
            "ccfleet-agent",
            "swarm-init"
        ]
    );
    assert_eq!(examples["server"]["failedAssertions"], serde_json::json!([]));
    assert_eq!(strings(&examples["server"]["services"]), ["ccfleet-server"]);
}

/// Every recipe of ABRA.md's table has a module, off by default, with the table's
/// health path and statefulness.
#[test]
fn every_recipe_module_has_its_defaults() {
    let Some(lib) = nixpkgs_lib("recipes") else { return };
    let recipes = evaluate(&lib, Path::new("/run/unused"), "recipes");
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
            let module =
                serde_json::json!({ "enable": false, "recipe": recipe, "healthPath": health_path, "stateful": true });
            (recipe.to_string(), module)
        })
        .collect();
    assert_eq!(recipes, Value::Object(expected));
}

/// The Nix regular expressions of `nix/lib/patterns.nix` accept exactly what the Rust
/// parsers accept, on inputs chosen at their edges.
#[test]
fn nix_patterns_agree_with_the_rust_parsers() {
    let versions = [
        "1.3.0+6.42.0-alpine",
        "5.0.3+27.0.1-fpm",
        "1.0.0",
        "0.2.0+v1.2",
        "1.0.0-rc.1+2.0",
        "10.20.30",
        "1.2_3",
        "v1.2.3",
        "1.2",
        "01.2.3",
        "1.2.3+",
        "1.2.3++x",
        "1.2.3+-x",
        "1.2.3+a+b",
        "latest",
        "",
        "1.2.3 ",
        "1.2.3+a/b",
        "1.2.3-+x",
    ];
    let domains = [
        "blog.example.org",
        "a.b",
        "xn--bcher-kva.example",
        "a-b.example.org",
        "example",
        "Blog.example.org",
        "-a.example.org",
        "a-.example.org",
        "a..b",
        ".a.b",
        "a.b.",
        "1.2.3.4",
        "a.b.c1",
        "a_b.example.org",
        "blog;rm.example.org",
    ];
    let quote = |items: &[&str]| {
        items
            .iter()
            .map(|item| serde_json::to_string(item).unwrap())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let expression = format!(
        "let p = import ./nix/lib/patterns.nix; in {{ \
           versions = map (v: builtins.match p.version v != null) [ {} ]; \
           domains = map (d: builtins.match p.domain d != null && builtins.match p.numericTopLevel d == null) [ {} ]; }}",
        quote(&versions),
        quote(&domains)
    );
    let output = nix_instantiate(&["--eval", "--strict", "--json", "-E", &expression]).unwrap();
    let nix: Value = serde_json::from_str(&output).unwrap();
    let mut disagreements = Vec::new();
    for (index, version) in versions.iter().enumerate() {
        let rust = version.parse::<ccfleet_proto::CoopVersion>().is_ok();
        if nix["versions"][index] != rust {
            disagreements.push(format!(
                "version {version:?}: rust accepts: {rust}, nix accepts: {}",
                nix["versions"][index]
            ));
        }
    }
    for (index, domain) in domains.iter().enumerate() {
        let rust = domain.parse::<ccfleet_proto::Domain>().is_ok();
        if nix["domains"][index] != rust {
            disagreements.push(format!(
                "domain {domain:?}: rust accepts: {rust}, nix accepts: {}",
                nix["domains"][index]
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
