//! Is the app healthy after a deploy? The health gate (a pure decision over
//! timed checks) and the HTTP probe (the effect that produces one check).
//!
//! The upgrade transaction polls: each poll gathers one [`Check`] (swarm
//! convergence, container healthchecks and, when the app has a health path,
//! [`HttpProbe::probe`]) and feeds it to [`HealthGate::observe`], until the
//! verdict is no longer [`GateVerdict::Waiting`]. Before those checks,
//! [`docker_verdict`] reads Docker's own decision about the new version (an
//! update paused or rolled back by Swarm, a crash loop, a missing image, an
//! unhealthy container), which ends the gate early as a failure.

mod gate;
mod probe;
mod verdict;

pub use gate::{Check, GatePolicy, GateVerdict, HealthGate};
pub use probe::{HttpProbe, ProbeError, ProbeScheme, ProbeTarget};
pub use verdict::{docker_verdict, TASK_FAILURE_BOUND};
