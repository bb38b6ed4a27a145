# `services.ccfleet-agent`: renders /etc/ccfleet/agent.toml from the declared apps
# (RFC 42 `settings`) and runs the agent, plus per app: a `cc-app-<name>` oneshot (deploy
# at switch time), an update timer with autoUpdate, and a path unit that reruns the
# deploy when a secret file changes.
{ config, options, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption types;

  cfg = config.services.ccfleet-agent;
  format = pkgs.formats.toml { };
  configPath = "/etc/ccfleet/agent.toml";
  agentExe = lib.getExe' cfg.package "ccfleet-agent";
  checks = import ../lib/checks.nix { inherit lib; };

  apps = config.services.coop-cloud.renderedApps;
  baseEnabled = options.services.coop-cloud ? enable && config.services.coop-cloud.enable;
  anyAppDeclared = lib.any (app: app.enable) (builtins.attrValues config.services.coop-cloud.apps);

  # Seconds (the seed's notation) or a humantime string, as the agent reads it.
  duration = value: if builtins.isInt value then "${toString value}s" else value;

  # One `[[app]]` table of the agent's TOML (agent/src/config.rs). camelCase options
  # become snake_case keys; a null health path is left out (no HTTP check).
  renderApp = name: app:
    {
      domain = app.domain;
      recipe = app.recipe;
      version = app.version;
      stateful = app.stateful;
      auto_update = app.autoUpdate;
      allow_major = app.allowMajor;
      fleet_managed = app.fleetManaged;
      deploy_timeout = duration app.deployTimeout;
      depends_on = map (dependency: apps.${dependency}.domain) app.dependencies;
      env = app.env;
      secrets = lib.mapAttrs (_: secretPath) app.secrets;
      health = {
        accepted_statuses = app.healthAcceptedStatuses;
        timeout = duration app.healthTimeout;
      } // lib.optionalAttrs (app.healthPath != null) { path = app.healthPath; };
    } // lib.optionalAttrs app.autoUpdate { schedule = app.updateSchedule; };

  # The file the agent reads: `file`, or where sops-nix writes the secret.
  secretPath = secret:
    if secret.file != null then secret.file
    else if secret.sopsPath != null then secret.sopsPath
    else config.sops.secrets."ccfleet/${secret.sopsKey}".path;

  configFile = format.generate "ccfleet-agent.toml" cfg.settings;

  unit = name: "cc-app-${name}.service";

  appUnit = name: app: {
    description = "Deploy Co-op Cloud app ${app.domain} (${app.recipe} ${app.version})";
    wantedBy = [ "multi-user.target" ];
    # The agent answers `apply`; the swarm and the proxy network must exist; the apps it
    # depends on (traefik, `dependsOn`) must have deployed: if one fails, systemd says
    # "Dependency failed" and this app is not started.
    requires = [ "ccfleet-agent.service" ]
      ++ lib.optional baseEnabled "swarm-init.service"
      ++ map unit app.dependencies;
    after = [ "ccfleet-agent.service" ]
      ++ lib.optional baseEnabled "swarm-init.service"
      ++ map unit app.dependencies
      ++ app.after;
    # A change of this app's declaration (a version bump) restarts this oneshot at
    # `nixos-rebuild switch`, so the switch waits for the deploy and fails if it fails.
    restartTriggers = [ (builtins.toJSON (renderApp name app)) ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      ExecStart = "${agentExe} apply ${app.domain} --wait";
      # The agent bounds the deploy itself (deployTimeout); a systemd timeout here could
      # only cut its own handling of a failure short.
      TimeoutStartSec = "infinity";
    };
  };

  updateUnit = name: app: {
    description = "Scheduled update of Co-op Cloud app ${app.domain}";
    requires = [ "ccfleet-agent.service" ];
    after = [ "ccfleet-agent.service" ];
    # Only ever started by its timer; a switch must not start an update.
    restartIfChanged = false;
    serviceConfig = {
      Type = "oneshot";
      # Asks the running agent, through its control socket, for this app's scheduled
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

  # Secrets given as plain files (not through sops-nix, whose `restartUnits` does the
  # same, apps.nix): a path unit watches them and a change restarts `cc-app-<name>`,
  # which runs `apply` again so the agent picks the new value up.
  secretFiles = app: lib.filter (file: file != null) (lib.mapAttrsToList (_: secret: secret.file) app.secrets);
  appsWithSecretFiles = lib.filterAttrs (_: app: secretFiles app != [ ]) apps;

  secretsPath = name: app: {
    description = "Watch the secret files of Co-op Cloud app ${app.domain}";
    wantedBy = [ "multi-user.target" ];
    pathConfig = {
      PathChanged = secretFiles app;
      Unit = "cc-app-${name}-secrets.service";
    };
  };

  secretsService = name: app: {
    description = "Redeploy Co-op Cloud app ${app.domain} after a secret changed";
    # Started by its path unit only, never by a switch.
    restartIfChanged = false;
    serviceConfig = {
      Type = "oneshot";
      # Waits for the redeploy (cc-app-<name> runs `apply --wait`), so a failure shows here too.
      ExecStart = "${lib.getExe' pkgs.systemd "systemctl"} restart ${unit name}";
    };
  };

  autoUpdateApps = lib.filterAttrs (_: app: app.autoUpdate) apps;

  # The values that come from the typed options are checked there (apps.nix, below);
  # what an operator writes into `settings` directly is checked here, by the rules of
  # `ccfleet-agent check-config`: known sections and keys, paths, durations, abra names.
  knownSettings = {
    server = [ "url" "join_token_file" ];
    host = [ "id" "labels" ];
    agent = [
      "state_dir" "control_socket" "alerts_dir" "reconcile_interval" "observe_interval"
      "snapshot_retention" "min_healthy_time" "probe_address" "probe_scheme" "stop_timeout"
    ];
    abra = [ "binary" "dir" "server" "command_timeout" "no_domain_checks" ];
    app = null;
  };
  settingChecks = {
    server.url = checks.serverUrl;
    server.join_token_file = checks.absolutePath;
    host.id = checks.hostId;
    agent.state_dir = checks.absolutePath;
    agent.control_socket = checks.absolutePath;
    agent.alerts_dir = checks.absolutePath;
    agent.reconcile_interval = checks.duration;
    agent.observe_interval = checks.duration;
    agent.min_healthy_time = checks.duration;
    agent.stop_timeout = checks.duration;
    abra.binary = checks.abraBinary;
    abra.dir = checks.absolutePath;
    abra.server = checks.abraServer;
    abra.command_timeout = checks.duration;
  };
  # The option an operator sets for a value of `settings`: the typed option when the
  # value came from it, else the `settings` path.
  typedOption = {
    server.url = { option = "services.ccfleet-agent.serverUrl"; value = cfg.serverUrl; };
    server.join_token_file = { option = "services.ccfleet-agent.joinTokenFile"; value = cfg.joinTokenFile; };
    host.id = { option = "services.ccfleet-agent.hostId"; value = cfg.hostId; };
  };
  settingOption = section: key: value:
    let typed = typedOption.${section}.${key} or null;
    in if typed != null && typed.value == value then typed.option else "services.ccfleet-agent.settings.${section}.${key}";

  settingsAssertions =
    lib.concatLists (lib.mapAttrsToList
      (section: value:
        if !(knownSettings ? ${section}) then [{
          assertion = false;
          message = "services.ccfleet-agent.settings.${section} is not a section of the agent's configuration (known: ${lib.concatStringsSep ", " (builtins.attrNames knownSettings)}).";
        }]
        else if knownSettings.${section} == null then [ ]
        else if !builtins.isAttrs value then [{
          assertion = false;
          message = "services.ccfleet-agent.settings.${section} must be a table.";
        }]
        else lib.concatLists (lib.mapAttrsToList
          (key: setting:
            let
              option = settingOption section key setting;
              check = settingChecks.${section}.${key} or null;
              problem = if builtins.isString setting then check setting else "must be a string";
            in
            if !(lib.elem key knownSettings.${section}) then [{
              assertion = false;
              message = "services.ccfleet-agent.settings.${section}.${key} is not a setting of the agent (known in ${section}: ${lib.concatStringsSep ", " knownSettings.${section}}).";
            }]
            else lib.optional (check != null && problem != null) {
              assertion = false;
              message = "${option} = ${builtins.toJSON setting} ${problem}.";
            })
          value))
      cfg.settings)
    ++ lib.optional (!(cfg.settings ? server.url)) {
      assertion = false;
      message = "services.ccfleet-agent.serverUrl is not set: set it to your ccfleet server's URL, e.g. \"https://fleet.example.org:7443\".";
    }
    ++ lib.concatLists (lib.mapAttrsToList
      (key: value:
        lib.optional (checks.labelKey key != null) {
          assertion = false;
          message = "services.ccfleet-agent.labels: the key ${builtins.toJSON key} ${checks.labelKey key}.";
        }
        ++ lib.optional (builtins.isString value && checks.labelValue value != null) {
          assertion = false;
          message = "services.ccfleet-agent.labels.${key} = ${builtins.toJSON value} ${checks.labelValue value}.";
        })
      (cfg.settings.host.labels or { }));
in
{
  imports = [ ./apps.nix ];

  options.services.ccfleet-agent = {
    enable = mkEnableOption "the ccfleet agent, which deploys `services.coop-cloud.apps` with abra" // {
      default = baseEnabled || anyAppDeclared;
      defaultText = lib.literalMD "`true` when `services.coop-cloud` is enabled or any `services.coop-cloud.apps.<name>` is declared";
    };

    package = lib.mkPackageOption pkgs "ccfleet" { };

    abraPackage = lib.mkPackageOption pkgs "abra" { } // {
      description = ''
        The abra package the agent runs: on the agent's PATH, and its `bin/abra` is
        `settings.abra.binary`.
      '';
    };

    serverUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://fleet.example.org:7443";
      description = "URL of the ccfleet server (https: the server speaks TLS only). Required.";
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
      description = "Further packages on the agent's PATH, besides `abraPackage` (what abra runs).";
    };

    settings = mkOption {
      type = types.submodule { freeformType = format.type; };
      default = { };
      example = { abra.command_timeout = "30m"; agent.reconcile_interval = "10m"; };
      description = ''
        The agent's TOML configuration (`ccfleet-agent check-config` documents it). The module
        fills `server`, `host`, `abra.binary` and `app` from the options above and the
        declared apps, each with `mkDefault`, so a value set here wins; set anything else
        (`agent`, `abra`) here too. Keys the agent does not know fail an assertion.
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
      server = {
        url = lib.mkIf (cfg.serverUrl != null) (lib.mkDefault cfg.serverUrl);
        join_token_file = lib.mkIf (cfg.joinTokenFile != null) (lib.mkDefault cfg.joinTokenFile);
      };
      host = {
        id = lib.mkIf (cfg.hostId != null) (lib.mkDefault cfg.hostId);
        labels = lib.mapAttrs (_: lib.mkDefault) cfg.labels;
      };
      abra.binary = lib.mkDefault (lib.getExe' cfg.abraPackage "abra");
      app = lib.mkDefault (lib.mapAttrsToList renderApp apps);
    };

    assertions = settingsAssertions ++ [
      {
        assertion = cfg.joinTokenFile == null || !lib.hasPrefix builtins.storeDir cfg.joinTokenFile;
        message = "services.ccfleet-agent.joinTokenFile must be a path outside the Nix store.";
      }
      {
        # Imported alone (nixosModules.agent), the agent relies on the host's own Docker
        # setup; services.coop-cloud provides one.
        assertion = config.virtualisation.docker.enable;
        message = "services.ccfleet-agent needs the Docker Engine: set virtualisation.docker.enable = true (services.coop-cloud.enable does, with a single-node swarm).";
      }
      {
        assertion = !config.virtualisation.docker.liveRestore;
        message = "services.ccfleet-agent deploys to Docker swarm, which refuses to run with live-restore: set virtualisation.docker.liveRestore = false (services.coop-cloud.enable does).";
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
        path = [ cfg.abraPackage ] ++ cfg.path;
        # A changed configuration alone reloads the agent (SIGHUP: it re-reads and
        # re-checks the file, keeping the old one if the new one is invalid). Any other
        # change of the unit (a new ccfleet or abra package, new hardening) restarts it, in
        # one step (`stopIfChanged = false`), so the same switch runs the new binary; the
        # agent's journal makes a restart in the middle of an operation safe. The
        # cc-app-<name> units require the agent, so systemd restarts them after it: each
        # runs `apply --wait` against the new agent.
        restartIfChanged = true;
        stopIfChanged = false;
        reloadTriggers = [ configFile ];
        serviceConfig = {
          # The agent sends READY=1 once its control socket is bound, so `apply` from the
          # cc-app-<name> units never races it.
          Type = "notify";
          NotifyAccess = "main";
          ExecStart = "${agentExe} run --config ${configPath}";
          ExecReload = "${lib.getExe' pkgs.coreutils "kill"} -HUP $MAINPID";
          Restart = "on-failure";
          RestartSec = "5s";
          # Root, because the agent drives the Docker Engine (the socket is root-equivalent
          # anyway), runs abra, and will copy volumes owned by arbitrary uids. The
          # hardening below is what still fits that job.
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
    // lib.mapAttrs' (name: app: lib.nameValuePair "cc-app-${name}" (appUnit name app)) apps
    // lib.mapAttrs' (name: app: lib.nameValuePair "cc-app-${name}-update" (updateUnit name app)) autoUpdateApps
    // lib.mapAttrs' (name: app: lib.nameValuePair "cc-app-${name}-secrets" (secretsService name app)) appsWithSecretFiles;

    systemd.timers = lib.mapAttrs' (name: app: lib.nameValuePair "cc-app-${name}-update" (updateTimer name app)) autoUpdateApps;

    systemd.paths = lib.mapAttrs' (name: app: lib.nameValuePair "cc-app-${name}-secrets" (secretsPath name app)) appsWithSecretFiles;
  };
}
