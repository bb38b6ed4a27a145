//! The file as written, before validation (`serde` reads the TOML into these).
//! Strings stay strings here so that every bad value can be reported, not only
//! the first one serde meets; unknown fields are refused.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ProbeScheme;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) host: RawHost,
    #[serde(default)]
    pub(super) agent: RawAgent,
    #[serde(default)]
    pub(super) abra: RawAbra,
    #[serde(default)]
    pub(super) app: Vec<RawApp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) url: String,
    pub(super) join_token_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) state_dir: Option<String>,
    pub(super) control_socket: Option<String>,
    pub(super) alerts_dir: Option<String>,
    pub(super) reconcile_interval: Option<String>,
    pub(super) observe_interval: Option<String>,
    pub(super) snapshot_retention: Option<i64>,
    pub(super) min_healthy_time: Option<String>,
    pub(super) probe_address: Option<String>,
    pub(super) probe_scheme: Option<ProbeScheme>,
    pub(super) stop_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAbra {
    pub(super) binary: Option<String>,
    pub(super) dir: Option<String>,
    pub(super) server: Option<String>,
    pub(super) command_timeout: Option<String>,
    #[serde(default)]
    pub(super) no_domain_checks: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) domain: String,
    pub(super) recipe: String,
    pub(super) version: String,
    #[serde(default = "default_true")]
    pub(super) stateful: bool,
    #[serde(default)]
    pub(super) auto_update: bool,
    pub(super) schedule: Option<String>,
    #[serde(default)]
    pub(super) allow_major: bool,
    #[serde(default = "default_true")]
    pub(super) fleet_managed: bool,
    pub(super) deploy_timeout: Option<String>,
    #[serde(default)]
    pub(super) depends_on: Vec<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) health: RawHealth,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) path: Option<String>,
    pub(super) accepted_statuses: Option<Vec<i64>>,
    pub(super) timeout: Option<String>,
}

fn default_true() -> bool {
    true
}
