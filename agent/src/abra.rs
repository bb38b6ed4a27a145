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
use crate::process::{self, CommandOutput, CommandSpec, ProcessError};

pub use env_file::{AppType, EnvFile};
pub use versions::VersionsError;

/// Environment variables of the agent that abra (and the `docker` it starts)
/// may need; nothing else of the agent's environment reaches abra. `HOME`
/// because abra and docker look for their configuration under it.
const PASSED_ENVIRONMENT: &[&str] = &["HOME", "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "TZ"];

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
}

impl AbraError {
    /// abra's output, when abra ran.
    pub fn output(&self) -> Option<&CommandOutput> {
        match self {
            AbraError::Command(error) => error.output(),
            AbraError::Io { .. } | AbraError::ServerMissing { .. } | AbraError::Versions(_) => None,
        }
    }
}

/// Work the agent owes an app across crashes and failures, recorded as a
/// file under `$ABRA_DIR/.ccfleet-pending/` before the step that creates the
/// debt and removed once it is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// The app was created; its secrets are not all inserted yet.
    Secrets,
    /// Owned env keys were (maybe) written; the running stack may not use them yet.
    Redeploy,
}

/// Runs abra for one agent: one binary, one `ABRA_DIR`, one server.
#[derive(Debug)]
pub struct Abra {
    binary: PathBuf,
    dir: PathBuf,
    server: String,
    command_timeout: Duration,
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
            recipe_locks: Arc::default(),
            server_added: tokio::sync::Mutex::new(false),
        }
    }

    /// An `Abra` for a new `config` that shares this one's recipe locks.
    pub fn reconfigured(&self, config: &AbraConfig) -> Abra {
        Abra {
            recipe_locks: Arc::clone(&self.recipe_locks),
            ..Abra::new(config)
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

    fn pending_path(&self, domain: &Domain, work: Pending) -> PathBuf {
        let kind = match work {
            Pending::Secrets => "secrets",
            Pending::Redeploy => "redeploy",
        };
        self.dir.join(".ccfleet-pending").join(format!("{domain}.{kind}"))
    }

    /// Whether `work` is still owed to `domain` (see [`Pending`]).
    pub fn is_pending(&self, domain: &Domain, work: Pending) -> bool {
        self.pending_path(domain, work).exists()
    }

    /// Records (durably) that `work` is owed to `domain`, or that it is done.
    pub fn set_pending(&self, domain: &Domain, work: Pending, owed: bool) -> Result<(), AbraError> {
        let path = self.pending_path(domain, work);
        let io = |source| AbraError::Io {
            action: "cannot record pending work",
            path: path.clone(),
            source,
        };
        let directory = path.parent().unwrap_or(&self.dir).to_owned();
        if owed {
            if path.exists() {
                return Ok(());
            }
            std::fs::create_dir_all(&directory).map_err(io)?;
            std::fs::File::create(&path)
                .and_then(|file| file.sync_all())
                .map_err(io)?;
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => return Err(io(source)),
            }
        }
        std::fs::File::open(&directory)
            .and_then(|directory| directory.sync_all())
            .map_err(io)
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
        // abra prints the values it generated: they must not reach logs or reports.
        self.run_redacted(&["app", "secret", "generate", "-n", "--all", domain.as_str()].map(OsString::from))
            .await
    }

    /// `abra app secret insert -n -f <domain> <name> <version> <file>`
    /// (`-f`: the argument is a file holding the value, not the value itself).
    pub async fn secret_insert(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        name: &str,
        secret_version: &str,
        file: &Path,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
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
    }

    /// `abra app deploy -n -c [-f] <domain> <version>`, with `-f` to redeploy
    /// an app that is already deployed.
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
        arguments.extend([domain.as_str(), &version]);
        self.run(&arguments).await
    }

    /// `abra app upgrade -n -c <domain> <version>`.
    pub async fn upgrade(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        version: &CoopVersion,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let version = version.to_string();
        self.run(&["app", "upgrade", "-n", "-c", domain.as_str(), &version])
            .await
    }

    /// `abra app rollback -n -c <domain> <version>`.
    pub async fn rollback(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        version: &CoopVersion,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let version = version.to_string();
        self.run(&["app", "rollback", "-n", "-c", domain.as_str(), &version])
            .await
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
        };
        let first = Abra::new(&config);
        let second = first.reconfigured(&AbraConfig {
            dir: "/srv/abra".into(),
            ..config
        });
        assert!(Arc::ptr_eq(&first.recipe_locks, &second.recipe_locks));
        assert_eq!(second.dir(), Path::new("/srv/abra"));
    }

    fn abra_with_script(directory: &Path, script: &str) -> Abra {
        use std::os::unix::fs::PermissionsExt;
        let binary = directory.join("abra");
        std::fs::write(&binary, script).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        Abra::new(&AbraConfig {
            binary,
            dir: directory.join("abra-dir"),
            server: "default".into(),
            command_timeout: Duration::from_secs(10),
        })
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
