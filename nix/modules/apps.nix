# `services.coop-cloud.apps.<name>`: the apps declared for this host, their checks
# (assertions that name the option to fix) and the optional sops-nix wiring of their
# secrets. Rendering them for the agent is agent.nix's job.
{ config, options, lib, ... }:

let
  inherit (lib) mkOption types;

  apps = lib.filterAttrs (_: app: app.enable) config.services.coop-cloud.apps;

  patterns = import ../lib/patterns.nix;

  sopsAvailable = options ? sops;

  appAssertions = name: app:
    let
      at = app.declaredAt;
    in
    [
      {
        assertion = app.domain != null;
        message = "${at}.domain is not set: every Co-op Cloud app needs a domain (e.g. \"blog.example.org\").";
      }
      {
        assertion = app.domain == null
          || (builtins.match patterns.domain app.domain != null && builtins.match patterns.numericTopLevel app.domain == null);
        message = "${at}.domain = \"${toString app.domain}\" is not a lowercase fully qualified domain.";
      }
      {
        assertion = builtins.match patterns.version app.version != null;
        message = "${at}.version = \"${app.version}\" is not a recipe version <semver>[+<upstream>], e.g. \"1.3.0+6.42.0-alpine\".";
      }
      {
        assertion = app.healthPath == null || lib.hasPrefix "/" app.healthPath;
        message = "${at}.healthPath = \"${toString app.healthPath}\" must start with \"/\" (or be null for no HTTP probe).";
      }
    ]
    ++ map
      (dependency: {
        assertion = apps ? ${dependency} && dependency != name;
        message = "${at}.dependsOn names \"${dependency}\", which is not another enabled app in services.coop-cloud.apps.";
      })
      app.dependsOn
    ++ lib.mapAttrsToList
      (secretName: secret: {
        assertion = secret.file != null || (secret.sopsKey != null && sopsAvailable);
        message = "${at}.secrets.${secretName} needs `file` (an absolute path), or `sopsKey` with sops-nix imported.";
      })
      app.secrets
    ++ lib.mapAttrsToList
      (secretName: secret: {
        assertion = secret.file == null || (lib.hasPrefix "/" secret.file && !lib.hasPrefix builtins.storeDir secret.file);
        message = "${at}.secrets.${secretName}.file must be an absolute path outside the Nix store (secrets never go into the store).";
      })
      app.secrets;

  # Domains declared more than once, with the options that declare them.
  domainOwners = lib.foldlAttrs
    (owners: _: app:
      if app.domain == null then owners
      else owners // { ${app.domain} = (owners.${app.domain} or [ ]) ++ [ "${app.declaredAt}.domain" ]; })
    { }
    apps;
  duplicateDomains = lib.filterAttrs (_: owners: builtins.length owners > 1) domainOwners;

  sopsSecrets = lib.concatMap
    (app: lib.mapAttrsToList (_: secret: secret.sopsKey) (lib.filterAttrs (_: secret: secret.file == null && secret.sopsKey != null) app.secrets))
    (builtins.attrValues apps);
in
{
  options.services.coop-cloud = {
    apps = mkOption {
      default = { };
      description = ''
        Co-op Cloud apps on this host, by a short name (used in unit names:
        `cc-app-<name>.service`). The ccfleet agent deploys each with abra at the
        pinned version and keeps it there.
      '';
      type = types.attrsOf (types.submodule ({ name, ... }: {
        imports = [ ./app-options.nix ];
        config.declaredAt = lib.mkDefault "services.coop-cloud.apps.${name}";
      }));
    };

    implicitDependencies = mkOption {
      type = types.listOf types.str;
      default = [ ];
      internal = true;
      description = "Names of apps every other app depends on (the base module puts traefik here).";
    };
  };

  config = lib.mkMerge [
    {
      assertions =
        lib.concatLists (lib.mapAttrsToList appAssertions apps)
        ++ lib.mapAttrsToList
          (domain: owners: {
            assertion = false;
            message = "domain \"${domain}\" is declared by more than one app: ${lib.concatStringsSep ", " owners}; give each app its own domain.";
          })
          duplicateDomains;
    }
    # sops-nix is optional: the entry exists only where its module is imported.
    (lib.optionalAttrs sopsAvailable {
      sops.secrets = lib.listToAttrs (map (key: lib.nameValuePair "ccfleet/${key}" { inherit key; }) sopsSecrets);
    })
  ];
}
