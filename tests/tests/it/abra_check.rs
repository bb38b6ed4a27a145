//! `scripts/check-abra`, the check of the agent's abra command lines against an
//! abra binary's own `--help`, run here against the abra double's help (which
//! mirrors real abra's flags), so that the script itself is exercised: it
//! passes where every flag and argument fits, and names what does not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ccfleet_tests::binary;
use ccfleet_tests::docker::abra_double;

fn check_abra(abra: &Path) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-abra");
    Command::new("bash")
        .arg(script)
        .arg("--abra")
        .arg(abra)
        .arg("--agent")
        .arg(binary("ccfleet-agent"))
        .output()
        .expect("bash runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A stand-in abra: the double, its help edited by `sed` (the expression).
fn edited_double(directory: &Path, sed: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = directory.join("abra");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n{:?} \"$@\" | sed -e {sed:?}\n",
            abra_double().display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn every_command_line_the_agent_runs_fits_the_doubles_help() {
    let output = check_abra(&abra_double());
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("abra: abra version 0.0.0-ccfleet-double"), "{said}");
    // One line per shape the agent prints, each checked.
    let shapes = Command::new(binary("ccfleet-agent"))
        .arg("abra-commands")
        .output()
        .unwrap();
    let shapes = String::from_utf8_lossy(&shapes.stdout).into_owned();
    assert!(shapes.lines().count() >= 9, "{shapes}");
    for shape in shapes.lines().filter(|shape| *shape != "--version") {
        assert!(
            said.contains(&format!("ok   {shape}\n")),
            "{shape} not checked:\n{said}"
        );
    }
}

#[test]
fn a_flag_or_argument_abra_does_not_take_is_named() {
    let directory = tempfile::tempdir().unwrap();
    // An abra without --offline, whose `recipe fetch` takes no recipe.
    let abra = edited_double(
        directory.path(),
        "/--offline/d; s/abra recipe fetch \\[recipe | --all\\]/abra recipe fetch/",
    );
    let output = check_abra(&abra);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    for line in [
        "FAIL abra app deploy: no flag -o in its --help (the agent passes it)",
        "FAIL abra app rollback: no flag -o in its --help (the agent passes it)",
        "FAIL abra recipe fetch: its usage (abra recipe fetch [flags]) takes 0 to 0 arguments, the agent passes 1",
        "ok   app undeploy -n <domain>",
    ] {
        assert!(said.contains(line), "{line:?} missing from:\n{said}");
    }
    assert!(said.contains("check-abra: 5 problem(s)"), "{said}");
}
