//! The only module that runs abra, following the command lines of ARCHITECTURE.md's section
//! "What ccfleet relies on from abra and Docker": always
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

mod commands;
pub mod env_file;
pub mod hints;
pub mod recipe_secrets;
pub mod versions;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccfleet_proto::{Domain, RecipeName};

use crate::config::AbraConfig;
use crate::docker::{Docker, DockerError};
use crate::process::{self, CommandOutput, CommandSpec, ProcessError};

pub use commands::{fits_shape, offline, COMMAND_SHAPES};
pub use env_file::{AppType, EnvFile};
pub use recipe_secrets::RecipeSecrets;
pub use versions::VersionsError;

/// Environment variables of the agent that abra (and the `docker` it starts)
/// may need; nothing else of the agent's environment reaches abra. `HOME`
/// because abra and docker look for their configuration under it.
const PASSED_ENVIRONMENT: &[&str] = &["HOME", "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "TZ"];

use crate::config::secret_name_too_long as too_long;
pub use crate::config::{secret_name, secret_name_fits, stack_name, MAX_SECRET_NAME_LENGTH, STACK_NAME_KEY};

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
    /// `abra recipe fetch` failed and no versions of the recipe are on disk:
    /// the network (or the recipe's git remote) is the problem, not an app.
    #[error("cannot fetch recipe {recipe}: {source}")]
    Fetch {
        recipe: RecipeName,
        #[source]
        source: Box<AbraError>,
    },
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
            | AbraError::Fetch { .. }
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
mod tests;
