//! The rules for single values (paths, durations, names, env keys and values,
//! health paths), each a pure function from the text to the value or the
//! problem; and the one check that needs the file system (a readable file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccfleet_proto::Domain;

/// Bounds that keep garbage out of logs, units and `.env` files.
const MAX_LABEL_KEY_LENGTH: usize = 128;
pub(super) const MAX_LABEL_VALUE_LENGTH: usize = 256;
pub(super) const MAX_SCHEDULE_LENGTH: usize = 128;
const MAX_ENV_VALUE_LENGTH: usize = 4096;
const MAX_HEALTH_PATH_LENGTH: usize = 1024;

/// Environment keys that abra itself writes into an app's `.env` (ABRA.md,
/// "Apps, servers, state"); letting the config set them would fight abra.
const ABRA_OWNED_ENV_KEYS: &[&str] = &["TYPE", "DOMAIN"];

pub(super) fn check_readable_file(path: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    std::fs::File::open(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    Ok(())
}

pub(super) fn absolute_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.chars().any(char::is_control) {
        return Err(format!("path {text:?} contains a control character"));
    }
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err(format!("path {text:?} must be absolute"));
    }
    if path
        .components()
        .any(|component| matches!(component, std::path::Component::ParentDir))
    {
        return Err(format!("path {text:?} must not contain '..'"));
    }
    Ok(path.to_owned())
}

pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|error| format!("invalid duration {text:?}: {error} (write e.g. \"90s\", \"15m\")"))?;
    if duration.is_zero() {
        return Err(format!("duration {text:?} must be longer than zero"));
    }
    Ok(duration)
}

/// `https://host[:port][/path]`: checked by `ccfleet_proto::ServerUrl`.
pub(super) fn check_server_url(url: &str) -> Result<String, String> {
    url.parse::<ccfleet_proto::ServerUrl>()
        .map(String::from)
        .map_err(|error| format!("{:?} {}", error.input, error.reason))
}

pub(super) fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_LABEL_KEY_LENGTH {
        return Err(format!(
            "label key {key:?} must be 1 to {MAX_LABEL_KEY_LENGTH} characters long"
        ));
    }
    if let Some(character) = key
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(format!(
            "label key {key:?} contains {character:?} (allowed: lowercase letters, digits, '.', '_', '-', '/')"
        ));
    }
    Ok(())
}

pub(super) fn check_printable(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{what} is {} bytes long, the limit is {max}", value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} {value:?} contains a control character"));
    }
    Ok(())
}

pub(super) fn check_abra_binary(text: &str) -> Result<PathBuf, String> {
    if text.starts_with('/') {
        return absolute_path(text);
    }
    let bare = !text.is_empty()
        && !text.starts_with('-')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if bare {
        Ok(PathBuf::from(text))
    } else {
        Err(format!(
            "{text:?} must be a bare program name looked up on PATH (such as \"abra\") or an absolute path"
        ))
    }
}

pub(super) fn check_abra_server(text: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_');
    if text.is_empty() || text.len() > 253 || text.starts_with(['-', '.']) || !text.chars().all(allowed) {
        return Err(format!(
            "invalid abra server name {text:?}: 1 to 253 lowercase letters, digits, '.', '-', '_', not starting with '-' or '.'"
        ));
    }
    Ok(text.to_owned())
}

pub(super) fn check_env_key(key: &str) -> Result<(), String> {
    let mut characters = key.chars();
    let first_ok = characters.next().is_some_and(|c| c.is_ascii_uppercase() || c == '_');
    if !first_ok || !characters.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!("invalid variable name {key:?}: must match ^[A-Z_][A-Z0-9_]*$"));
    }
    if ABRA_OWNED_ENV_KEYS.contains(&key) {
        return Err(format!("{key} is written by abra itself and cannot be set here"));
    }
    Ok(())
}

pub(super) fn check_env_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_ENV_VALUE_LENGTH {
        return Err(format!(
            "value is {} bytes long, the limit is {MAX_ENV_VALUE_LENGTH}",
            value.len()
        ));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(
            "value must not contain a newline, carriage return or NUL (the .env file holds one line per variable)"
                .into(),
        );
    }
    Ok(())
}

pub(super) fn check_secret_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "invalid secret name {name:?}: must match ^[a-z0-9_]+$ (abra secret names)"
        ));
    }
    Ok(())
}

pub(super) fn check_health_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("health path {path:?} must start with '/'"));
    }
    if path.len() > MAX_HEALTH_PATH_LENGTH {
        return Err(format!(
            "health path is {} bytes long, the limit is {MAX_HEALTH_PATH_LENGTH}",
            path.len()
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "health path {path:?} must not contain whitespace or control characters"
        ));
    }
    Ok(path.to_owned())
}

// Docker secret names as abra makes them: the config checks refuse a domain
// too long for its secrets, and `abra` names the secrets it inserts.

/// Docker's limit on the length of secret (and config) names.
pub const MAX_SECRET_NAME_LENGTH: usize = 64;

/// The version a secret is first inserted at (`SECRET_<NAME>_VERSION=v1`).
const FIRST_SECRET_VERSION: &str = "v1";

/// The Docker secret abra makes for version `version` of the app's secret
/// `name`: `<stack>_<name>_<version>`.
pub fn secret_name(domain: &Domain, name: &str, version: &str) -> String {
    format!("{}_{name}_{version}", domain.stack_name())
}

/// Whether every secret `names` of the app at `domain`, at its first version,
/// stays within Docker's [`MAX_SECRET_NAME_LENGTH`]; the error names the
/// longest one. Checked when the configuration is read, so that a domain too
/// long for its secrets is refused before anything is created. abra may
/// shorten long stack names (unconfirmed), which is not relied on.
pub fn secret_name_fits<'a>(domain: &Domain, names: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    let longest = names
        .into_iter()
        .map(|name| secret_name(domain, name, FIRST_SECRET_VERSION))
        .max_by_key(String::len);
    match longest {
        Some(longest) if longest.len() > MAX_SECRET_NAME_LENGTH => Err(secret_name_too_long(&longest)),
        _ => Ok(()),
    }
}

pub fn secret_name_too_long(secret: &str) -> String {
    format!(
        "the Docker secret name {secret:?} would be {} characters long, the limit is {MAX_SECRET_NAME_LENGTH}: \
         use a shorter domain or secret name",
        secret.len()
    )
}
