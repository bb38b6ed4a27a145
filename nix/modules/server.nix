# `services.ccfleet-server`: the fleet server (gRPC over mTLS, sled state) as a hardened
# systemd service with its own user.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption types;

  cfg = config.services.ccfleet-server;
  dataDir = "/var/lib/ccfleet-server";
  privilegedPort = cfg.port < 1024 || (cfg.adminPort != null && cfg.adminPort < 1024);
  notify = cfg.notify;
  # https anywhere; plain http only to this machine (the server refuses it otherwise too).
  webhookPattern = "(text\\+)?(https://.+|http://(127\\.[0-9.]+|\\[::1]|localhost)([:/].*)?)";
  badWebhooks = lib.filter (url: builtins.match webhookPattern url == null) notify.webhooks;
  outsideStore = path: path == null || (lib.hasPrefix "/" path && !lib.hasPrefix builtins.storeDir path);
in
{
  options.services.ccfleet-server = {
    enable = mkEnableOption "the ccfleet server, which tracks the fleet and runs staged rollouts";

    package = lib.mkPackageOption pkgs "ccfleet" { };

    listenAddress = mkOption {
      type = types.str;
      default = "[::]";
      example = "192.0.2.10";
      description = "Address to listen on (IPv6 in brackets). The server speaks TLS only.";
    };

    port = mkOption {
      type = types.port;
      default = 7443;
      description = "Port to listen on.";
    };

    adminPort = mkOption {
      type = types.nullOr types.port;
      default = null;
      example = 7444;
      description = ''
        A second port on `listenAddress` that serves only the admin API, and only to admin
        certificates (`ccfleet-server run --admin-listen`). `ccfleet` pointed at it
        (`--server https://fleet.example.org:7444`) is answered while thousands of agents
        reconnect on `port`, e.g. after a restart. Null: admins use `port` like agents.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` (and `adminPort`, if set) in the firewall for agents and admins.";
    };

    publicUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://fleet.example.org:7443";
      description = ''
        URL that agents and admins use to reach the server; written into the first admin
        credential (`<StateDirectory>/admin-credential.toml`) when the server initialises its state.
      '';
    };

    serverNames = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "fleet.example.org" ];
      description = ''
        DNS names or IP addresses for the server's certificate, besides `localhost` and the
        loopback addresses. Agents and admins must dial one of them.
      '';
    };

    metricsPort = mkOption {
      type = types.nullOr types.port;
      default = null;
      example = 9464;
      description = ''
        Serve Prometheus metrics (plain HTTP, `GET /metrics`) on `127.0.0.1` at this port
        (`--metrics-listen`); loopback only. Scrape it with a Prometheus on this machine and
        load the shipped alerting rules:
        `services.prometheus.ruleFiles = [ "''${config.services.ccfleet-server.package}/share/ccfleet/prometheus/ccfleet.rules.yml" ];`
      '';
    };

    notify = {
      webhooks = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "https://hooks.example.org/ccfleet" "text+https://ntfy.example.org/fleet" ];
        description = ''
          Webhooks that receive each alert that opens, escalates or resolves and each rollout
          that halts or completes (`--notify-webhook`): `https://` URLs, or `http://` to a
          loopback address; prefixed with `text+`, one line of plain text is posted instead of
          the JSON body (ntfy). These URLs end up in the Nix store and the unit file, readable
          by every local user: put URLs that carry a token in `webhooksFile` instead.
        '';
      };

      webhooksFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/ccfleet-webhooks";
        description = ''
          File with more webhooks, one per line (`--notify-webhooks-file`), for URLs that carry
          a token (Slack, Mattermost, Matrix hookshot). A path outside the Nix store; handed to
          the service with systemd's `LoadCredential`, so it may be readable by root only.
        '';
      };

      secretFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/ccfleet-webhook-secret";
        description = ''
          File holding the key that signs every webhook body (HMAC-SHA256, header
          `X-Ccfleet-Signature: sha256=<hex>`; `--notify-secret-file`). A path outside the Nix
          store; handed to the service with `LoadCredential`, so it may be readable by root only.
        '';
      };

      queueLimit = mkOption {
        type = types.ints.between 1 1000000;
        default = 10000;
        description = ''
          Notifications kept undelivered at most (`--notify-queue-limit`); past it the oldest
          are dropped, logged and counted (`ccfleet_notifications_dropped_total`).
        '';
      };
    };

    auditRetentionDays = mkOption {
      type = types.ints.between 1 36500;
      default = 90;
      description = ''
        Days an audit log entry is kept (`--audit-retention`); none is removed earlier, however
        many admin actions follow it. With `--audit-max-entries` (default 1,000,000; set it
        through `extraArgs`) entries stored, further admin actions are refused rather than
        older entries evicted.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Further arguments to `ccfleet-server run`.";
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.ccfleet-server = {
      isSystemUser = true;
      group = "ccfleet-server";
      home = dataDir;
      description = "ccfleet server";
    };
    users.groups.ccfleet-server = { };

    assertions = [
      {
        assertion = cfg.adminPort != cfg.port;
        message = "services.ccfleet-server.adminPort must differ from services.ccfleet-server.port (${toString cfg.port}).";
      }
      {
        assertion = badWebhooks == [ ];
        message = "services.ccfleet-server.notify.webhooks: ${lib.concatMapStringsSep ", " builtins.toJSON badWebhooks} must be https:// (plain http:// only to 127.0.0.1, [::1] or localhost), optionally prefixed with text+.";
      }
      {
        assertion = outsideStore notify.secretFile;
        message = "services.ccfleet-server.notify.secretFile must be an absolute path outside the Nix store.";
      }
      {
        assertion = outsideStore notify.webhooksFile;
        message = "services.ccfleet-server.notify.webhooksFile must be an absolute path outside the Nix store.";
      }
      {
        assertion = notify.secretFile == null || notify.webhooks != [ ] || notify.webhooksFile != null;
        message = "services.ccfleet-server.notify.secretFile is set but there is no webhook: set notify.webhooks or notify.webhooksFile.";
      }
    ];

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall
      ([ cfg.port ] ++ lib.optional (cfg.adminPort != null) cfg.adminPort);

    systemd.services.ccfleet-server = {
      description = "ccfleet server";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      serviceConfig = {
        # The server tells systemd it is ready once it answers (store open,
        # rollouts resumed, listeners bound): units ordered after it start then.
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = lib.escapeShellArgs ([
          (lib.getExe' cfg.package "ccfleet-server")
          "run"
          "--data"
          dataDir
          "--listen"
          "${cfg.listenAddress}:${toString cfg.port}"
        ]
        ++ lib.optionals (cfg.adminPort != null) [ "--admin-listen" "${cfg.listenAddress}:${toString cfg.adminPort}" ]
        ++ lib.optionals (cfg.publicUrl != null) [ "--public-url" cfg.publicUrl ]
        ++ lib.concatMap (name: [ "--san" name ]) cfg.serverNames
        ++ lib.optionals (cfg.metricsPort != null) [ "--metrics-listen" "127.0.0.1:${toString cfg.metricsPort}" ]
        ++ lib.concatMap (url: [ "--notify-webhook" url ]) notify.webhooks
        # %d: the unit's credentials directory (LoadCredential below).
        ++ lib.optionals (notify.webhooksFile != null) [ "--notify-webhooks-file" "%d/notify-webhooks" ]
        ++ lib.optionals (notify.secretFile != null) [ "--notify-secret-file" "%d/notify-secret" ]
        ++ lib.optionals (notify.queueLimit != 10000) [ "--notify-queue-limit" (toString notify.queueLimit) ]
        ++ lib.optionals (cfg.auditRetentionDays != 90) [ "--audit-retention" (toString cfg.auditRetentionDays) ]
        ++ cfg.extraArgs);
        LoadCredential =
          lib.optional (notify.webhooksFile != null) "notify-webhooks:${notify.webhooksFile}"
          ++ lib.optional (notify.secretFile != null) "notify-secret:${notify.secretFile}";
        User = "ccfleet-server";
        Group = "ccfleet-server";
        Restart = "on-failure";
        RestartSec = "5s";
        # One descriptor per agent connection (every host holds one long-lived stream) plus
        # sled's files: systemd's default soft limit of 1024 would cap the fleet at about a
        # thousand hosts (issue 10).
        LimitNOFILE = 65536;
        # sled and the CA keys live here; 0700 keeps the keys private.
        StateDirectory = "ccfleet-server";
        StateDirectoryMode = "0700";
        UMask = "0077";
        AmbientCapabilities = lib.optional privilegedPort "CAP_NET_BIND_SERVICE";
        CapabilityBoundingSet = lib.optional privilegedPort "CAP_NET_BIND_SERVICE";
        NoNewPrivileges = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = !privilegedPort;
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RemoveIPC = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
        DevicePolicy = "closed";
      };
    };
  };
}
