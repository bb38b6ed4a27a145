//! The agent against the real Docker Engine, through the abra test double.
