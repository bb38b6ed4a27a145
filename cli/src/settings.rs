//! Where the CLI finds the server: `--server`, then `CCFLEET_SERVER`, then the
//! `server` key of the config file, then the default loopback address.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The address `ccfleet-server run` listens on by default.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7443";

/// The CLI's config file (`~/.config/ccfleet/config.toml` by default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Server URL, e.g. `https://fleet.example.org:7443`.
    pub server: Option<String>,
    /// Path of the admin credential file.
    pub credentials: Option<PathBuf>,
}

pub fn default_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("ccfleet").join("config.toml"))
}

pub fn default_credentials_path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("ccfleet").join("credentials.toml"))
}

/// An admin credential as loaded: where it was found and what to warn about.
pub struct LoadedCredential {
    pub path: PathBuf,
    pub credential: ccfleet_proto::tls::Credential,
    /// Warnings for stderr (a credential others can read).
    pub warnings: Vec<String>,
}

/// Loads the admin credential: `--credentials`/`CCFLEET_CREDENTIALS`, then
/// the config file's `credentials`, then `~/.config/ccfleet/credentials.toml`.
/// A file others can read or write is a warning, and an error when `strict`.
pub fn load_credential(
    flag_or_env: Option<PathBuf>,
    config: &ConfigFile,
    strict: bool,
) -> anyhow::Result<LoadedCredential> {
    let path = flag_or_env
        .or_else(|| config.credentials.clone())
        .or_else(default_credentials_path)
        .context("no credential: pass --credentials FILE or set CCFLEET_CREDENTIALS")?;
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the admin credential {} (the server's first one is <data>/admin-credential.toml; \
             pass --credentials FILE, set CCFLEET_CREDENTIALS or copy it to ~/.config/ccfleet/credentials.toml)",
            path.display()
        )
    })?;
    if looks_like_pem(&text) {
        anyhow::bail!(
            "invalid credential file {}: this looks like a PEM certificate or key, not a credential file \
             (expected the TOML file `ccfleet admin issue` writes, with server, ca_certificate, certificate \
             and private_key; the server's first one is <data>/admin-credential.toml)",
            path.display()
        );
    }
    let mut warnings = Vec::new();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path)?.permissions());
    if let Some(problem) = mode_problem(mode) {
        let message = format!(
            "the admin credential {} is {problem} (mode {:04o}); it holds a private key: run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        );
        if strict {
            anyhow::bail!("{message} (refused because of --strict)");
        }
        warnings.push(message);
    }
    let credential = toml::from_str(&text).with_context(|| format!("invalid credential file {}", path.display()))?;
    Ok(LoadedCredential {
        path,
        credential,
        warnings,
    })
}

/// Why a credential file with `mode` is unsafe, as ssh judges a key file:
/// any access for the group or for others.
pub fn mode_problem(mode: u32) -> Option<&'static str> {
    match (mode & 0o070 != 0, mode & 0o007 != 0) {
        (_, true) => Some("open to other users"),
        (true, false) => Some("open to its group"),
        (false, false) => None,
    }
}

/// A PEM block where a TOML credential was expected.
fn looks_like_pem(text: &str) -> bool {
    text.trim_start().starts_with("-----BEGIN ")
}

/// Reads the config file; a missing file is an empty config, a broken one an error.
pub fn load_config(path: &Path) -> anyhow::Result<ConfigFile> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(error) => Err(error).with_context(|| format!("cannot read config file {}", path.display())),
    }
}

/// Picks the server URL by precedence: flag or environment (clap merges the
/// two), then the config file, then the credential's, then the default.
pub fn server_url(
    flag_or_env: Option<String>,
    config: &ConfigFile,
    credential_server: Option<&str>,
) -> anyhow::Result<String> {
    let url = flag_or_env
        .or_else(|| config.server.clone())
        .or_else(|| credential_server.map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let url: ccfleet_proto::ServerUrl = url.parse()?;
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_flag_then_file_then_credential_then_default() {
        let file = ConfigFile {
            server: Some("https://127.0.0.2:7443".into()),
            credentials: None,
        };
        let credential = Some("https://127.0.0.3:7443");
        assert_eq!(
            server_url(Some("https://[::1]:1".into()), &file, credential).unwrap(),
            "https://[::1]:1"
        );
        assert_eq!(server_url(None, &file, credential).unwrap(), "https://127.0.0.2:7443");
        assert_eq!(
            server_url(None, &ConfigFile::default(), credential).unwrap(),
            "https://127.0.0.3:7443"
        );
        assert_eq!(server_url(None, &ConfigFile::default(), None).unwrap(), DEFAULT_SERVER);
        assert_eq!(
            server_url(Some("http://127.0.0.1:7443".into()), &file, None)
                .unwrap_err()
                .to_string(),
            "invalid server URL \"http://127.0.0.1:7443\": uses plain http; the server speaks TLS only, use https://"
        );
    }

    #[test]
    fn credential_modes_are_judged_as_ssh_judges_keys() {
        let cases = [
            (0o100600, None),
            (0o100400, None),
            (0o100700, None),
            (0o100640, Some("open to its group")),
            (0o100644, Some("open to other users")),
            (0o100604, Some("open to other users")),
            (0o100660, Some("open to its group")),
            (0o100666, Some("open to other users")),
        ];
        for (mode, expect) in cases {
            assert_eq!(mode_problem(mode), expect, "{mode:o}");
        }
    }

    #[test]
    fn a_certificate_is_not_taken_for_a_credential() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let error = format!(
            "{:#}",
            load_credential(Some(path), &ConfigFile::default(), false)
                .err()
                .unwrap()
        );
        assert!(
            error.contains("this looks like a PEM certificate or key, not a credential file"),
            "{error}"
        );
        assert!(!error.contains("\\n"), "{error}");
    }

    #[test]
    fn config_files_are_strict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert!(
            load_config(&path).unwrap().server.is_none(),
            "a missing file is an empty config"
        );
        std::fs::write(&path, "sever = \"x\"\n").unwrap();
        let error = format!("{:#}", load_config(&path).unwrap_err());
        assert!(error.contains("unknown field `sever`"), "{error}");
    }
}
