//! `ServerUrl`: the address of a ccfleet server, checked once for the agent's
//! configuration, the CLI and every endpoint the workspace dials.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a server URL was refused; the message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server URL {input:?}: {reason}")]
pub struct UrlError {
    pub input: String,
    pub reason: String,
}

/// `https://host[:port][/path]`: the server speaks TLS only, so `http://` is
/// refused with that reason; no credentials in the URL (clients authenticate
/// with certificates), no whitespace or control characters, a host, and a
/// port of 1 to 65535 if one is given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerUrl(String);

impl ServerUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl From<ServerUrl> for String {
    fn from(url: ServerUrl) -> String {
        url.0
    }
}

impl TryFrom<String> for ServerUrl {
    type Error = UrlError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl FromStr for ServerUrl {
    type Err = UrlError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let refuse = |reason: String| UrlError {
            input: url.to_owned(),
            reason,
        };
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(refuse("contains whitespace or a control character".into()));
        }
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| refuse("is not a URL; write e.g. \"https://fleet.example.org:7443\"".into()))?;
        match scheme {
            "https" => {}
            "http" => {
                return Err(refuse(
                    "uses plain http; the server speaks TLS only, use https://".into(),
                ))
            }
            other => return Err(refuse(format!("has scheme {other:?}; use https://"))),
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(refuse(
                "must not carry credentials; clients authenticate with their certificate".into(),
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| refuse("has an unclosed '[' in its host".into()))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(refuse(format!("has unexpected text {after:?} after its host"))),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(refuse("has no host".into()));
        }
        if let Some(port) = port {
            if !port.parse::<u16>().is_ok_and(|port| port > 0) {
                return Err(refuse(format!("has an invalid port {port:?}")));
            }
        }
        Ok(ServerUrl(url.to_owned()))
    }
}
