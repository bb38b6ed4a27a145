//! Validated names: app domains, recipe names and host ids.
//!
//! Every name that can reach a command line or a file path is parsed into one
//! of these types first. The parsers are deliberately strict (ASCII only,
//! lowercase, no leading `-`), so a value that passed them can be given to abra
//! as an argument or joined to a path without further thought.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name was refused. The message names the kind of name, the input
/// (escaped, so control characters are visible) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {input:?}: {reason}")]
pub struct NameError {
    /// What was being parsed: "app domain", "recipe name", "host id".
    pub kind: &'static str,
    /// The refused input, as given.
    pub input: String,
    /// What is wrong, as a lowercase sentence fragment.
    pub reason: String,
}

impl NameError {
    fn new(kind: &'static str, input: &str, reason: impl Into<String>) -> Self {
        NameError {
            kind,
            input: input.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Describes the first character of `input` that `allowed` refuses, with the
/// special cases people hit most (uppercase, non-ASCII lookalikes, spaces and
/// shell metacharacters) spelled out.
fn check_characters(
    kind: &'static str,
    input: &str,
    allowed: impl Fn(char) -> bool,
    allowed_description: &str,
) -> Result<(), NameError> {
    for (position, character) in input.chars().enumerate() {
        if allowed(character) {
            continue;
        }
        // What the character is, then where, then why and what is allowed:
        // "uppercase character 'B' at position 0 is not allowed: names are
        // lowercase (allowed: ...)".
        let (what, why) = if character.is_control() {
            (format!("control character {character:?}"), None)
        } else if !character.is_ascii() {
            (
                format!("non-ASCII character {character:?} (U+{:04X})", character as u32),
                Some("international names must be given in their ASCII (punycode) form"),
            )
        } else if character.is_ascii_uppercase() {
            (
                format!("uppercase character {character:?}"),
                Some("names are lowercase"),
            )
        } else {
            (format!("character {character:?}"), None)
        };
        let why = why.map(|why| format!(": {why}")).unwrap_or_default();
        return Err(NameError::new(
            kind,
            input,
            format!("{what} at position {position} is not allowed{why} (allowed: {allowed_description})"),
        ));
    }
    Ok(())
}

fn check_length(kind: &'static str, input: &str, max: usize) -> Result<(), NameError> {
    if input.is_empty() {
        return Err(NameError::new(kind, input, "must not be empty"));
    }
    if input.len() > max {
        return Err(NameError::new(
            kind,
            input,
            format!("is {} characters long, the limit is {max}", input.len()),
        ));
    }
    Ok(())
}

/// Checks one dot-free label of a DNS-style name: no leading or trailing `-`.
fn check_label(kind: &'static str, input: &str, label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::new(
            kind,
            input,
            "has an empty label (two dots in a row, or a leading or trailing dot)",
        ));
    }
    if label.len() > 63 {
        return Err(NameError::new(
            kind,
            input,
            format!("label {label:?} is longer than 63 characters"),
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::new(
            kind,
            input,
            format!("label {label:?} starts or ends with '-'"),
        ));
    }
    Ok(())
}

fn is_dns_character(character: char) -> bool {
    character.is_ascii_lowercase() || character.is_ascii_digit() || character == '-' || character == '.'
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            /// The validated name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                value.parse()
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

/// An app's name, which in Co-op Cloud is its fully qualified domain
/// (`blog.example.org`). Lowercase ASCII, at least two labels, at most 253
/// characters; international domains in punycode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);
string_newtype!(Domain);

/// abra's limit on the length of a stack name made from a domain; longer
/// names are cut to it. Recalled from abra's source (the constant
/// `MAX_SANITISED_APP_NAME_LENGTH`), not checked against a binary: keep it in
/// this one place.
pub const MAX_SANITISED_APP_NAME_LENGTH: usize = 45;

impl Domain {
    /// The Docker stack name abra makes from the domain when the app's env
    /// file sets no `STACK_NAME`: the domain with `.` replaced by `_`
    /// (`blog_example_org`), cut to [`MAX_SANITISED_APP_NAME_LENGTH`]
    /// characters. Domains are ASCII, so the cut never splits a character.
    pub fn stack_name(&self) -> String {
        let mut name = self.0.replace('.', "_");
        name.truncate(MAX_SANITISED_APP_NAME_LENGTH);
        name
    }
}

impl FromStr for Domain {
    type Err = NameError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "app domain";
        check_length(KIND, input, 253)?;
        check_characters(KIND, input, is_dns_character, "lowercase letters, digits, '-' and '.'")?;
        let labels: Vec<&str> = input.split('.').collect();
        for label in &labels {
            check_label(KIND, input, label)?;
        }
        if labels.len() < 2 {
            return Err(NameError::new(
                KIND,
                input,
                "must be a fully qualified domain such as blog.example.org",
            ));
        }
        if labels.last().is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit())) {
            return Err(NameError::new(KIND, input, "must be a domain name, not an IP address"));
        }
        Ok(Domain(input.to_owned()))
    }
}

/// A recipe's name (`ghost`, `matrix-synapse`): lowercase ASCII letters,
/// digits and single `-` between them, starting with a letter, at most 64
/// characters. It names a directory under `$ABRA_DIR/recipes/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RecipeName(String);
string_newtype!(RecipeName);

impl FromStr for RecipeName {
    type Err = NameError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "recipe name";
        check_length(KIND, input, 64)?;
        check_characters(
            KIND,
            input,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
            "lowercase letters, digits and '-'",
        )?;
        if !input.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(NameError::new(KIND, input, "must start with a lowercase letter"));
        }
        if input.ends_with('-') || input.contains("--") {
            return Err(NameError::new(KIND, input, "must not end with '-' or contain '--'"));
        }
        Ok(RecipeName(input.to_owned()))
    }
}

/// A host's identity in the fleet (by default its hostname). Lowercase ASCII
/// letters, digits, `-` and `.`, DNS label rules, at most 253 characters. It
/// becomes the identity of the host's certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostId(String);
string_newtype!(HostId);

impl FromStr for HostId {
    type Err = NameError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "host id";
        check_length(KIND, input, 253)?;
        check_characters(KIND, input, is_dns_character, "lowercase letters, digits, '-' and '.'")?;
        for label in input.split('.') {
            check_label(KIND, input, label)?;
        }
        Ok(HostId(input.to_owned()))
    }
}

/// An admin's name in the fleet (`alice`, `ops-team`): the identity of an
/// admin certificate. Lowercase ASCII letters, digits, `-` and `.`, DNS
/// label rules, at most 64 characters; its own type so that errors say
/// "admin name", and so that a host id is never taken for one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AdminName(String);
string_newtype!(AdminName);

impl FromStr for AdminName {
    type Err = NameError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        const KIND: &str = "admin name";
        check_length(KIND, input, 64)?;
        check_characters(KIND, input, is_dns_character, "lowercase letters, digits, '-' and '.'")?;
        for label in input.split('.') {
            check_label(KIND, input, label)?;
        }
        Ok(AdminName(input.to_owned()))
    }
}

/// This machine's hostname as the kernel has it (`/proc/sys/kernel/hostname`,
/// else `/etc/hostname`), trimmed and lowercased; empty when neither can be
/// read. The one place the workspace reads it.
pub fn system_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_lowercase())
        .unwrap_or_default()
}
