//! The agent's configuration file (`/etc/ccfleet/agent.toml`): schema, defaults and validation.
//!
//! Parsing happens in two steps. `serde` reads the TOML into plain "raw" structs
//! whose names and versions are still strings (unknown fields are refused
//! there, `raw.rs`); then `validate.rs` turns every string into its validated type from
//! `ccfleet-proto`, fills in the defaults and checks the rules that span
//! fields (duplicate domains, `depends_on`), collecting *every* problem rather
//! than stopping at the first. Both steps are pure: the checks that look at
//! the file system (secret files exist and are readable) live in
//! [`Config::validate_files`], so tests of the schema need no files.
//!
//! The normalised form ([`Config`], printed by `ccfleet-agent check-config`)
//! has every default filled in, durations as humantime strings (`"15m"`, the
//! same notation the file uses, so the output can be read back) and apps
//! sorted by domain.
//!
//! Files: `schema.rs` (the validated types and their defaults, re-exported
//! here), `raw.rs` (the serde form of the file), `checks.rs` (the rules for
//! single values), `validate.rs` (raw to validated, and the rules between
//! fields and apps); this file holds the entry points and the errors.

mod checks;
pub use checks::{secret_name, secret_name_fits, secret_name_too_long, MAX_SECRET_NAME_LENGTH};
mod raw;
mod schema;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use schema::{
    AbraConfig, AgentConfig, AppConfig, Config, HealthConfig, HostConfig, ProbeScheme, ServerConfig,
    DEFAULT_ABRA_BINARY, DEFAULT_ABRA_SERVER, DEFAULT_ALERTS_DIR, DEFAULT_CONTROL_SOCKET, DEFAULT_PROBE_ADDRESS,
    DEFAULT_SNAPSHOT_RETENTION, DEFAULT_STATE_DIR,
};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read the configuration", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML, or does not fit the schema (unknown field, wrong
    /// type, missing required field). `toml` stops at the first such error.
    #[error("{}: {}", origin.display(), message.trim_end())]
    Syntax { origin: PathBuf, message: String },
    /// The text fits the schema but breaks one or more rules; one line each.
    #[error("{}", Problems { origin, problems })]
    Invalid { origin: PathBuf, problems: Vec<Problem> },
}

/// One broken rule: which app (if any), which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `app "blog.example.org"`, or `app[2]` (0-based) when the app's domain is itself invalid;
    /// `None` for the sections outside `[[app]]`.
    pub app: Option<String>,
    /// The field, dotted from its section (`server.url`) or its app (`health.path`).
    pub field: String,
    /// What is wrong, as a lowercase sentence fragment.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(app) = &self.app {
            write!(formatter, "{app}: ")?;
        }
        write!(formatter, "field {:?}: {}", self.field, self.message)
    }
}

struct Problems<'a> {
    origin: &'a Path,
    problems: &'a [Problem],
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                formatter.write_str("\n")?;
            }
            write!(formatter, "{}: {problem}", self.origin.display())?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates the file at `path` (without the file-system checks
    /// of [`Config::validate_files`]). The host id defaults to this machine's hostname.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses and validates `text`; `origin` (the file's path) prefixes every
    /// message. The host id defaults to this machine's hostname.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Config::from_toml_str_with_hostname(text, origin, &ccfleet_proto::system_hostname())
    }

    /// [`Config::from_toml_str`] with the hostname given (it is lowercased
    /// before use), so that the result depends on nothing but the arguments.
    pub fn from_toml_str_with_hostname(text: &str, origin: &Path, hostname: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: error.to_string(),
        })?;
        validate::validate(raw, hostname).map_err(|problems| ConfigError::Invalid {
            origin: origin.to_owned(),
            problems,
        })
    }

    /// The checks that need the file system: every secret file exists, is a
    /// regular file and can be opened for reading by this process.
    pub fn validate_files(&self, origin: &Path) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for app in &self.apps {
            for (name, path) in &app.secrets {
                if let Err(message) = checks::check_readable_file(path) {
                    problems.push(Problem {
                        app: Some(format!("app {:?}", app.domain.as_str())),
                        field: format!("secrets.{name}"),
                        message,
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }
}

#[cfg(test)]
mod tests;
