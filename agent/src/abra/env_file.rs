//! An app's env file (`$ABRA_DIR/servers/<server>/<domain>.env`): parsing,
//! the keys abra itself keeps there (`TYPE`, `SECRET_<NAME>_VERSION`), and
//! editing it without losing what abra or the recipe wrote.
//!
//! The file is Docker env-file syntax as abra reads it (godotenv, unconfirmed):
//! `KEY=value` lines, `#` comments, optional `export `, values optionally in
//! single quotes (literal) or double quotes (backslash escapes). Edits keep
//! every line the agent does not own byte for byte, comments included.

use std::collections::BTreeMap;
use std::path::Path;

/// The parsed file: its lines in order, so that it can be written back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvFile {
    lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// `KEY=value`: the key, the decoded value, and the line as written.
    Entry { key: String, value: String, raw: String },
    /// A comment, a blank line, or a line that is not an assignment: kept as is.
    Other(String),
}

/// What `TYPE=` (or the older `RECIPE=`) says about the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppType {
    /// The recipe name as written (not validated here).
    pub recipe: String,
    /// The version after `:`, as written; `None` for the older `TYPE=<recipe>` form.
    pub version: Option<String>,
}

impl EnvFile {
    /// Parses the text of an env file. Never fails: lines that are not
    /// assignments are kept as they are and ignored.
    pub fn parse(text: &str) -> EnvFile {
        let lines = text
            .lines()
            .map(|raw| match parse_assignment(raw) {
                Some((key, value)) => Line::Entry {
                    key,
                    value,
                    raw: raw.to_owned(),
                },
                None => Line::Other(raw.to_owned()),
            })
            .collect();
        EnvFile { lines }
    }

    /// The file's text, one line per entry, ending in a newline.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            match line {
                Line::Entry { raw, .. } | Line::Other(raw) => text.push_str(raw),
            }
            text.push('\n');
        }
        text
    }

    /// The value of `key`; the last assignment wins, as when the file is sourced.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries()
            .filter(|(entry_key, _)| *entry_key == key)
            .map(|(_, value)| value)
            .last()
    }

    /// Every assignment in file order (duplicates included).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|line| match line {
            Line::Entry { key, value, .. } => Some((key.as_str(), value.as_str())),
            Line::Other(_) => None,
        })
    }

    /// Every assignment in file order with the line as written (for the
    /// comments abra reads modifiers from, see `abra::recipe_secrets`).
    pub fn entries_with_lines(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.lines.iter().filter_map(|line| match line {
            Line::Entry { key, value, raw } => Some((key.as_str(), value.as_str(), raw.as_str())),
            Line::Other(_) => None,
        })
    }

    /// Sets `key` to `value`, returning whether the file changed. An existing
    /// assignment is rewritten in place (later duplicates are dropped so the
    /// new value is the one that counts); a new key is appended.
    pub fn set(&mut self, key: &str, value: &str) -> bool {
        if self.get(key) == Some(value) && self.entries().filter(|(entry_key, _)| *entry_key == key).count() == 1 {
            return false;
        }
        let new_line = Line::Entry {
            key: key.to_owned(),
            value: value.to_owned(),
            raw: format!("{key}={}", encode_value(value)),
        };
        let mut replaced = false;
        self.lines.retain_mut(|line| match line {
            Line::Entry { key: entry_key, .. } if entry_key == key => {
                if replaced {
                    false
                } else {
                    *line = new_line.clone();
                    replaced = true;
                    true
                }
            }
            _ => true,
        });
        if !replaced {
            self.lines.push(new_line);
        }
        true
    }

    /// The app's recipe and version from `TYPE=<recipe>:<version>`, the older
    /// `TYPE=<recipe>`, or the older still `RECIPE=<recipe>`.
    pub fn app_type(&self) -> Option<AppType> {
        let text = self.get("TYPE").or_else(|| self.get("RECIPE"))?.trim();
        if text.is_empty() {
            return None;
        }
        Some(match text.split_once(':') {
            Some((recipe, version)) => AppType {
                recipe: recipe.to_owned(),
                version: (!version.is_empty()).then(|| version.to_owned()),
            },
            None => AppType {
                recipe: text.to_owned(),
                version: None,
            },
        })
    }

    /// The recipe's secrets as listed by `SECRET_<NAME>_VERSION=<version>`
    /// lines: lowercased secret name (abra's name for it) -> version.
    pub fn secret_versions(&self) -> BTreeMap<String, String> {
        self.entries()
            .filter_map(|(key, value)| {
                let name = key.strip_prefix("SECRET_")?.strip_suffix("_VERSION")?;
                (!name.is_empty()).then(|| (name.to_lowercase(), value.to_owned()))
            })
            .collect()
    }
}

/// Reads the env file at `path`; `Ok(None)` when it does not exist.
pub fn read(path: &Path) -> std::io::Result<Option<EnvFile>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(EnvFile::parse(&text))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Replaces the file at `path` atomically: the new text goes to a temporary
/// file in the same directory, is synced, and is renamed over the old one, so
/// a crash leaves either the old file or the new one, never half of each.
/// The old file's permissions are kept (env files may hold secrets: a new
/// file is created owner-only).
pub fn write_atomically(path: &Path, file: &EnvFile) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(path) {
        Ok(metadata) => metadata.permissions().mode() & 0o7777,
        Err(_) => 0o600,
    };
    ccfleet_proto::fsutil::write_atomic(path, file.render().as_bytes(), mode)
}

fn parse_assignment(raw: &str) -> Option<(String, String)> {
    let line = raw.trim_start();
    if line.starts_with('#') {
        return None;
    }
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    let key_ok = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    key_ok.then(|| (key.to_owned(), decode_value(value)))
}

fn decode_value(value: &str) -> String {
    let value = value.trim();
    if let Some(inner) = value.strip_prefix('\'').and_then(|rest| rest.strip_suffix('\'')) {
        return inner.to_owned();
    }
    if let Some(inner) = value.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) {
        let mut decoded = String::new();
        let mut characters = inner.chars();
        while let Some(character) = characters.next() {
            if character == '\\' {
                match characters.next() {
                    Some('n') => decoded.push('\n'),
                    Some(other) => decoded.push(other),
                    None => decoded.push('\\'),
                }
            } else {
                decoded.push(character);
            }
        }
        return decoded;
    }
    // Unquoted: an inline comment starts at " #" (godotenv, unconfirmed).
    match value.find(" #") {
        Some(position) => value[..position].trim_end().to_owned(),
        None => value.to_owned(),
    }
}

/// Writes a value so that [`decode_value`] (and abra) read it back unchanged:
/// plain values bare, anything else in single quotes (taken literally), and
/// values holding a single quote in double quotes with `\`, `"` and `$` escaped.
fn encode_value(value: &str) -> String {
    let plain = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./:@,+=%".contains(c));
    if plain {
        value.to_owned()
    } else if !value.contains('\'') {
        format!("'{value}'")
    } else {
        let mut encoded = String::from("\"");
        for character in value.chars() {
            if matches!(character, '\\' | '"' | '$') {
                encoded.push('\\');
            }
            encoded.push(character);
        }
        encoded.push('"');
        encoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# the recipe's sample
TYPE=fixture-web:1.0.0+1.0
DOMAIN=blog.example.org
## Optional
#SMTP_HOST=mail.example.org
SECRET_DB_PASSWORD_VERSION=v1
export LETS_ENCRYPT_ENV=production
QUOTED=\"a \\\"b\\\" c\"
LITERAL='$not expanded'
INLINE=value # a comment
not an assignment
";

    #[test]
    fn parses_entries_and_keeps_everything_else() {
        let file = EnvFile::parse(SAMPLE);
        assert_eq!(file.render(), SAMPLE);
        assert_eq!(file.get("DOMAIN"), Some("blog.example.org"));
        assert_eq!(file.get("SMTP_HOST"), None);
        assert_eq!(file.get("LETS_ENCRYPT_ENV"), Some("production"));
        assert_eq!(file.get("QUOTED"), Some("a \"b\" c"));
        assert_eq!(file.get("LITERAL"), Some("$not expanded"));
        assert_eq!(file.get("INLINE"), Some("value"));
        assert_eq!(
            file.secret_versions(),
            BTreeMap::from([("db_password".to_owned(), "v1".to_owned())])
        );
    }

    #[test]
    fn app_type_in_all_three_forms() {
        let check = |text: &str, expect: Option<(&str, Option<&str>)>| {
            let got = EnvFile::parse(text).app_type();
            let got = got.as_ref().map(|t| (t.recipe.as_str(), t.version.as_deref()));
            assert_eq!(got, expect, "{text:?}");
        };
        check("TYPE=ghost:1.3.0+6.42.0\n", Some(("ghost", Some("1.3.0+6.42.0"))));
        check("TYPE=ghost\n", Some(("ghost", None)));
        check("RECIPE=ghost\n", Some(("ghost", None)));
        check("TYPE=ghost:\n", Some(("ghost", None)));
        check("DOMAIN=x.org\n", None);
    }

    #[test]
    fn set_replaces_in_place_appends_new_and_reports_change() {
        let mut file = EnvFile::parse("A=1\n# keep me\nB=2\nA=3\n");
        assert!(file.set("A", "new"));
        assert!(file.set("C", "it's $x"));
        assert!(!file.set("B", "2"));
        assert!(file.set("D", "two words"));
        assert_eq!(file.render(), "A=new\n# keep me\nB=2\nC=\"it's \\$x\"\nD='two words'\n");
        let reread = EnvFile::parse(&file.render());
        assert_eq!(reread.get("C"), Some("it's $x"));
        assert_eq!(reread.get("D"), Some("two words"));
        assert!(!file.clone().set("A", "new"));
    }

    #[test]
    fn write_is_atomic_and_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("blog.example.org.env");
        std::fs::write(&path, "A=1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut file = read(&path).unwrap().unwrap();
        file.set("B", "2");
        write_atomically(&path, &file).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A=1\nB=2\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read_dir(directory.path()).unwrap().count(), 1);
        assert_eq!(read(&directory.path().join("missing.env")).unwrap(), None);
    }
}
