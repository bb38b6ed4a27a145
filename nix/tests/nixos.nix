# The NixOS options ccfleet's modules set, declared with the types NixOS gives them, so
# that the evaluation tests refuse what NixOS refuses and merge what NixOS merges:
#
# - systemd units as in nixpkgs' nixos/lib/systemd-unit-options.nix and systemd-lib.nix:
#   submodules (an unknown attribute such as `serviceconfig` is an error), unit lists of
#   `unitNameType`, `unitOption` values (lists from several definitions concatenate,
#   single values must agree), and `serviceConfig` checked for `Type` and `Restart`;
# - `users`, `environment.etc`, `virtualisation.docker`, `networking.firewall` as
#   submodules / typed options with NixOS's defaults;
# - sops-nix's `sops.secrets` (`sops`, a separate module, imported only by the tests that
#   pretend sops-nix is there).
#
# A subset of each (the options a host configuration commonly sets), written from those
# files' definitions; what is left out is refused, which errs on the strict side.
{ lib }:

let
  inherit (lib) mkOption types;

  # nixpkgs' `unitOption`: the value of one key of a unit section.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: builtins.isList def.value) defs'
      then lib.concatMap (def: lib.toList def.value) defs'
      else lib.mergeEqualOption loc defs';
  };

  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # nixpkgs' `checkUnitConfig` with `assertValueOneOf`, for `serviceConfig`.
  oneOf = name: values: section:
    let value = section.${name} or null;
    in lib.optional (value != null && !(lib.elem value values))
      "Systemd Service field `${name}' cannot have value `${toString value}'.";
  checkService = section:
    let
      # Properties (mkIf, mkOverride) still wrap the values at this point.
      isProperty = value: builtins.isAttrs value && lib.elem (value._type or "") [ "override" "if" ];
      plain = lib.mapAttrs (_: value: if isProperty value then value.content else value) section;
      errors = oneOf "Type" [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ] plain
        ++ oneOf "Restart" [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "on-watchdog" "always" ] plain;
    in
    if errors == [ ] then true else builtins.trace (lib.concatStringsSep "\n" errors) false;

  unitList = mkOption {
    type = types.listOf unitNameType;
    default = [ ];
  };
  section = mkOption {
    type = types.attrsOf unitOption;
    default = { };
  };

  commonUnitOptions = {
    enable = mkOption { type = types.bool; default = true; };
    overrideStrategy = mkOption { type = types.enum [ "asDropinIfExists" "asDropin" ]; default = "asDropinIfExists"; };
    description = mkOption { type = types.singleLineStr; default = ""; };
    documentation = mkOption { type = types.listOf types.str; default = [ ]; };
    requires = unitList;
    wants = unitList;
    upholds = unitList;
    after = unitList;
    before = unitList;
    bindsTo = unitList;
    partOf = unitList;
    conflicts = unitList;
    requisite = unitList;
    onFailure = unitList;
    onSuccess = unitList;
    wantedBy = unitList;
    requiredBy = unitList;
    upheldBy = unitList;
    aliases = unitList;
    unitConfig = section;
    startLimitBurst = mkOption { type = types.int; };
    startLimitIntervalSec = mkOption { type = types.int; };
    restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    reloadTriggers = mkOption { type = types.listOf unitOption; default = [ ]; };
  };

  lines = mkOption { type = types.lines; default = ""; };

  serviceModule = { name, config, ... }: {
    options = commonUnitOptions // {
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
        default = { };
      };
      path = mkOption { type = types.listOf (types.oneOf [ types.package types.str ]); default = [ ]; };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
      };
      script = lines;
      scriptArgs = mkOption { type = types.str; default = ""; };
      preStart = lines;
      postStart = lines;
      reload = lines;
      preStop = lines;
      postStop = lines;
      restartIfChanged = mkOption { type = types.bool; default = true; };
      reloadIfChanged = mkOption { type = types.bool; default = false; };
      stopIfChanged = mkOption { type = types.bool; default = true; };
      startAt = mkOption {
        type = types.either types.str (types.listOf types.str);
        default = [ ];
        apply = value: if builtins.isList value then value else [ value ];
      };
    };
    # As NixOS does with `script`: it becomes the unit's ExecStart (a store path here).
    config.serviceConfig.ExecStart = lib.mkIf (config.script != "")
      "/nix/store/00000000000000000000000000000000-unit-script-${name}-start/bin/${name}-start ${config.scriptArgs}";
  };

  timerModule = { options = commonUnitOptions // { timerConfig = section; }; };
  pathModule = { options = commonUnitOptions // { pathConfig = section; }; };

  userModule = { name, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; };
      description = mkOption { type = types.str; default = ""; };
      uid = mkOption { type = types.nullOr types.int; default = null; };
      isSystemUser = mkOption { type = types.bool; default = false; };
      isNormalUser = mkOption { type = types.bool; default = false; };
      group = mkOption { type = types.str; default = ""; };
      extraGroups = mkOption { type = types.listOf types.str; default = [ ]; };
      home = mkOption { type = types.str; default = "/var/empty"; };
      createHome = mkOption { type = types.bool; default = false; };
      shell = mkOption { type = types.nullOr (types.either types.shellPackage types.path); default = null; };
    };
  };

  groupModule = { name, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; };
      gid = mkOption { type = types.nullOr types.int; default = null; };
      members = mkOption { type = types.listOf types.str; default = [ ]; };
    };
  };

  etcModule = { name, ... }: {
    options = {
      enable = mkOption { type = types.bool; default = true; };
      target = mkOption { type = types.str; default = name; };
      text = mkOption { type = types.nullOr types.lines; default = null; };
      source = mkOption { type = types.path; };
      mode = mkOption { type = types.str; default = "symlink"; };
      uid = mkOption { type = types.int; default = 0; };
      gid = mkOption { type = types.int; default = 0; };
      user = mkOption { type = types.str; default = "+0"; };
      group = mkOption { type = types.str; default = "+0"; };
    };
  };

  portRange = types.submodule {
    options.from = mkOption { type = types.port; };
    options.to = mkOption { type = types.port; };
  };
in
{
  nixos = { pkgs, ... }: {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };

      systemd.services = mkOption { type = types.attrsOf (types.submodule serviceModule); default = { }; };
      systemd.timers = mkOption { type = types.attrsOf (types.submodule timerModule); default = { }; };
      systemd.paths = mkOption { type = types.attrsOf (types.submodule pathModule); default = { }; };

      users.users = mkOption { type = types.attrsOf (types.submodule userModule); default = { }; };
      users.groups = mkOption { type = types.attrsOf (types.submodule groupModule); default = { }; };

      environment.etc = mkOption { type = types.attrsOf (types.submodule etcModule); default = { }; };

      networking.firewall = {
        enable = mkOption { type = types.bool; default = true; };
        allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
        allowedUDPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
        allowedTCPPortRanges = mkOption { type = types.listOf portRange; default = [ ]; };
        allowedUDPPortRanges = mkOption { type = types.listOf portRange; default = [ ]; };
      };

      virtualisation.docker = {
        enable = mkOption { type = types.bool; default = false; };
        enableOnBoot = mkOption { type = types.bool; default = true; };
        liveRestore = mkOption { type = types.bool; default = true; };
        package = mkOption { type = types.package; default = pkgs.docker; };
        extraPackages = mkOption { type = types.listOf types.package; default = [ ]; };
        extraOptions = mkOption { type = types.separatedString " "; default = ""; };
        storageDriver = mkOption { type = types.nullOr types.str; default = null; };
        daemon.settings = mkOption { type = (pkgs.formats.json { }).type; default = { }; };
      };
    };
  };

  # sops-nix's `sops.secrets` (modules/sops/default.nix), for the evaluations that
  # pretend it is imported.
  sops = {
    options.sops.secrets = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, config, ... }: {
        options = {
          name = mkOption { type = types.str; default = name; };
          key = mkOption { type = types.str; default = name; };
          path = mkOption { type = types.str; default = "/run/secrets/${config.name}"; };
          format = mkOption { type = types.enum [ "yaml" "json" "binary" "dotenv" "ini" ]; default = "yaml"; };
          mode = mkOption { type = types.str; default = "0400"; };
          owner = mkOption { type = types.nullOr types.str; default = null; };
          uid = mkOption { type = types.nullOr types.int; default = 0; };
          group = mkOption { type = types.nullOr types.str; default = null; };
          gid = mkOption { type = types.nullOr types.int; default = 0; };
          sopsFile = mkOption { type = types.path; };
          restartUnits = mkOption { type = types.listOf types.str; default = [ ]; };
          reloadUnits = mkOption { type = types.listOf types.str; default = [ ]; };
          neededForUsers = mkOption { type = types.bool; default = false; };
        };
      }));
    };
  };
}
