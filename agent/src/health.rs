//! Is the app healthy after a deploy? The health gate (a pure decision over
//! timed checks) and the HTTP probe (the effect that produces one check).
//!
//! The upgrade transaction polls: each poll gathers one [`Check`] (swarm
//! convergence, container healthchecks and, when the app has a health path,
//! [`HttpProbe::probe`]) and feeds it to [`HealthGate::observe`], until the
//! verdict is no longer [`GateVerdict::Waiting`].

mod gate;
mod probe;

pub use gate::{Check, GatePolicy, GateVerdict, HealthGate};
pub use probe::{HttpProbe, ProbeError, ProbeScheme, ProbeTarget};
