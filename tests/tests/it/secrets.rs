//! Secret rotation on the real Docker Engine: the real agent binary, the abra
//! test double and the `fixture-secrets` recipe, whose app service mounts the
//! external secret `<stack>_api_key_<SECRET_API_KEY_VERSION>`. A changed
//! secret file becomes the next secret version, the env file names it and the
//! redeployed service references it; an unchanged file changes nothing; a
//! rotation cut short by SIGKILL after the env bump resumes at that version;
//! a secret file that vanished fails the reconcile, naming the secret and path.

use std::path::PathBuf;
use std::time::Duration;

use ccfleet_tests::agent::AgentProcess;
use ccfleet_tests::docker::{docker, DockerTest};
use ccfleet_tests::wait_for;

/// How long a secrets test waits for the agent to reach a state.
const PATIENCE: Duration = Duration::from_secs(180);

/// The recipe whose app mounts the secret `api_key` (tests/fixtures/recipes/fixture-secrets).
const SECRETS_RECIPE: &str = "fixture-secrets";
const VERSION: &str = "1.0.0+1.0";

/// One app of the secrets recipe under a real agent.
struct World {
    test: DockerTest,
    domain: String,
    stack: String,
    secret_file: PathBuf,
    pause: PathBuf,
    agent: Option<AgentProcess>,
}

impl World {
    /// Declares the app with its secret file holding `value`, starts the
    /// agent and waits until `apply --wait` says the app converged.
    fn start(name: &str, value: &str) -> World {
        let mut test = DockerTest::new(name);
        let domain = test.domain("app");
        let secret_file = test.path().join("api_key");
        std::fs::write(&secret_file, value).unwrap();
        let config = test.agent_config_with(
            "observe_interval = \"1s\"\nreconcile_interval = \"1h\"\n",
            &format!(
                "[[app]]\ndomain = {domain:?}\nrecipe = {SECRETS_RECIPE:?}\nversion = {VERSION:?}\n\
                 deploy_timeout = \"90s\"\nsecrets = {{ api_key = {:?} }}\n",
                secret_file.display().to_string()
            ),
        );
        std::fs::write(test.path().join("agent.toml"), config).unwrap();
        let mut world = World {
            stack: domain.replace('.', "_"),
            pause: test.path().join("pause"),
            test,
            domain,
            secret_file,
            agent: None,
        };
        world.start_agent();
        world.apply_and_wait();
        world
    }

    fn start_agent(&mut self) {
        let agent = AgentProcess::start_with_env(
            &self.test.path().join("agent.toml"),
            &self.test.path().join("control.sock"),
            &[("CCFLEET_TEST_PAUSE_DIR", &self.pause)],
        );
        self.agent = Some(agent);
    }

    fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().expect("the agent runs")
    }

    /// `ccfleet-agent apply DOMAIN --wait`, which must succeed; returns what it printed.
    fn apply_and_wait(&self) -> String {
        let output = self.agent().command(&["apply", &self.domain, "--wait"]);
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "apply --wait failed: {printed}\n{}",
            self.agent().log()
        );
        printed
    }

    /// The `SECRET_API_KEY_VERSION` of the app's env file.
    fn env_version(&self) -> String {
        std::fs::read_to_string(self.test.env_file(&self.domain))
            .unwrap()
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("SECRET_API_KEY_VERSION="))
            .unwrap_or_default()
            .to_owned()
    }

    fn secret(&self, version: &str) -> String {
        format!("{}_api_key_{version}", self.stack)
    }

    fn secret_exists(&self, version: &str) -> bool {
        docker(&["secret", "inspect", &self.secret(version)]).status.success()
    }

    /// The Docker secrets the app service's spec references (`SecretName`s).
    fn referenced_secrets(&self) -> Vec<String> {
        let output = docker(&[
            "service",
            "inspect",
            "--format",
            "{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{end}}",
            &format!("{}_app", self.stack),
        ]);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// The double's command lines starting with `prefix`.
    fn abra_lines(&self, prefix: &str) -> Vec<String> {
        self.test
            .abra_log()
            .into_iter()
            .filter(|line| line.starts_with(prefix))
            .collect()
    }

    /// What the running container of the app reads at `/run/secrets/api_key`.
    async fn mounted_value(&self, expected: &str) {
        let filter = format!("label=com.docker.swarm.service.name={}_app", self.stack);
        wait_for("the running container to mount the secret", PATIENCE, || {
            let listed = docker(&["ps", "--quiet", "--filter", &filter, "--filter", "status=running"]);
            let containers: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            let values: Vec<String> = containers
                .iter()
                .map(|container| {
                    let output = docker(&["exec", container, "/bin/busybox", "cat", "/run/secrets/api_key"]);
                    String::from_utf8_lossy(&output.stdout).into_owned()
                })
                .collect();
            async move {
                if !values.is_empty() && values.iter().all(|value| value == expected) {
                    Ok(())
                } else {
                    Err(format!("{} running containers", containers.len()))
                }
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_file_becomes_the_next_version_and_the_service_uses_it() {
    let first_value = "first-secret-value-7f3a91";
    let second_value = "second-secret-value-c04e2d";
    let world = World::start("rotate", first_value);
    assert_eq!(world.env_version(), "v1");
    assert!(world.secret_exists("v1"));
    assert_eq!(world.referenced_secrets(), [world.secret("v1")]);

    // An unchanged file: no new secret, no redeploy.
    let inserts_before = world.abra_lines("app secret insert").len();
    let deploys_before = world.abra_lines("app deploy").len();
    let printed = world.apply_and_wait();
    assert_eq!(world.abra_lines("app secret insert").len(), inserts_before, "{printed}");
    assert_eq!(world.abra_lines("app deploy").len(), deploys_before, "{printed}");
    assert!(!world.secret_exists("v2"));
    assert_eq!(world.env_version(), "v1");

    // A rotation (sops-nix writes the new value into the same path).
    std::fs::write(&world.secret_file, second_value).unwrap();
    let printed = world.apply_and_wait();
    assert!(world.secret_exists("v2"), "{printed}\n{}", world.agent().log());
    assert_eq!(world.env_version(), "v2");
    assert_eq!(world.referenced_secrets(), [world.secret("v2")]);
    world.mounted_value(second_value).await;
    // Inserted once, and redeployed at the running version: never a version change.
    assert_eq!(
        world.abra_lines(&format!("app secret insert -n -f {} api_key v2", world.domain)),
        [format!(
            "app secret insert -n -f {} api_key v2 {}",
            world.domain,
            world.secret_file.display()
        )]
    );
    let deploys: Vec<String> = world.abra_lines("app deploy").split_off(deploys_before);
    assert_eq!(deploys, [format!("app deploy -n -c -o -f {} {VERSION}", world.domain)]);
    assert!(world.abra_lines("app upgrade").is_empty());
    assert!(world.abra_lines("app rollback").is_empty());

    // Once more unchanged: the rotation is remembered.
    let inserts_before = world.abra_lines("app secret insert").len();
    world.apply_and_wait();
    assert_eq!(world.abra_lines("app secret insert").len(), inserts_before);
    assert!(!world.secret_exists("v3"));

    // The value reached neither the agent's log nor its journal.
    let log = world.agent().log();
    assert!(log.contains("rotating"), "{log}");
    for value in [first_value, second_value] {
        assert!(!log.contains(value), "the agent logged the secret value");
        assert!(!printed.contains(value), "apply printed the secret value");
        let journal = world.test.path().join("state").join("journal").join("secrets");
        for entry in std::fs::read_dir(&journal).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(!text.contains(value), "the journal holds the secret value: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_killed_after_the_env_bump_resumes_at_that_version() {
    let mut world = World::start("rotatecrash", "before-the-crash-5d1c");
    // Hold the rotation between the env bump and the insert.
    std::fs::create_dir_all(&world.pause).unwrap();
    std::fs::write(world.pause.join("secret-inserting.hold"), b"").unwrap();
    std::fs::write(&world.secret_file, "after-the-crash-93be").unwrap();
    let output = world.agent().command(&["apply", &world.domain]);
    assert!(output.status.success(), "{output:?}");
    let reached = world.pause.join("secret-inserting.reached");
    wait_for("the rotation to reach the insert", PATIENCE, || {
        let reached = reached.exists();
        async move { reached.then_some(()).ok_or_else(|| "not yet".to_owned()) }
    })
    .await;
    assert_eq!(world.env_version(), "v2");
    assert!(!world.secret_exists("v2"));

    world.agent.as_mut().unwrap().kill();
    std::fs::remove_file(world.pause.join("secret-inserting.hold")).unwrap();
    world.start_agent();
    world.apply_and_wait();

    // Resumed at v2 (the env file's), not bumped again to v3.
    assert!(world.secret_exists("v2"), "{}", world.agent().log());
    assert!(!world.secret_exists("v3"));
    assert_eq!(world.env_version(), "v2");
    assert_eq!(world.referenced_secrets(), [world.secret("v2")]);
    world.mounted_value("after-the-crash-93be").await;
    assert_eq!(
        world
            .abra_lines(&format!("app secret insert -n -f {} api_key", world.domain))
            .len(),
        2,
        "v1 at set-up, v2 once: {:?}",
        world.test.abra_log()
    );

    // A declared secret file that vanished is an error naming the secret
    // and the path; the running app is left alone.
    std::fs::remove_file(&world.secret_file).unwrap();
    let deploys_before = world.abra_lines("app deploy").len();
    let output = world.agent().command(&["apply", &world.domain, "--wait"]);
    let printed = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{printed}");
    assert!(
        printed.contains(&format!(
            "cannot read secret api_key from {}",
            world.secret_file.display()
        )),
        "{printed}"
    );
    assert_eq!(world.abra_lines("app deploy").len(), deploys_before);
    assert_eq!(world.referenced_secrets(), [world.secret("v2")]);
}
