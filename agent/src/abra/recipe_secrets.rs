//! The secrets a recipe declares, read as abra reads them: the top-level
//! `secrets:` of the compose files the app's `COMPOSE_FILE` selects
//! (`compose.yml` when unset), at the version the app's env file (a copy of
//! the recipe's `.env.sample`) names in `SECRET_<NAME>_VERSION`, where a
//! `# generate=false` comment on that line keeps `abra app secret generate`
//! from making it (ARCHITECTURE.md, "What ccfleet relies on from abra and
//! Docker"). Pure functions over text; [`secret_set_up`] decides what an
//! app's set-up inserts and generates.

use std::collections::{BTreeMap, BTreeSet};

use super::env_file::EnvFile;

/// One `SECRET_<NAME>_VERSION=<version>` line of an env file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretLine {
    /// abra's name of the secret: `<NAME>` lowercased.
    pub name: String,
    pub version: String,
    /// `false` when the line's comment says `generate=false`.
    pub generate: bool,
}

/// What a recipe declares about the secrets of one app.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecipeSecrets {
    /// Secret name -> the version its env line names.
    pub versions: BTreeMap<String, String>,
    /// What `abra app secret generate --all` makes: the secrets of the
    /// selected compose files that have a version line without `generate=false`.
    pub generated: BTreeSet<String>,
}

/// The compose files `COMPOSE_FILE` selects (`:`-separated, empty parts
/// skipped); `compose.yml` when it is unset or empty.
pub fn compose_files(compose_file: Option<&str>) -> Vec<String> {
    let files: Vec<String> = compose_file
        .unwrap_or_default()
        .split(':')
        .map(str::trim)
        .filter(|file| !file.is_empty())
        .map(str::to_owned)
        .collect();
    if files.is_empty() {
        vec!["compose.yml".to_owned()]
    } else {
        files
    }
}

/// The names under a compose file's top-level `secrets:` key: the keys at
/// the block's first indentation, up to the next top-level key. Comments,
/// blank lines and the secrets' own fields (`external:`, `name:`) are not names.
pub fn compose_secret_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_secrets = false;
    let mut indent: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let this = line.len() - trimmed.len();
        if this == 0 {
            in_secrets = line.trim_end() == "secrets:";
            indent = None;
            continue;
        }
        if !in_secrets || *indent.get_or_insert(this) != this {
            continue;
        }
        if let Some((name, _)) = trimmed.split_once(':') {
            let name = name.trim().trim_matches(|c| c == '"' || c == '\'');
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// The `SECRET_<NAME>_VERSION` lines of an env file, in file order (a later
/// line of the same name wins, as when the file is sourced).
pub fn secret_lines(env: &EnvFile) -> Vec<SecretLine> {
    let mut lines: Vec<SecretLine> = Vec::new();
    for (key, value, raw) in env.entries_with_lines() {
        let Some(name) = key
            .strip_prefix("SECRET_")
            .and_then(|rest| rest.strip_suffix("_VERSION"))
        else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let line = SecretLine {
            name: name.to_lowercase(),
            version: value.to_owned(),
            generate: generate_modifier(raw),
        };
        lines.retain(|earlier| earlier.name != line.name);
        lines.push(line);
    }
    lines
}

/// Whether the comment of a secret's env line lets abra generate it: `false`
/// only for a `generate=false` modifier (`SECRET_X_VERSION=v1 # generate=false`,
/// modifiers separated by spaces or commas, as `length=32`).
fn generate_modifier(raw: &str) -> bool {
    let Some((_, comment)) = raw.split_once(" #").or_else(|| raw.split_once("\t#")) else {
        return true;
    };
    !comment
        .split(|c: char| c.is_whitespace() || c == ',')
        .any(|modifier| modifier.eq_ignore_ascii_case("generate=false"))
}

/// What a recipe declares, from the app's env file and the text of the
/// compose files [`compose_files`] selected.
pub fn recipe_secrets<'a>(env: &EnvFile, compose_texts: impl IntoIterator<Item = &'a str>) -> RecipeSecrets {
    let lines = secret_lines(env);
    let declared: BTreeSet<String> = compose_texts.into_iter().flat_map(compose_secret_names).collect();
    RecipeSecrets {
        versions: lines
            .iter()
            .map(|line| (line.name.clone(), line.version.clone()))
            .collect(),
        generated: lines
            .iter()
            .filter(|line| line.generate && declared.contains(&line.name))
            .map(|line| line.name.clone())
            .collect(),
    }
}

/// The set-up of an app's secrets: every secret the configuration declares
/// (a file to insert) needs the recipe's version line, or nothing is
/// inserted (`Err`, the names without one: abra would refuse them, and a
/// guessed `v1` could name a secret the recipe never reads); otherwise the
/// secrets `generate` should still make, those the configuration does not provide.
pub fn secret_set_up<'a>(
    declared: impl IntoIterator<Item = &'a str>,
    recipe: &RecipeSecrets,
) -> Result<Vec<String>, Vec<String>> {
    let declared: BTreeSet<&str> = declared.into_iter().collect();
    let missing: Vec<String> = declared
        .iter()
        .filter(|name| !recipe.versions.contains_key(**name))
        .map(|name| (*name).to_owned())
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(recipe
        .generated
        .iter()
        .filter(|name| !declared.contains(name.as_str()))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_file_selects_the_compose_files() {
        for (setting, expected) in [
            (None, vec!["compose.yml"]),
            (Some(""), vec!["compose.yml"]),
            (Some("compose.yml"), vec!["compose.yml"]),
            (
                Some("compose.yml:compose.smtp.yml"),
                vec!["compose.yml", "compose.smtp.yml"],
            ),
            (
                Some("compose.yml::compose.x.yml:"),
                vec!["compose.yml", "compose.x.yml"],
            ),
            (Some(":"), vec!["compose.yml"]),
        ] {
            assert_eq!(compose_files(setting), expected, "{setting:?}");
        }
    }

    #[test]
    fn compose_files_declare_their_top_level_secrets() {
        let full = "version: \"3.8\"\nservices:\n  app:\n    secrets:\n      - db_password\n    image: x\n\
                    secrets:\n  # the database's\n  db_password:\n    external: true\n    name: ${STACK_NAME}_db_password_${SECRET_DB_PASSWORD_VERSION}\n\n  \
                    smtp_password:\n    external: true\nnetworks:\n  proxy:\n    external: true\n";
        for (text, expected) in [
            (full, vec!["db_password", "smtp_password"]),
            // Services' own `secrets:` lists are not declarations.
            ("services:\n  app:\n    secrets:\n      - a\n", vec![]),
            (
                "secrets:\n    four_spaces:\n        external: true\n    b:\n",
                vec!["four_spaces", "b"],
            ),
            ("secrets: {}\n", vec![]),
            ("secrets:\n  \"quoted\":\n    external: true\n", vec!["quoted"]),
            ("volumes:\n  data:\nsecrets:\n  last:\n", vec!["last"]),
            ("", vec![]),
        ] {
            assert_eq!(compose_secret_names(text), expected, "{text:?}");
        }
    }

    #[test]
    fn env_lines_name_versions_and_generate_modifiers() {
        let env = EnvFile::parse(
            "TYPE=r:1.0.0\nSECRET_DB_PASSWORD_VERSION=v1 # length=32\nSECRET_SMTP_PASSWORD_VERSION=v2 # generate=false\n\
             SECRET_TOKEN_VERSION=v1 #length=8,generate=false\n#SECRET_OFF_VERSION=v1\nSECRET_KEY_VERSION=v3\n\
             SECRET_KEY_VERSION=v4\nSECRET__VERSION=v1\nSECRET_NOTE_VERSION=v1 # generate=falsehood\n",
        );
        let line = |name: &str, version: &str, generate: bool| SecretLine {
            name: name.into(),
            version: version.into(),
            generate,
        };
        assert_eq!(
            secret_lines(&env),
            [
                line("db_password", "v1", true),
                line("smtp_password", "v2", false),
                line("token", "v1", false),
                line("key", "v4", true),
                line("note", "v1", true),
            ]
        );
    }

    #[test]
    fn the_set_up_needs_a_version_line_and_generates_the_rest() {
        let env = EnvFile::parse(
            "SECRET_API_KEY_VERSION=v1\nSECRET_DB_VERSION=v2\nSECRET_SMTP_VERSION=v1 # generate=false\n\
             SECRET_EXTRA_VERSION=v1\n",
        );
        let main = "secrets:\n  api_key:\n  db:\n  smtp:\n";
        let extra = "secrets:\n  extra:\n";
        let selected = recipe_secrets(&env, [main]);
        assert_eq!(selected.versions["db"], "v2");
        // Not selected by COMPOSE_FILE, or marked generate=false: not generated.
        assert_eq!(selected.generated, BTreeSet::from(["api_key".into(), "db".into()]));
        let both = recipe_secrets(&env, [main, extra]);
        assert!(both.generated.contains("extra"));
        for (declared, recipe, expected) in [
            (vec![], &selected, Ok(vec!["api_key", "db"])),
            (vec!["api_key"], &selected, Ok(vec!["db"])),
            // A generate=false secret is the operator's to provide.
            (vec!["smtp"], &selected, Ok(vec!["api_key", "db"])),
            (vec!["api_key", "db"], &selected, Ok(vec![])),
            (vec!["api_key", "db", "extra"], &both, Ok(vec![])),
            // No version line: refused, whatever else is declared.
            (vec!["api_key", "unknown"], &selected, Err(vec!["unknown"])),
            (vec!["zz", "aa"], &selected, Err(vec!["aa", "zz"])),
        ] {
            let result = secret_set_up(declared.iter().copied(), recipe);
            let expected = expected
                .map(|names| names.iter().map(ToString::to_string).collect::<Vec<_>>())
                .map_err(|names| names.iter().map(ToString::to_string).collect::<Vec<_>>());
            assert_eq!(result, expected, "{declared:?}");
        }
    }
}
