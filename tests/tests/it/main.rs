//! End-to-end tests over the real binaries. One test binary for the crate
//! (one binary links and starts faster than many); each module covers one area.

// Tests start the real binaries, docker and nix themselves, as an operator would.
#![allow(clippy::disallowed_methods)]

mod abra_check;
mod agent;
mod agent_campaign;
mod alerts;
mod bench;
mod campaign;
mod dashboard;
mod docker;
mod edge;
mod edge_floods;
mod fleet;
mod listing;
mod nix;
mod notify;
mod prometheus;
mod readiness;
mod rollout;
mod secrets;
mod security;
mod store_crash;
mod tidy;
mod upgrade;
