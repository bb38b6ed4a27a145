# `services.ccfleet-server`: the fleet server (gRPC over mTLS, sled state) as a hardened
# systemd service with its own user.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption types;

  cfg = config.services.ccfleet-server;
  dataDir = "/var/lib/ccfleet-server";
  privilegedPort = cfg.port < 1024 || (cfg.adminPort != null && cfg.adminPort < 1024);
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

    assertions = [{
      assertion = cfg.adminPort != cfg.port;
      message = "services.ccfleet-server.adminPort must differ from services.ccfleet-server.port (${toString cfg.port}).";
    }];

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
        ++ cfg.extraArgs);
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
