//! End-to-end tests over the real binaries. One test binary for the crate
//! (STYLE.md); each module covers one area.

mod agent;
mod docker;
mod fleet;
mod nix;
mod security;
