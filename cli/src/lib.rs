//! The `ccfleet` library: the CLI's parts that are used beyond `main.rs`
//! (the dashboard, which its benchmark example renders too).

pub mod dashboard;
