# Entry point of the module evaluation tests (run by tests/tests/it/nix.rs):
#
#   nix-instantiate --eval --strict --json nix/tests \
#     --arg nixpkgsLib /path/to/nixpkgs.lib --argstr secretDir /tmp/secrets -A example
#
# `example`: the example host (./example-host.nix) with its rendered agent TOML, units,
# timers, path units and firewall ports, and the assertions that failed (expected: none).
# `cases.<name>`: one hostile declaration each, with the assertions that failed
# (expected: the one naming the option to fix). `seed`: the seed's interface
# (a recipe module alone; its parameter names). `settingsOverride`: an operator's
# `settings` win over the module's. `strict.*`: what the NixOS option types refuse
# (evaluating `strict.typo` or `strict.badType` fails) and merge (`strict.merged`).
# `docs`: option defaults as the generated documentation shows them. `appDefaults`:
# recipe defaults for `apps.<name>`. `agentAlone`: nixosModules.agent without the base.
# `withSops`: secrets given by sopsKey with sops-nix (stubbed) imported. `examples`:
# nix/examples/*.nix. `recipes`: the defaults of every per-recipe module. `checks`: the
# check functions of nix/lib/checks.nix applied to `values` (see the Rust test).
{ nixpkgsLib, secretDir ? "/run/ccfleet-test-secrets", checkValues ? "{}" }:

let
  lib = import "${toString nixpkgsLib}/lib";
  harness = import ./harness.nix { inherit lib; };
  ccfleetModules = [ ../modules/coop-cloud.nix ../modules/server.nix ];

  host = extra: harness.evalHost (ccfleetModules ++ [ (import ./example-host.nix { inherit secretDir; }) ] ++ extra);

  summary = evaluated: { inherit (evaluated) failedAssertions; };
  unitsNamed = prefix: units: lib.filterAttrs (name: _: lib.hasPrefix prefix name) units;

  example =
    let
      evaluated = host [ ];
      inherit (evaluated) config;
      agent = config.systemd.services.ccfleet-agent;
    in
    {
      inherit (evaluated) failedAssertions agentToml;
      services = builtins.attrNames config.systemd.services;
      timers = lib.mapAttrs (_: timer: timer.timerConfig) config.systemd.timers;
      paths = lib.mapAttrs (_: path: { inherit (path) wantedBy pathConfig; }) config.systemd.paths;
      firewallTcpPorts = config.networking.firewall.allowedTCPPorts;
      agentUnit = {
        inherit (agent) restartIfChanged stopIfChanged reloadIfChanged requires after;
        inherit (agent.serviceConfig) Type NotifyAccess ExecStart ExecReload;
        path = map (package: package.name) agent.path;
        reloadTriggers = map toString agent.reloadTriggers;
        configFile = toString config.services.ccfleet-agent.configFile;
      };
      appUnits = lib.mapAttrs
        (_: unit: {
          inherit (unit) after requires restartIfChanged;
          inherit (unit.serviceConfig) ExecStart;
        })
        (unitsNamed "cc-app-" config.systemd.services);
      server = {
        inherit (config.systemd.services.ccfleet-server.serviceConfig) Type NotifyAccess ExecStart LimitNOFILE;
      };
      dockerLiveRestore = config.virtualisation.docker.liveRestore;
    };

  # What a switch compares for the agent unit: everything in its unit text but the
  # reload triggers (NixOS reloads a unit when only those changed and restarts it when
  # anything else did), and the reload triggers.
  agentUnitText = extra:
    let
      unit = (host extra).config.systemd.services.ccfleet-agent;
      text = {
        inherit (unit) description wantedBy wants requires after before unitConfig serviceConfig environment
          restartIfChanged stopIfChanged reloadIfChanged restartTriggers;
        path = map toString unit.path;
      };
    in
    {
      unit = builtins.toJSON text;
      reloadTriggers = map toString unit.reloadTriggers;
    };
  agentSwitch =
    let
      before = agentUnitText [ ];
      configChanged = agentUnitText [{ services.coop-cloud.ghost.version = lib.mkForce "1.4.0+6.50.0-alpine"; }];
      packageChanged = agentUnitText [{ services.ccfleet-agent.package = harness.pkgs.ccfleet // { outPath = "/nix/store/11111111111111111111111111111111-ccfleet"; }; }];
      abraChanged = agentUnitText [{ services.ccfleet-agent.abraPackage = harness.pkgs.abra // { outPath = "/nix/store/11111111111111111111111111111111-abra"; }; }];
      compare = after: {
        unitChanged = after.unit != before.unit;
        reloadTriggersChanged = after.reloadTriggers != before.reloadTriggers;
      };
    in
    {
      configChanged = compare configChanged;
      packageChanged = compare packageChanged;
      abraChanged = compare abraChanged;
    };

  # Each hostile declaration, added on top of the example host (`mkForce` where it
  # replaces one of the example's values).
  app = { recipe = "n8n"; domain = "n8n.example.org"; version = "1.0.0+1.2.3"; };
  cases = lib.mapAttrs (_: extra: summary (host extra)) {
    duplicate-domain = [{ services.coop-cloud.apps.wiki.domain = lib.mkForce "blog.example.org"; }];
    duplicate-name = [{ services.coop-cloud.apps.ghost = app; }];
    bad-version = [{ services.coop-cloud.apps.wiki.version = lib.mkForce "1.2_3"; }];
    bad-version-in-recipe-module = [{ services.coop-cloud.ghost.version = lib.mkForce "v1.3.0"; }];
    bad-domain = [{ services.coop-cloud.apps.wiki.domain = lib.mkForce "Wiki.example.org"; }];
    bad-recipe = [{ services.coop-cloud.apps.extra = app // { recipe = "Ghost"; }; }];
    health-path-without-slash = [{ services.coop-cloud.apps.keycloak.healthPath = lib.mkForce "realms/master"; }];
    health-path-with-space = [{ services.coop-cloud.ghost.healthPath = "/ghost status"; }];
    app-without-domain = [{ services.coop-cloud.apps.extra = removeAttrs app [ "domain" ]; }];
    app-without-version = [{ services.coop-cloud.apps.extra = removeAttrs app [ "version" ]; }];
    app-without-recipe = [{ services.coop-cloud.apps.extra = removeAttrs app [ "recipe" ]; }];
    app-name-not-a-unit-name = [{ services.coop-cloud.apps."my blog" = app; }];
    app-name-clashes-with-units = [{ services.coop-cloud.apps.wiki-update = app; }];
    app-name-template = [{ services.coop-cloud.ghost.appName = "blog@1"; }];
    recipe-module-without-domain = [{ services.coop-cloud.n8n = { enable = true; version = "1.0.0+1.2.3"; }; }];
    traefik-without-version = [{ services.coop-cloud.traefik.version = lib.mkForce null; }];
    server-url-unset = [{ services.ccfleet-agent.serverUrl = lib.mkForce null; }];
    server-url-plain-http = [{ services.ccfleet-agent.serverUrl = lib.mkForce "http://fleet.example.org:7443"; }];
    admin-port-is-the-port = [{ services.ccfleet-server.adminPort = lib.mkForce 7443; }];
    host-id-invalid = [{ services.ccfleet-agent.hostId = lib.mkForce "Web_1"; }];
    label-key-uppercase = [{ services.ccfleet-agent.labels.Site = "berlin"; }];
    unknown-dependency = [{ services.coop-cloud.apps.wiki.dependsOn = [ "nextcloud" ]; }];
    dependency-cycle = [{ services.coop-cloud.apps.keycloak.dependsOn = [ "ghost" ]; }];
    env-key-lowercase = [{ services.coop-cloud.apps.wiki.env.smtp_host = "mail.example.org"; }];
    env-key-reserved = [{ services.coop-cloud.apps.wiki.env.DOMAIN = "other.example.org"; }];
    env-value-newline = [{ services.coop-cloud.apps.wiki.env.MOTD = "hello\nDOMAIN=evil.example.org"; }];
    secret-name-invalid = [{ services.coop-cloud.apps.wiki.secrets.Db-Pass.file = "/run/secrets/db"; }];
    secret-without-file = [{ services.coop-cloud.apps.wiki.secrets.token = { }; }];
    secret-file-relative = [{ services.coop-cloud.apps.wiki.secrets.token.file = "secrets/token"; }];
    secret-in-store = [{ services.coop-cloud.apps.wiki.secrets.token.file = "/nix/store/abc-token"; }];
    secret-sops-path-without-key = [{ services.coop-cloud.apps.wiki.secrets.token = { file = "/run/secrets/token"; sopsPath = "/run/secrets/token"; }; }];
    health-timeout-forever = [{ services.coop-cloud.apps.wiki.healthTimeout = "forever"; }];
    deploy-timeout-zero = [{ services.coop-cloud.apps.wiki.timeout = lib.mkForce 0; }];
    accepted-statuses-empty = [{ services.coop-cloud.apps.wiki.healthOk = [ ]; }];
    schedule-with-newline = [{ services.coop-cloud.apps.wiki.updateSchedule = lib.mkForce "Sun 04:00\nOnCalendar=minutely"; }];
    settings-unknown-key = [{ services.ccfleet-agent.settings.agent.reconcile_intervall = "10m"; }];
    settings-unknown-section = [{ services.ccfleet-agent.settings.agnet.reconcile_interval = "10m"; }];
    settings-bad-duration = [{ services.ccfleet-agent.settings.agent.observe_interval = "forever"; }];
    settings-bad-abra-binary = [{ services.ccfleet-agent.settings.abra.binary = "bin/abra"; }];
  };

  # The seed's interface: a recipe module alone is a complete request (it turns on the
  # base and the agent), and what is missing is named.
  seed = {
    alone = summary (harness.evalHost (ccfleetModules ++ [{
      services.coop-cloud.ghost = { enable = true; domain = "blog.example.org"; version = "1.3.0+6.42.0-alpine"; autoUpdate = true; };
    }]));
    # A recipe module made outside ccfleet with the flake's `lib.mkCcApp`.
    ownRecipe =
      let
        mkCcApp = import ../lib/mkCcApp.nix { inherit lib; };
        evaluated = harness.evalHost (ccfleetModules ++ [
          (mkCcApp { recipe = "nextcloud"; healthPath = "/status.php"; healthOk = [ 200 302 ]; })
          {
            services.coop-cloud.nextcloud = { enable = true; domain = "cloud.example.org"; version = "1.0.0+30.0.0"; };
          }
        ]);
      in
      summary evaluated // {
        baseEnabled = evaluated.config.services.coop-cloud.enable;
        inherit (evaluated.config.services.coop-cloud.nextcloud) healthPath healthAcceptedStatuses;
      };
    appAlone = summary (harness.evalHost (ccfleetModules ++ [{
      services.coop-cloud.apps.wiki = { recipe = "hedgedoc"; domain = "wiki.example.org"; version = "2.1.0+1.10.0"; };
    }]));
    complete =
      let
        evaluated = harness.evalHost (ccfleetModules ++ [{
          services.ccfleet-agent.serverUrl = "https://fleet.example.org:7443";
          services.coop-cloud.traefik = { domain = "traefik.example.org"; version = "3.0.0+v3.1.2"; };
          services.coop-cloud.ghost = {
            enable = true;
            appName = "blog";
            domain = "blog.example.org";
            version = "1.3.0+6.42.0-alpine";
            autoUpdate = true;
            healthOk = [ 200 301 ];
            healthTimeout = 300;
            timeout = 900;
            after = [ "postgresql.service" ];
            secrets.db_password = { sopsKey = "ghost/db"; sopsPath = "/run/secrets/ghost-db"; };
          };
        } harness.sopsStub]);
        inherit (evaluated) config;
      in
      {
        inherit (evaluated) failedAssertions agentToml;
        services = builtins.attrNames config.systemd.services;
        timers = builtins.attrNames config.systemd.timers;
        blogUnit = { inherit (config.systemd.services.cc-app-blog) after requires; };
        sopsSecrets = lib.mapAttrs (_: secret: { inherit (secret) key path restartUnits; }) config.sops.secrets;
      };
  };

  # An operator's `settings` override the module's values (`mkDefault`), without conflicts.
  settingsOverride =
    let
      evaluated = host [{
        services.ccfleet-agent.settings = {
          server.url = "https://fleet-2.example.org:7443";
          abra.binary = "/opt/abra/bin/abra";
          abra.command_timeout = "30m";
          host.labels.site = "hamburg";
        };
      }];
    in
    { inherit (evaluated) failedAssertions agentToml; };

  # The NixOS option types at work: a typo and a value NixOS refuses fail the evaluation
  # (the Rust test reads the error); an operator's extra ordering is merged.
  strict =
    let
      services = extra: (host [ extra ]).config.systemd.services.cc-app-ghost;
    in
    {
      typo = (services { systemd.services.cc-app-ghost.serviceconfig.Type = "oneshot"; }).serviceConfig;
      badType = (services { systemd.services.cc-app-ghost.serviceConfig.Type = lib.mkForce "oneshoot"; }).serviceConfig;
      badUnitName = (services { systemd.services.cc-app-ghost.after = [ "postgresql" ]; }).after;
      merged = {
        inherit (services {
          systemd.services.cc-app-ghost.after = [ "postgresql.service" ];
          systemd.services.cc-app-ghost.serviceConfig.Environment = [ "A=1" ];
        }) after;
      };
    };

  # What the generated option documentation shows as defaults (`lib.optionAttrSetToDocList`,
  # which nixos-render-docs reads), for the options whose defaults depend on the recipe.
  docs =
    let
      evaluated = harness.evalHost ccfleetModules;
      wanted = [
        "services.coop-cloud.enable"
        "services.coop-cloud.ghost.enable"
        "services.coop-cloud.ghost.healthPath"
        "services.coop-cloud.ghost.stateful"
        "services.coop-cloud.ghost.recipe"
        "services.coop-cloud.ghost.appName"
        "services.coop-cloud.ghost.healthAcceptedStatuses"
        "services.coop-cloud.traefik.enable"
        "services.coop-cloud.mumble.healthPath"
        "services.coop-cloud.apps.<name>.healthPath"
        "services.coop-cloud.apps.<name>.stateful"
        "services.ccfleet-agent.enable"
        "services.ccfleet-agent.abraPackage"
      ];
      options = lib.filter (option: lib.elem option.name wanted) (lib.optionAttrSetToDocList evaluated.options);
    in
    lib.listToAttrs (map (option: lib.nameValuePair option.name (option.default.text or null)) options);

  # An `apps.<name>` of a known recipe gets its health path and statefulness as defaults.
  appDefaults =
    let
      evaluated = host [{
        services.coop-cloud.apps = {
          blog = app // { recipe = "ghost"; domain = "blog2.example.org"; };
          custom = app // { recipe = "ghost"; domain = "blog3.example.org"; healthPath = "/custom"; stateful = false; };
          other = app // { recipe = "nextcloud"; domain = "cloud.example.org"; };
        };
      }];
    in
    {
      inherit (evaluated) failedAssertions;
      apps = lib.mapAttrs (_: app: { inherit (app) healthPath stateful; })
        (lib.getAttrs [ "blog" "custom" "other" ] evaluated.config.services.coop-cloud.apps);
    };

  # nixosModules.agent without services.coop-cloud: no swarm-init, Docker is the host's.
  agentAlone =
    let
      agentHost = extra: harness.evalHost ([ ../modules/agent.nix ] ++ extra);
      withApp = agentHost [{
        services.ccfleet-agent.serverUrl = "https://fleet.example.org:7443";
        services.coop-cloud.apps.wiki = { recipe = "hedgedoc"; domain = "wiki.example.org"; version = "2.1.0+1.10.0"; };
        virtualisation.docker = { enable = true; liveRestore = false; };
      }];
    in
    {
      withoutDocker = summary (agentHost [{
        services.ccfleet-agent = { enable = true; serverUrl = "https://fleet.example.org:7443"; };
      }]);
      withApp = summary withApp // {
        agentEnabled = withApp.config.services.ccfleet-agent.enable;
        wikiRequires = withApp.config.systemd.services.cc-app-wiki.requires;
      };
    };

  # sops-nix imported: a secret given by sopsKey becomes a `sops.secrets` entry that
  # restarts the app's unit when it changes, and the agent reads its path.
  withSops =
    let
      evaluated = host [
        harness.sopsStub
        {
          services.coop-cloud.apps.wiki.secrets.api_token.sopsKey = "wiki/api_token";
          services.coop-cloud.apps.keycloak.secrets.api_token.sopsKey = "wiki/api_token";
        }
      ];
    in
    {
      inherit (evaluated) failedAssertions agentToml;
      sopsSecrets = lib.mapAttrs
        (_: secret: { inherit (secret) key path; restartUnits = lib.sort lib.lessThan secret.restartUnits; })
        evaluated.config.sops.secrets;
      paths = builtins.attrNames evaluated.config.systemd.paths;
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
      config = (harness.evalHost ccfleetModules).config;
    in
    lib.mapAttrs
      (recipe: _: { inherit (config.services.coop-cloud.${recipe}) enable recipe healthPath stateful; })
      (import ../recipes/table.nix);

  # `checkValues`: JSON { <check name>: [ values ] } -> for each value, null (accepted)
  # or the problem nix/lib/checks.nix finds.
  checks =
    let functions = import ../lib/checks.nix { inherit lib; };
    in lib.mapAttrs (name: values: map functions.${name} values) (builtins.fromJSON checkValues);
in
{
  inherit example agentSwitch cases seed settingsOverride strict docs appDefaults agentAlone withSops examples recipes checks;
}
