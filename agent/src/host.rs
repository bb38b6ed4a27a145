//! The host as the agent's two actors see it: abra to act, Docker to observe,
//! and what an observation of an app means (`observe`). The reconciler and
//! the upgrade transaction are both given one [`Host`]; neither reaches the
//! other to touch the machine.

pub mod observe;

use ccfleet_proto::error_chain;

use crate::abra::Abra;
use crate::config::{AbraConfig, AppConfig};
use crate::docker::Docker;
use crate::journal::Journal;

pub use observe::{AppState, ObservedApp};

/// abra, Docker and the journal's app records (for what an observation means).
#[derive(Debug)]
pub struct Host {
    abra: Abra,
    docker: Docker,
    journal: Journal,
}

impl Host {
    pub fn new(abra: Abra, docker: Docker, journal: Journal) -> Host {
        Host { abra, docker, journal }
    }

    /// The same host with reloaded abra settings; abra's per-recipe locks
    /// are shared with this one.
    pub fn reconfigured(&self, abra: &AbraConfig) -> Host {
        Host {
            abra: self.abra.reconfigured(abra),
            docker: self.docker.clone(),
            journal: self.journal.clone(),
        }
    }

    pub fn abra(&self) -> &Abra {
        &self.abra
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// How `app` stands in Docker now. Never fails: when Docker cannot be
    /// asked, the app is [`AppState::Unknown`] with the reason as drift.
    pub async fn observe(&self, app: &AppConfig) -> ObservedApp {
        // abra may shorten long stack names (unconfirmed); the full name is
        // used until that rule is known.
        let mut observed = match self.docker.observe_stack(&app.domain.stack_name()).await {
            Ok(stack) => observe::classify(app, &stack),
            Err(error) => observe::unknown(app, &error_chain(&error)),
        };
        if let Ok(record) = self.journal.app(&app.domain) {
            observe::explain_fleet_drift(&mut observed, &app.version, record.fleet_target.as_ref());
        }
        observed
    }
}
