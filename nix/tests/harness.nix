# Evaluation harness: runs ccfleet's NixOS modules through the nixpkgs module system
# (`lib.evalModules`) without nixpkgs' package set or NixOS itself, which the test
# machines do not have.
#
# The NixOS options our modules set are declared with NixOS's own types (./nixos.nix),
# so a typo or a wrong value fails here as it would in NixOS. The fake `pkgs` has just
# what the modules use: `formats.toml` and `formats.json` (the value types of
# nixpkgs' formats; `generate` renders with ./toml.nix at evaluation time) and
# packages whose paths are placeholders.
{ lib }:

let
  inherit (lib) types;

  fakePackage = name: {
    inherit name;
    type = "derivation";
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };

  # nixpkgs' pkgs.formats value types (pkgs/pkgs-lib/formats.nix).
  jsonValue = types.nullOr (types.oneOf [ types.bool types.int types.float types.str types.path (types.attrsOf jsonValue) (types.listOf jsonValue) ]) // { description = "JSON value"; };
  tomlValue = types.oneOf [ types.bool types.int types.float types.str types.path (types.attrsOf tomlValue) (types.listOf tomlValue) ] // { description = "TOML value"; };

  pkgs = {
    ccfleet = fakePackage "ccfleet";
    abra = fakePackage "abra";
    git = fakePackage "git";
    coreutils = fakePackage "coreutils";
    systemd = fakePackage "systemd";
    docker = fakePackage "docker";
    formats.json = { }: { type = jsonValue; };
    formats.toml = { }: {
      type = tomlValue;
      # Stands in for the derivation: coerces to a store path that changes with the
      # content, as the real one does, and carries the text.
      generate = name: value:
        let text = import ./toml.nix { inherit lib; } value;
        in {
          inherit name text;
          type = "derivation";
          outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" text)}-${name}";
        };
    };
  };

  stubs = import ./nixos.nix { inherit lib; };
in
{
  inherit pkgs;
  sopsStub = stubs.sops;

  # Evaluates `modules` (ccfleet's plus the host's) and returns what the tests look at.
  evalHost = modules:
    let
      evaluated = lib.evalModules {
        modules = [ stubs.nixos { _module.args.pkgs = pkgs; } ] ++ modules;
      };
      config = evaluated.config;
    in
    {
      inherit config;
      inherit (evaluated) options;
      failedAssertions = map (assertion: assertion.message) (lib.filter (assertion: !assertion.assertion) config.assertions);
      agentToml = config.environment.etc."ccfleet/agent.toml".source.text or null;
    };
}
