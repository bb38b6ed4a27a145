//! `CoopVersion`: a Co-op Cloud recipe version such as `1.3.0+6.42.0-alpine`.
//!
//! The part before `+` is the recipe's own semantic version; the part after it
//! is the upstream app's version, which is build metadata: ordering and
//! "is this a major upgrade" are decided by the recipe part alone (ARCHITECTURE.md,
//! "What ccfleet relies on from abra and Docker").

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest version accepted. Real tags are far shorter; the bound keeps
/// garbage out of command lines and storage.
pub const MAX_VERSION_LENGTH: usize = 128;

/// Why a version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {input:?}: {reason}")]
pub struct VersionError {
    /// The refused input, as given.
    pub input: String,
    /// What is wrong, as a lowercase sentence fragment.
    pub reason: String,
}

/// A recipe version: recipe semver plus an optional upstream part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CoopVersion {
    /// The recipe's semantic version (never has build metadata of its own).
    recipe: semver::Version,
    /// The upstream app's version, the text after `+`; `None` for tags without one.
    upstream: Option<String>,
}

/// How a move from one version to another relates, by the recipe part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionChange {
    /// Same recipe version (the upstream part may still differ).
    Same,
    /// Patch or minor increase (maintainers do not apply the two consistently,
    /// so policy treats them alike).
    Compatible,
    /// The recipe's major version increases.
    Major,
    /// The target is older than the current version.
    Downgrade,
}

impl CoopVersion {
    /// The recipe's semantic version.
    pub fn recipe_version(&self) -> &semver::Version {
        &self.recipe
    }

    /// The upstream part after `+`, if any.
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// How moving from `self` to `target` relates, judged by the recipe part.
    pub fn change_to(&self, target: &CoopVersion) -> VersionChange {
        match self.recipe.cmp_precedence(&target.recipe) {
            Ordering::Equal => VersionChange::Same,
            Ordering::Greater => VersionChange::Downgrade,
            Ordering::Less if target.recipe.major > self.recipe.major => VersionChange::Major,
            Ordering::Less => VersionChange::Compatible,
        }
    }

    /// True when `other`'s recipe part has `self`'s major version: the one
    /// "same major" rule for what an agent offers and what it moves to
    /// without `allow_major`.
    pub fn same_major(&self, other: &CoopVersion) -> bool {
        self.recipe.major == other.recipe.major
    }

    /// True when moving from `self` to `target` raises the recipe's major version.
    pub fn is_major_upgrade(&self, target: &CoopVersion) -> bool {
        self.change_to(target) == VersionChange::Major
    }
}

/// Total order: recipe semver precedence first (pre-releases before releases),
/// then the upstream text, only so that two different versions never compare
/// equal. Upgrade decisions use [`CoopVersion::change_to`], which ignores the
/// upstream part.
impl Ord for CoopVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.recipe
            .cmp_precedence(&other.recipe)
            .then_with(|| self.upstream.cmp(&other.upstream))
    }
}

impl PartialOrd for CoopVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for CoopVersion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.recipe)?;
        if let Some(upstream) = &self.upstream {
            write!(formatter, "+{upstream}")?;
        }
        Ok(())
    }
}

fn is_upstream_character(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '.' | '-' | '_')
}

impl FromStr for CoopVersion {
    type Err = VersionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| VersionError {
            input: input.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(fail("must not be empty".into()));
        }
        if input.len() > MAX_VERSION_LENGTH {
            return Err(fail(format!(
                "is {} characters long, the limit is {MAX_VERSION_LENGTH}",
                input.len()
            )));
        }
        if let Some((position, character)) = input
            .chars()
            .enumerate()
            .find(|(_, c)| !(is_upstream_character(*c) || *c == '+'))
        {
            let what = if character.is_ascii() {
                format!("character {character:?}")
            } else {
                format!("non-ASCII character {character:?} (U+{:04X})", character as u32)
            };
            return Err(fail(format!(
                "{what} at position {position} is not allowed (allowed: ASCII letters, digits, '.', '-', '_' and one '+')"
            )));
        }
        let (recipe_text, upstream) = match input.split_once('+') {
            Some((_, "")) => {
                return Err(fail("has a '+' with no upstream version after it".into()));
            }
            Some((_, upstream)) if upstream.contains('+') => {
                return Err(fail("has more than one '+'".into()));
            }
            Some((_, upstream)) if upstream.starts_with(['-', '.', '_']) => {
                return Err(fail(
                    "the upstream version after '+' must start with a letter or digit".into(),
                ));
            }
            Some((recipe, upstream)) => (recipe, Some(upstream.to_owned())),
            None => (input, None),
        };
        if recipe_text.starts_with('v') {
            return Err(fail(format!(
                "recipe versions have no 'v' prefix; write {:?}",
                &input[1..]
            )));
        }
        let recipe = semver::Version::parse(recipe_text).map_err(|error| {
            if recipe_text.contains('_') {
                fail(
                    "looks like an old-style `<upstream>_<n>` tag, which ccfleet does not support; \
                     use a `<recipe semver>+<upstream>` release such as 1.3.0+6.42.0"
                        .into(),
                )
            } else {
                fail(format!(
                    "the recipe part {recipe_text:?} is not a semantic version MAJOR.MINOR.PATCH ({error})"
                ))
            }
        })?;
        Ok(CoopVersion { recipe, upstream })
    }
}

impl TryFrom<String> for CoopVersion {
    type Error = VersionError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<CoopVersion> for String {
    fn from(value: CoopVersion) -> String {
        value.to_string()
    }
}
