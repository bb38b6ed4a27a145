//! The published versions of a recipe, read from what abra keeps on disk
//! (ARCHITECTURE.md, "What ccfleet relies on from abra and Docker"), never from the table `abra recipe
//! versions` prints: that table mixes recipe versions with image tags such as
//! `16.4.0-alpine`.
//!
//! Two sources, in this order:
//! 1. the git tags of the recipe checkout `$ABRA_DIR/recipes/<recipe>`, read
//!    straight from `.git/refs/tags/**` and `.git/packed-refs` (no `git`
//!    binary needed; a tag may be in either, or both);
//! 2. the cached catalogue `$ABRA_DIR/catalogue/recipes.json` (file name and
//!    shape unconfirmed: per recipe an object with a `versions` list whose
//!    entries are objects keyed by tag; plain strings are accepted too).
//!
//! Only tags that are recipe releases count (see [`release_version`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ccfleet_proto::{CoopVersion, RecipeName};

/// Why the versions of a recipe could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    #[error("{}: {action}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot read the recipe catalogue: {reason}", path.display())]
    Catalogue { path: PathBuf, reason: String },
    #[error(
        "no versions of recipe {recipe}: no release tags in {} and no entry in {} (does the recipe exist? `abra recipe fetch {recipe}` refreshes both)",
        checkout.display(),
        catalogue.display()
    )]
    NoVersions {
        recipe: RecipeName,
        checkout: PathBuf,
        catalogue: PathBuf,
    },
}

/// The recipe checkout abra keeps for `recipe`.
pub fn checkout_dir(abra_dir: &Path, recipe: &RecipeName) -> PathBuf {
    abra_dir.join("recipes").join(recipe.as_str())
}

/// The cached catalogue file (name unconfirmed).
pub fn catalogue_file(abra_dir: &Path) -> PathBuf {
    abra_dir.join("catalogue").join("recipes.json")
}

/// The release versions of `recipe` that abra has on disk, oldest first,
/// without duplicates. The checkout's tags win when it has any; the catalogue
/// is the fallback; neither is an error that says where it looked.
pub fn available_versions(abra_dir: &Path, recipe: &RecipeName) -> Result<Vec<CoopVersion>, VersionsError> {
    let checkout = checkout_dir(abra_dir, recipe);
    let from_tags = release_versions(tag_names(&checkout.join(".git"))?);
    if !from_tags.is_empty() {
        return Ok(from_tags);
    }
    let catalogue = catalogue_file(abra_dir);
    let from_catalogue = release_versions(catalogue_tags(&catalogue, recipe)?);
    if !from_catalogue.is_empty() {
        return Ok(from_catalogue);
    }
    Err(VersionsError::NoVersions {
        recipe: recipe.clone(),
        checkout,
        catalogue,
    })
}

/// A tag that names a recipe release: it parses as a [`CoopVersion`] and its
/// recipe part is a plain `MAJOR.MINOR.PATCH` without a pre-release. That
/// refuses old `<upstream>_<n>` tags (`5.2_1`) and image-tag-like strings
/// (`16.4.0-alpine`, which semver would read as pre-release `alpine`); a
/// recipe release puts the upstream version after `+` (`1.0.0+16.4.0-alpine`).
pub fn release_version(tag: &str) -> Option<CoopVersion> {
    let version: CoopVersion = tag.parse().ok()?;
    version.recipe_version().pre.is_empty().then_some(version)
}

/// Up to two releases on each side of `target`, in order, comma-separated:
/// what a refusal or a hint names when `target` is not a release.
pub fn nearest_releases(releases: &[CoopVersion], target: &CoopVersion) -> String {
    let mut sorted: Vec<&CoopVersion> = releases.iter().collect();
    sorted.sort();
    let position = sorted.partition_point(|release| *release < target);
    let start = position.saturating_sub(2);
    let end = (position + 2).min(sorted.len());
    sorted[start..end]
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn release_versions(tags: impl IntoIterator<Item = String>) -> Vec<CoopVersion> {
    let versions: BTreeSet<CoopVersion> = tags.into_iter().filter_map(|tag| release_version(&tag)).collect();
    versions.into_iter().collect()
}

/// Every tag name in the git directory `git_dir`: loose refs under
/// `refs/tags/` (nested names keep their `/`) and the `refs/tags/` lines of
/// `packed-refs`. A missing directory or file holds no tags.
pub fn tag_names(git_dir: &Path) -> Result<Vec<String>, VersionsError> {
    let mut names = Vec::new();
    let loose = git_dir.join("refs").join("tags");
    collect_loose_tags(&loose, "", &mut names)?;
    let packed = git_dir.join("packed-refs");
    match std::fs::read_to_string(&packed) {
        Ok(text) => names.extend(packed_tags(&text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(VersionsError::Io {
                action: "cannot read the recipe checkout's packed refs",
                path: packed,
                source,
            })
        }
    }
    Ok(names)
}

fn collect_loose_tags(directory: &Path, prefix: &str, names: &mut Vec<String>) -> Result<(), VersionsError> {
    let io = |source| VersionsError::Io {
        action: "cannot list the recipe checkout's tags",
        path: directory.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io(source)),
    };
    for entry in entries {
        let entry = entry.map_err(io)?;
        // A name that is not UTF-8 cannot be a version.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let full = format!("{prefix}{name}");
        if entry.file_type().map_err(io)?.is_dir() {
            collect_loose_tags(&entry.path(), &format!("{full}/"), names)?;
        } else {
            names.push(full);
        }
    }
    Ok(())
}

/// The tag names in a `packed-refs` file: lines `<sha> refs/tags/<name>`;
/// `#` header lines and `^<sha>` peeled lines are skipped.
fn packed_tags(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with('^'))
        .filter_map(|line| line.split_once(' '))
        .filter_map(|(_, reference)| reference.trim().strip_prefix("refs/tags/"))
        .map(str::to_owned)
}

/// The tags the catalogue lists for `recipe`; a missing file or recipe holds none.
fn catalogue_tags(path: &Path, recipe: &RecipeName) -> Result<Vec<String>, VersionsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(VersionsError::Io {
                action: "cannot read the recipe catalogue",
                path: path.to_owned(),
                source,
            })
        }
    };
    let catalogue_error = |reason: String| VersionsError::Catalogue {
        path: path.to_owned(),
        reason,
    };
    let catalogue: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| catalogue_error(format!("not JSON ({error})")))?;
    let Some(entry) = catalogue.get(recipe.as_str()) else {
        return Ok(Vec::new());
    };
    let versions = match entry.get("versions") {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Array(versions)) => versions,
        Some(_) => return Err(catalogue_error(format!("{recipe}.versions is not a list"))),
    };
    let mut tags = Vec::new();
    for version in versions {
        match version {
            serde_json::Value::Object(by_tag) => tags.extend(by_tag.keys().cloned()),
            serde_json::Value::String(tag) => tags.push(tag.clone()),
            _ => {
                return Err(catalogue_error(format!(
                    "{recipe}.versions holds an entry that is neither an object keyed by tag nor a tag"
                )))
            }
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    /// One case: files to create under a fresh `ABRA_DIR`, then the expected
    /// versions (or the start of the expected error).
    fn check(files: &[(&str, &str)], expect: Result<&[&str], &str>) {
        let directory = tempfile::tempdir().unwrap();
        for (path, contents) in files {
            let path = directory.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        let recipe: RecipeName = "fixture-web".parse().unwrap();
        let result = available_versions(directory.path(), &recipe)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|error| {
                error
                    .to_string()
                    .replace(&directory.path().display().to_string(), "$ABRA_DIR")
            });
        match (result, expect) {
            (Ok(versions), Ok(expected)) => assert_eq!(versions, expected, "files {files:?}"),
            (Err(error), Err(expected)) => {
                assert!(error.starts_with(expected), "{error}\ndoes not start with\n{expected}")
            }
            (result, expect) => panic!("files {files:?}: got {result:?}, expected {expect:?}"),
        }
    }

    fn as_ref((path, contents): &(String, String)) -> (&str, &str) {
        (path, contents)
    }

    fn loose(tag: &str) -> (String, String) {
        (format!("recipes/fixture-web/.git/refs/tags/{tag}"), format!("{SHA}\n"))
    }

    #[test]
    fn versions_come_from_tags_or_the_catalogue() {
        let [l100, l110, l_old, l_image] = ["1.0.0+1.0", "1.1.0+1.1", "5.2_1", "16.4.0-alpine"].map(loose);
        let packed = format!(
            "# pack-refs with: peeled fully-peeled sorted \n{SHA} refs/heads/main\n{SHA} refs/tags/1.1.0+1.1\n^{SHA}\n{SHA} refs/tags/2.0.0+2.0\n{SHA} refs/tags/16.4.0-alpine\n{SHA} refs/tags/0.9.0\n"
        );
        let packed = ("recipes/fixture-web/.git/packed-refs", packed.as_str());
        let catalogue = (
            "catalogue/recipes.json",
            r#"{"fixture-web": {"name": "fixture-web", "versions": [
                {"1.0.0+1.0": {"app": {"image": "x", "tag": "1.0"}}},
                {"3.0.0+3.0": {}}, "3.1.0+3.1", {"16.4.0-alpine": {}}]},
               "other": {"versions": [{"9.0.0+9": {}}]}}"#,
        );

        // Loose refs only, in any order, with junk around them.
        check(
            &[as_ref(&l110), as_ref(&l100), as_ref(&l_old), as_ref(&l_image)],
            Ok(&["1.0.0+1.0", "1.1.0+1.1"]),
        );
        // Packed refs only: branches, peeled lines, image-like tags skipped.
        check(&[packed], Ok(&["0.9.0", "1.1.0+1.1", "2.0.0+2.0"]));
        // Both, overlapping: deduplicated and sorted.
        check(
            &[as_ref(&l100), as_ref(&l110), packed],
            Ok(&["0.9.0", "1.0.0+1.0", "1.1.0+1.1", "2.0.0+2.0"]),
        );
        // Nested tag names are read (and are no versions).
        check(
            &[
                ("recipes/fixture-web/.git/refs/tags/release/1.0.0+1.0", SHA),
                as_ref(&l110),
            ],
            Ok(&["1.1.0+1.1"]),
        );
        // Tags win over the catalogue.
        check(&[as_ref(&l100), catalogue], Ok(&["1.0.0+1.0"]));
        // Only junk tags: the catalogue decides.
        check(
            &[as_ref(&l_old), catalogue],
            Ok(&["1.0.0+1.0", "3.0.0+3.0", "3.1.0+3.1"]),
        );
        // Catalogue only.
        check(&[catalogue], Ok(&["1.0.0+1.0", "3.0.0+3.0", "3.1.0+3.1"]));
        // Nothing at all, or only junk, or a catalogue without the recipe.
        let nothing = "no versions of recipe fixture-web: no release tags in $ABRA_DIR/recipes/fixture-web and no entry in $ABRA_DIR/catalogue/recipes.json";
        check(&[], Err(nothing));
        check(&[as_ref(&l_old), as_ref(&l_image)], Err(nothing));
        check(
            &[("catalogue/recipes.json", r#"{"other": {"versions": []}}"#)],
            Err(nothing),
        );
        // A broken catalogue is an error that says so.
        check(
            &[("catalogue/recipes.json", "{not json")],
            Err("$ABRA_DIR/catalogue/recipes.json: cannot read the recipe catalogue: not JSON"),
        );
        check(
            &[("catalogue/recipes.json", r#"{"fixture-web": {"versions": {"1.0.0": {}}}}"#)],
            Err("$ABRA_DIR/catalogue/recipes.json: cannot read the recipe catalogue: fixture-web.versions is not a list"),
        );
    }

    #[test]
    fn release_tags_are_told_apart_from_other_tags() {
        for (tag, release) in [
            ("1.3.0+6.42.0-alpine", true),
            ("1.0.0+16.4.0-alpine", true),
            ("0.9.0", true),
            ("16.4.0-alpine", false),
            ("1.0.0-rc.1+1.0", false),
            ("5.2_1", false),
            ("v1.0.0", false),
            ("latest", false),
            ("", false),
        ] {
            assert_eq!(release_version(tag).is_some(), release, "{tag:?}");
        }
    }
}
