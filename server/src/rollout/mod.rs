//! Staged upgrades of one recipe across the fleet.
//!
//! `plan` and `machine` decide and never act: plain values in (the fleet's
//! inventory, a rollout record, an event and the time), a new record and the
//! commands to deliver out. `engine` is the one task that owns running
//! rollouts: it stores every new record before it delivers any command that
//! record announces, and it re-delivers outstanding commands (with their
//! original operation ids) when a host reconnects or the server restarts.

pub mod engine;
pub mod machine;
pub mod plan;

pub use engine::{RolloutEngine, StartError};
pub use machine::{apply, outstanding, ActionError, Command, Delivery, Event};
pub use plan::{plan, Candidate, PlanError};
