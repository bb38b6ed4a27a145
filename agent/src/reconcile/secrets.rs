//! Declared secrets: inserted from their files when an app is set up, and
//! rotated when a file's content changes (a sops-nix rotation, a new file).
//!
//! Docker secrets cannot be changed, so a rotation is a new secret version:
//! `SECRET_<NAME>_VERSION` goes from `vN` to `vN+1` in the app's env file, abra
//! inserts `<stack>_<name>_vN+1` from the file, and the app is redeployed at
//! the version it runs. What was inserted is remembered per app and secret as
//! the SHA-256 of the file content (`agent::journal`, `secrets/`), written
//! only after the insert succeeded; the value itself is never logged,
//! journaled or reported. Whether to rotate is decided by the pure
//! [`secret_step`].
//!
//! Crash safety: the reconciler owes the app a redeploy (the pending ledger)
//! before any of this runs. The env file is bumped before the insert, and the
//! journal still names the old version until the insert succeeded, so an
//! interrupted rotation is seen next time as "the env file is ahead of the
//! journal" and resumed at that version ([`SecretStep::Resume`]); the insert
//! skips a secret version that exists already.

use std::path::Path;

use sha2::Digest;

use super::{ReconcileAction, ReconcileErrorKind, Reconciler};
use crate::abra::recipe_secrets::secret_set_up;
use crate::abra::AbraError;
use crate::config::AppConfig;
use crate::journal::InsertedSecret;
use crate::upgrade::PauseHook;

/// Secret version abra uses when the env file names none.
pub const DEFAULT_SECRET_VERSION: &str = "v1";

/// What to do about one declared secret of an existing app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretStep {
    /// Docker holds the file's content at the version the env file names.
    Keep,
    /// The file changed (or what Docker holds is unknown): insert it as the
    /// next version, `to`, after bumping the env file to it.
    Rotate { to: String },
    /// The env file names a version the journal does not (an interrupted
    /// rotation, or an operator's edit): insert the file at that version
    /// (skipped if it exists) and record it.
    Resume { version: String },
    /// A version that is not `v<number>`: nothing can be derived from it.
    Refuse { reason: String },
}

/// Decides whether a declared secret rotates, from what the journal recorded
/// of it (`None`: nothing), the SHA-256 of its file now, and the version the
/// env file names (`None`: no `SECRET_<NAME>_VERSION` line, abra's `v1`).
pub fn secret_step(recorded: Option<&InsertedSecret>, current_sha256: &str, env_version: Option<&str>) -> SecretStep {
    let env_version = env_version.unwrap_or(DEFAULT_SECRET_VERSION);
    let Some(env_number) = version_number(env_version) else {
        return SecretStep::Refuse {
            reason: format!("the env file names secret version {env_version:?}, not v<number>"),
        };
    };
    let Some(recorded) = recorded else {
        return SecretStep::Rotate {
            to: format!("v{}", env_number.saturating_add(1)),
        };
    };
    let Some(recorded_number) = version_number(&recorded.version) else {
        return SecretStep::Refuse {
            reason: format!("the journal names secret version {:?}, not v<number>", recorded.version),
        };
    };
    if env_number > recorded_number {
        return SecretStep::Resume {
            version: env_version.to_owned(),
        };
    }
    if recorded.sha256.as_deref() == Some(current_sha256) {
        return SecretStep::Keep;
    }
    SecretStep::Rotate {
        to: format!("v{}", env_number.max(recorded_number).saturating_add(1)),
    }
}

/// `vN` -> N (N ≥ 1).
fn version_number(version: &str) -> Option<u32> {
    let digits = version.strip_prefix('v')?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|number| *number >= 1)
}

/// The env key abra reads the secret's version from.
pub fn version_key(name: &str) -> String {
    format!("SECRET_{}_VERSION", name.to_uppercase())
}

/// The SHA-256 (lowercase hex) of the file's content.
pub fn file_sha256(file: &Path) -> std::io::Result<String> {
    std::fs::read(file).map(|content| hex::encode(sha2::Sha256::digest(&content)))
}

fn abra_step(step: String) -> impl FnOnce(AbraError) -> ReconcileErrorKind {
    move |error| ReconcileErrorKind::Abra {
        step,
        error: Box::new(error),
    }
}

fn insert_step(step: String) -> impl FnOnce(AbraError) -> ReconcileErrorKind {
    move |error| ReconcileErrorKind::SecretInsert {
        step,
        error: Box::new(error),
    }
}

fn journal_step(step: &'static str) -> impl FnOnce(crate::journal::JournalError) -> ReconcileErrorKind {
    move |error| ReconcileErrorKind::Journal {
        step: step.into(),
        error: Box::new(error),
    }
}

impl Reconciler {
    /// Inserts every declared secret at the version the recipe's env names
    /// (skipping those that exist), records their hashes, then has abra
    /// generate the recipe's other secrets (see
    /// [`secret_set_up`](crate::abra::recipe_secrets::secret_set_up)). A
    /// declared secret the recipe names no version for refuses the whole
    /// set-up before anything is inserted.
    pub(super) async fn set_up_secrets(
        &self,
        app: &AppConfig,
        actions: &mut Vec<ReconcileAction>,
    ) -> Result<(), ReconcileErrorKind> {
        let recipe_secrets = self
            .abra()
            .recipe_secrets(&app.recipe, &app.domain)
            .await
            .map_err(abra_step("read the recipe's secrets".into()))?;
        let to_generate = secret_set_up(app.secrets.keys().map(String::as_str), &recipe_secrets).map_err(|names| {
            ReconcileErrorKind::SecretUndeclared {
                names,
                recipe: app.recipe.clone(),
            }
        })?;
        for (name, file) in &app.secrets {
            let secret_version = recipe_secrets.versions[name].as_str();
            // Hashed before abra reads the file: if it changes in between,
            // the hash differs from the file later and the secret rotates
            // once more, which is safe; the other order could record a
            // content Docker does not hold. Unreadable now: abra's insert
            // says why, and an unknown hash rotates at the next reconcile.
            let sha256 = file_sha256(file).ok();
            self.host
                .abra()
                .secret_insert(&app.recipe, &app.domain, name, secret_version, file)
                .await
                .map_err(insert_step(format!("insert secret {name} (abra app secret insert)")))?;
            self.journal()
                .record_inserted_secret(
                    &app.domain,
                    name,
                    InsertedSecret {
                        version: secret_version.to_owned(),
                        sha256,
                    },
                )
                .map_err(journal_step("record an inserted secret"))?;
        }
        if !app.secrets.is_empty() {
            actions.push(ReconcileAction::SecretsInserted {
                names: app.secrets.keys().cloned().collect(),
            });
        }
        if !to_generate.is_empty() {
            self.host
                .abra()
                .secret_generate_all(&app.recipe, &app.domain)
                .await
                .map_err(abra_step(
                    "generate the other secrets (abra app secret generate)".into(),
                ))?;
            actions.push(ReconcileAction::SecretsGenerated);
        }
        Ok(())
    }

    /// Rotates every declared secret of an existing app whose file changed
    /// (see the module comment); returns the names rotated. The caller owes
    /// the app a redeploy (pending ledger) before calling this.
    pub(super) async fn rotate_secrets(
        &self,
        app: &AppConfig,
        actions: &mut Vec<ReconcileAction>,
    ) -> Result<Vec<String>, ReconcileErrorKind> {
        if app.secrets.is_empty() {
            return Ok(Vec::new());
        }
        let journal = self.journal();
        let env_versions = self
            .abra()
            .read_env_file(&app.domain)
            .map_err(abra_step("read the app's env file".into()))?
            .map(|env| env.secret_versions())
            .unwrap_or_default();
        let undeclared: Vec<String> = app
            .secrets
            .keys()
            .filter(|name| !env_versions.contains_key(*name))
            .cloned()
            .collect();
        if !undeclared.is_empty() {
            return Err(ReconcileErrorKind::SecretUndeclared {
                names: undeclared,
                recipe: app.recipe.clone(),
            });
        }
        let recorded = journal
            .inserted_secrets(&app.domain)
            .map_err(journal_step("read the app's inserted secrets"))?;
        let pause = PauseHook::from_environment();
        let mut rotated = Vec::new();
        for (name, file) in &app.secrets {
            let current = file_sha256(file).map_err(|error| ReconcileErrorKind::SecretFile {
                name: name.clone(),
                path: file.clone(),
                reason: error.to_string(),
            })?;
            let env_version = env_versions.get(name).map(String::as_str);
            let version = match secret_step(recorded.get(name), &current, env_version) {
                SecretStep::Keep => continue,
                SecretStep::Refuse { reason } => {
                    return Err(ReconcileErrorKind::SecretVersion {
                        name: name.clone(),
                        reason,
                    })
                }
                SecretStep::Resume { version } => {
                    tracing::info!(app = %app.domain, secret = %name, %version, "resuming a secret rotation");
                    version
                }
                SecretStep::Rotate { to } => {
                    tracing::info!(app = %app.domain, secret = %name, version = %to, "secret file changed: rotating");
                    if !recorded.contains_key(name) {
                        // Set up before hashes were recorded (or declared
                        // since): its content is unknown. Recorded as such
                        // at the env's version first, so that a crash after
                        // the bump below resumes instead of bumping again.
                        journal
                            .record_inserted_secret(
                                &app.domain,
                                name,
                                InsertedSecret {
                                    version: env_version.unwrap_or(DEFAULT_SECRET_VERSION).to_owned(),
                                    sha256: None,
                                },
                            )
                            .map_err(journal_step("record a secret of unknown content"))?;
                    }
                    to
                }
            };
            self.host
                .abra()
                .write_env_keys(
                    &app.recipe,
                    &app.domain,
                    [(version_key(name).as_str(), version.as_str())],
                )
                .await
                .map_err(abra_step(format!("bump the version of secret {name} in the env file")))?;
            pause.before("secret-inserting").await;
            self.host
                .abra()
                .secret_insert(&app.recipe, &app.domain, name, &version, file)
                .await
                .map_err(insert_step(format!(
                    "insert secret {name} {version} (abra app secret insert)"
                )))?;
            journal
                .record_inserted_secret(
                    &app.domain,
                    name,
                    InsertedSecret {
                        version,
                        sha256: Some(current),
                    },
                )
                .map_err(journal_step("record an inserted secret"))?;
            rotated.push(name.clone());
        }
        if !rotated.is_empty() {
            actions.push(ReconcileAction::SecretsRotated { names: rotated.clone() });
        }
        Ok(rotated)
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn secret_steps() {
        let recorded = |version: &str, sha256: Option<&str>| InsertedSecret {
            version: version.into(),
            sha256: sha256.map(str::to_owned),
        };
        let rows = [
            // Unchanged file at the env's version: nothing.
            (Some(recorded("v1", Some("aaa"))), "aaa", Some("v1")),
            (Some(recorded("v1", Some("aaa"))), "aaa", None),
            // Changed file: the next version.
            (Some(recorded("v1", Some("aaa"))), "bbb", Some("v1")),
            (Some(recorded("v1", Some("aaa"))), "bbb", None),
            (Some(recorded("v9", Some("aaa"))), "bbb", Some("v9")),
            // Nothing recorded, or unknown content: rotate to be sure.
            (None, "aaa", Some("v1")),
            (None, "aaa", None),
            (None, "aaa", Some("v4")),
            (Some(recorded("v2", None)), "aaa", Some("v2")),
            // The env file is ahead of the journal: an interrupted rotation.
            (Some(recorded("v1", Some("aaa"))), "bbb", Some("v2")),
            (Some(recorded("v1", Some("aaa"))), "aaa", Some("v3")),
            (Some(recorded("v1", None)), "aaa", Some("v2")),
            // The env file is behind the journal (an operator went back):
            // kept while the file is unchanged, above both when it changes.
            (Some(recorded("v3", Some("aaa"))), "aaa", Some("v2")),
            (Some(recorded("v3", Some("aaa"))), "bbb", Some("v2")),
            // Versions that are not v<number>.
            (Some(recorded("v1", Some("aaa"))), "aaa", Some("latest")),
            (Some(recorded("v1", Some("aaa"))), "aaa", Some("v0")),
            (Some(recorded("v1", Some("aaa"))), "aaa", Some("v")),
            (Some(recorded("v-1", Some("aaa"))), "aaa", Some("v1")),
        ];
        let lines: Vec<String> = rows
            .iter()
            .map(|(recorded, current, env)| {
                let step = match secret_step(recorded.as_ref(), current, *env) {
                    SecretStep::Keep => "keep".to_owned(),
                    SecretStep::Rotate { to } => format!("rotate to {to}"),
                    SecretStep::Resume { version } => format!("resume at {version}"),
                    SecretStep::Refuse { reason } => format!("refuse: {reason}"),
                };
                let recorded = match recorded {
                    None => "-".to_owned(),
                    Some(recorded) => format!("{} {}", recorded.version, recorded.sha256.as_deref().unwrap_or("?")),
                };
                format!(
                    "recorded {recorded}, file {current}, env {}: {step}",
                    env.unwrap_or("-")
                )
            })
            .collect();
        expect![[r#"
            recorded v1 aaa, file aaa, env v1: keep
            recorded v1 aaa, file aaa, env -: keep
            recorded v1 aaa, file bbb, env v1: rotate to v2
            recorded v1 aaa, file bbb, env -: rotate to v2
            recorded v9 aaa, file bbb, env v9: rotate to v10
            recorded -, file aaa, env v1: rotate to v2
            recorded -, file aaa, env -: rotate to v2
            recorded -, file aaa, env v4: rotate to v5
            recorded v2 ?, file aaa, env v2: rotate to v3
            recorded v1 aaa, file bbb, env v2: resume at v2
            recorded v1 aaa, file aaa, env v3: resume at v3
            recorded v1 ?, file aaa, env v2: resume at v2
            recorded v3 aaa, file aaa, env v2: keep
            recorded v3 aaa, file bbb, env v2: rotate to v4
            recorded v1 aaa, file aaa, env latest: refuse: the env file names secret version "latest", not v<number>
            recorded v1 aaa, file aaa, env v0: refuse: the env file names secret version "v0", not v<number>
            recorded v1 aaa, file aaa, env v: refuse: the env file names secret version "v", not v<number>
            recorded v-1 aaa, file aaa, env v1: refuse: the journal names secret version "v-1", not v<number>"#]]
        .assert_eq(&lines.join("\n"));
    }

    #[test]
    fn version_keys_are_abras() {
        assert_eq!(version_key("db_password"), "SECRET_DB_PASSWORD_VERSION");
        assert_eq!(version_key("api_key2"), "SECRET_API_KEY2_VERSION");
    }
}
