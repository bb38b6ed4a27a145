//! Notifications: webhooks fed from the store's durable queue.
//!
//! The store queues a notification in the same transaction as the alert or
//! rollout change it announces (`store::notifications`, deciding with the
//! pure `decide`); one delivery task per destination (`deliver`) posts them
//! in order, at least once, with capped backoff, on its own task so that
//! nothing it waits for slows the agents' streams. `render` makes the body.

pub mod decide;
pub mod deliver;
pub mod render;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a destination wants the notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The JSON body (`render::json_body`).
    Json,
    /// One line of plain text (`render::text_line`), for ntfy and the like.
    Text,
}

/// One webhook, parsed from `--notify-webhook`.
#[derive(Clone, PartialEq, Eq)]
pub struct Destination {
    pub url: reqwest::Url,
    pub format: Format,
    /// Stable id of the destination (its queue cursor): SHA-256 of the
    /// argument as given, in hex, first 16 characters.
    pub id: String,
}

/// Only the scheme, host and port: a webhook URL's path and query often
/// carry a token (Slack, Mattermost, ntfy with auth), so logs never show them.
impl fmt::Display for Destination {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.format {
            Format::Json => "",
            Format::Text => "text+",
        };
        write!(
            formatter,
            "{format}{}://{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or_default()
        )?;
        if let Some(port) = self.url.port() {
            write!(formatter, ":{port}")?;
        }
        write!(formatter, "/... (id {})", self.id)
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

/// Why a webhook argument was refused. The messages quote the scheme and
/// host only, never the whole URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestinationError {
    #[error("invalid webhook URL ({0})")]
    Invalid(String),
    #[error("webhook URL scheme {0:?} is not supported: use https:// (or http:// to a loopback address), optionally prefixed with text+")]
    Scheme(String),
    #[error("webhook URL http://{0}/...: plain http is allowed only to a loopback address (127.0.0.0/8, ::1, localhost); use https")]
    PlainHttp(String),
}

impl std::str::FromStr for Destination {
    type Err = DestinationError;

    fn from_str(argument: &str) -> Result<Destination, DestinationError> {
        let (format, url) = match argument.strip_prefix("text+") {
            Some(url) => (Format::Text, url),
            None => (Format::Json, argument),
        };
        // The parser's error names the problem, not the input: safe to show.
        let url = reqwest::Url::parse(url).map_err(|error| DestinationError::Invalid(error.to_string()))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        match url.scheme() {
            "https" => {}
            "http" => {
                let loopback = host == "localhost"
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|address| address.is_loopback());
                if !loopback {
                    return Err(DestinationError::PlainHttp(host));
                }
            }
            other => return Err(DestinationError::Scheme(other.to_owned())),
        }
        if host.is_empty() {
            return Err(DestinationError::Invalid("no host".into()));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, argument.as_bytes());
        Ok(Destination {
            url,
            format,
            id: hex::encode(&digest.as_ref()[..8]),
        })
    }
}

/// The webhook side of the server's configuration.
#[derive(Clone, Default)]
pub struct NotifyConfig {
    pub destinations: Vec<Destination>,
    /// The HMAC-SHA256 key, read from `--notify-secret-file`.
    pub secret: Option<Secret>,
    /// Notifications kept undelivered at most; the oldest beyond are dropped.
    pub queue_limit: usize,
    /// Longest wait between two attempts.
    pub max_retry_delay: Duration,
    /// A request must be answered within this.
    pub request_timeout: Duration,
}

impl fmt::Debug for NotifyConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("NotifyConfig")
            .field("destinations", &self.destinations)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .field("queue_limit", &self.queue_limit)
            .field("max_retry_delay", &self.max_retry_delay)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A signing key whose bytes never reach a log or a `Debug` output.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(..)")
    }
}

impl Secret {
    /// Reads the key from `path`: its bytes without a trailing newline;
    /// an empty file is refused.
    pub fn read(path: &Path) -> Result<Secret, SecretError> {
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(SecretError::Empty(path.to_owned()));
        }
        Ok(Secret(trimmed.to_vec()))
    }

    /// `sha256=<hex HMAC-SHA256 of body>`, the signature header's value.
    pub fn sign(&self, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        format!("sha256={}", hex::encode(ring::hmac::sign(&key, body).as_ref()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the webhook secret file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook secret file {0} is empty")]
    Empty(PathBuf),
}

impl NotifyConfig {
    pub fn new() -> NotifyConfig {
        NotifyConfig {
            destinations: Vec::new(),
            secret: None,
            queue_limit: crate::store::DEFAULT_NOTIFICATION_LIMIT,
            max_retry_delay: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Ccfleet-Signature";
/// The header carrying the idempotency key (also the body's `id`).
pub const ID_HEADER: &str = "Idempotency-Key";
/// The header carrying the kind (`alert_opened`, ...).
pub const KIND_HEADER: &str = "X-Ccfleet-Event";

#[cfg(test)]
mod tests {
    use super::*;

    /// An argument, and what it parses to: (how it is shown, its format) or the error.
    type DestinationCase = (&'static str, Result<(&'static str, Format), &'static str>);

    #[test]
    fn destinations_table() {
        let cases: &[DestinationCase] = &[
            ("https://hooks.example.org/x/secret-token", Ok(("https://hooks.example.org/... ", Format::Json))),
            ("text+https://ntfy.sh/fleet", Ok(("text+https://ntfy.sh/... ", Format::Text))),
            ("http://127.0.0.1:8080/hook", Ok(("http://127.0.0.1:8080/... ", Format::Json))),
            ("http://[::1]:8080/hook", Ok(("http://[::1]:8080/... ", Format::Json))),
            ("text+http://localhost/hook", Ok(("text+http://localhost/... ", Format::Text))),
            (
                "http://hooks.example.org/x/secret-token",
                Err("webhook URL http://hooks.example.org/...: plain http is allowed only to a loopback address (127.0.0.0/8, ::1, localhost); use https"),
            ),
            (
                "ftp://hooks.example.org/x",
                Err("webhook URL scheme \"ftp\" is not supported: use https:// (or http:// to a loopback address), optionally prefixed with text+"),
            ),
            ("hooks.example.org/x", Err("invalid webhook URL (relative URL without a base)")),
            ("", Err("invalid webhook URL (relative URL without a base)")),
        ];
        for (argument, expected) in cases {
            let parsed = argument.parse::<Destination>();
            match (parsed, expected) {
                (Ok(destination), Ok((shown, format))) => {
                    assert!(destination.to_string().starts_with(shown), "{argument}: {destination}");
                    assert_eq!(destination.format, *format, "{argument}");
                    assert!(!destination.to_string().contains("secret-token"));
                    assert_eq!(destination.id.len(), 16);
                }
                (Err(error), Err(message)) => assert_eq!(error.to_string(), *message, "{argument}"),
                (parsed, expected) => panic!("{argument}: got {parsed:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn ids_differ_by_format_and_url() {
        let ids: std::collections::BTreeSet<String> =
            ["https://a.example/x", "text+https://a.example/x", "https://a.example/y"]
                .iter()
                .map(|argument| argument.parse::<Destination>().unwrap().id)
                .collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "key\n").unwrap();
        let secret = Secret::read(&path).unwrap();
        // RFC 4231 does not cover this pair; the value is the well-known
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog").
        assert_eq!(
            secret.sign(b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(
            Secret::read(&path).unwrap_err().to_string(),
            format!("the webhook secret file {} is empty", path.display())
        );
        let missing = dir.path().join("missing");
        assert_eq!(
            Secret::read(&missing).unwrap_err().to_string(),
            format!("cannot read the webhook secret file {}", missing.display())
        );
    }
}
