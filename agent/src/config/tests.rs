//! Tests of the configuration schema: one `check` per case, expectations kept with `expect-test`.

use std::path::Path;

use expect_test::{expect, Expect};

use super::Config;

/// The smallest valid head of a file; app cases append `[[app]]` tables to it.
const HEAD: &str = r#"
[server]
url = "https://fleet.example.org:7443"
[host]
id = "web-1"
"#;

/// Parses `text` with the hostname `test-host` and renders the normalised JSON,
/// or the error text.
fn render(text: &str) -> String {
    match Config::from_toml_str_with_hostname(text, Path::new("agent.toml"), "Test-Host") {
        Ok(config) => serde_json::to_string_pretty(&config).unwrap(),
        Err(error) => format!("error: {error}"),
    }
}

fn check(text: &str, expect: Expect) {
    expect.assert_eq(&render(text));
}

/// Checks a case made of [`HEAD`] plus `apps`; on success renders only the apps.
fn check_apps(apps: &str, expect: Expect) {
    let text = format!("{HEAD}{apps}");
    let actual = match Config::from_toml_str_with_hostname(&text, Path::new("agent.toml"), "test-host") {
        Ok(config) => serde_json::to_string_pretty(&config.apps).unwrap(),
        Err(error) => format!("error: {error}"),
    };
    expect.assert_eq(&actual);
}

const GHOST: &str = r#"
[[app]]
domain = "blog.example.org"
recipe = "ghost"
version = "1.3.0+6.42.0-alpine"
"#;

#[test]
fn minimal_file_gets_every_default() {
    check(
        r#"
[server]
url = "https://fleet.example.org:7443"
"#,
        expect![[r#"
            {
              "server": {
                "url": "https://fleet.example.org:7443",
                "join_token_file": null
              },
              "host": {
                "id": "test-host",
                "labels": {}
              },
              "agent": {
                "state_dir": "/var/lib/ccfleet-agent",
                "control_socket": "/run/ccfleet-agent/control.sock",
                "alerts_dir": "/var/lib/coop-cloud/alerts",
                "reconcile_interval": "5m",
                "observe_interval": "10s",
                "snapshot_retention": 3,
                "min_healthy_time": "10s",
                "probe_address": "127.0.0.1:443",
                "probe_scheme": "https",
                "stop_timeout": "1m 20s"
              },
              "abra": {
                "binary": "abra",
                "dir": "/var/lib/ccfleet-agent/abra",
                "server": "default",
                "command_timeout": "15m"
              },
              "apps": []
            }"#]],
    );
}

#[test]
fn full_file_is_normalised_and_apps_are_sorted() {
    check(
        r#"
[server]
url = "https://fleet.example.org:7443"
join_token_file = "/run/secrets/ccfleet-token"
[host]
id = "web-1"
labels = { site = "berlin", "topology.example.org/rack" = "r2" }
[agent]
state_dir = "/srv/agent"
control_socket = "/run/agent.sock"
alerts_dir = "/srv/alerts"
[abra]
binary = "/opt/abra/bin/abra"
server = "web-1.example.org"
command_timeout = "1h 30m"

[[app]]
domain = "sso.example.org"
recipe = "keycloak"
version = "10.1.0+26.0.5"
stateful = true
deploy_timeout = "20m"
env = { KC_LOG_LEVEL = "info" }
health = { path = "/realms/master", accepted_statuses = [302, 200, 200], timeout = "90s" }

[[app]]
domain = "blog.example.org"
recipe = "ghost"
version = "1.3.0+6.42.0-alpine"
auto_update = true
schedule = "Sun 04:00"
allow_major = true
depends_on = ["sso.example.org", "sso.example.org"]
[app.env]
SMTP_HOST = "mail.example.org"
[app.secrets]
db_password = "/run/secrets/ghost-db"
[app.health]
path = "/ghost/api/admin/site/"
"#,
        expect![[r#"
            {
              "server": {
                "url": "https://fleet.example.org:7443",
                "join_token_file": "/run/secrets/ccfleet-token"
              },
              "host": {
                "id": "web-1",
                "labels": {
                  "site": "berlin",
                  "topology.example.org/rack": "r2"
                }
              },
              "agent": {
                "state_dir": "/srv/agent",
                "control_socket": "/run/agent.sock",
                "alerts_dir": "/srv/alerts",
                "reconcile_interval": "5m",
                "observe_interval": "10s",
                "snapshot_retention": 3,
                "min_healthy_time": "10s",
                "probe_address": "127.0.0.1:443",
                "probe_scheme": "https",
                "stop_timeout": "1m 20s"
              },
              "abra": {
                "binary": "/opt/abra/bin/abra",
                "dir": "/srv/agent/abra",
                "server": "web-1.example.org",
                "command_timeout": "1h 30m"
              },
              "apps": [
                {
                  "domain": "blog.example.org",
                  "recipe": "ghost",
                  "version": "1.3.0+6.42.0-alpine",
                  "stateful": true,
                  "auto_update": true,
                  "schedule": "Sun 04:00",
                  "allow_major": true,
                  "fleet_managed": true,
                  "deploy_timeout": "10m",
                  "depends_on": [
                    "sso.example.org"
                  ],
                  "env": {
                    "SMTP_HOST": "mail.example.org"
                  },
                  "secrets": {
                    "db_password": "/run/secrets/ghost-db"
                  },
                  "health": {
                    "path": "/ghost/api/admin/site/",
                    "accepted_statuses": [
                      200
                    ],
                    "timeout": "5m"
                  }
                },
                {
                  "domain": "sso.example.org",
                  "recipe": "keycloak",
                  "version": "10.1.0+26.0.5",
                  "stateful": true,
                  "auto_update": false,
                  "schedule": null,
                  "allow_major": false,
                  "fleet_managed": true,
                  "deploy_timeout": "20m",
                  "depends_on": [],
                  "env": {
                    "KC_LOG_LEVEL": "info"
                  },
                  "secrets": {},
                  "health": {
                    "path": "/realms/master",
                    "accepted_statuses": [
                      200,
                      302
                    ],
                    "timeout": "1m 30s"
                  }
                }
              ]
            }"#]],
    );
}

#[test]
fn abra_dir_follows_state_dir() {
    check(
        r#"
[server]
url = "https://fleet.example.org"
[agent]
state_dir = "/srv/ccfleet"
"#,
        expect![[r#"
            {
              "server": {
                "url": "https://fleet.example.org",
                "join_token_file": null
              },
              "host": {
                "id": "test-host",
                "labels": {}
              },
              "agent": {
                "state_dir": "/srv/ccfleet",
                "control_socket": "/run/ccfleet-agent/control.sock",
                "alerts_dir": "/var/lib/coop-cloud/alerts",
                "reconcile_interval": "5m",
                "observe_interval": "10s",
                "snapshot_retention": 3,
                "min_healthy_time": "10s",
                "probe_address": "127.0.0.1:443",
                "probe_scheme": "https",
                "stop_timeout": "1m 20s"
              },
              "abra": {
                "binary": "abra",
                "dir": "/srv/ccfleet/abra",
                "server": "default",
                "command_timeout": "15m"
              },
              "apps": []
            }"#]],
    );
}

#[test]
fn plain_http_is_refused_even_on_loopback() {
    check(
        "[server]\nurl = \"http://127.0.0.1:7443\"\n[host]\nid = \"h\"",
        expect![[
            r#"error: agent.toml: field "server.url": "http://127.0.0.1:7443" uses plain http; the server speaks TLS only, use https://"#
        ]],
    );
    check(
        "[server]\nurl = \"http://[::1]:7443\"\n[host]\nid = \"h\"",
        expect![[
            r#"error: agent.toml: field "server.url": "http://[::1]:7443" uses plain http; the server speaks TLS only, use https://"#
        ]],
    );
    check(
        "[server]\nurl = \"http://localhost\"\n[host]\nid = \"h\"",
        expect![[
            r#"error: agent.toml: field "server.url": "http://localhost" uses plain http; the server speaks TLS only, use https://"#
        ]],
    );
    check(
        "[server]\nurl = \"http://fleet.example.org:7443\"\n[host]\nid = \"h\"",
        expect![[
            r#"error: agent.toml: field "server.url": "http://fleet.example.org:7443" uses plain http; the server speaks TLS only, use https://"#
        ]],
    );
}

#[test]
fn bad_server_urls() {
    check(
        "[server]\nurl = \"fleet.example.org\"\n[host]\nid = \"h\"",
        expect![[
            r#"error: agent.toml: field "server.url": "fleet.example.org" is not a URL; write e.g. "https://fleet.example.org:7443""#
        ]],
    );
    check(
        "[server]\nurl = \"ftp://fleet.example.org\"\n[host]\nid = \"h\"",
        expect![[r#"error: agent.toml: field "server.url": "ftp://fleet.example.org" has scheme "ftp"; use https://"#]],
    );
    check(
        "[server]\nurl = \"https://:7443\"\n[host]\nid = \"h\"",
        expect![[r#"error: agent.toml: field "server.url": "https://:7443" has no host"#]],
    );
    check(
        "[server]\nurl = \"https://fleet.example.org:99999\"\n[host]\nid = \"h\"",
        expect![[
            r#"error: agent.toml: field "server.url": "https://fleet.example.org:99999" has an invalid port "99999""#
        ]],
    );
    check(
        "[server]\nurl = \"https://admin:pw@fleet.example.org\"\n[host]\nid = \"h\"",
        expect![[
            r#"error: agent.toml: field "server.url": "https://admin:pw@fleet.example.org" must not carry credentials; clients authenticate with their certificate"#
        ]],
    );
}

#[test]
fn missing_server_section() {
    check(
        "[host]\nid = \"h\"",
        expect![[r#"
        error: agent.toml: TOML parse error at line 1, column 1
          |
        1 | [host]
          | ^
        missing field `server`"#]],
    );
}

#[test]
fn unknown_fields_are_named() {
    check(
        "[server]\nurl = \"https://f.example.org\"\nport = 1",
        expect![[r#"
        error: agent.toml: TOML parse error at line 3, column 1
          |
        3 | port = 1
          | ^^^^
        unknown field `port`, expected `url` or `join_token_file`"#]],
    );
    check_apps(
        &format!("{GHOST}enabled = true\n"),
        expect![[r#"
        error: agent.toml: TOML parse error at line 11, column 1
           |
        11 | enabled = true
           | ^^^^^^^
        unknown field `enabled`, expected one of `domain`, `recipe`, `version`, `stateful`, `auto_update`, `schedule`, `allow_major`, `fleet_managed`, `deploy_timeout`, `depends_on`, `env`, `secrets`, `health`"#]],
    );
    check_apps(
        &format!("{GHOST}[app.health]\npaht = \"/\"\n"),
        expect![[r#"
        error: agent.toml: TOML parse error at line 12, column 1
           |
        12 | paht = "/"
           | ^^^^
        unknown field `paht`, expected one of `path`, `accepted_statuses`, `timeout`"#]],
    );
    check(
        "[server]\nurl = \"https://f.example.org\"\n[extra]\n",
        expect![[r#"
        error: agent.toml: TOML parse error at line 3, column 2
          |
        3 | [extra]
          |  ^^^^^
        unknown field `extra`, expected one of `server`, `host`, `agent`, `abra`, `app`"#]],
    );
}

#[test]
fn toml_syntax_error() {
    check(
        "[server\nurl = 1",
        expect![[r#"
        error: agent.toml: TOML parse error at line 1, column 8
          |
        1 | [server
          |        ^
        unclosed table, expected `]`"#]],
    );
}

#[test]
fn host_id_default_comes_from_hostname_and_is_validated() {
    let text = "[server]\nurl = \"https://fleet.example.org\"";
    let bad = Config::from_toml_str_with_hostname(text, Path::new("agent.toml"), "my_host").unwrap_err();
    expect![[r#"agent.toml: field "host.id": not set, and the hostname cannot serve as the default: invalid host id "my_host": character '_' at position 2 is not allowed (allowed: lowercase letters, digits, '-' and '.')"#]].assert_eq(&bad.to_string());
    check(
        "[server]\nurl = \"https://fleet.example.org\"\n[host]\nid = \"Web 1\"",
        expect![[
            r#"error: agent.toml: field "host.id": invalid host id "Web 1": uppercase character 'W' at position 0 is not allowed: names are lowercase (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
}

#[test]
fn bad_labels() {
    check(
        "[server]\nurl = \"https://f.example.org\"\n[host]\nid = \"h\"\nlabels = { Site = \"x\", \"\" = \"y\", ok = \"a\\nb\" }",
        expect![[r#"
            error: agent.toml: field "host.labels.": label key "" must be 1 to 128 characters long
            agent.toml: field "host.labels.Site": label key "Site" contains 'S' (allowed: lowercase letters, digits, '.', '_', '-', '/')
            agent.toml: field "host.labels.ok": label value "a\nb" contains a control character"#]],
    );
}

#[test]
fn relative_paths_are_refused() {
    check(
        r#"
[server]
url = "https://fleet.example.org"
join_token_file = "token"
[host]
id = "h"
[agent]
state_dir = "var/lib/x"
control_socket = "../sock"
alerts_dir = ""
[abra]
dir = "/var/../abra"
"#,
        expect![[r#"
            error: agent.toml: field "server.join_token_file": path "token" must be absolute
            agent.toml: field "agent.state_dir": path "var/lib/x" must be absolute
            agent.toml: field "agent.control_socket": path "../sock" must be absolute
            agent.toml: field "agent.alerts_dir": must not be empty
            agent.toml: field "abra.dir": path "/var/../abra" must not contain '..'"#]],
    );
}

#[test]
fn bad_abra_settings() {
    check(
        r#"
[server]
url = "https://fleet.example.org"
[host]
id = "h"
[abra]
binary = "bin/abra"
server = "Default Server"
command_timeout = "forever"
"#,
        expect![[r#"
            error: agent.toml: field "abra.binary": "bin/abra" must be a bare program name looked up on PATH (such as "abra") or an absolute path
            agent.toml: field "abra.server": invalid abra server name "Default Server": 1 to 253 lowercase letters, digits, '.', '-', '_', not starting with '-' or '.'
            agent.toml: field "abra.command_timeout": invalid duration "forever": expected number at 0 (write e.g. "90s", "15m")"#]],
    );
    check(
        "[server]\nurl = \"https://f.example.org\"\n[host]\nid = \"h\"\n[abra]\nbinary = \"-x\"\ncommand_timeout = \"0s\"",
        expect![[r#"
            error: agent.toml: field "abra.binary": "-x" must be a bare program name looked up on PATH (such as "abra") or an absolute path
            agent.toml: field "abra.command_timeout": duration "0s" must be longer than zero"#]],
    );
}

#[test]
fn bad_version_names_the_app_and_field() {
    check_apps(
        "[[app]]\ndomain = \"blog.example.org\"\nrecipe = \"ghost\"\nversion = \"1.2_3\"\n",
        expect![[
            r#"error: agent.toml: app "blog.example.org": field "version": invalid version "1.2_3": looks like an old-style `<upstream>_<n>` tag, which ccfleet does not support; use a `<recipe semver>+<upstream>` release such as 1.3.0+6.42.0"#
        ]],
    );
    check_apps(
        "[[app]]\ndomain = \"blog.example.org\"\nrecipe = \"ghost\"\nversion = \"v1.2.3\"\n",
        expect![[
            r#"error: agent.toml: app "blog.example.org": field "version": invalid version "v1.2.3": recipe versions have no 'v' prefix; write "1.2.3""#
        ]],
    );
}

#[test]
fn missing_version_is_a_schema_error() {
    check_apps(
        "[[app]]\ndomain = \"blog.example.org\"\nrecipe = \"ghost\"\n",
        expect![[r#"
        error: agent.toml: TOML parse error at line 6, column 1
          |
        6 | [[app]]
          | ^^^^^^^
        missing field `version`"#]],
    );
}

#[test]
fn bad_domain_is_reported_by_index() {
    check_apps(
        &format!("{GHOST}[[app]]\ndomain = \"blog;rm -rf /\"\nrecipe = \"../ghost\"\nversion = \"1.0.0\"\n"),
        expect![[r#"
            error: agent.toml: app[1]: field "domain": invalid app domain "blog;rm -rf /": character ';' at position 4 is not allowed (allowed: lowercase letters, digits, '-' and '.')
            agent.toml: app[1]: field "recipe": invalid recipe name "../ghost": character '.' at position 0 is not allowed (allowed: lowercase letters, digits and '-')"#]],
    );
}

#[test]
fn duplicate_domains() {
    check_apps(
        &format!("{GHOST}{GHOST}"),
        expect![[r#"error: agent.toml: app "blog.example.org": field "domain": declared twice (app[0] and app[1])"#]],
    );
}

#[test]
fn apps_whose_stack_names_collide_are_refused() {
    // Alike in their first 45 sanitised characters: abra cuts both to one stack.
    let long = "a-very-long-subdomain-name.of-a-long-domain.example";
    check_apps(
        &format!(
            "[[app]]\ndomain = \"{long}.org\"\nrecipe = \"ghost\"\nversion = \"1.0.0+1\"\n\
             [[app]]\ndomain = \"{long}.net\"\nrecipe = \"ghost\"\nversion = \"1.0.0+1\"\n"
        ),
        expect![[
            r#"error: agent.toml: app "a-very-long-subdomain-name.of-a-long-domain.example.net": field "domain": its stack name "a-very-long-subdomain-name_of-a-long-domain_e" is also that of app "a-very-long-subdomain-name.of-a-long-domain.example.org": abra would deploy both as one stack (stack names are the domain with '.' as '_' cut to 45 characters, or env.STACK_NAME): set a distinct env.STACK_NAME on one of them"#
        ]],
    );
    // A distinct STACK_NAME on one of them settles it; the same one collides.
    check_apps(
        &format!(
            "[[app]]\ndomain = \"{long}.org\"\nrecipe = \"ghost\"\nversion = \"1.0.0+1\"\n\
             env = {{ STACK_NAME = \"long_org\" }}\n\
             [[app]]\ndomain = \"{long}.net\"\nrecipe = \"ghost\"\nversion = \"1.0.0+1\"\n"
        ),
        expect![[r#"
            [
              {
                "domain": "a-very-long-subdomain-name.of-a-long-domain.example.net",
                "recipe": "ghost",
                "version": "1.0.0+1",
                "stateful": true,
                "auto_update": false,
                "schedule": null,
                "allow_major": false,
                "fleet_managed": true,
                "deploy_timeout": "10m",
                "depends_on": [],
                "env": {},
                "secrets": {},
                "health": {
                  "path": null,
                  "accepted_statuses": [
                    200
                  ],
                  "timeout": "5m"
                }
              },
              {
                "domain": "a-very-long-subdomain-name.of-a-long-domain.example.org",
                "recipe": "ghost",
                "version": "1.0.0+1",
                "stateful": true,
                "auto_update": false,
                "schedule": null,
                "allow_major": false,
                "fleet_managed": true,
                "deploy_timeout": "10m",
                "depends_on": [],
                "env": {
                  "STACK_NAME": "long_org"
                },
                "secrets": {},
                "health": {
                  "path": null,
                  "accepted_statuses": [
                    200
                  ],
                  "timeout": "5m"
                }
              }
            ]"#]],
    );
    check_apps(
        &format!(
            "{GHOST}env = {{ STACK_NAME = \"blog\" }}\n\
             [[app]]\ndomain = \"news.example.org\"\nrecipe = \"ghost\"\nversion = \"1.0.0+1\"\n\
             env = {{ STACK_NAME = \"blog\" }}\n"
        ),
        expect![[
            r#"error: agent.toml: app "news.example.org": field "domain": its stack name "blog" is also that of app "blog.example.org": abra would deploy both as one stack (stack names are the domain with '.' as '_' cut to 45 characters, or env.STACK_NAME): set a distinct env.STACK_NAME on one of them"#
        ]],
    );
    check_apps(
        &format!("{GHOST}env = {{ STACK_NAME = \"blog.example\" }}\n"),
        expect![[
            r#"error: agent.toml: app "blog.example.org": field "env.STACK_NAME": invalid stack name "blog.example": must start with a letter or digit and hold only letters, digits, '_' and '-'"#
        ]],
    );
}

#[test]
fn depends_on_must_name_another_declared_app() {
    check_apps(
        &format!("{GHOST}depends_on = [\"sso.example.org\", \"blog.example.org\", \"not a domain\"]\n"),
        expect![[r#"
        error: agent.toml: app "blog.example.org": field "depends_on": invalid app domain "not a domain": character ' ' at position 3 is not allowed (allowed: lowercase letters, digits, '-' and '.')
        agent.toml: app "blog.example.org": field "depends_on": an app cannot depend on itself
        agent.toml: app "blog.example.org": field "depends_on": "sso.example.org" is not an app declared in this file"#]],
    );
}

#[test]
fn dependency_cycles_are_refused() {
    check_apps(
        r#"
[[app]]
domain = "a.example.org"
recipe = "ghost"
version = "1.0.0"
depends_on = ["b.example.org"]
[[app]]
domain = "b.example.org"
recipe = "ghost"
version = "1.0.0"
depends_on = ["a.example.org"]
"#,
        expect![[
            r#"error: agent.toml: app "a.example.org": field "depends_on": dependency cycle: a.example.org -> b.example.org -> a.example.org"#
        ]],
    );
}

#[test]
fn auto_update_needs_a_schedule() {
    check_apps(
        &format!("{GHOST}auto_update = true\n"),
        expect![[
            r#"error: agent.toml: app "blog.example.org": field "schedule": required when auto_update is true (systemd OnCalendar text, e.g. "Sun 04:00")"#
        ]],
    );
    check_apps(
        &format!("{GHOST}auto_update = true\nschedule = \"  \"\n"),
        expect![[r#"error: agent.toml: app "blog.example.org": field "schedule": must not be empty"#]],
    );
    check_apps(
        &format!("{GHOST}auto_update = true\nschedule = \"Sun\\n04:00\"\n"),
        expect![[
            r#"error: agent.toml: app "blog.example.org": field "schedule": schedule "Sun\n04:00" contains a control character"#
        ]],
    );
}

#[test]
fn bad_env() {
    check_apps(
        &format!("{GHOST}[app.env]\nTYPE = \"ghost:1.0.0\"\nDOMAIN = \"x\"\nlower = \"1\"\n\"1ST\" = \"x\"\nOK = \"two\\nlines\"\nNUL = \"a\\u0000b\"\n"),
        expect![[r#"
            error: agent.toml: app "blog.example.org": field "env.1ST": invalid variable name "1ST": must match ^[A-Z_][A-Z0-9_]*$
            agent.toml: app "blog.example.org": field "env.DOMAIN": DOMAIN is written by abra itself and cannot be set here
            agent.toml: app "blog.example.org": field "env.NUL": value must not contain a newline, carriage return or NUL (the .env file holds one line per variable)
            agent.toml: app "blog.example.org": field "env.OK": value must not contain a newline, carriage return or NUL (the .env file holds one line per variable)
            agent.toml: app "blog.example.org": field "env.TYPE": TYPE is written by abra itself and cannot be set here
            agent.toml: app "blog.example.org": field "env.lower": invalid variable name "lower": must match ^[A-Z_][A-Z0-9_]*$"#]],
    );
}

#[test]
fn bad_secrets() {
    check_apps(
        &format!("{GHOST}[app.secrets]\n\"DB-Password\" = \"/run/secrets/x\"\ndb_password = \"secrets/x\"\n"),
        expect![[r#"
            error: agent.toml: app "blog.example.org": field "secrets.DB-Password": invalid secret name "DB-Password": must match ^[a-z0-9_]+$ (abra secret names)
            agent.toml: app "blog.example.org": field "secrets.db_password": path "secrets/x" must be absolute"#]],
    );
}

#[test]
fn bad_health() {
    check_apps(
        &format!(
            "{GHOST}[app.health]\npath = \"health\"\naccepted_statuses = [99, 600, 204]\ntimeout = \"5 parsecs\"\n"
        ),
        expect![[r#"
            error: agent.toml: app "blog.example.org": field "health.path": health path "health" must start with '/'
            agent.toml: app "blog.example.org": field "health.accepted_statuses": 99 is not an HTTP status (100 to 599)
            agent.toml: app "blog.example.org": field "health.accepted_statuses": 600 is not an HTTP status (100 to 599)
            agent.toml: app "blog.example.org": field "health.timeout": invalid duration "5 parsecs": unknown time unit "parsecs", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (write e.g. "90s", "15m")"#]],
    );
    check_apps(
        &format!("{GHOST}[app.health]\npath = \"/a b\"\naccepted_statuses = []\n"),
        expect![[r#"
        error: agent.toml: app "blog.example.org": field "health.path": health path "/a b" must not contain whitespace or control characters
        agent.toml: app "blog.example.org": field "health.accepted_statuses": must list at least one status"#]],
    );
}

#[test]
fn bad_deploy_timeout() {
    check_apps(
        &format!("{GHOST}deploy_timeout = \"10\"\n"),
        expect![[
            r#"error: agent.toml: app "blog.example.org": field "deploy_timeout": invalid duration "10": time unit needed, for example 10sec or 10ms (write e.g. "90s", "15m")"#
        ]],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    check(
        r#"
[server]
url = "http://fleet.example.org"
[host]
id = "h"
[agent]
state_dir = "relative"
[[app]]
domain = "Blog.example.org"
recipe = "Ghost"
version = "latest"
[[app]]
domain = "wiki.example.org"
recipe = "hedgedoc"
version = "1.0.0+1.9.9"
depends_on = ["blog.example.org"]
"#,
        expect![[r#"
            error: agent.toml: field "server.url": "http://fleet.example.org" uses plain http; the server speaks TLS only, use https://
            agent.toml: field "agent.state_dir": path "relative" must be absolute
            agent.toml: app[0]: field "domain": invalid app domain "Blog.example.org": uppercase character 'B' at position 0 is not allowed: names are lowercase (allowed: lowercase letters, digits, '-' and '.')
            agent.toml: app[0]: field "recipe": invalid recipe name "Ghost": uppercase character 'G' at position 0 is not allowed: names are lowercase (allowed: lowercase letters, digits and '-')
            agent.toml: app[0]: field "version": invalid version "latest": the recipe part "latest" is not a semantic version MAJOR.MINOR.PATCH (unexpected character 'l' while parsing major version number)
            agent.toml: app "wiki.example.org": field "depends_on": "blog.example.org" is not an app declared in this file"#]],
    );
}

#[test]
fn validate_files_reports_missing_and_unreadable_secrets() {
    let directory = tempfile::tempdir().unwrap();
    let present = directory.path().join("present");
    std::fs::write(&present, "s3cret").unwrap();
    let text = format!(
        "{HEAD}{GHOST}[app.secrets]\npresent = {present:?}\nmissing = \"/nonexistent/ccfleet/secret\"\ndirectory = {directory:?}\n",
        present = present.to_str().unwrap(),
        directory = directory.path().to_str().unwrap(),
    );
    let config = Config::from_toml_str_with_hostname(&text, Path::new("agent.toml"), "h").unwrap();
    let error = config.validate_files(Path::new("agent.toml")).unwrap_err().to_string();
    let error = error.replace(directory.path().to_str().unwrap(), "$TMP");
    expect![[r#"
        agent.toml: app "blog.example.org": field "secrets.directory": $TMP is not a regular file
        agent.toml: app "blog.example.org": field "secrets.missing": cannot read /nonexistent/ccfleet/secret: No such file or directory (os error 2)"#]].assert_eq(&error);

    let text = format!(
        "{HEAD}{GHOST}[app.secrets]\npresent = {:?}\n",
        present.to_str().unwrap()
    );
    let config = Config::from_toml_str_with_hostname(&text, Path::new("agent.toml"), "h").unwrap();
    assert!(config.validate_files(Path::new("agent.toml")).is_ok());
}

#[test]
fn load_reports_a_missing_file() {
    let error = Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
    let source = std::error::Error::source(&error)
        .map(ToString::to_string)
        .unwrap_or_default();
    expect!["/nonexistent/agent.toml: cannot read the configuration: No such file or directory (os error 2)"]
        .assert_eq(&format!("{error}: {source}"));
}

#[test]
fn upgrade_settings_are_checked() {
    check(
        &format!(
            "{HEAD}[agent]\nsnapshot_retention = 0\nmin_healthy_time = \"0s\"\nprobe_address = \"localhost\"\nstop_timeout = \"soon\"\n"
        ),
        expect![[r#"
            error: agent.toml: field "agent.snapshot_retention": 0 is out of range: keep 1 to 1000 snapshots per app
            agent.toml: field "agent.min_healthy_time": duration "0s" must be longer than zero
            agent.toml: field "agent.probe_address": not an address with a port (write e.g. "127.0.0.1:443"): invalid socket address syntax
            agent.toml: field "agent.stop_timeout": invalid duration "soon": expected number at 0 (write e.g. "90s", "15m")"#]],
    );
    check(
        &format!("{HEAD}[agent]\nprobe_scheme = \"gopher\"\n"),
        expect![[r#"
            error: agent.toml: TOML parse error at line 7, column 16
              |
            7 | probe_scheme = "gopher"
              |                ^^^^^^^^
            unknown variant `gopher`, expected `https` or `http`"#]],
    );
    let text = format!(
        "{HEAD}[agent]\nsnapshot_retention = 5\nmin_healthy_time = \"2s\"\nprobe_address = \"127.0.0.1:18080\"\nprobe_scheme = \"http\"\n"
    );
    let agent = Config::from_toml_str_with_hostname(&text, Path::new("agent.toml"), "h")
        .unwrap()
        .agent;
    assert_eq!(agent.snapshot_retention, 5);
    assert_eq!(agent.min_healthy_time, std::time::Duration::from_secs(2));
    assert_eq!(agent.probe_address.to_string(), "127.0.0.1:18080");
    assert_eq!(agent.probe_scheme, super::ProbeScheme::Http);
}

#[test]
fn fleet_managed_defaults_to_true_and_can_pin() {
    let text = format!("{HEAD}{GHOST}fleet_managed = false\n");
    let config = Config::from_toml_str_with_hostname(&text, Path::new("agent.toml"), "h").unwrap();
    assert!(!config.apps[0].fleet_managed);
    let text = format!("{HEAD}{GHOST}");
    let config = Config::from_toml_str_with_hostname(&text, Path::new("agent.toml"), "h").unwrap();
    assert!(config.apps[0].fleet_managed);
}

#[test]
fn a_domain_too_long_for_its_secrets_is_refused() {
    // The stack name is cut to 45 characters (`<40 a>_exam`); with
    // `_database_password_long_v1` the secret name is 71: too many for Docker.
    let domain = format!("{}.example.org", "a".repeat(40));
    check_apps(
        &format!(
            "[[app]]\ndomain = \"{domain}\"\nrecipe = \"ghost\"\nversion = \"1.0.0+1\"\n\
             secrets = {{ database_password_long = \"/run/secrets/db\" }}\n"
        ),
        expect![[
            r#"error: agent.toml: app "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.org": field "domain": the Docker secret name "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa_exam_database_password_long_v1" would be 71 characters long, the limit is 64: use a shorter domain or secret name"#
        ]],
    );
    // Without declared secrets nothing is known to be too long yet (the
    // recipe's own secrets are checked when abra has written the env file).
    check_apps(
        &format!("[[app]]\ndomain = \"{domain}\"\nrecipe = \"ghost\"\nversion = \"1.0.0+1\"\n"),
        expect![[r#"
            [
              {
                "domain": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.org",
                "recipe": "ghost",
                "version": "1.0.0+1",
                "stateful": true,
                "auto_update": false,
                "schedule": null,
                "allow_major": false,
                "fleet_managed": true,
                "deploy_timeout": "10m",
                "depends_on": [],
                "env": {},
                "secrets": {},
                "health": {
                  "path": null,
                  "accepted_statuses": [
                    200
                  ],
                  "timeout": "5m"
                }
              }
            ]"#]],
    );
}

#[test]
fn domain_checks_can_be_turned_off() {
    let text = format!("{HEAD}[abra]\nno_domain_checks = true\n");
    let config = Config::from_toml_str_with_hostname(&text, Path::new("agent.toml"), "test-host").unwrap();
    assert!(config.abra.no_domain_checks);
    let config = Config::from_toml_str_with_hostname(HEAD, Path::new("agent.toml"), "test-host").unwrap();
    assert!(!config.abra.no_domain_checks);
    check(
        &format!("{HEAD}[abra]\nno_domain_checks = \"yes\"\n"),
        expect![[r#"
            error: agent.toml: TOML parse error at line 7, column 20
              |
            7 | no_domain_checks = "yes"
              |                    ^^^^^
            invalid type: string "yes", expected a boolean"#]],
    );
}
