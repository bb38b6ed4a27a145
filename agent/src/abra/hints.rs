//! `check-config`'s hints about typos: a declared recipe that the local abra
//! does not know (no checkout under `$ABRA_DIR/recipes/`, no catalogue
//! entry), and a declared version that is not a release of its recipe (the
//! checkout's tags, as `versions` reads them), each naming the nearest names.
//! Warnings only: abra may simply not have fetched the recipe yet. Nothing is
//! said when abra's state is not readable.
//!
//! The decisions are pure ([`nearest_names`], [`app_hints`]); [`hints`]
//! reads abra's files for them.

use std::collections::BTreeSet;
use std::path::Path;

use ccfleet_proto::{CoopVersion, RecipeName};

use super::versions;
use crate::config::{AbraConfig, AppConfig};

/// Up to three of `candidates` closest to `name` (edit distance, a swap of
/// two neighbours counting as one edit), nearest first, then by name; only
/// those at most a third of `name`'s length away (at least 2 edits), so
/// that a hint is a likely typo, not a random name.
pub fn nearest_names<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let bound = (name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter(|candidate| *candidate != name)
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= bound)
        .collect();
    scored.sort();
    scored.dedup();
    scored.into_iter().take(3).map(|(_, name)| name.to_owned()).collect()
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of two neighbouring characters, each one edit.
fn edit_distance(left: &str, right: &str) -> usize {
    let left: Vec<char> = left.chars().collect();
    let right: Vec<char> = right.chars().collect();
    let width = right.len() + 1;
    let mut table = vec![0usize; (left.len() + 1) * width];
    for (i, row) in table.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in table.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=left.len() {
        for j in 1..=right.len() {
            let cost = usize::from(left[i - 1] != right[j - 1]);
            let mut best = (table[(i - 1) * width + j] + 1)
                .min(table[i * width + j - 1] + 1)
                .min(table[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && left[i - 1] == right[j - 2] && left[i - 2] == right[j - 1] {
                best = best.min(table[(i - 2) * width + j - 2] + 1);
            }
            table[i * width + j] = best;
        }
    }
    table[left.len() * width + right.len()]
}

/// The warnings for one app, given the recipes the local abra knows and the
/// releases of the app's recipe (`None`: they could not be read, so nothing
/// is said about the version).
pub fn app_hints(
    app: &AppConfig,
    known_recipes: &BTreeSet<String>,
    releases: Option<&[CoopVersion]>,
    recipes_dir: &Path,
) -> Vec<String> {
    let recipe = app.recipe.as_str();
    if !known_recipes.contains(recipe) {
        let nearest = nearest_names(recipe, known_recipes.iter().map(String::as_str));
        let hint = if nearest.is_empty() {
            String::new()
        } else {
            format!(" (nearest: {})", nearest.join(", "))
        };
        return vec![format!(
            "app {:?}: recipe {recipe} is unknown to the local abra (no checkout in {} and no catalogue \
             entry){hint}; check the name, or fetch it with `abra recipe fetch {recipe}`",
            app.domain.as_str(),
            recipes_dir.display()
        )];
    }
    match releases {
        Some(releases) if !releases.is_empty() && !releases.contains(&app.version) => vec![format!(
            "app {:?}: version {} is not a release of recipe {recipe} (nearest: {})",
            app.domain.as_str(),
            app.version,
            versions::nearest_releases(releases, &app.version)
        )],
        _ => Vec::new(),
    }
}

/// The recipes abra knows: its checkouts and its catalogue's entries;
/// `None` when `$ABRA_DIR/recipes/` cannot be read.
fn known_recipes(abra_dir: &Path) -> Option<BTreeSet<String>> {
    let entries = std::fs::read_dir(abra_dir.join("recipes")).ok()?;
    let mut known: BTreeSet<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    let catalogue = std::fs::read_to_string(versions::catalogue_file(abra_dir))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    if let Some(serde_json::Value::Object(recipes)) = catalogue {
        known.extend(recipes.keys().cloned());
    }
    Some(known)
}

/// Every warning for the declared `apps`, reading abra's state under
/// `abra.dir`; none when it is not readable.
pub fn hints(abra: &AbraConfig, apps: &[AppConfig]) -> Vec<String> {
    let Some(known) = known_recipes(&abra.dir) else {
        return Vec::new();
    };
    let recipes_dir = abra.dir.join("recipes");
    let mut releases_of: std::collections::BTreeMap<&RecipeName, Option<Vec<CoopVersion>>> = Default::default();
    apps.iter()
        .flat_map(|app| {
            let releases = releases_of
                .entry(&app.recipe)
                .or_insert_with(|| versions::available_versions(&abra.dir, &app.recipe).ok())
                .clone();
            app_hints(app, &known, releases.as_deref(), &recipes_dir)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names_are_likely_typos() {
        let known = ["fixture-web", "fixture-secrets", "ghost", "gitea", "mumble", "traefik"];
        let rows: &[(&str, &[&str])] = &[
            ("fixture-wbe", &["fixture-web"]),
            ("fixture-we", &["fixture-web"]),
            ("fixtureweb", &["fixture-web"]),
            ("ghots", &["ghost"]),
            ("gost", &["ghost"]),
            ("gitae", &["gitea"]),
            ("traefic", &["traefik"]),
            ("mumbel", &["mumble"]),
            ("wordpress", &[]),
            ("x", &[]),
            ("ghost", &[]),
        ];
        for (name, expected) in rows {
            assert_eq!(nearest_names(name, known), *expected, "{name}");
        }
        // At most three, nearest first, then by name.
        assert_eq!(
            nearest_names("app-b", ["app-a", "app-c", "app-bb", "app-d", "zzz"]),
            ["app-a", "app-bb", "app-c"]
        );
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }

    fn app(recipe: &str, version: &str) -> AppConfig {
        let text = format!(
            "[server]\nurl = \"https://fleet.example.org\"\n[[app]]\ndomain = \"blog.example.org\"\n\
             recipe = {recipe:?}\nversion = {version:?}\n"
        );
        let config = crate::config::Config::from_toml_str_with_hostname(&text, "agent.toml".as_ref(), "host").unwrap();
        config.apps[0].clone()
    }

    #[test]
    fn what_check_config_warns_about() {
        let known: BTreeSet<String> = ["fixture-web".to_owned(), "ghost".to_owned()].into();
        let releases: Vec<CoopVersion> = ["1.0.0+1.0", "1.1.0+1.1", "1.3.0+1.3", "2.0.0+2.0"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        let dir = Path::new("/abra/recipes");
        let rows: Vec<(AppConfig, Option<&[CoopVersion]>, &str)> = vec![
            (app("fixture-web", "1.1.0+1.1"), Some(&releases), ""),
            (
                app("fixture-wbe", "1.1.0+1.1"),
                Some(&releases),
                "app \"blog.example.org\": recipe fixture-wbe is unknown to the local abra (no checkout in \
                 /abra/recipes and no catalogue entry) (nearest: fixture-web); check the name, or fetch it \
                 with `abra recipe fetch fixture-wbe`",
            ),
            (
                app("wordpress", "1.1.0+1.1"),
                None,
                "app \"blog.example.org\": recipe wordpress is unknown to the local abra (no checkout in \
                 /abra/recipes and no catalogue entry); check the name, or fetch it with `abra recipe \
                 fetch wordpress`",
            ),
            (
                app("fixture-web", "1.2.0+1.2"),
                Some(&releases),
                "app \"blog.example.org\": version 1.2.0+1.2 is not a release of recipe fixture-web \
                 (nearest: 1.0.0+1.0, 1.1.0+1.1, 1.3.0+1.3, 2.0.0+2.0)",
            ),
            (app("fixture-web", "1.2.0+1.2"), None, ""),
            (app("fixture-web", "1.2.0+1.2"), Some(&[]), ""),
        ];
        for (app, releases, expected) in rows {
            let said = app_hints(&app, &known, releases, dir).join("\n");
            assert_eq!(said, expected, "{} {}", app.recipe, app.version);
        }
    }

    #[test]
    fn hints_read_abras_state_and_say_nothing_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let abra = AbraConfig {
            binary: "abra".into(),
            dir: dir.path().join("abra"),
            server: "default".into(),
            command_timeout: std::time::Duration::from_secs(60),
            no_domain_checks: false,
        };
        let apps = [app("fixture-wbe", "1.0.0+1.0")];
        assert_eq!(hints(&abra, &apps), Vec::<String>::new());
        let tags = abra
            .dir
            .join("recipes")
            .join("fixture-web")
            .join(".git")
            .join("refs")
            .join("tags");
        std::fs::create_dir_all(&tags).unwrap();
        std::fs::write(tags.join("1.0.0+1.0"), "0000\n").unwrap();
        let said = hints(&abra, &apps);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("(nearest: fixture-web)"), "{said:?}");
        assert_eq!(hints(&abra, &[app("fixture-web", "1.0.0+1.0")]), Vec::<String>::new());
    }
}
