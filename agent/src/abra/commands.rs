//! The abra commands that work on apps and recipes, one method each, with
//! the command lines the agent passes.

use std::ffi::OsString;
use std::path::Path;

use ccfleet_proto::{CoopVersion, Domain, RecipeName};

use super::*;

impl Abra {
    /// `abra app new -n [-o] --server <server> --domain <domain> <recipe> <version>`
    /// (`-o` when the version's tag is in the local checkout, see [`offline`]).
    pub async fn app_new(
        &self,
        recipe: &RecipeName,
        version: &CoopVersion,
        domain: &Domain,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let version = version.to_string();
        let offline = self.offline_flag(recipe, &version)?;
        let mut arguments = vec!["app", "new", "-n"];
        arguments.extend(offline);
        arguments.extend([
            "--server",
            &self.server,
            "--domain",
            domain.as_str(),
            recipe.as_str(),
            &version,
        ]);
        self.run(&arguments).await
    }

    /// What the recipe declares about the app's secrets (see
    /// [`recipe_secrets`](super::recipe_secrets)): the app's env file and the
    /// compose files its `COMPOSE_FILE` selects in the recipe checkout, which
    /// `app new` left at the app's version. No env file: nothing declared.
    pub async fn recipe_secrets(&self, recipe: &RecipeName, domain: &Domain) -> Result<RecipeSecrets, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        self.recipe_secrets_unlocked(recipe, domain)
    }

    fn recipe_secrets_unlocked(&self, recipe: &RecipeName, domain: &Domain) -> Result<RecipeSecrets, AbraError> {
        let Some(env) = self.read_env_file(domain)? else {
            return Ok(RecipeSecrets::default());
        };
        let checkout = versions::checkout_dir(&self.dir, recipe);
        let mut texts = Vec::new();
        for file in recipe_secrets::compose_files(env.get("COMPOSE_FILE")) {
            let path = checkout.join(&file);
            texts.push(std::fs::read_to_string(&path).map_err(|source| AbraError::Io {
                action: "cannot read a compose file the app's COMPOSE_FILE selects",
                path,
                source,
            })?);
        }
        Ok(recipe_secrets::recipe_secrets(&env, texts.iter().map(String::as_str)))
    }

    /// `abra app secret generate -n --all <domain>`: abra makes the secrets
    /// of [`Abra::recipe_secrets`]'s `generated` that Docker does not have
    /// yet (unconfirmed: the caller runs this once, right after creating the
    /// app and inserting the declared secrets).
    pub async fn secret_generate_all(&self, recipe: &RecipeName, domain: &Domain) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        // The recipe's secrets are known only now (from the env file abra
        // wrote): refuse names Docker would refuse, with the reason.
        if let Some(env) = self.read_env_file(domain)? {
            let stack = stack_name(domain, env.get(STACK_NAME_KEY));
            let secrets = self.recipe_secrets_unlocked(recipe, domain)?;
            for name in secrets.generated {
                let version = &secrets.versions[&name];
                let secret = secret_name(&stack, &name, version);
                if secret.len() > MAX_SECRET_NAME_LENGTH {
                    return Err(AbraError::SecretNameTooLong {
                        domain: domain.clone(),
                        name,
                        reason: too_long(&secret),
                    });
                }
            }
        }
        // abra prints the values it generated: they must not reach logs or reports.
        self.run_redacted(&["app", "secret", "generate", "-n", "--all", domain.as_str()].map(OsString::from))
            .await
    }

    /// `abra app secret insert -n -f <domain> <name> <version> <file>`
    /// (`-f`: the argument is a file holding the value, not the value itself).
    ///
    /// Docker refuses to create a secret version that exists, so with a
    /// Docker handle ([`Abra::with_docker`]) an existing
    /// `<stack>_<name>_<version>` is skipped: a set-up that failed after
    /// inserting some secrets succeeds when retried (ARCHITECTURE.md, "What ccfleet relies on from abra and Docker").
    pub async fn secret_insert(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        name: &str,
        secret_version: &str,
        file: &Path,
    ) -> Result<SecretInsert, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let secret = secret_name(&self.stack_name(domain)?, name, secret_version);
        if secret.len() > MAX_SECRET_NAME_LENGTH {
            return Err(AbraError::SecretNameTooLong {
                domain: domain.clone(),
                name: name.to_owned(),
                reason: too_long(&secret),
            });
        }
        if let Some(docker) = &self.docker {
            if docker.secret_exists(&secret).await? {
                tracing::info!(%domain, %secret, "secret exists already: not inserted again");
                return Ok(SecretInsert::AlreadyExists { secret });
            }
        }
        let file = file.as_os_str().to_owned();
        self.run_redacted(&[
            "app".into(),
            "secret".into(),
            "insert".into(),
            "-n".into(),
            "-f".into(),
            domain.as_str().into(),
            name.into(),
            secret_version.into(),
            file,
        ])
        .await
        .map(SecretInsert::Inserted)
    }

    /// `abra app deploy -n -c [-o] [-f] [-D] <domain> <version>`, with `-f`
    /// to redeploy an app that is already deployed and `-o` when the
    /// version's tag is in the local checkout (see [`offline`]).
    pub async fn deploy(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        version: &CoopVersion,
        force: bool,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let version = version.to_string();
        let mut arguments = vec!["app", "deploy", "-n", "-c"];
        arguments.extend(self.offline_flag(recipe, &version)?);
        if force {
            arguments.push("-f");
        }
        arguments.extend(self.domain_check_flag());
        arguments.extend([domain.as_str(), &version]);
        self.run(&arguments).await
    }

    /// `abra app upgrade -n -c [-o] [-D] <domain> <version>`.
    pub async fn upgrade(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        version: &CoopVersion,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let version = version.to_string();
        self.run_moving("upgrade", recipe, domain, &version).await
    }

    /// `abra app rollback -n -c [-o] [-D] <domain> <version>`: a rollback
    /// goes to a version deployed before, whose tag is in the local checkout,
    /// so it runs offline and no git remote can fail it.
    pub async fn rollback(
        &self,
        recipe: &RecipeName,
        domain: &Domain,
        version: &CoopVersion,
    ) -> Result<CommandOutput, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        let version = version.to_string();
        self.run_moving("rollback", recipe, domain, &version).await
    }

    /// `abra app undeploy -n <domain>`: removes the stack; its volumes and
    /// secrets stay (ARCHITECTURE.md, "What ccfleet relies on from abra and Docker").
    pub async fn undeploy(&self, recipe: &RecipeName, domain: &Domain) -> Result<(), AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        self.run(&["app", "undeploy", "-n", domain.as_str()]).await?;
        Ok(())
    }

    /// The recipe's published versions, oldest first, without duplicates:
    /// `abra recipe fetch <recipe>` clones a missing recipe checkout, `git
    /// fetch --tags origin` in the checkout brings in the releases tagged
    /// since (abra's fetch leaves an existing checkout as it is: ARCHITECTURE.md,
    /// "What ccfleet relies on from abra and Docker"), then its git tags (or
    /// else the cached catalogue) are read from disk (see [`versions`]);
    /// abra's printed tables are never parsed. A failed fetch (no network) is
    /// logged and the versions already on disk are used: stale versions only
    /// delay an upgrade, while the fetch error alone would say nothing about
    /// what is known. When nothing is on disk either, the fetch error is
    /// returned.
    pub async fn available_versions(&self, recipe: &RecipeName) -> Result<Vec<CoopVersion>, AbraError> {
        let _recipe_guard = self.lock_recipe(recipe).await;
        // `abra recipe fetch <recipe>` with no flags (a fetch has no prompt,
        // so no `-n`; `--force` would also reset the shared checkout).
        let fetched = match self.run(&["recipe", "fetch", recipe.as_str()]).await {
            Ok(_) => self.fetch_tags(recipe).await,
            Err(error) => Err(error),
        };
        match (fetched, versions::available_versions(&self.dir, recipe)) {
            (Ok(_), on_disk) => Ok(on_disk?),
            (Err(fetch_error), Ok(versions)) => {
                tracing::warn!(%recipe, error = %fetch_error, "abra recipe fetch failed; using the versions already on disk");
                Ok(versions)
            }
            (Err(fetch_error), Err(_)) => Err(AbraError::Fetch {
                recipe: recipe.clone(),
                source: Box::new(fetch_error),
            }),
        }
    }

    /// `git fetch --quiet --tags origin` in the recipe checkout, when there is
    /// one: only refs are added (the working tree abra switches between tags
    /// is left alone), and a tag that moved on the remote is not taken over
    /// (git refuses it and the fetch fails: the versions on disk are used).
    async fn fetch_tags(&self, recipe: &RecipeName) -> Result<(), AbraError> {
        let checkout = versions::checkout_dir(&self.dir, recipe);
        if !checkout.join(".git").is_dir() {
            return Ok(());
        }
        let mut spec = CommandSpec::new(GIT, &checkout, self.command_timeout).env("GIT_TERMINAL_PROMPT", "0");
        spec.args = GIT_FETCH_TAGS.iter().map(OsString::from).collect();
        for key in PASSED_ENVIRONMENT {
            if let Some(value) = std::env::var_os(key) {
                spec = spec.env(*key, value);
            }
        }
        tracing::info!(command = %spec.command_line(), %recipe, "fetching the recipe's tags");
        process::run(&spec).await?;
        Ok(())
    }

    /// `-D` when domain checks are off (the agent setting `no_domain_checks`).
    fn domain_check_flag(&self) -> Option<&'static str> {
        self.no_domain_checks.then_some("-D")
    }

    /// `-o` when `version`'s tag is already in the recipe's local checkout.
    fn offline_flag(&self, recipe: &RecipeName, version: &str) -> Result<Option<&'static str>, AbraError> {
        let tags = versions::tag_names(&versions::checkout_dir(&self.dir, recipe).join(".git"))?;
        Ok(offline(version, &tags).then_some("-o"))
    }

    /// The app's stack name as abra makes it: `STACK_NAME` from its env file
    /// when set, else the one made from the domain.
    pub fn stack_name(&self, domain: &Domain) -> Result<String, AbraError> {
        let env = self.read_env_file(domain)?;
        Ok(stack_name(domain, env.as_ref().and_then(|env| env.get(STACK_NAME_KEY))))
    }

    /// `abra app <upgrade|rollback> -n -c [-o] [-D] <domain> <version>`.
    async fn run_moving(
        &self,
        action: &str,
        recipe: &RecipeName,
        domain: &Domain,
        version: &str,
    ) -> Result<CommandOutput, AbraError> {
        let mut arguments = vec!["app", action, "-n", "-c"];
        arguments.extend(self.offline_flag(recipe, version)?);
        arguments.extend(self.domain_check_flag());
        arguments.extend([domain.as_str(), version]);
        self.run(&arguments).await
    }
}

/// git, by name on the agent's `PATH` (the NixOS module puts `pkgs.git` there).
const GIT: &str = "git";

/// The arguments of the tag fetch in a recipe checkout (see `Abra::fetch_tags`).
const GIT_FETCH_TAGS: [&str; 4] = ["fetch", "--quiet", "--tags", "origin"];

/// Every abra command line the agent runs, one shape each: subcommand words,
/// flags (`[-x]` only sometimes; `--x=<value>` a flag and its value, passed as
/// two words) and positional arguments (`<name>`), in the order they are passed. `ccfleet-agent abra-commands` prints them for
/// `scripts/check-abra`, which checks each against `abra <subcommand> --help`;
/// a test checks that every command line the methods above build has a shape
/// here, and every shape is used.
pub const COMMAND_SHAPES: &[&str] = &[
    "--version",
    "server add --local",
    "app new -n [-o] --server=<server> --domain=<domain> <recipe> <version>",
    "app secret generate -n --all <domain>",
    "app secret insert -n -f <domain> <secret> <version> <file>",
    "app deploy -n -c [-o] [-f] [-D] <domain> <version>",
    "app upgrade -n -c [-o] [-D] <domain> <version>",
    "app rollback -n -c [-o] [-D] <domain> <version>",
    "app undeploy -n <domain>",
    "recipe fetch <recipe>",
];

/// Whether the abra arguments `arguments` are an instance of `shape` (see
/// [`COMMAND_SHAPES`]): its words and required flags in order, optional flags
/// present or not, one argument for each `<name>`.
pub fn fits_shape(shape: &str, arguments: &[&str]) -> bool {
    fn fits(shape: &[&str], arguments: &[&str]) -> bool {
        match (shape.split_first(), arguments.split_first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some((word, rest)), _) if word.starts_with("[-") => {
                let flag = &word[1..word.len() - 1];
                (arguments.first() == Some(&flag) && fits(rest, &arguments[1..])) || fits(rest, arguments)
            }
            (Some(_), None) => false,
            (Some((word, rest)), Some((argument, arguments))) if word.starts_with("--") && word.contains("=<") => {
                let flag = word.split('=').next().unwrap_or_default();
                let value = arguments.first().is_some_and(|value| !value.starts_with('-'));
                argument == &flag && value && fits(rest, &arguments[1..])
            }
            (Some((word, rest)), Some((argument, arguments))) => {
                let matches = if word.starts_with('<') {
                    !argument.starts_with('-') && !argument.is_empty()
                } else {
                    word == argument
                };
                matches && fits(rest, arguments)
            }
        }
    }
    let shape: Vec<&str> = shape.split_whitespace().collect();
    fits(&shape, arguments)
}

/// Whether a deploy of `version` can run offline (`-o`): its tag is in the
/// recipe's local checkout (`tags`), so abra needs no git fetch. Rollbacks,
/// restores of the last good version and redeploys at the running version
/// all go to a version deployed before, whose tag is there; only a version
/// never seen on this host needs the network.
pub fn offline(version: &str, tags: &[String]) -> bool {
    tags.iter().any(|tag| tag == version)
}
