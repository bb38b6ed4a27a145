//! Tests of `agent::abra` against stand-in scripts that record how abra is run.

use super::*;
use ccfleet_proto::CoopVersion;

#[test]
fn a_reconfigured_abra_shares_the_recipe_locks() {
    let config = AbraConfig {
        binary: "abra".into(),
        dir: "/var/lib/ccfleet-agent/abra".into(),
        server: "default".into(),
        command_timeout: Duration::from_secs(60),
        no_domain_checks: false,
    };
    let first = Abra::new(&config);
    let second = first.reconfigured(&AbraConfig {
        dir: "/srv/abra".into(),
        ..config
    });
    assert!(Arc::ptr_eq(&first.recipe_locks, &second.recipe_locks));
    assert_eq!(second.dir(), Path::new("/srv/abra"));
}

fn abra_config(directory: &Path) -> AbraConfig {
    AbraConfig {
        binary: directory.join("abra"),
        dir: directory.join("abra-dir"),
        server: "default".into(),
        command_timeout: Duration::from_secs(10),
        no_domain_checks: false,
    }
}

fn abra_with_script(directory: &Path, script: &str) -> Abra {
    use std::os::unix::fs::PermissionsExt;
    let binary = directory.join("abra");
    std::fs::write(&binary, script).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    Abra::new(&abra_config(directory))
}

#[test]
fn secret_names_must_fit_dockers_limit() {
    // 64 characters exactly: `<stack>_pw_v1` with a 58-character stack.
    let stack_of = |length: usize| "a".repeat(length);
    let names = |names: &[&str]| names.iter().map(|name| name.to_string()).collect::<Vec<_>>();
    for (stack_length, secrets, fits) in [
        (58, names(&["pw"]), true),
        (59, names(&["pw"]), false),
        (59, names(&[]), true),
        (
            20,
            names(&["a", "a_very_long_secret_name_that_goes_on_and_on_and_on"]),
            false,
        ),
        (20, names(&["a", "a_long_secret_name_that_goes_on_and_on"]), true),
    ] {
        let stack = stack_of(stack_length);
        let result = secret_name_fits(&stack, &secrets);
        assert_eq!(result.is_ok(), fits, "{stack} {secrets:?}: {result:?}");
    }
    let error = secret_name_fits(&stack_of(59), &names(&["pw", "p"])).unwrap_err();
    assert_eq!(
        error,
        format!(
            "the Docker secret name \"{}_pw_v1\" would be 65 characters long, the limit is 64: \
             use a shorter domain or secret name",
            "a".repeat(59)
        )
    );
}

#[test]
fn stack_names_follow_abras_rule() {
    let domain = |text: &str| -> Domain { text.parse().unwrap() };
    for (domain_text, setting, expected) in [
        ("blog.example.org", None, "blog_example_org"),
        ("blog.example.org", Some("blog"), "blog"),
        ("blog.example.org", Some(""), "blog_example_org"),
        // 45 characters, then cut: abra's MAX_SANITISED_APP_NAME_LENGTH.
        (
            "a-very-long-subdomain-name.of-a-long-domain.example.org",
            None,
            "a-very-long-subdomain-name_of-a-long-domain_e",
        ),
    ] {
        assert_eq!(
            stack_name(&domain(domain_text), setting),
            expected,
            "{domain_text} {setting:?}"
        );
    }
}

#[test]
fn deploys_of_a_tag_on_disk_run_offline() {
    let tags = |tags: &[&str]| tags.iter().map(|tag| tag.to_string()).collect::<Vec<_>>();
    for (version, on_disk, offline_expected) in [
        ("1.0.0+1.0", tags(&["1.0.0+1.0", "1.1.0+1.1"]), true),
        ("1.2.0+1.2", tags(&["1.0.0+1.0", "1.1.0+1.1"]), false),
        ("1.0.0+1.0", tags(&[]), false),
        ("1.0.0+1.0", tags(&["1.0.0+1.0-rc"]), false),
    ] {
        assert_eq!(offline(version, &on_disk), offline_expected, "{version} {on_disk:?}");
    }
}

#[tokio::test]
async fn a_secret_name_too_long_is_refused_before_abra_runs() {
    let directory = tempfile::tempdir().unwrap();
    let abra = abra_with_script(directory.path(), "#!/bin/sh\necho ran >> \"$ABRA_DIR/ran\"\n");
    let recipe: RecipeName = "fixture-web".parse().unwrap();
    let domain: Domain = format!("{}.org", "b".repeat(50)).parse().unwrap();
    std::fs::create_dir_all(abra.server_dir()).unwrap();
    let error = abra
        .secret_insert(&recipe, &domain, "database_password", "v1", Path::new("/run/x"))
        .await
        .unwrap_err();
    assert!(matches!(error, AbraError::SecretNameTooLong { .. }), "{error}");
    // The recipe's own secrets, known from the env file abra wrote and the
    // compose file the recipe checkout holds.
    std::fs::write(
        abra.env_file_path(&domain),
        "TYPE=fixture-web\nSECRET_SMTP_PASSWORD_LONG_VERSION=v12\nSECRET_UNUSED_AND_VERY_LONG_NAME_VERSION=v1\n",
    )
    .unwrap();
    let checkout = abra.dir().join("recipes/fixture-web");
    std::fs::create_dir_all(&checkout).unwrap();
    std::fs::write(checkout.join("compose.yml"), "secrets:\n  smtp_password_long:\n").unwrap();
    let error = abra
        .secret_generate_all(&recipe, &domain)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "secret smtp_password_long of {domain}: the Docker secret name"
        )),
        "{error}"
    );
    assert!(!abra.dir().join("ran").exists(), "abra ran");
}

#[tokio::test]
async fn generated_secret_values_reach_no_report() {
    let directory = tempfile::tempdir().unwrap();
    let abra = abra_with_script(
        directory.path(),
        "#!/bin/sh\necho 'db_password  s3cr3t-value'\necho 'docker refused the secret' >&2\nexit 1\n",
    );
    std::fs::create_dir_all(directory.path().join("abra-dir")).unwrap();
    let recipe: RecipeName = "fixture-web".parse().unwrap();
    let domain: Domain = "blog.example.org".parse().unwrap();
    let error = abra
        .secret_generate_all(&recipe, &domain)
        .await
        .unwrap_err()
        .to_string();
    assert!(!error.contains("s3cr3t"), "{error}");
    assert!(error.contains("docker refused the secret"), "stderr is kept: {error}");
    let ok = abra_with_script(directory.path(), "#!/bin/sh\necho 'db_password  s3cr3t-value'\n");
    let output = ok.secret_generate_all(&recipe, &domain).await.unwrap();
    assert!(!output.stdout.contains("s3cr3t"));
}

#[tokio::test]
async fn command_lines_follow_abra_md() {
    let directory = tempfile::tempdir().unwrap();
    let log = directory.path().join("log");
    // A stand-in that records its arguments and environment, one call per line.
    let abra = abra_with_script(
        directory.path(),
        &format!(
            "#!/bin/sh\necho \"$* | ABRA_DIR=$ABRA_DIR pwd=$(pwd)\" >> {}\n\
             [ \"$1\" = server ] && mkdir -p \"$ABRA_DIR/servers/default\"\n\
             [ \"$1\" = recipe ] && mkdir -p \"$ABRA_DIR/recipes/$3/.git/refs/tags\" && touch \"$ABRA_DIR/recipes/$3/.git/refs/tags/1.1.0+1.1\"\n\
             [ \"$1\" = --version ] && echo && echo '  abra version 0.11.0-beta-abcdef  '\n\
             exit 0\n",
            log.display()
        ),
    );
    let recipe: RecipeName = "fixture-web".parse().unwrap();
    let domain: Domain = "blog.example.org".parse().unwrap();
    let version: CoopVersion = "1.1.0+1.1".parse().unwrap();
    abra.ensure_server().await.unwrap();
    abra.ensure_server().await.unwrap();
    abra.app_new(&recipe, &version, &domain).await.unwrap();
    abra.secret_insert(&recipe, &domain, "db_password", "v1", Path::new("/run/secrets/db"))
        .await
        .unwrap();
    abra.secret_generate_all(&recipe, &domain).await.unwrap();
    abra.deploy(&recipe, &domain, &version, false).await.unwrap();
    abra.deploy(&recipe, &domain, &version, true).await.unwrap();
    abra.upgrade(&recipe, &domain, &version).await.unwrap();
    abra.rollback(&recipe, &domain, &version).await.unwrap();
    abra.undeploy(&recipe, &domain).await.unwrap();
    assert_eq!(
        abra.available_versions(&recipe).await.unwrap(),
        std::slice::from_ref(&version)
    );
    assert_eq!(abra.version().await.unwrap(), "abra version 0.11.0-beta-abcdef");
    // With domain checks off, every command that deploys passes `-D`; the fetch
    // above put the tag on disk, so these also run offline (`-o`).
    let unchecked = abra.reconfigured(&AbraConfig {
        no_domain_checks: true,
        ..abra_config(directory.path())
    });
    unchecked.deploy(&recipe, &domain, &version, true).await.unwrap();
    unchecked.upgrade(&recipe, &domain, &version).await.unwrap();
    unchecked.rollback(&recipe, &domain, &version).await.unwrap();
    let abra_dir = directory.path().join("abra-dir");
    let expected = [
        "server add --local",
        "app new -n --server default --domain blog.example.org fixture-web 1.1.0+1.1",
        "app secret insert -n -f blog.example.org db_password v1 /run/secrets/db",
        "app secret generate -n --all blog.example.org",
        "app deploy -n -c blog.example.org 1.1.0+1.1",
        "app deploy -n -c -f blog.example.org 1.1.0+1.1",
        "app upgrade -n -c blog.example.org 1.1.0+1.1",
        "app rollback -n -c blog.example.org 1.1.0+1.1",
        "app undeploy -n blog.example.org",
        "recipe fetch fixture-web",
        "--version",
        "app deploy -n -c -o -f -D blog.example.org 1.1.0+1.1",
        "app upgrade -n -c -o -D blog.example.org 1.1.0+1.1",
        "app rollback -n -c -o -D blog.example.org 1.1.0+1.1",
    ]
    .map(|arguments| format!("{arguments} | ABRA_DIR={0} pwd={0}", abra_dir.display()))
    .join("\n");
    let recorded = std::fs::read_to_string(&log).unwrap();
    assert_eq!(recorded.trim_end(), expected);
    // The shapes `scripts/check-abra` checks are the command lines run: each
    // line has a shape, and each shape was used.
    let lines: Vec<Vec<&str>> = recorded
        .lines()
        .map(|line| line.split(" | ").next().unwrap().split_whitespace().collect())
        .collect();
    for line in &lines {
        assert!(
            COMMAND_SHAPES.iter().any(|shape| fits_shape(shape, line)),
            "no shape in COMMAND_SHAPES for {line:?}"
        );
    }
    for shape in COMMAND_SHAPES {
        assert!(
            lines.iter().any(|line| fits_shape(shape, line)),
            "{shape:?} is run by nothing"
        );
    }
}

#[test]
fn command_lines_fit_their_shapes() {
    let deploy = "app deploy -n -c [-o] [-f] [-D] <domain> <version>";
    for (shape, line, fits) in [
        (deploy, "app deploy -n -c a.example.org 1.0.0", true),
        (deploy, "app deploy -n -c -o -f -D a.example.org 1.0.0", true),
        (deploy, "app deploy -n -c -f a.example.org 1.0.0", true),
        // Optional flags keep their order; required ones are required.
        (deploy, "app deploy -n -c -f -o a.example.org 1.0.0", false),
        (deploy, "app deploy -n a.example.org 1.0.0", false),
        // One argument per placeholder, and no flag in its place.
        (deploy, "app deploy -n -c a.example.org", false),
        (deploy, "app deploy -n -c a.example.org 1.0.0 extra", false),
        (deploy, "app deploy -n -c -x a.example.org 1.0.0", false),
        (deploy, "app upgrade -n -c a.example.org 1.0.0", false),
        ("--version", "--version", true),
        ("--version", "", false),
        ("recipe fetch <recipe>", "recipe fetch fixture-web", true),
        ("new --server=<server> <recipe>", "new --server default web", true),
        ("new --server=<server> <recipe>", "new --server web", false),
        ("new --server=<server> <recipe>", "new --server -n web", false),
    ] {
        let arguments: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fits_shape(shape, &arguments), fits, "{shape:?} / {line:?}");
    }
}

#[tokio::test]
async fn failure_carries_output_and_server_add_is_tolerated_when_present() {
    let directory = tempfile::tempdir().unwrap();
    let abra = abra_with_script(
        directory.path(),
        "#!/bin/sh\n[ \"$1\" = server ] && mkdir -p \"$ABRA_DIR/servers/default\"\necho \"FATA nope: $*\" >&2\nexit 1\n",
    );
    // server add "fails" but leaves the server behind: already added.
    abra.ensure_server().await.unwrap();
    let domain: Domain = "blog.example.org".parse().unwrap();
    let error = abra
        .undeploy(&"fixture-web".parse().unwrap(), &domain)
        .await
        .unwrap_err();
    assert!(
        error.to_string().ends_with(
            "abra app undeploy -n blog.example.org` failed (exit code 1): FATA nope: app undeploy -n blog.example.org"
        ),
        "{error}"
    );
    assert_eq!(error.output().unwrap().exit_code, Some(1));
}

#[tokio::test]
async fn versions_survive_a_failed_fetch_only_when_some_are_on_disk() {
    let directory = tempfile::tempdir().unwrap();
    let abra = abra_with_script(
        directory.path(),
        "#!/bin/sh\necho 'FATA network is unreachable' >&2\nexit 1\n",
    );
    let recipe: RecipeName = "fixture-web".parse().unwrap();
    std::fs::create_dir_all(abra.dir()).unwrap();
    let error = abra.available_versions(&recipe).await.unwrap_err().to_string();
    assert!(error.contains("network is unreachable"), "{error}");
    let tags = abra.dir().join("recipes/fixture-web/.git/refs/tags");
    std::fs::create_dir_all(&tags).unwrap();
    std::fs::write(tags.join("1.0.0+1.0"), "0123\n").unwrap();
    let versions = abra.available_versions(&recipe).await.unwrap();
    assert_eq!(versions, ["1.0.0+1.0".parse::<CoopVersion>().unwrap()]);
    // A fetch that works but leaves nothing readable is the versions error.
    let succeeding = abra_with_script(directory.path(), "#!/bin/sh\nexit 0\n");
    let error = succeeding
        .available_versions(&"other".parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("no versions of recipe other"), "{error}");
}

#[tokio::test]
async fn env_keys_are_written_without_dropping_others() {
    let directory = tempfile::tempdir().unwrap();
    let abra = abra_with_script(directory.path(), "#!/bin/sh\nexit 0\n");
    let domain: Domain = "blog.example.org".parse().unwrap();
    let recipe: RecipeName = "fixture-web".parse().unwrap();
    let missing = abra.write_env_keys(&recipe, &domain, [("A", "1")]).await.unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    let path = abra.env_file_path(&domain);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "TYPE=fixture-web:1.0.0+1.0\nFROM_RECIPE=x\nOWNED=old\n").unwrap();
    let changed = abra
        .write_env_keys(&recipe, &domain, [("OWNED", "new"), ("ADDED", "yes")])
        .await
        .unwrap();
    assert_eq!(changed, ["OWNED", "ADDED"]);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "TYPE=fixture-web:1.0.0+1.0\nFROM_RECIPE=x\nOWNED=new\nADDED=yes\n"
    );
    let unchanged = abra.write_env_keys(&recipe, &domain, [("OWNED", "new")]).await.unwrap();
    assert!(unchanged.is_empty());
}
