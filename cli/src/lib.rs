//! The `ccfleet` library: the CLI's parts that are used beyond `main.rs`
//! (the dashboard, which its benchmark example renders too, and the names
//! of the wire's enum values, which the dashboard and `output` share).

pub mod dashboard;
pub mod names;
