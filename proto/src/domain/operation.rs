//! Operation ids: the one type that both makes and parses them.
//!
//! A rollout's server mints `<rollout id>.<n>` for the upgrade of its `n`th
//! host and `<rollout id>.<n>.rollback` for that host's rollback; an agent
//! names its own operations `local-<hex>`. Every id, whoever made it, follows
//! one rule because it names the operation's snapshot directory on the host:
//! `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`MAX_OPERATION_ID`] bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::NameError;

/// The longest operation id accepted, in bytes.
pub const MAX_OPERATION_ID: usize = 128;

const KIND: &str = "operation id";
const ROLLBACK_SUFFIX: &str = ".rollback";

/// A validated operation id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OperationId(String);

/// What an id says about the operation it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind<'a> {
    /// `<rollout>.<position>`: a rollout's upgrade of one host.
    Upgrade { rollout: &'a str, position: u64 },
    /// `<rollout>.<position>.rollback`: the rollback of that upgrade.
    Rollback { rollout: &'a str, position: u64 },
    /// Anything else (an agent's own `local-<hex>`, a caller's choice).
    Other,
}

impl OperationId {
    /// Checks `text` against the operation id rule.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let invalid = |reason: String| NameError {
            kind: KIND,
            input: text.to_owned(),
            reason,
        };
        if text.len() > MAX_OPERATION_ID {
            return Err(invalid(format!("is longer than {MAX_OPERATION_ID} bytes")));
        }
        let mut characters = text.chars();
        match characters.next() {
            None => return Err(invalid("is empty".into())),
            Some(first) if !first.is_ascii_alphanumeric() => {
                return Err(invalid("must start with a letter or digit".into()))
            }
            Some(_) => {}
        }
        if !characters.all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '-')) {
            return Err(invalid("may contain only letters, digits, '_', '.' and '-'".into()));
        }
        Ok(OperationId(text.to_owned()))
    }

    /// The id of a rollout's upgrade of its `position`th host. `rollout` is a
    /// rollout id as the server mints them (valid, no `.`).
    pub fn upgrade(rollout: &str, position: usize) -> Self {
        Self::minted(format!("{rollout}.{position}"))
    }

    /// The id of the rollback of [`OperationId::upgrade`]`(rollout, position)`.
    pub fn rollback(rollout: &str, position: usize) -> Self {
        Self::minted(format!("{rollout}.{position}{ROLLBACK_SUFFIX}"))
    }

    /// An agent's own id for an operation nobody named: `local-<suffix>`
    /// (`suffix` is random hex).
    pub fn local(suffix: &str) -> Self {
        Self::minted(format!("local-{suffix}"))
    }

    fn minted(text: String) -> Self {
        debug_assert!(Self::parse(&text).is_ok(), "minted an invalid operation id {text:?}");
        OperationId(text)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the id says about its operation.
    pub fn kind(&self) -> OperationKind<'_> {
        kind_of(&self.0)
    }
}

/// What `text` says about its operation, without validating it first (for
/// ids that arrive in events, where an invalid one is simply `Other`).
pub fn kind_of(text: &str) -> OperationKind<'_> {
    let (body, rollback) = match text.strip_suffix(ROLLBACK_SUFFIX) {
        Some(body) => (body, true),
        None => (text, false),
    };
    let Some((rollout, position)) = body.split_once('.') else {
        return OperationKind::Other;
    };
    let digits = !position.is_empty() && position.bytes().all(|byte| byte.is_ascii_digit());
    match position.parse::<u64>() {
        Ok(position) if digits && !rollout.is_empty() && rollback => OperationKind::Rollback { rollout, position },
        Ok(position) if digits && !rollout.is_empty() => OperationKind::Upgrade { rollout, position },
        _ => OperationKind::Other,
    }
}

/// The rollout id that minted `text` (`<rollout id>.<n>[.rollback]`): the
/// part before the first `.`.
pub fn rollout_of(text: &str) -> &str {
    text.split('.').next().unwrap_or_default()
}

impl FromStr for OperationId {
    type Err = NameError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl TryFrom<String> for OperationId {
    type Error = NameError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<OperationId> for String {
    fn from(id: OperationId) -> Self {
        id.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl AsRef<str> for OperationId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_parse_back_to_what_made_them() {
        let rows = [
            (
                OperationId::upgrade("ghost-lq2x1k", 0),
                "ghost-lq2x1k.0",
                OperationKind::Upgrade {
                    rollout: "ghost-lq2x1k",
                    position: 0,
                },
            ),
            (
                OperationId::upgrade("ghost-lq2x1k", 12),
                "ghost-lq2x1k.12",
                OperationKind::Upgrade {
                    rollout: "ghost-lq2x1k",
                    position: 12,
                },
            ),
            (
                OperationId::rollback("ghost-lq2x1k", 3),
                "ghost-lq2x1k.3.rollback",
                OperationKind::Rollback {
                    rollout: "ghost-lq2x1k",
                    position: 3,
                },
            ),
            (
                OperationId::local("3f68e324d0bb66a0"),
                "local-3f68e324d0bb66a0",
                OperationKind::Other,
            ),
        ];
        for (made, text, kind) in rows {
            assert_eq!(made.as_str(), text);
            let parsed: OperationId = text.parse().unwrap();
            assert_eq!(parsed, made);
            assert_eq!(parsed.kind(), kind, "{text}");
            assert_eq!(rollout_of(text), text.split('.').next().unwrap());
        }
    }

    #[test]
    fn kinds_of_ids_that_arrive_in_events() {
        let rows = [
            (
                "r.0",
                OperationKind::Upgrade {
                    rollout: "r",
                    position: 0,
                },
            ),
            (
                "r.7.rollback",
                OperationKind::Rollback {
                    rollout: "r",
                    position: 7,
                },
            ),
            ("r", OperationKind::Other),
            ("r.", OperationKind::Other),
            ("r.x", OperationKind::Other),
            ("r.+1", OperationKind::Other),
            ("r.1.2", OperationKind::Other),
            (".1", OperationKind::Other),
            ("r.rollback", OperationKind::Other),
            ("", OperationKind::Other),
        ];
        for (text, kind) in rows {
            assert_eq!(kind_of(text), kind, "{text:?}");
        }
    }

    #[test]
    fn the_rule_refuses_what_cannot_name_a_directory() {
        let long = "a".repeat(129);
        let rows = [
            ("op_1", None),
            ("", Some("is empty")),
            (".hidden", Some("must start with a letter or digit")),
            ("é", Some("must start with a letter or digit")),
            ("op/../etc", Some("may contain only letters, digits, '_', '.' and '-'")),
            ("op 1", Some("may contain only letters, digits, '_', '.' and '-'")),
            (long.as_str(), Some("is longer than 128 bytes")),
        ];
        for (text, reason) in rows {
            let result = OperationId::parse(text);
            assert_eq!(
                result.as_ref().err().map(|error| error.reason.as_str()),
                reason,
                "{text:?}"
            );
            if let Err(error) = result {
                assert_eq!(
                    error.to_string(),
                    format!("invalid operation id {text:?}: {}", error.reason)
                );
            }
        }
        let error = serde_json::from_str::<OperationId>("\"a/b\"").unwrap_err();
        assert!(error.to_string().contains("invalid operation id"), "{error}");
    }
}
