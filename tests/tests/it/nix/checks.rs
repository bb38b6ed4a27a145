//! The Nix mirror of `ccfleet-agent check-config` (`nix/lib/checks.nix`, `nix/lib/patterns.nix`)
//! agrees with the agent's own parser on values chosen at the edges of each rule.
//!
//! Each value is judged twice: by the Nix check function, and by the agent's
//! configuration parser with the value placed where the module would render it.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{nix_instantiate, nixpkgs_lib};

/// Whether the agent accepts `value` for the check `check`, placed in a configuration
/// that is otherwise valid.
fn agent_accepts(check: &str, value: &Value) -> bool {
    let text = |value: &Value| {
        value
            .as_str()
            .unwrap_or_else(|| panic!("{check}: {value} is not a string"))
            .to_owned()
    };
    let table = |key: String, value: Value| Value::Object(Map::from_iter([(key, value)]));
    let mut config = json!({
        "server": { "url": "https://fleet.example.org:7443" },
        "host": { "id": "web-1" },
    });
    let mut app = json!({ "domain": "blog.example.org", "recipe": "ghost", "version": "1.0.0" });
    match check {
        // The modules render a number of seconds as "<n>s".
        "duration" => {
            let duration = match value.as_i64() {
                Some(seconds) => format!("{seconds}s"),
                None => text(value),
            };
            config["agent"] = json!({ "reconcile_interval": duration });
        }
        "serverUrl" => config["server"]["url"] = value.clone(),
        "hostId" => config["host"]["id"] = value.clone(),
        "labelKey" => config["host"]["labels"] = table(text(value), json!("x")),
        "labelValue" => config["host"]["labels"] = json!({ "site": value }),
        "abraBinary" => config["abra"] = json!({ "binary": value }),
        "abraServer" => config["abra"] = json!({ "server": value }),
        "absolutePath" => app["secrets"] = json!({ "token": value }),
        "secretName" => app["secrets"] = table(text(value), json!("/run/secrets/token")),
        "envKey" => app["env"] = table(text(value), json!("x")),
        "envValue" => app["env"] = json!({ "MOTD": value }),
        "healthPath" => app["health"] = json!({ "path": value }),
        "schedule" => {
            app["auto_update"] = json!(true);
            app["schedule"] = value.clone();
        }
        "domain" => app["domain"] = value.clone(),
        "recipe" => app["recipe"] = value.clone(),
        "version" => app["version"] = value.clone(),
        other => panic!("no agent placement for check {other}"),
    }
    config["app"] = json!([app]);
    let toml = toml::to_string(&config).unwrap_or_else(|error| panic!("{check} {value}: {error}"));
    ccfleet_agent::config::Config::from_toml_str_with_hostname(&toml, Path::new("agent.toml"), "web-1").is_ok()
}

#[test]
fn nix_checks_agree_with_the_agent_config_parser() {
    let long = |prefix: &str, length: usize| format!("{prefix}{}", "a".repeat(length - prefix.len()));
    let cases: Value = json!({
        "duration": [
            "5m", "90s", "1h 30m", "1h30m", " 5m ", "5 m", "1.5h", "2 weeks", "3M", "10 µs", "1d 0h", "5mins",
            "forever", "0s", "0.0s", "00s", "", "10", "1.h", "5x", "-5m", "5m,", "1h 30", 300, 0
        ],
        "serverUrl": [
            "https://fleet.example.org:7443", "https://fleet.example.org", "https://[::1]:7443", "https://10.0.0.1",
            "https://fleet.example.org/path", "https://fleet.example.org:0080",
            "http://fleet.example.org", "fleet.example.org", "https://user@fleet.example.org",
            "https://fleet.example.org:0", "https://fleet.example.org:65536", "https://fleet.example.org:",
            "https://", "https:// fleet", "https://[::1", "https://[::1]x", "ftp://fleet.example.org",
            "https://fleet.example.org:7443\n"
        ],
        "hostId": ["web-1", "web", "a.b.c", "1.2.3.4", "Web-1", "web_1", "-web", "web-", "a..b", "", long("", 64), long("", 254)],
        "labelKey": ["site", "a.b/c_d-e", "Site", "", "a b", long("", 128), long("", 129)],
        "labelValue": ["berlin", "", "a\nb", "a\u{7f}b", long("", 256), long("", 257)],
        "envKey": ["A", "SMTP_HOST", "_X", "X1", "smtp", "1X", "A-B", "TYPE", "DOMAIN", "", "Ä"],
        "envValue": ["x", "", "tab\there", "a\nb", "a\rb", long("", 4096), long("", 4097)],
        "secretName": ["db_password", "x1", "", "Db", "db-pass", "db pass"],
        "absolutePath": ["/run/x", "/", "/a/..b", "/a/./b", "run/x", "", "/a/../b", "/a/..", "/a\nb"],
        "healthPath": ["/", "/health", "/ä", long("/", 1024), "health", "/a b", "/a\tb", long("/", 1025)],
        "schedule": ["Sun 04:00", "*-*-* 04:00:00", "", "   ", "Sun\n04:00", "Sun\t04:00", long("", 128), long("", 129)],
        "abraBinary": ["abra", "/usr/bin/abra", "abra.sh", "bin/abra", "-abra", "", "/a/../abra", "ab ra"],
        "abraServer": ["default", "my-server.example", "a_b", "_a", "", "-x", ".x", "Default", long("", 253), long("", 254)],
        "domain": [
            "blog.example.org", "a.b", "xn--bcher-kva.example", "Blog.example.org", "example", "a..b", "-a.example.org",
            "1.2.3.4", "a.b.c1", "a_b.example.org", long("", 63) + ".org", long("", 64) + ".org", long("", 250) + ".org"
        ],
        "recipe": ["ghost", "matrix-synapse", "a", long("", 64), "Ghost", "1ghost", "ghost-", "gh--ost", "", long("", 65), "gh_ost"],
        "version": ["1.3.0+6.42.0-alpine", "1.0.0", "v1.0.0", "1.0", "1.0.0+"],
    });
    let lib = nixpkgs_lib();
    let values = cases.to_string();
    let output = nix_instantiate(&[
        "--eval",
        "--strict",
        "--json",
        "nix/tests",
        "--arg",
        "nixpkgsLib",
        lib.to_str().unwrap(),
        "--argstr",
        "checkValues",
        &values,
        "-A",
        "checks",
    ])
    .unwrap();
    let nix: Value = serde_json::from_str(&output).unwrap();
    let mut disagreements = Vec::new();
    let mut compared = 0;
    for (check, values) in cases.as_object().unwrap() {
        for (index, value) in values.as_array().unwrap().iter().enumerate() {
            let nix_problem = &nix[check][index];
            let agent = agent_accepts(check, value);
            compared += 1;
            if nix_problem.is_null() != agent {
                disagreements.push(format!(
                    "{check} {value}: the agent {}, nix says {nix_problem}",
                    if agent { "accepts" } else { "refuses" }
                ));
            }
        }
    }
    assert!(compared > 150, "only {compared} values compared");
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
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
