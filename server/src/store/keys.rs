//! The store's trees and the layout of their keys.

use ccfleet_proto::HostId;

use super::codec::RECORD_FORMAT;
use super::StoreError;

pub(super) const HOSTS: &str = "hosts";
pub(super) const APPS: &str = "apps";
pub(super) const APPS_BY_RECIPE: &str = "apps_by_recipe";
pub(super) const OPERATIONS: &str = "operations";
pub(super) const TOKENS: &str = "tokens";
pub(super) const CERTIFICATES: &str = "certificates";
pub(super) const ALERTS: &str = "alerts";
pub(super) const OPERATIONS_BY_TIME: &str = "operations_by_time";
/// One key, `next`: the next alert id (8 bytes, big-endian).
pub(super) const ALERT_COUNTER: &str = "alert_counter";

/// Separator inside composite keys. Every name in a key is a validated domain
/// type, none of which can contain it.
pub(super) const SEPARATOR: u8 = 0;

pub(super) fn key(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            key.push(SEPARATOR);
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

pub(super) fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut prefix = key(parts);
    prefix.push(SEPARATOR);
    prefix
}

/// The host of an `apps` key (`host \0 domain`).
pub(super) fn host_of_app_key(app_key: &[u8]) -> Result<HostId, StoreError> {
    let host = app_key.split(|byte| *byte == SEPARATOR).next().unwrap_or_default();
    std::str::from_utf8(host)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(StoreError::UnknownFormat {
            tree: APPS,
            format: RECORD_FORMAT,
        })
}
