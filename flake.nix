{
  description = "ccfleet: Co-op Cloud apps declared per NixOS host, deployed and upgraded across a fleet";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The flake's modules default `package` to the flake's own build, so operators
      # need neither the overlay nor a `ccfleet` attribute in their nixpkgs.
      # The `key` lets a configuration import both `agent` and `coop-cloud` (which
      # includes it) without defining the package twice.
      withPackage = service: module: {
        key = "ccfleet-flake-${service}";
        imports = [
          module
          ({ pkgs, ... }: {
            services.${service}.package =
              lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.ccfleet;
          })
        ];
      };
    in
    {
      packages = forAllSystems (pkgs: rec {
        ccfleet = pkgs.callPackage ./nix/package.nix { };
        default = ccfleet;
      });

      overlays.default = final: _prev: {
        ccfleet = final.callPackage ./nix/package.nix { };
      };

      nixosModules = {
        agent = withPackage "ccfleet-agent" ./nix/modules/agent.nix;
        server = withPackage "ccfleet-server" ./nix/modules/server.nix;
        # The base of an app host; brings the agent and the per-recipe modules.
        coop-cloud = {
          imports = [ ./nix/modules/coop-cloud.nix self.nixosModules.agent ];
        };
        default = {
          imports = [ self.nixosModules.coop-cloud self.nixosModules.server ];
        };
      };

      lib.mkCcApp = import ./nix/lib/mkCcApp.nix { inherit lib; };

      checks = forAllSystems (pkgs:
        let
          ccfleet = self.packages.${pkgs.stdenv.hostPlatform.system}.ccfleet;
          # The example host of nix/tests as a real NixOS system (container, no boot
          # loader), with its secret files under `secretDir`.
          exampleSystem = secretDir: lib.nixosSystem {
            inherit (pkgs.stdenv.hostPlatform) system;
            modules = [
              self.nixosModules.default
              (import ./nix/tests/example-host.nix { inherit secretDir; })
              {
                boot.isContainer = true;
                system.stateVersion = "25.05";
              }
            ];
          };
          placeholder = "/ccfleet-check-secrets";
        in
        {
          package = ccfleet;
          # Real NixOS option types (systemd, users, docker) and assertions, which the
          # evaluation harness of nix/tests declares only loosely.
          nixos-example = (exampleSystem "/run/secrets").config.system.build.toplevel;
          # The agent config that real `pkgs.formats.toml` renders is accepted by the
          # agent itself (RFC 42's config checker), with the secret files in place.
          agent-config = pkgs.runCommand "ccfleet-agent-config-check" { } ''
            mkdir secrets
            touch secrets/ghost-db-password secrets/keycloak-admin
            substitute ${(exampleSystem placeholder).config.environment.etc."ccfleet/agent.toml".source} agent.toml \
              --replace-fail ${placeholder} "$PWD/secrets"
            ${lib.getExe' ccfleet "ccfleet-agent"} check-config agent.toml > $out
          '';
          # Every abra command line the agent runs fits nixpkgs' abra: each flag and
          # positional argument against `abra <subcommand> --help` (scripts/check-abra).
          abra-commands = pkgs.runCommand "ccfleet-abra-commands-check" { } ''
            export HOME=$TMPDIR
            bash ${./scripts/check-abra} --abra ${pkgs.abra}/bin/abra \
              --agent ${lib.getExe' ccfleet "ccfleet-agent"} > $out || { cat $out; exit 1; }
          '';
        });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.ccfleet ];
          packages = with pkgs; [ cargo clippy rustfmt rust-analyzer nix nixfmt-rfc-style ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
