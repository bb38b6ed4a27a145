//! The only module that runs abra, following `ABRA.md`'s command table: always
//! non-interactive (`-n`), always with explicit versions, `-c` so that abra
//! skips its own convergence wait (the agent observes Docker itself).
//!
//! Calls are serialised per recipe, because abra switches one shared git
//! checkout per recipe (`$ABRA_DIR/recipes/<recipe>/`) between tags: two
//! operations on apps of the same recipe at once could deploy the wrong tag.
//! Every method that works on an app therefore takes the app's recipe too.
//!
//! abra's message text is not a stable interface: nothing here parses prose.
//! A non-zero exit is failure, and its output tail travels in the error.

pub mod env_file;
pub mod versions;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccfleet_proto::{CoopVersion, Domain, RecipeName};

use crate::config::AbraConfig;
use crate::docker::{Docker, DockerError};
use crate::process::{self, CommandOutput, CommandSpec, ProcessError};

pub use env_file::{AppType, EnvFile};
pub use versions::VersionsError;

/// Environment variables of the agent that abra (and the `docker` it starts)
/// may need; nothing else of the agent's environment reaches abra. `HOME`
/// because abra and docker look for their configuration under it.
const PASSED_ENVIRONMENT: &[&str] = &["HOME", "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "TZ"];

use crate::config::secret_name_too_long as too_long;
pub use crate::config::{secret_name, secret_name_fits, MAX_SECRET_NAME_LENGTH};

/// What [`Abra::secret_insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretInsert {
    /// abra inserted the secret.
    Inserted(CommandOutput),
    /// The Docker secret existed already (an earlier attempt inserted it), so
    /// abra was not run: inserting it again would fail.
    AlreadyExists { secret: String },
}

/// Why an abra operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AbraError {
    /// abra ran and failed or timed out, or could not be started; the message
    /// holds the command line and abra's output tail.
    #[error(transparent)]
    Command(#[from] ProcessError),
    #[error("{}: {action}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `abra server add --local` succeeded but the configured server name has
    /// no state directory: the config names a server abra did not create.
    #[error(
        "`abra server add --local` left no {}: abra.server {server:?} does not name the local server (abra stores it as \"default\", unconfirmed)",
        directory.display()
    )]
    ServerMissing { server: String, directory: PathBuf },
    /// The recipe's versions could not be read from abra's files.
    #[error(transparent)]
    Versions(#[from] VersionsError),
    /// Docker could not say whether a secret exists.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// A secret's Docker name would exceed Docker's limit.
    #[error("secret {name} of {domain}: {reason}")]
    SecretNameTooLong {
        domain: Domain,
        name: String,
        reason: String,
    },
}

impl AbraError {
    /// abra's output, when abra ran.
    pub fn output(&self) -> Option<&CommandOutput> {
        match self {
            AbraError::Command(error) => error.output(),
            AbraError::Io { .. }
            | AbraError::ServerMissing { .. }
            | AbraError::Versions(_)
            | AbraError::Docker(_)
            | AbraError::SecretNameTooLong { .. } => None,
        }
    }
}

/// Runs abra for one agent: one binary, one `ABRA_DIR`, one server.
#[derive(Debug)]
pub struct Abra {
    binary: PathBuf,
    dir: PathBuf,
    server: String,
    command_timeout: Duration,
    /// `-D` on deploys, upgrades and rollbacks: skip abra's DNS check of the domain.
    no_domain_checks: bool,
    /// Where the existence of secrets is checked before inserting them (see
    /// [`Abra::secret_insert`]); `None` inserts unconditionally.
    docker: Option<Docker>,
    /// Shared with the `Abra` that replaces this one on a config reload, so
    /// that an operation still running on the old one is serialised with
    /// those of the new one.
    recipe_locks: Arc<Mutex<HashMap<RecipeName, Arc<tokio::sync::Mutex<()>>>>>,
    /// Held while the server is checked and added, so that it is added once.
    server_added: tokio::sync::Mutex<bool>,
}

impl Abra {
    pub fn new(config: &AbraConfig) -> Abra {
        Abra {
            binary: config.binary.clone(),
            dir: config.dir.clone(),
            server: config.server.clone(),
            command_timeout: config.command_timeout,
            no_domain_checks: config.no_domain_checks,
            docker: None,
            recipe_locks: Arc::default(),
            server_added: tokio::sync::Mutex::new(false),
        }
    }

    /// An `Abra` for a new `config` that shares this one's recipe locks and
    /// Docker connection.
    pub fn reconfigured(&self, config: &AbraConfig) -> Abra {
        Abra {
            recipe_locks: Arc::clone(&self.recipe_locks),
            docker: self.docker.clone(),
            ..Abra::new(config)
        }
    }

    /// Checks secrets through `docker` before inserting them, so that a
    /// set-up that failed half-way can be retried.
    pub fn with_docker(mut self, docker: Docker) -> Abra {
        self.docker = Some(docker);
        self
    }

    /// `abra --version`: the first line abra prints.
    pub async fn version(&self) -> Result<String, AbraError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| AbraError::Io {
            action: "cannot create ABRA_DIR",
            path: self.dir.clone(),
            source,
        })?;
        let output = self.run(&["--version"]).await?;
        let text = if output.stdout.trim().is_empty() {
            &output.stderr
        } else {
            &output.stdout
        };
        Ok(text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .unwrap_or("")
            .to_owned())
    }

    /// Logs [`Abra::version`] at agent start: the line an operator needs to
    /// tell which abra (and so which command-line dialect) runs. A failure is
    /// a warning: the agent can still observe and report.
    pub async fn log_version(&self) {
        match self.version().await {
            Ok(version) => tracing::info!(binary = %self.binary.display(), %version, "abra version"),
            Err(error) => tracing::warn!(%error, "cannot run abra --version"),
        }
    }

    /// `ABRA_DIR`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The app's env file, `$ABRA_DIR/servers/<server>/<domain>.env`.
    pub fn env_file_path(&self, domain: &Domain) -> PathBuf {
        self.server_dir().join(format!("{domain}.env"))
    }

    fn server_dir(&self) -> PathBuf {
        self.dir.join("servers").join(&self.server)
    }

    /// Reads the app's env file; `Ok(None)` when the app does not exist.
    pub fn read_env_file(&self, domain: &Domain) -> Result<Option<EnvFile>, AbraError> {
        let path = self.env_file_path(domain);
        env_file::read(&path).map_err(|source| AbraError::Io {
            action: "cannot read the app's env file",
            path,
            source,
        })
    }

    /// Sets `keys` in the app's env file, keeping every other line (what abra
    /// and the recipe wrote), and replaces the file atomically when anything
    /// changed. Returns the keys whose value changed. The file must exist:
    /// abra creates it (`app new`). Holds the recipe lock, since abra writes
    /// the same file after deploys.
    pub async fn write_env_keys<'a>(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Vec<String>, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let path = self.env_file_path(domain);
        let mut file = self.read_env_file(domain)?.ok_or_else(|| AbraError::Io {
            action: "cannot write env keys: the app's env file does not exist",
            path: path.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let mut changed = Vec::new();
        for (key, value) in keys {
            if file.set(key, value) {
                changed.push(key.to_owned());
            }
        }
        if !changed.is_empty() {
            env_file::write_atomically(&path, &file).map_err(|source| AbraError::Io {
                action: "cannot replace the app's env file",
                path,
                source,
            })?;
        }
        Ok(changed)
    }

    /// Makes sure abra knows the local server: `abra server add --local`,
    /// unless its state directory already exists. A failure is tolerated when
    /// the directory exists afterwards (abra refuses to add a server twice,
    /// unconfirmed), so that a second agent start is not an error.
    pub async fn ensure_server(&self) -> Result<(), AbraError> {
        let mut added = self.server_added.lock().await;
        if *added {
            return Ok(());
        }
        let directory = self.server_dir();
        if !directory.is_dir() {
            std::fs::create_dir_all(&self.dir).map_err(|source| AbraError::Io {
                action: "cannot create ABRA_DIR",
                path: self.dir.clone(),
                source,
            })?;
            let result = self.run(&["server", "add", "--local"]).await;
            match result {
                Ok(_) if directory.is_dir() => {}
                Ok(_) => {
                    return Err(AbraError::ServerMissing {
                        server: self.server.clone(),
                        directory,
                    })
                }
                Err(error) if directory.is_dir() => {
                    tracing::info!(%error, "abra server add failed, but the server exists: treated as already added");
                }
                Err(error) => return Err(error),
            }
        }
        *added = true;
        Ok(())
    }

    /// `abra app new -n --server <server> --domain <domain> <recipe> <version>`.
    pub async fn app_new(
        &self,
        recipe: &RecipeName,
        version: &CoopVersion,
        domain: &Domain,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let version = version.to_string();
        self.run(&[
            "app",
            "new",
            "-n",
            "--server",
            &self.server,
            "--domain",
            domain.as_str(),
            recipe.as_str(),
            &version,
        ])
        .await
    }

    /// `abra app secret generate -n --all <domain>`. Whether abra skips
    /// secrets that already exist (inserted from files) is unconfirmed: the
    /// caller runs this once, right after creating the app.
    pub async fn secret_generate_all(&self, recipe: &RecipeName, domain: &Domain) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        // The recipe's secrets are known only now (from the env file abra
        // wrote): refuse names Docker would refuse, with the reason.
        if let Some(env) = self.read_env_file(domain)? {
            for (name, version) in env.secret_versions() {
                let secret = secret_name(domain, &name, &version);
                if secret.len() > MAX_SECRET_NAME_LENGTH {
                    return Err(AbraError::SecretNameTooLong {
                        domain: domain.clone(),
                        name,
                        reason: too_long(&secret),
                    });
                }
            }
        }
        // abra prints the values it generated: they must not reach logs or reports.
        self.run_redacted(&["app", "secret", "generate", "-n", "--all", domain.as_str()].map(OsString::from))
            .await
    }

    /// `abra app secret insert -n -f <domain> <name> <version> <file>`
    /// (`-f`: the argument is a file holding the value, not the value itself).
    ///
    /// Docker refuses to create a secret version that exists, so with a
    /// Docker handle ([`Abra::with_docker`]) an existing
    /// `<stack>_<name>_<version>` is skipped: a set-up that failed after
    /// inserting some secrets succeeds when retried (ABRA.md).
    pub async fn secret_insert(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        name: &str,
        secret_version: &str,
        file: &Path,
    ) -> Result<SecretInsert, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let secret = secret_name(domain, name, secret_version);
        if secret.len() > MAX_SECRET_NAME_LENGTH {
            return Err(AbraError::SecretNameTooLong {
                domain: domain.clone(),
                name: name.to_owned(),
                reason: too_long(&secret),
            });
        }
        if let Some(docker) = &self.docker {
            if docker.secret_exists(&secret).await? {
                tracing::info!(%domain, %secret, "secret exists already: not inserted again");
                return Ok(SecretInsert::AlreadyExists { secret });
            }
        }
        let file = file.as_os_str().to_owned();
        self.run_redacted(&[
            "app".into(),
            "secret".into(),
            "insert".into(),
            "-n".into(),
            "-f".into(),
            domain.as_str().into(),
            name.into(),
            secret_version.into(),
            file,
        ])
        .await
        .map(SecretInsert::Inserted)
    }

    /// `abra app deploy -n -c [-f] [-D] <domain> <version>`, with `-f` to
    /// redeploy an app that is already deployed.
    pub async fn deploy(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        version: &CoopVersion,
        force: bool,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let version = version.to_string();
        let mut arguments = vec!["app", "deploy", "-n", "-c"];
        if force {
            arguments.push("-f");
        }
        arguments.extend(self.domain_check_flag());
        arguments.extend([domain.as_str(), &version]);
        self.run(&arguments).await
    }

    /// `abra app upgrade -n -c [-D] <domain> <version>`.
    pub async fn upgrade(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        version: &CoopVersion,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let version = version.to_string();
        self.run_moving("upgrade", domain, &version).await
    }

    /// `abra app rollback -n -c [-D] <domain> <version>`.
    pub async fn rollback(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        version: &CoopVersion,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let version = version.to_string();
        self.run_moving("rollback", domain, &version).await
    }

    /// `abra app undeploy -n <domain>`: removes the stack; its volumes and
    /// secrets stay (ABRA.md).
    pub async fn undeploy(&self, recipe: &RecipeName, domain: &Domain) -> Result<(), AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        self.run(&["app", "undeploy", "-n", domain.as_str()]).await?;
        Ok(())
    }

    /// The recipe's published versions, oldest first, without duplicates:
    /// `abra recipe fetch <recipe>` refreshes the recipe checkout, then its
    /// git tags (or else the cached catalogue) are read from disk (see
    /// [`versions`]); abra's printed tables are never parsed. A failed fetch
    /// (no network) is logged and the versions already on disk are used:
    /// stale versions only delay an upgrade, while the fetch error alone would
    /// say nothing about what is known. When nothing is on disk either, the
    /// fetch error is returned.
    pub async fn available_versions(&self, recipe: &RecipeName) -> Result<Vec<CoopVersion>, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        // `abra recipe fetch <recipe>` with no flags (unconfirmed: recent abra
        // also has `--all` and `--force`; a fetch has no prompt, so no `-n`).
        let fetched = self.run(&["recipe", "fetch", recipe.as_str()]).await;
        match (fetched, versions::available_versions(&self.dir, recipe)) {
            (Ok(_), on_disk) => Ok(on_disk?),
            (Err(fetch_error), Ok(versions)) => {
                tracing::warn!(%recipe, error = %fetch_error, "abra recipe fetch failed; using the versions already on disk");
                Ok(versions)
            }
            (Err(fetch_error), Err(_)) => Err(fetch_error),
        }
    }

    /// `-D` when domain checks are off (the agent setting `no_domain_checks`).
    fn domain_check_flag(&self) -> Option<&'static str> {
        self.no_domain_checks.then_some("-D")
    }

    /// `abra app <upgrade|rollback> -n -c [-D] <domain> <version>`.
    async fn run_moving(&self, action: &str, domain: &Domain, version: &str) -> Result<CommandOutput, AbraError> {
        let mut arguments = vec!["app", action, "-n", "-c"];
        arguments.extend(self.domain_check_flag());
        arguments.extend([domain.as_str(), version]);
        self.run(&arguments).await
    }

    /// Waits for and holds the recipe's lock (see the module comment).
    async fn lock_recipe(&self, recipe: &RecipeName) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.recipe_locks.lock().expect("recipe lock map is never poisoned");
            Arc::clone(locks.entry(recipe.clone()).or_default())
        };
        lock.lock_owned().await
    }

    async fn run(&self, arguments: &[&str]) -> Result<CommandOutput, AbraError> {
        let arguments: Vec<OsString> = arguments.iter().map(OsString::from).collect();
        self.run_os(&arguments).await
    }

    /// [`Abra::run_os`] for commands whose stdout may hold secret values.
    async fn run_redacted(&self, arguments: &[OsString]) -> Result<CommandOutput, AbraError> {
        match self.run_os(arguments).await {
            Ok(mut output) => {
                output.stdout = process::REDACTED.into();
                Ok(output)
            }
            Err(AbraError::Command(error)) => Err(AbraError::Command(error.redact_stdout())),
            Err(other) => Err(other),
        }
    }

    async fn run_os(&self, arguments: &[OsString]) -> Result<CommandOutput, AbraError> {
        let mut spec = CommandSpec::new(&self.binary, &self.dir, self.command_timeout).env("ABRA_DIR", &self.dir);
        spec.args = arguments.to_vec();
        // abra's coloured, width-dependent output is for people; the kept tail is for reports.
        spec = spec.env("NO_COLOR", "1");
        for key in PASSED_ENVIRONMENT {
            if let Some(value) = std::env::var_os(key) {
                spec = spec.env(*key, value);
            }
        }
        tracing::info!(command = %spec.command_line(), "running abra");
        Ok(process::run(&spec).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let domain_of = |length: usize| -> Domain { format!("{}.org", "a".repeat(length - 4)).parse().unwrap() };
        let names = |names: &[&str]| names.iter().map(|name| name.to_string()).collect::<Vec<_>>();
        for (domain_length, secrets, fits) in [
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
            let domain = domain_of(domain_length);
            let result = secret_name_fits(&domain, &secrets);
            assert_eq!(result.is_ok(), fits, "{domain} {secrets:?}: {result:?}");
        }
        let error = secret_name_fits(&domain_of(59), &names(&["pw", "p"])).unwrap_err();
        assert_eq!(
            error,
            format!(
                "the Docker secret name \"{}_org_pw_v1\" would be 65 characters long, the limit is 64: \
                 use a shorter domain or secret name",
                "a".repeat(55)
            )
        );
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
        // The recipe's own secrets, known from the env file abra wrote.
        std::fs::write(
            abra.env_file_path(&domain),
            "TYPE=fixture-web\nSECRET_SMTP_PASSWORD_VERSION=v12\n",
        )
        .unwrap();
        let error = abra
            .secret_generate_all(&recipe, &domain)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!("secret smtp_password of {domain}: the Docker secret name")),
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
        // With domain checks off, every command that deploys passes `-D`.
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
            "app deploy -n -c -f -D blog.example.org 1.1.0+1.1",
            "app upgrade -n -c -D blog.example.org 1.1.0+1.1",
            "app rollback -n -c -D blog.example.org 1.1.0+1.1",
        ]
        .map(|arguments| format!("{arguments} | ABRA_DIR={0} pwd={0}", abra_dir.display()))
        .join("\n");
        assert_eq!(std::fs::read_to_string(&log).unwrap().trim_end(), expected);
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
            error
                .to_string()
                .ends_with("abra app undeploy -n blog.example.org` failed (exit code 1): FATA nope: app undeploy -n blog.example.org"),
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
}
