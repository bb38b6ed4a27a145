# The options of one Co-op Cloud app, shared by `services.coop-cloud.apps.<name>`
# and by the per-recipe modules that `lib.mkCcApp` makes (`services.coop-cloud.<recipe>`).
# A submodule: it only declares; apps.nix checks and agent.nix renders.
{ lib, ... }:

let
  inherit (lib) mkOption mkEnableOption types;

  secretType = types.submodule {
    options = {
      file = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/ghost-db-password";
        description = ''
          Absolute path of a file holding the secret's value, read by the agent at deploy time.
          Never a Nix path literal: that would copy the secret into the world-readable Nix store.
        '';
      };
      sopsKey = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "ghost/db_password";
        description = ''
          Key of the secret in the host's sops file. Only with sops-nix imported: the module then
          declares `sops.secrets."ccfleet/<sopsKey>"` and passes its path to the agent.
        '';
      };
    };
  };
in
{
  options = {
    enable = mkEnableOption "this app" // { default = true; };

    declaredAt = mkOption {
      type = types.str;
      internal = true;
      description = "Option path the operator writes for this app, used to name it in assertions.";
    };

    recipe = mkOption {
      type = types.strMatching "[a-z][a-z0-9-]*";
      example = "ghost";
      description = "Co-op Cloud recipe the app is deployed from.";
    };

    domain = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "blog.example.org";
      description = "The app's domain, which is also its name for abra and the fleet.";
    };

    version = mkOption {
      type = types.str;
      example = "1.3.0+6.42.0-alpine";
      description = ''
        Pinned recipe version, `<recipe semver>+<upstream version>`. Changing it and running
        `nixos-rebuild switch` upgrades the app (health-gated, rolled back on failure).
      '';
    };

    env = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { SMTP_HOST = "mail.example.org"; };
      description = "Variables written to the app's `.env` (not `TYPE` or `DOMAIN`, which abra owns).";
    };

    secrets = mkOption {
      type = types.attrsOf secretType;
      default = { };
      example = { db_password.file = "/run/secrets/ghost-db"; };
      description = "Secrets inserted with `abra app secret insert`, by abra secret name.";
    };

    healthPath = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/health";
      description = ''
        Path probed at `https://<domain><healthPath>` after a deploy. `null`: no HTTP probe, only
        swarm convergence and the containers' own healthchecks.
      '';
    };

    healthAcceptedStatuses = mkOption {
      type = types.listOf (types.ints.between 100 599);
      default = [ 200 ];
      description = "HTTP statuses of the health probe that count as healthy.";
    };

    healthTimeout = mkOption {
      type = types.str;
      default = "5m";
      description = "How long the app may take to become healthy after a deploy (humantime).";
    };

    stateful = mkOption {
      type = types.bool;
      default = true;
      description = "Snapshot the app's volumes before an upgrade and restore them on rollback.";
    };

    autoUpdate = mkOption {
      type = types.bool;
      default = false;
      description = "Upgrade to the newest compatible version on `updateSchedule`.";
    };

    updateSchedule = mkOption {
      type = types.str;
      default = "Sun *-*-* 04:00:00";
      description = "systemd `OnCalendar` expression for automatic updates.";
    };

    allowMajor = mkOption {
      type = types.bool;
      default = false;
      description = "Allow automatic updates across a major recipe version.";
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
        Names of other apps in `services.coop-cloud.apps` to deploy before this one
        (traefik is always deployed first).
      '';
    };

    deployTimeout = mkOption {
      type = types.str;
      default = "10m";
      description = "Bound on one abra deploy or upgrade command (humantime).";
    };
  };
}
