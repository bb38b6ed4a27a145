//! Page sizes and page tokens of the Admin listings (`ListHosts`, `ListApps`,
//! `RecipeVersions`, `ListAlerts`).
//!
//! A token is the key of the last item of the previous page, prefixed with
//! the listing it belongs to, as hex (opaque to clients, printable, and
//! decoded strictly: anything else is INVALID_ARGUMENT).

use std::cmp::Reverse;

use ccfleet_proto::{CoopVersion, Domain, HostId};
use tonic::Status;

use super::convert;
use crate::store::{AppKey, VersionKey};

/// Items per page when the request names no size.
pub const DEFAULT_PAGE_SIZE: usize = 1_000;
/// Most items per page; larger requests are lowered to it.
pub const MAX_PAGE_SIZE: usize = 10_000;

/// The page size a request asks for, within bounds.
pub fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        size => size.min(MAX_PAGE_SIZE),
    }
}

/// Which listing a token continues; part of the token so that a token of
/// one listing is refused by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Hosts,
    Apps,
    Versions,
    Alerts,
}

impl Listing {
    fn tag(self) -> &'static str {
        match self {
            Listing::Hosts => "hosts",
            Listing::Apps => "apps",
            Listing::Versions => "versions",
            Listing::Alerts => "alerts",
        }
    }
}

const SEPARATOR: char = '\0';

fn encode(listing: Listing, parts: &[&str]) -> String {
    let mut text = listing.tag().to_owned();
    for part in parts {
        text.push(SEPARATOR);
        text.push_str(part);
    }
    hex::encode(text)
}

/// The parts of a token of `listing` (`None` for an empty token), or
/// INVALID_ARGUMENT.
fn decode(listing: Listing, token: &str, parts: usize) -> Result<Option<Vec<String>>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let refuse = || {
        convert::invalid(
            "page_token",
            format!("not a page token of this {} listing", listing.tag()),
        )
    };
    let bytes = hex::decode(token).map_err(|_| refuse())?;
    let text = String::from_utf8(bytes).map_err(|_| refuse())?;
    let mut fields = text.split(SEPARATOR);
    if fields.next() != Some(listing.tag()) {
        return Err(refuse());
    }
    let fields: Vec<String> = fields.map(str::to_owned).collect();
    if fields.len() != parts {
        return Err(refuse());
    }
    Ok(Some(fields))
}

fn invalid_part(listing: Listing) -> Status {
    convert::invalid(
        "page_token",
        format!("not a page token of this {} listing", listing.tag()),
    )
}

pub fn host_token(host_id: &HostId) -> String {
    encode(Listing::Hosts, &[host_id.as_str()])
}

pub fn host_after(token: &str) -> Result<Option<HostId>, Status> {
    let Some(parts) = decode(Listing::Hosts, token, 1)? else {
        return Ok(None);
    };
    parts[0].parse().map(Some).map_err(|_| invalid_part(Listing::Hosts))
}

pub fn app_token((host_id, domain): &AppKey) -> String {
    encode(Listing::Apps, &[host_id.as_str(), domain.as_str()])
}

pub fn app_after(token: &str) -> Result<Option<AppKey>, Status> {
    let Some(parts) = decode(Listing::Apps, token, 2)? else {
        return Ok(None);
    };
    let host_id: HostId = parts[0].parse().map_err(|_| invalid_part(Listing::Apps))?;
    let domain: Domain = parts[1].parse().map_err(|_| invalid_part(Listing::Apps))?;
    Ok(Some((host_id, domain)))
}

/// An alerts token: the host id and domain of the last alert.
pub fn alert_token((host_id, domain): &AppKey) -> String {
    encode(Listing::Alerts, &[host_id.as_str(), domain.as_str()])
}

pub fn alert_after(token: &str) -> Result<Option<AppKey>, Status> {
    let Some(parts) = decode(Listing::Alerts, token, 2)? else {
        return Ok(None);
    };
    let host_id: HostId = parts[0].parse().map_err(|_| invalid_part(Listing::Alerts))?;
    let domain: Domain = parts[1].parse().map_err(|_| invalid_part(Listing::Alerts))?;
    Ok(Some((host_id, domain)))
}

/// A versions token: "known" or "unknown", the version, host id, domain.
pub fn version_token((Reverse(version), host_id, domain): &VersionKey) -> String {
    let version_text = version.as_ref().map(ToString::to_string).unwrap_or_default();
    let known = if version.is_some() { "known" } else { "unknown" };
    encode(
        Listing::Versions,
        &[known, &version_text, host_id.as_str(), domain.as_str()],
    )
}

pub fn version_after(token: &str) -> Result<Option<VersionKey>, Status> {
    let Some(parts) = decode(Listing::Versions, token, 4)? else {
        return Ok(None);
    };
    let invalid = || invalid_part(Listing::Versions);
    let version = match (parts[0].as_str(), parts[1].as_str()) {
        ("unknown", "") => None,
        ("known", text) => Some(text.parse::<CoopVersion>().map_err(|_| invalid())?),
        _ => return Err(invalid()),
    };
    let host_id: HostId = parts[2].parse().map_err(|_| invalid())?;
    let domain: Domain = parts[3].parse().map_err(|_| invalid())?;
    Ok(Some((Reverse(version), host_id, domain)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_bounded() {
        for (requested, expected) in [
            (0, 1_000),
            (1, 1),
            (1_000, 1_000),
            (10_000, 10_000),
            (10_001, 10_000),
            (u32::MAX, 10_000),
        ] {
            assert_eq!(page_size(requested), expected, "requested {requested}");
        }
    }

    #[test]
    fn tokens_round_trip() {
        let host: HostId = "web-1".parse().unwrap();
        let domain: Domain = "blog.coop.example".parse().unwrap();
        assert_eq!(host_after(&host_token(&host)).unwrap(), Some(host.clone()));
        let app = (host.clone(), domain.clone());
        assert_eq!(app_after(&app_token(&app)).unwrap(), Some(app.clone()));
        assert_eq!(alert_after(&alert_token(&app)).unwrap(), Some(app.clone()));
        assert_eq!(
            alert_after(&app_token(&app)).unwrap_err().code(),
            tonic::Code::InvalidArgument,
            "an apps token is not an alerts token"
        );
        assert_eq!(alert_after("").unwrap(), None);
        for version in [None, Some("1.3.0+6.42.0-alpine".parse::<CoopVersion>().unwrap())] {
            let key = (Reverse(version), host.clone(), domain.clone());
            assert_eq!(version_after(&version_token(&key)).unwrap(), Some(key));
        }
        assert_eq!(host_after("").unwrap(), None);
        assert_eq!(app_after("").unwrap(), None);
        assert_eq!(version_after("").unwrap(), None);
    }

    #[test]
    fn bad_tokens_are_invalid_arguments() {
        let host: HostId = "web-1".parse().unwrap();
        let domain: Domain = "blog.coop.example".parse().unwrap();
        let app_token = app_token(&(host.clone(), domain));
        let cases: Vec<(&str, String)> = vec![
            ("not hex", "zz".into()),
            ("odd hex", "abc".into()),
            ("not utf-8", "ff".into()),
            ("another listing's token", app_token.clone()),
            ("wrong tag", hex::encode("hostz\0web-1")),
            ("no key", hex::encode("hosts")),
            ("extra part", hex::encode("hosts\0web-1\0x")),
            ("invalid host id", hex::encode("hosts\0Web 1!")),
        ];
        for (what, token) in cases {
            let status = host_after(&token).expect_err(what);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}");
            assert!(
                status.message().starts_with("page_token: "),
                "{what}: {}",
                status.message()
            );
        }
        for (what, token) in [
            ("host token for apps", host_token(&host)),
            ("invalid domain", hex::encode("apps\0web-1\0not a domain")),
        ] {
            assert_eq!(
                app_after(&token).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{what}"
            );
        }
        for (what, token) in [
            ("apps token for versions", app_token),
            (
                "unknown with a version",
                hex::encode("versions\0unknown\x001.0.0\0web-1\0a.example"),
            ),
            (
                "bad version",
                hex::encode("versions\0known\0not-a-version\0web-1\0a.example"),
            ),
            ("bad marker", hex::encode("versions\0maybe\0\0web-1\0a.example")),
        ] {
            assert_eq!(
                version_after(&token).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{what}"
            );
        }
    }
}
