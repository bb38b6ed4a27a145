# `services.coop-cloud.apps.<name>`: the apps declared for this host, together with the
# enabled per-recipe modules (`services.coop-cloud.<recipe>`); their checks (assertions
# that name the option to fix, mirroring `ccfleet-agent check-config`); and the sops-nix
# wiring of their secrets. Rendering them for the agent is agent.nix's job.
{ config, options, lib, ... }:

let
  inherit (lib) mkOption types;

  cfg = config.services.coop-cloud;
  checks = import ../lib/checks.nix { inherit lib; };
  sopsAvailable = options ? sops;

  # Every enabled app, from `apps` and from the recipe modules, by its name on the host.
  # A name declared twice fails an assertion; the later declaration wins here.
  declared = lib.filter (app: app.enable) (builtins.attrValues cfg.apps) ++ cfg.recipeModuleApps;
  byName = lib.groupBy (app: app.name) declared;
  enabledApps = lib.mapAttrs (_: builtins.head) byName;

  # Apps complete and valid enough to become units and `[[app]]` tables. The others
  # fail an assertion; leaving them out of the units keeps that assertion, not a type
  # error in a unit, the message the operator sees.
  renderable = lib.filterAttrs
    (name: app:
      checks.appName name == null
      && app.recipe != null
      && app.domain != null && checks.domain app.domain == null
      && app.version != null && checks.version app.version == null)
    enabledApps;

  # An app's own units are cc-app-<name>.service plus cc-app-<name>-update.* and
  # cc-app-<name>-secrets.*; another app must not be named <name>-update or <name>-secrets.
  unitSuffixes = [ "update" "secrets" ];
  unitCollisions = lib.concatLists (lib.mapAttrsToList
    (name: _: lib.concatMap
      (suffix: lib.optional (enabledApps ? "${name}-${suffix}") {
        assertion = false;
        message = "${enabledApps."${name}-${suffix}".nameOption}: the name ${show "${name}-${suffix}"} clashes with the ${suffix} units of the app ${show name} (cc-app-${name}-${suffix}.*); choose another name.";
      })
      unitSuffixes)
    enabledApps);

  # Other apps an app is deployed after, by name: its own `dependsOn` plus the implicit
  # ones (traefik), never itself, only apps that exist (others fail an assertion).
  dependencies = name: app:
    lib.filter (dependency: dependency != name && renderable ? ${dependency})
      (lib.unique (app.dependsOn ++ cfg.implicitDependencies));

  attributePath = name: if builtins.match "[A-Za-z_][A-Za-z0-9_'-]*" name != null then name else builtins.toJSON name;
  show = builtins.toJSON;

  # One assertion per problem that `check` finds in `value`.
  checked = option: check: value:
    let problem = check value;
    in lib.optional (problem != null) {
      assertion = false;
      message = "${option} = ${show value} ${problem}.";
    };

  appAssertions = name: app:
    let
      at = app.declaredAt;
      required = option: hint: lib.optional (app.${option} == null) {
        assertion = false;
        message = "${at}.${option} is not set: ${hint}.";
      };
      notInStore = option: path: lib.optional (path != null && checks.absolutePath path == null && lib.hasPrefix builtins.storeDir path) {
        assertion = false;
        message = "${option} must be an absolute path outside the Nix store (secrets never go into the store).";
      };
    in
    lib.optional (checks.appName name != null) {
      assertion = false;
      message = "${app.nameOption}: the name ${show name} ${checks.appName name}.";
    }
    ++ required "recipe" "name the Co-op Cloud recipe to deploy, e.g. \"hedgedoc\""
    ++ lib.optionals (app.recipe != null) (checked "${at}.recipe" checks.recipe app.recipe)
    ++ required "domain" "every Co-op Cloud app needs its own domain, e.g. \"blog.example.org\""
    ++ lib.optionals (app.domain != null) (checked "${at}.domain" checks.domain app.domain)
    ++ required "version" "pin the recipe version to deploy, e.g. \"1.3.0+6.42.0-alpine\" (`abra recipe versions <recipe>` lists them)"
    ++ lib.optionals (app.version != null) (checked "${at}.version" checks.version app.version)
    ++ lib.optionals (app.healthPath != null) (checked "${at}.healthPath" checks.healthPath app.healthPath)
    ++ lib.optional (app.healthAcceptedStatuses == [ ]) {
      assertion = false;
      message = "${at}.healthAcceptedStatuses (healthOk) is empty: list at least one HTTP status, e.g. [ 200 ].";
    }
    ++ checked "${at}.healthTimeout" checks.duration app.healthTimeout
    ++ checked "${at}.deployTimeout" checks.duration app.deployTimeout
    ++ lib.optionals app.autoUpdate (checked "${at}.updateSchedule" checks.schedule app.updateSchedule)
    ++ lib.concatLists (lib.mapAttrsToList
      (key: value:
        let option = "${at}.env.${attributePath key}";
        in
        lib.optional (checks.envKey key != null) {
          assertion = false;
          message = "${option}: the name ${show key} ${checks.envKey key}.";
        }
        ++ checked option checks.envValue value)
      app.env)
    ++ lib.concatLists (lib.mapAttrsToList
      (secretName: secret:
        let option = "${at}.secrets.${attributePath secretName}";
        in
        lib.optional (checks.secretName secretName != null) {
          assertion = false;
          message = "${option}: the name ${show secretName} ${checks.secretName secretName}.";
        }
        ++ lib.optional (secret.file == null && !(secret.sopsKey != null && sopsAvailable)) {
          assertion = false;
          message = "${option} needs `file` (an absolute path), or `sopsKey` with sops-nix imported.";
        }
        ++ lib.optional (secret.file != null && secret.sopsKey != null) {
          assertion = false;
          message = "${option} sets both `file` and `sopsKey`: keep one.";
        }
        ++ lib.optional (secret.sopsPath != null && secret.sopsKey == null) {
          assertion = false;
          message = "${option}.sopsPath needs `sopsKey`: sopsPath is where sops-nix writes the secret that sopsKey names (for any other file, use `file`).";
        }
        ++ lib.optionals (secret.file != null) (checked "${option}.file" checks.absolutePath secret.file)
        ++ lib.optionals (secret.sopsPath != null) (checked "${option}.sopsPath" checks.absolutePath secret.sopsPath)
        ++ notInStore "${option}.file" secret.file
        ++ notInStore "${option}.sopsPath" secret.sopsPath)
      app.secrets)
    ++ map
      (dependency: {
        assertion = enabledApps ? ${dependency} && dependency != name;
        message = "${at}.dependsOn names ${show dependency}, which is not another enabled app of services.coop-cloud (an `apps.<name>` or a recipe module's `appName`).";
      })
      app.dependsOn;

  # Domains and names declared more than once, with the options that declare them.
  owners = key: lib.foldl'
    (found: app:
      let value = key app;
      in if value == null then found else found // { ${value} = (found.${value} or [ ]) ++ [ app.declaredAt ]; })
    { }
    declared;
  repeated = key: lib.filterAttrs (_: declaredBy: builtins.length declaredBy > 1) (owners key);

  # Dependency cycles, through `dependsOn` and the implicit dependency on traefik. An
  # app is on a cycle when it can reach itself; each cycle is reported once, by the
  # apps on it.
  reachable = name: map (item: item.key) (builtins.genericClosure {
    startSet = map (key: { inherit key; }) (dependencies name renderable.${name});
    operator = item: map (key: { inherit key; }) (dependencies item.key renderable.${item.key});
  });
  reach = lib.mapAttrs (name: _: reachable name) renderable;
  cycleOf = name: lib.filter (other: lib.elem name reach.${other}) reach.${name};
  cycles = lib.unique (map (name: lib.sort lib.lessThan (cycleOf name))
    (lib.filter (name: lib.elem name reach.${name}) (builtins.attrNames renderable)));

  # sops-nix secrets: each one restarts the units of the apps that use it when it changes.
  sopsSecrets = lib.concatLists (lib.mapAttrsToList
    (name: app: lib.mapAttrsToList
      (_: secret: {
        name = "ccfleet/${secret.sopsKey}";
        value = {
          key = secret.sopsKey;
          restartUnits = [ "cc-app-${name}.service" ];
        } // lib.optionalAttrs (secret.sopsPath != null) { path = secret.sopsPath; };
      })
      (lib.filterAttrs (_: secret: secret.file == null && secret.sopsKey != null) app.secrets))
    renderable);
in
{
  options.services.coop-cloud = {
    apps = mkOption {
      default = { };
      description = ''
        Co-op Cloud apps on this host, by a short name (used in unit names:
        `cc-app-<name>.service`; letters, digits, `-`, `_`, `.`). The ccfleet agent deploys
        each with abra at the pinned version and keeps it there. Declaring one turns on
        `services.coop-cloud` (where imported) and the agent.
      '';
      type = types.attrsOf (types.submodule (import ./app-options.nix { }));
    };

    implicitDependencies = mkOption {
      type = types.listOf types.str;
      default = [ ];
      internal = true;
      description = "Names of apps every other app depends on (the base module puts traefik here).";
    };

    recipeModuleApps = mkOption {
      type = types.listOf types.raw;
      default = [ ];
      internal = true;
      description = "The enabled per-recipe modules' apps (each module adds its own).";
    };

    recipeModulesEnabled = mkOption {
      type = types.listOf types.bool;
      default = [ ];
      internal = true;
      description = "Whether each per-recipe module (other than traefik) is enabled.";
    };

    enabledApps = mkOption {
      type = types.attrsOf types.raw;
      readOnly = true;
      internal = true;
      default = enabledApps;
      defaultText = lib.literalMD "the enabled `apps.<name>` and recipe modules, by name";
      description = "Every enabled app, by name.";
    };

    renderedApps = mkOption {
      type = types.attrsOf types.raw;
      readOnly = true;
      internal = true;
      default = lib.mapAttrs (name: app: app // { dependencies = dependencies name app; }) renderable;
      defaultText = lib.literalMD "the enabled apps that are complete and valid, with their dependencies";
      description = ''
        The apps that become units and `[[app]]` tables (complete and validly named), by
        name, each with `dependencies`: the names of the apps it is deployed after.
      '';
    };
  };

  config = lib.mkMerge [
    {
      assertions =
        lib.concatLists (lib.mapAttrsToList appAssertions enabledApps)
        ++ lib.mapAttrsToList
          (name: declaredBy: {
            assertion = false;
            message = "the app name ${show name} is declared by more than one of ${lib.concatStringsSep ", " declaredBy}; give each its own name (a recipe module's `appName`).";
          })
          (repeated (app: app.name))
        ++ lib.mapAttrsToList
          (domain: declaredBy: {
            assertion = false;
            message = "domain ${show domain} is declared by more than one app: ${lib.concatMapStringsSep ", " (at: "${at}.domain") declaredBy}; give each app its own domain.";
          })
          (repeated (app: app.domain))
        ++ unitCollisions
        ++ map
          (members: {
            assertion = false;
            message = "dependency cycle between ${lib.concatMapStringsSep ", " (name: renderable.${name}.declaredAt) members} (through `dependsOn`, and every app's implicit dependency on traefik): remove one of the dependencies.";
          })
          cycles;
    }
    # sops-nix is optional: the entries exist only where its module is imported.
    (lib.optionalAttrs sopsAvailable {
      # mkMerge, not listToAttrs: two apps may share a key, and both units restart.
      sops.secrets = lib.mkMerge (map (secret: { ${secret.name} = secret.value; }) sopsSecrets);
    })
  ];
}
