# `services.coop-cloud`: the base of an app host. Docker in single-node swarm mode with
# the `proxy` overlay network, the traefik recipe deployed before every other app, ports
# 80/443 open, and the ccfleet agent that deploys `services.coop-cloud.apps`.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption types;

  cfg = config.services.coop-cloud;
  docker = lib.getExe' config.virtualisation.docker.package "docker";

  # Declaring any app (an `apps.<name>` or a recipe module other than traefik, which is
  # itself on because the base is) turns the base on. Read from the declarations, not
  # from `enabledApps`, which contains traefik and so depends on the base.
  anyAppDeclared =
    lib.any (app: app.enable) (builtins.attrValues cfg.apps)
    || lib.any lib.id cfg.recipeModulesEnabled;
in
{
  imports = [
    ./apps.nix
    ./agent.nix
    ../recipes
  ];

  options.services.coop-cloud = {
    enable = mkEnableOption "Co-op Cloud apps on this host, deployed by the ccfleet agent" // {
      default = anyAppDeclared;
      defaultText = lib.literalMD "`true` when any app is declared (an enabled `apps.<name>` or recipe module)";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = true;
      description = "Open TCP ports 80 and 443 for traefik.";
    };

    swarmAdvertiseAddress = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "10.0.0.5";
      description = "`--advertise-addr` for `docker swarm init`; needed when the host has several addresses.";
    };
  };

  config = lib.mkIf cfg.enable {
    # The proxy is an app like any other (so the agent deploys, observes and upgrades it),
    # declared through its recipe module (enabled by default with the base); the operator
    # gives its domain and version. Every other app requires its unit.
    services.coop-cloud.implicitDependencies = lib.optional cfg.traefik.enable cfg.traefik.appName;

    virtualisation.docker = {
      enable = true;
      # Docker refuses swarm mode while live-restore is on (NixOS turns it on by default).
      liveRestore = false;
    };

    systemd.services.swarm-init = {
      description = "Single-node Docker swarm and the Co-op Cloud proxy network";
      wantedBy = [ "multi-user.target" ];
      requires = [ "docker.service" ];
      after = [ "docker.service" ];
      before = [ "ccfleet-agent.service" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      # Idempotent: a host already in a swarm, or with the network, is left as it is.
      script = ''
        state=$(${docker} info --format '{{.Swarm.LocalNodeState}}')
        if [ "$state" != active ]; then
          ${docker} swarm init ${lib.optionalString (cfg.swarmAdvertiseAddress != null) "--advertise-addr ${lib.escapeShellArg cfg.swarmAdvertiseAddress}"}
        fi
        if ! ${docker} network inspect proxy >/dev/null 2>&1; then
          ${docker} network create --driver overlay --scope swarm proxy
        fi
      '';
    };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ 80 443 ];
  };
}
