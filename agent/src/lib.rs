//! ccfleet host agent: reconciles the Co-op Cloud apps declared for this host
//! through abra, moves their versions through the health-gated upgrade
//! transaction (`upgrade`, journaled in `journal`), observes Docker and
//! reports to the server (`link`, `outbox`). `main.rs` is a thin clap front
//! end over this library.

pub mod abra;
pub mod alerts;
pub mod config;
pub mod control;
pub mod daemon;
pub mod docker;
pub mod health;
pub mod host;
pub mod identity;
pub mod journal;
pub mod link;
pub mod outbox;
pub mod process;
pub mod reconcile;
pub mod snapshot;
pub mod upgrade;
