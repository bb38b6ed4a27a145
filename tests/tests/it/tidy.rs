//! Tidy checks: the architecture invariants of `ARCHITECTURE.md`, enforced
//! by reading the source tree, so that they cannot erode silently.
//!
//! Each check reads every `.rs` file of the workspace (not `target/`) and
//! lists the offending files and lines; the matchers are tested on small
//! examples first, so that a check that could never fail would be noticed.

use std::path::{Path, PathBuf};

/// This file, which spells the banned names in its examples.
const THIS_FILE: &str = "tests/tests/it/tidy.rs";

/// The workspace root (this crate lives in `tests/`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

/// Every `.rs` file of the workspace, relative to the root, sorted; build
/// output and hidden directories are skipped.
fn rust_files() -> Vec<(String, String)> {
    fn walk(root: &Path, directory: &Path, files: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(directory).unwrap_or_else(|error| panic!("{}: {error}", directory.display())) {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(root, &path, files);
                }
            } else if name.ends_with(".rs") {
                let relative = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{relative}: {error}"));
                files.push((relative, text));
            }
        }
    }
    let root = workspace_root();
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files.sort();
    assert!(
        files.iter().any(|(path, _)| path == "agent/src/docker.rs") && files.len() > 40,
        "the source tree was not found under {}",
        root.display()
    );
    files
}

/// The code part of a line: what comes before a `//` comment. (A `//` inside
/// a string literal ends the code part early; that can only hide code, which
/// the checks below accept as a limit, never flag comments as code.)
fn code_of(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// Whether `code` names `word` as an identifier (not as part of a longer one).
fn names(code: &str, word: &str) -> bool {
    let is_identifier = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(word).any(|(start, _)| {
        let before = code[..start].chars().next_back();
        let after = code[start + word.len()..].chars().next();
        !before.is_some_and(is_identifier) && !after.is_some_and(is_identifier)
    })
}

/// `path:line: text` for every code line of a file outside `allowed` that
/// matches `offends`.
fn offending_lines(allowed: impl Fn(&str) -> bool, offends: impl Fn(&str) -> bool) -> Vec<String> {
    rust_files()
        .iter()
        .filter(|(path, _)| !allowed(path))
        .flat_map(|(path, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, line)| offends(code_of(line)))
                .map(move |(index, line)| format!("{path}:{}: {}", index + 1, line.trim()))
        })
        .collect()
}

#[test]
fn the_matchers_see_code_and_skip_comments() {
    for (line, word, expected) in [
        ("use sled::Db;", "sled", true),
        ("    let db = sled::open(path)?;", "sled", true),
        (
            "/// Directory holding the server's state (the sled database).",
            "sled",
            false,
        ),
        ("let tree = db.open_tree(\"x\")?; // sled tree", "sled", false),
        ("let sledge = 1;", "sled", false),
        ("fn unsled() {}", "sled", false),
        ("use bollard::models::Volume;", "bollard", true),
        (
            "let command = std::process::Command::new(\"abra\");",
            "Command::new",
            true,
        ),
        ("// Command::new is banned", "Command::new", false),
    ] {
        assert_eq!(names(code_of(line), word), expected, "{line:?} names {word}");
    }
}

#[test]
fn only_server_store_names_sled() {
    let offences = offending_lines(
        |path| path.starts_with("server/src/store") || path == THIS_FILE,
        |code| names(code, "sled"),
    );
    assert!(
        offences.is_empty(),
        "sled outside server::store:\n{}",
        offences.join("\n")
    );
    for manifest in [
        "agent/Cargo.toml",
        "cli/Cargo.toml",
        "proto/Cargo.toml",
        "tests/Cargo.toml",
    ] {
        let text = std::fs::read_to_string(workspace_root().join(manifest)).unwrap();
        assert!(
            !text.lines().any(|line| names(line, "sled")),
            "{manifest} depends on sled"
        );
    }
}

#[test]
fn only_agent_docker_names_bollard() {
    let offences = offending_lines(
        |path| path == "agent/src/docker.rs" || path == THIS_FILE,
        |code| names(code, "bollard"),
    );
    assert!(
        offences.is_empty(),
        "bollard outside agent::docker:\n{}",
        offences.join("\n")
    );
    for manifest in [
        "server/Cargo.toml",
        "cli/Cargo.toml",
        "proto/Cargo.toml",
        "tests/Cargo.toml",
    ] {
        let text = std::fs::read_to_string(workspace_root().join(manifest)).unwrap();
        assert!(
            !text.lines().any(|line| names(line, "bollard")),
            "{manifest} depends on bollard"
        );
    }
}

#[test]
fn only_agent_process_starts_programs() {
    // The tests crate starts the real binaries, docker and nix as an
    // operator would (it opts out of clippy's `disallowed-methods` too).
    let offences = offending_lines(
        |path| path == "agent/src/process.rs" || path.starts_with("tests/"),
        |code| names(code, "Command::new"),
    );
    assert!(
        offences.is_empty(),
        "programs started outside agent::process:\n{}",
        offences.join("\n")
    );
}

#[test]
fn every_rust_file_opens_with_a_module_comment() {
    let missing: Vec<String> = rust_files()
        .into_iter()
        .filter(|(_, text)| !text.starts_with("//!"))
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "files that do not start with a `//!` line:\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_test_is_ignored_or_expects_a_panic() {
    // Spelled in pieces so that this file does not match itself.
    let banned = [concat!("#[", "ignore"), concat!("#[", "should_panic")];
    let offences = offending_lines(
        |_| false,
        |code| banned.iter().any(|attribute| code.contains(attribute)),
    );
    assert!(
        offences.is_empty(),
        "ignored or panic-expecting tests (assert the error instead):\n{}",
        offences.join("\n")
    );
}

/// abra's subcommands as the agent spells them, `["app", "deploy", ...]`:
/// the first word and the words that may follow it.
const ABRA_SUBCOMMANDS: &[(&str, &[&str])] = &[
    (
        "app",
        &[
            "new", "deploy", "upgrade", "rollback", "undeploy", "secret", "backup", "restore",
        ],
    ),
    ("recipe", &["fetch", "versions"]),
    ("server", &["add"]),
];

/// Whether a line of code builds an abra command line: spells one of abra's
/// subcommands as two string literals in a row (`"app", "deploy"`, or
/// `.arg("app").arg("deploy")` on one line), or makes a `CommandSpec` whose
/// program names abra. A chain of `.arg` calls split over lines is not seen:
/// a limit of this line-by-line check.
fn builds_abra_command_line(code: &str) -> bool {
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let spells_subcommand = ABRA_SUBCOMMANDS.iter().any(|(first, rest)| {
        rest.iter().any(|second| {
            compact.contains(&format!("\"{first}\",\"{second}\""))
                || compact.contains(&format!("arg(\"{first}\").arg(\"{second}\")"))
        })
    });
    let spec_for_abra = compact.contains("CommandSpec::new(") && compact.to_lowercase().contains("abra");
    spells_subcommand || spec_for_abra
}

/// The production part of a source file: none of a test-only file (the
/// tests crate's `tests/`, `tests.rs`, `*_tests.rs`), and of other files
/// what comes before their first `#[cfg(test)]`. Tests may spell abra's
/// command lines to check them (the double's contract in `docker.rs`).
fn production_code<'a>(path: &str, text: &'a str) -> &'a str {
    let file = path.rsplit('/').next().unwrap_or(path);
    if path.starts_with("tests/tests/") || file == "tests.rs" || file.ends_with("_tests.rs") {
        return "";
    }
    text.split("#[cfg(test)]").next().unwrap_or("")
}

#[test]
fn the_abra_command_line_matcher_sees_what_builds_one() {
    for (line, expected) in [
        (r#"let mut arguments = vec!["app", "deploy", "-n", "-c"];"#, true),
        (r#"self.run(&["recipe", "fetch", recipe.as_str()]).await"#, true),
        (r#"run(&["server",  "add", "--local"])"#, true),
        (r#"spec.arg("app").arg("upgrade")"#, true),
        (r#"CommandSpec::new("/usr/bin/abra", "/", timeout)"#, true),
        (r#"CommandSpec::new("/bin/sh", "/", timeout).arg("-c")"#, false),
        (r#"let label = ["app", "domain"];"#, false),
        (r#"format!("app {domain} deployed")"#, false),
    ] {
        assert_eq!(builds_abra_command_line(line), expected, "{line:?}");
    }
    let text = "fn f() {}\n#[cfg(test)]\nmod tests { const A: [&str; 2] = [\"app\", \"deploy\"]; }\n";
    assert_eq!(production_code("agent/src/x.rs", text), "fn f() {}\n");
    assert_eq!(production_code("tests/tests/it/docker.rs", text), "");
}

/// abra's interface changes in one place: nothing but `agent::abra`
/// (`agent/src/abra.rs` and `agent/src/abra/`) builds an abra command line
/// in production code.
#[test]
fn only_agent_abra_builds_abra_command_lines() {
    let offences: Vec<String> = rust_files()
        .iter()
        .filter(|(path, _)| path != "agent/src/abra.rs" && !path.starts_with("agent/src/abra/") && path != THIS_FILE)
        .flat_map(|(path, text)| {
            production_code(path, text)
                .lines()
                .enumerate()
                .filter(|(_, line)| builds_abra_command_line(code_of(line)))
                .map(move |(index, line)| format!("{path}:{}: {}", index + 1, line.trim()))
        })
        .collect();
    assert!(
        offences.is_empty(),
        "abra command lines outside agent::abra:\n{}",
        offences.join("\n")
    );
    // The check sees the real ones: agent::abra spells them.
    let abra = std::fs::read_to_string(workspace_root().join("agent/src/abra.rs")).unwrap();
    assert!(
        production_code("agent/src/abra.rs", &abra)
            .lines()
            .any(|line| builds_abra_command_line(code_of(line))),
        "agent/src/abra.rs builds no abra command line the matcher sees"
    );
}
