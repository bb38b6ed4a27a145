//! Tables of good and bad inputs for every parser, plus property tests for
//! round trips and ordering.

use expect_test::{expect, Expect};
use proptest::prelude::*;

use super::*;

fn check_domain(input: &str, expect: Expect) {
    let actual = match input.parse::<Domain>() {
        Ok(domain) => format!("ok {domain} stack={}", domain.stack_name()),
        Err(error) => format!("error: {error}"),
    };
    expect.assert_eq(&actual);
}

fn check_recipe(input: &str, expect: Expect) {
    let actual = match input.parse::<RecipeName>() {
        Ok(recipe) => format!("ok {recipe}"),
        Err(error) => format!("error: {error}"),
    };
    expect.assert_eq(&actual);
}

fn check_host(input: &str, expect: Expect) {
    let actual = match input.parse::<HostId>() {
        Ok(host) => format!("ok {host}"),
        Err(error) => format!("error: {error}"),
    };
    expect.assert_eq(&actual);
}

fn check_version(input: &str, expect: Expect) {
    let actual = match input.parse::<CoopVersion>() {
        Ok(version) => format!(
            "ok recipe={} upstream={:?}",
            version.recipe_version(),
            version.upstream()
        ),
        Err(error) => format!("error: {error}"),
    };
    expect.assert_eq(&actual);
}

fn check_change(from: &str, to: &str, expect: Expect) {
    let from: CoopVersion = from.parse().unwrap();
    let to: CoopVersion = to.parse().unwrap();
    expect.assert_eq(&format!(
        "{:?} major={}",
        from.change_to(&to),
        from.is_major_upgrade(&to)
    ));
}

#[test]
fn domains() {
    check_domain(
        "blog.example.org",
        expect![[r#"ok blog.example.org stack=blog_example_org"#]],
    );
    check_domain(
        "xn--bcher-kva.example",
        expect![[r#"ok xn--bcher-kva.example stack=xn--bcher-kva_example"#]],
    );
    check_domain("", expect![[r#"error: invalid app domain "": must not be empty"#]]);
    check_domain(
        "localhost",
        expect![[
            r#"error: invalid app domain "localhost": must be a fully qualified domain such as blog.example.org"#
        ]],
    );
    check_domain(
        "Blog.example.org",
        expect![[
            r#"error: invalid app domain "Blog.example.org": uppercase character 'B' at position 0 is not allowed: names are lowercase (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
    check_domain(
        "blog.example.org;rm -rf /",
        expect![[
            r#"error: invalid app domain "blog.example.org;rm -rf /": character ';' at position 16 is not allowed (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
    check_domain(
        "$(reboot).example.org",
        expect![[
            r#"error: invalid app domain "$(reboot).example.org": character '$' at position 0 is not allowed (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
    check_domain(
        "../etc/passwd",
        expect![[
            r#"error: invalid app domain "../etc/passwd": character '/' at position 2 is not allowed (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
    check_domain(
        "..example.org",
        expect![[
            r#"error: invalid app domain "..example.org": has an empty label (two dots in a row, or a leading or trailing dot)"#
        ]],
    );
    check_domain(
        "blog.example.org.",
        expect![[
            r#"error: invalid app domain "blog.example.org.": has an empty label (two dots in a row, or a leading or trailing dot)"#
        ]],
    );
    check_domain(
        "-blog.example.org",
        expect![[r#"error: invalid app domain "-blog.example.org": label "-blog" starts or ends with '-'"#]],
    );
    check_domain(
        "blog\n.example.org",
        expect![[
            r#"error: invalid app domain "blog\n.example.org": control character '\n' at position 4 is not allowed (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
    check_domain(
        "blоg.example.org",
        expect![[
            r#"error: invalid app domain "blоg.example.org": non-ASCII character 'о' (U+043E) at position 2 is not allowed: international names must be given in their ASCII (punycode) form (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
    check_domain(
        "10.0.0.1",
        expect![[r#"error: invalid app domain "10.0.0.1": must be a domain name, not an IP address"#]],
    );
    check_domain(
        &format!("{}.org", "a".repeat(64)),
        expect![[
            r#"error: invalid app domain "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.org": label "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" is longer than 63 characters"#
        ]],
    );
    let too_long = format!("{}.org", ["abcdefghij"; 25].join("."));
    check_domain(
        &too_long,
        expect![[
            r#"error: invalid app domain "abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.abcdefghij.org": is 278 characters long, the limit is 253"#
        ]],
    );
}

#[test]
fn recipes() {
    check_recipe("ghost", expect![[r#"ok ghost"#]]);
    check_recipe("custom-html-tiny", expect![[r#"ok custom-html-tiny"#]]);
    check_recipe("", expect![[r#"error: invalid recipe name "": must not be empty"#]]);
    check_recipe(
        "../ghost",
        expect![[
            r#"error: invalid recipe name "../ghost": character '.' at position 0 is not allowed (allowed: lowercase letters, digits and '-')"#
        ]],
    );
    check_recipe(
        "ghost/x",
        expect![[
            r#"error: invalid recipe name "ghost/x": character '/' at position 5 is not allowed (allowed: lowercase letters, digits and '-')"#
        ]],
    );
    check_recipe(
        "ghost`id`",
        expect![[
            r#"error: invalid recipe name "ghost`id`": character '`' at position 5 is not allowed (allowed: lowercase letters, digits and '-')"#
        ]],
    );
    check_recipe(
        "-rf",
        expect![[r#"error: invalid recipe name "-rf": must start with a lowercase letter"#]],
    );
    check_recipe(
        "1password",
        expect![[r#"error: invalid recipe name "1password": must start with a lowercase letter"#]],
    );
    check_recipe(
        "ghost-",
        expect![[r#"error: invalid recipe name "ghost-": must not end with '-' or contain '--'"#]],
    );
    check_recipe(
        "gh\u{0}ost",
        expect![[
            r#"error: invalid recipe name "gh\0ost": control character '\0' at position 2 is not allowed (allowed: lowercase letters, digits and '-')"#
        ]],
    );
    check_recipe(
        &"a".repeat(65),
        expect![[
            r#"error: invalid recipe name "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": is 65 characters long, the limit is 64"#
        ]],
    );
}

#[test]
fn host_ids() {
    check_host("web-1", expect![[r#"ok web-1"#]]);
    check_host("web-1.coop.example", expect![[r#"ok web-1.coop.example"#]]);
    check_host("", expect![[r#"error: invalid host id "": must not be empty"#]]);
    check_host(
        "..",
        expect![[
            r#"error: invalid host id "..": has an empty label (two dots in a row, or a leading or trailing dot)"#
        ]],
    );
    check_host(
        "web 1",
        expect![[
            r#"error: invalid host id "web 1": character ' ' at position 3 is not allowed (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
    check_host(
        "web|1",
        expect![[
            r#"error: invalid host id "web|1": character '|' at position 3 is not allowed (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
    check_host(
        "wеb",
        expect![[
            r#"error: invalid host id "wеb": non-ASCII character 'е' (U+0435) at position 1 is not allowed: international names must be given in their ASCII (punycode) form (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
}

fn check_admin(input: &str, expect: Expect) {
    let actual = match input.parse::<AdminName>() {
        Ok(name) => format!("ok {name}"),
        Err(error) => format!("error: {error}"),
    };
    expect.assert_eq(&actual);
}

#[test]
fn admin_names() {
    check_admin("alice", expect![[r#"ok alice"#]]);
    check_admin("ops-team.berlin", expect![[r#"ok ops-team.berlin"#]]);
    check_admin(
        "Bob",
        expect![[
            r#"error: invalid admin name "Bob": uppercase character 'B' at position 0 is not allowed: names are lowercase (allowed: lowercase letters, digits, '-' and '.')"#
        ]],
    );
    check_admin("", expect![[r#"error: invalid admin name "": must not be empty"#]]);
    check_admin(
        &"a".repeat(65),
        expect![[
            r#"error: invalid admin name "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": is 65 characters long, the limit is 64"#
        ]],
    );
    check_admin(
        "-bob",
        expect![[r#"error: invalid admin name "-bob": label "-bob" starts or ends with '-'"#]],
    );
}

fn check_url(input: &str, expect: Expect) {
    let actual = match input.parse::<ServerUrl>() {
        Ok(url) => format!("ok {url}"),
        Err(error) => format!("error: {error}"),
    };
    expect.assert_eq(&actual);
}

#[test]
fn server_urls() {
    check_url(
        "https://fleet.example.org:7443",
        expect![[r#"ok https://fleet.example.org:7443"#]],
    );
    check_url("https://[::1]:7443/", expect![[r#"ok https://[::1]:7443/"#]]);
    check_url("https://127.0.0.1", expect![[r#"ok https://127.0.0.1"#]]);
    check_url(
        "http://fleet.example.org",
        expect![[
            r#"error: invalid server URL "http://fleet.example.org": uses plain http; the server speaks TLS only, use https://"#
        ]],
    );
    check_url(
        "fleet.example.org",
        expect![[
            r#"error: invalid server URL "fleet.example.org": is not a URL; write e.g. "https://fleet.example.org:7443""#
        ]],
    );
    check_url(
        "https://user:pw@fleet.example.org",
        expect![[
            r#"error: invalid server URL "https://user:pw@fleet.example.org": must not carry credentials; clients authenticate with their certificate"#
        ]],
    );
    check_url(
        "https://fleet.example.org:0",
        expect![[r#"error: invalid server URL "https://fleet.example.org:0": has an invalid port "0""#]],
    );
    check_url(
        "https://[::1",
        expect![[r#"error: invalid server URL "https://[::1": has an unclosed '[' in its host"#]],
    );
    check_url(
        "https://:7443",
        expect![[r#"error: invalid server URL "https://:7443": has no host"#]],
    );
    check_url(
        "https://fleet .org",
        expect![[r#"error: invalid server URL "https://fleet .org": contains whitespace or a control character"#]],
    );
    check_url(
        "ftp://fleet.example.org",
        expect![[r#"error: invalid server URL "ftp://fleet.example.org": has scheme "ftp"; use https://"#]],
    );
}

#[test]
fn versions() {
    check_version(
        "1.3.0+6.42.0-alpine",
        expect![[r#"ok recipe=1.3.0 upstream=Some("6.42.0-alpine")"#]],
    );
    check_version(
        "5.0.3+27.0.1-fpm",
        expect![[r#"ok recipe=5.0.3 upstream=Some("27.0.1-fpm")"#]],
    );
    check_version("0.2.0", expect![[r#"ok recipe=0.2.0 upstream=None"#]]);
    check_version(
        "1.0.0-rc1+2.0",
        expect![[r#"ok recipe=1.0.0-rc1 upstream=Some("2.0")"#]],
    );
    check_version("", expect![[r#"error: invalid version "": must not be empty"#]]);
    check_version(
        "1.3.0+",
        expect![[r#"error: invalid version "1.3.0+": has a '+' with no upstream version after it"#]],
    );
    check_version(
        "1.3.0++x",
        expect![[r#"error: invalid version "1.3.0++x": has more than one '+'"#]],
    );
    check_version(
        "1.3.0+-x",
        expect![[
            r#"error: invalid version "1.3.0+-x": the upstream version after '+' must start with a letter or digit"#
        ]],
    );
    check_version(
        "1.2_3",
        expect![[
            r#"error: invalid version "1.2_3": looks like an old-style `<upstream>_<n>` tag, which ccfleet does not support; use a `<recipe semver>+<upstream>` release such as 1.3.0+6.42.0"#
        ]],
    );
    check_version(
        "4.32.1_2",
        expect![[
            r#"error: invalid version "4.32.1_2": looks like an old-style `<upstream>_<n>` tag, which ccfleet does not support; use a `<recipe semver>+<upstream>` release such as 1.3.0+6.42.0"#
        ]],
    );
    check_version(
        "v1.3.0",
        expect![[r#"error: invalid version "v1.3.0": recipe versions have no 'v' prefix; write "1.3.0""#]],
    );
    check_version(
        "1.3",
        expect![[
            r#"error: invalid version "1.3": the recipe part "1.3" is not a semantic version MAJOR.MINOR.PATCH (unexpected end of input while parsing minor version number)"#
        ]],
    );
    check_version(
        "latest",
        expect![[
            r#"error: invalid version "latest": the recipe part "latest" is not a semantic version MAJOR.MINOR.PATCH (unexpected character 'l' while parsing major version number)"#
        ]],
    );
    check_version(
        "1.3.0;reboot",
        expect![[
            r#"error: invalid version "1.3.0;reboot": character ';' at position 5 is not allowed (allowed: ASCII letters, digits, '.', '-', '_' and one '+')"#
        ]],
    );
    check_version(
        "1.3.0+6.4/../x",
        expect![[
            r#"error: invalid version "1.3.0+6.4/../x": character '/' at position 9 is not allowed (allowed: ASCII letters, digits, '.', '-', '_' and one '+')"#
        ]],
    );
    check_version(
        "1.3.0+6 42",
        expect![[
            r#"error: invalid version "1.3.0+6 42": character ' ' at position 7 is not allowed (allowed: ASCII letters, digits, '.', '-', '_' and one '+')"#
        ]],
    );
    check_version(
        "1.3.0\n",
        expect![[
            r#"error: invalid version "1.3.0\n": character '\n' at position 5 is not allowed (allowed: ASCII letters, digits, '.', '-', '_' and one '+')"#
        ]],
    );
    check_version(
        "１.3.0",
        expect![[
            r#"error: invalid version "１.3.0": non-ASCII character '１' (U+FF11) at position 0 is not allowed (allowed: ASCII letters, digits, '.', '-', '_' and one '+')"#
        ]],
    );
    check_version(
        &format!("1.0.0+{}", "a".repeat(130)),
        expect![[
            r#"error: invalid version "1.0.0+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": is 136 characters long, the limit is 128"#
        ]],
    );
}

#[test]
fn version_changes() {
    check_change("1.3.0+6.42.0", "2.0.0+6.43.0", expect![[r#"Major major=true"#]]);
    check_change("1.3.0+6.42.0", "2.0.0+6.42.0", expect![[r#"Major major=true"#]]);
    check_change("1.3.0+6.42.0", "1.4.0+7.0.0", expect![[r#"Compatible major=false"#]]);
    check_change("1.3.0+6.42.0", "1.3.1+6.42.0", expect![[r#"Compatible major=false"#]]);
    check_change("1.3.0+6.42.0", "1.3.0+6.43.0", expect![[r#"Same major=false"#]]);
    check_change("2.0.0+1", "1.9.0+1", expect![[r#"Downgrade major=false"#]]);
    check_change("1.0.0-rc1+1", "1.0.0+1", expect![[r#"Compatible major=false"#]]);
}

#[test]
fn same_major_compares_the_recipe_parts_major_only() {
    let rows = [
        ("1.3.0+6.42.0", "1.9.9+7.0.0", true),
        ("1.3.0+6.42.0", "1.0.0-rc1", true),
        ("1.3.0+6.42.0", "2.0.0+6.42.0", false),
        ("2.0.0+1", "1.9.0+1", false),
        ("0.1.0", "0.9.0", true),
    ];
    for (base, other, same) in rows {
        let (base, other): (CoopVersion, CoopVersion) = (base.parse().unwrap(), other.parse().unwrap());
        assert_eq!(base.same_major(&other), same, "{base} {other}");
        assert_eq!(other.same_major(&base), same, "{other} {base}");
    }
}

#[test]
fn versions_sort_by_recipe_part() {
    let mut versions: Vec<CoopVersion> = ["2.0.0+1.0", "1.10.0+9.9", "1.2.0+10.0", "1.10.0-rc1+9.9", "1.2.0"]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
    versions.sort();
    let sorted: Vec<String> = versions.iter().map(ToString::to_string).collect();
    expect![[r#"["1.2.0", "1.2.0+10.0", "1.10.0-rc1+9.9", "1.10.0+9.9", "2.0.0+1.0"]"#]]
        .assert_eq(&format!("{sorted:?}"));
}

#[test]
fn serde_goes_through_the_parsers() {
    let refused = serde_json::from_str::<Domain>("\"a/b.org\"").unwrap_err().to_string();
    assert!(refused.contains("character '/'"), "{refused}");
    let version: CoopVersion = serde_json::from_str("\"1.3.0+6.42.0\"").unwrap();
    assert_eq!(serde_json::to_string(&version).unwrap(), "\"1.3.0+6.42.0\"");
}

fn arb_version() -> impl Strategy<Value = String> {
    (
        0u64..50,
        0u64..50,
        0u64..50,
        proptest::option::of("(alpha|beta|rc)[0-9]{0,2}"),
        proptest::option::of("[0-9a-zA-Z][0-9a-zA-Z._-]{0,20}"),
    )
        .prop_map(|(major, minor, patch, pre, upstream)| {
            let mut text = format!("{major}.{minor}.{patch}");
            if let Some(pre) = pre {
                text.push('-');
                text.push_str(&pre);
            }
            if let Some(upstream) = upstream {
                text.push('+');
                text.push_str(&upstream);
            }
            text
        })
}

proptest! {
    #[test]
    fn version_round_trips(text in arb_version()) {
        let version: CoopVersion = text.parse().unwrap();
        prop_assert_eq!(version.to_string(), text.clone());
        let again: CoopVersion = version.to_string().parse().unwrap();
        prop_assert_eq!(again, version);
    }

    #[test]
    fn ordering_is_decided_by_recipe_part(a in arb_version(), b in arb_version()) {
        let a: CoopVersion = a.parse().unwrap();
        let b: CoopVersion = b.parse().unwrap();
        let by_recipe = a.recipe_version().cmp_precedence(b.recipe_version());
        if by_recipe != std::cmp::Ordering::Equal {
            prop_assert_eq!(a.cmp(&b), by_recipe);
        }
        prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
        prop_assert_eq!(a.cmp(&b) == std::cmp::Ordering::Equal, a == b);
        prop_assert_eq!(a.is_major_upgrade(&b), b.recipe_version().major > a.recipe_version().major);
    }

    #[test]
    fn domains_round_trip(labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..5)) {
        let text = format!("{}.org", labels.join("."));
        let domain: Domain = text.parse().unwrap();
        prop_assert_eq!(domain.as_str(), text.as_str());
        prop_assert!(!domain.stack_name().contains('.'));
    }

    #[test]
    fn parsers_never_accept_path_or_shell_characters(text in "\\PC{0,40}") {
        let forbidden = ['/', '\\', ';', '|', '&', '$', '`', '\'', '"', ' ', '*', '<', '>', '\0'];
        if text.contains(forbidden) || text.contains("..") {
            prop_assert!(text.parse::<Domain>().is_err());
            prop_assert!(text.parse::<RecipeName>().is_err());
            prop_assert!(text.parse::<HostId>().is_err());
            prop_assert!(text.parse::<CoopVersion>().is_err() || !text.contains(forbidden));
        }
    }
}
