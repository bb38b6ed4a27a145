//! What the CLI prints: stable JSON documents for scripts (`--json`) and
//! tables for people. The JSON field names are part of the CLI's interface
//! (README.md, "JSON output"); the wire types never leak into it. Every
//! command prints through this module: [`table`] escapes text and lays out
//! tables, the other files turn wire values into documents and tables.

mod history;
mod inventory;
pub mod rollout;
pub mod table;

pub use history::*;
pub use inventory::*;
pub use table::{printable, render, time};

#[cfg(test)]
mod totality;
