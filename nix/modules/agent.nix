# `services.ccfleet-agent`: renders /etc/ccfleet/agent.toml from the declared apps
# (RFC 42 `settings`, checked by `ccfleet-agent check-config`) and runs the agent, plus
# one `cc-app-<name>` oneshot per app (deploy at switch time) and one update timer per
# app with autoUpdate.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption types;

  cfg = config.services.ccfleet-agent;
  format = pkgs.formats.toml { };
  configPath = "/etc/ccfleet/agent.toml";
  agentExe = lib.getExe' cfg.package "ccfleet-agent";

  apps = lib.filterAttrs (_: app: app.enable) config.services.coop-cloud.apps;
  implicitDependencies = config.services.coop-cloud.implicitDependencies;

  # Other apps this one is deployed after, by name: its own `dependsOn` plus the
  # implicit ones (traefik), never itself. Names that are not enabled apps with a
  # domain fail an assertion (apps.nix); dropping them here keeps that assertion,
  # not an evaluation error, the message the operator sees.
  dependencyNames = name: app:
    lib.filter (dependency: dependency != name && renderableApps ? ${dependency})
      (lib.unique (app.dependsOn ++ implicitDependencies));

  secretPath = secret:
    if secret.file != null then secret.file else config.sops.secrets."ccfleet/${secret.sopsKey}".path;

  # One `[[app]]` table of the agent's TOML (agent/src/config.rs). camelCase options
  # become snake_case keys; a null health path is left out (no HTTP probe).
  renderApp = name: app:
    {
      domain = app.domain;
      recipe = app.recipe;
      version = app.version;
      stateful = app.stateful;
      auto_update = app.autoUpdate;
      allow_major = app.allowMajor;
      fleet_managed = app.fleetManaged;
      deploy_timeout = app.deployTimeout;
      depends_on = map (dependency: apps.${dependency}.domain) (dependencyNames name app);
      env = app.env;
      secrets = lib.mapAttrs (_: secretPath) app.secrets;
      health = {
        accepted_statuses = app.healthAcceptedStatuses;
        timeout = app.healthTimeout;
      } // lib.optionalAttrs (app.healthPath != null) { path = app.healthPath; };
    } // lib.optionalAttrs app.autoUpdate { schedule = app.updateSchedule; };

  # Apps without a domain fail an assertion (apps.nix); leaving them out here keeps
  # that assertion the message the operator sees.
  renderableApps = lib.filterAttrs (_: app: app.domain != null) apps;

  configFile = format.generate "ccfleet-agent.toml" cfg.settings;

  appUnit = name: app: {
    description = "Deploy Co-op Cloud app ${app.domain} (${app.recipe} ${app.version})";
    wantedBy = [ "multi-user.target" ];
    requires = [ "ccfleet-agent.service" ];
    after = [ "ccfleet-agent.service" ] ++ map (dependency: "cc-app-${dependency}.service") (dependencyNames name app);
    # A change of this app's declaration (a version bump) restarts this oneshot at
    # `nixos-rebuild switch`, so the switch waits for the deploy and fails if it fails.
    restartTriggers = [ (builtins.toJSON (renderApp name app)) ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      ExecStart = "${agentExe} apply ${app.domain} --wait";
      # The agent bounds the deploy itself (deployTimeout, healthTimeout) and rolls back
      # on failure; a systemd timeout here could only cut that rollback short.
      TimeoutStartSec = "infinity";
    };
  };

  updateUnit = name: app: {
    description = "Scheduled update of Co-op Cloud app ${app.domain}";
    requires = [ "ccfleet-agent.service" ];
    after = [ "ccfleet-agent.service" ];
    # Only ever started by its timer; a switch must not start an upgrade.
    restartIfChanged = false;
    serviceConfig = {
      Type = "oneshot";
      # Asks the running agent, through its control socket, for this app's health-gated
      # update; the agent serialises it with everything else it does to the app.
      ExecStart = "${agentExe} update ${app.domain}";
      TimeoutStartSec = "infinity";
    };
  };

  updateTimer = name: app: {
    description = "Scheduled update of Co-op Cloud app ${app.domain}";
    wantedBy = [ "timers.target" ];
    timerConfig = {
      OnCalendar = app.updateSchedule;
      Persistent = true;
      Unit = "cc-app-${name}-update.service";
    };
  };

  autoUpdateApps = lib.filterAttrs (_: app: app.autoUpdate) renderableApps;
in
{
  imports = [ ./apps.nix ];

  options.services.ccfleet-agent = {
    enable = mkEnableOption "the ccfleet agent, which deploys `services.coop-cloud.apps` with abra";

    package = lib.mkPackageOption pkgs "ccfleet" { };

    serverUrl = mkOption {
      type = types.str;
      example = "https://fleet.example.org:7443";
      description = "URL of the ccfleet server (https: the server speaks TLS only).";
    };

    joinTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/ccfleet-join-token";
      description = ''
        File holding a join token (`ccfleet token create`), used once to enrol this host.
        A path outside the Nix store; never the token itself.
      '';
    };

    hostId = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "This host's id in the fleet; null: the agent uses the lowercased hostname.";
    };

    labels = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { site = "berlin"; };
      description = "Labels the server can select hosts by.";
    };

    path = mkOption {
      type = types.listOf types.package;
      default = [ pkgs.git ];
      defaultText = lib.literalExpression "[ pkgs.git ]";
      description = "Packages on the agent's PATH (abra, unless `settings.abra.binary` is absolute, and what abra runs).";
    };

    settings = mkOption {
      type = format.type;
      default = { };
      example = { abra.command_timeout = "30m"; };
      description = ''
        The agent's TOML configuration (see `ccfleet-agent check-config`). `server`, `host`
        and `app` are filled from the options above and `services.coop-cloud.apps`; set
        anything else (`agent`, `abra`) here.
      '';
    };

    configFile = mkOption {
      type = types.unspecified;
      readOnly = true;
      default = configFile;
      defaultText = lib.literalMD "the rendered `settings`";
      description = "The rendered configuration, linked to ${configPath}.";
    };
  };

  config = lib.mkIf cfg.enable {
    services.ccfleet-agent.settings = {
      server = { url = cfg.serverUrl; }
        // lib.optionalAttrs (cfg.joinTokenFile != null) { join_token_file = cfg.joinTokenFile; };
      host = { labels = cfg.labels; } // lib.optionalAttrs (cfg.hostId != null) { id = cfg.hostId; };
      app = lib.mapAttrsToList renderApp renderableApps;
    };

    assertions = [
      {
        assertion = cfg.joinTokenFile == null || !lib.hasPrefix builtins.storeDir cfg.joinTokenFile;
        message = "services.ccfleet-agent.joinTokenFile must be a path outside the Nix store.";
      }
    ];

    environment.etc."ccfleet/agent.toml".source = configFile;

    systemd.services = {
      ccfleet-agent = {
        description = "ccfleet agent: deploys and upgrades this host's Co-op Cloud apps";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        requires = [ "docker.service" ];
        after = [ "network-online.target" "docker.service" "swarm-init.service" ];
        path = cfg.path;
        # Restarting the agent in the middle of an upgrade would cut it in half (it would
        # resume from its journal, but the switch would have interrupted a deploy for
        # nothing). A changed configuration is re-read on reload (SIGHUP) instead.
        restartIfChanged = false;
        reloadTriggers = [ configFile ];
        serviceConfig = {
          ExecStart = "${agentExe} run --config ${configPath}";
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          Restart = "on-failure";
          RestartSec = "5s";
          # Root, because the agent drives the Docker Engine (the socket is root-equivalent
          # anyway), runs abra, and snapshots and restores volumes owned by arbitrary uids.
          # The hardening below is what still fits that job.
          User = "root";
          StateDirectory = "ccfleet-agent";
          StateDirectoryMode = "0700";
          RuntimeDirectory = "ccfleet-agent";
          RuntimeDirectoryMode = "0700";
          UMask = "0077";
          NoNewPrivileges = true;
          PrivateTmp = true;
          PrivateDevices = true;
          # /etc and /usr read-only; /var (Docker volumes, abra's state, alerts) stays writable.
          ProtectSystem = "full";
          ProtectHome = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          RestrictSUIDSGID = true;
          RestrictRealtime = true;
          RestrictNamespaces = true;
          LockPersonality = true;
          SystemCallArchitectures = "native";
          RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
          # Enough to read, copy and restore volume contents with their ownership.
          CapabilityBoundingSet = [ "CAP_CHOWN" "CAP_DAC_OVERRIDE" "CAP_DAC_READ_SEARCH" "CAP_FOWNER" "CAP_FSETID" ];
        };
      };
    }
    // lib.mapAttrs' (name: app: lib.nameValuePair "cc-app-${name}" (appUnit name app)) renderableApps
    // lib.mapAttrs' (name: app: lib.nameValuePair "cc-app-${name}-update" (updateUnit name app)) autoUpdateApps;

    systemd.timers = lib.mapAttrs' (name: app: lib.nameValuePair "cc-app-${name}-update" (updateTimer name app)) autoUpdateApps;
  };
}
