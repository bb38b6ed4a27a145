# Evaluation harness: runs ccfleet's NixOS modules through the nixpkgs module system
# (`lib.evalModules`) without nixpkgs' package set or NixOS itself, which this
# machine does not have.
#
# It declares, as loosely as possible, only the NixOS options our modules set
# (`systemd.services`/`timers`, `virtualisation.docker`, `networking.firewall`,
# `environment.etc`, `users`, `assertions`, `warnings`) and passes a fake `pkgs`
# with just what the modules use: `formats.toml` (rendered by ./toml.nix at
# evaluation time), `git`, `coreutils` and a `ccfleet` package whose paths are
# placeholders. Loose means: these options accept any value and merge like
# attribute sets, so the harness checks what our modules compute, not NixOS's
# own types (the flake's `checks` build a real NixOS system for that).
{ lib }:

let
  inherit (lib) mkOption types;

  fakePackage = name: {
    inherit name;
    type = "derivation";
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };

  pkgs = {
    ccfleet = fakePackage "ccfleet";
    git = fakePackage "git";
    coreutils = fakePackage "coreutils";
    docker = fakePackage "docker";
    formats.toml = { }: {
      type = types.attrsOf types.anything;
      # Stands in for the derivation: coerces to a store path and carries the text.
      generate = name: value: {
        inherit name;
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        text = import ./toml.nix { inherit lib; } value;
      };
    };
  };

  loose = mkOption {
    type = types.attrsOf types.anything;
    default = { };
  };

  # The NixOS options ccfleet's modules set, declared loosely.
  nixosStub = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      systemd.services = loose;
      systemd.timers = loose;
      environment.etc = loose;
      users.users = loose;
      users.groups = loose;
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      virtualisation.docker = {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        liveRestore = mkOption {
          type = types.bool;
          default = true;
        };
        package = mkOption {
          type = types.unspecified;
          default = pkgs.docker;
        };
      };
    };
  };

  # sops-nix's `sops.secrets`, for the evaluations that pretend it is imported.
  sopsStub = {
    options.sops.secrets = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, ... }: {
        options.key = mkOption { type = types.str; };
        options.path = mkOption {
          type = types.str;
          default = "/run/secrets/${name}";
        };
      }));
    };
  };
in
{
  inherit sopsStub;

  # Evaluates `modules` (ccfleet's plus the host's) and returns what the tests look at.
  evalHost = modules:
    let
      evaluated = lib.evalModules {
        modules = [ nixosStub { _module.args.pkgs = pkgs; } ] ++ modules;
      };
      config = evaluated.config;
    in
    {
      inherit config;
      failedAssertions = map (assertion: assertion.message) (lib.filter (assertion: !assertion.assertion) config.assertions);
      agentToml = config.environment.etc."ccfleet/agent.toml".source.text or null;
    };
}
