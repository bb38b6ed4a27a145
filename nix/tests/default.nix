# Entry point of the module evaluation tests (run by tests/tests/it/nix.rs):
#
#   nix-instantiate --eval --strict --json nix/tests \
#     --arg nixpkgsLib /path/to/nixpkgs.lib --argstr secretDir /tmp/secrets -A example
#
# `example`: the example host (./example-host.nix) with its rendered agent TOML,
# units, timers and firewall ports, and the assertions that failed (expected: none).
# `cases.<name>`: one bad declaration each, with the assertions that failed
# (expected: the one naming the option to fix). `withSops`: a secret given by sopsKey
# with sops-nix (stubbed) imported. `examples`: nix/examples/*.nix.
# `recipes`: the defaults of every per-recipe module.
{ nixpkgsLib, secretDir ? "/run/ccfleet-test-secrets" }:

let
  lib = import "${toString nixpkgsLib}/lib";
  harness = import ./harness.nix { inherit lib; };
  ccfleetModules = [ ../modules/coop-cloud.nix ../modules/server.nix ];

  host = extra: harness.evalHost (ccfleetModules ++ [ (import ./example-host.nix { inherit secretDir; }) ] ++ extra);

  summary = evaluated: {
    inherit (evaluated) failedAssertions;
  };

  example =
    let
      evaluated = host [ ];
      inherit (evaluated) config;
    in
    {
      inherit (evaluated) failedAssertions agentToml;
      services = builtins.attrNames config.systemd.services;
      timers = lib.mapAttrs (_: timer: timer.timerConfig) config.systemd.timers;
      firewallTcpPorts = config.networking.firewall.allowedTCPPorts;
      agentExecStart = config.systemd.services.ccfleet-agent.serviceConfig.ExecStart;
      agentRestartIfChanged = config.systemd.services.ccfleet-agent.restartIfChanged;
      appUnits = lib.mapAttrs (_: unit: { inherit (unit) after; inherit (unit.serviceConfig) ExecStart; })
        (lib.filterAttrs (name: _: lib.hasPrefix "cc-app-" name) config.systemd.services);
      serverExecStart = config.systemd.services.ccfleet-server.serviceConfig.ExecStart;
      dockerLiveRestore = config.virtualisation.docker.liveRestore;
    };

  # Each bad declaration, added on top of the example host (`mkForce` where it
  # replaces one of the example's values).
  cases = lib.mapAttrs (_: extra: summary (host extra)) {
    duplicate-domain = [{ services.coop-cloud.apps.wiki.domain = lib.mkForce "blog.example.org"; }];
    bad-version = [{ services.coop-cloud.apps.wiki.version = lib.mkForce "1.2_3"; }];
    bad-version-in-recipe-module = [{ services.coop-cloud.ghost.version = lib.mkForce "v1.3.0"; }];
    health-path-without-slash = [{ services.coop-cloud.apps.keycloak.healthPath = lib.mkForce "realms/master"; }];
    app-without-domain = [{ services.coop-cloud.apps.extra = { recipe = "n8n"; version = "1.0.0+1.2.3"; }; }];
    recipe-module-without-domain = [{ services.coop-cloud.n8n = { enable = true; version = "1.0.0+1.2.3"; }; }];
    unknown-dependency = [{ services.coop-cloud.apps.wiki.dependsOn = [ "nextcloud" ]; }];
    secret-without-file = [{ services.coop-cloud.apps.wiki.secrets.token = { }; }];
    secret-in-store = [{ services.coop-cloud.apps.wiki.secrets.token.file = "/nix/store/abc-token"; }];
  };

  # sops-nix imported: a secret given by sopsKey becomes a `sops.secrets` entry and its path.
  withSops =
    let
      evaluated = host [
        harness.sopsStub
        { services.coop-cloud.apps.wiki.secrets.api_token.sopsKey = "wiki/api_token"; }
      ];
    in
    {
      inherit (evaluated) failedAssertions agentToml;
      sopsSecrets = evaluated.config.sops.secrets;
    };

  # The copy-paste configurations of nix/examples (README.md) evaluate cleanly.
  examples = lib.mapAttrs
    (_: file:
      let
        evaluated = harness.evalHost (ccfleetModules ++ [ file ]);
      in
      summary evaluated // { services = builtins.attrNames evaluated.config.systemd.services; })
    {
      app-host = ../examples/app-host.nix;
      server = ../examples/server.nix;
    };

  # Each per-recipe module's defaults (`services.coop-cloud.<recipe>`), from nix/recipes.
  recipes =
    let
      files = lib.filterAttrs (file: _: file != "default.nix") (builtins.readDir ../recipes);
      names = map (lib.removeSuffix ".nix") (builtins.attrNames files);
      config = (harness.evalHost ccfleetModules).config;
    in
    lib.genAttrs names (recipe: {
      inherit (config.services.coop-cloud.${recipe}) enable recipe healthPath stateful;
    });
in
{
  inherit example cases withSops examples recipes;
}
