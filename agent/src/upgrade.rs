//! The local upgrade transaction (DESIGN.md, "The local upgrade transaction").

pub mod machine;
