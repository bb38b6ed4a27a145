//! Docker fixtures: swarm, the proxy network, fixture images, the abra test double.
//!
//! [`DockerTest::new`] prepares the machine once per test process (a
//! single-node swarm, the external `proxy` overlay network, the fixture
//! images) and gives the test its own `ABRA_DIR` and unique domains, whose
//! stacks it removes when dropped. Where the engine refuses swarm or overlay
//! networks, it panics with exactly that reason: a Docker test never passes
//! without Docker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The fixture recipe (tests/fixtures/recipes/fixture-web).
pub const FIXTURE_RECIPE: &str = "fixture-web";
/// Healthy releases of the fixture recipe.
pub const V1_0: &str = "1.0.0+1.0";
pub const V1_1: &str = "1.1.0+1.1";
/// A release whose container healthcheck fails.
pub const V1_2_BROKEN: &str = "1.2.0+1.2";
/// A major release, healthy.
pub const V2_0: &str = "2.0.0+2.0";
/// The upgrade tests' releases: each has the volume `data` (mounted at
/// `/data`) and publishes port 8080 on the host port `HTTP_PORT` of its env.
/// Stateful, healthy, writes nothing on start.
pub const V1_3: &str = "1.3.0+1.3";
/// Migrates (appends to `/data/migrations.log` on start), healthy.
pub const V1_3_1_MIGRATES: &str = "1.3.1+1.3";
/// Migrates, then fails its HTTP health path (`/health` answers 404).
pub const V1_4_MIGRATES_THEN_FAILS_HTTP: &str = "1.4.0+1.4";
/// Never converges: its process exits at once.
pub const V1_5_NEVER_CONVERGES: &str = "1.5.0+1.5";
/// Converged and container-healthy, but its HTTP probe fails.
pub const V1_6_HTTP_FAILS: &str = "1.6.0+1.6";
/// Its container healthcheck fails; Swarm restarts it and the update goes on
/// (`failure_action: continue`).
pub const V1_5_1_CONTAINER_UNHEALTHY: &str = "1.5.1+1.5.1";
/// Its image does not exist: every task is rejected with `No such image`.
pub const V1_5_2_IMAGE_MISSING: &str = "1.5.2+1.5.2";
/// Its process exits at once and Swarm rolls an update to it back itself
/// (`failure_action: rollback`; a first deploy has nothing to roll back to).
pub const V1_5_3_SWARM_ROLLS_BACK: &str = "1.5.3+1.5.3";
/// Healthy, but starts after 8 s, within its healthcheck's `start_period`.
pub const V1_5_4_SLOW_START: &str = "1.5.4+1.5.4";

/// `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The abra test double (`tests/fixtures/abra-double/abra`).
pub fn abra_double() -> PathBuf {
    fixtures_dir().join("abra-double").join("abra")
}

/// Runs `docker` with `arguments`, returning its output whatever the exit.
pub fn docker(arguments: &[&str]) -> Output {
    Command::new("docker")
        .args(arguments)
        .output()
        .unwrap_or_else(|error| panic!("the Docker tests need the docker CLI: cannot run `docker`: {error}"))
}

fn text(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stderr.trim());
    }
    text
}

/// Swarm, network and images, once per test process (nextest runs each test
/// in its own process, so the steps tolerate a concurrent process doing the same).
fn prepare_machine() {
    static PREPARED: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(reason) = PREPARED.get_or_init(|| {
        ensure_swarm()?;
        ensure_proxy_network()?;
        build_fixture_images()
    }) {
        panic!("{reason}");
    }
}

fn swarm_state() -> Result<String, String> {
    let output = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    if !output.status.success() {
        return Err(format!(
            "the Docker tests need a reachable Docker Engine: `docker info` failed: {}",
            text(&output)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn ensure_swarm() -> Result<(), String> {
    if swarm_state()? == "active" {
        return Ok(());
    }
    let output = docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    // Another test process may have initialised it meanwhile.
    match swarm_state()?.as_str() {
        "active" => Ok(()),
        state => Err(format!(
            "the Docker Engine refused `docker swarm init --advertise-addr 127.0.0.1` (swarm state {state:?}): {}",
            text(&output)
        )),
    }
}

fn proxy_network_driver() -> Option<String> {
    let output = docker(&["network", "inspect", "--format", "{{.Driver}} {{.Scope}}", "proxy"]);
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn ensure_proxy_network() -> Result<(), String> {
    let created = match proxy_network_driver() {
        Some(_) => None,
        None => Some(docker(&[
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            "proxy",
        ])),
    };
    match (proxy_network_driver().as_deref(), created) {
        (Some("overlay swarm"), _) => Ok(()),
        (Some(other), _) => Err(format!(
            "a network named proxy exists but is {other:?}, not an overlay network of the swarm: remove it"
        )),
        (None, Some(output)) => Err(format!(
            "the Docker Engine refused to create the overlay network proxy \
             (`docker network create --driver overlay --attachable proxy`): {}",
            text(&output)
        )),
        (None, None) => Err("the proxy network vanished while the tests prepared it".into()),
    }
}

fn build_fixture_images() -> Result<(), String> {
    let script = fixtures_dir().join("images").join("build-fixture-images.sh");
    let output = Command::new(&script)
        .output()
        .map_err(|error| format!("cannot run {}: {error}", script.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("building the fixture images failed: {}", text(&output)))
    }
}

/// One Docker test's world: its own `ABRA_DIR` and state directory, and
/// unique domains whose stacks are removed when it is dropped.
pub struct DockerTest {
    directory: tempfile::TempDir,
    prefix: String,
    domains: Vec<String>,
    /// Stack names given with `env.STACK_NAME`, removed like the domains' stacks.
    stacks: Vec<String>,
}

impl DockerTest {
    /// Prepares the machine (once per process) and a fresh world for the
    /// test `name` (a short lowercase word: it becomes part of stack names).
    pub fn new(name: &str) -> DockerTest {
        prepare_machine();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        // Unique across parallel processes and repeated runs, short enough
        // that `<stack>_app` and secret names stay within Docker's limits.
        let prefix = format!(
            "{name}-{:x}{:x}{}",
            std::process::id() & 0xffff,
            nanos & 0xfff,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        DockerTest {
            directory: tempfile::tempdir().expect("a temporary directory"),
            prefix,
            domains: Vec::new(),
            stacks: Vec::new(),
        }
    }

    /// A domain unique to this test, e.g. `a.upgrade-1f2e3a0.ccfleet.test`;
    /// its stack is removed at the end of the test.
    pub fn domain(&mut self, label: &str) -> String {
        let domain = format!("{label}.{}.ccfleet.test", self.prefix);
        self.domains.push(domain.clone());
        domain
    }

    /// A stack name unique to this test for an app's `env.STACK_NAME`; the
    /// stack is removed at the end of the test.
    pub fn stack(&mut self, label: &str) -> String {
        let stack = format!("{label}_{}", self.prefix.replace('-', "_"));
        self.stacks.push(stack.clone());
        stack
    }

    /// The test's `ABRA_DIR`.
    pub fn abra_dir(&self) -> PathBuf {
        self.directory.path().join("abra")
    }

    /// The test's scratch directory (state directory, secret files).
    pub fn path(&self) -> &Path {
        self.directory.path()
    }

    /// The env file the double keeps for `domain`.
    pub fn env_file(&self, domain: &str) -> PathBuf {
        self.abra_dir()
            .join("servers")
            .join("default")
            .join(format!("{domain}.env"))
    }

    /// The recipe's git remote as the double keeps it (made on the double's
    /// first clone of the recipe).
    pub fn recipe_origin(&self, recipe: &str) -> PathBuf {
        self.abra_dir().join(".double-remote").join(recipe)
    }

    /// Tags `version` in the recipe's remote, as its maintainer would
    /// release it: a commit whose compose file is `from`'s, then the tag.
    pub fn tag_release(&self, recipe: &str, version: &str, from: &str) {
        let origin = self.recipe_origin(recipe);
        assert!(
            origin.join(".git").is_dir(),
            "no remote of {recipe} yet: {}",
            origin.display()
        );
        let compose = fixtures_dir()
            .join("recipes")
            .join(recipe)
            .join("versions")
            .join(from)
            .join("compose.yml");
        std::fs::copy(&compose, origin.join("compose.yml")).expect("the release's compose file");
        for arguments in [
            vec!["add", "-A"],
            vec!["commit", "-q", "-m", version],
            vec!["tag", version],
        ] {
            let output = Command::new("git")
                .args([
                    "-c",
                    "user.name=maintainer",
                    "-c",
                    "user.email=maintainer@ccfleet.invalid",
                    "-C",
                ])
                .arg(&origin)
                .args(&arguments)
                .output()
                .expect("git runs");
            assert!(output.status.success(), "git {arguments:?}: {}", text(&output));
        }
    }

    /// Makes the recipes' git remote unreachable: the double refuses network
    /// work, and git finds no remote where the checkout's `origin` points.
    pub fn mark_remote_unreachable(&self) {
        std::fs::write(self.abra_dir().join("remote-unreachable"), b"").unwrap();
        let remote = self.abra_dir().join(".double-remote");
        if remote.exists() {
            std::fs::rename(&remote, self.abra_dir().join(".double-remote.unreachable")).unwrap();
        }
    }

    /// The release tags in the test's checkout of `recipe`.
    pub fn checkout_tags(&self, recipe: &str) -> Vec<String> {
        let output = Command::new("git")
            .arg("-C")
            .arg(self.abra_dir().join("recipes").join(recipe))
            .args(["tag", "--list"])
            .output()
            .expect("git runs");
        assert!(output.status.success(), "git tag: {}", text(&output));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every command line the double was given, in order.
    pub fn abra_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.abra_dir().join("double.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// An agent config (TOML) using the double and this test's directories,
    /// with `apps` (`[[app]]` tables) appended.
    pub fn agent_config(&self, apps: &str) -> String {
        self.agent_config_with("", apps)
    }

    /// [`DockerTest::agent_config`] with more `[agent]` settings (TOML lines).
    pub fn agent_config_with(&self, agent_settings: &str, apps: &str) -> String {
        format!(
            "[server]\nurl = \"https://fleet.example.org\"\n\n[host]\nid = \"docker-test\"\n\n\
             [agent]\nstate_dir = {state:?}\ncontrol_socket = {socket:?}\nalerts_dir = {alerts:?}\n{agent_settings}\n{abra}\n{apps}",
            state = self.path().join("state").display().to_string(),
            socket = self.path().join("control.sock").display().to_string(),
            alerts = self.path().join("alerts").display().to_string(),
            abra = self.abra_section(),
        )
    }

    /// The `[abra]` section pointing at the double and this test's `ABRA_DIR`.
    pub fn abra_section(&self) -> String {
        format!(
            "[abra]\nbinary = {binary:?}\ndir = {dir:?}\ncommand_timeout = \"2m\"\n",
            binary = abra_double().display().to_string(),
            dir = self.abra_dir().display().to_string(),
        )
    }
}

impl Drop for DockerTest {
    fn drop(&mut self) {
        let stacks: Vec<String> = self
            .domains
            .iter()
            .map(|domain| stack_of(domain))
            .chain(self.stacks.iter().cloned())
            .collect();
        for stack in &stacks {
            // `docker stack rm` also removes the stack's secrets and networks;
            // a stack that was never deployed is not an error worth reporting.
            let _ = docker(&["stack", "rm", stack]);
        }
        // Volumes outlive their stack; they can go once its containers have
        // stopped (bounded: a leftover volume is not worth a hanging test).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for stack in &stacks {
            let filter = format!("label=com.docker.stack.namespace={stack}");
            let listed = docker(&["volume", "ls", "--quiet", "--filter", &filter]);
            for volume in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                while !docker(&["volume", "rm", volume]).status.success() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
        }
    }
}

/// A TCP port that was free a moment ago (for a fixture's published port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free local port")
}

/// The host mount point of volume `name`.
pub fn volume_mountpoint(name: &str) -> PathBuf {
    let output = docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", name]);
    assert!(output.status.success(), "volume {name}: {}", text(&output));
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// The `coop-cloud.<stack>.version` label of `<stack>_app`, if deployed.
pub fn deployed_version(domain: &str) -> Option<String> {
    deployed_version_of_stack(&stack_of(domain))
}

/// The stack abra makes from `domain` (no `STACK_NAME`): `.` as `_`, cut to
/// abra's maximum length.
pub fn stack_of(domain: &str) -> String {
    domain
        .parse::<ccfleet_proto::Domain>()
        .map(|domain| domain.stack_name())
        .unwrap_or_else(|_| domain.replace('.', "_"))
}

/// The `coop-cloud.<stack>.version` label of `<stack>_app`, if deployed.
pub fn deployed_version_of_stack(stack: &str) -> Option<String> {
    let output = docker(&[
        "service",
        "inspect",
        "--format",
        &format!("{{{{ index .Spec.Labels \"coop-cloud.{stack}.version\" }}}}"),
        &format!("{stack}_app"),
    ]);
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|version| !version.is_empty())
}
