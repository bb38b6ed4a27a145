//! Where the CLI finds the server: `--server`, then `CCFLEET_SERVER`, then the
//! `server` key of the config file, then the default loopback address.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The address `ccfleet-server run` listens on by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7443";

/// The CLI's config file (`~/.config/ccfleet/config.toml` by default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Server URL, e.g. `http://127.0.0.1:7443`.
    pub server: Option<String>,
}

pub fn default_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("ccfleet").join("config.toml"))
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
/// two), then the config file, then the default.
pub fn server_url(flag_or_env: Option<String>, config: &ConfigFile) -> anyhow::Result<String> {
    let url = flag_or_env
        .or_else(|| config.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        anyhow::bail!("server address {url:?} must start with http:// or https://");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_flag_then_file_then_default() {
        let file = ConfigFile {
            server: Some("http://127.0.0.2:7443".into()),
        };
        assert_eq!(
            server_url(Some("http://[::1]:1".into()), &file).unwrap(),
            "http://[::1]:1"
        );
        assert_eq!(server_url(None, &file).unwrap(), "http://127.0.0.2:7443");
        assert_eq!(server_url(None, &ConfigFile::default()).unwrap(), DEFAULT_SERVER);
        assert_eq!(
            server_url(Some("127.0.0.1:7443".into()), &file)
                .unwrap_err()
                .to_string(),
            "server address \"127.0.0.1:7443\" must start with http:// or https://"
        );
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
