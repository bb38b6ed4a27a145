# The options of one Co-op Cloud app, shared by `services.coop-cloud.apps.<name>` and by
# the per-recipe modules that `lib.mkCcApp` makes (`services.coop-cloud.<recipe>`).
# A submodule: it only declares; apps.nix checks and agent.nix renders.
#
# `recipeModule` is null for an entry of `apps` (the operator names the recipe, and a
# recipe of ./../recipes/table.nix brings its health path and statefulness as defaults),
# or mkCcApp's arguments for a per-recipe module (the recipe is fixed, the arguments are
# the defaults). Either way the defaults are option defaults, so the option
# documentation shows them and a plain definition overrides them.
{ recipeModule ? null }:

{ config, lib, name, ... }:

let
  inherit (lib) mkOption mkEnableOption types;

  recipeTable = import ../recipes/table.nix;
  isRecipeModule = recipeModule != null;
  # The table's entry for an `apps.<name>` entry's recipe, if it is a known recipe.
  known =
    if isRecipeModule then recipeModule
    else if config.recipe != null && recipeTable ? ${config.recipe} then recipeTable.${config.recipe}
    else { };

  # nixpkgs' `unitNameType` (nixos/lib/systemd-lib.nix).
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # Seconds (the seed's notation) or a humantime string; rendered as "<n>s" or as written.
  durationType = types.either types.int types.str;

  # How an option path is written, quoting names that are not plain identifiers.
  attributePath = name: if builtins.match "[A-Za-z_][A-Za-z0-9_'-]*" name != null then name else builtins.toJSON name;

  secretType = types.submodule {
    options = {
      file = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/ghost-db-password";
        description = ''
          Absolute path of a file holding the secret's value, read by the agent when it
          inserts the secret. Never a Nix path literal: that would copy the secret into the
          world-readable Nix store. When the file changes, `cc-app-<name>-secrets.path`
          restarts `cc-app-<name>.service`, which runs `ccfleet-agent apply` for the app.
        '';
      };
      sopsKey = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "ghost/db_password";
        description = ''
          Key of the secret in the host's sops file. Only with sops-nix imported: the module
          then declares `sops.secrets."ccfleet/<sopsKey>"` (which restarts
          `cc-app-<name>.service` when the secret changes) and passes its path to the agent.
        '';
      };
      sopsPath = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/ghost-db-password";
        description = ''
          With `sopsKey`: where sops-nix writes the decrypted secret (its `path`), which is
          the file the agent reads. `null`: sops-nix's default, `/run/secrets/ccfleet/<sopsKey>`.
        '';
      };
    };
  };
in
{
  imports = [
    # The seed's parameter names, kept as aliases.
    (lib.mkAliasOptionModule [ "healthOk" ] [ "healthAcceptedStatuses" ])
    (lib.mkAliasOptionModule [ "timeout" ] [ "deployTimeout" ])
  ];

  options = {
    enable =
      if isRecipeModule then
        mkOption ({
          type = types.bool;
          example = true;
          description = "Whether to deploy ${recipeModule.description}.";
        } // recipeModule.enable)
      else
        mkEnableOption "this app" // { default = true; };

    name = mkOption {
      type = types.str;
      internal = true;
      default = if isRecipeModule then config.appName else name;
      defaultText = lib.literalMD "the attribute name, or `appName`";
      description = "The app's name on this host: its units are `cc-app-<name>.service` and friends.";
    };

    nameOption = mkOption {
      type = types.str;
      internal = true;
      description = "Option path that holds the app's name, used to name it in assertions.";
    };

    declaredAt = mkOption {
      type = types.str;
      internal = true;
      description = "Option path the operator writes for this app, used to name it in assertions.";
    };

    recipe = mkOption {
      type = types.nullOr types.str;
      example = "ghost";
      description = "Co-op Cloud recipe the app is deployed from.";
    } // (if isRecipeModule then { default = recipeModule.recipe; readOnly = true; } else { default = null; });

    domain = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "blog.example.org";
      description = "The app's domain, which is also its name for abra and the fleet. Required.";
    };

    version = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "1.3.0+6.42.0-alpine";
      description = ''
        Pinned recipe version, `<recipe semver>+<upstream version>`. Required. It is a floor,
        not a ceiling: raising it and running `nixos-rebuild switch` reruns
        `cc-app-<name>.service`, which asks the agent to move the app there through its
        health-gated upgrade transaction (snapshot of a stateful app's volumes, deploy,
        health gate, rollback with restore when the gate fails) and fails the switch when the
        upgrade rolls back or fails; a change of the recipe's major is held unless
        `allowMajor`. A lower value never downgrades a running app (the agent reports it as
        drift); use `ccfleet-agent upgrade <domain> --to <version>` for that.
      '';
    };

    env = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { SMTP_HOST = "mail.example.org"; };
      description = ''
        Variables written to the app's `.env`: uppercase names (`^[A-Z_][A-Z0-9_]*$`), one-line
        values; not `TYPE` or `DOMAIN`, which abra owns.
      '';
    };

    secrets = mkOption {
      type = types.attrsOf secretType;
      default = { };
      example = { db_password.file = "/run/secrets/ghost-db"; };
      description = "Secrets inserted with `abra app secret insert`, by abra secret name (`^[a-z0-9_]+$`).";
    };

    healthPath = mkOption {
      type = types.nullOr types.str;
      example = "/health";
      description = ''
        HTTP path the agent's health gate probes after an upgrade (`health.path`): a `GET
        https://<domain><healthPath>` sent to the host's own Traefik (the agent's
        `probe_address`), which must answer one of `healthAcceptedStatuses` continuously for
        the agent's `min_healthy_time`, next to every service converged and every container
        healthcheck healthy. `null`: convergence and container health only.
      '';
    } // (if isRecipeModule then {
      default = recipeModule.healthPath;
    } else {
      default = known.healthPath or null;
      defaultText = lib.literalMD "the recipe's health path when `recipe` is one ccfleet ships a module for (e.g. `\"/ghost/api/admin/site/\"` for ghost), else `null`";
    });

    healthAcceptedStatuses = mkOption {
      type = types.listOf (types.ints.between 100 599);
      default = if isRecipeModule then recipeModule.healthOk else [ 200 ];
      example = [ 200 302 ];
      description = ''
        HTTP statuses the health gate's probe of `healthPath` counts as healthy
        (`health.accepted_statuses`; alias `healthOk`). Redirects are not followed.
      '';
    };

    healthTimeout = mkOption {
      type = durationType;
      default = if isRecipeModule then recipeModule.healthTimeout else "5m";
      example = 300;
      description = ''
        How long the app may take to pass its health gate after an upgrade or a rollback
        (`health.timeout`): a number of seconds or a duration such as `"5m"`. Past it the
        upgrade is rolled back.
      '';
    };

    stateful = mkOption {
      type = types.bool;
      example = false;
      description = ''
        Whether the app keeps data in volumes (`stateful` in the agent's configuration). Before
        upgrading a stateful app the agent stops it, copies every volume of its stack into a
        verified snapshot (`<state_dir>/snapshots/<domain>/<operation>/`) and restores it when
        the new version fails its health gate. Stateless apps are upgraded in place and rolled
        back without a snapshot.
      '';
    } // (if isRecipeModule then {
      default = recipeModule.stateful;
    } else {
      default = known.stateful or true;
      defaultText = lib.literalMD "the recipe's statefulness when `recipe` is one ccfleet ships a module for, else `true`";
    });

    autoUpdate = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Add `cc-app-<name>-update.timer`, which runs `ccfleet-agent update <domain>` on
        `updateSchedule`: the agent moves the app to the newest available release of its
        recipe within the running major (any major with `allowMajor`), never below the
        declared version, through the health-gated upgrade transaction. A release that was
        rolled back is not tried again until a newer one appears or `version` changes.
      '';
    };

    updateSchedule = mkOption {
      type = types.str;
      default = "Sun *-*-* 04:00:00";
      description = "systemd `OnCalendar` expression of the update timer (with `autoUpdate`).";
    };

    allowMajor = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Allow moves across a major recipe version (`allow_major`): for the update timer, for a
        raised `version`, and for the agent's side of fleet rollouts. Without it such a move is
        held (an alert, nothing touched).
      '';
    };

    fleetManaged = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether fleet rollouts (`ccfleet upgrade`) may move this app. When false, the host pins
        the app to this configuration: rollouts skip it with "pinned by host configuration".
      '';
    };

    dependsOn = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "keycloak" ];
      description = ''
        Names of other apps of this host (`services.coop-cloud.apps.<name>`, or a recipe
        module's `appName`) to deploy before this one: their `cc-app-` units are required
        and ordered before this app's, and the agent deploys them first. Traefik always is.
      '';
    };

    after = mkOption {
      type = types.listOf unitNameType;
      default = if isRecipeModule then recipeModule.after else [ ];
      example = [ "postgresql.service" ];
      description = "Further systemd units `cc-app-<name>.service` is ordered after (`After=`), such as a database on the host.";
    };

    deployTimeout = mkOption {
      type = durationType;
      default = if isRecipeModule then recipeModule.timeout else "10m";
      example = 600;
      description = ''
        How long the agent waits for Docker to show the app converged after a deploy or an
        upgrade (`deploy_timeout`; alias `timeout`): a number of seconds or a duration such as `"10m"`.
      '';
    };
  } // lib.optionalAttrs isRecipeModule {
    appName = mkOption {
      type = types.str;
      default = recipeModule.appName;
      example = "blog";
      description = ''
        The app's name on this host: its units are `cc-app-<appName>.service` (and
        `-update`, `-secrets`), and other apps name it in `dependsOn`.
      '';
    };
  };

  config = {
    nameOption = lib.mkDefault (
      if isRecipeModule then "services.coop-cloud.${recipeModule.recipe}.appName"
      else "services.coop-cloud.apps.${attributePath name}"
    );
    declaredAt = lib.mkDefault (
      if isRecipeModule then "services.coop-cloud.${recipeModule.recipe}"
      else "services.coop-cloud.apps.${attributePath name}"
    );
  };
}
